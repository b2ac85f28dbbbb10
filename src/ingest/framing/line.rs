//! Newline-terminated lines, for text payloads (JSON samples, CSV): a
//! frame is everything up to `\n`, with one `\r` before it removed. Empty
//! lines are skipped; a line longer than the maximum is dropped up to its
//! `\n`.

use super::DeframeStats;

/// Appends `payload` and `\n`, or `\r\n` when the payload ends in `\r`
/// (the decoder removes one `\r` before the `\n`). The payload must not
/// contain `\n`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.contains(&b'\n'), "a line payload holds no newline");
    out.extend_from_slice(payload);
    if payload.last() == Some(&b'\r') {
        out.push(b'\r');
    }
    out.push(b'\n');
}

/// Streaming line splitter.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
    stats: DeframeStats,
}

impl LineDecoder {
    /// Lines of at most `max` bytes (without the line end).
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder {
            buf: Vec::with_capacity(max.min(1 << 16)),
            max,
            discarding: false,
            stats: DeframeStats::default(),
        }
    }

    /// Forgets a partial line.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// The counters since the last call, zeroing them.
    pub fn take_stats(&mut self) -> DeframeStats {
        self.stats.take()
    }

    /// Feeds `input`, calling `on_frame` for every non-empty line.
    pub fn push(&mut self, mut input: &[u8], on_frame: &mut impl FnMut(&[u8])) {
        while !input.is_empty() {
            let run = input
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(input.len());
            if self.discarding {
                self.stats.dropped_bytes += run as u64;
            } else if self.buf.len() + run > self.max + 1 {
                // One byte of slack for a `\r` before the `\n`.
                self.stats.oversized += 1;
                self.stats.resyncs += 1;
                self.stats.dropped_bytes += (self.buf.len() + run) as u64;
                self.buf.clear();
                self.discarding = true;
            } else {
                self.buf.extend_from_slice(&input[..run]);
            }
            input = &input[run..];
            let Some((_, rest)) = input.split_first() else {
                break;
            };
            input = rest;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
            if line.len() > self.max {
                self.stats.oversized += 1;
                self.stats.resyncs += 1;
                self.stats.dropped_bytes += line.len() as u64;
            } else if !line.is_empty() {
                self.stats.frames += 1;
                on_frame(line);
            }
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, DeframeStats) {
        let mut d = LineDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut |f| out.push(f.to_vec()));
        }
        (out, d.take_stats())
    }

    #[test]
    fn crlf_and_blank_lines() {
        let (lines, stats) = decode_all(8, &[b"a,1\r\n\n\r\nb,2\n", b"c,"]);
        assert_eq!(lines, vec![b"a,1".to_vec(), b"b,2".to_vec()]);
        assert_eq!(stats.frames, 2);
    }

    #[test]
    fn long_lines_are_dropped_whole() {
        let (lines, stats) = decode_all(4, &[b"12345", b"678\nok\n1234\r\n"]);
        assert_eq!(lines, vec![b"ok".to_vec(), b"1234".to_vec()]);
        assert_eq!((stats.oversized, stats.dropped_bytes), (1, 8));
    }

    /// Found by fuzzing (the stable run of the `line` target's invariants):
    /// a payload ending in `\r` lost it on the way back, because the
    /// decoder removes one `\r` before `\n`.
    #[test]
    fn a_payload_ending_in_cr_round_trips() {
        for payload in [&b"\r"[..], b"ab\r", b"a\r\r"] {
            let mut wire = Vec::new();
            encode(payload, &mut wire);
            assert_eq!(decode_all(8, &[&wire]).0, vec![payload.to_vec()]);
        }
    }

    proptest! {
        #[test]
        fn round_trip_in_any_chunking(
            lines in prop::collection::vec("[^\n]{1,200}", 0..8),
            cut in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for l in &lines {
                encode(l.as_bytes(), &mut wire);
            }
            let chunks: Vec<&[u8]> = wire.chunks(cut).collect();
            let (got, stats) = decode_all(800, &chunks);
            let want: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(stats.dropped_bytes, 0);
        }
    }
}
