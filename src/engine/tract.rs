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

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use super::{check_inputs, Engine, EngineError, TensorSpec};

type Plan = Arc<TypedSimplePlan>;

/// A tract engine for one ONNX model with one `f32` input.
pub struct TractEngine {
    /// The plan for any batch size (symbolic `N`).
    plan: Plan,
    /// Batch sizes whose own plan timed faster than the symbolic one.
    concrete: HashMap<usize, Plan>,
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
        let mut engine = Self {
            plan,
            concrete: HashMap::new(),
            inputs: vec![input.clone()],
            outputs: specs,
        };
        for &b in batches {
            let mut shape = vec![b];
            shape.extend(&input.dims);
            let plan = source
                .clone()
                .with_input_fact(0, f32::fact(&shape).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(fail)?;
            let window: Vec<f32> = (0..b * input.item_len())
                .map(|i| ((i % 97) as f32 / 48.5) - 1.0)
                .collect();
            let tensor = Tensor::from_shape(&shape, &window).map_err(fail)?;
            let concrete =
                time_runs(|| plan.run(tvec![tensor.clone().into()]).map(drop)).map_err(fail)?;
            let symbolic = time_runs(|| engine.plan.run(tvec![tensor.clone().into()]).map(drop))
                .map_err(fail)?;
            log::debug!(target: "gsinfer::engine", "tract {}: batch {b}: own plan {concrete:?}, symbolic {symbolic:?}", path.display());
            if concrete < symbolic {
                engine.concrete.insert(b, plan);
            }
        }
        Ok(engine)
    }

    /// Batch sizes that run on a plan of their own.
    pub fn concrete_batches(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.concrete.keys().copied().collect();
        b.sort_unstable();
        b
    }
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
        let plan = self.concrete.get(&batch).unwrap_or(&self.plan);
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

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository/smap_lstm/1/model.onnx")
    }

    #[test]
    fn example_model_runs_any_batch_with_consistent_rows() {
        let input = TensorSpec {
            name: "window".into(),
            dims: vec![250, 25],
        };
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

    #[test]
    fn per_batch_plans_give_the_symbolic_plans_results() {
        let input = TensorSpec {
            name: "window".into(),
            dims: vec![250, 25],
        };
        let outputs = ["forecast".to_string()];
        let mut plain = TractEngine::load(&example(), &input, &outputs).unwrap();
        let mut tuned =
            TractEngine::load_for_batches(&example(), &input, &outputs, &[1, 4]).unwrap();
        assert!(plain.concrete_batches().is_empty());
        for b in [1, 3, 4] {
            let x: Vec<f32> = (0..b * 250 * 25)
                .map(|i| ((i % 89) as f32 / 89.0) - 0.5)
                .collect();
            let want = plain.infer(b, &[&x]).unwrap();
            let got = tuned.infer(b, &[&x]).unwrap();
            for (g, w) in got[0].iter().zip(&want[0]) {
                assert!((g - w).abs() < 1e-4, "batch {b}: {g} vs {w}");
            }
        }
    }

    /// A tract state is a stream: reusing one carried the LSTM's hidden
    /// state from one batch into the next.
    #[test]
    fn a_window_gives_the_same_forecast_every_time() {
        let input = TensorSpec {
            name: "window".into(),
            dims: vec![250, 25],
        };
        let outputs = ["forecast".to_string()];
        let x: Vec<f32> = (0..250 * 25)
            .map(|i| ((i % 89) as f32 / 89.0) - 0.5)
            .collect();
        let mut engine = TractEngine::load_for_batches(&example(), &input, &outputs, &[1]).unwrap();
        let first = engine.infer(1, &[&x]).unwrap();
        for _ in 0..3 {
            assert_eq!(engine.infer(1, &[&x]).unwrap(), first);
        }
    }

    #[test]
    fn wrong_input_length_is_an_error() {
        let input = TensorSpec {
            name: "window".into(),
            dims: vec![250, 25],
        };
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
