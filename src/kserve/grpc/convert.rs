//! Between the messages of `proto/grpc_service.proto` and gsinfer's own:
//! an inference request's tensor (typed `contents.fp32_contents`, or
//! `raw_input_contents`, which tritonclient sends by default) to the rows
//! the batcher takes, after [`protocol::check_inputs`]; results to
//! `raw_output_contents`, as Triton answers; metadata, model configuration,
//! statistics and the repository index to their messages. Pure functions,
//! tested without a server.
//!
//! Reference: the KServe v2 gRPC protocol ("Open Inference Protocol"),
//! `ModelInferRequest` / `ModelInferResponse`: raw contents hold one entry
//! per tensor, in tensor order, the elements little-endian and row-major
//! with no padding; a request uses raw contents or typed contents, not both.

use std::collections::HashMap;

use super::proto;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use crate::infer::stats::{Duration64, StatsSnapshot};
use crate::kserve::protocol::{self, IndexEntry, InputHeader, KserveError, ModelMetadata, Rows};
use crate::kserve::ServedModel;
use crate::repository::{InstanceKind, ModelConfig, TensorConfig, VersionPolicy};

/// Parameter naming Triton's shared-memory extension, which gsinfer does
/// not serve.
const SHARED_MEMORY: &str = "shared_memory_region";

/// A `ModelInferRequest`, checked against its model: what the batcher runs
/// and how the response is laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedInfer {
    /// Batch items, 1 to the model's `max_batch` (1 for a model without a
    /// batch dimension).
    pub batch: usize,
    /// The input's values, row-major: `batch` × the input's item length.
    pub values: Vec<f32>,
    /// The outputs to return, in response order, as indices into the
    /// model's outputs.
    pub outputs: Vec<usize>,
}

fn invalid(message: String) -> KserveError {
    KserveError::Invalid(message)
}

/// The typed-contents fields other than FP32's that hold elements, by name.
fn other_contents(c: &proto::InferTensorContents) -> Option<&'static str> {
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .find(|(_, empty)| !empty)
    .map(|(name, _)| name)
}

fn has_elements(c: &proto::InferTensorContents) -> bool {
    !c.fp32_contents.is_empty() || other_contents(c).is_some()
}

/// The input's values: from its raw contents or its `fp32_contents`.
fn input_values(
    req: &proto::ModelInferRequest,
    input: &InferInputTensor,
    count: usize,
) -> Result<Vec<f32>, KserveError> {
    let name = &input.name;
    if !req.raw_input_contents.is_empty() {
        if req.raw_input_contents.len() != req.inputs.len() {
            return Err(invalid(format!(
                "the request has {} raw_input_contents for {} inputs; send one per input, in input order",
                req.raw_input_contents.len(),
                req.inputs.len()
            )));
        }
        if input.contents.as_ref().is_some_and(has_elements) {
            return Err(invalid(format!(
                "input `{name}` has both contents and raw_input_contents; send one of them"
            )));
        }
        let raw = &req.raw_input_contents[0];
        if raw.len() != count * 4 {
            return Err(invalid(format!(
                "input `{name}`: raw_input_contents has {} bytes; shape {:?} of FP32 takes {}",
                raw.len(),
                input.shape,
                count * 4
            )));
        }
        return Ok(protocol::f32_from_le(raw));
    }
    let Some(contents) = input.contents.as_ref().filter(|c| has_elements(c)) else {
        return Err(invalid(format!(
            "input `{name}` has neither contents nor raw_input_contents"
        )));
    };
    if let Some(field) = other_contents(contents) {
        return Err(invalid(format!(
            "input `{name}` is FP32; send its elements in contents.fp32_contents or raw_input_contents, not contents.{field}"
        )));
    }
    if contents.fp32_contents.len() != count {
        return Err(invalid(format!(
            "input `{name}` has {} values; shape {:?} takes {count}",
            contents.fp32_contents.len(),
            input.shape
        )));
    }
    Ok(contents.fp32_contents.clone())
}

/// Decodes a `ModelInferRequest` for `model`, without running it.
///
/// # Errors
/// [`KserveError::Invalid`] naming what is wrong: the inputs (count, name,
/// datatype, shape, as [`protocol::check_inputs`]), their contents
/// (missing, both raw and typed, the wrong typed field, a byte or value
/// count that does not match the shape), an unknown output, or Triton's
/// shared-memory or classification extensions.
pub fn decode_infer(
    req: &proto::ModelInferRequest,
    model: &ServedModel,
) -> Result<DecodedInfer, KserveError> {
    let headers: Vec<InputHeader<'_>> = req
        .inputs
        .iter()
        .map(|i| InputHeader {
            name: &i.name,
            datatype: &i.datatype,
            shape: &i.shape,
        })
        .collect();
    let batch = protocol::check_inputs(model, &headers)?;
    let input = &req.inputs[0];
    if input.parameters.contains_key(SHARED_MEMORY)
        || req
            .outputs
            .iter()
            .any(|o| o.parameters.contains_key(SHARED_MEMORY))
    {
        return Err(invalid(
            "the shared-memory extension is not supported; send tensors in the request (raw_input_contents)"
                .into(),
        ));
    }
    let values = input_values(req, input, batch * model.input.item_len())?;
    let outputs = if req.outputs.is_empty() {
        (0..model.outputs.len()).collect()
    } else {
        req.outputs
            .iter()
            .map(|o| {
                protocol::output_index(model, &o.name, o.parameters.contains_key("classification"))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(DecodedInfer {
        batch,
        values,
        outputs,
    })
}

/// The `ModelInferResponse` for `rows` (each batch row's outputs, from
/// [`protocol::infer`]): the `outputs` asked for, in that order, as FP32
/// tensors of shape `[batch, dims...]` whose elements are in
/// `raw_output_contents`.
pub fn encode_infer(
    id: &str,
    model: &ServedModel,
    batch: usize,
    rows: &Rows,
    outputs: &[usize],
) -> proto::ModelInferResponse {
    let tensors = outputs
        .iter()
        .map(|&ix| {
            let spec = &model.outputs[ix];
            InferOutputTensor {
                name: spec.name.clone(),
                datatype: protocol::DATATYPE.into(),
                shape: protocol::with_batch(model, &spec.dims, batch as i64),
                parameters: HashMap::new(),
                contents: None,
            }
        })
        .collect();
    let raw = outputs
        .iter()
        .map(|&ix| {
            rows.iter()
                .flat_map(|r| r[ix].iter().flat_map(|v| v.to_le_bytes()))
                .collect()
        })
        .collect();
    proto::ModelInferResponse {
        model_name: model.name.clone(),
        model_version: model.version.to_string(),
        id: id.to_string(),
        parameters: HashMap::new(),
        outputs: tensors,
        raw_output_contents: raw,
    }
}

/// A model's metadata message.
pub fn model_metadata(m: ModelMetadata) -> proto::ModelMetadataResponse {
    use proto::model_metadata_response::TensorMetadata;
    let tensor = |t: protocol::TensorMetadata| TensorMetadata {
        name: t.name,
        datatype: t.datatype.into(),
        shape: t.shape,
    };
    proto::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform.into(),
        inputs: m.inputs.into_iter().map(tensor).collect(),
        outputs: m.outputs.into_iter().map(tensor).collect(),
    }
}

fn data_type(t: &TensorConfig) -> i32 {
    proto::DataType::from_str_name(t.data_type.triton_name())
        .unwrap_or(proto::DataType::TypeInvalid) as i32
}

fn reshape(t: &TensorConfig) -> Option<proto::ModelTensorReshape> {
    t.reshape.as_ref().map(|shape| proto::ModelTensorReshape {
        shape: shape.clone(),
    })
}

/// `config` as Triton's `ModelConfig` message (the fields of
/// `proto/model_config.proto`: those gsinfer honours), the same content as
/// the HTTP API's JSON form ([`crate::kserve::config_json`]).
pub fn model_config(config: &ModelConfig) -> proto::ModelConfig {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let policy = match &config.version_policy {
        VersionPolicy::Latest { num_versions } => PolicyChoice::Latest(Latest {
            num_versions: *num_versions,
        }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific { versions } => PolicyChoice::Specific(Specific {
            versions: versions.iter().map(|v| *v as i64).collect(),
        }),
    };
    let kind = match config.instance_kind {
        InstanceKind::Auto => proto::model_instance_group::Kind::Auto,
        InstanceKind::Gpu => proto::model_instance_group::Kind::Gpu,
        InstanceKind::Cpu => proto::model_instance_group::Kind::Cpu,
    };
    proto::ModelConfig {
        name: config.name.clone(),
        platform: config.platform.triton_name().into(),
        version_policy: Some(proto::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: config.max_batch_size as i32,
        input: config
            .inputs
            .iter()
            .map(|t| proto::ModelInput {
                name: t.name.clone(),
                data_type: data_type(t),
                dims: t.dims.clone(),
                reshape: reshape(t),
            })
            .collect(),
        output: config
            .outputs
            .iter()
            .map(|t| proto::ModelOutput {
                name: t.name.clone(),
                data_type: data_type(t),
                dims: t.dims.clone(),
                reshape: reshape(t),
            })
            .collect(),
        instance_group: vec![proto::ModelInstanceGroup {
            name: format!("{}_0", config.name),
            count: config.instance_count as i32,
            gpus: Vec::new(),
            kind: kind as i32,
        }],
        default_model_filename: config
            .default_model_filename
            .clone()
            .unwrap_or_else(|| config.platform.default_model_filename().to_string()),
        scheduling_choice: config.dynamic_batching.as_ref().map(|d| {
            proto::model_config::SchedulingChoice::DynamicBatching(proto::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size.iter().map(|b| *b as i32).collect(),
                max_queue_delay_microseconds: d.max_queue_delay_us,
            })
        }),
        optimization: Some(proto::ModelOptimizationPolicy {
            cuda: Some(proto::model_optimization_policy::Cuda {
                graphs: config.cuda_graphs,
            }),
            execution_accelerators: None,
        }),
        parameters: config
            .parameters
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    proto::ModelParameter {
                        string_value: v.clone(),
                    },
                )
            })
            .collect(),
        backend: config
            .backend
            .clone()
            .unwrap_or_else(|| config.platform.backend_name().to_string()),
    }
}

fn duration(d: Duration64) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

/// One model's statistics message (Triton's statistics extension).
pub fn statistics(name: &str, version: u64, s: &StatsSnapshot) -> proto::ModelStatistics {
    proto::ModelStatistics {
        name: name.into(),
        version: version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(proto::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(Duration64::default()),
            cache_miss: duration(Duration64::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, [i, c, o])| proto::InferBatchStatistics {
                batch_size: *size as u64,
                compute_input: duration(*i),
                compute_infer: duration(*c),
                compute_output: duration(*o),
            })
            .collect(),
        memory_usage: Vec::new(),
        response_stats: HashMap::new(),
    }
}

/// The repository index message; `ready_only` keeps the ready models
/// (the request's `ready` flag).
pub fn repository_index(
    entries: Vec<IndexEntry>,
    ready_only: bool,
) -> proto::RepositoryIndexResponse {
    use proto::repository_index_response::ModelIndex;
    proto::RepositoryIndexResponse {
        models: entries
            .into_iter()
            .filter(|e| !ready_only || e.state == "READY")
            .map(|e| ModelIndex {
                name: e.name,
                version: e.version.unwrap_or_default(),
                state: e.state.into(),
                reason: e.reason.into(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kserve::test_model as model;
    use proto::model_infer_request::InferRequestedOutputTensor;

    fn raw(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A request for the batched test model ([2, 3] → forecast [2], score [1]).
    fn request(shape: Vec<i64>, values: &[f32]) -> proto::ModelInferRequest {
        proto::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "window".into(),
                datatype: "FP32".into(),
                shape,
                ..InferInputTensor::default()
            }],
            raw_input_contents: vec![raw(values)],
            ..proto::ModelInferRequest::default()
        }
    }

    fn invalid_message(r: Result<DecodedInfer, KserveError>) -> String {
        match r {
            Err(KserveError::Invalid(m)) => m,
            other => panic!("expected an invalid-argument error, got {other:?}"),
        }
    }

    #[test]
    fn raw_contents_decode_bit_for_bit_in_row_order() {
        let m = model(true);
        let values: Vec<f32> = vec![
            1.5,
            -0.0,
            f32::MIN_POSITIVE,
            3e38,
            -7.25,
            0.1,
            9.0,
            8.0,
            7.0,
            6.0,
            5.0,
            4.0,
        ];
        let d = decode_infer(&request(vec![2, 2, 3], &values), &m).unwrap();
        assert_eq!(d.batch, 2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&d.values), bits(&values));
        assert_eq!(d.outputs, vec![0, 1], "no outputs asked: all of them");
    }

    #[test]
    fn typed_fp32_contents_decode_like_raw_ones() {
        let m = model(true);
        let values: Vec<f32> = (0..6).map(|i| i as f32 / 4.0).collect();
        let mut req = request(vec![1, 2, 3], &[]);
        req.raw_input_contents.clear();
        req.inputs[0].contents = Some(proto::InferTensorContents {
            fp32_contents: values.clone(),
            ..proto::InferTensorContents::default()
        });
        let typed = decode_infer(&req, &m).unwrap();
        let by_raw = decode_infer(&request(vec![1, 2, 3], &values), &m).unwrap();
        assert_eq!(typed, by_raw);
    }

    #[test]
    fn unbatched_models_take_their_full_shape() {
        let m = model(false);
        let d = decode_infer(&request(vec![3], &[1.0, 2.0, 3.0]), &m).unwrap();
        assert_eq!((d.batch, d.values.len()), (1, 3));
        let e = invalid_message(decode_infer(&request(vec![1, 3], &[1.0, 2.0, 3.0]), &m));
        assert!(
            e.contains("has shape [1, 3]") && e.contains("takes [3]"),
            "{e}"
        );
    }

    #[test]
    fn shapes_datatypes_and_names_are_checked_by_the_shared_rules() {
        let m = model(true);
        let e = invalid_message(decode_infer(&request(vec![5, 2, 3], &[0.0; 30]), &m));
        assert!(
            e.contains("[5, 2, 3]") && e.contains("n from 1 to 4"),
            "{e}"
        );
        let e = invalid_message(decode_infer(&request(vec![0, 2, 3], &[]), &m));
        assert!(e.contains("[0, 2, 3]"), "{e}");
        let e = invalid_message(decode_infer(&request(vec![1, 3, 2], &[0.0; 6]), &m));
        assert!(e.contains("[1, 3, 2]") && e.contains("[n, 2, 3]"), "{e}");
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.inputs[0].datatype = "INT64".into();
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("says INT64; send FP32"), "{e}");
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.inputs[0].name = "nope".into();
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("unknown input `nope`"), "{e}");
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.inputs.push(req.inputs[0].clone());
        req.raw_input_contents.push(raw(&[0.0; 6]));
        let e = invalid_message(decode_infer(&req, &m));
        assert!(
            e.contains("exactly one input") && e.contains("has 2"),
            "{e}"
        );
    }

    #[test]
    fn byte_and_value_counts_must_match_the_shape() {
        let m = model(true);
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.raw_input_contents[0].pop();
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("has 23 bytes") && e.contains("takes 24"), "{e}");
        let mut req = request(vec![1, 2, 3], &[]);
        req.raw_input_contents.clear();
        req.inputs[0].contents = Some(proto::InferTensorContents {
            fp32_contents: vec![0.0; 5],
            ..proto::InferTensorContents::default()
        });
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("has 5 values") && e.contains("takes 6"), "{e}");
    }

    #[test]
    fn contents_must_be_present_once_and_in_the_fp32_field() {
        let m = model(true);
        let mut req = request(vec![1, 2, 3], &[]);
        req.raw_input_contents.clear();
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("neither contents nor raw_input_contents"), "{e}");
        req.inputs[0].contents = Some(proto::InferTensorContents {
            int64_contents: vec![1; 6],
            ..proto::InferTensorContents::default()
        });
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("not contents.int64_contents"), "{e}");
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.inputs[0].contents = Some(proto::InferTensorContents {
            fp32_contents: vec![0.0; 6],
            ..proto::InferTensorContents::default()
        });
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("both contents and raw_input_contents"), "{e}");
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.raw_input_contents.push(Vec::new());
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("2 raw_input_contents for 1 inputs"), "{e}");
    }

    #[test]
    fn outputs_are_chosen_by_name_and_extensions_refused() {
        let m = model(true);
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.outputs = vec![InferRequestedOutputTensor {
            name: "score".into(),
            parameters: HashMap::new(),
        }];
        assert_eq!(decode_infer(&req, &m).unwrap().outputs, vec![1]);
        req.outputs[0].name = "nope".into();
        let e = invalid_message(decode_infer(&req, &m));
        assert!(
            e.contains("unknown output `nope`") && e.contains("\"forecast\""),
            "{e}"
        );
        req.outputs[0].name = "score".into();
        req.outputs[0]
            .parameters
            .insert("classification".into(), proto::InferParameter::default());
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("classification"), "{e}");
        let mut req = request(vec![1, 2, 3], &[0.0; 6]);
        req.inputs[0]
            .parameters
            .insert(SHARED_MEMORY.into(), proto::InferParameter::default());
        let e = invalid_message(decode_infer(&req, &m));
        assert!(e.contains("shared-memory"), "{e}");
    }

    #[test]
    fn results_go_out_as_raw_contents_per_output_in_the_order_asked() {
        let m = model(true);
        // Two rows; each row: forecast [2 values], score [1 value].
        let rows: Rows = vec![
            vec![vec![1.0, 2.0], vec![10.0]],
            vec![vec![3.0, 4.0], vec![20.0]],
        ];
        let r = encode_infer("req-7", &m, 2, &rows, &[1, 0]);
        assert_eq!(
            (
                r.model_name.as_str(),
                r.model_version.as_str(),
                r.id.as_str()
            ),
            ("m", "1", "req-7")
        );
        assert_eq!(r.outputs[0].name, "score");
        assert_eq!(r.outputs[0].shape, vec![2, 1]);
        assert_eq!(r.outputs[1].name, "forecast");
        assert_eq!(r.outputs[1].shape, vec![2, 2]);
        assert!(r
            .outputs
            .iter()
            .all(|o| o.datatype == "FP32" && o.contents.is_none()));
        assert_eq!(r.raw_output_contents[0], raw(&[10.0, 20.0]));
        assert_eq!(r.raw_output_contents[1], raw(&[1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn example_model_config_as_tritons_message() {
        let repo = crate::repository::ModelRepository::open(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository"),
        )
        .unwrap();
        let c = model_config(&repo.load("smap_lstm").unwrap().config);
        assert_eq!(c.name, "smap_lstm");
        assert_eq!(c.platform, "onnxruntime_onnx");
        assert_eq!(c.max_batch_size, 64);
        assert_eq!(c.input[0].data_type, proto::DataType::TypeFp32 as i32);
        assert_eq!(c.input[0].dims, vec![250, 25]);
        assert_eq!(c.output[0].dims, vec![10]);
        let Some(proto::model_config::SchedulingChoice::DynamicBatching(d)) = &c.scheduling_choice
        else {
            panic!("no dynamic batching: {c:?}");
        };
        assert_eq!(d.max_queue_delay_microseconds, 20000);
        assert_eq!(
            c.instance_group[0].kind,
            proto::model_instance_group::Kind::Cpu as i32
        );
    }

    #[test]
    fn statistics_and_index_carry_every_count() {
        let mut s = StatsSnapshot {
            inference_count: 12,
            execution_count: 3,
            success: Duration64 { count: 2, ns: 900 },
            ..StatsSnapshot::default()
        };
        s.batches.insert(4, [Duration64 { count: 3, ns: 5 }; 3]);
        let m = statistics("m", 1, &s);
        assert_eq!((m.name.as_str(), m.version.as_str()), ("m", "1"));
        assert_eq!((m.inference_count, m.execution_count), (12, 3));
        let st = m.inference_stats.unwrap();
        assert_eq!(st.success.unwrap().ns, 900);
        assert_eq!(m.batch_stats[0].batch_size, 4);
        assert_eq!(m.batch_stats[0].compute_infer.unwrap().count, 3);

        let entries = vec![
            IndexEntry {
                name: "a".into(),
                version: Some("1".into()),
                state: "READY",
                reason: "",
            },
            IndexEntry {
                name: "b".into(),
                version: None,
                state: "UNAVAILABLE",
                reason: "why",
            },
        ];
        let all = repository_index(entries.clone(), false);
        assert_eq!(all.models.len(), 2);
        assert_eq!(
            (
                all.models[1].version.as_str(),
                all.models[1].reason.as_str()
            ),
            ("", "why")
        );
        let ready = repository_index(entries, true);
        assert_eq!(ready.models.len(), 1);
        assert_eq!(ready.models[0].name, "a");
    }
}
