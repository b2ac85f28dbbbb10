//! `gsinfer run`: wires the stages together, supervises them, and shuts
//! them down in order.
//!
//! ```text
//! MQTT event loop task ──Inbound (bounded, drop+count when full)──▶ pipeline task
//! serial link tasks ──SerialBatch (bounded, the link task waits)──▶ pipeline task
//! pipeline task ──windows──▶ BatchHandle (bounded, replace oldest of channel) ──▶ engine threads
//! HTTP workers ──KServe request items (all or none, 503 when full)──▶ the same BatchHandle
//! engine threads ──BatchResult (bounded, blocking)──▶ pipeline task ──Outgoing (bounded)──▶ publisher task
//! engine threads ──item results (one per item)──▶ the waiting HTTP worker
//! ```
//! The pipeline task acknowledges each QoS 1/2 message to the broker once
//! its samples are taken (manual acknowledgements, see [`crate::ingest::mqtt`]).
//!
//! Shutdown (SIGTERM or SIGINT): stop taking telemetry (messages still in the
//! ingest queue stay unacknowledged, so the broker redelivers them to the
//! next run of the persistent session), close the batch queues so the
//! engines drain what is queued, score and publish it, set the retained
//! status to offline, disconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::batch::{BatchHandle, BatchQueue, PushOutcome};
use crate::config::Config;
use crate::engine::plans::{CpuEngine, EngineSet};
use crate::infer::{BatchResult, EngineThread, Job, Work};
use crate::ingest::decode::{decode, DecodeLimits, RawSample, Reject, RejectReason};
use crate::ingest::mqtt::{self, EventLoopTask, Inbound};
use crate::ingest::serial::{SerialBatch, SerialSource};
use crate::kserve::{ServedModel, ServedModels};
use crate::pipeline::{ChannelOutput, Pipeline};
use crate::publish::{event_json, run_publisher, Outgoing};
use crate::repository::ModelRepository;
use crate::score::{AnomalyEvent, Fuser, ScoredOutput, WindowOutcome};
use crate::shutdown::Stop;
use crate::status::board::MQTT_SOURCE;
use crate::status::http::StatusServer;
use crate::status::{Metrics, ModelState, StatusBoard};
use crate::watchdog::{Notifier, Stage};

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

/// Nanoseconds since the Unix epoch now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Logs rejected inputs at most once per reason every 10 s.
#[derive(Debug, Default)]
struct RejectLog {
    last: HashMap<RejectReason, (Instant, u64)>,
}

impl RejectLog {
    /// Counts `reject` by reason and logs it (rate-limited).
    fn reject(&mut self, board: &StatusBoard, topic: &str, reject: &Reject) {
        board.metrics.reject(reject.reason.as_str());
        self.log(topic, reject);
    }

    fn log(&mut self, topic: &str, reject: &Reject) {
        let now = Instant::now();
        let entry = self
            .last
            .entry(reject.reason)
            .or_insert((now - Duration::from_secs(60), 0));
        if now.duration_since(entry.0) >= Duration::from_secs(10) {
            let suppressed = std::mem::take(&mut entry.1);
            log::warn!(target: "gsinfer::ingest", "rejected input on {topic}: {reject} ({suppressed} more of this reason suppressed)");
            entry.0 = now;
        } else {
            entry.1 += 1;
        }
    }
}

struct Served {
    pipeline: Pipeline,
    handle: BatchHandle<Job>,
    model: Arc<str>,
    channel_names: Vec<Arc<str>>,
    limits: DecodeLimits,
    /// The model failed to load: its samples are rejected
    /// (`model_unavailable`) and nothing is queued for it.
    failed: bool,
}

/// Runs the service until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures (status address, repository, models, broker options)
/// with context; once running, faults are logged and counted, not returned.
pub async fn run(config: Config) -> Result<()> {
    let board = StatusBoard::new(config.status.clone());
    let broker = format!("{}:{}", config.broker.host, config.broker.port);
    let max_budget = config
        .pipelines
        .iter()
        .map(|p| p.batch.latency_budget_us)
        .max();
    let notifier = Notifier::start(
        Arc::clone(&board),
        broker.clone(),
        Duration::from_micros(max_budget.unwrap_or(0)),
    );
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

    let (results_tx, mut results_rx) = mpsc::channel::<BatchResult>(RESULTS_CAPACITY);
    let mut served = Vec::new();
    let mut engine_threads = Vec::new();
    let mut engines = EngineSet::new(&config.tensorrt);
    for (ix, p) in config.pipelines.iter().enumerate() {
        let prepared = crate::model::prepare(&repo, p)?;
        for w in &prepared.entry.warnings {
            log::warn!(target: "gsinfer::repository", "model {}: {w}", p.model);
        }
        let budget = Duration::from_micros(p.batch.latency_budget_us);
        board.set_model(
            &p.model,
            p.engine.name(),
            ModelState::Loading,
            prepared.entry.version,
            p.batch.latency_budget_us,
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
                p.batch.latency_budget_us,
                &prepared.buckets,
            );
        };
        let cpu = CpuEngine {
            choice: p.engine,
            settings: &config.engine,
        };
        let limits = DecodeLimits {
            max_payload_bytes: config.ingest.max_payload_bytes,
            max_samples: config.ingest.max_samples_per_payload,
            features: p.features,
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
                    p.batch.latency_budget_us,
                    &prepared.buckets,
                );
                handle.close();
                served.push(Served {
                    pipeline: Pipeline::new(p),
                    handle,
                    model: Arc::from(p.model.as_str()),
                    channel_names: Vec::new(),
                    limits,
                    failed: true,
                });
                continue;
            }
        };
        let trained = crate::model::training_note(&prepared.entry);
        if let Some(note) = &trained {
            log::warn!(target: "gsinfer", "model {}: {note}", p.model);
        }
        if let Some(note) = &opened.note {
            log::warn!(target: "gsinfer::engine", "model {}: {note}", p.model);
        }
        let notes: Vec<&str> = [opened.note.as_deref(), trained.as_deref()]
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
            engine_threads.push(
                EngineThread {
                    name: p.model.clone(),
                    pipeline: ix,
                    handle: handle.clone(),
                    results: results_tx.clone(),
                    board: Arc::clone(&board),
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
            p.batch.latency_budget_us,
            &prepared.buckets,
        );
        board.set_device(&p.model, &opened.device);
        kserve.insert(ServedModel {
            name: p.model.clone(),
            version: prepared.entry.version,
            config: prepared.entry.config.clone(),
            input: prepared.input.clone(),
            outputs,
            handle: handle.clone(),
            max_batch: *prepared.buckets.last().expect("buckets are non-empty"),
            stats,
        });
        log::info!(
            target: "gsinfer",
            "model {} version {} ready on {detail} ({}): {} instance(s), buckets {:?}, latency budget {} µs",
            p.model, prepared.entry.version, opened.device, prepared.instances, prepared.buckets, p.batch.latency_budget_us
        );
        served.push(Served {
            pipeline: Pipeline::new(p),
            handle,
            model: Arc::from(p.model.as_str()),
            channel_names: Vec::new(),
            limits,
            failed: false,
        });
    }
    if served.iter().all(|s| s.failed) {
        anyhow::bail!(
            "no model could be loaded (the errors above say why); gsinfer has nothing to serve"
        );
    }
    let results_weak = results_tx.downgrade();
    drop(results_tx);

    // MQTT.
    let status_topic = config.publish.status_topic();
    let options = mqtt::options(
        &config.broker,
        &config.broker.client_id,
        Some(&status_topic),
    )?;
    log::info!(target: "gsinfer::mqtt", "broker {broker} over {}",
        config.broker.tls.as_ref().map_or_else(|| "plain TCP".to_string(), |t| t.describe()));
    let (client, eventloop) = mqtt::client(options, 1024);
    let online = serde_json::json!({
        "state": "online", "version": env!("CARGO_PKG_VERSION"),
        "models": config.pipelines.iter().map(|p| p.model.clone()).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let subscriptions = config
        .pipelines
        .iter()
        .flat_map(|p| {
            p.topics
                .iter()
                .map(|t| (t.clone(), mqtt::qos(config.broker.qos)))
        })
        .collect();
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(config.ingest.queue_capacity);
    let inbound_weak = inbound_tx.downgrade();
    let stop_loop = Stop::default();
    let event_loop = tokio::spawn(
        EventLoopTask {
            client: client.clone(),
            subscriptions,
            inbound: inbound_tx,
            status: Some((status_topic.clone(), online)),
            backoff: (
                Duration::from_millis(config.broker.reconnect_min_ms),
                Duration::from_millis(config.broker.reconnect_max_ms),
            ),
            board: Arc::clone(&board),
        }
        .run(eventloop, stop_loop.clone()),
    );
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(OUTGOING_CAPACITY);
    let publisher_stage = {
        let out = out_tx.downgrade();
        Stage::with_backlog("publisher", move || queued(out.upgrade()))
    };
    notifier.supervise(publisher_stage.clone());
    let mut publisher = tokio::spawn(run_publisher(
        client.clone(),
        out_rx,
        config.publish.clone(),
        Arc::clone(&board),
        publisher_stage,
    ));

    // Serial links.
    let (serial_tx, mut serial_rx) = mpsc::channel::<SerialBatch>(SERIAL_CAPACITY);
    // The pipeline task's pending work: telemetry (MQTT, serial) and engine
    // results queued for it.
    let pipeline_stage = {
        let serial = serial_tx.downgrade();
        Stage::with_backlog("pipeline", move || {
            queued(inbound_weak.upgrade())
                + queued(serial.upgrade())
                + queued(results_weak.upgrade())
        })
    };
    notifier.supervise(pipeline_stage.clone());
    let stop_serial = Stop::default();
    let serial_tasks = spawn_serial(&config, &served, &board, serial_tx, &stop_serial);
    let mut serial_open = !serial_tasks.is_empty();

    let stop = Stop::default();
    tokio::spawn(signals(stop.clone()));
    let mut rejects = RejectLog::default();
    let mut outputs = Vec::new();
    let mut fuser = Fuser::new(&config.ensembles);
    loop {
        tokio::select! {
            msg = inbound_rx.recv(), if !stop.is_triggered() => {
                let Some(msg) = msg else { break };
                let _busy = pipeline_stage.begin();
                ingest(&mut served, &msg, &board, &mut rejects, &mut outputs);
                forward(&mut served, &mut fuser, &mut outputs, &out_tx, &board).await;
                // Taken: only now may the broker forget it (see ingest::mqtt).
                mqtt::acknowledge(&client, &msg).await;
            }
            batch = serial_rx.recv(), if serial_open && !stop.is_triggered() => {
                match batch {
                    Some(batch) => {
                        let _busy = pipeline_stage.begin();
                        ingest_serial(&mut served, batch, &board, &mut rejects, &mut outputs);
                        forward(&mut served, &mut fuser, &mut outputs, &out_tx, &board).await;
                    }
                    None => serial_open = false,
                }
            }
            res = results_rx.recv() => {
                let Some(res) = res else { break };
                let _busy = pipeline_stage.begin();
                settle(&mut served, res, &mut outputs, &board);
                forward(&mut served, &mut fuser, &mut outputs, &out_tx, &board).await;
            }
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
    inbound_rx.close();
    stop_serial.trigger();
    serial_rx.close();
    for t in serial_tasks {
        let _ = t.await;
    }
    for s in &served {
        s.handle.close();
    }
    // Bounded: with the broker gone the publisher cannot empty its queue,
    // and systemd's TimeoutStopSec (30 s) would end the drain by SIGKILL.
    let deadline = tokio::time::Instant::now() + DRAIN_BUDGET;
    let scored = tokio::time::timeout_at(deadline, async {
        while let Some(res) = results_rx.recv().await {
            settle(&mut served, res, &mut outputs, &board);
            forward(&mut served, &mut fuser, &mut outputs, &out_tx, &board).await;
        }
    })
    .await;
    if scored.is_err() {
        let queued: usize = served.iter().map(|s| s.handle.depth()).sum();
        log::warn!(target: "gsinfer", "drain: not every queued window was scored within {DRAIN_BUDGET:?}; {queued} windows left in the batch queues are dropped");
    }
    // Engine threads finish their current batch; with the results channel
    // closed they stop instead of waiting for room.
    drop(results_rx);
    for t in engine_threads {
        let _ = t.join();
    }
    drop(out_tx);
    if tokio::time::timeout_at(deadline, &mut publisher)
        .await
        .is_err()
    {
        log::warn!(target: "gsinfer", "drain: the broker did not take every result within {DRAIN_BUDGET:?}; the rest are dropped");
        publisher.abort();
    }
    let _ = client
        .publish(
            status_topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            mqtt::offline_payload(),
        )
        .await;
    let _ = client.disconnect().await;
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        // Until the broker has closed the connection (or was not there).
        while board.is_ready() && !event_loop.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_err()
    {
        log::warn!(target: "gsinfer", "broker did not take the last messages within {DRAIN_TIMEOUT:?}");
    }
    stop_loop.trigger();
    let _ = event_loop.await;
    http.stop();
    grpc.stop().await;
    log_totals(&board);
    log::info!(target: "gsinfer", "stopped");
    Ok(())
}

/// One line per model at shutdown: what this run took in and what became
/// of it (every window is either scored or counted as dropped).
fn log_totals(board: &StatusBoard) {
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

/// Messages queued in a channel, through a sender upgraded from a weak one
/// (0 once every real sender is gone).
fn queued<T>(tx: Option<mpsc::Sender<T>>) -> usize {
    tx.map_or(0, |tx| tx.max_capacity() - tx.capacity())
}

/// Starts one task per `[[serial]]` link, registering its counters with the board.
fn spawn_serial(
    config: &Config,
    served: &[Served],
    board: &Arc<StatusBoard>,
    tx: mpsc::Sender<SerialBatch>,
    stop: &Stop,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for link in &config.serial {
        let Some(ix) = link.pipeline_index(&config.pipelines) else {
            continue; // validation rejects this
        };
        let (source, stats) = SerialSource::new(link, ix, served[ix].limits, tx.clone());
        board.register_source(&link.label(), "serial", &link.device.display().to_string());
        board.add_source(stats);
        tasks.push(tokio::spawn(source.run(stop.clone())));
    }
    tasks
}

async fn signals(stop: Stop) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    stop.trigger();
}

/// Where and when a sample arrived: what MQTT and serial samples share.
struct Arrival<'a> {
    /// The topic or serial link, for logs.
    origin: &'a str,
    channel: &'a str,
    /// The sample's time stamp, ns since the Unix epoch.
    t_ns: i64,
    received: Instant,
}

/// Feeds one sample to pipeline `s`: its window goes to the batcher, the
/// scores it settles to `scored`; a reject is counted and logged. Returns
/// whether the sample was accepted.
fn route_sample(
    s: &mut Served,
    at: &Arrival<'_>,
    sample: &RawSample,
    board: &StatusBoard,
    rejects: &mut RejectLog,
    scored: &mut Vec<ChannelOutput>,
) -> bool {
    let window = match s
        .pipeline
        .on_sample(at.channel, at.t_ns, sample, at.received, scored)
    {
        Ok(window) => window,
        Err(r) => {
            rejects.reject(board, at.origin, &r);
            return false;
        }
    };
    board.record_sample(&s.model, at.channel);
    let Some(item) = window else { return true };
    Metrics::add(&board.metrics.windows, &s.model, 1);
    let channel_id = item.channel;
    let now = Instant::now();
    match s.handle.push(channel_id, Job::window(item, now), now) {
        PushOutcome::Queued => {}
        PushOutcome::Replaced(old) | PushOutcome::Evicted(old) => {
            board
                .metrics
                .dropped(&s.model, crate::batch::DropReason::QueueFull, 1);
            match old.work {
                Work::Window(old) => s.pipeline.on_window(&old, WindowOutcome::Dropped, scored),
                Work::Request(r) => r.fail(
                    old.queued,
                    format!("model {}'s batch queue overflowed; retry later", s.model),
                ),
            }
        }
    }
    true
}

/// After routing samples to pipeline `ix`: its queue depth, and its scores out.
fn routed(
    s: &Served,
    ix: usize,
    scored: Vec<ChannelOutput>,
    board: &StatusBoard,
    outputs: &mut Vec<(usize, ChannelOutput)>,
) {
    board.metrics.set_queue_depth(&s.model, s.handle.depth());
    outputs.extend(scored.into_iter().map(|o| (ix, o)));
}

/// Decodes one message and feeds its samples to every pipeline whose topic
/// filters match.
fn ingest(
    served: &mut [Served],
    msg: &Inbound,
    board: &StatusBoard,
    rejects: &mut RejectLog,
    outputs: &mut Vec<(usize, ChannelOutput)>,
) {
    let channel = msg.topic.rsplit('/').next().unwrap_or("");
    let mut matched = false;
    let mut accepted = 0;
    for (ix, s) in served.iter_mut().enumerate() {
        if !s.pipeline.matches_topic(&msg.topic) {
            continue;
        }
        matched = true;
        let decoded = decode(s.pipeline.config().format, &msg.payload, &s.limits);
        for r in &decoded.rejects {
            rejects.reject(board, &msg.topic, r);
        }
        if s.failed {
            reject_unavailable(s, decoded.samples.len(), &msg.topic, board, rejects);
            continue;
        }
        let received_ns = now_ns();
        let mut scored = Vec::new();
        for sample in &decoded.samples {
            let at = Arrival {
                origin: &msg.topic,
                channel,
                t_ns: sample.t_ns.unwrap_or(received_ns),
                received: msg.received,
            };
            accepted += route_sample(s, &at, sample, board, rejects, &mut scored) as usize;
        }
        routed(s, ix, scored, board, outputs);
    }
    if !matched {
        let r = Reject {
            reason: RejectReason::UnknownChannel,
            detail: "no pipeline's topic filters match".into(),
        };
        rejects.reject(board, &msg.topic, &r);
    }
    board.record_input(MQTT_SOURCE, msg.payload.len(), accepted);
}

/// Rejects `samples` samples bound for a model that failed to load.
fn reject_unavailable(
    s: &Served,
    samples: usize,
    origin: &str,
    board: &StatusBoard,
    rejects: &mut RejectLog,
) {
    let r = Reject {
        reason: RejectReason::ModelUnavailable,
        detail: format!("model {} failed to load (see the status page)", s.model),
    };
    for _ in 0..samples {
        rejects.reject(board, origin, &r);
    }
}

/// Feeds one serial link's decoded samples to its pipeline, as [`ingest`]
/// does for an MQTT message.
fn ingest_serial(
    served: &mut [Served],
    batch: SerialBatch,
    board: &StatusBoard,
    rejects: &mut RejectLog,
    outputs: &mut Vec<(usize, ChannelOutput)>,
) {
    let origin = format!("serial link {}", batch.source);
    for r in &batch.rejects {
        rejects.reject(board, &origin, r);
    }
    let s = &mut served[batch.pipeline];
    if s.failed {
        reject_unavailable(s, batch.samples.len(), &origin, board, rejects);
        return;
    }
    let received_ns = now_ns();
    let mut scored = Vec::new();
    let mut accepted = 0;
    for (channel, sample) in &batch.samples {
        let at = Arrival {
            origin: &origin,
            channel,
            t_ns: sample.t_ns.unwrap_or(received_ns),
            received: batch.received,
        };
        accepted += route_sample(s, &at, sample, board, rejects, &mut scored) as usize;
    }
    board.record_source_samples(&batch.source, accepted);
    routed(s, batch.pipeline, scored, board, outputs);
}

/// Feeds one engine batch's results back to its pipeline.
fn settle(
    served: &mut [Served],
    res: BatchResult,
    outputs: &mut Vec<(usize, ChannelOutput)>,
    board: &StatusBoard,
) {
    let s = &mut served[res.pipeline];
    let now = Instant::now();
    let mut scored = Vec::new();
    for (item, outcome) in res.windows {
        board.record_latency(
            &s.model,
            now.duration_since(item.received).as_micros() as u64,
        );
        s.pipeline.on_window(&item, outcome, &mut scored);
    }
    let totals = s.pipeline.scorer_totals();
    let late = &board.metrics.late_forecasts;
    let counted = Metrics::value(late, &s.model);
    if totals.late_forecasts > counted {
        Metrics::add(late, &s.model, totals.late_forecasts - counted);
    }
    let nonfinite = &board.metrics.nonfinite_errors;
    let counted = Metrics::value(nonfinite, &s.model);
    if totals.nonfinite_errors > counted {
        let new = totals.nonfinite_errors - counted;
        log::warn!(
            "model {}: {new} raw errors were NaN or infinite and were left out of scoring (a model output that is not finite)",
            s.model
        );
        Metrics::add(nonfinite, &s.model, new);
    }
    outputs.extend(scored.into_iter().map(|o| (res.pipeline, o)));
}

/// Hands scored outputs to the publisher and the status board, and to the
/// ensembles their models vote in.
async fn forward(
    served: &mut [Served],
    fuser: &mut Fuser,
    outputs: &mut Vec<(usize, ChannelOutput)>,
    out_tx: &mpsc::Sender<Outgoing>,
    board: &StatusBoard,
) {
    let mut fused = Vec::new();
    for (ix, o) in outputs.drain(..) {
        let s = &mut served[ix];
        while s.channel_names.len() < s.pipeline.channel_count() {
            let name = s.pipeline.channel_name(s.channel_names.len() as u32);
            s.channel_names.push(Arc::from(name));
        }
        let channel = Arc::clone(&s.channel_names[o.channel as usize]);
        fuser.observe(&s.model, &channel, &o.output, &mut fused);
        let msg = match o.output {
            ScoredOutput::Score(score) => {
                board.record_score(&s.model, &channel, &score);
                Outgoing::Score {
                    model: Arc::clone(&s.model),
                    channel: Arc::clone(&channel),
                    score,
                }
            }
            ScoredOutput::Event(event) => {
                Outgoing::Event(announce(&s.model, &channel, &event, None, board))
            }
        };
        if out_tx.send(msg).await.is_err() {
            board.metrics.publish_errors.inc();
        }
        for (e, event) in fused.drain(..) {
            let ensemble = fuser.config(e);
            let members = ensemble.members(&channel);
            let value = announce(&ensemble.name, &channel, &event, Some(&members), board);
            if out_tx.send(Outgoing::Event(value)).await.is_err() {
                board.metrics.publish_errors.inc();
            }
        }
    }
}

/// Renders an event (an ensemble's with its `members`), logs it for the
/// operator and records it on the board; returns the payload.
fn announce(
    model: &str,
    channel: &str,
    event: &AnomalyEvent,
    members: Option<&[String]>,
    board: &StatusBoard,
) -> serde_json::Value {
    let mut value = event_json(model, channel, event);
    if let Some(members) = members {
        value["members"] = members.into();
    }
    let kind = value["event"].as_str().unwrap_or("").to_string();
    log::warn!(target: "gsinfer::events", "model {model} channel {channel}: {kind} at sample {} (max score {:.4}, threshold {:.4})",
        event.end.unwrap_or(event.start), event.max_score, event.threshold);
    board.record_event(model, &kind, value.clone());
    value
}
