//! The engine cache: TensorRT plans built on the box, in the state
//! directory, each beside a manifest that says exactly what it was built
//! for.
//!
//! A serialized TensorRT engine (a *plan*) only runs on the TensorRT
//! version, GPU model and compute capability it was built with, and only
//! answers for the ONNX file, optimisation profiles and precision it was
//! built from. Triton users meet the failure as "engine plan file is not
//! compatible" or "generated on an incompatible device"; gsinfer avoids it
//! by never deserializing a plan whose [`EngineKey`] differs from the one
//! the running box would build, and by checking the plan's sha256 so that a
//! truncated or corrupted file is never handed to TensorRT.
//!
//! Layout under the engine directory (`/var/lib/gsinfer/engines` under
//! systemd):
//!
//! ```text
//! <model>/<version>/model.plan      the plan
//! <model>/<version>/manifest.json   its key, sha256, size, build time
//! timing/<tensorrt>-sm<cc>-<gpu>.cache   the builder's timing cache
//! ```
//!
//! Writes are atomic: a temporary file in the same folder, fsynced,
//! renamed over the target, and the folder fsynced, so a power cut or a
//! SIGKILL during a rebuild leaves either the old pair or the new one. The
//! manifest is written after the plan, and a plan is only used when the
//! manifest's sha256 matches it, so a plan without its manifest is never
//! loaded. Leftover temporary files are removed by [`EngineCache::sweep`].
//!
//! Nothing here needs a GPU or TensorRT: this module is compiled and
//! tested everywhere.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of the temporary files written by [`write_atomic`].
const TMP_PREFIX: &str = ".gsinfer-tmp-";

/// One optimisation profile of one input: the shapes (batch dimension
/// first) the engine accepts, and the one it is tuned for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpec {
    /// Input tensor name.
    pub input: String,
    /// Smallest shape, `[batch, dims...]`.
    pub min: Vec<i64>,
    /// Shape the builder tunes kernels for.
    pub opt: Vec<i64>,
    /// Largest shape.
    pub max: Vec<i64>,
}

impl ProfileSpec {
    /// The profile for the batcher's `buckets` (ascending, non-empty) of an
    /// input `name` with per-item `dims`: batches from the smallest bucket
    /// to the largest of the largest bucket and `max_batch_size`, tuned
    /// for the largest bucket, which is where throughput matters.
    pub fn for_buckets(name: &str, dims: &[usize], buckets: &[usize], max_batch_size: u32) -> Self {
        let smallest = buckets.first().copied().unwrap_or(1).max(1);
        let largest = buckets.last().copied().unwrap_or(1).max(smallest);
        let max = largest.max(max_batch_size as usize);
        let shape = |b: usize| {
            std::iter::once(b as i64)
                .chain(dims.iter().map(|d| *d as i64))
                .collect()
        };
        Self {
            input: name.to_string(),
            min: shape(smallest),
            opt: shape(largest),
            max: shape(max),
        }
    }

    /// The batch sizes the profile admits, `min[0]..=max[0]`.
    pub fn batch_range(&self) -> (usize, usize) {
        let first = |v: &[i64]| v.first().copied().unwrap_or(1).max(1) as usize;
        (first(&self.min), first(&self.max))
    }
}

/// The device and library a plan is built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKey {
    /// TensorRT version, e.g. `"10.3.0"`.
    pub tensorrt: String,
    /// GPU name as the driver reports it, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub gpu: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)`.
    pub compute_capability: (u32, u32),
}

impl DeviceKey {
    /// A file-name-safe tag, e.g. `10.3.0-sm90-nvidia-h100-80gb-hbm3`.
    pub fn tag(&self) -> String {
        let gpu: String = self
            .gpu
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let gpu = gpu
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let (major, minor) = self.compute_capability;
        format!("{}-sm{major}{minor}-{gpu}", self.tensorrt)
    }
}

/// Everything that makes a plan incompatible: when any field differs, the
/// plan is rebuilt, never loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineKey {
    /// TensorRT version and GPU.
    pub device: DeviceKey,
    /// sha256 of the ONNX file the plan is built from (hex).
    pub onnx_sha256: String,
    /// The optimisation profiles, one per input.
    pub profiles: Vec<ProfileSpec>,
    /// Builder precision: FP16 kernels allowed.
    pub fp16: bool,
}

impl EngineKey {
    /// Why a plan built for `self` must not serve a box that wants `want`;
    /// `None` when they match. One short clause per difference, e.g.
    /// `"TensorRT 10.3.0 → 10.4.1"`.
    pub fn mismatch(&self, want: &EngineKey) -> Option<String> {
        let mut why = Vec::new();
        let (a, b) = (&self.device, &want.device);
        if a.tensorrt != b.tensorrt {
            why.push(format!("TensorRT {} → {}", a.tensorrt, b.tensorrt));
        }
        if a.gpu != b.gpu || a.compute_capability != b.compute_capability {
            why.push(format!(
                "GPU {} (sm {}.{}) → {} (sm {}.{})",
                a.gpu,
                a.compute_capability.0,
                a.compute_capability.1,
                b.gpu,
                b.compute_capability.0,
                b.compute_capability.1
            ));
        }
        if self.onnx_sha256 != want.onnx_sha256 {
            why.push("the ONNX file changed".into());
        }
        if self.profiles != want.profiles {
            why.push("the optimisation profiles changed (batch buckets or input dims)".into());
        }
        if self.fp16 != want.fp16 {
            why.push(format!(
                "precision {} → {}",
                precision(self.fp16),
                precision(want.fp16)
            ));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

fn precision(fp16: bool) -> &'static str {
    if fp16 {
        "FP16"
    } else {
        "FP32"
    }
}

/// What is stored beside each plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the plan was built for.
    pub key: EngineKey,
    /// sha256 of the plan file (hex).
    pub plan_sha256: String,
    /// Size of the plan file in bytes.
    pub plan_bytes: u64,
    /// When the build finished, RFC 3339.
    pub built_at: String,
    /// How long the build took, in seconds.
    pub build_seconds: f64,
    /// The gsinfer version that built it.
    pub gsinfer_version: String,
}

/// The result of looking a model up in the cache.
#[derive(Debug)]
pub enum Lookup {
    /// A plan built for exactly this key, its bytes verified.
    Fresh {
        /// The plan.
        plan: Vec<u8>,
        /// Its manifest.
        manifest: Manifest,
    },
    /// No plan (or no manifest) has been built yet.
    Missing,
    /// A plan exists but was built for another key.
    Stale {
        /// What differs.
        why: String,
    },
    /// The plan or manifest cannot be trusted: unreadable, truncated,
    /// or not matching its sha256.
    Corrupt {
        /// What is wrong.
        why: String,
    },
}

impl Lookup {
    /// `"fresh"`, `"missing"`, `"stale"` or `"corrupt"`.
    pub fn name(&self) -> &'static str {
        match self {
            Lookup::Fresh { .. } => "fresh",
            Lookup::Missing => "missing",
            Lookup::Stale { .. } => "stale",
            Lookup::Corrupt { .. } => "corrupt",
        }
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Fresh { manifest, .. } => {
                write!(f, "fresh (built {})", manifest.built_at)
            }
            Lookup::Missing => f.write_str("not built yet"),
            Lookup::Stale { why } => write!(f, "stale: {why}"),
            Lookup::Corrupt { why } => write!(f, "corrupt: {why}"),
        }
    }
}

/// The engine directory (see the module docs).
#[derive(Debug, Clone)]
pub struct EngineCache {
    root: PathBuf,
}

impl EngineCache {
    /// The cache rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The engine directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of `model` version `version`.
    pub fn model_dir(&self, model: &str, version: u64) -> PathBuf {
        self.root.join(model).join(version.to_string())
    }

    /// Path of the plan of `model` version `version`.
    pub fn plan_path(&self, model: &str, version: u64) -> PathBuf {
        self.model_dir(model, version).join("model.plan")
    }

    /// Path of the manifest of `model` version `version`.
    pub fn manifest_path(&self, model: &str, version: u64) -> PathBuf {
        self.model_dir(model, version).join("manifest.json")
    }

    /// Path of the builder's timing cache for `device`.
    pub fn timing_cache_path(&self, device: &DeviceKey) -> PathBuf {
        self.root
            .join("timing")
            .join(format!("{}.cache", device.tag()))
    }

    /// The manifest of `model` version `version`, if one is there and parses.
    pub fn manifest(&self, model: &str, version: u64) -> Option<Manifest> {
        let text = fs::read(self.manifest_path(model, version)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Looks up the plan of `model` version `version` for `want`. Reads and
    /// verifies the whole plan when the key matches; never errors: an
    /// unreadable file is reported as [`Lookup::Corrupt`].
    pub fn lookup(&self, model: &str, version: u64, want: &EngineKey) -> Lookup {
        let plan_path = self.plan_path(model, version);
        let manifest_path = self.manifest_path(model, version);
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => {
                return Lookup::Corrupt {
                    why: format!("cannot read {}: {e}", manifest_path.display()),
                }
            }
        };
        let manifest: Manifest = match serde_json::from_slice(&manifest) {
            Ok(m) => m,
            Err(e) => {
                return Lookup::Corrupt {
                    why: format!("{} does not parse: {e}", manifest_path.display()),
                }
            }
        };
        if let Some(why) = manifest.key.mismatch(want) {
            return Lookup::Stale { why };
        }
        let plan = match fs::read(&plan_path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => {
                return Lookup::Corrupt {
                    why: format!("cannot read {}: {e}", plan_path.display()),
                }
            }
        };
        if plan.len() as u64 != manifest.plan_bytes {
            return Lookup::Corrupt {
                why: format!(
                    "{} has {} bytes, its manifest says {} (truncated?)",
                    plan_path.display(),
                    plan.len(),
                    manifest.plan_bytes
                ),
            };
        }
        if sha256_hex(&plan) != manifest.plan_sha256 {
            return Lookup::Corrupt {
                why: format!(
                    "{} does not match its manifest's sha256",
                    plan_path.display()
                ),
            };
        }
        Lookup::Fresh { plan, manifest }
    }

    /// Stores `plan` for `model` version `version` with its manifest, each
    /// written atomically, the plan first.
    ///
    /// # Errors
    /// The I/O error with the path (disk full, read-only, permissions);
    /// the previous plan and manifest are then left as they were or, if
    /// the plan was replaced but the manifest was not, the old manifest's
    /// sha256 no longer matches and the plan is reported corrupt, never
    /// loaded.
    pub fn store(
        &self,
        model: &str,
        version: u64,
        key: &EngineKey,
        plan: &[u8],
        build_seconds: f64,
    ) -> Result<Manifest, CacheError> {
        let manifest = Manifest {
            key: key.clone(),
            plan_sha256: sha256_hex(plan),
            plan_bytes: plan.len() as u64,
            built_at: now_rfc3339(),
            build_seconds,
            gsinfer_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let dir = self.model_dir(model, version);
        fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        let plan_path = self.plan_path(model, version);
        write_atomic(&plan_path, plan)?;
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        write_atomic(&self.manifest_path(model, version), &text)?;
        Ok(manifest)
    }

    /// Removes temporary files left by an interrupted write anywhere in
    /// the cache; returns the paths removed. Missing directories are fine.
    pub fn sweep(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        sweep_dir(&self.root, 3, &mut removed);
        removed
    }
}

fn sweep_dir(dir: &Path, depth: usize, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            sweep_dir(&path, depth - 1, removed);
        } else if kind.is_file()
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TMP_PREFIX))
            && fs::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
    }
}

/// An I/O failure of the engine cache, with the path involved.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}{hint}")]
pub struct CacheError {
    /// The file or folder.
    pub path: String,
    /// The error.
    pub source: io::Error,
    hint: &'static str,
}

impl CacheError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        let hint = match source.raw_os_error() {
            Some(libc::ENOSPC) => {
                " (the state directory's disk is full: free space, then `gsinfer engine build`)"
            }
            Some(libc::EROFS) => {
                " (read-only file system: engines belong in the state directory, engine.dir)"
            }
            Some(libc::EACCES) => {
                " (permission denied: the gsinfer user must own the engine directory)"
            }
            _ => "",
        };
        Self {
            path: path.display().to_string(),
            source,
            hint,
        }
    }

    /// Whether the disk (or quota) was full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT)
        )
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// folder, synced, renamed over `path`, then the folder fsynced (POSIX
/// rename is atomic within a file system; the folder fsync makes the
/// rename itself durable). A group of one for [`write_atomic_all`].
///
/// # Errors
/// [`CacheError`] naming the path; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    write_atomic_all(dir, &[(path, bytes)])
        .pop()
        .expect("one result per file")
}

/// Writes each of `files` (a path in `dir` and its bytes) atomically, as
/// [`write_atomic`] does, but as one group commit: every temporary file is
/// written, then the file system is synced once (`syncfs(2)`), then every
/// temporary file is renamed over its path, then `dir` is fsynced once. Two
/// syncs for the group instead of two per file; each file is still either
/// its old or its new content after a crash.
///
/// Returns one result per file, in order. A file whose temporary copy
/// cannot be written (a full disk) fails alone; a failed sync or folder
/// fsync fails every file written in the group.
pub fn write_atomic_all(dir: &Path, files: &[(&Path, &[u8])]) -> Vec<Result<(), CacheError>> {
    let paths: Vec<&Path> = files.iter().map(|(p, _)| *p).collect();
    write_atomic_all_with(dir, &paths, |i, out| {
        out.write_all(files[i].1)
            .map_err(|e| CacheError::io(files[i].0, e))
    })
}

/// [`write_atomic_all`] with each file's bytes written by `write(i, file)`
/// for `paths[i]` when its temporary file is open, so only one file's
/// bytes need exist at a time; each temporary file is closed once written,
/// so a group of thousands of files does not hold thousands of
/// descriptors. A `write` error fails that file alone.
pub fn write_atomic_all_with(
    dir: &Path,
    paths: &[&Path],
    mut write: impl FnMut(usize, &mut fs::File) -> Result<(), CacheError>,
) -> Vec<Result<(), CacheError>> {
    use std::os::fd::AsRawFd;
    let mut temps: Vec<Option<tempfile::TempPath>> = Vec::with_capacity(paths.len());
    let mut results: Vec<Result<(), CacheError>> = Vec::with_capacity(paths.len());
    for i in 0..paths.len() {
        let written = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(dir)
            .map_err(|e| CacheError::io(dir, e))
            .and_then(|mut tmp| {
                write(i, tmp.as_file_mut())?;
                Ok(tmp.into_temp_path())
            });
        match written {
            Ok(tmp) => {
                temps.push(Some(tmp));
                results.push(Ok(()));
            }
            Err(e) => {
                temps.push(None);
                results.push(Err(e));
            }
        }
    }
    let fail_all = |results: &mut Vec<Result<(), CacheError>>, path: &Path, e: &io::Error| {
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(CacheError::io(
                path,
                io::Error::new(e.kind(), e.to_string()),
            ));
        }
    };
    if temps.iter().all(Option::is_none) {
        return results;
    }
    let synced = fs::File::open(dir).and_then(|d| {
        // SAFETY: syncfs on a file descriptor this function owns for the call.
        if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    });
    if let Err(e) = synced {
        fail_all(&mut results, dir, &e);
        return results;
    }
    for ((tmp, &path), result) in temps.into_iter().zip(paths).zip(&mut results) {
        if let (Some(tmp), Ok(())) = (tmp, &*result) {
            if let Err(e) = tmp.persist(path) {
                *result = Err(CacheError::io(path, e.error));
            }
        }
    }
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        fail_all(&mut results, dir, &e);
    }
    results
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the file at `path`, lowercase hex, read in 1 MiB chunks.
///
/// # Errors
/// The I/O error of reading the file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_group_commit_writes_every_file_and_leaves_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = |tag: &str| -> Vec<(PathBuf, Vec<u8>)> {
            (0..3)
                .map(|i| {
                    (
                        dir.path().join(format!("m{i}.state")),
                        format!("{tag} {i}").into_bytes(),
                    )
                })
                .collect()
        };
        for tag in ["first", "second"] {
            let owned = files(tag);
            let refs: Vec<(&Path, &[u8])> = owned
                .iter()
                .map(|(p, b)| (p.as_path(), b.as_slice()))
                .collect();
            let results = write_atomic_all(dir.path(), &refs);
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            for (path, bytes) in files(tag) {
                assert_eq!(fs::read(&path).unwrap(), bytes);
            }
        }
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| !n.starts_with(TMP_PREFIX)));
        // A folder that is not there fails every file, saying where.
        let gone = dir.path().join("gone");
        let results = write_atomic_all(&gone, &[(gone.join("m.state").as_path(), b"x".as_slice())]);
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("gone"), "{err}");
    }

    use super::*;

    #[test]
    fn a_group_of_thousands_of_files_holds_one_descriptor_at_a_time() {
        // Each temporary file is closed once written: the process's open
        // descriptors do not grow with the group (the soft limit is often
        // 1 024, and a checkpoint of 1 200 models used to fail every save
        // with EMFILE).
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..2_000)
            .map(|i| dir.path().join(format!("m{i}")))
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let open = || fs::read_dir("/proc/self/fd").unwrap().count();
        let (mut least, mut most) = (usize::MAX, 0);
        let results = write_atomic_all_with(dir.path(), &refs, |i, file| {
            let n = open();
            least = least.min(n);
            most = most.max(n);
            file.write_all(format!("{i}").as_bytes())
                .map_err(|e| CacheError::io(refs[i], e))
        });
        assert!(results.iter().all(Result::is_ok));
        assert!(
            most - least < 500,
            "descriptors grew from {least} to {most}"
        );
        assert_eq!(fs::read_to_string(&paths[1_999]).unwrap(), "1999");
    }

    fn key() -> EngineKey {
        EngineKey {
            device: DeviceKey {
                tensorrt: "10.3.0".into(),
                gpu: "NVIDIA L4".into(),
                compute_capability: (8, 9),
            },
            onnx_sha256: sha256_hex(b"onnx"),
            profiles: vec![ProfileSpec::for_buckets(
                "window",
                &[250, 25],
                &[1, 4, 16, 64],
                64,
            )],
            fp16: false,
        }
    }

    #[test]
    fn the_profile_spans_the_buckets_and_is_tuned_for_the_largest() {
        let p = ProfileSpec::for_buckets("window", &[250, 25], &[1, 4, 16, 64], 128);
        assert_eq!(p.min, [1, 250, 25]);
        assert_eq!(p.opt, [64, 250, 25]);
        assert_eq!(p.max, [128, 250, 25]);
        assert_eq!(p.batch_range(), (1, 128));
        let p = ProfileSpec::for_buckets("x", &[3], &[2, 8], 0);
        assert_eq!((p.min, p.opt, p.max), (vec![2, 3], vec![8, 3], vec![8, 3]));
    }

    #[test]
    fn every_key_field_makes_a_plan_stale_and_says_which() {
        let a = key();
        assert_eq!(a.mismatch(&a), None);
        let mut b = a.clone();
        b.device.tensorrt = "10.4.1".into();
        assert_eq!(a.mismatch(&b).unwrap(), "TensorRT 10.3.0 → 10.4.1");
        let mut b = a.clone();
        b.device.gpu = "NVIDIA H100 PCIe".into();
        b.device.compute_capability = (9, 0);
        assert_eq!(
            a.mismatch(&b).unwrap(),
            "GPU NVIDIA L4 (sm 8.9) → NVIDIA H100 PCIe (sm 9.0)"
        );
        let mut b = a.clone();
        b.onnx_sha256 = sha256_hex(b"other");
        b.fp16 = true;
        assert_eq!(
            a.mismatch(&b).unwrap(),
            "the ONNX file changed, precision FP32 → FP16"
        );
        let mut b = a.clone();
        b.profiles[0].max[0] = 32;
        assert!(a.mismatch(&b).unwrap().contains("optimisation profiles"));
    }

    #[test]
    fn a_stored_plan_is_found_fresh_and_a_changed_key_finds_it_stale() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path().join("engines"));
        let k = key();
        assert!(matches!(cache.lookup("m", 1, &k), Lookup::Missing));
        let plan = vec![7u8; 4096];
        let m = cache.store("m", 1, &k, &plan, 1.5).unwrap();
        assert_eq!(m.plan_bytes, 4096);
        match cache.lookup("m", 1, &k) {
            Lookup::Fresh { plan: p, manifest } => {
                assert_eq!(p, plan);
                assert_eq!(manifest, m);
            }
            other => panic!("{other}"),
        }
        let mut other = k.clone();
        other.device.tensorrt = "10.5.0".into();
        assert!(
            matches!(cache.lookup("m", 1, &other), Lookup::Stale { ref why } if why == "TensorRT 10.3.0 → 10.5.0")
        );
        // Only plan and manifest are there: no temporary file survives.
        let mut names: Vec<_> = fs::read_dir(cache.model_dir("m", 1))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["manifest.json", "model.plan"]);
    }

    #[test]
    fn truncated_corrupted_or_orphaned_plans_are_never_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path());
        let k = key();
        let plan: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        cache.store("m", 1, &k, &plan, 0.1).unwrap();
        let path = cache.plan_path("m", 1);

        fs::write(&path, &plan[..5000]).unwrap();
        let l = cache.lookup("m", 1, &k);
        assert!(
            matches!(l, Lookup::Corrupt { ref why } if why.contains("truncated")),
            "{l}"
        );

        let mut flipped = plan.clone();
        flipped[1234] ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        let l = cache.lookup("m", 1, &k);
        assert!(
            matches!(l, Lookup::Corrupt { ref why } if why.contains("sha256")),
            "{l}"
        );

        fs::write(cache.manifest_path("m", 1), b"{ not json").unwrap();
        assert_eq!(cache.lookup("m", 1, &k).name(), "corrupt");

        // A plan whose manifest was never written (killed in between) is not used.
        fs::remove_file(cache.manifest_path("m", 1)).unwrap();
        assert!(matches!(cache.lookup("m", 1, &k), Lookup::Missing));
    }

    #[test]
    fn sweep_removes_what_an_interrupted_write_left() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path());
        cache.store("m", 1, &key(), b"plan", 0.0).unwrap();
        let left = cache.model_dir("m", 1).join(format!("{TMP_PREFIX}abc123"));
        fs::write(&left, b"half a plan").unwrap();
        assert_eq!(cache.sweep(), vec![left.clone()]);
        assert!(!left.exists());
        assert!(cache.plan_path("m", 1).exists());
        assert!(EngineCache::new(dir.path().join("nowhere"))
            .sweep()
            .is_empty());
    }

    #[test]
    fn timing_caches_are_named_by_device() {
        let cache = EngineCache::new("/var/lib/gsinfer/engines");
        assert_eq!(
            cache.timing_cache_path(&key().device),
            Path::new("/var/lib/gsinfer/engines/timing/10.3.0-sm89-nvidia-l4.cache")
        );
    }

    #[test]
    fn file_hashes_match_byte_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes = vec![3u8; (1 << 20) + 17];
        fs::write(&path, &bytes).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(&bytes));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
