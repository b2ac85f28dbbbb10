//! The engine worker pool: a bounded set of threads that run every
//! model's batches, instead of one thread per model instance.
//!
//! Each model is a *lane*: its [`BatchHandle`] (the fixed-latency queue,
//! unchanged) and its engine instances, of which a lane runs at most as
//! many batches at once as it has instances (`instance_group.count`).
//! Workers wait on one condition variable for the next lane that may have
//! work:
//!
//! - a push to a lane's queue marks the lane *due* (its handle's waker);
//! - a due lane with an idle instance is asked for a batch
//!   ([`BatchQueue::next_batch`](super::BatchQueue::next_batch)) at the
//!   worker's `now`: a dispatch runs on the worker's thread; a deadline
//!   arms the lane's timer (a min-heap of instants, one live entry per
//!   lane); an empty lane rests until its next push;
//! - an instance that finishes marks its lane due again (more may be
//!   queued), as does a timer that expires;
//! - an expedited lane ([`BatchHandle::expedite`]: a state save waits for
//!   its windows, and the pipeline task with it) is *urgent*: workers take
//!   urgent lanes first, in the order they were expedited, then due ones.
//!
//! So a model's batching policy is what it was with its own threads; only
//! who runs the batch changed. The cost per push is one uncontended lock of
//! the pool's scheduler and at most one wake-up; no worker scans idle lanes.
//! Lanes join while the pool runs (models come up one by one). The pool
//! stops when it is told to and every lane is closed and drained
//! ([`WorkerPool::join`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::queue::{Batch, Next};
use super::worker::BatchHandle;

/// One engine instance of a lane, as a worker runs it.
pub trait Instance<T>: Send {
    /// Runs `batch` and delivers its results; `false` when their consumer is
    /// gone (the service is stopping): the lane then takes no more batches.
    fn run(&mut self, batch: Batch<T>) -> bool;
}

struct Lane<T> {
    handle: BatchHandle<T>,
    idle: Vec<Box<dyn Instance<T>>>,
    instances: usize,
    /// The lane's armed deadline, if any (stale heap entries are skipped).
    timer: Option<Instant>,
    due: bool,
    /// In the urgent list.
    urgent: bool,
    /// Taken from the urgent list while every instance was busy: the
    /// instance that finishes puts it back there.
    rush: bool,
    /// Closed and drained, or its consumer gone: never asked again.
    retired: bool,
}

struct Sched<T> {
    lanes: Vec<Lane<T>>,
    due: VecDeque<usize>,
    /// Expedited lanes, taken before `due` (a lane may be in both).
    urgent: VecDeque<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Lanes not retired.
    open: usize,
    stopping: bool,
}

impl<T> Sched<T> {
    fn mark_due(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        if !l.due && !l.retired {
            l.due = true;
            self.due.push_back(lane);
        }
    }

    fn mark_urgent(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        if !l.urgent && !l.retired {
            l.urgent = true;
            self.urgent.push_back(lane);
        }
    }

    /// The next lane to ask for a batch: urgent ones first; and whether it
    /// came from the urgent list.
    fn next_lane(&mut self) -> Option<(usize, bool)> {
        if let Some(ix) = self.urgent.pop_front() {
            self.lanes[ix].urgent = false;
            return Some((ix, true));
        }
        let ix = self.due.pop_front()?;
        self.lanes[ix].due = false;
        Some((ix, false))
    }

    fn arm(&mut self, lane: usize, at: Instant) {
        let l = &mut self.lanes[lane];
        if l.timer.is_none_or(|t| at < t) {
            l.timer = Some(at);
            self.timers.push(Reverse((at, lane)));
        }
    }

    /// Moves expired timers to the due list.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, lane))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.lanes[lane].timer == Some(at) {
                self.lanes[lane].timer = None;
                self.mark_due(lane);
            }
        }
    }

    fn retire(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        if !l.retired {
            l.retired = true;
            self.open -= 1;
        }
        // Its instances go now, and with them the senders of its results:
        // a pipeline task drains results until the last sender is gone, so
        // keeping them to the pool's end made every stop wait out the whole
        // drain budget (15 s).
        l.idle.clear();
    }
}

struct Shared<T> {
    sched: Mutex<Sched<T>>,
    wake: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Sched<T>> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, lane: usize, urgent: bool) {
        let mut s = self.lock();
        if urgent {
            s.mark_urgent(lane);
        } else {
            s.mark_due(lane);
        }
        drop(s);
        self.wake.notify_one();
    }
}

/// A bounded pool of engine worker threads shared by every model.
pub struct WorkerPool<T> {
    shared: Arc<Shared<T>>,
    workers: Vec<JoinHandle<()>>,
}

impl<T> std::fmt::Debug for WorkerPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> WorkerPool<T> {
    /// Starts `workers` threads (at least one), named `engine-<i>`.
    pub fn start(workers: usize) -> Self {
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched {
                lanes: Vec::new(),
                due: VecDeque::new(),
                urgent: VecDeque::new(),
                timers: BinaryHeap::new(),
                open: 0,
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let workers = (0..workers.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("engine-{i}"))
                    .spawn(move || work(&shared))
                    .expect("spawn engine worker")
            })
            .collect();
        Self { shared, workers }
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Adds a model: its queue and its engine instances (at least one).
    /// From now on a push to `handle` wakes the pool.
    ///
    /// # Panics
    /// When `instances` is empty, or `handle` already belongs to a pool.
    pub fn add(&self, handle: &BatchHandle<T>, instances: Vec<Box<dyn Instance<T>>>) {
        assert!(!instances.is_empty(), "a lane needs an engine instance");
        let lane = {
            let mut s = self.shared.lock();
            s.lanes.push(Lane {
                handle: handle.clone(),
                instances: instances.len(),
                idle: instances,
                timer: None,
                due: false,
                urgent: false,
                rush: false,
                retired: false,
            });
            s.open += 1;
            s.lanes.len() - 1
        };
        let shared = Arc::downgrade(&self.shared);
        handle.set_waker(Box::new(move |urgent| {
            if let Some(shared) = shared.upgrade() {
                shared.wake(lane, urgent);
            }
        }));
        // Anything queued before the waker was set.
        self.shared.wake(lane, false);
    }

    /// Waits for the workers to stop: after every lane's handle is closed
    /// ([`BatchHandle::close`]) and drained, or its consumer gone.
    pub fn join(self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// A worker: takes the next urgent, else due, lane with an idle instance,
/// runs one batch on it, and repeats; sleeps until a push or the earliest
/// deadline.
fn work<T>(shared: &Shared<T>) {
    let mut s = shared.lock();
    loop {
        let now = Instant::now();
        s.expire(now);
        if let Some((ix, urgent)) = s.next_lane() {
            if s.lanes[ix].retired || s.lanes[ix].idle.is_empty() {
                // Retired, or every instance busy: the one that finishes
                // marks the lane due again (urgent, if it was).
                s.lanes[ix].rush |= urgent;
                continue;
            }
            let handle = s.lanes[ix].handle.clone();
            // Lock order: scheduler, then queue. A pusher releases its
            // queue lock before it wakes the pool.
            let (next, closed) = handle.try_next(now);
            match next {
                Next::Dispatch(batch) => {
                    let mut instance = s.lanes[ix].idle.pop().expect("checked above");
                    if !s.lanes[ix].idle.is_empty() {
                        // Another worker may take the rest at once.
                        if urgent {
                            s.mark_urgent(ix);
                        } else {
                            s.mark_due(ix);
                        }
                        shared.wake.notify_one();
                    }
                    drop(s);
                    let alive = instance.run(batch);
                    s = shared.lock();
                    if s.lanes[ix].retired {
                        // Retired by another worker meanwhile (see `retire`).
                        drop(instance);
                        continue;
                    }
                    s.lanes[ix].idle.push(instance);
                    let rush = std::mem::take(&mut s.lanes[ix].rush);
                    if alive && (urgent || rush) {
                        // What is left of an expedited queue stays ahead.
                        s.mark_urgent(ix);
                    } else if alive {
                        s.mark_due(ix);
                    } else {
                        s.retire(ix);
                    }
                }
                Next::WaitUntil(at) => s.arm(ix, at),
                Next::Idle => {
                    if closed && s.lanes[ix].idle.len() == s.lanes[ix].instances {
                        s.retire(ix);
                    }
                }
            }
            continue;
        }
        if s.stopping && s.open == 0 {
            // Wake the others so that they see it too.
            shared.wake.notify_all();
            return;
        }
        let next_deadline = s.timers.peek().map(|Reverse((at, _))| *at);
        s = match next_deadline {
            Some(at) => {
                let wait = at
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(1));
                shared
                    .wake
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared.wake.wait(s).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchQueue, PushOutcome};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Each batch run: its lane's name and its items.
    type Seen = Arc<Mutex<Vec<(&'static str, Vec<u32>)>>>;

    /// Records the items of each batch it runs under its lane's name, and
    /// the most batches that ran at once in the whole pool.
    struct Recorder {
        lane: &'static str,
        seen: Seen,
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Instance<u32> for Recorder {
        fn run(&mut self, batch: Batch<u32>) -> bool {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            self.seen.lock().unwrap().push((self.lane, batch.items));
            self.running.fetch_sub(1, Ordering::SeqCst);
            true
        }
    }

    /// Blocks its first batch until the test releases it.
    struct Gate {
        started: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
        seen: Seen,
    }

    impl Instance<u32> for Gate {
        fn run(&mut self, batch: Batch<u32>) -> bool {
            let _ = self.started.send(());
            let _ = self.release.recv();
            self.seen.lock().unwrap().push(("gate", batch.items));
            true
        }
    }

    #[test]
    fn an_expedited_lane_runs_before_lanes_that_were_due_earlier() {
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let pool = WorkerPool::start(1);
        // A 1 s budget: nothing is dispatched by its deadline in this test,
        // only by a full bucket (1) or by being expedited.
        let queue = |buckets: Vec<usize>| BatchQueue::new(64, buckets, Duration::from_secs(1));
        let gate = BatchHandle::new(queue(vec![1]));
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        pool.add(
            &gate,
            vec![Box::new(Gate {
                started: started_tx,
                release: release_rx,
                seen: Arc::clone(&seen),
            })],
        );
        let lane = |name: &'static str, buckets: Vec<usize>| {
            let handle = BatchHandle::new(queue(buckets));
            let recorder = Recorder {
                lane: name,
                seen: Arc::clone(&seen),
                running: Arc::clone(&running),
                most: Arc::clone(&most),
            };
            pool.add(&handle, vec![Box::new(recorder)]);
            handle
        };
        let early: Vec<BatchHandle<u32>> = ["a", "b", "c"].map(|n| lane(n, vec![1])).into();
        // Waits for a batch of 4 that never fills, until expedited.
        let late = lane("late", vec![4]);

        gate.push(0, 0, Instant::now());
        started.recv().unwrap(); // the only worker is busy from now on
        for (i, h) in early.iter().enumerate() {
            h.push(0, 10 + i as u32, Instant::now());
        }
        late.push(0, 99, Instant::now());
        late.expedite(Instant::now());
        release.send(()).unwrap();

        gate.close();
        early.iter().chain([&late]).for_each(BatchHandle::close);
        pool.join();
        let order: Vec<&str> = seen.lock().unwrap().iter().map(|(l, _)| *l).collect();
        assert_eq!(order, ["gate", "late", "a", "b", "c"]);
    }

    #[test]
    fn many_lanes_share_few_workers_and_lose_nothing() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let pool = WorkerPool::start(2);
        let names: [&'static str; 4] = ["a", "b", "c", "d"];
        let handles: Vec<BatchHandle<u32>> = names
            .iter()
            .map(|&lane| {
                let handle =
                    BatchHandle::new(BatchQueue::new(64, vec![1, 4], Duration::from_millis(5)));
                // Two instances per lane: a lane may run two batches at once.
                let instances: Vec<Box<dyn Instance<u32>>> = (0..2)
                    .map(|_| {
                        Box::new(Recorder {
                            lane,
                            seen: Arc::clone(&seen),
                            running: Arc::clone(&running),
                            most: Arc::clone(&most),
                        }) as Box<dyn Instance<u32>>
                    })
                    .collect();
                pool.add(&handle, instances);
                handle
            })
            .collect();
        for i in 0..200u32 {
            let h = &handles[i as usize % 4];
            assert_eq!(h.push(i % 7, i, Instant::now()), PushOutcome::Queued);
            if i % 16 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        handles.iter().for_each(BatchHandle::close);
        pool.join();
        let seen = seen.lock().unwrap();
        for (k, name) in names.iter().enumerate() {
            let mut got: Vec<u32> = seen
                .iter()
                .filter(|(lane, _)| lane == name)
                .flat_map(|(_, items)| items.iter().copied())
                .collect();
            got.sort_unstable();
            let want: Vec<u32> = (0..200).filter(|i| *i as usize % 4 == k).collect();
            assert_eq!(got, want, "lane {name}");
        }
        assert!(seen.iter().all(|(_, items)| items.len() <= 4));
        // Never more batches at once than workers.
        assert!(most.load(Ordering::SeqCst) <= 2);
    }

    #[test]
    fn a_lone_window_is_dispatched_at_its_deadline_without_further_pushes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pool = WorkerPool::start(1);
        let handle = BatchHandle::new(BatchQueue::new(8, vec![1, 8], Duration::from_millis(20)));
        pool.add(
            &handle,
            vec![Box::new(Recorder {
                lane: "a",
                seen: Arc::clone(&seen),
                running: Arc::default(),
                most: Arc::default(),
            })],
        );
        handle.push(0, 7, Instant::now());
        // Only the deadline can dispatch it: the queue is not closed.
        let waited = Instant::now();
        while seen.lock().unwrap().is_empty() {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "never dispatched"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen.lock().unwrap()[0], ("a", vec![7]));
        handle.close();
        pool.join();
    }

    /// An instance whose consumer is gone.
    struct Gone;

    impl Instance<u32> for Gone {
        fn run(&mut self, _batch: Batch<u32>) -> bool {
            false
        }
    }

    #[test]
    fn a_lane_whose_consumer_is_gone_does_not_hold_the_pool() {
        let pool = WorkerPool::start(1);
        let handle = BatchHandle::new(BatchQueue::new(8, vec![1], Duration::from_millis(1)));
        pool.add(&handle, vec![Box::new(Gone)]);
        handle.push(0, 1, Instant::now());
        handle.push(0, 2, Instant::now());
        // Not closed: the lane retires when its consumer is gone.
        pool.join();
    }
}
