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
//! model's queue. It also waits until the scores queued before it are
//! written to the broker connection ([`checkpoint`] says why).
//!
//! A checkpoint's pipelines are snapshotted on the pipeline task
//! ([`Snapshot`]: their channels shared, not copied; a channel that changes
//! while the writer holds it is copied then, once) and encoded and written
//! by the *state writer*, a thread of
//! its own, as one group commit; the acknowledgements held for it are sent
//! when the writer reports the save done (`SaveDone`, on a channel the
//! pipeline task selects on). One save is in flight at a time (queue of
//! one, policy: the next checkpoint waits until the writer is done, its
//! acknowledgements held meanwhile, so the broker's in-flight window is
//! the backpressure). Why: at 10 000 models a save of every file took the
//! pipeline task for about a second per interval, during which no window
//! was scored (BENCHMARKS.md). The final save at stop is written on the
//! task itself.
//!
//! With the journal (`state.journal = true`; [`crate::journal`]), a
//! QoS 1/2 message's samples are also framed as the task takes them, and
//! its acknowledgement waits only for those frames to be appended and
//! synced by a second writer thread, the journal's ([`Due::Journal`]: at
//! `max_unacked` held messages, or [`JOURNAL_LINGER`] after the oldest).
//! The whole saves above then hold no acknowledgement and are staggered
//! ([`Due::Whole`], one slice of [`WHOLE_SAVE_SLICES`] at a time); each
//! starts a new journal generation and, once on disk, deletes the task's
//! journal below the oldest save of a pipeline with something unsaved. At
//! start, [`replay`] feeds what the journal holds after the saved states
//! through the router and engines before any new telemetry is taken.
//!
//! Time comes in as arguments (`now`, `now_ns`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::account::deliver;
use super::router::{Fact, Replayed, Router};
use crate::config::PipelineConfig;
use crate::infer::BatchResult;
use crate::ingest::mqtt::Outbox;
use crate::ingest::{now_ns, Ack};
use crate::journal::{self, Appender, JournalDir};
use crate::pipeline::{ChannelOutput, Pipeline};
use crate::publish::Outgoing;
use crate::repository::ModelRepository;
use crate::state::{Restore, SaveReport, Snapshot, StateConfig, StateError, StateKey, StateStore};
use crate::status::StatusBoard;

/// Longest a state save waits for the windows in flight to be scored.
pub const SAVE_BARRIER: Duration = Duration::from_secs(2);

/// Longest a held acknowledgement waits for its journal append when fewer
/// than `max_unacked` messages are held.
pub const JOURNAL_LINGER: Duration = Duration::from_millis(50);

/// With the journal, whole saves are staggered: every `save_interval_ms /
/// WHOLE_SAVE_SLICES` the pipelines of one slice (index modulo this) are
/// saved, so each pipeline is saved once per interval and no save rewrites
/// every pipeline at once (at 1 000 channels one did, 75–730 ms of writer
/// time, while the first windows of the run were late).
pub const WHOLE_SAVE_SLICES: usize = 10;

/// Windows a journal replay lets be in flight before it waits for them to
/// be scored: well under a batch queue's capacity (4 096 by default), so a
/// replay never displaces a window.
pub const REPLAY_IN_FLIGHT: u64 = 64;

/// Longest a journal replay waits for one engine result.
pub const REPLAY_RESULT_WAIT: Duration = Duration::from_secs(30);

/// What a pipeline had taken and settled when it was last saved: a
/// pipeline whose progress differs has something new to save.
type Progress = (u64, u64);

fn progress(p: &Pipeline) -> Progress {
    p.channel_states().iter().fold((0, 0), |(s, w), c| {
        (s + c.samples(), w + c.windows_settled())
    })
}

/// One save for the state writer: the pipelines (index, progress at the
/// snapshot) and their snapshots, and the acknowledgements it releases.
struct SaveJob {
    pipelines: Vec<(usize, Progress)>,
    snapshots: Vec<Snapshot>,
    now_ns: i64,
    acks: Vec<Ack>,
    /// The journal files it makes obsolete.
    after: Option<AfterSave>,
    /// The journal generation its snapshots are taken at (the journal
    /// after them starts there).
    generation: Option<u64>,
}

/// Journal frames for the state writer to append and sync, and the
/// acknowledgements that wait for them.
struct AppendJob {
    path: PathBuf,
    bytes: Vec<u8>,
    acks: Vec<Ack>,
}

/// The state writer's work, one at a time.
enum WriterJob {
    Save(SaveJob),
    Append(AppendJob),
}

impl WriterJob {
    /// The acknowledgements of a job the writer did not take (it is gone).
    fn acks_of(refused: std::sync::mpsc::TrySendError<WriterJob>) -> Vec<Ack> {
        let job = match refused {
            std::sync::mpsc::TrySendError::Full(j)
            | std::sync::mpsc::TrySendError::Disconnected(j) => j,
        };
        match job {
            WriterJob::Save(job) => job.acks,
            WriterJob::Append(job) => job.acks,
        }
    }
}

/// What a whole save makes obsolete once every pipeline of it is on disk.
struct AfterSave {
    journal: JournalDir,
    task: usize,
    /// The task's journal files below this generation.
    below: u64,
    /// The run before's files, if this task has not released them yet.
    old_run: Option<Arc<OldRun>>,
}

/// The journal files of the runs before this one: their samples are in the
/// saved states once every pipeline task has saved whole after replaying
/// them, and the task that does so last deletes them.
#[derive(Debug)]
pub struct OldRun {
    paths: Vec<PathBuf>,
    waiting: AtomicUsize,
}

impl OldRun {
    /// The files at `paths`, waiting for `tasks` pipeline tasks.
    pub fn new(paths: Vec<PathBuf>, tasks: usize) -> Arc<Self> {
        Arc::new(Self {
            paths,
            waiting: AtomicUsize::new(tasks),
        })
    }

    /// One task has saved whole; the last one deletes the files.
    fn release(&self) {
        if self.waiting.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        for p in &self.paths {
            if let Err(e) = journal::remove(p) {
                log::warn!(target: "gsinfer::state", "journal file {} not deleted: {e}", p.display());
            }
        }
    }
}

/// A job the state writer finished: one result per pipeline of a save.
#[derive(Debug)]
pub struct SaveDone {
    pipelines: Vec<(usize, Progress)>,
    results: Vec<Result<SaveReport, StateError>>,
    took: Duration,
    acks: Vec<Ack>,
    /// An append's result: bytes appended, or why not.
    appended: Option<Result<usize, String>>,
    /// The save released the run before's journal files.
    released_old: bool,
    /// The save's [`SaveJob::generation`].
    generation: Option<u64>,
}

/// The state writer's nice value (0 normal, 19 lowest).
const WRITER_NICE: i32 = 10;

/// A state writer thread named `name` (at `nice`, if given): takes one
/// [`WriterJob`] at a time, reports each on `done`; ends when the job
/// sender is dropped. Each pipeline task has one for whole saves (nice
/// [`WRITER_NICE`]) and, with the journal, one for appends (normal
/// priority: acknowledgements wait for it), so that a long whole save
/// never holds acknowledgements back.
fn start_writer(
    store: StateStore,
    done: mpsc::Sender<SaveDone>,
    name: &str,
    nice: Option<i32>,
) -> std::sync::mpsc::SyncSender<WriterJob> {
    let (jobs, rx) = std::sync::mpsc::sync_channel::<WriterJob>(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // A save of 1 000 models was ~0.3 s of CPU (~0.15 s since saves
            // are written in place); at normal priority, on 2 cores, it took
            // that from the engines and every window of the next 0.4 s came
            // late (BENCHMARKS.md, "N per-channel models"). Nice 10 still
            // leaves it ~10 % of a busy core, so saves (and at QoS 1 the
            // acknowledgements they release) are slowed under load, not
            // stopped.
            if let Some(nice) = nice {
                if let Err(e) = crate::background::lower_this_thread(nice) {
                    log::debug!(target: "gsinfer::state", "the state writer keeps its priority: {e}");
                }
            }
            let mut appender = Appender::default();
            while let Ok(job) = rx.recv() {
                let started = Instant::now();
                let report = match job {
                    WriterJob::Save(job) => save(&store, job, started),
                    WriterJob::Append(job) => {
                        let appended = (appender.append(&job.path, &job.bytes))
                            .map(|()| job.bytes.len())
                            .map_err(|e| format!("{}: {e}", job.path.display()));
                        SaveDone {
                            pipelines: Vec::new(),
                            results: Vec::new(),
                            took: started.elapsed(),
                            acks: job.acks,
                            appended: Some(appended),
                            released_old: false,
                            generation: None,
                        }
                    }
                };
                if done.blocking_send(report).is_err() {
                    break;
                }
            }
        })
        .expect("spawn the state writer");
    jobs
}

/// The state writer's side of a [`SaveJob`]: the snapshots saved, then,
/// if every one is on disk, the journal files it made obsolete deleted.
fn save(store: &StateStore, job: SaveJob, started: Instant) -> SaveDone {
    let results = store.save_snapshots(&job.snapshots, job.now_ns);
    let mut released_old = false;
    if let Some(after) = job.after.filter(|_| results.iter().all(Result::is_ok)) {
        if let Err(e) = after.journal.delete_below(after.task, after.below) {
            log::warn!(target: "gsinfer::state", "old journal files not deleted: {e}");
        }
        if let Some(old) = after.old_run {
            old.release();
            released_old = true;
        }
    }
    SaveDone {
        pipelines: job.pipelines,
        results,
        took: started.elapsed(),
        acks: job.acks,
        appended: None,
        released_old,
        generation: job.generation,
    }
}

/// Where a pipeline task's journal goes, given to [`Persistence::open`].
#[derive(Debug)]
pub struct JournalStart {
    /// The journal folder.
    pub dir: JournalDir,
    /// The task's number (in its files' names).
    pub task: usize,
    /// Its first generation: above every one on disk
    /// ([`journal::Replay::next_generation`]).
    pub generation: u64,
    /// The run before's files, deleted once every task has saved whole.
    pub old_run: Option<Arc<OldRun>>,
}

/// A pipeline task's journal while it runs.
#[derive(Debug)]
struct JournalLog {
    start: JournalStart,
    /// Its writer thread's job queue.
    writer: std::sync::mpsc::SyncSender<WriterJob>,
    /// An append is with the writer.
    appending: bool,
    /// Per pipeline: the journal generation its last save in this run was
    /// taken at (`None`: not saved in this run); the journal below the
    /// oldest of those of the pipelines with something unsaved is obsolete.
    saved_at: Vec<Option<u64>>,
    /// The slice the next whole save takes ([`WHOLE_SAVE_SLICES`]).
    slice: usize,
    /// Frames of the held messages, not yet with the writer.
    pending: Vec<u8>,
    /// When the oldest held message was taken.
    since: Option<Instant>,
    /// The last append failed (logged once until one succeeds).
    failing: bool,
}

/// What a pipeline task's channel state needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    Nothing,
    /// The held messages' journal frames appended ([`Persistence::flush_journal`]).
    Journal,
    /// A whole save ([`checkpoint`]).
    Whole,
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
    held: Vec<Ack>,
    last_save: Instant,
    /// When a skipped save was last logged.
    last_skip_log: Option<Instant>,
    /// The state writer's job queue (`None`: persistence is off).
    writer: Option<std::sync::mpsc::SyncSender<WriterJob>>,
    /// A job is with the writer.
    saving: bool,
    /// The journal (`None`: off, or persistence is off).
    journal: Option<JournalLog>,
}

impl Persistence {
    /// The state folder of `config`, or `None` when state is not kept
    /// (disabled, or the folder is unusable: logged once, here). Opened
    /// once and shared by every pipeline task's [`Persistence`].
    pub fn store(config: &StateConfig) -> Option<StateStore> {
        if !config.enabled {
            return None;
        }
        match StateStore::open(&config.dir()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!(target: "gsinfer::state", "channel state is not kept across restarts: {e} (set state.dir to a writable folder, or state.enabled = false)");
                None
            }
        }
    }

    /// The state of `pipelines` (one task's, in config order) in `store`
    /// (from [`Persistence::store`]), saved as `config` says, each keyed by
    /// its model's version and file sha256 in `repo`; `now` starts the
    /// save interval; `journal`: where its journal goes (`None`: no
    /// journal). Never fails: what cannot be used is left off. Also
    /// returns where the state writer reports finished jobs (hand each to
    /// [`Persistence::complete`]).
    pub fn open(
        config: StateConfig,
        store: Option<StateStore>,
        pipelines: &[&PipelineConfig],
        repo: &ModelRepository,
        now: Instant,
        journal: Option<JournalStart>,
    ) -> (Self, mpsc::Receiver<SaveDone>) {
        let keys = pipelines
            .iter()
            .map(|p| {
                store.as_ref()?;
                let entry = repo.load(&p.model).ok()?;
                let sha = crate::engine::cache::sha256_file(&entry.model_path).ok()?;
                Some((StateKey::new(p, entry.version, sha), (0, 0)))
            })
            .collect();
        let (done_tx, done_rx) = mpsc::channel(1);
        let writer = (store.clone())
            .map(|s| start_writer(s, done_tx.clone(), "state-writer", Some(WRITER_NICE)));
        let journal = store.clone().zip(journal).map(|(s, start)| JournalLog {
            start,
            writer: start_writer(s, done_tx, "state-journal", None),
            appending: false,
            saved_at: vec![None; pipelines.len()],
            slice: 0,
            pending: Vec::new(),
            since: None,
            failing: false,
        });
        let persistence = Self {
            config,
            store,
            failing: vec![false; pipelines.len()],
            keys,
            held: Vec::new(),
            last_save: now,
            last_skip_log: None,
            journal,
            writer,
            saving: false,
        };
        (persistence, done_rx)
    }

    /// Whether a save or a journal append is with a writer (its
    /// [`SaveDone`] will come).
    pub fn busy(&self) -> bool {
        self.saving || self.journal.as_ref().is_some_and(|j| j.appending)
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
        match store.load(key, now_ns, max_age) {
            Restore::Missing => {
                log::info!(target: "gsinfer::state", "model {model}: no saved channel state; channels start fresh");
                board.set_state_restore(&model, "fresh", "no saved state", &[]);
            }
            Restore::Continue {
                channels,
                age,
                damaged,
            } => {
                let names: Vec<String> = channels.iter().map(|c| c.name().to_string()).collect();
                let n = pipeline.restore(channels);
                *saved = progress(pipeline);
                let age_s = age.as_secs_f64();
                if let Some(e) = damaged {
                    // A save torn by a crash: its messages were never
                    // acknowledged, so the broker sends them again.
                    log::warn!(target: "gsinfer::state", "model {model}: {e}; the save before it is continued");
                }
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
            }
        }
    }

    /// Whether the held messages are journaled (then [`Persistence::hold`]
    /// wants each one's [`journal::Record`]).
    pub fn journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// How often the pipeline task should ask [`Persistence::due`] when
    /// nothing else wakes it.
    pub fn tick_every(&self) -> Duration {
        let save = Duration::from_millis(self.config.save_interval_ms);
        match self.journal {
            Some(_) => save.min(JOURNAL_LINGER),
            None => save,
        }
    }

    /// Holds the acknowledgement of a message whose samples were taken at
    /// `now`, with what it brought (`record`) for the journal.
    pub fn hold(&mut self, ack: Ack, record: Option<&journal::Record>, now: Instant) {
        if let (Some(j), Some(record)) = (&mut self.journal, record) {
            journal::frame(record, &mut j.pending);
            j.since.get_or_insert(now);
        }
        self.held.push(ack);
    }

    /// What is due at `now`: a whole save once the interval passed (none
    /// while one is with the writer); with the journal, an append at
    /// `max_unacked` held messages or [`JOURNAL_LINGER`] after the oldest
    /// (none while one is with its writer); without it, a whole save at
    /// `max_unacked`.
    pub fn due(&self, now: Instant) -> Due {
        if self.store.is_none() {
            return Due::Nothing;
        }
        let mut interval = Duration::from_millis(self.config.save_interval_ms);
        if self.journal.is_some() {
            interval /= WHOLE_SAVE_SLICES as u32;
        }
        let whole = !self.saving && now.duration_since(self.last_save) >= interval;
        let full = self.held.len() >= self.config.max_unacked;
        match &self.journal {
            _ if whole => Due::Whole,
            None if full && !self.saving => Due::Whole,
            Some(j)
                if !j.appending
                    && !self.held.is_empty()
                    && (full
                        || (j.since).is_some_and(|t| now.duration_since(t) >= JOURNAL_LINGER)) =>
            {
                Due::Journal
            }
            _ => Due::Nothing,
        }
    }

    /// Hands the held messages' journal frames to the journal's writer, to
    /// be appended and synced; returns the acknowledgements to send now:
    /// none (they come with the [`SaveDone`], or stay held while an append
    /// is with the writer), or all of them when there is no journal
    /// (telemetry is not held back).
    pub fn flush_journal(&mut self) -> Vec<Ack> {
        let Some(j) = &mut self.journal else {
            return std::mem::take(&mut self.held);
        };
        if j.appending || self.held.is_empty() {
            return Vec::new();
        }
        j.since = None;
        let job = AppendJob {
            path: j.start.dir.segment_path(j.start.generation, j.start.task),
            bytes: std::mem::take(&mut j.pending),
            acks: std::mem::take(&mut self.held),
        };
        match j.writer.try_send(WriterJob::Append(job)) {
            Ok(()) => {
                j.appending = true;
                Vec::new()
            }
            Err(e) => {
                log::error!(target: "gsinfer::state", "telemetry not journaled: the state writer is gone");
                WriterJob::acks_of(e)
            }
        }
    }

    /// The pipelines (indices in config order) with something new since
    /// their last save: every pipeline that took samples of a held
    /// acknowledgement is among them. Empty when nothing is saved.
    /// With the journal, only those of the slice whose turn it is
    /// ([`WHOLE_SAVE_SLICES`]).
    pub fn dirty<'a>(&self, pipelines: impl Iterator<Item = &'a Pipeline>) -> Vec<usize> {
        let mut dirty = self.changed(pipelines);
        if let Some(j) = &self.journal {
            dirty.retain(|ix| ix % WHOLE_SAVE_SLICES == j.slice);
        }
        dirty
    }

    /// Every pipeline (index in config order) with something new since its
    /// last save.
    fn changed<'a>(&self, pipelines: impl Iterator<Item = &'a Pipeline>) -> Vec<usize> {
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
    ) -> Vec<Ack> {
        self.last_save = now;
        let Some(store) = &self.store else {
            return std::mem::take(&mut self.held);
        };
        // Written as one group commit (two syncs for all, not two per file),
        // from the pipelines themselves: nothing runs beside this save.
        let pipelines: Vec<&Pipeline> = pipelines.collect();
        let due: Vec<(usize, &Pipeline, Progress)> = self
            .dirty(pipelines.iter().copied())
            .into_iter()
            .map(|ix| (ix, pipelines[ix], progress(pipelines[ix])))
            .collect();
        if due.is_empty() {
            self.journal_saved();
            return std::mem::take(&mut self.held);
        }
        let started = Instant::now();
        let batch: Vec<(&StateKey, &Pipeline)> = due
            .iter()
            .map(|(ix, p, _)| (&self.keys[*ix].as_ref().expect("due has keys").0, *p))
            .collect();
        let results = store.save_all(&batch, now_ns);
        let took = started.elapsed();
        let whole = results.iter().all(Result::is_ok);
        for ((ix, _, now_progress), result) in due.into_iter().zip(results) {
            self.record(ix, now_progress, result, took, board);
        }
        if whole {
            self.journal_saved();
        }
        std::mem::take(&mut self.held)
    }

    /// After a save on the task of every pipeline with something new: the
    /// task's journal is obsolete, and its share of the run before's.
    fn journal_saved(&mut self) {
        let Some(j) = &mut self.journal else {
            return;
        };
        j.pending.clear();
        j.start.generation += 1;
        if let Err(e) = j.start.dir.delete_below(j.start.task, j.start.generation) {
            log::warn!(target: "gsinfer::state", "old journal files not deleted: {e}");
        }
        if let Some(old) = j.start.old_run.take() {
            old.release();
        }
    }

    /// Hands the pipelines `dirty` (from [`Persistence::dirty`]) of all
    /// `pipelines` to the state writer as copies, with the acknowledgements
    /// held, at `now_ns`; returns the acknowledgements to send now: all of
    /// them when there is nothing to save (or no writer), else none (they
    /// come back with the [`SaveDone`]).
    fn begin_save(
        &mut self,
        pipelines: &[&Pipeline],
        dirty: &[usize],
        now: Instant,
        now_ns: i64,
    ) -> Vec<Ack> {
        self.last_save = now;
        if self.writer.is_none() {
            return std::mem::take(&mut self.held);
        }
        let mut job = SaveJob {
            pipelines: Vec::new(),
            snapshots: Vec::new(),
            now_ns,
            acks: Vec::new(),
            after: None,
            generation: None,
        };
        for &ix in dirty {
            let (Some(p), Some(Some((key, _)))) = (pipelines.get(ix), self.keys.get(ix)) else {
                continue;
            };
            job.pipelines.push((ix, progress(p)));
            job.snapshots.push(Snapshot {
                key: key.clone(),
                channels: p.channel_states().to_vec(),
            });
        }
        // With the journal, the held messages are journaled now, as ever
        // (their samples are in the snapshots too): a whole save holds no
        // acknowledgement, so however long it takes it never closes the
        // broker's in-flight window.
        let journaled = match self.journal {
            Some(_) => self.flush_journal(),
            None => Vec::new(),
        };
        let unsaved = match self.journal {
            Some(_) => self.changed(pipelines.iter().copied()),
            None => Vec::new(),
        };
        if let Some(j) = &mut self.journal {
            j.slice = (j.slice + 1) % WHOLE_SAVE_SLICES;
            if unsaved.is_empty() {
                // Nothing new anywhere, the replay included: the states on
                // disk hold the run before's journal.
                if let Some(old) = j.start.old_run.take() {
                    old.release();
                }
            }
            if !job.pipelines.is_empty() {
                // The snapshots hold everything journaled so far: the
                // journal after them starts a generation up.
                j.start.generation += 1;
                let at = j.start.generation;
                job.generation = Some(at);
                // Obsolete once on disk: what is below the oldest save of
                // a pipeline with something unsaved (none saved this run
                // yet: nothing is).
                let oldest = (unsaved.iter())
                    .map(|ix| match dirty.contains(ix) {
                        true => Some(at),
                        false => j.saved_at.get(*ix).copied().flatten(),
                    })
                    .try_fold(at, |low, g| g.map(|g| low.min(g)));
                job.after = oldest.map(|below| AfterSave {
                    journal: j.start.dir.clone(),
                    task: j.start.task,
                    below,
                    old_run: j.start.old_run.clone(),
                });
            }
        }
        match (&self.journal, job.pipelines.is_empty()) {
            (Some(_), true) => return journaled,
            (None, true) => return std::mem::take(&mut self.held),
            (Some(_), false) => {}
            (None, false) => job.acks = std::mem::take(&mut self.held),
        }
        let Some(writer) = &self.writer else {
            return journaled;
        };
        match writer.try_send(WriterJob::Save(job)) {
            Ok(()) => {
                self.saving = true;
                journaled
            }
            // Not expected (one job at a time, and the writer lives as long
            // as this): nothing saved, telemetry not held back.
            Err(e) => {
                log::error!(target: "gsinfer::state", "channel state not saved: the state writer is gone");
                WriterJob::acks_of(e)
            }
        }
    }

    /// The state writer ended without reporting its save (it panicked):
    /// channel state is no longer saved while running, which is logged;
    /// the acknowledgements of that save are lost, so the broker keeps
    /// those messages in flight until the next connection redelivers them.
    pub fn writer_lost(&mut self) {
        log::error!(target: "gsinfer::state", "the state writer stopped: channel state is no longer saved while running (only at stop); restart gsinfer to save again");
        self.writer = None;
        self.saving = false;
        self.journal = None;
    }

    /// Takes a save the writer finished: records each pipeline's result
    /// (saved progress, the board, errors logged once per run of
    /// failures); returns the acknowledgements it releases.
    pub fn complete(&mut self, done: SaveDone, board: &StatusBoard) -> Vec<Ack> {
        match (&mut self.journal, done.appended.is_some()) {
            (Some(j), true) => j.appending = false,
            _ => self.saving = false,
        }
        for ((ix, at), result) in done.pipelines.into_iter().zip(done.results) {
            if let (Some(j), Ok(_)) = (&mut self.journal, &result) {
                if let Some(slot) = j.saved_at.get_mut(ix) {
                    *slot = done.generation;
                }
            }
            self.record(ix, at, result, done.took, board);
        }
        if let Some(j) = &mut self.journal {
            if done.released_old {
                j.start.old_run = None;
            }
            match done.appended {
                Some(Ok(bytes)) => {
                    board.record_journal_append(Ok((done.acks.len(), bytes)));
                    log::trace!(target: "gsinfer::state", "journal: {bytes} bytes appended in {} µs", done.took.as_micros());
                    if std::mem::take(&mut j.failing) {
                        log::info!(target: "gsinfer::state", "telemetry journaled again");
                    }
                }
                Some(Err(e)) => {
                    board.record_journal_append(Err(()));
                    if !std::mem::replace(&mut j.failing, true) {
                        log::error!(target: "gsinfer::state", "telemetry not journaled: {e}; its messages are acknowledged anyway, so a crash before the next whole save loses them (logged once until an append succeeds)");
                    }
                }
                None => {}
            }
        }
        done.acks
    }

    /// Records the result of saving pipeline `ix` at progress `at`.
    fn record(
        &mut self,
        ix: usize,
        at: Progress,
        result: Result<SaveReport, StateError>,
        took: Duration,
        board: &StatusBoard,
    ) {
        let Some(Some((key, saved))) = self.keys.get_mut(ix) else {
            return;
        };
        let failing = &mut self.failing[ix];
        match result {
            Ok(report) => {
                *saved = at;
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

    /// Gives up this save at `now` (`behind`: what was not done within
    /// [`SAVE_BARRIER`]), logging it at most once a minute; returns the
    /// acknowledgements held.
    pub fn skip(&mut self, behind: Behind, now: Instant) -> Vec<Ack> {
        if self
            .last_skip_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            let why = match behind {
                Behind::Engines(n) => format!("{n} window(s) still in flight after {SAVE_BARRIER:?} (the engines are behind)"),
                Behind::Publisher => format!("scores still not written to the broker after {SAVE_BARRIER:?} (the publisher or the broker connection is behind)"),
            };
            let acks = match self.journal {
                Some(_) => "held messages journaled instead",
                None => "held acknowledgements sent anyway",
            };
            log::warn!(target: "gsinfer::state", "channel state not saved: {why}; {acks}");
            self.last_skip_log = Some(now);
        }
        self.last_save = now;
        self.flush_journal()
    }

    /// After the final save at stop: the models whose state the next start
    /// will not find (their last save failed); `None` when state is not
    /// kept.
    pub fn unsaved(&self) -> Option<Vec<String>> {
        self.store.as_ref()?;
        let unsaved = (self.keys.iter().zip(&self.failing))
            .filter(|(_, failing)| **failing)
            .filter_map(|(key, _)| key.as_ref().map(|(k, _)| k.model.clone()))
            .collect();
        Some(unsaved)
    }
}

/// Logs the final save at stop, from every pipeline task's
/// [`Persistence::unsaved`]: which models' state the next start will not
/// find, or that all were saved.
pub fn log_stop(unsaved: impl IntoIterator<Item = Option<Vec<String>>>) {
    let mut kept = false;
    let mut models = Vec::new();
    for u in unsaved.into_iter().flatten() {
        kept = true;
        models.extend(u);
    }
    if !kept {
        return;
    }
    if models.is_empty() {
        log::info!(target: "gsinfer::state", "channel state saved for the next start");
    } else {
        log::error!(target: "gsinfer::state", "channel state of {} not saved at stop (see the save error above): the next start continues from an older save or starts fresh", models.join(", "));
    }
}

/// Why a checkpoint saved nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// This many windows of the pipelines to save were still unscored.
    Engines(u64),
    /// Their scores were not yet written to the broker connection.
    Publisher,
}

/// Hands the channel state of the pipelines with something new to the
/// state writer once none of their windows is in flight (their queued ones
/// dispatched at once, the results scored as they come) *and* every score
/// and event queued before is written to the broker connection (a mark
/// through the publisher's queue, then [`Outbox::written`]), all within
/// [`SAVE_BARRIER`]; the other models' results are scored meanwhile.
/// Returns the acknowledgements now due (those of the save come with its
/// [`SaveDone`]).
///
/// Why the publisher too: a save that counts a window as settled while its
/// score still waits in the publisher's queue or the MQTT client's would,
/// at a SIGKILL, lose that score for good, since the restored state does
/// not score the window again and the broker does not redeliver its
/// acknowledged samples (RELIABILITY.md).
/// Without that point (an engine or the broker far behind), nothing is
/// saved this time and the acknowledgements are released anyway:
/// telemetry is not held back for a save.
pub async fn checkpoint(
    router: &mut Router,
    state: &mut Persistence,
    results_rx: &mut mpsc::Receiver<BatchResult>,
    board: &StatusBoard,
    out_tx: &mpsc::Sender<Outgoing>,
    outbox: &Outbox,
) -> Vec<Ack> {
    let deadline = tokio::time::Instant::now() + SAVE_BARRIER;
    let started = Instant::now();
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
        0 => {}
        n => return state.skip(Behind::Engines(n), Instant::now()),
    }
    let settled = Instant::now();
    if !published(router, results_rx, board, out_tx, outbox, deadline).await {
        return state.skip(Behind::Publisher, Instant::now());
    }
    let flushed = Instant::now();
    let pipelines: Vec<&Pipeline> = router.pipelines().collect();
    let acks = state.begin_save(&pipelines, &dirty, flushed, now_ns());
    log::debug!(target: "gsinfer::state", "checkpoint of {} pipeline(s): windows settled in {} µs, scores flushed in {} µs, snapshot taken in {} µs",
        dirty.len(), (settled - started).as_micros(), (flushed - settled).as_micros(), flushed.elapsed().as_micros());
    acks
}

/// Does what [`Persistence::due`] says is due now: a journal append, a
/// whole save ([`checkpoint`]) or nothing; returns the acknowledgements now
/// due.
pub async fn step(
    router: &mut Router,
    state: &mut Persistence,
    results_rx: &mut mpsc::Receiver<BatchResult>,
    board: &StatusBoard,
    out_tx: &mpsc::Sender<Outgoing>,
    outbox: &Outbox,
) -> Vec<Ack> {
    match state.due(Instant::now()) {
        Due::Nothing => Vec::new(),
        Due::Journal => state.flush_journal(),
        Due::Whole => checkpoint(router, state, results_rx, board, out_tx, outbox).await,
    }
}

/// Feeds `records` (the journal at start, [`journal::Replay::records`])
/// through `router` before any new telemetry: each sample to the pipelines
/// of this task its record names, the windows it completes run by the
/// engines (dispatched at once, at most [`REPLAY_IN_FLIGHT`] at a time)
/// and scored, and the scores and events published as they were the first
/// time. Returns what became of the samples. Gives up waiting for the
/// engines after [`REPLAY_RESULT_WAIT`] without a result (logged): the
/// windows still in flight then settle as they come.
pub async fn replay(
    router: &mut Router,
    results_rx: &mut mpsc::Receiver<BatchResult>,
    records: &[journal::Record],
    board: &StatusBoard,
    out_tx: &mpsc::Sender<Outgoing>,
) -> Replayed {
    let index = router.model_index();
    let lanes: Vec<usize> = (0..router.pipelines().count()).collect();
    let mut total = Replayed::default();
    let mut stalled = false;
    // Windows cut since the replay last waited: counted from the router's
    // facts rather than summed over every channel after each record.
    let mut cut = 0;
    let last = records.len().saturating_sub(1);
    for (n, record) in records.iter().enumerate() {
        let (routed, replayed) = router.on_replay(record, &index, Instant::now());
        total += replayed;
        cut += (routed.facts.iter())
            .map(|f| match f {
                Fact::Windows { count, .. } => *count,
                _ => 0,
            })
            .sum::<u64>();
        deliver(routed, board, out_tx).await;
        let bound = if n == last { 1 } else { REPLAY_IN_FLIGHT };
        if stalled || cut < bound {
            continue;
        }
        cut = 0;
        router.expedite(&lanes, Instant::now());
        while router.windows_in_flight(&lanes) > 0 {
            match tokio::time::timeout(REPLAY_RESULT_WAIT, results_rx.recv()).await {
                Ok(Some(result)) => {
                    deliver(router.on_results(result, Instant::now()), board, out_tx).await
                }
                _ => {
                    log::warn!(target: "gsinfer::state", "journal replay: no engine result for {REPLAY_RESULT_WAIT:?}; the replay goes on without waiting");
                    stalled = true;
                    break;
                }
            }
        }
    }
    total
}

/// Waits until everything queued for the publisher so far is written to
/// the broker connection, scoring the results that come meanwhile; false
/// if `deadline` comes first. True at once when the publisher is gone
/// (stopping: nothing more will be published) or the broker is
/// disconnected (see [`Outbox`]).
async fn published(
    router: &mut Router,
    results_rx: &mut mpsc::Receiver<BatchResult>,
    board: &StatusBoard,
    out_tx: &mpsc::Sender<Outgoing>,
    outbox: &Outbox,
    deadline: tokio::time::Instant,
) -> bool {
    let (mark, answer) = oneshot::channel();
    let written = async {
        if out_tx.send(Outgoing::Mark(mark)).await.is_ok() {
            if let Ok(target) = answer.await {
                outbox.written(target).await;
            }
        }
    };
    tokio::pin!(written);
    let mut results_open = true;
    loop {
        tokio::select! {
            () = &mut written => return true,
            result = results_rx.recv(), if results_open => match result {
                Some(result) => deliver(router.on_results(result, Instant::now()), board, out_tx).await,
                None => results_open = false,
            },
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingest::decode::RawSample;
    use crate::status::StatusConfig;

    /// A configuration of one pipeline (the shipped persist_A-1) whose
    /// state goes to `dir`.
    fn config(dir: &std::path::Path) -> Config {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
        let text = format!(
            "[broker]\nhost = \"127.0.0.1\"\n\n[repository]\npath = {:?}\n\n\
             [state]\ndir = {:?}\n\n\
             [[pipeline]]\nmodel = \"persist_A-1\"\ntopics = [\"t/+\"]\nfeatures = 25\n\
             window = {{ length = 2, stride = 1 }}\n\
             scoring = {{ kind = \"forecast\", threshold = {{ method = \"static\", value = 1.0 }} }}\n",
            repo.display().to_string(),
            dir.join("state").display().to_string(),
        );
        let path = dir.join("gsinfer.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    fn ack(pkid: u16) -> Ack {
        let mut p = rumqttc::Publish::new("t/A-1", rumqttc::QoS::AtLeastOnce, vec![]);
        p.pkid = pkid;
        Ack::new(p)
    }

    /// The shipped persist_A-1 pipeline of `config` after one sample (too
    /// few for a window: none in flight), alone in a router.
    fn router_with_a_sample(config: &Config) -> Router {
        let mut p = Pipeline::new(&config.pipelines[0]);
        let s = RawSample {
            t_ns: None,
            seq: Some(0),
            values: vec![0.0; 25],
        };
        p.on_sample("A-1", 0, &s, Instant::now(), &mut Vec::new())
            .unwrap();
        Router::new(vec![(p, None)], &[], std::collections::HashSet::new())
    }

    /// The mark a checkpoint sends through the publisher's queue.
    async fn mark(out_rx: &mut mpsc::Receiver<Outgoing>) -> oneshot::Sender<u64> {
        let next = tokio::time::timeout(Duration::from_secs(30), out_rx.recv()).await;
        let Ok(Some(Outgoing::Mark(reply))) = next else {
            panic!("no mark through the publisher's queue")
        };
        reply
    }

    /// A checkpoint's surroundings: persist_A-1 with one sample taken and
    /// the acknowledgement of packet 1 held, the publisher's queue, an
    /// idle results queue and a connected outbox.
    struct Checkpointing {
        _dir: tempfile::TempDir,
        board: std::sync::Arc<StatusBoard>,
        state: Persistence,
        done_rx: mpsc::Receiver<SaveDone>,
        router: Router,
        out_tx: mpsc::Sender<Outgoing>,
        out_rx: mpsc::Receiver<Outgoing>,
        _results_tx: mpsc::Sender<BatchResult>,
        results_rx: mpsc::Receiver<BatchResult>,
        outbox: Outbox,
    }

    fn checkpointing() -> Checkpointing {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let repo = ModelRepository::open(&config.repository.path).unwrap();
        let (mut state, done_rx) = Persistence::open(
            config.state.clone(),
            Persistence::store(&config.state),
            &[&config.pipelines[0]],
            &repo,
            Instant::now(),
            None,
        );
        state.hold(ack(1), None, Instant::now());
        let (out_tx, out_rx) = mpsc::channel(8);
        let (results_tx, results_rx) = mpsc::channel(1);
        let outbox = Outbox::default();
        outbox.connected();
        Checkpointing {
            router: router_with_a_sample(&config),
            _dir: dir,
            board: StatusBoard::new(StatusConfig::default()),
            state,
            done_rx,
            out_tx,
            out_rx,
            _results_tx: results_tx,
            results_rx,
            outbox,
        }
    }

    #[tokio::test]
    async fn a_checkpoint_saves_only_once_the_scores_queued_before_it_are_written_to_the_broker() {
        let Checkpointing {
            board,
            mut state,
            mut done_rx,
            mut router,
            out_tx,
            mut out_rx,
            mut results_rx,
            outbox,
            ..
        } = checkpointing();
        // Two scores handed to the MQTT client, not yet written.
        outbox.handing();
        outbox.handing();
        let order = std::sync::Mutex::new(Vec::new());
        let publisher = async {
            mark(&mut out_rx).await.send(outbox.handed()).unwrap();
            for step in ["first written", "second written"] {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                order.lock().unwrap().push(step);
                outbox.wrote();
            }
        };
        let saving = async {
            let acks = checkpoint(
                &mut router,
                &mut state,
                &mut results_rx,
                &board,
                &out_tx,
                &outbox,
            )
            .await;
            order.lock().unwrap().push("save begun");
            acks
        };
        let ((), acks) = tokio::join!(publisher, saving);
        assert!(acks.is_empty(), "held until the save is on disk");
        assert_eq!(
            *order.lock().unwrap(),
            ["first written", "second written", "save begun"]
        );
        assert!(state.busy());
        let done = done_rx.recv().await.expect("the writer reports");
        let headers = state.complete(done, &board).into_iter();
        let pkids: Vec<u16> = headers.filter_map(Ack::release).map(|a| a.pkid).collect();
        assert_eq!(pkids, vec![1]);
    }

    #[tokio::test]
    async fn a_checkpoint_whose_scores_are_never_written_saves_nothing_and_releases_its_acknowledgements(
    ) {
        let Checkpointing {
            board,
            mut state,
            mut router,
            out_tx,
            mut out_rx,
            mut results_rx,
            outbox,
            ..
        } = checkpointing();
        outbox.handing();
        // The publisher takes the mark and answers, but the broker
        // connection never takes the score.
        let publisher = async {
            mark(&mut out_rx).await.send(outbox.handed()).unwrap();
        };
        let saving = checkpoint(
            &mut router,
            &mut state,
            &mut results_rx,
            &board,
            &out_tx,
            &outbox,
        );
        let ((), acks) = tokio::join!(publisher, saving);
        assert!(!state.busy(), "nothing handed to the writer");
        let pkids: Vec<u16> = acks
            .into_iter()
            .filter_map(Ack::release)
            .map(|a| a.pkid)
            .collect();
        assert_eq!(pkids, vec![1], "telemetry is not held back for a save");
        assert!(!state.store.as_ref().unwrap().path("persist_A-1").exists());
    }

    #[test]
    fn the_writer_saves_a_snapshot_and_then_releases_the_acknowledgements_held_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let repo = ModelRepository::open(&config.repository.path).unwrap();
        let board = StatusBoard::new(StatusConfig::default());
        let store = Persistence::store(&config.state);
        let pipelines = [&config.pipelines[0]];
        let (mut state, mut done_rx) = Persistence::open(
            config.state.clone(),
            store,
            &pipelines,
            &repo,
            Instant::now(),
            None,
        );
        let mut p = Pipeline::new(&config.pipelines[0]);
        let mut out = Vec::new();
        for i in 0..3u64 {
            let s = RawSample {
                t_ns: None,
                seq: Some(i),
                values: vec![i as f32; 25],
            };
            p.on_sample("A-1", i as i64, &s, Instant::now(), &mut out)
                .unwrap();
        }
        state.hold(ack(1), None, Instant::now());
        state.hold(ack(2), None, Instant::now());
        assert_eq!(
            state.due(Instant::now() + Duration::from_secs(3600)),
            Due::Whole
        );

        let dirty = state.dirty([&p].into_iter());
        assert_eq!(dirty, vec![0]);
        let now_acks = state.begin_save(&[&p], &dirty, Instant::now(), 1);
        assert!(now_acks.is_empty(), "held until the save is on disk");
        assert!(state.busy());
        // One save at a time: none is due while the writer has one.
        assert_eq!(
            state.due(Instant::now() + Duration::from_secs(3600)),
            Due::Nothing
        );
        // The pipeline goes on meanwhile; the snapshot is what was taken.
        let s = RawSample {
            t_ns: None,
            seq: Some(3),
            values: vec![3.0; 25],
        };
        p.on_sample("A-1", 3, &s, Instant::now(), &mut out).unwrap();

        let done = done_rx.blocking_recv().expect("the writer reports");
        let acks = state.complete(done, &board);
        let headers = acks.into_iter().filter_map(Ack::release);
        assert_eq!(headers.map(|a| a.pkid).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!state.busy());
        let file = state.store.as_ref().unwrap().path("persist_A-1");
        let saved = crate::state::decode(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(saved.channels.len(), 1);
        assert_eq!(
            saved.channels[0].samples(),
            3,
            "the snapshot, not the sample after it"
        );
        // Saved up to the snapshot: the sample taken since makes it dirty again.
        assert_eq!(state.dirty([&p].into_iter()), vec![0]);
    }

    /// A record of one sample of A-1 for persist_A-1.
    fn record(i: u64) -> journal::Record {
        journal::Record {
            received_ns: i as i64,
            parts: vec![journal::Part {
                models: vec!["persist_A-1".into()],
                samples: vec![journal::Sample {
                    channel: "A-1".into(),
                    t_ns: Some(i as i64),
                    seq: None,
                    values: vec![i as f32; 25],
                }],
            }],
        }
    }

    /// The persistence of task 0 with the journal in `journal_dir`, this
    /// run's first generation 5.
    fn journaled(
        config: &Config,
        store: Option<StateStore>,
        journal_dir: &JournalDir,
        old_run: Option<Arc<OldRun>>,
        pipelines: &[&PipelineConfig],
        repo: &ModelRepository,
        t0: Instant,
    ) -> (Persistence, mpsc::Receiver<SaveDone>) {
        let start = JournalStart {
            dir: journal_dir.clone(),
            task: 0,
            generation: 5,
            old_run,
        };
        Persistence::open(
            config.state.clone(),
            store,
            pipelines,
            repo,
            t0,
            Some(start),
        )
    }

    #[test]
    fn held_messages_are_acknowledged_once_journaled_and_a_whole_save_retires_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.state.max_unacked = 2;
        let repo = ModelRepository::open(&config.repository.path).unwrap();
        let board = StatusBoard::new(StatusConfig::default());
        let store = Persistence::store(&config.state);
        let journal_dir = JournalDir::open(store.as_ref().unwrap().dir()).unwrap();
        // A file of the run before, and this run's first generation above it.
        let old = journal_dir.segment_path(4, 1);
        Appender::default().append(&old, b"").unwrap();
        let old_run = OldRun::new(vec![old.clone()], 1);
        let t0 = Instant::now();
        let pipelines = [&config.pipelines[0]];
        let (mut state, mut done_rx) = journaled(
            &config,
            store,
            &journal_dir,
            Some(old_run),
            &pipelines,
            &repo,
            t0,
        );
        assert!(state.journaling());
        assert_eq!(state.tick_every(), JOURNAL_LINGER);

        // One message held: an append once it has waited JOURNAL_LINGER.
        state.hold(ack(1), Some(&record(1)), t0);
        assert_eq!(state.due(t0), Due::Nothing);
        assert_eq!(state.due(t0 + JOURNAL_LINGER), Due::Journal);
        // Two: at once (max_unacked).
        state.hold(ack(2), Some(&record(2)), t0);
        assert_eq!(state.due(t0), Due::Journal);
        assert!(state.flush_journal().is_empty(), "held until synced");
        assert_eq!(
            state.due(t0 + JOURNAL_LINGER),
            Due::Nothing,
            "one job at a time"
        );
        let done = done_rx.blocking_recv().expect("the writer reports");
        let pkids: Vec<u16> = (state.complete(done, &board).into_iter())
            .filter_map(Ack::release)
            .map(|a| a.pkid)
            .collect();
        assert_eq!(pkids, vec![1, 2]);
        let replay = journal_dir.read().unwrap();
        assert_eq!(replay.records, vec![record(1), record(2)]);

        // A whole save: once it is on disk, the journal up to it and the
        // run before's file are deleted.
        let mut p = Pipeline::new(&config.pipelines[0]);
        let s = RawSample {
            t_ns: None,
            seq: Some(0),
            values: vec![0.0; 25],
        };
        p.on_sample("A-1", 3, &s, t0, &mut Vec::new()).unwrap();
        state.hold(ack(3), Some(&record(3)), t0);
        let later = t0 + Duration::from_millis(config.state.save_interval_ms);
        assert_eq!(state.due(later), Due::Whole);
        let dirty = state.dirty([&p].into_iter());
        assert!(state.begin_save(&[&p], &dirty, later, 1).is_empty());
        // Two jobs, on two writers: the held message's append (a whole
        // save holds no acknowledgement) and the save.
        let mut pkids = Vec::new();
        for _ in 0..2 {
            let done = done_rx.blocking_recv().expect("the writers report");
            let acks = state.complete(done, &board).into_iter();
            pkids.extend(acks.filter_map(Ack::release).map(|a| a.pkid));
        }
        assert!(!state.busy());
        assert_eq!(pkids, vec![3]);
        assert!(
            journal_dir.segments().unwrap().is_empty(),
            "{:?}",
            journal_dir.segments()
        );
        assert!(!old.exists());
        // The next message goes to the next generation.
        state.hold(ack(4), Some(&record(4)), later);
        assert!(state.flush_journal().is_empty());
        done_rx.blocking_recv().expect("the writer reports");
        let left = journal_dir.segments().unwrap();
        assert_eq!((left.len(), left[0].generation), (1, 6));
    }

    #[test]
    fn a_staggered_save_deletes_the_journal_only_below_every_unsaved_pipelines_last_save() {
        let dir = tempfile::tempdir().unwrap();
        let one = config(dir.path());
        // Two pipelines: index 0 in slice 0, index 1 in slice 1.
        let text = std::fs::read_to_string(dir.path().join("gsinfer.toml")).unwrap();
        let block = &text[text.find("[[pipeline]]").unwrap()..];
        let text = format!("{text}\n{}", block.replace("persist_A-1", "persist_A-2"));
        std::fs::write(dir.path().join("gsinfer.toml"), text).unwrap();
        let config = Config::load(&dir.path().join("gsinfer.toml")).unwrap();
        assert_eq!((one.pipelines.len(), config.pipelines.len()), (1, 2));
        let repo = ModelRepository::open(&config.repository.path).unwrap();
        let board = StatusBoard::new(StatusConfig::default());
        let store = Persistence::store(&config.state);
        let journal_dir = JournalDir::open(store.as_ref().unwrap().dir()).unwrap();
        let t0 = Instant::now();
        let configs: Vec<&PipelineConfig> = config.pipelines.iter().collect();
        let (mut state, mut done_rx) =
            journaled(&config, store, &journal_dir, None, &configs, &repo, t0);
        let mut ps: Vec<Pipeline> = config.pipelines.iter().map(Pipeline::new).collect();
        let take = |p: &mut Pipeline, i: i64| {
            let s = RawSample {
                t_ns: None,
                seq: None,
                values: vec![0.0; 25],
            };
            p.on_sample("A-1", i, &s, t0, &mut Vec::new()).unwrap();
        };
        let generations = |dir: &JournalDir| -> Vec<u64> {
            dir.segments()
                .unwrap()
                .iter()
                .map(|s| s.generation)
                .collect()
        };
        let mut settle = |state: &mut Persistence| {
            while state.busy() {
                let done = done_rx.blocking_recv().expect("the writers report");
                state.complete(done, &board);
            }
        };
        // Both take a sample, journaled in generation 5.
        take(&mut ps[0], 1);
        take(&mut ps[1], 1);
        state.hold(ack(1), Some(&record(1)), t0);
        assert!(state.flush_journal().is_empty());
        settle(&mut state);
        // Slice 0 saved: pipeline 1 has never been saved, so nothing goes.
        let dirty = state.dirty(ps.iter());
        assert_eq!(dirty, vec![0]);
        state.begin_save(&ps.iter().collect::<Vec<_>>(), &dirty, t0, 1);
        settle(&mut state);
        assert_eq!(generations(&journal_dir), vec![5]);
        // Pipeline 0 goes on (journaled in generation 6), then slice 1 is
        // saved: below 6, where pipeline 0's unsaved samples start.
        take(&mut ps[0], 2);
        state.hold(ack(2), Some(&record(2)), t0);
        assert!(state.flush_journal().is_empty());
        settle(&mut state);
        assert_eq!(generations(&journal_dir), vec![5, 6]);
        let dirty = state.dirty(ps.iter());
        assert_eq!(dirty, vec![1]);
        state.begin_save(&ps.iter().collect::<Vec<_>>(), &dirty, t0, 2);
        settle(&mut state);
        assert_eq!(generations(&journal_dir), vec![6]);
    }
}
