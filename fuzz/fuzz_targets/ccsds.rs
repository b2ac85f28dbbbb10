//! The CCSDS space packet reader (`ingest::ccsds`) on arbitrary frames.
//! The first byte says whether the APID carries a packet error control;
//! the rest is one frame. Checks: a frame that parses is exactly as long as
//! its header says, its fields are in range, and its user data re-encoded
//! with the same header fields is the frame again, byte for byte (for
//! telemetry packets without a secondary header, the only kind the encoder
//! writes). Then every frame's 2-byte chunks, as sequence counts, go
//! through a `SequenceTracker`: the extended count keeps the 14-bit count
//! in its low bits and never goes down.
#![no_main]

use gsinfer::ingest::ccsds::{self, PacketError, SeqEvent, SequenceTracker, SEQ_COUNT_MODULUS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let crc = pick & 1 == 1;
    match ccsds::parse(frame) {
        Ok(p) => {
            assert!(p.apid <= ccsds::IDLE_APID);
            assert!(p.seq_count < SEQ_COUNT_MODULUS);
            assert_eq!(p.bytes(), frame);
            let declared = usize::from(u16::from_be_bytes([frame[4], frame[5]])) + 7;
            assert_eq!(declared, frame.len());
            match p.user_data(crc) {
                Ok(user) => {
                    let head = ccsds::PRIMARY_HEADER_LEN;
                    let tail = if crc { ccsds::CRC_LEN } else { 0 };
                    assert_eq!(user, &frame[head..frame.len() - tail]);
                    if !p.telecommand
                        && !p.secondary_header
                        && !user.is_empty()
                        && user.len() <= 65534
                    {
                        let mut again = Vec::new();
                        ccsds::encode(p.apid, p.seq_count, user, crc, &mut again);
                        assert_eq!(again, frame);
                    }
                }
                Err(PacketError::Crc { apid }) => assert!(crc && apid == p.apid),
                Err(e) => panic!("user_data: unexpected {e:?}"),
            }
        }
        Err(PacketError::Short { len }) => assert_eq!(len, frame.len()),
        Err(PacketError::Crc { .. }) => panic!("parse does not check the crc"),
        Err(e) => assert!(frame.len() > ccsds::PRIMARY_HEADER_LEN, "{e:?}"),
    }

    let mut tracker = SequenceTracker::default();
    let mut last: Option<(u16, u64)> = None;
    for pair in frame.chunks_exact(2) {
        let count = u16::from_be_bytes([pair[0], pair[1]]);
        let (event, extended) = tracker.observe(count);
        let count = count % SEQ_COUNT_MODULUS;
        assert_eq!(extended % u64::from(SEQ_COUNT_MODULUS), u64::from(count));
        match (last, event) {
            (None, SeqEvent::First) => {}
            (Some((c, e)), SeqEvent::Repeat) => assert!(c == count && e == extended),
            (Some((c, e)), SeqEvent::InOrder) => {
                assert_eq!((c + 1) % SEQ_COUNT_MODULUS, count);
                assert_eq!(extended, e + 1);
            }
            (Some((_, e)), SeqEvent::Gap { missed }) => {
                assert!(missed >= 1 && missed < SEQ_COUNT_MODULUS - 1);
                assert_eq!(extended, e + u64::from(missed) + 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        last = Some((count, extended));
    }
});
