//! The mission database (`ingest::mission`): packet definitions and user
//! data fields, both built from the fuzzer's bytes (structure-aware, with
//! `arbitrary`). Definitions that `mission::validate` accepts are compiled
//! and each user data field decoded. Checks: a field is too short exactly
//! when it is shorter than `data_len`; a packet yields one sample per
//! channel it feeds, each with every feature; without a time field the
//! sample carries the receive time; and where the encoding is exact
//! (8- and 16-bit integers with power-of-two scales, f32 with scale 1,
//! integer times within 2^53 ns of the epoch), encoding the sample and
//! decoding it again gives it back unchanged.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use gsinfer::ingest::mission::{
    self, ByteOrder, MissionDb, MissionError, PacketConfig, ParamType, ParameterConfig,
    TimeFieldConfig, TimeUnit,
};
use libfuzzer_sys::fuzz_target;

const TYPES: [ParamType; 10] = [
    ParamType::U8,
    ParamType::I8,
    ParamType::U16,
    ParamType::I16,
    ParamType::U32,
    ParamType::I32,
    ParamType::U64,
    ParamType::I64,
    ParamType::F32,
    ParamType::F64,
];
const UNITS: [TimeUnit; 4] = [TimeUnit::Ns, TimeUnit::Us, TimeUnit::Ms, TimeUnit::S];
const SCALES: [f64; 6] = [1.0, 0.5, 0.25, 2.0, -1.0, 0.1];
const OFFSETS: [f64; 4] = [0.0, 1.0, -128.0, 273.15];
const CHANNELS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Arbitrary)]
struct Input {
    features: u8,
    packets: Vec<Packet>,
    fields: Vec<(u8, Vec<u8>)>,
    received_ns: i64,
}

#[derive(Debug, Arbitrary)]
struct Packet {
    apid: u16,
    crc: bool,
    secondary_header_bytes: u8,
    time: Option<(u8, u8, bool, u8, i64)>,
    parameters: Vec<(u8, u8, bool, u8, u8, u8, u8, u8)>,
}

fn order(little: bool) -> ByteOrder {
    if little {
        ByteOrder::Little
    } else {
        ByteOrder::Big
    }
}

fn packet(p: &Packet) -> PacketConfig {
    PacketConfig {
        apid: p.apid % 2100,
        crc: p.crc,
        secondary_header_bytes: usize::from(p.secondary_header_bytes % 8),
        time: p
            .time
            .map(|(at, ty, little, unit, epoch_ns)| TimeFieldConfig {
                byte_offset: usize::from(at % 32),
                ty: TYPES[usize::from(ty) % TYPES.len()],
                byte_order: order(little),
                unit: UNITS[usize::from(unit) % UNITS.len()],
                epoch_ns,
            }),
        parameters: p
            .parameters
            .iter()
            .take(6)
            .map(
                |&(at, ty, little, count, scale, offset, channel, feature)| ParameterConfig {
                    name: None,
                    byte_offset: usize::from(at % 64),
                    ty: TYPES[usize::from(ty) % TYPES.len()],
                    byte_order: order(little),
                    count: usize::from(count % 5),
                    scale: SCALES[usize::from(scale) % SCALES.len()],
                    offset: OFFSETS[usize::from(offset) % OFFSETS.len()],
                    channel: CHANNELS[usize::from(channel) % CHANNELS.len()].to_string(),
                    feature: usize::from(feature % 5),
                },
            )
            .collect(),
    }
}

/// Whether a value of `q` survives encode then decode unchanged.
fn exact(q: &ParameterConfig) -> bool {
    let small = matches!(
        q.ty,
        ParamType::U8 | ParamType::I8 | ParamType::U16 | ParamType::I16
    );
    let power_of_two = q.scale.abs().log2().fract() == 0.0;
    (small && power_of_two && q.offset.fract() == 0.0)
        || (q.ty == ParamType::F32 && q.scale == 1.0 && q.offset == 0.0)
}

/// Whether any two fields of the packet (time included) share a byte.
fn overlapping(p: &PacketConfig) -> bool {
    let mut spans: Vec<(usize, usize)> = p
        .parameters
        .iter()
        .map(|q| (q.byte_offset, q.byte_offset + q.count * q.ty.size()))
        .collect();
    spans.extend(
        p.time
            .as_ref()
            .map(|t| (t.byte_offset, t.byte_offset + t.ty.size())),
    );
    spans.sort();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

fuzz_target!(|input: Input| {
    let features = usize::from(input.features % 5).max(1);
    let packets: Vec<PacketConfig> = input.packets.iter().take(3).map(packet).collect();
    let mut problems = Vec::new();
    mission::validate(&packets, features, &|k| k, &mut problems);
    if !problems.is_empty() || packets.is_empty() {
        return;
    }
    let db = MissionDb::new(&packets);
    for (pick, data) in &input.fields {
        let ix = usize::from(*pick) % packets.len();
        let config = &packets[ix];
        let layout = &db.packets()[db.index(config.apid).expect("validated apids are indexed")];
        assert_eq!(layout.apid, config.apid);
        let mut out = Vec::new();
        let result = layout.samples(data, input.received_ns, Some(9), &mut out);
        if data.len() < layout.data_len() {
            assert_eq!(
                result,
                Err(MissionError::Short {
                    apid: config.apid,
                    need: layout.data_len(),
                    have: data.len()
                })
            );
            continue;
        }
        match result {
            Ok(()) => {}
            Err(MissionError::Time { apid }) => {
                assert!(config.time.is_some() && apid == config.apid && out.is_empty());
                continue;
            }
            Err(e) => panic!(
                "{e:?} for {} bytes, data_len {}",
                data.len(),
                layout.data_len()
            ),
        }
        // feature -> parameter, per channel this APID feeds.
        let mut fed: BTreeMap<&str, BTreeMap<usize, &ParameterConfig>> = BTreeMap::new();
        for q in &config.parameters {
            for f in q.feature..q.feature + q.count {
                fed.entry(&q.channel).or_default().insert(f, q);
            }
        }
        let got: Vec<&str> = out.iter().map(|(c, _)| &**c).collect();
        assert_eq!(got, fed.keys().copied().collect::<Vec<_>>());
        for (channel, s) in &out {
            assert_eq!(s.values.len(), features, "channel {channel}");
            assert_eq!(s.seq, Some(9));
            let t = s.t_ns.expect("samples are stamped");
            if config.time.is_none() {
                assert_eq!(t, input.received_ns);
            }
            let Some(encoded) = layout.encode(channel, t, &s.values) else {
                panic!("the layout of apid {} feeds {channel}", config.apid)
            };
            assert_eq!(encoded.len(), layout.data_len());
            let mut back = Vec::new();
            let again = layout.samples(&encoded, input.received_ns, Some(9), &mut back);
            // Overlapping fields are allowed, but then the encoder's last
            // write wins and the round trip says nothing.
            let time_exact = !overlapping(config)
                && config.time.as_ref().is_none_or(|tf| {
                    !matches!(tf.ty, ParamType::F32 | ParamType::F64)
                        && (i128::from(t) - i128::from(tf.epoch_ns)).abs() < 1 << 53
                });
            if time_exact {
                again.expect("an encoded sample decodes");
                let (_, s2) = back
                    .iter()
                    .find(|(c, _)| c == channel)
                    .expect("the channel again");
                assert_eq!(s2.t_ns, s.t_ns, "time of {channel}");
                for (f, q) in &fed[&**channel] {
                    if exact(q) && !s.values[*f].is_nan() {
                        assert_eq!(
                            s2.values[*f].to_bits(),
                            s.values[*f].to_bits(),
                            "{channel} feature {f}: {q:?}"
                        );
                    }
                }
            }
        }
    }
});
