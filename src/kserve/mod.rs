//! The KServe v2 protocol ("Open Inference Protocol") as Triton Inference
//! Server speaks it, over HTTP/REST and gRPC, so `tritonclient` (HTTP and
//! gRPC) and `perf_analyzer` work against gsinfer unchanged. An input of
//! its own, beside telemetry: its requests join the models' batch queues.
//! The status server ([`crate::http`]) carries the REST routes
//! under `/v2`; [`grpc`] serves the gRPC API on an address of its own. What
//! both share (finding a model, checking tensors, running an inference,
//! metadata, the repository index, errors) is [`protocol`].
//!
//! The REST routes:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v2` | server metadata and extensions |
//! | `GET /v2/health/live`, `/v2/health/ready` | 200, or 400 while a model is not ready |
//! | `GET /v2/models/<m>[/versions/<v>]` | model metadata |
//! | `GET .../ready` | 200, or 400 while not ready |
//! | `GET .../config` | the model configuration in Triton's JSON form |
//! | `POST .../infer` | inference, JSON tensors and the binary tensor extension ([`infer`]) |
//! | `GET .../stats`, `GET /v2/models/stats` | Triton's statistics extension |
//! | `POST /v2/repository/index` | every model in the repository with its state |
//!
//! Inference requests go through the model's batcher like telemetry windows
//! do (one queue entry per batch item), so HTTP clients and telemetry share
//! the latency budget and the buckets. Errors are `{"error": "..."}` with a
//! 4xx/5xx status. References: the KServe "Open Inference Protocol (V2)"
//! REST spec; Triton's `docs/protocol/extension_*.md`.

pub mod config_json;
pub mod grpc;
pub mod infer;
pub mod protocol;

pub use protocol::KserveError;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

use crate::batch::BatchHandle;
use crate::engine::TensorSpec;
use crate::http::{HttpReply, HttpRequest};
use crate::infer::stats::InferStats;
use crate::infer::Job;
use crate::repository::{ModelConfig, ModelRepository};
use crate::status::StatusBoard;

/// One model as the inference endpoints serve it.
#[derive(Debug)]
pub struct ServedModel {
    /// Model name (the repository folder's).
    pub name: String,
    /// This version (a model serves every version its policy selects).
    pub version: u64,
    /// The name the status board and telemetry know this version by: the
    /// pipeline's `model` (`<name>` for the default version scored by a
    /// pipeline, `<name>@<version>` otherwise).
    pub key: String,
    /// Its config.pbtxt.
    pub config: ModelConfig,
    /// Its one input, per batch item.
    pub input: TensorSpec,
    /// Its outputs as the engine produces them, per batch item.
    pub outputs: Vec<TensorSpec>,
    /// Its batch queue, shared with the telemetry pipeline.
    pub handle: BatchHandle<Job>,
    /// The largest batch an HTTP request may carry (the largest bucket).
    pub max_batch: usize,
    /// Its statistics, shared with its engine threads.
    pub stats: Arc<InferStats>,
}

/// The models the inference endpoints serve; filled in by the service as
/// engines come up, read by the HTTP workers.
#[derive(Debug, Default)]
pub struct ServedModels {
    /// Per model name, per version.
    models: RwLock<BTreeMap<String, BTreeMap<u64, Arc<ServedModel>>>>,
    repository: Option<ModelRepository>,
}

impl ServedModels {
    /// An empty registry over `repository` (listed by `POST /v2/repository/index`).
    pub fn new(repository: Option<ModelRepository>) -> Self {
        Self {
            models: RwLock::default(),
            repository,
        }
    }

    /// Starts serving `model` (its name and version).
    pub fn insert(&self, model: ServedModel) {
        self.models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(model.name.clone())
            .or_default()
            .insert(model.version, Arc::new(model));
    }

    /// The highest served version of the model named `name`, if any: what a
    /// request that names no version gets (Triton's rule).
    pub fn get(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .and_then(|versions| versions.values().next_back().cloned())
    }

    /// Version `version` of the model named `name`, if served.
    pub fn get_version(&self, name: &str, version: u64) -> Option<Arc<ServedModel>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .and_then(|versions| versions.get(&version).cloned())
    }

    /// The versions of `name` served, ascending.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every served version of every model, by name then version.
    fn all(&self) -> Vec<Arc<ServedModel>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|versions| versions.values().cloned())
            .collect()
    }
}

/// What the routes and the gRPC methods need.
#[derive(Debug)]
pub struct Context<'a> {
    /// Live status (readiness, metrics).
    pub board: &'a StatusBoard,
    /// The served models.
    pub models: &'a ServedModels,
    /// Longest an inference waits for its results.
    pub infer_timeout: std::time::Duration,
}

fn not_found(what: String) -> HttpReply {
    HttpReply::error(404, what)
}

/// The HTTP reply to a refused request: `{"error": ...}` with the status
/// [`KserveError::http_status`] gives.
pub fn error_reply(e: &KserveError) -> HttpReply {
    HttpReply::error(e.http_status(), e.to_string())
}

fn method_not_allowed(path: &str, allowed: &str) -> HttpReply {
    HttpReply::error(
        405,
        format!("{path} takes {allowed}; see the KServe v2 REST protocol"),
    )
    .with_header("Allow", allowed)
}

/// Whether `path` (without the query) is a KServe endpoint that changes or
/// runs something and so may require the bearer token. The gRPC front end
/// applies the same rule to its methods ([`grpc::needs_token`]).
pub fn needs_token(path: &str) -> bool {
    path == "/v2/repository/index" || (path.starts_with("/v2/models/") && path.ends_with("/infer"))
}

/// Decodes `%XX` escapes in one path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a request whose path starts with `/v2`.
pub fn route(req: &HttpRequest, ctx: &Context<'_>) -> HttpReply {
    let path = req.path.as_str();
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    let post = req.method == "POST";
    match path {
        "/v2" | "/v2/" if get => HttpReply::json(200, &server_metadata()),
        "/v2/health/live" if get => HttpReply::empty(200),
        "/v2/health/ready" if get => HttpReply::empty(if ctx.board.are_models_ready() {
            200
        } else {
            400
        }),
        "/v2/models/stats" if get => {
            let stats: Vec<Value> = ctx
                .models
                .all()
                .iter()
                .map(|m| m.stats.to_json(&m.name, m.version))
                .collect();
            HttpReply::json(200, &json!({ "model_stats": stats }))
        }
        "/v2/repository/index" if post => match protocol::repository_index(ctx) {
            Ok(index) => HttpReply::json(200, &json!(index)),
            Err(e) => error_reply(&e),
        },
        "/v2" | "/v2/" | "/v2/health/live" | "/v2/health/ready" | "/v2/models/stats" => {
            method_not_allowed(path, "GET")
        }
        "/v2/repository/index" => method_not_allowed(path, "POST"),
        _ => match path.strip_prefix("/v2/models/") {
            Some(rest) => model_route(req, rest, ctx),
            None => not_found(format!(
                "no endpoint {path}; see GET /v2 and the KServe v2 REST protocol"
            )),
        },
    }
}

fn server_metadata() -> Value {
    json!({
        "name": protocol::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": protocol::EXTENSIONS,
    })
}

/// `<m>[/versions/<v>][/ready|/config|/infer|/stats]`.
fn model_route(req: &HttpRequest, rest: &str, ctx: &Context<'_>) -> HttpReply {
    let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
    let (name, version, action) = match segments.as_slice() {
        [m] => (m, None, ""),
        [m, a] => (m, None, a.as_str()),
        [m, v, ver] if v == "versions" => (m, Some(ver.as_str()), ""),
        [m, v, ver, a] if v == "versions" => (m, Some(ver.as_str()), a.as_str()),
        _ => return not_found(format!("no endpoint {}", req.path)),
    };
    let model = match protocol::find_model(ctx.models, name, version) {
        Ok(model) => model,
        Err(e) => return error_reply(&e),
    };
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    match action {
        "" if get => HttpReply::json(
            200,
            &json!(protocol::model_metadata(
                &model,
                &ctx.models.versions(&model.name)
            )),
        ),
        "ready" if get => HttpReply::empty(if ctx.board.is_model_ready(&model.key) {
            200
        } else {
            400
        }),
        "config" if get => HttpReply::json(200, &config_json::model_config(&model.config)),
        "stats" if get => HttpReply::json(
            200,
            &json!({ "model_stats": [model.stats.to_json(&model.name, model.version)] }),
        ),
        "infer" if req.method == "POST" => match protocol::require_ready(ctx, &model) {
            Ok(()) => infer::infer(req, &model, ctx),
            Err(e) => error_reply(&e),
        },
        "" | "ready" | "config" | "stats" => method_not_allowed(&req.path, "GET"),
        "infer" => method_not_allowed(&req.path, "POST"),
        other => not_found(format!(
            "no endpoint `{other}` for model `{name}`; use ready, config, infer or stats"
        )),
    }
}

/// A served model for unit tests and fuzz targets: batched
/// (`max_batch_size: 4`, input `window` [2, 3], outputs `forecast` [2]
/// and `score` [1]) or not (input [3], output `forecast` [2]), named
/// `m`, version 1, with a batch queue nothing takes from.
#[doc(hidden)]
pub fn test_model(batched: bool) -> ServedModel {
    let text = if batched {
        "platform: \"onnxruntime_onnx\" max_batch_size: 4 \
         input [ { name: \"window\" data_type: TYPE_FP32 dims: [ 2, 3 ] } ] \
         output [ { name: \"forecast\" data_type: TYPE_FP32 dims: [ 2 ] }, \
                  { name: \"score\" data_type: TYPE_FP32 dims: [ 1 ] } ]"
    } else {
        "platform: \"onnxruntime_onnx\" max_batch_size: 0 \
         input [ { name: \"window\" data_type: TYPE_FP32 dims: [ 3 ] } ] \
         output [ { name: \"forecast\" data_type: TYPE_FP32 dims: [ 2 ] } ]"
    };
    let (config, _) = ModelConfig::parse(text).expect("the test model's config.pbtxt");
    let spec = |t: &crate::repository::TensorConfig| TensorSpec {
        name: t.name.clone(),
        dims: t.dims.iter().map(|&d| d as usize).collect(),
    };
    let max_batch = if batched { 4 } else { 1 };
    ServedModel {
        name: "m".into(),
        version: 1,
        key: "m".into(),
        input: spec(&config.inputs[0]),
        outputs: config.outputs.iter().map(spec).collect(),
        config,
        handle: BatchHandle::new(crate::batch::BatchQueue::new(
            8,
            vec![max_batch],
            std::time::Duration::from_millis(1),
        )),
        max_batch,
        stats: Arc::default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("smap%5Flstm"), "smap_lstm");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }

    #[test]
    fn token_protects_running_and_listing_only() {
        assert!(needs_token("/v2/models/m/infer"));
        assert!(needs_token("/v2/models/m/versions/1/infer"));
        assert!(needs_token("/v2/repository/index"));
        assert!(!needs_token("/v2/models/m"));
        assert!(!needs_token("/v2/models/m/stats"));
        assert!(!needs_token("/api/status"));
    }
}
