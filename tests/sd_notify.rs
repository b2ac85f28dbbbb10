//! The systemd protocol without systemd: the real `gsinfer` binary with
//! `NOTIFY_SOCKET` pointing at a unix datagram socket this test binds, and
//! `WATCHDOG_USEC` set, against a real Mosquitto broker.
//!
//! - `READY=1` comes only once the broker is connected: gsinfer starts while
//!   no broker listens, reports it is connecting, pings, and says nothing of
//!   readiness until the broker comes up.
//! - `WATCHDOG=1` pings stop while a stage is stalled, for a real cause:
//!   with a backlog of telemetry taken in, the broker is frozen (SIGSTOP), so
//!   it acknowledges none of the QoS 1 scores; the MQTT client's in-flight
//!   window and request queue fill, and the publisher holds work it cannot
//!   hand over (and the pipeline task, which acknowledges telemetry through
//!   the same request queue, waits for room too: which of the two is seen
//!   stalled first depends on how fast the engines drained the backlog, so
//!   either is accepted). After SIGCONT the pings come back.
//!
//! No timing is asserted: every wait is for a message, bounded by a
//! generous guard against hangs.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::gsinfer::{bin, free_port, http_get, wait_until, write_config, Service};
use common::{mosquitto_available, publish_all, Broker};

/// The watchdog interval given to gsinfer: it pings every second.
const WATCHDOG_USEC: &str = "2000000";
/// Synthetic telemetry: channels, samples per channel, samples per message.
const CHANNELS: usize = 4;
const SAMPLES: usize = 6000;
const PER_MESSAGE: usize = 250;
/// Values per sample of the example model.
const FEATURES: usize = 25;

/// Every datagram received on the notify socket, in order.
struct NotifySocket {
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (messages, stop) = (Arc::clone(&messages), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        messages.lock().unwrap().push(text);
                    }
                }
            })
        };
        Self {
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until some message from index `from` on holds `line` (one of
    /// its lines, `KEY=value`, starting with `line`); its index.
    fn wait_for(&self, from: usize, line: &str) -> usize {
        let mut found = None;
        let ok = wait_until(|| {
            found = self.find(from, line);
            found.is_some()
        });
        assert!(
            ok,
            "no `{line}` after message {from}; got {:#?}",
            self.all()
        );
        found.unwrap()
    }

    fn find(&self, from: usize, line: &str) -> Option<usize> {
        let messages = self.messages.lock().unwrap();
        (from..messages.len()).find(|&i| messages[i].lines().any(|l| l.starts_with(line)))
    }

    /// Messages from index `from` on holding a line starting with `line`.
    fn count(&self, from: usize, line: &str) -> usize {
        let messages = self.messages.lock().unwrap();
        messages
            .iter()
            .skip(from)
            .filter(|m| m.lines().any(|l| l.starts_with(line)))
            .count()
    }

    /// Waits until `n` messages from index `from` on hold `line`.
    fn wait_count(&self, from: usize, line: &str, n: usize) {
        let ok = wait_until(|| self.count(from, line) >= n);
        assert!(
            ok,
            "fewer than {n} `{line}` after message {from}; got {:#?}",
            self.all()
        );
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// JSON arrays of samples for channels `W-0..`: a slow sine on feature 0
/// (the telemetry value), zeros on the command features.
fn telemetry() -> Vec<(String, Vec<u8>)> {
    let mut messages = Vec::new();
    for c in 0..CHANNELS {
        for chunk in (0..SAMPLES).collect::<Vec<_>>().chunks(PER_MESSAGE) {
            let samples: Vec<serde_json::Value> = chunk
                .iter()
                .map(|&i| {
                    let mut v = vec![0.0f32; FEATURES];
                    v[0] = ((i as f32) / 50.0 + c as f32).sin() * 0.5;
                    serde_json::json!({"t": 1_600_000_000_000_000_000i64 + i as i64 * 1_000_000, "v": v})
                })
                .collect();
            messages.push((
                format!("telemetry/SMAP/W-{c}"),
                serde_json::to_vec(&samples).unwrap(),
            ));
        }
    }
    messages
}

fn samples_taken(status_port: u16) -> u64 {
    http_get(status_port, "/api/status")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|s| s["models"][0]["samples"].as_u64())
        .unwrap_or(0)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test started and still owns.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

#[test]
fn ready_waits_for_the_broker_and_the_watchdog_stops_while_a_stage_is_stalled() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Take a port for the broker, then take the broker away: gsinfer starts first.
    let mut broker = Broker::start();
    broker.stop();
    let status_port = free_port();
    let config = write_config(dir.path(), broker.port, status_port, "");
    // Scores at QoS 1, so a broker that acknowledges nothing blocks the
    // publisher; a batch queue that holds the whole backlog.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("score_qos = 0", "score_qos = 1")
        .replace("queue_capacity = 4096", "queue_capacity = 65536");
    std::fs::write(&config, text).unwrap();

    let socket_path = dir.path().join("notify.sock");
    let socket = NotifySocket::bind(&socket_path);
    let _service = Service(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("STATE_DIRECTORY", config.parent().unwrap())
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            // Reconnect soon after the broker appears; keep-alive long
            // enough that the frozen broker is not dropped during the test
            // (a reconnect would move the client's queue and unblock it).
            .env("GSINFER__BROKER__RECONNECT_MAX_MS", "500")
            .env("GSINFER__BROKER__KEEP_ALIVE_S", "300")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gsinfer"),
    );

    // 1. Models loaded, no broker: a status line, pings, and no READY.
    let connecting = socket.wait_for(0, "STATUS=models loaded; connecting to the broker");
    socket.wait_count(connecting, "WATCHDOG=1", 3);
    assert_eq!(
        socket.count(0, "READY=1"),
        0,
        "READY before the broker is up: {:#?}",
        socket.all()
    );

    // 2. The broker comes up: READY, with the ready status line, then pings.
    broker.restart();
    let ready = socket.wait_for(connecting, "READY=1");
    let all = socket.all();
    assert!(
        all[ready].contains("STATUS=ready: 1 model(s)"),
        "READY without the ready status: {:?}",
        all[ready]
    );
    assert_eq!(socket.count(0, "READY=1"), 1, "READY sent twice: {all:#?}");
    socket.wait_count(ready, "WATCHDOG=1", 2);

    // 3. A backlog of telemetry is taken in; then the broker freezes.
    let messages = telemetry();
    let refs: Vec<(&str, &[u8])> = messages
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_slice()))
        .collect();
    publish_all(broker.port, &refs);
    let total = (CHANNELS * SAMPLES) as u64;
    assert!(
        wait_until(|| samples_taken(status_port) >= total),
        "gsinfer took {} of {total} samples",
        samples_taken(status_port)
    );
    signal(broker.pid(), libc::SIGSTOP);

    // The publisher stalls (or the pipeline task, waiting to acknowledge
    // through the same client): a status line names it and the pings stop.
    let stalled = socket.wait_for(ready, "STATUS=stalled: ");
    let all = socket.all();
    assert!(
        all[stalled].contains("STATUS=stalled: publisher (")
            || all[stalled].contains("STATUS=stalled: pipeline ("),
        "the first stall should be the publisher's or the pipeline's: {:?}",
        all[stalled]
    );
    // The notifier re-checks every half interval and says so (the stalled
    // time grows); three more checks without a single ping.
    socket.wait_count(stalled + 1, "STATUS=stalled: ", 3);
    assert_eq!(
        socket.count(stalled, "WATCHDOG=1"),
        0,
        "pinged while stalled: {:#?}",
        &socket.all()[stalled..]
    );

    // 4. The broker thaws: the publisher moves again and so do the pings.
    signal(broker.pid(), libc::SIGCONT);
    let thawed = socket.all().len();
    let resumed = socket.wait_for(thawed, "WATCHDOG=1");
    assert!(resumed >= thawed);
}
