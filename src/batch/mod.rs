//! Fixed-latency micro-batching (DESIGN.md, "Fixed-latency micro-batching").
//!
//! Every window gets a deadline `arrival + L` where `L` is the model's
//! latency budget. A batch is dispatched as soon as the dispatch size is
//! queued or when the oldest window's deadline arrives, whichever is first,
//! or at once when no other window is expected before that deadline (the
//! running mean gap between arrivals says so: one channel at 1 Hz on its own
//! model never gets company within a 20 ms budget; and a model's first
//! window, before any gap is known), and is padded up to the next bucket so an engine's time per dispatch
//! depends only on the bucket. The dispatch size is the largest bucket until
//! the engine's measured time per window says a smaller bucket is as
//! efficient ([`BatchQueue::dispatch_size`]). The queue is bounded: when
//! full, the oldest window of the same channel is replaced by the newest.
//!
//! [`queue`] holds the policy as a pure state machine over an injected
//! clock; [`worker`] is the shared handle over it, and [`pool`] the
//! bounded set of engine worker threads that runs every model's batches.

pub mod pool;
pub mod queue;
pub mod worker;

pub use pool::{Instance, WorkerPool};
pub use queue::{Batch, BatchQueue, Next, PushOutcome};
pub use worker::BatchHandle;

/// Why a window never reached an engine or was never answered: the
/// `reason` label of `gsinfer_windows_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The batch queue was full and the window was replaced by a newer one
    /// of its channel, or refused (an inference request).
    QueueFull,
    /// The engine failed on the batch the window was in.
    EngineError,
}

impl DropReason {
    /// Every reason, in the order the status page lists them.
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::EngineError];

    /// The metric label, e.g. `queue_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::EngineError => "engine_error",
        }
    }
}

use serde::{Deserialize, Serialize};

/// Batching settings of one pipeline (`[[pipeline]] batch = {...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Latency budget `L` in µs: a window waits at most this long in the
    /// queue before its batch is dispatched. `None` (not set): the model's
    /// `dynamic_batching.max_queue_delay_microseconds` when config.pbtxt
    /// gives one above 0, else [`DEFAULT_BUDGET_US`]; see
    /// [`BatchConfig::budget_us`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_us: Option<u64>,
    /// Windows the queue holds before the full-policy replaces windows.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Batch-size buckets, ascending; a batch is padded up to the next one.
    /// Empty: the model's `dynamic_batching.preferred_batch_size`, else the
    /// powers of two up to `max_batch_size`.
    #[serde(default)]
    pub buckets: Vec<usize>,
    /// The dispatch policy: `deadline` (gsinfer's) or, for comparison only,
    /// `max_queue_delay` (Triton's dynamic batcher).
    #[serde(default, skip_serializing_if = "BatchPolicy::is_default")]
    pub policy: BatchPolicy,
}

/// How a model's queue decides what to dispatch (`batch.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchPolicy {
    /// gsinfer's fixed-latency policy (module docs): a per-window deadline
    /// `arrival + latency_budget_us`, dispatch when the dispatch size (the
    /// largest bucket, or a smaller one measured to be as efficient) is
    /// queued or the oldest deadline comes (at once when the mean gap
    /// between arrivals says no other window can join before it, and for
    /// the first window, before any gap is known), padded
    /// to the bucket; a bounded
    /// queue that replaces the oldest window of the same channel when full.
    #[default]
    Deadline,
    /// Triton's dynamic batcher with its default queue policy, kept to
    /// compare against on the same traffic (BENCHMARKS.md), not to serve
    /// with: dispatch at once when the queued count is one of the buckets
    /// (Triton's `preferred_batch_size`), else when the oldest window has
    /// waited `latency_budget_us` (`max_queue_delay_microseconds`); the batch
    /// runs at its exact size; the queue is unbounded and nothing is dropped,
    /// so under overload the backlog and the latency grow without limit.
    MaxQueueDelay,
}

impl BatchPolicy {
    fn is_default(&self) -> bool {
        *self == BatchPolicy::Deadline
    }
}

/// The latency budget when neither the pipeline nor config.pbtxt sets one, µs.
pub const DEFAULT_BUDGET_US: u64 = 20_000;

/// The longest latency budget accepted, µs (10 s).
pub const MAX_BUDGET_US: u64 = 10_000_000;

/// Where a model's latency budget comes from ([`BatchConfig::budget_us`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// The pipeline's `batch.latency_budget_us` (the TOML wins).
    Pipeline,
    /// config.pbtxt's `dynamic_batching.max_queue_delay_microseconds`.
    ConfigPbtxt,
    /// Neither sets one: [`DEFAULT_BUDGET_US`].
    Default,
}

impl BatchConfig {
    /// The latency budget in effect, in µs, and where it comes from: the
    /// pipeline's `latency_budget_us` when set, else `max_queue_delay_us`
    /// (config.pbtxt's `dynamic_batching.max_queue_delay_microseconds`, the
    /// longest a request waits for a batch in Triton: the same meaning)
    /// when above 0, else [`DEFAULT_BUDGET_US`]. Triton's own default of 0
    /// ("do not wait") is not taken: gsinfer's batcher needs a deadline.
    pub fn budget_us(&self, max_queue_delay_us: Option<u64>) -> (u64, BudgetSource) {
        match (self.latency_budget_us, max_queue_delay_us) {
            (Some(us), _) => (us, BudgetSource::Pipeline),
            (None, Some(us)) if us > 0 => (us, BudgetSource::ConfigPbtxt),
            _ => (DEFAULT_BUDGET_US, BudgetSource::Default),
        }
    }
}

fn default_queue_capacity() -> usize {
    4096
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            latency_budget_us: None,
            queue_capacity: default_queue_capacity(),
            buckets: Vec::new(),
            policy: BatchPolicy::Deadline,
        }
    }
}

/// The buckets used when none are configured: `preferred` if given (sorted,
/// deduplicated, capped at `max_batch_size`), else 1, 2, 4, ... up to
/// `max_batch_size`, always ending at `max_batch_size` itself.
///
/// `max_batch_size` 0 (a model without a batch dimension) gives `[1]`.
pub fn default_buckets(preferred: &[u32], max_batch_size: u32) -> Vec<usize> {
    let max = max_batch_size.max(1) as usize;
    let mut buckets: Vec<usize> = if preferred.is_empty() {
        std::iter::successors(Some(1usize), |b| b.checked_mul(2))
            .take_while(|b| *b < max)
            .collect()
    } else {
        preferred
            .iter()
            .map(|b| *b as usize)
            .filter(|b| *b > 0 && *b <= max)
            .collect()
    };
    buckets.push(max);
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_buckets_are_powers_of_two_up_to_max() {
        assert_eq!(default_buckets(&[], 64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(default_buckets(&[], 48), vec![1, 2, 4, 8, 16, 32, 48]);
        assert_eq!(default_buckets(&[], 0), vec![1]);
        assert_eq!(default_buckets(&[8, 2, 2, 128], 64), vec![2, 8, 64]);
    }
}
