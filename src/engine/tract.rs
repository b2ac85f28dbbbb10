//! The embedded CPU engine, on tract (sonos/tract).
//!
//! The ONNX file is loaded once, its input fact set to `[N, dims...]` with
//! a symbolic batch dimension `N`, optimised once, and made runnable once
//! (load → optimise → runnable, as tract's own examples do). Each batch runs
//! on a fresh state: a tract state is a *stream* and carries the recurrent
//! state of a Scan (what an ONNX LSTM becomes) from one run into the next,
//! whereas every batch of windows here is independent.
//!
//! With [`TractEngine::load_for_batches`] (what the service does, with the
//! model's buckets) each bucket also gets a plan optimised for its concrete
//! batch size, which tract's optimiser can specialise further (1.7–2× on
//! the LSTM and Transformer forecasters, BENCHMARKS.md) but not always to
//! advantage (0.8× on the VAE at batch 1). So both plans are timed once at
//! load on the same window pattern and the faster is kept for that bucket:
//! like a TensorRT builder choosing tactics, by measurement on the box.
//!
//! That tuning is most of a model's load time (about 2 core-seconds for
//! the LSTM forecaster: 7 buckets, each optimised and timed), which is what
//! made start-up grow with the number of models. [`TractEngine::load_tuned_later`]
//! (what the service does) makes the symbolic plan only, so the model is
//! ready as soon as it parses and optimises once, and hands the per-bucket
//! tuning to one background thread at the lowest CPU priority (`nice` 19),
//! which swaps each faster plan in as it is found: telemetry is served
//! from the start, a little slower until the tuner has passed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use super::{check_inputs, Engine, EngineError, TensorSpec};

type Plan = Arc<TypedSimplePlan>;

/// Batch sizes whose own plan timed faster than the symbolic one; shared
/// with the background tuner, which fills it in.
type Concrete = Arc<RwLock<HashMap<usize, Plan>>>;

/// A tract engine for one ONNX model with one `f32` input.
pub struct TractEngine {
    /// The plan for any batch size (symbolic `N`).
    plan: Plan,
    /// Batch sizes whose own plan timed faster than the symbolic one.
    concrete: Concrete,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEngine")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl TractEngine {
    /// Loads and optimises the ONNX model at `path`, whose single input is
    /// `input` (named, per-item dims without the batch dimension) and whose
    /// outputs are `outputs` (names; per-item dims are read from the model).
    ///
    /// # Errors
    /// [`EngineError::Load`] naming the file and tract's chain of causes.
    pub fn load(path: &Path, input: &TensorSpec, outputs: &[String]) -> Result<Self, EngineError> {
        Self::load_for_batches(path, input, outputs, &[])
    }

    /// [`TractEngine::load`], then for each size in `batches` a plan
    /// optimised for that concrete batch, kept where it runs faster than
    /// the symbolic plan (module docs). Loading takes longer: two plans per
    /// size are built and each is timed on a few batches.
    ///
    /// # Errors
    /// As [`TractEngine::load`].
    pub fn load_for_batches(
        path: &Path,
        input: &TensorSpec,
        outputs: &[String],
        batches: &[usize],
    ) -> Result<Self, EngineError> {
        let (engine, source) = Self::load_symbolic(path, input, outputs)?;
        tune(&TuneJob {
            path: path.to_path_buf(),
            source,
            dims: input.dims.clone(),
            batches: batches.to_vec(),
            symbolic: Arc::clone(&engine.plan),
            concrete: Arc::downgrade(&engine.concrete),
        })
        .map_err(|e| EngineError::Load {
            path: path.display().to_string(),
            reason: format!("{e:#}"),
        })?;
        Ok(engine)
    }

    /// [`TractEngine::load`] now; the per-bucket plans of
    /// [`TractEngine::load_for_batches`] are made and timed later by the
    /// background tuner (module docs), which swaps in those that run faster.
    /// A bucket's plan that tract cannot make is logged and left out: the
    /// symbolic plan runs that bucket.
    ///
    /// # Errors
    /// As [`TractEngine::load`].
    pub fn load_tuned_later(
        path: &Path,
        input: &TensorSpec,
        outputs: &[String],
        batches: &[usize],
    ) -> Result<Self, EngineError> {
        let (engine, source) = Self::load_symbolic(path, input, outputs)?;
        if !batches.is_empty() {
            tuner().submit(TuneJob {
                path: path.to_path_buf(),
                source,
                dims: input.dims.clone(),
                batches: batches.to_vec(),
                symbolic: Arc::clone(&engine.plan),
                concrete: Arc::downgrade(&engine.concrete),
            });
        }
        Ok(engine)
    }

    /// The engine on its symbolic plan, and the parsed model to tune from.
    fn load_symbolic(
        path: &Path,
        input: &TensorSpec,
        outputs: &[String],
    ) -> Result<(Self, InferenceModel), EngineError> {
        let fail = |e: TractError| EngineError::Load {
            path: path.display().to_string(),
            reason: format!("{e:#}"),
        };
        let source = tract_onnx::onnx().model_for_path(path).map_err(fail)?;
        let mut model = source.clone();
        let batch = model.symbols.sym("N");
        let mut shape: TVec<TDim> = tvec![batch.into()];
        shape.extend(input.dims.iter().map(|d| TDim::from(*d as i64)));
        model = model
            .with_input_fact(0, f32::fact(shape).into())
            .map_err(fail)?;
        let typed = model.into_optimized().map_err(fail)?;
        let mut specs = Vec::new();
        for (ix, outlet) in typed.output_outlets().map_err(fail)?.iter().enumerate() {
            let fact = typed.outlet_fact(*outlet).map_err(fail)?;
            let dims = fact
                .shape
                .iter()
                .skip(1)
                .map(|d| d.to_i64().map(|v| v as usize))
                .collect::<Result<Vec<_>, _>>();
            let dims = dims.map_err(|_| EngineError::Load {
                path: path.display().to_string(),
                reason: format!(
                    "output {ix} has a dimension other than the batch that is not fixed ({:?})",
                    fact.shape
                ),
            })?;
            let name = outputs
                .get(ix)
                .cloned()
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            specs.push(TensorSpec { name, dims });
        }
        let plan = typed.into_runnable().map_err(fail)?;
        let engine = Self {
            plan,
            concrete: Arc::default(),
            inputs: vec![input.clone()],
            outputs: specs,
        };
        Ok((engine, source))
    }

    /// Batch sizes that run on a plan of their own.
    pub fn concrete_batches(&self) -> Vec<usize> {
        let concrete = self.concrete.read().unwrap_or_else(|e| e.into_inner());
        let mut b: Vec<usize> = concrete.keys().copied().collect();
        b.sort_unstable();
        b
    }
}

/// One model's per-bucket tuning.
struct TuneJob {
    path: PathBuf,
    source: InferenceModel,
    /// Per-item input dims.
    dims: Vec<usize>,
    batches: Vec<usize>,
    symbolic: Plan,
    /// Gone when the engine was dropped: the job is skipped.
    concrete: Weak<RwLock<HashMap<usize, Plan>>>,
}

/// Makes and times `job`'s plan for each of its batch sizes and keeps
/// those faster than the symbolic plan.
fn tune(job: &TuneJob) -> TractResult<()> {
    for &b in &job.batches {
        let Some(concrete) = job.concrete.upgrade() else {
            return Ok(()); // the engine is gone
        };
        let mut shape = vec![b];
        shape.extend(&job.dims);
        let plan = job
            .source
            .clone()
            .with_input_fact(0, f32::fact(&shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())?;
        let item: usize = job.dims.iter().product();
        let window: Vec<f32> = (0..b * item)
            .map(|i| ((i % 97) as f32 / 48.5) - 1.0)
            .collect();
        let tensor = Tensor::from_shape(&shape, &window)?;
        let own = time_runs(|| plan.run(tvec![tensor.clone().into()]).map(drop))?;
        let symbolic = time_runs(|| job.symbolic.run(tvec![tensor.clone().into()]).map(drop))?;
        log::debug!(target: "gsinfer::engine", "tract {}: batch {b}: own plan {own:?}, symbolic {symbolic:?}", job.path.display());
        if own < symbolic {
            concrete
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(b, plan);
        }
    }
    Ok(())
}

/// The background tuner: one thread, started on first use, at the lowest
/// CPU priority, working through the jobs in the order models loaded.
struct Tuner {
    jobs: Mutex<Sender<TuneJob>>,
    /// Jobs submitted and not yet finished.
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl Tuner {
    fn submit(&self, job: TuneJob) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job);
    }
}

/// Jobs the background tuner has not finished (submitted by
/// [`TractEngine::load_tuned_later`]).
pub fn tuning_pending() -> usize {
    tuner().pending.load(std::sync::atomic::Ordering::SeqCst)
}

fn tuner() -> &'static Tuner {
    static TUNER: OnceLock<Tuner> = OnceLock::new();
    TUNER.get_or_init(|| {
        let (tx, rx) = channel::<TuneJob>();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("tract-tuner".into())
            .spawn(move || {
                if let Err(e) = crate::background::lower_this_thread(19) {
                    log::debug!(target: "gsinfer::engine", "tract tuner keeps its priority: {e}");
                }
                for job in rx {
                    let started = Instant::now();
                    match tune(&job) {
                        Ok(()) => log::debug!(target: "gsinfer::engine", "tract {}: buckets tuned in {:.1?}", job.path.display(), started.elapsed()),
                        Err(e) => log::warn!(target: "gsinfer::engine", "tract {}: a bucket's own plan could not be made ({e:#}); the symbolic plan runs it", job.path.display()),
                    }
                    done.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .expect("spawn the tract tuner");
        Tuner {
            jobs: Mutex::new(tx),
            pending,
        }
    })
}

/// The fastest of 3 timed runs of `run`, after one warm-up run.
fn time_runs(mut run: impl FnMut() -> TractResult<()>) -> TractResult<Duration> {
    run()?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        run()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

impl Engine for TractEngine {
    fn kind(&self) -> super::EngineKind {
        super::EngineKind::Tract
    }

    fn detail(&self) -> String {
        format!(
            "tract, 1 thread, own plans for batches {:?}",
            self.concrete_batches()
        )
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&mut self, batch: usize, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        check_inputs(&self.inputs, batch, inputs)?;
        let mut shape = vec![batch];
        shape.extend(&self.inputs[0].dims);
        let tensor = Tensor::from_shape(&shape, inputs[0])
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        let plan = self
            .concrete
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&batch)
            .map_or_else(|| Arc::clone(&self.plan), Arc::clone);
        // A fresh state per run (module docs): `plan.run` spawns one.
        let outputs = plan
            .run(tvec![tensor.into()])
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        outputs
            .iter()
            .map(|t| {
                t.try_as_plain_ram()
                    .and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec()))
                    .map_err(|e| EngineError::Run(format!("output is not plain f32: {e:#}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example LSTM's input: 250 samples × 25 features.
    fn window() -> TensorSpec {
        TensorSpec {
            name: "window".into(),
            dims: vec![250, 25],
        }
    }

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository/smap_lstm/1/model.onnx")
    }

    #[test]
    fn example_model_runs_any_batch_with_consistent_rows() {
        let input = window();
        let mut engine = TractEngine::load(&example(), &input, &["forecast".into()]).unwrap();
        assert_eq!(engine.outputs()[0].dims, vec![10]);
        let one: Vec<f32> = (0..250 * 25)
            .map(|i| ((i % 97) as f32 / 97.0) - 0.5)
            .collect();
        let single = engine.infer(1, &[&one]).unwrap().remove(0);
        assert_eq!(single.len(), 10);
        let mut three = one.clone();
        three.extend(std::iter::repeat_n(0.0, 250 * 25));
        three.extend(&one);
        let batched = engine.infer(3, &[&three]).unwrap().remove(0);
        assert_eq!(batched.len(), 30);
        for k in 0..10 {
            assert!((batched[k] - single[k]).abs() < 1e-4);
            assert!((batched[20 + k] - single[k]).abs() < 1e-4);
        }
    }

    /// `b` windows of the example model, a repeating ramp in [-0.5, 0.5).
    fn ramp(b: usize) -> Vec<f32> {
        (0..b * 250 * 25)
            .map(|i| ((i % 89) as f32 / 89.0) - 0.5)
            .collect()
    }

    #[test]
    fn per_batch_plans_give_the_symbolic_plans_results() {
        let input = window();
        let outputs = ["forecast".to_string()];
        let mut plain = TractEngine::load(&example(), &input, &outputs).unwrap();
        let mut tuned =
            TractEngine::load_for_batches(&example(), &input, &outputs, &[1, 4]).unwrap();
        assert!(plain.concrete_batches().is_empty());
        for b in [1, 3, 4] {
            let x = ramp(b);
            let want = plain.infer(b, &[&x]).unwrap();
            let got = tuned.infer(b, &[&x]).unwrap();
            for (g, w) in got[0].iter().zip(&want[0]) {
                assert!((g - w).abs() < 1e-4, "batch {b}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn plans_tuned_later_give_the_same_results_before_and_after_tuning() {
        let input = window();
        let outputs = ["forecast".to_string()];
        let mut plain = TractEngine::load(&example(), &input, &outputs).unwrap();
        let mut later =
            TractEngine::load_tuned_later(&example(), &input, &outputs, &[1, 4]).unwrap();
        let x = ramp(4);
        let want = plain.infer(4, &[&x]).unwrap();
        // Served at once, whatever the tuner has done so far.
        let before = later.infer(4, &[&x]).unwrap();
        let waited = Instant::now();
        while tuning_pending() > 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(300),
                "the tuner never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = later.infer(4, &[&x]).unwrap();
        for got in [&before, &after] {
            for (g, w) in got[0].iter().zip(&want[0]) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
        }
    }

    /// A tract state is a stream: reusing one carried the LSTM's hidden
    /// state from one batch into the next.
    #[test]
    fn a_window_gives_the_same_forecast_every_time() {
        let input = window();
        let outputs = ["forecast".to_string()];
        let x = ramp(1);
        let mut engine = TractEngine::load_for_batches(&example(), &input, &outputs, &[1]).unwrap();
        let first = engine.infer(1, &[&x]).unwrap();
        for _ in 0..3 {
            assert_eq!(engine.infer(1, &[&x]).unwrap(), first);
        }
    }

    #[test]
    fn wrong_input_length_is_an_error() {
        let input = window();
        let mut engine = TractEngine::load(&example(), &input, &["forecast".into()]).unwrap();
        let err = engine.infer(2, &[&[0.0; 10]]).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InputShape {
                    expected: 12500,
                    got: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let input = TensorSpec {
            name: "x".into(),
            dims: vec![1],
        };
        let err = TractEngine::load(Path::new("/nonexistent/model.onnx"), &input, &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/model.onnx"), "{err}");
    }
}
