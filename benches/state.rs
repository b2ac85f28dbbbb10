//! What saving a pipeline's channel state costs ([`gsinfer::state`]), per
//! channel, for the window shapes shipped (LSTM forecaster 250×25, VAE
//! 50×25, Transformer forecaster 64×25), each channel warmed past a full
//! NDT window (2 100 errors), so its state is as large as it gets:
//!
//! - `encode`: the channel's state to the file's bytes (header, postcard
//!   payload, CRC-32);
//! - `save`: encode and write atomically (temporary file, fsync, rename,
//!   folder fsync) into a folder under `target/`, i.e. on the disk the
//!   state folder would be on;
//! - anchor `fsync_floor`: [`write_atomic`] of the same number of bytes
//!   without encoding, the part that is the disk's, measured in the same run.
//!
//! The size of each state is printed. Results: BENCHMARKS.md ("Channel state").

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use gsinfer::config::PipelineConfig;
use gsinfer::engine::cache::write_atomic;
use gsinfer::ingest::decode::RawSample;
use gsinfer::pipeline::Pipeline;
use gsinfer::score::WindowOutcome;
use gsinfer::state::{encode, StateKey, StateStore};

fn pipeline_config(length: usize, kind: &str) -> PipelineConfig {
    toml::from_str(&format!(
        r#"
model = "m"
topics = ["telemetry/SMAP/+"]
features = 25
window = {{ length = {length} }}
scoring = {{ kind = "{kind}", smoothing_span = 105.0, threshold = {{ method = "ndt" }} }}
"#
    ))
    .unwrap()
}

/// One channel fed `length + 2 200` samples, every window scored.
fn warm(config: &PipelineConfig, out_len: usize) -> Pipeline {
    let mut p = Pipeline::new(config);
    let now = Instant::now();
    let mut out = Vec::new();
    for i in 0..config.window.length as u64 + 2_200 {
        let values: Vec<f32> = (0..25)
            .map(|k| ((i as usize * 7 + k) % 13) as f32 * 0.1)
            .collect();
        let s = RawSample {
            t_ns: None,
            seq: Some(i),
            values,
        };
        if let Some(w) = p
            .on_sample("A-1", i as i64 * 1000, &s, now, &mut out)
            .unwrap()
        {
            let outcome = WindowOutcome::Output {
                output: vec![0.3; out_len],
                input: w.values.clone(),
            };
            p.on_window(&w, outcome, &mut out);
        }
        out.clear();
    }
    assert_eq!(p.windows_in_flight(), 0);
    p
}

fn state_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("state");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    for (name, length, kind, out_len) in [
        ("lstm_250x25", 250, "forecast", 10),
        ("vae_50x25", 50, "reconstruction", 50 * 25),
        ("tfm_64x25", 64, "forecast", 10),
    ] {
        let config = pipeline_config(length, kind);
        let p = warm(&config, out_len);
        let key = StateKey::new(&config, 1, "0".repeat(64));
        let bytes = encode(&key, 0, p.channel_states()).unwrap();
        println!("state/{name}: {} bytes per channel", bytes.len());
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| black_box(encode(&key, 0, p.channel_states()).unwrap()))
        });
        g.bench_function(format!("save/{name}"), |b| {
            b.iter(|| black_box(store.save(&key, &p, 0).unwrap()))
        });
        let raw = vec![7u8; bytes.len()];
        let path = dir.path().join("floor");
        g.bench_function(format!("fsync_floor/{name}"), |b| {
            b.iter(|| write_atomic(&path, black_box(&raw)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, state_bench);
criterion_main!(benches);
