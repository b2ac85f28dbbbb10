//! Tests of the integration-test harness itself (tests/common): a real
//! mosquitto broker, the recording subscriber and the acknowledged publisher.

mod common;

use std::time::Duration;

use common::{Broker, Subscriber};

/// Generous bound for deliveries on loopback; a hang guard, not a timing check.
const DELIVERY: Duration = Duration::from_secs(20);

#[test]
fn messages_published_to_the_broker_reach_the_subscriber() {
    if !common::mosquitto_available() {
        return;
    }
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["telemetry/#", "other/+"]);

    let messages: [(&str, &[u8]); 5] = [
        ("telemetry/sc1/A-1", br#"{"t": 1, "v": [0.5]}"#),
        ("ignored/sc1/A-1", b"not subscribed"),
        ("other/x", b""),
        ("telemetry/sc1/A-1", b"1,0.25\n"),
        ("telemetry/sc2/B-7", &[0, 1, 2, 255]),
    ];
    common::publish_all(broker.port, &messages);

    let wanted = |m: &[(String, Vec<u8>)]| m.len() >= 4;
    assert!(
        sub.wait_for(wanted, DELIVERY),
        "got {:?}\nbroker log:\n{}",
        sub.snapshot(),
        broker.log()
    );
    // One publisher at QoS 1 on one connection: the broker keeps its order,
    // so the unsubscribed message, published before the last one, would be
    // here by now if it had been routed.
    let got = sub.snapshot();
    let want: Vec<(String, Vec<u8>)> = messages
        .iter()
        .filter(|(topic, _)| !topic.starts_with("ignored/"))
        .map(|(topic, payload)| (topic.to_string(), payload.to_vec()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_burst_arrives_complete_and_in_order() {
    if !common::mosquitto_available() {
        return;
    }
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["burst/#"]);
    let payloads: Vec<Vec<u8>> = (0..2000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let messages: Vec<(&str, &[u8])> = payloads.iter().map(|p| ("burst/n", p.as_slice())).collect();
    common::publish_all(broker.port, &messages);

    assert!(
        sub.wait_for(|m| m.len() >= payloads.len(), DELIVERY),
        "got {} of {}",
        sub.snapshot().len(),
        payloads.len()
    );
    let got: Vec<Vec<u8>> = sub.snapshot().into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, payloads);
}

#[test]
fn the_subscriber_survives_a_broker_restart() {
    if !common::mosquitto_available() {
        return;
    }
    let mut broker = Broker::start();
    let port = broker.port;
    let sub = Subscriber::start(port, &["telemetry/#"]);
    common::publish_all(port, &[("telemetry/a", b"before")]);
    assert!(
        sub.wait_for(|m| m.len() == 1, DELIVERY),
        "got {:?}",
        sub.snapshot()
    );

    broker.restart();
    assert_eq!(broker.port, port);
    // Persistence is off, so the subscription is gone until the subscriber
    // reconnects and subscribes again.
    assert!(
        sub.wait_subscribed(2, DELIVERY),
        "no resubscription; broker log:\n{}",
        broker.log()
    );
    common::publish_all(port, &[("telemetry/a", b"after")]);
    assert!(
        sub.wait_for(|m| m.len() == 2, DELIVERY),
        "got {:?}",
        sub.snapshot()
    );
    assert_eq!(
        sub.snapshot()[1],
        ("telemetry/a".to_string(), b"after".to_vec())
    );
}

#[test]
fn brokers_get_distinct_ports() {
    if !common::mosquitto_available() {
        return;
    }
    let (a, b) = (Broker::start(), Broker::start());
    assert_ne!(a.port, b.port);
    assert!(a.log().contains(&format!("port {}", a.port)), "{}", a.log());
}

#[test]
fn data_dir_when_present_holds_test_channels() {
    let Some(dir) = common::data_dir() else {
        return;
    };
    let npy = std::fs::read_dir(dir.join("test"))
        .expect("read test/")
        .filter_map(Result::ok)
        .any(|entry| entry.path().extension().is_some_and(|ext| ext == "npy"));
    assert!(
        npy,
        "no .npy channel files in {}",
        dir.join("test").display()
    );
}
