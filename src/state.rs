//! Per-channel pipeline state across restarts, so a restart does not make
//! every channel blind for a window or more.
//!
//! Each pipeline's channels ([`ChannelState`]: window ring, sample index,
//! last time stamp and `seq`, smoothing, threshold history, open anomaly)
//! are saved in two files per pipeline that take turns, `<dir>/<model>.state`
//! and `<dir>/<model>.state.b` (slots A and B): each save overwrites, in
//! place, the slot that does *not* hold the newest intact save, and carries
//! a generation one above it, so a save torn by a crash leaves the previous
//! one whole. The service saves a checkpoint's models as one group commit
//! ([`StateStore::save_all`]: every file written, then one `syncfs(2)`).
//! Why not a temporary file renamed over the old one, as engine plans are
//! written: each rename frees an inode and each temporary file allocates
//! one, and at a thousand models per save that inode churn was most of the
//! save's CPU (BENCHMARKS.md, "Channel state: saves in place"). A file is:
//!
//! ```text
//! "GSINFST1" | u32 LE header length | header (JSON) | payload | CRC-32 (u32 LE)
//! ```
//!
//! The payload is the channels in postcard, compressed with LZ4 (block
//! format, decompressed length first; the header says `"compression":
//! "lz4"`); files written before compression carry it raw and no such key,
//! and are read as they are. A channel's state is mostly its window ring,
//! command one-hots and repeated values that LZ4 shrinks several times
//! over, and at QoS 1 every sample has its pipeline's state rewritten.
//!
//! The header holds the [`StateKey`] (what must be unchanged for the state
//! to be continued: model name, version and the model file's sha256, the
//! features, window and scoring settings), when the state was saved and
//! its generation (0 in files written before slots existed: a lone
//! `<model>.state` of an older gsinfer is continued); the CRC-32 (IEEE,
//! over everything before it) catches a truncated, torn or corrupt file,
//! which is then never trusted. The files are read once at start:
//! [`StateStore::load`] takes the intact slot of the highest generation and
//! says whether to continue it, close what it left open (too old), or start
//! fresh, and why.
//!
//! The state is saved only at points where no window of the pipeline is
//! in flight (cut but not yet scored), so restoring it loses and repeats
//! nothing ([`crate::pipeline::Pipeline::windows_in_flight`]).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::pipeline::{ChannelState, Pipeline};
use crate::window::WindowConfig;

/// The file's first 8 bytes; the digit is the format's version.
const MAGIC: &[u8; 8] = b"GSINFST1";
/// Largest header accepted, in bytes (a key is well under 4 KiB).
const MAX_HEADER: usize = 1 << 20;

/// Channel state persistence (`[state]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Save and restore channel state at all.
    pub enabled: bool,
    /// Folder of the state files; default `$STATE_DIRECTORY/state`
    /// (systemd's `StateDirectory=`), else `/var/lib/gsinfer/state`.
    pub dir: Option<PathBuf>,
    /// Milliseconds between saves while running (also on graceful stop).
    pub save_interval_ms: u64,
    /// A state saved longer ago than this (seconds) is not continued: its
    /// open anomalies are closed and the channels start fresh.
    pub max_age_s: u64,
    /// Save as soon as this many QoS 1/2 messages await their
    /// acknowledgement, which is sent only once the state holding their
    /// samples is on disk; keep it under the broker's in-flight limit
    /// (mosquitto's `max_inflight_messages`, 20 by default). With several
    /// pipeline tasks (`ingest.pipeline_tasks`) each saves at its share,
    /// `max_unacked / tasks` (at least 1).
    pub max_unacked: usize,
    /// Keep a journal of the QoS 1/2 telemetry taken since the last whole
    /// save ([`crate::journal`]): a message is then acknowledged once its
    /// samples are appended and synced, and each pipeline's whole state is
    /// saved once per `save_interval_ms` only (a tenth of them at a time);
    /// a crash replays the journal after the last save. Off by default: it writes 3-5 times less, but on a 2-core box
    /// at 1 000 channels it kept fewer windows within their budget at the
    /// default `max_unacked` (BENCHMARKS.md, "The state journal"). Off: the
    /// whole state of every pipeline a held message touched is saved at
    /// every `max_unacked` messages.
    pub journal: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            save_interval_ms: 10_000,
            max_age_s: 6 * 3600,
            max_unacked: 16,
            journal: false,
        }
    }
}

impl StateConfig {
    /// The state folder in effect (see [`Self::dir`]).
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .and_then(|s| {
                    s.to_str()
                        .and_then(|s| s.split(':').next())
                        .map(PathBuf::from)
                })
                .map(|d| d.join("state"))
                .unwrap_or_else(|| PathBuf::from("/var/lib/gsinfer/state"))
        })
    }

    /// Problems with the settings, as `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if self.save_interval_ms == 0 {
            v.push((
                "save_interval_ms",
                "must be at least 1, e.g. 10000 (every 10 s)".to_string(),
            ));
        }
        if self.max_unacked == 0 {
            v.push((
                "max_unacked",
                "must be at least 1, e.g. 16 (under the broker's in-flight limit)".to_string(),
            ));
        }
        v
    }
}

/// What must be unchanged for a pipeline's saved state to be continued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateKey {
    /// Model name.
    pub model: String,
    /// Model version served.
    pub version: u64,
    /// sha256 of the model file, lowercase hex.
    pub model_sha256: String,
    /// Values per sample.
    pub features: usize,
    /// Window length and stride.
    pub window: WindowConfig,
    /// The scoring settings (`[pipeline.scoring]`), as JSON.
    pub scoring: serde_json::Value,
}

impl StateKey {
    /// The key of `pipeline` serving `version` of its model, whose file has
    /// sha256 `model_sha256`.
    pub fn new(pipeline: &PipelineConfig, version: u64, model_sha256: String) -> Self {
        Self {
            model: pipeline.model.clone(),
            version,
            model_sha256,
            features: pipeline.features,
            window: pipeline.window.clone(),
            scoring: serde_json::to_value(&pipeline.scoring).unwrap_or_default(),
        }
    }

    /// What differs from `saved`, for the log line that says why a state
    /// was discarded; empty when the keys are equal.
    pub fn differences(&self, saved: &StateKey) -> Vec<String> {
        let mut d = Vec::new();
        if self.model != saved.model {
            d.push(format!("model {} ≠ {}", saved.model, self.model));
        }
        if self.version != saved.version {
            d.push(format!("version {} → {}", saved.version, self.version));
        }
        if self.model_sha256 != saved.model_sha256 {
            d.push("the model file changed (sha256)".to_string());
        }
        if self.features != saved.features {
            d.push(format!("features {} → {}", saved.features, self.features));
        }
        if self.window != saved.window {
            d.push(format!(
                "window {}/{} → {}/{} (length/stride)",
                saved.window.length, saved.window.stride, self.window.length, self.window.stride
            ));
        }
        if self.scoring != saved.scoring {
            d.push("the scoring settings changed".to_string());
        }
        d
    }
}

/// The header of a state file.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    key: StateKey,
    /// When it was saved, ns since the Unix epoch.
    saved_at_ns: i64,
    /// Channels in the payload.
    channels: usize,
    /// One above the generation of the save it replaces (0: written
    /// before slots existed).
    #[serde(default)]
    generation: u64,
    /// How the payload is compressed: `"lz4"` (LZ4 block format, its
    /// decompressed length first as a little-endian u32), or absent: the
    /// raw postcard payload of files written before compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compression: Option<String>,
}

/// The largest payload a state file holds before compression (2 GiB): a
/// pipeline serving 10 000 channels with one LSTM model is ~0.6 GiB. A
/// larger state is not saved (the error says so), and a file claiming more
/// is refused before anything is allocated.
const MAX_PAYLOAD: usize = 1 << 31;

/// Errors reading or writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file-system operation failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a complete, intact state file.
    #[error("state file {path} is corrupt ({why}); it is ignored and will be replaced")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The state could not be encoded for `path` (nothing was written).
    #[error("state for {path} could not be encoded: {why}")]
    Encode {
        /// The file it was for.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Encodes `channels` under `key`, saved at `saved_at_ns` (ns since epoch),
/// as generation 1 (see [`encode_generation`]).
///
/// # Errors
/// As [`encode_generation`].
pub fn encode(
    key: &StateKey,
    saved_at_ns: i64,
    channels: &[Arc<ChannelState>],
) -> Result<Vec<u8>, String> {
    encode_generation(key, saved_at_ns, 1, channels)
}

/// [`encode`] with the save's `generation` (the slot of the higher one wins
/// at [`StateStore::load`]).
///
/// # Errors
/// If a channel's state cannot be serialised (not expected), or the
/// pipeline's state is over 2 GiB before compression.
pub fn encode_generation(
    key: &StateKey,
    saved_at_ns: i64,
    generation: u64,
    channels: &[Arc<ChannelState>],
) -> Result<Vec<u8>, String> {
    let header = serde_json::to_vec(&Header {
        key: key.clone(),
        saved_at_ns,
        channels: channels.len(),
        generation,
        compression: Some("lz4".into()),
    })
    .map_err(|e| e.to_string())?;
    // LZ4: a channel's window ring is mostly command one-hots and repeated
    // values; an LSTM channel's state shrinks 2.6-4.2× on real telemetry
    // for ~10 µs of CPU (BENCHMARKS.md), and at QoS 1 every sample has its
    // pipeline's state rewritten.
    let raw = postcard::to_allocvec(channels).map_err(|e| e.to_string())?;
    if raw.len() > MAX_PAYLOAD {
        return Err(format!(
            "the state of {} channel(s) is {} bytes, over the {MAX_PAYLOAD} a state file holds; \
             serve the channels from several pipelines",
            channels.len(),
            raw.len()
        ));
    }
    let payload = lz4_flex::compress_prepend_size(&raw);
    Ok(frame(&header, &payload))
}

/// A state file's bytes around `header` and `payload`: magic, header
/// length, header, payload, CRC-32 (see the module docs).
fn frame(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 + header.len() + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A decoded state file.
#[derive(Debug)]
pub struct Saved {
    /// What it was saved for.
    pub key: StateKey,
    /// When, ns since the Unix epoch.
    pub saved_at_ns: i64,
    /// Its generation (0: written before slots existed).
    pub generation: u64,
    /// The channels.
    pub channels: Vec<ChannelState>,
}

/// Decodes a state file's bytes; `Err` says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Saved, String> {
    if bytes.len() < MAGIC.len() + 8 {
        return Err(format!("{} bytes, too short", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a gsinfer state file (or another format version)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch: truncated or damaged".into());
    }
    let len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER || 12 + len > body.len() {
        return Err(format!("header length {len} out of range"));
    }
    let header: Header =
        serde_json::from_slice(&body[12..12 + len]).map_err(|e| format!("header: {e}"))?;
    let payload = &body[12 + len..];
    let raw;
    let payload = match header.compression.as_deref() {
        None => payload,
        Some("lz4") => {
            let size = payload.get(..4).map_or(usize::MAX, |b| {
                u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
            });
            if size > MAX_PAYLOAD {
                return Err(format!(
                    "payload of {size} bytes when decompressed, over {MAX_PAYLOAD}"
                ));
            }
            raw = lz4_flex::decompress_size_prepended(payload)
                .map_err(|e| format!("payload: {e}"))?;
            &raw[..]
        }
        Some(other) => {
            return Err(format!(
                "payload compressed as `{other}`, which this gsinfer cannot read"
            ))
        }
    };
    let channels: Vec<ChannelState> =
        postcard::from_bytes(payload).map_err(|e| format!("payload: {e}"))?;
    if channels.len() != header.channels {
        return Err(format!(
            "{} channels in the payload, {} in the header",
            channels.len(),
            header.channels
        ));
    }
    Ok(Saved {
        key: header.key,
        saved_at_ns: header.saved_at_ns,
        generation: header.generation,
        channels,
    })
}

/// What [`StateStore::load`] found for a pipeline.
#[derive(Debug)]
pub enum Restore {
    /// No state file: the pipeline starts fresh.
    Missing,
    /// A state to continue, saved `age` ago.
    Continue {
        /// The channels.
        channels: Vec<ChannelState>,
        /// How long ago it was saved.
        age: Duration,
        /// The other slot, when it is there but not intact (a save torn by
        /// a crash, or a damaged file): the state continued is then the
        /// save before it, which the operator is told.
        damaged: Option<StateError>,
    },
    /// A state older than `max_age_s`: its open anomalies are to be closed,
    /// then the pipeline starts fresh.
    Stale {
        /// The channels.
        channels: Vec<ChannelState>,
        /// How long ago it was saved.
        age: Duration,
    },
    /// A state saved for another model, version or settings: discarded.
    Mismatch(String),
    /// A file that could not be read or is corrupt: discarded.
    Unreadable(StateError),
}

/// A pipeline's channel state copied at a checkpoint, to be encoded and
/// written off the pipeline task ([`StateStore::save_snapshots`]): copying
/// one shipped model's state (50-110 KB) is ~10 µs, encoding it ~100 µs
/// (BENCHMARKS.md, "Channel state: save cost per channel").
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What it is saved for.
    pub key: StateKey,
    /// The channels, as they were at the checkpoint: shared with the
    /// pipeline, which copies a channel before changing it while this is
    /// held ([`Pipeline::channel_states`]).
    pub channels: Vec<Arc<ChannelState>>,
}

/// One of the two files a pipeline's state takes turns in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `<model>.state` (also the one file of gsinfer before slots).
    A,
    /// `<model>.state.b`.
    B,
}

impl Slot {
    fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// The state folder: two files per pipeline (see the module docs).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    /// Per model: the slot holding its newest intact save and that save's
    /// generation, as last read or written; the next save goes to the
    /// other slot, one generation up. Shared by the clones (the state
    /// writer's and the pipeline task's), which never save at once.
    newest: Arc<Mutex<HashMap<String, (Slot, u64)>>>,
}

/// What one save wrote.
#[derive(Debug, Clone, Copy)]
pub struct SaveReport {
    /// Bytes written.
    pub bytes: usize,
    /// Channels saved.
    pub channels: usize,
}

impl StateStore {
    /// The store in `dir`, created if missing.
    ///
    /// # Errors
    /// [`StateError::Io`] when the folder cannot be created.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            newest: Arc::default(),
        })
    }

    /// The first file of `model`'s pipeline (slot A, `<model>.state`; the
    /// second is the same with `.b` appended).
    pub fn path(&self, model: &str) -> PathBuf {
        self.slot_path(model, Slot::A)
    }

    fn slot_path(&self, model: &str, slot: Slot) -> PathBuf {
        match slot {
            Slot::A => self.dir.join(format!("{model}.state")),
            Slot::B => self.dir.join(format!("{model}.state.b")),
        }
    }

    /// The map of newest saves (see [`StateStore::newest`]).
    fn newest(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Slot, u64)>> {
        self.newest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads both slots of `model`: the intact save of the highest
    /// generation, if any, and the error of a slot that is there but not
    /// intact, if any; remembers the newest for the next save.
    fn read_slots(&self, model: &str) -> (Option<Saved>, Option<StateError>) {
        let (mut newest, mut damaged): (Option<(Slot, Saved)>, _) = (None, None);
        for slot in [Slot::A, Slot::B] {
            let path = self.slot_path(model, slot);
            match fs::read(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => damaged = Some(StateError::Io { path, source }),
                Ok(bytes) => match decode(&bytes) {
                    Ok(saved)
                        if newest
                            .as_ref()
                            .is_none_or(|(_, n)| saved.generation > n.generation) =>
                    {
                        newest = Some((slot, saved));
                    }
                    Ok(_) => {}
                    Err(why) => damaged = Some(StateError::Corrupt { path, why }),
                },
            }
        }
        match &newest {
            Some((slot, saved)) => self
                .newest()
                .insert(model.to_string(), (*slot, saved.generation)),
            None => self.newest().remove(model),
        };
        (newest.map(|(_, saved)| saved), damaged)
    }

    /// Where the next save of `model` goes and its generation: the slot
    /// that does not hold the newest intact save, one generation above it.
    fn next_slot(&self, model: &str) -> (Slot, u64) {
        let known = self.newest().get(model).copied();
        // Not read at start (a store used only to save): read the files now.
        let newest = known.or_else(|| {
            self.read_slots(model);
            self.newest().get(model).copied()
        });
        match newest {
            Some((slot, generation)) => (slot.other(), generation + 1),
            None => (Slot::A, 1),
        }
    }

    /// Saves `pipeline`'s channels under `key` at `now_ns` (ns since epoch).
    ///
    /// # Errors
    /// [`StateError::Io`] naming the file (a full disk says so); the
    /// previous save is left intact in the other slot.
    pub fn save(
        &self,
        key: &StateKey,
        pipeline: &Pipeline,
        now_ns: i64,
    ) -> Result<SaveReport, StateError> {
        self.save_states(&[(key, pipeline.channel_states())], now_ns)
            .pop()
            .expect("one result per pipeline")
    }

    /// Saves several pipelines at `now_ns` as one group commit (every file
    /// written in place, then one file-system sync for all of them); one
    /// result per pipeline, in order.
    pub fn save_all(
        &self,
        pipelines: &[(&StateKey, &Pipeline)],
        now_ns: i64,
    ) -> Vec<Result<SaveReport, StateError>> {
        let states: Vec<(&StateKey, &[Arc<ChannelState>])> = pipelines
            .iter()
            .map(|(key, p)| (*key, p.channel_states()))
            .collect();
        self.save_states(&states, now_ns)
    }

    /// [`StateStore::save_all`] of [`Snapshot`]s taken earlier (on a thread
    /// of its own, while the pipelines go on).
    pub fn save_snapshots(
        &self,
        snapshots: &[Snapshot],
        now_ns: i64,
    ) -> Vec<Result<SaveReport, StateError>> {
        let states: Vec<(&StateKey, &[Arc<ChannelState>])> = snapshots
            .iter()
            .map(|s| (&s.key, s.channels.as_slice()))
            .collect();
        self.save_states(&states, now_ns)
    }

    /// Encodes and writes `states` as one group commit, each file encoded
    /// only when its turn comes (one file's bytes in memory at a time) and
    /// closed once written: every file overwritten in place (its other
    /// slot untouched), then one `syncfs(2)`, then, only if a file was
    /// created, one fsync of the folder. A save counts once the sync
    /// returned; until then the other slot stays the newest intact one.
    fn save_states(
        &self,
        states: &[(&StateKey, &[Arc<ChannelState>])],
        now_ns: i64,
    ) -> Vec<Result<SaveReport, StateError>> {
        let mut written: Vec<Result<(SaveReport, Slot, u64), StateError>> =
            Vec::with_capacity(states.len());
        let mut created = false;
        for (key, channels) in states {
            let (slot, generation) = self.next_slot(&key.model);
            let path = self.slot_path(&key.model, slot);
            let io_error = |source: io::Error| StateError::Io {
                path: path.clone(),
                source,
            };
            let bytes = match encode_generation(key, now_ns, generation, channels) {
                Ok(b) => b,
                Err(why) => {
                    written.push(Err(StateError::Encode {
                        path: path.clone(),
                        why,
                    }));
                    continue;
                }
            };
            let result = overwrite(&path, &bytes).map_err(io_error).map(|new| {
                created |= new;
                let report = SaveReport {
                    bytes: bytes.len(),
                    channels: channels.len(),
                };
                (report, slot, generation)
            });
            written.push(result);
        }
        if written.iter().any(Result::is_ok) {
            if let Err(e) = sync_folder(&self.dir, created) {
                let failed = |r: &mut Result<_, StateError>| {
                    if r.is_ok() {
                        *r = Err(StateError::Io {
                            path: self.dir.clone(),
                            source: io::Error::new(e.kind(), e.to_string()),
                        });
                    }
                };
                written.iter_mut().for_each(failed);
            }
        }
        let mut map = self.newest();
        written
            .into_iter()
            .zip(states)
            .map(|(r, (key, _))| {
                r.map(|(report, slot, generation)| {
                    map.insert(key.model.clone(), (slot, generation));
                    report
                })
            })
            .collect()
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the state of the pipeline keyed `key`, at `now_ns`: the intact
    /// slot of the highest generation; a state older than `max_age` is
    /// [`Restore::Stale`].
    pub fn load(&self, key: &StateKey, now_ns: i64, max_age: Duration) -> Restore {
        let (newest, damaged) = self.read_slots(&key.model);
        let Some(saved) = newest else {
            return damaged.map_or(Restore::Missing, Restore::Unreadable);
        };
        let differences = key.differences(&saved.key);
        if !differences.is_empty() {
            return Restore::Mismatch(differences.join(", "));
        }
        let age = Duration::from_nanos(now_ns.saturating_sub(saved.saved_at_ns).max(0) as u64);
        if age > max_age {
            Restore::Stale {
                channels: saved.channels,
                age,
            }
        } else {
            Restore::Continue {
                channels: saved.channels,
                age,
                damaged,
            }
        }
    }
}

/// Writes `bytes` over the file at `path` from its start, in place (created
/// if missing, cut to `bytes.len()`), and closes it; returns whether it was
/// created. Not durable until the folder's file system is synced.
fn overwrite(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    use std::io::Write;
    let existed = path.exists();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    Ok(!existed)
}

/// Syncs the file system holding `dir` (`syncfs(2)`: every file written
/// there), then, when a file was `created`, `dir` itself (its new entry).
fn sync_folder(dir: &Path, created: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir)?;
    // SAFETY: syncfs on a file descriptor owned for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if created {
        d.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchConfig;
    use crate::ingest::decode::RawSample;
    use crate::pipeline::ChannelOutput;
    use crate::score::{ScoredOutput, ScoringConfig, ScoringKind, ThresholdConfig, WindowOutcome};
    use std::time::Instant;

    fn config() -> PipelineConfig {
        with_threshold(ThresholdConfig::Ndt(crate::score::NdtConfig {
            batch_size: 10,
            window_batches: 10,
            error_buffer: 2,
            ..Default::default()
        }))
    }

    fn with_threshold(threshold: ThresholdConfig) -> PipelineConfig {
        PipelineConfig {
            model: "m".into(),
            engine: Default::default(),
            topics: vec!["telemetry/+".into()],
            channels: vec![],
            format: Default::default(),
            features: 2,
            window: WindowConfig {
                length: 4,
                stride: 1,
            },
            batch: BatchConfig::default(),
            scoring: ScoringConfig {
                kind: ScoringKind::Forecast,
                target_feature: 0,
                smoothing_span: 3.0,
                smoothing_adjust: true,
                threshold,
                actuals_capacity: 64,
                event_hold: 1,
                reconstruction_features: vec![],
            },
        }
    }

    #[test]
    fn a_file_that_cannot_even_be_created_gets_its_own_error() {
        // Every result stays with its file: with the folder gone, no
        // temporary file can be created, and each pipeline is told so.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        std::fs::remove_dir(dir.path().join("state")).unwrap();
        let (a, b) = (Pipeline::new(&config()), Pipeline::new(&config()));
        let k = key();
        let results = store.save_all(&[(&k, &a), (&k, &b)], 1);
        assert_eq!(results.len(), 2);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(StateError::Io { .. }))),
            "{results:?}"
        );
    }

    fn key() -> StateKey {
        StateKey::new(&config(), 1, "ab".repeat(32))
    }

    /// Feeds samples `from..to` of channels a and b, scoring every window
    /// with a forecast of 0 (so the error is the value); returns the outputs.
    fn feed(p: &mut Pipeline, from: u64, to: u64) -> Vec<ChannelOutput> {
        feed_channels(p, from, to, &["a", "b"])
    }

    /// [`feed`] of `channels` only.
    fn feed_channels(
        p: &mut Pipeline,
        from: u64,
        to: u64,
        channels: &[&str],
    ) -> Vec<ChannelOutput> {
        let now = Instant::now();
        let mut out = Vec::new();
        for i in from..to {
            for &ch in channels {
                let v = if (80..84).contains(&i) {
                    50.0
                } else {
                    (i % 7) as f32 * 0.1
                };
                let s = RawSample {
                    t_ns: None,
                    seq: Some(i),
                    values: vec![v, 1.0],
                };
                if let Some(w) = p.on_sample(ch, i as i64 * 1000, &s, now, &mut out).unwrap() {
                    // A three-step forecast: a stride up to 3 is covered.
                    let outcome = WindowOutcome::Output {
                        output: vec![0.0; 3],
                        input: w.values.clone(),
                    };
                    p.on_window(&w, outcome, &mut out);
                }
            }
        }
        out
    }

    #[test]
    fn a_snapshot_keeps_the_state_it_was_taken_at_while_the_pipeline_goes_on() {
        let mut p = Pipeline::new(&config());
        feed(&mut p, 0, 82);
        let snapshot = p.channel_states().to_vec();
        let at_snapshot = encode(&key(), 7, &snapshot).unwrap();
        // Taking it copied no channel: the snapshot shares them.
        assert!(snapshot
            .iter()
            .zip(p.channel_states())
            .all(|(s, c)| Arc::ptr_eq(s, c)));

        // Channel a goes on (through the anomaly), b does not.
        feed_channels(&mut p, 82, 150, &["a"]);
        let (now, mut out) = (Instant::now(), Vec::new());
        // A refused sample of b (time going backwards) copies nothing either.
        let old = RawSample {
            t_ns: None,
            seq: None,
            values: vec![0.0, 1.0],
        };
        assert!(p.on_sample("b", 0, &old, now, &mut out).is_err());

        // The snapshot still encodes the state it was taken at, byte for byte.
        assert_eq!(encode(&key(), 7, &snapshot).unwrap(), at_snapshot);
        let states = p.channel_states();
        assert_eq!((states[0].samples(), snapshot[0].samples()), (150, 82));
        // Only the channel that changed was copied; b is still shared.
        assert!(!Arc::ptr_eq(&snapshot[0], &states[0]));
        assert!(Arc::ptr_eq(&snapshot[1], &states[1]));
        // Once the snapshot is gone, changes copy nothing.
        drop(snapshot);
        let before = Arc::as_ptr(&p.channel_states()[0]);
        feed_channels(&mut p, 150, 151, &["a"]);
        assert_eq!(Arc::as_ptr(&p.channel_states()[0]), before);
    }

    #[test]
    fn a_restored_pipeline_goes_on_exactly_as_one_that_never_stopped() {
        // Stride 3: forecasts of samples not yet arrived are part of the state.
        for stride in [1, 3] {
            let mut config = config();
            config.window.stride = stride;
            let key = StateKey::new(&config, 1, "ab".repeat(32));
            let mut straight = Pipeline::new(&config);
            let expected = feed(&mut straight, 0, 200);

            // Stopped in the middle of the anomaly (samples 80..84).
            let mut before = Pipeline::new(&config);
            let mut got = feed(&mut before, 0, 82);
            assert_eq!(before.windows_in_flight(), 0);
            let bytes = encode(&key, 7, before.channel_states()).unwrap();
            let saved = decode(&bytes).unwrap();
            assert_eq!((&saved.key, saved.saved_at_ns), (&key, 7));
            let mut after = Pipeline::new(&config);
            assert_eq!(after.restore(saved.channels), 2);
            got.extend(feed(&mut after, 82, 200));
            assert_eq!(
                got, expected,
                "stride {stride}: same scores and events, none missing or repeated"
            );
            assert!(expected
                .iter()
                .any(|o| matches!(o.output, ScoredOutput::Event(_))));
            let scored = expected
                .iter()
                .filter(|o| matches!(o.output, ScoredOutput::Score(_)))
                .count();
            assert_eq!(scored, 2 * 190, "stride {stride}: every sample scored");
        }
    }

    #[test]
    fn a_file_written_before_compression_is_read_as_it_is() {
        let mut p = Pipeline::new(&config());
        feed(&mut p, 0, 120);
        // The format before compression: the same header without a
        // `compression` key, the raw postcard payload.
        let header = serde_json::to_vec(&serde_json::json!({
            "key": key(), "saved_at_ns": 7, "channels": 2, "generation": 3,
        }))
        .unwrap();
        let old = frame(&header, &postcard::to_allocvec(p.channel_states()).unwrap());
        let saved = decode(&old).unwrap();
        assert_eq!((saved.generation, saved.channels.len()), (3, 2));
        let now = encode_generation(&key(), 7, 3, p.channel_states()).unwrap();
        let again = decode(&now).unwrap();
        assert_eq!(
            postcard::to_allocvec(&again.channels).unwrap(),
            postcard::to_allocvec(&saved.channels).unwrap(),
            "the same channels either way"
        );
        assert!(
            now.len() < old.len(),
            "compressed: {} < {}",
            now.len(),
            old.len()
        );
    }

    #[test]
    fn an_unknown_compression_or_an_oversized_payload_is_refused() {
        let p = Pipeline::new(&config());
        let bytes = encode(&key(), 7, p.channel_states()).unwrap();
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[12..12 + len].to_vec()).unwrap();
        let payload = &bytes[12 + len..bytes.len() - 4];
        let zstd = frame(header.replace("\"lz4\"", "\"zstd\"").as_bytes(), payload);
        assert!(decode(&zstd).unwrap_err().contains("`zstd`"));
        let mut huge = payload.to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = frame(header.as_bytes(), &huge);
        assert!(decode(&huge).unwrap_err().contains("over"));
    }

    #[test]
    fn a_damaged_or_truncated_file_is_never_trusted() {
        let mut p = Pipeline::new(&config());
        feed(&mut p, 0, 10);
        let bytes = encode(&key(), 7, p.channel_states()).unwrap();
        for cut in [0, 5, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        for at in [0, 9, 20, bytes.len() / 2, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {at}");
        }
    }

    #[test]
    fn load_says_continue_stale_mismatch_missing_or_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let hour = Duration::from_secs(3600);
        assert!(matches!(store.load(&key(), 0, hour), Restore::Missing));
        let mut p = Pipeline::new(&config());
        feed(&mut p, 0, 10);
        let report = store.save(&key(), &p, 1_000).unwrap();
        assert_eq!(report.channels, 2);
        assert!(matches!(
            store.load(&key(), 1_000 + 60_000_000_000, hour),
            Restore::Continue { ref channels, .. } if channels.len() == 2
        ));
        assert!(matches!(
            store.load(&key(), 1_000 + 2 * 3_600_000_000_000, hour),
            Restore::Stale { .. }
        ));
        let mut changed = key();
        changed.version = 2;
        changed.window.length = 8;
        match store.load(&changed, 1_000, hour) {
            Restore::Mismatch(why) => {
                assert_eq!(why, "version 1 → 2, window 4/1 → 8/1 (length/stride)")
            }
            other => panic!("{other:?}"),
        }
        fs::write(store.path("m"), b"GSINFST1 not really").unwrap();
        assert!(matches!(
            store.load(&key(), 1_000, hour),
            Restore::Unreadable(StateError::Corrupt { .. })
        ));
    }

    /// The generation of the save in the file at `path`.
    fn generation(path: &Path) -> u64 {
        decode(&fs::read(path).unwrap()).unwrap().generation
    }

    /// Samples taken by the channels of the pipeline `load` continues.
    fn continued(store: &StateStore) -> (u64, bool) {
        match store.load(&key(), 1_000, Duration::from_secs(3600)) {
            Restore::Continue {
                channels, damaged, ..
            } => (channels[0].samples(), damaged.is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn saves_take_turns_in_two_slots_and_a_torn_one_leaves_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let (a, b) = (store.path("m"), store.dir.join("m.state.b"));
        let mut p = Pipeline::new(&config());
        feed(&mut p, 0, 10);
        store.save(&key(), &p, 1_000).unwrap();
        assert!(a.is_file() && !b.exists(), "the first save goes to slot A");
        feed(&mut p, 10, 20);
        store.save(&key(), &p, 1_000).unwrap();
        assert!(b.is_file(), "the second to slot B");
        assert_eq!(continued(&store), (20, false), "the newest wins");
        feed(&mut p, 20, 30);
        store.save(&key(), &p, 1_000).unwrap();
        assert_eq!(generation(&a), 3);
        assert_eq!(continued(&store), (30, false));

        // A crash in the middle of the next save (into B): B is torn, A whole.
        let bytes = fs::read(&b).unwrap();
        fs::write(&b, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(continued(&store), (30, true), "the save before, and why");
        // The next save goes over the torn slot, not over the good one.
        feed(&mut p, 30, 40);
        store.save(&key(), &p, 1_000).unwrap();
        assert_eq!(generation(&b), 4);
        assert_eq!(continued(&store), (40, false));

        // Both damaged: nothing is trusted.
        for f in [&a, &b] {
            let mut bytes = fs::read(f).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            fs::write(f, &bytes).unwrap();
        }
        assert!(matches!(
            store.load(&key(), 1_000, Duration::from_secs(3600)),
            Restore::Unreadable(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_restart_goes_on_with_the_generations_and_continues_a_file_from_before_slots() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("state");
        let mut p = Pipeline::new(&config());
        feed(&mut p, 0, 10);
        // A lone <model>.state as gsinfer wrote it before slots: no generation.
        let mut old = encode(&key(), 1_000, p.channel_states()).unwrap();
        let len = u32::from_le_bytes(old[8..12].try_into().unwrap()) as usize;
        let header = String::from_utf8(old[12..12 + len].to_vec()).unwrap();
        let without = header.replace(",\"generation\":1", "");
        assert_ne!(header, without);
        let mut bytes = b"GSINFST1".to_vec();
        bytes.extend_from_slice(&(without.len() as u32).to_le_bytes());
        bytes.extend_from_slice(without.as_bytes());
        bytes.extend_from_slice(&old[12 + len..old.len() - 4]);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        old = bytes;
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("m.state"), &old).unwrap();

        let store = StateStore::open(&folder).unwrap();
        assert_eq!(continued(&store), (10, false), "continued as generation 0");
        feed(&mut p, 10, 20);
        store.save(&key(), &p, 1_000).unwrap();
        assert!(folder.join("m.state.b").is_file(), "the old file is kept");
        // A new store (the next start) reads the generations from disk.
        let again = StateStore::open(&folder).unwrap();
        assert_eq!(continued(&again), (20, false));
        feed(&mut p, 20, 30);
        again.save(&key(), &p, 1_000).unwrap();
        assert_eq!(generation(&folder.join("m.state")), 2);
        // A store that saves without loading first still writes over the older slot.
        let blind = StateStore::open(&folder).unwrap();
        feed(&mut p, 30, 40);
        blind.save(&key(), &p, 1_000).unwrap();
        assert_eq!(generation(&folder.join("m.state.b")), 3);
        assert_eq!(continued(&blind), (40, false));
    }

    #[test]
    fn closing_a_stale_state_ends_its_open_anomaly() {
        let mut p = Pipeline::new(&with_threshold(ThresholdConfig::Static { value: 10.0 }));
        let out = feed(&mut p, 0, 82);
        assert!(out
            .iter()
            .any(|o| matches!(&o.output, ScoredOutput::Event(e) if e.end.is_none())));
        let mut closed = Vec::new();
        p.close_open_anomalies("stale_state", &mut closed);
        assert_eq!(closed.len(), 2, "one anomaly_end per channel");
        assert!(closed
            .iter()
            .all(|o| matches!(&o.output, ScoredOutput::Event(e) if e.end.is_some() && e.closed == Some("stale_state"))));
        let mut again = Vec::new();
        p.close_open_anomalies("stale_state", &mut again);
        assert!(again.is_empty());
    }
}
