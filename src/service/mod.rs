//! `gsinfer run`: builds the stages, spawns them, and drains them in order
//! at stop (docs/architecture.md walks through it).
//!
//! ```text
//! MQTT event loop task: decode ──SampleBatch (bounded, drop+count when full)──┐
//! serial link tasks: deframe, decode ──SampleBatch (bounded, the link waits)──┴▶ pipeline task
//! pipeline task: Router ──windows──▶ BatchHandle (bounded, replace oldest of channel) ──▶ engine threads
//! HTTP workers ──KServe request items (all or none, 503 when full)──▶ the same BatchHandle
//! engine threads ──BatchResult (bounded, blocking)──▶ pipeline task: Router ──Outgoing (bounded, waits)──▶ publisher task
//! engine threads ──item results (one per item)──▶ the waiting HTTP worker
//! ```
//! The pipeline task owns the [`router::Router`], which owns the pipelines'
//! state; it acknowledges each QoS 1/2 message to the broker once the router
//! has taken its samples (manual acknowledgements, see
//! [`crate::ingest::mqtt`]).
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
mod sources;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::http::StatusServer;
use crate::infer::BatchResult;
use crate::ingest::{mqtt, now_ns, SampleBatch};
use crate::kserve::ServedModels;
use crate::pipeline::Pipeline;
use crate::publish::{run_publisher, Outgoing};
use crate::repository::ModelRepository;
use crate::shutdown::Stop;
use crate::status::board::MQTT_SOURCE;
use crate::status::StatusBoard;
use crate::watchdog::{queued, Notifier, Stage};
use account::deliver;
use persist::{checkpoint, Persistence};
use router::Router;
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

    // The pipeline task's queues (docs/architecture.md lists every queue).
    let (mqtt_tx, mut mqtt_rx) = mpsc::channel::<SampleBatch>(config.ingest.queue_capacity);
    let (serial_tx, mut serial_rx) = mpsc::channel::<SampleBatch>(SERIAL_CAPACITY);
    let (results_tx, mut results_rx) = mpsc::channel::<BatchResult>(RESULTS_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(OUTGOING_CAPACITY);
    let pipeline_stage = {
        let (m, s, r) = (
            mqtt_tx.downgrade(),
            serial_tx.downgrade(),
            results_tx.downgrade(),
        );
        Stage::with_backlog("pipeline", move || queued(&m) + queued(&s) + queued(&r))
    };
    notifier.supervise(pipeline_stage.clone());

    let engines = models::load(&config, &repo, &board, &kserve, &notifier, &results_tx)?;
    drop(results_tx);
    let pipelines = config.pipelines.iter().map(Pipeline::new);
    let lanes = pipelines.zip(engines.queues.iter().cloned()).collect();
    // Members of trusted-vote ensembles that alarmed on their nominal data.
    let distrusted = if config.ensembles.iter().any(|e| e.trusted_only) {
        let models = config.pipelines.iter().map(|p| p.model.as_str());
        crate::engine::prepare::distrusted(&repo, models)
    } else {
        Default::default()
    };
    let mut router = Router::new(lanes, &config.ensembles, distrusted);
    // Each channel goes on from its saved state, before any sample comes.
    let (mut state, mut saves_rx) = Persistence::open(&config, &repo, Instant::now());
    for ix in 0..config.pipelines.len() {
        let restored = router.with_pipeline(ix, |p, out| {
            state.restore(ix, p, &board, now_ns(), out);
        });
        deliver(restored, &board, &out_tx).await;
    }

    let mut sources = Sources::start(&config, &board, mqtt_tx, serial_tx)?;
    let publisher_stage = {
        let out = out_tx.downgrade();
        Stage::with_backlog("publisher", move || queued(&out))
    };
    notifier.supervise(publisher_stage.clone());
    let mut publisher = tokio::spawn(run_publisher(
        sources.client.clone(),
        out_rx,
        config.publish.clone(),
        Arc::clone(&board) as Arc<dyn crate::events::EventSink>,
        publisher_stage,
    ));

    let stop = Stop::default();
    tokio::spawn(stop.clone().on_signals());
    let mut serial_open = true;
    let mut tick = tokio::time::interval(Duration::from_millis(config.state.save_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = mqtt_rx.recv(), if !stop.is_triggered() => {
                let Some(mut batch) = batch else { break };
                let _busy = pipeline_stage.begin();
                let ack = batch.ack.take();
                deliver(router.on_batch(batch, Instant::now()), &board, &out_tx).await;
                match ack {
                    // Taken, and held until a saved state holds its samples.
                    Some(header) if state.holds_acks() => state.hold(header),
                    // Taken: only now may the broker forget it (see ingest::mqtt).
                    Some(header) => mqtt::acknowledge(&sources.client, &header).await,
                    None => {}
                }
                if state.due(Instant::now()) {
                    let acks = checkpoint(&mut router, &mut state, &mut results_rx, &board, &out_tx).await;
                    for header in acks {
                        mqtt::acknowledge(&sources.client, &header).await;
                    }
                }
            }
            batch = serial_rx.recv(), if serial_open && !stop.is_triggered() => match batch {
                Some(batch) => {
                    let _busy = pipeline_stage.begin();
                    deliver(router.on_batch(batch, Instant::now()), &board, &out_tx).await;
                }
                None => serial_open = false, // no serial links
            },
            result = results_rx.recv() => {
                let Some(result) = result else { break };
                let _busy = pipeline_stage.begin();
                deliver(router.on_results(result, Instant::now()), &board, &out_tx).await;
            }
            done = saves_rx.recv(), if state.saving() => {
                let Some(done) = done else {
                    state.writer_lost();
                    continue;
                };
                let _busy = pipeline_stage.begin();
                for header in state.complete(done, &board) {
                    mqtt::acknowledge(&sources.client, &header).await;
                }
                // Acknowledgements held meanwhile may already call for the next.
                if state.due(Instant::now()) {
                    let acks = checkpoint(&mut router, &mut state, &mut results_rx, &board, &out_tx).await;
                    for header in acks {
                        mqtt::acknowledge(&sources.client, &header).await;
                    }
                }
            }
            _ = tick.tick() => if state.due(Instant::now()) {
                let _busy = pipeline_stage.begin();
                let acks = checkpoint(&mut router, &mut state, &mut results_rx, &board, &out_tx).await;
                for header in acks {
                    mqtt::acknowledge(&sources.client, &header).await;
                }
            },
            _ = stop.wait(), if !stop.is_triggered() => {}
        }
        if stop.is_triggered() {
            break;
        }
    }

    // Graceful drain: engines finish what is queued; results are scored and published.
    log::info!(target: "gsinfer", "stopping: draining queued windows");
    notifier.stop();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: draining queued windows"),
    ]);
    mqtt_rx.close();
    serial_rx.close();
    sources.stop_serial().await;
    engines.close();
    // Bounded: with the broker gone the publisher cannot empty its queue,
    // and systemd's TimeoutStopSec (30 s) would end the drain by SIGKILL.
    let deadline = tokio::time::Instant::now() + DRAIN_BUDGET;
    let scored = tokio::time::timeout_at(deadline, async {
        while let Some(result) = results_rx.recv().await {
            deliver(router.on_results(result, Instant::now()), &board, &out_tx).await;
        }
    })
    .await;
    if scored.is_err() {
        let left = engines.depth();
        log::warn!(target: "gsinfer", "drain: not every queued window was scored within {DRAIN_BUDGET:?}; {left} windows left in the batch queues are dropped");
    }
    // Engine threads finish their current batch; with the results channel
    // closed they stop instead of waiting for room.
    drop(results_rx);
    engines.join();
    // The save with the state writer, if any, is finished first.
    if state.saving() {
        if let Some(done) = saves_rx.recv().await {
            for header in state.complete(done, &board) {
                mqtt::acknowledge(&sources.client, &header).await;
            }
        }
    }
    // Every window that will be scored is: the pipelines' state is final.
    // A window still in flight is settled as dropped when it is restored.
    for header in state.save(router.pipelines(), &board, Instant::now(), now_ns()) {
        mqtt::acknowledge(&sources.client, &header).await;
    }
    state.log_stop();
    drop(out_tx);
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
