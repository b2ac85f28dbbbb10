//! `POST /v2/models/<m>/infer`: a KServe v2 inference request, with JSON
//! tensors or Triton's binary tensor data extension
//! (`docs/protocol/extension_binary_data.md`): the body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the raw tensors of
//! the inputs that give `parameters.binary_data_size`, in input order;
//! outputs asked for with `parameters.binary_data` (or the request's
//! `binary_data_output`) come back the same way.
//!
//! Each batch item of the request becomes one entry of the model's batch
//! queue, all or none (a full queue answers 503 rather than displace
//! telemetry windows); the worker then waits for every item's result, up
//! to `status.infer_timeout_ms`.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Context, ServedModel};
use crate::infer::{ItemResult, Job, RequestItem, Work, HTTP_CHANNEL};
use crate::status::http::{HttpReply, HttpRequest};
use crate::status::stats::Timing;

/// The header naming the JSON part's length in a binary request or reply.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

fn bad(message: impl Into<String>) -> HttpReply {
    HttpReply::error(400, message)
}

/// Appends the numbers of a (possibly nested) JSON array to `out`.
fn flatten(value: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or("a number out of range")? as f32);
            Ok(())
        }
        other => Err(format!("{other} is not a number")),
    }
}

/// The request's batch size and its input values, checked against the model.
fn input_values(
    req: &InferRequest,
    binary: &[u8],
    model: &ServedModel,
) -> Result<(usize, Vec<f32>), HttpReply> {
    let spec = &model.input;
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!(
            "model `{}` takes exactly one input, `{}`; the request has {}",
            model.name,
            spec.name,
            req.inputs.len()
        )));
    };
    if input.name != spec.name {
        return Err(bad(format!(
            "unknown input `{}` for model `{}`; its input is `{}`",
            input.name, model.name, spec.name
        )));
    }
    if input.datatype != "FP32" {
        return Err(bad(format!(
            "input `{}` is FP32, the request says {}; send FP32",
            spec.name, input.datatype
        )));
    }
    let batched = model.config.max_batch_size > 0;
    let (batch, dims) = match (batched, input.shape.split_first()) {
        (true, Some((b, rest))) => (*b, rest),
        _ => (1, input.shape.as_slice()),
    };
    let want: Vec<i64> = spec.dims.iter().map(|d| *d as i64).collect();
    if dims != want.as_slice() || batch < 1 || batch as usize > model.max_batch {
        let expected = if batched {
            format!("[n, {}] with n from 1 to {}", join(&want), model.max_batch)
        } else {
            format!("[{}]", join(&want))
        };
        return Err(bad(format!(
            "input `{}` has shape {:?}; model `{}` takes {expected}",
            spec.name, input.shape, model.name
        )));
    }
    let batch = batch as usize;
    let count = batch * spec.item_len();
    let values = match (input.parameters.get("binary_data_size"), &input.data) {
        (Some(size), _) => {
            let size = size.as_u64().ok_or_else(|| {
                bad("parameters.binary_data_size must be a byte count".to_string())
            })? as usize;
            if size != count * 4 || binary.len() < size {
                return Err(bad(format!(
                    "input `{}`: binary_data_size {size} with {} bytes of binary data; shape {:?} of FP32 takes {} bytes",
                    spec.name,
                    binary.len(),
                    input.shape,
                    count * 4
                )));
            }
            binary[..size]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (None, Some(data)) => {
            let mut values = Vec::with_capacity(count);
            flatten(data, &mut values)
                .map_err(|e| bad(format!("input `{}` data: {e}", spec.name)))?;
            if values.len() != count {
                return Err(bad(format!(
                    "input `{}` has {} values; shape {:?} takes {count}",
                    spec.name,
                    values.len(),
                    input.shape
                )));
            }
            values
        }
        (None, None) => {
            return Err(bad(format!(
                "input `{}` has neither `data` nor parameters.binary_data_size",
                spec.name
            )))
        }
    };
    let used = if input.parameters.contains_key("binary_data_size") {
        count * 4
    } else {
        0
    };
    if binary.len() != used {
        return Err(bad(format!(
            "the body has {} bytes of binary data, the inputs' binary_data_size account for {used}; check {HEADER_LENGTH}",
            binary.len()
        )));
    }
    Ok((batch, values))
}

fn join(dims: &[i64]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn flag(parameters: &Map<String, Value>, key: &str) -> bool {
    parameters
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Which outputs to return, as (index in the engine's outputs, binary?).
fn requested_outputs(
    req: &InferRequest,
    model: &ServedModel,
) -> Result<Vec<(usize, bool)>, HttpReply> {
    let all_binary = flag(&req.parameters, "binary_data_output");
    let Some(outputs) = &req.outputs else {
        return Ok((0..model.outputs.len()).map(|i| (i, all_binary)).collect());
    };
    outputs
        .iter()
        .map(|o| {
            if o.parameters.contains_key("classification") {
                return Err(bad(
                    "the classification extension is not supported; ask for the raw output",
                ));
            }
            let ix = model
                .outputs
                .iter()
                .position(|s| s.name == o.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = model.outputs.iter().map(|s| s.name.as_str()).collect();
                    bad(format!(
                        "unknown output `{}` for model `{}`; its outputs are {names:?}",
                        o.name, model.name
                    ))
                })?;
            Ok((ix, all_binary || flag(&o.parameters, "binary_data")))
        })
        .collect()
}

/// Splits the body into its JSON header and binary part.
fn split_body(req: &HttpRequest) -> Result<(&[u8], &[u8]), HttpReply> {
    if let Some(encoding) = req.header("Content-Encoding").filter(|e| *e != "identity") {
        return Err(HttpReply::error(
            415,
            format!("Content-Encoding {encoding} is not supported; send the request uncompressed"),
        ));
    }
    match req.header(HEADER_LENGTH) {
        None => Ok((&req.body, &[])),
        Some(n) => {
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| bad(format!("{HEADER_LENGTH} must be a byte count, got `{n}`")))?;
            if n > req.body.len() {
                return Err(bad(format!(
                    "{HEADER_LENGTH} {n} is beyond the body's {} bytes",
                    req.body.len()
                )));
            }
            Ok(req.body.split_at(n))
        }
    }
}

/// An inference request's body, decoded and checked against the model:
/// what [`infer`] queues and how it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRequest {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    /// Batch items, 1 to the model's `max_batch` (1 for a model without a
    /// batch dimension).
    pub batch: usize,
    /// The input's values, row-major: `batch` × the input's item length.
    pub values: Vec<f32>,
    /// The outputs to return, in response order: (index into the model's
    /// outputs, returned as binary tensor data?).
    pub outputs: Vec<(usize, bool)>,
}

/// Decodes the body of `req` (JSON, or JSON header plus binary tensor
/// data) as a KServe v2 inference request for `model`, without running it.
///
/// # Errors
/// The reply to send instead: 415 for a compressed body, 400 naming what
/// is wrong (not JSON, wrong input name, datatype, shape or byte count,
/// unknown output).
pub fn decode_request(req: &HttpRequest, model: &ServedModel) -> Result<DecodedRequest, HttpReply> {
    let (header, binary) = split_body(req)?;
    let request: InferRequest = serde_json::from_slice(header).map_err(|e| {
        bad(format!(
            "the request is not a KServe v2 inference request: {e}"
        ))
    })?;
    let (batch, values) = input_values(&request, binary, model)?;
    let outputs = requested_outputs(&request, model)?;
    Ok(DecodedRequest {
        id: request.id,
        batch,
        values,
        outputs,
    })
}

/// Serves one inference request on `model`.
pub fn infer(req: &HttpRequest, model: &ServedModel, ctx: &Context<'_>) -> HttpReply {
    ctx.board.metrics.input("http", req.body.len());
    let request = match decode_request(req, model) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let rows = match run(model, ctx, request.batch, request.values, req.received) {
        Ok(rows) => rows,
        Err(reply) => return reply,
    };
    let reply = encode(
        request.id.as_deref(),
        model,
        request.batch,
        &rows,
        &request.outputs,
    );
    ctx.board.record_end_to_end(
        &model.name,
        "http",
        req.received.elapsed().as_micros() as u64,
    );
    reply
}

/// Queues the request's items and waits for their results; each row's
/// outputs, in row order.
fn run(
    model: &ServedModel,
    ctx: &Context<'_>,
    batch: usize,
    values: Vec<f32>,
    received: Instant,
) -> Result<Vec<Vec<Vec<f32>>>, HttpReply> {
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
                reply: tx.clone(),
            }),
        })
        .collect();
    drop(tx);
    let fail = |status: u16, message: String| {
        model.stats.record_failure(received.elapsed());
        HttpReply::error(status, message)
    };
    if model
        .handle
        .push_all_if_room(HTTP_CHANNEL, jobs, now)
        .is_err()
    {
        ctx.board.metrics.dropped(
            &model.name,
            crate::batch::DropReason::QueueFull,
            batch as u64,
        );
        return Err(fail(
            503,
            format!(
                "model `{}`'s batch queue has no room for {batch} more items (or is shutting down); retry later",
                model.name
            ),
        ));
    }
    ctx.board
        .metrics
        .set_queue_depth(&model.name, model.handle.depth());
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
            }) => return Err(fail(500, e)),
            Err(_) => {
                return Err(fail(
                    503,
                    format!(
                        "no result from model `{}` within {} ms (status.infer_timeout_ms); the engine is overloaded",
                        model.name,
                        ctx.infer_timeout.as_millis()
                    ),
                ))
            }
        }
    }
    model.stats.record_success(received.elapsed(), &timing);
    Ok(rows.into_iter().map(|r| r.unwrap_or_default()).collect())
}

/// The response: JSON, or JSON header plus binary outputs.
fn encode(
    id: Option<&str>,
    model: &ServedModel,
    batch: usize,
    rows: &[Vec<Vec<f32>>],
    outputs: &[(usize, bool)],
) -> HttpReply {
    let mut binary = Vec::new();
    let tensors: Vec<Value> = outputs
        .iter()
        .map(|&(ix, as_binary)| {
            let spec = &model.outputs[ix];
            let mut shape: Vec<i64> = spec.dims.iter().map(|d| *d as i64).collect();
            if model.config.max_batch_size > 0 {
                shape.insert(0, batch as i64);
            }
            let values = rows.iter().flat_map(|r| r[ix].iter().copied());
            let mut t = json!({ "name": spec.name, "datatype": "FP32", "shape": shape });
            if as_binary {
                let start = binary.len();
                binary.extend(values.flat_map(f32::to_le_bytes));
                t["parameters"] = json!({ "binary_data_size": binary.len() - start });
            } else {
                t["data"] = json!(values.collect::<Vec<f32>>());
            }
            t
        })
        .collect();
    let mut body = json!({
        "model_name": model.name,
        "model_version": model.version.to_string(),
        "outputs": tensors,
    });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let header = body.to_string().into_bytes();
    if outputs.iter().any(|(_, b)| *b) {
        let len = header.len();
        let mut bytes = header;
        bytes.extend_from_slice(&binary);
        HttpReply::bytes(200, "application/octet-stream", bytes)
            .with_header(HEADER_LENGTH, &len.to_string())
    } else {
        HttpReply::bytes(200, "application/json", header)
    }
}
