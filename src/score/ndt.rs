//! Nonparametric dynamic thresholding (NDT), streaming.
//!
//! Source: Hundman, Constantinou, Laporte, Colwell, Soderstrom, "Detecting
//! Spacecraft Anomalies Using LSTMs and Nonparametric Dynamic Thresholding",
//! KDD 2018, §3.2–3.3, and the authors' telemanom reference implementation.
//!
//! Over a trailing window of `window_batches × batch_size` smoothed errors
//! `e_s` (30 × 70 = 2100 in the paper), the threshold is `ε = μ(e_s) + z·σ(e_s)`
//! with `z ∈ {2.5, 3.0, …, 11.5}` chosen to maximise
//! `(Δμ/μ + Δσ/σ) / (|E_seq|² + |e_a|)`, where `Δμ`, `Δσ` are the drops in mean
//! and standard deviation when the errors above `ε` are removed, `e_a` the
//! anomalous errors widened by `error_buffer` (100) on each side and `E_seq`
//! their contiguous sequences; candidates flagging more than 5 sequences or
//! half the window are refused. Errors above `ε` (and above 5 % of the
//! window's 5–95 percentile value range) are flagged, widened by the buffer,
//! grouped into sequences, and pruned: sequences are sorted by their maximum
//! error with the largest non-anomalous error appended, and a sequence whose
//! maximum is less than `p` = 13 % above the next is dropped unless a later
//! one clears the gap. The same is done for the errors mirrored about their
//! mean (unusually *low* errors are anomalous too). A window whose errors are
//! small against the values (σ(e_s) ≤ 5 % of σ(values) and max(e_s) ≤ 5 % of the
//! value range, or max(e_s) ≤ 0.05) flags nothing.
//!
//! ## Warm-up: deciding with the errors there are
//!
//! telemanom works on a whole file: when a series is shorter than the
//! window it shrinks the window to the series, and it ignores fewer early
//! errors (500 from 2 500 test values up, 250 from 1 800, none below). A
//! stream has no length, so gsinfer grows the window instead:
//!
//! - the first evaluation happens at `min_errors` errors (1 by default) and
//!   decides all of them; while fewer than `batch_size` errors have been
//!   seen, the next evaluations come each time the count doubles (2, 4, 8,
//!   …, 64), so a decision never waits longer than the history it is made
//!   on; from then on one comes at every multiple of `batch_size` (70, 140,
//!   …), as in the paper. Each decides the errors since the previous one
//!   over the last `min(errors so far, window_batches × batch_size)`
//!   errors. So a channel's first score is published with its first error
//!   (for a forecaster, one window after its first sample), not 2 100
//!   errors later, and the window is full (the paper's setting) from error
//!   2 100 on;
//! - errors with ordinal below `ignore_first` (0 by default: telemanom's
//!   rule for short series) are never flagged, whatever the window;
//! - nothing else changes with the window's size, and the paper's guards do
//!   the rest: a candidate `z` must flag fewer than half the window *after*
//!   widening by `error_buffer`, so with the default buffer of 100 nothing
//!   can be flagged before the window holds about 400 errors (a sequence at
//!   least 199 long must be under half of it). The earliest errors are thus
//!   decided on little history and are the least sensitive: a known cost of
//!   deciding at once rather than after 2 100 errors.
//!
//! Where this differs from telemanom: it runs as errors arrive, so a
//! stream's last partial batch stays undecided (telemanom stretches its last
//! window to the end of the file); the smoothing is the pipeline's EWMA
//! (by default pandas' `adjust=True`, as telemanom's, but without replacing
//! the first `l_s` smoothed values by their mean, which needs the future);
//! the largest non-anomalous error excludes exactly the indices already
//! flagged (telemanom's reference offsets them by one batch); and ties
//! between equal sequence maxima are resolved by position.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::threshold::{Decision, Point};

/// NDT parameters (`threshold = { method = "ndt", ... }`); defaults are the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NdtConfig {
    /// Errors per evaluation step (`batch_size`, 70).
    pub batch_size: usize,
    /// Batches in the trailing window (`window_size`, 30).
    pub window_batches: usize,
    /// Samples added on each side of an anomalous error (`error_buffer`, 100).
    pub error_buffer: usize,
    /// Minimum relative separation of a sequence's maximum from the next (`p`, 0.13).
    pub p: f32,
    /// Smallest `z` tried (2.5).
    pub z_min: f32,
    /// `z` tried up to, exclusive; also the `z` used when no candidate wins (12).
    pub z_max: f32,
    /// Step between `z` candidates (0.5).
    pub z_step: f32,
    /// Errors at the start of the stream never flagged (0: telemanom's rule
    /// for series under 1 800 values; it uses 500, two 250-step windows, on
    /// long files).
    pub ignore_first: usize,
    /// Errors before the first evaluation, which decides all of them (1:
    /// from the first error on); `window_batches × batch_size` waits for a
    /// full window, as gsinfer did before 2026-12.
    pub min_errors: usize,
    /// Also flag unusually low errors (mirrored about the mean).
    pub inverse: bool,
}

impl Default for NdtConfig {
    fn default() -> Self {
        Self {
            batch_size: 70,
            window_batches: 30,
            error_buffer: 100,
            p: 0.13,
            z_min: 2.5,
            z_max: 12.0,
            z_step: 0.5,
            ignore_first: 0,
            min_errors: 1,
            inverse: true,
        }
    }
}

impl NdtConfig {
    /// Problems with the parameters, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if self.batch_size == 0 || self.window_batches == 0 {
            v.push((
                "batch_size",
                "batch_size and window_batches must be at least 1".to_string(),
            ));
        }
        if self.error_buffer == 0 {
            v.push((
                "error_buffer",
                "must be at least 1 (1 adds no neighbours)".to_string(),
            ));
        }
        if !(self.z_step > 0.0
            && self.z_min < self.z_max
            && self.z_min.is_finite()
            && self.z_max.is_finite())
        {
            v.push((
                "z_step",
                "z_min < z_max and z_step > 0 are required, e.g. 2.5, 12, 0.5".to_string(),
            ));
        }
        if !(0.0..1.0).contains(&self.p) {
            v.push(("p", "must be in [0, 1), e.g. 0.13".to_string()));
        }
        if self.min_errors == 0 {
            v.push((
                "min_errors",
                "must be at least 1, e.g. 1 (decide from the first error)".to_string(),
            ));
        }
        v
    }
}

/// One channel's NDT state: the trailing window as columns (each error's
/// smoothed score, its value and whether it was flagged, 9 bytes an
/// error), and the window's last points, not yet decided, whole (a
/// decision carries its point). Saved in the shape gsinfer has always
/// saved (every point of the window), with the decided points' index,
/// time and raw error left 0, since nothing reads them again: ~10 bytes
/// fewer per error on disk, and files of older versions read as before.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SavedNdt")]
pub struct Ndt {
    config: NdtConfig,
    /// The window's smoothed errors, oldest first.
    scores: VecDeque<f32>,
    /// Parallel to `scores`: the target feature's values.
    values: VecDeque<f32>,
    /// Parallel to `scores`: already flagged anomalous.
    flagged: VecDeque<bool>,
    /// The window's last points, not yet decided (at most the window).
    undecided: VecDeque<Point>,
    started: bool,
    /// Errors seen since the start of the stream (ordinal of the next one).
    seen: u64,
}

/// [`Ndt`] as saved: every point of the window, in order.
#[derive(Serialize, Deserialize)]
struct SavedNdt<W = VecDeque<Point>, C = NdtConfig, F = VecDeque<bool>> {
    config: C,
    window: W,
    flagged: F,
    /// The window's last `pending` points are undecided.
    pending: usize,
    started: bool,
    seen: u64,
}

/// The window's points, for saving: decided ones with only their score
/// and value.
struct WindowPoints<'a>(&'a Ndt);

impl Serialize for WindowPoints<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ndt = self.0;
        let decided = ndt.scores.len() - ndt.undecided.len();
        let points = (ndt.scores.iter().zip(&ndt.values).take(decided))
            .map(|(&score, &value)| Point {
                index: 0,
                t_ns: 0,
                error: 0.0,
                score,
                value,
            })
            .chain(ndt.undecided.iter().copied());
        serializer.collect_seq(points)
    }
}

impl Serialize for Ndt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SavedNdt {
            config: &self.config,
            window: WindowPoints(self),
            flagged: &self.flagged,
            pending: self.undecided.len(),
            started: self.started,
            seen: self.seen,
        }
        .serialize(serializer)
    }
}

impl TryFrom<SavedNdt> for Ndt {
    type Error = String;

    fn try_from(s: SavedNdt) -> Result<Self, String> {
        let n = s.window.len();
        if s.flagged.len() != n || s.pending > n {
            return Err(format!(
                "NDT window of {n} points with {} flags and {} undecided",
                s.flagged.len(),
                s.pending
            ));
        }
        Ok(Self {
            scores: s.window.iter().map(|p| p.score).collect(),
            values: s.window.iter().map(|p| p.value).collect(),
            undecided: s.window.range(n - s.pending..).copied().collect(),
            config: s.config,
            flagged: s.flagged,
            started: s.started,
            seen: s.seen,
        })
    }
}

fn mean_std(xs: &[f32]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().map(|x| *x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// numpy's default (linear) percentile of unsorted `xs`, `q` in [0, 100].
fn percentile(xs: &[f32], q: f64) -> f64 {
    let mut v: Vec<f32> = xs.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] as f64 + (pos - lo as f64) * (v[hi] as f64 - v[lo] as f64)
}

/// Marks `[x − (buffer−1), x + (buffer−1)]` around every `x` with `hit(x)`,
/// clipped to `[from, n)`.
fn widen(n: usize, buffer: usize, from: usize, hit: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut diff = vec![0i32; n + 1];
    for x in (0..n).filter(|x| hit(*x)) {
        let lo = x.saturating_sub(buffer - 1).max(from);
        let hi = (x + buffer).min(n);
        if lo < hi {
            diff[lo] += 1;
            diff[hi] -= 1;
        }
    }
    let mut run = 0;
    (0..n)
        .map(|i| {
            run += diff[i];
            run > 0
        })
        .collect()
}

/// Contiguous runs of `true` longer than one element, as inclusive `(start, end)`.
fn sequences(flags: &[bool]) -> Vec<(usize, usize)> {
    let mut seqs = Vec::new();
    let mut start = None;
    for (i, f) in flags.iter().chain(std::iter::once(&false)).enumerate() {
        match (*f, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - 1 > s {
                    seqs.push((s, i - 1));
                }
                start = None;
            }
            _ => {}
        }
    }
    seqs
}

impl Ndt {
    /// Fresh state.
    pub fn new(config: NdtConfig) -> Self {
        let capacity = config.batch_size * config.window_batches;
        Self {
            scores: VecDeque::with_capacity(capacity),
            values: VecDeque::with_capacity(capacity),
            flagged: VecDeque::with_capacity(capacity),
            config,
            undecided: VecDeque::new(),
            started: false,
            seen: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.config.batch_size * self.config.window_batches
    }

    /// Adds one point; appends the decisions of a completed evaluation.
    pub fn push(&mut self, point: Point, out: &mut Vec<Decision>) {
        // Room first, so the columns never outgrow the window (a deque
        // that is full when pushed to doubles its allocation).
        if self.scores.len() >= self.capacity() {
            self.scores.pop_front();
            self.values.pop_front();
            self.flagged.pop_front();
        }
        self.scores.push_back(point.score);
        self.values.push_back(point.value);
        self.flagged.push_back(false);
        self.undecided.push_back(point);
        if self.undecided.len() > self.scores.len() {
            // Not reached: a window is evaluated before it holds more
            // undecided errors than it has room for.
            self.undecided.pop_front();
        }
        self.seen += 1;
        let batch = self.config.batch_size as u64;
        let due = if !self.started {
            self.scores.len() >= self.config.min_errors.min(self.capacity())
        } else if self.seen < batch {
            // Warm-up: at each doubling, so no decision waits longer than
            // the history it is made on.
            self.seen.is_power_of_two()
        } else {
            // At multiples of the batch (as if from the stream's start), or
            // a batch after an evaluation that was off that grid.
            self.seen.is_multiple_of(batch) || self.undecided.len() >= self.config.batch_size
        };
        if due {
            self.started = true;
            self.evaluate(out);
        }
    }

    /// Whether the first evaluation has happened (a decision has been made).
    pub fn deciding(&self) -> bool {
        self.started
    }

    /// The `z` that maximises the NDT objective over `e` (§3.2).
    fn find_z(&self, e: &[f32], mean: f64, sd: f64) -> f64 {
        let c = &self.config;
        let n = e.len();
        let mut best = (0.0f64, c.z_max as f64);
        if mean == 0.0 || sd == 0.0 {
            return best.1;
        }
        let mut z = c.z_min as f64;
        while z < c.z_max as f64 {
            let eps = mean + sd * z;
            let pruned: Vec<f32> = e.iter().copied().filter(|x| (*x as f64) < eps).collect();
            let anomalous = widen(n, c.error_buffer, 0, |i| e[i] as f64 > eps);
            let count = anomalous.iter().filter(|a| **a).count();
            if count > 0 && !pruned.is_empty() {
                let seqs = sequences(&anomalous).len();
                let (pm, ps) = mean_std(&pruned);
                let s = ((mean - pm) / mean + (sd - ps) / sd) / ((seqs * seqs + count) as f64);
                if s >= best.0 && seqs <= 5 && (count as f64) < n as f64 * 0.5 {
                    best = (s, z);
                }
            }
            z += c.z_step as f64;
        }
        best.1
    }

    /// Flags errors above `eps` in the decided region, then prunes (§3.3).
    #[allow(clippy::too_many_arguments)]
    fn flag(
        &self,
        e: &[f32],
        eps: f64,
        sd: f64,
        chan_sd: f64,
        range: f64,
        from: usize,
    ) -> Vec<bool> {
        let c = &self.config;
        let n = e.len();
        let max = e.iter().copied().fold(f32::MIN, f32::max) as f64;
        if !(sd > 0.05 * chan_sd || max > 0.05 * range) || max <= 0.05 {
            return vec![false; n];
        }
        let mut flags = widen(n, c.error_buffer, from, |x| {
            e[x] as f64 > eps && e[x] as f64 > 0.05 * range
        });
        let non_anom_max = (0..n)
            .filter(|x| !flags[*x] && !self.flagged[*x])
            .map(|x| e[x])
            .fold(0.0f32, f32::max);
        let seqs = sequences(&flags);
        if seqs.is_empty() {
            return flags;
        }
        // Prune: sequence maxima (telemanom slices [start, end)), largest first.
        let mut maxima: Vec<(f32, Option<usize>)> = seqs
            .iter()
            .enumerate()
            .map(|(k, (s, end))| {
                (
                    e[*s..*end].iter().copied().fold(f32::MIN, f32::max),
                    Some(k),
                )
            })
            .collect();
        maxima.sort_by(|a, b| b.0.total_cmp(&a.0));
        if non_anom_max > 0.0 {
            maxima.push((non_anom_max, None));
        }
        let mut remove = Vec::new();
        for w in maxima.windows(2) {
            if (w[0].0 - w[1].0) / w[0].0 < c.p {
                remove.extend(w[0].1);
            } else {
                remove.clear();
            }
        }
        for (k, (s, end)) in seqs.iter().enumerate() {
            if remove.contains(&k) {
                flags[*s..=*end].iter_mut().for_each(|f| *f = false);
            }
        }
        // Flags outside every kept sequence (isolated points) go too.
        let kept: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .filter(|(k, _)| !remove.contains(k))
            .map(|(_, s)| *s)
            .collect();
        for (i, f) in flags.iter_mut().enumerate() {
            if *f && !kept.iter().any(|(s, end)| (*s..=*end).contains(&i)) {
                *f = false;
            }
        }
        flags
    }

    /// Evaluates the window and decides its undecided errors.
    fn evaluate(&mut self, out: &mut Vec<Decision>) {
        let c = self.config.clone();
        self.scores.make_contiguous();
        self.values.make_contiguous();
        let e = self.scores.as_slices().0;
        let values = self.values.as_slices().0;
        let n = e.len();
        let (mean, sd) = mean_std(e);
        let (_, chan_sd) = mean_std(values);
        let range = percentile(values, 95.0) - percentile(values, 5.0);
        // Ordinal of the window's first error since the stream began.
        let first_ordinal = self.seen - n as u64;
        let ignored = (c.ignore_first as u64).saturating_sub(first_ordinal) as usize;
        let decide_from = n - self.undecided.len().min(n);
        let from = decide_from.max(ignored.min(n));
        let z = self.find_z(e, mean, sd);
        let eps = mean + z * sd;
        let mut flags = self.flag(e, eps, sd, chan_sd, range, from);
        if c.inverse {
            let inv: Vec<f32> = e.iter().map(|x| (2.0 * mean - *x as f64) as f32).collect();
            let z_inv = self.find_z(&inv, mean, sd);
            let inv_flags = self.flag(&inv, mean + z_inv * sd, sd, chan_sd, range, from);
            flags.iter_mut().zip(inv_flags).for_each(|(f, i)| *f |= i);
        }
        for (i, point) in (decide_from..n).zip(self.undecided.drain(..)) {
            self.flagged[i] = flags[i];
            out.push(Decision {
                point,
                threshold: eps as f32,
                anomalous: flags[i],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> NdtConfig {
        NdtConfig {
            batch_size: 10,
            window_batches: 10,
            error_buffer: 3,
            ignore_first: 0,
            ..NdtConfig::default()
        }
    }

    /// Deterministic pseudo-noise in [0, 1).
    fn noise(i: u64) -> f32 {
        (i.wrapping_mul(2654435761) % 1000) as f32 / 1000.0
    }

    fn run(config: NdtConfig, scores: &[f32]) -> Vec<Decision> {
        let mut ndt = Ndt::new(config);
        let mut out = Vec::new();
        for (i, s) in scores.iter().enumerate() {
            ndt.push(point(i, *s), &mut out);
        }
        out
    }

    /// The `i`th point of a stream whose smoothed error is `score`.
    fn point(i: usize, score: f32) -> Point {
        Point {
            index: i as u64,
            t_ns: 1_500_000_000_000_000_000 + i as i64 * 60_000_000_000,
            error: score * 1.5,
            score,
            value: noise(i as u64 + 7) * 2.0 - 1.0,
        }
    }

    #[test]
    fn a_saved_state_continues_as_if_never_saved_and_older_whole_files_read_too() {
        let scores: Vec<f32> = (0..400)
            .map(|i| 0.1 + 0.05 * noise(i) + if (300..306).contains(&i) { 1.0 } else { 0.0 })
            .collect();
        let all = run(small(), &scores);
        assert!(all.iter().any(|d| d.anomalous));
        // Saved after 237 points: a full window, 7 of them undecided.
        let mut ndt = Ndt::new(small());
        let mut out = Vec::new();
        for (i, s) in scores.iter().enumerate().take(237) {
            ndt.push(point(i, *s), &mut out);
        }
        assert_eq!(ndt.undecided.len(), 7);
        let saved = postcard::to_allocvec(&ndt).unwrap();
        // The file shape of gsinfer before the columns: every point whole.
        let whole = postcard::to_allocvec(&SavedNdt {
            config: ndt.config.clone(),
            window: (137..237)
                .map(|i| point(i, scores[i]))
                .collect::<VecDeque<_>>(),
            flagged: ndt.flagged.clone(),
            pending: 7,
            started: true,
            seen: 237,
        })
        .unwrap();
        // ~14 bytes a decided point instead of ~24.
        assert!(
            saved.len() * 3 < whole.len() * 2,
            "{} bytes against {}",
            saved.len(),
            whole.len()
        );
        for bytes in [&saved, &whole] {
            let mut back: Ndt = postcard::from_bytes(bytes).unwrap();
            let mut got = out.clone();
            for (i, s) in scores.iter().enumerate().skip(237) {
                back.push(point(i, *s), &mut got);
            }
            assert_eq!(got, all);
        }
    }

    #[test]
    fn a_saved_state_whose_columns_disagree_is_refused() {
        let mut ndt = Ndt::new(small());
        for i in 0..15 {
            ndt.push(point(i, 0.1), &mut Vec::new());
        }
        let mut bad = SavedNdt {
            config: small(),
            window: (0..15).map(|i| point(i, 0.1)).collect::<VecDeque<_>>(),
            flagged: std::iter::repeat_n(false, 14).collect::<VecDeque<_>>(),
            pending: 5,
            started: true,
            seen: 15,
        };
        let bytes = postcard::to_allocvec(&bad).unwrap();
        assert!(postcard::from_bytes::<Ndt>(&bytes).is_err());
        bad.flagged.push_back(false);
        bad.pending = 16;
        let bytes = postcard::to_allocvec(&bad).unwrap();
        assert!(postcard::from_bytes::<Ndt>(&bytes).is_err());
    }

    #[test]
    fn every_point_is_decided_once_in_order_after_warm_up() {
        let scores: Vec<f32> = (0..305).map(|i| 0.1 + 0.05 * noise(i)).collect();
        let out = run(small(), &scores);
        // 1, 2, 4, 8 while warming up, then every multiple of 10; the last 5 wait.
        assert_eq!(out.len(), 300);
        let mut ndt = Ndt::new(small());
        let mut decided_at = Vec::new();
        let mut got = Vec::new();
        for (i, s) in scores.iter().take(40).enumerate() {
            let before = got.len();
            ndt.push(
                Point {
                    index: i as u64,
                    t_ns: 0,
                    error: *s,
                    score: *s,
                    value: 0.0,
                },
                &mut got,
            );
            if got.len() > before {
                decided_at.push(i + 1);
            }
        }
        assert_eq!(decided_at, vec![1, 2, 4, 8, 10, 20, 30, 40]);
        // Waiting for a full window, as before 2026-12: 100, then 10 per batch.
        let full = NdtConfig {
            min_errors: 100,
            ..small()
        };
        assert_eq!(run(full, &scores[..105]).len(), 100);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, d)| d.point.index == i as u64));
    }

    #[test]
    fn a_clear_excursion_is_flagged_and_quiet_noise_is_not() {
        let mut scores: Vec<f32> = (0..400).map(|i| 0.1 + 0.05 * noise(i)).collect();
        for s in &mut scores[250..262] {
            *s += 2.0;
        }
        let out = run(small(), &scores);
        let flagged: Vec<u64> = out
            .iter()
            .filter(|d| d.anomalous)
            .map(|d| d.point.index)
            .collect();
        assert!(!flagged.is_empty());
        assert!(
            flagged.iter().all(|i| (240..275).contains(i)),
            "{flagged:?}"
        );
        assert!(flagged.contains(&250) && flagged.contains(&261));
    }

    #[test]
    fn a_short_stream_is_decided_from_its_first_batch_on() {
        let config = NdtConfig {
            min_errors: 10,
            ..small()
        };
        // 40 errors: a quarter of the full window (100); telemanom would
        // shrink its window to the series, gsinfer grows it.
        let mut scores: Vec<f32> = (0..40).map(|i| 0.1 + 0.05 * noise(i)).collect();
        for s in &mut scores[30..34] {
            *s += 3.0;
        }
        let out = run(config.clone(), &scores);
        assert_eq!(out.len(), 40, "every complete batch is decided");
        assert_eq!(out[9].point.index, 9, "the first batch at the tenth error");
        let flagged: Vec<u64> = out
            .iter()
            .filter(|d| d.anomalous)
            .map(|d| d.point.index)
            .collect();
        assert!(
            flagged.contains(&30) && flagged.contains(&33),
            "{flagged:?}"
        );
        // The same excursion inside the first `ignore_first` errors is never
        // flagged (nor its neighbours within error_buffer - 1 = 2 samples).
        let out = run(
            NdtConfig {
                ignore_first: 36,
                ..config
            },
            &scores,
        );
        let flagged: Vec<u64> = out
            .iter()
            .filter(|d| d.anomalous)
            .map(|d| d.point.index)
            .collect();
        assert!(flagged.is_empty(), "{flagged:?}");
    }

    #[test]
    fn errors_small_against_the_values_flag_nothing() {
        let mut scores: Vec<f32> = (0..400).map(|i| 0.001 + 0.001 * noise(i)).collect();
        scores[300] = 0.02;
        assert!(run(small(), &scores).iter().all(|d| !d.anomalous));
    }

    #[test]
    fn helpers_match_numpy_and_telemanom() {
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), 2.5);
        assert_eq!(
            sequences(&[true, true, false, true, false, true, true, true]),
            vec![(0, 1), (5, 7)]
        );
        assert_eq!(
            widen(10, 2, 0, |x| x == 5),
            vec![false, false, false, false, true, true, true, false, false, false]
        );
        assert_eq!(
            widen(10, 3, 5, |x| x == 5),
            vec![false, false, false, false, false, true, true, true, false, false]
        );
    }

    #[test]
    fn pruning_drops_a_sequence_barely_above_the_background() {
        let mut ndt = Ndt::new(NdtConfig {
            error_buffer: 1,
            ..small()
        });
        ndt.flagged = std::iter::repeat_n(false, 20).collect();
        let mut e = vec![0.5f32; 20];
        e[5] = 1.0;
        e[6] = 1.0;
        e[12] = 0.95;
        e[13] = 0.95;
        // Maxima 1.0, 0.95, then the background 0.5: 1.0 is within p of 0.95,
        // but 0.95 clears the background by far, which resets the chain, so
        // both sequences survive.
        let flags = ndt.flag(&e, 0.9, 0.2, 0.1, 1.0, 0);
        assert!(flags[5] && flags[12]);
        // A lone run just 5 % above the background is pruned.
        let mut e = vec![0.9f32; 20];
        e[5] = 0.95;
        e[6] = 0.95;
        let flags = ndt.flag(&e, 0.92, 0.2, 0.1, 1.0, 0);
        assert!(flags.iter().all(|f| !f));
    }
}
