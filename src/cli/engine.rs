//! `gsinfer engine build` and `gsinfer engine inspect`: the engine cache
//! seen and refreshed by an operator (or by
//! `gsinfer-engine-rebuild.service`).

use std::fmt::Write as _;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::config::{Config, PipelineConfig};
use crate::engine::cache::Lookup;
use crate::engine::plans::{wanted, EngineSet, Wanted};
use crate::engine::prepare::{prepare, PreparedModel};
use crate::repository::ModelRepository;

/// The pipelines' models, or only `model` when given.
fn models<'a>(config: &'a Config, model: Option<&str>) -> Result<Vec<&'a PipelineConfig>> {
    let all: Vec<&PipelineConfig> = config
        .pipelines
        .iter()
        .filter(|p| model.is_none_or(|m| p.model == m))
        .collect();
    if all.is_empty() {
        bail!(
            "no [[pipeline]] serves model {}; the configured models are {:?}",
            model.unwrap_or("?"),
            config
                .pipelines
                .iter()
                .map(|p| &p.model)
                .collect::<Vec<_>>()
        );
    }
    // One entry per model name: several pipelines may share a model.
    let mut seen = std::collections::BTreeSet::new();
    Ok(all.into_iter().filter(|p| seen.insert(&p.model)).collect())
}

fn prepared(config: &Config, p: &PipelineConfig) -> Result<PreparedModel> {
    let repo = ModelRepository::open(&config.repository.path).context("model repository")?;
    Ok(prepare(&repo, p)?)
}

/// Progress of one build on a terminal (an indicatif bar) or, under
/// systemd, as log lines every 10 % and `STATUS=` notifications.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    model: String,
    last_decile: Mutex<i32>,
}

impl Reporter {
    fn new(model: &str) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(100);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos:>3} %",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(model.to_string());
            bar
        });
        Self {
            bar,
            model: model.to_string(),
            last_decile: Mutex::new(-1),
        }
    }

    fn report(&self, done: f32) {
        let pct = (done * 100.0).round() as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(pct);
            return;
        }
        let decile = (done * 10.0) as i32;
        let mut last = self.last_decile.lock().unwrap_or_else(|p| p.into_inner());
        if decile > *last {
            *last = decile;
            log::info!(target: "gsinfer::engine", "model {}: building the TensorRT engine: {pct} %", self.model);
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                "building the TensorRT engine of {}: {pct} %",
                self.model
            ))]);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `gsinfer engine build [--model m] [--force]`: builds every stale,
/// missing or corrupt plan (all of them with `force`). Returns the number
/// of models whose build failed; prints one line per model.
///
/// # Errors
/// An unknown model or an unreadable repository.
pub fn build(config: &Config, model: Option<&str>, force: bool) -> Result<usize> {
    let mut set = EngineSet::new(&config.tensorrt);
    let mut failed = 0;
    for p in models(config, model)? {
        let m = prepared(config, p)?;
        if !matches!(wanted(&m), Wanted::TensorRtFromOnnx { .. }) {
            println!(
                "{}: nothing to build (runs on tract; config.pbtxt names no TensorRT accelerator)",
                p.model
            );
            continue;
        }
        let reporter = Reporter::new(&p.model);
        let outcome = set.build(&m, force, &|d| reporter.report(d));
        reporter.finish();
        match outcome {
            Ok(done) => println!(
                "{}: {done} ({})",
                p.model,
                set.cache()
                    .plan_path(&m.entry.name, m.entry.version)
                    .display()
            ),
            Err(e) => {
                failed += 1;
                println!("{}: cannot build: {e}", p.model);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("engine build finished")]);
    Ok(failed)
}

/// `gsinfer engine inspect [--model m]`: per model, the engine its config
/// asks for, the cache state against this box, the manifest's key, and —
/// where TensorRT runs — the plan's I/O tensors and layers.
///
/// # Errors
/// An unknown model or an unreadable repository.
pub fn inspect(config: &Config, model: Option<&str>) -> Result<String> {
    let mut set = EngineSet::new(&config.tensorrt);
    let mut out = String::new();
    for p in models(config, model)? {
        let m = prepared(config, p)?;
        let w = wanted(&m);
        let _ = writeln!(out, "model {} version {}", m.entry.name, m.entry.version);
        let _ = writeln!(out, "  file:      {}", m.entry.model_path.display());
        let _ = writeln!(
            out,
            "  input:     {} [batch, {}] FP32; buckets {:?}; instances {}",
            m.input.name,
            m.input
                .dims
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            m.buckets,
            m.instances
        );
        let engine = match &w {
            Wanted::Tract => "tract (CPU)".to_string(),
            Wanted::TensorRtPlan => "TensorRT, the repository's plan".to_string(),
            Wanted::TensorRtFromOnnx { fp16, .. } => format!(
                "TensorRT, built here from ONNX ({})",
                if *fp16 { "FP16" } else { "FP32" }
            ),
        };
        let _ = writeln!(out, "  engine:    {engine}");
        if !matches!(w, Wanted::TensorRtFromOnnx { .. }) {
            continue;
        }
        let state = set.state(&m);
        let _ = writeln!(
            out,
            "  plan:      {} — {}",
            set.cache()
                .plan_path(&m.entry.name, m.entry.version)
                .display(),
            state.lookup
        );
        if let Some(why) = &state.unavailable {
            let _ = writeln!(out, "  this box:  TensorRT unusable: {why}");
        }
        if let Some(manifest) = set.cache().manifest(&m.entry.name, m.entry.version) {
            let k = &manifest.key;
            let _ = writeln!(
                out,
                "  built for: TensorRT {}, {} (sm {}.{}), {}, ONNX sha256 {}…",
                k.device.tensorrt,
                k.device.gpu,
                k.device.compute_capability.0,
                k.device.compute_capability.1,
                if k.fp16 { "FP16" } else { "FP32" },
                &k.onnx_sha256[..12.min(k.onnx_sha256.len())]
            );
            for prof in &k.profiles {
                let _ = writeln!(
                    out,
                    "  profile:   {} min {:?} opt {:?} max {:?}",
                    prof.input, prof.min, prof.opt, prof.max
                );
            }
            let _ = writeln!(
                out,
                "  built at:  {} in {:.1} s by gsinfer {}; {} bytes",
                manifest.built_at,
                manifest.build_seconds,
                manifest.gsinfer_version,
                manifest.plan_bytes
            );
        }
        if let Some(want) = &state.want {
            let _ = writeln!(
                out,
                "  this box:  TensorRT {}, {} (sm {}.{})",
                want.device.tensorrt,
                want.device.gpu,
                want.device.compute_capability.0,
                want.device.compute_capability.1
            );
        }
        #[cfg(feature = "tensorrt")]
        if let Lookup::Fresh { plan, .. } = &state.lookup {
            match layers(&config.tensorrt, plan) {
                Ok(text) => out.push_str(&text),
                Err(e) => {
                    let _ = writeln!(out, "  layers:    cannot inspect the plan: {e}");
                }
            }
        }
        #[cfg(not(feature = "tensorrt"))]
        if let Lookup::Fresh { .. } = &state.lookup {
            let _ = writeln!(out, "  layers:    need a build with the `tensorrt` feature");
        }
    }
    Ok(out)
}

/// The plan's I/O tensors and the engine inspector's layer information.
#[cfg(feature = "tensorrt")]
fn layers(config: &crate::engine::config::TensorRtConfig, plan: &[u8]) -> Result<String> {
    use crate::engine::tensorrt::{cuda::Gpu, runtime::SharedPlan};
    let gpu = Gpu::open(config.device)?;
    let plan = SharedPlan::deserialize(&gpu, plan)?;
    let mut out = String::new();
    for (name, is_input, shape) in plan.io()? {
        let _ = writeln!(
            out,
            "  {}: {name} {shape:?} FP32",
            if is_input { "input " } else { "output" }
        );
    }
    let info = plan.inspect()?;
    let _ = writeln!(out, "  layers (engine inspector, JSON):");
    for line in info.lines() {
        let _ = writeln!(out, "    {line}");
    }
    Ok(out)
}
