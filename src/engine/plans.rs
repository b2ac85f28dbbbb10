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

use std::path::{Path, PathBuf};

use super::cache::{EngineCache, EngineKey, Lookup, ProfileSpec};
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

/// The process's engines: the TensorRT platform (probed once, on first
/// use), the engine cache, and the plans deserialized so far.
pub struct EngineSet {
    #[cfg_attr(not(feature = "tensorrt"), allow(dead_code))]
    config: TensorRtConfig,
    cache: EngineCache,
    #[cfg(feature = "tensorrt")]
    trt: trt_impl::State,
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
    /// The engine set of a configuration; the engine directory's leftover
    /// temporary files (an interrupted build) are removed.
    pub fn new(config: &TensorRtConfig) -> Self {
        let cache = EngineCache::new(config.engine_dir());
        for p in cache.sweep() {
            log::warn!(target: "gsinfer::engine", "removed {}, left by an interrupted engine build", p.display());
        }
        Self {
            config: config.clone(),
            cache,
            #[cfg(feature = "tensorrt")]
            trt: trt_impl::State::default(),
        }
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
        let device = self.device_key()?;
        let onnx_sha256 = super::cache::sha256_file(&model.entry.model_path)
            .map_err(|e| format!("cannot read {}: {e}", model.entry.model_path.display()))?;
        Ok(EngineKey {
            device,
            onnx_sha256,
            profiles: vec![profile(model)],
            fp16,
        })
    }

    #[cfg(feature = "tensorrt")]
    fn device_key(&mut self) -> Result<super::cache::DeviceKey, String> {
        self.trt.platform(&self.config).map(|p| p.device_key())
    }

    #[cfg(not(feature = "tensorrt"))]
    fn device_key(&mut self) -> Result<super::cache::DeviceKey, String> {
        Err("this gsinfer was built without the `tensorrt` feature".into())
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
    /// `rebuild` is set (reporting to `progress`), and falling back to tract
    /// as the module docs say.
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
        self.open_tensorrt(model, &want, instances, rebuild, progress, cpu)
    }

    #[cfg(not(feature = "tensorrt"))]
    fn open_tensorrt(
        &mut self,
        model: &PreparedModel,
        _want: &Wanted,
        instances: usize,
        _rebuild: bool,
        _progress: Progress<'_>,
        cpu: CpuEngine<'_>,
    ) -> Result<Opened, ModelError> {
        fall_back(
            model,
            instances,
            "config.pbtxt asks for TensorRT, but this gsinfer was built without the `tensorrt` feature".into(),
            cpu,
        )
    }

    #[cfg(feature = "tensorrt")]
    fn open_tensorrt(
        &mut self,
        model: &PreparedModel,
        want: &Wanted,
        instances: usize,
        rebuild: bool,
        progress: Progress<'_>,
        cpu: CpuEngine<'_>,
    ) -> Result<Opened, ModelError> {
        trt_impl::open(self, model, want, instances, rebuild, progress, cpu)
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
        self.build_now(model, &state.lookup, progress)
    }

    #[cfg(feature = "tensorrt")]
    fn build_now(
        &mut self,
        model: &PreparedModel,
        before: &Lookup,
        progress: Progress<'_>,
    ) -> Result<String, String> {
        trt_impl::build(self, model, before, progress)
    }

    #[cfg(not(feature = "tensorrt"))]
    fn build_now(
        &mut self,
        _model: &PreparedModel,
        _before: &Lookup,
        _progress: Progress<'_>,
    ) -> Result<String, String> {
        Err("this gsinfer was built without the `tensorrt` feature".into())
    }
}

#[cfg(feature = "tensorrt")]
mod trt_impl {
    //! The TensorRT half of [`super::EngineSet`].

    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::engine::tensorrt::{self as trt, cuda::Gpu, runtime::SharedPlan, TrtEngine};

    #[derive(Default)]
    pub(super) struct State {
        platform: Option<Result<trt::Platform, String>>,
        plans: HashMap<(String, u64), Arc<SharedPlan>>,
    }

    impl State {
        pub(super) fn platform(
            &mut self,
            config: &TensorRtConfig,
        ) -> Result<&trt::Platform, String> {
            self.platform
                .get_or_insert_with(|| {
                    let libs = trt::Libraries {
                        nvinfer: config.library.clone(),
                        onnxparser: config.onnxparser_library.clone(),
                    };
                    trt::probe(&libs, config.device, true).map_err(|e| e.to_string())
                })
                .as_ref()
                .map_err(Clone::clone)
        }
    }

    /// Forwards the builder's fractions to the thread that waits for it.
    struct ToChannel(std::sync::mpsc::Sender<f32>);

    impl trt::BuildProgress for ToChannel {
        fn phase(&self, name: &str, parent: Option<&str>, steps: i32) {
            log::debug!(target: "gsinfer::engine", "builder phase {name} ({steps} steps){}",
                parent.map(|p| format!(" in {p}")).unwrap_or_default());
        }
        fn fraction(&self, done: f32) {
            let _ = self.0.send(done);
        }
    }

    /// Builds and stores `model`'s plan (`gsinfer engine build`); a plan
    /// that cannot be written is an error.
    pub(super) fn build(
        set: &mut EngineSet,
        model: &PreparedModel,
        before: &Lookup,
        progress: Progress<'_>,
    ) -> Result<String, String> {
        let (key, plan, seconds) = build_plan(set, model, progress)?;
        set.cache
            .store(&model.entry.name, model.entry.version, &key, &plan, seconds)
            .map_err(|e| e.to_string())?;
        set.trt
            .plans
            .remove(&(model.entry.name.clone(), model.entry.version));
        Ok(format!("built in {seconds:.1} s ({before})"))
    }

    /// Builds `model`'s plan for this run and stores it. When it cannot be
    /// stored (the state directory's disk is full, say) the run still uses
    /// the plan built in memory: the error and the second value say so,
    /// and the next start rebuilds it.
    fn build_for_run(
        set: &mut EngineSet,
        model: &PreparedModel,
        before: &Lookup,
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let (key, plan, seconds) = build_plan(set, model, progress)?;
        let name = &model.entry.name;
        log::info!(target: "gsinfer::engine", "model {name}: engine built in {seconds:.1} s ({before})");
        match set
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

    /// Runs the TensorRT builder on `model`'s ONNX file: the key the plan
    /// is built for, the plan, and the seconds it took.
    fn build_plan(
        set: &mut EngineSet,
        model: &PreparedModel,
        progress: Progress<'_>,
    ) -> Result<(EngineKey, Vec<u8>, f64), String> {
        let key = set.key(model)?;
        let platform = set.trt.platform(&set.config)?.clone();
        let gpu = Gpu::open(platform.device.ordinal).map_err(|e| e.to_string())?;
        let workspace_bytes = match wanted(model) {
            Wanted::TensorRtFromOnnx {
                workspace_bytes, ..
            } => workspace_bytes,
            _ => None,
        };
        let request = trt::BuildRequest {
            onnx: model.entry.model_path.clone(),
            key: key.clone(),
            workspace_bytes,
            tensorrt_major: platform
                .tensorrt
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0),
        };
        let started = Instant::now();
        // The build runs on its own thread so that this one can hand its
        // progress to `progress` as it comes.
        let (tx, rx) = std::sync::mpsc::channel();
        let plan = std::thread::scope(|s| {
            let builder = s.spawn(move || {
                gpu.bind()?;
                trt::build_plan(&request, Arc::new(ToChannel(tx)))
            });
            for done in rx {
                progress(done);
            }
            builder.join().unwrap_or_else(|_| {
                Err(trt::TrtError::Model(
                    "the engine builder thread panicked".into(),
                ))
            })
        })
        .map_err(|e| e.to_string())?;
        Ok((key, plan, started.elapsed().as_secs_f64()))
    }

    pub(super) fn open(
        set: &mut EngineSet,
        model: &PreparedModel,
        want: &Wanted,
        instances: usize,
        rebuild: bool,
        progress: Progress<'_>,
        cpu: CpuEngine<'_>,
    ) -> Result<Opened, ModelError> {
        let platform = match set.trt.platform(&set.config) {
            Ok(p) => p.clone(),
            Err(why) => {
                return fall_back(
                    model,
                    instances,
                    format!("TensorRT is unusable: {why}"),
                    cpu,
                )
            }
        };
        let gpu = match Gpu::open(platform.device.ordinal) {
            Ok(g) => g,
            Err(e) => return fall_back(model, instances, e.to_string(), cpu),
        };
        let name = model.entry.name.clone();
        let version = model.entry.version;
        let mut note = None;
        let plan = match want {
            Wanted::TensorRtPlan => {
                match std::fs::read(&model.entry.model_path) {
                    Ok(bytes) => match SharedPlan::deserialize(&gpu, &bytes) {
                        Ok(p) => p,
                        Err(e) => {
                            return fall_back(
                                model,
                                instances,
                                format!(
                                    "the repository's plan {} does not load on this box ({e}); a repository plan cannot be rebuilt, ship model.onnx beside it",
                                    model.entry.model_path.display()
                                ),
                                cpu,
                            )
                        }
                    },
                    Err(e) => return fall_back(model, instances, format!("cannot read the plan: {e}"), cpu),
                }
            }
            _ => {
                if let Some(p) = set.trt.plans.get(&(name.clone(), version)) {
                    Arc::clone(p)
                } else {
                    let state = set.state(model);
                    let bytes = match state.lookup {
                        Lookup::Fresh { plan, .. } => Some(plan),
                        other if rebuild => {
                            log::warn!(target: "gsinfer::engine", "model {name}: engine {other}; rebuilding it from {}", model.entry.model_path.display());
                            match build_for_run(set, model, &other, progress) {
                                Ok((plan, unsaved)) => {
                                    note = unsaved;
                                    Some(plan)
                                }
                                Err(e) => return fall_back(model, instances, format!("the engine rebuild failed: {e}"), cpu),
                            }
                        }
                        other => {
                            return fall_back(
                                model,
                                instances,
                                format!("engine {other} and tensorrt.rebuild_at_start is off; run `gsinfer engine build`"),
                                cpu,
                            )
                        }
                    };
                    let bytes = bytes.expect("set above");
                    match SharedPlan::deserialize(&gpu, &bytes) {
                        Ok(p) => p,
                        Err(e) if rebuild => {
                            // A plan whose key matched but that TensorRT
                            // refuses (a driver change the key cannot see):
                            // rebuild once.
                            let why = Lookup::Stale { why: format!("TensorRT refused it: {e}") };
                            let plan = match build_for_run(set, model, &why, progress) {
                                Ok((plan, unsaved)) => {
                                    note = unsaved;
                                    plan
                                }
                                Err(e) => return fall_back(model, instances, format!("the engine rebuild failed: {e}"), cpu),
                            };
                            SharedPlan::deserialize(&gpu, &plan)
                                .map_err(|e| ModelError::Mismatch { model: name.clone(), message: e.to_string() })?
                        }
                        Err(e) => return fall_back(model, instances, e.to_string(), cpu),
                    }
                }
            }
        };
        set.trt
            .plans
            .insert((name.clone(), version), Arc::clone(&plan));
        let outputs = model.output_names();
        let mut engines: Vec<Box<dyn Engine>> = Vec::new();
        for _ in 0..instances {
            let e = TrtEngine::new(
                Arc::clone(&plan),
                &model.input,
                &outputs,
                &model.buckets,
                model.entry.config.cuda_graphs,
                platform.device.name.clone(),
            )
            .map_err(|e| ModelError::Mismatch {
                model: name.clone(),
                message: e.to_string(),
            })?;
            engines.push(Box::new(e));
        }
        Ok(Opened {
            engines,
            kind: EngineKind::TensorRt,
            detail: format!("tensorrt on {}", platform.device.name),
            device: platform.device.name.clone(),
            note,
        })
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
