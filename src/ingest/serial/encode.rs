//! The inverse of [`decoder`](super::decoder), for `gsinfer replay` and
//! tests: samples of one channel in, framed payloads out, encoded as space
//! packets with the configuration's mission database or as an MQTT
//! payload format.

use crate::config::Config;
use crate::ingest::ccsds;
use crate::ingest::framing::{self, Framing};
use crate::ingest::mission::{MissionDb, PacketLayout};

use super::config::SerialPayload;

/// Why samples of a channel cannot be encoded as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// No `[[serial.packet]]` of the configuration feeds the channel (with that APID).
    #[error("no [[serial.packet]]{} in the configuration feeds channel `{channel}`; add one, or pass --apid of one that does", apid.map(|a| format!(" with apid {a}")).unwrap_or_default())]
    NoPacket {
        /// The channel.
        channel: String,
        /// The APID asked for.
        apid: Option<u16>,
    },
    /// The payload format cannot be carried by the framing.
    #[error("f32le records can hold newline bytes; use --framing kiss, slip or cobs")]
    BinaryOnLines,
}

#[derive(Debug)]
enum Payload {
    Ccsds { layout: PacketLayout, seq: u16 },
    Json,
    Csv,
    F32Le,
}

/// Encodes samples of one channel into frames; see the module docs.
#[derive(Debug)]
pub struct SampleEncoder {
    framing: Framing,
    channel: String,
    payload: Payload,
    scratch: Vec<u8>,
}

impl SampleEncoder {
    /// An encoder for `channel` in `framing` and `payload`; space packets
    /// use the first `[[serial.packet]]` of `config` that feeds `channel`
    /// (and has `apid`, if given).
    ///
    /// # Errors
    /// [`EncodeError`] when no packet feeds the channel, or for f32le on lines.
    pub fn new(
        config: &Config,
        framing: Framing,
        payload: SerialPayload,
        apid: Option<u16>,
        channel: &str,
    ) -> Result<SampleEncoder, EncodeError> {
        let payload = match payload {
            SerialPayload::Ccsds => {
                let layout = config
                    .serial
                    .iter()
                    .flat_map(|s| s.packets.iter())
                    .filter(|p| apid.is_none_or(|a| a == p.apid))
                    .find_map(|p| {
                        let db = MissionDb::new(std::slice::from_ref(p));
                        db.for_channel(channel).cloned()
                    })
                    .ok_or_else(|| EncodeError::NoPacket {
                        channel: channel.to_string(),
                        apid,
                    })?;
                Payload::Ccsds { layout, seq: 0 }
            }
            SerialPayload::Json => Payload::Json,
            SerialPayload::Csv => Payload::Csv,
            SerialPayload::F32Le if framing == Framing::Line => {
                return Err(EncodeError::BinaryOnLines)
            }
            SerialPayload::F32Le => Payload::F32Le,
        };
        Ok(SampleEncoder {
            framing,
            channel: channel.to_string(),
            payload,
            scratch: Vec::new(),
        })
    }

    /// The APID of the packets, for space packets.
    pub fn apid(&self) -> Option<u16> {
        match &self.payload {
            Payload::Ccsds { layout, .. } => Some(layout.apid),
            _ => None,
        }
    }

    /// Appends the frame of one sample (`seq` is used by JSON; packets
    /// count their own sequence). Returns false, appending nothing, when
    /// `values` does not fit the channel's parameters.
    pub fn encode(&mut self, t_ns: i64, seq: u64, values: &[f32], out: &mut Vec<u8>) -> bool {
        self.scratch.clear();
        match &mut self.payload {
            Payload::Ccsds { layout, seq: count } => {
                let Some(data) = layout.encode(&self.channel, t_ns, values) else {
                    return false;
                };
                ccsds::encode(layout.apid, *count, &data, layout.crc, &mut self.scratch);
                *count = (*count + 1) % ccsds::SEQ_COUNT_MODULUS;
            }
            Payload::Json => {
                let v = serde_json::json!({"t": t_ns, "seq": seq, "v": values});
                self.scratch.extend_from_slice(v.to_string().as_bytes());
            }
            Payload::Csv => {
                let mut line = t_ns.to_string();
                for v in values {
                    line.push(',');
                    line.push_str(&v.to_string());
                }
                self.scratch.extend_from_slice(line.as_bytes());
            }
            Payload::F32Le => {
                self.scratch.extend_from_slice(&t_ns.to_le_bytes());
                for v in values {
                    self.scratch.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        framing::encode(self.framing, &self.scratch, out);
        true
    }
}
