//! COBS, "Consistent Overhead Byte Stuffing" (Cheshire and Baker,
//! IEEE/ACM Transactions on Networking 7(2), 1999): the frame is encoded
//! without zero bytes and terminated by `0x00`; the encoding itself comes
//! from the `cobs` crate.
//!
//! The encoder here also sends a leading `0x00`, so noise before a frame
//! ends up in a frame of its own (which fails to decode or fails the
//! payload checks) instead of corrupting the frame.

use super::DeframeStats;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

/// Longest COBS encoding of `n` bytes: one code byte per 254 data bytes, plus one.
pub fn max_encoded_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Appends `0x00`, the COBS encoding of `payload`, `0x00`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.push(DELIMITER);
    let start = out.len();
    out.resize(start + max_encoded_len(payload.len()), 0);
    let n = cobs::encode(payload, &mut out[start..]);
    out.truncate(start + n);
    out.push(DELIMITER);
}

/// Streaming COBS decoder: collects the bytes up to each `0x00` and
/// decodes them. Empty frames (two delimiters in a row) are skipped;
/// undecodable frames are dropped and counted as resyncs.
#[derive(Debug)]
pub struct CobsDecoder {
    buf: Vec<u8>,
    max: usize,
    max_encoded: usize,
    discarding: bool,
    stats: DeframeStats,
}

impl CobsDecoder {
    /// Frames of at most `max` bytes once decoded.
    pub fn new(max: usize) -> CobsDecoder {
        let max_encoded = max_encoded_len(max);
        CobsDecoder {
            buf: Vec::with_capacity(max_encoded.min(1 << 16)),
            max,
            max_encoded,
            discarding: false,
            stats: DeframeStats::default(),
        }
    }

    /// Forgets a partial frame.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// The counters since the last call, zeroing them.
    pub fn take_stats(&mut self) -> DeframeStats {
        self.stats.take()
    }

    fn oversized(&mut self, bytes: usize) {
        self.stats.oversized += 1;
        self.stats.resyncs += 1;
        self.stats.dropped_bytes += bytes as u64;
    }

    /// Feeds `input`, calling `on_frame` for every decoded frame.
    pub fn push(&mut self, mut input: &[u8], on_frame: &mut impl FnMut(&[u8])) {
        while !input.is_empty() {
            let run = input
                .iter()
                .position(|&b| b == DELIMITER)
                .unwrap_or(input.len());
            if self.discarding {
                self.stats.dropped_bytes += run as u64;
            } else if self.buf.len() + run > self.max_encoded {
                let bytes = self.buf.len() + run;
                self.buf.clear();
                self.discarding = true;
                self.oversized(bytes);
            } else {
                self.buf.extend_from_slice(&input[..run]);
            }
            input = &input[run..];
            let Some((_, rest)) = input.split_first() else {
                break;
            };
            input = rest;
            if std::mem::take(&mut self.discarding) || self.buf.is_empty() {
                continue;
            }
            let encoded = self.buf.len();
            match cobs::decode_in_place_report(&mut self.buf) {
                Ok(r) if r.parsed_size() == encoded && r.frame_size() <= self.max => {
                    self.stats.frames += 1;
                    on_frame(&self.buf[..r.frame_size()]);
                }
                Ok(r) if r.parsed_size() == encoded => self.oversized(encoded),
                _ => {
                    self.stats.resyncs += 1;
                    self.stats.dropped_bytes += encoded as u64;
                }
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
        let mut d = CobsDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut |f| out.push(f.to_vec()));
        }
        (out, d.take_stats())
    }

    #[test]
    fn encoding_has_no_zero_inside_and_decodes_back() {
        let mut wire = Vec::new();
        encode(&[0x11, 0x00, 0x00, 0x22], &mut wire);
        assert_eq!(wire, vec![0, 0x02, 0x11, 0x01, 0x02, 0x22, 0]);
        assert_eq!(decode_all(16, &[&wire]).0, vec![vec![0x11, 0, 0, 0x22]]);
    }

    #[test]
    fn an_undecodable_frame_is_a_resync_and_the_next_frame_survives() {
        let mut wire = vec![0x05, 0x01, 0x00]; // code 5 promises 4 bytes, only 1 follows
        encode(&[1, 2, 3], &mut wire);
        let (frames, stats) = decode_all(16, &[&wire]);
        assert_eq!(frames, vec![vec![1, 2, 3]]);
        assert_eq!(
            (stats.resyncs, stats.dropped_bytes, stats.frames),
            (1, 2, 1)
        );
    }

    #[test]
    fn long_runs_without_zero_use_0xff_blocks() {
        let payload: Vec<u8> = (0..600).map(|i| (i % 255 + 1) as u8).collect();
        let mut wire = Vec::new();
        encode(&payload, &mut wire);
        assert_eq!(decode_all(600, &[&wire]).0, vec![payload.clone()]);
        assert_eq!(decode_all(599, &[&wire]).1.oversized, 1);
    }

    proptest! {
        #[test]
        fn round_trip_in_any_chunking(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 0..8),
            cut in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                encode(p, &mut wire);
            }
            let chunks: Vec<&[u8]> = wire.chunks(cut).collect();
            let (frames, stats) = decode_all(700, &chunks);
            prop_assert_eq!(&frames, &payloads);
            prop_assert_eq!(stats.dropped_bytes, 0);
        }

        #[test]
        fn noise_never_breaks_the_frames_after_it(
            noise in prop::collection::vec(any::<u8>(), 0..200),
            payload in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut wire = noise.clone();
            encode(&payload, &mut wire);
            let (frames, _) = decode_all(100, &[&wire]);
            prop_assert_eq!(frames.last(), Some(&payload));
        }
    }
}
