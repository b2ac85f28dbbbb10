//! SLIP, RFC 1055 ("A Nonstandard for Transmission of IP Datagrams over
//! Serial Lines"): frames end with END (`0xC0`); END and ESC (`0xDB`) in
//! the data are sent as ESC ESC_END (`0xDB 0xDC`) and ESC ESC_ESC
//! (`0xDB 0xDD`).
//!
//! The byte stuffing here is shared with KISS, which uses the same four
//! values under other names (FEND, FESC, TFEND, TFESC).

use super::DeframeStats;

/// Frame delimiter (RFC 1055 END; KISS FEND).
pub const END: u8 = 0xC0;
/// Escape (RFC 1055 ESC; KISS FESC).
pub const ESC: u8 = 0xDB;
/// Escaped END (RFC 1055 ESC_END; KISS TFEND).
pub const ESC_END: u8 = 0xDC;
/// Escaped ESC (RFC 1055 ESC_ESC; KISS TFESC).
pub const ESC_ESC: u8 = 0xDD;

/// Appends `data` byte-stuffed (END and ESC escaped), without delimiters.
pub fn stuff(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() + data.len() / 16 + 2);
    for &b in data {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            _ => out.push(b),
        }
    }
}

/// Appends one SLIP frame: END, the stuffed payload, END. The leading END
/// is what RFC 1055's sample `send_packet` does: it flushes line noise
/// into a frame of its own.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.push(END);
    stuff(payload, out);
    out.push(END);
}

/// What to do with the byte after an ESC that is neither ESC_END nor ESC_ESC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEscape {
    /// Keep the byte (RFC 1055's sample `recv_packet`).
    Keep,
    /// Drop the byte and go on assembling (the KISS specification).
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter: bytes here belong to no frame.
    Hunt,
    /// Inside a frame.
    Frame,
    /// Inside a frame, after ESC.
    Escape,
    /// Dropping an oversized frame up to its END.
    Discard,
}

/// The streaming un-stuffer behind [`SlipDecoder`] and KISS: delivers the
/// bytes between two ENDs, unescaped, dropping empty frames and frames
/// longer than its maximum.
#[derive(Debug)]
pub struct Unstuffer {
    buf: Vec<u8>,
    max: usize,
    state: State,
    hunt: bool,
    bad_escape: BadEscape,
    /// Counters since they were last taken.
    pub stats: DeframeStats,
}

impl Unstuffer {
    /// Frames of at most `max` bytes; with `hunt`, bytes before the first
    /// END are skipped as garbage (KISS frames start with FEND).
    pub fn new(max: usize, hunt: bool, bad_escape: BadEscape) -> Unstuffer {
        Unstuffer {
            buf: Vec::with_capacity(max.min(1 << 16)),
            max,
            state: if hunt { State::Hunt } else { State::Frame },
            hunt,
            bad_escape,
            stats: DeframeStats::default(),
        }
    }

    /// Forgets a partial frame; hunts again if built to.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.state = if self.hunt { State::Hunt } else { State::Frame };
    }

    fn overflow(&mut self) {
        self.stats.oversized += 1;
        self.stats.resyncs += 1;
        self.stats.dropped_bytes += self.buf.len() as u64;
        self.buf.clear();
        self.state = State::Discard;
    }

    fn end(&mut self, on_frame: &mut impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            self.stats.frames += 1;
            on_frame(&self.buf);
            self.buf.clear();
        }
        self.state = State::Frame;
    }

    /// Feeds `input`, calling `on_frame` for every complete, non-empty frame.
    pub fn push(&mut self, mut input: &[u8], on_frame: &mut impl FnMut(&[u8])) {
        while let Some((&b, rest)) = input.split_first() {
            match self.state {
                State::Hunt => {
                    let skip = input.iter().position(|&c| c == END).unwrap_or(input.len());
                    if skip > 0 {
                        self.stats.resyncs += 1;
                        self.stats.dropped_bytes += skip as u64;
                    }
                    input = &input[skip..];
                    if let Some((_, rest)) = input.split_first() {
                        self.state = State::Frame;
                        input = rest;
                    }
                }
                State::Discard => {
                    let skip = input.iter().position(|&c| c == END).unwrap_or(input.len());
                    self.stats.dropped_bytes += skip as u64;
                    input = &input[skip..];
                    if let Some((_, rest)) = input.split_first() {
                        self.state = State::Frame;
                        input = rest;
                    }
                }
                State::Frame => {
                    // Copy the run of ordinary bytes in one go.
                    let run = input
                        .iter()
                        .position(|&c| c == END || c == ESC)
                        .unwrap_or(input.len());
                    let room = self.max - self.buf.len();
                    if run > room {
                        self.stats.dropped_bytes += room as u64;
                        self.overflow();
                        input = &input[room..];
                        continue;
                    }
                    self.buf.extend_from_slice(&input[..run]);
                    input = &input[run..];
                    match input.split_first() {
                        Some((&END, rest)) => {
                            self.end(on_frame);
                            input = rest;
                        }
                        Some((_, rest)) => {
                            self.state = State::Escape;
                            input = rest;
                        }
                        None => {}
                    }
                }
                State::Escape => {
                    input = rest;
                    let byte = match b {
                        ESC_END => Some(END),
                        ESC_ESC => Some(ESC),
                        END => {
                            // A sender never emits ESC END; END still delimits.
                            self.stats.bad_escapes += 1;
                            self.end(on_frame);
                            continue;
                        }
                        other => {
                            self.stats.bad_escapes += 1;
                            match self.bad_escape {
                                BadEscape::Keep => Some(other),
                                BadEscape::Skip => None,
                            }
                        }
                    };
                    self.state = State::Frame;
                    if let Some(byte) = byte {
                        if self.buf.len() == self.max {
                            self.stats.dropped_bytes += 1;
                            self.overflow();
                        } else {
                            self.buf.push(byte);
                        }
                    }
                }
            }
        }
    }
}

/// Streaming SLIP decoder. It starts inside a frame (RFC 1055 senders need
/// not send a leading END), so noise before the first END becomes a frame
/// that the payload checks reject.
#[derive(Debug)]
pub struct SlipDecoder {
    inner: Unstuffer,
}

impl SlipDecoder {
    /// Frames of at most `max` bytes after unescaping.
    pub fn new(max: usize) -> SlipDecoder {
        SlipDecoder {
            inner: Unstuffer::new(max, false, BadEscape::Keep),
        }
    }

    /// Feeds `input`, calling `on_frame` for every complete frame.
    pub fn push(&mut self, input: &[u8], on_frame: &mut impl FnMut(&[u8])) {
        self.inner.push(input, on_frame);
    }

    /// Forgets a partial frame.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// The counters since the last call, zeroing them.
    pub fn take_stats(&mut self) -> DeframeStats {
        self.inner.stats.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, DeframeStats) {
        let mut d = SlipDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut |f| out.push(f.to_vec()));
        }
        (out, d.take_stats())
    }

    #[test]
    fn escapes_follow_rfc_1055() {
        let mut wire = Vec::new();
        encode(&[1, END, 2, ESC, 3], &mut wire);
        assert_eq!(wire, vec![END, 1, ESC, ESC_END, 2, ESC, ESC_ESC, 3, END]);
        let (frames, stats) = decode_all(64, &[&wire]);
        assert_eq!(frames, vec![vec![1, END, 2, ESC, 3]]);
        assert_eq!(stats.frames, 1);
    }

    #[test]
    fn a_frame_split_at_every_byte_decodes() {
        let mut wire = Vec::new();
        encode(&[ESC, END, 7, 8], &mut wire);
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(64, &chunks).0, vec![vec![ESC, END, 7, 8]]);
    }

    #[test]
    fn a_bad_escape_keeps_the_byte_and_is_counted() {
        let (frames, stats) = decode_all(64, &[&[END, 1, ESC, 0x41, 2, END]]);
        assert_eq!(frames, vec![vec![1, 0x41, 2]]);
        assert_eq!(stats.bad_escapes, 1);
    }

    #[test]
    fn oversized_frames_are_dropped_up_to_the_next_end() {
        let mut wire = Vec::new();
        encode(&[9; 10], &mut wire);
        encode(&[1, 2], &mut wire);
        let (frames, stats) = decode_all(4, &[&wire]);
        assert_eq!(frames, vec![vec![1, 2]]);
        assert_eq!((stats.oversized, stats.dropped_bytes), (1, 10));
    }

    #[test]
    fn a_frame_of_exactly_max_bytes_passes_even_when_it_ends_in_an_escape() {
        let (frames, stats) = decode_all(3, &[&[END, 1, 2, ESC, ESC_END, END]]);
        assert_eq!(frames, vec![vec![1, 2, END]]);
        assert_eq!(stats.oversized, 0);
        let (frames, stats) = decode_all(2, &[&[END, 1, 2, ESC, ESC_END, END, 5, END]]);
        assert_eq!(frames, vec![vec![5]]);
        assert_eq!(stats.oversized, 1);
    }

    proptest! {
        #[test]
        fn round_trip_in_any_chunking(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
            cut in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                encode(p, &mut wire);
            }
            let chunks: Vec<&[u8]> = wire.chunks(cut).collect();
            let (frames, stats) = decode_all(300, &chunks);
            prop_assert_eq!(&frames, &payloads);
            prop_assert_eq!(stats.frames as usize, payloads.len());
            prop_assert_eq!(stats.dropped_bytes, 0);
        }

        #[test]
        fn noise_never_breaks_the_frames_after_it(
            noise in prop::collection::vec(any::<u8>(), 0..200),
            payload in prop::collection::vec(any::<u8>(), 1..100),
        ) {
            let mut wire = noise.clone();
            encode(&payload, &mut wire);
            let (frames, _) = decode_all(100, &[&wire]);
            prop_assert_eq!(frames.last(), Some(&payload));
        }
    }
}
