//! One pipeline's per-channel state, shared verbatim by the streaming
//! service and `gsinfer eval`: validate a sample, cut its window, and turn
//! window results into scores and events.
//!
//! It does no I/O and reads no clock, so the offline evaluation and the
//! live service compute the same scores from the same samples, whatever
//! batching and timing did in between.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::ingest::decode::{RawSample, Reject, RejectReason};
use crate::score::{ChannelScorer, ScoredOutput, ScorerCounters, WindowOutcome};
use crate::window::ChannelWindows;

/// A window on its way through the batcher and an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowItem {
    /// Channel id within its pipeline.
    pub channel: u32,
    /// Per-channel window number.
    pub seq: u64,
    /// Index of the window's last sample.
    pub end_index: u64,
    /// Time stamp of that sample, ns since the Unix epoch.
    pub end_t_ns: i64,
    /// When that sample was received (for the latency metric).
    pub received: Instant,
    /// `[L, F]` row-major values.
    pub values: Vec<f32>,
}

/// A scored output of one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelOutput {
    /// Channel id within its pipeline.
    pub channel: u32,
    /// The score or event.
    pub output: ScoredOutput,
}

/// One channel's state: everything a restart must keep for the channel to
/// go on as if it had never stopped (its window ring, sample index, the
/// last sample's time and `seq`, the scorer's smoothing, threshold and open
/// anomaly). Saved and restored by [`crate::state`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelState {
    name: Arc<str>,
    windows: ChannelWindows,
    scorer: ChannelScorer,
    last_t_ns: Option<i64>,
    last_seq: Option<u64>,
}

impl ChannelState {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Samples taken so far (the index the next one gets).
    pub fn samples(&self) -> u64 {
        self.windows.count()
    }

    /// Windows settled so far (scored or dropped).
    pub fn windows_settled(&self) -> u64 {
        self.scorer.windows_settled()
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    ids: HashMap<String, u32>,
    /// Shared so that a checkpoint's snapshot is a copy of pointers, not of
    /// the states: a channel is copied (`Arc::make_mut`) only when it
    /// changes while the state writer still holds the snapshot, once, and
    /// on its own next sample rather than all at once (BENCHMARKS.md,
    /// "Snapshots that share the channels").
    channels: Vec<Arc<ChannelState>>,
    allowed: Option<HashSet<String>>,
}

impl Pipeline {
    /// An empty pipeline; channels are created on their first sample.
    pub fn new(config: &PipelineConfig) -> Self {
        let allowed =
            (!config.channels.is_empty()).then(|| config.channels.iter().cloned().collect());
        Self {
            config: config.clone(),
            ids: HashMap::new(),
            channels: Vec::new(),
            allowed,
        }
    }

    /// The pipeline's configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// The model this pipeline serves.
    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// The name of channel `id` (shared, so outputs carry it without a copy).
    pub fn channel_name(&self, id: u32) -> &Arc<str> {
        &self.channels[id as usize].name
    }

    /// Number of channels seen so far.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Scorer counters summed over all channels.
    pub fn scorer_totals(&self) -> ScorerCounters {
        self.channels
            .iter()
            .fold(ScorerCounters::default(), |t, c| {
                let k = c.scorer.counters();
                ScorerCounters {
                    late_forecasts: t.late_forecasts + k.late_forecasts,
                    skipped_windows: t.skipped_windows + k.skipped_windows,
                    nonfinite_errors: t.nonfinite_errors + k.nonfinite_errors,
                }
            })
    }

    /// Every channel's state, in channel-id order. Cloning one (or the
    /// slice) shares it: a later change of the pipeline's channel copies
    /// the channel first, so a clone keeps the state as it was.
    pub fn channel_states(&self) -> &[Arc<ChannelState>] {
        &self.channels
    }

    /// Windows cut but not yet scored or dropped, over all channels: 0 at
    /// a point where the state can be saved and restored without loss.
    pub fn windows_in_flight(&self) -> u64 {
        self.channels
            .iter()
            .map(|c| c.windows.windows_cut() - c.scorer.windows_settled())
            .sum()
    }

    /// Replaces the state of the channels named in `states` (a pipeline
    /// that has seen no sample yet, as after a restart); a channel this
    /// pipeline no longer serves is left out. A window that was in flight
    /// when the state was taken (not expected: states are saved when none
    /// is) is settled as dropped, so scoring never waits for it. Returns
    /// the channels restored.
    pub fn restore(&mut self, states: Vec<ChannelState>) -> usize {
        let mut restored = 0;
        for mut state in states {
            state.scorer.set_stride(self.config.window.stride);
            let mut sink = Vec::new();
            for seq in state.scorer.windows_settled()..state.windows.windows_cut() {
                state
                    .scorer
                    .on_window(seq, 0, 0, WindowOutcome::Dropped, &mut sink);
            }
            if self
                .allowed
                .as_ref()
                .is_some_and(|a| !a.contains(&*state.name))
            {
                continue;
            }
            match self.ids.get(&*state.name) {
                Some(id) => self.channels[*id as usize] = Arc::new(state),
                None => {
                    self.ids
                        .insert(state.name.to_string(), self.channels.len() as u32);
                    self.channels.push(Arc::new(state));
                }
            }
            restored += 1;
        }
        restored
    }

    /// Closes every open anomaly (e.g. the state it was open in is too old
    /// to go on from), saying why (`reason`): one `anomaly_end` per channel
    /// with one open, to `out`.
    pub fn close_open_anomalies(&mut self, reason: &'static str, out: &mut Vec<ChannelOutput>) {
        for (id, c) in self.channels.iter_mut().enumerate() {
            if let Some(event) = Arc::make_mut(c).scorer.close_anomaly(reason) {
                out.push(ChannelOutput {
                    channel: id as u32,
                    output: ScoredOutput::Event(event),
                });
            }
        }
    }

    fn channel_id(&mut self, name: &str) -> Result<u32, Reject> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(name) {
                return Err(Reject {
                    reason: RejectReason::UnknownChannel,
                    detail: format!(
                        "channel `{name}` is not in pipeline `{}`'s channels",
                        self.config.model
                    ),
                });
            }
        }
        let id = self.channels.len() as u32;
        self.channels.push(Arc::new(ChannelState {
            name: Arc::from(name),
            windows: ChannelWindows::new(&self.config.window, self.config.features),
            scorer: ChannelScorer::new(
                &self.config.scoring,
                self.config.features,
                self.config.window.stride,
            ),
            last_t_ns: None,
            last_seq: None,
        }));
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    /// Accepts one sample of `channel` with time stamp `t_ns` (ns since
    /// epoch), received at `received`. Returns the window it completes, if
    /// any; scores it settles (forecasts waiting for it) go to `out`.
    ///
    /// # Errors
    /// A [`Reject`] (wrong length, non-finite value, time going backwards,
    /// repeated sequence number, unknown channel); the channel's state is
    /// left exactly as it was.
    pub fn on_sample(
        &mut self,
        channel: &str,
        t_ns: i64,
        sample: &RawSample,
        received: Instant,
        out: &mut Vec<ChannelOutput>,
    ) -> Result<Option<WindowItem>, Reject> {
        let features = self.config.features;
        if sample.values.len() != features {
            return Err(Reject {
                reason: RejectReason::WrongLength,
                detail: format!(
                    "channel `{channel}`: {} values, expected {features}",
                    sample.values.len()
                ),
            });
        }
        if let Some(i) = sample.values.iter().position(|v| !v.is_finite()) {
            return Err(Reject {
                reason: RejectReason::NonFinite,
                detail: format!("channel `{channel}`: value {i} is not finite"),
            });
        }
        let id = self.channel_id(channel)?;
        // Checked on the shared state: a refused sample copies nothing.
        let state = &self.channels[id as usize];
        if let (Some(seq), Some(last)) = (sample.seq, state.last_seq) {
            if seq <= last {
                return Err(Reject {
                    reason: RejectReason::Duplicate,
                    detail: format!("channel `{channel}`: sequence {seq} after {last}"),
                });
            }
        }
        if let Some(last) = state.last_t_ns {
            if t_ns < last {
                return Err(Reject {
                    reason: RejectReason::OutOfOrder,
                    detail: format!("channel `{channel}`: time {t_ns} ns is before the previous sample's {last} ns"),
                });
            }
            if t_ns == last && sample.seq.is_none() {
                return Err(Reject {
                    reason: RejectReason::Duplicate,
                    detail: format!("channel `{channel}`: a second sample at {t_ns} ns"),
                });
            }
        }
        let state = Arc::make_mut(&mut self.channels[id as usize]);
        state.last_t_ns = Some(t_ns);
        state.last_seq = sample.seq.or(state.last_seq);
        let index = state.windows.count();
        let mut scored = Vec::new();
        state
            .scorer
            .on_sample(index, t_ns, &sample.values, &mut scored);
        out.extend(scored.into_iter().map(|output| ChannelOutput {
            channel: id,
            output,
        }));
        Ok(state.windows.push(&sample.values).map(|w| WindowItem {
            channel: id,
            seq: w.seq,
            end_index: w.end_index,
            end_t_ns: t_ns,
            received,
            values: w.values,
        }))
    }

    /// Reports what became of window `item` (its values may have been
    /// moved into `outcome`); scores now due go to `out`.
    pub fn on_window(
        &mut self,
        item: &WindowItem,
        outcome: WindowOutcome,
        out: &mut Vec<ChannelOutput>,
    ) {
        let state = Arc::make_mut(&mut self.channels[item.channel as usize]);
        let mut scored = Vec::new();
        state.scorer.on_window(
            item.seq,
            item.end_index,
            item.end_t_ns,
            outcome,
            &mut scored,
        );
        out.extend(scored.into_iter().map(|output| ChannelOutput {
            channel: item.channel,
            output,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchConfig;
    use crate::score::{ScoringConfig, ScoringKind, ThresholdConfig};
    use crate::window::WindowConfig;

    fn config(channels: Vec<String>) -> PipelineConfig {
        PipelineConfig {
            model: "m".into(),
            engine: Default::default(),
            topics: vec!["telemetry/+".into()],
            channels,
            format: Default::default(),
            features: 2,
            window: WindowConfig {
                length: 3,
                stride: 1,
            },
            batch: BatchConfig::default(),
            scoring: ScoringConfig {
                kind: ScoringKind::Forecast,
                target_feature: 0,
                smoothing_span: 1.0,
                smoothing_adjust: false,
                threshold: ThresholdConfig::Static { value: 10.0 },
                actuals_capacity: 64,
                event_hold: 1,
                reconstruction_features: vec![],
            },
        }
    }

    fn sample(seq: Option<u64>, v: f32) -> RawSample {
        RawSample {
            t_ns: None,
            seq,
            values: vec![v, 0.0],
        }
    }

    #[test]
    fn rejected_samples_leave_the_channel_untouched() {
        let mut p = Pipeline::new(&config(vec![]));
        let now = Instant::now();
        let mut out = Vec::new();
        assert!(p
            .on_sample("a", 10, &sample(None, 1.0), now, &mut out)
            .unwrap()
            .is_none());
        let reasons: Vec<RejectReason> = [
            p.on_sample("a", 5, &sample(None, 1.0), now, &mut out),
            p.on_sample("a", 10, &sample(None, 1.0), now, &mut out),
            p.on_sample(
                "a",
                11,
                &RawSample {
                    t_ns: None,
                    seq: None,
                    values: vec![1.0],
                },
                now,
                &mut out,
            ),
            p.on_sample("a", 11, &sample(None, f32::NAN), now, &mut out),
        ]
        .into_iter()
        .map(|r| r.unwrap_err().reason)
        .collect();
        assert_eq!(
            reasons,
            vec![
                RejectReason::OutOfOrder,
                RejectReason::Duplicate,
                RejectReason::WrongLength,
                RejectReason::NonFinite
            ]
        );
        // The next good samples complete the first window at index 2, as if nothing happened.
        assert!(p
            .on_sample("a", 11, &sample(None, 2.0), now, &mut out)
            .unwrap()
            .is_none());
        let w = p
            .on_sample("a", 12, &sample(None, 3.0), now, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!((w.seq, w.end_index, w.end_t_ns), (0, 2, 12));
        assert_eq!(w.values, vec![1.0, 0.0, 2.0, 0.0, 3.0, 0.0]);
    }

    #[test]
    fn sequence_numbers_must_increase() {
        let mut p = Pipeline::new(&config(vec![]));
        let now = Instant::now();
        let mut out = Vec::new();
        p.on_sample("a", 1, &sample(Some(7), 1.0), now, &mut out)
            .unwrap();
        let r = p
            .on_sample("a", 2, &sample(Some(7), 1.0), now, &mut out)
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::Duplicate);
    }

    #[test]
    fn channels_outside_the_allow_list_are_unknown() {
        let mut p = Pipeline::new(&config(vec!["a".into()]));
        let mut out = Vec::new();
        let r = p
            .on_sample("b", 1, &sample(None, 1.0), Instant::now(), &mut out)
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownChannel);
        assert_eq!(p.channel_count(), 0);
    }

    #[test]
    fn forecast_scores_pair_with_the_next_sample() {
        let mut p = Pipeline::new(&config(vec![]));
        let now = Instant::now();
        let mut out = Vec::new();
        let mut windows = Vec::new();
        for i in 0..5 {
            if let Some(w) = p
                .on_sample("a", i, &sample(None, i as f32), now, &mut out)
                .unwrap()
            {
                windows.push(w);
            }
        }
        assert_eq!(windows.len(), 3);
        for w in &windows {
            // Predict the last value again: error 1 against the next sample.
            let last = w.values[w.values.len() - 2];
            p.on_window(
                w,
                WindowOutcome::Output {
                    output: vec![last],
                    input: vec![],
                },
                &mut out,
            );
        }
        let scores: Vec<(u64, f32)> = out
            .iter()
            .filter_map(|o| match &o.output {
                ScoredOutput::Score(s) => Some((s.index, s.error)),
                _ => None,
            })
            .collect();
        // Windows end at 2, 3, 4; sample 5 has not arrived, so two scores.
        assert_eq!(scores, vec![(3, 1.0), (4, 1.0)]);
    }
}
