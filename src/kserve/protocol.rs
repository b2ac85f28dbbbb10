//! The KServe v2 protocol's operations, apart from how they travel: both
//! front ends, HTTP/JSON ([`super::route`], [`super::infer`]) and gRPC
//! ([`super::grpc`]), decode a request into these calls and encode what
//! they return. A model is found, a tensor checked against it, an
//! inference queued on its batcher and waited for, and every refusal
//! named, in this one place, so the two front ends cannot drift apart.
//!
//! References: the KServe "Open Inference Protocol (V2)" (server and model
//! metadata, inference); Triton's `docs/protocol/extension_*.md`
//! (statistics, model configuration, repository index).

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{Context, ServedModel, ServedModels};
use crate::infer::stats::Timing;
use crate::infer::{ItemResult, Job, RequestItem, RequestSource, Work, HTTP_CHANNEL};

/// The server name in the server metadata.
pub const SERVER_NAME: &str = "gsinfer";

/// The protocol extensions implemented in full (the server metadata's
/// `extensions`). The repository index is served too, but not the rest of
/// the model_repository extension (load, unload).
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "statistics", "model_configuration"];

/// The one datatype gsinfer's models take and give (KServe name).
pub const DATATYPE: &str = "FP32";

/// Each batch row's outputs, in the model's output order; rows in request order.
pub type Rows = Vec<Vec<Vec<f32>>>;

/// Why a KServe request was not answered. One message for both front ends;
/// each maps the kind to its own status (HTTP code, gRPC code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KserveError {
    /// The request does not fit the model or the protocol: input name,
    /// datatype, shape or byte count, an unknown output, a parameter
    /// gsinfer does not honour (HTTP 400, gRPC `INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// No such model or version (HTTP 404, gRPC `NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The model is loading, rebuilding or failed (HTTP 503, gRPC `UNAVAILABLE`).
    #[error(
        "model `{0}` is not ready (loading, rebuilding or failed); its ready endpoint says when"
    )]
    NotReady(String),
    /// The model's batch queue has no room for the request's items, or is
    /// closed because the service is stopping (HTTP 503, gRPC `UNAVAILABLE`).
    #[error("model `{model}`'s batch queue has no room for {items} more items (or is shutting down); retry later")]
    QueueFull {
        /// The model.
        model: String,
        /// The request's batch items.
        items: usize,
    },
    /// No result within `status.infer_timeout_ms` (HTTP 503, gRPC
    /// `DEADLINE_EXCEEDED`).
    #[error("no result from model `{model}` within {ms} ms (status.infer_timeout_ms); the engine is overloaded")]
    TimedOut {
        /// The model.
        model: String,
        /// The timeout, in ms.
        ms: u128,
    },
    /// The engine failed on the batch (HTTP 500, gRPC `INTERNAL`).
    #[error("{0}")]
    Engine(String),
    /// The model repository cannot be listed (HTTP 500, gRPC `INTERNAL`).
    #[error("cannot list the repository: {0}")]
    Repository(String),
}

impl KserveError {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            KserveError::Invalid(_) => 400,
            KserveError::NotFound(_) => 404,
            KserveError::NotReady(_)
            | KserveError::QueueFull { .. }
            | KserveError::TimedOut { .. } => 503,
            KserveError::Engine(_) | KserveError::Repository(_) => 500,
        }
    }
}

/// The served model `name` at `version` (`None` or empty: the version
/// served; gsinfer serves one version per model).
///
/// # Errors
/// [`KserveError::NotFound`] naming the models served, or the version served.
pub fn find_model(
    models: &ServedModels,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ServedModel>, KserveError> {
    let Some(latest) = models.get(name) else {
        let mut served: Vec<String> = models.all().iter().map(|m| m.name.clone()).collect();
        served.dedup();
        return Err(KserveError::NotFound(format!(
            "unknown model `{name}`; this server serves {served:?} (the repository index lists the repository)"
        )));
    };
    let Some(v) = version.filter(|v| !v.is_empty()) else {
        return Ok(latest);
    };
    v.parse::<u64>()
        .ok()
        .and_then(|v| models.get_version(name, v))
        .ok_or_else(|| {
            KserveError::NotFound(format!(
                "model `{name}` version {v} is not served; versions {:?} are (its config.pbtxt's version_policy selects them)",
                models.versions(name)
            ))
        })
}

/// Refuses a request for a model that is not ready to run it.
///
/// # Errors
/// [`KserveError::NotReady`].
pub fn require_ready(ctx: &Context<'_>, model: &ServedModel) -> Result<(), KserveError> {
    if ctx.board.is_model_ready(&model.key) {
        Ok(())
    } else {
        Err(KserveError::NotReady(model.name.clone()))
    }
}

/// An input tensor's header as a request states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputHeader<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its KServe datatype, e.g. `"FP32"`.
    pub datatype: &'a str,
    /// Its shape, with the batch dimension first when the model batches.
    pub shape: &'a [i64],
}

fn join(dims: &[i64]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a request's inputs against `model` (exactly its one input, by
/// name, FP32, shape `[n, dims...]` with n from 1 to the largest bucket, or
/// `[dims...]` for a model without a batch dimension); returns n, the
/// request's batch items (1 for a model without a batch dimension). The
/// input then holds n × the input's item length values.
///
/// # Errors
/// [`KserveError::Invalid`] naming the input, the value sent and what the
/// model takes.
pub fn check_inputs(model: &ServedModel, inputs: &[InputHeader<'_>]) -> Result<usize, KserveError> {
    let spec = &model.input;
    let [input] = inputs else {
        return Err(KserveError::Invalid(format!(
            "model `{}` takes exactly one input, `{}`; the request has {}",
            model.name,
            spec.name,
            inputs.len()
        )));
    };
    if input.name != spec.name {
        return Err(KserveError::Invalid(format!(
            "unknown input `{}` for model `{}`; its input is `{}`",
            input.name, model.name, spec.name
        )));
    }
    if input.datatype != DATATYPE {
        return Err(KserveError::Invalid(format!(
            "input `{}` is {DATATYPE}, the request says {}; send {DATATYPE}",
            spec.name, input.datatype
        )));
    }
    let batched = model.config.max_batch_size > 0;
    let (batch, dims) = match (batched, input.shape.split_first()) {
        (true, Some((b, rest))) => (*b, rest),
        _ => (1, input.shape),
    };
    let want: Vec<i64> = spec.dims.iter().map(|d| *d as i64).collect();
    if dims != want.as_slice() || batch < 1 || batch as usize > model.max_batch {
        let expected = if batched {
            format!("[n, {}] with n from 1 to {}", join(&want), model.max_batch)
        } else {
            format!("[{}]", join(&want))
        };
        return Err(KserveError::Invalid(format!(
            "input `{}` has shape {:?}; model `{}` takes {expected}",
            spec.name, input.shape, model.name
        )));
    }
    Ok(batch as usize)
}

/// The index, in the model's outputs, of the output a request asks for by
/// `name`; `classification` is whether it asks for Triton's classification
/// extension on it.
///
/// # Errors
/// [`KserveError::Invalid`] for an unknown output (naming the model's) or
/// a classification.
pub fn output_index(
    model: &ServedModel,
    name: &str,
    classification: bool,
) -> Result<usize, KserveError> {
    if classification {
        return Err(KserveError::Invalid(
            "the classification extension is not supported; ask for the raw output".into(),
        ));
    }
    model
        .outputs
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = model.outputs.iter().map(|s| s.name.as_str()).collect();
            KserveError::Invalid(format!(
                "unknown output `{name}` for model `{}`; its outputs are {names:?}",
                model.name
            ))
        })
}

/// FP32 elements from their little-endian bytes, as KServe's binary
/// tensor data (HTTP) and raw contents (gRPC) carry them; a trailing
/// partial element is ignored (callers check the byte count first).
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `dims` with the batch dimension in front when the model batches:
/// `batch` as given, or `-1` (variable) for metadata.
pub fn with_batch(model: &ServedModel, dims: &[usize], batch: i64) -> Vec<i64> {
    let batch = (model.config.max_batch_size > 0).then_some(batch);
    batch
        .into_iter()
        .chain(dims.iter().map(|d| *d as i64))
        .collect()
}

/// Runs one inference request on `model`'s batcher: each of its `batch`
/// items (`values`, row-major, `batch` × the input's item length) becomes
/// one entry of the model's batch queue, all or none (a full queue refuses
/// the request rather than displace telemetry windows); then waits up to
/// `ctx.infer_timeout` for every item's result. Records the request in the
/// model's statistics (success or failure, timed from `received`), the
/// queue depth, and the items dropped when the queue is full.
///
/// Blocks the calling thread while it waits.
///
/// # Errors
/// [`KserveError::QueueFull`], [`KserveError::TimedOut`] or
/// [`KserveError::Engine`].
pub fn infer(
    ctx: &Context<'_>,
    model: &ServedModel,
    source: RequestSource,
    batch: usize,
    values: Vec<f32>,
    received: Instant,
) -> Result<Rows, KserveError> {
    let item_len = model.input.item_len();
    let (tx, rx) = crossbeam_channel::bounded::<ItemResult>(batch);
    let now = Instant::now();
    let jobs: Vec<Job> = values
        .chunks_exact(item_len)
        .enumerate()
        .map(|(row, v)| Job {
            queued: now,
            work: Work::Request(RequestItem {
                row,
                values: v.to_vec(),
                source,
                reply: tx.clone(),
            }),
        })
        .collect();
    drop(tx);
    let fail = |e: KserveError| {
        model.stats.record_failure(received.elapsed());
        e
    };
    if model
        .handle
        .push_all_if_room(HTTP_CHANNEL, jobs, now)
        .is_err()
    {
        ctx.board.metrics.dropped(
            &model.key,
            crate::batch::DropReason::QueueFull,
            batch as u64,
        );
        return Err(fail(KserveError::QueueFull {
            model: model.name.clone(),
            items: batch,
        }));
    }
    ctx.board
        .metrics
        .set_queue_depth(&model.key, model.handle.depth());
    let deadline = now + ctx.infer_timeout;
    let mut rows: Vec<Option<Vec<Vec<f32>>>> = vec![None; batch];
    let mut timing = Timing::default();
    for _ in 0..batch {
        match rx.recv_deadline(deadline) {
            Ok(ItemResult {
                row,
                outputs: Ok(o),
                timing: t,
            }) => {
                rows[row] = Some(o);
                timing = timing.max(t);
            }
            Ok(ItemResult {
                outputs: Err(e), ..
            }) => return Err(fail(KserveError::Engine(e))),
            Err(_) => {
                return Err(fail(KserveError::TimedOut {
                    model: model.name.clone(),
                    ms: ctx.infer_timeout.as_millis(),
                }))
            }
        }
    }
    model.stats.record_success(received.elapsed(), &timing);
    Ok(rows.into_iter().map(|r| r.unwrap_or_default()).collect())
}

/// One tensor of a model's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// Its KServe datatype.
    pub datatype: &'static str,
    /// Its shape; `-1` is the batch dimension.
    pub shape: Vec<i64>,
}

/// A model's metadata (KServe v2 "Model Metadata").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// The versions served (one).
    pub versions: Vec<String>,
    /// Triton's platform name, e.g. `onnxruntime_onnx`.
    pub platform: &'static str,
    /// Its one input.
    pub inputs: Vec<TensorMetadata>,
    /// Its outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// `model`'s metadata; `versions` lists every served version of it, as
/// Triton's metadata does.
pub fn model_metadata(model: &ServedModel, versions: &[u64]) -> ModelMetadata {
    let tensor = |spec: &crate::engine::TensorSpec| TensorMetadata {
        name: spec.name.clone(),
        datatype: DATATYPE,
        shape: with_batch(model, &spec.dims, -1),
    };
    ModelMetadata {
        name: model.name.clone(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: model.config.platform.triton_name(),
        inputs: vec![tensor(&model.input)],
        outputs: model.outputs.iter().map(tensor).collect(),
    }
}

/// One model of the repository index (Triton's `RepositoryIndexResponse.ModelIndex`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    /// The model's folder name.
    pub name: String,
    /// The version this entry is for; `None` for a model no pipeline serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why not ready; empty when ready.
    pub reason: &'static str,
}

/// Every model folder of the repository and every served model, by name,
/// with its state.
///
/// # Errors
/// [`KserveError::Repository`] when the repository cannot be listed.
pub fn repository_index(ctx: &Context<'_>) -> Result<Vec<IndexEntry>, KserveError> {
    let mut names: Vec<String> = match &ctx.models.repository {
        Some(repo) => repo
            .model_names()
            .map_err(|e| KserveError::Repository(e.to_string()))?,
        None => Vec::new(),
    };
    for m in ctx.models.all() {
        if !names.contains(&m.name) {
            names.push(m.name.clone());
        }
    }
    names.sort();
    let mut index = Vec::new();
    for name in names {
        let served: Vec<_> = ctx
            .models
            .versions(&name)
            .into_iter()
            .filter_map(|v| ctx.models.get_version(&name, v))
            .collect();
        if served.is_empty() {
            index.push(IndexEntry {
                name,
                version: None,
                state: "UNAVAILABLE",
                reason: "in the repository but served by no [[pipeline]] of the configuration",
            });
            continue;
        }
        // One entry per served version, as Triton lists them.
        for m in served {
            let ready = ctx.board.is_model_ready(&m.key);
            index.push(IndexEntry {
                name: name.clone(),
                version: Some(m.version.to_string()),
                state: if ready { "READY" } else { "UNAVAILABLE" },
                reason: if ready {
                    ""
                } else {
                    "the engine is loading, rebuilding or failed; see /api/status"
                },
            });
        }
    }
    Ok(index)
}
