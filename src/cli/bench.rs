//! `gsinfer bench`: an engine's throughput on one model and batch size,
//! on seeded random windows, after a warm-up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::config::Config;
use crate::engine::prepare::{open_engine, prepare};
use crate::engine::EngineChoice;
use crate::repository::ModelRepository;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model name; a `[[pipeline]]` must serve it.
    pub model: String,
    /// Windows per batch.
    pub batch: usize,
    /// Keep timing at least this long (and at least 10 batches).
    pub min_time: Duration,
    /// The engine; `None` takes the pipeline's `engine`.
    pub engine: Option<EngineChoice>,
    /// Intra-op threads; `None` takes `engine.threads`.
    pub threads: Option<usize>,
}

/// What one benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// Model name.
    pub model: String,
    /// Engine kind, e.g. `tract` or `onnxruntime`.
    pub engine: String,
    /// The engine with its version and settings.
    pub engine_detail: String,
    /// Intra-op threads asked for.
    pub threads: usize,
    /// Windows per batch.
    pub batch: usize,
    /// Batches timed.
    pub iterations: usize,
    /// Median wall time of one batch, ms.
    pub ms_per_batch: f64,
    /// Fastest batch, ms.
    pub ms_min: f64,
    /// 90th percentile of the batch times, ms.
    pub ms_p90: f64,
    /// `batch / median batch time`, windows per second.
    pub windows_per_s: f64,
}

/// Runs the model's engine on random `[batch, dims...]` inputs (uniform in
/// [-1, 1), seed 42): 3 warm-up batches, then at least 10 batches and at
/// least `min_time`; reports the median batch time.
///
/// # Errors
/// Unknown model, or an engine that cannot load or run it.
pub fn run(config: &Config, opts: &BenchOptions) -> Result<BenchResult> {
    let pipeline = config
        .pipelines
        .iter()
        .find(|p| p.model == opts.model)
        .with_context(|| format!("no [[pipeline]] serves model {}", opts.model))?;
    let repo = ModelRepository::open(&config.repository.path)?;
    let prepared = prepare(&repo, pipeline)?;
    let mut settings = config.engine.clone();
    if let Some(threads) = opts.threads {
        settings.threads = threads.max(1);
    }
    // A benchmark measures the tuned engine from its first batch.
    settings.tract_tuning = crate::engine::TractTuning::AtLoad;
    let choice = opts.engine.unwrap_or(pipeline.engine);
    let mut engine = open_engine(&prepared, choice, &settings)?;
    let batch = opts.batch.max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let input: Vec<f32> = (0..batch * prepared.input.item_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for _ in 0..3 {
        engine.infer(batch, &[&input])?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 10 || started.elapsed() < opts.min_time {
        let t = Instant::now();
        engine.infer(batch, &[&input])?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    Ok(BenchResult {
        model: opts.model.clone(),
        engine: engine.kind().to_string(),
        engine_detail: engine.detail(),
        threads: settings.threads,
        batch,
        iterations: times.len(),
        ms_per_batch: median * 1e3,
        ms_min: times[0] * 1e3,
        ms_p90: p90 * 1e3,
        windows_per_s: batch as f64 / median,
    })
}

impl BenchResult {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        json!(self).to_string()
    }
}
