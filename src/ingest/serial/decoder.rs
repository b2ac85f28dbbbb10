//! Bytes of a serial link in, samples out: the deframer, then the space
//! packet checks and the mission database (or an MQTT payload decoder),
//! with every problem counted in [`SerialStats`] and turned into a
//! [`Reject`] for the pipeline's by-reason counters. No I/O and no clock
//! of its own, so it is fuzzed, benchmarked and tested directly.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::config::SerialConfig;
use super::stats::SerialStats;
use crate::ingest::ccsds::{self, SeqEvent, SequenceTracker, IDLE_APID};
use crate::ingest::decode::{decode, DecodeLimits, PayloadFormat, RawSample, Reject, RejectReason};
use crate::ingest::framing::Deframer;
use crate::ingest::mission::MissionDb;

/// What one call to [`SerialDecoder::push`] produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodedBatch {
    /// Samples with their channel, in link order.
    pub samples: Vec<(Arc<str>, RawSample)>,
    /// Frames and packets that yielded no sample, by reason.
    pub rejects: Vec<Reject>,
}

impl DecodedBatch {
    /// Whether nothing was produced.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.rejects.is_empty()
    }
}

#[derive(Debug)]
enum Payload {
    Ccsds {
        db: MissionDb,
        sequences: Vec<SequenceTracker>,
    },
    Mqtt {
        format: PayloadFormat,
        channel: Arc<str>,
        limits: DecodeLimits,
    },
}

/// Receive-time stamps that strictly increase per link, so frames read
/// together (or a clock step back) never look like duplicates.
#[derive(Debug, Default)]
struct ReceiveClock {
    last: i64,
}

impl ReceiveClock {
    fn next(&mut self, now_ns: i64) -> i64 {
        self.last = now_ns.max(self.last.saturating_add(1));
        self.last
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct SerialDecoder {
    name: Arc<str>,
    max_frame: usize,
    deframer: Deframer,
    payload: Payload,
    clock: ReceiveClock,
    stats: Arc<SerialStats>,
}

impl SerialDecoder {
    /// A decoder for the (validated) link `config`; MQTT-format payloads use
    /// `limits`. Counters go to `stats`.
    pub fn new(config: &SerialConfig, limits: DecodeLimits, stats: Arc<SerialStats>) -> Self {
        let payload = match config.payload.mqtt_format() {
            None => Payload::Ccsds {
                db: MissionDb::new(&config.packets),
                sequences: vec![SequenceTracker::default(); config.packets.len()],
            },
            Some(format) => Payload::Mqtt {
                format,
                channel: Arc::from(config.channel.clone().unwrap_or_default()),
                limits,
            },
        };
        SerialDecoder {
            name: Arc::from(config.label()),
            max_frame: config.max_frame_bytes,
            deframer: Deframer::new(config.framing, config.max_frame_bytes, config.kiss_port),
            payload,
            clock: ReceiveClock::default(),
            stats,
        }
    }

    /// The link's counters.
    pub fn stats(&self) -> &Arc<SerialStats> {
        &self.stats
    }

    /// Forgets a partial frame (the device was reopened); sequence counts
    /// are kept, so packets lost while it was away show as a gap.
    pub fn reset(&mut self) {
        self.deframer.reset();
    }

    /// Decodes `bytes` read at `now_ns` (ns since the Unix epoch); samples
    /// and rejects are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], now_ns: i64, out: &mut DecodedBatch) {
        let SerialDecoder {
            name,
            deframer,
            payload,
            clock,
            stats,
            max_frame,
        } = self;
        stats.bytes.fetch_add(bytes.len() as u64, Relaxed);
        let before = out.samples.len();
        deframer.push(bytes, &mut |frame| {
            let t = clock.next(now_ns);
            match payload {
                Payload::Ccsds { db, sequences } => {
                    on_packet(name, db, sequences, stats, frame, t, out);
                }
                Payload::Mqtt {
                    format,
                    channel,
                    limits,
                } => {
                    let decoded = decode(*format, frame, limits);
                    out.rejects.extend(decoded.rejects);
                    for mut s in decoded.samples {
                        if s.t_ns.is_none() {
                            s.t_ns = Some(clock.next(now_ns));
                        }
                        out.samples.push((Arc::clone(channel), s));
                    }
                }
            }
        });
        let framing = deframer.take_stats();
        stats.add_deframe(&framing);
        for _ in 0..framing.oversized {
            out.rejects.push(Reject::new(
                RejectReason::Oversized,
                format!(
                    "serial link `{name}`: a frame over {} bytes was dropped; raise max_frame_bytes if the link sends larger frames",
                    max_frame
                ),
            ));
        }
        stats
            .samples
            .fetch_add((out.samples.len() - before) as u64, Relaxed);
    }
}

fn on_packet(
    name: &str,
    db: &MissionDb,
    sequences: &mut [SequenceTracker],
    stats: &SerialStats,
    frame: &[u8],
    received_ns: i64,
    out: &mut DecodedBatch,
) {
    let malformed = |e: &dyn std::fmt::Display| {
        Reject::new(
            RejectReason::Malformed,
            format!("serial link `{name}`: {e}"),
        )
    };
    let packet = match ccsds::parse(frame) {
        Ok(p) => p,
        Err(e) => {
            stats.packet_error(&e, None);
            out.rejects.push(malformed(&e));
            return;
        }
    };
    if packet.apid == IDLE_APID {
        stats.idle.fetch_add(1, Relaxed);
        return;
    }
    let Some(ix) = db.index(packet.apid) else {
        stats.unknown_apid.fetch_add(1, Relaxed);
        out.rejects.push(Reject::new(
            RejectReason::UnknownChannel,
            format!(
                "serial link `{name}`: apid {} is not in the mission database; add a [[serial.packet]] for it",
                packet.apid
            ),
        ));
        return;
    };
    let layout = &db.packets()[ix];
    let data = match packet.user_data(layout.crc) {
        Ok(d) => d,
        Err(e) => {
            stats.packet_error(&e, Some(ix));
            out.rejects.push(malformed(&e));
            return;
        }
    };
    let (event, seq) = sequences[ix].observe(packet.seq_count);
    stats.sequence(ix, event);
    if event == SeqEvent::Repeat {
        out.rejects.push(Reject::new(
            RejectReason::Duplicate,
            format!(
                "serial link `{name}`: apid {} repeats sequence count {}",
                packet.apid, packet.seq_count
            ),
        ));
        return;
    }
    if let Err(e) = layout.samples(data, received_ns, Some(seq), &mut out.samples) {
        stats.content_error();
        out.rejects.push(malformed(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: &str = r#"
device = "/dev/null"
framing = "kiss"
max_frame_bytes = 64
[[packet]]
apid = 1
crc = true
parameter = [ { byte_offset = 0, type = "i16", count = 2, channel = "a", scale = 0.5 } ]
[[packet]]
apid = 2
time = { byte_offset = 0, type = "f64", unit = "s" }
parameter = [ { byte_offset = 8, type = "u8", channel = "b" } ]
"#;

    fn decoder(framing: &str) -> SerialDecoder {
        let config: SerialConfig =
            toml::from_str(&CONFIG.replace("\"kiss\"", &format!("{framing:?}"))).unwrap();
        let stats = Arc::new(SerialStats::new(&config));
        SerialDecoder::new(&config, DecodeLimits::new(2), stats)
    }

    fn kiss_packet(apid: u16, seq: u16, data: &[u8], crc: bool) -> Vec<u8> {
        let mut p = Vec::new();
        ccsds::encode(apid, seq, data, crc, &mut p);
        let mut wire = Vec::new();
        crate::ingest::framing::encode(crate::ingest::framing::Framing::Kiss, &p, &mut wire);
        wire
    }

    #[test]
    fn packets_become_samples_and_faults_become_counted_rejects() {
        let mut d = decoder("kiss");
        let mut wire = kiss_packet(1, 0, &[0, 4, 0xFF, 0xFE], true);
        wire.extend(kiss_packet(1, 0, &[0, 4, 0, 0], true)); // repeat
        wire.extend(kiss_packet(1, 2, &[0, 6], true)); // gap, too short
        let mut t = Vec::from(1.5f64.to_be_bytes());
        t.push(9);
        wire.extend(kiss_packet(2, 0, &t, false));
        wire.extend(kiss_packet(3, 0, &[1], false)); // unknown
        wire.extend(kiss_packet(2047, 0, &[0], false)); // idle
        let mut out = DecodedBatch::default();
        d.push(&wire, 100, &mut out);
        type Row<'a> = (&'a str, Vec<f32>, Option<i64>, Option<u64>);
        let got: Vec<Row> = out
            .samples
            .iter()
            .map(|(c, s)| (&**c, s.values.clone(), s.t_ns, s.seq))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", vec![2.0, -1.0], Some(100), Some(0)),
                ("b", vec![9.0], Some(1_500_000_000), Some(0)),
            ]
        );
        let reasons: Vec<&str> = out.rejects.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, vec!["duplicate", "malformed", "unknown_channel"]);
        let s = d.stats();
        assert_eq!(s.apids[0].repeats.load(Relaxed), 1);
        assert_eq!(s.apids[0].gaps.load(Relaxed), 1);
        assert_eq!(s.packet_errors[5].load(Relaxed), 1);
        assert_eq!((s.unknown_apid.load(Relaxed), s.idle.load(Relaxed)), (1, 1));
        assert_eq!(s.samples.load(Relaxed), 2);
    }

    proptest! {
        /// The space_packet cargo-fuzz target's invariants on stable.
        #[test]
        fn arbitrary_bytes_never_panic_and_samples_are_well_formed(
            input in prop::collection::vec(any::<u8>(), 0..2048),
            pick in 0usize..4,
            cut in 1usize..300,
        ) {
            let mut d = decoder(["kiss", "slip", "cobs", "line"][pick]);
            let mut out = DecodedBatch::default();
            for chunk in input.chunks(cut) {
                d.push(chunk, 0, &mut out);
            }
            for (c, s) in &out.samples {
                prop_assert_eq!(s.values.len(), if &**c == "a" { 2 } else { 1 });
            }
        }
    }
}
