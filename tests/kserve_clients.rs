//! gsinfer's KServe v2 endpoints and /metrics against the real clients:
//! Triton's `tritonclient` (metadata, inference with JSON and binary
//! tensors, statistics, repository index) and the Prometheus project's
//! Python parsers. The inference output must equal tract's (what `gsinfer
//! bench` runs) on the same input: `gsinfer bench`'s own seeded random
//! windows.
//!
//! Needs python3 with `tritonclient[http]` and `prometheus-client` (.ci/run
//! installs them); without them the test is skipped with a message, except
//! under CI (`CI` set), where it fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::gsinfer::{free_port, http_get, wait_until, write_config, Service};
use gsinfer::engine::tract::TractEngine;
use gsinfer::engine::{Engine, TensorSpec};
use rand::{Rng, SeedableRng};

/// A bucket of the example model, so the server runs the batch unpadded, as the reference does.
const BATCH: usize = 4;

fn python_has(modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let message = format!(
            "python3 cannot import {modules}; python3 -m pip install 'tritonclient[http]' prometheus-client"
        );
        assert!(std::env::var_os("CI").is_none(), "{message}");
        common::skip(&message);
    }
    ok
}

fn f32_file(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn tritonclient_and_prometheus_parsers_accept_gsinfer() {
    if !python_has("numpy, tritonclient.http, prometheus_client") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();

    // The input `gsinfer bench --batch 4` runs, and tract's output on it.
    let spec = TensorSpec {
        name: "window".into(),
        dims: vec![250, 25],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let input: Vec<f32> = (0..BATCH * spec.item_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut engine = TractEngine::load(
        &root.join("model_repository/smap_lstm/1/model.onnx"),
        &spec,
        &["forecast".into()],
    )
    .unwrap();
    // tract's first run of a batch size on a fresh engine differs from its
    // later runs by up to ~1.3e-4 on this model (later runs agree to ~1e-6),
    // so both sides are warmed up once: here, and in kserve_check.py.
    engine.infer(BATCH, &[&input]).unwrap();
    let expected = engine.infer(BATCH, &[&input]).unwrap().remove(0);
    f32_file(&dir.path().join("input.f32"), &input);
    f32_file(&dir.path().join("expected.f32"), &expected);

    let token = dir.path().join("token");
    std::fs::write(&token, "kserve-test-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // No broker is needed for HTTP inference; nothing listens on this port.
    let status_port = free_port();
    let config = write_config(
        dir.path(),
        free_port(),
        status_port,
        &format!("token_file = {:?}", token.display().to_string()),
    );
    let _service = Service::run(&config);
    assert!(
        wait_until(|| http_get(status_port, "/v2/health/ready").is_some_and(|(s, _)| s == 200)),
        "the KServe endpoints never became ready"
    );

    let out = Command::new("python3")
        .arg(root.join("tests/python/kserve_check.py"))
        .args(["--url", &format!("127.0.0.1:{status_port}")])
        .args(["--model", "smap_lstm", "--token", "kserve-test-token"])
        .arg("--input")
        .arg(dir.path().join("input.f32"))
        .arg("--expected")
        .arg(dir.path().join("expected.f32"))
        .args(["--batch", &BATCH.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "tritonclient: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let out = Command::new("python3")
        .arg(root.join("tests/python/metrics_check.py"))
        .arg(format!("http://127.0.0.1:{status_port}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "metrics check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "prometheus parsers: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
}
