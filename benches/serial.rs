//! Serial-link decoding throughput on one core: frames/s through the
//! deframer alone, and through the whole decoder (deframer, space-packet
//! checks with CRC, sequence tracking, mission database → samples), for
//! each framing. The packets are SMAP-shaped: an i64 time stamp and 25 f32
//! values (116 bytes with the CRC). Results: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gsinfer::ingest::decode::DecodeLimits;
use gsinfer::ingest::framing::{self, Deframer, Framing};
use gsinfer::ingest::serial::{DecodedBatch, SerialConfig, SerialDecoder, SerialStats};

const FRAMES: usize = 1000;
/// Bytes per read, like the serial source's reads.
const READ: usize = 4096;

fn config(framing: Framing) -> SerialConfig {
    toml::from_str(&format!(
        r#"
device = "/dev/null"
framing = "{framing}"
[[packet]]
apid = 100
crc = true
time = {{ byte_offset = 0, type = "i64", unit = "ns" }}
parameter = [ {{ byte_offset = 8, type = "f32", count = 25, channel = "S-1" }} ]
"#
    ))
    .unwrap()
}

/// `FRAMES` framed packets, as one byte stream.
fn stream(framing: Framing) -> Vec<u8> {
    let c = config(framing);
    let db = gsinfer::ingest::mission::MissionDb::new(&c.packets);
    let layout = &db.packets()[0];
    let mut wire = Vec::new();
    let mut packet = Vec::new();
    for i in 0..FRAMES {
        let values: Vec<f32> = (0..25)
            .map(|k| (i * 25 + k) as f32 * 0.37 - 100.0)
            .collect();
        let data = layout
            .encode("S-1", 1_514_764_800_000_000_000 + i as i64, &values)
            .unwrap();
        packet.clear();
        gsinfer::ingest::ccsds::encode(100, i as u16, &data, true, &mut packet);
        framing::encode(framing, &packet, &mut wire);
    }
    wire
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("serial");
    g.throughput(Throughput::Elements(FRAMES as u64));
    for framing in [Framing::Kiss, Framing::Slip, Framing::Cobs] {
        let wire = stream(framing);
        g.bench_with_input(BenchmarkId::new("deframe", framing), &wire, |b, wire| {
            let mut d = Deframer::new(framing, 4096, None);
            b.iter(|| {
                let mut n = 0usize;
                for chunk in wire.chunks(READ) {
                    d.push(black_box(chunk), &mut |f| n += f.len());
                }
                black_box(n)
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", framing), &wire, |b, wire| {
            let c = config(framing);
            let stats = Arc::new(SerialStats::new(&c));
            let mut d = SerialDecoder::new(&c, DecodeLimits::new(25), stats);
            let mut out = DecodedBatch::default();
            b.iter(|| {
                out.samples.clear();
                out.rejects.clear();
                for chunk in wire.chunks(READ) {
                    d.push(black_box(chunk), 0, &mut out);
                }
                assert_eq!(out.samples.len(), FRAMES);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
