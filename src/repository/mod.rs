//! Triton-layout model repository.
//!
//! Why: operators bring models in the layout of NVIDIA Triton Inference
//! Server, so an existing repository works unchanged:
//! `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/model.onnx`
//! (or `model.plan`). config.pbtxt is protobuf text format, parsed by a real
//! parser (prost-reflect) against `proto/model_config.proto`, the subset of
//! Triton's `inference.ModelConfig` that gsinfer honours, with Triton's
//! field names and numbers. Fields outside that subset do not fail the
//! load: each is reported once as a warning.
//!
//! [`ModelRepository::load`] reads one model: its validated
//! [`ModelConfig`], the versions its version policy selects, the one asked
//! for (`<model>@<version>`, else the highest selected) and its model file. The repository is read-only;
//! built engines live in the state directory, not here.
//!
//! Reference: Triton's "Model Repository" and "Model Configuration" guides.

mod config;
mod error;
mod pbtxt;
mod schedule;
mod store;
mod tensor;

pub use config::{ModelConfig, Platform};
pub use error::RepositoryError;
pub use schedule::{DynamicBatching, InstanceKind, VersionPolicy};
pub use store::{ModelEntry, ModelRepository, MAX_CONFIG_PBTXT_BYTES};
pub use tensor::{DataType, TensorConfig};
