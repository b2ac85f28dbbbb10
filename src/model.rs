//! From a pipeline's configuration to a runnable engine: find the model in
//! the repository, check its config.pbtxt against the pipeline's windows,
//! pick the batch buckets, and open the engine that runs it.

use crate::batch::default_buckets;
use crate::config::PipelineConfig;
use crate::engine::tract::TractEngine;
use crate::engine::{Engine, EngineChoice, EngineSettings, TensorSpec};
use crate::repository::{DataType, ModelEntry, ModelRepository, Platform};
use crate::score::ScoringKind;

/// Errors preparing a pipeline's model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The repository could not provide the model.
    #[error(transparent)]
    Repository(#[from] crate::repository::RepositoryError),
    /// The model does not fit the pipeline.
    #[error("model {model}: {message}")]
    Mismatch {
        /// Model name.
        model: String,
        /// What does not fit and how to fix it.
        message: String,
    },
    /// The engine could not load the model.
    #[error("model {model}: {error}")]
    Engine {
        /// Model name.
        model: String,
        /// The engine's error (in the message, not repeated as a cause).
        error: crate::engine::EngineError,
    },
}

/// A pipeline's model, checked and ready to open engines for.
#[derive(Debug, Clone)]
pub struct PreparedModel {
    /// The repository entry (config, version, file).
    pub entry: ModelEntry,
    /// The model's input, per item.
    pub input: TensorSpec,
    /// Batch buckets for the batcher.
    pub buckets: Vec<usize>,
    /// Engine instances to run (`instance_group` count).
    pub instances: usize,
}

/// What config.pbtxt's `parameters` say about how the model was trained that
/// an operator must know, as one line for the log and the status page:
/// today, a `train_value_std` (written by tools/train_models.py) below 1e-6,
/// i.e. the channel was constant over its whole train split, so the model
/// learned a constant and any change of level scores as anomalous
/// (EVALUATION.md, "Channels that defeat every model").
pub fn training_note(entry: &ModelEntry) -> Option<String> {
    let std: f64 = entry
        .config
        .parameters
        .get("train_value_std")?
        .trim()
        .parse()
        .ok()?;
    (std < 1e-6).then(|| {
        format!("trained on a constant signal (train split's value std {std:.1e}): any change of level scores as anomalous")
    })
}

impl PreparedModel {
    /// The output names config.pbtxt declares, in its order (the order
    /// engines return outputs in).
    pub fn output_names(&self) -> Vec<String> {
        self.entry
            .config
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }
}

/// Loads `pipeline.model` from `repo` and checks it against the pipeline:
/// one FP32 input of `window.length × features` values per item, and an
/// output fitting the scoring kind.
///
/// # Errors
/// [`ModelError::Repository`] or [`ModelError::Mismatch`] naming the fix.
pub fn prepare(
    repo: &ModelRepository,
    pipeline: &PipelineConfig,
) -> Result<PreparedModel, ModelError> {
    let entry = repo.load(&pipeline.model)?;
    let mismatch = |message: String| ModelError::Mismatch {
        model: pipeline.model.clone(),
        message,
    };
    let cfg = &entry.config;
    if cfg.inputs.len() != 1 {
        return Err(mismatch(format!(
            "has {} inputs; gsinfer pipelines feed exactly one window input",
            cfg.inputs.len()
        )));
    }
    let input = &cfg.inputs[0];
    if input.data_type != DataType::Fp32 {
        return Err(mismatch(format!(
            "input {} is {}; pipelines feed TYPE_FP32",
            input.name,
            input.data_type.triton_name()
        )));
    }
    if input.dims.iter().any(|d| *d <= 0) {
        return Err(mismatch(format!(
            "input {} has variable dims {:?}; give fixed dims in config.pbtxt",
            input.name, input.dims
        )));
    }
    let dims: Vec<usize> = input.dims.iter().map(|d| *d as usize).collect();
    let want = pipeline.window.length * pipeline.features;
    let got: usize = dims.iter().product();
    if got != want {
        return Err(mismatch(format!(
            "input {} takes {dims:?} = {got} values per window, but the pipeline cuts window.length {} × features {} = {want}",
            input.name, pipeline.window.length, pipeline.features
        )));
    }
    if let Some(output) = cfg.outputs.first() {
        let out_len: i64 = output.dims.iter().product();
        let ok = match pipeline.scoring.kind {
            ScoringKind::Forecast => out_len >= 1,
            ScoringKind::Reconstruction => out_len == want as i64,
        };
        if !ok {
            return Err(mismatch(format!(
                "output {} has dims {:?}, which does not fit scoring.kind {:?}",
                output.name, output.dims, pipeline.scoring.kind
            )));
        }
    }
    let buckets = if pipeline.batch.buckets.is_empty() {
        let preferred = cfg
            .dynamic_batching
            .as_ref()
            .map(|d| d.preferred_batch_size.clone())
            .unwrap_or_default();
        default_buckets(&preferred, cfg.max_batch_size)
    } else {
        pipeline.batch.buckets.clone()
    };
    if cfg.max_batch_size > 0 && buckets.iter().any(|b| *b > cfg.max_batch_size as usize) {
        return Err(mismatch(format!(
            "batch.buckets {buckets:?} exceed max_batch_size {} of config.pbtxt",
            cfg.max_batch_size
        )));
    }
    let input = TensorSpec {
        name: input.name.clone(),
        dims,
    };
    let instances = cfg.instance_count.max(1) as usize;
    Ok(PreparedModel {
        entry,
        input,
        buckets,
        instances,
    })
}

/// Batches of the largest bucket run at load, before any telemetry: an
/// onnxruntime session's first runs are slower than the rest (45-48 ms,
/// then 34-39, then 29-35 ms for the LSTM at 64 on the lent box), and the
/// first real batch should not pay for that.
#[cfg(feature = "onnxruntime")]
const WARM_UP_RUNS: usize = 2;

/// Runs [`WARM_UP_RUNS`] zero batches of the model's largest bucket.
///
/// # Errors
/// The engine's error when it cannot run the model at all: better at load,
/// with the model named, than on the first window.
#[cfg(feature = "onnxruntime")]
fn warm_up(
    engine: &mut dyn Engine,
    model: &PreparedModel,
) -> Result<(), crate::engine::EngineError> {
    let n = model.buckets.last().copied().unwrap_or(1);
    let input = vec![0.0f32; n * model.input.item_len()];
    for _ in 0..WARM_UP_RUNS {
        engine.infer(n, &[&input])?;
    }
    Ok(())
}

/// Opens one engine instance for a prepared model: `choice` picks the
/// implementation (`auto`: onnxruntime when its library is found, else tract), `settings` are the `[engine]`
/// section. This is the one place that matches on [`EngineChoice`].
///
/// # Errors
/// [`ModelError::Engine`] when the engine cannot load the file or is not
/// available (e.g. no `libonnxruntime.so`: the message names
/// `engine.onnxruntime_library` and how to get one);
/// [`ModelError::Mismatch`] for a platform this build cannot run.
pub fn open_engine(
    model: &PreparedModel,
    choice: EngineChoice,
    settings: &EngineSettings,
) -> Result<Box<dyn Engine>, ModelError> {
    let name = model.entry.name.clone();
    let failed = |error| ModelError::Engine {
        model: model.entry.name.clone(),
        error,
    };
    match model.entry.config.platform {
        Platform::OnnxRuntimeOnnx => {}
        Platform::TensorRtPlan => {
            return Err(ModelError::Mismatch {
                model: name,
                message: "platform tensorrt_plan needs a build with the `tensorrt` feature on a box with TensorRT; \
                          serve the ONNX file with platform \"onnxruntime_onnx\" meanwhile"
                    .into(),
            })
        }
    }
    let outputs = model.output_names();
    let path = &model.entry.model_path;
    match choice {
        EngineChoice::Auto => {
            // onnxruntime where its library is on the box (faster on every
            // shipped model: BENCHMARKS.md), else tract, which needs nothing.
            #[cfg(feature = "onnxruntime")]
            match crate::engine::onnxruntime::OnnxRuntimeEngine::load(
                path,
                &model.input,
                &outputs,
                settings,
            ) {
                Ok(mut engine) => {
                    warm_up(&mut engine, model).map_err(failed)?;
                    return Ok(Box::new(engine));
                }
                Err(e @ crate::engine::EngineError::Unavailable { .. }) => {
                    // Silent unless the operator pointed at a library.
                    if settings.onnxruntime_library.is_some()
                        || std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty())
                    {
                        log::warn!("model {name}: engine auto uses tract: {e}");
                    } else {
                        log::debug!("model {name}: engine auto uses tract: {e}");
                    }
                }
                Err(e) => {
                    log::warn!(
                        "model {name}: onnxruntime cannot run it ({e}); engine auto uses tract"
                    );
                }
            }
            let engine =
                TractEngine::load_for_batches(path, &model.input, &outputs, &model.buckets)
                    .map_err(failed)?;
            Ok(Box::new(engine))
        }
        EngineChoice::Tract => {
            let engine =
                TractEngine::load_for_batches(path, &model.input, &outputs, &model.buckets)
                    .map_err(failed)?;
            Ok(Box::new(engine))
        }
        #[cfg(feature = "onnxruntime")]
        EngineChoice::Onnxruntime => {
            let mut engine = crate::engine::onnxruntime::OnnxRuntimeEngine::load(
                path,
                &model.input,
                &outputs,
                settings,
            )
            .map_err(failed)?;
            warm_up(&mut engine, model).map_err(failed)?;
            Ok(Box::new(engine))
        }
        #[cfg(not(feature = "onnxruntime"))]
        EngineChoice::Onnxruntime => {
            let _ = settings;
            Err(failed(crate::engine::EngineError::Unavailable {
                engine: "onnxruntime",
                reason: "this build has no onnxruntime engine; rebuild with the cargo feature `onnxruntime` \
                         (on by default) or set the pipeline's engine = \"tract\""
                    .into(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_trained_on_a_constant_channel_carries_a_note() {
        let repo = ModelRepository::open(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository"),
        )
        .unwrap();
        // A-1 is constant over its whole SMAP train split; A-2 is not.
        let note = training_note(&repo.load("lstm_A-1").unwrap()).expect("constant A-1");
        assert!(note.contains("constant signal"), "{note}");
        assert_eq!(training_note(&repo.load("lstm_A-2").unwrap()), None);
    }
}
