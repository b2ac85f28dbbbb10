//! Raw errors and their smoothing.

/// Exponentially weighted moving average with `alpha = 2 / (span + 1)`.
///
/// Two forms, as pandas defines them (`DataFrame.ewm(span, adjust)`):
/// - `adjust = false`: `y₀ = x₀`, `yₜ = α·xₜ + (1 − α)·yₜ₋₁`, so the first
///   value weighs on the next ~`span` outputs;
/// - `adjust = true` (pandas' default, and telemanom's smoothing of the
///   errors, Hundman et al. 2018): `yₜ = Σ (1 − α)ⁱ·xₜ₋ᵢ / Σ (1 − α)ⁱ`, the
///   weighted mean of every value so far, so the first outputs are plain
///   averages rather than the first value. Kept as two running sums, O(1).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ewma {
    alpha: f32,
    adjust: bool,
    /// `adjust = false`: the average so far.
    value: Option<f32>,
    /// `adjust = true`: the weighted sum and the sum of weights.
    sums: (f64, f64),
}

impl Ewma {
    /// A new average over `span >= 1` values (checked by config validation).
    pub fn new(span: f32, adjust: bool) -> Self {
        Self {
            alpha: 2.0 / (span + 1.0),
            adjust,
            value: None,
            sums: (0.0, 0.0),
        }
    }

    /// Adds `x` and returns the new average.
    pub fn update(&mut self, x: f32) -> f32 {
        if self.adjust {
            let keep = 1.0 - self.alpha as f64;
            self.sums = (x as f64 + keep * self.sums.0, 1.0 + keep * self.sums.1);
            return (self.sums.0 / self.sums.1) as f32;
        }
        let v = match self.value {
            None => x,
            Some(prev) => self.alpha * x + (1.0 - self.alpha) * prev,
        };
        self.value = Some(v);
        v
    }
}

/// Root-mean-square difference between a window (`[L, F]` row-major) and
/// its reconstruction, over the features in `features` (all when empty), in
/// the units of the values — comparable with a forecaster's absolute error,
/// so the same thresholds and NDT's scale guards apply.
///
/// # Panics
/// If the slices differ in length (the engine's output shape is validated
/// against the window at start-up) or a feature index is `>= F`.
pub fn reconstruction_error(
    window: &[f32],
    reconstruction: &[f32],
    features: usize,
    selected: &[usize],
) -> f32 {
    assert_eq!(window.len(), reconstruction.len());
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (row, rec) in window
        .chunks(features.max(1))
        .zip(reconstruction.chunks(features.max(1)))
    {
        if selected.is_empty() {
            sum += row
                .iter()
                .zip(rec)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            n += row.len();
        } else {
            sum += selected
                .iter()
                .map(|f| ((row[*f] - rec[*f]) as f64).powi(2))
                .sum::<f64>();
            n += selected.len();
        }
    }
    (sum / n.max(1) as f64).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_at_the_first_value_and_follows_the_recurrence() {
        let mut e = Ewma::new(3.0, false); // alpha 0.5
        assert_eq!(e.update(4.0), 4.0);
        assert_eq!(e.update(0.0), 2.0);
        assert_eq!(e.update(2.0), 2.0);
        // adjust = true: weights 1, 0.5 → (0 + 0.5·4) / 1.5, then (2 + 0.5·2) / 1.75.
        let mut adj = Ewma::new(3.0, true);
        assert_eq!(adj.update(4.0), 4.0);
        assert!((adj.update(0.0) - 4.0 / 3.0).abs() < 1e-6);
        assert!((adj.update(2.0) - (2.0 + 0.25 * 4.0) / 1.75).abs() < 1e-6);
        let mut off = Ewma::new(1.0, false);
        assert_eq!(off.update(5.0), 5.0);
        assert_eq!(off.update(1.0), 1.0);
    }

    #[test]
    fn reconstruction_error_is_the_rmse_over_the_selected_features() {
        // Two rows of two features.
        let window = [1.0, 2.0, 1.0, 2.0];
        let rec = [1.0, 4.0, 4.0, 2.0];
        assert_eq!(
            reconstruction_error(&window, &rec, 2, &[]),
            (13.0f32 / 4.0).sqrt()
        );
        assert_eq!(
            reconstruction_error(&window, &rec, 2, &[0]),
            (9.0f32 / 2.0).sqrt()
        );
        assert_eq!(
            reconstruction_error(&window, &rec, 2, &[1]),
            (4.0f32 / 2.0).sqrt()
        );
    }
}
