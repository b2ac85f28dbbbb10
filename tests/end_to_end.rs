//! The main job end to end on the CPU, on real SMAP telemetry: a real
//! Mosquitto broker, the `gsinfer` binary running the example config, a real
//! SMAP test channel replayed over MQTT with malformed payloads mixed in, and
//! the scores published compared with `gsinfer eval` on the same channel.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::gsinfer::{bin, free_port, http_get, wait_until, Service, EXAMPLE_SCORING, GUARD};
use common::{data_dir, mosquitto_available, publish_all, Broker, Subscriber};
use serde_json::Value;

/// A SMAP channel with a labelled anomaly that the example model detects.
const CHANNEL: &str = "S-1";

fn write_config(dir: &Path, broker_port: u16, status_port: u16, threshold: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gsinfer.example.toml"),
    )
    .unwrap();
    // The shipped example with this test's broker, status port and absolute
    // repository; scores at QoS 1 so the comparison can demand every one, and
    // a batch queue longer than the channel so the full-speed replay below is
    // never subject to the overload policy (that has its own tests).
    let text = common::gsinfer::any_grpc_port(&example)
        .replace("port = 1883", &format!("port = {broker_port}"))
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{status_port}\""),
        )
        .replace(
            "path = \"../model_repository\"",
            &format!("path = {:?}", repo.display().to_string()),
        )
        .replace("client_id = \"gsinfer\"", "client_id = \"gsinfer-e2e\"")
        .replace("score_qos = 0", "score_qos = 1")
        .replace("queue_capacity = 4096", "queue_capacity = 16384")
        .replace(EXAMPLE_SCORING, threshold);
    assert!(
        text.contains(threshold),
        "the example's scoring line changed"
    );
    let path = dir.join("gsinfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn parse(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).expect("JSON payload")
}

#[test]
fn streamed_scores_match_eval_and_events_hit_a_labelled_anomaly() {
    // The example's scoring before 2026-12: a static threshold on a short EWMA.
    streamed_matches_eval("scoring = { kind = \"forecast\", target_feature = 0, smoothing_span = 30.0, event_hold = 30, threshold = { method = \"static\", value = 0.5 } }");
}

#[test]
fn streamed_events_match_eval_with_ndt() {
    streamed_matches_eval(EXAMPLE_SCORING);
}

#[test]
fn streamed_events_match_eval_with_pot() {
    streamed_matches_eval("scoring = { kind = \"forecast\", target_feature = 0, smoothing_span = 30.0, event_hold = 30, threshold = { method = \"pot\", risk = 1e-5 } }");
}

/// Streams the channel through the service with `threshold` and checks the
/// scores and events against `gsinfer eval` on the same channel.
fn streamed_matches_eval(threshold: &str) {
    if !mosquitto_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let status_port = free_port();
    let config = write_config(dir.path(), broker.port, status_port, threshold);

    // The reference: the same pipeline offline.
    let eval = Command::new(bin())
        .args(["eval", "--json", "--channel", CHANNEL, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let reference: Vec<Value> = String::from_utf8(eval.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: BTreeMap<u64, f64> = reference
        .iter()
        .filter(|v| v["type"] == "score")
        .map(|v| (v["index"].as_u64().unwrap(), v["score"].as_f64().unwrap()))
        .collect();
    assert!(want.len() > 1000, "eval produced {} scores", want.len());

    let sub = Subscriber::start(broker.port, &["gsinfer/#"]);
    let service = Service(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("STATE_DIRECTORY", config.parent().unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(|| http_get(status_port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "service never became ready"
    );
    assert!(sub.wait_for(
        |m| m
            .iter()
            .any(|(t, p)| t == "gsinfer/status" && parse(p)["state"] == "online"),
        GUARD
    ));

    // Replay the channel in the background, 10 samples per message.
    let topic = format!("telemetry/SMAP/{CHANNEL}");
    let mut replay = Command::new(bin())
        .args([
            "replay",
            "--fast",
            "--batch",
            "10",
            "--channel",
            CHANNEL,
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .spawn()
        .unwrap();
    // Once the stream is under way, mix in bad input on the same topic.
    assert!(
        sub.wait_for(|m| m.iter().any(|(t, _)| t.ends_with("/score")), GUARD),
        "no score before the bad input"
    );
    let values = vec!["0.0"; 25].join(",");
    let wrong_length = r#"{"t": 1514764800000000000, "v": [1.0, 2.0]}"#.to_string();
    let non_finite = format!(
        r#"{{"t": 1514764800000000000, "v": [1e39, {}]}}"#,
        vec!["0.0"; 24].join(",")
    );
    let backwards = format!(r#"{{"t": 1000, "v": [{values}]}}"#);
    let bad: Vec<(&str, &[u8])> = vec![
        (&topic, b"this is not telemetry"),
        (&topic, wrong_length.as_bytes()),
        (&topic, non_finite.as_bytes()),
        (&topic, backwards.as_bytes()),
        (&topic, b"{\"t\": 5, \"v\": [1.0"),
    ];
    publish_all(broker.port, &bad);
    assert!(replay.wait().unwrap().success(), "replay failed");

    let score_topic = format!("gsinfer/smap_lstm/{CHANNEL}/score");
    let complete = sub.wait_for(
        |m| m.iter().filter(|(t, _)| *t == score_topic).count() >= want.len(),
        GUARD,
    );
    let messages = sub.snapshot();
    let got: BTreeMap<u64, f64> = messages
        .iter()
        .filter(|(t, _)| *t == score_topic)
        .map(|(_, p)| {
            let v = parse(p);
            (v["index"].as_u64().unwrap(), v["score"].as_f64().unwrap())
        })
        .collect();
    assert!(complete, "received {} of {} scores", got.len(), want.len());
    // (a) the same windows, none missing, none extra, equal within f32 tolerance.
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "scored indices differ from eval"
    );
    for (index, w) in &want {
        let g = got[index];
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "index {index}: streamed {g} vs eval {w}"
        );
    }

    // (b) an event overlaps a labelled anomaly interval.
    let labels = gsinfer::eval::labels::read_labels(&data).unwrap();
    let intervals = &labels[CHANNEL];
    let events: Vec<Value> = messages
        .iter()
        .filter(|(t, _)| t == "gsinfer/events")
        .map(|(_, p)| parse(p))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["channel"] == CHANNEL && e["model"] == "smap_lstm"));
    let hit = events.iter().any(|e| {
        let start = e["start"].as_u64().unwrap();
        let end = e["end"].as_u64().unwrap_or(u64::MAX);
        intervals.iter().any(|(a, b)| start <= *b && end >= *a)
    });
    assert!(
        hit,
        "no event overlaps a labelled interval {intervals:?}: {events:?}"
    );
    let eval_events: Vec<&Value> = reference.iter().filter(|v| v["type"] == "event").collect();
    assert_eq!(
        events.len(),
        eval_events.len(),
        "streamed and offline events differ"
    );

    // (c) the bad input was rejected and counted by reason.
    let (code, metrics) = http_get(status_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for (reason, n) in [
        ("malformed", 2),
        ("wrong_length", 1),
        ("non_finite", 1),
        ("out_of_order", 1),
    ] {
        let line = format!("gsinfer_samples_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(
            metrics.contains(&line),
            "missing `{line}` in /metrics:\n{metrics}"
        );
    }
    let (_, status) = http_get(status_port, "/api/status").unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    let model = &status["models"][0];
    assert_eq!(model["state"], "ready");
    assert_eq!(model["windows_dropped"], 0);
    eprintln!(
        "window latency µs (received → result): {}",
        model["latency_us"]
    );
    eprintln!("engine time per batch µs: {}", model["inference_us"]);

    // Graceful stop: exit 0 and the retained status goes offline.
    let mut service = service;
    let pid = service.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let code = service.0.wait().unwrap();
    assert!(code.success(), "service exited with {code}");
    assert!(sub.wait_for(
        |m| m
            .iter()
            .any(|(t, p)| t == "gsinfer/status" && parse(p)["state"] == "offline"),
        GUARD
    ));
}

#[test]
fn check_config_reports_each_problem_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[repository]\npath = \"x\"\n[[pipeline]]\nmodel = \"m\"\ntopics = [\"a/+\"]\nfeatures = 0\n\
         window = { length = 0 }\nscoring = { kind = \"forecast\", threshold = { method = \"static\", value = 1.0 } }\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.lines()
            .any(|l| l.contains("bad.toml") && l.contains("pipeline[0].features")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("pipeline[0].window.length")),
        "{err}"
    );

    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gsinfer.example.toml");
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .env("GSINFER__BROKER__PORT", "1884")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("port = 1884"), "{text}");
}
