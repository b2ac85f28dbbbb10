//! One channel's scoring state: pairs forecasts with the samples that
//! arrive later, restores window order, smooths, thresholds, raises events.
//!
//! Windows may come back from the engines out of order (several engine
//! instances) or not at all (replaced in a full queue); every window the
//! pipeline cut is reported here exactly once, as a result or as dropped,
//! and scores are computed strictly in window order so the EWMA — and so
//! every score — is the same whatever the batching did.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::error::{reconstruction_error, Ewma};
use super::events::{AnomalyEvent, EventDetector};
use super::threshold::{Decision, Point, Threshold};
use super::{ScoringConfig, ScoringKind};

/// Windows held for reordering before the scorer gives up on a missing one.
const REORDER_LIMIT: usize = 4096;

/// The score of one sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Sample index in the channel's stream.
    pub index: u64,
    /// The sample's time stamp, ns since the Unix epoch.
    pub t_ns: i64,
    /// Raw error (absolute forecast error, or reconstruction MSE).
    pub error: f32,
    /// Smoothed error.
    pub score: f32,
    /// Threshold in force.
    pub threshold: f32,
    /// `score > threshold`.
    pub anomalous: bool,
}

/// What scoring a window or a sample produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoredOutput {
    /// A new score.
    Score(Score),
    /// An anomaly started or ended.
    Event(AnomalyEvent),
}

/// What became of a window sent to the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WindowOutcome {
    /// The engine's output row for the window, and the window itself
    /// (`[L, F]`, needed by reconstruction scoring).
    Output {
        /// The model's output for this window (one row of the batch).
        output: Vec<f32>,
        /// The window's input values.
        input: Vec<f32>,
    },
    /// The window never reached an engine (queue full, engine error).
    Dropped,
}

/// Counters of one channel's scorer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScorerCounters {
    /// Forecasts whose target sample had left the actuals ring.
    pub late_forecasts: u64,
    /// Windows skipped because a missing one was never reported.
    pub skipped_windows: u64,
    /// Raw errors that were NaN or infinite (a model output or a value that
    /// was not finite): counted and left out, so one bad output cannot
    /// poison the smoothing and silence the channel for good.
    pub nonfinite_errors: u64,
}

/// See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelScorer {
    kind: ScoringKind,
    target_feature: usize,
    features: usize,
    selected: Vec<usize>,
    capacity: usize,
    /// Forecast steps scored per window: the pipeline's stride (see
    /// [`ChannelScorer::new`]). Not saved: a state saved under another
    /// stride is discarded on restore, and [`ChannelScorer::set_stride`]
    /// sets it from the configuration.
    #[serde(skip, default = "one")]
    horizon: usize,
    /// Recent `(t_ns, target value)` by sample index, starting at `base`.
    actuals: VecDeque<(i64, f32)>,
    base: u64,
    /// Forecasts `(target index, prediction)` whose sample has not arrived.
    pending: VecDeque<(u64, f32)>,
    next_seq: u64,
    reorder: BTreeMap<u64, (u64, i64, WindowOutcome)>,
    ewma: Ewma,
    threshold: Threshold,
    events: EventDetector,
    counters: ScorerCounters,
    decisions: Vec<Decision>,
}

fn one() -> usize {
    1
}

impl ChannelScorer {
    /// A scorer for one channel of a pipeline whose samples carry
    /// `features` values and whose windows end every `stride` samples.
    ///
    /// A forecasting model's output row is read as forecasts of the next
    /// samples, step 1 first (`[H]`, H ≥ 1). Of each window's forecast the
    /// first `min(H, stride)` steps are scored, step h against sample
    /// end + h, so with `stride ≤ H` every sample is scored exactly once
    /// and one window in `stride` is run (telemanom's models forecast
    /// H = 10 steps; Hundman et al., KDD 2018, §3.1). With `stride > H`
    /// the samples between are not scored.
    pub fn new(config: &ScoringConfig, features: usize, stride: usize) -> Self {
        Self {
            kind: config.kind,
            target_feature: config.target_feature,
            features: features.max(1),
            selected: config.reconstruction_features.clone(),
            capacity: config.actuals_capacity.max(1),
            horizon: stride.max(1),
            actuals: VecDeque::new(),
            base: 0,
            pending: VecDeque::new(),
            next_seq: 0,
            reorder: BTreeMap::new(),
            ewma: Ewma::new(config.smoothing_span, config.smoothing_adjust),
            threshold: Threshold::new(&config.threshold),
            events: EventDetector::new(config.event_hold),
            counters: ScorerCounters::default(),
            decisions: Vec::new(),
        }
    }

    /// Sets the pipeline's stride after a restore (see [`ChannelScorer::new`]).
    pub fn set_stride(&mut self, stride: usize) {
        self.horizon = stride.max(1);
    }

    /// Counters so far.
    pub fn counters(&self) -> ScorerCounters {
        self.counters
    }

    /// Windows settled so far, scored or dropped (the `seq` awaited next).
    pub fn windows_settled(&self) -> u64 {
        self.next_seq
    }

    /// Ends the open anomaly, if any, at its last anomalous sample, saying
    /// why (`reason`, e.g. `stale_state`).
    pub fn close_anomaly(&mut self, reason: &'static str) -> Option<AnomalyEvent> {
        self.events.close(reason)
    }

    /// Whether an anomaly is open on this channel.
    pub fn anomaly_open(&self) -> bool {
        self.events.is_open()
    }

    /// Records the accepted sample `index` (the next one of the channel)
    /// and scores any forecast that was waiting for it.
    pub fn on_sample(
        &mut self,
        index: u64,
        t_ns: i64,
        values: &[f32],
        out: &mut Vec<ScoredOutput>,
    ) {
        if self.kind != ScoringKind::Forecast {
            return;
        }
        debug_assert_eq!(index, self.base + self.actuals.len() as u64);
        self.actuals.push_back((t_ns, values[self.target_feature]));
        if self.actuals.len() > self.capacity {
            self.actuals.pop_front();
            self.base += 1;
        }
        while let Some(&(target, prediction)) = self.pending.front() {
            if target > index {
                break;
            }
            self.pending.pop_front();
            self.score_forecast(target, prediction, out);
        }
    }

    /// Reports window `seq` (ending at sample `end_index`, time `end_t_ns`)
    /// and scores every window now in order.
    pub fn on_window(
        &mut self,
        seq: u64,
        end_index: u64,
        end_t_ns: i64,
        outcome: WindowOutcome,
        out: &mut Vec<ScoredOutput>,
    ) {
        if seq < self.next_seq {
            return; // already skipped past it
        }
        self.reorder.insert(seq, (end_index, end_t_ns, outcome));
        if self.reorder.len() > REORDER_LIMIT {
            let first = *self.reorder.keys().next().expect("non-empty");
            self.counters.skipped_windows += first - self.next_seq;
            self.next_seq = first;
        }
        while let Some(entry) = self.reorder.remove(&self.next_seq) {
            self.next_seq += 1;
            let (end_index, end_t_ns, outcome) = entry;
            let WindowOutcome::Output { output, input } = outcome else {
                continue;
            };
            match self.kind {
                ScoringKind::Reconstruction => {
                    let error =
                        reconstruction_error(&input, &output, self.features, &self.selected);
                    // The target feature of the window's last sample.
                    let value = input
                        .len()
                        .checked_sub(self.features - self.target_feature)
                        .map_or(0.0, |i| input[i]);
                    self.emit(end_index, end_t_ns, error, value, out);
                }
                ScoringKind::Forecast => {
                    // Step h of the forecast targets sample end + h. The
                    // steps up to the stride are scored, so that with a
                    // stride of s and an s-step forecast every sample is
                    // scored once, by one window in s.
                    let first = end_index + 1;
                    for (h, &prediction) in output.iter().take(self.horizon).enumerate() {
                        let target = first + h as u64;
                        if target < self.base + self.actuals.len() as u64 {
                            self.score_forecast(target, prediction, out);
                        } else {
                            self.pending.push_back((target, prediction));
                        }
                    }
                    self.forget_before(first);
                }
            }
        }
    }

    /// Drops the actual values before sample `index`: windows are scored
    /// in order, so no later forecast targets them. The ring then holds
    /// only the samples whose windows are still in flight (at a save
    /// point, at most a stride's worth), not `actuals_capacity` of them:
    /// 16 384 × 13 bytes of every LSTM channel's saved state, and 16 bytes
    /// each in memory, once a channel had run for a few hours.
    fn forget_before(&mut self, index: u64) {
        while self.base < index && !self.actuals.is_empty() {
            self.actuals.pop_front();
            self.base += 1;
        }
    }

    fn score_forecast(&mut self, target: u64, prediction: f32, out: &mut Vec<ScoredOutput>) {
        let Some(offset) = target.checked_sub(self.base) else {
            self.counters.late_forecasts += 1;
            return;
        };
        let (t_ns, actual) = self.actuals[offset as usize];
        self.emit(target, t_ns, (prediction - actual).abs(), actual, out);
    }

    /// Smooths `error`, hands the point to the threshold, and turns every
    /// decision the threshold makes final into a score and maybe an event.
    fn emit(&mut self, index: u64, t_ns: i64, error: f32, value: f32, out: &mut Vec<ScoredOutput>) {
        if !error.is_finite() {
            self.counters.nonfinite_errors += 1;
            return;
        }
        let score = self.ewma.update(error);
        self.threshold.push(
            Point {
                index,
                t_ns,
                error,
                score,
                value,
            },
            &mut self.decisions,
        );
        for d in self.decisions.drain(..) {
            let p = d.point;
            out.push(ScoredOutput::Score(Score {
                index: p.index,
                t_ns: p.t_ns,
                error: p.error,
                score: p.score,
                threshold: d.threshold,
                anomalous: d.anomalous,
            }));
            if let Some(event) =
                self.events
                    .observe(p.index, p.t_ns, p.score, d.threshold, d.anomalous)
            {
                out.push(ScoredOutput::Event(event));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::ThresholdConfig;

    fn config(kind: ScoringKind) -> ScoringConfig {
        ScoringConfig {
            kind,
            target_feature: 1,
            smoothing_span: 1.0,
            smoothing_adjust: false,
            threshold: ThresholdConfig::Static { value: 0.5 },
            actuals_capacity: 8,
            event_hold: 1,
            reconstruction_features: vec![],
        }
    }

    fn scores(out: &[ScoredOutput]) -> Vec<(u64, f32)> {
        out.iter()
            .filter_map(|o| match o {
                ScoredOutput::Score(s) => Some((s.index, s.error)),
                _ => None,
            })
            .collect()
    }

    fn forecast(p: f32) -> WindowOutcome {
        WindowOutcome::Output {
            output: vec![p, 99.0],
            input: vec![],
        }
    }

    #[test]
    fn forecast_waits_for_the_next_sample() {
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 1);
        let mut out = Vec::new();
        s.on_sample(0, 0, &[0.0, 1.0], &mut out);
        s.on_window(0, 0, 0, forecast(2.5), &mut out);
        assert!(out.is_empty(), "sample 1 has not arrived");
        s.on_sample(1, 10, &[0.0, 2.0], &mut out);
        assert_eq!(scores(&out), vec![(1, 0.5)]);
    }

    #[test]
    fn forecast_after_its_sample_is_scored_at_once() {
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 1);
        let mut out = Vec::new();
        s.on_sample(0, 0, &[0.0, 1.0], &mut out);
        s.on_sample(1, 10, &[0.0, 3.0], &mut out);
        s.on_window(0, 0, 0, forecast(2.0), &mut out);
        assert_eq!(scores(&out), vec![(1, 1.0)]);
        assert!(matches!(out[1], ScoredOutput::Event(_)));
    }

    #[test]
    fn out_of_order_windows_are_scored_in_order_and_drops_are_skipped() {
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 1);
        let mut out = Vec::new();
        for i in 0..5 {
            s.on_sample(i, i as i64, &[0.0, i as f32], &mut out);
        }
        s.on_window(2, 2, 2, forecast(3.0), &mut out);
        s.on_window(1, 1, 1, WindowOutcome::Dropped, &mut out);
        assert!(out.is_empty(), "window 0 still missing");
        s.on_window(0, 0, 0, forecast(1.0), &mut out);
        assert_eq!(scores(&out), vec![(1, 0.0), (3, 0.0)]);
    }

    #[test]
    fn the_actuals_ring_keeps_only_samples_whose_windows_are_unscored() {
        let mut s = ChannelScorer::new(
            &ScoringConfig {
                actuals_capacity: 1000,
                ..config(ScoringKind::Forecast)
            },
            2,
            1,
        );
        let mut out = Vec::new();
        // Samples run 6 ahead of the windows' results, as with a busy engine.
        for i in 0..106u64 {
            s.on_sample(i, i as i64, &[0.0, i as f32], &mut out);
            if let Some(w) = i.checked_sub(6) {
                s.on_window(w, w, w as i64, forecast(w as f32 + 1.0), &mut out);
            }
        }
        assert_eq!(scores(&out).len(), 100, "every forecast scored");
        assert!(scores(&out).iter().all(|(_, e)| *e == 0.0));
        assert_eq!(s.counters().late_forecasts, 0);
        // Sample 100 (the last forecast's target) and 101..=105, whose
        // windows are unscored; nothing older is kept.
        assert_eq!(s.actuals.len(), 6);
        // Once every window is in, none waits but the next sample's forecast.
        for w in 100..106u64 {
            s.on_window(w, w, w as i64, forecast(w as f32 + 1.0), &mut out);
        }
        assert!(s.actuals.is_empty());
        s.on_sample(106, 106, &[0.0, 106.0], &mut out);
        assert_eq!(scores(&out).last(), Some(&(106, 0.0)));
    }

    #[test]
    fn a_stride_is_covered_by_the_forecast_steps() {
        // Stride 2, two-step forecasts: every sample scored once, by the
        // step that targets it.
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 2);
        let mut out = Vec::new();
        for i in 0..8u64 {
            s.on_sample(i, i as i64, &[0.0, i as f32], &mut out);
            if i % 2 == 1 {
                let output = vec![i as f32 + 1.0, i as f32 + 2.5, 99.0];
                let outcome = WindowOutcome::Output {
                    output,
                    input: vec![],
                };
                s.on_window(i / 2, i, i as i64, outcome, &mut out);
            }
        }
        assert_eq!(
            scores(&out),
            vec![(2, 0.0), (3, 0.5), (4, 0.0), (5, 0.5), (6, 0.0), (7, 0.5)]
        );
        // A stride longer than the forecast scores the steps it has.
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 3);
        let mut out = Vec::new();
        for i in 0..7u64 {
            s.on_sample(i, i as i64, &[0.0, i as f32], &mut out);
            if i % 3 == 0 {
                s.on_window(i / 3, i, i as i64, forecast(i as f32 + 1.0), &mut out);
            }
        }
        assert_eq!(scores(&out), vec![(1, 0.0), (2, 97.0), (4, 0.0), (5, 94.0)]);
    }

    #[test]
    fn forecast_older_than_the_ring_is_counted_late() {
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 1);
        let mut out = Vec::new();
        for i in 0..20 {
            s.on_sample(i, 0, &[0.0, 0.0], &mut out);
        }
        s.on_window(0, 0, 0, forecast(1.0), &mut out);
        assert!(out.is_empty());
        assert_eq!(s.counters().late_forecasts, 1);
    }

    #[test]
    fn a_nonfinite_output_is_counted_and_does_not_poison_the_scores() {
        let mut s = ChannelScorer::new(&config(ScoringKind::Forecast), 2, 1);
        let mut out = Vec::new();
        for i in 0..4 {
            s.on_sample(i, i as i64, &[0.0, 1.0], &mut out);
        }
        s.on_window(0, 0, 0, forecast(f32::NAN), &mut out);
        s.on_window(1, 1, 1, forecast(1.25), &mut out);
        assert_eq!(scores(&out), vec![(2, 0.25)]);
        assert_eq!(s.counters().nonfinite_errors, 1);
    }

    #[test]
    fn reconstruction_scores_the_window_end() {
        let mut s = ChannelScorer::new(&config(ScoringKind::Reconstruction), 2, 1);
        let mut out = Vec::new();
        s.on_window(
            0,
            7,
            70,
            WindowOutcome::Output {
                output: vec![1.0, 1.0],
                input: vec![1.0, 3.0],
            },
            &mut out,
        );
        // One row of two features: sqrt((0 + 4) / 2).
        assert_eq!(scores(&out), vec![(7, 2.0f32.sqrt())]);
    }
}
