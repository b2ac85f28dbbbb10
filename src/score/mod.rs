//! Scoring: model outputs to anomaly scores, thresholds and anomaly events.
//!
//! A forecaster's raw error for sample `t+1` is `|ŷ(t+1) − x(t+1)|` where
//! `ŷ(t+1)` is the one-step-ahead prediction of the window ending at `t`
//! and `x(t+1)` the target feature of the sample that arrives next (the
//! "first" aggregation of telemanom; Hundman et al., KDD 2018, §3.1). A
//! reconstruction model's raw error for the window ending at `t` is the
//! root-mean-square difference between the window and its reconstruction
//! over `reconstruction_features`. Raw errors
//! are smoothed with an EWMA (the score), compared with a threshold, and
//! runs of scores above it become anomaly events.

pub mod channel;
pub mod error;
pub mod events;
pub mod fusion;
pub mod ndt;
pub mod pot;
pub mod threshold;

pub use channel::{ChannelScorer, Score, ScoredOutput, ScorerCounters, WindowOutcome};
pub use error::Ewma;
pub use events::{AnomalyEvent, EventDetector, EventKind};
pub use fusion::{ChannelFusion, EnsembleConfig, Fuser};
pub use ndt::NdtConfig;
pub use pot::SpotConfig;
pub use threshold::{Decision, Point, Threshold, ThresholdConfig};

use serde::{Deserialize, Serialize};

/// How model outputs become raw errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringKind {
    /// The model forecasts the target feature; output `[batch, H]`.
    Forecast,
    /// The model reconstructs its input; output shaped like the input.
    Reconstruction,
}

/// Scoring settings of one pipeline (`[[pipeline]] scoring = {...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringConfig {
    /// `forecast` or `reconstruction`.
    pub kind: ScoringKind,
    /// Forecast only: the input feature the model predicts (0-based).
    #[serde(default)]
    pub target_feature: usize,
    /// EWMA span `s` of the smoothing, in scored samples; `alpha = 2 / (s + 1)`.
    /// 1 disables smoothing. telemanom uses 105 (batch 70 × window 30 × 5 %).
    #[serde(default = "default_span")]
    pub smoothing_span: f32,
    /// `true` (the default since 2026-12): each smoothed error is the
    /// weighted mean of all errors so far (pandas' `adjust=True`,
    /// telemanom's smoothing), so the first scores are averages; `false`:
    /// the recurrence started at the first error (`adjust=False`, gsinfer's
    /// smoothing before), so one large first error lingers for ~`span`
    /// scores and, now that NDT decides from its first batch, raises false
    /// alarms at the start (EVALUATION.md). See [`Ewma`].
    #[serde(default = "default_adjust")]
    pub smoothing_adjust: bool,
    /// Threshold on the smoothed score.
    pub threshold: ThresholdConfig,
    /// Reconstruction only: the features whose error counts (all when
    /// empty), e.g. `[0]` for the telemetry value without command flags.
    #[serde(default)]
    pub reconstruction_features: Vec<usize>,
    /// Consecutive scores at or below the threshold that close an anomaly;
    /// 1 closes it at the first quiet score.
    #[serde(default = "default_hold")]
    pub event_hold: u32,
    /// Most samples of actual values kept per channel to pair with late
    /// forecasts (only those whose windows are unscored are kept); a
    /// forecast older than this is dropped and counted.
    #[serde(default = "default_actuals")]
    pub actuals_capacity: usize,
}

fn default_span() -> f32 {
    105.0
}

fn default_adjust() -> bool {
    true
}

fn default_hold() -> u32 {
    1
}

fn default_actuals() -> usize {
    16_384
}

/// Outputs for unit tests: a quiet score, and an event's start or end,
/// each with its time stamp (ns) equal to its sample index.
#[cfg(test)]
pub(crate) mod testing {
    use super::{AnomalyEvent, EventKind, Score, ScoredOutput};

    /// A score of 0 for sample `index`, threshold 1, not anomalous.
    pub fn score(index: u64) -> ScoredOutput {
        ScoredOutput::Score(Score {
            index,
            t_ns: index as i64,
            error: 0.0,
            score: 0.0,
            threshold: 1.0,
            anomalous: false,
        })
    }

    /// An anomaly from sample `start`: its start, or with `end` its end
    /// (max score 2, threshold 1).
    pub fn event(start: u64, end: Option<u64>) -> ScoredOutput {
        ScoredOutput::Event(AnomalyEvent {
            event: if end.is_some() {
                EventKind::AnomalyEnd
            } else {
                EventKind::AnomalyStart
            },
            start,
            start_t_ns: start as i64,
            end,
            end_t_ns: end.map(|e| e as i64),
            max_score: 2.0,
            threshold: 1.0,
            closed: None,
        })
    }
}
