//! TensorRT as a [`PlanBackend`]: the platform probed once, plans built
//! by TensorRT's builder and deserialized once per model version, shared
//! by all its instances.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::cuda::Gpu;
use super::runtime::SharedPlan;
use super::{BuildProgress, BuildRequest, Platform, TrtEngine, TrtError};
use crate::engine::cache::{DeviceKey, EngineKey};
use crate::engine::config::TensorRtConfig;
use crate::engine::plans::{PlanBackend, Progress};
use crate::engine::prepare::PreparedModel;
use crate::engine::Engine;

/// The TensorRT plan backend of one process.
pub struct TensorRtPlans {
    config: TensorRtConfig,
    /// The probe's outcome, on first use.
    platform: Option<Result<Platform, String>>,
    /// Deserialized plans by (model, version).
    plans: HashMap<(String, u64), Arc<SharedPlan>>,
}

impl TensorRtPlans {
    /// A backend for `config`'s libraries and device; nothing is probed
    /// until the first call.
    pub fn new(config: &TensorRtConfig) -> Self {
        Self {
            config: config.clone(),
            platform: None,
            plans: HashMap::new(),
        }
    }

    fn platform(&mut self) -> Result<&Platform, String> {
        let config = &self.config;
        self.platform
            .get_or_insert_with(|| {
                let libs = super::Libraries {
                    nvinfer: config.library.clone(),
                    onnxparser: config.onnxparser_library.clone(),
                };
                super::probe(&libs, config.device, true).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn gpu(&mut self) -> Result<(Platform, Gpu), String> {
        let platform = self.platform()?.clone();
        let gpu = Gpu::open(platform.device.ordinal).map_err(|e| e.to_string())?;
        Ok((platform, gpu))
    }
}

/// Forwards the builder's fractions to the thread that waits for it.
struct ToChannel(std::sync::mpsc::Sender<f32>);

impl BuildProgress for ToChannel {
    fn phase(&self, name: &str, parent: Option<&str>, steps: i32) {
        log::debug!(target: "gsinfer::engine", "builder phase {name} ({steps} steps){}",
            parent.map(|p| format!(" in {p}")).unwrap_or_default());
    }
    fn fraction(&self, done: f32) {
        let _ = self.0.send(done);
    }
}

impl PlanBackend for TensorRtPlans {
    fn device_key(&mut self) -> Result<DeviceKey, String> {
        self.platform().map(Platform::device_key)
    }

    fn usable(&mut self) -> Result<(), String> {
        self.gpu().map(|_| ())
    }

    fn build(
        &mut self,
        onnx: &Path,
        key: &EngineKey,
        workspace_bytes: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, String> {
        let (platform, gpu) = self.gpu()?;
        let request = BuildRequest {
            onnx: onnx.to_path_buf(),
            key: key.clone(),
            workspace_bytes,
            tensorrt_major: platform
                .tensorrt
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0),
        };
        // The build runs on its own thread so that this one can hand its
        // progress to `progress` as it comes.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let builder = s.spawn(move || {
                gpu.bind()?;
                super::build_plan(&request, Arc::new(ToChannel(tx)))
            });
            for done in rx {
                progress(done);
            }
            builder.join().unwrap_or_else(|_| {
                Err(TrtError::Model("the engine builder thread panicked".into()))
            })
        })
        .map_err(|e| e.to_string())
    }

    fn load(&mut self, model: &PreparedModel, plan: &[u8]) -> Result<(), String> {
        let (_, gpu) = self.gpu()?;
        let plan = SharedPlan::deserialize(&gpu, plan).map_err(|e| e.to_string())?;
        self.plans
            .insert((model.entry.name.clone(), model.entry.version), plan);
        Ok(())
    }

    fn loaded(&self, name: &str, version: u64) -> bool {
        self.plans.contains_key(&(name.to_string(), version))
    }

    fn forget(&mut self, name: &str, version: u64) {
        self.plans.remove(&(name.to_string(), version));
    }

    fn instances(
        &mut self,
        model: &PreparedModel,
        instances: usize,
    ) -> Result<(Vec<Box<dyn Engine>>, String), String> {
        let (platform, _) = self.gpu()?;
        let key = (model.entry.name.clone(), model.entry.version);
        let plan = self
            .plans
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("no plan is loaded for model {}", model.entry.name))?;
        let outputs = model.output_names();
        let engines = (0..instances)
            .map(|_| {
                TrtEngine::new(
                    Arc::clone(&plan),
                    &model.input,
                    &outputs,
                    &model.buckets,
                    model.entry.config.cuda_graphs,
                    platform.device.name.clone(),
                )
                .map(|e| Box::new(e) as Box<dyn Engine>)
                .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((engines, platform.device.name))
    }
}
