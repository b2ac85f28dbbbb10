//! A model's config.pbtxt, validated into the settings gsinfer acts on.
//!
//! The raw message (parsed by [`super::pbtxt`] against Triton's field names
//! and numbers) is turned into [`ModelConfig`] here, in one place, with
//! Triton's defaults applied: no `version_policy` is `latest { num_versions:
//! 1 }`, an instance group's count of 0 is 1, an empty `name` is the folder's.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use prost_reflect::{DynamicMessage, Value};

use super::error::{invalid, RepositoryError};
use super::pbtxt;
use super::schedule::{
    dynamic_batching, instance_groups, version_policy, DynamicBatching, InstanceKind, VersionPolicy,
};
use super::tensor::{tensors, TensorConfig};

/// A model's configuration: the part of Triton's `ModelConfig` that gsinfer honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// `name`; empty in the file means the model folder's name (filled in by
    /// [`super::ModelRepository::load`], left empty by [`ModelConfig::parse`]).
    pub name: String,
    /// `platform`, or the platform implied by `backend`.
    pub platform: Platform,
    /// `backend` as written, if any (`"onnxruntime"` or `"tensorrt"`).
    pub backend: Option<String>,
    /// `max_batch_size`: the largest batch the model takes; 0 means the
    /// model has no batch dimension and `dims` are full shapes.
    pub max_batch_size: u32,
    /// `input`, in file order; never empty.
    pub inputs: Vec<TensorConfig>,
    /// `output`, in file order; never empty.
    pub outputs: Vec<TensorConfig>,
    /// `dynamic_batching`, if present.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Sum of the `instance_group` counts (a count of 0 counts as 1); 1
    /// when there is no instance group. `gpus` lists do not multiply it:
    /// gsinfer runs all instances on its one device.
    pub instance_count: u32,
    /// The `kind` shared by every instance group; [`InstanceKind::Auto`] when there is none.
    pub instance_kind: InstanceKind,
    /// `optimization { cuda { graphs: true } }`: capture CUDA graphs (TensorRT only).
    pub cuda_graphs: bool,
    /// `optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" ... } ] } }`:
    /// how an ONNX model is compiled to a TensorRT engine on the box; `None`
    /// when the config names no TensorRT accelerator (defaults then apply).
    pub tensorrt: Option<TensorRtOptions>,
    /// `version_policy`; `Latest { num_versions: 1 }` when absent.
    pub version_policy: VersionPolicy,
    /// `parameters`, key to `string_value`.
    pub parameters: BTreeMap<String, String>,
    /// `default_model_filename`, if set: the model file's name inside the version folder.
    pub default_model_filename: Option<String>,
}

/// Triton's TensorRT execution-accelerator parameters, as gsinfer honours them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorRtOptions {
    /// `precision_mode: "FP16"`: let the builder pick FP16 kernels (`BuilderFlag::kFP16`);
    /// `"FP32"` (the default) keeps FP32.
    pub fp16: bool,
    /// `max_workspace_size_bytes`: the builder's workspace memory-pool limit in bytes.
    pub workspace_bytes: Option<u64>,
}

/// The runtime a model is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// `platform: "onnxruntime_onnx"` (or `backend: "onnxruntime"`): an ONNX
    /// file, run on tract or compiled to a TensorRT engine on the box.
    OnnxRuntimeOnnx,
    /// `platform: "tensorrt_plan"` (or `backend: "tensorrt"`): a serialized TensorRT engine.
    TensorRtPlan,
}

impl Platform {
    /// Triton's platform name, e.g. `"onnxruntime_onnx"`.
    pub fn triton_name(self) -> &'static str {
        match self {
            Platform::OnnxRuntimeOnnx => "onnxruntime_onnx",
            Platform::TensorRtPlan => "tensorrt_plan",
        }
    }

    /// Triton's backend name, e.g. `"onnxruntime"`.
    pub fn backend_name(self) -> &'static str {
        match self {
            Platform::OnnxRuntimeOnnx => "onnxruntime",
            Platform::TensorRtPlan => "tensorrt",
        }
    }

    /// The model file's name when `default_model_filename` is not set.
    pub fn default_model_filename(self) -> &'static str {
        match self {
            Platform::OnnxRuntimeOnnx => "model.onnx",
            Platform::TensorRtPlan => "model.plan",
        }
    }

    /// The platform of a `platform` and a `backend` field, either of which may be empty.
    fn resolve(platform: &str, backend: &str, file: &str) -> Result<Platform, RepositoryError> {
        let all = [Platform::OnnxRuntimeOnnx, Platform::TensorRtPlan];
        let unsupported = |value: &str| RepositoryError::UnsupportedPlatform {
            file: file.to_owned(),
            value: value.to_owned(),
        };
        let from_backend = || all.into_iter().find(|p| p.backend_name() == backend);
        if platform.is_empty() {
            return match backend {
                "" => Err(invalid(
                    file,
                    "neither platform nor backend is set",
                    "add `platform: \"onnxruntime_onnx\"` for model.onnx or `platform: \"tensorrt_plan\"` for model.plan",
                )),
                _ => from_backend().ok_or_else(|| unsupported(backend)),
            };
        }
        let resolved = all
            .into_iter()
            .find(|p| p.triton_name() == platform)
            .ok_or_else(|| unsupported(platform))?;
        if !backend.is_empty() && from_backend() != Some(resolved) {
            return Err(invalid(
                file,
                format!("platform `{platform}` does not match backend `{backend}`"),
                format!(
                    "remove the backend line, or set `backend: \"{}\"`",
                    resolved.backend_name()
                ),
            ));
        }
        Ok(resolved)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triton_name())
    }
}

impl ModelConfig {
    /// Parses the text of a config.pbtxt and validates it.
    ///
    /// Returns the configuration and one warning per field that gsinfer
    /// does not honour (each named once, e.g. "config.pbtxt: field
    /// `model_warmup` is not supported by gsinfer and is ignored"). An empty
    /// `name` stays empty here.
    ///
    /// Errors: [`RepositoryError::Syntax`] (with line and column) for text
    /// that is not valid text format for the schema;
    /// [`RepositoryError::UnsupportedPlatform`] and
    /// [`RepositoryError::Invalid`] for values gsinfer cannot serve.
    pub fn parse(text: &str) -> Result<(ModelConfig, Vec<String>), RepositoryError> {
        Self::parse_file(text, "config.pbtxt")
    }

    /// [`ModelConfig::parse`], naming the text `file` in errors and warnings.
    pub(crate) fn parse_file(
        text: &str,
        file: &str,
    ) -> Result<(ModelConfig, Vec<String>), RepositoryError> {
        let parsed = pbtxt::parse(text, file)?;
        let mut warnings = parsed.warnings;
        let config = from_message(&parsed.message, file, &mut warnings)?;
        Ok((config, warnings))
    }
}

fn from_message(
    m: &DynamicMessage,
    file: &str,
    warnings: &mut Vec<String>,
) -> Result<ModelConfig, RepositoryError> {
    let backend = get_str(m, "backend");
    let platform = Platform::resolve(&get_str(m, "platform"), &backend, file)?;
    let max_batch_size = get_int(m, "max_batch_size");
    let max_batch_size = u32::try_from(max_batch_size).map_err(|_| {
        invalid(
            file,
            format!("max_batch_size {max_batch_size} is negative"),
            "use 0 for a model without a batch dimension, or the largest batch the model takes",
        )
    })?;
    let dynamic_batching = get_message(m, "dynamic_batching")
        .map(|d| dynamic_batching(&d, max_batch_size, file))
        .transpose()?;
    let (instance_count, instance_kind) = instance_groups(m, file, warnings)?;
    let cuda_graphs = get_message(m, "optimization")
        .and_then(|o| get_message(&o, "cuda"))
        .and_then(|c| get(&c, "graphs"))
        .and_then(|g| g.as_bool())
        .unwrap_or(false);
    let tensorrt = tensorrt_options(m, file, warnings)?;
    let version_policy = match get_message(m, "version_policy") {
        Some(policy) => version_policy(&policy, file)?,
        None => VersionPolicy::default(),
    };
    let parameters = get(m, "parameters")
        .and_then(|p| p.as_map().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| {
            let value = v.as_message().map(|p| get_str(p, "string_value"));
            Some((k.as_str()?.to_owned(), value.unwrap_or_default()))
        })
        .collect();
    let default_model_filename =
        Some(get_str(m, "default_model_filename")).filter(|f| !f.is_empty());
    if let Some(name) = &default_model_filename {
        if name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(invalid(
                file,
                format!("default_model_filename `{name}` is not a file name"),
                "name a file inside the version folder, e.g. `default_model_filename: \"forecaster.onnx\"`",
            ));
        }
    }
    Ok(ModelConfig {
        name: get_str(m, "name"),
        platform,
        backend: Some(backend).filter(|b| !b.is_empty()),
        max_batch_size,
        inputs: tensors(m, "input", file)?,
        outputs: tensors(m, "output", file)?,
        dynamic_batching,
        instance_count,
        instance_kind,
        cuda_graphs,
        tensorrt,
        version_policy,
        parameters,
        default_model_filename,
    })
}

/// The `tensorrt` GPU execution accelerator's parameters (Triton's
/// `precision_mode`, `max_workspace_size_bytes`); other accelerators and
/// parameters are warned about and ignored.
fn tensorrt_options(
    m: &DynamicMessage,
    file: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<TensorRtOptions>, RepositoryError> {
    let accelerators = get_message(m, "optimization")
        .and_then(|o| get_message(&o, "execution_accelerators"))
        .map(|e| get_messages(&e, "gpu_execution_accelerator"))
        .unwrap_or_default();
    let mut found = None;
    for a in accelerators {
        let name = get_str(&a, "name");
        if name != "tensorrt" {
            warnings.push(format!(
                "{file}: gpu_execution_accelerator `{name}` is not supported by gsinfer and is ignored"
            ));
            continue;
        }
        let mut options = TensorRtOptions::default();
        let params = get(&a, "parameters")
            .and_then(|p| p.as_map().cloned())
            .unwrap_or_default();
        for (k, v) in params {
            let (Some(key), Some(value)) = (k.as_str(), v.as_str()) else {
                continue;
            };
            match key {
                "precision_mode" => {
                    options.fp16 = match value {
                        "FP16" => true,
                        "FP32" => false,
                        other => {
                            return Err(invalid(
                                file,
                                format!("tensorrt precision_mode `{other}` is not supported"),
                                "use \"FP32\" or \"FP16\"",
                            ))
                        }
                    }
                }
                "max_workspace_size_bytes" => {
                    options.workspace_bytes = Some(value.parse().map_err(|_| {
                        invalid(
                            file,
                            format!("tensorrt max_workspace_size_bytes `{value}` is not a byte count"),
                            "give a whole number of bytes, e.g. \"1073741824\"",
                        )
                    })?)
                }
                other => warnings.push(format!(
                    "{file}: tensorrt accelerator parameter `{other}` is not supported by gsinfer and is ignored"
                )),
            }
        }
        found = Some(options);
    }
    Ok(found)
}

/// The value of a field that is set; `None` for an unset field (proto3: a
/// scalar at its default, an absent message, an empty list).
pub(crate) fn get(m: &DynamicMessage, name: &str) -> Option<Value> {
    if !m.has_field_by_name(name) {
        return None;
    }
    m.get_field_by_name(name).map(Cow::into_owned)
}

/// A string field, empty when unset.
pub(crate) fn get_str(m: &DynamicMessage, name: &str) -> String {
    get(m, name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An integer or enum field widened to i64, 0 when unset.
pub(crate) fn get_int(m: &DynamicMessage, name: &str) -> i64 {
    get(m, name).as_ref().and_then(as_i64).unwrap_or(0)
}

/// A repeated integer field widened to i64.
pub(crate) fn get_ints(m: &DynamicMessage, name: &str) -> Vec<i64> {
    match get(m, name) {
        Some(Value::List(values)) => values.iter().filter_map(as_i64).collect(),
        _ => Vec::new(),
    }
}

/// A message field, if set.
pub(crate) fn get_message(m: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    get(m, name).and_then(|v| v.as_message().cloned())
}

/// A repeated message field.
pub(crate) fn get_messages(m: &DynamicMessage, name: &str) -> Vec<DynamicMessage> {
    match get(m, name) {
        Some(Value::List(values)) => values
            .iter()
            .filter_map(|v| v.as_message().cloned())
            .collect(),
        _ => Vec::new(),
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::I32(x) | Value::EnumNumber(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::DataType;

    /// A config in the style of Triton's documentation, exercising both list forms.
    const REALISTIC: &str = r#"
# Forecaster for one telemetry channel group.
name: "smap_lstm"
platform: "onnxruntime_onnx"
max_batch_size: 64   # largest batch the ONNX file takes

input [
  {
    name: "window"
    data_type: TYPE_FP32
    dims: [ 250, 25 ]   # 250 time steps x 25 channels
  },
  {
    name: "mask"
    data_type: TYPE_BOOL
    dims: [ -1 ]
  }
]
output {
  name: "forecast"
  data_type: TYPE_FP32
  dims: [ 10 ]
}
output {
  name: "state"
  data_type: TYPE_FP16
  dims: 4
  dims: 8
}
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 1500
}
instance_group [ { count: 2, kind: KIND_GPU }, { kind: KIND_GPU } ]
optimization { cuda { graphs: true } }
version_policy: { specific: { versions: [ 1, 3 ] } }
parameters { key: "channel_group" value: { string_value: "A" } }
parameters: { key: "units" value { string_value: "kelvin" } }
default_model_filename: "forecaster.onnx"
"#;

    fn parse(text: &str) -> ModelConfig {
        let (config, warnings) = ModelConfig::parse(text).unwrap();
        assert_eq!(warnings, Vec::<String>::new());
        config
    }

    fn error(text: &str) -> String {
        ModelConfig::parse(text).unwrap_err().to_string()
    }

    const IO: &str = "input { name: \"x\" data_type: TYPE_FP32 dims: 1 }\noutput { name: \"y\" data_type: TYPE_FP32 dims: 1 }\n";

    #[test]
    fn the_tensorrt_accelerator_gives_precision_and_workspace() {
        let text = format!(
            "platform: \"onnxruntime_onnx\"\n{IO}optimization {{ execution_accelerators {{ gpu_execution_accelerator : [ {{ name : \"tensorrt\" \
             parameters {{ key: \"precision_mode\" value: \"FP16\" }} \
             parameters {{ key: \"max_workspace_size_bytes\" value: \"1073741824\" }} }} ] }} }}"
        );
        assert_eq!(
            parse(&text).tensorrt,
            Some(TensorRtOptions {
                fp16: true,
                workspace_bytes: Some(1 << 30)
            })
        );
        assert_eq!(
            parse(&format!("platform: \"onnxruntime_onnx\"\n{IO}")).tensorrt,
            None
        );
        let bad = format!(
            "platform: \"onnxruntime_onnx\"\n{IO}optimization {{ execution_accelerators {{ gpu_execution_accelerator : [ {{ name : \"tensorrt\" \
             parameters {{ key: \"precision_mode\" value: \"INT8\" }} }} ] }} }}"
        );
        assert!(
            error(&bad).contains("precision_mode `INT8` is not supported"),
            "{}",
            error(&bad)
        );
        let other = format!(
            "platform: \"onnxruntime_onnx\"\n{IO}optimization {{ execution_accelerators {{ gpu_execution_accelerator : [ {{ name : \"openvino\" }} ] }} }}"
        );
        let (config, warnings) = ModelConfig::parse(&other).unwrap();
        assert_eq!(config.tensorrt, None);
        assert_eq!(
            warnings,
            ["config.pbtxt: gpu_execution_accelerator `openvino` is not supported by gsinfer and is ignored"]
        );
    }

    #[test]
    fn a_realistic_config_parses_fully() {
        let config = parse(REALISTIC);
        assert_eq!(config.name, "smap_lstm");
        assert_eq!(config.platform, Platform::OnnxRuntimeOnnx);
        assert_eq!(config.backend, None);
        assert_eq!(config.max_batch_size, 64);
        let inputs: Vec<_> = config
            .inputs
            .iter()
            .map(|t| (t.name.as_str(), t.data_type, t.dims.clone()))
            .collect();
        assert_eq!(
            inputs,
            [
                ("window", DataType::Fp32, vec![250, 25]),
                ("mask", DataType::Bool, vec![-1])
            ]
        );
        let outputs: Vec<_> = config
            .outputs
            .iter()
            .map(|t| (t.name.as_str(), t.data_type, t.dims.clone()))
            .collect();
        assert_eq!(
            outputs,
            [
                ("forecast", DataType::Fp32, vec![10]),
                ("state", DataType::Fp16, vec![4, 8])
            ]
        );
        assert_eq!(
            config.dynamic_batching,
            Some(DynamicBatching {
                preferred_batch_size: vec![4, 8],
                max_queue_delay_us: 1500
            })
        );
        assert_eq!(
            (config.instance_count, config.instance_kind),
            (3, InstanceKind::Gpu)
        );
        assert!(config.cuda_graphs);
        assert_eq!(
            config.version_policy,
            VersionPolicy::Specific {
                versions: vec![1, 3]
            }
        );
        let parameters: Vec<_> = config
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(parameters, [("channel_group", "A"), ("units", "kelvin")]);
        assert_eq!(
            config.default_model_filename.as_deref(),
            Some("forecaster.onnx")
        );
    }

    #[test]
    fn defaults_follow_triton() {
        let config = parse(&format!("backend: \"tensorrt\"\n{IO}"));
        assert_eq!(config.name, "");
        assert_eq!(config.platform, Platform::TensorRtPlan);
        assert_eq!(config.backend.as_deref(), Some("tensorrt"));
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.dynamic_batching, None);
        assert_eq!(
            (config.instance_count, config.instance_kind),
            (1, InstanceKind::Auto)
        );
        assert!(!config.cuda_graphs);
        assert_eq!(
            config.version_policy,
            VersionPolicy::Latest { num_versions: 1 }
        );
        assert!(config.parameters.is_empty());
        assert_eq!(config.default_model_filename, None);

        let config = parse(&format!("platform: \"onnxruntime_onnx\" dynamic_batching {{ }} version_policy: {{ all {{ }} }}\n{IO}"));
        assert_eq!(config.dynamic_batching, Some(DynamicBatching::default()));
        assert_eq!(config.version_policy, VersionPolicy::All);
        let config = parse(&format!("platform: \"onnxruntime_onnx\" version_policy {{ latest {{ num_versions: 2 }} }}\n{IO}"));
        assert_eq!(
            config.version_policy,
            VersionPolicy::Latest { num_versions: 2 }
        );
    }

    #[test]
    fn platform_and_backend_are_resolved_or_refused() {
        let with = |lines: &str| ModelConfig::parse(&format!("{lines}\n{IO}"));
        let platform = |lines: &str| with(lines).unwrap().0.platform;
        assert_eq!(
            platform("platform: \"tensorrt_plan\""),
            Platform::TensorRtPlan
        );
        assert_eq!(
            platform("backend: \"onnxruntime\""),
            Platform::OnnxRuntimeOnnx
        );
        assert_eq!(
            platform("platform: \"tensorrt_plan\" backend: \"tensorrt\""),
            Platform::TensorRtPlan
        );
        let e = with("platform: \"pytorch_libtorch\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.pbtxt: platform `pytorch_libtorch` is not supported"),
            "{e}"
        );
        assert!(e.contains("`onnxruntime_onnx` or `tensorrt_plan`"), "{e}");
        let e = with("backend: \"python\"").unwrap_err().to_string();
        assert!(e.contains("platform `python` is not supported"), "{e}");
        let e = with("").unwrap_err().to_string();
        assert!(e.contains("neither platform nor backend is set"), "{e}");
        let e = with("platform: \"tensorrt_plan\" backend: \"onnxruntime\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("platform `tensorrt_plan` does not match backend `onnxruntime`"),
            "{e}"
        );
        assert_eq!(
            Platform::TensorRtPlan.default_model_filename(),
            "model.plan"
        );
        assert_eq!(Platform::OnnxRuntimeOnnx.to_string(), "onnxruntime_onnx");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let with = |lines: &str| error(&format!("platform: \"onnxruntime_onnx\"\n{lines}\n{IO}"));
        assert!(with("max_batch_size: -1").contains("max_batch_size -1 is negative"));
        assert!(with("default_model_filename: \"../x.onnx\"")
            .contains("`../x.onnx` is not a file name"));
    }

    #[test]
    fn unsupported_fields_are_warned_once_and_do_not_fail_the_load() {
        let text = format!(
            "platform: \"onnxruntime_onnx\"\nmodel_warmup {{ name: \"a\" }}\nmodel_warmup {{ name: \"b\" }}\nresponse_cache {{ enable: true }}\nmodel_transaction_policy {{ decoupled: false }}\n{IO}"
        );
        let (config, warnings) = ModelConfig::parse(&text).unwrap();
        assert_eq!(config.inputs.len(), 1);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "config.pbtxt: field `model_warmup` is not supported by gsinfer and is ignored"
        );
    }
}
