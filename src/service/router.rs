//! The router: the one path every sample takes through the service, and
//! the way back for every result.
//!
//! It owns the [`Pipeline`]s (one per `[[pipeline]]`, in config order; a
//! pipeline's index is its place there) and the ensembles' [`Fuser`], and
//! answers two calls:
//!
//! - [`Router::on_batch`]: a source's [`SampleBatch`] into the pipelines it
//!   is bound for; each window a sample completes is pushed to its model's
//!   batch queue; the scores samples settle (forecasts waiting for them)
//!   come back as messages to publish.
//! - [`Router::on_results`]: an engine batch's window outcomes into their
//!   pipeline; the scores and events they settle, and the ensembles' fused
//!   events, come back as messages to publish, in order.
//!
//! No I/O and no clock of its own: every call takes `now` (it stamps
//! queued windows and ends the latency measurement), and a sample without
//! a time stamp takes its batch's receive time. What it saw happen
//! (rejects, samples, windows, drops, latency, scorer counters) it returns
//! as typed [`Fact`]s beside the messages ([`Routed`]); the service applies
//! both to the status board in one place (`service::account`). Rejects are
//! logged at most once per reason every [`REJECT_LOG_EVERY`]; the router
//! decides which ([`Fact::Rejected`]'s `log`).
//!
//! Displaced windows: the router pushes windows itself, through an
//! injected [`JobQueue`] (the model's [`BatchHandle`] in the service, a
//! plain [`crate::batch::BatchQueue`] in the tests), rather than returning
//! them for the caller to push. When the queue is full the push hands back
//! the window it displaced ([`PushOutcome::Replaced`] or
//! [`PushOutcome::Evicted`]), and the router reports it to its pipeline as
//! [`WindowOutcome::Dropped`] in the same call, so that its channel's
//! scorer skips it instead of waiting for it forever, and no caller can
//! forget to feed it back. A push only takes a lock held for µs, never
//! across inference, so it is not I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{BatchHandle, DropReason, PushOutcome};
use crate::infer::{BatchResult, Job, Work};
use crate::ingest::{Decoding, Origin, RawSample, Reject, RejectReason, SampleBatch};
use crate::journal;
use crate::pipeline::{ChannelOutput, Pipeline};
use crate::publish::{ModelEvent, Outgoing};
use crate::score::{EnsembleConfig, Fuser, ScoredOutput, ScorerCounters, WindowOutcome};

/// Rejects of one reason are logged at most once per this interval; the
/// others are counted, and the next line says how many were not logged.
pub const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where the router queues a pipeline's windows: its model's batch queue.
pub trait JobQueue {
    /// Queues `job` of `channel` at `now`; see [`crate::batch::BatchQueue::push`].
    fn push(&self, channel: u32, job: Job, now: Instant) -> PushOutcome<Job>;
    /// Jobs queued now.
    fn depth(&self) -> usize;
    /// Makes every job queued now due at `now`; see [`crate::batch::BatchQueue::expedite`].
    fn expedite(&self, now: Instant);
}

impl JobQueue for BatchHandle<Job> {
    fn push(&self, channel: u32, job: Job, now: Instant) -> PushOutcome<Job> {
        BatchHandle::push(self, channel, job, now)
    }

    fn depth(&self) -> usize {
        BatchHandle::depth(self)
    }

    fn expedite(&self, now: Instant) {
        BatchHandle::expedite(self, now);
    }
}

/// What the router saw happen, for the status board and the metrics: each
/// is one counter (or a few) and, for rejects and non-finite errors, one
/// stable log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// `count` inputs rejected alike (`gsinfer_samples_rejected_total`).
    /// `log` is `Some(suppressed)` when the first of them is due to be
    /// logged, with the number of this reason not logged since the last
    /// line.
    Rejected {
        /// Where the input came from.
        origin: Origin,
        /// Why.
        reject: Reject,
        /// How many.
        count: u64,
        /// Whether to log it, and how many were suppressed before it.
        log: Option<u64>,
    },
    /// One source input taken: `bytes` of payload (MQTT; a serial link
    /// counts its own bytes) with `samples` accepted, summed over the
    /// pipelines that took them.
    Input {
        /// The source.
        origin: Origin,
        /// Messages: 1, or 0 for a part of a message split over pipeline
        /// tasks other than the first (the message is counted once).
        messages: u64,
        /// Payload size (0 for such a part).
        bytes: usize,
        /// Samples accepted.
        samples: usize,
    },
    /// Samples of `channel` accepted by `model`'s pipeline.
    Samples {
        /// The model.
        model: Arc<str>,
        /// The channel.
        channel: Arc<str>,
        /// How many.
        count: u64,
    },
    /// Windows cut and queued for `model`.
    Windows {
        /// The model.
        model: Arc<str>,
        /// How many.
        count: u64,
    },
    /// Windows (or HTTP request items) of `model` that will never be scored
    /// (`gsinfer_windows_dropped_total`).
    Dropped {
        /// The model.
        model: Arc<str>,
        /// Why.
        reason: DropReason,
        /// How many.
        count: u64,
    },
    /// `model`'s batch queue depth after routing, in jobs.
    QueueDepth {
        /// The model.
        model: Arc<str>,
        /// Jobs queued.
        depth: usize,
    },
    /// Telemetry window latencies of `model`: last sample received → result
    /// scored, in µs, one per window.
    Latencies {
        /// The model.
        model: Arc<str>,
        /// One per window, µs.
        micros: Vec<u64>,
    },
    /// Forecasts of `model` that came after their target sample had left
    /// the actuals ring, since the last such fact.
    LateForecasts {
        /// The model.
        model: Arc<str>,
        /// How many.
        count: u64,
    },
    /// Raw errors of `model` that were NaN or infinite and were left out of
    /// scoring, since the last such fact.
    NonFinite {
        /// The model.
        model: Arc<str>,
        /// How many.
        count: u64,
    },
}

/// What one call to the router produced.
#[derive(Debug, Default)]
pub struct Routed {
    /// Scores and events to publish, in order.
    pub outgoing: Vec<Outgoing>,
    /// What happened, for the status board and the metrics.
    pub facts: Vec<Fact>,
}

/// One pipeline as the router holds it.
#[derive(Debug)]
struct Lane<Q> {
    pipeline: Pipeline,
    model: Arc<str>,
    /// Where its windows go; `None` when its model failed to load: its
    /// samples are then rejected as `model_unavailable`.
    queue: Option<Q>,
    /// Scorer counters already reported as facts.
    reported: ScorerCounters,
}

/// See the module docs. `Q` is where windows are queued.
#[derive(Debug)]
pub struct Router<Q = BatchHandle<Job>> {
    lanes: Vec<Lane<Q>>,
    fuser: Fuser,
    rejects: RejectLog,
    /// Replayed samples a channel already held, since the start.
    already_saved: u64,
}

/// What [`Router::on_replay`] did with a record's samples, counted once per
/// pipeline they were for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Taken, as if received now.
    pub taken: u64,
    /// Already held by the restored state (saved after they were journaled).
    pub already: u64,
    /// Refused for another reason (counted and logged as rejects).
    pub refused: u64,
}

impl std::ops::AddAssign for Replayed {
    fn add_assign(&mut self, other: Self) {
        self.taken += other.taken;
        self.already += other.already;
        self.refused += other.refused;
    }
}

impl<Q: JobQueue> Router<Q> {
    /// A router for `pipelines`, in config order, each with the queue its
    /// windows go to (`None`: its model failed to load), fusing the
    /// `ensembles` (`distrusted`: see [`Fuser::new`]).
    pub fn new(
        pipelines: Vec<(Pipeline, Option<Q>)>,
        ensembles: &[EnsembleConfig],
        distrusted: HashSet<String>,
    ) -> Self {
        let lanes = pipelines
            .into_iter()
            .map(|(pipeline, queue)| Lane {
                model: Arc::from(pipeline.model()),
                pipeline,
                queue,
                reported: ScorerCounters::default(),
            })
            .collect();
        Self {
            lanes,
            fuser: Fuser::new(ensembles, distrusted),
            rejects: RejectLog::default(),
            already_saved: 0,
        }
    }

    /// The pipelines, in config order (to snapshot their state).
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.lanes.iter().map(|l| &l.pipeline)
    }

    /// The pipelines, in config order (to restore their state).
    pub fn pipelines_mut(&mut self) -> impl Iterator<Item = &mut Pipeline> {
        self.lanes.iter_mut().map(|l| &mut l.pipeline)
    }

    /// Makes every window queued now by pipelines `lanes` (indices in
    /// config order) due at `now`: a state save waits for them (see
    /// [`JobQueue::expedite`]); the other models keep batching.
    pub fn expedite(&self, lanes: &[usize], now: Instant) {
        let queues = lanes
            .iter()
            .filter_map(|&ix| self.lanes.get(ix)?.queue.as_ref());
        for q in queues {
            q.expedite(now);
        }
    }

    /// Windows cut by pipelines `lanes` and not yet scored or dropped: 0 is
    /// a point where their state can be saved whole.
    pub fn windows_in_flight(&self, lanes: &[usize]) -> u64 {
        lanes
            .iter()
            .filter_map(|&ix| self.lanes.get(ix))
            .map(|l| l.pipeline.windows_in_flight())
            .sum()
    }

    /// Runs `f` on pipeline `ix` (restoring its saved state, closing the
    /// anomalies a stale one left open) and returns what it produced as
    /// messages, as for any other output. Counters the pipeline brings with
    /// it were counted by the run that saved them, so they are not
    /// reported again.
    pub fn with_pipeline(
        &mut self,
        ix: usize,
        f: impl FnOnce(&mut Pipeline, &mut Vec<ChannelOutput>),
    ) -> Routed {
        let mut routed = Routed::default();
        let Some(lane) = self.lanes.get_mut(ix) else {
            return routed;
        };
        let mut scored = Vec::new();
        f(&mut lane.pipeline, &mut scored);
        lane.reported = lane.pipeline.scorer_totals();
        let fuser = &mut self.fuser;
        forward(
            &lane.pipeline,
            &lane.model,
            fuser,
            scored,
            &mut routed.outgoing,
        );
        routed
    }

    /// Takes `batch` at `now`: its decode rejects are reported, its samples
    /// fed to each pipeline it is bound for (in config order), the windows
    /// they complete queued; returns the scores they settle.
    pub fn on_batch(&mut self, mut batch: SampleBatch, now: Instant) -> Routed {
        let mut routed = Routed::default();
        if batch.decoded.is_empty() {
            let r = Reject::new(
                RejectReason::UnknownChannel,
                "no pipeline's topic filters match",
            );
            self.rejects
                .report(&batch.origin, r, 1, now, &mut routed.facts);
        }
        for d in &mut batch.decoded {
            for r in std::mem::take(&mut d.rejects) {
                self.rejects
                    .report(&batch.origin, r, 1, now, &mut routed.facts);
            }
        }
        // Pipelines in config order whichever decoding feeds them: the order
        // their outputs leave in, as if each had decoded the input itself.
        let mut bound: Vec<(usize, usize)> = (batch.decoded.iter().enumerate())
            .flat_map(|(d, decoding)| decoding.pipelines.iter().map(move |ix| (*ix, d)))
            .collect();
        bound.sort_unstable();
        let mut accepted = 0;
        for (ix, d) in bound {
            let samples = &batch.decoded[d].samples;
            accepted += self.route(ix, samples, &batch, now, &mut routed);
        }
        routed.facts.push(Fact::Input {
            origin: batch.origin,
            messages: u64::from(batch.message),
            bytes: batch.bytes,
            samples: accepted,
        });
        routed
    }

    /// What `batch` (a QoS 1/2 message, before [`Router::on_batch`] takes
    /// it) brings, for the state journal: its samples and the models of
    /// the pipelines they are for.
    pub fn journal_record(&self, batch: &SampleBatch) -> journal::Record {
        let parts = (batch.decoded.iter())
            .filter(|d| !d.samples.is_empty())
            .map(|d| journal::Part {
                models: (d.pipelines.iter())
                    .filter_map(|&ix| self.lanes.get(ix))
                    .map(|l| l.model.to_string())
                    .collect(),
                samples: (d.samples.iter())
                    .map(|(channel, s)| journal::Sample {
                        channel: channel.to_string(),
                        t_ns: s.t_ns,
                        seq: s.seq,
                        values: s.values.clone(),
                    })
                    .collect(),
            })
            .collect();
        journal::Record {
            received_ns: batch.received_ns,
            parts,
        }
    }

    /// Each pipeline's index by its model's name (for [`Router::on_replay`]).
    pub fn model_index(&self) -> HashMap<Arc<str>, usize> {
        (self.lanes.iter().enumerate())
            .map(|(ix, l)| (Arc::clone(&l.model), ix))
            .collect()
    }

    /// Takes `record`, replayed from the state journal at start, at `now`,
    /// as [`Router::on_batch`] takes a message, for the pipelines among
    /// `index` (from [`Router::model_index`]) it names; the rest is not this
    /// router's. A sample its channel already holds (restored from a save
    /// made after it was journaled) is refused as a duplicate or out of
    /// order, as always, but counted in [`Replayed::already`] instead of as
    /// a reject.
    pub fn on_replay(
        &mut self,
        record: &journal::Record,
        index: &HashMap<Arc<str>, usize>,
        now: Instant,
    ) -> (Routed, Replayed) {
        let decoded: Vec<Decoding> = (record.parts.iter())
            .filter_map(|part| {
                let pipelines: Vec<usize> = (part.models.iter())
                    .filter_map(|m| index.get(m.as_str()).copied())
                    .collect();
                (!pipelines.is_empty()).then(|| Decoding {
                    pipelines,
                    samples: (part.samples.iter())
                        .map(|s| {
                            let raw = RawSample {
                                t_ns: s.t_ns,
                                seq: s.seq,
                                values: s.values.clone(),
                            };
                            (Arc::from(s.channel.as_str()), raw)
                        })
                        .collect(),
                    rejects: Vec::new(),
                })
            })
            .collect();
        if decoded.is_empty() {
            return (Routed::default(), Replayed::default());
        }
        let offered: usize = (decoded.iter())
            .map(|d| d.samples.len() * d.pipelines.len())
            .sum();
        let batch = SampleBatch {
            origin: Origin::Journal,
            received: now,
            received_ns: record.received_ns,
            bytes: 0,
            decoded,
            ack: None,
            message: false,
        };
        let before = self.already_saved;
        let routed = self.on_batch(batch, now);
        let already = self.already_saved - before;
        let taken = (routed.facts.iter())
            .map(|f| match f {
                Fact::Input { samples, .. } => *samples as u64,
                _ => 0,
            })
            .sum();
        let replayed = Replayed {
            taken,
            already,
            refused: offered as u64 - taken - already,
        };
        (routed, replayed)
    }

    /// Feeds `samples` of `batch` to pipeline `ix`; returns how many it took.
    fn route(
        &mut self,
        ix: usize,
        samples: &[(Arc<str>, RawSample)],
        batch: &SampleBatch,
        now: Instant,
        routed: &mut Routed,
    ) -> usize {
        let Router {
            lanes,
            fuser,
            rejects,
            already_saved,
        } = self;
        let Lane {
            pipeline,
            model,
            queue,
            ..
        } = &mut lanes[ix];
        let facts = &mut routed.facts;
        let Some(queue) = queue else {
            if !samples.is_empty() {
                let r = Reject::new(
                    RejectReason::ModelUnavailable,
                    format!("model {model} failed to load (see the status page)"),
                );
                rejects.report(&batch.origin, r, samples.len() as u64, now, facts);
            }
            return 0;
        };
        let mut scored = Vec::new();
        let mut tally = Tally::default();
        for (channel, sample) in samples {
            let t_ns = sample.t_ns.unwrap_or(batch.received_ns);
            let taken = pipeline.on_sample(channel, t_ns, sample, batch.received, &mut scored);
            let window = match taken {
                Ok(window) => window,
                Err(r)
                    if batch.origin == Origin::Journal
                        && matches!(
                            r.reason,
                            RejectReason::Duplicate | RejectReason::OutOfOrder
                        ) =>
                {
                    *already_saved += 1;
                    continue;
                }
                Err(r) => {
                    rejects.report(&batch.origin, r, 1, now, facts);
                    continue;
                }
            };
            tally.sample(channel);
            let Some(item) = window else { continue };
            tally.windows += 1;
            let displaced = match queue.push(item.channel, Job::window(item, now), now) {
                PushOutcome::Queued => continue,
                PushOutcome::Replaced(old) | PushOutcome::Evicted(old) => old,
            };
            tally.dropped += 1;
            match displaced.work {
                Work::Window(old) => pipeline.on_window(&old, WindowOutcome::Dropped, &mut scored),
                Work::Request(r) => r.fail(
                    now.saturating_duration_since(displaced.queued),
                    format!("model {model}'s batch queue overflowed; retry later"),
                ),
            }
        }
        let accepted = tally.report(model, queue.depth(), facts);
        forward(pipeline, model, fuser, scored, &mut routed.outgoing);
        accepted as usize
    }

    /// Takes an engine's `result` at `now`: each window's outcome goes to
    /// its pipeline; returns the scores and events they settle, and the
    /// ensembles' fused events, in order.
    pub fn on_results(&mut self, result: BatchResult, now: Instant) -> Routed {
        let mut routed = Routed::default();
        let lane = &mut self.lanes[result.pipeline];
        let mut scored = Vec::new();
        let mut micros = Vec::with_capacity(result.windows.len());
        for (item, outcome) in result.windows {
            micros.push(now.saturating_duration_since(item.received).as_micros() as u64);
            lane.pipeline.on_window(&item, outcome, &mut scored);
        }
        let model = &lane.model;
        routed.facts.push(Fact::Latencies {
            model: Arc::clone(model),
            micros,
        });
        let (totals, reported) = (lane.pipeline.scorer_totals(), lane.reported);
        if totals.late_forecasts > reported.late_forecasts {
            routed.facts.push(Fact::LateForecasts {
                model: Arc::clone(model),
                count: totals.late_forecasts - reported.late_forecasts,
            });
        }
        if totals.nonfinite_errors > reported.nonfinite_errors {
            routed.facts.push(Fact::NonFinite {
                model: Arc::clone(model),
                count: totals.nonfinite_errors - reported.nonfinite_errors,
            });
        }
        lane.reported = totals;
        let fuser = &mut self.fuser;
        forward(&lane.pipeline, model, fuser, scored, &mut routed.outgoing);
        routed
    }
}

/// What one pipeline took of a batch, reported once it is done: one fact
/// per kind, not per sample.
#[derive(Debug, Default)]
struct Tally<'a> {
    /// Accepted samples per channel, in order of first appearance.
    samples: Vec<(&'a Arc<str>, u64)>,
    windows: u64,
    dropped: u64,
}

impl<'a> Tally<'a> {
    fn sample(&mut self, channel: &'a Arc<str>) {
        match self.samples.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, n)) => *n += 1,
            None => self.samples.push((channel, 1)),
        }
    }

    /// Reports the tally of `model`, whose queue now holds `depth` jobs;
    /// returns the samples accepted.
    fn report(self, model: &Arc<str>, depth: usize, facts: &mut Vec<Fact>) -> u64 {
        let model = || Arc::clone(model);
        let accepted = self.samples.iter().map(|(_, n)| n).sum();
        facts.extend(self.samples.into_iter().map(|(channel, count)| {
            let channel = Arc::clone(channel);
            Fact::Samples {
                model: model(),
                channel,
                count,
            }
        }));
        if self.windows > 0 {
            let count = self.windows;
            facts.push(Fact::Windows {
                model: model(),
                count,
            });
        }
        if self.dropped > 0 {
            let (reason, count) = (DropReason::QueueFull, self.dropped);
            facts.push(Fact::Dropped {
                model: model(),
                reason,
                count,
            });
        }
        facts.push(Fact::QueueDepth {
            model: model(),
            depth,
        });
        accepted
    }
}

/// Turns `model`'s `pipeline`'s `scored` outputs into messages, each
/// followed by the fused events of the ensembles it settles.
fn forward(
    pipeline: &Pipeline,
    model: &Arc<str>,
    fuser: &mut Fuser,
    scored: Vec<ChannelOutput>,
    out: &mut Vec<Outgoing>,
) {
    let mut fused = Vec::new();
    for o in scored {
        let channel = Arc::clone(pipeline.channel_name(o.channel));
        fuser.observe(model, &channel, &o.output, &mut fused);
        out.push(match o.output {
            ScoredOutput::Score(score) => Outgoing::Score {
                model: Arc::clone(model),
                channel: Arc::clone(&channel),
                score,
            },
            ScoredOutput::Event(event) => Outgoing::Event(ModelEvent {
                model: Arc::clone(model),
                channel: Arc::clone(&channel),
                event,
                members: None,
            }),
        });
        for (e, event) in fused.drain(..) {
            out.push(Outgoing::Event(ModelEvent {
                model: Arc::from(fuser.config(e).name.as_str()),
                channel: Arc::clone(&channel),
                event,
                members: Some(fuser.voters(e, &channel)),
            }));
        }
    }
}

/// When each reject reason was last logged, and how many of it were not
/// logged since.
#[derive(Debug, Default)]
struct RejectLog {
    last: HashMap<RejectReason, (Instant, u64)>,
}

impl RejectLog {
    /// Reports `count` rejects like `reject` from `origin` at `now` as a
    /// [`Fact::Rejected`], due to be logged if its reason was not logged in
    /// the last [`REJECT_LOG_EVERY`].
    fn report(
        &mut self,
        origin: &Origin,
        reject: Reject,
        count: u64,
        now: Instant,
        facts: &mut Vec<Fact>,
    ) {
        let log = match self.last.get_mut(&reject.reason) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < REJECT_LOG_EVERY => {
                *suppressed += count;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::replace(suppressed, count.saturating_sub(1)))
            }
            None => {
                self.last
                    .insert(reject.reason, (now, count.saturating_sub(1)));
                Some(0)
            }
        };
        facts.push(Fact::Rejected {
            origin: origin.clone(),
            reject,
            count,
            log,
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use rumqttc::QoS;

    use super::*;
    use crate::batch::{BatchConfig, BatchQueue, Next};
    use crate::config::PipelineConfig;
    use crate::ingest::mqtt::{Inbound, TopicRoute, TopicRoutes};
    use crate::ingest::{DecodeLimits, Decoding, PayloadFormat};
    use crate::pipeline::WindowItem;
    use crate::score::{ScoringConfig, ScoringKind, ThresholdConfig};
    use crate::window::WindowConfig;

    /// A model's batch queue without the lock: the real policy, by hand.
    type Queue = Rc<RefCell<BatchQueue<Job>>>;

    impl JobQueue for Queue {
        fn push(&self, channel: u32, job: Job, now: Instant) -> PushOutcome<Job> {
            self.borrow_mut().push(channel, job, now)
        }
        fn depth(&self) -> usize {
            self.borrow().len()
        }
        fn expedite(&self, now: Instant) {
            self.borrow_mut().expedite(now);
        }
    }

    fn queue(capacity: usize) -> Queue {
        Rc::new(RefCell::new(BatchQueue::new(
            capacity,
            vec![64],
            Duration::ZERO,
        )))
    }

    /// One feature, windows of two samples, stride one; the score is the
    /// window's reconstruction error as it is, anomalous above 1.
    pub(in crate::service) fn config(model: &str, topic: &str) -> PipelineConfig {
        PipelineConfig {
            model: model.into(),
            engine: Default::default(),
            topics: vec![topic.into()],
            channels: vec![],
            format: PayloadFormat::Json,
            features: 1,
            window: WindowConfig {
                length: 2,
                stride: 1,
            },
            batch: BatchConfig::default(),
            scoring: ScoringConfig {
                kind: ScoringKind::Reconstruction,
                target_feature: 0,
                smoothing_span: 1.0,
                smoothing_adjust: false,
                threshold: ThresholdConfig::Static { value: 1.0 },
                actuals_capacity: 64,
                event_hold: 1,
                reconstruction_features: vec![],
            },
        }
    }

    fn router(pipelines: Vec<(PipelineConfig, Option<Queue>)>) -> Router<Queue> {
        let lanes = pipelines
            .into_iter()
            .map(|(c, q)| (Pipeline::new(&c), q))
            .collect();
        Router::new(lanes, &[], HashSet::new())
    }

    fn sample(t_ns: i64, v: f32) -> RawSample {
        RawSample {
            t_ns: Some(t_ns),
            seq: None,
            values: vec![v],
        }
    }

    /// An MQTT batch of `samples` of `channel` for `pipelines`.
    fn batch(
        channel: &str,
        samples: Vec<RawSample>,
        pipelines: Vec<usize>,
        at: Instant,
    ) -> SampleBatch {
        let name: Arc<str> = Arc::from(channel);
        SampleBatch {
            origin: Origin::Mqtt {
                topic: Arc::from(format!("telemetry/{channel}")),
            },
            received: at,
            received_ns: 1_000,
            bytes: 100,
            decoded: vec![Decoding {
                pipelines,
                samples: samples
                    .into_iter()
                    .map(|s| (Arc::clone(&name), s))
                    .collect(),
                rejects: vec![],
            }],
            ack: None,
            message: true,
        }
    }

    /// Everything queued, as the engine would take it.
    fn take_windows(q: &Queue, now: Instant) -> Vec<WindowItem> {
        let mut items = Vec::new();
        while let Next::Dispatch(b) = q.borrow_mut().next_batch(now) {
            items.extend(b.items.into_iter().map(|j| match j.work {
                Work::Window(w) => w,
                Work::Request(_) => panic!("no requests here"),
            }));
        }
        items
    }

    /// Reconstructs each window with `add[i]` added to every value (0: perfectly).
    fn results(pipeline: usize, windows: Vec<WindowItem>, add: &[f32]) -> BatchResult {
        let windows = windows
            .into_iter()
            .zip(add)
            .map(|(w, add)| {
                let output = w.values.iter().map(|v| v + add).collect();
                let input = w.values.clone();
                (w, WindowOutcome::Output { output, input })
            })
            .collect();
        BatchResult { pipeline, windows }
    }

    fn rejected(facts: &[Fact]) -> Vec<(RejectReason, u64, Option<u64>)> {
        (facts.iter())
            .filter_map(|f| match f {
                Fact::Rejected {
                    reject, count, log, ..
                } => Some((reject.reason, *count, *log)),
                _ => None,
            })
            .collect()
    }

    fn accepted(facts: &[Fact]) -> Vec<(&str, &str, u64)> {
        (facts.iter())
            .filter_map(|f| match f {
                Fact::Samples {
                    model,
                    channel,
                    count,
                } => Some((&**model, &**channel, *count)),
                _ => None,
            })
            .collect()
    }

    fn input_samples(facts: &[Fact]) -> usize {
        match facts.last() {
            Some(Fact::Input { samples, .. }) => *samples,
            other => panic!("the last fact is the input, not {other:?}"),
        }
    }

    /// `model index` of each score, `model kind` of each event.
    fn published(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outgoing::Score { model, score, .. } => format!("{model} {}", score.index),
                Outgoing::Event(e) => format!("{} {}", e.model, e.event.event.as_str()),
                Outgoing::Mark(_) => "mark".into(),
            })
            .collect()
    }

    #[test]
    fn a_message_reaches_every_pipeline_whose_filters_match() {
        let t0 = Instant::now();
        let (a, b, c) = (queue(16), queue(16), queue(16));
        let mut router = router(vec![
            (config("a", "telemetry/+"), Some(a.clone())),
            (config("b", "other/+"), Some(b.clone())),
            (config("c", "telemetry/A-1"), Some(c.clone())),
        ]);
        let topics = TopicRoutes::new(
            (router.pipelines())
                .map(|p| TopicRoute {
                    filters: p.config().topics.clone(),
                    format: p.config().format,
                    limits: DecodeLimits::new(1),
                })
                .collect(),
        );
        let payload = br#"[{"t": 1, "v": [1]}, {"t": 2, "v": [2]}]"#.to_vec();
        let msg = rumqttc::Publish::new("telemetry/A-1", QoS::AtLeastOnce, payload);
        let batch = topics.batch(Inbound::from_publish(msg, t0), 0);
        let routed = router.on_batch(batch, t0);
        assert_eq!(
            accepted(&routed.facts),
            vec![("a", "A-1", 2), ("c", "A-1", 2)]
        );
        assert_eq!(input_samples(&routed.facts), 4);
        let depths = [&a, &b, &c].map(|q| q.borrow().len());
        assert_eq!(depths, [1, 0, 1]);
    }

    #[test]
    fn unknown_topics_and_channels_are_rejected_and_counted() {
        let t0 = Instant::now();
        let mut only_a1 = config("m", "telemetry/+");
        only_a1.channels = vec!["A-1".into()];
        let mut router = router(vec![(only_a1, Some(queue(16)))]);
        let mut nowhere = batch("X-9", vec![sample(1, 1.0)], vec![], t0);
        nowhere.decoded.clear();
        let routed = router.on_batch(nowhere, t0);
        let unknown = RejectReason::UnknownChannel;
        assert_eq!(rejected(&routed.facts), vec![(unknown, 1, Some(0))]);
        assert_eq!(input_samples(&routed.facts), 0);
        let routed = router.on_batch(batch("B-2", vec![sample(1, 1.0)], vec![0], t0), t0);
        // The same reason within 10 s: counted, not logged.
        assert_eq!(rejected(&routed.facts), vec![(unknown, 1, None)]);
        assert!(accepted(&routed.facts).is_empty());
        assert_eq!(input_samples(&routed.facts), 0);
    }

    #[test]
    fn a_bad_sample_is_rejected_and_the_rest_of_the_batch_goes_through() {
        let t0 = Instant::now();
        let q = queue(16);
        let mut router = router(vec![(config("m", "telemetry/+"), Some(q.clone()))]);
        let two_values = RawSample {
            values: vec![1.0, 2.0],
            ..sample(3, 0.0)
        };
        let samples = vec![
            sample(1, 1.0),
            sample(2, f32::NAN),
            two_values,
            sample(4, 4.0),
        ];
        let mut batch = batch("A-1", samples, vec![0], t0);
        let malformed = Reject::new(RejectReason::Malformed, "sample 4 of 5: not JSON");
        batch.decoded[0].rejects.push(malformed);
        let routed = router.on_batch(batch, t0);
        assert_eq!(
            rejected(&routed.facts),
            vec![
                (RejectReason::Malformed, 1, Some(0)),
                (RejectReason::NonFinite, 1, Some(0)),
                (RejectReason::WrongLength, 1, Some(0)),
            ]
        );
        assert_eq!(accepted(&routed.facts), vec![("m", "A-1", 2)]);
        let windows = take_windows(&q, t0);
        assert_eq!(windows.len(), 1);
        assert_eq!(
            (windows[0].end_t_ns, &windows[0].values),
            (4, &vec![1.0, 4.0])
        );
    }

    #[test]
    fn a_failed_models_samples_are_rejected_as_model_unavailable() {
        let t0 = Instant::now();
        let mut router = router(vec![
            (config("broken", "telemetry/+"), None),
            (config("fine", "telemetry/+"), Some(queue(16))),
        ]);
        let samples = vec![sample(1, 1.0), sample(2, 2.0)];
        let routed = router.on_batch(batch("A-1", samples, vec![0, 1], t0), t0);
        let unavailable = RejectReason::ModelUnavailable;
        assert_eq!(rejected(&routed.facts), vec![(unavailable, 2, Some(0))]);
        let Fact::Rejected { reject, .. } = &routed.facts[0] else {
            unreachable!()
        };
        assert_eq!(
            reject.detail,
            "model broken failed to load (see the status page)"
        );
        assert_eq!(accepted(&routed.facts), vec![("fine", "A-1", 2)]);
        assert_eq!(input_samples(&routed.facts), 2);
    }

    #[test]
    fn a_completed_window_is_pushed_as_a_job() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(3);
        let q = queue(16);
        let mut router = router(vec![(config("m", "telemetry/+"), Some(q.clone()))]);
        let samples = vec![sample(1, 1.0), sample(2, 2.0), sample(3, 3.0)];
        let routed = router.on_batch(batch("A-1", samples, vec![0], t0), now);
        let model: Arc<str> = Arc::from("m");
        assert!(routed.facts.contains(&Fact::Windows {
            model: Arc::clone(&model),
            count: 2
        }));
        assert!(routed.facts.contains(&Fact::QueueDepth { model, depth: 2 }));
        let Next::Dispatch(b) = q.borrow_mut().next_batch(now) else {
            panic!("due at once")
        };
        let jobs: Vec<(Instant, u64, u64, Instant)> = (b.items.iter())
            .map(|j| match &j.work {
                Work::Window(w) => (j.queued, w.seq, w.end_index, w.received),
                Work::Request(_) => unreachable!(),
            })
            .collect();
        assert_eq!(jobs, vec![(now, 0, 1, t0), (now, 1, 2, t0)]);
        assert!(routed.outgoing.is_empty(), "nothing scored yet");
    }

    #[test]
    fn results_become_scores_and_events_in_order() {
        let t0 = Instant::now();
        let q = queue(16);
        let mut router = router(vec![(config("m", "telemetry/+"), Some(q.clone()))]);
        let samples = (1..=4).map(|t| sample(t, 0.0)).collect();
        router.on_batch(batch("A-1", samples, vec![0], t0), t0);
        let windows = take_windows(&q, t0);
        let later = t0 + Duration::from_millis(7);
        let routed = router.on_results(results(0, windows, &[0.0, 5.0, 0.0]), later);
        assert_eq!(
            published(&routed.outgoing),
            ["m 1", "m 2", "m anomaly_start", "m 3", "m anomaly_end"]
        );
        let Outgoing::Event(end) = &routed.outgoing[4] else {
            unreachable!()
        };
        assert_eq!((end.event.start, end.event.end), (2, Some(2)));
        assert_eq!(&*end.channel, "A-1");
        assert_eq!(end.members, None);
        let latencies = Fact::Latencies {
            model: Arc::from("m"),
            micros: vec![7_000; 3],
        };
        assert_eq!(routed.facts, vec![latencies]);
    }

    #[test]
    fn a_dropped_window_is_scored_as_dropped() {
        let t0 = Instant::now();
        let q = queue(1);
        let mut router = router(vec![(config("m", "telemetry/+"), Some(q.clone()))]);
        let samples = (1..=3).map(|t| sample(t, 0.0)).collect();
        let routed = router.on_batch(batch("A-1", samples, vec![0], t0), t0);
        // Window 1 took window 0's place in the full queue.
        assert!(routed.facts.contains(&Fact::Dropped {
            model: Arc::from("m"),
            reason: DropReason::QueueFull,
            count: 1,
        }));
        let windows = take_windows(&q, t0);
        assert_eq!(windows.iter().map(|w| w.seq).collect::<Vec<_>>(), [1]);
        // Window 0 was reported dropped: window 1 is scored without it.
        let routed = router.on_results(results(0, windows, &[0.0]), t0);
        assert_eq!(published(&routed.outgoing), ["m 2"]);
        // Window 2 displaced by window 3, which the engine then fails on:
        // window 4 is scored without either.
        let samples = (4..=5).map(|t| sample(t, 0.0)).collect();
        router.on_batch(batch("A-1", samples, vec![0], t0), t0);
        let failed = take_windows(&q, t0).remove(0);
        assert_eq!(failed.seq, 3);
        let result = BatchResult {
            pipeline: 0,
            windows: vec![(failed, WindowOutcome::Dropped)],
        };
        assert!(router.on_results(result, t0).outgoing.is_empty());
        router.on_batch(batch("A-1", vec![sample(6, 0.0)], vec![0], t0), t0);
        let routed = router.on_results(results(0, take_windows(&q, t0), &[0.0]), t0);
        assert_eq!(published(&routed.outgoing), ["m 5"]);
    }

    #[test]
    fn an_ensembles_fused_event_names_its_members() {
        let t0 = Instant::now();
        let (a, b) = (queue(16), queue(16));
        let lanes = vec![
            (Pipeline::new(&config("a", "telemetry/+")), Some(a.clone())),
            (Pipeline::new(&config("b", "telemetry/+")), Some(b.clone())),
        ];
        let majority = EnsembleConfig {
            name: "majority".into(),
            models: vec!["a".into(), "b".into()],
            min_votes: 2,
            max_lag: 100,
            trusted_only: false,
        };
        let mut router = Router::new(lanes, &[majority], HashSet::new());
        let samples = (1..=4).map(|t| sample(t, 0.0)).collect();
        router.on_batch(batch("A-1", samples, vec![0, 1], t0), t0);
        let add = [0.0, 5.0, 0.0];
        let routed = router.on_results(results(0, take_windows(&a, t0), &add), t0);
        assert_eq!(
            published(&routed.outgoing),
            ["a 1", "a 2", "a anomaly_start", "a 3", "a anomaly_end"],
            "one vote of two raises nothing"
        );
        let routed = router.on_results(results(1, take_windows(&b, t0), &add), t0);
        assert_eq!(
            published(&routed.outgoing),
            [
                "b 1",
                "b 2",
                "b anomaly_start",
                "majority anomaly_start",
                "b 3",
                "b anomaly_end",
                "majority anomaly_end"
            ]
        );
        let Outgoing::Event(fused) = &routed.outgoing[6] else {
            unreachable!()
        };
        assert_eq!(fused.members, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!((&*fused.channel, fused.event.start), ("A-1", 2));
    }

    #[test]
    fn a_reason_is_logged_at_most_once_every_ten_seconds() {
        let t0 = Instant::now();
        let origin = Origin::Serial {
            link: Arc::from("uhf"),
        };
        let mut log = RejectLog::default();
        let mut facts = Vec::new();
        let dup = || Reject::new(RejectReason::Duplicate, "sequence 3 after 3");
        let late = || Reject::new(RejectReason::OutOfOrder, "time 1 ns is before 2 ns");
        let s = Duration::from_secs;
        log.report(&origin, dup(), 1, t0, &mut facts);
        log.report(&origin, dup(), 1, t0 + s(1), &mut facts);
        log.report(&origin, late(), 1, t0 + s(1), &mut facts);
        log.report(&origin, dup(), 3, t0 + s(9), &mut facts);
        log.report(&origin, dup(), 2, t0 + s(10), &mut facts);
        log.report(&origin, dup(), 1, t0 + s(11), &mut facts);
        let logs: Vec<_> = rejected(&facts).into_iter().map(|r| r.2).collect();
        assert_eq!(logs, [Some(0), None, Some(0), None, Some(4), None]);
        assert_eq!(
            facts[0].clone(),
            Fact::Rejected {
                origin,
                reject: dup(),
                count: 1,
                log: Some(0),
            }
        );
    }
}
