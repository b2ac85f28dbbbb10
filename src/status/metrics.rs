//! Prometheus metrics on the `prometheus-client` crate, all named
//! `gsinfer_*`, in base units (seconds, bytes) with `_total` counters.
//!
//! The registry encodes OpenMetrics 1.0 text; [`Metrics::render`] serves that
//! to scrapers that ask for it (Prometheus does, in its `Accept` header) and
//! the classic Prometheus text format 0.0.4 to everyone else (curl, older
//! scrapers), converted by [`openmetrics_to_text_004`].

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use super::board::ModelState;
use crate::batch::DropReason;

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model name.
    pub model: String,
}

/// Labels `model`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelReasonLabels {
    /// Model name.
    pub model: String,
    /// Why, e.g. `queue_full`.
    pub reason: String,
}

/// Label `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why, e.g. `malformed`.
    pub reason: String,
}

/// Label `source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Where inputs come from: `mqtt`, `http` (later `serial`).
    pub source: String,
}

/// Labels `model`, `source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelSourceLabels {
    /// Model name.
    pub model: String,
    /// `telemetry` or `http`.
    pub source: String,
}

/// Labels `model`, `bucket`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelBucketLabels {
    /// Model name.
    pub model: String,
    /// The batch-size bucket the batch was padded to.
    pub bucket: String,
}

/// Labels `model`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelKindLabels {
    /// Model name.
    pub model: String,
    /// `anomaly_start` or `anomaly_end`.
    pub kind: String,
}

/// Labels `model`, `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelStateLabels {
    /// Model name.
    pub model: String,
    /// `loading`, `ready`, `rebuilding` or `failed`.
    pub state: String,
}

/// Label `code`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Status code: HTTP (`404`) or gRPC (`NOT_FOUND`).
    pub code: String,
}

/// Label `version`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric gsinfer exports, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Messages (MQTT) and requests (HTTP inference) received, by source.
    pub inputs: Family<SourceLabel, Counter>,
    /// Bytes of those inputs' payloads, by source.
    pub input_bytes: Family<SourceLabel, Counter>,
    /// Accepted samples, by pipeline model.
    pub samples: Family<ModelLabel, Counter>,
    /// Rejected inputs by reason (`malformed`, `non_finite`, ...).
    pub rejected: Family<ReasonLabel, Counter>,
    /// Windows cut, by model.
    pub windows: Family<ModelLabel, Counter>,
    /// Windows (and HTTP request items) dropped before inference, by model
    /// and reason (`queue_full`, `engine_error`).
    pub windows_dropped: Family<ModelReasonLabels, Counter>,
    /// Batches run, by model and bucket.
    pub batches: Family<ModelBucketLabels, Counter>,
    /// Items waiting in the batcher, by model.
    pub queue_depth: Family<ModelLabel, Gauge>,
    /// The batch size the batcher dispatches without waiting for a deadline
    /// (learned from engine times; `BatchQueue::dispatch_size`), by model.
    pub dispatch_size: Family<ModelLabel, Gauge>,
    /// 1 for a model's current engine state, 0 for the others.
    pub engine_state: Family<ModelStateLabels, Gauge>,
    /// Time an item waited in the batcher queue, by model and source.
    pub queue_seconds: HistogramFamily<ModelSourceLabels>,
    /// Engine time per batch, by model and bucket.
    pub compute_seconds: HistogramFamily<ModelBucketLabels>,
    /// Telemetry: last sample of a window received → its result scored;
    /// HTTP: inference request received → response ready. By model and source.
    pub end_to_end_seconds: HistogramFamily<ModelSourceLabels>,
    /// Scores computed, by model.
    pub scores: Family<ModelLabel, Counter>,
    /// Anomaly events raised, by model and kind (`anomaly_start`, `anomaly_end`).
    pub events: Family<ModelKindLabels, Counter>,
    /// HTTP responses, by status code.
    pub http_responses: Family<CodeLabel, Counter>,
    /// KServe gRPC responses, by gRPC status code name (`OK`,
    /// `INVALID_ARGUMENT`, ...).
    pub grpc_responses: Family<CodeLabel, Counter>,
    /// 1 while connected to the MQTT broker.
    pub mqtt_connected: Gauge,
    /// Connections to the broker that were lost.
    pub mqtt_disconnects: Counter,
    /// Messages dropped because the ingest queue was full.
    pub ingest_overflow: Counter,
    /// Results that could not be handed to the MQTT client.
    pub publish_errors: Counter,
    /// Forecasts whose target sample was no longer kept, by model.
    pub late_forecasts: Family<ModelLabel, Counter>,
    /// Raw errors that were NaN or infinite and were left out, by model.
    pub nonfinite_errors: Family<ModelLabel, Counter>,
    /// Seconds since each pipeline's channel state was last saved (or, before
    /// the first save, since the state restored at start was), by model.
    pub state_age: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// Duration of each pipeline's last state save, seconds, by model.
    pub state_save_duration: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// Size of each pipeline's last saved state file, bytes, by model.
    pub state_bytes: Family<ModelLabel, Gauge>,
    /// State saves that failed (a full or read-only disk), by model.
    pub state_save_errors: Family<ModelLabel, Counter>,
    /// QoS 1/2 messages appended to the state journal and synced.
    pub journal_messages: Counter,
    /// Journal appends that failed (their messages were acknowledged anyway).
    pub journal_errors: Counter,
    /// 1 when every engine is loaded and the broker is connected.
    pub ready: Gauge,
    /// Sources with counters of their own (serial links), scraped as a collector.
    pub sources: super::sources::SourceRegistry,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~52 s, factor 2: covers a batch of 1 on a GPU to an
    // overloaded CPU queue.
    Histogram::new((0..21).map(|i| 50e-6 * f64::powi(2.0, i)))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("gsinfer");
        let inputs = Family::default();
        r.register(
            "inputs",
            "Inputs received: MQTT messages, HTTP inference requests.",
            inputs.clone(),
        );
        let input_bytes = Family::default();
        r.register_with_unit(
            "input",
            "Payload bytes of the inputs received.",
            Unit::Bytes,
            input_bytes.clone(),
        );
        let samples = Family::default();
        r.register("samples", "Accepted telemetry samples.", samples.clone());
        let rejected: Family<ReasonLabel, Counter> = Family::default();
        r.register(
            "samples_rejected",
            "Rejected inputs by reason.",
            rejected.clone(),
        );
        let windows = Family::default();
        r.register("windows", "Windows cut.", windows.clone());
        let windows_dropped = Family::default();
        r.register(
            "windows_dropped",
            "Windows and HTTP request items dropped before inference.",
            windows_dropped.clone(),
        );
        let batches = Family::default();
        r.register(
            "batches",
            "Batches run, by padded bucket size.",
            batches.clone(),
        );
        let queue_depth = Family::default();
        r.register(
            "queue_depth",
            "Items waiting in the batcher.",
            queue_depth.clone(),
        );
        let dispatch_size = Family::default();
        r.register(
            "batch_dispatch_size",
            "Batch size dispatched without waiting for a deadline, learned from the engine's time per window.",
            dispatch_size.clone(),
        );
        let engine_state = Family::default();
        r.register(
            "engine_state",
            "1 for the engine's current state (loading, ready, rebuilding, failed).",
            engine_state.clone(),
        );
        let queue_seconds: HistogramFamily<_> = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "queue_duration",
            "Time an item waited in the batcher queue.",
            Unit::Seconds,
            queue_seconds.clone(),
        );
        let compute_seconds: HistogramFamily<_> = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "compute_duration",
            "Engine time per batch.",
            Unit::Seconds,
            compute_seconds.clone(),
        );
        let end_to_end_seconds: HistogramFamily<_> =
            Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "end_to_end_duration",
            "Telemetry: last sample of a window received to its result; HTTP: request received to response.",
            Unit::Seconds,
            end_to_end_seconds.clone(),
        );
        let scores = Family::default();
        r.register("scores", "Scores computed.", scores.clone());
        let events = Family::default();
        r.register("events", "Anomaly events raised.", events.clone());
        let http_responses = Family::default();
        r.register(
            "http_responses",
            "HTTP responses by status code.",
            http_responses.clone(),
        );
        let grpc_responses = Family::default();
        r.register(
            "grpc_responses",
            "KServe gRPC responses by status code name (OK, NOT_FOUND, ...)",
            grpc_responses.clone(),
        );
        let late_forecasts = Family::default();
        r.register(
            "late_forecasts",
            "Forecasts whose target sample was gone.",
            late_forecasts.clone(),
        );
        let nonfinite_errors = Family::default();
        r.register(
            "nonfinite_errors",
            "Raw errors that were NaN or infinite (a model output that was not finite), left out of scoring.",
            nonfinite_errors.clone(),
        );
        let state_age = Family::default();
        r.register(
            "state_age_seconds",
            "Seconds since the channel state of this model's pipeline was last saved (or restored at start).",
            state_age.clone(),
        );
        let state_save_duration = Family::default();
        r.register(
            "state_last_save_duration_seconds",
            "Duration of the last save of this model's channel state.",
            state_save_duration.clone(),
        );
        let state_bytes = Family::default();
        r.register(
            "state_bytes",
            "Size of the last saved channel state file of this model.",
            state_bytes.clone(),
        );
        let state_save_errors = Family::default();
        r.register(
            "state_save_errors",
            "Channel state saves that failed (full or read-only disk).",
            state_save_errors.clone(),
        );
        let journal_messages = Counter::default();
        r.register(
            "state_journal_messages",
            "QoS 1/2 messages appended to the state journal and synced before their acknowledgement.",
            journal_messages.clone(),
        );
        let journal_errors = Counter::default();
        r.register(
            "state_journal_errors",
            "State journal appends that failed (their messages were acknowledged anyway).",
            journal_errors.clone(),
        );
        let mqtt_connected = Gauge::default();
        r.register(
            "mqtt_connected",
            "1 while connected to the MQTT broker.",
            mqtt_connected.clone(),
        );
        let ready = Gauge::default();
        r.register(
            "ready",
            "1 when engines are loaded and the broker is connected.",
            ready.clone(),
        );
        let mqtt_disconnects = Counter::default();
        r.register(
            "mqtt_disconnects",
            "Broker connections lost.",
            mqtt_disconnects.clone(),
        );
        let ingest_overflow = Counter::default();
        r.register(
            "ingest_overflow",
            "Messages dropped: ingest queue full.",
            ingest_overflow.clone(),
        );
        let publish_errors = Counter::default();
        r.register(
            "publish_errors",
            "Results the MQTT client refused.",
            publish_errors.clone(),
        );
        // Every reason is exported from the start, at 0, so a rate() over it
        // works before the first reject.
        for reason in crate::ingest::decode::RejectReason::ALL {
            rejected
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str().into(),
                })
                .get();
        }
        let info = Family::<VersionLabel, Gauge>::default();
        info.get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
        r.register("build_info", "Build information.", info);
        let sources = super::sources::SourceRegistry::default();
        r.register_collector(Box::new(sources.clone()));
        // One /proc and allocator reading per scrape, for the process_* and
        // gsinfer_ figures alike.
        root.register_collector(Box::new(super::process::ProcessCollector));
        Self {
            registry: root,
            inputs,
            input_bytes,
            samples,
            rejected,
            windows,
            windows_dropped,
            batches,
            queue_depth,
            dispatch_size,
            engine_state,
            queue_seconds,
            compute_seconds,
            end_to_end_seconds,
            scores,
            events,
            http_responses,
            grpc_responses,
            mqtt_connected,
            mqtt_disconnects,
            ingest_overflow,
            publish_errors,
            late_forecasts,
            nonfinite_errors,
            state_age,
            state_save_duration,
            state_bytes,
            state_save_errors,
            journal_messages,
            journal_errors,
            ready,
            sources,
        }
    }

    /// Counts `n` rejected inputs of `reason` (e.g. `"malformed"`).
    pub fn reject(&self, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// Rejected inputs of `reason` so far.
    pub fn rejected_count(&self, reason: &str) -> u64 {
        self.rejected
            .get(&ReasonLabel {
                reason: reason.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Counts `messages` inputs (1, or 0 for a later part of a split
    /// message) of `bytes` from `source` (`mqtt`, `http`, ...).
    pub fn input(&self, source: &str, messages: u64, bytes: usize) {
        let label = SourceLabel {
            source: source.into(),
        };
        self.inputs.get_or_create(&label).inc_by(messages);
        self.input_bytes.get_or_create(&label).inc_by(bytes as u64);
    }

    /// Adds `n` to `family`'s counter of `model`.
    pub fn add(family: &Family<ModelLabel, Counter>, model: &str, n: u64) {
        family
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .inc_by(n);
    }

    /// The value of `family`'s counter of `model` (0 if never counted).
    pub fn value(family: &Family<ModelLabel, Counter>, model: &str) -> u64 {
        family
            .get(&ModelLabel {
                model: model.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Counts `n` items of `model` dropped for `reason`.
    pub fn dropped(&self, model: &str, reason: DropReason, n: u64) {
        self.windows_dropped
            .get_or_create(&ModelReasonLabels {
                model: model.into(),
                reason: reason.as_str().into(),
            })
            .inc_by(n);
    }

    /// Items of `model` dropped so far, all reasons.
    pub fn dropped_count(&self, model: &str) -> u64 {
        DropReason::ALL
            .iter()
            .filter_map(|r| {
                self.windows_dropped
                    .get(&ModelReasonLabels {
                        model: model.into(),
                        reason: r.as_str().into(),
                    })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// Sets the batcher queue depth of `model`.
    pub fn set_queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .set(depth as i64);
    }

    /// Sets the batcher's current dispatch size of `model`.
    pub fn set_dispatch_size(&self, model: &str, size: usize) {
        self.dispatch_size
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .set(size as i64);
    }

    /// The batcher's current dispatch size of `model` (0 before its first batch).
    pub fn dispatch_size_of(&self, model: &str) -> i64 {
        self.dispatch_size
            .get(&ModelLabel {
                model: model.into(),
            })
            .map_or(0, |g| g.get())
    }

    /// The batcher queue depth of `model`.
    pub fn queue_depth_of(&self, model: &str) -> i64 {
        self.queue_depth
            .get(&ModelLabel {
                model: model.into(),
            })
            .map_or(0, |g| g.get())
    }

    /// Sets `gsinfer_engine_state{model, state}` to 1 for `state`, 0 for the rest.
    pub fn set_engine_state(&self, model: &str, state: &ModelState) {
        for s in ModelState::NAMES {
            self.engine_state
                .get_or_create(&ModelStateLabels {
                    model: model.into(),
                    state: s.into(),
                })
                .set((s == state.name()) as i64);
        }
    }

    /// Every metric as `(content type, body)`: OpenMetrics when `accept`
    /// (the request's `Accept` header) asks for it, else the Prometheus text
    /// format 0.0.4.
    pub fn render(&self, accept: &str) -> (&'static str, String) {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encoding metrics to a String");
        if accept.contains("application/openmetrics-text") {
            (OPENMETRICS_CONTENT_TYPE, text)
        } else {
            (TEXT_CONTENT_TYPE, openmetrics_to_text_004(&text))
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Converts the OpenMetrics text that `prometheus-client` writes into the
/// Prometheus text format 0.0.4: a counter family's `HELP`/`TYPE` lines name
/// it with its `_total` suffix, `unknown` becomes `untyped`, and the `UNIT`
/// and `EOF` lines (unknown to 0.0.4) are left out. Samples are the same in
/// both formats (no exemplars or `_created` series are written).
pub fn openmetrics_to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if kind == "TYPE" && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("# {kind} {name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_inputs_are_labelled_by_reason_in_both_formats() {
        let m = Metrics::new();
        m.reject("malformed", 1);
        m.reject("malformed", 1);
        let (ct, text) = m.render("*/*");
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        assert!(
            text.contains("gsinfer_samples_rejected_total{reason=\"malformed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gsinfer_samples_rejected_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("gsinfer_") || l.starts_with("process_")));
        let (ct, om) = m.render("application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.contains("# TYPE gsinfer_samples_rejected counter"),
            "{om}"
        );
        assert_eq!(m.rejected_count("malformed"), 2);
    }

    #[test]
    fn histograms_are_in_seconds_and_engine_state_is_one_hot() {
        let m = Metrics::new();
        m.compute_seconds
            .get_or_create(&ModelBucketLabels {
                model: "m".into(),
                bucket: "4".into(),
            })
            .observe(0.004);
        m.set_engine_state("m", &ModelState::Ready);
        let (_, text) = m.render("");
        assert!(text.contains("# TYPE gsinfer_compute_duration_seconds histogram"));
        assert!(
            text.contains("gsinfer_compute_duration_seconds_count{model=\"m\",bucket=\"4\"} 1"),
            "{text}"
        );
        assert!(text.contains("gsinfer_engine_state{model=\"m\",state=\"ready\"} 1"));
        assert!(text.contains("gsinfer_engine_state{model=\"m\",state=\"failed\"} 0"));
    }

    #[test]
    fn the_process_and_its_heap_are_gauges_read_at_scrape_time() {
        let (_, text) = Metrics::new().render("");
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.split(' ').next() == Some(name))
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("gsinfer_threads") >= 1.0);
        if cfg!(feature = "jemalloc") {
            assert!(value("gsinfer_heap_allocated_bytes") > 0.0);
            assert!(value("gsinfer_heap_resident_bytes") >= value("gsinfer_heap_allocated_bytes"));
        }
    }
}
