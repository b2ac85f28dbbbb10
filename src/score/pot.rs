//! Peaks-over-threshold with streaming updates (SPOT).
//!
//! Source: Siffer, Fouque, Termier, Largouët, "Anomaly Detection in Streams
//! with Extreme Value Theory", KDD 2017, §3–4 (Algorithms 1 and 2).
//!
//! Initialisation (documented choice): the first `init` scores calibrate; the
//! initial threshold `t` is their empirical `level` quantile (0.98), the
//! peaks are the excesses `Y = X − t` above it, a generalised Pareto
//! distribution (γ, σ) is fitted to them, and the anomaly threshold is
//! `z_q = t + σ/γ · ((q·n/N_t)^(−γ) − 1)` (`t − σ·ln(q·n/N_t)` when γ = 0)
//! for the risk `q`, `n` observations and `N_t` peaks. Scores during
//! calibration are never anomalous and carry threshold `+inf`. Afterwards a
//! score above `z_q` is anomalous and left out of the model; a score between
//! `t` and `z_q` is a new peak and the fit and `z_q` are updated; any other
//! score only increments `n`.
//!
//! Where this differs from the paper: the GPD is fitted by the method of
//! moments (`γ = ½(1 − m²/s²)`, `σ = ½·m·(m²/s² + 1)` from the peaks' mean `m`
//! and variance `s²`, kept as running sums so each update is O(1)) instead
//! of Grimshaw's maximum-likelihood trick; γ is clamped to [−0.5, 0.5] where
//! the moment estimator is unreliable.

use serde::{Deserialize, Serialize};

use super::threshold::{Decision, Point};

/// SPOT parameters (`threshold = { method = "pot", ... }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpotConfig {
    /// Risk `q`: the probability of a normal score exceeding `z_q`.
    pub risk: f64,
    /// Scores used to calibrate before any decision.
    pub init: usize,
    /// Quantile of the calibration scores used as the initial threshold `t`.
    pub level: f64,
}

impl Default for SpotConfig {
    fn default() -> Self {
        Self {
            risk: 1e-3,
            init: 1000,
            level: 0.98,
        }
    }
}

impl SpotConfig {
    /// Problems with the parameters, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if !(self.risk > 0.0 && self.risk < 1.0) {
            v.push(("risk", "must be in (0, 1), e.g. 0.001".to_string()));
        }
        if self.init < 10 {
            v.push(("init", "must be at least 10 scores".to_string()));
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            v.push(("level", "must be in (0, 1), e.g. 0.98".to_string()));
        }
        v
    }
}

/// One channel's SPOT state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spot {
    config: SpotConfig,
    calibration: Vec<f64>,
    /// Initial threshold `t`; `None` while calibrating.
    t: Option<f64>,
    n: u64,
    peaks: u64,
    sum: f64,
    sum_sq: f64,
    z: f64,
}

impl Spot {
    /// Fresh state.
    pub fn new(config: SpotConfig) -> Self {
        Self {
            config,
            calibration: Vec::new(),
            t: None,
            n: 0,
            peaks: 0,
            sum: 0.0,
            sum_sq: 0.0,
            z: f64::INFINITY,
        }
    }

    /// The current anomaly threshold `z_q` (`+inf` while calibrating).
    pub fn threshold(&self) -> f64 {
        self.z
    }

    fn refit(&mut self) {
        let Some(t) = self.t else { return };
        if self.peaks == 0 {
            self.z = t;
            return;
        }
        let k = self.peaks as f64;
        let m = self.sum / k;
        let var = (self.sum_sq / k - m * m).max(0.0);
        let (gamma, sigma) = if var > 0.0 && m > 0.0 {
            let r = m * m / var;
            ((0.5 * (1.0 - r)).clamp(-0.5, 0.5), 0.5 * m * (r + 1.0))
        } else {
            (0.0, m.max(f64::MIN_POSITIVE))
        };
        let ratio = self.config.risk * self.n as f64 / k;
        self.z = if gamma.abs() < 1e-9 {
            t - sigma * ratio.ln()
        } else {
            t + sigma / gamma * (ratio.powf(-gamma) - 1.0)
        };
    }

    fn add_peak(&mut self, y: f64) {
        self.peaks += 1;
        self.sum += y;
        self.sum_sq += y * y;
    }

    /// Decides one point.
    pub fn push(&mut self, point: Point) -> Decision {
        let x = point.score as f64;
        let Some(t) = self.t else {
            self.calibration.push(x);
            if self.calibration.len() >= self.config.init {
                let mut sorted = std::mem::take(&mut self.calibration);
                sorted.sort_by(f64::total_cmp);
                let pos = ((sorted.len() - 1) as f64 * self.config.level).round() as usize;
                let t = sorted[pos];
                self.t = Some(t);
                self.n = sorted.len() as u64;
                for v in sorted.iter().filter(|v| **v > t) {
                    self.add_peak(v - t);
                }
                self.refit();
            }
            return Decision {
                point,
                threshold: f32::INFINITY,
                anomalous: false,
            };
        };
        if x > self.z {
            return Decision {
                point,
                threshold: self.z as f32,
                anomalous: true,
            };
        }
        self.n += 1;
        if x > t {
            self.add_peak(x - t);
            self.refit();
        }
        Decision {
            point,
            threshold: self.z as f32,
            anomalous: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(score: f32) -> Point {
        Point::with_score(score)
    }

    /// Exponential(1) quantiles, deterministic.
    fn exp_sample(i: usize, n: usize) -> f32 {
        let u =
            (i as f64 * 0.618_033_988_75).fract() * (n as f64 - 1.0) / n as f64 + 0.5 / n as f64;
        (-(1.0 - u).ln()) as f32
    }

    #[test]
    fn calibrates_then_matches_the_exponential_tail() {
        let mut s = Spot::new(SpotConfig {
            risk: 1e-3,
            init: 2000,
            level: 0.95,
        });
        for i in 0..2000 {
            let d = s.push(point(exp_sample(i, 2000)));
            assert!(!d.anomalous && d.threshold.is_infinite());
        }
        // For Exp(1) the 1 − 1e-3 quantile is ln(1000) ≈ 6.9.
        let z = s.threshold();
        assert!((5.5..8.5).contains(&z), "z_q = {z}");
        assert!(s.push(point(20.0)).anomalous);
        assert!(!s.push(point(1.0)).anomalous);
    }

    #[test]
    fn excursions_are_not_learned_as_peaks() {
        let mut s = Spot::new(SpotConfig {
            risk: 1e-2,
            init: 100,
            level: 0.9,
        });
        for i in 0..100 {
            s.push(point(exp_sample(i, 100)));
        }
        let before = s.threshold();
        for _ in 0..50 {
            assert!(s.push(point(1000.0)).anomalous);
        }
        assert_eq!(s.threshold(), before);
    }
}
