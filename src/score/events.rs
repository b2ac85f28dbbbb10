//! Anomaly events: runs of consecutive anomalous scores.

use serde::{Deserialize, Serialize};

/// Whether an event opens or closes an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first anomalous score of a run.
    AnomalyStart,
    /// The run ended: the first score at or under the threshold after it.
    AnomalyEnd,
}

impl EventKind {
    /// The stable name in payloads, logs and the `kind` metric label:
    /// `anomaly_start` or `anomaly_end`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AnomalyStart => "anomaly_start",
            EventKind::AnomalyEnd => "anomaly_end",
        }
    }
}

/// One anomaly event of a channel; `start`/`end` are sample indices of the
/// channel's stream (inclusive), `*_t_ns` their time stamps (ns since epoch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyEvent {
    /// Start or end.
    pub event: EventKind,
    /// Index of the first anomalous sample.
    pub start: u64,
    /// Time stamp of `start`.
    pub start_t_ns: i64,
    /// Index of the last anomalous sample; `None` on `anomaly_start`.
    pub end: Option<u64>,
    /// Time stamp of `end`.
    pub end_t_ns: Option<i64>,
    /// Highest score seen in the run so far.
    pub max_score: f32,
    /// Threshold in force when the event was raised.
    pub threshold: f32,
    /// Why an `anomaly_end` came other than from quiet scores: `stale_state`
    /// when gsinfer closed it at start because the state it was open in
    /// was too old to go on from; `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Open {
    start: u64,
    start_t_ns: i64,
    last: u64,
    last_t_ns: i64,
    max_score: f32,
    /// Threshold in force when it opened.
    threshold: f32,
}

/// Turns a channel's scores, in index order, into start/end events.
///
/// An anomaly opens at the first score above the threshold and closes once
/// `hold` consecutive scores are at or below it; its `end` is the last
/// anomalous index. `hold` > 1 merges runs separated by short dips, so an
/// operator sees one event per excursion instead of a flurry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventDetector {
    open: Option<Open>,
    hold: u32,
    quiet: u32,
}

impl Default for EventDetector {
    fn default() -> Self {
        Self::new(1)
    }
}

impl EventDetector {
    /// A detector with no open anomaly, closing after `hold` (at least 1)
    /// quiet scores.
    pub fn new(hold: u32) -> Self {
        Self {
            open: None,
            hold: hold.max(1),
            quiet: 0,
        }
    }

    /// Whether an anomaly is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Ends the open anomaly now, at its last anomalous sample (an
    /// `anomaly_end` whose threshold is the one it opened with, `closed`
    /// set to `reason`), if any.
    pub fn close(&mut self, reason: &'static str) -> Option<AnomalyEvent> {
        let open = self.open.take()?;
        self.quiet = 0;
        Some(AnomalyEvent {
            event: EventKind::AnomalyEnd,
            start: open.start,
            start_t_ns: open.start_t_ns,
            end: Some(open.last),
            end_t_ns: Some(open.last_t_ns),
            max_score: open.max_score,
            threshold: open.threshold,
            closed: Some(reason),
        })
    }

    /// Observes the decision for sample `index` (time `t_ns`, its score, the
    /// threshold in force, whether it is anomalous); returns the event it
    /// raises, if any.
    pub fn observe(
        &mut self,
        index: u64,
        t_ns: i64,
        score: f32,
        threshold: f32,
        anomalous: bool,
    ) -> Option<AnomalyEvent> {
        match (&mut self.open, anomalous) {
            (None, true) => {
                self.open = Some(Open {
                    start: index,
                    start_t_ns: t_ns,
                    last: index,
                    last_t_ns: t_ns,
                    max_score: score,
                    threshold,
                });
                Some(AnomalyEvent {
                    event: EventKind::AnomalyStart,
                    start: index,
                    start_t_ns: t_ns,
                    end: None,
                    end_t_ns: None,
                    max_score: score,
                    threshold,
                    closed: None,
                })
            }
            (Some(open), true) => {
                self.quiet = 0;
                open.last = index;
                open.last_t_ns = t_ns;
                open.max_score = open.max_score.max(score);
                None
            }
            (Some(_), false) => {
                self.quiet += 1;
                if self.quiet < self.hold {
                    return None;
                }
                self.quiet = 0;
                let open = self.open.take().expect("matched Some");
                Some(AnomalyEvent {
                    event: EventKind::AnomalyEnd,
                    start: open.start,
                    start_t_ns: open.start_t_ns,
                    end: Some(open.last),
                    end_t_ns: Some(open.last_t_ns),
                    max_score: open.max_score,
                    threshold,
                    closed: None,
                })
            }
            (None, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_merges_runs_separated_by_short_dips() {
        let mut d = EventDetector::new(3);
        let scores = [0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1];
        let events: Vec<_> = scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| d.observe(i as u64, i as i64, *s, 0.5, *s > 0.5))
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!((events[1].start, events[1].end), (0, Some(3)));
    }

    #[test]
    fn a_run_above_the_threshold_gives_one_start_and_one_end() {
        let mut d = EventDetector::new(1);
        let scores = [0.1, 0.5, 0.9, 0.7, 0.2, 0.1];
        let events: Vec<_> = scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| d.observe(i as u64, i as i64 * 10, *s, 0.4, *s > 0.4))
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, EventKind::AnomalyStart);
        assert_eq!(events[0].start, 1);
        assert_eq!(events[1].event, EventKind::AnomalyEnd);
        assert_eq!((events[1].start, events[1].end), (1, Some(3)));
        assert_eq!(events[1].end_t_ns, Some(30));
        assert_eq!(events[1].max_score, 0.9);
        assert!(!d.is_open());
    }

    #[test]
    fn a_point_that_is_not_anomalous_opens_nothing() {
        let mut d = EventDetector::default();
        assert!(d.observe(0, 0, 0.4, 0.4, false).is_none());
    }
}
