//! What gsinfer is doing, for people, scrapers and inference clients: the
//! shared status board every stage writes to, Prometheus metrics, Triton-style
//! inference statistics, the status page, and the HTTP server that serves
//! them and, under `/v2`, the KServe v2 endpoints of [`crate::kserve`].

pub mod board;
pub mod metrics;
pub mod page;
pub mod process;
pub mod rate;
pub mod sources;

pub use board::{ModelState, StatusBoard};
pub use metrics::Metrics;
pub use sources::{MetricFamilies, SourceStatus};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// HTTP status server (`[status]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Address and port to listen on; loopback by default, because only the
    /// inference endpoints can require a token.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Recent scores kept per channel for the status page's sparklines.
    #[serde(default = "default_history")]
    pub score_history: usize,
    /// Latest anomaly events kept for `/api/status`.
    #[serde(default = "default_events")]
    pub recent_events: usize,
    /// HTTP worker threads; an inference request holds one while it waits
    /// for its batch, so this bounds the concurrent HTTP inferences.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Socket read and write timeout per connection, in ms: a client that
    /// stalls for longer mid-request is cut off.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    /// Longest an HTTP inference request waits for its results, in ms,
    /// before it is answered 503.
    #[serde(default = "default_infer_timeout")]
    pub infer_timeout_ms: u64,
    /// File holding a bearer token that `POST .../infer` and
    /// `POST /v2/repository/index` then require (`Authorization: Bearer
    /// <token>`); must not be readable by others. A relative path is taken
    /// from the configuration file's folder. None: no token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
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

fn default_threads() -> usize {
    16
}

fn default_max_body() -> usize {
    16 << 20
}

fn default_read_timeout() -> u64 {
    30_000
}

fn default_infer_timeout() -> u64 {
    30_000
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            score_history: default_history(),
            recent_events: default_events(),
            threads: default_threads(),
            max_body_bytes: default_max_body(),
            read_timeout_ms: default_read_timeout(),
            infer_timeout_ms: default_infer_timeout(),
            token_file: None,
        }
    }
}
