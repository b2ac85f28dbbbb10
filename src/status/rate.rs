//! Rates of growing counters (messages/s, samples/s) for the status page,
//! over a sliding window of recent readings. The clock is injected: every
//! call takes `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back a rate looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Readings closer together than this are merged.
const RESOLUTION: Duration = Duration::from_millis(500);

/// Readings `(when, counter total)` of one counter, newest last.
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    readings: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    /// Notes that the counter stood at `total` at `now`.
    pub fn observe(&mut self, now: Instant, total: u64) {
        match self.readings.back_mut() {
            Some(last) if now.saturating_duration_since(last.0) < RESOLUTION => {
                // Keep the older instant so the window keeps its span; update the count.
                last.1 = total;
            }
            _ => self.readings.push_back((now, total)),
        }
        // Keep one reading at or beyond the window's start, so a rate spans it.
        while self.readings.len() > 2
            && now.saturating_duration_since(self.readings[1].0) >= RATE_WINDOW
        {
            self.readings.pop_front();
        }
    }

    /// Counts per second over the last [`RATE_WINDOW`] (or since the first
    /// reading, if younger), with the counter at `total` now; `None` before
    /// two readings half a second apart.
    pub fn rate(&mut self, now: Instant, total: u64) -> Option<f64> {
        self.observe(now, total);
        let (t0, c0) = *self.readings.front()?;
        let span = now.saturating_duration_since(t0).as_secs_f64();
        (span >= RESOLUTION.as_secs_f64()).then(|| total.saturating_sub(c0) as f64 / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_follows_the_counter_and_decays_when_it_stops() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.rate(t0, 0), None);
        for s in 1..=20u64 {
            m.observe(t0 + Duration::from_secs(s), s * 100);
        }
        let r = m.rate(t0 + Duration::from_secs(20), 2000).unwrap();
        assert!((r - 100.0).abs() < 1e-9, "{r}");
        // Nothing more arrives: after a full window the rate is 0.
        let later = t0 + Duration::from_secs(20) + RATE_WINDOW + Duration::from_secs(1);
        m.observe(t0 + Duration::from_secs(25), 2000);
        assert_eq!(m.rate(later, 2000), Some(0.0));
    }
}
