//! The pipeline task's side of [`crate::state`]: restore each pipeline's
//! channel state at start, save it while running and at stop, and hold the
//! MQTT acknowledgements of QoS 1/2 messages until a saved state holds
//! their samples (checkpoint, then acknowledge), so after a crash the broker
//! redelivers exactly what the restored state lacks.
//!
//! A checkpoint saves only the pipelines with something new (samples taken
//! or windows settled since their last save), and waits only for *their*
//! windows in flight: the other models keep batching, and at a thousand
//! models a checkpoint every 16 QoS 1 messages no longer drains every
//! model's queue.
//!
//! Time comes in as arguments (`now`, `now_ns`); the files are written on
//! the pipeline task, which the save briefly holds (its cost per channel is
//! in BENCHMARKS.md).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::account::deliver;
use super::router::Router;
use crate::config::Config;
use crate::infer::BatchResult;
use crate::ingest::now_ns;
use crate::pipeline::{ChannelOutput, Pipeline};
use crate::publish::Outgoing;
use crate::repository::ModelRepository;
use crate::state::{Restore, StateConfig, StateKey, StateStore};
use crate::status::StatusBoard;

/// Longest a state save waits for the windows in flight to be scored.
pub const SAVE_BARRIER: Duration = Duration::from_secs(2);

/// What a pipeline had taken and settled when it was last saved: a
/// pipeline whose progress differs has something new to save.
type Progress = (u64, u64);

fn progress(p: &Pipeline) -> Progress {
    p.channel_states().iter().fold((0, 0), |(s, w), c| {
        (s + c.samples(), w + c.windows_settled())
    })
}

/// See the module docs.
#[derive(Debug)]
pub struct Persistence {
    config: StateConfig,
    /// `None`: persistence is off (disabled, or the folder is unusable).
    store: Option<StateStore>,
    /// Per pipeline, in config order: its key (`None` when its model
    /// cannot be read: nothing is saved for it) and its progress at the
    /// last save.
    keys: Vec<Option<(StateKey, Progress)>>,
    /// Per pipeline: its last save failed (the error is logged once per run of failures).
    failing: Vec<bool>,
    /// Acknowledgements held until the next save.
    held: Vec<rumqttc::Publish>,
    last_save: Instant,
    /// When a skipped save was last logged.
    last_skip_log: Option<Instant>,
}

impl Persistence {
    /// Opens the state folder of `config`, keying each pipeline by its
    /// model's version and file sha256 in `repo`; `now` starts the save
    /// interval. Never fails: what cannot be used is logged and left off.
    pub fn open(config: &Config, repo: &ModelRepository, now: Instant) -> Self {
        let state = config.state.clone();
        let store = if state.enabled {
            let dir = state.dir();
            match StateStore::open(&dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!(target: "gsinfer::state", "channel state is not kept across restarts: {e} (set state.dir to a writable folder, or state.enabled = false)");
                    None
                }
            }
        } else {
            None
        };
        let keys = config
            .pipelines
            .iter()
            .map(|p| {
                store.as_ref()?;
                let entry = repo.load(&p.model).ok()?;
                let sha = crate::engine::cache::sha256_file(&entry.model_path).ok()?;
                Some((StateKey::new(p, entry.version, sha), (0, 0)))
            })
            .collect();
        Self {
            config: state,
            store,
            failing: vec![false; config.pipelines.len()],
            keys,
            held: Vec::new(),
            last_save: now,
            last_skip_log: None,
        }
    }

    /// Whether acknowledgements wait for a save.
    pub fn holds_acks(&self) -> bool {
        self.store.is_some()
    }

    /// Restores pipeline `ix` (`pipeline`, fresh) from its saved state at
    /// `now_ns`, logging and showing on the board what became of it; a
    /// stale state's open anomalies are closed into `closed`.
    pub fn restore(
        &mut self,
        ix: usize,
        pipeline: &mut Pipeline,
        board: &StatusBoard,
        now_ns: i64,
        closed: &mut Vec<ChannelOutput>,
    ) {
        let (Some(store), Some(Some((key, saved)))) = (&self.store, self.keys.get_mut(ix)) else {
            return;
        };
        let model = key.model.clone();
        let max_age = Duration::from_secs(self.config.max_age_s);
        let path = store.path(&model);
        match store.load(key, now_ns, max_age) {
            Restore::Missing => {
                log::info!(target: "gsinfer::state", "model {model}: no saved channel state; channels start fresh");
                board.set_state_restore(&model, "fresh", "no saved state", &[]);
            }
            Restore::Continue { channels, age } => {
                let names: Vec<String> = channels.iter().map(|c| c.name().to_string()).collect();
                let n = pipeline.restore(channels);
                *saved = progress(pipeline);
                let age_s = age.as_secs_f64();
                log::info!(target: "gsinfer::state", "model {model}: channel state of {n} channel(s) restored (saved {age_s:.0} s ago); scoring goes on from it");
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                board.set_state_restore(
                    &model,
                    "continued",
                    &format!("saved {age_s:.0} s ago"),
                    &names,
                );
                board.set_state_age(&model, age);
            }
            Restore::Stale { channels, age } => {
                let mut old = Pipeline::new(pipeline.config());
                old.restore(channels);
                let before = closed.len();
                old.close_open_anomalies("stale_state", closed);
                let age_h = age.as_secs_f64() / 3600.0;
                let max_h = max_age.as_secs_f64() / 3600.0;
                log::warn!(target: "gsinfer::state", "model {model}: saved channel state is {age_h:.1} h old, older than state.max_age_s ({max_h:.1} h): {} open anomal(ies) closed, channels start fresh", closed.len() - before);
                board.set_state_restore(&model, "stale", &format!("saved {age_h:.1} h ago"), &[]);
            }
            Restore::Mismatch(why) => {
                log::warn!(target: "gsinfer::state", "model {model}: saved channel state discarded: {why}; channels start fresh");
                board.set_state_restore(&model, "discarded", &why, &[]);
            }
            Restore::Unreadable(e) => {
                log::warn!(target: "gsinfer::state", "model {model}: {e}");
                board.set_state_restore(&model, "discarded", &e.to_string(), &[]);
                let _ = path;
            }
        }
    }

    /// Holds the acknowledgement of a message whose samples were taken.
    pub fn hold(&mut self, ack: rumqttc::Publish) {
        self.held.push(ack);
    }

    /// Whether a save is due at `now`: enough acknowledgements held, or the
    /// interval passed with something held or new.
    pub fn due(&self, now: Instant) -> bool {
        self.store.is_some()
            && (self.held.len() >= self.config.max_unacked
                || now.duration_since(self.last_save)
                    >= Duration::from_millis(self.config.save_interval_ms))
    }

    /// The pipelines (indices in config order) with something new since
    /// their last save: every pipeline that took samples of a held
    /// acknowledgement is among them. Empty when nothing is saved.
    pub fn dirty<'a>(&self, pipelines: impl Iterator<Item = &'a Pipeline>) -> Vec<usize> {
        if self.store.is_none() {
            return Vec::new();
        }
        pipelines
            .zip(&self.keys)
            .enumerate()
            .filter_map(|(ix, (p, slot))| {
                let (_, saved) = slot.as_ref()?;
                (progress(p) != *saved).then_some(ix)
            })
            .collect()
    }

    /// Saves every pipeline with something new at `now_ns` (the caller has
    /// made sure none of theirs is in flight, or is stopping), recording
    /// each save on the board; returns the acknowledgements to send now
    /// (all those held: a failed save does not hold telemetry back).
    pub fn save<'a>(
        &mut self,
        pipelines: impl Iterator<Item = &'a Pipeline>,
        board: &StatusBoard,
        now: Instant,
        now_ns: i64,
    ) -> Vec<rumqttc::Publish> {
        let pipelines: Vec<&Pipeline> = pipelines.collect();
        let dirty = self.dirty(pipelines.iter().copied());
        self.save_dirty(&pipelines, &dirty, board, now, now_ns)
    }

    /// [`Persistence::save`] of the pipelines `dirty` (from
    /// [`Persistence::dirty`]) out of all `pipelines`.
    fn save_dirty(
        &mut self,
        pipelines: &[&Pipeline],
        dirty: &[usize],
        board: &StatusBoard,
        now: Instant,
        now_ns: i64,
    ) -> Vec<rumqttc::Publish> {
        self.last_save = now;
        let Some(store) = &self.store else {
            return std::mem::take(&mut self.held);
        };
        // Written as one group commit (two syncs for all, not two per file).
        let due: Vec<(usize, &Pipeline, Progress)> = dirty
            .iter()
            .filter_map(|&ix| Some((ix, *pipelines.get(ix)?)))
            .filter(|(ix, _)| self.keys.get(*ix).is_some_and(Option::is_some))
            .map(|(ix, p)| (ix, p, progress(p)))
            .collect();
        if due.is_empty() {
            return std::mem::take(&mut self.held);
        }
        let started = Instant::now();
        let batch: Vec<(&StateKey, &Pipeline)> = due
            .iter()
            .map(|(ix, p, _)| (&self.keys[*ix].as_ref().expect("due has keys").0, *p))
            .collect();
        let results = store.save_all(&batch, now_ns);
        let took = started.elapsed();
        for ((ix, _, now_progress), result) in due.into_iter().zip(results) {
            let (key, saved) = self.keys[ix].as_mut().expect("due has keys");
            let failing = &mut self.failing[ix];
            match result {
                Ok(report) => {
                    *saved = now_progress;
                    log::debug!(target: "gsinfer::state", "model {}: channel state saved ({} channel(s), {} bytes; the group's save took {} µs)", key.model, report.channels, report.bytes, took.as_micros());
                    board.record_state_save(&key.model, Ok((report.bytes, took)));
                    if std::mem::take(failing) {
                        log::info!(target: "gsinfer::state", "model {}: channel state saved again", key.model);
                    }
                }
                Err(e) => {
                    if !std::mem::replace(failing, true) {
                        log::error!(target: "gsinfer::state", "model {}: channel state not saved: {e}; scoring goes on, but a crash now loses what came since the last save (logged once until a save succeeds)", key.model);
                    }
                    board.record_state_save(&key.model, Err(e.to_string()));
                }
            }
        }
        std::mem::take(&mut self.held)
    }

    /// Gives up this save at `now` (`in_flight` windows still unscored),
    /// logging it at most once a minute; returns the acknowledgements held.
    pub fn skip(&mut self, in_flight: u64, now: Instant) -> Vec<rumqttc::Publish> {
        if self
            .last_skip_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            log::warn!(target: "gsinfer::state", "channel state not saved: {in_flight} window(s) still in flight after {:?} (the engines are behind); held acknowledgements sent anyway", SAVE_BARRIER);
            self.last_skip_log = Some(now);
        }
        self.last_save = now;
        std::mem::take(&mut self.held)
    }

    /// Logs the final save at stop: which models' state the next start
    /// will not find (their last save failed), or that all were saved.
    pub fn log_stop(&self) {
        if self.store.is_none() {
            return;
        }
        let unsaved: Vec<&str> = self
            .keys
            .iter()
            .zip(&self.failing)
            .filter(|(_, failing)| **failing)
            .filter_map(|(key, _)| key.as_ref().map(|(k, _)| k.model.as_str()))
            .collect();
        if unsaved.is_empty() {
            log::info!(target: "gsinfer::state", "channel state saved for the next start");
        } else {
            log::error!(target: "gsinfer::state", "channel state of {} not saved at stop (see the save error above): the next start continues from an older save or starts fresh", unsaved.join(", "));
        }
    }
}

/// Saves the channel state of the pipelines with something new once none
/// of their windows is in flight (their queued ones dispatched at once, the
/// results scored as they come within [`SAVE_BARRIER`]; the other models'
/// results are scored meanwhile too); returns the acknowledgements now due.
/// Without that point (an engine far behind), nothing is saved this time
/// and the acknowledgements are released anyway: telemetry is not held
/// back for a save.
pub async fn checkpoint(
    router: &mut Router,
    state: &mut Persistence,
    results_rx: &mut mpsc::Receiver<BatchResult>,
    board: &StatusBoard,
    out_tx: &mpsc::Sender<Outgoing>,
) -> Vec<rumqttc::Publish> {
    let deadline = tokio::time::Instant::now() + SAVE_BARRIER;
    let dirty = state.dirty(router.pipelines());
    if router.windows_in_flight(&dirty) > 0 {
        // Their queued windows go now rather than at the end of their budget.
        router.expedite(&dirty, Instant::now());
    }
    while router.windows_in_flight(&dirty) > 0 {
        match tokio::time::timeout_at(deadline, results_rx.recv()).await {
            Ok(Some(result)) => {
                deliver(router.on_results(result, Instant::now()), board, out_tx).await
            }
            _ => break,
        }
    }
    match router.windows_in_flight(&dirty) {
        0 => {
            let pipelines: Vec<&Pipeline> = router.pipelines().collect();
            state.save_dirty(&pipelines, &dirty, board, Instant::now(), now_ns())
        }
        n => state.skip(n, Instant::now()),
    }
}
