//! Pipelines split over pipeline tasks (`ingest.pipeline_tasks = 2`): every
//! message below feeds two pipelines that live on different tasks, so it is
//! split, taken by both, counted once, and acknowledged only once both have
//! saved its samples. A SIGKILL mid-stream (once every pipeline took the
//! first part, whether or not its scores were published yet) then loses no
//! sample and scores none differently. Real Mosquitto, real SMAP telemetry (A-1 and A-2), the
//! shipped `lstm_<chan>` and `persist_<chan>` models. No timings are
//! asserted.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::gsinfer::{free_port, http_get, wait_until, write_config, LoggedService, GUARD};
use common::{data_dir, mosquitto_available, publish_all, Broker, Subscriber};
use serde_json::Value;

const CHANNELS: [&str; 2] = ["A-1", "A-2"];
/// Samples published per channel.
const SAMPLES: usize = 320;

/// The first sample each family scores: its window length.
fn first_scored(model: &str) -> usize {
    if model.starts_with("lstm_") {
        250
    } else {
        2
    }
}

fn models() -> Vec<String> {
    // Dealt in config order to tasks 0, 1, 0, 1: each channel's two
    // pipelines are on different tasks.
    (CHANNELS.iter())
        .flat_map(|c| [format!("lstm_{c}"), format!("persist_{c}")])
        .collect()
}

/// The example configuration with the four pipelines on two tasks, results
/// at QoS 1, periodic saves every `save_ms`. A static threshold scores each window as
/// it comes (NDT decides 70 errors at a time).
fn config(dir: &Path, broker: u16, status: u16, name: &str, save_ms: u64) -> PathBuf {
    let path = write_config(dir, broker, status, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, _) = text.split_once("[[pipeline]]").unwrap();
    let mut text = head
        .replace("[ingest]\n", "[ingest]\npipeline_tasks = 2\n")
        .replace("score_qos = 0", "score_qos = 1")
        .replace(
            "[publish]",
            &format!("[state]\nsave_interval_ms = {save_ms}\n\n[publish]"),
        )
        .replace(
            "client_id = \"gsinfer-test-",
            &format!("client_id = \"gsinfer-tasks-{name}-"),
        );
    for model in models() {
        let (_, channel) = model.split_once('_').unwrap();
        let window = first_scored(&model);
        text.push_str(&format!(
            r#"
[[pipeline]]
model = "{model}"
topics = ["telemetry/SMAP/{channel}"]
channels = ["{channel}"]
format = "json"
features = 25
window = {{ length = {window}, stride = 1 }}
batch = {{ latency_budget_us = 20000, queue_capacity = 4096 }}
scoring = {{ kind = "forecast", target_feature = 0, smoothing_span = 105.0, event_hold = 1, threshold = {{ method = "static", value = 0.5 }} }}
"#
        ));
    }
    assert!(text.contains("pipeline_tasks = 2") && text.contains("gsinfer-tasks-"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Samples `range` of both channels' test split, interleaved, as JSON.
fn messages(data: &Path, range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    let rows: Vec<Vec<Vec<f32>>> = (CHANNELS.iter())
        .map(|c| gsinfer::eval::read_channel(data, "test", c).unwrap())
        .collect();
    let mut out = Vec::new();
    for i in range {
        let t = gsinfer::eval::DEFAULT_START_NS + i as i64 * gsinfer::eval::DEFAULT_STEP_NS;
        for (c, row) in CHANNELS.iter().zip(&rows) {
            let body = serde_json::json!({ "t": t, "seq": i, "v": row[i] }).to_string();
            out.push((format!("telemetry/SMAP/{c}"), body.into_bytes()));
        }
    }
    out
}

fn publish(port: u16, messages: &[(String, Vec<u8>)]) {
    let refs: Vec<(&str, &[u8])> = (messages.iter())
        .map(|(t, p)| (t.as_str(), p.as_slice()))
        .collect();
    publish_all(port, &refs);
}

/// Every (model, channel, sample) that should be scored.
fn expected() -> Vec<(String, String, u64)> {
    let mut want: Vec<_> = models()
        .into_iter()
        .flat_map(|m| {
            let channel = m.split_once('_').unwrap().1.to_string();
            let first = first_scored(&m) as u64;
            (first..SAMPLES as u64).map(move |i| (m.clone(), channel.clone(), i))
        })
        .collect();
    want.sort();
    want
}

/// Scores received by (model, channel, sample): the first payload and how
/// many times it came; a repeat must equal the first (error and score to
/// 1e-6 absolute plus 1e-5 relative: a repeat may run in another batch).
fn scores(sub: &Subscriber) -> BTreeMap<(String, String, u64), (Value, usize)> {
    let mut by: BTreeMap<_, (Value, usize)> = BTreeMap::new();
    for (topic, payload) in sub.snapshot() {
        let v: Value = serde_json::from_slice(&payload).unwrap();
        let mut parts = topic.split('/').skip(1);
        let (model, channel) = (parts.next().unwrap(), parts.next().unwrap());
        let t = v["t"].as_i64().unwrap();
        let i = (t - gsinfer::eval::DEFAULT_START_NS) / gsinfer::eval::DEFAULT_STEP_NS;
        let key = (model.to_string(), channel.to_string(), i as u64);
        let e = by.entry(key).or_insert_with(|| (v.clone(), 0));
        let mut a = e.0.clone();
        let mut b = v.clone();
        for k in ["error", "score"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 + 1e-5 * x.abs(),
                "{model} {channel} sample {i} scored twice, differently: {a} vs {b}"
            );
            (a[k], b[k]) = (Value::Null, Value::Null);
        }
        assert_eq!(
            a, b,
            "{model} {channel} sample {i} scored twice, differently"
        );
        e.1 += 1;
    }
    by
}

fn status(port: u16) -> Value {
    let (_, body) = http_get(port, "/api/status").unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Samples each model has taken, by model name.
fn samples_taken(port: u16) -> BTreeMap<String, u64> {
    (status(port)["models"].as_array().unwrap().iter())
        .map(|m| {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            (name, m["samples"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn ready(port: u16, service: &LoggedService) {
    assert!(
        wait_until(|| http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "gsinfer never became ready:\n{}",
        service.log()
    );
}

#[test]
fn a_message_for_pipelines_on_two_tasks_is_scored_by_both_and_counted_once() {
    if !mosquitto_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, "split", 200);
    let sub = Subscriber::start(broker.port, &["gsinfer/+/+/score"]);
    let service = LoggedService::run(&cfg, dir.path());
    ready(port, &service);
    assert!(
        service.log().contains("4 pipelines on 2 pipeline tasks"),
        "{}",
        service.log()
    );
    publish(broker.port, &messages(&data, 0..SAMPLES));

    let want = expected();
    let complete = sub.wait_for(|m| m.len() >= want.len(), GUARD);
    // A duplicate would arrive right behind the rest.
    std::thread::sleep(Duration::from_millis(500));
    let got = scores(&sub);
    let missing: Vec<_> = want.iter().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        complete && missing.is_empty(),
        "received {} of {} scores; missing {missing:?}; status {}",
        got.len(),
        want.len(),
        status(port)
    );
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), want);
    let twice: Vec<_> = got
        .iter()
        .filter(|(_, (_, n))| *n != 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "scored more than once: {twice:?}");

    // Each message counted once though two tasks took it; each model took
    // every sample of its channel.
    let s = status(port);
    let mqtt = &s["sources"][0];
    assert_eq!(mqtt["kind"], "mqtt", "{s}");
    assert_eq!(
        mqtt["messages"],
        (CHANNELS.len() * SAMPLES) as u64,
        "{mqtt}"
    );
    assert_eq!(
        mqtt["samples"],
        (2 * CHANNELS.len() * SAMPLES) as u64,
        "{mqtt}"
    );
    let taken = samples_taken(port);
    for m in models() {
        assert_eq!(taken.get(&m), Some(&(SAMPLES as u64)), "{taken:?}");
    }
    let rejected: u64 = (s["rejected"].as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(rejected, 0, "{s}");
}

#[test]
fn a_sigkill_with_two_pipeline_tasks_loses_no_sample_and_scores_none_differently() {
    if !mosquitto_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    const FIRST: usize = 270;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, "sigkill", 200);
    let sub = Subscriber::start(broker.port, &["gsinfer/+/+/score"]);
    let mut service = LoggedService::run(&cfg, dir.path());
    ready(port, &service);
    publish(broker.port, &messages(&data, 0..FIRST));
    // Killed once every pipeline took the first part: some of it saved and
    // acknowledged, the rest (after the last save) to come again, and some
    // of its scores perhaps still on their way to the broker. A save counts
    // a window as settled only once its score is written to the broker
    // connection (RELIABILITY.md), so none of those may be lost.
    assert!(
        wait_until(|| samples_taken(port).values().all(|&n| n >= FIRST as u64)),
        "{}",
        service.log()
    );
    service.child.kill().unwrap();
    service.child.wait().unwrap();

    let service = LoggedService::run(&cfg, dir.path());
    ready(port, &service);
    publish(broker.port, &messages(&data, FIRST..SAMPLES));
    let want = expected();
    let complete = wait_until(|| {
        let got = scores(&sub);
        want.iter().all(|k| got.contains_key(k))
    });
    let got = scores(&sub);
    let missing: Vec<_> = want.iter().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        complete && missing.is_empty(),
        "never scored: {missing:?}\n{}",
        service.log()
    );
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        want,
        "scored something unexpected"
    );
    // Every pipeline continued its saved state rather than starting blind.
    let s = status(port);
    for m in s["models"].as_array().unwrap() {
        assert_eq!(m["channel_state"]["restore"], "continued", "{m}");
    }
    let repeated = got.values().filter(|(_, n)| *n > 1).count();
    eprintln!(
        "SIGKILL after {FIRST} of {SAMPLES} samples on two pipeline tasks: {} scores, none missing; \
         {repeated} published again identically after the restart; the restarted run took {:?} \
         samples, rejected {}",
        want.len(),
        samples_taken(port),
        s["rejected"]
    );
}
