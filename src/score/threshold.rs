//! Thresholds on the smoothed score.

use serde::{Deserialize, Serialize};

/// Which threshold a pipeline uses (`threshold = { method = "static", value = 0.2 }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdConfig {
    /// A fixed value: a score strictly above it is anomalous.
    Static {
        /// The threshold, in score units (smoothed absolute error).
        value: f32,
    },
}

/// A threshold's running state for one channel.
#[derive(Debug, Clone)]
pub struct Threshold {
    config: ThresholdConfig,
}

impl Threshold {
    /// State for one channel.
    pub fn new(config: &ThresholdConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    /// Observes `score` and returns the threshold in force for it.
    pub fn update(&mut self, _score: f32) -> f32 {
        match self.config {
            ThresholdConfig::Static { value } => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_threshold_is_constant() {
        let mut t = Threshold::new(&ThresholdConfig::Static { value: 0.5 });
        assert_eq!(t.update(10.0), 0.5);
        assert_eq!(t.update(0.0), 0.5);
    }
}
