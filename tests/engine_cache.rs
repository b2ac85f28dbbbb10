//! The engine cache and the TensorRT fallbacks, driven through the real
//! `gsinfer` binary on this machine, which has no GPU: a model whose
//! config.pbtxt asks for TensorRT is reported, cannot be built (one clear
//! line, exit 1), and is served on tract by `gsinfer run` with the reason on
//! the status page; plans in the engine directory that are truncated,
//! corrupted or half-written are never reported fresh, and leftovers of an
//! interrupted build are swept.
//!
//! On a box with a GPU and TensorRT the same commands build and load real
//! plans; `gsinfer selftest` checks those against tract.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gsinfer::engine::cache::{DeviceKey, EngineCache, EngineKey, ProfileSpec};

const BIN: &str = env!("CARGO_BIN_EXE_gsinfer");

/// A repository with the example model, its config.pbtxt asking for
/// TensorRT (Triton's accelerator block), and a configuration serving it.
fn setup(dir: &Path, status_port: u16, broker_port: u16) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = dir.join("repo/smap_lstm");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::copy(
        root.join("model_repository/smap_lstm/1/model.onnx"),
        model.join("1/model.onnx"),
    )
    .unwrap();
    // KIND_GPU: Triton's (and gsinfer's) KIND_CPU never uses a GPU accelerator.
    let mut pbtxt = std::fs::read_to_string(root.join("model_repository/smap_lstm/config.pbtxt"))
        .unwrap()
        .replace("KIND_CPU", "KIND_GPU");
    pbtxt.push_str(
        "\noptimization { execution_accelerators { gpu_execution_accelerator : [ { name : \"tensorrt\" } ] } }\n",
    );
    std::fs::write(model.join("config.pbtxt"), pbtxt).unwrap();
    let example = std::fs::read_to_string(root.join("config/gsinfer.example.toml")).unwrap();
    let text = common::gsinfer::any_grpc_port(&common::gsinfer::counting_example(&example))
        .replace("path = \"../model_repository\"", "path = \"repo\"")
        .replace(
            "# engine_dir = \"/var/lib/gsinfer/engines\"",
            "engine_dir = \"engines\"",
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{status_port}\""),
        )
        .replace("port = 1883", &format!("port = {broker_port}"))
        .replace(
            "client_id = \"gsinfer\"",
            "client_id = \"gsinfer-engine-test\"",
        );
    assert!(
        text.contains("engine_dir = \"engines\""),
        "the example's [tensorrt] block changed"
    );
    let path = dir.join("gsinfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn gsinfer(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn key() -> EngineKey {
    EngineKey {
        device: DeviceKey {
            tensorrt: "10.3.0".into(),
            gpu: "NVIDIA L4".into(),
            compute_capability: (8, 9),
        },
        onnx_sha256: "00".repeat(32),
        profiles: vec![ProfileSpec::for_buckets("window", &[250, 25], &[1, 64], 64)],
        fp16: false,
    }
}

#[test]
fn without_a_gpu_build_fails_in_one_line_and_inspect_reports_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 0, 1);
    let config = config.to_str().unwrap();

    let (ok, text) = gsinfer(&["engine", "build", "--config", config]);
    assert!(!ok, "a build without a GPU must fail: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("smap_lstm: cannot build:"))
        .unwrap_or_else(|| panic!("no per-model line in {text}"));
    assert!(
        line.contains("NVIDIA driver") || line.contains("tensorrt"),
        "{line}"
    );

    let (ok, text) = gsinfer(&["engine", "inspect", "--config", config]);
    assert!(ok, "{text}");
    assert!(
        text.contains("engine:    TensorRT, built here from ONNX (FP32)"),
        "{text}"
    );
    assert!(text.contains("not built yet"), "{text}");
    assert!(text.contains("TensorRT unusable"), "{text}");

    // A plan built elsewhere, then damaged: inspect names the damage.
    let cache = EngineCache::new(dir.path().join("engines"));
    let plan: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
    cache.store("smap_lstm", 1, &key(), &plan, 12.5).unwrap();
    let (_, text) = gsinfer(&["engine", "inspect", "--config", config]);
    assert!(text.contains("fresh (built"), "{text}");
    assert!(
        text.contains("built for: TensorRT 10.3.0, NVIDIA L4 (sm 8.9), FP32"),
        "{text}"
    );
    assert!(
        text.contains("profile:   window min [1, 250, 25] opt [64, 250, 25] max [64, 250, 25]"),
        "{text}"
    );

    std::fs::write(cache.plan_path("smap_lstm", 1), &plan[..20_000]).unwrap();
    let (_, text) = gsinfer(&["engine", "inspect", "--config", config]);
    assert!(
        text.contains("corrupt:") && text.contains("truncated"),
        "{text}"
    );

    // What a SIGKILL in the middle of a plan write leaves behind is a
    // temporary file beside the plan; the next start sweeps it.
    let left = cache.model_dir("smap_lstm", 1).join(".gsinfer-tmp-Xy12ab");
    std::fs::write(&left, &plan[..1000]).unwrap();
    let (_, text) = gsinfer(&["engine", "inspect", "--config", config]);
    assert!(!left.exists(), "the leftover survived: {text}");
    assert!(text.contains("interrupted engine build"), "{text}");
}

/// Reads `/api/status` from the status server.
fn status(port: u16) -> Option<serde_json::Value> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    use std::io::Write;
    stream
        .write_all(b"GET /api/status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

#[test]
fn run_serves_a_tensorrt_model_on_tract_and_says_why() {
    if !common::mosquitto_available() {
        return;
    }
    let broker = common::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let status_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = setup(dir.path(), status_port, broker.port);
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("STATE_DIRECTORY", config.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let model = loop {
        if let Some(s) = status(status_port) {
            let m = s["models"][0].clone();
            if m["state"] == "ready" {
                break m;
            }
        }
        assert!(Instant::now() < deadline, "gsinfer never became ready");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The CPU engine `auto` picks: tract, or onnxruntime where its library
    // is bundled beside the binary (after scripts/demo.sh or scripts/deb.sh).
    let engine = model["engine"].as_str().unwrap_or_default();
    assert!(matches!(engine, "tract" | "onnxruntime"), "{model}");
    assert_eq!(model["device"], "CPU");
    let note = model["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("TensorRT is unusable")
            && note.contains(&format!("running on {engine} from")),
        "{model}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains(&format!("running on {engine} from")), "{log}");
}

/// Set in the child run of [`a_full_state_disk_keeps_the_old_plan_and_says_why`]
/// that executes inside its own user and mount namespace.
const FULL_DISK_CHILD: &str = "GSINFER_TEST_FULL_DISK_CHILD";

/// The state directory on a real, full file system: a 256 KiB tmpfs
/// mounted in a private user+mount namespace (`unshare -Urm`, no root
/// needed), in which this test binary runs itself again. A plan that does
/// not fit fails with the disk-full hint, the plan already there stays
/// fresh, and no temporary file is left behind.
#[test]
fn a_full_state_disk_keeps_the_old_plan_and_says_why() {
    if let Some(dir) = std::env::var_os(FULL_DISK_CHILD) {
        full_disk_child(Path::new(&dir));
        return;
    }
    let Some(unshare) = common::gsinfer::find_program(&["unshare"]) else {
        eprintln!("skipped: unshare(1) not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(unshare)
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_full_state_disk_keeps_the_old_plan_and_says_why",
            "--nocapture",
        ])
        .env(FULL_DISK_CHILD, dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && text.contains("unshare:") {
        eprintln!("skipped: no user namespaces here ({})", text.trim());
        return;
    }
    assert!(out.status.success(), "the child run failed:\n{text}");
    assert!(
        text.contains("full-disk: ok"),
        "the child run did not get to the end:\n{text}"
    );
}

fn full_disk_child(dir: &Path) {
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(mount.success(), "mount tmpfs inside the namespace");
    let cache = EngineCache::new(dir.join("engines"));
    let small = vec![7u8; 64 << 10];
    cache.store("smap_lstm", 1, &key(), &small, 1.0).unwrap();
    let huge = vec![9u8; 512 << 10];
    let err = cache
        .store("smap_lstm", 1, &key(), &huge, 1.0)
        .expect_err("a plan larger than the disk cannot be stored");
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    match cache.lookup("smap_lstm", 1, &key()) {
        gsinfer::engine::cache::Lookup::Fresh { plan, .. } => assert_eq!(plan, small),
        other => panic!("the old plan must stay usable, got {other}"),
    }
    assert!(cache.sweep().is_empty(), "a temporary file was left behind");
    println!("full-disk: ok ({err})");
}

/// Set in the child run of [`a_writer_killed_mid_plan_leaves_no_partial_plan_in_use`].
const WRITER_CHILD: &str = "GSINFER_TEST_PLAN_WRITER_CHILD";

/// A process storing 64 MiB plans over and over (each all one byte value,
/// alternating) is SIGKILLed while a temporary file is being written. The
/// cache then holds either a complete plan that matches its manifest, or a
/// plan/manifest pair that does not match and is reported corrupt: never a
/// partial plan reported fresh. The leftover temporary file is swept.
#[test]
fn a_writer_killed_mid_plan_leaves_no_partial_plan_in_use() {
    if let Some(dir) = std::env::var_os(WRITER_CHILD) {
        let cache = EngineCache::new(PathBuf::from(dir));
        for round in 0u64.. {
            let plan = vec![(round % 2) as u8 + 1; 64 << 20];
            cache.store("smap_lstm", 1, &key(), &plan, 1.0).unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engines = dir.path().join("engines");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_writer_killed_mid_plan_leaves_no_partial_plan_in_use",
        ])
        .env(WRITER_CHILD, &engines)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let model_dir = engines.join("smap_lstm/1");
    let cache = EngineCache::new(&engines);
    // Once a plan is stored, kill while a temporary file exists.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut polls_with_a_plan = 0;
    loop {
        assert!(Instant::now() < deadline, "the writer never got going");
        if cache.manifest("smap_lstm", 1).is_some() {
            polls_with_a_plan += 1;
        }
        let writing = std::fs::read_dir(&model_dir).ok().is_some_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".gsinfer-tmp-"))
        });
        if writing && polls_with_a_plan > 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    match cache.lookup("smap_lstm", 1, &key()) {
        gsinfer::engine::cache::Lookup::Fresh { plan, .. } => {
            assert_eq!(plan.len(), 64 << 20);
            assert!(
                plan.iter().all(|b| *b == plan[0]),
                "a fresh plan mixes two writes"
            );
        }
        gsinfer::engine::cache::Lookup::Corrupt { why } => {
            assert!(why.contains("sha256"), "{why}")
        }
        other => panic!("after the kill the cache says {other}"),
    }
    let swept = cache.sweep();
    assert!(
        !swept.is_empty(),
        "the partial temporary file was not swept"
    );
}
