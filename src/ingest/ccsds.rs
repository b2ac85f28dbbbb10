//! CCSDS space packets (CCSDS 133.0-B-2, "Space Packet Protocol"), read
//! and written through the `spacepackets` crate: the primary header
//! (§4.1.3), the packet length checked against the frame that carried the
//! packet, the optional packet error control (a CRC-16-CCITT over the
//! whole packet in its last two octets, as PUS and `spacepackets` use it:
//! polynomial `0x1021`, initial value `0xFFFF`, the `CRC_16_IBM_3740`
//! catalogue entry), and per-APID sequence-count tracking (§4.1.3.4.3: a
//! 14-bit count per APID, so gaps and repeats show lost and doubled
//! packets).

use arbitrary_int::{u11, u14};
use spacepackets::{
    CcsdsPacket, CcsdsPacketCreatorOwned, CcsdsPacketReadError, CcsdsPacketReader, ChecksumType,
    PacketType, SpHeader,
};

/// Octets of the primary header (§4.1.3.1).
pub const PRIMARY_HEADER_LEN: usize = 6;
/// Octets of the packet error control, when present.
pub const CRC_LEN: usize = 2;
/// The APID of idle packets (§4.1.3.3.4.4): all ones, carries no data.
pub const IDLE_APID: u16 = 0x7FF;
/// The sequence count's modulus: it is 14 bits wide (§4.1.3.4.3).
pub const SEQ_COUNT_MODULUS: u16 = 1 << 14;
/// Sequence flags of an unsegmented packet (§4.1.3.4.2.2: `11`).
pub const UNSEGMENTED: u8 = 0b11;

/// Why a frame is not a usable space packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer octets than a primary header and one data octet.
    #[error(
        "frame of {len} bytes is shorter than a space packet (7 bytes at least); check the framing"
    )]
    Short {
        /// Frame length.
        len: usize,
    },
    /// The version field is not `000` (CCSDS version 1).
    #[error("packet version number {version} is not 0 (CCSDS version 1); the link carries something else, check the framing and payload")]
    Version {
        /// The version field.
        version: u8,
    },
    /// The packet data length field disagrees with the frame.
    #[error("apid {apid}: the packet length field says {packet} bytes but the frame holds {frame}; the frame was cut short or padded on the link")]
    Length {
        /// The packet's APID.
        apid: u16,
        /// Length from the header.
        packet: usize,
        /// Length of the frame.
        frame: usize,
    },
    /// The packet error control does not match.
    #[error("apid {apid}: packet error control (CRC-16-CCITT) does not match; the packet was corrupted on the link (or set crc = false for this apid)")]
    Crc {
        /// The packet's APID.
        apid: u16,
    },
    /// The packet is a segment of a larger one.
    #[error("apid {apid}: sequence flags {flags:#04b} mark a segment; only unsegmented packets (0b11) are supported")]
    Segmented {
        /// The packet's APID.
        apid: u16,
        /// The sequence flags.
        flags: u8,
    },
}

impl PacketError {
    /// Stable snake_case name for metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            PacketError::Short { .. } => "short",
            PacketError::Version { .. } => "version",
            PacketError::Length { .. } => "length",
            PacketError::Crc { .. } => "crc",
            PacketError::Segmented { .. } => "segmented",
        }
    }
}

/// A space packet whose header and length were checked; the CRC is
/// checked by [`SpacePacket::user_data`], once the APID says whether the
/// packet carries one.
#[derive(Debug, Clone, Copy)]
pub struct SpacePacket<'a> {
    frame: &'a [u8],
    /// Application process identifier, 0–2047.
    pub apid: u16,
    /// Packet sequence count, 0–16383.
    pub seq_count: u16,
    /// Telecommand (`true`) or telemetry packet.
    pub telecommand: bool,
    /// Whether the secondary header flag is set.
    pub secondary_header: bool,
}

/// Checks the primary header of `frame` and that the packet fills the
/// frame exactly.
///
/// # Errors
/// [`PacketError::Short`], [`PacketError::Version`],
/// [`PacketError::Length`] or [`PacketError::Segmented`].
pub fn parse(frame: &[u8]) -> Result<SpacePacket<'_>, PacketError> {
    if frame.len() <= PRIMARY_HEADER_LEN {
        return Err(PacketError::Short { len: frame.len() });
    }
    let (header, _) =
        SpHeader::from_be_bytes(frame).map_err(|_| PacketError::Short { len: frame.len() })?;
    let version = header.ccsds_version().value();
    if version != 0 {
        return Err(PacketError::Version { version });
    }
    let apid = header.apid().value();
    if header.packet_len() != frame.len() {
        return Err(PacketError::Length {
            apid,
            packet: header.packet_len(),
            frame: frame.len(),
        });
    }
    let flags = header.sequence_flags() as u8;
    if flags != UNSEGMENTED {
        return Err(PacketError::Segmented { apid, flags });
    }
    Ok(SpacePacket {
        frame,
        apid,
        seq_count: header.seq_count().value(),
        telecommand: header.is_tc(),
        secondary_header: header.sec_header_flag(),
    })
}

impl<'a> SpacePacket<'a> {
    /// The packet data field without the packet error control; with `crc`,
    /// the last two octets are checked as CRC-16-CCITT first.
    ///
    /// # Errors
    /// [`PacketError::Crc`] when the check fails or the data field is too
    /// short to hold the CRC.
    pub fn user_data(&self, crc: bool) -> Result<&'a [u8], PacketError> {
        let apid = self.apid;
        if crc && self.frame.len() < PRIMARY_HEADER_LEN + CRC_LEN {
            return Err(PacketError::Crc { apid });
        }
        let checksum = crc.then_some(ChecksumType::WithCrc16);
        match CcsdsPacketReader::new(self.frame, checksum) {
            Ok(reader) => Ok(reader.user_data()),
            Err(CcsdsPacketReadError::CrcError) => Err(PacketError::Crc { apid }),
            Err(CcsdsPacketReadError::ByteConversion(_)) => Err(PacketError::Short {
                len: self.frame.len(),
            }),
        }
    }

    /// The whole packet.
    pub fn bytes(&self) -> &'a [u8] {
        self.frame
    }
}

/// Appends an unsegmented telemetry packet of `apid` and `seq_count`
/// (taken modulo 2^14) carrying `user_data`, with packet error control if
/// `crc`.
///
/// # Panics
/// When `apid` is over 2047, or `user_data` is empty or over 65 534 bytes
/// (the packet data field holds 1 to 65 536 octets); callers size the
/// data from the mission database.
pub fn encode(apid: u16, seq_count: u16, user_data: &[u8], crc: bool, out: &mut Vec<u8>) {
    assert!(apid <= IDLE_APID, "an APID has 11 bits");
    assert!(
        !user_data.is_empty() && user_data.len() <= usize::from(u16::MAX) - CRC_LEN,
        "a packet carries 1 to 65534 bytes of user data"
    );
    let header =
        SpHeader::new_for_unseg_tm(u11::new(apid), u14::new(seq_count % SEQ_COUNT_MODULUS), 0);
    let checksum = crc.then_some(ChecksumType::WithCrc16);
    let packet = CcsdsPacketCreatorOwned::new(header, PacketType::Tm, user_data, checksum)
        .expect("user data length checked above");
    out.extend_from_slice(&packet.to_vec());
}

/// What a packet's sequence count says about the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first packet of the APID seen.
    First,
    /// The count follows the previous one.
    InOrder,
    /// `missed` counts were skipped (lost packets, or a reset on board).
    Gap {
        /// Packets missing between the previous count and this one.
        missed: u16,
    },
    /// The same count as the previous packet: a repeated packet.
    Repeat,
}

/// Per-APID sequence-count tracking. It also extends the 14-bit count to
/// 64 bits (counting wraps), so samples carry a sequence number that only
/// grows; a gap that looks backwards is taken as a wrap.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    last: Option<u16>,
    wraps: u64,
}

impl SequenceTracker {
    /// Records `count`; returns what it means and the extended count.
    pub fn observe(&mut self, count: u16) -> (SeqEvent, u64) {
        let count = count % SEQ_COUNT_MODULUS;
        let event = match self.last {
            None => SeqEvent::First,
            Some(last) if count == last => SeqEvent::Repeat,
            Some(last) => {
                if count < last {
                    self.wraps += 1;
                }
                let step = (count + SEQ_COUNT_MODULUS - last) % SEQ_COUNT_MODULUS;
                if step == 1 {
                    SeqEvent::InOrder
                } else {
                    SeqEvent::Gap { missed: step - 1 }
                }
            }
        };
        self.last = Some(count);
        (
            event,
            self.wraps * u64::from(SEQ_COUNT_MODULUS) + u64::from(count),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_crc_round_trip_through_the_crate() {
        let mut wire = Vec::new();
        encode(0x123, 16385, &[1, 2, 3], true, &mut wire);
        // Version 0, TM, no secondary header, APID 0x123; unsegmented, count 1; length 3 + 2 - 1.
        assert_eq!(&wire[..6], &[0x01, 0x23, 0xC0, 0x01, 0x00, 0x04]);
        let p = parse(&wire).unwrap();
        assert_eq!((p.apid, p.seq_count, p.telecommand), (0x123, 1, false));
        assert_eq!(p.user_data(true).unwrap(), &[1, 2, 3]);
        assert_eq!(p.user_data(false).unwrap().len(), 5);
    }

    #[test]
    fn crc_matches_the_ccitt_false_check_value() {
        // The CRC-16/IBM-3740 catalogue check value: "123456789" -> 0x29B1.
        let crc = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);
        assert_eq!(crc.checksum(b"123456789"), 0x29B1);
        let mut wire = Vec::new();
        encode(7, 0, b"abc", true, &mut wire);
        let n = wire.len();
        assert_eq!(
            u16::from_be_bytes([wire[n - 2], wire[n - 1]]),
            crc.checksum(&wire[..n - 2])
        );
    }

    #[test]
    fn bad_packets_say_what_is_wrong() {
        let mut wire = Vec::new();
        encode(5, 0, &[9; 8], true, &mut wire);
        assert!(matches!(
            parse(&wire[..4]),
            Err(PacketError::Short { len: 4 })
        ));
        assert!(matches!(
            parse(&wire[..10]),
            Err(PacketError::Length {
                apid: 5,
                packet: 16,
                frame: 10
            })
        ));
        let mut corrupt = wire.clone();
        corrupt[8] ^= 0x40;
        assert_eq!(
            parse(&corrupt).unwrap().user_data(true),
            Err(PacketError::Crc { apid: 5 })
        );
        let mut v2 = wire.clone();
        v2[0] |= 0x20;
        assert!(matches!(
            parse(&v2),
            Err(PacketError::Version { version: 1 })
        ));
        let mut segment = wire.clone();
        segment[2] &= 0x3F;
        assert!(matches!(
            parse(&segment),
            Err(PacketError::Segmented { apid: 5, flags: 0 })
        ));
        let e = PacketError::Crc { apid: 5 }.to_string();
        assert!(
            e.starts_with("apid 5: ") && e.contains("crc = false"),
            "{e}"
        );
    }

    #[test]
    fn sequence_gaps_repeats_and_wraps() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.observe(16382), (SeqEvent::First, 16382));
        assert_eq!(t.observe(16383), (SeqEvent::InOrder, 16383));
        assert_eq!(t.observe(0), (SeqEvent::InOrder, 16384));
        assert_eq!(t.observe(0), (SeqEvent::Repeat, 16384));
        assert_eq!(t.observe(3), (SeqEvent::Gap { missed: 2 }, 16387));
        // Backwards: taken as a wrap, the extended count still grows.
        assert_eq!(t.observe(1), (SeqEvent::Gap { missed: 16381 }, 32769));
    }
}
