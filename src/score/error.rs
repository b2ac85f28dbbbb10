//! Raw errors and their smoothing.

/// Exponentially weighted moving average with `alpha = 2 / (span + 1)`,
/// initialised with the first value (pandas' `ewm(span, adjust=False)`).
#[derive(Debug, Clone)]
pub struct Ewma {
    alpha: f32,
    value: Option<f32>,
}

impl Ewma {
    /// A new average over `span >= 1` values (checked by config validation).
    pub fn new(span: f32) -> Self {
        Self {
            alpha: 2.0 / (span + 1.0),
            value: None,
        }
    }

    /// Adds `x` and returns the new average.
    pub fn update(&mut self, x: f32) -> f32 {
        let v = match self.value {
            None => x,
            Some(prev) => self.alpha * x + (1.0 - self.alpha) * prev,
        };
        self.value = Some(v);
        v
    }
}

/// Mean squared difference between a window and its reconstruction.
///
/// # Panics
/// If the slices differ in length (the engine's output shape is validated
/// against the window at start-up).
pub fn reconstruction_error(window: &[f32], reconstruction: &[f32]) -> f32 {
    assert_eq!(window.len(), reconstruction.len());
    let sum: f64 = window
        .iter()
        .zip(reconstruction)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    (sum / window.len().max(1) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_at_the_first_value_and_follows_the_recurrence() {
        let mut e = Ewma::new(3.0); // alpha 0.5
        assert_eq!(e.update(4.0), 4.0);
        assert_eq!(e.update(0.0), 2.0);
        assert_eq!(e.update(2.0), 2.0);
        let mut off = Ewma::new(1.0);
        assert_eq!(off.update(5.0), 5.0);
        assert_eq!(off.update(1.0), 1.0);
    }

    #[test]
    fn reconstruction_error_is_the_mse() {
        assert_eq!(reconstruction_error(&[1.0, 2.0], &[1.0, 4.0]), 2.0);
    }
}
