//! Which engine runs each model, and keeping TensorRT plans fresh.
//!
//! A model runs on TensorRT when its config.pbtxt says so: `platform:
//! "tensorrt_plan"` (a plan shipped in the repository, Triton's way), or an
//! ONNX model with Triton's TensorRT execution accelerator
//! (`optimization { execution_accelerators { gpu_execution_accelerator [
//! { name: "tensorrt" } ] } }`), which gsinfer compiles to a plan on the box
//! and keeps in the engine cache ([`super::cache`]). Everything else runs
//! on tract.
//!
//! Where TensorRT cannot run (no `tensorrt` feature, no GPU, no
//! libnvinfer), a model with an ONNX file falls back to tract on it and the
//! reason is logged and shown on the status page; a plan-only model fails
//! start-up with one line saying what is missing.
//!
//! [`EngineSet`] holds that policy and the plan cache on disk; a
//! [`PlanBackend`] under it builds and runs plans (TensorRT, or
//! [`Unavailable`]), so the policy is the same code in every build.

use std::path::{Path, PathBuf};

use super::cache::{DeviceKey, EngineCache, EngineKey, Lookup, ProfileSpec};
pub use super::config::TensorRtConfig;
use super::{Engine, EngineChoice, EngineKind, EngineSettings};
use crate::engine::prepare::{ModelError, PreparedModel};
use crate::repository::{InstanceKind, Platform};

/// What a model's config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// tract on the ONNX file.
    Tract,
    /// TensorRT on a plan built here from the ONNX file.
    TensorRtFromOnnx {
        /// FP16 builder precision.
        fp16: bool,
        /// Builder workspace limit in bytes.
        workspace_bytes: Option<u64>,
    },
    /// TensorRT on the plan in the repository.
    TensorRtPlan,
}

/// What `model`'s config.pbtxt asks for.
pub fn wanted(model: &PreparedModel) -> Wanted {
    let cfg = &model.entry.config;
    match (cfg.platform, &cfg.tensorrt) {
        (Platform::TensorRtPlan, _) => Wanted::TensorRtPlan,
        // Triton's rule: KIND_CPU instances never use a GPU accelerator.
        (Platform::OnnxRuntimeOnnx, Some(_)) if cfg.instance_kind == InstanceKind::Cpu => {
            Wanted::Tract
        }
        (Platform::OnnxRuntimeOnnx, Some(t)) => Wanted::TensorRtFromOnnx {
            fp16: t.fp16,
            workspace_bytes: t.workspace_bytes,
        },
        (Platform::OnnxRuntimeOnnx, None) => Wanted::Tract,
    }
}

/// The ONNX file tract can fall back to: the model file itself for an
/// ONNX model, `model.onnx` beside a repository plan otherwise.
pub fn onnx_fallback(model: &PreparedModel) -> Option<PathBuf> {
    match model.entry.config.platform {
        Platform::OnnxRuntimeOnnx => Some(model.entry.model_path.clone()),
        Platform::TensorRtPlan => {
            let p = model.entry.model_path.with_file_name("model.onnx");
            p.is_file().then_some(p)
        }
    }
}

/// The optimisation profile gsinfer builds for `model`: its one input,
/// batches over its buckets.
pub fn profile(model: &PreparedModel) -> ProfileSpec {
    ProfileSpec::for_buckets(
        &model.input.name,
        &model.input.dims,
        &model.buckets,
        model.entry.config.max_batch_size,
    )
}

/// The opened instances of one model.
pub struct Opened {
    /// One engine per instance.
    pub engines: Vec<Box<dyn Engine>>,
    /// The engine the instances run on.
    pub kind: EngineKind,
    /// The engine's own description for the log (e.g. with its thread count).
    pub detail: String,
    /// `"CPU"` or the GPU's name.
    pub device: String,
    /// Why the model does not run where its config asked (a fallback), for
    /// the log and the status page.
    pub note: Option<String>,
}

/// Receives rebuild progress (fraction 0 to 1) of one model.
pub type Progress<'a> = &'a (dyn Fn(f32) + Sync);

/// The CPU engine a pipeline chose (`engine`, `[engine]`): what runs a
/// model that asks for no TensorRT, and what a TensorRT model falls back to.
#[derive(Debug, Clone, Copy)]
pub struct CpuEngine<'a> {
    /// The pipeline's `engine`.
    pub choice: EngineChoice,
    /// The `[engine]` section.
    pub settings: &'a EngineSettings,
}

/// Opens `instances` instances of `model` on the pipeline's CPU engine, as
/// [`EngineSet::open`] does for a model that asks for no TensorRT; needs no
/// engine set, so models can be opened in parallel.
///
/// # Errors
/// [`ModelError`] when the engine refuses the model.
pub fn open_on_cpu(
    model: &PreparedModel,
    instances: usize,
    cpu: CpuEngine<'_>,
) -> Result<Opened, ModelError> {
    open_cpu(model, &model.entry.model_path, instances.max(1), None, cpu)
}

/// Opens the CPU engine on `onnx` for `model` (`instances` instances).
fn open_cpu(
    model: &PreparedModel,
    onnx: &Path,
    instances: usize,
    note: Option<String>,
    cpu: CpuEngine<'_>,
) -> Result<Opened, ModelError> {
    let mut m = model.clone();
    m.entry.model_path = onnx.to_path_buf();
    m.entry.config.platform = Platform::OnnxRuntimeOnnx;
    let engines = (0..instances)
        .map(|_| crate::engine::prepare::open_engine(&m, cpu.choice, cpu.settings))
        .collect::<Result<Vec<_>, _>>()?;
    let kind = engines.first().map_or(EngineKind::Tract, |e| e.kind());
    let detail = engines.first().map_or_else(String::new, |e| e.detail());
    Ok(Opened {
        engines,
        kind,
        detail,
        device: "CPU".into(),
        note,
    })
}

/// Falls back to the pipeline's CPU engine with `why` (the note names the
/// engine that opened), or fails naming it when there is no ONNX file.
fn fall_back(
    model: &PreparedModel,
    instances: usize,
    why: String,
    cpu: CpuEngine<'_>,
) -> Result<Opened, ModelError> {
    match onnx_fallback(model) {
        Some(onnx) => {
            let mut opened = open_cpu(model, &onnx, instances, None, cpu)?;
            opened.note = Some(format!(
                "{why}; running on {} from {}",
                opened.kind,
                onnx.display()
            ));
            Ok(opened)
        }
        None => Err(ModelError::Mismatch {
            model: model.entry.name.clone(),
            message: format!(
                "{why}, and there is no model.onnx beside {} to run on the CPU instead",
                model.entry.model_path.display()
            ),
        }),
    }
}

/// Where plans come from and run: TensorRT on this box, or nothing.
///
/// [`EngineSet`] keeps the policy (which plan a model needs, when a cached
/// plan is stale, when to rebuild, when to fall back to the CPU) and the
/// plan cache on disk; a backend only probes the platform, builds plan
/// bytes, and deserializes and instantiates them. gsinfer has two:
/// TensorRT ([`crate::engine::tensorrt::TensorRtPlans`], cargo feature
/// `tensorrt`) and [`Unavailable`], which says why for every call.
/// [`default_backend`] picks one.
pub trait PlanBackend: Send {
    /// The device part of a plan's key on this box (TensorRT version, GPU,
    /// compute capability).
    ///
    /// # Errors
    /// Why plans cannot be built or run here, as one line.
    fn device_key(&mut self) -> Result<DeviceKey, String>;

    /// Whether plans can run now: the platform probes and the GPU opens.
    ///
    /// # Errors
    /// Why not, as one line.
    fn usable(&mut self) -> Result<(), String>;

    /// Builds a plan from the ONNX file `onnx` for `key` (its optimisation
    /// profiles and precision), with a builder workspace of at most
    /// `workspace_bytes`; reports fractions 0 to 1 to `progress`.
    ///
    /// # Errors
    /// The builder's reason, as one line.
    fn build(
        &mut self,
        onnx: &Path,
        key: &EngineKey,
        workspace_bytes: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, String>;

    /// Deserializes `plan` and keeps it as `model`'s (name and version),
    /// replacing any plan kept before.
    ///
    /// # Errors
    /// Why the runtime refuses the plan (another TensorRT, a driver change
    /// the key cannot see, corrupt bytes).
    fn load(&mut self, model: &PreparedModel, plan: &[u8]) -> Result<(), String>;

    /// Whether a plan for model `name` version `version` is kept.
    fn loaded(&self, name: &str, version: u64) -> bool;

    /// Drops the plan kept for `name` version `version` (after a rebuild).
    fn forget(&mut self, name: &str, version: u64);

    /// Opens `instances` engines on `model`'s kept plan; returns them and
    /// the device's name.
    ///
    /// # Errors
    /// No plan kept for the model, or the runtime refuses an execution
    /// context.
    fn instances(
        &mut self,
        model: &PreparedModel,
        instances: usize,
    ) -> Result<(Vec<Box<dyn Engine>>, String), String>;
}

/// The backend of a box where plans cannot run: every call says why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    why: String,
}

impl Unavailable {
    /// A backend that answers every call with `why` (one line).
    pub fn new(why: impl Into<String>) -> Self {
        Self { why: why.into() }
    }
}

impl PlanBackend for Unavailable {
    fn device_key(&mut self) -> Result<DeviceKey, String> {
        Err(self.why.clone())
    }
    fn usable(&mut self) -> Result<(), String> {
        Err(self.why.clone())
    }
    fn build(
        &mut self,
        _onnx: &Path,
        _key: &EngineKey,
        _workspace_bytes: Option<u64>,
        _progress: Progress<'_>,
    ) -> Result<Vec<u8>, String> {
        Err(self.why.clone())
    }
    fn load(&mut self, _model: &PreparedModel, _plan: &[u8]) -> Result<(), String> {
        Err(self.why.clone())
    }
    fn loaded(&self, _name: &str, _version: u64) -> bool {
        false
    }
    fn forget(&mut self, _name: &str, _version: u64) {}
    fn instances(
        &mut self,
        _model: &PreparedModel,
        _instances: usize,
    ) -> Result<(Vec<Box<dyn Engine>>, String), String> {
        Err(self.why.clone())
    }
}

/// The backend this build has: TensorRT (probed on first use) with the
/// `tensorrt` feature, [`Unavailable`] without it.
pub fn default_backend(config: &TensorRtConfig) -> Box<dyn PlanBackend> {
    #[cfg(feature = "tensorrt")]
    let backend: Box<dyn PlanBackend> =
        Box::new(crate::engine::tensorrt::TensorRtPlans::new(config));
    #[cfg(not(feature = "tensorrt"))]
    let backend: Box<dyn PlanBackend> = {
        let _ = config;
        Box::new(Unavailable::new(
            "this gsinfer was built without the `tensorrt` feature",
        ))
    };
    backend
}

/// The process's engines: the plan backend, the engine cache on disk, and
/// the policy between them.
pub struct EngineSet {
    cache: EngineCache,
    backend: Box<dyn PlanBackend>,
}

impl std::fmt::Debug for EngineSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSet")
            .field("engine_dir", &self.cache.root())
            .finish_non_exhaustive()
    }
}

/// A model's plan as `gsinfer engine inspect` and the start-up rebuild see it.
#[derive(Debug)]
pub struct PlanState {
    /// The key the box would build for (`None` without a usable GPU and TensorRT).
    pub want: Option<EngineKey>,
    /// What the cache holds, judged against `want` (or against its own key
    /// when `want` is unknown: only corruption is detected then).
    pub lookup: Lookup,
    /// Why the platform is unusable, when it is.
    pub unavailable: Option<String>,
}

impl EngineSet {
    /// The engine set of a configuration on this build's backend
    /// ([`default_backend`]).
    pub fn new(config: &TensorRtConfig) -> Self {
        Self::with_backend(config, default_backend(config))
    }

    /// The engine set of a configuration on `backend`; the engine
    /// directory's leftover temporary files (an interrupted build) are
    /// removed.
    pub fn with_backend(config: &TensorRtConfig, backend: Box<dyn PlanBackend>) -> Self {
        let cache = EngineCache::new(config.engine_dir());
        for p in cache.sweep() {
            log::warn!(target: "gsinfer::engine", "removed {}, left by an interrupted engine build", p.display());
        }
        Self { cache, backend }
    }

    /// The engine cache.
    pub fn cache(&self) -> &EngineCache {
        &self.cache
    }

    /// The key a plan for `model` must have on this box, or why there is
    /// none (no GPU, no TensorRT, no `tensorrt` feature).
    ///
    /// # Errors
    /// The reason as one line.
    pub fn key(&mut self, model: &PreparedModel) -> Result<EngineKey, String> {
        let fp16 = matches!(wanted(model), Wanted::TensorRtFromOnnx { fp16: true, .. });
        let device = self.backend.device_key()?;
        let onnx_sha256 = super::cache::sha256_file(&model.entry.model_path)
            .map_err(|e| format!("cannot read {}: {e}", model.entry.model_path.display()))?;
        Ok(EngineKey {
            device,
            onnx_sha256,
            profiles: vec![profile(model)],
            fp16,
        })
    }

    /// What the cache holds for `model` (an ONNX model compiled on the box).
    pub fn state(&mut self, model: &PreparedModel) -> PlanState {
        let (name, version) = (&model.entry.name, model.entry.version);
        match self.key(model) {
            Ok(want) => PlanState {
                lookup: self.cache.lookup(name, version, &want),
                want: Some(want),
                unavailable: None,
            },
            Err(why) => {
                let lookup = match self.cache.manifest(name, version) {
                    Some(m) => self.cache.lookup(name, version, &m.key),
                    None => Lookup::Missing,
                };
                PlanState {
                    want: None,
                    lookup,
                    unavailable: Some(why),
                }
            }
        }
    }

    /// Opens `instances` engines for `model` on the engine its config asks
    /// for, rebuilding a missing, stale or corrupt plan first when
    /// `rebuild` is set (reporting to `progress`), and falling back to the
    /// CPU engine as the module docs say.
    ///
    /// # Errors
    /// [`ModelError`] when no engine can run the model.
    pub fn open(
        &mut self,
        model: &PreparedModel,
        instances: usize,
        rebuild: bool,
        progress: Progress<'_>,
        cpu: CpuEngine<'_>,
    ) -> Result<Opened, ModelError> {
        let instances = instances.max(1);
        let want = wanted(model);
        if want == Wanted::Tract {
            return open_cpu(model, &model.entry.model_path, instances, None, cpu);
        }
        if let Err(why) = self.backend.usable() {
            return fall_back(
                model,
                instances,
                format!("TensorRT is unusable: {why}"),
                cpu,
            );
        }
        let (name, version) = (model.entry.name.clone(), model.entry.version);
        let mut note = None;
        match want {
            Wanted::TensorRtPlan => {
                let bytes = match std::fs::read(&model.entry.model_path) {
                    Ok(b) => b,
                    Err(e) => {
                        return fall_back(
                            model,
                            instances,
                            format!("cannot read the plan: {e}"),
                            cpu,
                        )
                    }
                };
                if let Err(e) = self.backend.load(model, &bytes) {
                    let why = format!(
                        "the repository's plan {} does not load on this box ({e}); a repository plan cannot be rebuilt, ship model.onnx beside it",
                        model.entry.model_path.display()
                    );
                    return fall_back(model, instances, why, cpu);
                }
            }
            _ if self.backend.loaded(&name, version) => {}
            _ => {
                let bytes = match self.state(model).lookup {
                    Lookup::Fresh { plan, .. } => plan,
                    other if rebuild => {
                        log::warn!(target: "gsinfer::engine", "model {name}: engine {other}; rebuilding it from {}", model.entry.model_path.display());
                        match self.rebuild(model, &other, progress, &mut note) {
                            Ok(plan) => plan,
                            Err(why) => return fall_back(model, instances, why, cpu),
                        }
                    }
                    other => {
                        let why = format!("engine {other} and tensorrt.rebuild_at_start is off; run `gsinfer engine build`");
                        return fall_back(model, instances, why, cpu);
                    }
                };
                if let Err(e) = self.backend.load(model, &bytes) {
                    if !rebuild {
                        return fall_back(model, instances, e, cpu);
                    }
                    // A plan whose key matched but that the runtime refuses
                    // (a driver change the key cannot see): rebuild once.
                    let why = Lookup::Stale {
                        why: format!("TensorRT refused it: {e}"),
                    };
                    let plan = match self.rebuild(model, &why, progress, &mut note) {
                        Ok(plan) => plan,
                        Err(why) => return fall_back(model, instances, why, cpu),
                    };
                    self.backend
                        .load(model, &plan)
                        .map_err(|message| ModelError::Mismatch {
                            model: name.clone(),
                            message,
                        })?;
                }
            }
        }
        let (engines, device) = self
            .backend
            .instances(model, instances)
            .map_err(|message| ModelError::Mismatch {
                model: name.clone(),
                message,
            })?;
        Ok(Opened {
            engines,
            kind: EngineKind::TensorRt,
            detail: format!("tensorrt on {device}"),
            device,
            note,
        })
    }

    /// Builds `model`'s plan when it is missing, stale or corrupt (always
    /// with `force`) and stores it; returns what was done, e.g. `"fresh"`
    /// or `"built in 41.2 s (stale: TensorRT 10.3.0 → 10.4.1)"`.
    ///
    /// # Errors
    /// One line: the platform is unusable, the build failed, or the plan
    /// could not be written (disk full names itself).
    pub fn build(
        &mut self,
        model: &PreparedModel,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<String, String> {
        if !matches!(wanted(model), Wanted::TensorRtFromOnnx { .. }) {
            return Ok("nothing to build: config.pbtxt asks for no TensorRT accelerator".into());
        }
        let state = self.state(model);
        if let Some(why) = state.unavailable {
            return Err(why);
        }
        if !force {
            if let Lookup::Fresh { .. } = state.lookup {
                return Ok("fresh".into());
            }
        }
        let (name, version) = (&model.entry.name, model.entry.version);
        let (key, plan, seconds) = self.build_plan(model, progress)?;
        self.cache
            .store(name, version, &key, &plan, seconds)
            .map_err(|e| e.to_string())?;
        self.backend.forget(name, version);
        Ok(format!("built in {seconds:.1} s ({})", state.lookup))
    }

    /// [`EngineSet::build_for_run`] for [`EngineSet::open`]: the plan, with
    /// `note` set when it could not be stored; or the fallback's reason.
    fn rebuild(
        &mut self,
        model: &PreparedModel,
        before: &Lookup,
        progress: Progress<'_>,
        note: &mut Option<String>,
    ) -> Result<Vec<u8>, String> {
        let (plan, unsaved) = self
            .build_for_run(model, before, progress)
            .map_err(|e| format!("the engine rebuild failed: {e}"))?;
        *note = unsaved;
        Ok(plan)
    }

    /// Builds `model`'s plan for this run and stores it. When it cannot be
    /// stored (the state directory's disk is full, say) the run still uses
    /// the plan built in memory: the error and the second value say so,
    /// and the next start rebuilds it.
    fn build_for_run(
        &mut self,
        model: &PreparedModel,
        before: &Lookup,
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let (key, plan, seconds) = self.build_plan(model, progress)?;
        let name = &model.entry.name;
        log::info!(target: "gsinfer::engine", "model {name}: engine built in {seconds:.1} s ({before})");
        match self
            .cache
            .store(name, model.entry.version, &key, &plan, seconds)
        {
            Ok(_) => Ok((plan, None)),
            Err(e) => {
                log::error!(target: "gsinfer::engine", "model {name}: cannot save the engine: {e}; this run uses it from memory, the next start rebuilds it");
                Ok((
                    plan,
                    Some(format!("engine not saved ({e}); rebuilt at the next start")),
                ))
            }
        }
    }

    /// Runs the backend's builder on `model`'s ONNX file: the key the plan
    /// is built for, the plan, and the seconds it took.
    fn build_plan(
        &mut self,
        model: &PreparedModel,
        progress: Progress<'_>,
    ) -> Result<(EngineKey, Vec<u8>, f64), String> {
        let key = self.key(model)?;
        let workspace_bytes = match wanted(model) {
            Wanted::TensorRtFromOnnx {
                workspace_bytes, ..
            } => workspace_bytes,
            _ => None,
        };
        let started = std::time::Instant::now();
        let plan = self
            .backend
            .build(&model.entry.model_path, &key, workspace_bytes, progress)?;
        Ok((key, plan, started.elapsed().as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::repository::ModelRepository;

    fn cpu() -> CpuEngine<'static> {
        static SETTINGS: std::sync::OnceLock<EngineSettings> = std::sync::OnceLock::new();
        CpuEngine {
            choice: EngineChoice::Auto,
            settings: SETTINGS.get_or_init(EngineSettings::default),
        }
    }

    fn prepared(accelerator: bool) -> (tempfile::TempDir, PreparedModel) {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository/smap_lstm");
        let dst = dir.path().join("smap_lstm");
        std::fs::create_dir_all(dst.join("1")).unwrap();
        std::fs::copy(src.join("1/model.onnx"), dst.join("1/model.onnx")).unwrap();
        // KIND_GPU: KIND_CPU never uses a GPU accelerator.
        let mut pbtxt = std::fs::read_to_string(src.join("config.pbtxt"))
            .unwrap()
            .replace("KIND_CPU", "KIND_GPU");
        if accelerator {
            pbtxt.push_str(
                "\noptimization { execution_accelerators { gpu_execution_accelerator : [ { name : \"tensorrt\" parameters { key: \"precision_mode\" value: \"FP16\" } } ] } }\n",
            );
        }
        std::fs::write(dst.join("config.pbtxt"), pbtxt).unwrap();
        let config = Config::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gsinfer.example.toml"),
        )
        .unwrap();
        let repo = ModelRepository::open(dir.path()).unwrap();
        let p = crate::engine::prepare::prepare(&repo, &config.pipelines[0]).unwrap();
        (dir, p)
    }

    #[test]
    fn the_config_pbtxt_decides_the_engine() {
        let (_d, plain) = prepared(false);
        assert_eq!(wanted(&plain), Wanted::Tract);
        let (_d, trt) = prepared(true);
        assert_eq!(
            wanted(&trt),
            Wanted::TensorRtFromOnnx {
                fp16: true,
                workspace_bytes: None
            }
        );
        let p = profile(&trt);
        assert_eq!(p.input, trt.input.name);
        assert_eq!(
            p.batch_range(),
            (trt.buckets[0], *trt.buckets.last().unwrap())
        );
    }

    #[test]
    fn without_tensorrt_a_tensorrt_model_falls_back_to_tract_and_says_why() {
        // This machine has no GPU (and the default build no TensorRT): the
        // fallback path is the one a CPU-only box takes.
        let (_d, model) = prepared(true);
        let engines_dir = tempfile::tempdir().unwrap();
        let mut set = EngineSet::new(&TensorRtConfig {
            engine_dir: Some(engines_dir.path().to_path_buf()),
            ..TensorRtConfig::default()
        });
        let opened = set.open(&model, 2, true, &|_| {}, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::Tract);
        assert_eq!(opened.engines.len(), 2);
        let note = opened.note.expect("a fallback explains itself");
        assert!(note.contains("running on tract from"), "{note}");
        let state = set.state(&model);
        assert!(state.unavailable.is_some());
        assert!(matches!(state.lookup, Lookup::Missing));
        assert!(set.build(&model, false, &|_| {}).is_err());
    }

    /// A backend whose plans are the key's tag and whose engines are tract
    /// on the model's ONNX file: TensorRT cannot run here, so the test
    /// drives the policy above it (cache, staleness, rebuild, fallback).
    struct FakeGpu {
        device: DeviceKey,
        builds: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        refuse_next_load: std::sync::Arc<std::sync::atomic::AtomicBool>,
        kept: std::collections::HashSet<(String, u64)>,
    }

    impl PlanBackend for FakeGpu {
        fn device_key(&mut self) -> Result<DeviceKey, String> {
            Ok(self.device.clone())
        }
        fn usable(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn build(
            &mut self,
            onnx: &Path,
            key: &EngineKey,
            _workspace_bytes: Option<u64>,
            progress: Progress<'_>,
        ) -> Result<Vec<u8>, String> {
            assert!(onnx.is_file());
            self.builds
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            progress(1.0);
            Ok(key.device.tag().into_bytes())
        }
        fn load(&mut self, model: &PreparedModel, plan: &[u8]) -> Result<(), String> {
            if self
                .refuse_next_load
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err("deserialization failed".into());
            }
            assert_eq!(plan, self.device.tag().as_bytes(), "a plan for another box");
            self.kept
                .insert((model.entry.name.clone(), model.entry.version));
            Ok(())
        }
        fn loaded(&self, name: &str, version: u64) -> bool {
            self.kept.contains(&(name.to_string(), version))
        }
        fn forget(&mut self, name: &str, version: u64) {
            self.kept.remove(&(name.to_string(), version));
        }
        fn instances(
            &mut self,
            model: &PreparedModel,
            instances: usize,
        ) -> Result<(Vec<Box<dyn Engine>>, String), String> {
            assert!(self.loaded(&model.entry.name, model.entry.version));
            let engines = (0..instances)
                .map(|_| {
                    crate::engine::prepare::open_engine(
                        model,
                        EngineChoice::Tract,
                        &EngineSettings::default(),
                    )
                    .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((engines, "Fake GPU".into()))
        }
    }

    #[test]
    fn plans_are_built_once_kept_and_rebuilt_when_the_box_changes() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        let (_d, model) = prepared(true);
        let engines_dir = tempfile::tempdir().unwrap();
        let config = TensorRtConfig {
            engine_dir: Some(engines_dir.path().to_path_buf()),
            ..TensorRtConfig::default()
        };
        let builds = Arc::new(AtomicUsize::new(0));
        let refuse = Arc::new(AtomicBool::new(false));
        let gpu = |tensorrt: &str| -> Box<dyn PlanBackend> {
            Box::new(FakeGpu {
                device: DeviceKey {
                    tensorrt: tensorrt.into(),
                    gpu: "Fake GPU".into(),
                    compute_capability: (9, 0),
                },
                builds: Arc::clone(&builds),
                refuse_next_load: Arc::clone(&refuse),
                kept: Default::default(),
            })
        };
        let none = &|_: f32| {};

        // First start: no plan, so it is built once, stored and opened.
        let mut set = EngineSet::with_backend(&config, gpu("10.3.0"));
        assert!(matches!(set.state(&model).lookup, Lookup::Missing));
        let opened = set.open(&model, 2, true, none, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::TensorRt);
        assert_eq!(
            (opened.engines.len(), opened.device.as_str()),
            (2, "Fake GPU")
        );
        assert!(opened.note.is_none(), "{:?}", opened.note);
        assert_eq!(builds.load(SeqCst), 1);
        assert!(matches!(set.state(&model).lookup, Lookup::Fresh { .. }));
        // Opened again in the same process: the kept plan.
        set.open(&model, 1, true, none, cpu()).unwrap();
        // Restarted on the same box: the cached plan, nothing built.
        let mut set = EngineSet::with_backend(&config, gpu("10.3.0"));
        set.open(&model, 1, true, none, cpu()).unwrap();
        assert_eq!(builds.load(SeqCst), 1);
        assert_eq!(set.build(&model, false, none).unwrap(), "fresh");

        // TensorRT upgraded: the plan is stale. Without rebuild_at_start the
        // CPU runs the model and the note says what to do.
        let mut set = EngineSet::with_backend(&config, gpu("10.4.1"));
        let stale = set.state(&model).lookup;
        assert!(
            matches!(&stale, Lookup::Stale { why } if why.contains("10.4.1")),
            "{stale:?}"
        );
        let opened = set.open(&model, 1, false, none, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::Tract);
        let note = opened.note.unwrap();
        assert!(
            note.contains("gsinfer engine build") && note.contains("running on tract"),
            "{note}"
        );
        assert_eq!(builds.load(SeqCst), 1);
        // With it, the plan is rebuilt once.
        let opened = set.open(&model, 1, true, none, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::TensorRt);
        assert_eq!(builds.load(SeqCst), 2);

        // A plan whose key matches but that the runtime refuses (a driver
        // change the key cannot see) is rebuilt once, then runs.
        refuse.store(true, SeqCst);
        let mut set = EngineSet::with_backend(&config, gpu("10.4.1"));
        let opened = set.open(&model, 1, true, none, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::TensorRt);
        assert_eq!(builds.load(SeqCst), 3);
        // Refused without rebuild: the CPU runs it, saying why.
        refuse.store(true, SeqCst);
        let mut set = EngineSet::with_backend(&config, gpu("10.4.1"));
        let opened = set.open(&model, 1, false, none, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::Tract);
        assert!(opened.note.unwrap().contains("deserialization failed"));

        // `gsinfer engine build --force` builds a fresh plan anyway.
        let done = set.build(&model, true, none).unwrap();
        assert!(
            done.starts_with("built in") && done.contains("fresh"),
            "{done}"
        );
        assert_eq!(builds.load(SeqCst), 4);
    }

    #[test]
    fn the_unavailable_backend_says_why_everywhere() {
        let (_d, model) = prepared(true);
        let engines_dir = tempfile::tempdir().unwrap();
        let config = TensorRtConfig {
            engine_dir: Some(engines_dir.path().to_path_buf()),
            ..TensorRtConfig::default()
        };
        let mut set = EngineSet::with_backend(&config, Box::new(Unavailable::new("no GPU here")));
        let opened = set.open(&model, 1, true, &|_| {}, cpu()).unwrap();
        assert_eq!(opened.kind, EngineKind::Tract);
        assert!(opened
            .note
            .unwrap()
            .contains("TensorRT is unusable: no GPU here"));
        assert_eq!(
            set.state(&model).unavailable.as_deref(),
            Some("no GPU here")
        );
        assert_eq!(
            set.build(&model, false, &|_| {}).unwrap_err(),
            "no GPU here"
        );
    }

    #[test]
    fn a_plan_only_model_without_onnx_fails_with_one_line() {
        let (dir, mut model) = prepared(true);
        let plan = dir.path().join("smap_lstm/1/model.plan");
        std::fs::write(&plan, b"not a plan").unwrap();
        std::fs::remove_file(dir.path().join("smap_lstm/1/model.onnx")).unwrap();
        model.entry.model_path = plan;
        model.entry.config.platform = Platform::TensorRtPlan;
        let mut set = EngineSet::new(&TensorRtConfig {
            engine_dir: Some(dir.path().join("engines")),
            ..TensorRtConfig::default()
        });
        let err = set
            .open(&model, 1, true, &|_| {}, cpu())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no model.onnx beside"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn the_engine_dir_follows_systemd_state_directory() {
        let c = TensorRtConfig {
            engine_dir: Some("/srv/engines".into()),
            ..TensorRtConfig::default()
        };
        assert_eq!(c.engine_dir(), Path::new("/srv/engines"));
    }
}
