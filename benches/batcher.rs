//! What gsinfer costs per window outside the engine and MQTT, on one core.
//! Throughput is in windows; criterion's time per element is the cost per
//! window (goal: ≤ 5 µs, issue 8).
//!
//! - `queue`: the pure policy, [`BatchQueue::push`] of 64 windows and the
//!   one [`BatchQueue::next_batch`] that dispatches them;
//! - `handle`: the same through [`BatchHandle`] (mutex, condition
//!   variable) with a real consumer thread standing in for the engine;
//! - `pipeline`: everything the service does per window besides MQTT and
//!   the engine, for the two window shapes shipped (LSTM 250×25, VAE
//!   50×25): decode a JSON sample, validate it and cut its window
//!   ([`Pipeline::on_sample`]), queue it, dispatch, gather the batch input,
//!   split the output row back and score it ([`Pipeline::on_window`]).
//!
//! Results: BENCHMARKS.md ("Batcher overhead").

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gsinfer::batch::{BatchHandle, BatchQueue, Next};
use gsinfer::config::PipelineConfig;
use gsinfer::infer::{gather, Job, Work};
use gsinfer::ingest::decode::{decode, DecodeLimits, PayloadFormat};
use gsinfer::pipeline::{Pipeline, WindowItem};
use gsinfer::score::WindowOutcome;

const BUCKETS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
const BUDGET: Duration = Duration::from_millis(20);

fn item(len: usize) -> WindowItem {
    WindowItem {
        channel: 0,
        seq: 0,
        end_index: 0,
        end_t_ns: 0,
        received: Instant::now(),
        values: vec![0.5; len],
    }
}

fn queue_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("batcher");
    g.throughput(Throughput::Elements(64));
    g.bench_function("queue/64", |b| {
        let mut q = BatchQueue::new(4096, BUCKETS.to_vec(), BUDGET);
        b.iter_batched(
            || {
                (0..64)
                    .map(|_| Job::window(item(1), Instant::now()))
                    .collect::<Vec<_>>()
            },
            |jobs| {
                let now = Instant::now();
                for (i, job) in jobs.into_iter().enumerate() {
                    black_box(q.push(i as u32 % 40, job, now));
                }
                match q.next_batch(now) {
                    Next::Dispatch(batch) => black_box(batch),
                    other => panic!("expected a dispatch, got {other:?}"),
                }
            },
            BatchSize::SmallInput,
        )
    });
    // Through the shared handle, with a consumer thread taking the batches.
    let n = 64 * 100;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("handle/64", |b| {
        // Room for every window: none is replaced, so the consumer sees them all.
        let handle = BatchHandle::new(BatchQueue::new(n, BUCKETS.to_vec(), BUDGET));
        let taken = Arc::new(AtomicUsize::new(0));
        let consumer = {
            let (handle, taken) = (handle.clone(), Arc::clone(&taken));
            std::thread::spawn(move || {
                while let Some(batch) = handle.next_blocking() {
                    taken.fetch_add(batch.items.len(), Ordering::Release);
                }
            })
        };
        b.iter_batched(
            || {
                (0..n)
                    .map(|_| Job::window(item(1), Instant::now()))
                    .collect::<Vec<_>>()
            },
            |jobs| {
                let start = taken.load(Ordering::Acquire);
                for (i, job) in jobs.into_iter().enumerate() {
                    let now = Instant::now();
                    black_box(handle.push(i as u32 % 40, job, now));
                }
                while taken.load(Ordering::Acquire) < start + n {
                    std::hint::spin_loop();
                }
            },
            BatchSize::LargeInput,
        );
        handle.close();
        consumer.join().unwrap();
    });
    g.finish();
}

fn pipeline_config(length: usize, kind: &str) -> PipelineConfig {
    toml::from_str(&format!(
        r#"
model = "m"
topics = ["telemetry/SMAP/+"]
features = 25
window = {{ length = {length} }}
scoring = {{ kind = "{kind}", threshold = {{ method = "static", value = 0.5 }} }}
"#
    ))
    .unwrap()
}

fn pipeline_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("batcher");
    let batch = 64;
    g.throughput(Throughput::Elements(batch as u64));
    for (name, length, kind, out_len) in [
        ("lstm_250x25", 250, "forecast", 10),
        ("vae_50x25", 50, "reconstruction", 50 * 25),
    ] {
        let config = pipeline_config(length, kind);
        let mut pipeline = Pipeline::new(&config);
        let limits = DecodeLimits::new(25);
        let mut seq = 0u64;
        let payload = |seq: u64| {
            let v: Vec<f32> = (0..25)
                .map(|k| ((seq as usize * 7 + k) % 13) as f32 * 0.1)
                .collect();
            serde_json::to_vec(&serde_json::json!({ "t": 1_514_764_800_000_000_000i64 + seq as i64 * 60_000_000_000, "seq": seq, "v": v }))
                .unwrap()
        };
        // Fill every channel's first window once, outside the timing.
        let channels = 4u64;
        let mut scored = Vec::new();
        for _ in 0..length as u64 {
            for ch in 0..channels {
                let d = decode(PayloadFormat::Json, &payload(seq), &limits);
                let _ = pipeline.on_sample(
                    &format!("C-{ch}"),
                    0,
                    &d.samples[0],
                    Instant::now(),
                    &mut scored,
                );
            }
            seq += 1;
        }
        let handle = BatchHandle::new(BatchQueue::new(4096, BUCKETS.to_vec(), BUDGET));
        let mut input = Vec::new();
        let item_len = length * 25;
        let output = vec![0.25f32; batch * out_len];
        let names: Vec<String> = (0..channels).map(|ch| format!("C-{ch}")).collect();
        g.bench_function(BenchmarkId::new("pipeline", name), |b| {
            b.iter_batched(
                || {
                    let p: Vec<Vec<u8>> = (0..batch as u64)
                        .map(|i| payload(seq + i / channels))
                        .collect();
                    seq += batch as u64 / channels;
                    p
                },
                |payloads| {
                    let mut scored = Vec::new();
                    for (i, p) in payloads.iter().enumerate() {
                        let d = decode(PayloadFormat::Json, p, &limits);
                        let ch = &names[i % channels as usize];
                        let t = d.samples[0].t_ns.unwrap();
                        let w = pipeline
                            .on_sample(ch, t, &d.samples[0], Instant::now(), &mut scored)
                            .unwrap()
                            .expect("a window per sample");
                        let now = Instant::now();
                        handle.push(w.channel, Job::window(w, now), now);
                    }
                    let Some(batch) = handle.next_blocking() else {
                        unreachable!()
                    };
                    gather(
                        batch.items.iter().map(|j| match &j.work {
                            Work::Window(w) => w.values.as_slice(),
                            Work::Request(r) => r.values.as_slice(),
                        }),
                        item_len,
                        batch.bucket,
                        &mut input,
                    );
                    black_box(&input);
                    for (i, job) in batch.items.into_iter().enumerate() {
                        let Work::Window(mut w) = job.work else {
                            unreachable!()
                        };
                        let row = output[i * out_len..(i + 1) * out_len].to_vec();
                        let values = std::mem::take(&mut w.values);
                        pipeline.on_window(
                            &w,
                            WindowOutcome::Output {
                                output: row,
                                input: values,
                            },
                            &mut scored,
                        );
                    }
                    black_box(scored)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, queue_bench, pipeline_bench);
criterion_main!(benches);
