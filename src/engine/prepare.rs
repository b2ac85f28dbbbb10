//! From a pipeline's configuration to a runnable engine: find the model in
//! the repository, check its config.pbtxt against the pipeline's windows,
//! pick the batch buckets, and open the engine that runs it.

use std::collections::HashSet;

use crate::batch::{default_buckets, BudgetSource, MAX_BUDGET_US};
use crate::config::PipelineConfig;
use crate::engine::tract::TractEngine;
use crate::engine::{Engine, EngineChoice, EngineKind, EngineSettings, TensorSpec, TractTuning};
use crate::repository::{
    DataType, DynamicBatching, InstanceKind, ModelConfig, ModelEntry, ModelRepository, Platform,
};
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
    /// The latency budget in effect, µs ([`crate::batch::BatchConfig::budget_us`]).
    pub budget_us: u64,
    /// Where [`PreparedModel::budget_us`] comes from.
    pub budget_from: BudgetSource,
    /// The pipeline set `batch.buckets` (config.pbtxt's
    /// `preferred_batch_size` is then not in effect).
    pub buckets_from_pipeline: bool,
}

/// What config.pbtxt's `parameters` say about how the model was trained that
/// an operator must know, as one line for the log and the status page:
/// a `train_value_std` (written by tools/train_models.py) below 1e-6, i.e.
/// the channel was constant over its whole train split, so the model
/// learned a constant and any change of level scores as anomalous
/// (EVALUATION.md, "Channels that defeat every model"); and a
/// [`nominal_alarms`] count above 0.
pub fn training_note(entry: &ModelEntry) -> Option<String> {
    let constant = entry
        .config
        .parameters
        .get("train_value_std")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|std| *std < 1e-6)
        .map(|std| {
            format!("trained on a constant signal (train split's value std {std:.1e}): any change of level scores as anomalous")
        });
    let alarmed = nominal_alarms(entry).filter(|n| *n > 0).map(|n| {
        format!("raised {n} alarm(s) on its own channel's train split (nominal data): ensembles with trusted_only = true do not count its vote")
    });
    let notes: Vec<String> = constant.into_iter().chain(alarmed).collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// The alarms the model raised on its own channel's train split replayed
/// as nominal data (config.pbtxt parameter `nominal_alarms`, written by
/// tools/nominal_alarms.py); `None` when not recorded or not a number.
pub fn nominal_alarms(entry: &ModelEntry) -> Option<u64> {
    entry
        .config
        .parameters
        .get("nominal_alarms")?
        .trim()
        .parse()
        .ok()
}

/// The models among `models` (names or `name@version`) whose config.pbtxt
/// records alarms on nominal data: those that do not vote in a
/// `trusted_only` ensemble ([`crate::score::fusion::EnsembleConfig::voters`]).
/// A model that does not load is left out (its own load reports why).
pub fn distrusted(
    repo: &ModelRepository,
    models: impl IntoIterator<Item = impl AsRef<str>>,
) -> HashSet<String> {
    models
        .into_iter()
        .filter(|m| {
            repo.load(m.as_ref())
                .ok()
                .and_then(|e| nominal_alarms(&e))
                .is_some_and(|n| n > 0)
        })
        .map(|m| m.as_ref().to_string())
        .collect()
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
    let want = pipeline.window.length * pipeline.features;
    let Some(dims) = resolve_dims(&input.dims, pipeline.window.length, pipeline.features) else {
        return Err(mismatch(format!(
            "input {} has dims {:?}, which cannot take the pipeline's window of window.length {} × features {} = {want} values \
             (give fixed dims with that product, or -1 for the time axis, e.g. `dims: [ -1, {} ]`)",
            input.name, input.dims, pipeline.window.length, pipeline.features, pipeline.features
        )));
    };
    if let Some(output) = cfg.outputs.first() {
        let ok = match pipeline.scoring.kind {
            // A variable forecast length is the engine's to say.
            ScoringKind::Forecast => output.dims.iter().all(|&d| d >= 1 || d == -1),
            ScoringKind::Reconstruction => {
                resolve_dims(&output.dims, pipeline.window.length, pipeline.features).is_some()
            }
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
    let max_queue_delay = cfg.dynamic_batching.as_ref().map(|d| d.max_queue_delay_us);
    let (budget_us, budget_from) = pipeline.batch.budget_us(max_queue_delay);
    if budget_us > MAX_BUDGET_US {
        return Err(mismatch(format!(
            "dynamic_batching max_queue_delay_microseconds {budget_us} is over gsinfer's longest latency budget ({MAX_BUDGET_US} µs, 10 s); \
             lower it, or set the pipeline's batch.latency_budget_us"
        )));
    }
    Ok(PreparedModel {
        buckets_from_pipeline: !pipeline.batch.buckets.is_empty(),
        entry,
        input,
        buckets,
        instances,
        budget_us,
        budget_from,
    })
}

/// A tensor's dims (per batch item, `-1` variable) resolved to hold one
/// window of `length × features` values: fixed dims must have that
/// product; one `-1` takes what the fixed ones leave (so `[-1, 25]` is
/// `[length, 25]`, the seed documents' variable time axis); `[-1, -1]` is
/// `[length, features]`. `None` when the window does not fit.
pub fn resolve_dims(dims: &[i64], length: usize, features: usize) -> Option<Vec<usize>> {
    let want = length * features;
    let variable = dims.iter().filter(|&&d| d == -1).count();
    if dims.iter().any(|&d| d == 0 || d < -1) {
        return None;
    }
    let fixed: usize = dims
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product();
    match variable {
        0 => (fixed == want).then(|| dims.iter().map(|&d| d as usize).collect()),
        1 => (fixed > 0 && want.is_multiple_of(fixed) && want / fixed > 0).then(|| {
            dims.iter()
                .map(|&d| if d == -1 { want / fixed } else { d as usize })
                .collect()
        }),
        2 if dims.len() == 2 => Some(vec![length, features]),
        _ => None,
    }
}

/// What a model is served with once its engines are open: its config.pbtxt
/// rewritten to the settings in effect, as KServe's model config reports
/// it, and one line for each field that is not in effect as written, with
/// what gsinfer does instead (for the journal and the status page).
///
/// In effect: `max_batch_size` (capped at the largest bucket),
/// `dynamic_batching` (the buckets as `preferred_batch_size`, the latency
/// budget as `max_queue_delay_microseconds`; present whenever the model
/// batches, since gsinfer always does), `instance_group` (`kind` from the
/// engine that runs the model, `count` the instances opened),
/// `optimization.cuda.graphs` (only on TensorRT). (Versions the policy allows
/// but gsinfer does not serve are reported by the repository, at load.)
pub fn in_effect(
    model: &PreparedModel,
    engine: EngineKind,
    instances: usize,
) -> (ModelConfig, Vec<String>) {
    let declared = &model.entry.config;
    let mut config = declared.clone();
    let mut not = Vec::new();
    // Variable dims are served as the window resolves them (resolve_dims).
    config.inputs[0].dims = model.input.dims.iter().map(|&d| d as i64).collect();
    let largest = model.buckets.last().copied().unwrap_or(1) as u32;
    if declared.max_batch_size > largest {
        not.push(format!(
            "max_batch_size {} is not in effect: the largest batch is {largest}, the pipeline's batch.buckets {:?}",
            declared.max_batch_size, model.buckets
        ));
        config.max_batch_size = largest;
    }
    if let Some(d) = &declared.dynamic_batching {
        if d.max_queue_delay_us > 0
            && d.max_queue_delay_us != model.budget_us
            && model.budget_from == BudgetSource::Pipeline
        {
            not.push(format!(
                "dynamic_batching max_queue_delay_microseconds {} is not in effect: the pipeline's batch.latency_budget_us {} is \
                 (the TOML wins; remove it there to use config.pbtxt's)",
                d.max_queue_delay_us, model.budget_us
            ));
        }
        let preferred: Vec<usize> = d.preferred_batch_size.iter().map(|&b| b as usize).collect();
        if !preferred.is_empty()
            && model.buckets_from_pipeline
            && !preferred.iter().all(|b| model.buckets.contains(b))
        {
            not.push(format!(
                "dynamic_batching preferred_batch_size {preferred:?} is not in effect: the pipeline's batch.buckets {:?} are",
                model.buckets
            ));
        }
    }
    if declared.max_batch_size > 0 {
        config.dynamic_batching = Some(DynamicBatching {
            preferred_batch_size: model.buckets.iter().map(|&b| b as u32).collect(),
            max_queue_delay_us: model.budget_us,
        });
    }
    let on_gpu = engine == EngineKind::TensorRt;
    match (declared.instance_kind, on_gpu) {
        (InstanceKind::Gpu, false)
            if declared.tensorrt.is_none() && declared.platform == Platform::OnnxRuntimeOnnx =>
        {
            not.push(format!(
                "instance_group kind KIND_GPU is not in effect: the model runs on the CPU ({engine}); gsinfer runs an ONNX model on the GPU \
                 only through TensorRT: add optimization {{ execution_accelerators {{ gpu_execution_accelerator [ {{ name: \"tensorrt\" }} ] }} }}"
            ));
        }
        (InstanceKind::Cpu, true) => not.push(
            "instance_group kind KIND_CPU is not in effect: a tensorrt_plan runs on the GPU".into(),
        ),
        _ => {}
    }
    if declared.instance_kind == InstanceKind::Cpu && declared.tensorrt.is_some() {
        not.push(
            "the tensorrt execution accelerator is not in effect: instance_group kind KIND_CPU runs the model on the CPU, as in Triton".into(),
        );
    }
    config.instance_kind = if on_gpu {
        InstanceKind::Gpu
    } else {
        InstanceKind::Cpu
    };
    config.instance_count = instances as u32;
    if declared.cuda_graphs && !on_gpu {
        not.push(format!(
            "optimization cuda graphs is not in effect: the model runs on the CPU ({engine})"
        ));
        config.cuda_graphs = false;
    }
    (config, not)
}

/// Batches of the smallest bucket run at load, before any telemetry: an
/// onnxruntime session's first runs are slower than the rest (45-48 ms,
/// then 34-39, then 29-35 ms for the LSTM at 64 on the lent box), and the
/// first real batch should not pay for that. The smallest bucket, not the
/// largest: with one channel per model at one sample a second nearly every
/// batch is of one window, and warming up at 64 cost about 85 ms of CPU per
/// LSTM model, most of the start-up of a thousand models (BENCHMARKS.md,
/// "N models"); a larger bucket's first batch pays its own first run.
#[cfg(feature = "onnxruntime")]
const WARM_UP_RUNS: usize = 2;

/// Runs [`WARM_UP_RUNS`] zero batches of the model's smallest bucket.
///
/// # Errors
/// The engine's error when it cannot run the model at all: better at load,
/// with the model named, than on the first window.
#[cfg(feature = "onnxruntime")]
fn warm_up(
    engine: &mut dyn Engine,
    model: &PreparedModel,
) -> Result<(), crate::engine::EngineError> {
    let n = model.buckets.first().copied().unwrap_or(1);
    let input = vec![0.0f32; n * model.input.item_len()];
    for _ in 0..WARM_UP_RUNS {
        engine.infer(n, &[&input])?;
    }
    Ok(())
}

/// tract on `model`, its buckets tuned as `settings.tract_tuning` says.
fn open_tract(
    model: &PreparedModel,
    outputs: &[String],
    settings: &EngineSettings,
) -> Result<TractEngine, crate::engine::EngineError> {
    let (path, input, buckets) = (&model.entry.model_path, &model.input, &model.buckets);
    match settings.tract_tuning {
        TractTuning::Background => TractEngine::load_tuned_later(path, input, outputs, buckets),
        TractTuning::AtLoad => TractEngine::load_for_batches(path, input, outputs, buckets),
    }
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
            let engine = open_tract(model, &outputs, settings).map_err(failed)?;
            Ok(Box::new(engine))
        }
        EngineChoice::Tract => {
            let engine = open_tract(model, &outputs, settings).map_err(failed)?;
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

    #[test]
    fn a_model_that_alarmed_on_its_nominal_data_carries_a_note_and_is_distrusted() {
        let repo = ModelRepository::open(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository"),
        )
        .unwrap();
        // tools/nominal_alarms.py recorded one alarm for lstm_A-3, none for lstm_A-2.
        let a3 = repo.load("lstm_A-3").unwrap();
        assert_eq!(nominal_alarms(&a3), Some(1));
        let note = training_note(&a3).expect("alarmed A-3");
        assert!(
            note.contains("1 alarm(s) on its own channel's train split"),
            "{note}"
        );
        assert_eq!(nominal_alarms(&repo.load("lstm_A-2").unwrap()), Some(0));
        let names = ["lstm_A-2", "lstm_A-3", "no_such_model"];
        assert_eq!(
            distrusted(&repo, names),
            HashSet::from(["lstm_A-3".to_string()])
        );
    }

    /// The example model prepared from a copy of the repository whose
    /// config.pbtxt is edited by `edit`, for a pipeline edited by `pipeline`.
    fn example(
        edit: impl Fn(String) -> String,
        pipeline: &str,
    ) -> Result<PreparedModel, ModelError> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("smap_lstm");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::copy(
            root.join("smap_lstm/1/model.onnx"),
            model.join("1/model.onnx"),
        )
        .unwrap();
        let text = std::fs::read_to_string(root.join("smap_lstm/config.pbtxt")).unwrap();
        std::fs::write(model.join("config.pbtxt"), edit(text)).unwrap();
        let config: PipelineConfig = toml::from_str(&format!(
            "model = \"smap_lstm\"\ntopics = [\"t/+\"]\nfeatures = 25\nwindow = {{ length = 250 }}\nscoring = {{ kind = \"forecast\", threshold = {{ method = \"ndt\" }} }}\n{pipeline}"
        ))
        .unwrap();
        let repo = ModelRepository::open(dir.path()).unwrap();
        prepare(&repo, &config)
    }

    fn delay(us: u64) -> impl Fn(String) -> String {
        move |t| {
            t.replace(
                "max_queue_delay_microseconds: 20000",
                &format!("max_queue_delay_microseconds: {us}"),
            )
        }
    }

    #[test]
    fn the_pipeline_budget_wins_over_max_queue_delay_and_says_so() {
        let m = example(delay(100_000), "batch = { latency_budget_us = 20000 }").unwrap();
        assert_eq!(
            (m.budget_us, m.budget_from),
            (20_000, BudgetSource::Pipeline)
        );
        let (config, not) = in_effect(&m, EngineKind::Tract, 1);
        assert_eq!(config.dynamic_batching.unwrap().max_queue_delay_us, 20_000);
        assert_eq!(not.len(), 1, "{not:?}");
        assert!(
            not[0].contains("max_queue_delay_microseconds 100000 is not in effect")
                && not[0].contains("batch.latency_budget_us 20000"),
            "{}",
            not[0]
        );
    }

    #[test]
    fn without_a_pipeline_budget_max_queue_delay_is_the_budget() {
        let m = example(delay(100_000), "").unwrap();
        assert_eq!(
            (m.budget_us, m.budget_from),
            (100_000, BudgetSource::ConfigPbtxt)
        );
        let (config, not) = in_effect(&m, EngineKind::Tract, 1);
        assert_eq!(config.dynamic_batching.unwrap().max_queue_delay_us, 100_000);
        assert!(not.is_empty(), "{not:?}");
        // Triton's 0 ("do not wait") is no deadline: gsinfer's default.
        let m = example(delay(0), "").unwrap();
        assert_eq!(
            (m.budget_us, m.budget_from),
            (20_000, BudgetSource::Default)
        );
        // Over gsinfer's 10 s: refused, naming the field.
        let e = example(delay(60_000_000), "").unwrap_err().to_string();
        assert!(e.contains("max_queue_delay_microseconds 60000000"), "{e}");
    }

    #[test]
    fn kind_gpu_on_the_cpu_is_reported_and_config_says_where_it_runs() {
        let m = example(|t| t.replace("KIND_CPU", "KIND_GPU"), "").unwrap();
        let (config, not) = in_effect(&m, EngineKind::Onnxruntime, 1);
        assert_eq!(config.instance_kind, InstanceKind::Cpu);
        assert_eq!(not.len(), 1, "{not:?}");
        assert!(
            not[0].contains("KIND_GPU is not in effect")
                && not[0].contains("onnxruntime")
                && not[0].contains("gpu_execution_accelerator"),
            "{}",
            not[0]
        );
        // KIND_CPU as written: nothing to report.
        let m = example(|t| t, "").unwrap();
        let (config, not) = in_effect(&m, EngineKind::Tract, 2);
        assert_eq!(
            (config.instance_kind, config.instance_count),
            (InstanceKind::Cpu, 2)
        );
        assert!(not.is_empty(), "{not:?}");
    }

    #[test]
    fn buckets_and_graphs_not_in_effect_are_reported() {
        let m = example(
            |t| format!("{t}\noptimization {{ cuda {{ graphs: true }} }}\n"),
            "batch = { buckets = [1, 8] }",
        )
        .unwrap();
        let (config, not) = in_effect(&m, EngineKind::Tract, 1);
        assert_eq!(config.max_batch_size, 8);
        let d = config.dynamic_batching.unwrap();
        assert_eq!(d.preferred_batch_size, [1, 8]);
        assert!(!config.cuda_graphs);
        let joined = not.join("\n");
        for want in [
            "max_batch_size 64 is not in effect: the largest batch is 8",
            "preferred_batch_size [1, 2, 4, 8, 16, 32, 64] is not in effect",
            "cuda graphs is not in effect",
        ] {
            assert!(joined.contains(want), "{want}:\n{joined}");
        }
    }

    #[test]
    fn variable_dims_take_the_window() {
        assert_eq!(resolve_dims(&[-1, 25], 250, 25), Some(vec![250, 25]));
        assert_eq!(resolve_dims(&[250, -1], 250, 25), Some(vec![250, 25]));
        assert_eq!(resolve_dims(&[-1, -1], 50, 55), Some(vec![50, 55]));
        assert_eq!(resolve_dims(&[250, 25], 250, 25), Some(vec![250, 25]));
        assert_eq!(resolve_dims(&[-1], 250, 25), Some(vec![6250]));
        assert_eq!(
            resolve_dims(&[-1, 24], 250, 25),
            None,
            "6250 is not a multiple of 24"
        );
        assert_eq!(resolve_dims(&[-1, -1, 25], 250, 25), None);
        assert_eq!(resolve_dims(&[250, 24], 250, 25), None);
        let m = example(|t| t.replace("dims: [ 250, 25 ]", "dims: [ -1, 25 ]"), "").unwrap();
        assert_eq!(m.input.dims, [250, 25]);
        let (config, not) = in_effect(&m, EngineKind::Tract, 1);
        assert_eq!(config.inputs[0].dims, [250, 25]);
        assert!(not.is_empty(), "{not:?}");
        let e = example(|t| t.replace("dims: [ 250, 25 ]", "dims: [ -1, 24 ]"), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dims: [ -1, 25 ]"), "{e}");
    }

    #[test]
    fn kind_cpu_keeps_an_onnx_model_off_tensorrt() {
        let accelerator = |t: String| {
            format!("{t}\noptimization {{ execution_accelerators {{ gpu_execution_accelerator : [ {{ name : \"tensorrt\" }} ] }} }}\n")
        };
        let m = example(accelerator, "").unwrap();
        assert_eq!(
            crate::engine::plans::wanted(&m),
            crate::engine::plans::Wanted::Tract
        );
        let (_, not) = in_effect(&m, EngineKind::Tract, 1);
        assert!(
            not.iter()
                .any(|l| l.contains("tensorrt execution accelerator is not in effect")),
            "{not:?}"
        );
        let m = example(|t| accelerator(t.replace("KIND_CPU", "KIND_GPU")), "").unwrap();
        assert!(matches!(
            crate::engine::plans::wanted(&m),
            crate::engine::plans::Wanted::TensorRtFromOnnx { .. }
        ));
    }
}
