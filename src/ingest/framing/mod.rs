//! Streaming frame decoders and encoders for serial links: bytes in,
//! frames out, whatever the read boundaries.
//!
//! A serial line has no packet boundaries of its own and picks up noise,
//! so every decoder here resynchronises instead of failing: bytes that
//! belong to no frame are skipped and counted, a frame longer than the
//! configured maximum is dropped and counted (memory stays bounded), and
//! the next delimiter starts afresh. What a frame *contains* is checked
//! later (CCSDS length and CRC, or the payload format).
//!
//! Framings ([`Framing`]):
//! - `kiss`: KISS (Chepponis and Karn, 1987), FEND-delimited frames with a
//!   type byte (port in the high nibble, command in the low) and FESC
//!   escaping; [`kiss`].
//! - `slip`: SLIP, RFC 1055; [`slip`].
//! - `cobs`: Consistent Overhead Byte Stuffing (Cheshire and Baker, 1999),
//!   frames delimited by `0x00`; [`cobs`].
//! - `line`: newline-terminated lines (`\n`, an optional `\r` before it is
//!   removed); [`line`](mod@line).

pub mod cobs;
pub mod kiss;
pub mod line;
pub mod slip;

use serde::{Deserialize, Serialize};

/// How frames are delimited on a serial link (`serial.framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// KISS frames; only data frames (command 0) carry packets.
    Kiss,
    /// SLIP frames (RFC 1055).
    Slip,
    /// COBS frames delimited by `0x00`.
    Cobs,
    /// Newline-terminated lines.
    Line,
}

impl Framing {
    /// Every framing, for tests and command-line help.
    pub const ALL: [Framing; 4] = [Framing::Kiss, Framing::Slip, Framing::Cobs, Framing::Line];

    /// The configuration name (`kiss`, `slip`, `cobs`, `line`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Framing::Kiss => "kiss",
            Framing::Slip => "slip",
            Framing::Cobs => "cobs",
            Framing::Line => "line",
        }
    }
}

impl std::fmt::Display for Framing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Framing::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown framing `{s}`; use kiss, slip, cobs or line"))
    }
}

/// What a decoder did since its counters were last taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeframeStats {
    /// Frames delivered.
    pub frames: u64,
    /// Times input was discarded to regain frame sync: a run of bytes
    /// before the first delimiter, an oversized frame, an undecodable
    /// (COBS) frame.
    pub resyncs: u64,
    /// Frames dropped for exceeding the maximum frame size.
    pub oversized: u64,
    /// Escape sequences that break the framing's rules (KISS, SLIP); the
    /// frame is kept as the specifications say, its content checks decide.
    pub bad_escapes: u64,
    /// KISS frames that are not data frames of the configured port.
    pub ignored: u64,
    /// Bytes that ended up in no delivered frame (garbage, oversized and
    /// undecodable frames, ignored frames), delimiters and escapes excluded.
    pub dropped_bytes: u64,
}

impl DeframeStats {
    /// Returns the counters and zeroes them.
    pub fn take(&mut self) -> DeframeStats {
        std::mem::take(self)
    }
}

/// A streaming decoder for one of the [`Framing`]s.
#[derive(Debug)]
pub enum Deframer {
    /// See [`kiss::KissDecoder`].
    Kiss(kiss::KissDecoder),
    /// See [`slip::SlipDecoder`].
    Slip(slip::SlipDecoder),
    /// See [`cobs::CobsDecoder`].
    Cobs(cobs::CobsDecoder),
    /// See [`line::LineDecoder`].
    Line(line::LineDecoder),
}

impl Deframer {
    /// A decoder delivering frames of at most `max_frame` bytes (the frame's
    /// content: after unescaping, without the KISS type byte). `kiss_port`
    /// keeps only KISS data frames of that port (`None`: any port).
    pub fn new(framing: Framing, max_frame: usize, kiss_port: Option<u8>) -> Deframer {
        match framing {
            Framing::Kiss => Deframer::Kiss(kiss::KissDecoder::new(max_frame, kiss_port)),
            Framing::Slip => Deframer::Slip(slip::SlipDecoder::new(max_frame)),
            Framing::Cobs => Deframer::Cobs(cobs::CobsDecoder::new(max_frame)),
            Framing::Line => Deframer::Line(line::LineDecoder::new(max_frame)),
        }
    }

    /// Feeds `input`; calls `on_frame` with each complete frame's content,
    /// in order. A frame may span any number of calls.
    pub fn push(&mut self, input: &[u8], on_frame: &mut impl FnMut(&[u8])) {
        match self {
            Deframer::Kiss(d) => d.push(input, &mut |_port, data| on_frame(data)),
            Deframer::Slip(d) => d.push(input, on_frame),
            Deframer::Cobs(d) => d.push(input, on_frame),
            Deframer::Line(d) => d.push(input, on_frame),
        }
    }

    /// Forgets a partial frame (after the link was reopened) and goes back
    /// to hunting for a frame start where the framing has one.
    pub fn reset(&mut self) {
        match self {
            Deframer::Kiss(d) => d.reset(),
            Deframer::Slip(d) => d.reset(),
            Deframer::Cobs(d) => d.reset(),
            Deframer::Line(d) => d.reset(),
        }
    }

    /// The counters since the last call, zeroing them.
    pub fn take_stats(&mut self) -> DeframeStats {
        match self {
            Deframer::Kiss(d) => d.take_stats(),
            Deframer::Slip(d) => d.take_stats(),
            Deframer::Cobs(d) => d.take_stats(),
            Deframer::Line(d) => d.take_stats(),
        }
    }
}

/// Appends one frame carrying `payload` to `out`: a KISS data frame on
/// port 0, a SLIP frame with a leading END, a COBS frame between two
/// `0x00`, or `payload` and `\n` (the payload must hold no `\n`).
pub fn encode(framing: Framing, payload: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Kiss => kiss::encode(0, kiss::CMD_DATA, payload, out),
        Framing::Slip => slip::encode(payload, out),
        Framing::Cobs => cobs::encode(payload, out),
        Framing::Line => line::encode(payload, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framing: Framing, max: usize, input: &[u8]) -> (Vec<Vec<u8>>, DeframeStats) {
        let mut d = Deframer::new(framing, max, None);
        let mut out = Vec::new();
        d.push(input, &mut |f| out.push(f.to_vec()));
        (out, d.take_stats())
    }

    #[test]
    fn every_framing_keeps_frames_apart_and_resyncs_after_an_oversized_one() {
        for framing in Framing::ALL {
            let mut wire = Vec::new();
            encode(framing, b"first", &mut wire);
            encode(framing, &[b'x'; 40], &mut wire);
            encode(framing, b"third", &mut wire);
            let (got, stats) = frames(framing, 16, &wire);
            assert_eq!(got, vec![b"first".to_vec(), b"third".to_vec()], "{framing}");
            assert_eq!(stats.frames, 2, "{framing}");
            assert_eq!(stats.oversized, 1, "{framing}");
            assert!(stats.resyncs >= 1, "{framing}");
        }
    }

    proptest::proptest! {
        /// The cargo-fuzz targets' invariants (fuzz/fuzz_targets/{kiss,slip,
        /// cobs,line}.rs) on stable: arbitrary bytes in arbitrary chunks
        /// never panic, never yield a frame over the maximum, and every frame
        /// survives an encode/decode round trip.
        #[test]
        fn arbitrary_bytes_keep_the_fuzz_invariants(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            cut in 1usize..300,
        ) {
            for framing in Framing::ALL {
                let mut d = Deframer::new(framing, 64, None);
                let mut frames = Vec::new();
                for chunk in input.chunks(cut) {
                    d.push(chunk, &mut |f| frames.push(f.to_vec()));
                }
                proptest::prop_assert!(frames.iter().all(|f| f.len() <= 64));
                proptest::prop_assert_eq!(d.take_stats().frames as usize, frames.len());
                let mut wire = Vec::new();
                for f in &frames {
                    encode(framing, f, &mut wire);
                }
                proptest::prop_assert_eq!(&self::frames(framing, 64, &wire).0, &frames, "{}", framing);
            }
        }
    }

    #[test]
    fn framing_names_parse() {
        for f in Framing::ALL {
            assert_eq!(f.as_str().parse::<Framing>().unwrap(), f);
        }
        assert!("hdlc".parse::<Framing>().unwrap_err().contains("kiss"));
    }
}
