//! `gsinfer run`: builds the stages, spawns them, and drains them in order
//! at stop (docs/architecture.md walks through it).
//!
//! ```text
//! MQTT event loop task: decode ──SampleBatch (bounded per task, whole message dropped+counted when full)──┐
//! serial link tasks: deframe, decode ──SampleBatch (bounded per task, the link waits)──┴▶ Dispatch ▶ pipeline task(s)
//! pipeline task: Router ──windows──▶ BatchHandle (bounded, replace oldest of channel) ──▶ engine threads
//! HTTP workers ──KServe request items (all or none, 503 when full)──▶ the same BatchHandle
//! engine threads ──BatchResult (bounded, blocking)──▶ the owning pipeline task: Router ──Outgoing (bounded, waits)──▶ publisher task
//! engine threads ──item results (one per item)──▶ the waiting HTTP worker
//! ```
//! The pipelines are dealt to `ingest.pipeline_tasks` pipeline tasks
//! (`shard.rs`); each owns a [`router::Router`] over its pipelines and their
//! channel state, and acknowledges each QoS 1/2 message to the broker once
//! the samples it took of it are journaled or in its saved state (manual
//! acknowledgements, see [`crate::ingest::mqtt`] and [`crate::journal`]; a
//! message split over tasks is acknowledged by the last to release it).
//!
//! Shutdown (SIGTERM or SIGINT): stop taking telemetry (messages still in the
//! ingest queue stay unacknowledged, so the broker redelivers them to the
//! next run of the persistent session), close the batch queues so the
//! engines drain what is queued, score and publish it, set the retained
//! status to offline, disconnect.

mod account;
mod models;
mod persist;
pub mod router;
mod shard;
mod sources;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, PipelineConfig};
use crate::http::StatusServer;
use crate::infer::BatchResult;
use crate::ingest::{Dispatch, Owner, SampleBatch};
use crate::kserve::ServedModels;
use crate::pipeline::Pipeline;
use crate::publish::{run_publisher, Outgoing};
use crate::repository::ModelRepository;
use crate::shutdown::Stop;
use crate::state::StateConfig;
use crate::status::board::MQTT_SOURCE;
use crate::status::StatusBoard;
use crate::watchdog::{queued, Notifier, Stage};
use persist::{JournalStart, OldRun, Persistence};
use router::Router;
use shard::{PipelineTask, ResultRoutes, Shared};
use sources::Sources;

/// Capacity of the engine → pipeline results channel, in batches.
const RESULTS_CAPACITY: usize = 64;
/// Capacity of the pipeline → publisher channel, in messages.
const OUTGOING_CAPACITY: usize = 16_384;
/// Capacity of the serial links → pipeline channel, in read batches.
const SERIAL_CAPACITY: usize = 1024;
/// Longest a graceful shutdown spends scoring queued windows and handing
/// their results to the broker.
const DRAIN_BUDGET: Duration = Duration::from_secs(15);
/// Longest a graceful shutdown then waits for the broker to take the last
/// messages (the offline status). With [`DRAIN_BUDGET`], under systemd's
/// `TimeoutStopSec=30s`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The journal folder in `store` when `config` keeps one, and what it holds
/// from the runs before (empty without one); what cannot be read is logged
/// and left out.
fn open_journal(
    config: &StateConfig,
    store: Option<&crate::state::StateStore>,
) -> (Option<crate::journal::JournalDir>, crate::journal::Replay) {
    let Some(store) = store else {
        return (None, Default::default());
    };
    if !config.journal {
        // Files a run with the journal left (nothing is created here).
        let left = crate::journal::JournalDir::existing(store.dir())
            .and_then(|dir| Some((dir.segments().ok()?.len(), dir)));
        if let Some((n, dir)) = left.filter(|(n, _)| *n > 0) {
            log::warn!(target: "gsinfer::state", "state.journal is off: {n} journal file(s) in {} left unread (set state.journal = true to replay them)", dir.path().display());
        }
        return (None, Default::default());
    }
    let dir = match crate::journal::JournalDir::open(store.dir()) {
        Ok(dir) => dir,
        Err(e) => {
            log::warn!(target: "gsinfer::state", "no state journal ({e}): QoS 1/2 messages are acknowledged after whole saves instead");
            return (None, Default::default());
        }
    };
    let replay = match dir.read() {
        Ok(r) => r,
        Err(e) => {
            log::warn!(target: "gsinfer::state", "state journal {} not read: {e}; channels go on from their saved state only", dir.path().display());
            Default::default()
        }
    };
    for why in &replay.damaged {
        // A torn last frame: its messages were never acknowledged, so the
        // broker sends them again.
        log::warn!(target: "gsinfer::state", "journal {why}; what came before it is replayed");
    }
    if !replay.records.is_empty() {
        log::info!(target: "gsinfer::state", "journal: {} message(s) in {} file(s) to replay after the saved state", replay.records.len(), replay.segments.len());
    }
    (Some(dir), replay)
}

/// Runs the service until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures (status address, repository, models, broker options)
/// with context; once running, faults are logged and counted, not returned.
pub async fn run(config: Config) -> Result<()> {
    let board = StatusBoard::new(config.status.clone());
    let broker = format!("{}:{}", config.broker.host, config.broker.port);
    // A budget left to config.pbtxt is not known before the models load:
    // the watchdog allows the longest one accepted.
    let budgets = config.pipelines.iter().map(|p| {
        p.batch
            .latency_budget_us
            .unwrap_or(crate::batch::MAX_BUDGET_US)
    });
    let max_budget = Duration::from_micros(budgets.max().unwrap_or(0));
    let notifier = Notifier::start(Arc::clone(&board), broker.clone(), max_budget);
    let repo = ModelRepository::open(&config.repository.path).context("model repository")?;
    let kserve = Arc::new(ServedModels::new(Some(repo.clone())));
    let http = StatusServer::start(&config.status, Arc::clone(&board), Arc::clone(&kserve))?;
    log::info!(target: "gsinfer", "status on http://{}/", config.status.listen);
    let grpc = crate::kserve::grpc::GrpcServer::start(
        &config.grpc,
        &config.status,
        Arc::clone(&board),
        Arc::clone(&kserve),
    )?;
    board.register_source(MQTT_SOURCE, "mqtt", &broker);

    // The pipeline tasks and their queues (docs/architecture.md lists every queue).
    let (tasks, owners) = shard::plan(&config);
    let owners: Arc<[Owner]> = owners.into();
    let (mut mqtt_txs, mut serial_txs, mut results_txs) = (Vec::new(), Vec::new(), Vec::new());
    let mut queues = Vec::new();
    for _ in 0..tasks {
        let (mqtt_tx, mqtt_rx) = mpsc::channel::<SampleBatch>(config.ingest.queue_capacity);
        let (serial_tx, serial_rx) = mpsc::channel::<SampleBatch>(SERIAL_CAPACITY);
        let (results_tx, results_rx) = mpsc::channel::<BatchResult>(RESULTS_CAPACITY);
        let (m, s, r) = (
            mqtt_tx.downgrade(),
            serial_tx.downgrade(),
            results_tx.downgrade(),
        );
        let name = match tasks {
            1 => "pipeline".to_string(),
            _ => format!("pipeline {}", queues.len()),
        };
        let stage = Stage::with_backlog(name, move || queued(&m) + queued(&s) + queued(&r));
        notifier.supervise(stage.clone());
        mqtt_txs.push(mqtt_tx);
        serial_txs.push(serial_tx);
        results_txs.push(results_tx);
        queues.push((mqtt_rx, serial_rx, results_rx, stage));
    }
    if tasks > 1 {
        log::info!(target: "gsinfer", "{} pipelines on {tasks} pipeline tasks", config.pipelines.len());
    }

    let routes = ResultRoutes::new(results_txs, Arc::clone(&owners));
    let engines = models::load(&config, &repo, &board, &kserve, &notifier, &routes)?;
    drop(routes);
    // Members of trusted-vote ensembles that alarmed on their nominal data.
    let distrusted = if config.ensembles.iter().any(|e| e.trusted_only) {
        let models = config.pipelines.iter().map(|p| p.model.as_str());
        crate::engine::prepare::distrusted(&repo, models)
    } else {
        Default::default()
    };
    // Each task's share of the pipelines, their engines' queues and the state.
    let mut lanes: Vec<Vec<_>> = (0..tasks).map(|_| Vec::new()).collect();
    let mut own: Vec<Vec<&PipelineConfig>> = (0..tasks).map(|_| Vec::new()).collect();
    for ((p, queue), o) in config
        .pipelines
        .iter()
        .zip(&engines.queues)
        .zip(owners.iter())
    {
        lanes[o.task].push((Pipeline::new(p), queue.clone()));
        own[o.task].push(p);
    }
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(OUTGOING_CAPACITY);
    let stop = Stop::default();
    let store = Persistence::store(&config.state);
    // The broker's in-flight window is shared by every task: each holds at
    // most its share of `max_unacked`, so together they force a save before
    // the window closes (else each waits for the interval with the broker
    // sending nothing).
    let state_config = StateConfig {
        max_unacked: (config.state.max_unacked / tasks).max(1),
        ..config.state.clone()
    };
    let (journal, replay) = open_journal(&config.state, store.as_ref());
    let old_run =
        (!replay.segments.is_empty()).then(|| OldRun::new(replay.segments.clone(), tasks));
    let mut shards = Vec::with_capacity(tasks);
    for ((lanes, pipelines), (mqtt, serial, results, stage)) in
        lanes.into_iter().zip(own).zip(queues)
    {
        let start = journal.as_ref().map(|dir| JournalStart {
            dir: dir.clone(),
            task: shards.len(),
            generation: replay.next_generation,
            old_run: old_run.clone(),
        });
        let (state, saves) = Persistence::open(
            state_config.clone(),
            store.clone(),
            &pipelines,
            &repo,
            Instant::now(),
            start,
        );
        shards.push(PipelineTask {
            router: Router::new(lanes, &config.ensembles, distrusted.clone()),
            state,
            saves,
            mqtt,
            serial,
            results,
            stage,
        });
    }

    let mqtt = Dispatch::new(mqtt_txs, Arc::clone(&owners));
    let serial = Dispatch::new(serial_txs, Arc::clone(&owners));
    // Not ready until every channel's saved state is restored (below).
    board.set_restoring(true);
    let mut sources = Sources::start(&config, &board, mqtt, serial)?;
    let shared = Shared {
        board: Arc::clone(&board),
        out: out_tx.clone(),
        client: sources.client.clone(),
        outbox: Arc::clone(&sources.outbox),
        stop: stop.clone(),
        drain_budget: DRAIN_BUDGET,
    };
    // Publishing first: the journal's replay publishes its scores again.
    let publisher_stage = {
        let out = out_tx.downgrade();
        Stage::with_backlog("publisher", move || queued(&out))
    };
    notifier.supervise(publisher_stage.clone());
    let mut publisher = tokio::spawn(run_publisher(
        sources.client.clone(),
        Arc::clone(&sources.outbox),
        out_rx,
        config.publish.clone(),
        Arc::clone(&board) as Arc<dyn crate::events::EventSink>,
        publisher_stage,
    ));
    // Each channel goes on from its saved state and the journal after it,
    // before any sample is taken.
    let started = Instant::now();
    let mut replayed = router::Replayed::default();
    for shard in &mut shards {
        replayed += shard.restore(&shared, &replay.records).await;
    }
    if !replay.records.is_empty() {
        let seconds = started.elapsed().as_secs_f64();
        log::info!(target: "gsinfer::state", "journal replayed in {seconds:.1} s: {} message(s), {} sample(s) taken again, {} already in the saved state, {} refused (counted as rejects)",
            replay.records.len(), replayed.taken, replayed.already, replayed.refused);
        board.set_journal_replay(
            replay.records.len(),
            replayed.taken,
            replayed.already,
            replayed.refused,
            seconds,
        );
    }
    drop(replay);
    board.set_restoring(false);

    let mut running = Vec::with_capacity(tasks);
    for shard in shards {
        let (closed_tx, closed_rx) = oneshot::channel();
        let task = tokio::spawn(shard.run(shared.clone(), closed_tx));
        running.push((task, closed_rx));
    }
    drop(shared);
    tokio::spawn(stop.clone().on_signals());
    stop.wait().await;

    // Graceful drain: engines finish what is queued; results are scored and published.
    log::info!(target: "gsinfer", "stopping: draining queued windows");
    notifier.stop();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: draining queued windows"),
    ]);
    sources.stop_serial().await;
    // No window is cut once every task has stopped taking telemetry.
    let mut ends = Vec::with_capacity(tasks);
    for (task, closed) in running {
        let _ = closed.await;
        ends.push(task);
    }
    engines.close();
    let mut unsaved = Vec::with_capacity(tasks);
    let mut drain_cut = false;
    for task in ends {
        match task.await {
            Ok(end) => {
                drain_cut |= end.drain_cut;
                unsaved.push(end.unsaved);
            }
            Err(e) => log::error!(target: "gsinfer", "a pipeline task failed: {e}"),
        }
    }
    if drain_cut {
        let left = engines.depth();
        log::warn!(target: "gsinfer", "drain: not every queued window was scored within {DRAIN_BUDGET:?}; {left} windows left in the batch queues are dropped");
    }
    // Engine threads finish their current batch; with the results queues
    // closed they stop instead of waiting for room.
    engines.join();
    persist::log_stop(unsaved);
    drop(out_tx);
    let deadline = tokio::time::Instant::now() + DRAIN_BUDGET;
    if tokio::time::timeout_at(deadline, &mut publisher)
        .await
        .is_err()
    {
        log::warn!(target: "gsinfer", "drain: the broker did not take every result within {DRAIN_BUDGET:?}; the rest are dropped");
        publisher.abort();
    }
    sources.disconnect(&board, DRAIN_TIMEOUT).await;
    http.stop();
    grpc.stop().await;
    models::log_totals(&board);
    log::info!(target: "gsinfer", "stopped");
    Ok(())
}
