//! The state journal (`state.journal = true`): the QoS 1/2 telemetry taken
//! since the last whole save of the channel state, appended to disk so that
//! a message can be acknowledged without rewriting the state of every
//! pipeline it touched.
//!
//! Why: a message may be acknowledged only once what it brought survives a
//! crash (RELIABILITY.md). Without a journal that meant saving the state of
//! every pipeline that took a sample of it, at every `state.max_unacked`
//! messages: at a thousand channels each save rewrote ~1 000 whole states
//! (window rings, NDT histories) and first waited for their windows in
//! flight, so every window of the next few milliseconds came late
//! (BENCHMARKS.md, "Snapshots that share the channels"). With the journal,
//! an acknowledgement waits for one append and one `fdatasync(2)` of the
//! samples themselves (about 100 bytes each); the whole state is saved every
//! `state.save_interval_ms`, and a crash is recovered by restoring that save
//! and replaying the journal after it through the same router and engines
//! ([`crate::service`]), so the replayed windows are scored as they were.
//!
//! Layout: `<state dir>/journal/<generation>-<task>.log`, one file per
//! pipeline task and generation. A task starts a new generation at each
//! whole save; once that save is on disk the files of its older
//! generations are deleted. A new run starts above every generation on
//! disk, and the previous run's files are deleted once every task has made
//! its first whole save. A file is a run of frames:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 (IEEE) of the payload | payload (postcard Record)
//! ```
//!
//! A crash can tear the last frame of the file being appended to (its
//! messages were not acknowledged, so the broker sends them again): reading
//! stops at the first frame that is short or fails its CRC, and says so.
//!
//! Replaying a sample a restored state already holds is harmless: each
//! channel refuses a sample whose time stamp (or `seq`) is not after its
//! last one, and the replay counts those as already saved instead of as
//! rejects.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest frame payload read back, in bytes (a message's samples are far
/// smaller; anything larger is a corrupt length).
const MAX_FRAME: usize = 64 << 20;

/// One QoS 1/2 message's samples as a pipeline task took them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the message was received, ns since the Unix epoch: the time
    /// stamp of its samples that carry none.
    pub received_ns: i64,
    /// Its decodings: which models' pipelines took which samples.
    pub parts: Vec<Part>,
}

/// Samples decoded once for the pipelines of several models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The models whose pipelines took them (names: pipeline indices change
    /// with the configuration and the number of tasks).
    pub models: Vec<String>,
    /// The samples, in input order.
    pub samples: Vec<Sample>,
}

/// One decoded sample of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The channel.
    pub channel: String,
    /// Its time stamp, ns since the Unix epoch, if the payload gave one.
    pub t_ns: Option<i64>,
    /// The publisher's sequence number, if any.
    pub seq: Option<u64>,
    /// Feature values.
    pub values: Vec<f32>,
}

/// Appends `record` to `out` as one frame (see the module docs).
///
/// # Panics
/// Never for a record of this module's types (postcard encoding to a
/// vector cannot fail for them).
pub fn frame(record: &Record, out: &mut Vec<u8>) {
    let payload = postcard::to_allocvec(record).expect("a record encodes");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The records of a file's bytes, in order, and why reading stopped early
/// (a torn or corrupt frame, with its byte offset), if it did.
pub fn read_frames(bytes: &[u8]) -> (Vec<Record>, Option<String>) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 8) else {
            return (
                records,
                Some(format!("a frame header cut short at byte {at}")),
            );
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let payload = match bytes.get(at + 8..at + 8 + len) {
            Some(p) if len <= MAX_FRAME => p,
            _ => return (records, Some(format!("a frame cut short at byte {at}"))),
        };
        if crc32fast::hash(payload) != crc {
            return (
                records,
                Some(format!("a frame failing its CRC at byte {at}")),
            );
        }
        match postcard::from_bytes(payload) {
            Ok(r) => records.push(r),
            Err(e) => {
                return (
                    records,
                    Some(format!("an unreadable frame at byte {at}: {e}")),
                )
            }
        }
        at += 8 + len;
    }
    (records, None)
}

/// One journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its generation.
    pub generation: u64,
    /// The pipeline task that wrote it.
    pub task: usize,
    /// Where it is.
    pub path: PathBuf,
}

/// What the journal on disk holds at start.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every record, oldest generation first (a channel's samples were
    /// written by one task per run, in order).
    pub records: Vec<Record>,
    /// The files read (deleted once every task has saved the state whole).
    pub segments: Vec<PathBuf>,
    /// The first generation of this run: above every one on disk.
    pub next_generation: u64,
    /// Files that were torn or unreadable, and why (the records before the
    /// damage are kept).
    pub damaged: Vec<String>,
}

/// The journal folder, `<state dir>/journal`.
#[derive(Debug, Clone)]
pub struct JournalDir {
    dir: PathBuf,
}

impl JournalDir {
    /// The journal folder of the state folder `state_dir`, created if
    /// missing.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("journal");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The journal folder of the state folder `state_dir` if there is one
    /// (nothing is created).
    pub fn existing(state_dir: &Path) -> Option<Self> {
        let dir = state_dir.join("journal");
        dir.is_dir().then_some(Self { dir })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file of `task`'s generation `generation`.
    pub fn segment_path(&self, generation: u64, task: usize) -> PathBuf {
        self.dir.join(format!("{generation:020}-{task}.log"))
    }

    /// The journal files, oldest generation first (then by task); other
    /// files in the folder are left alone.
    ///
    /// # Errors
    /// When the folder cannot be listed.
    pub fn segments(&self) -> io::Result<Vec<Segment>> {
        let mut segments = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((generation, task)) = name
                .strip_suffix(".log")
                .and_then(|stem| stem.split_once('-'))
            else {
                continue;
            };
            if let (Ok(generation), Ok(task)) = (generation.parse(), task.parse()) {
                segments.push(Segment {
                    generation,
                    task,
                    path,
                });
            }
        }
        segments.sort_by_key(|s| (s.generation, s.task));
        Ok(segments)
    }

    /// Reads every journal file (see [`Replay`]).
    ///
    /// # Errors
    /// When the folder cannot be listed; a file that cannot be read is
    /// reported in [`Replay::damaged`] instead.
    pub fn read(&self) -> io::Result<Replay> {
        let mut replay = Replay::default();
        for segment in self.segments()? {
            replay.next_generation = replay.next_generation.max(segment.generation + 1);
            match fs::read(&segment.path) {
                Ok(bytes) => {
                    let (records, damage) = read_frames(&bytes);
                    replay.records.extend(records);
                    if let Some(why) = damage {
                        replay
                            .damaged
                            .push(format!("{}: {why}", segment.path.display()));
                    }
                }
                Err(e) => replay
                    .damaged
                    .push(format!("{}: {e}", segment.path.display())),
            }
            replay.segments.push(segment.path);
        }
        Ok(replay)
    }

    /// Deletes `task`'s files of generations below `below`.
    ///
    /// # Errors
    /// The first file that could not be listed or deleted.
    pub fn delete_below(&self, task: usize, below: u64) -> io::Result<()> {
        for s in self.segments()? {
            if s.task == task && s.generation < below {
                remove(&s.path)?;
            }
        }
        Ok(())
    }
}

/// Deletes the file at `path`; one already gone is not an error.
///
/// # Errors
/// When it exists and cannot be deleted.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The journal file a task is appending to, kept open between appends.
#[derive(Debug, Default)]
pub struct Appender {
    open: Option<(PathBuf, fs::File)>,
}

impl Appender {
    /// Appends `bytes` (whole frames) to the file at `path` and syncs its
    /// data (`fdatasync(2)`); a new file's folder entry is synced too.
    ///
    /// # Errors
    /// When the file cannot be created, written or synced; the next append
    /// opens it again.
    pub fn append(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if self.open.as_ref().is_none_or(|(p, _)| p != path) {
            self.open = None;
            let created = !path.exists();
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            if created {
                if let Some(dir) = path.parent() {
                    fs::File::open(dir)?.sync_all()?;
                }
            }
            self.open = Some((path.to_path_buf(), file));
        }
        let (_, file) = self.open.as_mut().expect("opened above");
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        if written.is_err() {
            self.open = None;
        }
        written
    }

    /// Closes the file if it is `path` (before it is deleted).
    pub fn close(&mut self, path: &Path) {
        if self.open.as_ref().is_some_and(|(p, _)| p == path) {
            self.open = None;
        }
    }

    /// Closes the file, whichever it is.
    pub fn close_any(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64) -> Record {
        Record {
            received_ns: 1_000 + i,
            parts: vec![Part {
                models: vec!["lstm_A-1".into(), "vae_A-1".into()],
                samples: vec![Sample {
                    channel: "A-1".into(),
                    t_ns: (i % 2 == 0).then_some(i * 60),
                    seq: Some(i as u64),
                    values: vec![i as f32, -0.5, 0.25],
                }],
            }],
        }
    }

    #[test]
    fn frames_read_back_in_order() {
        let mut bytes = Vec::new();
        for i in 0..5 {
            frame(&record(i), &mut bytes);
        }
        let (records, damage) = read_frames(&bytes);
        assert_eq!(damage, None);
        assert_eq!(records, (0..5).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_or_corrupt_frame_ends_the_file_and_keeps_what_came_before() {
        let mut bytes = Vec::new();
        for i in 0..3 {
            frame(&record(i), &mut bytes);
        }
        let whole = bytes.len();
        frame(&record(3), &mut bytes);
        // Torn anywhere inside the last frame: three records, and why.
        for cut in [whole + 3, whole + 8, bytes.len() - 1] {
            let (records, damage) = read_frames(&bytes[..cut]);
            assert_eq!(records.len(), 3, "cut at {cut}");
            assert!(damage.unwrap().contains(&format!("byte {whole}")));
        }
        // A flipped bit in the last payload fails its CRC.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let (records, damage) = read_frames(&flipped);
        assert_eq!(records.len(), 3);
        assert!(damage.unwrap().contains("CRC"));
        // A length beyond the file is cut short, not read past.
        let mut long = bytes[..whole].to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        long.extend_from_slice(&[0; 4]);
        assert_eq!(read_frames(&long).0.len(), 3);
    }

    #[test]
    fn files_are_read_oldest_generation_first_and_deleted_per_task() {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let mut appender = Appender::default();
        // Written out of order: generation 7 of task 1, then 3 of task 0 and 1.
        for (generation, task, i) in [(7, 1, 4), (3, 0, 0), (3, 1, 1), (7, 0, 3)] {
            let mut bytes = Vec::new();
            frame(&record(i), &mut bytes);
            appender
                .append(&journal.segment_path(generation, task), &bytes)
                .unwrap();
        }
        std::fs::write(journal.path().join("notes.txt"), "not a segment").unwrap();
        let replay = journal.read().unwrap();
        let order: Vec<i64> = replay
            .records
            .iter()
            .map(|r| r.received_ns - 1_000)
            .collect();
        assert_eq!(order, vec![0, 1, 3, 4]);
        assert_eq!(replay.next_generation, 8);
        assert_eq!(replay.segments.len(), 4);
        assert!(replay.damaged.is_empty());
        journal.delete_below(0, 7).unwrap();
        let left: Vec<(u64, usize)> = (journal.segments().unwrap().iter())
            .map(|s| (s.generation, s.task))
            .collect();
        assert_eq!(left, vec![(3, 1), (7, 0), (7, 1)]);
    }

    #[test]
    fn appends_accumulate_and_an_empty_folder_starts_at_generation_zero() {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalDir::open(dir.path()).unwrap();
        let empty = journal.read().unwrap();
        assert_eq!((empty.records.len(), empty.next_generation), (0, 0));
        let path = journal.segment_path(0, 0);
        let mut appender = Appender::default();
        for i in 0..3 {
            let mut bytes = Vec::new();
            frame(&record(i), &mut bytes);
            appender.append(&path, &bytes).unwrap();
        }
        appender.close(&path);
        // A torn tail from a crash: the appended records before it are read.
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        let replay = journal.read().unwrap();
        assert_eq!(replay.records.len(), 3);
        assert_eq!(replay.damaged.len(), 1, "{:?}", replay.damaged);
    }
}
