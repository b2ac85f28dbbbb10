//! The KServe v2 router (`kserve::route`): request paths under
//! `/v2` (split into segments, percent-decoded, matched to a model,
//! version and action) with any method and body, against a server with
//! one model, `m` version 1, that is still loading. The first byte picks
//! the method; the rest, up to a newline, is the path after `/v2`, and
//! what follows is the body. Checks: the status is one the protocol
//! uses; every error with a body is `{"error": "..."}`; a 405 names the
//! allowed methods; and nothing runs on a model that is not ready.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gsinfer::batch::{BatchHandle, BatchQueue};
use gsinfer::engine::TensorSpec;
use gsinfer::repository::ModelConfig;
use gsinfer::http::HttpRequest;
use gsinfer::kserve::{self, Context, ServedModel, ServedModels};
use gsinfer::status::{ModelState, StatusBoard, StatusConfig};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"];

struct Server {
    board: Arc<StatusBoard>,
    models: ServedModels,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (config, _) = ModelConfig::parse(
            "platform: \"onnxruntime_onnx\" max_batch_size: 4 \
             input [ { name: \"window\" data_type: TYPE_FP32 dims: [ 2, 3 ] } ] \
             output [ { name: \"forecast\" data_type: TYPE_FP32 dims: [ 2 ] } ]",
        )
        .expect("the fuzz model's config.pbtxt");
        let models = ServedModels::new(None);
        models.insert(ServedModel {
            name: "m".into(),
            version: 1,
            input: TensorSpec {
                name: "window".into(),
                dims: vec![2, 3],
            },
            outputs: vec![TensorSpec {
                name: "forecast".into(),
                dims: vec![2],
            }],
            config,
            handle: BatchHandle::new(BatchQueue::new(8, vec![4], Duration::from_millis(1))),
            max_batch: 4,
            stats: Arc::default(),
        });
        let board = StatusBoard::new(StatusConfig::default());
        board.set_model("m", "tract", ModelState::Loading, 1, 1000, &[4]);
        Server { board, models }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let method = METHODS[usize::from(m) % METHODS.len()];
    let req = HttpRequest {
        method: method.into(),
        path: format!("/v2{}", String::from_utf8_lossy(path)),
        headers: Vec::new(),
        body: body.to_vec(),
        received: Instant::now(),
    };
    let s = server();
    let ctx = Context {
        board: &s.board,
        models: &s.models,
        infer_timeout: Duration::from_millis(1),
    };
    let reply = kserve::route(&req, &ctx);
    assert!(
        matches!(reply.status, 200 | 400 | 404 | 405 | 503),
        "{} {}: {reply:?}",
        req.method,
        req.path
    );
    if reply.status >= 400 && !reply.body.is_empty() {
        let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("errors are json");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    if reply.status == 405 {
        assert!(reply.headers.iter().any(|(k, _)| k == "Allow"), "{reply:?}");
    }
    if req.path.ends_with("/infer") && reply.status == 200 {
        panic!("{} ran on a model that is not ready", req.path);
    }
    assert_eq!(
        s.models.get("m").map(|m| m.handle.depth()),
        Some(0),
        "nothing is queued"
    );
});
