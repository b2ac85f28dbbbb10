//! Pipeline tasks: the pipelines split over `ingest.pipeline_tasks` tokio
//! tasks, each with its own router, channel state and queues, so windowing,
//! scoring and state saves for thousands of channels run on several cores
//! instead of one task every sample passes through.
//!
//! Which task serves a pipeline ([`partition`]): pipelines that may fuse
//! into one ensemble's vote on a channel share a task (the fuser holds
//! their channel's votes); every other pipeline is on its own, and the
//! groups are dealt to the task with the fewest pipelines so far, in config
//! order. A source's batch goes to the tasks that own its pipelines
//! ([`crate::ingest::Dispatch`]); an engine's results to the task that owns
//! the batch's pipeline ([`ResultRoutes`]); a QoS 1/2 message is
//! acknowledged once every task that took a part of it has released it
//! ([`crate::ingest::Ack`]).
//!
//! Each task's queues: its MQTT queue (`ingest.queue_capacity`, the MQTT
//! event loop drops and counts a whole message when any queue it is bound
//! for is full), its serial queue (the link waits), its results queue (the
//! engine waits), and the publisher queue they all share (the task waits).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::account::deliver;
use super::persist::{replay, step, Due, Persistence};
use super::router::{Replayed, Router};
use crate::config::{Config, PipelineConfig};
use crate::infer::BatchResult;
use crate::ingest::mqtt::{self, Outbox};
use crate::ingest::{now_ns, Ack, Owner, SampleBatch};
use crate::journal;
use crate::publish::Outgoing;
use crate::score::EnsembleConfig;
use crate::shutdown::Stop;
use crate::status::StatusBoard;
use crate::watchdog::Stage;

/// How many pipeline tasks `config` runs: `ingest.pipeline_tasks`, or with
/// 0 one per two cores (at least one: 8 on 16 cores, the best of 1, 4 and 8
/// measured there at 10 000 channels, BENCHMARKS.md); never more than
/// there are pipelines.
pub fn task_count(config: &Config) -> usize {
    let wanted = match config.ingest.pipeline_tasks {
        0 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / 2).max(1)
        }
        n => n,
    };
    wanted.min(config.pipelines.len()).max(1)
}

/// The number of pipeline tasks `config` runs and the owner of each of its
/// pipelines: [`partition`] over [`task_count`] tasks, cut to the tasks
/// that got a pipeline (pipelines that fuse on a channel may be fewer
/// groups than tasks).
pub fn plan(config: &Config) -> (usize, Vec<Owner>) {
    let owners = partition(&config.pipelines, &config.ensembles, task_count(config));
    let used = owners.iter().map(|o| o.task + 1).max().unwrap_or(1);
    (used, owners)
}

/// The task of each pipeline of `pipelines` (config order) over `tasks`
/// tasks, with its index among that task's pipelines (see the module docs).
/// With fewer groups than tasks, tasks `0..groups` get one each.
pub fn partition(
    pipelines: &[PipelineConfig],
    ensembles: &[EnsembleConfig],
    tasks: usize,
) -> Vec<Owner> {
    let tasks = tasks.max(1);
    let groups = fusion_groups(pipelines, ensembles);
    // Groups in order of their first pipeline, each to the lightest task.
    let mut first: HashMap<usize, usize> = HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    let mut sizes: HashMap<usize, usize> = HashMap::new();
    for (ix, &g) in groups.iter().enumerate() {
        first.entry(g).or_insert_with(|| {
            order.push(g);
            ix
        });
        *sizes.entry(g).or_default() += 1;
    }
    let mut load = vec![0usize; tasks];
    let mut task_of: HashMap<usize, usize> = HashMap::new();
    for g in order {
        let task = (0..tasks).min_by_key(|&t| (load[t], t)).unwrap_or(0);
        load[task] += sizes[&g];
        task_of.insert(g, task);
    }
    let mut next = vec![0usize; tasks];
    groups
        .iter()
        .map(|g| {
            let task = task_of[g];
            let local = next[task];
            next[task] += 1;
            Owner { task, local }
        })
        .collect()
}

/// A group id per pipeline: pipelines with the same id may be members of
/// one ensemble on one channel. A pipeline that lists its channels is a
/// member on those whose member name is its model; one that serves every
/// channel of its topics is taken as a member of each ensemble one of
/// whose patterns its model fits, on any channel.
fn fusion_groups(pipelines: &[PipelineConfig], ensembles: &[EnsembleConfig]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..pipelines.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    fn union(parent: &mut [usize], a: usize, b: usize) {
        let (ra, rb) = (root(parent, a), root(parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    for e in ensembles {
        // The first member seen per channel; `None`: members on any channel.
        let mut on_channel: HashMap<&str, usize> = HashMap::new();
        let mut any_channel: Vec<usize> = Vec::new();
        let mut members: Vec<usize> = Vec::new();
        for (ix, p) in pipelines.iter().enumerate() {
            if p.channels.is_empty() {
                if e.models.iter().any(|m| fits(m, &p.model)) {
                    any_channel.push(ix);
                    members.push(ix);
                }
                continue;
            }
            for c in &p.channels {
                if e.members(c).contains(&p.model) {
                    members.push(ix);
                    match on_channel.get(c.as_str()) {
                        Some(&other) => union(&mut parent, other, ix),
                        None => {
                            on_channel.insert(c, ix);
                        }
                    }
                }
            }
        }
        for &a in &any_channel {
            for &b in &members {
                union(&mut parent, a, b);
            }
        }
    }
    (0..pipelines.len()).map(|i| root(&mut parent, i)).collect()
}

/// Whether `model` is what member `pattern` names on some channel
/// (`{channel}` standing for any text).
fn fits(pattern: &str, model: &str) -> bool {
    match pattern.split_once("{channel}") {
        None => pattern == model,
        Some((head, tail)) => {
            let tail = tail.rsplit("{channel}").next().unwrap_or(tail);
            model.len() >= head.len() + tail.len()
                && model.starts_with(head)
                && model.ends_with(tail)
        }
    }
}

/// Where each model's engine sends window results: the results queue of
/// the task that owns its pipeline, and the pipeline's index there.
#[derive(Debug)]
pub struct ResultRoutes {
    queues: Vec<mpsc::Sender<BatchResult>>,
    owners: Arc<[Owner]>,
}

impl ResultRoutes {
    /// Routes to `queues` (one per task) by `owners` (by pipeline index).
    pub fn new(queues: Vec<mpsc::Sender<BatchResult>>, owners: Arc<[Owner]>) -> Self {
        Self { queues, owners }
    }

    /// The queue and task-local index for the model loaded as `ix` (a
    /// pipeline's index in config order; past them, a version served over
    /// KServe only, which makes no windows: task 0).
    pub fn route(&self, ix: usize) -> (mpsc::Sender<BatchResult>, usize) {
        match self.owners.get(ix) {
            Some(o) => (self.queues[o.task].clone(), o.local),
            None => (self.queues[0].clone(), ix),
        }
    }
}

/// What a pipeline task shares with the others.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Counters, scores, events.
    pub board: Arc<StatusBoard>,
    /// The publisher's queue.
    pub out: mpsc::Sender<Outgoing>,
    /// For acknowledgements.
    pub client: rumqttc::AsyncClient,
    /// How far the client's publishes have got, for checkpoints.
    pub outbox: Arc<Outbox>,
    /// The service is stopping.
    pub stop: Stop,
    /// Longest the drain at stop waits for results.
    pub drain_budget: Duration,
}

/// One pipeline task (see the module docs) before it runs.
#[derive(Debug)]
pub struct PipelineTask {
    /// Its pipelines' router.
    pub router: Router,
    /// Its pipelines' channel state.
    pub state: Persistence,
    /// Where its state writer reports finished saves.
    pub saves: mpsc::Receiver<crate::service::persist::SaveDone>,
    /// Its MQTT queue.
    pub mqtt: mpsc::Receiver<SampleBatch>,
    /// Its serial queue.
    pub serial: mpsc::Receiver<SampleBatch>,
    /// Its results queue.
    pub results: mpsc::Receiver<BatchResult>,
    /// Its progress, for the watchdog.
    pub stage: Stage,
}

/// How a pipeline task ended.
#[derive(Debug)]
pub struct Ended {
    /// Models whose state could not be saved at stop (`None`: state is
    /// not kept).
    pub unsaved: Option<Vec<String>>,
    /// Not every result was scored within the drain budget.
    pub drain_cut: bool,
}

/// Acknowledges each message of `acks` whose last share this was.
pub async fn acknowledge(client: &rumqttc::AsyncClient, acks: Vec<Ack>) {
    for header in acks.into_iter().filter_map(Ack::release) {
        mqtt::acknowledge(client, &header).await;
    }
}

impl PipelineTask {
    /// Restores each of its pipelines from its saved state, then replays
    /// the journal's `records` after it (see [`replay`]), before any new
    /// sample comes; returns what became of the replayed samples.
    pub async fn restore(&mut self, shared: &Shared, records: &[journal::Record]) -> Replayed {
        for ix in 0..self.router.pipelines().count() {
            let state = &mut self.state;
            let restored = self.router.with_pipeline(ix, |p, out| {
                state.restore(ix, p, &shared.board, now_ns(), out);
            });
            deliver(restored, &shared.board, &shared.out).await;
        }
        if records.is_empty() || !self.state.journaling() {
            return Replayed::default();
        }
        let (router, results) = (&mut self.router, &mut self.results);
        replay(router, results, records, &shared.board, &shared.out).await
    }

    /// Runs until the service stops: takes telemetry and results, saves
    /// the channel state periodically; once `shared.stop` is triggered it
    /// stops taking telemetry (what is still queued stays unacknowledged:
    /// the broker sends it to the next run), reports that on `intake_closed`,
    /// scores the results still coming (the engines drain their queues)
    /// within the drain budget, and saves the channel state.
    pub async fn run(self, shared: Shared, intake_closed: oneshot::Sender<()>) -> Ended {
        let PipelineTask {
            mut router,
            mut state,
            saves: mut saves_rx,
            mqtt: mut mqtt_rx,
            serial: mut serial_rx,
            results: mut results_rx,
            stage,
        } = self;
        let Shared {
            board,
            out,
            client,
            outbox,
            stop,
            drain_budget,
        } = shared;
        let mut serial_open = true;
        let mut tick = tokio::time::interval(state.tick_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = mqtt_rx.recv(), if !stop.is_triggered() => {
                    let Some(mut batch) = batch else { break };
                    let _busy = stage.begin();
                    let ack = batch.ack.take();
                    let record = (ack.is_some() && state.journaling()).then(|| router.journal_record(&batch));
                    deliver(router.on_batch(batch, Instant::now()), &board, &out).await;
                    match ack {
                        // Taken, and held until its samples are journaled or
                        // a saved state holds them.
                        Some(ack) if state.holds_acks() => state.hold(ack, record.as_ref(), Instant::now()),
                        // Taken: only now may the broker forget it (see ingest::mqtt).
                        Some(ack) => acknowledge(&client, vec![ack]).await,
                        None => {}
                    }
                    let acks = step(&mut router, &mut state, &mut results_rx, &board, &out, &outbox).await;
                    acknowledge(&client, acks).await;
                }
                batch = serial_rx.recv(), if serial_open && !stop.is_triggered() => match batch {
                    Some(batch) => {
                        let _busy = stage.begin();
                        deliver(router.on_batch(batch, Instant::now()), &board, &out).await;
                    }
                    None => serial_open = false, // no serial links
                },
                result = results_rx.recv() => {
                    let Some(result) = result else { break };
                    let _busy = stage.begin();
                    deliver(router.on_results(result, Instant::now()), &board, &out).await;
                }
                done = saves_rx.recv(), if state.busy() => {
                    let Some(done) = done else {
                        state.writer_lost();
                        continue;
                    };
                    let _busy = stage.begin();
                    acknowledge(&client, state.complete(done, &board)).await;
                    // Acknowledgements held meanwhile may already call for the next.
                    let acks = step(&mut router, &mut state, &mut results_rx, &board, &out, &outbox).await;
                    acknowledge(&client, acks).await;
                }
                _ = tick.tick() => if state.due(Instant::now()) != Due::Nothing {
                    let _busy = stage.begin();
                    let acks = step(&mut router, &mut state, &mut results_rx, &board, &out, &outbox).await;
                    acknowledge(&client, acks).await;
                },
                _ = stop.wait(), if !stop.is_triggered() => {}
            }
            if stop.is_triggered() {
                break;
            }
        }

        // Drain: no more telemetry; the engines finish what is queued and
        // their results are scored and published.
        mqtt_rx.close();
        serial_rx.close();
        let _ = intake_closed.send(());
        let deadline = tokio::time::Instant::now() + drain_budget;
        let scored = tokio::time::timeout_at(deadline, async {
            while let Some(result) = results_rx.recv().await {
                deliver(router.on_results(result, Instant::now()), &board, &out).await;
            }
        })
        .await;
        // Engines still running stop instead of waiting for room.
        drop(results_rx);
        // The save and the append with the state writers, if any, are
        // finished first.
        while state.busy() {
            match saves_rx.recv().await {
                Some(done) => acknowledge(&client, state.complete(done, &board)).await,
                None => state.writer_lost(),
            }
        }
        // Every window that will be scored is: the pipelines' state is
        // final. A window still in flight is settled as dropped when it is
        // restored.
        let acks = state.save(router.pipelines(), &board, Instant::now(), now_ns());
        acknowledge(&client, acks).await;
        Ended {
            unsaved: state.unsaved(),
            drain_cut: scored.is_err(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(model: &str, channels: &[&str]) -> PipelineConfig {
        let mut p = super::super::router::tests::config(model, "t/+");
        p.channels = channels.iter().map(|c| c.to_string()).collect();
        p
    }

    fn ensemble(models: &[&str]) -> EnsembleConfig {
        EnsembleConfig {
            name: "vote".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            min_votes: 2,
            max_lag: 4096,
            trusted_only: false,
        }
    }

    fn tasks(owners: &[Owner]) -> Vec<usize> {
        owners.iter().map(|o| o.task).collect()
    }

    #[test]
    fn pipelines_without_ensembles_are_dealt_round_robin_with_local_indices_in_config_order() {
        let ps: Vec<_> = (0..5)
            .map(|i| pipeline(&format!("m{i}"), &[&format!("C-{i}")]))
            .collect();
        let owners = partition(&ps, &[], 2);
        assert_eq!(tasks(&owners), vec![0, 1, 0, 1, 0]);
        let locals: Vec<usize> = owners.iter().map(|o| o.local).collect();
        assert_eq!(locals, vec![0, 0, 1, 1, 2]);
        assert_eq!(tasks(&partition(&ps, &[], 1)), vec![0; 5]);
    }

    #[test]
    fn an_ensembles_members_on_one_channel_share_a_task() {
        let ps = vec![
            pipeline("lstm_A-1", &["A-1"]),
            pipeline("lstm_A-2", &["A-2"]),
            pipeline("vae_A-1", &["A-1"]),
            pipeline("vae_A-2", &["A-2"]),
            pipeline("other", &["A-1"]),
        ];
        let e = [ensemble(&["lstm_{channel}", "vae_{channel}"])];
        let owners = partition(&ps, &e, 2);
        let t = tasks(&owners);
        assert_eq!(t[0], t[2], "A-1's members together");
        assert_eq!(t[1], t[3], "A-2's members together");
        assert_ne!(t[0], t[1], "the two channels spread");
        // Each task's local indices count its own pipelines in config order.
        for task in 0..2 {
            let locals: Vec<usize> = (owners.iter())
                .filter(|o| o.task == task)
                .map(|o| o.local)
                .collect();
            assert_eq!(locals, (0..locals.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_member_serving_every_channel_goes_with_every_member_of_its_ensemble() {
        let ps = vec![
            pipeline("lstm", &[]),
            pipeline("solo", &["B-1"]),
            pipeline("vae_A-1", &["A-1"]),
            pipeline("vae_A-2", &["A-2"]),
        ];
        let e = [ensemble(&["lstm", "vae_{channel}"])];
        let t = tasks(&partition(&ps, &e, 3));
        assert_eq!((t[0], t[0]), (t[2], t[3]));
        assert_ne!(t[1], t[0]);
        // Two groups on three tasks: the first two tasks, the third idle.
        assert!(t.iter().all(|&t| t < 2), "{t:?}");
    }

    #[test]
    fn a_pattern_fits_the_models_it_can_name() {
        assert!(fits("lstm_{channel}", "lstm_A-1"));
        assert!(fits("{channel}_vae", "A-1_vae"));
        assert!(!fits("lstm_{channel}", "vae_A-1"));
        assert!(fits("lstm", "lstm"));
        assert!(!fits("lstm", "lstm_A-1"));
    }
}
