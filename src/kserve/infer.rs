//! `POST /v2/models/<m>/infer`: a KServe v2 inference request, with JSON
//! tensors or Triton's binary tensor data extension
//! (`docs/protocol/extension_binary_data.md`): the body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the raw tensors of
//! the inputs that give `parameters.binary_data_size`, in input order;
//! outputs asked for with `parameters.binary_data` (or the request's
//! `binary_data_output`) come back the same way.
//!
//! The tensors are checked, and the inference run, by [`super::protocol`],
//! which the gRPC front end shares: each batch item of the request becomes
//! one entry of the model's batch queue, all or none (a full queue answers
//! 503 rather than displace telemetry windows); the worker then waits for
//! every item's result, up to `status.infer_timeout_ms`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::protocol::{self, InputHeader};
use super::{error_reply, Context, ServedModel};
use crate::http::{HttpReply, HttpRequest};
use crate::infer::RequestSource;

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
    let headers: Vec<InputHeader<'_>> = req
        .inputs
        .iter()
        .map(|i| InputHeader {
            name: &i.name,
            datatype: &i.datatype,
            shape: &i.shape,
        })
        .collect();
    let batch = protocol::check_inputs(model, &headers).map_err(|e| error_reply(&e))?;
    let input = &req.inputs[0];
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
            protocol::f32_from_le(&binary[..size])
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
            let classification = o.parameters.contains_key("classification");
            let ix = protocol::output_index(model, &o.name, classification)
                .map_err(|e| error_reply(&e))?;
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

/// Serves one inference request on `model` through its batcher
/// ([`protocol::infer`]).
pub fn infer(req: &HttpRequest, model: &ServedModel, ctx: &Context<'_>) -> HttpReply {
    ctx.board
        .metrics
        .input(RequestSource::Http.as_str(), 1, req.body.len());
    let request = match decode_request(req, model) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let rows = match protocol::infer(
        ctx,
        model,
        RequestSource::Http,
        request.batch,
        request.values,
        req.received,
    ) {
        Ok(rows) => rows,
        Err(e) => return error_reply(&e),
    };
    let reply = encode(
        request.id.as_deref(),
        model,
        request.batch,
        &rows,
        &request.outputs,
    );
    ctx.board.record_end_to_end(
        &model.key,
        RequestSource::Http.as_str(),
        req.received.elapsed().as_micros() as u64,
    );
    reply
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
            let shape = protocol::with_batch(model, &spec.dims, batch as i64);
            let values = rows.iter().flat_map(|r| r[ix].iter().copied());
            let mut t =
                json!({ "name": spec.name, "datatype": protocol::DATATYPE, "shape": shape });
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
