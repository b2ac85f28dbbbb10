//! The body of a KServe v2 inference request (`POST /v2/models/<m>/infer`,
//! `kserve::infer::decode_request`): JSON tensors, or a JSON
//! header followed by binary tensor data. The first byte picks the model
//! (batched, `max_batch_size: 4` and dims [2, 3], or unbatched, dims [3]),
//! whether an `Inference-Header-Content-Length` header is sent (its value
//! from the next two bytes) and whether the body claims to be compressed;
//! the rest is the body. Checks: a refusal is a 400 or 415 with a JSON
//! `error` message; an accepted request has 1 to max_batch items, exactly
//! batch × item values and outputs the model has; and its values, sent
//! again as JSON data (when finite) and as binary data, decode to the same
//! values bit for bit.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use gsinfer::http::HttpRequest;
use gsinfer::kserve::infer::{decode_request, DecodedRequest, HEADER_LENGTH};
use gsinfer::kserve::{test_model, ServedModel};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn models() -> &'static [ServedModel; 2] {
    static MODELS: OnceLock<[ServedModel; 2]> = OnceLock::new();
    MODELS.get_or_init(|| [test_model(true), test_model(false)])
}

fn request(headers: Vec<(String, String)>, body: Vec<u8>) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: "/v2/models/m/infer".into(),
        headers,
        body,
        received: Instant::now(),
    }
}

/// The request for `d`'s values and outputs, as JSON data or binary data.
fn again(model: &ServedModel, d: &DecodedRequest, binary: bool) -> DecodedRequest {
    let mut shape: Vec<usize> = model.input.dims.clone();
    if model.config.max_batch_size > 0 {
        shape.insert(0, d.batch);
    }
    let mut input = json!({ "name": model.input.name, "datatype": "FP32", "shape": shape });
    if binary {
        input["parameters"] = json!({ "binary_data_size": d.values.len() * 4 });
    } else {
        input["data"] = json!(d.values);
    }
    let outputs: Vec<_> = d
        .outputs
        .iter()
        .map(|&(ix, b)| json!({ "name": model.outputs[ix].name, "parameters": { "binary_data": b } }))
        .collect();
    let mut header = json!({ "inputs": [input], "outputs": outputs });
    if let Some(id) = &d.id {
        header["id"] = json!(id);
    }
    let mut body = header.to_string().into_bytes();
    let mut headers = Vec::new();
    if binary {
        headers.push((HEADER_LENGTH.to_string(), body.len().to_string()));
        body.extend(d.values.iter().flat_map(|v| v.to_le_bytes()));
    }
    decode_request(&request(headers, body), model).unwrap_or_else(|e| {
        panic!(
            "re-encoded request refused: {}",
            String::from_utf8_lossy(&e.body)
        )
    })
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let model = &models()[usize::from(flags & 1)];
    let mut headers = Vec::new();
    let mut body = rest;
    if flags & 2 != 0 {
        let Some((n, b)) = rest.split_first_chunk::<2>() else {
            return;
        };
        headers.push((
            "inference-header-content-length".to_string(),
            u16::from_le_bytes(*n).to_string(),
        ));
        body = b;
    }
    if flags & 4 != 0 {
        headers.push(("Content-Encoding".to_string(), "gzip".to_string()));
    }
    match decode_request(&request(headers, body.to_vec()), model) {
        Err(reply) => {
            assert!(matches!(reply.status, 400 | 415), "{reply:?}");
            let v: serde_json::Value =
                serde_json::from_slice(&reply.body).expect("errors are json");
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
            if flags & 4 != 0 {
                assert_eq!(reply.status, 415);
            }
        }
        Ok(d) => {
            assert!(flags & 4 == 0, "a compressed body was accepted");
            assert!(d.batch >= 1 && d.batch <= model.max_batch, "{d:?}");
            assert_eq!(d.values.len(), d.batch * model.input.item_len());
            assert!(d.outputs.iter().all(|&(ix, _)| ix < model.outputs.len()));
            let binary = again(model, &d, true);
            assert_eq!(bits(&binary.values), bits(&d.values));
            assert_eq!(
                (binary.batch, &binary.outputs, &binary.id),
                (d.batch, &d.outputs, &d.id)
            );
            if d.values.iter().all(|v| v.is_finite()) {
                let json = again(model, &d, false);
                assert_eq!(bits(&json.values), bits(&d.values), "{:?}", d.values);
            }
        }
    }
});
