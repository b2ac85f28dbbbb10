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
//! its saved state holds the samples it took of it (manual
//! acknowledgements, see [`crate::ingest::mqtt`]; a message split over
//! tasks is acknowledged by the last to release it).
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
use persist::Persistence;
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
    let mut shards = Vec::with_capacity(tasks);
    for ((lanes, pipelines), (mqtt, serial, results, stage)) in
        lanes.into_iter().zip(own).zip(queues)
    {
        let (state, saves) = Persistence::open(
            state_config.clone(),
            store.clone(),
            &pipelines,
            &repo,
            Instant::now(),
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
    // Each channel goes on from its saved state, before any sample is taken.
    for shard in &mut shards {
        shard.restore(&shared).await;
    }
    board.set_restoring(false);
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

    let save_every = Duration::from_millis(config.state.save_interval_ms);
    let mut running = Vec::with_capacity(tasks);
    for shard in shards {
        let (closed_tx, closed_rx) = oneshot::channel();
        let task = tokio::spawn(shard.run(shared.clone(), save_every, closed_tx));
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
