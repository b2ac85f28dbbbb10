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

fn write_config(dir: &Path, broker_port: u16, status_port: u16) -> PathBuf {
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
    let Some(data) = data_dir() else { return };
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let status_port = free_port();
    let config = write_config(dir.path(), broker.port, status_port);

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
        assert_eq!(
            e["members"],
            serde_json::json!(["lstm_C-1", "vae_C-1", "tfm_C-1"])
        );
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
