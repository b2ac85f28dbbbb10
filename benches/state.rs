//! What saving a pipeline's channel state costs ([`gsinfer::state`]), per
//! channel, for the window shapes shipped (LSTM forecaster 250×25, VAE
//! 50×25, Transformer forecaster 64×25), each channel warmed past a full
//! NDT window (2 100 errors), so its state is as large as it gets:
//!
//! - `encode`: the channel's state to the file's bytes (header, postcard
//!   payload, CRC-32);
//! - `save`: encode and write in place into the slot the save goes to,
//!   then sync the file system, into a folder under `target/`, i.e. on the
//!   disk the state folder would be on;
//! - anchor `fsync_floor`: [`write_atomic`] (temporary file, fsync, rename,
//!   folder fsync) of the same number of bytes without encoding, the part
//!   that is the disk's, measured in the same run.
//!
//! And one checkpoint of 1 000 such LSTM channels, one model each, as the
//! service saves them (one group commit), timed in *CPU time of this
//! process* (what a save takes from the engines; the kernel's writeback
//! threads are not counted), not wall time:
//!
//! - `group_1000/in_place`: [`StateStore::save_all`], the two slots;
//! - anchor `group_1000/temp_rename`: the same bytes encoded and written as
//!   the store did before (a temporary file per model renamed over the
//!   old one, [`write_atomic_all_with`]: one `syncfs`, one folder fsync).
//!
//! The size of each state is printed, compressed as saved and before
//! compression, also after a real channel's test split when
//! `GSINFER_DATA_DIR` names the telemanom data set. Results: BENCHMARKS.md
//! ("Channel state").

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gsinfer::config::PipelineConfig;
use gsinfer::engine::cache::{write_atomic, write_atomic_all_with};
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

/// 2023-11-14, in ns since the Unix epoch: samples are stamped as live
/// telemetry is (a 9-byte varint in each saved point), one a second.
const EPOCH_NS: i64 = 1_700_000_000_000_000_000;

/// One channel fed `length + 2 200` samples, every window scored.
fn warm(config: &PipelineConfig, out_len: usize) -> Pipeline {
    fed(config, out_len, config.window.length as u64 + 2_200)
}

/// Heap bytes allocated and not yet freed (jemalloc's `stats.allocated`).
fn live_bytes() -> i64 {
    let stats = gsinfer::status::process::ProcessStats::read();
    stats.heap_allocated_bytes.expect("jemalloc statistics") as i64
}

/// One channel fed `samples` samples, every window scored.
fn fed(config: &PipelineConfig, out_len: usize, samples: u64) -> Pipeline {
    fed_with(config, out_len, samples, |i| {
        (0..25)
            .map(|k| ((i as usize * 7 + k) % 13) as f32 * 0.1)
            .collect()
    })
}

/// One channel fed `samples` samples of `values(i)`, every window scored
/// with a constant output.
fn fed_with(
    config: &PipelineConfig,
    out_len: usize,
    samples: u64,
    values: impl Fn(u64) -> Vec<f32>,
) -> Pipeline {
    let mut p = Pipeline::new(config);
    let now = Instant::now();
    let mut out = Vec::new();
    for i in 0..samples {
        let values = values(i);
        let s = RawSample {
            t_ns: None,
            seq: Some(i),
            values,
        };
        if let Some(w) = p
            .on_sample(
                "A-1",
                EPOCH_NS + i as i64 * 1_000_000_000,
                &s,
                now,
                &mut out,
            )
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
        // A channel that has run for hours (past `actuals_capacity`,
        // 16 384 samples): its saved bytes and the heap its pipeline
        // holds, printed, not timed.
        let before = live_bytes();
        let long = fed(&config, out_len, 20_000);
        let heap = live_bytes() - before;
        let long_bytes = encode(&key, 0, long.channel_states()).unwrap().len();
        let raw = postcard::to_allocvec(long.channel_states()).unwrap().len();
        println!("state/{name}: {long_bytes} bytes per channel after 20 000 samples ({raw} before compression), {heap} bytes of heap");
        // The same on real telemetry (the synthetic values above repeat
        // every 13 samples, which flatters any compression): the test
        // split of a few SMAP channels, each sample once.
        if let Some(data) = std::env::var_os("GSINFER_DATA_DIR") {
            for chan in ["A-2", "E-1", "P-1", "T-1"] {
                let rows =
                    gsinfer::eval::read_channel(std::path::Path::new(&data), "test", chan).unwrap();
                let p = fed_with(&config, out_len, rows.len() as u64, |i| {
                    rows[i as usize].clone()
                });
                let bytes = encode(&key, 0, p.channel_states()).unwrap().len();
                let raw = postcard::to_allocvec(p.channel_states()).unwrap().len();
                println!("state/{name}: {bytes} bytes after the {} samples of {chan} ({raw} before compression)", rows.len());
            }
        }
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

/// CPU time this process has used (user and system, all threads).
fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn group_bench(c: &mut Criterion) {
    const MODELS: usize = 1_000;
    let mut g = c.benchmark_group("state/group_1000");
    g.sample_size(10);
    let config = pipeline_config(250, "forecast");
    let p = warm(&config, 10);
    let keys: Vec<StateKey> = (0..MODELS)
        .map(|i| {
            let mut c = config.clone();
            c.model = format!("m{i}");
            StateKey::new(&c, 1, "0".repeat(64))
        })
        .collect();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = StateStore::open(&dir.path().join("slots")).unwrap();
    let batch: Vec<(&StateKey, &Pipeline)> = keys.iter().map(|k| (k, &p)).collect();
    g.bench_function("in_place", |b| {
        b.iter_custom(|iters| {
            let start = process_cpu();
            for _ in 0..iters {
                let saved = store.save_all(&batch, 0);
                assert!(saved.iter().all(Result::is_ok));
            }
            process_cpu() - start
        })
    });
    let renamed = dir.path().join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    let paths: Vec<std::path::PathBuf> = keys
        .iter()
        .map(|k| renamed.join(format!("{}.state", k.model)))
        .collect();
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    g.bench_function("temp_rename", |b| {
        b.iter_custom(|iters| {
            let start = process_cpu();
            for _ in 0..iters {
                let written = write_atomic_all_with(&renamed, &refs, |i, file| {
                    let bytes = encode(&keys[i], 0, p.channel_states()).unwrap();
                    file.write_all(&bytes).unwrap();
                    Ok(())
                });
                assert!(written.iter().all(Result::is_ok));
            }
            process_cpu() - start
        })
    });
    g.finish();
}

criterion_group!(benches, state_bench, group_bench);
criterion_main!(benches);
