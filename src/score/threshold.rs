//! Thresholds on the smoothed score: static, NDT (Hundman et al. 2018) and
//! POT/SPOT (Siffer et al. 2017), selectable per pipeline.
//!
//! A threshold takes scored points in index order and hands back decisions
//! (threshold in force, anomalous or not) in the same order. Static and POT
//! decide each point at once; NDT decides a whole batch of points when the
//! batch is complete, so its decisions lag by up to `batch_size` samples.

use serde::{Deserialize, Serialize};

use super::ndt::{Ndt, NdtConfig};
use super::pot::{Spot, SpotConfig};

/// Which threshold a pipeline uses, e.g. `threshold = { method = "static", value = 0.2 }`,
/// `threshold = { method = "ndt" }` or `threshold = { method = "pot", risk = 1e-3 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdConfig {
    /// A fixed value: a score strictly above it is anomalous.
    Static {
        /// The threshold, in score units (smoothed error).
        value: f32,
    },
    /// Nonparametric dynamic thresholding over a trailing window of scores.
    Ndt(NdtConfig),
    /// Peaks-over-threshold with streaming updates (SPOT).
    Pot(SpotConfig),
}

impl ThresholdConfig {
    /// Parses the `--threshold` override of `gsinfer eval`: `static:<value>`,
    /// `ndt` (defaults), `pot[:<risk>]` (defaults, or the given risk `q`), or
    /// a method with its keys, `ndt:min_errors=2100,ignore_first=500` or
    /// `pot:risk=1e-4,init=500` (the keys of `threshold = { ... }`).
    ///
    /// # Errors
    /// A message naming the accepted forms, or the key that was refused.
    pub fn parse_spec(spec: &str) -> Result<Self, String> {
        if let Some((method @ ("ndt" | "pot"), keys)) = spec.split_once(':') {
            if keys.contains('=') {
                #[derive(Deserialize)]
                struct W {
                    threshold: ThresholdConfig,
                }
                let table = format!(
                    "threshold = {{ method = \"{method}\", {} }}",
                    keys.split(',').collect::<Vec<_>>().join(", ")
                );
                return toml::from_str::<W>(&table)
                    .map(|w| w.threshold)
                    .map_err(|e| {
                        format!(
                            "`{spec}`: {}; keys are those of threshold = {{ method = \"{method}\", ... }}",
                            e.message()
                        )
                    });
            }
        }
        match spec.split_once(':') {
            None if spec == "ndt" => Ok(Self::Ndt(NdtConfig::default())),
            None if spec == "pot" => Ok(Self::Pot(SpotConfig::default())),
            Some(("pot", q)) => q
                .parse::<f64>()
                .ok()
                .filter(|q| *q > 0.0 && *q < 1.0)
                .map(|risk| {
                    Self::Pot(SpotConfig {
                        risk,
                        ..SpotConfig::default()
                    })
                })
                .ok_or_else(|| format!("`{q}` is not a risk in (0, 1); use e.g. pot:1e-4")),
            Some(("static", v)) => v
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|value| Self::Static { value })
                .ok_or_else(|| format!("`{v}` is not a number; use e.g. static:0.5")),
            _ => Err(format!(
                "unknown threshold `{spec}`; use ndt, pot, pot:<risk> or static:<value>"
            )),
        }
    }

    /// Problems with the parameters, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Static { value } if !value.is_finite() => {
                vec![("value", "must be a finite number".into())]
            }
            Self::Static { .. } => Vec::new(),
            Self::Ndt(c) => c.problems(),
            Self::Pot(c) => c.problems(),
        }
    }
}

/// A scored sample handed to a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Sample index in the channel's stream.
    pub index: u64,
    /// Its time stamp, ns since the Unix epoch.
    pub t_ns: i64,
    /// Raw error.
    pub error: f32,
    /// Smoothed error (the score).
    pub score: f32,
    /// The target feature's value at this sample (NDT's scale guards).
    pub value: f32,
}

#[cfg(test)]
impl Point {
    /// A point at index 0 whose error and score are both `score` (tests).
    pub(crate) fn with_score(score: f32) -> Self {
        Self {
            index: 0,
            t_ns: 0,
            error: score,
            score,
            value: 0.0,
        }
    }
}

/// A point with the threshold's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The point.
    pub point: Point,
    /// Threshold in force for it (`+inf` while a threshold is still calibrating).
    pub threshold: f32,
    /// Whether the point is anomalous.
    pub anomalous: bool,
}

/// A threshold's running state for one channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Threshold {
    /// See [`ThresholdConfig::Static`].
    Static(f32),
    /// See [`Ndt`].
    Ndt(Box<Ndt>),
    /// See [`Spot`].
    Pot(Spot),
}

impl Threshold {
    /// Fresh state for one channel.
    pub fn new(config: &ThresholdConfig) -> Self {
        match config {
            ThresholdConfig::Static { value } => Self::Static(*value),
            ThresholdConfig::Ndt(c) => Self::Ndt(Box::new(Ndt::new(c.clone()))),
            ThresholdConfig::Pot(c) => Self::Pot(Spot::new(c.clone())),
        }
    }

    /// Observes `point` and appends every decision now final to `out`, in
    /// index order.
    pub fn push(&mut self, point: Point, out: &mut Vec<Decision>) {
        match self {
            Self::Static(value) => {
                out.push(Decision {
                    point,
                    threshold: *value,
                    anomalous: point.score > *value,
                });
            }
            Self::Ndt(ndt) => ndt.push(point, out),
            Self::Pot(spot) => out.push(spot.push(point)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(score: f32) -> Point {
        Point::with_score(score)
    }

    #[test]
    fn static_threshold_is_constant_and_strict() {
        let mut t = Threshold::new(&ThresholdConfig::Static { value: 0.5 });
        let mut out = Vec::new();
        t.push(point(10.0), &mut out);
        t.push(point(0.5), &mut out);
        assert_eq!(
            out.iter()
                .map(|d| (d.threshold, d.anomalous))
                .collect::<Vec<_>>(),
            vec![(0.5, true), (0.5, false)]
        );
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            ThresholdConfig::parse_spec("static:0.25").unwrap(),
            ThresholdConfig::Static { value: 0.25 }
        );
        assert!(matches!(
            ThresholdConfig::parse_spec("ndt").unwrap(),
            ThresholdConfig::Ndt(_)
        ));
        assert!(matches!(
            ThresholdConfig::parse_spec("pot").unwrap(),
            ThresholdConfig::Pot(_)
        ));
        assert!(ThresholdConfig::parse_spec("static:x").is_err());
        assert!(
            matches!(ThresholdConfig::parse_spec("pot:1e-4").unwrap(), ThresholdConfig::Pot(SpotConfig { risk, .. }) if risk == 1e-4)
        );
        assert!(ThresholdConfig::parse_spec("otsu")
            .unwrap_err()
            .contains("ndt, pot"));
        assert!(matches!(
            ThresholdConfig::parse_spec("ndt:min_errors=2100,ignore_first=500").unwrap(),
            ThresholdConfig::Ndt(NdtConfig {
                min_errors: 2100,
                ignore_first: 500,
                batch_size: 70,
                ..
            })
        ));
        assert!(matches!(
            ThresholdConfig::parse_spec("pot:risk=1e-4,init=200").unwrap(),
            ThresholdConfig::Pot(SpotConfig { init: 200, .. })
        ));
        assert!(ThresholdConfig::parse_spec("ndt:nope=1")
            .unwrap_err()
            .contains("nope"));
    }

    #[test]
    fn config_syntax() {
        #[derive(Deserialize)]
        struct W {
            threshold: ThresholdConfig,
        }
        let w: W = toml::from_str("threshold = { method = \"ndt\", batch_size = 10 }").unwrap();
        assert!(matches!(
            w.threshold,
            ThresholdConfig::Ndt(NdtConfig { batch_size: 10, .. })
        ));
        let w: W = toml::from_str("threshold = { method = \"pot\", risk = 0.01 }").unwrap();
        assert!(
            matches!(w.threshold, ThresholdConfig::Pot(SpotConfig { risk, .. }) if risk == 0.01)
        );
        assert!(toml::from_str::<W>("threshold = { method = \"ndt\", zz = 1 }").is_err());
    }
}
