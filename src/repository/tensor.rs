//! Inputs and outputs of a model: names, element types and shapes, as
//! config.pbtxt declares them.

use std::fmt;

use prost_reflect::DynamicMessage;

use super::config::{get_int, get_ints, get_message, get_messages, get_str};
use super::error::{invalid, RepositoryError};

/// Element type of a tensor. Triton's `inference.DataType`, numbered as
/// Triton numbers it; the KServe v2 names are those of the KServe Open
/// Inference Protocol ("Tensor Data Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `TYPE_BOOL`, one byte per element.
    Bool,
    /// `TYPE_UINT8`.
    Uint8,
    /// `TYPE_UINT16`.
    Uint16,
    /// `TYPE_UINT32`.
    Uint32,
    /// `TYPE_UINT64`.
    Uint64,
    /// `TYPE_INT8`.
    Int8,
    /// `TYPE_INT16`.
    Int16,
    /// `TYPE_INT32`.
    Int32,
    /// `TYPE_INT64`.
    Int64,
    /// `TYPE_FP16`, IEEE 754 half precision.
    Fp16,
    /// `TYPE_FP32`.
    Fp32,
    /// `TYPE_FP64`.
    Fp64,
    /// `TYPE_STRING`, variable-length bytes (KServe `BYTES`).
    String,
    /// `TYPE_BF16`, bfloat16.
    Bf16,
}

impl DataType {
    /// Every data type, in Triton's numbering order (1 to 14).
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::String,
        DataType::Bf16,
    ];

    /// The name in config.pbtxt, e.g. `"TYPE_FP32"`.
    pub fn triton_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::String => "TYPE_STRING",
            DataType::Bf16 => "TYPE_BF16",
        }
    }

    /// The name in the KServe v2 protocol, e.g. `"FP32"`; `TYPE_STRING` is `"BYTES"`.
    pub fn kserve_name(self) -> &'static str {
        match self {
            DataType::String => "BYTES",
            other => &other.triton_name()["TYPE_".len()..],
        }
    }

    /// The data type with KServe v2 name `name` (`"FP32"`, `"BYTES"`, ...), if any.
    pub fn from_kserve_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|t| t.kserve_name() == name)
    }

    /// Bytes per element; `None` for `String`, whose elements vary in length.
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::String => None,
        }
    }

    /// The data type with Triton enum number `number` (1 to 14); 0 is `TYPE_INVALID`.
    fn from_triton_number(number: i64) -> Option<DataType> {
        let index = usize::try_from(number).ok()?.checked_sub(1)?;
        DataType::ALL.get(index).copied()
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triton_name())
    }
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorConfig {
    /// The tensor's name in the ONNX graph or TensorRT plan.
    pub name: String,
    /// Element type.
    pub data_type: DataType,
    /// Shape without the batch dimension when `max_batch_size > 0` (the
    /// batch dimension is then implicit and first); the full shape when
    /// `max_batch_size == 0`. `-1` marks a variable dimension. Never empty,
    /// never 0.
    pub dims: Vec<i64>,
    /// Triton's `reshape { shape: [...] }`: the shape the engine sees
    /// (again without the batch dimension), when it differs from `dims`.
    /// An empty shape means a scalar per batch item.
    pub reshape: Option<Vec<i64>>,
}

/// Converts and validates the `input` (or `output`, per `field`) list.
pub(crate) fn tensors(
    config: &DynamicMessage,
    field: &str,
    file: &str,
) -> Result<Vec<TensorConfig>, RepositoryError> {
    let messages = get_messages(config, field);
    if messages.is_empty() {
        return Err(invalid(
            file,
            format!("no {field} is declared"),
            format!("add `{field} [ {{ name: \"...\" data_type: TYPE_FP32 dims: [ ... ] }} ]` naming the model's {field} tensors"),
        ));
    }
    let mut tensors: Vec<TensorConfig> = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let tensor = tensor(message, field, index, file)?;
        if tensors.iter().any(|t| t.name == tensor.name) {
            return Err(invalid(
                file,
                format!("{field} `{}` is declared twice", tensor.name),
                format!("give each {field} its own name, as in the model file"),
            ));
        }
        tensors.push(tensor);
    }
    Ok(tensors)
}

fn tensor(
    message: &DynamicMessage,
    field: &str,
    index: usize,
    file: &str,
) -> Result<TensorConfig, RepositoryError> {
    let name = get_str(message, "name");
    if name.is_empty() {
        return Err(invalid(
            file,
            format!("{field} #{} has no name", index + 1),
            format!("add `name: \"...\"` with the {field} tensor's name in the model file"),
        ));
    }
    let number = get_int(message, "data_type");
    let data_type = DataType::from_triton_number(number).ok_or_else(|| {
        invalid(
            file,
            format!("{field} `{name}` has no valid data_type (got enum number {number})"),
            "add e.g. `data_type: TYPE_FP32`; accepted are TYPE_BOOL to TYPE_BF16",
        )
    })?;
    let dims = get_ints(message, "dims");
    if dims.is_empty() {
        return Err(invalid(
            file,
            format!("{field} `{name}` has no dims"),
            "list the shape without the batch dimension, e.g. `dims: [ 250, 25 ]`, or `dims: [ 1 ]` with `reshape: { shape: [ ] }` for a scalar",
        ));
    }
    check_dims(&dims, &format!("{field} `{name}` dims"), file)?;
    let reshape = get_message(message, "reshape").map(|r| get_ints(&r, "shape"));
    if let Some(shape) = &reshape {
        let what = format!("{field} `{name}` reshape");
        check_dims(shape, &what, file)?;
        let fixed = |d: &[i64]| d.iter().all(|&x| x > 0).then(|| d.iter().product::<i64>());
        if let (Some(a), Some(b)) = (fixed(&dims), fixed(shape)) {
            if a != b {
                return Err(invalid(
                    file,
                    format!("{what} {shape:?} has {b} elements but dims {dims:?} has {a}"),
                    "a reshape must keep the number of elements",
                ));
            }
        }
    }
    Ok(TensorConfig {
        name,
        data_type,
        dims,
        reshape,
    })
}

/// Every dimension is positive or -1.
fn check_dims(dims: &[i64], what: &str, file: &str) -> Result<(), RepositoryError> {
    match dims.iter().find(|&&d| d == 0 || d < -1) {
        Some(bad) => Err(invalid(
            file,
            format!("{what} {dims:?} has dimension {bad}"),
            "use a positive size, or -1 for a size that varies",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::ModelConfig;

    fn error(text: &str) -> String {
        ModelConfig::parse(text).unwrap_err().to_string()
    }

    const OUTPUT: &str = "output { name: \"y\" data_type: TYPE_FP32 dims: [ 1 ] }\n";

    #[test]
    fn names_and_sizes_follow_triton_and_kserve() {
        assert_eq!(DataType::Fp32.triton_name(), "TYPE_FP32");
        assert_eq!(DataType::Fp32.kserve_name(), "FP32");
        assert_eq!(DataType::String.kserve_name(), "BYTES");
        assert_eq!(DataType::Bf16.size_bytes(), Some(2));
        assert_eq!(DataType::String.size_bytes(), None);
        assert_eq!(DataType::from_kserve_name("BYTES"), Some(DataType::String));
        assert_eq!(DataType::from_kserve_name("fp32"), None);
        for (i, t) in DataType::ALL.into_iter().enumerate() {
            assert_eq!(DataType::from_triton_number(i as i64 + 1), Some(t));
            assert_eq!(DataType::from_kserve_name(t.kserve_name()), Some(t));
        }
        assert_eq!(DataType::from_triton_number(0), None);
        assert_eq!(DataType::from_triton_number(15), None);
    }

    #[test]
    fn the_enum_numbers_match_the_proto() {
        let desc = crate::repository::pbtxt::model_config_descriptor();
        let data_type = desc
            .parent_pool()
            .get_enum_by_name("inference.DataType")
            .unwrap();
        for t in DataType::ALL {
            let value = data_type.get_value_by_name(t.triton_name()).unwrap();
            assert_eq!(DataType::from_triton_number(value.number().into()), Some(t));
        }
    }

    #[test]
    fn reshape_is_kept_and_checked() {
        let text = format!(
            "platform: \"tensorrt_plan\" input {{ name: \"x\" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }}\n{OUTPUT}"
        );
        let (config, _) = ModelConfig::parse(&text).unwrap();
        assert_eq!(config.inputs[0].reshape, Some(vec![]));
        assert_eq!(config.outputs[0].reshape, None);

        let text = format!(
            "platform: \"tensorrt_plan\" input {{ name: \"x\" data_type: TYPE_INT64 dims: [ 4, 2 ] reshape {{ shape: [ 3 ] }} }}\n{OUTPUT}"
        );
        assert!(error(&text).contains("reshape [3] has 3 elements but dims [4, 2] has 8"));
    }

    #[test]
    fn bad_tensors_are_refused_with_the_reason() {
        let with = |input: &str| format!("platform: \"onnxruntime_onnx\"\n{input}\n{OUTPUT}");
        assert!(error(&with("")).contains("no input is declared"));
        assert!(
            error(&with("input { data_type: TYPE_FP32 dims: 1 }")).contains("input #1 has no name")
        );
        assert!(error(&with("input { name: \"x\" dims: 1 }"))
            .contains("input `x` has no valid data_type"));
        assert!(error(&with("input { name: \"x\" data_type: TYPE_FP32 }"))
            .contains("input `x` has no dims"));
        let zero = error(&with(
            "input { name: \"x\" data_type: TYPE_FP32 dims: [ 250, 0 ] }",
        ));
        assert!(
            zero.contains("input `x` dims [250, 0] has dimension 0"),
            "{zero}"
        );
        assert!(zero.contains("hint: use a positive size, or -1"), "{zero}");
        assert!(error(&with(
            "input { name: \"x\" data_type: TYPE_FP32 dims: [ -2 ] }"
        ))
        .contains("dimension -2"));
        let twice = "input { name: \"x\" data_type: TYPE_FP32 dims: 1 } input { name: \"x\" data_type: TYPE_FP32 dims: 2 }";
        assert!(error(&with(twice)).contains("input `x` is declared twice"));
        let no_output =
            "platform: \"onnxruntime_onnx\" input { name: \"x\" data_type: TYPE_FP32 dims: 1 }";
        assert!(error(no_output).contains("no output is declared"));
    }
}
