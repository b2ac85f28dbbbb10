//! A detector ensemble served end to end: three per-channel models of an MSL
//! channel (55 features) behind a real Mosquitto, their anomalies fused by
//! the `[[ensemble]]` majority vote, and the fused events published on
//! `gsinfer/events` compared with `gsinfer eval --ensemble` on the same
//! channel.

mod common;

use std::path::{Path, PathBuf};

use common::gsinfer::{eval_json, free_port, http_get, replay_fast, wait_until, Service, GUARD};
use common::{data_dir, mosquitto_available, Broker, Subscriber};
use serde_json::Value;

/// An MSL channel whose three models' majority raises anomalies.
const CHANNEL: &str = "C-1";
const TOPIC: &str = "telemetry/MSL/C-1";

/// `trusted`: the ensemble has `trusted_only = true`; on C-1 the shipped
/// `tfm_C-1` records an alarm on its nominal data (config.pbtxt
/// `nominal_alarms`), so only the LSTM and the VAE vote there.
fn write_config(dir: &Path, broker_port: u16, status_port: u16, trusted: bool) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let mut text = format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {broker_port}\nclient_id = \"gsinfer-ensemble-{pid}\"\n\n\
         [status]\nlisten = \"127.0.0.1:{status_port}\"\n\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\n\n\
         [repository]\npath = {repo:?}\n\n\
         [publish]\nevents_qos = 1\n",
        pid = std::process::id(),
        repo = repo.display().to_string(),
    );
    for (family, window, kind) in [
        ("lstm", 250, "kind = \"forecast\""),
        (
            "vae",
            50,
            "kind = \"reconstruction\", reconstruction_features = [0]",
        ),
        ("tfm", 64, "kind = \"forecast\""),
    ] {
        text.push_str(&format!(
            "\n[[pipeline]]\nmodel = \"{family}_{CHANNEL}\"\ntopics = [\"{TOPIC}\"]\nchannels = [\"{CHANNEL}\"]\n\
             features = 55\nwindow = {{ length = {window}, stride = 1 }}\n\
             batch = {{ latency_budget_us = 20000, queue_capacity = 16384 }}\n\
             scoring = {{ {kind}, threshold = {{ method = \"ndt\" }} }}\n"
        ));
    }
    text.push_str(
        "\n[[ensemble]]\nname = \"majority\"\nmodels = [\"lstm_{channel}\", \"vae_{channel}\", \"tfm_{channel}\"]\nmin_votes = 2\n",
    );
    if trusted {
        text.push_str("trusted_only = true\n");
    }
    let path = dir.join("gsinfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `(event, start, end)` of an event payload.
fn key(v: &Value) -> (String, u64, Option<u64>) {
    (
        v["event"].as_str().unwrap().to_string(),
        v["start"].as_u64().unwrap(),
        v["end"].as_u64(),
    )
}

#[test]
fn fused_events_are_published_as_eval_computes_them() {
    fused_events_match_eval(false);
}

#[test]
fn a_trusted_vote_leaves_out_the_member_that_alarmed_on_nominal_data() {
    fused_events_match_eval(true);
}

fn fused_events_match_eval(trusted: bool) {
    let Some(data) = data_dir() else { return };
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let status_port = free_port();
    let config = write_config(dir.path(), broker.port, status_port, trusted);

    // The reference: the same members and vote, offline.
    let want: Vec<(String, u64, Option<u64>)> = eval_json(
        &["--ensemble", "majority", "--channel", CHANNEL],
        &config,
        &data,
    )
    .into_iter()
    .filter(|v| v["type"] == "event")
    .map(|v| key(&v))
    .collect();
    assert!(
        want.len() >= 2,
        "the majority raises anomalies on {CHANNEL}: {want:?}"
    );
    let voters = if trusted {
        serde_json::json!(["lstm_C-1", "vae_C-1"])
    } else {
        serde_json::json!(["lstm_C-1", "vae_C-1", "tfm_C-1"])
    };

    let sub = Subscriber::start(broker.port, &["gsinfer/events"]);
    let _service = Service::run(&config);
    assert!(
        wait_until(|| http_get(status_port, "/readyz").is_some_and(|(code, _)| code == 200)),
        "service never became ready"
    );
    replay_fast(&config, &data, CHANNEL, TOPIC);

    let fused = |m: &[(String, Vec<u8>)]| -> Vec<Value> {
        m.iter()
            .map(|(_, p)| serde_json::from_slice::<Value>(p).unwrap())
            .filter(|v| v["model"] == "majority")
            .collect()
    };
    assert!(
        sub.wait_for(|m| fused(m).len() >= want.len(), GUARD),
        "received {} of {} fused events",
        fused(&sub.snapshot()).len(),
        want.len()
    );
    let got: Vec<_> = fused(&sub.snapshot()).iter().map(key).collect();
    // The fused anomalies (the ends, which carry the final extent) are the
    // same; when each is raised depends on how far each member lags, so a
    // second cluster may be raised before the first is final, and a start
    // may still move earlier once raised.
    let ends = |events: &[(String, u64, Option<u64>)]| -> Vec<(u64, Option<u64>)> {
        let mut v: Vec<_> = events
            .iter()
            .filter(|e| e.0 == "anomaly_end")
            .map(|e| (e.1, e.2))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(ends(&got), ends(&want), "streamed {got:?}, eval {want:?}");
    assert_eq!(got.len(), want.len(), "one start per end: {got:?}");
    for (i, (kind, start, _)) in got.iter().enumerate() {
        if kind == "anomaly_end" {
            assert!(
                got[..i]
                    .iter()
                    .any(|e| e.0 == "anomaly_start" && e.1 >= *start),
                "end of {start} before its start: {got:?}"
            );
        }
    }
    for e in &fused(&sub.snapshot()) {
        assert_eq!(e["channel"], CHANNEL);
        assert_eq!(e["members"], voters);
        assert!(e["max_score"].as_f64().unwrap() >= 2.0, "votes: {e}");
    }
    // The members' own events are published beside the fused ones.
    let members = sub
        .snapshot()
        .iter()
        .map(|(_, p)| serde_json::from_slice::<Value>(p).unwrap())
        .filter(|v| v["model"] != "majority")
        .count();
    assert!(members >= want.len(), "member events: {members}");
}

/// tools/nominal_alarms.py writes the `nominal_alarms` that gsinfer reads:
/// run on C-1's train split alone (a copy of its three models with the
/// parameter removed), it records what the shipped repository records:
/// one alarm for the Transformer, none for the LSTM and the VAE.
#[test]
fn nominal_alarms_py_records_the_shipped_counts() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let repo = dir.path().join("repo");
    for family in ["lstm", "vae", "tfm"] {
        let model = format!("{family}_{CHANNEL}");
        std::fs::create_dir_all(repo.join(&model).join("1")).unwrap();
        std::fs::copy(
            shipped.join(&model).join("1/model.onnx"),
            repo.join(&model).join("1/model.onnx"),
        )
        .unwrap();
        let config = std::fs::read_to_string(shipped.join(&model).join("config.pbtxt")).unwrap();
        let stripped: String = config
            .lines()
            .filter(|l| !l.contains("key: \"nominal_alarms\""))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(repo.join(&model).join("config.pbtxt"), stripped).unwrap();
    }
    let nominal = dir.path().join("data");
    std::fs::create_dir_all(nominal.join("train")).unwrap();
    std::os::unix::fs::symlink(
        data.join(format!("train/{CHANNEL}.npy")),
        nominal.join(format!("train/{CHANNEL}.npy")),
    )
    .unwrap();
    let config = write_config(dir.path(), free_port(), free_port(), true);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{:?}", shipped.display().to_string()),
        &format!("{:?}", repo.display().to_string()),
    );
    std::fs::write(&config, text).unwrap();

    let out = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/nominal_alarms.py"))
        .arg("--config")
        .arg(&config)
        .args([
            "--ensemble",
            "majority",
            "--gsinfer",
            env!("CARGO_BIN_EXE_gsinfer"),
        ])
        .arg("--data-dir")
        .arg(&nominal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nominal_alarms.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = |family: &str| -> String {
        let text =
            std::fs::read_to_string(repo.join(format!("{family}_{CHANNEL}/config.pbtxt"))).unwrap();
        assert_eq!(text.matches("key: \"nominal_alarms\"").count(), 1, "{text}");
        text.lines()
            .find(|l| l.contains("key: \"nominal_alarms\""))
            .unwrap()
            .to_string()
    };
    for (family, alarms) in [("lstm", 0), ("vae", 0), ("tfm", 1)] {
        assert!(
            recorded(family).contains(&format!("string_value: \"{alarms}\"")),
            "{family}: {}",
            recorded(family)
        );
    }
}
