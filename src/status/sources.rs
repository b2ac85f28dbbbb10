//! The hook through which telemetry sources other than MQTT (serial links)
//! show their own counters on `/api/status` and `/metrics`.
//!
//! A source keeps its counters in its own struct (atomics, updated on its
//! hot path without locks) and registers it once with
//! [`StatusBoard::add_source`](super::StatusBoard::add_source); the board
//! asks every registered source for its JSON when a page is served, and
//! the metrics registry asks each for its samples ([`MetricFamilies`],
//! encoded by `prometheus-client` as a collector) on every scrape.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use serde_json::Value;

/// A telemetry source that reports its state to the status board.
pub trait SourceStatus: Send + Sync + fmt::Debug {
    /// The source's entry in `/api/status` `sources`, e.g.
    /// `{"kind": "serial", "name": ..., "link": "up", ...}`.
    fn status(&self) -> Value;
    /// Adds the source's metric samples (names without the `gsinfer_` prefix).
    fn metrics(&self, out: &mut MetricFamilies);
}

/// Prometheus metric type of a [`MetricFamilies`] entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Metric samples grouped into families, so several sources can report the
/// same metric with different labels. Names carry no counter `_total`
/// suffix (the encoder adds it), and no `gsinfer_` prefix when the
/// collector is registered under the `gsinfer` sub-registry (it adds that).
#[derive(Debug, Default)]
pub struct MetricFamilies {
    families: BTreeMap<&'static str, Family>,
}

impl MetricFamilies {
    fn add(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        let labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.families
            .entry(name)
            .or_insert_with(|| Family {
                help,
                kind,
                samples: Vec::new(),
            })
            .samples
            .push((labels, value));
    }

    /// A counter sample; `name` without `_total`, e.g. `serial_frames`.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        self.add(Kind::Counter, name, help, labels, value);
    }

    /// A gauge sample.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        self.add(Kind::Gauge, name, help, labels, value);
    }

    /// Writes every family through a `prometheus-client` encoder.
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        for (name, f) in &self.families {
            let metric_type = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(name, f.help, None, metric_type)?;
            fn encode(kind: &Kind, sample: MetricEncoder<'_>, value: u64) -> fmt::Result {
                match kind {
                    Kind::Counter => ConstCounter::new(value).encode(sample),
                    Kind::Gauge => ConstGauge::new(value as i64).encode(sample),
                }
            }
            match f.samples.as_slice() {
                // One unlabelled sample is written without `{}`.
                [(labels, value)] if labels.is_empty() => encode(&f.kind, family, *value)?,
                samples => {
                    for (labels, value) in samples {
                        encode(&f.kind, family.encode_family(labels)?, *value)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The registered sources, shared by the status board (which adds to it)
/// and the metrics registry (which asks each source for its samples on
/// every scrape).
#[derive(Clone, Debug, Default)]
pub struct SourceRegistry {
    sources: Arc<Mutex<Vec<Arc<dyn SourceStatus>>>>,
}

impl SourceRegistry {
    /// Adds a source.
    pub fn add(&self, source: Arc<dyn SourceStatus>) {
        self.lock().push(source);
    }

    /// The sources registered so far.
    pub fn all(&self) -> Vec<Arc<dyn SourceStatus>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn SourceStatus>>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for SourceRegistry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut families = MetricFamilies::default();
        for s in self.all() {
            s.metrics(&mut families);
        }
        families.encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Fake(&'static str, u64);

    impl SourceStatus for Fake {
        fn status(&self) -> Value {
            serde_json::json!({ "name": self.0 })
        }
        fn metrics(&self, out: &mut MetricFamilies) {
            out.counter("x", "X.", &[("source", self.0)], self.1);
            out.gauge("up", "Up.", &[("source", self.0)], 1);
        }
    }

    #[test]
    fn sources_are_encoded_as_families_with_the_registry_prefix() {
        let sources = SourceRegistry::default();
        let mut root = Registry::default();
        root.sub_registry_with_prefix("gsinfer")
            .register_collector(Box::new(sources.clone()));
        sources.add(Arc::new(Fake("a\"b", 3)));
        sources.add(Arc::new(Fake("c", 4)));
        let mut text = String::new();
        encode(&mut text, &root).unwrap();
        assert_eq!(
            text,
            "# HELP gsinfer_up Up.\n# TYPE gsinfer_up gauge\n\
             gsinfer_up{source=\"a\\\"b\"} 1\ngsinfer_up{source=\"c\"} 1\n\
             # HELP gsinfer_x X.\n# TYPE gsinfer_x counter\n\
             gsinfer_x_total{source=\"a\\\"b\"} 3\ngsinfer_x_total{source=\"c\"} 4\n# EOF\n"
        );
    }
}
