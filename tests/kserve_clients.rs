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

use std::path::Path;
use std::process::Command;

use common::gsinfer::{http_get, wait_until, Service};
use common::kserve::{python_has, reference_batch, token_config, BATCH};

#[test]
fn tritonclient_and_prometheus_parsers_accept_gsinfer() {
    if !python_has(
        "numpy, tritonclient.http, prometheus_client",
        "'tritonclient[http]' prometheus-client",
    ) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();

    reference_batch(dir.path(), 42);

    let (config, status_port) = token_config(dir.path(), "kserve-test-token");
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
