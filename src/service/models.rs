//! Loading the models at start: for each `[[pipeline]]`, prepare its model
//! from the repository, open its engine instances (building TensorRT plans
//! where needed), give it a batch queue and one engine thread per
//! instance, and register it with the status board and the KServe
//! endpoint. A model that cannot load is marked failed and the others
//! serve; with none loaded the service does not start.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;

use crate::batch::{BatchHandle, BatchQueue};
use crate::config::Config;
use crate::engine::plans::{CpuEngine, EngineSet};
use crate::infer::{BatchResult, EngineThread, Job};
use crate::kserve::{ServedModel, ServedModels};
use crate::repository::ModelRepository;
use crate::status::{ModelState, StatusBoard};
use crate::watchdog::{Notifier, Stage};

/// The loaded models' batch queues and engine threads.
#[derive(Debug)]
pub struct Engines {
    /// Per pipeline, in config order: its model's batch queue, `None` when
    /// the model failed to load.
    pub queues: Vec<Option<BatchHandle<Job>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Engines {
    /// Closes every batch queue: engines run what is queued, then stop.
    pub fn close(&self) {
        self.queues.iter().flatten().for_each(BatchHandle::close);
    }

    /// Windows queued over all models.
    pub fn depth(&self) -> usize {
        self.queues.iter().flatten().map(BatchHandle::depth).sum()
    }

    /// Waits for every engine thread to finish its current batch and stop.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Loads every pipeline's model; engine threads send window results to
/// `results`.
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
    results: &mpsc::Sender<BatchResult>,
) -> Result<Engines> {
    let mut queues = Vec::new();
    let mut threads = Vec::new();
    let mut engines = EngineSet::new(&config.tensorrt);
    for (ix, p) in config.pipelines.iter().enumerate() {
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
                queues.push(None);
                continue;
            }
        };
        for w in &prepared.entry.warnings {
            log::warn!(target: "gsinfer::repository", "model {}: {w}", p.model);
        }
        let budget = Duration::from_micros(prepared.budget_us);
        board.set_model(
            &p.model,
            p.engine.name(),
            ModelState::Loading,
            prepared.entry.version,
            prepared.budget_us,
            &prepared.buckets,
        );
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
        let progress = |done: f32| {
            board.set_model(
                &p.model,
                "tensorrt",
                ModelState::Rebuilding { progress: done },
                prepared.entry.version,
                prepared.budget_us,
                &prepared.buckets,
            );
        };
        let cpu = CpuEngine {
            choice: p.engine,
            settings: &config.engine,
        };
        let opened = match engines.open(&prepared, prepared.instances, rebuild, &progress, cpu) {
            Ok(o) => o,
            Err(e) => {
                // One model that cannot load (a corrupt file, say) must not
                // stop the others: it is marked failed and its telemetry
                // rejected until it is fixed and the service restarted.
                log::error!(target: "gsinfer", "model {} is unavailable: {e}; serving the other models. Fix or replace the model file, then restart gsinfer", p.model);
                board.set_model(
                    &p.model,
                    "none",
                    ModelState::Failed(e.to_string()),
                    prepared.entry.version,
                    prepared.budget_us,
                    &prepared.buckets,
                );
                handle.close();
                queues.push(None);
                continue;
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
        for engine in opened.engines {
            outputs = engine.outputs().to_vec();
            threads.push(
                EngineThread {
                    name: p.model.clone(),
                    pipeline: ix,
                    handle: handle.clone(),
                    results: results.clone(),
                    events: Arc::clone(board) as Arc<dyn crate::events::EventSink>,
                    stats: Arc::clone(&stats),
                    stage: engine_stage.clone(),
                }
                .spawn(engine),
            );
        }
        board.set_model(
            &p.model,
            kind,
            ModelState::Ready,
            prepared.entry.version,
            prepared.budget_us,
            &prepared.buckets,
        );
        board.set_device(&p.model, &opened.device);
        kserve.insert(ServedModel {
            name: p.model.clone(),
            version: prepared.entry.version,
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
        queues.push(Some(handle));
    }
    if queues.iter().all(Option::is_none) {
        anyhow::bail!(
            "no model could be loaded (the errors above say why); gsinfer has nothing to serve"
        );
    }
    Ok(Engines { queues, threads })
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
