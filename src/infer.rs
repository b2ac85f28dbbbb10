//! Running batches on an engine: what the batcher queues ([`Job`]: a
//! telemetry window or one item of a KServe inference request), padding to
//! the bucket, splitting outputs per item, and the engine instances the
//! worker pool runs ([`EngineInstance`]), which route each item's result
//! back where it came from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{Batch, BatchHandle};
use crate::engine::{Engine, EngineError};
use crate::pipeline::WindowItem;
use crate::score::WindowOutcome;
pub mod stats;

use self::stats::{InferStats, Timing};
use crate::events::{EventSink, StageEvent};
use crate::watchdog::Stage;

/// Channel id under which KServe request items (HTTP and gRPC) are
/// queued: no telemetry channel has it, so the full-policy never replaces
/// them by a window.
pub const HTTP_CHANNEL: u32 = u32::MAX;

/// The front end an inference request came in by; the `source` label of
/// its metrics (inputs, queue time, end-to-end time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSource {
    /// KServe v2 over HTTP/REST ([`crate::kserve::infer`]).
    Http,
    /// KServe v2 over gRPC ([`crate::kserve::grpc`]).
    Grpc,
}

impl RequestSource {
    /// The metric label: `http` or `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestSource::Http => "http",
            RequestSource::Grpc => "grpc",
        }
    }
}

/// One entry of a model's batch queue.
#[derive(Debug)]
pub struct Job {
    /// When it was queued (for the queue-time metrics).
    pub queued: Instant,
    /// What to run.
    pub work: Work,
}

/// What a [`Job`] carries.
#[derive(Debug)]
pub enum Work {
    /// A telemetry window; its result goes to the pipeline task.
    Window(WindowItem),
    /// One item (batch row) of a KServe inference request (HTTP or gRPC);
    /// its result goes back to the waiting request.
    Request(RequestItem),
}

impl Job {
    /// A telemetry window queued at `now`.
    pub fn window(item: WindowItem, now: Instant) -> Self {
        Self {
            queued: now,
            work: Work::Window(item),
        }
    }

    fn values(&self) -> &[f32] {
        match &self.work {
            Work::Window(w) => &w.values,
            Work::Request(r) => &r.values,
        }
    }
}

/// One item of an HTTP inference request.
#[derive(Debug)]
pub struct RequestItem {
    /// Its row in the request's batch.
    pub row: usize,
    /// Its input, `item_len` values.
    pub values: Vec<f32>,
    /// The front end it came in by.
    pub source: RequestSource,
    /// Where its result goes.
    pub reply: crossbeam_channel::Sender<ItemResult>,
}

impl RequestItem {
    /// Answers the item with an error (dropped from the queue, engine
    /// failure) after it `waited` in the queue.
    pub fn fail(self, waited: Duration, message: String) {
        let _ = self.reply.send(ItemResult {
            row: self.row,
            outputs: Err(message),
            timing: Timing {
                queue: waited,
                ..Timing::default()
            },
        });
    }
}

/// The result of one [`RequestItem`].
#[derive(Debug)]
pub struct ItemResult {
    /// The item's row in its request.
    pub row: usize,
    /// Each output's row for this item, in the engine's output order; or why not.
    pub outputs: Result<Vec<Vec<f32>>, String>,
    /// Where the item's time went.
    pub timing: Timing,
}

/// Copies `rows` (1..=`bucket` inputs of `item_len` values each) into
/// `input`, padded with zeros to `bucket` items.
pub fn gather<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    item_len: usize,
    bucket: usize,
    input: &mut Vec<f32>,
) {
    input.clear();
    for row in rows {
        input.extend_from_slice(row);
    }
    input.resize(bucket * item_len, 0.0);
}

/// Runs `rows` (1..=`bucket` inputs of `item_len` values each) as one batch
/// padded with zeros to `bucket`; returns every output for the whole
/// bucket, row-major `[bucket, dims...]`.
///
/// # Errors
/// The engine's error.
pub fn run_rows<'a>(
    engine: &mut dyn Engine,
    rows: impl Iterator<Item = &'a [f32]>,
    bucket: usize,
    input: &mut Vec<f32>,
) -> Result<Vec<Vec<f32>>, EngineError> {
    gather(rows, engine.inputs()[0].item_len(), bucket, input);
    engine.infer(bucket, &[input])
}

/// Runs `items` (1..=`bucket` windows) as one batch padded with zeros to
/// `bucket`, and returns the first output's row for each item, in order.
///
/// # Errors
/// The engine's error; no item is scored then.
pub fn run_batch(
    engine: &mut dyn Engine,
    items: &[WindowItem],
    bucket: usize,
    input: &mut Vec<f32>,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let outputs = run_rows(
        engine,
        items.iter().map(|i| i.values.as_slice()),
        bucket,
        input,
    )?;
    Ok((0..items.len())
        .map(|i| row_of(&outputs[0], bucket, i))
        .collect())
}

/// What an engine instance hands back for the windows of one batch.
#[derive(Debug)]
pub struct BatchResult {
    /// Index of the pipeline (model) in the service.
    pub pipeline: usize,
    /// Each window with its outcome, in batch order.
    pub windows: Vec<(WindowItem, WindowOutcome)>,
}

/// Row `i` of `output` (`[bucket, ...]`).
fn row_of(output: &[f32], bucket: usize, i: usize) -> Vec<f32> {
    let n = output.len() / bucket;
    output[i * n..(i + 1) * n].to_vec()
}

/// Everything a model's engine instances share: where their batches come
/// from and where results, events and statistics go.
#[derive(Debug)]
pub struct EngineContext {
    /// Model name.
    pub name: String,
    /// Index of the pipeline in the service.
    pub pipeline: usize,
    /// The model's batch queue.
    pub handle: BatchHandle<Job>,
    /// Where window results go (blocking when the pipeline task is behind).
    pub results: tokio::sync::mpsc::Sender<BatchResult>,
    /// Where the instances report batches, queue times and failures.
    pub events: Arc<dyn EventSink>,
    /// The model's inference statistics.
    pub stats: Arc<InferStats>,
    /// The engine stage's progress, for the watchdog: one unit per batch.
    pub stage: Stage,
}

/// One engine instance of a model, as the engine worker pool
/// ([`crate::batch::WorkerPool`]) runs it: the engine, its model's context
/// and its own input scratch buffer.
pub struct EngineInstance {
    context: Arc<EngineContext>,
    engine: Box<dyn Engine>,
    input: Vec<f32>,
}

impl std::fmt::Debug for EngineInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInstance")
            .field("model", &self.context.name)
            .field("engine", &self.engine.kind())
            .finish_non_exhaustive()
    }
}

impl EngineInstance {
    /// An instance of `context`'s model on `engine`.
    pub fn new(context: Arc<EngineContext>, engine: Box<dyn Engine>) -> Self {
        Self {
            context,
            engine,
            input: Vec::new(),
        }
    }
}

impl crate::batch::Instance<Job> for EngineInstance {
    /// Runs the batch, sends window results to the pipeline task and
    /// request results to their HTTP or gRPC handlers; false once the
    /// pipeline task is gone (the service is shutting down).
    fn run(&mut self, batch: Batch<Job>) -> bool {
        let _busy = self.context.stage.begin();
        self.context
            .run(self.engine.as_mut(), batch, &mut self.input)
    }
}

impl EngineContext {
    /// Runs one batch and routes its results; false once the pipeline task is gone.
    fn run(&self, engine: &mut dyn Engine, batch: Batch<Job>, input: &mut Vec<f32>) -> bool {
        let Batch { items, bucket } = batch;
        let name = self.name.as_str();
        let n = items.len();
        // Engines whose time grows with the rows run the batch as it is.
        let bucket = if engine.pads_to_bucket() { bucket } else { n };
        self.events.emit(StageEvent::QueueDepth {
            model: name,
            depth: self.handle.depth(),
        });
        let dispatched = Instant::now();
        for job in &items {
            let source = match job.work {
                Work::Window(_) => "telemetry",
                Work::Request(ref r) => r.source.as_str(),
            };
            self.events.emit(StageEvent::QueueWaited {
                model: name,
                source,
                waited: dispatched.saturating_duration_since(job.queued),
            });
        }
        gather(
            items.iter().map(Job::values),
            engine.inputs()[0].item_len(),
            bucket,
            input,
        );
        let gathered = Instant::now();
        let result = engine.infer(bucket, &[input]);
        let inferred = Instant::now();
        let mut timing = Timing {
            queue: Duration::ZERO,
            compute_input: gathered - dispatched,
            compute_infer: inferred - gathered,
            compute_output: Duration::ZERO,
        };
        let mut windows = Vec::new();
        match result {
            Ok(outputs) => {
                // The batcher learns which batch size is worth waiting for.
                let dispatch_size = self.handle.record(bucket, timing.compute_infer);
                self.events.emit(StageEvent::BatchRan {
                    model: name,
                    bucket,
                    infer: timing.compute_infer,
                    dispatch_size,
                });
                for (i, job) in items.into_iter().enumerate() {
                    timing.queue = dispatched.saturating_duration_since(job.queued);
                    timing.compute_output = inferred.elapsed();
                    match job.work {
                        Work::Window(mut item) => {
                            let output = row_of(&outputs[0], bucket, i);
                            let input = std::mem::take(&mut item.values);
                            self.stats.record_success(job.queued.elapsed(), &timing);
                            windows.push((item, WindowOutcome::Output { output, input }));
                        }
                        Work::Request(r) => {
                            let outputs = outputs.iter().map(|o| row_of(o, bucket, i)).collect();
                            let _ = r.reply.send(ItemResult {
                                row: r.row,
                                outputs: Ok(outputs),
                                timing,
                            });
                        }
                    }
                }
                timing.compute_output = inferred.elapsed();
                self.stats.record_execution(bucket, n, &timing);
            }
            Err(e) => {
                self.events.emit(StageEvent::BatchFailed {
                    model: name,
                    items: n,
                    error: &e,
                });
                for job in items {
                    match job.work {
                        Work::Window(item) => {
                            self.stats.record_failure(job.queued.elapsed());
                            windows.push((item, WindowOutcome::Dropped));
                        }
                        Work::Request(r) => {
                            r.fail(job.queued.elapsed(), format!("inference failed: {e}"))
                        }
                    }
                }
            }
        }
        windows.is_empty()
            || self
                .results
                .blocking_send(BatchResult {
                    pipeline: self.pipeline,
                    windows,
                })
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::batch::BatchQueue;
    use crate::engine::TensorSpec;

    /// Records the codes of the events it is sent, and each batch's size.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(&'static str, usize)>>);

    impl EventSink for Recorder {
        fn emit(&self, event: StageEvent<'_>) {
            let size = match event {
                StageEvent::BatchRan { bucket, .. } => bucket,
                _ => 0,
            };
            self.0.lock().unwrap().push((event.code(), size));
        }
    }

    /// Returns each window's first value as its output; records the batch sizes it ran.
    struct Echo {
        pads: bool,
        ran: Arc<Mutex<Vec<usize>>>,
        specs: (Vec<TensorSpec>, Vec<TensorSpec>),
    }

    impl Engine for Echo {
        fn kind(&self) -> crate::engine::EngineKind {
            // A test double; it names itself as the CPU engine it stands in for.
            crate::engine::EngineKind::Tract
        }
        fn pads_to_bucket(&self) -> bool {
            self.pads
        }
        fn inputs(&self) -> &[TensorSpec] {
            &self.specs.0
        }
        fn outputs(&self) -> &[TensorSpec] {
            &self.specs.1
        }
        fn infer(&mut self, batch: usize, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, EngineError> {
            self.ran.lock().unwrap().push(batch);
            Ok(vec![inputs[0].chunks(2).map(|w| w[0]).collect()])
        }
    }

    fn window(channel: u32, value: f32) -> WindowItem {
        WindowItem {
            channel,
            seq: 0,
            end_index: 0,
            end_t_ns: 0,
            received: Instant::now(),
            values: vec![value, 0.0],
        }
    }

    /// Three windows with buckets [1, 4]: padded to 4 for an engine that
    /// wants its buckets, run as 3 for one that does not; outputs line up.
    #[test]
    fn batches_are_padded_only_for_engines_that_want_it() {
        for (pads, want) in [(true, 4), (false, 3)] {
            let events = Arc::new(Recorder::default());
            let handle = BatchHandle::new(BatchQueue::new(16, vec![1, 4], Duration::from_secs(60)));
            let (tx, mut rx) = tokio::sync::mpsc::channel(4);
            let ran = Arc::new(Mutex::new(Vec::new()));
            let engine = Echo {
                pads,
                ran: Arc::clone(&ran),
                specs: (
                    vec![TensorSpec {
                        name: "x".into(),
                        dims: vec![2],
                    }],
                    vec![TensorSpec {
                        name: "y".into(),
                        dims: vec![1],
                    }],
                ),
            };
            for i in 0..3 {
                handle.push(
                    i,
                    Job::window(window(i, 10.0 + i as f32), Instant::now()),
                    Instant::now(),
                );
            }
            handle.close();
            let context = Arc::new(EngineContext {
                name: "m".into(),
                pipeline: 0,
                handle: handle.clone(),
                results: tx,
                events: Arc::clone(&events) as Arc<dyn EventSink>,
                stats: Arc::default(),
                stage: Stage::new("engine"),
            });
            let pool = crate::batch::WorkerPool::start(1);
            pool.add(
                &handle,
                vec![Box::new(EngineInstance::new(context, Box::new(engine)))],
            );
            pool.join();
            assert_eq!(*ran.lock().unwrap(), vec![want]);
            // One depth, one queue time per window, one batch of the size run.
            let seen = events.0.lock().unwrap().clone();
            assert_eq!(
                seen,
                [
                    ("queue_depth", 0),
                    ("queue_waited", 0),
                    ("queue_waited", 0),
                    ("queue_waited", 0),
                    ("batch_ran", want)
                ]
            );
            let result = rx.try_recv().unwrap();
            let outputs: Vec<Vec<f32>> = result
                .windows
                .into_iter()
                .map(|(_, o)| match o {
                    WindowOutcome::Output { output, .. } => output,
                    WindowOutcome::Dropped => panic!("dropped"),
                })
                .collect();
            assert_eq!(outputs, vec![vec![10.0], vec![11.0], vec![12.0]]);
        }
    }
}
