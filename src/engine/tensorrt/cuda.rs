//! The CUDA side of the TensorRT engine, on `cudarc` (driver API, loaded
//! at run time): the device, one stream per engine instance, page-locked
//! (pinned) host staging buffers so that copies are asynchronous, device
//! buffers, and CUDA graphs.
//!
//! One [`Staging`] per batch bucket holds everything a batch of that size
//! touches, allocated once: pinned input, device input, device outputs,
//! pinned outputs. Because the addresses never change, the whole sequence
//! (host → device copy, the engine's kernels, device → host copies) can be
//! captured once per bucket in a CUDA graph and replayed with one launch
//! (CUDA Programming Guide, "CUDA Graphs"; TensorRT Developer Guide,
//! "CUDA Graphs": capture `enqueueV3` after one warm-up enqueue).
//!
//! The buffers are raw allocations of `cudarc::driver::result` wrapped in
//! RAII types here rather than cudarc's tracked slices: the tracked slices
//! record events on every use, which is what a graph capture must not see.
//! Everything that runs on a stream of a [`Gpu`] is ordered by that stream.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaStream, DriverError};

/// Errors of the CUDA layer, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("cuda: {what}: {detail}")]
pub struct CudaError {
    /// What was being done, e.g. `"allocating 4 MiB of pinned memory"`.
    pub what: String,
    /// The driver's error, or why the driver is unusable.
    pub detail: String,
}

/// Adds what was being done to a driver error.
pub(crate) trait Context<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, CudaError>;
}

impl<T> Context<T> for Result<T, DriverError> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, CudaError> {
        self.map_err(|source| CudaError {
            what: what(),
            detail: source.to_string(),
        })
    }
}

/// The driver library's name, as the NVIDIA driver installs it.
const LIBCUDA: &str = "libcuda.so.1";

/// The device an engine runs on.
#[derive(Debug, Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
}

/// What the driver says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (u32, u32),
    /// Total memory in bytes.
    pub total_memory: usize,
    /// CUDA driver version, e.g. `12040` for 12.4.
    pub driver_version: i32,
}

impl Gpu {
    /// Opens device `ordinal` (its primary context). Loads libcuda at run
    /// time.
    ///
    /// # Errors
    /// [`CudaError`] when libcuda is missing (cudarc panics inside its
    /// loader when the library is absent; that panic is caught and turned
    /// into an error), no device is there, or the context cannot be made.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        // cudarc panics when it cannot load libcuda; ask the loader first
        // so that a box without the driver gets an error, not a panic.
        // SAFETY: loading the driver library runs only its initialisers.
        if let Err(e) = unsafe { libloading::Library::new(LIBCUDA) } {
            return Err(CudaError {
                what: format!("opening CUDA device {ordinal}"),
                detail: format!("{LIBCUDA} not found ({e}): no NVIDIA driver on this machine"),
            });
        }
        let ctx = CudaContext::new(ordinal)
            .doing(|| format!("opening CUDA device {ordinal} (is an NVIDIA GPU there?)"))?;
        Ok(Self { ctx })
    }

    /// The driver's description of the device.
    ///
    /// # Errors
    /// [`CudaError`] from the queries.
    pub fn info(&self) -> Result<DeviceInfo, CudaError> {
        let name = self.ctx.name().doing(|| "reading the device name".into())?;
        let (major, minor) = self
            .ctx
            .compute_capability()
            .doing(|| "reading the compute capability".into())?;
        let total_memory = self
            .ctx
            .total_mem()
            .doing(|| "reading the device memory size".into())?;
        let mut driver_version = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .doing(|| "reading the driver version".into())?;
        Ok(DeviceInfo {
            ordinal: self.ctx.ordinal(),
            name,
            compute_capability: (major as u32, minor as u32),
            total_memory,
            driver_version,
        })
    }

    /// Makes the device's context current on the calling thread (engine
    /// threads call this before their first batch).
    ///
    /// # Errors
    /// [`CudaError`] from the driver.
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .doing(|| "making the CUDA context current".into())
    }

    /// A new stream on the device.
    ///
    /// # Errors
    /// [`CudaError`] from the driver.
    pub fn stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        self.ctx
            .new_stream()
            .doing(|| "creating a CUDA stream".into())
    }
}

/// Page-locked host memory of `len` `f32`s: what the DMA engine copies from
/// and to without staging, so `cuMemcpyAsync` is really asynchronous.
#[derive(Debug)]
pub struct PinnedBuffer {
    ptr: *mut f32,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value; the raw
// pointer is not shared outside it.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `len` `f32`s of pinned host memory, zeroed. `write_combined`
    /// suits buffers the host only writes (inputs); host-read buffers
    /// (outputs) must not be write-combined, which makes CPU reads slow.
    ///
    /// # Errors
    /// [`CudaError`] from `cuMemHostAlloc`.
    pub fn new(gpu: &Gpu, len: usize, write_combined: bool) -> Result<Self, CudaError> {
        gpu.bind()?;
        let bytes = len.max(1) * std::mem::size_of::<f32>();
        let flags = if write_combined {
            sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        let ptr = unsafe { result::malloc_host(bytes, flags) }
            .doing(|| format!("allocating {bytes} bytes of pinned host memory"))?
            as *mut f32;
        // SAFETY: freshly allocated, `len` f32s long.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Self {
            ptr,
            len,
            ctx: Arc::clone(&gpu.ctx),
        })
    }

    /// The buffer's contents. Only read after the stream that writes it
    /// was synchronized.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `ptr` holds `len` initialised f32s for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The buffer's contents, to fill. Only written while no copy from it
    /// is in flight.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemHostAlloc in `new`, freed once.
        let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
    }
}

/// Device memory of `len` `f32`s.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceBuffer {
    /// Allocates `len` `f32`s on the device.
    ///
    /// # Errors
    /// [`CudaError`] from `cuMemAlloc` (out of device memory, typically).
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self, CudaError> {
        gpu.bind()?;
        let bytes = len.max(1) * std::mem::size_of::<f32>();
        let ptr = unsafe { result::malloc_sync(bytes) }
            .doing(|| format!("allocating {bytes} bytes of device memory"))?;
        unsafe { result::memset_d8_sync(ptr, 0, bytes) }
            .doing(|| "clearing device memory".into())?;
        Ok(Self {
            ptr,
            len,
            ctx: Arc::clone(&gpu.ctx),
        })
    }

    /// The device address, for `setTensorAddress`.
    pub fn address(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }

    /// Length in `f32`s.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemAlloc in `new`, freed once.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Everything one batch bucket touches: pinned and device buffers for the
/// input and each output, allocated once (see the module docs).
#[derive(Debug)]
pub struct Staging {
    /// Batch size of the bucket.
    pub batch: usize,
    /// Pinned input, `batch × item_len` f32s, write-combined.
    pub host_in: PinnedBuffer,
    /// Device input.
    pub dev_in: DeviceBuffer,
    /// Device outputs, one per model output.
    pub dev_out: Vec<DeviceBuffer>,
    /// Pinned outputs.
    pub host_out: Vec<PinnedBuffer>,
}

impl Staging {
    /// Allocates the buffers of bucket `batch` for an input of `in_len`
    /// f32s per item and outputs of `out_lens` f32s per item.
    ///
    /// # Errors
    /// [`CudaError`] from an allocation.
    pub fn new(
        gpu: &Gpu,
        batch: usize,
        in_len: usize,
        out_lens: &[usize],
    ) -> Result<Self, CudaError> {
        let mut dev_out = Vec::new();
        let mut host_out = Vec::new();
        for len in out_lens {
            dev_out.push(DeviceBuffer::new(gpu, batch * len)?);
            host_out.push(PinnedBuffer::new(gpu, batch * len, false)?);
        }
        Ok(Self {
            batch,
            host_in: PinnedBuffer::new(gpu, batch * in_len, true)?,
            dev_in: DeviceBuffer::new(gpu, batch * in_len)?,
            dev_out,
            host_out,
        })
    }

    /// Enqueues the host → device copy of the input on `stream`.
    ///
    /// # Errors
    /// [`CudaError`] from the driver.
    pub fn upload(&self, stream: &CudaStream) -> Result<(), CudaError> {
        // SAFETY: both buffers are `host_in.len` f32s and live as long as self.
        unsafe {
            result::memcpy_htod_async(self.dev_in.ptr, self.host_in.as_slice(), stream.cu_stream())
        }
        .doing(|| "copying the input to the device".into())
    }

    /// Enqueues the device → host copies of every output on `stream`.
    ///
    /// # Errors
    /// [`CudaError`] from the driver.
    pub fn download(&mut self, stream: &CudaStream) -> Result<(), CudaError> {
        for (dev, host) in self.dev_out.iter().zip(&mut self.host_out) {
            // SAFETY: equal lengths, both alive as long as self; the host
            // side is only read after the stream is synchronized.
            unsafe { result::memcpy_dtoh_async(host.as_mut_slice(), dev.ptr, stream.cu_stream()) }
                .doing(|| "copying an output from the device".into())?;
        }
        Ok(())
    }
}

/// Captures what `enqueue` puts on `stream` into a CUDA graph (global
/// capture mode: no other thread may make unsafe CUDA calls meanwhile,
/// which the one-thread-per-instance design guarantees), instantiates it
/// and uploads it so the first launch is as fast as the rest.
///
/// # Errors
/// [`CudaError`] from the driver, or an `enqueue` error; the stream leaves
/// capture mode either way.
pub fn capture<E>(
    stream: &Arc<CudaStream>,
    enqueue: impl FnOnce() -> Result<(), E>,
) -> Result<Result<CudaGraph, E>, CudaError> {
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .doing(|| "beginning a CUDA graph capture".into())?;
    let enqueued = enqueue();
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .doing(|| "ending a CUDA graph capture".into())?;
    if let Err(e) = enqueued {
        return Ok(Err(e));
    }
    let graph = graph.ok_or_else(|| CudaError {
        what: "capturing a CUDA graph".into(),
        detail: "nothing was captured".into(),
    })?;
    graph.upload().doing(|| "uploading a CUDA graph".into())?;
    Ok(Ok(graph))
}

/// Waits until everything enqueued on `stream` has run.
///
/// # Errors
/// [`CudaError`] from the driver (a kernel fault surfaces here).
pub fn sync(stream: &CudaStream) -> Result<(), CudaError> {
    stream
        .synchronize()
        .doing(|| "waiting for the stream".into())
}

/// One bucket's result of [`staging_selftest`].
#[derive(Debug, Clone)]
pub struct StagingCheck {
    /// Batch bucket.
    pub batch: usize,
    /// Whether every output value came back as expected, through both paths.
    pub exact: bool,
    /// Mean time of copy in + stand-in kernel + copy out + sync, stream
    /// calls one by one, in µs.
    pub us_plain: f64,
    /// The same through one CUDA graph launch, in µs.
    pub us_graph: f64,
}

/// Exercises this module on a real GPU without TensorRT: for each bucket,
/// the staging buffers of an `in_len` → `out_len` per-item model, with a
/// device-to-device copy of the first `out_len` values of each row
/// standing in for the engine; the sequence is run stream call by stream
/// call and captured in a CUDA graph, both checked value for value against
/// the host and timed over `iterations` runs. What `gsinfer selftest
/// --cuda` prints.
///
/// # Errors
/// [`CudaError`] from any step.
pub fn staging_selftest(
    gpu: &Gpu,
    buckets: &[usize],
    in_len: usize,
    out_len: usize,
    iterations: usize,
) -> Result<Vec<StagingCheck>, CudaError> {
    assert!(
        out_len <= in_len,
        "the stand-in copies a prefix of each row"
    );
    gpu.bind()?;
    let stream = gpu.stream()?;
    let mut checks = Vec::new();
    for &b in buckets {
        let mut staging = Staging::new(gpu, b, in_len, &[out_len])?;
        let enqueue = |staging: &mut Staging| -> Result<(), CudaError> {
            staging.upload(&stream)?;
            for row in 0..b {
                let src = staging.dev_in.ptr + (row * in_len * 4) as u64;
                let dst = staging.dev_out[0].ptr + (row * out_len * 4) as u64;
                // SAFETY: both ranges lie inside their buffers.
                unsafe { result::memcpy_dtod_async(dst, src, out_len * 4, stream.cu_stream()) }
                    .doing(|| "copying on the device".into())?;
            }
            staging.download(&stream)
        };
        let fill = |staging: &mut Staging, salt: f32| {
            for (i, v) in staging.host_in.as_mut_slice().iter_mut().enumerate() {
                *v = (i as f32).mul_add(0.5, salt);
            }
        };
        let expected = |salt: f32| -> Vec<f32> {
            (0..b)
                .flat_map(|row| {
                    (0..out_len).map(move |j| ((row * in_len + j) as f32).mul_add(0.5, salt))
                })
                .collect()
        };
        let mut exact = true;
        // Stream calls one by one.
        fill(&mut staging, 1.0);
        enqueue(&mut staging)?;
        sync(&stream)?;
        exact &= staging.host_out[0].as_slice() == expected(1.0).as_slice();
        let t = std::time::Instant::now();
        for _ in 0..iterations {
            enqueue(&mut staging)?;
            sync(&stream)?;
        }
        let us_plain = t.elapsed().as_secs_f64() * 1e6 / iterations.max(1) as f64;
        // One graph: the same calls, captured once, replayed with new input.
        let graph = capture(&stream, || enqueue(&mut staging))??;
        fill(&mut staging, 2.0);
        graph.launch().doing(|| "launching the graph".into())?;
        sync(&stream)?;
        exact &= staging.host_out[0].as_slice() == expected(2.0).as_slice();
        let t = std::time::Instant::now();
        for _ in 0..iterations {
            graph.launch().doing(|| "launching the graph".into())?;
            sync(&stream)?;
        }
        let us_graph = t.elapsed().as_secs_f64() * 1e6 / iterations.max(1) as f64;
        checks.push(StagingCheck {
            batch: b,
            exact,
            us_plain,
            us_graph,
        });
    }
    Ok(checks)
}
