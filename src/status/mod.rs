//! What gsinfer is doing, for people and for scrapers: the shared status
//! board every stage writes to, Prometheus metrics, and the HTTP server.

pub mod board;
pub mod http;
pub mod metrics;
pub mod sources;

pub use board::{ModelState, StatusBoard};
pub use metrics::Metrics;
pub use sources::{MetricFamilies, SourceStatus};

use serde::{Deserialize, Serialize};

/// HTTP status server (`[status]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Address and port to listen on; loopback by default, because the
    /// endpoints are unauthenticated.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Recent scores kept per channel for the status page's sparklines.
    #[serde(default = "default_history")]
    pub score_history: usize,
    /// Latest anomaly events kept for `/api/status`.
    #[serde(default = "default_events")]
    pub recent_events: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_history() -> usize {
    120
}

fn default_events() -> usize {
    50
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            score_history: default_history(),
            recent_events: default_events(),
        }
    }
}
