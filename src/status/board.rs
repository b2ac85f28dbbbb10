//! The status board: the live state every stage reports to, read by the
//! HTTP endpoints. Cheap to update (one uncontended lock per call).
//!
//! [`StatusBoard::snapshot`] is the `/api/status` document; its shape is
//! documented in the README ("HTTP") and read by the status page.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::metrics::{ModelBucketLabels, ModelKindLabels, ModelLabel, ModelSourceLabels};
use super::rate::RateMeter;
use super::{Metrics, StatusConfig};
use crate::infer::stats::InferStats;
use crate::publish::ModelEvent;
use crate::score::Score;

/// Lifecycle of one model's engine.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    /// Being loaded or prepared.
    Loading,
    /// Serving.
    Ready,
    /// An engine is being (re)built on the box; `progress` in 0..=1.
    Rebuilding {
        /// Fraction done, 0 to 1.
        progress: f32,
    },
    /// Could not be loaded; the reason.
    Failed(String),
}

impl ModelState {
    /// Every state's name, as in `/api/status` and `gsinfer_engine_state`.
    pub const NAMES: [&'static str; 4] = ["loading", "ready", "rebuilding", "failed"];

    /// This state's name.
    pub fn name(&self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Rebuilding { .. } => "rebuilding",
            ModelState::Failed(_) => "failed",
        }
    }
}

#[derive(Debug)]
struct ModelStatus {
    engine: String,
    device: Option<String>,
    /// Why the model runs on another engine than its config asked for.
    note: Option<String>,
    state: ModelState,
    version: u64,
    budget_us: u64,
    buckets: Vec<usize>,
    /// Telemetry window latency in µs.
    latency_us: Histogram<u64>,
    /// Time in the batcher queue in µs.
    queue_us: Histogram<u64>,
    /// Engine time per batch in µs.
    inference_us: Histogram<u64>,
    stats: Arc<InferStats>,
    /// What became of the saved channel state at start, and the last save.
    channel_state: Value,
    /// The last minute or two of telemetry latency and drops, for the health.
    recent: Recent,
}

/// How long a `Recent` period lasts: the health looks at the current
/// period and the one before it, i.e. the last one to two minutes.
pub const RECENT_PERIOD: Duration = Duration::from_secs(60);

/// A model's recent telemetry: latencies and the dropped-window count, in
/// the current [`RECENT_PERIOD`] and the one before, so the health follows
/// the load instead of the whole run's histogram.
#[derive(Debug)]
struct Recent {
    /// When the current period started.
    since: Instant,
    latency: Histogram<u64>,
    previous: Histogram<u64>,
    /// Windows dropped in total when the previous period started.
    dropped_before: u64,
    /// Windows dropped in total when the current period started.
    dropped_at_start: u64,
}

impl Recent {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            latency: histogram(),
            previous: histogram(),
            dropped_before: 0,
            dropped_at_start: 0,
        }
    }

    /// Starts a new period when the current one is over at `now`;
    /// `dropped` is the model's dropped total now.
    fn roll(&mut self, now: Instant, dropped: u64) {
        if now.duration_since(self.since) < RECENT_PERIOD {
            return;
        }
        self.previous = std::mem::replace(&mut self.latency, histogram());
        self.dropped_before = self.dropped_at_start;
        self.dropped_at_start = dropped;
        self.since = now;
    }

    /// p99 of the last one to two periods' latencies (µs), if any.
    fn p99(&self) -> Option<u64> {
        let mut both = self.previous.clone();
        both.add(&self.latency).ok()?;
        (!both.is_empty()).then(|| both.value_at_quantile(0.99))
    }
}

#[derive(Debug, Default)]
struct ChannelStatus {
    samples: u64,
    last: Option<Score>,
    /// (score, threshold), oldest first.
    recent: VecDeque<(f32, f32)>,
    /// The channel went on from the state saved before the last restart.
    restored: bool,
}

/// One telemetry source (the MQTT broker today; serial links later).
#[derive(Debug, Default)]
struct SourceEntry {
    kind: String,
    endpoint: String,
    connected: bool,
    messages: u64,
    bytes: u64,
    samples: u64,
    disconnects: u64,
    message_rate: RateMeter,
    sample_rate: RateMeter,
}

#[derive(Debug, Default)]
struct Inner {
    connected: bool,
    /// The pipelines' saved channel state is being restored.
    restoring: bool,
    models: BTreeMap<String, ModelStatus>,
    sources: BTreeMap<String, SourceEntry>,
    channels: BTreeMap<(String, String), ChannelStatus>,
    events: VecDeque<ModelEvent>,
    /// The state journal (`None` until it replays or appends anything).
    journal: Option<JournalStatus>,
}

/// The state journal as `/api/status` shows it (`journal`).
#[derive(Debug, Default, serde::Serialize)]
struct JournalStatus {
    /// Held messages appended and synced this run.
    appended_messages: u64,
    /// Their frames' bytes.
    appended_bytes: u64,
    /// Appends that failed.
    append_errors: u64,
    /// What the replay at start did, if there was one.
    replayed: Option<Value>,
}

/// See the module docs. Shared as `Arc<StatusBoard>`.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    config: StatusConfig,
    /// The Prometheus metrics, updated alongside the board.
    pub metrics: Metrics,
    inner: Mutex<Inner>,
}

/// A latency histogram in µs, 1 µs to 1 h, to 2 significant digits (a
/// quantile within 1 % of the value: the page shows milliseconds). Each
/// model keeps five; at 3 digits each held ~190 KB of counters, 0.93 MiB a
/// model and most of gsinfer's own heap at a thousand models (jemalloc's
/// heap profile, BENCHMARKS.md "N per-channel models"); at 2, ~27 KB.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

/// Name of the MQTT source in `sources`.
pub const MQTT_SOURCE: &str = "mqtt";

impl StatusBoard {
    /// An empty board.
    pub fn new(config: StatusConfig) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            config,
            metrics: Metrics::new(),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers or updates a model's engine and state.
    pub fn set_model(
        &self,
        name: &str,
        engine: &str,
        state: ModelState,
        version: u64,
        budget_us: u64,
        buckets: &[usize],
    ) {
        self.metrics.set_engine_state(name, &state);
        let mut inner = self.lock();
        let entry = inner
            .models
            .entry(name.to_string())
            .or_insert_with(|| ModelStatus {
                engine: String::new(),
                device: None,
                note: None,
                state: ModelState::Loading,
                version,
                budget_us,
                buckets: Vec::new(),
                latency_us: histogram(),
                queue_us: histogram(),
                inference_us: histogram(),
                recent: Recent::new(Instant::now()),
                stats: Arc::default(),
                channel_state: Value::Null,
            });
        entry.engine = engine.to_string();
        entry.state = state;
        entry.version = version;
        entry.budget_us = budget_us;
        entry.buckets = buckets.to_vec();
        drop(inner);
        self.update_ready();
    }

    /// Changes a registered model's state (e.g. rebuild progress).
    pub fn set_model_state(&self, name: &str, state: ModelState) {
        self.metrics.set_engine_state(name, &state);
        if let Some(m) = self.lock().models.get_mut(name) {
            m.state = state;
        }
        self.update_ready();
    }

    /// Names the device a registered model's engine runs on, e.g. `"CPU"`
    /// or a GPU's name.
    pub fn set_device(&self, name: &str, device: &str) {
        if let Some(m) = self.lock().models.get_mut(name) {
            m.device = Some(device.to_string());
        }
    }

    /// Records why `name` runs on another engine than its config asked
    /// for (a TensorRT model on tract, say); shown on the status page.
    pub fn set_note(&self, name: &str, note: &str) {
        if let Some(m) = self.lock().models.get_mut(name) {
            m.note = Some(note.to_string());
        }
    }

    /// Records what became of `model`'s saved channel state at start:
    /// `outcome` is `continued`, `fresh`, `stale` or `discarded`, `detail`
    /// says why, `channels` are the channels that went on from it.
    pub fn set_state_restore(&self, model: &str, outcome: &str, detail: &str, channels: &[&str]) {
        let mut inner = self.lock();
        for ch in channels {
            inner
                .channels
                .entry((model.to_string(), ch.to_string()))
                .or_default()
                .restored = true;
        }
        if let Some(m) = inner.models.get_mut(model) {
            m.channel_state =
                json!({"restore": outcome, "detail": detail, "channels_restored": channels.len()});
        }
    }

    /// Records what the state journal's replay at start did (see
    /// [`crate::journal`]): `messages` replayed in `seconds`, their samples
    /// `taken` again, `already` in the saved state, `refused`.
    pub fn set_journal_replay(
        &self,
        messages: usize,
        taken: u64,
        already: u64,
        refused: u64,
        seconds: f64,
    ) {
        self.lock().journal.get_or_insert_default().replayed = Some(json!({
            "messages": messages, "samples_taken": taken, "samples_already_saved": already,
            "samples_refused": refused, "seconds": seconds,
        }));
    }

    /// Records one append to the state journal: `messages` held messages'
    /// samples, `bytes` long, synced; or `Err` when it failed.
    pub fn record_journal_append(&self, result: Result<(usize, usize), ()>) {
        let mut inner = self.lock();
        let journal = inner.journal.get_or_insert_default();
        match result {
            Ok((messages, bytes)) => {
                self.metrics.journal_messages.inc_by(messages as u64);
                journal.appended_messages += messages as u64;
                journal.appended_bytes += bytes as u64;
            }
            Err(()) => {
                self.metrics.journal_errors.inc();
                journal.append_errors += 1;
            }
        }
    }

    /// Records one save of `model`'s channel state: `bytes` written in
    /// `duration`, or `Err` with the reason it failed.
    pub fn record_state_save(&self, model: &str, result: Result<(usize, Duration), String>) {
        let label = ModelLabel {
            model: model.to_string(),
        };
        let last = match &result {
            Ok((bytes, duration)) => {
                self.metrics.state_age.get_or_create(&label).set(0.0);
                self.metrics
                    .state_save_duration
                    .get_or_create(&label)
                    .set(duration.as_secs_f64());
                self.metrics
                    .state_bytes
                    .get_or_create(&label)
                    .set(*bytes as i64);
                json!({"ok": true, "bytes": bytes, "duration_us": duration.as_micros() as u64})
            }
            Err(why) => {
                self.metrics.state_save_errors.get_or_create(&label).inc();
                json!({"ok": false, "error": why})
            }
        };
        if let Some(m) = self.lock().models.get_mut(model) {
            if !m.channel_state.is_object() {
                m.channel_state = json!({});
            }
            m.channel_state["last_save"] = last;
        }
    }

    /// Sets the age of `model`'s saved channel state (seconds since its
    /// last save, or since the save it was restored from).
    pub fn set_state_age(&self, model: &str, age: Duration) {
        self.metrics
            .state_age
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .set(age.as_secs_f64());
    }

    /// The statistics of a registered model (shared with its engine
    /// threads and the KServe endpoints); `None` for an unknown model.
    pub fn stats(&self, model: &str) -> Option<Arc<InferStats>> {
        self.lock().models.get(model).map(|m| Arc::clone(&m.stats))
    }

    /// Registers a telemetry source `name` of `kind` (`mqtt`, `serial`) at
    /// `endpoint` (broker address, device path).
    pub fn register_source(&self, name: &str, kind: &str, endpoint: &str) {
        let mut inner = self.lock();
        let s = inner.sources.entry(name.to_string()).or_default();
        s.kind = kind.to_string();
        s.endpoint = endpoint.to_string();
    }

    /// Records a source's link state; a drop from connected counts as a disconnect.
    pub fn set_source_connected(&self, name: &str, connected: bool) {
        let mut inner = self.lock();
        let s = inner.sources.entry(name.to_string()).or_default();
        if s.connected && !connected {
            s.disconnects += 1;
        }
        s.connected = connected;
    }

    /// Counts `messages` (1, or 0 for a later part of a message split over
    /// pipeline tasks) of `bytes` from source `name`, carrying `samples`
    /// accepted samples.
    pub fn record_input(&self, name: &str, messages: u64, bytes: usize, samples: usize) {
        self.metrics.input(name, messages, bytes);
        let now = Instant::now();
        let mut inner = self.lock();
        let s = inner.sources.entry(name.to_string()).or_default();
        s.messages += messages;
        s.bytes += bytes as u64;
        s.samples += samples as u64;
        let (messages, samples) = (s.messages, s.samples);
        s.message_rate.observe(now, messages);
        s.sample_rate.observe(now, samples);
    }

    /// Records the broker connection state (the [`MQTT_SOURCE`] source).
    pub fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
        self.set_source_connected(MQTT_SOURCE, connected);
        self.metrics.mqtt_connected.set(connected as i64);
        self.update_ready();
    }

    /// Whether every model is ready, the broker is connected and the
    /// channel state is restored.
    pub fn is_ready(&self) -> bool {
        let inner = self.lock();
        inner.connected && !inner.restoring && Self::models_ready(&inner)
    }

    /// Records that the pipelines' saved channel state is being restored
    /// (`true`) or is restored (`false`): not ready meanwhile, so a client
    /// that waits for `/readyz` (or systemd for `READY=1`) sees each
    /// model's restore outcome on the status page.
    pub fn set_restoring(&self, restoring: bool) {
        self.lock().restoring = restoring;
        self.update_ready();
    }

    /// Every registered model's name and state, and whether the broker is
    /// connected: what the watchdog's `STATUS=` line needs, without building
    /// the whole `/api/status` document (which, for a thousand models, took
    /// a quarter of a core at the watchdog's four reads a second).
    pub fn model_states(&self) -> (Vec<(String, ModelState)>, bool) {
        let inner = self.lock();
        let models = inner
            .models
            .iter()
            .map(|(name, m)| (name.clone(), m.state.clone()))
            .collect();
        (models, inner.connected)
    }

    /// Whether every model is ready (the broker aside): KServe readiness.
    pub fn are_models_ready(&self) -> bool {
        Self::models_ready(&self.lock())
    }

    /// Every model has settled (ready, or failed to load) and at least one
    /// serves: a service with one broken model still serves the others
    /// (degraded, see [`StatusBoard::snapshot`]'s `degraded`).
    fn models_ready(inner: &Inner) -> bool {
        let settled = inner
            .models
            .values()
            .all(|m| matches!(m.state, ModelState::Ready | ModelState::Failed(_)));
        settled && inner.models.values().any(|m| m.state == ModelState::Ready)
    }

    /// Whether model `name` is registered and ready.
    pub fn is_model_ready(&self, name: &str) -> bool {
        self.lock()
            .models
            .get(name)
            .is_some_and(|m| m.state == ModelState::Ready)
    }

    fn update_ready(&self) {
        self.metrics.ready.set(self.is_ready() as i64);
    }

    /// Records one batch of `model` run in `bucket` taking `micros` µs of engine time.
    pub fn record_batch(&self, model: &str, bucket: usize, micros: u64) {
        let labels = ModelBucketLabels {
            model: model.into(),
            bucket: bucket.to_string(),
        };
        self.metrics.batches.get_or_create(&labels).inc();
        self.metrics
            .compute_seconds
            .get_or_create(&labels)
            .observe(micros as f64 / 1e6);
        if let Some(m) = self.lock().models.get_mut(model) {
            m.inference_us.saturating_record(micros.max(1));
        }
    }

    /// Records how long one item of `source` (`telemetry`, `http`) waited in the batcher.
    pub fn record_queue_time(&self, model: &str, source: &str, micros: u64) {
        self.metrics
            .queue_seconds
            .get_or_create(&ModelSourceLabels {
                model: model.into(),
                source: source.into(),
            })
            .observe(micros as f64 / 1e6);
        if let Some(m) = self.lock().models.get_mut(model) {
            m.queue_us.saturating_record(micros.max(1));
        }
    }

    /// Records one telemetry window's latency (last sample received → result scored).
    pub fn record_latency(&self, model: &str, micros: u64) {
        self.record_end_to_end(model, "telemetry", micros);
        if let Some(m) = self.lock().models.get_mut(model) {
            m.latency_us.saturating_record(micros.max(1));
            m.recent.latency.saturating_record(micros.max(1));
        }
    }

    /// Records one end-to-end time of `source` (`telemetry`, `http`) in the metrics.
    pub fn record_end_to_end(&self, model: &str, source: &str, micros: u64) {
        self.metrics
            .end_to_end_seconds
            .get_or_create(&ModelSourceLabels {
                model: model.into(),
                source: source.into(),
            })
            .observe(micros as f64 / 1e6);
    }

    /// Counts `n` accepted samples of `channel`.
    pub fn record_samples(&self, model: &str, channel: &str, n: u64) {
        Metrics::add(&self.metrics.samples, model, n);
        let mut inner = self.lock();
        match inner
            .channels
            .get_mut(&(model.to_string(), channel.to_string()))
        {
            Some(c) => c.samples += n,
            None => {
                inner.channels.insert(
                    (model.into(), channel.into()),
                    ChannelStatus {
                        samples: n,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Records a channel's latest score.
    pub fn record_score(&self, model: &str, channel: &str, score: &Score) {
        Metrics::add(&self.metrics.scores, model, 1);
        let history = self.config.score_history;
        let mut inner = self.lock();
        let c = inner
            .channels
            .entry((model.to_string(), channel.to_string()))
            .or_default();
        c.recent.push_back((score.score, score.threshold));
        while c.recent.len() > history {
            c.recent.pop_front();
        }
        c.last = Some(score.clone());
    }

    /// Records an anomaly event (`/api/status` shows it as its MQTT payload).
    pub fn record_event(&self, event: &ModelEvent) {
        self.metrics
            .events
            .get_or_create(&ModelKindLabels {
                model: event.model.to_string(),
                kind: event.event.event.as_str().into(),
            })
            .inc();
        let keep = self.config.recent_events;
        let mut inner = self.lock();
        inner.events.push_back(event.clone());
        while inner.events.len() > keep {
            inner.events.pop_front();
        }
    }

    /// Registers a source whose own counters `/api/status` (`sources`) and
    /// `/metrics` show; register its name with [`Self::register_source`] too.
    pub fn add_source(&self, source: Arc<dyn super::SourceStatus>) {
        self.metrics.sources.add(source);
    }

    /// Counts `samples` accepted samples from source `name` (its rate on the
    /// page), for sources whose messages [`Self::add_source`] counts.
    pub fn record_source_samples(&self, name: &str, samples: usize) {
        let now = Instant::now();
        let mut inner = self.lock();
        let s = inner.sources.entry(name.to_string()).or_default();
        s.samples += samples as u64;
        let n = s.samples;
        s.sample_rate.observe(now, n);
    }

    /// The service's health in one word and its reasons, worst first:
    /// `not_ready` (the broker or a model is not up), `degraded` (a model
    /// failed), `over_budget` (over the last one to two minutes a model's
    /// window latency p99 exceeded its budget, or it dropped windows), else
    /// `nominal`. The status page's header shows it.
    fn health(inner: &Inner, m: &Metrics) -> Value {
        /// The states, worst first.
        const ORDER: [&str; 4] = ["not_ready", "degraded", "over_budget", "nominal"];
        let rank = |x: &str| ORDER.iter().position(|o| *o == x).unwrap_or(ORDER.len());
        let mut state = "nominal";
        let mut why = Vec::new();
        let mut worse = |s: &'static str| {
            if rank(s) < rank(state) {
                state = s;
            }
        };
        if !inner.connected {
            worse("not_ready");
            why.push("the broker is not connected".to_string());
        }
        for (name, s) in &inner.models {
            match &s.state {
                ModelState::Failed(_) => {
                    worse("degraded");
                    why.push(format!("model {name} failed"));
                }
                ModelState::Loading | ModelState::Rebuilding { .. } => {
                    worse("not_ready");
                    why.push(format!("model {name} is {}", s.state.name()));
                }
                ModelState::Ready => {}
            }
            let dropped = m
                .dropped_count(name)
                .saturating_sub(s.recent.dropped_before);
            let p99 = s.recent.p99().filter(|p| *p > s.budget_us);
            if p99.is_some() || dropped > 0 {
                worse("over_budget");
                let mut parts = Vec::new();
                if let Some(p) = p99 {
                    parts.push(format!(
                        "window latency p99 {:.1} ms over its {:.1} ms budget",
                        p as f64 / 1e3,
                        s.budget_us as f64 / 1e3
                    ));
                }
                if dropped > 0 {
                    parts.push(format!("{dropped} window(s) dropped"));
                }
                why.push(format!(
                    "model {name}: {} in the last minutes",
                    parts.join(", ")
                ));
            }
        }
        json!({ "state": state, "why": why })
    }

    /// The `/api/status` document.
    pub fn snapshot(&self) -> Value {
        self.snapshot_at(Instant::now())
    }

    /// [`StatusBoard::snapshot`] as of `now` (rates, the health's recent periods).
    pub fn snapshot_at(&self, now: Instant) -> Value {
        let m = &self.metrics;
        let own: BTreeMap<String, Value> = m
            .sources
            .all()
            .iter()
            .map(|s| s.status())
            .filter_map(|v| Some((v.get("name")?.as_str()?.to_string(), v)))
            .collect();
        // Read before taking the board's lock, which every stage waits on.
        let process = super::process::ProcessStats::read();
        let mut inner = self.lock();
        for (name, s) in inner.models.iter_mut() {
            s.recent.roll(now, m.dropped_count(name));
        }
        let health = Self::health(&inner, m);
        let pct = |h: &Histogram<u64>| {
            if h.is_empty() {
                Value::Null
            } else {
                json!({
                    "count": h.len(),
                    "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                    "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max(),
                })
            }
        };
        let models: Vec<Value> = inner
            .models
            .iter()
            .map(|(name, s)| {
                let (reason, progress) = match &s.state {
                    ModelState::Failed(r) => (Some(r.clone()), None),
                    ModelState::Rebuilding { progress } => (None, Some(*progress)),
                    _ => (None, None),
                };
                let (ok, failed) = s.stats.outcomes();
                json!({
                    "name": name, "engine": s.engine, "device": s.device, "note": s.note,
                    "state": s.state.name(), "reason": reason, "progress": progress,
                    "version": s.version, "latency_budget_us": s.budget_us, "buckets": s.buckets,
                    "queue_depth": m.queue_depth_of(name),
                    "dispatch_size": m.dispatch_size_of(name),
                    "samples": Metrics::value(&m.samples, name),
                    "windows": Metrics::value(&m.windows, name),
                    "windows_dropped": m.dropped_count(name),
                    "scores": Metrics::value(&m.scores, name),
                    "nonfinite_errors": Metrics::value(&m.nonfinite_errors, name),
                    "channel_state": s.channel_state,
                    "requests": { "success": ok, "fail": failed },
                    "latency_us": pct(&s.latency_us), "queue_us": pct(&s.queue_us),
                    "inference_us": pct(&s.inference_us),
                })
            })
            .collect();
        let sources: Vec<Value> = inner
            .sources
            .iter_mut()
            .map(|(name, s)| {
                let mut v = json!({
                    "name": name, "kind": s.kind, "endpoint": s.endpoint,
                    "state": if s.connected { "connected" } else { "disconnected" },
                    "messages": s.messages, "bytes": s.bytes, "samples": s.samples,
                    "disconnects": s.disconnects,
                    "messages_per_s": s.message_rate.rate(now, s.messages),
                    "samples_per_s": s.sample_rate.rate(now, s.samples),
                });
                // A source with counters of its own (a serial link): its
                // fields, with its link state and frames in the common ones.
                if let Some(Value::Object(more)) = own.get(name) {
                    for (k, x) in more {
                        v[k] = x.clone();
                    }
                    let up = more.get("link").and_then(Value::as_str) == Some("up");
                    v["state"] = if up { "connected" } else { "disconnected" }.into();
                    v["messages"] = more.get("frames").cloned().unwrap_or(Value::Null);
                    v["disconnects"] = more.get("link_losses").cloned().unwrap_or(Value::Null);
                }
                v
            })
            .collect();
        let channels: Vec<Value> = inner
            .channels
            .iter()
            .map(|((model, channel), c)| {
                json!({
                    "model": model, "channel": channel, "samples": c.samples,
                    "last": c.last, "restored": c.restored,
                    "recent_scores": c.recent.iter().map(|r| r.0).collect::<Vec<_>>(),
                    "recent_thresholds": c.recent.iter().map(|r| r.1).collect::<Vec<_>>(),
                })
            })
            .collect();
        let rejected: BTreeMap<&str, u64> = crate::ingest::decode::RejectReason::ALL
            .iter()
            .map(|r| (r.as_str(), m.rejected_count(r.as_str())))
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "ready": inner.connected && Self::models_ready(&inner),
            "degraded": inner.models.values().any(|m| matches!(m.state, ModelState::Failed(_))),
            "health": health,
            "broker": { "connected": inner.connected, "disconnects": m.mqtt_disconnects.get() },
            "ingest": { "overflow": m.ingest_overflow.get() },
            "sources": sources,
            "models": models,
            "channels": channels,
            "events": inner.events.iter().map(ModelEvent::to_json).collect::<Vec<_>>(),
            "rejected": rejected,
            "journal": inner.journal,
            "process": process,
        })
    }
}

/// The status room as the stages' event sink: each event is logged
/// ([`crate::events::log_event`]) and moves the counters, gauges and
/// per-model figures it stands for.
impl crate::events::EventSink for StatusBoard {
    fn emit(&self, event: crate::events::StageEvent<'_>) {
        use crate::events::StageEvent as E;
        crate::events::log_event(&event);
        match event {
            E::BrokerConnected { .. } => self.set_connected(true),
            E::BrokerLost { .. } => {
                self.metrics.mqtt_disconnects.inc();
                self.set_connected(false);
            }
            E::BrokerUnreachable { .. } => {}
            E::BrokerClosed => self.set_connected(false),
            E::IngestOverflow => {
                self.metrics.ingest_overflow.inc();
            }
            E::PublishFailed { .. } => {
                self.metrics.publish_errors.inc();
            }
            E::BatchRan {
                model,
                bucket,
                infer,
                dispatch_size,
            } => {
                self.record_batch(model, bucket, infer.as_micros() as u64);
                self.metrics.set_dispatch_size(model, dispatch_size);
            }
            E::BatchFailed { model, items, .. } => {
                self.metrics
                    .dropped(model, crate::batch::DropReason::EngineError, items as u64)
            }
            E::QueueWaited {
                model,
                source,
                waited,
            } => self.record_queue_time(model, source, waited.as_micros() as u64),
            E::QueueDepth { model, depth } => self.metrics.set_queue_depth(model, depth),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(index: u64, score: f32) -> Score {
        Score {
            index,
            t_ns: 0,
            error: score,
            score,
            threshold: 0.5,
            anomalous: score > 0.5,
        }
    }

    #[test]
    fn snapshot_lists_models_sources_and_channel_history() {
        let board = StatusBoard::new(StatusConfig {
            score_history: 3,
            ..StatusConfig::default()
        });
        board.set_model("m", "tract", ModelState::Loading, 1, 20_000, &[1, 4]);
        board.set_device("m", "CPU");
        board.set_model_state("m", ModelState::Rebuilding { progress: 0.25 });
        board.register_source(MQTT_SOURCE, "mqtt", "127.0.0.1:1883");
        board.set_connected(true);
        board.record_input(MQTT_SOURCE, 1, 100, 10);
        for i in 0..5 {
            board.record_score("m", "A-1", &score(i, i as f32 * 0.2));
        }
        let s = board.snapshot();
        assert_eq!(s["models"][0]["state"], "rebuilding");
        assert_eq!(s["models"][0]["progress"], 0.25);
        assert_eq!(s["models"][0]["device"], "CPU");
        assert_eq!(s["sources"][0]["kind"], "mqtt");
        assert_eq!(s["sources"][0]["state"], "connected");
        assert_eq!(s["sources"][0]["samples"], 10);
        let recent = s["channels"][0]["recent_scores"].as_array().unwrap();
        assert_eq!(recent.len(), 3);
        assert_eq!(s["channels"][0]["recent_thresholds"][2], 0.5);
        assert_eq!(s["ready"], false);
        assert!(s["process"]["rss_bytes"].as_u64().unwrap() > 0);
        board.set_model_state("m", ModelState::Ready);
        assert!(board.is_ready() && board.are_models_ready());
        board.set_restoring(true);
        assert!(
            !board.is_ready(),
            "not ready while the channel state is restored"
        );
        board.set_restoring(false);
        assert!(board.is_ready());
        board.set_connected(false);
        assert_eq!(board.snapshot()["sources"][0]["disconnects"], 1);
    }

    #[test]
    fn health_follows_the_recent_load_and_says_why() {
        let board = StatusBoard::new(StatusConfig::default());
        board.set_model("m", "tract", ModelState::Ready, 1, 20_000, &[1, 4]);
        board.register_source(MQTT_SOURCE, "mqtt", "127.0.0.1:1883");
        board.set_connected(true);
        let t0 = Instant::now();
        assert_eq!(board.snapshot_at(t0)["health"]["state"], "nominal");
        // A burst: windows 4.7 s late against a 20 ms budget, some dropped.
        for _ in 0..100 {
            board.record_latency("m", 4_700_000);
        }
        board
            .metrics
            .dropped("m", crate::batch::DropReason::QueueFull, 7);
        let h = board.snapshot_at(t0)["health"].clone();
        assert_eq!(h["state"], "over_budget", "{h}");
        let why = h["why"][0].as_str().unwrap();
        assert!(
            // 4 700 ms, to the histogram's 2 significant digits.
            why.starts_with("model m: window latency p99 47")
                && why.contains("ms over its 20.0 ms budget")
                && why.contains("7 window(s) dropped"),
            "{why}"
        );
        // Calm again: still shown for the next period, gone after two.
        for _ in 0..100 {
            board.record_latency("m", 5_000);
        }
        let later = t0 + RECENT_PERIOD;
        assert_eq!(board.snapshot_at(later)["health"]["state"], "over_budget");
        for _ in 0..100 {
            board.record_latency("m", 5_000);
        }
        let h = board.snapshot_at(later + RECENT_PERIOD)["health"].clone();
        assert_eq!(h["state"], "nominal", "{h}");
        // Worse states win.
        board.set_connected(false);
        let h = board.snapshot_at(later + RECENT_PERIOD)["health"].clone();
        assert_eq!(h["state"], "not_ready", "{h}");
        assert_eq!(h["why"][0], "the broker is not connected");
    }
}
