//! Running batches of windows on an engine: padding to the bucket,
//! splitting outputs per window, and the engine threads of the service.

use std::sync::Arc;
use std::time::Instant;

use crate::batch::{Batch, BatchHandle};
use crate::engine::{Engine, EngineError};
use crate::pipeline::WindowItem;
use crate::score::WindowOutcome;
use crate::status::StatusBoard;

/// Runs `items` (1..=`bucket` windows of `item_len` values each) as one
/// batch padded with zeros to `bucket`, and returns the first output's row
/// for each item, in order.
///
/// # Errors
/// The engine's error; no item is scored then.
pub fn run_batch(
    engine: &mut dyn Engine,
    items: &[WindowItem],
    bucket: usize,
    input: &mut Vec<f32>,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let item_len = engine.inputs()[0].item_len();
    input.clear();
    for item in items {
        input.extend_from_slice(&item.values);
    }
    input.resize(bucket * item_len, 0.0);
    let outputs = engine.infer(bucket, &[input])?;
    let out = &outputs[0];
    let row = out.len() / bucket;
    Ok((0..items.len())
        .map(|i| out[i * row..(i + 1) * row].to_vec())
        .collect())
}

/// What an engine thread hands back for one batch.
#[derive(Debug)]
pub struct BatchResult {
    /// Index of the pipeline (model) in the service.
    pub pipeline: usize,
    /// Each window with its outcome, in batch order.
    pub windows: Vec<(WindowItem, WindowOutcome)>,
}

/// Splits a batch's items and outputs into per-window outcomes.
fn outcomes(
    items: Vec<WindowItem>,
    result: Result<Vec<Vec<f32>>, EngineError>,
) -> Vec<(WindowItem, WindowOutcome)> {
    match result {
        Ok(rows) => items
            .into_iter()
            .zip(rows)
            .map(|(mut item, output)| {
                let input = std::mem::take(&mut item.values);
                (item, WindowOutcome::Output { output, input })
            })
            .collect(),
        Err(_) => items
            .into_iter()
            .map(|item| (item, WindowOutcome::Dropped))
            .collect(),
    }
}

/// Starts one engine thread: it takes batches from `handle` until the
/// handle is closed and drained, runs them, and sends the results on
/// `results` (blocking when the pipeline task is behind).
pub fn spawn_engine_thread(
    name: String,
    pipeline: usize,
    mut engine: Box<dyn Engine>,
    handle: BatchHandle<WindowItem>,
    results: tokio::sync::mpsc::Sender<BatchResult>,
    board: Arc<StatusBoard>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("engine-{name}"))
        .spawn(move || {
            let mut input = Vec::new();
            while let Some(Batch { items, bucket }) = handle.next_blocking() {
                board.metrics.queue_depth.with_label_values(&[&name]).set(handle.depth() as i64);
                let started = Instant::now();
                let result = run_batch(engine.as_mut(), &items, bucket, &mut input);
                let micros = started.elapsed().as_micros() as u64;
                match &result {
                    Ok(_) => board.record_batch(&name, bucket, micros),
                    Err(e) => {
                        log::error!(target: "gsinfer::engine", "model {name}: batch of {} failed: {e}", items.len());
                        board.metrics.windows_dropped.with_label_values(&[&name, "engine_error"]).inc_by(items.len() as u64);
                    }
                }
                let windows = outcomes(items, result);
                if results.blocking_send(BatchResult { pipeline, windows }).is_err() {
                    break; // the service is shutting down
                }
            }
        })
        .expect("spawn engine thread")
}
