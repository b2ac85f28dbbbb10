//! Building a plan on the box from the repository's ONNX file with the
//! TensorRT builder and ONNX parser: explicit batch, one optimisation
//! profile spanning the batcher's buckets (tuned for the largest), FP16
//! where config.pbtxt asks (`precision_mode: "FP16"`), the workspace limit
//! it gives, and progress reported through `IProgressMonitor`.
//!
//! The timing cache is the one part of the issue this build leaves out:
//! trtx 0.9 generates bindings for `IBuilderConfig::createTimingCache` and
//! `setTimingCache` but not for `ITimingCache::serialize`, and gives no
//! access to the raw builder config, so a cache can neither be loaded nor
//! saved through it. [`crate::engine::cache::EngineCache::timing_cache_path`]
//! names where it will live once trtx exposes it.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use trtx::builder::network_flags;
use trtx::{Builder, MemoryPoolType, OnnxParser, OptProfileSelector};

use super::TrtError;
use crate::engine::cache::EngineKey;

/// Receives the builder's progress.
pub trait BuildProgress: Send + Sync {
    /// A phase started (`name`, `steps` steps; nested under `parent`).
    fn phase(&self, name: &str, parent: Option<&str>, steps: i32);
    /// Overall fraction done, 0 to 1, after a step of the outermost phase.
    fn fraction(&self, done: f32);
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The ONNX file.
    pub onnx: PathBuf,
    /// The key the plan is built for (profiles and precision are taken from it).
    pub key: EngineKey,
    /// Builder workspace memory-pool limit in bytes, if config.pbtxt gives one.
    pub workspace_bytes: Option<u64>,
    /// Major version of the loaded TensorRT library (FP16 is a builder
    /// flag up to 10, a property of the ONNX file's types from 11).
    pub tensorrt_major: u32,
}

/// `BuilderFlag::kFP16` of TensorRT 10 (`NvInfer.h`: `kFP16 = 0`), set as
/// a bit because the flag is gone from TensorRT 11's headers, which trtx
/// vendors.
const TRT10_FP16_BIT: u32 = 1 << 0;

/// Adapts [`BuildProgress`] to TensorRT's `IProgressMonitor`, turning the
/// outermost phase's steps into a fraction.
struct Monitor {
    sink: Arc<dyn BuildProgress>,
    top: Mutex<Option<(String, i32)>>,
}

impl trtx::interfaces::MonitorProgress for Monitor {
    fn phase_start(&self, phase_name: &str, parent_phase: Option<&str>, num_steps: i32) {
        if parent_phase.is_none() {
            *self.top.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((phase_name.to_string(), num_steps.max(1)));
        }
        self.sink.phase(phase_name, parent_phase, num_steps);
    }

    fn step_complete(&self, phase_name: &str, step: i32) -> ControlFlow<()> {
        if let Some((top, steps)) = &*self.top.lock().unwrap_or_else(|p| p.into_inner()) {
            if top == phase_name {
                self.sink
                    .fraction(((step + 1) as f32 / *steps as f32).min(1.0));
            }
        }
        ControlFlow::Continue(())
    }

    fn phase_finish(&self, _phase_name: &str) {}
}

/// Builds the serialized plan for `request`. TensorRT must have been
/// loaded by [`super::probe`] with the parser, and the CUDA device made
/// current on this thread.
///
/// # Errors
/// [`TrtError::TensorRt`] naming the step that failed (parsing the ONNX
/// file, an invalid profile, a failed build; TensorRT's own messages are in
/// the log).
pub fn build_plan(
    request: &BuildRequest,
    progress: Arc<dyn BuildProgress>,
) -> Result<Vec<u8>, TrtError> {
    let logger = super::logger()?;
    let mut builder = Builder::new(logger).map_err(|e| TrtError::trt("creating the builder", e))?;
    let network = builder
        .create_network(network_flags::EXPLICIT_BATCH)
        .map_err(|e| TrtError::trt("creating the network", e))?;
    let mut parser = OnnxParser::new(network, logger)
        .map_err(|e| TrtError::trt("creating the ONNX parser", e))?;
    let onnx = std::fs::read(&request.onnx)
        .map_err(|e| TrtError::Model(format!("cannot read {}: {e}", request.onnx.display())))?;
    parser
        .parse(&onnx)
        .map_err(|e| TrtError::trt(format!("parsing {}", request.onnx.display()), e))?;

    let mut config = builder
        .create_config()
        .map_err(|e| TrtError::trt("creating the builder config", e))?;
    if let Some(bytes) = request.workspace_bytes {
        config.set_memory_pool_limit(MemoryPoolType::kWORKSPACE, bytes as usize);
    }
    if request.key.fp16 {
        if request.tensorrt_major >= 11 {
            return Err(TrtError::Model(format!(
                "precision_mode FP16 is a TensorRT 10 builder flag; TensorRT {} builds strongly typed networks: export {} with FP16 weights and compute instead, and drop precision_mode",
                request.tensorrt_major,
                request.onnx.display()
            )));
        }
        config.set_flags(config.flags() | TRT10_FP16_BIT);
    }
    let mut profile = builder
        .creata_optimization_profile()
        .map_err(|e| TrtError::trt("creating the optimisation profile", e))?;
    for p in &request.key.profiles {
        for (select, shape) in [
            (OptProfileSelector::kMIN, &p.min),
            (OptProfileSelector::kOPT, &p.opt),
            (OptProfileSelector::kMAX, &p.max),
        ] {
            profile
                .set_dimensions(&p.input, select, &trtx::trtx_sys::Dims64::from_slice(shape))
                .map_err(|e| {
                    TrtError::trt(
                        format!("setting profile shape {shape:?} of input {}", p.input),
                        e,
                    )
                })?;
        }
    }
    config
        .add_optimization_profile(&mut profile)
        .map_err(|e| TrtError::trt("adding the optimisation profile", e))?;
    config
        .set_progress_monitor(Box::new(Monitor {
            sink: progress,
            top: Mutex::new(None),
        }))
        .map_err(|e| TrtError::trt("attaching the progress monitor", e))?;
    let plan = builder
        .build_serialized_network(parser.network_mut(), &mut config)
        .map_err(|e| TrtError::trt("building the engine (see the TensorRT log lines above)", e))?;
    Ok(plan.as_ref().to_vec())
}
