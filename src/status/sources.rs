//! The registry of the telemetry sources other than MQTT (serial links):
//! [`StatusBoard::add_source`](super::StatusBoard::add_source) adds a
//! source's [`SourceStatus`] (the contract lives in [`crate::report`]); the
//! board asks every registered source for its JSON when a page is served,
//! and the metrics registry asks each for its samples ([`MetricFamilies`],
//! encoded by `prometheus-client` as a collector) on every scrape.

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

pub use crate::report::{MetricFamilies, SourceStatus};

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
    use serde_json::Value;

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
