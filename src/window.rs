//! Per-channel windows: cuts each channel's sample stream into fixed-length,
//! overlapping windows with a stride, the unit a model sees.
//!
//! A window of length `L` over `F` features is `L` consecutive samples laid
//! out row-major as `[L, F]` `f32`, the layout of a model input
//! `[batch, L, F]` (a model that takes `[batch, L * F]` reads the same
//! bytes). The first window ends at sample index `L - 1`; after that one
//! window ends every `stride` samples.
//!
//! The ring keeps every row twice (at `i` and `i + L`), so each window is
//! one contiguous copy out of the ring, whatever the write position.

use serde::{Deserialize, Serialize};

/// Window shape of one pipeline (`[[pipeline]] window = {...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Samples per window (`L`), e.g. 250 for the telemanom forecaster.
    pub length: usize,
    /// Samples between the ends of two consecutive windows; 1 scores every
    /// sample.
    #[serde(default = "default_stride")]
    pub stride: usize,
}

fn default_stride() -> usize {
    1
}

/// One complete window, ready for the batcher.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowData {
    /// Per-channel window number, 0 for the first window, +1 for each next.
    pub seq: u64,
    /// Index of the window's last sample in the channel's stream (0-based).
    pub end_index: u64,
    /// `[L, F]` row-major samples, oldest first.
    pub values: Vec<f32>,
}

/// The sliding window state of one channel. Saved (serde) with the ring's
/// first half only, its second half being the same rows again; a saved
/// state with the whole ring (gsinfer before 2026-12-06) reads as well.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ReadWindows")]
pub struct ChannelWindows {
    length: usize,
    stride: usize,
    features: usize,
    /// `2 * length` rows of `features` values.
    #[serde(serialize_with = "first_half")]
    ring: Vec<f32>,
    /// Samples pushed so far.
    count: u64,
    /// Windows emitted so far.
    windows: u64,
}

/// Saves the ring's first half (the second repeats it).
fn first_half<S: serde::Serializer>(ring: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
    ring[..ring.len() / 2].serialize(serializer)
}

/// [`ChannelWindows`] as read back: the ring's first half, or (older
/// files) all of it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ReadWindows {
    length: usize,
    stride: usize,
    features: usize,
    ring: Vec<f32>,
    count: u64,
    windows: u64,
}

impl TryFrom<ReadWindows> for ChannelWindows {
    type Error = String;

    fn try_from(r: ReadWindows) -> Result<Self, String> {
        let half = r
            .length
            .checked_mul(r.features)
            .filter(|&h| h > 0 && r.stride > 0);
        let Some(half) = half else {
            return Err("window length, stride and features must be positive".into());
        };
        let mut ring = r.ring;
        if ring.len() == half {
            ring.extend_from_within(..);
        } else if ring.len() != 2 * half {
            return Err(format!(
                "window ring of {} values, expected {half} ({} × {} features)",
                ring.len(),
                r.length,
                r.features
            ));
        }
        Ok(Self {
            length: r.length,
            stride: r.stride,
            features: r.features,
            ring,
            count: r.count,
            windows: r.windows,
        })
    }
}

impl ChannelWindows {
    /// A new, empty window state. `length`, `stride` and `features` must be
    /// non-zero (checked by config validation).
    pub fn new(config: &WindowConfig, features: usize) -> Self {
        assert!(config.length > 0 && config.stride > 0 && features > 0);
        Self {
            length: config.length,
            stride: config.stride,
            features,
            ring: vec![0.0; 2 * config.length * features],
            count: 0,
            windows: 0,
        }
    }

    /// Windows cut so far (the `seq` the next one gets).
    pub fn windows_cut(&self) -> u64 {
        self.windows
    }

    /// Samples pushed so far; the index the next sample gets.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends one sample of exactly `features` values and returns the window
    /// ending at it, if one is due.
    ///
    /// # Panics
    /// If `values.len() != features` (the decoder rejects such samples first).
    pub fn push(&mut self, values: &[f32]) -> Option<WindowData> {
        assert_eq!(
            values.len(),
            self.features,
            "sample length checked by the caller"
        );
        let f = self.features;
        let slot = (self.count % self.length as u64) as usize;
        self.ring[slot * f..(slot + 1) * f].copy_from_slice(values);
        let twin = slot + self.length;
        self.ring[twin * f..(twin + 1) * f].copy_from_slice(values);
        let index = self.count;
        self.count += 1;
        let len = self.length as u64;
        if self.count < len || !(self.count - len).is_multiple_of(self.stride as u64) {
            return None;
        }
        // The oldest row of the window sits right after the newest one.
        let start = (slot + 1) % self.length;
        let values = self.ring[start * f..(start + self.length) * f].to_vec();
        let seq = self.windows;
        self.windows += 1;
        Some(WindowData {
            seq,
            end_index: index,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64, f: usize) -> Vec<f32> {
        (0..f).map(|k| i as f32 * 10.0 + k as f32).collect()
    }

    #[test]
    fn first_window_ends_at_length_minus_one() {
        let mut w = ChannelWindows::new(
            &WindowConfig {
                length: 3,
                stride: 1,
            },
            2,
        );
        assert!(w.push(&sample(0, 2)).is_none());
        assert!(w.push(&sample(1, 2)).is_none());
        let win = w.push(&sample(2, 2)).unwrap();
        assert_eq!(win.seq, 0);
        assert_eq!(win.end_index, 2);
        assert_eq!(win.values, vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    }

    #[test]
    fn windows_match_a_naive_slice_for_any_stride() {
        for length in 1..6 {
            for stride in 1..5 {
                let f = 3;
                let mut w = ChannelWindows::new(&WindowConfig { length, stride }, f);
                let all: Vec<Vec<f32>> = (0..40).map(|i| sample(i, f)).collect();
                let mut seq = 0;
                for (i, s) in all.iter().enumerate() {
                    let got = w.push(s);
                    let due = i + 1 >= length && (i + 1 - length) % stride == 0;
                    assert_eq!(got.is_some(), due, "length {length} stride {stride} i {i}");
                    if let Some(win) = got {
                        let want: Vec<f32> = all[i + 1 - length..=i].concat();
                        assert_eq!(win.values, want);
                        assert_eq!(win.end_index, i as u64);
                        assert_eq!(win.seq, seq);
                        seq += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn a_saved_window_state_goes_on_as_the_original_and_older_whole_rings_still_read() {
        let config = WindowConfig {
            length: 4,
            stride: 2,
        };
        let mut w = ChannelWindows::new(&config, 3);
        for i in 0..7 {
            w.push(&sample(i, 3));
        }
        let bytes = postcard::to_allocvec(&w).unwrap();
        let mut back: ChannelWindows = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.ring, w.ring);
        // Half the ring is saved; the whole ring, as saved before, reads too.
        let whole = postcard::to_allocvec(&ReadWindows {
            length: w.length,
            stride: w.stride,
            features: w.features,
            ring: w.ring.clone(),
            count: w.count,
            windows: w.windows,
        })
        .unwrap();
        assert!(
            bytes.len() < whole.len() / 2 + 16,
            "{} vs {}",
            bytes.len(),
            whole.len()
        );
        let mut older: ChannelWindows = postcard::from_bytes(&whole).unwrap();
        for i in 7..20 {
            let s = sample(i, 3);
            let want = w.push(&s);
            assert_eq!(back.push(&s), want);
            assert_eq!(older.push(&s), want);
        }
        // A ring of another length is refused, not read.
        let mut bad = bytes.clone();
        bad[3] = 5; // the ring's length prefix (length, stride, features are one byte each)
        assert!(postcard::from_bytes::<ChannelWindows>(&bad).is_err());
    }

    #[test]
    #[should_panic]
    fn wrong_sample_length_panics() {
        let mut w = ChannelWindows::new(
            &WindowConfig {
                length: 2,
                stride: 1,
            },
            2,
        );
        w.push(&[1.0]);
    }

    proptest::proptest! {
        /// No sample lost or repeated: for any length, stride, feature count
        /// and stream length, the windows are exactly the slices of the
        /// stream that end every `stride` samples after the first `length`.
        #[test]
        fn windows_are_exactly_the_strided_slices_of_the_stream(
            length in 1usize..24,
            stride in 1usize..12,
            features in 1usize..4,
            n in 0u64..160,
        ) {
            let mut w = ChannelWindows::new(&WindowConfig { length, stride }, features);
            let mut got = Vec::new();
            for i in 0..n {
                if let Some(win) = w.push(&sample(i, features)) {
                    got.push(win);
                }
            }
            let l = length as u64;
            let want = if n < l { 0 } else { (n - l) / stride as u64 + 1 };
            proptest::prop_assert_eq!(got.len() as u64, want);
            for (k, win) in got.iter().enumerate() {
                let end = l - 1 + k as u64 * stride as u64;
                proptest::prop_assert_eq!(win.seq, k as u64);
                proptest::prop_assert_eq!(win.end_index, end);
                let rows: Vec<f32> = (end + 1 - l..=end).flat_map(|i| sample(i, features)).collect();
                proptest::prop_assert_eq!(&win.values, &rows);
            }
            proptest::prop_assert_eq!(w.count(), n);
        }
    }
}
