//! Engines: run a model on a batch of windows.
//!
//! One trait, several implementations: [`tract`] (the embedded CPU engine,
//! always compiled), [`onnxruntime`] (ONNX Runtime opened at run time,
//! feature `onnxruntime`, on by default) and, behind the `tensorrt` feature,
//! `tensorrt`. The pipeline, `gsinfer eval` and `gsinfer bench` see only
//! [`Engine`]; [`choice`] says which one a pipeline gets, and [`plans`]
//! which implementation runs each model and keeps the TensorRT plans in
//! the engine [`cache`] fresh.

pub mod cache;
pub mod choice;
pub mod config;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod plans;
pub mod prepare;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;
pub mod tract;

pub use choice::{EngineChoice, EngineSettings, TractTuning};

use thiserror::Error;

/// Shape and name of one model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name in the model (and in config.pbtxt).
    pub name: String,
    /// Dimensions per batch item, without the batch dimension.
    pub dims: Vec<usize>,
}

impl TensorSpec {
    /// Elements per batch item (the product of `dims`).
    pub fn item_len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Errors of loading or running an engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The model file could not be loaded or prepared.
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The model file.
        path: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// The input given does not fit the model.
    #[error("input {name}: expected {expected} values for batch {batch}, got {got}")]
    InputShape {
        /// Input tensor name.
        name: String,
        /// Batch size asked for.
        batch: usize,
        /// Values expected (`batch × item_len`).
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The engine failed while running a batch.
    #[error("inference failed: {0}")]
    Run(String),
    /// The engine asked for cannot run on this box or in this build.
    #[error("engine {engine} is not available: {reason}")]
    Unavailable {
        /// The engine's configuration name, e.g. `"onnxruntime"`.
        engine: &'static str,
        /// Why, and how to fix it.
        reason: String,
    },
}

/// Which engine runs a model, as logs, `/api/status` and the status page
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// tract, on the CPU ([`tract`]).
    Tract,
    /// ONNX Runtime, on the CPU.
    Onnxruntime,
    /// A TensorRT plan, on the GPU.
    TensorRt,
}

impl EngineKind {
    /// The name, e.g. `"tract"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::Onnxruntime => "onnxruntime",
            EngineKind::TensorRt => "tensorrt",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loaded, runnable model. One instance is used by one thread at a time.
pub trait Engine: Send {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;
    /// The engine with its version and settings, for logs and `gsinfer
    /// bench`, e.g. `"onnxruntime 1.31.1 (/usr/lib/libonnxruntime.so), 1 thread"`.
    fn detail(&self) -> String {
        self.kind().to_string()
    }
    /// Whether the batcher pads a batch to its bucket before this engine
    /// runs it. True (the default) for engines with a fixed shape per
    /// bucket: CUDA graphs, TensorRT optimisation profiles, tract's
    /// per-bucket plans. False for an engine whose time grows with the rows
    /// it is given and that runs any batch size as fast as the next bucket
    /// (onnxruntime on the CPU): padding would only add work, and the
    /// latency bound, which uses the largest bucket's time, still holds.
    fn pads_to_bucket(&self) -> bool {
        true
    }
    /// The model's inputs, in order.
    fn inputs(&self) -> &[TensorSpec];
    /// The model's outputs, in order.
    fn outputs(&self) -> &[TensorSpec];
    /// Runs one batch of `batch` items. `inputs[i]` holds input `i` as
    /// row-major `f32` `[batch, dims...]`; returns each output likewise.
    ///
    /// # Errors
    /// [`EngineError::InputShape`] when an input's length is not
    /// `batch × item_len`; [`EngineError::Run`] when the engine fails.
    fn infer(&mut self, batch: usize, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, EngineError>;
}

/// Checks `inputs` against `specs` for a batch of `batch`.
///
/// # Errors
/// [`EngineError::InputShape`] for the first input of the wrong length.
pub fn check_inputs(
    specs: &[TensorSpec],
    batch: usize,
    inputs: &[&[f32]],
) -> Result<(), EngineError> {
    for (spec, input) in specs.iter().zip(inputs) {
        let expected = batch * spec.item_len();
        if input.len() != expected {
            return Err(EngineError::InputShape {
                name: spec.name.clone(),
                batch,
                expected,
                got: input.len(),
            });
        }
    }
    if inputs.len() != specs.len() {
        return Err(EngineError::Run(format!(
            "model takes {} inputs, got {}",
            specs.len(),
            inputs.len()
        )));
    }
    Ok(())
}
