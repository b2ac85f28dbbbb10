//! Event-level detection quality, counted as telemanom counts it (Hundman
//! et al., KDD 2018, §4.1; `evaluate_sequences` in the reference code): a
//! labelled anomaly overlapped by at least one predicted anomaly is one true
//! positive, however many predictions overlap it; a predicted anomaly that
//! overlaps no label is a false positive; a label overlapped by none is a
//! false negative. Intervals are inclusive sample indices.

use serde::Serialize;

/// Counts and rates for one channel or a total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Detection {
    /// Labelled anomalies overlapped by a prediction.
    pub true_positives: usize,
    /// Predictions overlapping no label.
    pub false_positives: usize,
    /// Labelled anomalies overlapped by no prediction.
    pub false_negatives: usize,
    /// `tp / (tp + fp)`; 0 when nothing was predicted.
    pub precision: f64,
    /// `tp / (tp + fn)`; 0 when nothing was labelled.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// `F_β` with β = 0.5, weighing precision twice as much as recall:
    /// `1.25·P·R / (0.25·P + R)`, the headline metric of the ESA anomaly
    /// detection benchmark (Kotowski et al., 2024); 0 when both are 0.
    pub f05: f64,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl Detection {
    /// Scores `predicted` against `labels`.
    pub fn count(predicted: &[(u64, u64)], labels: &[(u64, u64)]) -> Self {
        let tp = labels
            .iter()
            .filter(|l| predicted.iter().any(|p| overlaps(*p, **l)))
            .count();
        let fp = predicted
            .iter()
            .filter(|p| !labels.iter().any(|l| overlaps(**p, *l)))
            .count();
        Self::from_counts(tp, fp, labels.len() - tp)
    }

    /// Rates from counts.
    pub fn from_counts(tp: usize, fp: usize, fn_: usize) -> Self {
        let ratio = |a: usize, b: usize| {
            if a + b == 0 {
                0.0
            } else {
                a as f64 / (a + b) as f64
            }
        };
        let (precision, recall) = (ratio(tp, fp), ratio(tp, fn_));
        let f_beta = |beta2: f64| {
            if precision + recall == 0.0 {
                0.0
            } else {
                (1.0 + beta2) * precision * recall / (beta2 * precision + recall)
            }
        };
        let (f1, f05) = (f_beta(1.0), f_beta(0.25));
        Self {
            true_positives: tp,
            false_positives: fp,
            false_negatives: fn_,
            precision,
            recall,
            f1,
            f05,
        }
    }

    /// The sum of counts of `parts`, with rates recomputed (micro average).
    pub fn total<'a>(parts: impl IntoIterator<Item = &'a Detection>) -> Self {
        let (tp, fp, fn_) = parts.into_iter().fold((0, 0, 0), |(a, b, c), d| {
            (
                a + d.true_positives,
                b + d.false_positives,
                c + d.false_negatives,
            )
        });
        Self::from_counts(tp, fp, fn_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_telemanom() {
        let labels = [(100, 200), (500, 600)];
        // Two predictions on the first label count once; one stray; the second label is missed.
        let d = Detection::count(&[(90, 110), (150, 160), (300, 310)], &labels);
        assert_eq!(
            (d.true_positives, d.false_positives, d.false_negatives),
            (1, 1, 1)
        );
        assert_eq!(d.precision, 0.5);
        assert_eq!(d.recall, 0.5);
        assert_eq!(d.f1, 0.5);
        assert_eq!(d.f05, 0.5);
        // P = 1, R = 0.5: F0.5 leans to precision, F1 does not.
        let p = Detection::from_counts(1, 0, 1);
        assert!((p.f05 - 1.25 * 0.5 / (0.25 + 0.5)).abs() < 1e-12 && p.f05 > p.f1);
        let none = Detection::count(&[], &labels);
        assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
        let t = Detection::total([&d, &none]);
        assert_eq!(
            (t.true_positives, t.false_positives, t.false_negatives),
            (1, 1, 3)
        );
    }

    #[test]
    fn touching_intervals_overlap() {
        assert!(overlaps((1, 5), (5, 9)));
        assert!(!overlaps((1, 4), (5, 9)));
    }
}
