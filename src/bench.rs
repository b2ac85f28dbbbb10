//! `gsinfer bench`: an engine's throughput on one model and batch size,
//! on seeded random windows, after a warm-up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::config::Config;
use crate::model::{open_engine, prepare};
use crate::repository::ModelRepository;

/// What one benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// Model name.
    pub model: String,
    /// Engine kind, e.g. `tract`.
    pub engine: String,
    /// Windows per batch.
    pub batch: usize,
    /// Batches timed.
    pub iterations: usize,
    /// Median wall time of one batch, ms.
    pub ms_per_batch: f64,
    /// `batch / median batch time`, windows per second.
    pub windows_per_s: f64,
}

/// Runs `model`'s engine on random `[batch, dims...]` inputs: 3 warm-up
/// batches, then at least 10 batches and at least `min_time`; reports the
/// median batch time.
///
/// # Errors
/// Unknown model, or an engine that cannot load or run it.
pub fn run(config: &Config, model: &str, batch: usize, min_time: Duration) -> Result<BenchResult> {
    let pipeline = config
        .pipelines
        .iter()
        .find(|p| p.model == model)
        .with_context(|| format!("no [[pipeline]] serves model {model}"))?;
    let repo = ModelRepository::open(&config.repository.path)?;
    let prepared = prepare(&repo, pipeline)?;
    let mut engine = open_engine(&prepared)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let input: Vec<f32> = (0..batch * prepared.input.item_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for _ in 0..3 {
        engine.infer(batch, &[&input])?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 10 || started.elapsed() < min_time {
        let t = Instant::now();
        engine.infer(batch, &[&input])?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(BenchResult {
        model: model.to_string(),
        engine: engine.kind().to_string(),
        batch,
        iterations: times.len(),
        ms_per_batch: median * 1e3,
        windows_per_s: batch as f64 / median,
    })
}

impl BenchResult {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        json!(self).to_string()
    }
}
