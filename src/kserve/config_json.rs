//! A model's configuration in the JSON form Triton answers
//! `GET /v2/models/<m>/config` with: the protobuf JSON mapping of
//! `inference.ModelConfig` with the proto field names (`max_batch_size`,
//! `data_type`, ...), integers as numbers, enums by name. Only the fields
//! gsinfer honours are filled; the rest have Triton's defaults, so clients
//! that read e.g. `sequence_batching` or `model_transaction_policy` find
//! what Triton would send for a plain stateless model.

use serde_json::{json, Map, Value};

use crate::repository::{InstanceKind, ModelConfig, TensorConfig, VersionPolicy};

fn tensor(t: &TensorConfig, input: bool) -> Value {
    let mut v = json!({
        "name": t.name,
        "data_type": t.data_type.triton_name(),
        "dims": t.dims,
        "is_shape_tensor": false,
    });
    let o = v.as_object_mut().expect("object");
    if let Some(shape) = &t.reshape {
        o.insert("reshape".into(), json!({ "shape": shape }));
    }
    if input {
        o.insert("format".into(), json!("FORMAT_NONE"));
        o.insert("allow_ragged_batch".into(), json!(false));
        o.insert("optional".into(), json!(false));
    } else {
        o.insert("label_filename".into(), json!(""));
    }
    v
}

fn version_policy(p: &VersionPolicy) -> Value {
    match p {
        VersionPolicy::Latest { num_versions } => {
            json!({ "latest": { "num_versions": num_versions } })
        }
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Specific { versions } => json!({ "specific": { "versions": versions } }),
    }
}

fn kind_name(k: InstanceKind) -> &'static str {
    match k {
        InstanceKind::Auto => "KIND_AUTO",
        InstanceKind::Gpu => "KIND_GPU",
        InstanceKind::Cpu => "KIND_CPU",
    }
}

/// `config` as Triton's JSON model configuration.
pub fn model_config(config: &ModelConfig) -> Value {
    let mut v = json!({
        "name": config.name,
        "platform": config.platform.triton_name(),
        "backend": config.backend.clone().unwrap_or_else(|| config.platform.backend_name().to_string()),
        "runtime": "",
        "version_policy": version_policy(&config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": config.inputs.iter().map(|t| tensor(t, true)).collect::<Vec<_>>(),
        "output": config.outputs.iter().map(|t| tensor(t, false)).collect::<Vec<_>>(),
        "batch_input": [],
        "batch_output": [],
        "optimization": {
            "priority": "PRIORITY_DEFAULT",
            "cuda": { "graphs": config.cuda_graphs, "busy_wait_events": false, "graph_spec": [], "output_copy_stream": false },
            "input_pinned_memory": { "enable": true },
            "output_pinned_memory": { "enable": true },
            "gather_kernel_buffer_threshold": 0,
            "eager_batching": false,
        },
        "instance_group": [{
            "name": format!("{}_0", config.name),
            "kind": kind_name(config.instance_kind),
            "count": config.instance_count,
            "gpus": [],
            "secondary_devices": [],
            "profile": [],
            "passive": false,
            "host_policy": "",
        }],
        "default_model_filename": config
            .default_model_filename
            .clone()
            .unwrap_or_else(|| config.platform.default_model_filename().to_string()),
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": config
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "string_value": v })))
            .collect::<Map<String, Value>>(),
        "model_warmup": [],
        "model_transaction_policy": { "decoupled": false },
    });
    if let Some(d) = &config.dynamic_batching {
        v.as_object_mut().expect("object").insert(
            "dynamic_batching".into(),
            json!({
                "preferred_batch_size": d.preferred_batch_size,
                "max_queue_delay_microseconds": d.max_queue_delay_us,
                "preserve_ordering": false,
                "priority_levels": 0,
                "default_priority_level": 0,
                "priority_queue_policy": {},
            }),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn example_model_config_in_tritons_json_form() {
        let repo = crate::repository::ModelRepository::open(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository"),
        )
        .unwrap();
        let entry = repo.load("smap_lstm").unwrap();
        let v = model_config(&entry.config);
        assert_eq!(v["name"], "smap_lstm");
        assert_eq!(v["platform"], "onnxruntime_onnx");
        assert_eq!(v["max_batch_size"], 64);
        assert_eq!(v["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(v["input"][0]["dims"], json!([250, 25]));
        assert_eq!(v["output"][0]["dims"], json!([10]));
        assert_eq!(v["dynamic_batching"]["max_queue_delay_microseconds"], 20000);
        assert_eq!(v["instance_group"][0]["kind"], "KIND_CPU");
        assert_eq!(v["version_policy"]["latest"]["num_versions"], 1);
    }
}
