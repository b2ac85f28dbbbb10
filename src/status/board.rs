//! The status board: the live state every stage reports to, read by the
//! HTTP endpoints. Cheap to update (one uncontended lock per call).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{Metrics, StatusConfig};
use crate::score::Score;

/// Lifecycle of one model's engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// Being loaded or prepared.
    Loading,
    /// Serving.
    Ready,
    /// Could not be loaded; the reason.
    Failed(String),
}

#[derive(Debug)]
struct ModelStatus {
    engine: String,
    state: ModelState,
    version: u64,
    budget_us: u64,
    buckets: Vec<usize>,
    /// Window latency in µs.
    latency_us: Histogram<u64>,
    /// Engine time per batch in µs.
    inference_us: Histogram<u64>,
}

#[derive(Debug, Default)]
struct ChannelStatus {
    samples: u64,
    last: Option<Score>,
    recent: VecDeque<f32>,
}

#[derive(Debug, Default)]
struct Inner {
    connected: bool,
    models: BTreeMap<String, ModelStatus>,
    channels: BTreeMap<(String, String), ChannelStatus>,
    events: VecDeque<Value>,
}

/// See the module docs. Shared as `Arc<StatusBoard>`.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    config: StatusConfig,
    /// The Prometheus metrics, updated alongside the board.
    pub metrics: Metrics,
    inner: Mutex<Inner>,
    /// Sources with counters of their own (serial links), see [`super::sources`].
    sources: Mutex<Vec<Arc<dyn super::SourceStatus>>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl StatusBoard {
    /// An empty board.
    pub fn new(config: StatusConfig) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            config,
            metrics: Metrics::new(),
            inner: Mutex::default(),
            sources: Mutex::default(),
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
        let mut inner = self.lock();
        let entry = inner
            .models
            .entry(name.to_string())
            .or_insert_with(|| ModelStatus {
                engine: String::new(),
                state: ModelState::Loading,
                version,
                budget_us,
                buckets: Vec::new(),
                latency_us: histogram(),
                inference_us: histogram(),
            });
        entry.engine = engine.to_string();
        entry.state = state;
        entry.version = version;
        entry.budget_us = budget_us;
        entry.buckets = buckets.to_vec();
        drop(inner);
        self.update_ready();
    }

    /// Records the broker connection state.
    pub fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
        self.metrics.mqtt_connected.set(connected as i64);
        self.update_ready();
    }

    /// Whether every model is ready and the broker is connected.
    pub fn is_ready(&self) -> bool {
        let inner = self.lock();
        inner.connected
            && !inner.models.is_empty()
            && inner.models.values().all(|m| m.state == ModelState::Ready)
    }

    fn update_ready(&self) {
        self.metrics.ready.set(self.is_ready() as i64);
    }

    /// Records one batch of `model` run in `bucket` taking `micros` µs.
    pub fn record_batch(&self, model: &str, bucket: usize, micros: u64) {
        self.metrics
            .batches
            .with_label_values(&[model, &bucket.to_string()])
            .inc();
        self.metrics
            .inference_seconds
            .with_label_values(&[model, &bucket.to_string()])
            .observe(micros as f64 / 1e6);
        if let Some(m) = self.lock().models.get_mut(model) {
            m.inference_us.saturating_record(micros.max(1));
        }
    }

    /// Records one window's latency (last sample received → result out).
    pub fn record_latency(&self, model: &str, micros: u64) {
        self.metrics
            .latency_seconds
            .with_label_values(&[model])
            .observe(micros as f64 / 1e6);
        if let Some(m) = self.lock().models.get_mut(model) {
            m.latency_us.saturating_record(micros.max(1));
        }
    }

    /// Counts one accepted sample of `channel`.
    pub fn record_sample(&self, model: &str, channel: &str) {
        self.metrics.samples.with_label_values(&[model]).inc();
        let mut inner = self.lock();
        match inner
            .channels
            .get_mut(&(model.to_string(), channel.to_string()))
        {
            Some(c) => c.samples += 1,
            None => {
                inner.channels.insert(
                    (model.into(), channel.into()),
                    ChannelStatus {
                        samples: 1,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Records a channel's latest score.
    pub fn record_score(&self, model: &str, channel: &str, score: &Score) {
        self.metrics.scores.with_label_values(&[model]).inc();
        let history = self.config.score_history;
        let mut inner = self.lock();
        let c = inner
            .channels
            .entry((model.to_string(), channel.to_string()))
            .or_default();
        c.recent.push_back(score.score);
        while c.recent.len() > history {
            c.recent.pop_front();
        }
        c.last = Some(score.clone());
    }

    /// Records an anomaly event (its MQTT payload).
    pub fn record_event(&self, model: &str, kind: &str, payload: Value) {
        self.metrics.events.with_label_values(&[model, kind]).inc();
        let keep = self.config.recent_events;
        let mut inner = self.lock();
        inner.events.push_back(payload);
        while inner.events.len() > keep {
            inner.events.pop_front();
        }
    }

    /// Registers a source whose own counters `/api/status` (`sources`) and
    /// `/metrics` show.
    pub fn add_source(&self, source: Arc<dyn super::SourceStatus>) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    fn sources(&self) -> Vec<Arc<dyn super::SourceStatus>> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The registered sources' metrics in the Prometheus text format.
    pub fn source_metrics(&self) -> String {
        let mut families = super::MetricFamilies::default();
        for s in self.sources() {
            s.metrics(&mut families);
        }
        families.render()
    }

    /// The `/api/status` document.
    pub fn snapshot(&self) -> Value {
        let m = &self.metrics;
        let sources: Vec<Value> = self.sources().iter().map(|s| s.status()).collect();
        let inner = self.lock();
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
                let (state, reason) = match &s.state {
                    ModelState::Loading => ("loading", None),
                    ModelState::Ready => ("ready", None),
                    ModelState::Failed(r) => ("failed", Some(r.clone())),
                };
                let dropped: u64 = ["queue_full", "engine_error"]
                    .iter()
                    .map(|r| m.windows_dropped.with_label_values(&[name.as_str(), r]).get())
                    .sum();
                json!({
                    "name": name, "engine": s.engine, "state": state, "reason": reason, "version": s.version,
                    "latency_budget_us": s.budget_us, "buckets": s.buckets,
                    "queue_depth": m.queue_depth.with_label_values(&[name]).get(),
                    "samples": m.samples.with_label_values(&[name]).get(),
                    "windows": m.windows.with_label_values(&[name]).get(),
                    "windows_dropped": dropped,
                    "scores": m.scores.with_label_values(&[name]).get(),
                    "latency_us": pct(&s.latency_us), "inference_us": pct(&s.inference_us),
                })
            })
            .collect();
        let channels: Vec<Value> = inner
            .channels
            .iter()
            .map(|((model, channel), c)| {
                json!({
                    "model": model, "channel": channel, "samples": c.samples,
                    "last": c.last, "recent_scores": c.recent,
                })
            })
            .collect();
        let rejected: BTreeMap<&str, u64> = crate::ingest::decode::RejectReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    m.rejected.with_label_values(&[r.as_str()]).get(),
                )
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "ready": inner.connected && !inner.models.is_empty()
                && inner.models.values().all(|m| m.state == ModelState::Ready),
            "broker": { "connected": inner.connected, "disconnects": m.mqtt_disconnects.get() },
            "ingest": { "overflow": m.ingest_overflow.get() },
            "models": models,
            "channels": channels,
            "events": inner.events,
            "rejected": rejected,
            "sources": sources,
        })
    }
}
