//! KISS, "The KISS TNC: A simple Host-to-TNC communications protocol"
//! (Chepponis and Karn, ARRL 6th Computer Networking Conference, 1987).
//!
//! A frame is FEND (`0xC0`), a type byte, the data, FEND. The type byte's
//! high nibble is the TNC port (0–15), its low nibble the command: 0 is a
//! data frame; 1–6 set TNC parameters (TXDELAY, P, SlotTime, TXtail,
//! FullDuplex, SetHardware) and `0xFF` leaves KISS mode. FEND and FESC
//! (`0xDB`) inside a frame are sent as FESC TFEND (`0xDB 0xDC`) and FESC
//! TFESC (`0xDB 0xDD`); any other byte after FESC is an error on which "no
//! action is taken and frame assembly continues" (the byte is dropped).
//! Consecutive FENDs are allowed and delimit nothing.

use super::slip::{BadEscape, Unstuffer};
use super::DeframeStats;

/// Frame delimiter.
pub const FEND: u8 = super::slip::END;
/// Escape.
pub const FESC: u8 = super::slip::ESC;
/// Escaped FEND.
pub const TFEND: u8 = super::slip::ESC_END;
/// Escaped FESC.
pub const TFESC: u8 = super::slip::ESC_ESC;
/// Command nibble of a data frame.
pub const CMD_DATA: u8 = 0x0;

/// Appends one KISS frame: FEND, the type byte `port << 4 | command`, the
/// escaped data, FEND. The type byte is escaped too (port 12, command 0 is
/// `0xC0`).
///
/// # Panics
/// When `port` or `command` does not fit in a nibble.
pub fn encode(port: u8, command: u8, data: &[u8], out: &mut Vec<u8>) {
    assert!(
        port < 16 && command < 16,
        "KISS port and command are nibbles"
    );
    out.push(FEND);
    super::slip::stuff(&[port << 4 | command], out);
    super::slip::stuff(data, out);
    out.push(FEND);
}

/// Streaming KISS decoder. Bytes before the first FEND are skipped and
/// counted (a KISS frame always starts with one); frames other than data
/// frames of the selected port are counted as ignored.
#[derive(Debug)]
pub struct KissDecoder {
    inner: Unstuffer,
    port: Option<u8>,
    ignored: u64,
    ignored_bytes: u64,
}

impl KissDecoder {
    /// Data frames of at most `max` bytes (type byte excluded), of `port`
    /// only, or of any port.
    pub fn new(max: usize, port: Option<u8>) -> KissDecoder {
        KissDecoder {
            inner: Unstuffer::new(max.saturating_add(1), true, BadEscape::Skip),
            port,
            ignored: 0,
            ignored_bytes: 0,
        }
    }

    /// Feeds `input`; calls `on_frame(port, data)` for every data frame.
    pub fn push(&mut self, input: &[u8], on_frame: &mut impl FnMut(u8, &[u8])) {
        let want = self.port;
        let (ignored, ignored_bytes) = (&mut self.ignored, &mut self.ignored_bytes);
        self.inner.push(input, &mut |frame: &[u8]| {
            let (&kind, data) = frame.split_first().expect("frames are non-empty");
            let (port, command) = (kind >> 4, kind & 0x0F);
            if command == CMD_DATA && want.is_none_or(|p| p == port) {
                on_frame(port, data);
            } else {
                *ignored += 1;
                *ignored_bytes += frame.len() as u64;
            }
        });
    }

    /// Forgets a partial frame and hunts for the next FEND.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// The counters since the last call, zeroing them.
    pub fn take_stats(&mut self) -> DeframeStats {
        let mut s = self.inner.stats.take();
        s.frames -= self.ignored;
        s.ignored = std::mem::take(&mut self.ignored);
        s.dropped_bytes += std::mem::take(&mut self.ignored_bytes);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(d: &mut KissDecoder, chunks: &[&[u8]]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut |port, data| out.push((port, data.to_vec())));
        }
        out
    }

    #[test]
    fn type_byte_carries_port_and_command() {
        let mut wire = Vec::new();
        encode(3, CMD_DATA, &[1, FEND, FESC], &mut wire);
        assert_eq!(wire, vec![FEND, 0x30, 1, FESC, TFEND, FESC, TFESC, FEND]);
        encode(12, CMD_DATA, &[2], &mut wire); // type byte 0xC0 is escaped
        encode(0, 1, &[50], &mut wire); // TXDELAY: not data
        let mut d = KissDecoder::new(16, None);
        assert_eq!(
            decode_all(&mut d, &[&wire]),
            vec![(3, vec![1, FEND, FESC]), (12, vec![2])]
        );
        let s = d.take_stats();
        assert_eq!((s.frames, s.ignored, s.dropped_bytes), (2, 1, 2));
    }

    #[test]
    fn other_ports_are_ignored_when_one_is_selected() {
        let mut wire = Vec::new();
        encode(0, CMD_DATA, &[1], &mut wire);
        encode(1, CMD_DATA, &[2], &mut wire);
        let mut d = KissDecoder::new(16, Some(1));
        assert_eq!(decode_all(&mut d, &[&wire]), vec![(1, vec![2])]);
        assert_eq!(d.take_stats().ignored, 1);
    }

    #[test]
    fn garbage_before_the_first_fend_is_skipped_and_counted() {
        let mut wire = vec![0x55, 0xAA, 0x01];
        encode(0, CMD_DATA, &[7], &mut wire);
        let mut d = KissDecoder::new(16, None);
        assert_eq!(decode_all(&mut d, &[&wire]), vec![(0, vec![7])]);
        let s = d.take_stats();
        assert_eq!((s.resyncs, s.dropped_bytes, s.frames), (1, 3, 1));
    }

    #[test]
    fn an_invalid_escape_drops_the_byte_as_the_spec_says() {
        let mut d = KissDecoder::new(16, None);
        let got = decode_all(&mut d, &[&[FEND, 0x00, 1, FESC, 0x41, 2, FEND]]);
        assert_eq!(got, vec![(0, vec![1, 2])]);
        assert_eq!(d.take_stats().bad_escapes, 1);
    }

    #[test]
    fn max_applies_to_the_data_not_the_type_byte() {
        let mut wire = Vec::new();
        encode(0, CMD_DATA, &[1, 2, 3], &mut wire);
        encode(0, CMD_DATA, &[1, 2, 3, 4], &mut wire);
        let mut d = KissDecoder::new(3, None);
        assert_eq!(decode_all(&mut d, &[&wire]), vec![(0, vec![1, 2, 3])]);
        assert_eq!(d.take_stats().oversized, 1);
    }

    proptest! {
        #[test]
        fn round_trip_in_any_chunking(
            frames in prop::collection::vec((0u8..16, prop::collection::vec(any::<u8>(), 0..300)), 0..8),
            cut in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for (port, data) in &frames {
                encode(*port, CMD_DATA, data, &mut wire);
            }
            let chunks: Vec<&[u8]> = wire.chunks(cut).collect();
            let mut d = KissDecoder::new(300, None);
            prop_assert_eq!(decode_all(&mut d, &chunks), frames.clone());
            let s = d.take_stats();
            prop_assert_eq!(s.frames as usize, frames.len());
            prop_assert_eq!(s.dropped_bytes, 0);
        }

        #[test]
        fn noise_never_breaks_the_frames_after_it(
            noise in prop::collection::vec(any::<u8>(), 0..200),
            data in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut wire = noise.clone();
            encode(0, CMD_DATA, &data, &mut wire);
            let mut d = KissDecoder::new(100, None);
            let got = decode_all(&mut d, &[&wire]);
            prop_assert_eq!(got.last(), Some(&(0u8, data)));
        }
    }
}
