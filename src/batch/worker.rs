//! The blocking side of the batcher: a handle shared by the pipeline task
//! (which pushes windows) and whoever runs the batches: the engine worker
//! pool ([`super::pool`]), which the handle wakes, or a thread that waits
//! in [`BatchHandle::next_blocking`] (benchmarks and tests).
//!
//! The lock is held only for the policy's own bookkeeping (µs), never while
//! an engine runs, so pushing never waits on inference.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::queue::{Batch, BatchQueue, Next, PushOutcome};

#[derive(Debug)]
struct Shared<T> {
    queue: BatchQueue<T>,
    closed: bool,
}

/// Tells a [`super::pool::WorkerPool`] that its lane may have work; `true`:
/// work that is due now ([`BatchHandle::expedite`]), to be run before
/// lanes that are merely due.
type Waker = Box<dyn Fn(bool) + Send + Sync>;

/// A cloneable handle over one model's [`BatchQueue`].
pub struct BatchHandle<T> {
    inner: Arc<(Mutex<Shared<T>>, Condvar)>,
    /// Set once, when the handle joins a worker pool; called after every
    /// change that may let a batch be dispatched, never under the queue's lock.
    waker: Arc<OnceLock<Waker>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for BatchHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandle")
            .field("inner", &self.inner)
            .field("pooled", &self.waker.get().is_some())
            .finish()
    }
}

impl<T> Clone for BatchHandle<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            waker: Arc::clone(&self.waker),
        }
    }
}

impl<T> BatchHandle<T> {
    /// Wraps a queue.
    pub fn new(queue: BatchQueue<T>) -> Self {
        Self {
            inner: Arc::new((
                Mutex::new(Shared {
                    queue,
                    closed: false,
                }),
                Condvar::new(),
            )),
            waker: Arc::default(),
        }
    }

    /// Makes `waker` be called after every push, expedite and close (by
    /// [`super::pool::WorkerPool::add`]).
    ///
    /// # Panics
    /// When the handle already has a waker (it joined a pool before).
    pub(super) fn set_waker(&self, waker: Waker) {
        assert!(
            self.waker.set(waker).is_ok(),
            "a batch queue joins one worker pool"
        );
    }

    /// Calls the pool's waker, if any; `urgent` for an expedited queue.
    fn wake(&self, urgent: bool) {
        if let Some(w) = self.waker.get() {
            w(urgent);
        }
    }

    /// What the policy dispatches at `now`, without waiting, and whether
    /// the queue is closed (for [`super::pool::WorkerPool`]).
    pub(super) fn try_next(&self, now: Instant) -> (Next<T>, bool) {
        let mut shared = self.inner.0.lock().expect("batch queue lock");
        let next = shared.queue.next_batch(now);
        (next, shared.closed)
    }

    /// Queues an item arriving now; see [`BatchQueue::push`].
    pub fn push(&self, channel: u32, item: T, now: Instant) -> PushOutcome<T> {
        let (lock, cvar) = &*self.inner;
        let outcome = lock
            .lock()
            .expect("batch queue lock")
            .queue
            .push(channel, item, now);
        cvar.notify_one();
        self.wake(false);
        outcome
    }

    /// Queues all of `items` or none; see [`BatchQueue::push_all_if_room`].
    ///
    /// # Errors
    /// The items, when the queue has no room for all of them or is closed.
    pub fn push_all_if_room(
        &self,
        channel: u32,
        items: Vec<T>,
        now: Instant,
    ) -> Result<(), Vec<T>> {
        let (lock, cvar) = &*self.inner;
        let mut shared = lock.lock().expect("batch queue lock");
        if shared.closed {
            return Err(items);
        }
        let outcome = shared.queue.push_all_if_room(channel, items, now);
        drop(shared);
        cvar.notify_one();
        self.wake(false);
        outcome
    }

    /// Records an engine run (see [`BatchQueue::record`]) and returns the
    /// dispatch size it leaves ([`BatchQueue::dispatch_size`]), under one lock.
    pub fn record(&self, size: usize, elapsed: Duration) -> usize {
        let queue = &mut self.inner.0.lock().expect("batch queue lock").queue;
        queue.record(size, elapsed);
        queue.dispatch_size()
    }

    /// Items queued now.
    pub fn depth(&self) -> usize {
        self.inner.0.lock().expect("batch queue lock").queue.len()
    }

    /// Dispatches everything queued now without waiting out the budget
    /// ([`BatchQueue::expedite`]); in a worker pool the lane also goes ahead
    /// of lanes that are merely due.
    pub fn expedite(&self, now: Instant) {
        let (lock, cvar) = &*self.inner;
        lock.lock().expect("batch queue lock").queue.expedite(now);
        cvar.notify_all();
        self.wake(true);
    }

    /// Stops accepting waits: everything queued is dispatched at once, then
    /// [`BatchHandle::next_blocking`] returns `None`.
    pub fn close(&self) {
        let (lock, cvar) = &*self.inner;
        let mut shared = lock.lock().expect("batch queue lock");
        shared.closed = true;
        shared.queue.drain();
        drop(shared);
        cvar.notify_all();
        self.wake(false);
    }

    /// Blocks until the policy dispatches a batch; `None` once closed and
    /// empty. Called by engine threads only.
    pub fn next_blocking(&self) -> Option<Batch<T>> {
        let (lock, cvar) = &*self.inner;
        let mut shared = lock.lock().expect("batch queue lock");
        loop {
            let now = Instant::now();
            match shared.queue.next_batch(now) {
                Next::Dispatch(batch) => {
                    // Another engine thread may be able to take the rest.
                    cvar.notify_one();
                    return Some(batch);
                }
                Next::Idle if shared.closed => return None,
                Next::Idle => shared = cvar.wait(shared).expect("batch queue lock"),
                Next::WaitUntil(t) => {
                    let wait = t
                        .saturating_duration_since(now)
                        .max(Duration::from_micros(1));
                    shared = cvar.wait_timeout(shared, wait).expect("batch queue lock").0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_thread_receives_everything_then_stops_on_close() {
        let handle = BatchHandle::new(BatchQueue::new(64, vec![1, 4], Duration::from_millis(1)));
        let consumer = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(batch) = handle.next_blocking() {
                    got.extend(batch.items);
                }
                got
            })
        };
        for i in 0..10u32 {
            assert_eq!(handle.push(i % 3, i, Instant::now()), PushOutcome::Queued);
        }
        handle.close();
        let mut got = consumer.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
