//! Thousands of per-channel topics on one connection: every filter is
//! subscribed (in packed SUBSCRIBE packets), not only the first 1 024 that
//! fit the MQTT client's request queue, and telemetry on the last topic of
//! the configuration is scored. Real Mosquitto, real binary.

mod common;

use common::gsinfer::{free_port, http_get, wait_until, LoggedService, GUARD};
use common::{mosquitto_available, publish_all, Broker, Subscriber};

/// More topic filters than the client's request queue holds (1 024).
const TOPICS: usize = 2_500;

#[test]
fn every_one_of_thousands_of_topic_filters_is_subscribed() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let status_port = free_port();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("\"t/c{i}\"")).collect();
    // Each topic listed twice (two pipelines on the same topics): subscribed once.
    let mut text = format!(
        "[broker]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"gsinfer-subs-{pid}\"\n\n\
         [status]\nlisten = \"127.0.0.1:{status_port}\"\n\n[grpc]\nlisten = \"127.0.0.1:0\"\n\n\
         [repository]\npath = {repo:?}\n",
        port = broker.port,
        pid = std::process::id(),
        repo = repo.display().to_string(),
    );
    for model in ["persist_A-1", "persist_A-2"] {
        text.push_str(&format!(
            "\n[[pipeline]]\nmodel = \"{model}\"\ntopics = [{}]\nfeatures = 25\n\
             window = {{ length = 2, stride = 1 }}\n\
             scoring = {{ kind = \"forecast\", threshold = {{ method = \"static\", value = 1.0 }} }}\n",
            topics.join(", ")
        ));
    }
    let config = dir.path().join("gsinfer.toml");
    std::fs::write(&config, text).unwrap();

    let service = LoggedService::run(&config, dir.path());
    assert!(
        wait_until(|| http_get(status_port, "/readyz").is_some_and(|(code, _)| code == 200)),
        "service never became ready:\n{}",
        service.log()
    );
    let line = format!("subscribed to {TOPICS} of {TOPICS} topic filter(s)");
    assert!(
        wait_until(|| service.log().contains(&line)),
        "no '{line}' in the log:\n{}",
        service.log()
    );
    assert!(
        !service.log().contains("cannot subscribe"),
        "{}",
        service.log()
    );

    let sub = Subscriber::start(broker.port, &["gsinfer/+/+/score"]);
    let sample = |k: u64| {
        let v: Vec<String> = (0..25)
            .map(|f| format!("{}", (k + f) as f32 * 0.01))
            .collect();
        format!(
            "{{\"t\": {}, \"v\": [{}]}}",
            1_700_000_000_000_000_000u64 + k * 1_000_000_000,
            v.join(",")
        )
    };
    let payloads: Vec<String> = (0..4).map(sample).collect();
    let last = format!("t/c{}", TOPICS - 1);
    let messages: Vec<(&str, &[u8])> = payloads
        .iter()
        .flat_map(|p| [("t/c0", p.as_bytes()), (last.as_str(), p.as_bytes())])
        .collect();
    publish_all(broker.port, &messages);
    let want = format!("gsinfer/persist_A-2/c{}/score", TOPICS - 1);
    assert!(
        sub.wait_for(|m| m.iter().any(|(t, _)| *t == want), GUARD),
        "no score on {want}; got {:?}\n{}",
        sub.snapshot()
            .iter()
            .map(|(t, _)| t.clone())
            .collect::<Vec<_>>(),
        service.log()
    );
}
