//! Running the `gsinfer` binary from integration tests: a configuration
//! derived from the shipped example, the service as a child process that is
//! killed on drop, and a minimal HTTP GET for its status server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound on waiting for the service; a guard against hangs only.
pub const GUARD: Duration = Duration::from_secs(300);

/// The shipped example's scoring line (NDT).
pub const EXAMPLE_SCORING: &str = "scoring = { kind = \"forecast\", target_feature = 0, smoothing_span = 105.0, event_hold = 1, threshold = { method = \"ndt\" } }";

/// A scoring that decides every score as it comes (a static threshold), put
/// in place of the example's by tests that count scores sample by sample:
/// NDT decides a batch of 70 at a time and leaves a stream's last partial
/// batch undecided, which such counts would read as lost samples.
pub const COUNTING_SCORING: &str = "scoring = { kind = \"forecast\", target_feature = 0, smoothing_span = 30.0, event_hold = 30, threshold = { method = \"static\", value = 0.5 } }";

/// The example's text with [`COUNTING_SCORING`] in place of its scoring.
pub fn counting_example(example: &str) -> String {
    assert!(
        example.contains(EXAMPLE_SCORING),
        "the example's scoring line changed"
    );
    example.replace(EXAMPLE_SCORING, COUNTING_SCORING)
}

/// The `gsinfer` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gsinfer")
}

/// Publishes `<data>/test/<channel>.npy` on `topic` with `gsinfer replay
/// --fast --batch 10` (the broker and format of `config`), and asserts that
/// the replay succeeded.
pub fn replay_fast(config: &Path, data: &Path, channel: &str, topic: &str) {
    let status = Command::new(bin())
        .args(["replay", "--fast", "--batch", "10", "--channel", channel])
        .args(["--topic", topic, "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .status()
        .unwrap();
    assert!(status.success(), "replay of {channel} on {topic} failed");
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shipped example's gRPC address.
pub const EXAMPLE_GRPC_LISTEN: &str = "listen = \"127.0.0.1:8001\"";

/// The example's text with its gRPC server on a port of the OS's choosing,
/// so that services run by tests at once never fight over 8001.
pub fn any_grpc_port(example: &str) -> String {
    assert!(
        example.contains(EXAMPLE_GRPC_LISTEN),
        "the example's [grpc] listen line changed"
    );
    example.replace(EXAMPLE_GRPC_LISTEN, "listen = \"127.0.0.1:0\"")
}

/// Writes `gsinfer.toml` into `dir`: the shipped example with this test's
/// broker and status ports, gRPC on any free port ([`any_grpc_port`]), the
/// absolute repository path, a unique client id, and `status_extra` lines
/// appended to `[status]`.
pub fn write_config(dir: &Path, broker_port: u16, status_port: u16, status_extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/gsinfer.example.toml")).unwrap();
    let text = any_grpc_port(&counting_example(&example))
        .replace("port = 1883", &format!("port = {broker_port}"))
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{status_port}\"\n{status_extra}"),
        )
        .replace(
            "path = \"../model_repository\"",
            &format!(
                "path = {:?}",
                root.join("model_repository").display().to_string()
            ),
        )
        .replace(
            "client_id = \"gsinfer\"",
            &format!("client_id = \"gsinfer-test-{}\"", std::process::id()),
        );
    let path = dir.join("gsinfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `gsinfer eval --json <args> --config <config> --data-dir <data>`,
/// asserts that it succeeded (its stderr otherwise), and returns its output
/// lines as JSON values.
pub fn eval_json(args: &[&str], config: &Path, data: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["eval", "--json"])
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gsinfer eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `GET path` on `127.0.0.1:port`: `(status, body)`, or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `done` every 50 ms until it holds (true) or [`GUARD`] passes (false).
pub fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + GUARD;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process killed (and reaped) on drop. The service helpers
/// below point `STATE_DIRECTORY` (channel state, engine plans) at the
/// configuration's folder, so no test continues another's channel state.
pub struct Service(pub Child);

impl Service {
    /// Starts `gsinfer run --config <config>`, its log on the test's stderr.
    pub fn run(config: &Path) -> Service {
        Self::run_with_env(config, &[])
    }

    /// [`Service::run`] with `env` added to its environment (e.g.
    /// `GSINFER__<SECTION>__<KEY>` overrides).
    pub fn run_with_env(config: &Path, env: &[(&str, &str)]) -> Service {
        Service(
            super::dies_with_test(&mut Command::new(bin()))
                .args(["run", "--config"])
                .arg(config)
                .env("STATE_DIRECTORY", config.parent().unwrap())
                .envs(env.iter().copied())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gsinfer run --config <config>` with its log in `dir/gsinfer.log`
/// (readable while it runs, printed if the test panics); killed on drop.
pub struct LoggedService {
    /// The process, for signals and its exit status.
    pub child: Child,
    log: PathBuf,
}

impl LoggedService {
    /// Starts the service, its stderr going to `dir/gsinfer.log`.
    pub fn run(config: &Path, dir: &Path) -> LoggedService {
        let mut command = Command::new(bin());
        command.args(["run", "--config"]).arg(config);
        Self::spawn(command, config, dir)
    }

    /// Starts `command`, which runs `gsinfer run --config <config>` (directly
    /// or through a wrapper that `exec`s it), as [`LoggedService::run`] does.
    pub fn spawn(mut command: Command, config: &Path, dir: &Path) -> LoggedService {
        let log = dir.join("gsinfer.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = super::dies_with_test(&mut command)
            .env("STATE_DIRECTORY", config.parent().unwrap())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        LoggedService { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- gsinfer log\n{}", self.log());
        }
    }
}

/// The first of `candidates` that is an executable file on `PATH` (or an
/// absolute path that exists).
pub fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|c| {
        let c = Path::new(c);
        if c.is_absolute() {
            return c.is_file().then(|| c.to_path_buf());
        }
        std::env::split_paths(&path)
            .map(|dir| dir.join(c))
            .find(|p| p.is_file())
    })
}
