//! The batching policy: a pure state machine over a queue of windows.
//!
//! No I/O, no clock of its own: every call takes `now`, so tests drive it
//! with a fake clock and never sleep. [`BatchQueue::next_batch`] is the
//! whole dispatch policy; [`BatchPolicy::MaxQueueDelay`] swaps it for
//! Triton's, to compare the two on the same traffic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::BatchPolicy;

/// A smaller bucket is dispatched in place of a larger one when its measured
/// engine time per window is within this fraction of the best bucket's.
pub const EFFICIENCY_TOLERANCE: f64 = 0.05;

/// Weight of the newest batch in a bucket's running mean time per window.
const COST_EWMA_WEIGHT: f64 = 0.3;

/// While a backlog is queued, one dispatch in this many takes the next
/// larger bucket instead of the dispatch size, so that a bucket measured
/// once at a bad moment is measured again and can win back.
const EXPLORE_EVERY: u64 = 16;

/// Weight of the newest gap in the running mean time between arrivals.
const GAP_EWMA_WEIGHT: f64 = 0.3;

/// One queued item with its channel and dispatch deadline.
#[derive(Debug)]
struct Entry<T> {
    channel: u32,
    deadline: Instant,
    item: T,
}

/// What [`BatchQueue::push`] did.
#[derive(Debug, PartialEq)]
pub enum PushOutcome<T> {
    /// The item was queued; nothing was lost.
    Queued,
    /// The queue was full: the oldest queued window of the same channel was
    /// replaced by the new one (which takes over its place and deadline).
    /// The replaced item is handed back to be counted.
    Replaced(T),
    /// The queue was full and held no window of this channel: the oldest
    /// window of any channel was dropped to make room; it is handed back.
    Evicted(T),
}

/// A dispatched batch.
#[derive(Debug, PartialEq)]
pub struct Batch<T> {
    /// The items, oldest first; `1..=bucket` of them.
    pub items: Vec<T>,
    /// The bucket the batch is padded to (`>= items.len()`).
    pub bucket: usize,
}

/// The policy's answer to "what now?".
#[derive(Debug, PartialEq)]
pub enum Next<T> {
    /// Run this batch now.
    Dispatch(Batch<T>),
    /// Nothing is due; ask again at this instant (or when an item arrives).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// A bounded queue of windows with per-window deadlines and bucketed
/// dispatch; see the module docs of [`crate::batch`].
#[derive(Debug)]
pub struct BatchQueue<T> {
    entries: VecDeque<Entry<T>>,
    capacity: usize,
    buckets: Vec<usize>,
    budget: Duration,
    draining: bool,
    policy: BatchPolicy,
    /// Per bucket (same index as `buckets`): the engine's running mean time
    /// per window in µs, from [`BatchQueue::record`]; `None` until measured.
    cost_us: Vec<Option<f64>>,
    /// Per bucket: batches recorded (the first one is not used: warm-up).
    runs: Vec<u32>,
    /// Batches dispatched so far.
    dispatched: u64,
    /// When the last item (or group of items) arrived.
    last_arrival: Option<Instant>,
    /// Running mean time between arrivals in µs (EWMA, weight
    /// [`GAP_EWMA_WEIGHT`]); `None` until two arrivals were seen.
    gap_us: Option<f64>,
}

impl<T> BatchQueue<T> {
    /// A queue holding at most `capacity` items, dispatching in `buckets`
    /// (ascending, non-empty, checked by config validation), each item due
    /// `budget` after it was pushed.
    pub fn new(capacity: usize, buckets: Vec<usize>, budget: Duration) -> Self {
        assert!(capacity > 0, "queue capacity must be positive");
        assert!(!buckets.is_empty() && buckets.windows(2).all(|w| w[0] < w[1]) && buckets[0] > 0);
        let cost_us = vec![None; buckets.len()];
        let runs = vec![0; buckets.len()];
        Self {
            // Grown as windows come: reserving `capacity` up front held
            // ~0.5 MB per model (4 096 entries) that a model at one window a
            // second never touches.
            entries: VecDeque::new(),
            capacity,
            buckets,
            budget,
            draining: false,
            policy: BatchPolicy::Deadline,
            cost_us,
            runs,
            dispatched: 0,
            last_arrival: None,
            gap_us: None,
        }
    }

    /// Notes an arrival at `now` in the running mean gap between arrivals.
    fn arrived(&mut self, now: Instant) {
        if let Some(last) = self.last_arrival {
            let gap = now.saturating_duration_since(last).as_secs_f64() * 1e6;
            self.gap_us = Some(match self.gap_us {
                None => gap,
                Some(mean) => mean + GAP_EWMA_WEIGHT * (gap - mean),
            });
        }
        self.last_arrival = Some(now);
    }

    /// Whether no other window is expected before `deadline`: the last
    /// arrival plus the mean gap between arrivals falls after it, or only
    /// one arrival has been seen (nothing says another is coming: a
    /// model's first window, e.g. every per-channel model's just after a
    /// start, would otherwise wait out its whole budget for company that
    /// at one window a second never comes). `false` before any arrival.
    fn alone_until(&self, deadline: Instant) -> bool {
        match (self.last_arrival, self.gap_us) {
            (Some(last), Some(gap_us)) => last + Duration::from_secs_f64(gap_us / 1e6) > deadline,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The same queue under `policy` (default [`BatchPolicy::Deadline`]).
    pub fn with_policy(mut self, policy: BatchPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The largest bucket: a batch this large is dispatched at once.
    pub fn max_batch(&self) -> usize {
        *self.buckets.last().expect("non-empty buckets")
    }

    /// The bucket a batch of `n` items is padded to.
    pub fn bucket_for(&self, n: usize) -> usize {
        self.buckets
            .iter()
            .copied()
            .find(|b| *b >= n)
            .unwrap_or_else(|| self.max_batch())
    }

    /// Records that the engine ran a batch of `size` windows (the size it
    /// ran: the bucket for an engine that pads, the item count for one that
    /// does not) in `elapsed`; feeds [`BatchQueue::dispatch_size`]. The
    /// first run of each bucket is left out (warm-up).
    pub fn record(&mut self, size: usize, elapsed: Duration) {
        if size == 0 {
            return;
        }
        let bucket = self.bucket_for(size);
        let i = self
            .buckets
            .iter()
            .position(|b| *b == bucket)
            .expect("a bucket");
        self.runs[i] = self.runs[i].saturating_add(1);
        if self.runs[i] == 1 {
            // An engine's first run of a shape pays for its allocations and
            // planning (onnxruntime: tens of ms): not the bucket's cost.
            return;
        }
        let per_window = elapsed.as_secs_f64() * 1e6 / size as f64;
        let cost = &mut self.cost_us[i];
        *cost = Some(match *cost {
            None => per_window,
            Some(mean) => mean + COST_EWMA_WEIGHT * (per_window - mean),
        });
    }

    /// The batch size dispatched as soon as it is queued: the smallest
    /// bucket whose measured engine time per window is within
    /// [`EFFICIENCY_TOLERANCE`] of the best measured bucket's, once the
    /// largest bucket has been measured; until then (and under
    /// [`BatchPolicy::MaxQueueDelay`]) the largest bucket.
    ///
    /// An engine that gets cheaper per window up to the largest bucket (a
    /// GPU) keeps dispatching full batches; one whose time per window hardly
    /// falls past some size (an LSTM on one CPU thread) dispatches at that
    /// size, so a backlog drains at the same rate in shorter batches and no
    /// window waits behind a long one. Buckets never measured are left out;
    /// a measured one is re-measured whenever it runs, and while a backlog
    /// that fills the next larger bucket is queued, one dispatch in 16
    /// takes that bucket to re-measure it.
    pub fn dispatch_size(&self) -> usize {
        let max = self.max_batch();
        if self.policy != BatchPolicy::Deadline || self.cost_us.last().copied().flatten().is_none()
        {
            return max;
        }
        let best = self
            .cost_us
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        self.buckets
            .iter()
            .zip(&self.cost_us)
            .find(|(_, c)| c.is_some_and(|c| c <= best * (1.0 + EFFICIENCY_TOLERANCE)))
            .map_or(max, |(b, _)| *b)
    }

    /// Makes every item queued now due at `now` (its deadline brought
    /// forward), so the next [`Self::next_batch`] dispatches them without
    /// waiting out the budget; items queued later wait as usual. Used by a
    /// channel-state save, which waits for the windows in flight.
    pub fn expedite(&mut self, now: Instant) {
        for e in &mut self.entries {
            e.deadline = e.deadline.min(now);
        }
    }

    /// From now on dispatch everything at once, ignoring deadlines (used on
    /// shutdown to drain the queue).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Queues `item` of `channel` arriving at `now`, applying the full-policy
    /// when the queue is at capacity.
    pub fn push(&mut self, channel: u32, item: T, now: Instant) -> PushOutcome<T> {
        self.arrived(now);
        if self.entries.len() < self.capacity || self.policy == BatchPolicy::MaxQueueDelay {
            self.entries.push_back(Entry {
                channel,
                deadline: now + self.budget,
                item,
            });
            return PushOutcome::Queued;
        }
        if let Some(entry) = self.entries.iter_mut().find(|e| e.channel == channel) {
            return PushOutcome::Replaced(std::mem::replace(&mut entry.item, item));
        }
        let oldest = self.entries.pop_front().expect("full queue is not empty");
        self.entries.push_back(Entry {
            channel,
            deadline: now + self.budget,
            item,
        });
        PushOutcome::Evicted(oldest.item)
    }

    /// Queues every item of `items` of `channel` arriving at `now`, all
    /// sharing one deadline, if they fit without applying the full-policy;
    /// otherwise queues none and hands them back. Used for the items of one
    /// HTTP inference request, which must not displace telemetry windows.
    ///
    /// # Errors
    /// The items, untouched, when fewer than `items.len()` places are free.
    pub fn push_all_if_room(
        &mut self,
        channel: u32,
        items: Vec<T>,
        now: Instant,
    ) -> Result<(), Vec<T>> {
        if self.policy == BatchPolicy::Deadline
            && self.capacity.saturating_sub(self.entries.len()) < items.len()
        {
            return Err(items);
        }
        self.arrived(now);
        let deadline = now + self.budget;
        self.entries.extend(items.into_iter().map(|item| Entry {
            channel,
            deadline,
            item,
        }));
        Ok(())
    }

    /// The dispatch policy. Dispatches [`BatchQueue::dispatch_size`] items
    /// (the largest bucket until the engine's times say a smaller one is as
    /// efficient) as soon as that many are queued; otherwise everything
    /// queued, up to that size, once the oldest deadline is reached;
    /// or at once when no other window is expected before that deadline
    /// (the last arrival plus the running mean gap between arrivals falls
    /// after it, or only one arrival has been seen: waiting could not fill
    /// the batch, only delay it);
    /// otherwise says when to ask again. While draining, up to the largest
    /// bucket at once. Under [`BatchPolicy::MaxQueueDelay`] a queued count
    /// equal to a bucket also dispatches at once, and the batch is not
    /// padded.
    pub fn next_batch(&mut self, now: Instant) -> Next<T> {
        let Some(oldest) = self.entries.front() else {
            return Next::Idle;
        };
        let len = self.entries.len();
        let size = if self.draining {
            self.max_batch()
        } else {
            // Exploring only when the backlog fills the next bucket, so that
            // it never makes a dispatch wait.
            let size = self.dispatch_size();
            let next = self.bucket_for(size + 1);
            if len >= next && self.dispatched % EXPLORE_EVERY == EXPLORE_EVERY - 1 {
                next
            } else {
                size
            }
        };
        let preferred = self.policy == BatchPolicy::MaxQueueDelay && self.buckets.contains(&len);
        // Waiting pays only if another window can join before the deadline:
        // a model fed by one channel at 1 Hz never gets company within a
        // 20 ms budget, and its window would wait out the budget for nothing.
        let alone = self.policy == BatchPolicy::Deadline && self.alone_until(oldest.deadline);
        if len >= size || oldest.deadline <= now || self.draining || preferred || alone {
            self.dispatched += 1;
            let n = len.min(size);
            let items: Vec<T> = self.entries.drain(..n).map(|e| e.item).collect();
            let bucket = match self.policy {
                BatchPolicy::Deadline => self.bucket_for(items.len()),
                BatchPolicy::MaxQueueDelay => items.len(),
            };
            return Next::Dispatch(Batch { items, bucket });
        }
        Next::WaitUntil(oldest.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_millis(10);

    fn queue(capacity: usize) -> BatchQueue<u32> {
        BatchQueue::new(capacity, vec![1, 2, 4, 8], BUDGET)
    }

    fn items(next: Next<u32>) -> (Vec<u32>, usize) {
        match next {
            Next::Dispatch(b) => (b.items, b.bucket),
            other => panic!("expected a dispatch, got {other:?}"),
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn an_engine_cheaper_per_window_in_larger_batches_keeps_full_batches() {
        // A GPU-like profile: 100, 50, 20 µs per window at 1, 4, 16.
        let mut q = BatchQueue::<u32>::new(64, vec![1, 4, 16], BUDGET);
        assert_eq!(q.dispatch_size(), 16, "nothing measured yet");
        for _ in 0..2 {
            q.record(1, us(100));
            q.record(4, us(200));
        }
        assert_eq!(q.dispatch_size(), 16, "the largest bucket not measured yet");
        q.record(16, us(16_000));
        assert_eq!(
            q.dispatch_size(),
            16,
            "a first run is warm-up, not a measurement"
        );
        q.record(16, us(320));
        assert_eq!(q.dispatch_size(), 16);
    }

    #[test]
    fn a_bucket_as_efficient_as_the_best_is_dispatched_at_once_and_in_chunks() {
        // A one-thread CPU profile: 4 windows cost 21 µs each, 16 cost 20.
        let t0 = Instant::now();
        let mut q = BatchQueue::new(64, vec![1, 4, 16], BUDGET);
        for _ in 0..2 {
            q.record(1, us(100));
            q.record(4, us(84));
            q.record(16, us(320));
        }
        assert_eq!(q.dispatch_size(), 4);
        for i in 0..10 {
            q.push(0, i, t0);
        }
        // Four go before the deadline, then four more; two wait for it.
        assert_eq!(items(q.next_batch(t0)), (vec![0, 1, 2, 3], 4));
        assert_eq!(items(q.next_batch(t0)), (vec![4, 5, 6, 7], 4));
        assert_eq!(q.next_batch(t0), Next::WaitUntil(t0 + BUDGET));
        assert_eq!(items(q.next_batch(t0 + BUDGET)), (vec![8, 9], 4));
        // Bucket 4 slows down (a running mean): full batches again.
        for _ in 0..50 {
            q.record(4, us(200));
        }
        assert_eq!(q.dispatch_size(), 16);
        // Draining ignores the learned size.
        for i in 0..10 {
            q.push(0, i, t0);
        }
        q.record(4, us(0));
        q.drain();
        assert_eq!(items(q.next_batch(t0)).0.len(), 10);
    }

    #[test]
    fn a_backlog_re_measures_a_larger_bucket_that_once_looked_slow() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(1024, vec![1, 4, 16], BUDGET);
        // 16 measured at a bad moment (100 µs per window), 4 at 21 µs.
        for _ in 0..2 {
            q.record(4, us(84));
            q.record(16, us(1600));
        }
        assert_eq!(q.dispatch_size(), 4);
        for i in 0..1000 {
            q.push(0, i, t0);
        }
        // The engine's real times: 16 is the cheapest per window.
        let mut sizes = Vec::new();
        while let Next::Dispatch(b) = q.next_batch(t0 + BUDGET) {
            q.record(b.bucket, us(if b.bucket == 16 { 160 } else { 84 }));
            sizes.push(b.items.len());
        }
        assert!(sizes[..15].iter().all(|n| *n == 4), "{sizes:?}");
        assert_eq!(sizes[15], 16, "the 16th dispatch explores: {sizes:?}");
        assert_eq!(q.dispatch_size(), 16, "16 won back: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
    }

    #[test]
    fn triton_style_policy_ignores_measured_times() {
        let mut q = BatchQueue::<u32>::new(64, vec![1, 4, 16], BUDGET)
            .with_policy(BatchPolicy::MaxQueueDelay);
        for _ in 0..2 {
            q.record(4, us(4));
            q.record(16, us(1600));
        }
        assert_eq!(q.dispatch_size(), 16);
    }

    #[test]
    fn a_window_no_other_can_join_goes_at_once() {
        // One channel at 1 Hz, a 10 ms budget: the first window goes at
        // once (no gap known: nothing says company is coming), and after
        // two arrivals the queue knows nothing comes within the budget.
        let t0 = Instant::now();
        let mut q = queue(64);
        q.push(0, 1, t0);
        assert_eq!(items(q.next_batch(t0)), (vec![1], 1), "the first window");
        let t1 = t0 + Duration::from_secs(1);
        q.push(0, 2, t1);
        assert_eq!(items(q.next_batch(t1)), (vec![2], 1));
        // A burst brings the mean gap down (1 s × 0.7^19 ≈ 1 ms): the queue
        // waits for company again.
        let t2 = t1 + Duration::from_secs(1);
        for (i, k) in (3..23).enumerate() {
            q.push(0, k, t2 + us(i as u64));
        }
        let last = t2 + us(19);
        assert_eq!(
            items(q.next_batch(last)),
            ((3..11).collect(), 8),
            "a full bucket"
        );
        assert_eq!(
            items(q.next_batch(last)),
            ((11..19).collect(), 8),
            "a full bucket"
        );
        assert_eq!(q.next_batch(last), Next::WaitUntil(t2 + us(16) + BUDGET));
        // Quiet again: one more 1 s gap is enough (the mean moves 30 % of it).
        let t3 = last + Duration::from_secs(1);
        assert_eq!(items(q.next_batch(t3)), ((19..23).collect(), 4));
        q.push(0, 23, t3);
        assert_eq!(items(q.next_batch(t3)), (vec![23], 1));
    }

    #[test]
    fn windows_that_keep_coming_within_the_budget_wait_for_company() {
        // Every 2 ms against a 10 ms budget: the batch fills before the
        // deadline. The first window went alone: no gap was known yet.
        let t0 = Instant::now();
        let mut q = queue(16);
        for k in 0..9u32 {
            let now = t0 + Duration::from_millis(2 * k as u64);
            q.push(k, k, now);
            if k == 0 {
                assert_eq!(items(q.next_batch(now)), (vec![0], 1), "the first window");
            } else if k < 5 {
                assert_eq!(
                    q.next_batch(now),
                    Next::WaitUntil(t0 + Duration::from_millis(2) + BUDGET),
                    "window {k}"
                );
            }
        }
        let now = t0 + Duration::from_millis(16);
        assert_eq!(items(q.next_batch(now)), ((1..9).collect(), 8));
    }

    #[test]
    fn triton_style_policy_waits_out_the_delay_even_alone() {
        let t0 = Instant::now();
        let mut q = queue(16).with_policy(BatchPolicy::MaxQueueDelay);
        q.push(0, 1, t0);
        assert_eq!(items(q.next_batch(t0 + BUDGET)), (vec![1], 1));
        let t1 = t0 + Duration::from_secs(1);
        q.push(0, 2, t1);
        assert_eq!(
            items(q.next_batch(t1)),
            (vec![2], 1),
            "1 is a preferred count"
        );
        q.push(0, 3, t1);
        q.push(0, 4, t1);
        q.push(0, 5, t1);
        assert_eq!(
            q.next_batch(t1),
            Next::WaitUntil(t1 + BUDGET),
            "3 is no bucket"
        );
    }

    #[test]
    fn empty_queue_is_idle() {
        let mut q = queue(16);
        assert_eq!(q.next_batch(Instant::now()), Next::Idle);
    }

    #[test]
    fn waits_for_the_oldest_deadline_then_dispatches_padded() {
        let t0 = Instant::now();
        let mut q = queue(16);
        q.push(0, 1, t0);
        q.push(1, 2, t0 + Duration::from_millis(3));
        q.push(2, 3, t0 + Duration::from_millis(4));
        assert_eq!(
            q.next_batch(t0 + Duration::from_millis(9)),
            Next::WaitUntil(t0 + BUDGET)
        );
        let (got, bucket) = items(q.next_batch(t0 + BUDGET));
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(bucket, 4);
        assert!(q.is_empty());
    }

    #[test]
    fn expedited_items_go_at_once_and_later_ones_wait_their_budget() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(16, vec![1, 2, 4, 8], Duration::from_millis(20));
        for i in 0..3 {
            q.push(i, i, t0);
        }
        assert!(matches!(q.next_batch(t0), Next::WaitUntil(_)));
        q.expedite(t0);
        match q.next_batch(t0) {
            Next::Dispatch(b) => assert_eq!(b.items, vec![0, 1, 2]),
            other => panic!("{other:?}"),
        }
        q.push(9, 9, t0);
        assert!(
            matches!(q.next_batch(t0), Next::WaitUntil(d) if d == t0 + Duration::from_millis(20)),
            "one queued after the save waits its budget"
        );
    }

    #[test]
    fn full_bucket_dispatches_before_the_deadline() {
        let t0 = Instant::now();
        let mut q = queue(16);
        for i in 0..10 {
            q.push(i, i, t0);
        }
        let (got, bucket) = items(q.next_batch(t0));
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        assert_eq!(bucket, 8);
        // The remaining two wait for their deadline.
        assert_eq!(q.next_batch(t0), Next::WaitUntil(t0 + BUDGET));
        let (rest, bucket) = items(q.next_batch(t0 + BUDGET));
        assert_eq!(rest, vec![8, 9]);
        assert_eq!(bucket, 2);
    }

    #[test]
    fn full_queue_replaces_the_oldest_window_of_the_same_channel() {
        let t0 = Instant::now();
        let mut q = queue(3);
        assert_eq!(q.push(7, 100, t0), PushOutcome::Queued);
        assert_eq!(
            q.push(8, 200, t0 + Duration::from_millis(1)),
            PushOutcome::Queued
        );
        assert_eq!(
            q.push(7, 101, t0 + Duration::from_millis(2)),
            PushOutcome::Queued
        );
        assert_eq!(
            q.push(7, 102, t0 + Duration::from_millis(3)),
            PushOutcome::Replaced(100)
        );
        // The newest took the oldest's place and deadline.
        assert_eq!(q.next_batch(t0), Next::WaitUntil(t0 + BUDGET));
        let (got, _) = items(q.next_batch(t0 + BUDGET));
        assert_eq!(got, vec![102, 200, 101]);
    }

    #[test]
    fn full_queue_without_the_channel_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut q = queue(2);
        q.push(1, 10, t0);
        q.push(2, 20, t0);
        assert_eq!(
            q.push(3, 30, t0 + Duration::from_millis(5)),
            PushOutcome::Evicted(10)
        );
        assert_eq!(q.next_batch(t0), Next::WaitUntil(t0 + BUDGET));
        // Once the oldest is due, everything queued rides along in its batch.
        let (got, bucket) = items(q.next_batch(t0 + BUDGET));
        assert_eq!(got, vec![20, 30]);
        assert_eq!(bucket, 2);
    }

    #[test]
    fn push_all_if_room_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut q = queue(4);
        q.push(0, 1, t0);
        q.push(0, 2, t0);
        assert_eq!(
            q.push_all_if_room(9, vec![10, 11, 12], t0),
            Err(vec![10, 11, 12])
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.push_all_if_room(9, vec![10, 11], t0), Ok(()));
        assert_eq!(q.len(), 4);
        // They share the budget: at the deadline all four go, in arrival order.
        assert_eq!(items(q.next_batch(t0 + BUDGET)).0, vec![1, 2, 10, 11]);
    }

    #[test]
    fn drain_dispatches_without_waiting() {
        let t0 = Instant::now();
        let mut q = queue(16);
        q.push(0, 1, t0);
        q.drain();
        assert_eq!(items(q.next_batch(t0)).0, vec![1]);
    }

    #[test]
    fn max_queue_delay_dispatches_preferred_counts_at_once_unpadded_and_never_drops() {
        let t0 = Instant::now();
        let mut q = queue(2).with_policy(BatchPolicy::MaxQueueDelay);
        // One queued is a preferred size (bucket 1): it goes at once.
        q.push(0, 1, t0);
        assert_eq!(items(q.next_batch(t0)), (vec![1], 1));
        // Three is no bucket: wait for the oldest's delay, then run exactly three.
        for i in 0..3 {
            assert_eq!(q.push(0, 10 + i, t0), PushOutcome::Queued);
        }
        assert_eq!(q.next_batch(t0), Next::WaitUntil(t0 + BUDGET));
        assert_eq!(items(q.next_batch(t0 + BUDGET)), (vec![10, 11, 12], 3));
        // Past its capacity of 2 it still queues, and keeps order.
        for i in 0..11 {
            assert_eq!(q.push(i % 2, 100 + i, t0), PushOutcome::Queued);
        }
        assert_eq!(q.len(), 11);
        assert_eq!(items(q.next_batch(t0)).0, (100..108).collect::<Vec<_>>());
        assert_eq!(q.push_all_if_room(9, vec![1, 2, 3], t0), Ok(()));
    }

    /// The invariants over many pseudo-random traces: every pushed item is
    /// dispatched or handed back exactly once, no batch exceeds its bucket,
    /// and after each poll nothing left in the queue is past its deadline.
    #[test]
    fn invariants_hold_on_random_traces() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next_rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _trace in 0..200 {
            let t0 = Instant::now();
            let capacity = 1 + (next_rand() % 12) as usize;
            let mut q: BatchQueue<(u32, Instant)> =
                BatchQueue::new(capacity, vec![1, 3, 5], BUDGET);
            let mut now = t0;
            let mut seen = Vec::new();
            let mut pushed = 0u32;
            for _ in 0..300 {
                match next_rand() % 3 {
                    0 | 1 => {
                        let channel = (next_rand() % 4) as u32;
                        match q.push(channel, (pushed, now), now) {
                            PushOutcome::Queued => {}
                            PushOutcome::Replaced((id, _)) | PushOutcome::Evicted((id, _)) => {
                                seen.push(id)
                            }
                        }
                        pushed += 1;
                    }
                    _ => now += Duration::from_micros(next_rand() % 4000),
                }
                loop {
                    match q.next_batch(now) {
                        Next::Dispatch(b) => {
                            assert!(b.items.len() <= b.bucket && b.bucket <= 5);
                            for (id, arrived) in b.items {
                                // A window never leaves before it arrived.
                                assert!(arrived <= now);
                                seen.push(id);
                            }
                        }
                        Next::WaitUntil(t) => {
                            // Nothing left queued is overdue: the oldest deadline is ahead.
                            assert!(t > now);
                            break;
                        }
                        Next::Idle => break,
                    }
                }
            }
            q.drain();
            while let Next::Dispatch(b) = q.next_batch(now) {
                seen.extend(b.items.into_iter().map(|(id, _)| id));
            }
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..pushed).collect::<Vec<_>>(),
                "every item exactly once"
            );
        }
    }

    /// One step of a random workload: a push of `channel` after `gap_us`
    /// (microseconds), or a poll of the policy after `gap_us`.
    #[derive(Debug, Clone)]
    enum Op {
        Push { channel: u32, gap_us: u64 },
        Poll { gap_us: u64 },
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                3 => (0u32..6, 0u64..4_000).prop_map(|(channel, gap_us)| Op::Push { channel, gap_us }),
                1 => (0u64..15_000).prop_map(|gap_us| Op::Poll { gap_us }),
            ],
            0..300,
        )
    }

    proptest::proptest! {
        /// With room for everything, whatever the engine's measured times:
        /// every window is dispatched exactly once, in arrival order, in
        /// batches no larger than the dispatch size and padded to the
        /// smallest bucket that holds them; and a driver that wakes when the
        /// policy asks never dispatches a window after its deadline, nor a
        /// batch smaller than the dispatch size before the oldest deadline.
        #[test]
        fn every_window_once_in_order_and_never_late(
            ops in ops(),
            costs in proptest::option::of(proptest::collection::vec(1u64..2_000, 4)),
        ) {
            let t0 = Instant::now();
            let mut q = BatchQueue::new(1 << 16, vec![1, 2, 4, 8], BUDGET);
            let mut now = t0;
            let mut pushed: Vec<Instant> = Vec::new();
            let mut out: Vec<u32> = Vec::new();
            for op in &ops {
                let (Op::Push { gap_us, .. } | Op::Poll { gap_us }) = op;
                // The driver runs what is due and sleeps until the instant the
                // policy names, unless the next event comes first.
                let target = now + Duration::from_micros(*gap_us);
                loop {
                    let size = q.dispatch_size();
                    // Whether the arrivals so far say nothing joins the oldest
                    // window before its deadline (the one early exit allowed).
                    let alone = q.entries.front().is_some_and(|e| q.alone_until(e.deadline));
                    match q.next_batch(now) {
                        Next::Dispatch(b) => {
                            proptest::prop_assert!(!b.items.is_empty() && b.items.len() <= 8);
                            proptest::prop_assert_eq!(b.bucket, q.bucket_for(b.items.len()));
                            let oldest = pushed[b.items[0] as usize];
                            proptest::prop_assert!(
                                b.items.len() >= size || oldest + BUDGET <= now || alone,
                                "a partial batch left before its oldest deadline"
                            );
                            // The engine's time per window in this bucket, if any.
                            if let Some(costs) = &costs {
                                let i = [1, 2, 4, 8].iter().position(|x| *x == b.bucket).unwrap();
                                q.record(b.bucket, Duration::from_micros(costs[i] * b.bucket as u64));
                            }
                            for id in &b.items {
                                proptest::prop_assert!(
                                    now <= pushed[*id as usize] + BUDGET,
                                    "window {} dispatched after its deadline", id
                                );
                            }
                            out.extend(b.items);
                        }
                        Next::WaitUntil(at) if at <= target => now = at,
                        _ => break,
                    }
                }
                now = target;
                if let Op::Push { channel, .. } = op {
                    let id = pushed.len() as u32;
                    pushed.push(now);
                    proptest::prop_assert_eq!(q.push(*channel, id, now), PushOutcome::Queued);
                }
            }
            // Whatever is left is due within one budget.
            let end = now + BUDGET;
            while let Next::Dispatch(b) = q.next_batch(end) {
                out.extend(b.items);
            }
            proptest::prop_assert_eq!(out, (0..pushed.len() as u32).collect::<Vec<_>>());
        }

        /// Under the full-queue policy nothing vanishes: each window is
        /// either dispatched or handed back as replaced/evicted, exactly once.
        #[test]
        fn a_full_queue_hands_back_what_it_does_not_dispatch(
            ops in ops(),
            capacity in 1usize..12,
        ) {
            let t0 = Instant::now();
            let mut q = BatchQueue::new(capacity, vec![1, 2, 4, 8], BUDGET);
            let mut now = t0;
            let mut seen: Vec<u32> = Vec::new();
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Push { channel, gap_us } => {
                        now += Duration::from_micros(gap_us);
                        match q.push(channel, n, now) {
                            PushOutcome::Queued => {}
                            PushOutcome::Replaced(old) | PushOutcome::Evicted(old) => seen.push(old),
                        }
                        proptest::prop_assert!(q.len() <= capacity);
                        n += 1;
                    }
                    Op::Poll { gap_us } => {
                        now += Duration::from_micros(gap_us);
                        while let Next::Dispatch(b) = q.next_batch(now) {
                            seen.extend(b.items);
                        }
                    }
                }
            }
            q.drain();
            while let Next::Dispatch(b) = q.next_batch(now) {
                seen.extend(b.items);
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }
}
