//! Per-channel pipeline state across restarts, so a restart does not make
//! every channel blind for a window or more.
//!
//! Each pipeline's channels ([`ChannelState`]: window ring, sample index,
//! last time stamp and `seq`, smoothing, threshold history, open anomaly)
//! are saved to `<dir>/<model>.state`, one file per pipeline, written
//! atomically as engine plans are ([`write_atomic`]: temporary file, fsync,
//! rename, folder fsync; the service saves a checkpoint's models as one
//! group commit, [`StateStore::save_all`]). The file is:
//!
//! ```text
//! "GSINFST1" | u32 LE header length | header (JSON) | payload (postcard) | CRC-32 (u32 LE)
//! ```
//!
//! The header holds the [`StateKey`] (what must be unchanged for the state
//! to be continued: model name, version and the model file's sha256, the
//! features, window and scoring settings) and when the state was saved;
//! the CRC-32 (IEEE, over everything before it) catches a truncated or
//! corrupt file, which is then never trusted. A file is read once at start:
//! [`StateStore::load`] says whether to continue it, close what it left
//! open (too old), or start fresh, and why.
//!
//! The state is saved only at points where no window of the pipeline is
//! in flight (cut but not yet scored), so restoring it loses and repeats
//! nothing ([`crate::pipeline::Pipeline::windows_in_flight`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::engine::cache::write_atomic;
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
    /// (mosquitto's `max_inflight_messages`, 20 by default).
    pub max_unacked: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            save_interval_ms: 10_000,
            max_age_s: 6 * 3600,
            max_unacked: 16,
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
}

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
}

/// Encodes `channels` under `key`, saved at `saved_at_ns` (ns since epoch).
///
/// # Errors
/// Only if a channel's state cannot be serialised (not expected).
pub fn encode(
    key: &StateKey,
    saved_at_ns: i64,
    channels: &[ChannelState],
) -> Result<Vec<u8>, String> {
    let header = serde_json::to_vec(&Header {
        key: key.clone(),
        saved_at_ns,
        channels: channels.len(),
    })
    .map_err(|e| e.to_string())?;
    let payload = postcard::to_allocvec(channels).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(8 + 4 + header.len() + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A decoded state file.
#[derive(Debug)]
pub struct Saved {
    /// What it was saved for.
    pub key: StateKey,
    /// When, ns since the Unix epoch.
    pub saved_at_ns: i64,
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
    let channels: Vec<ChannelState> =
        postcard::from_bytes(&body[12 + len..]).map_err(|e| format!("payload: {e}"))?;
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
    /// The channels, as they were at the checkpoint.
    pub channels: Vec<ChannelState>,
}

/// The state folder: one file per pipeline.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
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
        })
    }

    /// The file of `model`'s pipeline.
    pub fn path(&self, model: &str) -> PathBuf {
        self.dir.join(format!("{model}.state"))
    }

    /// Saves `pipeline`'s channels under `key` at `now_ns` (ns since epoch).
    ///
    /// # Errors
    /// [`StateError::Io`] naming the file (a full disk says so); the
    /// previous file, if any, is left intact.
    pub fn save(
        &self,
        key: &StateKey,
        pipeline: &Pipeline,
        now_ns: i64,
    ) -> Result<SaveReport, StateError> {
        let path = self.path(&key.model);
        let channels = pipeline.channel_states();
        let bytes = encode(key, now_ns, channels).map_err(|why| StateError::Corrupt {
            path: path.clone(),
            why,
        })?;
        write_atomic(&path, &bytes).map_err(|e| StateError::Io {
            path: path.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(SaveReport {
            bytes: bytes.len(),
            channels: channels.len(),
        })
    }

    /// Saves several pipelines at `now_ns` as one group commit
    /// ([`crate::engine::cache::write_atomic_all`]: one file-system sync and
    /// one folder fsync for all of them); one result per pipeline, in order.
    pub fn save_all(
        &self,
        pipelines: &[(&StateKey, &Pipeline)],
        now_ns: i64,
    ) -> Vec<Result<SaveReport, StateError>> {
        let states: Vec<(&StateKey, &[ChannelState])> = pipelines
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
        let states: Vec<(&StateKey, &[ChannelState])> = snapshots
            .iter()
            .map(|s| (&s.key, s.channels.as_slice()))
            .collect();
        self.save_states(&states, now_ns)
    }

    /// Encodes and writes `states` as one group commit, each file encoded
    /// only when its turn comes (one file's bytes in memory at a time).
    fn save_states(
        &self,
        states: &[(&StateKey, &[ChannelState])],
        now_ns: i64,
    ) -> Vec<Result<SaveReport, StateError>> {
        use std::io::Write;
        let paths: Vec<PathBuf> = states
            .iter()
            .map(|(key, _)| self.path(&key.model))
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        // Per file: what its encoding gave, `None` when it never got that far
        // (its temporary file could not be created), so each result stays
        // with its own file.
        let mut reports: Vec<Option<Result<SaveReport, StateError>>> =
            (0..states.len()).map(|_| None).collect();
        let written = crate::engine::cache::write_atomic_all_with(&self.dir, &refs, |i, file| {
            let (key, channels) = states[i];
            let io_error = |e: io::Error| crate::engine::cache::CacheError::io(&paths[i], e);
            match encode(key, now_ns, channels) {
                Ok(bytes) => {
                    reports[i] = Some(Ok(SaveReport {
                        bytes: bytes.len(),
                        channels: channels.len(),
                    }));
                    file.write_all(&bytes).map_err(io_error)
                }
                Err(why) => {
                    reports[i] = Some(Err(StateError::Corrupt {
                        path: paths[i].clone(),
                        why: why.clone(),
                    }));
                    Err(io_error(io::Error::other(why)))
                }
            }
        });
        reports
            .into_iter()
            .zip(written)
            .zip(&paths)
            .map(|((report, w), path)| match (report, w) {
                (Some(Err(e)), _) => Err(e),
                (Some(Ok(r)), Ok(())) => Ok(r),
                (_, Err(e)) => Err(StateError::Io {
                    path: path.clone(),
                    source: io::Error::other(e.to_string()),
                }),
                // Not produced: a file written without its report.
                (None, Ok(())) => Err(StateError::Io {
                    path: path.clone(),
                    source: io::Error::other("not encoded"),
                }),
            })
            .collect()
    }

    /// Reads the state of the pipeline keyed `key`, at `now_ns`; a state
    /// older than `max_age` is [`Restore::Stale`].
    pub fn load(&self, key: &StateKey, now_ns: i64, max_age: Duration) -> Restore {
        let path = self.path(&key.model);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Restore::Missing,
            Err(source) => return Restore::Unreadable(StateError::Io { path, source }),
        };
        let saved = match decode(&bytes) {
            Ok(s) => s,
            Err(why) => return Restore::Unreadable(StateError::Corrupt { path, why }),
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
            }
        }
    }
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
        let now = Instant::now();
        let mut out = Vec::new();
        for i in from..to {
            for ch in ["a", "b"] {
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
                    let outcome = WindowOutcome::Output {
                        output: vec![0.0],
                        input: w.values.clone(),
                    };
                    p.on_window(&w, outcome, &mut out);
                }
            }
        }
        out
    }

    #[test]
    fn a_restored_pipeline_goes_on_exactly_as_one_that_never_stopped() {
        let mut straight = Pipeline::new(&config());
        let expected = feed(&mut straight, 0, 200);

        // Stopped in the middle of the anomaly (samples 80..84).
        let mut before = Pipeline::new(&config());
        let mut got = feed(&mut before, 0, 82);
        assert_eq!(before.windows_in_flight(), 0);
        let bytes = encode(&key(), 7, before.channel_states()).unwrap();
        let saved = decode(&bytes).unwrap();
        assert_eq!((saved.key, saved.saved_at_ns), (key(), 7));
        let mut after = Pipeline::new(&config());
        assert_eq!(after.restore(saved.channels), 2);
        got.extend(feed(&mut after, 82, 200));
        assert_eq!(
            got, expected,
            "same scores and events, none missing or repeated"
        );
        assert!(expected
            .iter()
            .any(|o| matches!(o.output, ScoredOutput::Event(_))));
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
