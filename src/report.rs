//! What a telemetry source other than MQTT (a serial link) reports about
//! itself, for whoever shows it: the [`SourceStatus`] contract and the
//! metric samples it writes ([`MetricFamilies`]). A source keeps its
//! counters in its own struct (atomics, updated on its hot path without
//! locks); the status room (`status::sources`) registers it once, asks it
//! for its JSON when a page is served and for its samples on every scrape.
//! The source needs nothing from the status room.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use serde_json::Value;

/// A telemetry source that reports its state (to the status board, in the service).
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
