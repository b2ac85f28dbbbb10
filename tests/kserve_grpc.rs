//! gsinfer's KServe v2 gRPC API against the real client, Triton's
//! `tritonclient.grpc` (tests/python/kserve_grpc_check.py): the proto files
//! against the descriptors tritonclient carries; server and model
//! metadata, model config, readiness; inference (raw contents, as
//! tritonclient sends them) compared with tract's output on the same input
//! and with the HTTP API's; statistics counting it; the repository index;
//! the token; refusals and their codes; the counts on /metrics. Then
//! SIGTERM stops the service, gRPC server included.
//!
//! The gRPC address comes from `GSINFER__GRPC__LISTEN`, the documented
//! environment override. Needs python3 with `tritonclient[grpc]` and
//! `tritonclient[http]` (.ci/run installs them); without them the test is
//! skipped with a message, except under CI (`CI` set), where it fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gsinfer::{free_port, http_get, wait_until, write_config, Service, GUARD};
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
            "python3 cannot import {modules}; python3 -m pip install 'tritonclient[grpc,http]'"
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

fn grpc_port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn tritonclient_grpc_accepts_gsinfer() {
    if !python_has("numpy, tritonclient.grpc, tritonclient.http") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();

    // gsinfer bench's seeded random input, and tract's output on it.
    let spec = TensorSpec {
        name: "window".into(),
        dims: vec![250, 25],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let input: Vec<f32> = (0..BATCH * spec.item_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut engine = TractEngine::load(
        &root.join("model_repository/smap_lstm/1/model.onnx"),
        &spec,
        &["forecast".into()],
    )
    .unwrap();
    // tract's first run of a batch size differs from its later ones by up
    // to ~1.3e-4 on this model; both sides warm up once (see kserve_clients.rs).
    engine.infer(BATCH, &[&input]).unwrap();
    let expected = engine.infer(BATCH, &[&input]).unwrap().remove(0);
    f32_file(&dir.path().join("input.f32"), &input);
    f32_file(&dir.path().join("expected.f32"), &expected);
    let fdset = dir.path().join("grpc_service.fdset");
    std::fs::write(&fdset, gsinfer::kserve::grpc::proto::FILE_DESCRIPTOR_SET).unwrap();

    let token = dir.path().join("token");
    std::fs::write(&token, "grpc-test-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // No broker is needed for KServe inference; nothing listens on this port.
    let status_port = free_port();
    let grpc_port = free_port();
    let config = write_config(
        dir.path(),
        free_port(),
        status_port,
        &format!("token_file = {:?}", token.display().to_string()),
    );
    let grpc_listen = format!("127.0.0.1:{grpc_port}");
    let mut service = Service::run_with_env(&config, &[("GSINFER__GRPC__LISTEN", &grpc_listen)]);
    assert!(
        wait_until(|| http_get(status_port, "/v2/health/ready").is_some_and(|(s, _)| s == 200)),
        "the KServe endpoints never became ready"
    );
    assert!(
        grpc_port_open(grpc_port),
        "nothing listens on {grpc_listen}"
    );

    let out = Command::new("python3")
        .arg(root.join("tests/python/kserve_grpc_check.py"))
        .args(["--url", &grpc_listen])
        .args(["--http-url", &format!("127.0.0.1:{status_port}")])
        .args(["--model", "smap_lstm", "--token", "grpc-test-token"])
        .arg("--input")
        .arg(dir.path().join("input.f32"))
        .arg("--expected")
        .arg(dir.path().join("expected.f32"))
        .args(["--batch", &BATCH.to_string()])
        .arg("--fdset")
        .arg(&fdset)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient.grpc check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "tritonclient.grpc: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    // SIGTERM: the service stops, and the gRPC server with it.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(service.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "gsinfer did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "gsinfer exited with {status} on SIGTERM");
    assert!(
        !grpc_port_open(grpc_port),
        "{grpc_listen} still open after gsinfer stopped"
    );
}
