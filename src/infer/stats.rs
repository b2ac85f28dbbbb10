//! Per-model inference statistics in the shape of Triton's statistics
//! extension (`GET /v2/models/<m>/stats`, Triton's
//! `docs/protocol/extension_statistics.md`).
//!
//! Everything that goes through a model's batcher is counted: telemetry
//! windows (one request of one inference each) and HTTP inference requests
//! (one request of `n` inferences). `execution_count` counts engine runs,
//! and `batch_stats` is keyed by the bucket a batch was padded to, the batch
//! size the engine actually ran.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// A count and the nanoseconds summed over it (Triton's `StatisticDuration`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Duration64 {
    /// How many.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

impl Duration64 {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }

    fn json(self) -> Value {
        json!({"count": self.count, "ns": self.ns})
    }
}

/// Where one request's (or batch's) time went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Waiting in the batcher queue.
    pub queue: Duration,
    /// Gathering the batch's input (copying rows, padding).
    pub compute_input: Duration,
    /// The engine run.
    pub compute_infer: Duration,
    /// Splitting the outputs and handing them on.
    pub compute_output: Duration,
}

impl Timing {
    /// Component-wise maximum: a request whose items ran in several
    /// batches is charged its slowest item's times.
    pub fn max(self, other: Timing) -> Timing {
        Timing {
            queue: self.queue.max(other.queue),
            compute_input: self.compute_input.max(other.compute_input),
            compute_infer: self.compute_infer.max(other.compute_infer),
            compute_output: self.compute_output.max(other.compute_output),
        }
    }
}

/// One model's statistics at one moment: Triton's `ModelStatistics`
/// without the name and version, which both KServe front ends encode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The last engine run, ms since the Unix epoch (0: none yet).
    pub last_inference_ms: u64,
    /// Batch items run (windows and request items), padding not counted.
    pub inference_count: u64,
    /// Engine runs.
    pub execution_count: u64,
    /// Requests that succeeded, and their total time.
    pub success: Duration64,
    /// Requests that failed, and their time until they failed.
    pub fail: Duration64,
    /// Time in the batch queue.
    pub queue: Duration64,
    /// Gathering batch inputs.
    pub compute_input: Duration64,
    /// Engine runs.
    pub compute_infer: Duration64,
    /// Splitting outputs.
    pub compute_output: Duration64,
    /// Bucket (the batch size the engine ran) → its (compute_input,
    /// compute_infer, compute_output).
    pub batches: BTreeMap<usize, [Duration64; 3]>,
}

/// One model's statistics; shared as `Arc<InferStats>` by its engine
/// threads and the KServe front ends.
#[derive(Debug, Default)]
pub struct InferStats {
    inner: Mutex<StatsSnapshot>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl InferStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatsSnapshot> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one engine run of `items` real items padded to `bucket`.
    pub fn record_execution(&self, bucket: usize, items: usize, timing: &Timing) {
        let mut s = self.lock();
        s.execution_count += 1;
        s.inference_count += items as u64;
        s.last_inference_ms = now_ms();
        let b = s.batches.entry(bucket).or_default();
        b[0].add(timing.compute_input);
        b[1].add(timing.compute_infer);
        b[2].add(timing.compute_output);
    }

    /// Records one request that succeeded after `total`, with where its time went.
    pub fn record_success(&self, total: Duration, timing: &Timing) {
        let mut s = self.lock();
        s.success.add(total);
        s.queue.add(timing.queue);
        s.compute_input.add(timing.compute_input);
        s.compute_infer.add(timing.compute_infer);
        s.compute_output.add(timing.compute_output);
    }

    /// Records one request that failed after `total`.
    pub fn record_failure(&self, total: Duration) {
        self.lock().fail.add(total);
    }

    /// Requests that succeeded and failed so far.
    pub fn outcomes(&self) -> (u64, u64) {
        let s = self.lock();
        (s.success.count, s.fail.count)
    }

    /// The statistics now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.lock().clone()
    }

    /// The `model_stats` entry of `name` version `version`, in the JSON form
    /// of Triton's statistics extension.
    pub fn to_json(&self, name: &str, version: u64) -> Value {
        let s = self.snapshot();
        let zero = Duration64::default().json();
        let batch_stats: Vec<Value> = s
            .batches
            .iter()
            .map(|(size, [i, c, o])| {
                json!({
                    "batch_size": size,
                    "compute_input": i.json(), "compute_infer": c.json(), "compute_output": o.json(),
                })
            })
            .collect();
        json!({
            "name": name,
            "version": version.to_string(),
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {
                "success": s.success.json(),
                "fail": s.fail.json(),
                "queue": s.queue.json(),
                "compute_input": s.compute_input.json(),
                "compute_infer": s.compute_infer.json(),
                "compute_output": s.compute_output.json(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "response_stats": {},
            "batch_stats": batch_stats,
            "memory_usage": [],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_executions_and_batch_sizes() {
        let stats = InferStats::default();
        let t = Timing {
            queue: Duration::from_micros(10),
            compute_input: Duration::from_micros(1),
            compute_infer: Duration::from_micros(100),
            compute_output: Duration::from_micros(2),
        };
        stats.record_execution(4, 3, &t);
        stats.record_execution(1, 1, &t);
        stats.record_success(Duration::from_micros(200), &t);
        stats.record_failure(Duration::from_micros(5));
        let v = stats.to_json("m", 1);
        assert_eq!(v["inference_count"], 4);
        assert_eq!(v["execution_count"], 2);
        assert_eq!(v["version"], "1");
        assert_eq!(v["inference_stats"]["success"]["count"], 1);
        assert_eq!(v["inference_stats"]["success"]["ns"], 200_000);
        assert_eq!(v["inference_stats"]["fail"]["count"], 1);
        assert_eq!(v["inference_stats"]["compute_infer"]["ns"], 100_000);
        assert_eq!(v["batch_stats"][0]["batch_size"], 1);
        assert_eq!(v["batch_stats"][1]["batch_size"], 4);
        assert_eq!(v["batch_stats"][1]["compute_infer"]["count"], 1);
    }
}
