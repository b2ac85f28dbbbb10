//! ONNX Runtime on the CPU (cargo feature `onnxruntime`, on by default).
//!
//! Why: on the recurrent models gsinfer ships, ONNX Runtime's fused LSTM
//! kernel is several times faster than tract's scan (BENCHMARKS.md), and a
//! user comparing gsinfer's CPU path with plain onnxruntime should not find
//! it slower. tract stays the default because it needs nothing installed.
//!
//! Through the `ort` crate with `load-dynamic`: nothing is downloaded or
//! linked at build time; `libonnxruntime.so` (ONNX Runtime 1.17 or newer) is
//! opened once per process, the first time an engine is opened, from
//! [`EngineSettings::onnxruntime_library`], else `$ORT_DYLIB_PATH`, else the
//! newest one bundled beside the executable ([`bundled_dir`]:
//! `<exe>/../lib/gsinfer/`), else the dynamic loader's search and the usual
//! library folders. One session per
//! engine instance (graph optimisation level "all", sequential execution,
//! `threads` intra-op threads); the output tensors of each batch size are
//! allocated once and reused by every later run of that size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::{Tensor, TensorRef, ValueType};

use super::{check_inputs, Engine, EngineError, EngineSettings, TensorSpec};

/// The hint every "library not found" error ends with.
pub const LIBRARY_HINT: &str =
    "put libonnxruntime.so in <gsinfer's folder>/../lib/gsinfer/ (tools/fetch_onnxruntime.sh does), \
     or set engine.onnxruntime_library or ORT_DYLIB_PATH to one \
     (pip install onnxruntime ships one in site-packages/onnxruntime/capi/)";

/// Names and folders tried, in order, when neither the setting nor
/// `$ORT_DYLIB_PATH` names the library. A bare name goes to the dynamic
/// loader (next to the executable first, then `LD_LIBRARY_PATH` and
/// `/etc/ld.so.cache`).
const SEARCH: [&str; 5] = [
    "libonnxruntime.so",
    "libonnxruntime.so.1",
    "/usr/local/lib/libonnxruntime.so",
    "/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
    "/usr/lib/libonnxruntime.so",
];

/// The process-wide ONNX Runtime: the library and its one environment.
struct Runtime {
    env: Environment,
    library: PathBuf,
    version: String,
    /// Whether the sessions share one CPU arena registered on `env`
    /// ([`share_cpu_arena`]); else each session runs without an arena.
    shared_arena: bool,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Held while a library is being opened, so that only one is.
static OPENING: Mutex<()> = Mutex::new(());

/// The folder beside the executable where a bundled library is looked for
/// first: `<exe>/../lib/gsinfer/` (`/usr/lib/gsinfer/` for
/// `/usr/bin/gsinfer`; `target/lib/gsinfer/` for `target/release/gsinfer`,
/// where `scripts/demo.sh` puts the one it fetches with
/// `tools/fetch_onnxruntime.sh`).
pub fn bundled_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("lib").join("gsinfer"))
}

/// The newest `libonnxruntime.so*` in `dir` (by the version in its name,
/// e.g. `libonnxruntime.so.1.22.0` before `libonnxruntime.so.1.9.0`), if any.
pub fn newest_in(dir: &Path) -> Option<PathBuf> {
    let version = |p: &Path| -> Vec<u64> {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.trim_start_matches("libonnxruntime.so")
            .split('.')
            .filter_map(|part| part.parse().ok())
            .collect()
    };
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .max_by_key(|p| version(p))
}

/// The library candidates for `settings`, with where each came from.
fn candidates(settings: &EngineSettings) -> Vec<(PathBuf, &'static str)> {
    if let Some(lib) = &settings.onnxruntime_library {
        return vec![(lib.clone(), "engine.onnxruntime_library")];
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => vec![(PathBuf::from(p), "ORT_DYLIB_PATH")],
        _ => bundled_dir()
            .and_then(|d| newest_in(&d))
            .map(|p| (p, "bundled"))
            .into_iter()
            .chain(SEARCH.iter().map(|s| (PathBuf::from(s), "search")))
            .collect(),
    }
}

/// Opens the library and creates the environment, once per process: after
/// a success later calls get the same one whatever their settings; a
/// failure is not kept, so a later call with other settings may succeed
/// (`auto` tries the search before a pipeline names a library).
fn runtime(settings: &EngineSettings) -> Result<&'static Runtime, EngineError> {
    let _opening = OPENING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = open_runtime(settings).map_err(|reason| EngineError::Unavailable {
        engine: "onnxruntime",
        reason,
    })?;
    Ok(RUNTIME.get_or_init(|| rt))
}

fn open_runtime(settings: &EngineSettings) -> Result<Runtime, String> {
    let mut tried = Vec::new();
    for (path, origin) in candidates(settings) {
        let searched = matches!(origin, "search" | "bundled");
        if searched && path.is_absolute() && !path.exists() {
            continue;
        }
        match ort::init_from(&path) {
            Ok(builder) => {
                let env = builder
                    .with_name("gsinfer")
                    .with_telemetry(false)
                    .build()
                    .map_err(|e| {
                        format!("{} loaded but its environment failed: {e}", path.display())
                    })?;
                let version = library_version(&path).unwrap_or_else(|| build_version(ort::info()));
                let shared_arena = match share_cpu_arena(&env) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!(target: "gsinfer::engine", "onnxruntime: no shared CPU arena ({e}); each session runs without one");
                        false
                    }
                };
                return Ok(Runtime {
                    env,
                    library: path,
                    version,
                    shared_arena,
                });
            }
            // A bare name the loader does not know: try the next one.
            Err(ort::LoadDynamicError::Dlopen { .. }) if searched => {
                tried.push(path.display().to_string())
            }
            Err(e) => {
                return Err(format!(
                    "{origin} = {}: {e}; {LIBRARY_HINT}",
                    path.display()
                ))
            }
        }
    }
    Err(format!(
        "no libonnxruntime.so found (tried {}); {LIBRARY_HINT}",
        tried.join(", ")
    ))
}

/// Registers one CPU arena allocator on the environment, for every session
/// that asks for the environment's allocators (`session.use_env_allocators`,
/// ONNX Runtime's `CreateAndRegisterAllocator`, default arena settings).
///
/// Each session's own arena keeps the peak of its largest batch for the
/// session's lifetime: about 40 MiB per LSTM model after the warm-up at the
/// largest bucket, 40 GiB for a thousand per-channel models. One shared
/// arena holds the peak of the batches that run at once (at most
/// `engine.workers`), and keeps the arena's speed, which matters for the
/// Transformer (BENCHMARKS.md, "N models").
fn share_cpu_arena(env: &Environment) -> Result<(), String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| e.to_string())?;
    let api = ort::api();
    // SAFETY: `env` and `info` are live ONNX Runtime objects for the whole
    // call; a null arena configuration asks for the defaults; a returned
    // status is read once and released once.
    unsafe {
        let status =
            (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), std::ptr::null());
        if status.0.is_null() {
            return Ok(());
        }
        let message = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        Err(message)
    }
}

/// The library's own version string (`OrtApiBase::GetVersionString`), e.g. `"1.31.1"`.
fn library_version(path: &Path) -> Option<String> {
    // SAFETY: the same library ort has just loaded and checked; opening it
    // again only takes another reference, and GetVersionString returns a
    // static, NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<
            '_,
            unsafe extern "system" fn() -> *const ort::sys::OrtApiBase,
        > = lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let version = ((*base).GetVersionString)();
        (!version.is_null()).then(|| {
            std::ffi::CStr::from_ptr(version)
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// `"1.31.1"` out of ONNX Runtime's build info (`... git-branch=rel-1.31.1, ...`).
fn build_version(info: &str) -> String {
    info.split([',', ' '])
        .find_map(|part| part.strip_prefix("git-branch=rel-"))
        .unwrap_or("unknown version")
        .to_string()
}

/// An ONNX Runtime session for one ONNX model with one `f32` input.
pub struct OnnxRuntimeEngine {
    session: Session,
    /// Output names in the session (the names `run` selects by).
    session_outputs: Vec<String>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Per batch size: run options whose output tensors are allocated once.
    runs: HashMap<usize, RunOptions<HasSelectedOutputs>>,
    detail: String,
}

impl std::fmt::Debug for OnnxRuntimeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntimeEngine")
            .field("detail", &self.detail)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl OnnxRuntimeEngine {
    /// Opens a session on the ONNX model at `path`, whose single input is
    /// `input` (named, per-item dims without the batch dimension) and whose
    /// outputs are `outputs` (names as config.pbtxt gives them; per-item
    /// dims are read from the model).
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when no usable `libonnxruntime.so` is
    /// found (the message says how to point at one); [`EngineError::Load`]
    /// naming the file when ONNX Runtime cannot load the model or the model
    /// has more than one input or a non-batch dimension that is not fixed.
    pub fn load(
        path: &Path,
        input: &TensorSpec,
        outputs: &[String],
        settings: &EngineSettings,
    ) -> Result<Self, EngineError> {
        let rt = runtime(settings)?;
        let fail = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        let threads = settings.threads.max(1);
        let step = |e: ort::Error<SessionBuilder>| fail(format!("{e}"));
        let mut builder = Session::builder(&rt.env)
            .map_err(|e| fail(format!("{e}")))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(step)?
            .with_intra_threads(threads)
            .map_err(step)?
            .with_inter_threads(1)
            .map_err(step)?
            .with_parallel_execution(false)
            .map_err(step)?
            // Spinning workers would take the cores the MQTT and scoring tasks need.
            .with_intra_op_spinning(false)
            .map_err(step)?;
        // No per-session arena: with one every session kept the peak of its
        // largest batch (the warm-up's) for its lifetime, about 40 MiB per
        // LSTM model, which made a thousand per-channel models need 40 GiB.
        // The sessions share the environment's arena instead
        // ([`share_cpu_arena`]), or, where it cannot be registered, run on
        // the process allocator without a memory pattern (which would
        // otherwise keep its own per-shape blocks).
        // Pre-packed weights are a second copy of the weights per session:
        // 63 MiB over a thousand fp32 LSTM models, and no measurable speed
        // on them (BENCHMARKS.md, "N models"). Integer kernels are another
        // matter: without packed weights the int8 LSTM of
        // tools/quantize_models.py runs at 854 instead of 1 505 windows/s
        // (batch 1, one thread), slower than fp32.
        builder = builder
            .with_prepacking(uses_integer_kernels(path))
            .map_err(step)?;
        builder = if rt.shared_arena {
            builder.with_env_allocators().map_err(step)?
        } else {
            builder
                .with_execution_providers([ort::ep::CPU::default()
                    .with_arena_allocator(false)
                    .build()])
                .map_err(step)?
                .with_memory_pattern(false)
                .map_err(step)?
        };
        let session = builder
            .commit_from_file(path)
            .map_err(|e| fail(format!("{e}")))?;
        if session.inputs().len() != 1 {
            return Err(fail(format!(
                "has {} inputs; gsinfer feeds exactly one window input",
                session.inputs().len()
            )));
        }
        let mut specs = Vec::new();
        let mut session_outputs = Vec::new();
        for (ix, outlet) in session.outputs().iter().enumerate() {
            let shape: Vec<i64> = match outlet.dtype() {
                ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
                other => return Err(fail(format!("output {ix} is not a tensor ({other:?})"))),
            };
            let dims = shape
                .iter()
                .skip(1)
                .map(|d| usize::try_from(*d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    fail(format!(
                        "output {ix} has a dimension other than the batch that is not fixed ({shape:?})"
                    ))
                })?;
            let name = outputs
                .get(ix)
                .cloned()
                .unwrap_or_else(|| outlet.name().to_string());
            specs.push(TensorSpec { name, dims });
            session_outputs.push(outlet.name().to_string());
        }
        let detail = format!(
            "onnxruntime {} ({}), {threads} thread{}",
            rt.version,
            rt.library.display(),
            if threads == 1 { "" } else { "s" }
        );
        Ok(Self {
            session,
            session_outputs,
            inputs: vec![input.clone()],
            outputs: specs,
            runs: HashMap::new(),
            detail,
        })
    }

    /// The run options for batches of `batch`, with every output allocated
    /// once at `[batch, dims...]`.
    fn run_options(
        &mut self,
        batch: usize,
    ) -> Result<&RunOptions<HasSelectedOutputs>, EngineError> {
        if !self.runs.contains_key(&batch) {
            let mut selector = OutputSelector::no_default();
            for (name, spec) in self.session_outputs.iter().zip(&self.outputs) {
                let mut shape = vec![batch];
                shape.extend(&spec.dims);
                let tensor = Tensor::<f32>::new(&Allocator::default(), shape)
                    .map_err(|e| EngineError::Run(format!("cannot allocate output {name}: {e}")))?;
                selector = selector
                    .with(name.clone())
                    .preallocate(name.clone(), tensor);
            }
            let options = RunOptions::new()
                .map_err(|e| EngineError::Run(format!("{e}")))?
                .with_outputs(selector);
            self.runs.insert(batch, options);
        }
        Ok(&self.runs[&batch])
    }
}

impl Engine for OnnxRuntimeEngine {
    fn kind(&self) -> super::EngineKind {
        super::EngineKind::Onnxruntime
    }

    fn detail(&self) -> String {
        self.detail.clone()
    }

    fn pads_to_bucket(&self) -> bool {
        false
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&mut self, batch: usize, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        check_inputs(&self.inputs, batch, inputs)?;
        let run = |e: ort::Error| EngineError::Run(format!("{e}"));
        self.run_options(batch)?;
        let options = &self.runs[&batch];
        let mut shape = vec![batch];
        shape.extend(&self.inputs[0].dims);
        // A view of the caller's buffer: the input is not copied.
        let input = TensorRef::from_array_view((shape, inputs[0])).map_err(run)?;
        let outputs = self
            .session
            .run_with_options(ort::inputs![input], options)
            .map_err(run)?;
        self.session_outputs
            .iter()
            .map(|name| {
                let value = outputs
                    .get(name.as_str())
                    .ok_or_else(|| EngineError::Run(format!("no output {name}")))?;
                let (_, data) = value.try_extract_tensor::<f32>().map_err(run)?;
                Ok(data.to_vec())
            })
            .collect()
    }
}

/// Operators of quantized ONNX graphs (onnxruntime's contrib set and the
/// standard integer ones) whose kernels run on pre-packed int8 weights.
const INTEGER_OPERATORS: [&str; 9] = [
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
];

/// Whether the ONNX model at `path` has a node of [`INTEGER_OPERATORS`] in
/// its main graph (subgraphs are not searched). `false` when the file cannot
/// be read or decoded: the session's own load then reports why.
fn uses_integer_kernels(path: &Path) -> bool {
    use prost::Message;
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok(model) = tract_onnx::pb::ModelProto::decode(bytes.as_slice()) else {
        return false;
    };
    model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .any(|n| INTEGER_OPERATORS.contains(&n.op_type.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_bundled_library_is_found_by_its_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_in(dir.path()), None);
        for name in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.22.0",
            "LICENSE",
            "libother.so",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            newest_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.22.0"))
        );
        assert!(bundled_dir().unwrap().ends_with("lib/gsinfer"));
    }

    #[test]
    fn integer_kernels_are_found_in_the_graph() {
        use prost::Message;
        use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, ops: &[&str]| {
            let model = ModelProto {
                graph: Some(GraphProto {
                    node: ops
                        .iter()
                        .map(|op| NodeProto {
                            op_type: op.to_string(),
                            ..NodeProto::default()
                        })
                        .collect(),
                    ..GraphProto::default()
                }),
                ..ModelProto::default()
            };
            let path = dir.path().join(name);
            std::fs::write(&path, model.encode_to_vec()).unwrap();
            path
        };
        assert!(uses_integer_kernels(&write(
            "q.onnx",
            &["Transpose", "DynamicQuantizeLSTM"]
        )));
        assert!(!uses_integer_kernels(&write(
            "f.onnx",
            &["Transpose", "LSTM", "Gemm"]
        )));
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository/lstm_A-2/1/model.onnx");
        assert!(!uses_integer_kernels(&shipped));
        assert!(!uses_integer_kernels(&dir.path().join("missing.onnx")));
        std::fs::write(dir.path().join("junk.onnx"), b"not protobuf \xff\xff").unwrap();
        assert!(!uses_integer_kernels(&dir.path().join("junk.onnx")));
    }

    #[test]
    fn version_is_read_from_the_build_info() {
        assert_eq!(
            build_version(
                "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release"
            ),
            "1.31.1"
        );
        assert_eq!(build_version("something else"), "unknown version");
    }

    #[test]
    fn explicit_library_is_the_only_candidate() {
        let settings = EngineSettings {
            onnxruntime_library: Some("/opt/ort/libonnxruntime.so".into()),
            threads: 1,
            ..EngineSettings::default()
        };
        assert_eq!(
            candidates(&settings),
            vec![(
                PathBuf::from("/opt/ort/libonnxruntime.so"),
                "engine.onnxruntime_library"
            )]
        );
    }
}
