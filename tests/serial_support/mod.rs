//! Harness of tests/serial.rs: a `socat` pseudo-terminal pair, a serial
//! source running on its own runtime and recording what it decodes, and
//! the independent frame encoder (tests/tools/frames.py).
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gsinfer::ingest::decode::{DecodeLimits, RawSample, Reject};
use gsinfer::ingest::serial::{SerialConfig, SerialSource, SerialStats};
use gsinfer::shutdown::Stop;
use gsinfer::status::SourceStatus;
use serde_json::Value;

/// Whether python3 with `spacepackets` is there; tests skip (saying so) if not.
pub fn python_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import spacepackets, fastcrc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::common::skip(
            "python3 with spacepackets not found (python3 -m pip install spacepackets)",
        );
    }
    ok
}

/// Frames `items` with tests/tools/frames.py; one byte vector per item.
pub fn encode(framing: &str, items: &[Value]) -> Vec<Vec<u8>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/frames.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let spec = serde_json::json!({"framing": framing, "items": items});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "frames.py failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let h = h.as_str().unwrap();
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// Two linked pseudo-terminals made by socat: `device` for the serial
/// source, `peer` for the test to write into. Killed on drop.
pub struct Socat {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Socat {
    /// Starts socat; `None` (saying why) when socat is not installed.
    pub fn start() -> Option<Socat> {
        if Command::new("socat")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            crate::common::skip("socat not found (apt-get install socat)");
            return None;
        }
        let mut s = Socat {
            dir: tempfile::Builder::new()
                .prefix("gsinfer-pty-")
                .tempdir()
                .unwrap(),
            child: None,
        };
        s.restart();
        Some(s)
    }

    /// The pty the serial source opens.
    pub fn device(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    /// The path of the other end.
    pub fn peer_path(&self) -> PathBuf {
        self.dir.path().join("peer")
    }

    /// The other end, opened for writing.
    pub fn peer(&self) -> File {
        File::options().write(true).open(self.peer_path()).unwrap()
    }

    /// Kills socat: both ptys and their links vanish, like an unplugged device.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..500 {
            if !self.device().exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("socat's link {} outlived it", self.device().display());
    }

    /// (Re)starts socat on the same link paths and waits for them.
    pub fn restart(&mut self) {
        self.stop();
        let pty = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .arg(pty(&self.device()))
            .arg(pty(&self.peer_path()))
            .stdin(Stdio::null())
            .spawn()
            .expect("run socat");
        self.child = Some(child);
        assert!(
            wait(Duration::from_secs(10), || self.device().exists()
                && self.peer_path().exists()),
            "socat made no ptys"
        );
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

type Samples = Arc<Mutex<Vec<(Arc<str>, RawSample)>>>;

/// A serial source on its own runtime, recording every sample and reject.
pub struct Link {
    rt: tokio::runtime::Runtime,
    /// The link's counters.
    pub stats: Arc<SerialStats>,
    samples: Samples,
    rejects: Arc<Mutex<Vec<Reject>>>,
    stop: Stop,
}

impl Link {
    /// Starts a source for the `[[serial]]` section `toml` (2 features for
    /// MQTT-format payloads).
    pub fn start(toml: &str) -> Link {
        let config: SerialConfig = toml::from_str(toml).expect("serial section parses");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let (source, stats) = SerialSource::new(&config, 0, DecodeLimits::new(2), tx);
        let stop = Stop::default();
        let samples = Samples::default();
        let rejects = Arc::new(Mutex::new(Vec::new()));
        rt.spawn(source.run(stop.clone()));
        let (s, r) = (Arc::clone(&samples), Arc::clone(&rejects));
        rt.spawn(async move {
            while let Some(batch) = rx.recv().await {
                for decoded in batch.decoded {
                    s.lock().unwrap().extend(decoded.samples);
                    r.lock().unwrap().extend(decoded.rejects);
                }
            }
        });
        Link {
            rt,
            stats,
            samples,
            rejects,
            stop,
        }
    }

    /// Samples so far.
    pub fn samples(&self) -> Vec<(Arc<str>, RawSample)> {
        self.samples.lock().unwrap().clone()
    }

    /// Rejects so far.
    pub fn rejects(&self) -> Vec<Reject> {
        self.rejects.lock().unwrap().clone()
    }

    /// The `/api/status` entry of the link.
    pub fn status(&self) -> Value {
        self.stats.status()
    }

    /// Polls `done` until it holds (true) or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&Link) -> bool) -> bool {
        wait(timeout, || done(self))
    }

    /// Stops the source.
    pub fn stop(self) {
        self.stop.trigger();
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// Polls `done` every 10 ms until it holds or `timeout` passes.
pub fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub use crate::common::gsinfer::{free_port, http_get};

/// A child process killed on drop.
pub struct Service(Child);

impl Service {
    /// Spawns `command` with stderr inherited.
    pub fn spawn(command: &mut Command) -> Service {
        Service(command.stderr(Stdio::inherit()).spawn().unwrap())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
