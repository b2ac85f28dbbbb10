//! The TensorRT engine (cargo feature `tensorrt`): plans deserialized and
//! run with the `trtx` crate (TensorRT's C++ API through autocxx), device
//! memory, pinned staging, streams and CUDA graphs with `cudarc`, and
//! plans rebuilt on the box from the repository's ONNX files.
//!
//! # Supported TensorRT versions
//!
//! `trtx` is built with its `enterprise` feature: it vendors the standard
//! TensorRT headers (version 11.4 in trtx 0.9) and opens `libnvinfer.so`
//! and `libnvonnxparser.so` at run time, so gsinfer builds where TensorRT
//! is not installed. TensorRT's C++ interfaces are versioned, and
//! `createInferBuilder`/`createInferRuntime` refuse a library whose major
//! version differs from the headers the binary was built with. So:
//!
//! * TensorRT 11.x boxes run the default build;
//! * TensorRT 10.x boxes (10.0 or newer: `enqueueV3`, `IProgressMonitor`
//!   and 64-bit dims are 10.0 APIs) build gsinfer against their own
//!   headers: `TENSORRT_INCLUDE_DIR=/usr/include/x86_64-linux-gnu cargo
//!   build --release --features tensorrt` (the Debian/Ubuntu packages'
//!   header folder; the tarball's `include/` otherwise);
//! * anything older is not supported.
//!
//! At start [`probe`] reads the library's own version
//! (`getInferLibVersion`) and refuses, with one line naming the fix, a
//! library whose major version differs from the headers'.
//!
//! # Honest note
//!
//! No machine available to this project can run TensorRT. The CUDA layer
//! ([`cuda`]) runs on the lent H100 through `gsinfer selftest --cuda`;
//! the TensorRT calls are compiled in CI and exercised on real boxes by
//! `gsinfer selftest`, which compares TensorRT with tract on the same
//! inputs.

pub mod build;
pub mod cuda;
pub mod plans;
pub mod runtime;

use std::sync::OnceLock;

use crate::engine::cache::DeviceKey;

pub use build::{build_plan, BuildProgress, BuildRequest};
pub use plans::TensorRtPlans;
pub use runtime::TrtEngine;

/// Errors of the TensorRT engine.
#[derive(Debug, thiserror::Error)]
pub enum TrtError {
    /// libnvinfer or libnvonnxparser could not be opened or is the wrong version.
    #[error("{0}")]
    Library(String),
    /// The CUDA layer failed.
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
    /// TensorRT refused something; what was being done.
    #[error("tensorrt: {what}: {detail}")]
    TensorRt {
        /// What was being done.
        what: String,
        /// TensorRT's message (see also the log, where TensorRT's own
        /// logger writes).
        detail: String,
    },
    /// The model does not fit what gsinfer runs (types, names, shapes).
    #[error("{0}")]
    Model(String),
}

impl TrtError {
    pub(crate) fn trt(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        TrtError::TensorRt {
            what: what.into(),
            detail: e.to_string(),
        }
    }
}

/// TensorRT's log messages go to gsinfer's log (target `gsinfer::tensorrt`).
struct LogToLog;

impl trtx::LogHandler for LogToLog {
    fn log(&self, severity: trtx::Severity, message: &str) {
        use trtx::Severity::*;
        match severity {
            InternalError | Error => log::error!(target: "gsinfer::tensorrt", "{message}"),
            Warning => log::warn!(target: "gsinfer::tensorrt", "{message}"),
            Info => log::debug!(target: "gsinfer::tensorrt", "{message}"),
            Verbose => log::trace!(target: "gsinfer::tensorrt", "{message}"),
        }
    }
}

/// The process's one TensorRT logger. TensorRT keeps the pointer for the
/// life of every builder, runtime and engine, so it lives as long as the
/// process.
struct SharedLogger(trtx::Logger);

// SAFETY: TensorRT requires ILogger implementations to be thread-safe; the
// bridge forwards to `LogToLog`, which is `Send + Sync`, and the wrapper
// is never mutated after creation.
unsafe impl Send for SharedLogger {}
unsafe impl Sync for SharedLogger {}

static LOGGER: OnceLock<Result<SharedLogger, String>> = OnceLock::new();

pub(crate) fn logger() -> Result<&'static trtx::Logger, TrtError> {
    LOGGER
        .get_or_init(|| {
            trtx::Logger::new(LogToLog)
                .map(SharedLogger)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|l| &l.0)
        .map_err(|e| TrtError::Library(format!("cannot create the TensorRT logger: {e}")))
}

/// What [`probe`] found: the library, the device, and the key part they
/// give every plan built here.
#[derive(Debug, Clone)]
pub struct Platform {
    /// TensorRT library version, e.g. `"10.3.0"`.
    pub tensorrt: String,
    /// The GPU.
    pub device: cuda::DeviceInfo,
}

impl Platform {
    /// The device part of an engine key.
    pub fn device_key(&self) -> DeviceKey {
        DeviceKey {
            tensorrt: self.tensorrt.clone(),
            gpu: self.device.name.clone(),
            compute_capability: self.device.compute_capability,
        }
    }
}

/// Settings of the TensorRT libraries (see [`crate::engine::EngineSettings`]).
#[derive(Debug, Clone, Default)]
pub struct Libraries {
    /// Path of `libnvinfer.so`; `None`: the dynamic loader's search
    /// (`LD_LIBRARY_PATH`, ld.so.conf).
    pub nvinfer: Option<std::path::PathBuf>,
    /// Path of `libnvonnxparser.so`; `None`: the loader's search.
    pub onnxparser: Option<std::path::PathBuf>,
}

/// The compiled-in headers' TensorRT major version.
pub fn header_major() -> u32 {
    // SAFETY: returns a constant compiled from NvInferVersion.h.
    unsafe { trtx::trtx_sys::get_tensorrt_major_version() }
}

/// Opens TensorRT and the GPU: loads libnvinfer (and libnvonnxparser when
/// `parser` is set), checks the library's major version against the
/// headers', and opens CUDA device `ordinal`.
///
/// # Errors
/// [`TrtError::Library`] naming the missing library or the version
/// mismatch and the fix; [`TrtError::Cuda`] when there is no usable GPU.
pub fn probe(libs: &Libraries, ordinal: usize, parser: bool) -> Result<Platform, TrtError> {
    let device = cuda::Gpu::open(ordinal)?.info()?;
    let name = libs
        .nvinfer
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "libnvinfer.so".into());
    trtx::dynamically_load_tensorrt(libs.nvinfer.as_ref().map(|p| p.as_os_str())).map_err(|e| {
        TrtError::Library(format!(
            "cannot open {name}: {e}; install TensorRT (libnvinfer) or set engine.tensorrt_library"
        ))
    })?;
    if parser {
        let pname = libs
            .onnxparser
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "libnvonnxparser.so".into());
        trtx::dynamically_load_tensorrt_onnxparser(libs.onnxparser.as_ref().map(|p| p.as_os_str()))
            .map_err(|e| {
                TrtError::Library(format!(
                    "cannot open {pname}: {e}; install TensorRT's ONNX parser (libnvonnxparser) or set engine.onnxparser_library"
                ))
            })?;
    }
    let version = library_version(libs)?;
    let major = version / 10_000;
    if major != header_major() {
        return Err(TrtError::Library(format!(
            "libnvinfer is TensorRT {}, but this gsinfer was built with TensorRT {} headers; rebuild it against the box's headers: TENSORRT_INCLUDE_DIR=<dir with NvInfer.h> cargo build --release --features tensorrt",
            format_version(version),
            header_major()
        )));
    }
    Ok(Platform {
        tensorrt: format_version(version),
        device,
    })
}

/// `getInferLibVersion()` of the library: `major * 10000 + minor * 100 + patch`.
fn library_version(libs: &Libraries) -> Result<u32, TrtError> {
    let path = libs
        .nvinfer
        .clone()
        .unwrap_or_else(|| "libnvinfer.so".into());
    // SAFETY: opening TensorRT runs its initialisers, as trtx did above.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| TrtError::Library(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: `int32_t getInferLibVersion() noexcept`, TensorRT's C entry point.
    let version = unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn() -> i32> =
            lib.get(b"getInferLibVersion").map_err(|e| {
                TrtError::Library(format!("{} has no getInferLibVersion: {e}", path.display()))
            })?;
        f()
    };
    Ok(version.max(0) as u32)
}

/// `100300` → `"10.3.0"` (TensorRT's `NV_TENSORRT_VERSION` encoding).
pub fn format_version(v: u32) -> String {
    format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_versions_are_decoded_like_nv_tensorrt_version() {
        assert_eq!(format_version(100300), "10.3.0");
        assert_eq!(format_version(110401), "11.4.1");
    }

    #[test]
    fn the_vendored_headers_are_a_supported_major() {
        assert!(header_major() >= 10, "headers {}", header_major());
    }

    #[test]
    fn without_tensorrt_or_a_gpu_probe_says_what_is_missing() {
        // This machine has neither a GPU nor TensorRT; a box with both
        // exercises the success path through `gsinfer selftest`.
        if let Err(e) = probe(&Libraries::default(), 0, false) {
            let msg = e.to_string();
            assert!(
                msg.contains("no NVIDIA driver") || msg.contains("libnvinfer"),
                "{msg}"
            );
        }
    }
}
