//! The compiled mission database: per APID, where each channel's features
//! sit in the user data field; packets to samples and back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{ByteOrder, PacketConfig, ParamType, Raw, TimeFieldConfig};
use crate::ingest::decode::RawSample;

/// Why a packet of a known APID yields no sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissionError {
    /// The user data field is shorter than the parameters need.
    #[error("apid {apid}: user data is {have} bytes but the mission database reads {need}; check the packet definition (byte offsets, types, secondary_header_bytes)")]
    Short {
        /// The APID.
        apid: u16,
        /// Bytes the parameters need.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// The time field is NaN or outside the years 1677–2262 (i64 ns).
    #[error("apid {apid}: time field is out of range for ns since the Unix epoch; check its type, unit and epoch_ns")]
    Time {
        /// The APID.
        apid: u16,
    },
}

#[derive(Debug, Clone)]
struct Field {
    at: usize,
    ty: ParamType,
    order: ByteOrder,
    scale: f64,
    offset: f64,
}

#[derive(Debug, Clone)]
struct ChannelLayout {
    name: Arc<str>,
    /// One per feature, in feature order.
    fields: Vec<Field>,
}

/// One APID of a compiled [`MissionDb`].
#[derive(Debug, Clone)]
pub struct PacketLayout {
    /// The APID.
    pub apid: u16,
    /// Whether packets carry a packet error control.
    pub crc: bool,
    skip: usize,
    need: usize,
    time: Option<TimeFieldConfig>,
    channels: Vec<ChannelLayout>,
}

/// The mission database of one serial link, compiled for lookups by APID.
#[derive(Debug, Clone, Default)]
pub struct MissionDb {
    by_apid: HashMap<u16, usize>,
    packets: Vec<PacketLayout>,
}

impl MissionDb {
    /// Compiles validated packet definitions (see [`super::validate`]).
    pub fn new(packets: &[PacketConfig]) -> MissionDb {
        let mut db = MissionDb::default();
        for p in packets {
            let mut channels: BTreeMap<&str, BTreeMap<usize, Field>> = BTreeMap::new();
            let mut need = p.time.as_ref().map_or(0, |t| t.byte_offset + t.ty.size());
            for q in &p.parameters {
                for k in 0..q.count {
                    let at = q.byte_offset + k * q.ty.size();
                    need = need.max(at + q.ty.size());
                    channels.entry(&q.channel).or_default().insert(
                        q.feature + k,
                        Field {
                            at,
                            ty: q.ty,
                            order: q.byte_order,
                            scale: q.scale,
                            offset: q.offset,
                        },
                    );
                }
            }
            let layout = PacketLayout {
                apid: p.apid,
                crc: p.crc,
                skip: p.secondary_header_bytes,
                need,
                time: p.time.clone(),
                channels: channels
                    .into_iter()
                    .map(|(name, fields)| ChannelLayout {
                        name: Arc::from(name),
                        fields: fields.into_values().collect(),
                    })
                    .collect(),
            };
            db.by_apid.entry(p.apid).or_insert(db.packets.len());
            db.packets.push(layout);
        }
        db
    }

    /// The index of `apid`'s layout, if the database knows it.
    pub fn index(&self, apid: u16) -> Option<usize> {
        self.by_apid.get(&apid).copied()
    }

    /// The layouts, in configuration order.
    pub fn packets(&self) -> &[PacketLayout] {
        &self.packets
    }

    /// The layout of the APID feeding `channel`, if any.
    pub fn for_channel(&self, channel: &str) -> Option<&PacketLayout> {
        self.packets
            .iter()
            .find(|p| p.channels.iter().any(|c| &*c.name == channel))
    }
}

impl PacketLayout {
    /// Bytes of packet data field the layout reads (secondary header included).
    pub fn data_len(&self) -> usize {
        self.skip + self.need
    }

    /// Appends one sample per channel from `user_data` (the packet data
    /// field without the CRC) to `out`, stamped with the time field or
    /// `received_ns`, and with sequence number `seq`.
    ///
    /// # Errors
    /// [`MissionError`] when the data is too short or the time is out of range.
    pub fn samples(
        &self,
        user_data: &[u8],
        received_ns: i64,
        seq: Option<u64>,
        out: &mut Vec<(Arc<str>, RawSample)>,
    ) -> Result<(), MissionError> {
        let apid = self.apid;
        let data = user_data.get(self.skip..).unwrap_or(&[]);
        if data.len() < self.need {
            return Err(MissionError::Short {
                apid,
                need: self.data_len(),
                have: user_data.len(),
            });
        }
        let t_ns = match &self.time {
            None => received_ns,
            Some(t) => time_ns(t, t.ty.read(&data[t.byte_offset..], t.byte_order))
                .ok_or(MissionError::Time { apid })?,
        };
        for c in &self.channels {
            let values = c
                .fields
                .iter()
                .map(|f| (f.ty.read(&data[f.at..], f.order).as_f64() * f.scale + f.offset) as f32)
                .collect();
            out.push((
                Arc::clone(&c.name),
                RawSample {
                    t_ns: Some(t_ns),
                    seq,
                    values,
                },
            ));
        }
        Ok(())
    }

    /// The user data field (secondary header zeroed) that carries `values`
    /// of `channel` at time `t_ns`: the inverse of [`PacketLayout::samples`]
    /// (integers rounded and saturated); other channels' fields are zero.
    /// `None` when the layout does not feed `channel` or `values` has the
    /// wrong length.
    pub fn encode(&self, channel: &str, t_ns: i64, values: &[f32]) -> Option<Vec<u8>> {
        let c = self.channels.iter().find(|c| &*c.name == channel)?;
        if c.fields.len() != values.len() {
            return None;
        }
        let mut out = vec![0u8; self.data_len()];
        let data = &mut out[self.skip..];
        if let Some(t) = &self.time {
            let raw = (t_ns as i128 - i128::from(t.epoch_ns)) as f64 / t.unit.ns() as f64;
            t.ty.write(raw, t.byte_order, &mut data[t.byte_offset..]);
        }
        for (f, v) in c.fields.iter().zip(values) {
            let raw = (f64::from(*v) - f.offset) / f.scale;
            f.ty.write(raw, f.order, &mut data[f.at..]);
        }
        Some(out)
    }
}

fn time_ns(t: &TimeFieldConfig, raw: Raw) -> Option<i64> {
    let unit = t.unit.ns();
    let ns = match raw {
        Raw::Int(i) => i.checked_mul(i128::from(unit))? + i128::from(t.epoch_ns),
        Raw::Float(f) => {
            let ns = f * unit as f64 + t.epoch_ns as f64;
            if !ns.is_finite() || ns.abs() >= 9.2e18 {
                return None;
            }
            ns as i128
        }
    };
    i64::try_from(ns).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::mission::*;

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
    fn every_type_and_byte_order_with_scale_and_offset() {
        let mut p = packet(
            1,
            vec![
                param(0, ParamType::U8, "a", 0),
                param(1, ParamType::I16, "a", 1),
                ParameterConfig {
                    byte_order: ByteOrder::Little,
                    scale: 0.5,
                    offset: -1.0,
                    ..param(3, ParamType::U32, "a", 2)
                },
                param(7, ParamType::I64, "b", 0),
                param(15, ParamType::F64, "b", 1),
                ParameterConfig {
                    count: 2,
                    ..param(23, ParamType::F32, "b", 2)
                },
            ],
        );
        p.secondary_header_bytes = 2;
        p.time = Some(TimeFieldConfig {
            byte_offset: 31,
            ty: ParamType::U32,
            byte_order: ByteOrder::Big,
            unit: TimeUnit::S,
            epoch_ns: 1_000,
        });
        let db = MissionDb::new(&[p]);
        let layout = &db.packets()[db.index(1).unwrap()];
        assert_eq!(layout.data_len(), 2 + 35);
        let mut data = vec![0xEE, 0xEE, 200];
        data.extend_from_slice(&(-2i16).to_be_bytes());
        data.extend_from_slice(&7u32.to_le_bytes());
        data.extend_from_slice(&(-3i64).to_be_bytes());
        data.extend_from_slice(&2.5f64.to_be_bytes());
        data.extend_from_slice(&1.25f32.to_be_bytes());
        data.extend_from_slice(&(-4.0f32).to_be_bytes());
        data.extend_from_slice(&60u32.to_be_bytes());
        let mut out = Vec::new();
        layout.samples(&data, 5, Some(9), &mut out).unwrap();
        let got: Vec<(&str, Vec<f32>, Option<i64>)> = out
            .iter()
            .map(|(c, s)| (&**c, s.values.clone(), s.t_ns))
            .collect();
        let t = Some(60_000_001_000);
        assert_eq!(
            got,
            vec![
                ("a", vec![200.0, -2.0, 2.5], t),
                ("b", vec![-3.0, 2.5, 1.25, -4.0], t)
            ]
        );
        // The inverse puts the same values back.
        let enc = layout
            .encode("b", 60_000_001_000, &[-3.0, 2.5, 1.25, -4.0])
            .unwrap();
        assert_eq!(&enc[9..35], &data[9..35]);
        assert_eq!(&enc[33..], &data[33..]);
        assert!(layout.encode("b", 0, &[1.0]).is_none());
        let short = layout.samples(&data[..20], 5, None, &mut out).unwrap_err();
        assert_eq!(
            short,
            MissionError::Short {
                apid: 1,
                need: 37,
                have: 20
            }
        );
    }

    #[test]
    fn receive_time_without_a_time_field() {
        let db = MissionDb::new(&[packet(3, vec![param(0, ParamType::U8, "a", 0)])]);
        let mut out = Vec::new();
        db.packets()[0].samples(&[4], 77, None, &mut out).unwrap();
        assert_eq!(out[0].1.t_ns, Some(77));
        assert!(db.index(4).is_none());
        assert_eq!(db.for_channel("a").unwrap().apid, 3);
    }

    #[test]
    fn time_out_of_range_is_an_error() {
        let mut p = packet(1, vec![param(0, ParamType::U8, "a", 0)]);
        p.time = Some(TimeFieldConfig {
            byte_offset: 1,
            ty: ParamType::U64,
            byte_order: ByteOrder::Big,
            unit: TimeUnit::S,
            epoch_ns: 0,
        });
        let db = MissionDb::new(&[p]);
        let mut data = vec![1];
        data.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = db.packets()[0].samples(&data, 0, None, &mut Vec::new());
        assert_eq!(err, Err(MissionError::Time { apid: 1 }));
    }
}
