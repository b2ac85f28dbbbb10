//! Loading the models at start: for each `[[pipeline]]`, prepare its model
//! from the repository, open its engine instances (building TensorRT plans
//! where needed), give it a batch queue, add it and its instances to the
//! engine worker pool, and register it with the status board and the
//! KServe endpoint. A model that cannot load is marked failed and the others
//! serve; with none loaded the service does not start.
//!
//! Versions: a pipeline scores with the version its `model` names
//! (`<model>@<version>`) or the highest its version policy selects. Every
//! other version the policy selects is loaded too, served over KServe
//! only, and known to the status board as `<model>@<version>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::shard::ResultRoutes;
use anyhow::Result;

use crate::batch::{BatchHandle, BatchQueue, Instance, WorkerPool};
use crate::config::Config;
use crate::config::PipelineConfig;
use crate::engine::plans::{open_on_cpu, wanted, CpuEngine, EngineSet, Opened, Progress, Wanted};
use crate::engine::prepare::{ModelError, PreparedModel};
use crate::infer::{EngineContext, EngineInstance, Job};
use crate::kserve::{ServedModel, ServedModels};
use crate::repository::ModelRepository;
use crate::status::{ModelState, StatusBoard};
use crate::watchdog::{Notifier, Stage};

/// The loaded models' batch queues and the worker pool that runs them.
#[derive(Debug)]
pub struct Engines {
    /// Per pipeline, in config order: its model's batch queue, `None` when
    /// the model failed to load.
    pub queues: Vec<Option<BatchHandle<Job>>>,
    /// The batch queues of the versions only KServe serves.
    kserve_only: Vec<BatchHandle<Job>>,
    pool: WorkerPool<Job>,
}

impl Engines {
    /// Closes every batch queue: engines run what is queued, then stop.
    pub fn close(&self) {
        self.all().for_each(BatchHandle::close);
    }

    /// Windows queued over all models.
    pub fn depth(&self) -> usize {
        self.all().map(BatchHandle::depth).sum()
    }

    fn all(&self) -> impl Iterator<Item = &BatchHandle<Job>> {
        self.queues.iter().flatten().chain(&self.kserve_only)
    }

    /// Waits for the worker pool to run what is queued and stop (after
    /// [`Engines::close`]).
    pub fn join(self) {
        self.pool.join();
    }
}

/// Loads every pipeline's model onto one engine worker pool of
/// `engine.workers` threads; its instances send window results where
/// `results` routes them (the pipeline task that owns the pipeline).
///
/// # Errors
/// A model that cannot be prepared from the repository (with context), or
/// no model that could be opened at all.
pub fn load(
    config: &Config,
    repo: &ModelRepository,
    board: &Arc<StatusBoard>,
    kserve: &ServedModels,
    notifier: &Notifier,
    results: &ResultRoutes,
) -> Result<Engines> {
    let pool = WorkerPool::start(config.engine.workers());
    // The pipelines' models, then the other versions their policies select.
    let loads: Vec<PipelineConfig> = config
        .pipelines
        .iter()
        .cloned()
        .chain(other_versions(&config.pipelines, repo))
        .collect();
    let loaders = pool.workers().min(loads.len()).max(1);
    log::info!(target: "gsinfer::engine", "{} engine worker thread(s) for all models; loading {} model(s), {loaders} at a time",
        pool.workers(), loads.len());
    // Every model is on the board as loading before any is opened, so the
    // status page and KServe readiness see the whole set from the start.
    for p in &loads {
        board.set_model(&p.model, p.engine.name(), ModelState::Loading, 0, 0, &[]);
    }
    let engines = Mutex::new(EngineSet::new(&config.tensorrt));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<BatchHandle<Job>>>> =
        loads.iter().map(|_| Mutex::new(None)).collect();
    let ctx = LoadContext {
        config,
        repo,
        board,
        kserve,
        notifier,
        results,
        pool: &pool,
        engines: &engines,
    };
    // Models open in parallel (tract's optimisation and onnxruntime's
    // session set-up are CPU-bound and independent); TensorRT plans are
    // built one at a time under the engine set's lock.
    std::thread::scope(|s| {
        for i in 0..loaders {
            let (ctx, next, slots, loads) = (&ctx, &next, &slots, &loads);
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn_scoped(s, move || loop {
                    let ix = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = loads.get(ix) else {
                        break;
                    };
                    let handle = load_one(ctx, ix, p);
                    *slots[ix].lock().unwrap_or_else(|e| e.into_inner()) = handle;
                })
                .expect("spawn model loader");
        }
    });
    let mut queues: Vec<Option<BatchHandle<Job>>> = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let kserve_only = queues.split_off(config.pipelines.len());
    if queues.iter().all(Option::is_none) {
        pool.join();
        anyhow::bail!(
            "no model could be loaded (the errors above say why); gsinfer has nothing to serve"
        );
    }
    Ok(Engines {
        queues,
        kserve_only: kserve_only.into_iter().flatten().collect(),
        pool,
    })
}

/// The versions that no pipeline scores with but their models' version
/// policies select, each as a copy of the first pipeline of its model
/// (window and features, which the engine needs) naming that version
/// (`<model>@<version>`). They are loaded for KServe; no telemetry reaches
/// them. A model whose config.pbtxt cannot be read adds none (its pipeline
/// reports why).
fn other_versions(pipelines: &[PipelineConfig], repo: &ModelRepository) -> Vec<PipelineConfig> {
    use std::collections::{BTreeMap, BTreeSet};
    // Per model name: the versions pipelines name (`None`: the default) and
    // its first pipeline; each config.pbtxt is then read once.
    let mut used: BTreeMap<&str, (BTreeSet<Option<u64>>, &PipelineConfig)> = BTreeMap::new();
    for p in pipelines {
        let (name, version) = repo.split_reference(&p.model);
        used.entry(name)
            .or_insert_with(|| (BTreeSet::new(), p))
            .0
            .insert(version);
    }
    let mut extra = Vec::new();
    for (name, (named, first)) in used {
        let Ok(entry) = repo.load(name) else { continue };
        let scored =
            |v: &u64| named.contains(&Some(*v)) || (named.contains(&None) && *v == entry.version);
        for v in entry.versions.iter().filter(|v| !scored(v)) {
            let mut p = first.clone();
            p.model = format!("{name}@{v}");
            extra.push(p);
        }
    }
    extra
}

/// What loading one model needs, shared by the loader threads.
struct LoadContext<'a> {
    config: &'a Config,
    repo: &'a ModelRepository,
    board: &'a Arc<StatusBoard>,
    kserve: &'a ServedModels,
    notifier: &'a Notifier,
    results: &'a ResultRoutes,
    pool: &'a WorkerPool<Job>,
    engines: &'a Mutex<EngineSet>,
}

/// Opens a model's instances: on the CPU engine without the engine set's
/// lock, through the engine set (plan cache, TensorRT) otherwise.
fn open(
    engines: &Mutex<EngineSet>,
    prepared: &PreparedModel,
    rebuild: bool,
    progress: Progress<'_>,
    cpu: CpuEngine<'_>,
) -> Result<Opened, ModelError> {
    if wanted(prepared) == Wanted::Tract {
        return open_on_cpu(prepared, prepared.instances, cpu);
    }
    engines.lock().unwrap_or_else(|e| e.into_inner()).open(
        prepared,
        prepared.instances,
        rebuild,
        progress,
        cpu,
    )
}

/// Loads pipeline `ix` (`p`): prepares its model, opens its instances, adds
/// them to the worker pool and registers the model; `None` when it cannot
/// load (marked failed on the board, the others go on).
fn load_one(ctx: &LoadContext<'_>, ix: usize, p: &PipelineConfig) -> Option<BatchHandle<Job>> {
    let LoadContext {
        config,
        repo,
        board,
        kserve,
        notifier,
        results,
        pool,
        engines,
    } = *ctx;
    let prepared = match crate::engine::prepare::prepare(repo, p) {
        Ok(prepared) => prepared,
        Err(e) => {
            // A config.pbtxt the repository refuses, or a model that does
            // not fit its pipeline, is isolated like an engine that fails
            // to load: marked failed, the others served.
            log::error!(target: "gsinfer", "model {} is unavailable: {e}; serving the other models. Fix its config.pbtxt or the pipeline, then restart gsinfer", p.model);
            board.set_model(
                &p.model,
                "none",
                ModelState::Failed(e.to_string()),
                0,
                0,
                &[],
            );
            return None;
        }
    };
    for w in &prepared.entry.warnings {
        log::warn!(target: "gsinfer::repository", "model {}: {w}", p.model);
    }
    let budget = Duration::from_micros(prepared.budget_us);
    // The board's row for this model: its engine and state, with the
    // prepared version, budget and buckets.
    let show = |engine: &str, state: ModelState| {
        board.set_model(
            &p.model,
            engine,
            state,
            prepared.entry.version,
            prepared.budget_us,
            &prepared.buckets,
        );
    };
    show(p.engine.name(), ModelState::Loading);
    let queue = BatchQueue::new(p.batch.queue_capacity, prepared.buckets.clone(), budget)
        .with_policy(p.batch.policy);
    let handle = BatchHandle::new(queue);
    let engine_stage = {
        let handle = handle.clone();
        Stage::with_backlog(format!("engine {}", p.model), move || handle.depth())
    };
    notifier.supervise(engine_stage.clone());
    let stats = board.stats(&p.model).expect("model registered above");
    let rebuild = config.tensorrt.rebuild_at_start;
    // The notifier turns the board's state into STATUS= lines (and
    // extends the start timeout while the progress moves).
    let progress = |done: f32| show("tensorrt", ModelState::Rebuilding { progress: done });
    let cpu = CpuEngine {
        choice: p.engine,
        settings: &config.engine,
    };
    let opened = match open(engines, &prepared, rebuild, &progress, cpu) {
        Ok(o) => o,
        Err(e) => {
            // One model that cannot load (a corrupt file, say) must not
            // stop the others: it is marked failed and its telemetry
            // rejected until it is fixed and the service restarted.
            log::error!(target: "gsinfer", "model {} is unavailable: {e}; serving the other models. Fix or replace the model file, then restart gsinfer", p.model);
            show("none", ModelState::Failed(e.to_string()));
            handle.close();
            return None;
        }
    };
    let trained = crate::engine::prepare::training_note(&prepared.entry);
    if let Some(note) = &trained {
        log::warn!(target: "gsinfer", "model {}: {note}", p.model);
    }
    if let Some(note) = &opened.note {
        log::warn!(target: "gsinfer::engine", "model {}: {note}", p.model);
    }
    let (served_config, not_in_effect) =
        crate::engine::prepare::in_effect(&prepared, opened.kind, opened.engines.len());
    for line in &not_in_effect {
        log::warn!(target: "gsinfer::repository", "model {}: config.pbtxt: {line}", p.model);
    }
    let not_in_effect = (!not_in_effect.is_empty()).then(|| {
        format!(
            "config.pbtxt: {} setting(s) not in effect (see the journal and /v2/models/{}/config)",
            not_in_effect.len(),
            p.model
        )
    });
    let notes: Vec<&str> = [
        opened.note.as_deref(),
        trained.as_deref(),
        not_in_effect.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !notes.is_empty() {
        board.set_note(&p.model, &notes.join("; "));
    }
    let kind = opened.kind.as_str();
    let mut outputs = Vec::new();
    if config.engine.threads > 1 && p.engine != crate::engine::EngineChoice::Onnxruntime {
        log::warn!(target: "gsinfer", "model {}: engine.threads = {} applies to onnxruntime only; tract runs each instance on one thread",
            p.model, config.engine.threads);
    }
    let detail = opened.detail.clone();
    let (results, pipeline) = results.route(ix);
    let context = Arc::new(EngineContext {
        name: p.model.clone(),
        pipeline,
        handle: handle.clone(),
        results,
        events: Arc::clone(board) as Arc<dyn crate::events::EventSink>,
        stats: Arc::clone(&stats),
        stage: engine_stage.clone(),
    });
    let mut instances: Vec<Box<dyn Instance<Job>>> = Vec::new();
    for engine in opened.engines {
        outputs = engine.outputs().to_vec();
        instances.push(Box::new(EngineInstance::new(Arc::clone(&context), engine)));
    }
    pool.add(&handle, instances);
    show(kind, ModelState::Ready);
    board.set_device(&p.model, &opened.device);
    kserve.insert(ServedModel {
        name: prepared.entry.name.clone(),
        version: prepared.entry.version,
        key: p.model.clone(),
        config: served_config,
        input: prepared.input.clone(),
        outputs,
        handle: handle.clone(),
        max_batch: *prepared.buckets.last().expect("buckets are non-empty"),
        stats,
    });
    log::info!(
        target: "gsinfer",
        "model {} version {} ready on {detail} ({}): {} instance(s), buckets {:?}, latency budget {} µs",
        p.model, prepared.entry.version, opened.device, prepared.instances, prepared.buckets, prepared.budget_us
    );
    Some(handle)
}

/// One line per model at shutdown: what this run took in and what became
/// of it (every window is either scored or counted as dropped).
pub fn log_totals(board: &StatusBoard) {
    let status = board.snapshot();
    for m in status["models"].as_array().into_iter().flatten() {
        log::info!(
            target: "gsinfer",
            "model {}: {} samples, {} windows, {} scored, {} dropped",
            m["name"].as_str().unwrap_or("?"),
            m["samples"], m["windows"], m["scores"], m["windows_dropped"],
        );
    }
}
