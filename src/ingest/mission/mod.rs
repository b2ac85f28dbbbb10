//! The mission database: which APIDs a serial link carries and, for each,
//! where its parameters sit in the packet's user data field, how to turn
//! them into engineering values, and which channel and feature each feeds.
//!
//! A packet yields one sample per channel it feeds, with every feature of
//! that channel (so a channel is fed by exactly one APID). The sample's
//! time is the packet's time field when the APID has one, else the
//! receive time. Values are big-endian unless a parameter says otherwise
//! (CCSDS 133.0-B-2 §1.6: the most significant octet is sent first).
//!
//! ```toml
//! [[serial.packet]]
//! apid = 100
//! crc = true
//! time = { byte_offset = 0, type = "u64", unit = "ns" }
//! parameter = [
//!   { byte_offset = 8, type = "f32", count = 25, channel = "S-1", feature = 0 },
//! ]
//! ```

mod layout;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use layout::{MissionDb, MissionError, PacketLayout};

/// One APID and its parameters (`[[serial.packet]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketConfig {
    /// Application process identifier, 0–2046 (2047 marks idle packets).
    pub apid: u16,
    /// Whether the packets end in a packet error control, a CRC-16-CCITT
    /// over the whole packet; packets failing it are dropped and counted.
    #[serde(default)]
    pub crc: bool,
    /// Octets of secondary header at the start of the packet data field;
    /// byte offsets count from after it (the user data field).
    #[serde(default)]
    pub secondary_header_bytes: usize,
    /// The parameter holding the sample time; without one, samples are
    /// stamped with the time they were received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeFieldConfig>,
    /// The parameters, each feeding one or more features of a channel.
    #[serde(rename = "parameter")]
    pub parameters: Vec<ParameterConfig>,
}

/// One parameter, or `count` consecutive ones of the same type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterConfig {
    /// A name for the parameter (documentation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Byte offset of the (first) value in the user data field.
    pub byte_offset: usize,
    /// Type of the raw value.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Byte order of the raw value (`big`, the CCSDS order, by default).
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Consecutive values of this type, feeding consecutive features.
    #[serde(default = "default_count")]
    pub count: usize,
    /// Engineering value = raw × `scale` + `offset`.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// The channel fed, e.g. `S-1`.
    pub channel: String,
    /// Feature index of the (first) value within the channel's sample.
    #[serde(default)]
    pub feature: usize,
}

fn default_count() -> usize {
    1
}
fn default_scale() -> f64 {
    1.0
}

/// The packet's time field (`time = {...}`): ns since the Unix epoch =
/// `epoch_ns` + raw × `unit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeFieldConfig {
    /// Byte offset in the user data field.
    pub byte_offset: usize,
    /// Type of the raw value.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Byte order of the raw value.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Unit of the raw value: `ns` (default), `us`, `ms` or `s`.
    #[serde(default)]
    pub unit: TimeUnit,
    /// The time of raw value 0, in ns since the Unix epoch (0: the Unix epoch).
    #[serde(default)]
    pub epoch_ns: i64,
}

/// Raw parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum ParamType {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

/// Byte order of a raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// Most significant byte first (CCSDS).
    #[default]
    Big,
    /// Least significant byte first.
    Little,
}

/// Unit of a raw time value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Nanoseconds.
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl TimeUnit {
    /// Nanoseconds per unit.
    pub fn ns(self) -> i64 {
        match self {
            TimeUnit::Ns => 1,
            TimeUnit::Us => 1_000,
            TimeUnit::Ms => 1_000_000,
            TimeUnit::S => 1_000_000_000,
        }
    }
}

/// A raw value as read: integers exactly, floats as they are.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Int(i128),
    Float(f64),
}

impl ParamType {
    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            ParamType::U8 | ParamType::I8 => 1,
            ParamType::U16 | ParamType::I16 => 2,
            ParamType::U32 | ParamType::I32 | ParamType::F32 => 4,
            ParamType::U64 | ParamType::I64 | ParamType::F64 => 8,
        }
    }

    fn read(self, b: &[u8], order: ByteOrder) -> Raw {
        macro_rules! get {
            ($t:ty, $n:expr) => {{
                let a: [u8; $n] = b[..$n].try_into().expect("length checked");
                match order {
                    ByteOrder::Big => <$t>::from_be_bytes(a),
                    ByteOrder::Little => <$t>::from_le_bytes(a),
                }
            }};
        }
        match self {
            ParamType::U8 => Raw::Int(b[0].into()),
            ParamType::I8 => Raw::Int((b[0] as i8).into()),
            ParamType::U16 => Raw::Int(get!(u16, 2).into()),
            ParamType::I16 => Raw::Int(get!(i16, 2).into()),
            ParamType::U32 => Raw::Int(get!(u32, 4).into()),
            ParamType::I32 => Raw::Int(get!(i32, 4).into()),
            ParamType::U64 => Raw::Int(get!(u64, 8).into()),
            ParamType::I64 => Raw::Int(get!(i64, 8).into()),
            ParamType::F32 => Raw::Float(get!(f32, 4).into()),
            ParamType::F64 => Raw::Float(get!(f64, 8)),
        }
    }

    /// Writes `v` as this type (integers rounded and saturated).
    fn write(self, v: f64, order: ByteOrder, out: &mut [u8]) {
        macro_rules! put {
            ($x:expr) => {{
                let x = $x;
                let bytes = match order {
                    ByteOrder::Big => x.to_be_bytes(),
                    ByteOrder::Little => x.to_le_bytes(),
                };
                out[..bytes.len()].copy_from_slice(&bytes);
            }};
        }
        let r = v.round();
        match self {
            ParamType::U8 => put!(r as u8),
            ParamType::I8 => put!(r as i8),
            ParamType::U16 => put!(r as u16),
            ParamType::I16 => put!(r as i16),
            ParamType::U32 => put!(r as u32),
            ParamType::I32 => put!(r as i32),
            ParamType::U64 => put!(r as u64),
            ParamType::I64 => put!(r as i64),
            ParamType::F32 => put!(v as f32),
            ParamType::F64 => put!(v),
        }
    }
}

impl Raw {
    fn as_f64(self) -> f64 {
        match self {
            Raw::Int(i) => i as f64,
            Raw::Float(f) => f,
        }
    }
}

/// Checks a link's packet definitions against the pipeline's `features`;
/// `(key, message)` per problem, keys made by `key` from a path below the
/// link, e.g. `packet[0].parameter[1].feature`.
pub fn validate(
    packets: &[PacketConfig],
    features: usize,
    key: &dyn Fn(String) -> String,
    problems: &mut Vec<(String, String)>,
) {
    let mut bad = |k: String, m: String| problems.push((key(k), m));
    let mut apids = HashMap::new();
    // channel -> (apid, feature -> parameter key)
    let mut fed: BTreeMap<&str, (u16, BTreeMap<usize, String>)> = BTreeMap::new();
    for (i, p) in packets.iter().enumerate() {
        let pk = |f: &str| format!("packet[{i}]{f}");
        if p.apid >= super::ccsds::IDLE_APID {
            bad(
                pk(".apid"),
                format!(
                    "{} is not an APID for data: use 0 to 2046 (2047 marks idle packets)",
                    p.apid
                ),
            );
        }
        if let Some(j) = apids.insert(p.apid, i) {
            bad(pk(".apid"), format!("apid {} is already defined by packet[{j}]; give each APID one [[serial.packet]]", p.apid));
        }
        if p.parameters.is_empty() {
            bad(pk(".parameter"), "add at least one parameter, e.g. { byte_offset = 0, type = \"f32\", channel = \"A-1\" }".into());
        }
        for (j, q) in p.parameters.iter().enumerate() {
            let qk = |f: &str| format!("packet[{i}].parameter[{j}].{f}");
            if q.count == 0 {
                bad(qk("count"), "must be at least 1".into());
            }
            if !q.scale.is_finite() || q.scale == 0.0 {
                bad(
                    qk("scale"),
                    "must be a finite, non-zero number (1.0 keeps the raw value)".into(),
                );
            }
            if !q.offset.is_finite() {
                bad(qk("offset"), "must be a finite number".into());
            }
            if q.channel.trim().is_empty() {
                bad(
                    qk("channel"),
                    "must name the channel the parameter feeds, e.g. \"A-1\"".into(),
                );
                continue;
            }
            if q.feature + q.count > features {
                bad(qk("feature"), format!("feature {} + count {} goes past the pipeline's {features} features; use feature indices 0 to {}", q.feature, q.count, features.saturating_sub(1)));
                continue;
            }
            let entry = fed
                .entry(&q.channel)
                .or_insert_with(|| (p.apid, BTreeMap::new()));
            if entry.0 != p.apid {
                bad(qk("channel"), format!("channel `{}` is already fed by apid {}; a channel's features all come from one APID", q.channel, entry.0));
                continue;
            }
            for f in q.feature..q.feature + q.count {
                if let Some(other) = entry.1.insert(f, format!("packet[{i}].parameter[{j}]")) {
                    bad(qk("feature"), format!("feature {f} of channel `{}` is also fed by {other}; feed each feature once", q.channel));
                }
            }
        }
        if let Some(t) = &p.time {
            if matches!(
                t.ty,
                ParamType::U8 | ParamType::I8 | ParamType::U16 | ParamType::I16
            ) {
                bad(
                    pk(".time.type"),
                    "is too narrow for a time stamp; use u32, u64, i64, f64 or the like".into(),
                );
            }
        }
    }
    for (channel, (_, features_fed)) in &fed {
        let missing: Vec<usize> = (0..features)
            .filter(|f| !features_fed.contains_key(f))
            .collect();
        if !missing.is_empty() {
            bad(String::from("packet"), format!("channel `{channel}` has no parameter for features {missing:?}; every feature 0 to {} needs one", features - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(at: usize, ty: ParamType, channel: &str, feature: usize) -> ParameterConfig {
        ParameterConfig {
            name: None,
            byte_offset: at,
            ty,
            byte_order: ByteOrder::Big,
            count: 1,
            scale: 1.0,
            offset: 0.0,
            channel: channel.into(),
            feature,
        }
    }

    fn packet(apid: u16, parameters: Vec<ParameterConfig>) -> PacketConfig {
        PacketConfig {
            apid,
            crc: false,
            secondary_header_bytes: 0,
            time: None,
            parameters,
        }
    }

    #[test]
    fn validation_names_each_problem() {
        let packets = vec![
            packet(
                2047,
                vec![
                    param(0, ParamType::U8, "a", 0),
                    param(1, ParamType::U8, "a", 0),
                ],
            ),
            packet(
                5,
                vec![
                    param(0, ParamType::U8, "a", 1),
                    param(0, ParamType::U8, "b", 3),
                ],
            ),
            packet(5, vec![]),
        ];
        let mut problems = Vec::new();
        validate(&packets, 3, &|k| format!("serial[0].{k}"), &mut problems);
        let text = format!("{problems:?}");
        for needle in [
            "serial[0].packet[0].apid",
            "feature 0 of channel `a` is also fed by packet[0].parameter[0]",
            "channel `a` is already fed by apid 2047",
            "serial[0].packet[1].parameter[1].feature",
            "apid 5 is already defined by packet[1]",
            "serial[0].packet[2].parameter",
            "channel `a` has no parameter for features [1, 2]",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }
}
