//! MQTT over TLS against a real Mosquitto with a TLS listener, and the
//! permission checks on secret files, with the real `gsinfer` binary.
//!
//! A CA, a broker certificate (SAN `localhost`, `127.0.0.1`) and a client
//! certificate are made at test time with rcgen. The cases:
//! - mutual TLS (`require_certificate`, `use_identity_as_username`): gsinfer
//!   scores a real SMAP channel published by `mosquitto_pub` (OpenSSL) over
//!   TLS with its own client certificate, observed by a rumqttc client that
//!   also speaks TLS;
//! - a password over TLS (`password_file` made by `mosquitto_passwd`,
//!   `allow_anonymous false`): the same, published by `gsinfer replay`;
//! - the wrong CA: gsinfer logs why the broker's certificate is refused,
//!   keeps retrying, shows the broker disconnected, and does not exit;
//! - password, client key and token files readable by group or others:
//!   refused at start with one line and a non-zero exit.
//!
//! Waits poll for a condition up to a generous deadline; nothing is timed.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::gsinfer::{bin, free_port, http_get, wait_until, write_config, Service};
use common::{data_dir, mosquitto_available, Messages};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;

/// A SMAP channel; its first samples are published.
const CHANNEL: &str = "S-1";
/// Samples published: the example model's window is 250 samples, so this
/// gives 50 scores.
const SAMPLES: usize = 300;
/// Scores waited for.
const SCORES: usize = 40;
/// The client certificate's common name: the user name the broker sees.
const CLIENT_CN: &str = "gsinfer-ground-1";

/// PEM files of a test PKI in a private folder: `ca.pem`, `server.pem`,
/// `server.key`, `client.pem`, `client.key` (keys mode 600), and
/// `other-ca.pem`, a CA that signed nothing here.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        fs::create_dir(&dir).unwrap();
        let (ca_pem, ca) = new_ca("gsinfer test CA");
        let (other_pem, _) = new_ca("some other CA");
        let leaf = |sans: Vec<String>, cn: &str, usage, name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca).unwrap();
            write(&dir.join(format!("{name}.pem")), &cert.pem(), 0o644);
            write(
                &dir.join(format!("{name}.key")),
                &key.serialize_pem(),
                0o600,
            );
        };
        leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            vec![],
            CLIENT_CN,
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        write(&dir.join("ca.pem"), &ca_pem, 0o644);
        write(&dir.join("other-ca.pem"), &other_pem, 0o644);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap()
    }
}

/// A self-signed CA: its PEM and its issuer.
fn new_ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = p.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(p, key))
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// How the broker authenticates clients on its TLS listener.
enum Auth {
    /// Mutual TLS: a certificate from the test CA, its CN the user name.
    ClientCertificate,
    /// User name and password (made with `mosquitto_passwd`), no client
    /// certificate.
    Password {
        user: &'static str,
        password: &'static str,
    },
}

/// Mosquitto with one TLS listener on a loopback port; killed on drop.
struct TlsBroker {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl TlsBroker {
    fn start(pki: &Pki, dir: &Path, auth: &Auth) -> TlsBroker {
        let dir = dir.join("mosquitto");
        fs::create_dir(&dir).unwrap();
        let log = dir.join("mosquitto.log");
        let mut conf = format!(
            "per_listener_settings false\n\
             persistence false\n\
             log_dest file {}\n\
             log_type all\n\
             allow_anonymous false\n",
            log.display()
        );
        // Options of the listener itself, after its `listener` line.
        let mut listener = String::new();
        match auth {
            Auth::ClientCertificate => listener.push_str(
                "require_certificate true\n\
                 use_identity_as_username true\n",
            ),
            Auth::Password { user, password } => {
                let file = dir.join("passwords");
                let out = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .output()
                    .expect("run mosquitto_passwd");
                assert!(
                    out.status.success(),
                    "mosquitto_passwd: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                conf.push_str(&format!("password_file {}\n", file.display()));
            }
        }
        // Started as root, mosquitto drops to user `mosquitto`, who could
        // not read the private keys in our folder.
        if fs::metadata(&dir).map(|m| m.uid() == 0).unwrap_or(false) {
            conf.push_str("user root\n");
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf_path = dir.join("mosquitto.conf");
            fs::write(
                &conf_path,
                format!(
                    "{conf}listener {port} 127.0.0.1\n\
                     cafile {}\ncertfile {}\nkeyfile {}\n{listener}",
                    pki.path("ca.pem").display(),
                    pki.path("server.pem").display(),
                    pki.path("server.key").display()
                ),
            )
            .unwrap();
            let stderr = File::create(dir.join("mosquitto.stderr")).unwrap();
            let mut child = common::dies_with_test(&mut Command::new(mosquitto()))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(stderr.try_clone().unwrap())
                .stderr(stderr)
                .spawn()
                .expect("start mosquitto");
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let up = wait_until(|| {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up && child.try_wait().unwrap().is_none() {
                return TlsBroker { port, child, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = read_logs(&dir);
        }
        panic!("mosquitto with TLS did not start:\n{last}");
    }

    fn log(&self) -> String {
        read_logs(&self.dir)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_logs(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    let stderr = fs::read_to_string(dir.join("mosquitto.stderr")).unwrap_or_default();
    format!("--- mosquitto.log\n{log}\n--- stderr\n{stderr}")
}

/// Where mosquitto is (`/usr/sbin` is not on every user's `PATH`).
fn mosquitto() -> PathBuf {
    std::env::var_os("MOSQUITTO")
        .map(PathBuf::from)
        .or_else(|| common::gsinfer::find_program(&["mosquitto", "/usr/sbin/mosquitto"]))
        .expect("mosquitto")
}

/// Whether the Mosquitto command-line clients are installed; tests that
/// need them skip (with a message) when not.
fn clients_available() -> bool {
    let found = common::gsinfer::find_program(&["mosquitto_pub"]).is_some()
        && common::gsinfer::find_program(&["mosquitto_passwd"]).is_some();
    if !found {
        common::skip(
            "mosquitto_pub/mosquitto_passwd not found (apt-get install mosquitto-clients)",
        );
    }
    found
}

/// A rumqttc client speaking TLS (rumqttc's own PEM handling, not
/// gsinfer's), subscribed to `gsinfer/#`, recording what arrives.
struct TlsSubscriber {
    messages: Messages,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TlsSubscriber {
    fn start(port: u16, tls: TlsConfiguration, login: Option<(&str, &str)>) -> TlsSubscriber {
        let mut options =
            MqttOptions::new(format!("tls-sub-{}", std::process::id()), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_transport(Transport::tls_with_config(tls));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 64);
        let messages = Messages::default();
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (messages, subscribed, stop) = (
                Arc::clone(&messages),
                Arc::clone(&subscribed),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                let mut last_error = None;
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            let _ = client.try_subscribe("gsinfer/#", QoS::AtLeastOnce);
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            subscribed.store(true, Ordering::SeqCst);
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            messages
                                .lock()
                                .unwrap()
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                        Ok(Err(e)) => {
                            let e = e.to_string();
                            if last_error.as_ref() != Some(&e) {
                                eprintln!("TLS subscriber: {e}");
                                last_error = Some(e);
                            }
                            thread::sleep(Duration::from_millis(200));
                        }
                        Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
        };
        assert!(
            wait_until(|| subscribed.load(Ordering::SeqCst)),
            "the TLS subscriber never subscribed on port {port}"
        );
        TlsSubscriber {
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self, topic: &str) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .count()
    }
}

impl Drop for TlsSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The example configuration on this broker over TLS: `tls` lines go
/// into `[broker.tls]`, `broker` lines into `[broker]`.
fn tls_config(dir: &Path, port: u16, status_port: u16, broker: &str, tls: &str) -> PathBuf {
    let path = write_config(dir, port, status_port, "");
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\n[status]\n"),
        "the example's [status] moved"
    );
    let text = text
        .replace("[broker]\n", &format!("[broker]\n{broker}\n"))
        .replace(
            "\n[status]\n",
            &format!("\n[broker.tls]\n{tls}\n\n[status]\n"),
        );
    fs::write(&path, text).unwrap();
    path
}

/// The first [`SAMPLES`] samples of [`CHANNEL`] as JSON lines, as `gsinfer
/// replay` would send them.
fn sample_lines(data: &Path) -> String {
    let rows = gsinfer::eval::read_channel(data, "test", CHANNEL).unwrap();
    rows.iter()
        .take(SAMPLES)
        .enumerate()
        .map(|(i, v)| {
            let t = gsinfer::eval::DEFAULT_START_NS + i as i64 * gsinfer::eval::DEFAULT_STEP_NS;
            format!("{}\n", serde_json::json!({"t": t, "seq": i, "v": v}))
        })
        .collect()
}

fn status(status_port: u16) -> Option<Value> {
    let (code, body) = http_get(status_port, "/api/status")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Waits for the service to be ready (models loaded, broker connected).
fn wait_ready(status_port: u16, broker: &TlsBroker) {
    assert!(
        wait_until(|| http_get(status_port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "gsinfer never connected over TLS; broker log:\n{}",
        broker.log()
    );
}

#[test]
fn mutual_tls_end_to_end_with_a_client_certificate() {
    if !mosquitto_available() || !clients_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let broker = TlsBroker::start(&pki, dir.path(), &Auth::ClientCertificate);
    let status_port = free_port();
    let config = tls_config(
        dir.path(),
        broker.port,
        status_port,
        "",
        &format!(
            "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    );
    let sub = TlsSubscriber::start(
        broker.port,
        TlsConfiguration::Simple {
            ca: pki.read("ca.pem"),
            alpn: None,
            client_auth: Some((pki.read("client.pem"), pki.read("client.key"))),
        },
        None,
    );
    let _service = Service::run(&config);
    wait_ready(status_port, &broker);
    let st = status(status_port).unwrap();
    assert_eq!(st["broker"]["connected"], true, "{st}");
    // The broker took the client certificate's CN as the user name.
    let session = format!("as gsinfer-test-{}", std::process::id());
    assert!(
        broker
            .log()
            .lines()
            .any(|l| l.contains(&session) && l.contains(&format!("u'{CLIENT_CN}'"))),
        "gsinfer's session is not in the broker log:\n{}",
        broker.log()
    );

    // An independent TLS client (OpenSSL) publishes the channel.
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(pki.path("ca.pem"))
        .arg("--cert")
        .arg(pki.path("client.pem"))
        .arg("--key")
        .arg(pki.path("client.key"))
        .args(["-i", "tls-pub", "-q", "1", "-t"])
        .arg(format!("telemetry/SMAP/{CHANNEL}"))
        .arg("-l")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(sample_lines(&data).as_bytes())
        .unwrap();
    let out = publisher.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let scores = format!("gsinfer/smap_lstm/{CHANNEL}/score");
    assert!(
        wait_until(|| sub.count(&scores) >= SCORES),
        "{} scores over TLS, wanted {SCORES}; broker log:\n{}",
        sub.count(&scores),
        broker.log()
    );
    let samples = status(status_port).unwrap()["models"][0]["samples"]
        .as_u64()
        .unwrap();
    assert_eq!(samples, SAMPLES as u64);
}

#[test]
fn password_over_tls_end_to_end() {
    if !mosquitto_available() || !clients_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let (user, password) = ("gsinfer", "correct horse battery staple");
    let broker = TlsBroker::start(&pki, dir.path(), &Auth::Password { user, password });
    let password_file = dir.path().join("mqtt.password");
    write(&password_file, &format!("{password}\n"), 0o600);
    let status_port = free_port();
    let config = tls_config(
        dir.path(),
        broker.port,
        status_port,
        &format!("username = {user:?}\npassword_file = {password_file:?}"),
        &format!("ca_file = {:?}", pki.path("ca.pem")),
    );
    let sub = TlsSubscriber::start(
        broker.port,
        TlsConfiguration::Simple {
            ca: pki.read("ca.pem"),
            alpn: None,
            client_auth: None,
        },
        Some((user, password)),
    );
    let _service = Service::run(&config);
    wait_ready(status_port, &broker);

    // gsinfer replay publishes with the same configuration: TLS and password.
    let out = Command::new(bin())
        .args(["replay", "--fast", "--channel", CHANNEL, "--limit"])
        .arg(SAMPLES.to_string())
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores = format!("gsinfer/smap_lstm/{CHANNEL}/score");
    assert!(
        wait_until(|| sub.count(&scores) >= SCORES),
        "{} scores over TLS, wanted {SCORES}",
        sub.count(&scores)
    );

    // The same broker refuses a wrong password: gsinfer keeps trying and
    // never becomes ready.
    let refusals = || broker.log().matches("not authorised").count();
    let before = refusals();
    write(&password_file, "wrong\n", 0o600);
    let wrong_dir = dir.path().join("wrong");
    fs::create_dir(&wrong_dir).unwrap();
    let status_port = free_port();
    let wrong = tls_config(
        &wrong_dir,
        broker.port,
        status_port,
        &format!("username = {user:?}\npassword_file = {password_file:?}\nreconnect_max_ms = 500"),
        &format!("ca_file = {:?}", pki.path("ca.pem")),
    );
    let mut service = Service::run(&wrong);
    assert!(
        wait_until(|| refusals() >= before + 2),
        "the broker never refused the wrong password twice:\n{}",
        broker.log()
    );
    assert_eq!(http_get(status_port, "/readyz").map(|(s, _)| s), Some(503));
    assert!(service.0.try_wait().unwrap().is_none(), "gsinfer exited");
}

#[test]
fn wrong_ca_is_logged_and_retried_without_crashing() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let broker = TlsBroker::start(&pki, dir.path(), &Auth::ClientCertificate);
    let status_port = free_port();
    let config = tls_config(
        dir.path(),
        broker.port,
        status_port,
        "reconnect_max_ms = 500",
        &format!(
            "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
            pki.path("other-ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    );
    let log_path = dir.path().join("gsinfer.log");
    let mut service = Service(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("STATE_DIRECTORY", config.parent().unwrap())
            .stderr(File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        wait_until(|| log().contains("TLS: the broker's certificate is refused")),
        "no TLS error in gsinfer's log:\n{}",
        log()
    );
    let line = log()
        .lines()
        .find(|l| l.contains("TLS: the broker's certificate is refused"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("UnknownIssuer") && line.contains("broker.tls.ca_file"),
        "{line}"
    );
    eprintln!("gsinfer logged: {line}");
    // It keeps trying: the broker sees new connections again and again.
    assert!(
        wait_until(|| broker.log().matches("New connection from").count() >= 3),
        "gsinfer stopped retrying; broker log:\n{}",
        broker.log()
    );
    let st = status(status_port).expect("status server answers");
    assert_eq!(st["broker"]["connected"], false, "{st}");
    assert_eq!(st["ready"], false, "{st}");
    assert_eq!(http_get(status_port, "/readyz").map(|(s, _)| s), Some(503));
    assert!(
        service.0.try_wait().unwrap().is_none(),
        "gsinfer exited:\n{}",
        log()
    );
}

/// Runs `gsinfer <command> --config <config>` and returns (exit code, stderr).
fn run_once(command: &str, config: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args([command, "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn shared_secret_files_are_refused_at_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let secret = |name: &str, text: &str| {
        let p = dir.path().join(name);
        write(&p, text, 0o600);
        p
    };
    let password = secret("mqtt.password", "s3cret-pa55word\n");
    let token = secret("http.token", "s3cret-t0ken\n");
    let key = pki.path("client.key");
    let config = tls_config(
        dir.path(),
        free_port(),
        free_port(),
        &format!("username = \"gsinfer\"\npassword_file = {password:?}"),
        &format!(
            "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {key:?}",
            pki.path("ca.pem"),
            pki.path("client.pem")
        ),
    );
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("[status]\n", &format!("[status]\ntoken_file = {token:?}\n"));
    fs::write(&config, text).unwrap();
    let (code, err) = run_once("check-config", &config);
    assert_eq!(code, Some(0), "{err}");

    for (file, key_name) in [
        (&password, "broker.password_file"),
        (&key, "broker.tls.client_key_file"),
        (&token, "status.token_file"),
    ] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o644)).unwrap();
        let want = format!(
            "{}: {key_name}: {f} is readable by group/others (mode 0644); run: chmod 600 {f}",
            config.display(),
            f = file.display()
        );
        for command in ["run", "check-config"] {
            let (code, err) = run_once(command, &config);
            assert_ne!(code, Some(0), "{command} accepted {key_name} at 0644");
            assert!(code.is_some(), "{command} was killed");
            assert_eq!(err.trim_end(), want, "{command}");
            assert!(
                !err.contains("s3cret") && !err.contains("PRIVATE KEY"),
                "{err}"
            );
        }
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A missing file is one line as well.
    fs::remove_file(&key).unwrap();
    let (code, err) = run_once("run", &config);
    assert_ne!(code, Some(0));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("broker.tls.client_key_file: cannot read")
            && err.contains(&key.display().to_string()),
        "{err}"
    );
}
