//! Talking to systemd: `STATUS=` lines that follow start-up (models loading
//! or rebuilding, broker connecting, ready), `READY=1` once every model is
//! loaded and the broker is connected, and `WATCHDOG=1` pings that are sent
//! only while every pipeline stage makes progress.
//!
//! Why: a process that is alive is not a service that works. A stage that
//! holds work and stops moving (an engine wedged in a driver call, a
//! publisher blocked on a broker that takes no more messages) leaves the
//! process running and the results gone. Each stage reports its progress
//! through a [`Stage`] handle; the [`Notifier`] thread checks them with the
//! pure [`Supervisor`] policy and stops pinging while one is stalled, so
//! systemd's `WatchdogSec=` restarts the service.
//!
//! A stage is *stalled* when it has pending work (queued for it, or in its
//! hands) and has finished nothing for longer than the stall limit; a stage
//! with no work is idle, never stalled. The limit is the watchdog interval
//! (`WATCHDOG_USEC`) plus the largest latency budget, because a window may
//! rightly wait its budget in the batch queue. Pings go out every half
//! interval, as sd_watchdog_enabled(3) recommends.
//!
//! While an engine is rebuilt at start-up, each change of its progress
//! extends systemd's start timeout (`EXTEND_TIMEOUT_USEC=`), so a long but
//! moving TensorRT build is not killed, and a build that stops moving is.
//!
//! Everything here is a no-op outside systemd: without `NOTIFY_SOCKET`
//! nothing is sent, and without `WATCHDOG_USEC` no stage is checked.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::status::{ModelState, StatusBoard};

/// How often the notifier looks at the board for `STATUS=` changes.
const STATUS_TICK: Duration = Duration::from_millis(250);
/// How far each sign of rebuild progress pushes systemd's start timeout
/// (`EXTEND_TIMEOUT_USEC=`), in µs: as long as `TimeoutStartSec=`.
const EXTEND_START_USEC: u32 = 300_000_000;

/// Reads how much work is queued in front of a stage (a channel's length,
/// a batch queue's depth).
type BacklogProbe = Box<dyn Fn() -> usize + Send + Sync>;

struct StageState {
    name: String,
    /// Work items in the stage's hands right now.
    busy: AtomicUsize,
    /// Work items finished since start; only ever grows.
    done: AtomicU64,
    backlog: Option<BacklogProbe>,
}

/// One pipeline stage's progress, shared by the stage (which marks work
/// with [`Stage::begin`]) and the supervisor (which reads it). Cheap to
/// clone; clones share the counters.
#[derive(Clone)]
pub struct Stage(Arc<StageState>);

impl fmt::Debug for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.0.name)
            .field("pending", &self.pending())
            .field("done", &self.done())
            .finish()
    }
}

impl Stage {
    /// A stage whose only pending work is what it holds between
    /// [`Stage::begin`] and the end of the returned guard.
    pub fn new(name: impl Into<String>) -> Self {
        Self(Arc::new(StageState {
            name: name.into(),
            busy: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            backlog: None,
        }))
    }

    /// A stage that also has the work `backlog()` reports queued in front
    /// of it (items, e.g. a bounded channel's length).
    pub fn with_backlog(
        name: impl Into<String>,
        backlog: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(StageState {
            name: name.into(),
            busy: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            backlog: Some(Box::new(backlog)),
        }))
    }

    /// The stage's name, e.g. `publisher` or `engine smap_lstm`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Marks one unit of work taken in hand; it counts as finished (progress)
    /// when the guard drops.
    pub fn begin(&self) -> Busy<'_> {
        self.0.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// Work queued for the stage plus work in its hands.
    pub fn pending(&self) -> usize {
        let busy = self.0.busy.load(Ordering::SeqCst);
        busy + self.0.backlog.as_ref().map_or(0, |probe| probe())
    }

    /// Units of work finished since start.
    pub fn done(&self) -> u64 {
        self.0.done.load(Ordering::SeqCst)
    }
}

/// Messages queued in the bounded channel of `tx`, a sender kept weak so
/// that the probe does not hold the channel open (0 once every real sender
/// is gone): a [`Stage::with_backlog`] probe.
pub fn queued<T>(tx: &tokio::sync::mpsc::WeakSender<T>) -> usize {
    tx.upgrade()
        .map_or(0, |tx| tx.max_capacity() - tx.capacity())
}

/// Work in a stage's hands; finishing it (dropping the guard) is progress.
#[derive(Debug)]
#[must_use = "the work counts as finished when the guard drops"]
pub struct Busy<'a>(&'a Stage);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        // Count the progress before the work stops being pending, so a
        // reader never sees "idle" without "done" having moved.
        self.0 .0.done.fetch_add(1, Ordering::SeqCst);
        self.0 .0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stage found stalled by [`Supervisor::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// The stage's name.
    pub stage: String,
    /// Work pending in it when checked.
    pub pending: usize,
    /// How long it has made no progress while holding work.
    pub stuck_for: Duration,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} pending, no progress for {:.1} s)",
            self.stage,
            self.pending,
            self.stuck_for.as_secs_f64()
        )
    }
}

#[derive(Debug)]
struct Watched {
    stage: Stage,
    last_done: u64,
    /// Last time the stage finished something or had nothing to do.
    last_fine: Instant,
}

/// The stall policy over a set of stages, with time injected: no threads,
/// no clock of its own.
#[derive(Debug)]
pub struct Supervisor {
    stall_after: Duration,
    watched: Vec<Watched>,
}

impl Supervisor {
    /// Watches nothing yet; a stage with pending work and no progress for
    /// longer than `stall_after` is stalled.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            watched: Vec::new(),
        }
    }

    /// Starts watching `stage` as of `now`.
    pub fn watch(&mut self, stage: Stage, now: Instant) {
        let last_done = stage.done();
        self.watched.push(Watched {
            stage,
            last_done,
            last_fine: now,
        });
    }

    /// The stages stalled at `now`, in the order they were watched; empty
    /// when every stage is making progress or idle.
    pub fn check(&mut self, now: Instant) -> Vec<Stall> {
        let mut stalls = Vec::new();
        for w in &mut self.watched {
            // Read pending before done: work finished in between then shows
            // as progress, not as a stall.
            let pending = w.stage.pending();
            let done = w.stage.done();
            if done != w.last_done || pending == 0 {
                w.last_done = done;
                w.last_fine = now;
                continue;
            }
            let stuck_for = now.saturating_duration_since(w.last_fine);
            if stuck_for > self.stall_after {
                stalls.push(Stall {
                    stage: w.stage.name().to_string(),
                    pending,
                    stuck_for,
                });
            }
        }
        stalls
    }
}

/// What start-up looks like from the board, for the `STATUS=` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Every registered model: name, state name (`loading`, `ready`,
    /// `rebuilding`, `failed`) and rebuild progress (0 to 1), if any.
    pub models: Vec<(String, String, Option<f64>)>,
    /// Whether the broker connection is up.
    pub connected: bool,
}

impl Phase {
    /// Reads the phase from the board.
    pub fn of(board: &StatusBoard) -> Self {
        let (models, connected) = board.model_states();
        let models = models
            .into_iter()
            .map(|(name, state)| {
                let progress = match state {
                    ModelState::Rebuilding { progress } => Some(f64::from(progress)),
                    _ => None,
                };
                (name, state.name().to_string(), progress)
            })
            .collect();
        Self { models, connected }
    }
}

/// The `STATUS=` text for `phase` (and `stalls`, which win): one short
/// line that `systemctl status gsinfer` shows.
pub fn describe(phase: &Phase, broker: &str, stalls: &[Stall]) -> String {
    if !stalls.is_empty() {
        let list: Vec<String> = stalls.iter().map(Stall::to_string).collect();
        return format!("stalled: {}; watchdog not pinged", list.join(", "));
    }
    let mut busy = Vec::new();
    for (name, state, progress) in &phase.models {
        match (state.as_str(), progress) {
            ("rebuilding", Some(p)) => busy.push(format!(
                "rebuilding the TensorRT engine of {name}: {:.0} %",
                p * 100.0
            )),
            ("rebuilding", None) => busy.push(format!("rebuilding the TensorRT engine of {name}")),
            ("loading", _) => busy.push(format!("loading model {name}")),
            ("failed", _) => busy.push(format!("model {name} failed")),
            _ => {}
        }
    }
    if !busy.is_empty() {
        return busy.join(", ");
    }
    if phase.models.is_empty() {
        return "opening the model repository".into();
    }
    if !phase.connected {
        return format!("models loaded; connecting to the broker at {broker}");
    }
    format!(
        "ready: {} model(s), broker {broker} connected",
        phase.models.len()
    )
}

/// The thread that sends `STATUS=`, `READY=1` and `WATCHDOG=1`.
#[derive(Debug)]
pub struct Notifier {
    stages: Arc<Mutex<Vec<Stage>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread. The watchdog interval comes from `WATCHDOG_USEC`
    /// (checked against `WATCHDOG_PID`); `max_budget` is the largest latency
    /// budget of any model, added to the stall limit.
    pub fn start(board: Arc<StatusBoard>, broker: String, max_budget: Duration) -> Self {
        let stages: Arc<Mutex<Vec<Stage>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        if let Some(interval) = watchdog {
            log::info!(target: "gsinfer::watchdog", "systemd watchdog every {interval:?}: pinged while every stage makes progress");
        }
        let thread = {
            let (stages, stop) = (Arc::clone(&stages), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("sd-notify".into())
                .spawn(move || run(&board, &broker, &stages, &stop, watchdog, max_budget))
                .expect("spawn the sd-notify thread")
        };
        Self {
            stages,
            stop,
            thread: Some(thread),
        }
    }

    /// Adds `stage` to the stages whose progress the watchdog depends on.
    pub fn supervise(&self, stage: Stage) {
        self.stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stage);
    }

    /// Stops the thread (no more pings or status lines), e.g. when the
    /// service starts draining.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!(target: "gsinfer::watchdog", "sd_notify: {e}");
    }
}

fn run(
    board: &StatusBoard,
    broker: &str,
    stages: &Mutex<Vec<Stage>>,
    stop: &AtomicBool,
    watchdog: Option<Duration>,
    max_budget: Duration,
) {
    let tick = watchdog.map_or(STATUS_TICK, |w| STATUS_TICK.min(w / 2));
    let ping_every = watchdog.map(|w| w / 2);
    let mut supervisor = Supervisor::new(watchdog.unwrap_or_default() + max_budget);
    let mut watched = 0;
    let mut last_status = String::new();
    let mut last_extended = String::new();
    let mut ready_sent = false;
    let mut last_ping: Option<Instant> = None;
    let mut stalls: Vec<Stall> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        {
            let stages = stages.lock().unwrap_or_else(|p| p.into_inner());
            for s in &stages[watched..] {
                supervisor.watch(s.clone(), now);
            }
            watched = stages.len();
        }
        let phase = Phase::of(board);
        if let Some(every) = ping_every {
            if last_ping.is_none_or(|t| now.duration_since(t) >= every) {
                let found = supervisor.check(now);
                let names = |v: &[Stall]| v.iter().map(|s| s.stage.clone()).collect::<Vec<_>>();
                if names(&found) != names(&stalls) {
                    report(&found, &stalls);
                }
                stalls = found;
                if stalls.is_empty() {
                    notify(&[NotifyState::Watchdog]);
                }
                last_ping = Some(now);
            }
        }
        let status = describe(&phase, broker, &stalls);
        let rebuilding = phase.models.iter().any(|m| m.1 == "rebuilding");
        if !ready_sent && rebuilding && status != last_extended {
            notify(&[NotifyState::ExtendTimeoutUsec(EXTEND_START_USEC)]);
            last_extended = status.clone();
        }
        if !ready_sent && board.is_ready() {
            ready_sent = true;
            last_status = status.clone();
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        } else if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        std::thread::park_timeout(tick);
    }
}

/// Logs stages that stalled or recovered since the last check.
fn report(now: &[Stall], before: &[Stall]) {
    for s in now {
        if !before.iter().any(|b| b.stage == s.stage) {
            log::error!(target: "gsinfer::watchdog", stage = s.stage.as_str(), pending = s.pending;
                "stage {s} is stalled: not pinging the systemd watchdog");
        }
    }
    for b in before {
        if !now.iter().any(|s| s.stage == b.stage) {
            log::warn!(target: "gsinfer::watchdog", stage = b.stage.as_str();
                "stage {} makes progress again", b.stage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const LIMIT: Duration = Duration::from_secs(10);

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn an_idle_stage_is_never_stalled() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(LIMIT);
        sup.watch(Stage::new("idle"), t0);
        assert!(sup.check(at(t0, 1_000)).is_empty());
    }

    #[test]
    fn pending_work_without_progress_stalls_only_after_the_limit() {
        let t0 = Instant::now();
        let queued = Arc::new(AtomicUsize::new(3));
        let q = Arc::clone(&queued);
        let stage = Stage::with_backlog("publisher", move || q.load(Ordering::SeqCst));
        let mut sup = Supervisor::new(LIMIT);
        sup.watch(stage.clone(), t0);
        assert!(sup.check(at(t0, 5)).is_empty());
        assert!(
            sup.check(at(t0, 10)).is_empty(),
            "exactly the limit is not yet a stall"
        );
        let stalls = sup.check(at(t0, 11));
        assert_eq!(
            stalls,
            vec![Stall {
                stage: "publisher".into(),
                pending: 3,
                stuck_for: Duration::from_secs(11)
            }]
        );
        // One unit of work finished: progress, and the clock starts again.
        drop(stage.begin());
        assert!(sup.check(at(t0, 12)).is_empty());
        assert!(sup.check(at(t0, 22)).is_empty());
        assert_eq!(sup.check(at(t0, 23)).len(), 1);
    }

    #[test]
    fn work_held_in_hand_counts_as_pending() {
        let t0 = Instant::now();
        let stage = Stage::new("engine m");
        let mut sup = Supervisor::new(LIMIT);
        sup.watch(stage.clone(), t0);
        let busy = stage.begin();
        assert_eq!(stage.pending(), 1);
        assert_eq!(sup.check(at(t0, 11)).len(), 1);
        drop(busy);
        assert_eq!(stage.pending(), 0);
        assert_eq!(stage.done(), 1);
        assert!(sup.check(at(t0, 12)).is_empty());
    }

    #[test]
    fn a_stage_that_went_idle_restarts_its_clock() {
        let t0 = Instant::now();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = Arc::clone(&queued);
        let stage = Stage::with_backlog("pipeline", move || q.load(Ordering::SeqCst));
        let mut sup = Supervisor::new(LIMIT);
        sup.watch(stage, t0);
        assert!(sup.check(at(t0, 100)).is_empty());
        queued.store(1, Ordering::SeqCst);
        assert!(
            sup.check(at(t0, 105)).is_empty(),
            "work arrived 5 s ago at most"
        );
        assert_eq!(sup.check(at(t0, 111)).len(), 1);
    }

    #[test]
    fn only_the_stalled_stage_is_named() {
        let t0 = Instant::now();
        let moving = Stage::new("engine m");
        let stuck = Stage::new("publisher");
        let mut sup = Supervisor::new(LIMIT);
        sup.watch(moving.clone(), t0);
        sup.watch(stuck.clone(), t0);
        let _held = stuck.begin();
        for s in 1..=20 {
            drop(moving.begin());
            let _busy = moving.begin();
            let stalls = sup.check(at(t0, s));
            assert!(stalls.iter().all(|st| st.stage == "publisher"));
            assert_eq!(stalls.is_empty(), s <= 10);
        }
    }

    fn phase(models: &[(&str, &str, Option<f64>)], connected: bool) -> Phase {
        Phase {
            models: models
                .iter()
                .map(|(n, s, p)| (n.to_string(), s.to_string(), *p))
                .collect(),
            connected,
        }
    }

    #[test]
    fn status_lines_follow_start_up() {
        let b = "127.0.0.1:1883";
        assert_eq!(
            describe(&phase(&[], false), b, &[]),
            "opening the model repository"
        );
        assert_eq!(
            describe(
                &phase(&[("a", "ready", None), ("b", "loading", None)], false),
                b,
                &[]
            ),
            "loading model b"
        );
        assert_eq!(
            describe(&phase(&[("a", "rebuilding", Some(0.25))], false), b, &[]),
            "rebuilding the TensorRT engine of a: 25 %"
        );
        assert_eq!(
            describe(&phase(&[("a", "ready", None)], false), b, &[]),
            "models loaded; connecting to the broker at 127.0.0.1:1883"
        );
        let ready = phase(&[("a", "ready", None)], true);
        assert_eq!(
            describe(&ready, b, &[]),
            "ready: 1 model(s), broker 127.0.0.1:1883 connected"
        );
        let stall = Stall {
            stage: "publisher".into(),
            pending: 7,
            stuck_for: Duration::from_millis(2500),
        };
        assert_eq!(
            describe(&ready, b, &[stall]),
            "stalled: publisher (7 pending, no progress for 2.5 s); watchdog not pinged"
        );
    }
}
