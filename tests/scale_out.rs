//! Scaling past one box: two gsinfer processes share one broker's feed by
//! channel partition. Each instance subscribes to its own channels' topics
//! (topic filters, so a channel's windows stay whole on one instance; an
//! MQTT shared subscription would deal a channel's consecutive samples to
//! different instances). Real SMAP telemetry is published once to a real
//! Mosquitto; every sample that completes a forecast must be scored exactly
//! once across the two, and each instance must have seen only its own
//! channels. No timings are asserted.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::gsinfer::{free_port, http_get, wait_until, write_config, Service, GUARD};
use common::{data_dir, mosquitto_available, publish_all, Broker, Subscriber};
use serde_json::Value;

/// Samples published per channel: the first window (250) plus 50 forecasts.
const SAMPLES: usize = 300;
const WINDOW: usize = 250;

/// The example configuration for instance `n`, serving `channels` only.
fn instance_config(dir: &Path, broker: u16, status: u16, n: usize, channels: &[String]) -> PathBuf {
    let path = write_config(dir, broker, status, "");
    let topics: Vec<String> = channels
        .iter()
        .map(|c| format!("\"telemetry/SMAP/{c}\""))
        .collect();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "topics = [\"telemetry/SMAP/+\"]",
            &format!("topics = [{}]", topics.join(", ")),
        )
        .replace(
            "client_id = \"gsinfer-test-",
            &format!("client_id = \"gsinfer-part{n}-"),
        )
        .replace("score_qos = 0", "score_qos = 1")
        .replace("queue_capacity = 4096", "queue_capacity = 16384");
    assert!(text.contains("telemetry/SMAP/") && text.contains("gsinfer-part"));
    let path = dir.join(format!("gsinfer-{n}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_instances_partition_channels_and_score_every_sample_exactly_once() {
    if !mosquitto_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let channels: Vec<String> = gsinfer::eval::list_channels(&data)
        .unwrap()
        .into_iter()
        .take(4)
        .collect();
    let parts = [channels[..2].to_vec(), channels[2..].to_vec()];
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let services: Vec<Service> = (0..2)
        .map(|n| {
            let config = instance_config(dirs[n].path(), broker.port, ports[n], n, &parts[n]);
            Service::run(&config)
        })
        .collect();
    for port in ports {
        assert!(
            wait_until(|| http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)),
            "instance on {port} never became ready"
        );
    }

    // One feed: every channel's samples, interleaved, each published once.
    let rows: Vec<Vec<Vec<f32>>> = channels
        .iter()
        .map(|c| gsinfer::eval::read_channel(&data, "test", c).unwrap())
        .collect();
    let mut messages = Vec::new();
    for i in 0..SAMPLES {
        let t = gsinfer::eval::DEFAULT_START_NS + i as i64 * gsinfer::eval::DEFAULT_STEP_NS;
        for (name, row) in channels.iter().zip(rows.iter().map(|r| &r[i])) {
            let body = serde_json::json!({ "t": t, "seq": i, "v": row }).to_string();
            messages.push((format!("telemetry/SMAP/{name}"), body.into_bytes()));
        }
    }
    let refs: Vec<(&str, &[u8])> = messages
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_slice()))
        .collect();
    publish_all(broker.port, &refs);

    let expected = channels.len() * (SAMPLES - WINDOW);
    let complete = sub.wait_for(|m| m.len() >= expected, GUARD);
    // Anything extra (a duplicate) would arrive right behind the rest.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (topic, payload) in sub.snapshot() {
        let v: Value = serde_json::from_slice(&payload).unwrap();
        let channel = topic.split('/').nth(2).unwrap().to_string();
        assert_eq!(v["channel"], channel.as_str());
        *seen
            .entry((channel, v["index"].as_u64().unwrap()))
            .or_default() += 1;
    }
    assert!(complete, "received {} of {expected} scores", seen.len());
    let want: Vec<(String, u64)> = channels
        .iter()
        .flat_map(|c| (WINDOW as u64..SAMPLES as u64).map(move |i| (c.clone(), i)))
        .collect();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        want,
        "scored (channel, index) pairs differ from every sample after the first window"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "scored more than once: {twice:?}");

    // Each instance saw its own channels, all of their samples, and no other.
    for (n, port) in ports.iter().enumerate() {
        let (_, status) = http_get(*port, "/api/status").unwrap();
        let status: Value = serde_json::from_str(&status).unwrap();
        let mut got: Vec<(String, u64)> = status["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["channel"].as_str().unwrap().to_string(),
                    c["samples"].as_u64().unwrap(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, u64)> = parts[n]
            .iter()
            .map(|c| (c.clone(), SAMPLES as u64))
            .collect();
        assert_eq!(got, want, "instance {n}'s channels");
        assert_eq!(status["models"][0]["windows_dropped"], 0, "instance {n}");
    }
    drop(services);
}
