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

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gsinfer::{free_port, http_get, wait_until, Service, GUARD};
use common::kserve::{python_has, reference_batch, token_config, BATCH};

fn grpc_port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn tritonclient_grpc_accepts_gsinfer() {
    if !python_has(
        "numpy, tritonclient.grpc, tritonclient.http",
        "'tritonclient[grpc,http]'",
    ) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();

    reference_batch(dir.path(), 7);
    let fdset = dir.path().join("grpc_service.fdset");
    std::fs::write(&fdset, gsinfer::kserve::grpc::proto::FILE_DESCRIPTOR_SET).unwrap();

    let (config, status_port) = token_config(dir.path(), "grpc-test-token");
    let grpc_port = free_port();
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
