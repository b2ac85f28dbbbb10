//! Running a plan: one [`TrtEngine`] per engine instance (Triton's
//! `instance_group` count), each with its own CUDA stream and one
//! execution context per batch bucket, its shapes and tensor addresses
//! bound once; with `optimization { cuda { graphs: true } }` one CUDA
//! graph per bucket captured at load.
//!
//! A batch of `b` items runs on the bucket of size `b` (the batcher only
//! dispatches bucket sizes): the rows are copied into the bucket's pinned
//! input, then one graph launch (or copy, `enqueueV3`, copies) and one
//! stream synchronisation, then the rows are copied out of the pinned
//! outputs. I/O is bound by tensor name with `setInputShape` and
//! `setTensorAddress` (TensorRT Developer Guide, "Performing Inference").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaGraph, CudaStream};
use trtx::{CudaEngine, ExecutionContext, Runtime, TensorIOMode};

use super::cuda::{self, Gpu, Staging};
use super::TrtError;
use crate::engine::{check_inputs, Engine, EngineError, TensorSpec};

/// A deserialized plan, shared by the instances of one model (its weights
/// live once on the device; each instance makes its own contexts).
pub struct SharedPlan {
    // Field order is drop order: the engine before the runtime that made it.
    engine: Mutex<CudaEngine<'static>>,
    _runtime: Mutex<Runtime<'static>>,
    gpu: Gpu,
}

// SAFETY: TensorRT's ICudaEngine and IRuntime may be used from any thread;
// every use goes through the mutexes.
unsafe impl Send for SharedPlan {}
unsafe impl Sync for SharedPlan {}

impl std::fmt::Debug for SharedPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPlan").finish_non_exhaustive()
    }
}

impl SharedPlan {
    /// Deserializes `plan` on `gpu`.
    ///
    /// # Errors
    /// [`TrtError::TensorRt`] when TensorRT refuses the plan (built by
    /// another TensorRT version or for another GPU, or damaged).
    pub fn deserialize(gpu: &Gpu, plan: &[u8]) -> Result<Arc<Self>, TrtError> {
        gpu.bind()?;
        let logger = super::logger()?;
        let mut runtime =
            Runtime::new(logger).map_err(|e| TrtError::trt("creating the runtime", e))?;
        let engine = runtime.deserialize_cuda_engine(plan).map_err(|e| {
            TrtError::trt(
                "deserializing the plan (see the TensorRT log lines above)",
                e,
            )
        })?;
        Ok(Arc::new(Self {
            engine: Mutex::new(engine),
            _runtime: Mutex::new(runtime),
            gpu: gpu.clone(),
        }))
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, CudaEngine<'static>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan's I/O tensors: `(name, is_input, shape with -1 for dynamic)`.
    ///
    /// # Errors
    /// [`TrtError::TensorRt`] from the queries.
    pub fn io(&self) -> Result<Vec<(String, bool, Vec<i64>)>, TrtError> {
        let engine = self.engine();
        let n = engine
            .nb_io_tensors()
            .map_err(|e| TrtError::trt("listing I/O tensors", e))?;
        let mut out = Vec::new();
        for i in 0..n {
            let name = engine
                .io_tensor_name(i)
                .map_err(|e| TrtError::trt("reading a tensor name", e))?;
            let mode = engine
                .tensor_io_mode(&name)
                .map_err(|e| TrtError::trt("reading a tensor's I/O mode", e))?;
            let shape = engine
                .tensor_shape(&name)
                .map_err(|e| TrtError::trt("reading a tensor's shape", e))?;
            let dtype = engine
                .tensor_data_type(&name)
                .map_err(|e| TrtError::trt("reading a tensor's type", e))?;
            if dtype != trtx::DataType::kFLOAT {
                return Err(TrtError::Model(format!(
                    "tensor {name} is {dtype:?}; gsinfer feeds and reads FP32 tensors (FP16 inside the engine is fine: build with precision_mode FP16, keep FP32 I/O)"
                )));
            }
            out.push((name, mode == TensorIOMode::kINPUT, shape));
        }
        Ok(out)
    }

    /// Layer and engine information from TensorRT's engine inspector, as
    /// JSON (detailed when the plan was built with detailed profiling
    /// verbosity, layer names otherwise).
    ///
    /// # Errors
    /// [`TrtError::TensorRt`] from the inspector.
    pub fn inspect(&self) -> Result<String, TrtError> {
        let engine = self.engine();
        let inspector = engine
            .create_engine_inspector()
            .map_err(|e| TrtError::trt("creating the engine inspector", e))?;
        inspector
            .engine_information(trtx::LayerInformationFormat::kJSON)
            .map_err(|e| TrtError::trt("reading the engine information", e))
    }
}

/// One execution context bound to one bucket's buffers.
struct Bucket {
    // Drop order: graph, then context, then buffers.
    graph: Option<CudaGraph>,
    context: ExecutionContext<'static>,
    staging: Staging,
}

/// A TensorRT engine instance (see the module docs).
pub struct TrtEngine {
    buckets: HashMap<usize, Bucket>,
    stream: Arc<CudaStream>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    device: String,
    // Last: the contexts above must go before the plan.
    plan: Arc<SharedPlan>,
}

// SAFETY: an instance is used by one engine thread at a time (the Engine
// contract); its contexts, graphs and buffers are only touched through
// `&mut self`, and the CUDA context is made current on whichever thread
// runs it.
unsafe impl Send for TrtEngine {}

impl std::fmt::Debug for TrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut b: Vec<_> = self.buckets.keys().collect();
        b.sort();
        f.debug_struct("TrtEngine")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("buckets", &b)
            .field(
                "cuda_graphs",
                &self.buckets.values().any(|b| b.graph.is_some()),
            )
            .finish()
    }
}

impl TrtEngine {
    /// Makes an instance of `plan` for the batcher's `buckets`, feeding
    /// `input` and reading `outputs` (names from config.pbtxt; per-item
    /// dims are read from the plan), with CUDA graphs when `graphs`.
    ///
    /// # Errors
    /// [`TrtError::Model`] when names or shapes do not match the plan or a
    /// bucket lies outside its optimisation profile (the fix: rebuild the
    /// plan with `gsinfer engine build --force`, or change the buckets);
    /// [`TrtError::Cuda`] or [`TrtError::TensorRt`] from the setup.
    pub fn new(
        plan: Arc<SharedPlan>,
        input: &TensorSpec,
        outputs: &[String],
        buckets: &[usize],
        graphs: bool,
        device: String,
    ) -> Result<Self, TrtError> {
        let gpu = plan.gpu.clone();
        gpu.bind()?;
        let io = plan.io()?;
        let find = |name: &str, want_input: bool| {
            io.iter()
                .find(|(n, is_in, _)| n == name && *is_in == want_input)
                .map(|(_, _, shape)| shape.clone())
                .ok_or_else(|| {
                    let names: Vec<&str> = io.iter().map(|(n, _, _)| n.as_str()).collect();
                    TrtError::Model(format!(
                        "the plan has no {} tensor `{name}` (it has {names:?}); make config.pbtxt name the plan's tensors",
                        if want_input { "input" } else { "output" }
                    ))
                })
        };
        let in_shape = find(&input.name, true)?;
        let per_item: Vec<i64> = in_shape.iter().skip(1).copied().collect();
        let want: Vec<i64> = input.dims.iter().map(|d| *d as i64).collect();
        if per_item != want {
            return Err(TrtError::Model(format!(
                "input {} is {in_shape:?} in the plan, config.pbtxt says [batch, {want:?}]",
                input.name
            )));
        }
        let mut out_specs = Vec::new();
        for name in outputs {
            let shape = find(name, false)?;
            let dims: Vec<usize> = shape.iter().skip(1).map(|d| (*d).max(1) as usize).collect();
            if shape.iter().skip(1).any(|d| *d < 0) {
                return Err(TrtError::Model(format!(
                    "output {name} has dynamic dims {shape:?} beyond the batch; gsinfer needs fixed per-item output shapes"
                )));
            }
            out_specs.push(TensorSpec {
                name: name.clone(),
                dims,
            });
        }
        let in_len = input.item_len();
        let out_lens: Vec<usize> = out_specs.iter().map(TensorSpec::item_len).collect();
        let stream = gpu.stream()?;
        let mut map = HashMap::new();
        for &b in buckets {
            let staging = Staging::new(&gpu, b, in_len, &out_lens)?;
            let mut context = plan
                .engine()
                .create_execution_context()
                .map_err(|e| TrtError::trt("creating an execution context", e))?;
            let mut dims = vec![b as i64];
            dims.extend(&want);
            context
                .set_input_shape(&input.name, &trtx::trtx_sys::Dims64::from_slice(&dims))
                .map_err(|_| {
                    TrtError::Model(format!(
                        "bucket {b} is outside the plan's optimisation profile for input {}; rebuild the plan (`gsinfer engine build --force`) or drop the bucket from batch.buckets",
                        input.name
                    ))
                })?;
            // SAFETY: the buffers live in `staging`, which the Bucket keeps
            // for as long as the context that points at them.
            unsafe {
                context
                    .set_tensor_address(&input.name, staging.dev_in.address())
                    .map_err(|e| TrtError::trt("binding the input", e))?;
                for (spec, buf) in out_specs.iter().zip(&staging.dev_out) {
                    context
                        .set_tensor_address(&spec.name, buf.address())
                        .map_err(|e| TrtError::trt("binding an output", e))?;
                }
            }
            let mut bucket = Bucket {
                graph: None,
                context,
                staging,
            };
            // One plain run first: TensorRT finishes deferred setup on the
            // first enqueue, which must not land inside a capture.
            run_once(&mut bucket, &stream)?;
            cuda::sync(&stream)?;
            if graphs {
                let Bucket {
                    context, staging, ..
                } = &mut bucket;
                let captured = cuda::capture(&stream, || -> Result<(), TrtError> {
                    staging.upload(&stream)?;
                    // SAFETY: addresses bound above; the stream is ours.
                    unsafe { context.enqueue_v3(stream.cu_stream() as *mut _) }
                        .map_err(|e| TrtError::trt("enqueueV3 under capture", e))?;
                    staging.download(&stream)?;
                    Ok(())
                })??;
                bucket.graph = Some(captured);
            }
            map.insert(b, bucket);
        }
        Ok(Self {
            buckets: map,
            stream,
            inputs: vec![input.clone()],
            outputs: out_specs,
            device,
            plan,
        })
    }

    /// The GPU's name, for the status page.
    pub fn device(&self) -> &str {
        &self.device
    }
}

/// Copy in, `enqueueV3`, copy out, all on `stream` (no synchronisation).
fn run_once(bucket: &mut Bucket, stream: &Arc<CudaStream>) -> Result<(), TrtError> {
    bucket.staging.upload(stream)?;
    // SAFETY: tensor addresses point into `bucket.staging`.
    unsafe { bucket.context.enqueue_v3(stream.cu_stream() as *mut _) }
        .map_err(|e| TrtError::trt("enqueueV3", e))?;
    bucket.staging.download(stream)?;
    Ok(())
}

impl Engine for TrtEngine {
    fn kind(&self) -> crate::engine::EngineKind {
        crate::engine::EngineKind::TensorRt
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&mut self, batch: usize, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        check_inputs(&self.inputs, batch, inputs)?;
        let run = |e: TrtError| EngineError::Run(e.to_string());
        self.plan.gpu.bind().map_err(|e| run(e.into()))?;
        // The batcher dispatches bucket sizes; anything else (gsinfer
        // bench, KServe with an odd batch) is padded to the next bucket.
        let size = self
            .buckets
            .keys()
            .copied()
            .filter(|b| *b >= batch)
            .min()
            .ok_or_else(|| {
                EngineError::Run(format!(
                    "batch {batch} exceeds the largest bucket {}",
                    self.buckets.keys().max().copied().unwrap_or(0)
                ))
            })?;
        let bucket = self.buckets.get_mut(&size).expect("bucket chosen above");
        let host_in = bucket.staging.host_in.as_mut_slice();
        host_in[..inputs[0].len()].copy_from_slice(inputs[0]);
        host_in[inputs[0].len()..].fill(0.0);
        match &bucket.graph {
            Some(graph) => graph
                .launch()
                .map_err(|e| EngineError::Run(format!("launching the CUDA graph: {e}")))?,
            None => run_once(bucket, &self.stream).map_err(run)?,
        }
        cuda::sync(&self.stream).map_err(|e| run(e.into()))?;
        Ok(self
            .outputs
            .iter()
            .zip(&bucket.staging.host_out)
            .map(|(spec, host)| host.as_slice()[..batch * spec.item_len()].to_vec())
            .collect())
    }
}
