//! Engine throughput per model family and bucket, every engine compiled in
//! and available side by side in one run (criterion; throughput in
//! windows). One intra-op thread. onnxruntime is found through
//! `$ORT_DYLIB_PATH` (point it at the wheel's `capi/libonnxruntime.so*`);
//! without it only tract runs. `GSINFER_BENCH_BUCKETS=1,64` narrows the
//! buckets. The parity table in BENCHMARKS.md comes from `gsinfer bench`
//! beside onnxruntime's own Python API (tools/bench_engines.py); this bench
//! is the in-process view of the same numbers.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gsinfer::config::{Config, EngineChoice, EngineSettings};
use gsinfer::engine::prepare::{open_engine, prepare};
use gsinfer::repository::ModelRepository;
use rand::{Rng, SeedableRng};

const CASES: [(&str, &str); 3] = [
    ("config/gsinfer.example.toml", "smap_lstm"),
    ("config/smap_tfm.toml", "tfm_A-1"),
    ("config/smap_vae.toml", "vae_A-1"),
];

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut engines = vec![(EngineChoice::Tract, EngineSettings::default())];
    match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(lib) => engines.push((
            EngineChoice::Onnxruntime,
            EngineSettings {
                onnxruntime_library: Some(lib.into()),
                threads: 1,
                ..EngineSettings::default()
            },
        )),
        None => eprintln!("ORT_DYLIB_PATH unset: tract only"),
    }
    let buckets: Option<Vec<usize>> = std::env::var("GSINFER_BENCH_BUCKETS").ok().map(|s| {
        s.split(',')
            .map(|b| b.trim().parse().expect("bucket"))
            .collect()
    });
    for (config, model) in CASES {
        let config = Config::load(&root.join(config)).expect("config");
        let pipeline = config
            .pipelines
            .iter()
            .find(|p| p.model == model)
            .expect("pipeline");
        let repo = ModelRepository::open(&config.repository.path).expect("repository");
        let prepared = prepare(&repo, pipeline).expect("model");
        let mut g = c.benchmark_group(format!("engine/{model}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for &bucket in buckets.as_deref().unwrap_or(&prepared.buckets) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            let input: Vec<f32> = (0..bucket * prepared.input.item_len())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            g.throughput(Throughput::Elements(bucket as u64));
            for (choice, settings) in &engines {
                let mut engine = open_engine(&prepared, *choice, settings).expect("engine");
                g.bench_with_input(
                    BenchmarkId::new(choice.name(), bucket),
                    &input,
                    |b, input| b.iter(|| black_box(engine.infer(bucket, &[input]).unwrap())),
                );
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
