//! Prometheus metrics (text exposition format 0.0.4), all named `gsinfer_*`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric gsinfer exports, registered in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Accepted samples, by pipeline model.
    pub samples: IntCounterVec,
    /// Rejected inputs by reason (`malformed`, `non_finite`, ...).
    pub rejected: IntCounterVec,
    /// Windows cut, by model.
    pub windows: IntCounterVec,
    /// Windows dropped before inference, by model and reason
    /// (`queue_full`, `engine_error`).
    pub windows_dropped: IntCounterVec,
    /// Batches run, by model and bucket.
    pub batches: IntCounterVec,
    /// Windows queued for the batcher, by model.
    pub queue_depth: IntGaugeVec,
    /// Engine time per batch in seconds, by model and bucket.
    pub inference_seconds: HistogramVec,
    /// Window latency in seconds: last sample of the window received →
    /// its result published, by model.
    pub latency_seconds: HistogramVec,
    /// Scores computed, by model.
    pub scores: IntCounterVec,
    /// Anomaly events raised, by model and kind (`anomaly_start`, `anomaly_end`).
    pub events: IntCounterVec,
    /// 1 while connected to the MQTT broker.
    pub mqtt_connected: IntGauge,
    /// Connections to the broker that were lost.
    pub mqtt_disconnects: IntCounter,
    /// Messages dropped because the ingest queue was full.
    pub ingest_overflow: IntCounter,
    /// Results that could not be handed to the MQTT client.
    pub publish_errors: IntCounter,
    /// Forecasts whose target sample was no longer kept, by model.
    pub late_forecasts: IntCounterVec,
    /// 1 when every engine is loaded and the broker is connected.
    pub ready: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let samples = counter(
            "gsinfer_samples_total",
            "Accepted telemetry samples.",
            &["model"],
        );
        let rejected = counter(
            "gsinfer_samples_rejected_total",
            "Rejected inputs by reason.",
            &["reason"],
        );
        let windows = counter("gsinfer_windows_total", "Windows cut.", &["model"]);
        let windows_dropped = counter(
            "gsinfer_windows_dropped_total",
            "Windows dropped before inference.",
            &["model", "reason"],
        );
        let batches = counter(
            "gsinfer_batches_total",
            "Batches run, by padded bucket size.",
            &["model", "bucket"],
        );
        let scores = counter("gsinfer_scores_total", "Scores computed.", &["model"]);
        let events = counter(
            "gsinfer_events_total",
            "Anomaly events raised.",
            &["model", "kind"],
        );
        let late_forecasts = counter(
            "gsinfer_late_forecasts_total",
            "Forecasts whose target sample was gone.",
            &["model"],
        );
        let queue_depth = IntGaugeVec::new(
            Opts::new("gsinfer_queue_depth", "Windows waiting in the batcher."),
            &["model"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique metric");
        let buckets = vec![
            1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.clone()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let inference_seconds = histogram(
            "gsinfer_inference_seconds",
            "Engine time per batch.",
            &["model", "bucket"],
        );
        let latency_seconds = histogram(
            "gsinfer_latency_seconds",
            "Last sample of a window received to its result published.",
            &["model"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let mqtt_connected = gauge(
            "gsinfer_mqtt_connected",
            "1 while connected to the MQTT broker.",
        );
        let ready = gauge(
            "gsinfer_ready",
            "1 when engines are loaded and the broker is connected.",
        );
        let mqtt_disconnects = single("gsinfer_mqtt_disconnects_total", "Broker connections lost.");
        let ingest_overflow = single(
            "gsinfer_ingest_overflow_total",
            "Messages dropped: ingest queue full.",
        );
        let publish_errors = single(
            "gsinfer_publish_errors_total",
            "Results the MQTT client refused.",
        );
        let info = IntGaugeVec::new(
            Opts::new("gsinfer_build_info", "Build information."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(info.clone()))
            .expect("unique metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            registry,
            samples,
            rejected,
            windows,
            windows_dropped,
            batches,
            queue_depth,
            inference_seconds,
            latency_seconds,
            scores,
            events,
            mqtt_connected,
            mqtt_disconnects,
            ingest_overflow,
            publish_errors,
            late_forecasts,
            ready,
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_inputs_are_labelled_by_reason() {
        let m = Metrics::new();
        m.rejected.with_label_values(&["malformed"]).inc();
        let text = m.render();
        assert!(
            text.contains("gsinfer_samples_rejected_total{reason=\"malformed\"} 1"),
            "{text}"
        );
        assert!(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("gsinfer_")));
    }
}
