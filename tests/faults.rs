//! Fault injection with real processes: a real Mosquitto killed and
//! restarted under a QoS 1 telemetry stream, and `gsinfer` stopped with
//! SIGTERM in the middle of its work. No timings are asserted; every wait
//! is a guard against hangs.
//!
//! The telemetry is synthetic (the example model's 25 features, a sine on
//! the first), one channel, each sample carrying its sequence number, so
//! "scored exactly once" is checked by sample number.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::gsinfer::{
    bin, free_port, http_get, wait_until, write_config, LoggedService as Service, GUARD,
};
use common::{mosquitto_available, publish_all, Broker, Subscriber};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// The example model's window: the first score is for sample `WINDOW`.
const WINDOW: usize = 250;
const FEATURES: usize = 25;
const CHANNEL: &str = "F-9";

/// The example configuration for one test: its own client id, results at
/// QoS 1, a short reconnect backoff, and `edit` applied last.
fn config(
    dir: &Path,
    broker: u16,
    status: u16,
    name: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let path = write_config(dir, broker, status, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            &format!("client_id = \"gsinfer-test-{}\"", std::process::id()),
            &format!(
                "client_id = \"gsinfer-faults-{name}-{}\"",
                std::process::id()
            ),
        )
        .replace(
            "keep_alive_s = 15",
            "keep_alive_s = 15\nreconnect_max_ms = 400",
        )
        .replace("score_qos = 0", "score_qos = 1");
    let text = edit(text);
    assert!(text.contains("gsinfer-faults-") && text.contains("reconnect_max_ms"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Sample `i` of the test channel as the JSON payload format.
fn sample(i: usize) -> Vec<u8> {
    let mut v = vec![0.0f32; FEATURES];
    v[0] = (i as f32 / 15.0).sin() * 0.5;
    let t = gsinfer::eval::DEFAULT_START_NS + i as i64 * gsinfer::eval::DEFAULT_STEP_NS;
    serde_json::json!({ "t": t, "seq": i, "v": v })
        .to_string()
        .into_bytes()
}

fn topic() -> String {
    format!("telemetry/SMAP/{CHANNEL}")
}

fn status(port: u16) -> Value {
    let (_, body) = http_get(port, "/api/status").expect("status answers");
    serde_json::from_str(&body).unwrap()
}

/// The status once the model's saved channel state was looked at: the
/// service is ready when its models are loaded, and restores their state
/// just after (a busy machine showed the gap).
fn restored_status(port: u16) -> Value {
    let looked = |s: &Value| s["models"][0]["channel_state"]["restore"].is_string();
    wait_until(|| looked(&status(port)));
    status(port)
}

/// A publisher with a persistent session that keeps going through broker
/// restarts: QoS 1, sample `i` as `payload(i)`, one every `pace`, one sample in flight at a time.
/// rumqttc republishes an unacknowledged sample itself when the broker kept
/// the session; when the broker lost it (a SIGKILL before its autosave),
/// rumqttc discards what it held, so the feed publishes that sample again.
/// The publisher thread ends once the broker has acknowledged every sample.
struct Feed {
    done: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Feed {
    fn start(port: u16, samples: usize, pace: Duration, payload: fn(usize) -> Vec<u8>) -> Feed {
        let mut options = MqttOptions::new(
            format!("faults-feed-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_inflight(1);
        let (client, mut connection) = Client::new(options, 1);
        let done = Arc::new(AtomicBool::new(false));
        // PUBACKs received, and CONNACKs that came without a session.
        let acked = Arc::new(AtomicUsize::new(0));
        let sessions_lost = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let (done, acked, lost) = (done.clone(), acked.clone(), sessions_lost.clone());
            thread::spawn(move || {
                for i in 0..samples {
                    'publish: loop {
                        let (acks, losses) =
                            (acked.load(Ordering::SeqCst), lost.load(Ordering::SeqCst));
                        client
                            .publish(topic(), QoS::AtLeastOnce, false, payload(i))
                            .expect("queue a publish");
                        while acked.load(Ordering::SeqCst) == acks {
                            if done.load(Ordering::Relaxed) {
                                return;
                            }
                            if lost.load(Ordering::SeqCst) != losses {
                                continue 'publish;
                            }
                            thread::sleep(Duration::from_millis(1));
                        }
                        break;
                    }
                    thread::sleep(pace);
                }
            })
        };
        let poller = {
            let done = done.clone();
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Ok(Event::Incoming(Packet::ConnAck(c)))) if !c.session_present => {
                            sessions_lost.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Err(_)) => thread::sleep(Duration::from_millis(50)),
                        _ => {}
                    }
                }
            })
        };
        Feed {
            done,
            threads: vec![publisher, poller],
        }
    }

    /// True once the broker has acknowledged every sample.
    fn finished(&self) -> bool {
        self.threads[0].is_finished()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Score messages received, keyed by the feed's sample number (recovered
/// from the score's time stamp, so samples the broker lost leave gaps rather
/// than shifting the keys); a repeated sample must be a redelivery (QoS 1 is
/// at least once) or, after a SIGKILL, the same window scored again from
/// the saved state: the same message, its error and score equal to 1e-6
/// absolute plus 1e-5 relative (the engine may run the window in another
/// batch size).
fn scores_by_sample(sub: &Subscriber) -> BTreeMap<u64, (Vec<u8>, usize)> {
    let mut by: BTreeMap<u64, (Vec<u8>, usize)> = BTreeMap::new();
    for (_, payload) in sub.snapshot() {
        let v: Value = serde_json::from_slice(&payload).unwrap();
        let t = v["t"].as_i64().unwrap();
        let i = (t - gsinfer::eval::DEFAULT_START_NS) / gsinfer::eval::DEFAULT_STEP_NS;
        let e = by.entry(i as u64).or_insert_with(|| (payload.clone(), 0));
        let first: Value = serde_json::from_slice(&e.0).unwrap();
        assert!(
            same_score(&first, &v),
            "sample {i} was scored twice with different results: {first} vs {v}"
        );
        e.1 += 1;
    }
    by
}

/// Whether two score messages are equal, `error` and `score` to 1e-6
/// absolute plus 1e-5 relative, and everything else exactly.
fn same_score(a: &Value, b: &Value) -> bool {
    let close = |key: &str| match (a[key].as_f64(), b[key].as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 + 1e-5 * y.abs(),
        (x, y) => x.is_none() && y.is_none(),
    };
    let rest = |v: &Value| {
        let mut v = v.clone();
        for key in ["error", "score"] {
            v[key] = Value::Null;
        }
        v
    };
    close("error") && close("score") && rest(a) == rest(b)
}

/// Publishes `samples` samples at `pace` while the broker is restarted
/// `restarts` times (`restart` does it), and returns the broker, the
/// score subscriber and the service once the broker has acknowledged every
/// sample.
fn stream_through_restarts(
    name: &str,
    samples: usize,
    restarts: usize,
    restart: impl Fn(&mut Broker),
) -> (tempfile::TempDir, Broker, Subscriber, Service, u16) {
    let mut broker = Broker::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, name, |t| t);
    let service = Service::run(&cfg, dir.path());
    assert!(
        wait_until(|| http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "gsinfer never became ready:\n{}",
        service.log()
    );
    let sub = Subscriber::start_persistent(
        broker.port,
        &["gsinfer/smap_lstm/+/score"],
        &format!("faults-scores-{name}-{}", std::process::id()),
    );
    let feed = Feed::start(broker.port, samples, Duration::from_millis(3), sample);
    // Restart while the feed runs, each time once results have flowed since
    // the last one (or, before the first window, once samples have).
    for r in 0..restarts {
        let before = (
            sub.snapshot().len(),
            status(port)["models"][0]["samples"].as_u64().unwrap_or(0),
        );
        assert!(
            wait_until(|| {
                sub.snapshot().len() > before.0
                    || http_get(port, "/api/status").is_some_and(|(_, b)| {
                        serde_json::from_str::<Value>(&b).unwrap()["models"][0]["samples"]
                            .as_u64()
                            .unwrap_or(0)
                            > before.1 + 100
                    })
            }),
            "nothing flowed before restart {r}:\n{}",
            broker.log()
        );
        restart(&mut broker);
    }
    assert!(
        wait_until(|| feed.finished()),
        "the broker never acknowledged every sample:\n{}",
        broker.log()
    );
    drop(feed);
    (dir, broker, sub, service, port)
}

#[test]
fn graceful_broker_restarts_lose_no_qos1_sample_and_score_each_once() {
    if !mosquitto_available() {
        return;
    }
    const SAMPLES: usize = WINDOW + 900;
    const RESTARTS: usize = 3;
    let (_dir, broker, sub, _service, port) =
        stream_through_restarts("graceful", SAMPLES, RESTARTS, Broker::terminate_and_restart);
    let expected = SAMPLES - WINDOW;
    let complete = sub.wait_for(|m| m.len() >= expected, GUARD)
        && wait_until(|| scores_by_sample(&sub).len() >= expected);
    let by = scores_by_sample(&sub);
    assert!(
        complete,
        "received {} of {expected} scores; broker log:\n{}",
        by.len(),
        broker.log()
    );
    let want: Vec<u64> = (WINDOW as u64..SAMPLES as u64).collect();
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        want,
        "scored indices"
    );

    // gsinfer's own counts: every sample taken once, every window scored
    // once, nothing dropped, and each restart seen as a lost connection.
    let s = status(port);
    let model = &s["models"][0];
    assert_eq!(model["samples"], SAMPLES as u64, "samples taken: {s}");
    assert_eq!(model["scores"], expected as u64, "windows scored: {s}");
    assert_eq!(model["windows_dropped"], 0);
    // The batcher has learned a dispatch size, one of the model's buckets.
    let size = &model["dispatch_size"];
    assert!(
        model["buckets"].as_array().unwrap().contains(size),
        "dispatch size {size} is not a bucket: {s}"
    );
    assert!(
        s["broker"]["disconnects"].as_u64().unwrap() >= RESTARTS as u64,
        "{s}"
    );
    let redelivered = by.values().filter(|(_, n)| *n > 1).count();
    eprintln!(
        "{RESTARTS} graceful restarts: {SAMPLES} samples, {expected} scored once each; \
         {redelivered} score messages redelivered to the subscriber; rejected {}",
        s["rejected"]
    );
}

#[test]
fn killed_broker_costs_at_most_the_unsaved_messages_and_results_resume() {
    if !mosquitto_available() {
        return;
    }
    const SAMPLES: usize = WINDOW + 1500;
    const RESTARTS: usize = 3;
    let (_dir, broker, sub, _service, port) =
        stream_through_restarts("killed", SAMPLES, RESTARTS, Broker::restart);
    // After the last restart the feed runs undisturbed: its final sample
    // must be scored (results resumed).
    let last = SAMPLES as u64 - 1;
    assert!(
        wait_until(|| scores_by_sample(&sub).contains_key(&last)),
        "the last sample was never scored; broker log:\n{}",
        broker.log()
    );
    let by = scores_by_sample(&sub);
    let s = status(port);
    let model = &s["models"][0];
    let taken = model["samples"].as_u64().unwrap();
    assert!(taken <= SAMPLES as u64, "a sample was taken twice: {s}");
    assert!(by
        .keys()
        .all(|i| (WINDOW as u64..SAMPLES as u64).contains(i)));
    assert_eq!(model["windows_dropped"], 0);
    eprintln!(
        "{RESTARTS} SIGKILL restarts: {SAMPLES} published, {taken} taken, {} scores received; \
         lost with the broker's unsaved state: {}; rejected {}",
        by.len(),
        SAMPLES as u64 - taken,
        s["rejected"]
    );
}

#[test]
fn sigterm_drains_queued_windows_and_leaves_the_status_offline() {
    if !mosquitto_available() {
        return;
    }
    const SAMPLES: usize = WINDOW + 700;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A long latency budget keeps windows queued until SIGTERM drains them.
    // No channel state: its saves would dispatch the queued windows early.
    let cfg = config(dir.path(), broker.port, port, "drain", |t| {
        t.replace("latency_budget_us = 20000", "latency_budget_us = 5000000")
            .replace("[publish]", "[state]\nenabled = false\n\n[publish]")
    });
    let mut service = Service::run(&cfg, dir.path());
    assert!(
        wait_until(|| http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "gsinfer never became ready:\n{}",
        service.log()
    );
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);
    let messages: Vec<(String, Vec<u8>)> = (0..SAMPLES).map(|i| (topic(), sample(i))).collect();
    let refs: Vec<(&str, &[u8])> = messages
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_slice()))
        .collect();
    publish_all(broker.port, &refs);
    assert!(wait_until(
        || status(port)["models"][0]["samples"] == SAMPLES as u64
    ));
    let queued = status(port)["models"][0]["queue_depth"].clone();

    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(service.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + GUARD;
    let code = loop {
        if let Some(code) = service.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "gsinfer did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code}:\n{}", service.log());

    // The last log lines account for every window: scored or dropped.
    let log = service.log();
    let totals = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("model smap_lstm: ")
                .map(|(_, t)| t.to_string())
        })
        .unwrap_or_else(|| panic!("no totals line in the log:\n{log}"));
    let n: Vec<u64> = totals
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    let [samples, windows, scored, dropped] = n[..] else {
        panic!("totals line: {totals}")
    };
    assert_eq!(samples, SAMPLES as u64);
    // A forecaster's last window forecasts a sample that has not come yet:
    // it is run but cannot be scored. Every other window is scored or dropped.
    assert_eq!(scored + dropped + 1, windows, "{totals}");
    assert!(
        sub.wait_for(|m| m.len() as u64 >= scored, GUARD),
        "the broker got {} of {scored} scores",
        sub.snapshot().len()
    );
    assert_eq!(scores_by_sample(&sub).len() as u64, scored);

    // The retained status says offline.
    let status_sub = Subscriber::start(broker.port, &["gsinfer/status"]);
    assert!(status_sub.wait_for(|m| !m.is_empty(), GUARD));
    let (_, payload) = &status_sub.snapshot()[0];
    let v: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(v["state"], "offline");
    eprintln!("SIGTERM with {queued} windows queued: {totals}; exit 0, status offline");
}

/// A repository with `smap_lstm` and `vae_A-1`, the latter's ONNX file
/// truncated, and a configuration serving both (or only the broken one).
fn broken_repository(dir: &Path, broker: u16, status: u16, only_broken: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let repo = dir.join("repo");
    for model in ["smap_lstm", "vae_A-1"] {
        let to = repo.join(model).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(
            root.join(model).join("config.pbtxt"),
            repo.join(model).join("config.pbtxt"),
        )
        .unwrap();
        std::fs::copy(root.join(model).join("1/model.onnx"), to.join("model.onnx")).unwrap();
    }
    let onnx = repo.join("vae_A-1/1/model.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    std::fs::write(&onnx, &bytes[..bytes.len() / 3]).unwrap();
    let vae = r#"
[[pipeline]]
model = "vae_A-1"
topics = ["telemetry/VAE/+"]
format = "json"
features = 25
window = { length = 50, stride = 1 }
batch = { latency_budget_us = 20000, queue_capacity = 4096 }
scoring = { kind = "reconstruction", target_feature = 0, smoothing_span = 105.0, reconstruction_features = [0], event_hold = 1, threshold = { method = "static", value = 0.5 } }
"#;
    config(dir, broker, status, "broken", |t| {
        let t = t.replace(
            &format!("path = {:?}", root.display().to_string()),
            &format!("path = {:?}", repo.display().to_string()),
        );
        if only_broken {
            let (head, _) = t.split_once("[[pipeline]]").unwrap();
            format!("{head}{vae}")
        } else {
            format!("{t}{vae}")
        }
    })
}

#[test]
fn a_corrupt_model_file_is_never_loaded_and_the_other_models_keep_serving() {
    if !mosquitto_available() {
        return;
    }
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = broken_repository(dir.path(), broker.port, port, false);
    let service = Service::run(&cfg, dir.path());
    assert!(
        wait_until(|| http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "gsinfer with one broken model never became ready:\n{}",
        service.log()
    );
    let s = status(port);
    assert_eq!(s["degraded"], true, "{s}");
    let models = s["models"].as_array().unwrap();
    let vae = models.iter().find(|m| m["name"] == "vae_A-1").unwrap();
    assert_eq!(vae["state"], "failed", "{vae}");
    assert!(
        vae["reason"].as_str().unwrap().contains("model.onnx"),
        "{vae}"
    );
    let lstm = models.iter().find(|m| m["name"] == "smap_lstm").unwrap();
    assert_eq!(lstm["state"], "ready");
    assert!(service.log().contains("model vae_A-1 is unavailable"));

    // Telemetry for the broken model is rejected by reason; the other scores.
    let sub = Subscriber::start(broker.port, &["gsinfer/+/+/score"]);
    let mut messages: Vec<(String, Vec<u8>)> =
        (0..WINDOW + 10).map(|i| (topic(), sample(i))).collect();
    messages.extend((0..60).map(|i| ("telemetry/VAE/V-1".to_string(), sample(i))));
    let refs: Vec<(&str, &[u8])> = messages
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_slice()))
        .collect();
    publish_all(broker.port, &refs);
    assert!(
        sub.wait_for(|m| m.len() >= 10, GUARD),
        "smap_lstm stopped scoring"
    );
    assert!(wait_until(
        || status(port)["rejected"]["model_unavailable"] == 60
    ));
    assert!(sub
        .snapshot()
        .iter()
        .all(|(t, _)| t.starts_with("gsinfer/smap_lstm/")));
}

#[test]
fn with_every_model_broken_the_service_exits_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = broken_repository(dir.path(), free_port(), free_port(), true);
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("STATE_DIRECTORY", cfg.parent().unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("no model could be loaded"),
        "last line: {last}\n{stderr}"
    );
}

// ---------------------------------------------------------------------------
// gsinfer itself restarted: channel state survives (src/state.rs).

/// Sample `i` of the restart tests: [`sample`], with a spike on the first
/// feature over `SPIKE`, so an anomaly is open across the restart.
fn spiked(i: usize) -> Vec<u8> {
    if !SPIKE.contains(&i) {
        return sample(i);
    }
    let mut v = vec![0.0f32; FEATURES];
    v[0] = 4.0;
    let t = gsinfer::eval::DEFAULT_START_NS + i as i64 * gsinfer::eval::DEFAULT_STEP_NS;
    serde_json::json!({ "t": t, "seq": i, "v": v })
        .to_string()
        .into_bytes()
}

/// Samples of the restart tests before the first stop.
const FIRST: usize = WINDOW + 350;
/// The spike: opens an anomaly before the first stop that ends after it.
const SPIKE: std::ops::Range<usize> = FIRST - 40..FIRST + 10;

/// `<dir>/data/test/F-9.npy` holding what [`spiked`] publishes for samples
/// `0..n`, for `gsinfer eval`; returns the data folder.
fn write_data(dir: &Path, n: usize) -> PathBuf {
    use npyz::WriterBuilder;
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("test")).unwrap();
    let mut values = Vec::with_capacity(n * FEATURES);
    for i in 0..n {
        let v: Value = serde_json::from_slice(&spiked(i)).unwrap();
        values.extend(
            v["v"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32),
        );
    }
    let mut file = std::fs::File::create(data.join("test").join(format!("{CHANNEL}.npy"))).unwrap();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[n as u64, FEATURES as u64])
        .writer(&mut file)
        .begin_nd()
        .unwrap();
    w.extend(values).unwrap();
    w.finish().unwrap();
    data
}

/// What `gsinfer eval` computes offline for samples `0..n`: the scores by
/// sample index, and the events, as the service publishes them.
fn reference(cfg: &Path, dir: &Path, n: usize) -> (BTreeMap<u64, Value>, Vec<Value>) {
    let data = write_data(dir, n);
    let lines = common::gsinfer::eval_json(&["--channel", CHANNEL], cfg, &data);
    let scores = lines
        .iter()
        .filter(|l| l["type"] == "score")
        .map(|l| (l["index"].as_u64().unwrap(), l.clone()))
        .collect();
    let events = lines.into_iter().filter(|l| l["type"] == "event").collect();
    (scores, events)
}

/// Sends SIGTERM to the service and waits for it to exit; its exit status.
fn terminate(service: &mut Service) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(service.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(code) = service.child.try_wait().unwrap() {
            return code;
        }
        assert!(
            Instant::now() < deadline,
            "gsinfer did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn publish_samples(port: u16, range: std::ops::Range<usize>) {
    let messages: Vec<(String, Vec<u8>)> = range.map(|i| (topic(), spiked(i))).collect();
    let refs: Vec<(&str, &[u8])> = messages
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_slice()))
        .collect();
    publish_all(port, &refs);
}

fn ready(port: u16, service: &Service) {
    assert!(
        wait_until(|| http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "gsinfer never became ready:\n{}",
        service.log()
    );
}

/// Every score of samples `WINDOW..n` received exactly as `gsinfer eval`
/// computes it, none missing; the events equal eval's too.
fn assert_as_offline(sub: &Subscriber, events: &Subscriber, cfg: &Path, dir: &Path, n: usize) {
    let by = scores_by_sample(sub);
    let want: Vec<u64> = (WINDOW as u64..n as u64).collect();
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        want,
        "scored samples"
    );
    let (scores, offline_events) = reference(cfg, dir, n);
    for (i, (payload, _)) in &by {
        let got: Value = serde_json::from_slice(payload).unwrap();
        let mut want = scores[i].clone();
        want.as_object_mut().unwrap().remove("type");
        let mut got = got;
        got.as_object_mut().unwrap().remove("type");
        // The engine may run a window in another batch size than eval did
        // (a save dispatches queued windows early), so the forecast (values
        // of order 1) can differ in its last float digits: error and score
        // are compared to 1e-6 absolute plus 1e-5 relative, everything else
        // exactly. A wrong window or sample would be off by the error itself.
        for key in ["error", "score"] {
            let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!(
                (g - w).abs() <= 1e-6 + 1e-5 * w.abs(),
                "sample {i}: {key} {g} (service, across the restart) vs {w} (gsinfer eval)"
            );
            got[key] = Value::Null;
            want[key] = Value::Null;
        }
        assert_eq!(
            got, want,
            "sample {i}: service (across the restart) vs gsinfer eval"
        );
    }
    let mut got: Vec<Value> = events
        .snapshot()
        .iter()
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    got.dedup();
    assert_eq!(
        got, offline_events,
        "events across the restart vs gsinfer eval"
    );
    assert!(
        got.iter().any(|e| e["event"] == "anomaly_end"),
        "the spike's anomaly was closed: {got:?}"
    );
}

#[test]
fn a_sigterm_restart_leaves_no_sample_blind_and_scores_as_if_it_never_stopped() {
    if !mosquitto_available() {
        return;
    }
    const TOTAL: usize = FIRST + 400;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, "restart", |t| t);
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);
    let events = Subscriber::start(broker.port, &["gsinfer/events"]);
    let mut service = Service::run(&cfg, dir.path());
    ready(port, &service);
    publish_samples(broker.port, 0..FIRST);
    assert!(wait_until(|| scores_by_sample(&sub).len() == FIRST - WINDOW));
    assert!(terminate(&mut service).success(), "{}", service.log());
    assert!(
        service.log().contains("channel state saved"),
        "{}",
        service.log()
    );
    // The drain ends once the engines are done, not at its budget.
    assert!(
        !service.log().contains("not every queued window was scored"),
        "{}",
        service.log()
    );
    let opened: Vec<Value> = events
        .snapshot()
        .iter()
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    assert!(
        opened.last().is_some_and(|e| e["event"] == "anomaly_start"),
        "an anomaly is open at the stop: {opened:?}"
    );

    let service = Service::run(&cfg, dir.path());
    ready(port, &service);
    let s = restored_status(port);
    assert_eq!(
        s["models"][0]["channel_state"]["restore"], "continued",
        "{s}"
    );
    assert_eq!(s["channels"][0]["restored"], true, "{s}");
    publish_samples(broker.port, FIRST..TOTAL);
    assert!(
        wait_until(|| scores_by_sample(&sub).len() == TOTAL - WINDOW),
        "{} of {} scores:\n{}",
        scores_by_sample(&sub).len(),
        TOTAL - WINDOW,
        service.log()
    );
    assert_as_offline(&sub, &events, &cfg, dir.path(), TOTAL);
    // The first sample after the restart was scored: no blind sample.
    assert!(scores_by_sample(&sub).contains_key(&(FIRST as u64)));
    eprintln!(
        "SIGTERM after {FIRST} samples, {} more after the restart: {} scores, all equal to gsinfer eval; \
         last save {}",
        TOTAL - FIRST,
        TOTAL - WINDOW,
        status(port)["models"][0]["channel_state"]
    );
}

#[test]
fn a_sigkill_mid_stream_loses_no_delivered_sample_and_repeats_none() {
    if !mosquitto_available() {
        return;
    }
    const TOTAL: usize = FIRST + 700;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, "sigkill", |t| {
        t.replace("[publish]", "[state]\nsave_interval_ms = 200\n\n[publish]")
    });
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);
    let events = Subscriber::start(broker.port, &["gsinfer/events"]);
    let mut service = Service::run(&cfg, dir.path());
    ready(port, &service);
    let feed = Feed::start(broker.port, TOTAL, Duration::from_millis(2), spiked);
    // Kill once the spike's anomaly is open, mid-stream.
    assert!(wait_until(|| status(port)["models"][0]["samples"]
        .as_u64()
        .unwrap_or(0)
        > FIRST as u64 - 5));
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    let service = Service::run(&cfg, dir.path());
    ready(port, &service);
    assert!(wait_until(|| feed.finished()), "the feed never finished");
    drop(feed);
    assert!(
        wait_until(|| scores_by_sample(&sub).contains_key(&(TOTAL as u64 - 1))),
        "the last sample was never scored:\n{}",
        service.log()
    );
    // Scores published after the last save and before the kill come again
    // (byte-identical, checked by scores_by_sample); none is missing.
    assert_as_offline(&sub, &events, &cfg, dir.path(), TOTAL);
    let s = status(port);
    assert_eq!(
        s["models"][0]["channel_state"]["restore"], "continued",
        "{s}"
    );
    let repeated = scores_by_sample(&sub)
        .values()
        .filter(|(_, n)| *n > 1)
        .count();
    eprintln!(
        "SIGKILL at sample ~{FIRST}: {} scores received, none missing, all equal to gsinfer eval; \
         {repeated} published again identically after the restart; the restarted run took {} \
         samples, rejected {}",
        TOTAL - WINDOW,
        s["models"][0]["samples"],
        s["rejected"]
    );
}

#[test]
fn a_sigkill_between_whole_saves_is_recovered_from_the_journal() {
    if !mosquitto_available() {
        return;
    }
    const TOTAL: usize = FIRST + 300;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // No whole save while it runs: once acknowledged, the samples are on
    // disk only in the journal, and the broker will not send them again.
    let cfg = config(dir.path(), broker.port, port, "journal", |t| {
        t.replace(
            "[publish]",
            "[state]\njournal = true\nsave_interval_ms = 3600000\n\n[publish]",
        )
    });
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);
    let events = Subscriber::start(broker.port, &["gsinfer/events"]);
    let mut service = Service::run(&cfg, dir.path());
    ready(port, &service);
    publish_samples(broker.port, 0..FIRST);
    assert!(
        wait_until(|| status(port)["journal"]["appended_messages"].as_u64() == Some(FIRST as u64)),
        "not every message was journaled: {}\n{}",
        status(port)["journal"],
        service.log()
    );
    assert!(wait_until(|| scores_by_sample(&sub).len() == FIRST - WINDOW));
    let state = dir.path().join("state");
    assert!(
        !state.join("smap_lstm.state").exists(),
        "a whole save before the kill"
    );
    service.child.kill().unwrap();
    service.child.wait().unwrap();

    let service = Service::run(&cfg, dir.path());
    ready(port, &service);
    let s = restored_status(port);
    assert_eq!(s["models"][0]["channel_state"]["restore"], "fresh", "{s}");
    let replayed = &s["journal"]["replayed"];
    assert_eq!(replayed["messages"], FIRST, "{s}");
    assert_eq!(replayed["samples_taken"], FIRST, "{s}");
    assert!(
        service.log().contains("journal replayed in"),
        "{}",
        service.log()
    );
    publish_samples(broker.port, FIRST..TOTAL);
    assert!(
        wait_until(|| scores_by_sample(&sub).len() == TOTAL - WINDOW),
        "{} of {} scores:\n{}",
        scores_by_sample(&sub).len(),
        TOTAL - WINDOW,
        service.log()
    );
    // The replay scored the journal's windows again, exactly, and the
    // channel went on from it: no sample lost, none blind.
    assert_as_offline(&sub, &events, &cfg, dir.path(), TOTAL);
    eprintln!(
        "SIGKILL after {FIRST} journaled samples and no whole save: replay {replayed}; \
         {} scores, all equal to gsinfer eval",
        TOTAL - WINDOW
    );
}

#[test]
fn a_corrupt_or_mismatched_state_is_discarded_with_one_line_and_the_service_runs() {
    if !mosquitto_available() {
        return;
    }
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, "corrupt", |t| t);
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);
    let mut service = Service::run(&cfg, dir.path());
    ready(port, &service);
    publish_samples(broker.port, 0..WINDOW + 20);
    assert!(wait_until(|| scores_by_sample(&sub).len() == 20));
    assert!(terminate(&mut service).success());
    // The saves take turns in two files; the stop's save is the newest.
    let state = dir.path().join("state");
    let slots = [
        state.join("smap_lstm.state"),
        state.join("smap_lstm.state.b"),
    ];
    let generation = |f: &Path| {
        let bytes = std::fs::read(f).ok()?;
        Some(gsinfer::state::decode(&bytes).ok()?.generation)
    };
    assert!(
        slots.iter().all(|f| generation(f).is_some()),
        "the run saved more than once (QoS 1: every 16 messages)"
    );
    // The newest torn, as by a crash mid-save: the one before it is
    // continued, and the journal says so.
    let newest = slots.iter().max_by_key(|f| generation(f)).unwrap();
    let bytes = std::fs::read(newest).unwrap();
    std::fs::write(newest, &bytes[..bytes.len() / 2]).unwrap();
    let mut service = Service::run(&cfg, dir.path());
    ready(port, &service);
    assert_eq!(
        restored_status(port)["models"][0]["channel_state"]["restore"],
        "continued"
    );
    let log = service.log();
    assert!(
        log.lines()
            .any(|l| l.contains("corrupt") && l.contains("the save before it is continued")),
        "{log}"
    );
    assert!(terminate(&mut service).success());
    // Both damaged: nothing is trusted.
    for file in &slots {
        let mut bytes = std::fs::read(file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(file, &bytes).unwrap();
    }

    let mut service = Service::run(&cfg, dir.path());
    ready(port, &service);
    assert_eq!(
        restored_status(port)["models"][0]["channel_state"]["restore"],
        "discarded"
    );
    let log = service.log();
    let line = log
        .lines()
        .find(|l| l.contains("smap_lstm.state"))
        .unwrap_or_else(|| panic!("no line about the state file:\n{log}"));
    assert!(
        line.contains("corrupt") && line.contains("checksum"),
        "{line}"
    );
    // Fresh channel: the time line goes on, a window later it scores.
    publish_samples(broker.port, WINDOW + 20..2 * WINDOW + 40);
    assert!(
        wait_until(|| scores_by_sample(&sub).len() == 40),
        "{}",
        service.log()
    );
    assert!(terminate(&mut service).success());

    // A new version of the model: the state saved for version 1 is not continued.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let repo = dir.path().join("repo").join("smap_lstm");
    for v in ["1", "2"] {
        std::fs::create_dir_all(repo.join(v)).unwrap();
        std::fs::copy(
            root.join("smap_lstm/1/model.onnx"),
            repo.join(v).join("model.onnx"),
        )
        .unwrap();
    }
    std::fs::copy(
        root.join("smap_lstm/config.pbtxt"),
        repo.join("config.pbtxt"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("path = {:?}", root.display().to_string()),
        &format!("path = {:?}", repo.parent().unwrap().display().to_string()),
    );
    std::fs::write(&cfg, text).unwrap();
    let service = Service::run(&cfg, dir.path());
    ready(port, &service);
    let s = restored_status(port);
    assert_eq!(
        s["models"][0]["channel_state"]["restore"], "discarded",
        "{s}"
    );
    assert!(
        s["models"][0]["channel_state"]["detail"]
            .as_str()
            .unwrap()
            .contains("version 1 → 2"),
        "{s}"
    );
}

/// `unshare` arguments that give a child its own mount namespace (a user
/// namespace too, so no privilege is needed), or `None` (skipped with a
/// note) where the kernel refuses both.
fn private_mounts() -> Option<&'static [&'static str]> {
    for args in [&["-Urm"][..], &["-m"][..]] {
        let ok = Command::new("unshare")
            .args(args)
            .args(["sh", "-c", "mount -t tmpfs -o size=4k gsinfer-probe /tmp"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(args);
        }
    }
    common::skip(
        "`unshare -Urm` / `unshare -m` cannot mount a tmpfs here (the full-disk test needs one)",
    );
    None
}

/// The service with its state folder (`dir/state`) on a 256 KiB tmpfs of
/// its own mount namespace, all of it taken by `state/filler` (a channel
/// state is compressed, so a few KiB left free could hold one): no state
/// fits until the filler is removed (through `/proc/<pid>/root`, the
/// service's view of its mounts).
fn on_full_disk(unshare: &[&str], cfg: &Path, dir: &Path) -> Service {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut command = Command::new("unshare");
    command
        .args(unshare)
        .args([
            "sh",
            "-c",
            "mount -t tmpfs -o size=256k gsinfer-test \"$1\" \
             && { head -c 512k /dev/zero > \"$1/filler\" 2>/dev/null; [ -s \"$1/filler\" ]; } \
             && shift && exec \"$@\"",
            "sh",
        ])
        .arg(&state)
        .arg(bin())
        .args(["run", "--config"])
        .arg(cfg);
    Service::spawn(command, cfg, dir)
}

fn state_save_errors(port: u16) -> u64 {
    let (_, text) = http_get(port, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with("gsinfer_state_save_errors_total{model=\"smap_lstm\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_full_state_disk_costs_the_saves_and_nothing_else() {
    if !mosquitto_available() {
        return;
    }
    let Some(unshare) = private_mounts() else {
        return;
    };
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), broker.port, port, "fulldisk", |t| {
        t.replace("[publish]", "[state]\nsave_interval_ms = 200\n\n[publish]")
    });
    let sub = Subscriber::start(broker.port, &["gsinfer/smap_lstm/+/score"]);

    // A disk full from the start to the stop: every sample is still scored
    // (QoS 1 acks are not held back for a save that fails), the error is
    // logged once however often the save is retried, and the stop says the
    // state was not saved.
    let mut service = on_full_disk(unshare, &cfg, dir.path());
    ready(port, &service);
    publish_samples(broker.port, 0..WINDOW + 100);
    assert!(
        wait_until(|| scores_by_sample(&sub).len() == 100),
        "{}",
        service.log()
    );
    assert!(
        wait_until(|| state_save_errors(port) >= 3),
        "{}",
        service.log()
    );
    let last = &status(port)["models"][0]["channel_state"]["last_save"];
    assert_eq!(last["ok"], false, "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("No space left"),
        "{last}"
    );
    assert!(terminate(&mut service).success(), "{}", service.log());
    let log = service.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("channel state not saved"))
        .collect();
    assert_eq!(errors.len(), 1, "one line for the failing saves:\n{log}");
    assert!(
        errors[0].contains("No space left on device"),
        "{}",
        errors[0]
    );
    assert!(log.contains("smap_lstm not saved at stop"), "{log}");

    // Space comes back mid-run: the next save succeeds and says so.
    let service = on_full_disk(unshare, &cfg, dir.path());
    ready(port, &service);
    publish_samples(broker.port, 0..WINDOW + 10);
    assert!(
        wait_until(|| state_save_errors(port) >= 1),
        "{}",
        service.log()
    );
    let filler = PathBuf::from(format!("/proc/{}/root", service.child.id()))
        .join(dir.path().join("state/filler").strip_prefix("/").unwrap());
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(|| service.log().contains("channel state saved again")),
        "{}",
        service.log()
    );
    let last = &status(port)["models"][0]["channel_state"]["last_save"];
    assert_eq!(last["ok"], true, "{last}");
    assert!(filler.with_file_name("smap_lstm.state").is_file());
}
