//! `gsinfer selftest`: run on a box with a GPU to check that TensorRT
//! gives the same answers as tract and to see what each costs.
//!
//! For each model its config runs on TensorRT, the plan is built (or
//! loaded) as `gsinfer run` would, and every batch bucket runs the same
//! seeded random inputs through TensorRT and through tract on the ONNX
//! file; the report gives per model and bucket the maximum absolute and
//! relative difference and the median time per batch of each. With
//! `--cuda`, only the CUDA layer is checked (pinned staging, asynchronous
//! copies, CUDA-graph capture and replay), which needs a GPU but not
//! TensorRT.

#[cfg(feature = "tensorrt")]
use std::fmt::Write as _;

use anyhow::Result;

use crate::config::Config;

/// Relative differences are taken against `max(|tract|, REL_FLOOR)`, so
/// values near zero do not blow them up.
pub const REL_FLOOR: f32 = 1e-3;

/// Maximum absolute and relative difference of `a` against the reference
/// `b` (same length).
pub fn max_errors(a: &[f32], b: &[f32]) -> (f32, f32) {
    a.iter()
        .zip(b)
        .fold((0.0f32, 0.0f32), |(abs, rel), (x, y)| {
            let d = (x - y).abs();
            (abs.max(d), rel.max(d / y.abs().max(REL_FLOOR)))
        })
}

/// Median of `times` (seconds), in ms.
#[cfg_attr(not(feature = "tensorrt"), allow(dead_code))]
fn median_ms(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0) * 1e3
}

/// Runs the self-test; returns the report and whether everything passed
/// (`tolerance`: the largest acceptable relative difference).
///
/// # Errors
/// Configuration or repository problems; TensorRT or CUDA failures are
/// reported per model in the text, not as errors.
pub fn run(config: &Config, cuda_only: bool, tolerance: f32) -> Result<(String, bool)> {
    #[cfg(feature = "tensorrt")]
    {
        if cuda_only {
            return cuda_report(config.tensorrt.device);
        }
        trt::run(config, tolerance)
    }
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = (config, cuda_only, tolerance);
        Ok((
            "this gsinfer was built without the `tensorrt` feature: nothing to test; build with `cargo build --release --features tensorrt`\n".into(),
            false,
        ))
    }
}

/// The CUDA layer's check on device `ordinal` (what `--cuda` prints): the
/// reference forecaster's shapes (`[b, 250, 25]` in, `[b, 10]` out) at
/// buckets 1, 4, 16, 64, each value checked and each path timed.
///
/// # Errors
/// No GPU or a CUDA failure.
#[cfg(feature = "tensorrt")]
pub fn cuda_report(ordinal: usize) -> Result<(String, bool)> {
    use crate::engine::tensorrt::cuda::{staging_selftest, Gpu};
    let gpu = Gpu::open(ordinal)?;
    let info = gpu.info()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device {}: {} (sm {}.{}, {:.1} GiB, driver {}.{})",
        info.ordinal,
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.total_memory as f64 / (1u64 << 30) as f64,
        info.driver_version / 1000,
        (info.driver_version % 1000) / 10
    );
    let checks = staging_selftest(&gpu, &[1, 4, 16, 64], 250 * 25, 10, 200)?;
    let _ = writeln!(out, "bucket  values  stream calls µs  CUDA graph µs");
    let mut ok = true;
    for c in &checks {
        ok &= c.exact;
        let _ = writeln!(
            out,
            "{:>6}  {:<6}  {:>15.1}  {:>13.1}",
            c.batch,
            if c.exact { "exact" } else { "WRONG" },
            c.us_plain,
            c.us_graph
        );
    }
    Ok((out, ok))
}

#[cfg(feature = "tensorrt")]
mod trt {
    use super::*;
    use crate::engine::plans::{onnx_fallback, wanted, EngineSet, Wanted};
    use crate::engine::prepare::{open_engine, prepare};
    use crate::repository::{ModelRepository, Platform};
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    pub(super) fn run(config: &Config, tolerance: f32) -> Result<(String, bool)> {
        let repo = ModelRepository::open(&config.repository.path)?;
        let mut set = EngineSet::new(&config.tensorrt);
        let mut out = String::new();
        let mut ok = true;
        let mut seen = std::collections::BTreeSet::new();
        let _ = writeln!(
            out,
            "model  bucket  max abs err  max rel err  TensorRT ms/batch  tract ms/batch  verdict"
        );
        for p in &config.pipelines {
            if !seen.insert(p.model.clone()) {
                continue;
            }
            let model = prepare(&repo, p)?;
            if wanted(&model) == Wanted::Tract {
                let _ = writeln!(
                    out,
                    "{}: runs on tract (no TensorRT accelerator in config.pbtxt); skipped",
                    p.model
                );
                continue;
            }
            let cpu = crate::engine::plans::CpuEngine {
                choice: crate::engine::EngineChoice::Tract,
                settings: &config.engine,
            };
            let opened = match set.open(&model, 1, true, &|_| {}, cpu) {
                Ok(o) if o.kind == crate::engine::EngineKind::TensorRt => o,
                Ok(o) => {
                    ok = false;
                    let _ = writeln!(out, "{}: FAILED: {}", p.model, o.note.unwrap_or_default());
                    continue;
                }
                Err(e) => {
                    ok = false;
                    let _ = writeln!(out, "{}: FAILED: {e}", p.model);
                    continue;
                }
            };
            let Some(onnx) = onnx_fallback(&model) else {
                let _ = writeln!(out, "{}: no ONNX file to compare against; skipped", p.model);
                continue;
            };
            let mut reference = model.clone();
            reference.entry.model_path = onnx;
            reference.entry.config.platform = Platform::OnnxRuntimeOnnx;
            let mut tract = open_engine(
                &reference,
                crate::engine::EngineChoice::Tract,
                &config.engine,
            )?;
            let mut trt = opened.engines.into_iter().next().expect("one instance");
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for &b in &model.buckets {
                let input: Vec<f32> = (0..b * model.input.item_len())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let (mut t_trt, mut t_tract) = (Vec::new(), Vec::new());
                let mut outs = (Vec::new(), Vec::new());
                for _ in 0..5 {
                    let t = Instant::now();
                    outs.0 = trt.infer(b, &[&input])?;
                    t_trt.push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    outs.1 = tract.infer(b, &[&input])?;
                    t_tract.push(t.elapsed().as_secs_f64());
                }
                let (abs, rel) = outs
                    .0
                    .iter()
                    .zip(&outs.1)
                    .map(|(a, b)| max_errors(a, b))
                    .fold((0.0f32, 0.0f32), |x, y| (x.0.max(y.0), x.1.max(y.1)));
                let pass = rel <= tolerance;
                ok &= pass;
                let _ = writeln!(
                    out,
                    "{}  {b:>6}  {abs:>11.2e}  {rel:>11.2e}  {:>17.3}  {:>14.3}  {}",
                    p.model,
                    median_ms(&mut t_trt),
                    median_ms(&mut t_tract),
                    if pass { "ok" } else { "DIFFERS" }
                );
            }
        }
        Ok((out, ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_absolute_and_relative_to_the_reference() {
        let (abs, rel) = max_errors(&[1.0, 2.1, 0.0005], &[1.0, 2.0, 0.0]);
        assert!((abs - 0.1).abs() < 1e-6);
        // 0.1 / 2.0 = 0.05; 0.0005 / REL_FLOOR = 0.5.
        assert!((rel - 0.5).abs() < 1e-6, "{rel}");
        assert_eq!(median_ms(&mut [0.003, 0.001, 0.002]), 2.0);
    }
}
