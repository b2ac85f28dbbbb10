//! Telemetry ingest: the stage that turns bytes from MQTT and serial
//! links into timestamped samples, rejecting bad input by reason instead
//! of failing. Every source hands the router the same [`SampleBatch`].

pub mod batch;
pub mod ccsds;
pub mod decode;
pub mod framing;
pub mod mission;
pub mod mqtt;
pub mod serial;
pub mod tls;

pub use batch::{now_ns, Ack, Decoding, Dispatch, Origin, Owner, Refused, SampleBatch};
pub use decode::{decode, DecodeLimits, Decoded, PayloadFormat, RawSample, Reject, RejectReason};

use serde::{Deserialize, Serialize};

/// Input limits and the ingest queue (`[ingest]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest telemetry payload accepted, in bytes; larger ones are
    /// rejected as `oversized`.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Most samples in one payload (a JSON batch, CSV lines, binary records).
    #[serde(default = "default_max_samples")]
    pub max_samples_per_payload: usize,
    /// Messages buffered between the MQTT event loop and the pipelines;
    /// when full, new messages are dropped and counted
    /// (`gsinfer_ingest_overflow_total`) so the event loop never blocks.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Pipeline tasks the pipelines are split over (each windows, scores
    /// and saves the state of its own channels, on its own core when
    /// there are enough); 0: one per two cores. The queue above is per
    /// task.
    #[serde(default)]
    pub pipeline_tasks: usize,
}

/// Most pipeline tasks `ingest.pipeline_tasks` may ask for.
pub const MAX_PIPELINE_TASKS: usize = 64;

fn default_max_payload() -> usize {
    1 << 20
}
fn default_max_samples() -> usize {
    10_000
}
fn default_queue() -> usize {
    8192
}

impl IngestConfig {
    /// The decode limits of a pipeline of `features` values per sample.
    pub fn limits(&self, features: usize) -> DecodeLimits {
        DecodeLimits {
            max_payload_bytes: self.max_payload_bytes,
            max_samples: self.max_samples_per_payload,
            features,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: default_max_payload(),
            max_samples_per_payload: default_max_samples(),
            queue_capacity: default_queue(),
            pipeline_tasks: 0,
        }
    }
}
