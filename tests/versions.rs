//! Model versions as Triton's `version_policy` defines them: a model whose
//! config.pbtxt selects two versions (`all { }`) has both loaded and served
//! over KServe, checked with Triton's own clients over HTTP and gRPC
//! (tests/python/kserve_versions_check.py: metadata, readiness, inference
//! per version, the highest when none is named, an unserved version
//! refused, statistics and the repository index per version); and two
//! telemetry pipelines on the same channel, one scoring with the default
//! (highest) version and one naming the old one (`model = "lstm_v@1"`),
//! each publish the scores `gsinfer eval` computes with that version, so a
//! new version can be shadowed beside the old one on the same telemetry. A
//! version no pipeline names (`latest { num_versions: 2 }`) is served to
//! KServe alone.
//! Real Mosquitto, real binary, the shared data set (MSL C-1).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::gsinfer::{
    eval_json, free_port, http_get, replay_fast, wait_until, LoggedService, GUARD,
};
use common::kserve::python_has;
use common::{data_dir, mosquitto_available, Broker, Subscriber};
use serde_json::Value;

const CHANNEL: &str = "C-1";
const TOPIC: &str = "telemetry/MSL/C-1";

/// `lstm_v`: version 1 is the LSTM trained on D-14, version 2 the one
/// trained on C-1 (same shapes, different weights), `version_policy: all`;
/// `lstm_w`: the same two files under `latest { num_versions: 2 }`.
fn repository(dir: &Path) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let repo = dir.join("repo");
    for (name, policy) in [
        ("lstm_v", "version_policy: { all: {} }"),
        ("lstm_w", "version_policy: { latest: { num_versions: 2 } }"),
    ] {
        let model = repo.join(name);
        for (v, from) in [(1, "lstm_D-14"), (2, "lstm_C-1")] {
            std::fs::create_dir_all(model.join(v.to_string())).unwrap();
            std::fs::copy(
                shipped.join(from).join("1/model.onnx"),
                model.join(format!("{v}/model.onnx")),
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(shipped.join("lstm_C-1/config.pbtxt")).unwrap();
        let text = text
            .replace("name: \"lstm_C-1\"", &format!("name: \"{name}\""))
            .replace("version_policy: { latest: { num_versions: 1 } }", policy);
        assert!(
            text.contains(policy),
            "the shipped version_policy line changed"
        );
        std::fs::write(model.join("config.pbtxt"), text).unwrap();
    }
    repo
}

fn write_config(dir: &Path, broker: u16, status: u16, grpc: u16) -> PathBuf {
    let mut text = format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {broker}\nclient_id = \"gsinfer-versions-{pid}\"\n\n\
         [status]\nlisten = \"127.0.0.1:{status}\"\n\n\
         [grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\n\
         [repository]\npath = {repo:?}\n",
        pid = std::process::id(),
        repo = repository(dir).display().to_string(),
    );
    // lstm_w's version 1 is no pipeline's: KServe serves it alone.
    for (model, topic) in [
        ("lstm_v", TOPIC),
        ("lstm_v@1", TOPIC),
        ("lstm_w", "telemetry/w/C-1"),
    ] {
        text.push_str(&format!(
            "\n[[pipeline]]\nmodel = \"{model}\"\ntopics = [\"{topic}\"]\nchannels = [\"{CHANNEL}\"]\n\
             features = 55\nwindow = {{ length = 250, stride = 1 }}\n\
             batch = {{ latency_budget_us = 20000, queue_capacity = 16384 }}\n\
             scoring = {{ kind = \"forecast\", threshold = {{ method = \"ndt\" }} }}\n"
        ));
    }
    let path = dir.join("gsinfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `index → score` of one model's score messages or eval lines.
fn scores<'a>(values: impl Iterator<Item = &'a Value>, model: &str) -> BTreeMap<u64, f64> {
    values
        .filter(|v| v["type"] == "score" && v["model"] == model)
        .map(|v| (v["index"].as_u64().unwrap(), v["score"].as_f64().unwrap()))
        .collect()
}

#[test]
fn every_selected_version_is_served_and_pipelines_score_with_the_one_they_name() {
    let Some(data) = data_dir() else { return };
    if !mosquitto_available()
        || !python_has(
            "numpy, tritonclient.grpc, tritonclient.http",
            "'tritonclient[grpc,http]'",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let (status, grpc) = (free_port(), free_port());
    let config = write_config(dir.path(), broker.port, status, grpc);

    // What each version computes on the channel, offline.
    let mut want = BTreeMap::new();
    for model in ["lstm_v", "lstm_v@1"] {
        let lines = eval_json(&["--model", model, "--channel", CHANNEL], &config, &data);
        want.insert(model, scores(lines.iter(), model));
    }
    assert!(
        want["lstm_v"].len() > 1000,
        "eval scored {}",
        want["lstm_v"].len()
    );
    let differ = want["lstm_v"]
        .iter()
        .filter(|(i, s)| {
            want["lstm_v@1"]
                .get(i)
                .is_some_and(|o| (*s - o).abs() > 1e-6)
        })
        .count();
    assert!(
        differ > 100,
        "the two versions score alike ({differ} differ)"
    );

    let sub = Subscriber::start(broker.port, &[&format!("gsinfer/+/{CHANNEL}/score")]);
    let service = LoggedService::run(&config, dir.path());
    assert!(
        wait_until(|| http_get(status, "/readyz").is_some_and(|(code, _)| code == 200)),
        "service never became ready:\n{}",
        service.log()
    );
    // The status page knows each pipeline's version by the pipeline's name.
    let page: Value = serde_json::from_str(&http_get(status, "/api/status").unwrap().1).unwrap();
    let models = page["models"].as_array().unwrap();
    let version = |name: &str| {
        let m = models
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} on the page: {page}"));
        assert_eq!(m["state"], "ready", "{m}");
        m["version"].as_u64().unwrap()
    };
    assert_eq!((version("lstm_v"), version("lstm_v@1")), (2, 1));
    assert_eq!((version("lstm_w"), version("lstm_w@1")), (2, 1));

    // KServe, through Triton's clients.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for model in ["lstm_v", "lstm_w"] {
        let out = Command::new("python3")
            .arg(root.join("tests/python/kserve_versions_check.py"))
            .args(["--http-url", &format!("127.0.0.1:{status}")])
            .args(["--grpc-url", &format!("127.0.0.1:{grpc}")])
            .args(["--model", model, "--window", "250", "--features", "55"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tritonclient version checks of {model} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{model}: {}", String::from_utf8_lossy(&out.stdout).trim());
    }

    // The same telemetry through both pipelines.
    replay_fast(&config, &data, CHANNEL, TOPIC);
    let received = |messages: &[(String, Vec<u8>)], model: &str| -> BTreeMap<u64, f64> {
        let values: Vec<Value> = messages
            .iter()
            .map(|(_, p)| serde_json::from_slice::<Value>(p).unwrap())
            .collect();
        scores(values.iter(), model)
    };
    let both = ["lstm_v", "lstm_v@1"];
    let complete = sub.wait_for(
        |m| {
            both.iter()
                .all(|model| received(m, model).len() >= want[model].len())
        },
        GUARD,
    );
    let messages = sub.snapshot();
    assert!(
        complete,
        "scores received: lstm_v {} of {}, lstm_v@1 {} of {}",
        received(&messages, "lstm_v").len(),
        want["lstm_v"].len(),
        received(&messages, "lstm_v@1").len(),
        want["lstm_v@1"].len()
    );
    for model in both {
        let got = received(&messages, model);
        for (i, s) in &want[model] {
            let g = got[i];
            assert!(
                (g - s).abs() <= 1e-5 * s.abs().max(1.0),
                "{model} index {i}: published {g}, eval {s}"
            );
        }
    }
}
