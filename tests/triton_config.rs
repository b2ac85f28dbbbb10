//! A Triton user's config.pbtxt, served honestly: every field either in
//! effect as Triton defines it or reported once at load with what gsinfer
//! does instead, `GET /v2/models/<m>/config` answering with the settings
//! in effect, and a config.pbtxt the repository refuses isolating that one
//! model. The real binary on a repository of three copies of the example
//! model; no broker is needed (KServe and the status page serve without).

mod common;

use std::path::{Path, PathBuf};

use common::gsinfer::{free_port, http_get, wait_until, write_config, LoggedService};
use serde_json::Value;

/// The example model under `name` in `repo`, its config.pbtxt edited by `edit`.
fn copy_model(repo: &Path, name: &str, edit: impl Fn(String) -> String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository/smap_lstm");
    let to = repo.join(name);
    std::fs::create_dir_all(to.join("1")).unwrap();
    std::fs::copy(root.join("1/model.onnx"), to.join("1/model.onnx")).unwrap();
    let text = std::fs::read_to_string(root.join("config.pbtxt"))
        .unwrap()
        .replace("name: \"smap_lstm\"", &format!("name: \"{name}\""));
    std::fs::write(to.join("config.pbtxt"), edit(text)).unwrap();
}

/// A pipeline serving `model`, with `batch` as its batch table.
fn pipeline(model: &str, batch: &str) -> String {
    format!(
        r#"
[[pipeline]]
model = "{model}"
topics = ["telemetry/{model}/+"]
features = 25
window = {{ length = 250 }}
batch = {{ {batch} }}
scoring = {{ kind = "forecast", threshold = {{ method = "ndt" }} }}
"#
    )
}

/// The example configuration over a repository of: `smap_lstm` as shipped;
/// `lstm_triton` as a Triton user wrote it (a 100 ms queue delay, `KIND_GPU`
/// with no accelerator, a variable time axis `dims: [ -1, 25 ]`) with no
/// budget in its pipeline; `lstm_refused`,
/// whose config.pbtxt gsinfer refuses (a negative `max_batch_size`).
fn setup(dir: &Path, status: u16) -> PathBuf {
    let repo = dir.join("repo");
    copy_model(&repo, "smap_lstm", |t| t);
    copy_model(&repo, "lstm_triton", |t| {
        t.replace(
            "max_queue_delay_microseconds: 20000",
            "max_queue_delay_microseconds: 100000",
        )
        .replace("KIND_CPU", "KIND_GPU")
        .replace("dims: [ 250, 25 ]", "dims: [ -1, 25 ]")
    });
    copy_model(&repo, "lstm_refused", |t| {
        t.replace("max_batch_size: 64", "max_batch_size: -4")
    });
    let path = write_config(dir, free_port(), status, "");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("path = {:?}", root.display().to_string()),
        &format!("path = {:?}", repo.display().to_string()),
    ) + &pipeline("lstm_triton", "queue_capacity = 4096")
        + &pipeline("lstm_refused", "queue_capacity = 4096");
    assert!(
        text.contains("repo\""),
        "the example's repository path changed"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn get_json(port: u16, path: &str) -> Value {
    let (code, body) = http_get(port, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn config_pbtxt_fields_are_in_effect_or_reported_and_a_refused_one_isolates_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = setup(dir.path(), port);
    let service = LoggedService::run(&config, dir.path());
    assert!(
        wait_until(|| http_get(port, "/v2/health/ready").is_some_and(|(s, _)| s == 200)),
        "gsinfer never became ready:\n{}",
        service.log()
    );

    // The refused config.pbtxt: that model failed, named with the fix; the
    // other two serve.
    let status = get_json(port, "/api/status");
    let models = status["models"].as_array().unwrap();
    let by = |name: &str| models.iter().find(|m| m["name"] == name).unwrap().clone();
    let refused = by("lstm_refused");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("max_batch_size -4 is negative"),
        "{refused}"
    );
    assert_eq!(by("smap_lstm")["state"], "ready");
    assert_eq!(by("lstm_triton")["state"], "ready");
    let log = service.log();
    assert!(log.contains("model lstm_refused is unavailable"), "{log}");
    let ready = |m: &str| http_get(port, &format!("/v2/models/{m}/ready")).map(|(s, _)| s);
    assert_eq!(ready("lstm_triton"), Some(200));
    assert_ne!(ready("lstm_refused"), Some(200));

    // max_queue_delay_microseconds is the budget where the pipeline sets
    // none; /config reports it, and where the model runs (the CPU).
    let triton = by("lstm_triton");
    assert_eq!(triton["latency_budget_us"], 100000, "{triton}");
    let c = get_json(port, "/v2/models/lstm_triton/config");
    assert_eq!(
        c["dynamic_batching"]["max_queue_delay_microseconds"],
        100000
    );
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU", "{c}");
    // A variable time axis is served with the pipeline's window length.
    assert_eq!(c["input"][0]["dims"], serde_json::json!([250, 25]), "{c}");
    let meta = get_json(port, "/v2/models/lstm_triton");
    assert_eq!(
        meta["inputs"][0]["shape"],
        serde_json::json!([-1, 250, 25]),
        "{meta}"
    );
    let gpu_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("model lstm_triton") && l.contains("KIND_GPU is not in effect"))
        .collect();
    assert_eq!(gpu_lines.len(), 1, "one line for KIND_GPU:\n{log}");
    assert!(gpu_lines[0].contains("runs on the CPU"), "{}", gpu_lines[0]);
    assert!(
        triton["note"]
            .as_str()
            .unwrap_or_default()
            .contains("1 setting(s) not in effect"),
        "{triton}"
    );

    // The example as shipped: its config.pbtxt and pipeline agree, so
    // nothing is reported and /config says what it said.
    let c = get_json(port, "/v2/models/smap_lstm/config");
    assert_eq!(c["dynamic_batching"]["max_queue_delay_microseconds"], 20000);
    assert_eq!(c["max_batch_size"], 64);
    assert!(
        !log.lines()
            .any(|l| l.contains("model smap_lstm") && l.contains("not in effect")),
        "{log}"
    );
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("not in effect") || l.contains("unavailable"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
