//! The hook through which telemetry sources other than MQTT (serial links)
//! show their own counters on `/api/status` and `/metrics`.
//!
//! A source keeps its counters in its own struct (atomics, updated on its
//! hot path without locks) and registers it once with
//! [`StatusBoard::add_source`](super::StatusBoard::add_source); the board
//! asks every registered source for its JSON and its metric samples when
//! a page is served. The metrics are written in the Prometheus text
//! format by [`MetricFamilies`], independently of the metrics library the
//! rest of `/metrics` uses.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use serde_json::Value;

/// A telemetry source that reports its state to the status board.
pub trait SourceStatus: Send + Sync + fmt::Debug {
    /// The source's entry in `/api/status` `sources`, e.g.
    /// `{"kind": "serial", "name": ..., "link": "up", ...}`.
    fn status(&self) -> Value;
    /// Adds the source's metric samples (names `gsinfer_*`).
    fn metrics(&self, out: &mut MetricFamilies);
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, u64)>,
}

/// Metric samples grouped into families, so several sources can report the
/// same metric with different labels.
#[derive(Debug, Default)]
pub struct MetricFamilies {
    families: BTreeMap<&'static str, Family>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl MetricFamilies {
    fn add(
        &mut self,
        kind: &'static str,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
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

    /// A counter sample; `name` ends in `_total`.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.add("counter", name, help, labels, value);
    }

    /// A gauge sample.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.add("gauge", name, help, labels, value);
    }

    /// The families in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (labels, value) in &f.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

/// Appends source metrics to a rendered `/metrics` body, before an
/// OpenMetrics `# EOF` line if the body ends in one.
pub fn append_metrics(body: &mut String, extra: &str) {
    if extra.is_empty() {
        return;
    }
    match body.strip_suffix("# EOF\n") {
        Some(head) => {
            let mut joined = String::with_capacity(body.len() + extra.len());
            joined.push_str(head);
            joined.push_str(extra);
            joined.push_str("# EOF\n");
            *body = joined;
        }
        None => body.push_str(extra),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_samples_and_escape_labels() {
        let mut m = MetricFamilies::default();
        m.counter("gsinfer_x_total", "X.", &[("source", "a\"b")], 3);
        m.counter("gsinfer_x_total", "X.", &[("source", "c")], 4);
        m.gauge("gsinfer_up", "Up.", &[], 1);
        let text = m.render();
        assert_eq!(
            text,
            "# HELP gsinfer_up Up.\n# TYPE gsinfer_up gauge\ngsinfer_up 1\n\
             # HELP gsinfer_x_total X.\n# TYPE gsinfer_x_total counter\n\
             gsinfer_x_total{source=\"a\\\"b\"} 3\ngsinfer_x_total{source=\"c\"} 4\n"
        );
        let mut body = "a 1\n# EOF\n".to_string();
        append_metrics(&mut body, "b 2\n");
        assert_eq!(body, "a 1\nb 2\n# EOF\n");
    }
}
