//! Configuration of one serial link (`[[serial]]`) and its validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::ingest::decode::PayloadFormat;
use crate::ingest::framing::Framing;
use crate::ingest::mission::{self, PacketConfig};

/// Largest accepted `max_frame_bytes`: a CCSDS packet is at most 65 542 bytes.
pub const MAX_FRAME_LIMIT: usize = 1 << 20;

/// One serial link (`[[serial]]`): the port settings, the framing, the
/// payload and, for space packets, the mission database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Name in logs, metrics labels (`source`) and `/api/status`; default:
    /// the device path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Device path, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link.
    pub device: PathBuf,
    /// Line speed in bit/s.
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    /// Data bits per character, 5 to 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `none`, `odd` or `even`.
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control: `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// How frames are delimited: `kiss`, `slip`, `cobs` or `line`.
    pub framing: Framing,
    /// What a frame holds: `ccsds` (a space packet, decoded with `packet`),
    /// or one of the MQTT payload formats `json`, `csv`, `f32le` (for the
    /// single channel `channel`).
    #[serde(default)]
    pub payload: SerialPayload,
    /// With KISS framing, accept data frames of this TNC port only (0–15);
    /// default: any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kiss_port: Option<u8>,
    /// Largest frame accepted, in bytes (after unescaping); longer ones are
    /// dropped and counted.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// The pipeline (by model name) the link feeds; may be left out when
    /// there is one pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The channel of a `json`, `csv` or `f32le` payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// First delay before reopening a lost or missing device, ms; doubles
    /// up to `reopen_max_ms`.
    #[serde(default = "default_reopen_min_ms")]
    pub reopen_min_ms: u64,
    /// Longest delay between attempts to reopen the device, ms.
    #[serde(default = "default_reopen_max_ms")]
    pub reopen_max_ms: u64,
    /// The mission database: one entry per APID (`[[serial.packet]]`).
    #[serde(default, rename = "packet", skip_serializing_if = "Vec::is_empty")]
    pub packets: Vec<PacketConfig>,
}

fn default_baud_rate() -> u32 {
    115_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_max_frame_bytes() -> usize {
    4096
}
fn default_reopen_min_ms() -> u64 {
    100
}
fn default_reopen_max_ms() -> u64 {
    10_000
}

/// Parity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// What the frames of a serial link hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialPayload {
    /// A CCSDS space packet per frame, decoded with the mission database.
    #[default]
    Ccsds,
    /// One JSON sample or array of samples per frame, as on MQTT.
    Json,
    /// CSV lines per frame, as on MQTT.
    Csv,
    /// Binary `f32le` records per frame, as on MQTT.
    F32Le,
}

impl SerialPayload {
    /// The MQTT payload format, for the formats shared with MQTT.
    pub fn mqtt_format(self) -> Option<PayloadFormat> {
        match self {
            SerialPayload::Ccsds => None,
            SerialPayload::Json => Some(PayloadFormat::Json),
            SerialPayload::Csv => Some(PayloadFormat::Csv),
            SerialPayload::F32Le => Some(PayloadFormat::F32Le),
        }
    }
}

impl std::str::FromStr for SerialPayload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ccsds" => Ok(SerialPayload::Ccsds),
            "json" => Ok(SerialPayload::Json),
            "csv" => Ok(SerialPayload::Csv),
            "f32le" => Ok(SerialPayload::F32Le),
            _ => Err(format!(
                "unknown payload `{s}`; use ccsds, json, csv or f32le"
            )),
        }
    }
}

impl SerialConfig {
    /// A link on `device` at `baud_rate` with `framing` and `payload`, 8N1,
    /// no flow control, no mission database (for `gsinfer replay`).
    pub fn new(device: PathBuf, baud_rate: u32, framing: Framing, payload: SerialPayload) -> Self {
        SerialConfig {
            name: None,
            device,
            baud_rate,
            data_bits: default_data_bits(),
            parity: Parity::None,
            stop_bits: default_stop_bits(),
            flow_control: FlowControl::None,
            framing,
            payload,
            kiss_port: None,
            max_frame_bytes: default_max_frame_bytes(),
            model: None,
            channel: None,
            reopen_min_ms: default_reopen_min_ms(),
            reopen_max_ms: default_reopen_max_ms(),
            packets: Vec::new(),
        }
    }

    /// The link's name: `name`, else the device path.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.device.display().to_string())
    }

    /// Index of the pipeline this link feeds, once validated.
    pub fn pipeline_index(&self, pipelines: &[PipelineConfig]) -> Option<usize> {
        match &self.model {
            Some(m) => pipelines.iter().position(|p| &p.model == m),
            None if pipelines.len() == 1 => Some(0),
            None => None,
        }
    }
}

/// Checks every `[[serial]]` section; `(key, message)` per problem.
pub fn validate(links: &[SerialConfig], pipelines: &[PipelineConfig]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut labels = std::collections::HashMap::new();
    for (i, s) in links.iter().enumerate() {
        let k = |f: &str| format!("serial[{i}].{f}");
        let mut bad = |key: String, m: &str| problems.push((key, m.to_string()));
        if s.device.as_os_str().is_empty() {
            bad(
                k("device"),
                "must name the serial device, e.g. \"/dev/ttyUSB0\"",
            );
        }
        if let Some(j) = labels.insert(s.label(), i) {
            bad(k("name"), &format!("`{}` is already the name of serial[{j}]; give each link its own name or device", s.label()));
        }
        if s.baud_rate == 0 {
            bad(k("baud_rate"), "must be a line speed in bit/s, e.g. 115200");
        }
        if !(5..=8).contains(&s.data_bits) {
            bad(k("data_bits"), "must be 5, 6, 7 or 8");
        }
        if !(1..=2).contains(&s.stop_bits) {
            bad(k("stop_bits"), "must be 1 or 2");
        }
        if s.kiss_port.is_some_and(|p| p > 15) {
            bad(k("kiss_port"), "must be a KISS port, 0 to 15");
        }
        if s.kiss_port.is_some() && s.framing != Framing::Kiss {
            bad(
                k("kiss_port"),
                "applies to framing = \"kiss\" only; remove it",
            );
        }
        if s.max_frame_bytes < 7 || s.max_frame_bytes > MAX_FRAME_LIMIT {
            bad(
                k("max_frame_bytes"),
                "must be between 7 (the smallest space packet) and 1048576",
            );
        }
        if s.reopen_min_ms == 0 || s.reopen_min_ms > s.reopen_max_ms {
            bad(
                k("reopen_min_ms"),
                "must be at least 1 and at most reopen_max_ms",
            );
        }
        let pipeline = s.pipeline_index(pipelines);
        match (&s.model, pipeline) {
            (Some(m), None) => bad(k("model"), &format!("no [[pipeline]] serves model `{m}`; name one of the pipelines' models")),
            (None, None) if !pipelines.is_empty() => bad(k("model"), "there are several pipelines; name the one this link feeds, e.g. model = \"smap_lstm\""),
            _ => {}
        }
        let features = pipeline.map(|ix| pipelines[ix].features);
        match s.payload {
            SerialPayload::Ccsds => {
                if s.packets.is_empty() {
                    bad(k("packet"), "a ccsds link needs its mission database: add [[serial.packet]] sections with apid and parameters");
                }
                if s.channel.is_some() {
                    bad(k("channel"), "with payload = \"ccsds\" the channels come from the packets' parameters; remove it");
                }
                if let Some(features) = features {
                    mission::validate(
                        &s.packets,
                        features,
                        &|f| format!("serial[{i}].{f}"),
                        &mut problems,
                    );
                }
                for (j, p) in s.packets.iter().enumerate() {
                    let db = mission::MissionDb::new(std::slice::from_ref(p));
                    let need = crate::ingest::ccsds::PRIMARY_HEADER_LEN
                        + db.packets()[0].data_len()
                        + if p.crc {
                            crate::ingest::ccsds::CRC_LEN
                        } else {
                            0
                        };
                    if need > s.max_frame_bytes {
                        problems.push((k("max_frame_bytes"), format!("packets of apid {} (packet[{j}]) are {need} bytes; raise max_frame_bytes to at least that", p.apid)));
                    }
                }
            }
            other => {
                let mut bad = |key: String, m: &str| problems.push((key, m.to_string()));
                if s.channel.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    bad(k("channel"), "a json, csv or f32le link carries one channel: name it, e.g. channel = \"A-1\"");
                }
                if !s.packets.is_empty() {
                    bad(
                        k("packet"),
                        "packets describe space packets; remove them or set payload = \"ccsds\"",
                    );
                }
                if other == SerialPayload::F32Le && s.framing == Framing::Line {
                    bad(k("payload"), "binary f32le records can hold newline bytes; use framing kiss, slip or cobs");
                }
            }
        }
    }
    problems
}
