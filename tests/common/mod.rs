//! Shared integration-test harness: a real Mosquitto broker on an ephemeral
//! loopback port, a synchronous rumqttc subscriber that records what arrives,
//! a publisher that waits for the broker's acknowledgements, and the path to
//! the real telemetry data set.
//!
//! Each file under tests/ is its own crate and uses only part of this module.
// Items used by only some test crates would warn as dead code in the others.
#![allow(dead_code)]

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, RecvTimeoutError, SubscribeFilter};

/// Fresh ports tried when mosquitto exits at start (e.g. the port was taken).
const PORT_ATTEMPTS: usize = 5;
/// Starts tried on the same port by [`Broker::restart`].
const RESTART_ATTEMPTS: usize = 20;
/// TCP connect probes before a starting broker is declared broken (~10 s).
const READY_PROBES: usize = 400;
const READY_PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// Upper bound for harness handshakes (connect, subscribe, publish acks);
/// a guard against hangs, not a timing assertion.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Has `command`'s process killed (SIGKILL) when the thread that spawns it
/// ends, so a test binary that is itself killed mid-test (a CI timeout, ^C)
/// leaves no mosquitto or gsinfer behind holding ports and files. Linux's
/// `PR_SET_PDEATHSIG` (prctl(2)): it fires when the spawning *thread*
/// exits, which for a test is the test's own thread, and survives `exec`.
pub fn dies_with_test(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only prctl(2), which
    // is async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Where mosquitto is: `$MOSQUITTO`, then `PATH`, then the Debian location
/// (`/usr/sbin` is not on every user's `PATH`).
fn mosquitto_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("MOSQUITTO") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("mosquitto"))
        .find(|bin| bin.is_file())
}

/// Says that a test is skipped because a real part it needs is missing. With
/// `GSINFER_REQUIRE_ALL=1` (set by `.ci/run`) it fails the test instead, so
/// a CI box without the part cannot pass the tests that need it unrun; on a
/// developer's machine the message stays a note.
pub fn skip(message: &str) {
    if std::env::var_os("GSINFER_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("a required part is missing and GSINFER_REQUIRE_ALL=1: {message}");
    }
    eprintln!("skipped: {message}");
}

/// Whether a mosquitto binary can be found; tests skip (with a message) if not.
pub fn mosquitto_available() -> bool {
    let found = mosquitto_bin().is_some();
    if !found {
        skip("mosquitto not found (apt-get install mosquitto, or set MOSQUITTO)");
    }
    found
}

/// The telemanom data set (folders `train/` and `test/` of `<channel>.npy`):
/// `$GSINFER_DATA_DIR`, else `../shared/data/telemanom` next to the crate.
/// `None`, with a note on stderr, when its `test/` folder is absent.
pub fn data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("GSINFER_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/telemanom"),
    };
    if dir.join("test").is_dir() {
        Some(dir)
    } else {
        skip(&format!(
            "{} not found, set GSINFER_DATA_DIR",
            dir.join("test").display()
        ));
        None
    }
}

/// A mosquitto process listening on `127.0.0.1:port`, with its config and
/// log in a private temporary directory. Killed (and reaped) on drop.
pub struct Broker {
    /// The loopback port clients connect to.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// Sessions and queued messages kept in `dir` across restarts.
    persistent: bool,
}

/// Why a start attempt failed.
enum StartError {
    /// The process exited during start-up (port taken, bad config, ...).
    Exited(String),
    /// The process runs but never accepted a TCP connection.
    NotListening(String),
}

impl Broker {
    /// Starts a broker on a free loopback port; panics, with the broker's
    /// log, if none comes up.
    pub fn start() -> Broker {
        Self::start_with(false)
    }

    /// Starts a broker with persistence on (sessions, subscriptions and
    /// queued QoS 1 messages saved in its directory every second and at a
    /// graceful exit), as a production broker runs.
    pub fn start_persistent() -> Broker {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("gsinfer-mosquitto-")
            .tempdir()
            .expect("create broker tempdir");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn(dir.path(), port, persistent) {
                Ok(child) => {
                    return Broker {
                        port,
                        child,
                        dir,
                        persistent,
                    }
                }
                Err(StartError::Exited(log)) => last = log,
                Err(StartError::NotListening(log)) => {
                    panic!("mosquitto never listened on port {port}:\n{log}")
                }
            }
        }
        panic!("mosquitto exited at start {PORT_ATTEMPTS} times; last log:\n{last}");
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port.
    /// Without persistence all sessions and queued messages are lost; with
    /// it, what changed since the last autosave is.
    pub fn restart(&mut self) {
        stop(&mut self.child);
        self.start_again();
    }

    /// Stops the broker gracefully (SIGTERM: a persistent broker saves its
    /// state) and starts it again on the same port.
    pub fn terminate_and_restart(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
        self.start_again();
    }

    fn start_again(&mut self) {
        let mut last = String::new();
        for _ in 0..RESTART_ATTEMPTS {
            match spawn(self.dir.path(), self.port, self.persistent) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                // The old socket may linger for a moment; try again.
                Err(StartError::Exited(log)) => last = log,
                Err(StartError::NotListening(log)) => {
                    panic!("mosquitto never listened on port {}:\n{log}", self.port)
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "mosquitto did not restart on port {}; last log:\n{last}",
            self.port
        );
    }

    /// Kills the broker; [`Broker::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// The broker's process id (e.g. to SIGSTOP it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's log and stderr so far, for failure messages.
    pub fn log(&self) -> String {
        read_logs(self.dir.path())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    // Errors mean it has already exited; wait() reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free a moment ago (the OS picks it; there is a small race
/// with other processes, which [`Broker::start`] absorbs by retrying).
fn free_port() -> u16 {
    gsinfer::free_port()
}

fn read_logs(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    let stderr = fs::read_to_string(dir.join("mosquitto.stderr")).unwrap_or_default();
    format!("--- mosquitto.log\n{log}\n--- stderr\n{stderr}")
}

/// Writes the config, starts mosquitto and waits until it accepts TCP.
fn spawn(dir: &Path, port: u16, persistent: bool) -> Result<Child, StartError> {
    let log = dir.join("mosquitto.log");
    let persistence = if persistent {
        format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1\n",
            dir.display()
        )
    } else {
        "persistence false\n".to_string()
    };
    let mut conf = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         max_queued_messages 0\n\
         {persistence}\
         log_dest file {}\n\
         log_type all\n",
        log.display()
    );
    // Started as root, mosquitto drops to user `mosquitto`, who cannot write
    // the log into our private tempdir; the dir's owner is our effective uid.
    if fs::metadata(dir).map(|m| m.uid() == 0).unwrap_or(false) {
        conf.push_str("user root\n");
    }
    let conf_path = dir.join("mosquitto.conf");
    fs::write(&conf_path, conf).expect("write mosquitto.conf");
    let stderr = File::options()
        .create(true)
        .append(true)
        .open(dir.join("mosquitto.stderr"))
        .expect("open mosquitto.stderr");
    let bin = mosquitto_bin().expect("mosquitto not found (check mosquitto_available() first)");
    let mut child = dies_with_test(&mut Command::new(&bin))
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(stderr.try_clone().expect("dup stderr file"))
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..READY_PROBES {
        if let Ok(Some(_status)) = child.try_wait() {
            return Err(StartError::Exited(read_logs(dir)));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        thread::sleep(READY_PROBE_INTERVAL);
    }
    stop(&mut child);
    Err(StartError::NotListening(read_logs(dir)))
}

static CLIENT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A client id unique within this test process and across test processes.
fn client_id(role: &str) -> String {
    let n = CLIENT_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("gsinfer-test-{role}-{}-{n}", std::process::id())
}

/// What a [`Subscriber`] has received: `(topic, payload)` in arrival order.
pub type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client on a background thread, subscribed at QoS 1 to some topic
/// filters, recording every message. It resubscribes after each reconnect,
/// so it survives [`Broker::restart`].
pub struct Subscriber {
    /// Every message received so far.
    pub messages: Messages,
    subacks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    client: Client,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `127.0.0.1:port`, subscribes to `filters` at QoS 1 and
    /// returns once the broker has acknowledged the subscription.
    pub fn start(port: u16, filters: &[&str]) -> Subscriber {
        Self::start_with(port, filters, &client_id("sub"), true)
    }

    /// Like [`Subscriber::start`] with a persistent session under
    /// `client_id`: QoS 1 messages published while it is disconnected (a
    /// broker restart) are queued for it by a persistent broker.
    pub fn start_persistent(port: u16, filters: &[&str], client_id: &str) -> Subscriber {
        Self::start_with(port, filters, client_id, false)
    }

    fn start_with(port: u16, filters: &[&str], client_id: &str, clean: bool) -> Subscriber {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(KEEP_ALIVE);
        options.set_clean_session(clean);
        let (client, mut connection) = Client::new(options, 64);
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce))
            .collect();
        let messages = Messages::default();
        let subacks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (client, messages, subacks, stop) = (
                client.clone(),
                messages.clone(),
                subacks.clone(),
                stop.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(50)) {
                        // Subscribing on every ConnAck restores the filters after a reconnect.
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            let _ = client.try_subscribe_many(filters.clone());
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            subacks.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            lock(&messages).push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                        // Broker down: rumqttc reconnects on the next poll; don't spin.
                        Ok(Err(_)) => thread::sleep(Duration::from_millis(50)),
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
        };
        let subscriber = Subscriber {
            messages,
            subacks,
            stop,
            client,
            thread: Some(thread),
        };
        assert!(
            subscriber.wait_subscribed(1, HANDSHAKE_TIMEOUT),
            "subscriber never got a SUBACK from port {port}"
        );
        subscriber
    }

    /// Waits until the broker has acknowledged `count` subscriptions in all
    /// (one per connection: 2 after one restart); false if `timeout` passes.
    pub fn wait_subscribed(&self, count: usize, timeout: Duration) -> bool {
        poll_until(timeout, || self.subacks.load(Ordering::SeqCst) >= count)
    }

    /// Polls `predicate` over the messages received so far until it holds
    /// (true) or `timeout` passes (false).
    pub fn wait_for(
        &self,
        predicate: impl Fn(&[(String, Vec<u8>)]) -> bool,
        timeout: Duration,
    ) -> bool {
        poll_until(timeout, || predicate(&lock(&self.messages)))
    }

    /// A copy of the messages received so far.
    pub fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        lock(&self.messages).clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the messages from the others.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes `messages` in order at QoS 1 from one fresh client and returns
/// once the broker has acknowledged every one (so a subscriber that was
/// subscribed before the call will receive them all). Panics if it cannot.
pub fn publish_all(port: u16, messages: &[(&str, &[u8])]) {
    let mut options = MqttOptions::new(client_id("pub"), "127.0.0.1", port);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut connection) = Client::new(options, messages.len() + 8);
    for (topic, payload) in messages {
        client
            .publish(*topic, QoS::AtLeastOnce, false, payload.to_vec())
            .expect("queue publish");
    }
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut acked = 0;
    while acked < messages.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "broker on port {port} acknowledged {acked} of {} publishes",
            messages.len()
        );
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => panic!("publisher on port {port}: {e}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("publisher on port {port}: request channel closed")
            }
        }
    }
    // Flush a clean DISCONNECT so the broker does not log a lost client.
    let _ = client.disconnect();
    while let Ok(Ok(event)) = connection.recv_timeout(Duration::from_secs(1)) {
        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
}

pub mod gsinfer;
pub mod kserve;
