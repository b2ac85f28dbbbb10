//! MQTT over TLS: the `[broker.tls]` table and the rustls client
//! configuration built from it, which rumqttc's TLS transport uses.
//!
//! The broker's certificate is verified by rustls' WebPKI verifier against
//! `ca_file`, or against the system's CA certificates (the
//! `ca-certificates` package, found by `rustls-native-certs`) when no file
//! is given. A client certificate and key give mutual TLS; the key file is
//! a secret and is read with [`crate::secrets`]' permission checks. PEM is
//! parsed by `rustls-pki-types`; nothing here parses certificates itself.
//!
//! rumqttc verifies the broker's certificate against `broker.host`;
//! `server_name` replaces that name in the verification (for a broker
//! reached by IP address whose certificate names only its DNS name). A
//! certificate the verifier refuses is logged as a warning here, at most
//! once a minute unless the reason changes, because rumqttc retries
//! without end and reports the failure only as a connection error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::secrets::{read_private_file, SecretFileError};

/// Largest CA or certificate file read, in bytes (the whole Mozilla CA
/// bundle is about 220 KB).
pub const MAX_CERT_FILE_BYTES: u64 = 1 << 20;

/// Longest a repeated, unchanged certificate refusal stays out of the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// MQTT over TLS (`[broker.tls]`). Present (even empty), gsinfer speaks
/// TLS to the broker (usually on port 8883); absent, plain TCP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the broker's certificate must chain
    /// to; unset: the system's CA certificates (`/etc/ssl/certs`). A
    /// relative path is taken from the configuration file's folder.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (then any intermediates) for
    /// mutual TLS; needs `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1); must be private to its owner (mode 600).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, when it differs from
    /// `broker.host` (e.g. the host is an IP address); a DNS name or an IP
    /// address.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Resolves relative file paths against `base` (the configuration
    /// file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// One line for the log: where trust comes from and whether a client
    /// certificate is presented (no secrets).
    pub fn describe(&self) -> String {
        let ca = match &self.ca_file {
            Some(p) => format!("CA {}", p.display()),
            None => "the system's CA certificates".into(),
        };
        let client = match &self.client_cert_file {
            Some(p) => format!(", client certificate {}", p.display()),
            None => String::new(),
        };
        let name = match &self.server_name {
            Some(n) => format!(", server name {n}"),
            None => String::new(),
        };
        format!("TLS ({ca}{client}{name})")
    }
}

/// A `[broker.tls]` setting gsinfer cannot use; displayed as one line
/// naming the key, the file and the fix.
#[derive(Debug)]
pub enum TlsError {
    /// The client key file is refused (permissions, missing, ...).
    KeyFile(SecretFileError),
    /// A certificate file cannot be read.
    Unreadable {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// A file holds no PEM section of the kind needed.
    NoPem {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold, e.g. `certificate (-----BEGIN CERTIFICATE-----)`.
        what: &'static str,
    },
    /// A file's PEM is malformed.
    BadPem {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's error.
        reason: String,
    },
    /// rustls refused what a file holds (a CA certificate it cannot parse,
    /// a key that does not match the client certificate).
    Refused {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls' error.
        reason: String,
    },
    /// No `ca_file` and no usable system CA certificates.
    NoSystemRoots {
        /// What the loader reported.
        reason: String,
    },
    /// `server_name` is neither a DNS name nor an IP address.
    BadServerName {
        /// The name given.
        name: String,
    },
    /// One of `client_cert_file` and `client_key_file` without the other.
    Unpaired {
        /// The key that is missing.
        missing: &'static str,
        /// The key that is set.
        set: &'static str,
    },
    /// rustls refused the configuration as a whole.
    Rustls(String),
}

impl TlsError {
    /// The configuration key the problem is about.
    pub fn key(&self) -> &'static str {
        match self {
            Self::KeyFile(e) => e.key(),
            Self::Unreadable { key, .. }
            | Self::NoPem { key, .. }
            | Self::BadPem { key, .. }
            | Self::Refused { key, .. } => key,
            Self::NoSystemRoots { .. } => "broker.tls.ca_file",
            Self::BadServerName { .. } => "broker.tls.server_name",
            Self::Unpaired { missing, .. } => missing,
            Self::Rustls(_) => "broker.tls",
        }
    }

    /// What is wrong and the fix, without the key.
    pub fn detail(&self) -> String {
        match self {
            Self::KeyFile(e) => e.detail(),
            Self::Unreadable { path, reason, .. } => {
                format!("cannot read {}: {reason}; correct the path", path.display())
            }
            Self::NoPem { path, what, .. } => format!(
                "{} holds no PEM {what}; point it at a PEM file",
                path.display()
            ),
            Self::BadPem { path, reason, .. } => format!(
                "{} is not valid PEM ({reason}); point it at a PEM file",
                path.display()
            ),
            Self::Refused { path, reason, .. } => {
                format!("{}: refused by rustls: {reason}", path.display())
            }
            Self::NoSystemRoots { reason } => format!(
                "is unset and the system has no usable CA certificates ({reason}); set broker.tls.ca_file to the CA that signed the broker's certificate, or install ca-certificates"
            ),
            Self::BadServerName { name } => format!(
                "`{name}` is neither a DNS name nor an IP address; give the name the broker's certificate carries"
            ),
            Self::Unpaired { set, .. } => format!(
                "is missing while {set} is set; mutual TLS needs both the certificate and its key"
            ),
            Self::Rustls(reason) => format!("cannot be used: {reason}"),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key(), self.detail())
    }
}

impl std::error::Error for TlsError {}

/// Reads a public PEM file (a CA or certificate chain) of at most
/// [`MAX_CERT_FILE_BYTES`].
fn read_cert_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let unreadable = |reason: String| TlsError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CERT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_CERT_FILE_BYTES {
        return Err(unreadable(format!(
            "larger than {MAX_CERT_FILE_BYTES} bytes, too large for certificates"
        )));
    }
    Ok(bytes)
}

/// Every certificate in the PEM file `path`; at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_cert_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            key,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            key,
            path: path.to_path_buf(),
            what: "certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

/// The trust anchors: `ca_file`'s certificates, or the system's.
fn roots(config: &TlsConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in certificates("broker.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| TlsError::Refused {
                    key: "broker.tls.ca_file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = found
                    .errors
                    .first()
                    .map_or("none found".to_string(), |e| e.to_string());
                return Err(TlsError::NoSystemRoots { reason });
            }
        }
    }
    Ok(roots)
}

/// The client certificate chain and key, when mutual TLS is configured.
fn client_identity(
    config: &TlsConfig,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    let (cert_path, key_path) = match (&config.client_cert_file, &config.client_key_file) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(TlsError::Unpaired {
                missing: "broker.tls.client_key_file",
                set: "broker.tls.client_cert_file",
            })
        }
        (None, Some(_)) => {
            return Err(TlsError::Unpaired {
                missing: "broker.tls.client_cert_file",
                set: "broker.tls.client_key_file",
            })
        }
    };
    let chain = certificates("broker.tls.client_cert_file", cert_path)?;
    let key_bytes =
        read_private_file("broker.tls.client_key_file", key_path).map_err(TlsError::KeyFile)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            key: "broker.tls.client_key_file",
            path: key_path.clone(),
            what: "private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        },
        // The parser's messages quote section lines, never key bytes.
        other => TlsError::BadPem {
            key: "broker.tls.client_key_file",
            path: key_path.clone(),
            reason: other.to_string(),
        },
    })?;
    Ok(Some((chain, key)))
}

/// The rustls client configuration for `config`: TLS 1.2 and 1.3 with the
/// aws-lc-rs provider, the broker verified against [`TlsConfig::ca_file`]
/// (or the system's CAs) and, when given, [`TlsConfig::server_name`], and
/// the client certificate for mutual TLS when configured. Reads every file
/// it names; call it once at start.
///
/// # Errors
/// [`TlsError`] naming the key and the file.
pub fn client_config(config: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let name = config
        .server_name
        .as_deref()
        .map(|n| {
            ServerName::try_from(n.to_string()).map_err(|_| TlsError::BadServerName {
                name: n.to_string(),
            })
        })
        .transpose()?;
    let webpki = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(config)?),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier = Arc::new(BrokerVerifier {
        inner: webpki,
        name,
        last_refusal: Mutex::new(None),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let tls = match client_identity(config)? {
        Some((chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Refused {
                    key: "broker.tls.client_key_file",
                    path: config.client_key_file.clone().unwrap_or_default(),
                    reason: format!("{e} (is it the key of broker.tls.client_cert_file?)"),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

/// rustls' WebPKI verifier, checking the broker's certificate against the
/// configured server name when there is one, and logging each refusal.
#[derive(Debug)]
struct BrokerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// Replaces the name rumqttc gives (`broker.host`).
    name: Option<ServerName<'static>>,
    /// The last refusal logged and when.
    last_refusal: Mutex<Option<(String, Instant)>>,
}

impl BrokerVerifier {
    fn log_refusal(&self, name: &ServerName<'_>, error: &rustls::Error) {
        let reason = error.to_string();
        let mut last = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner());
        let quiet = last
            .as_ref()
            .is_some_and(|(r, at)| *r == reason && at.elapsed() < REFUSAL_LOG_INTERVAL);
        if !quiet {
            log::warn!(target: "gsinfer::mqtt",
                "TLS: the broker's certificate is refused for {}: {reason}; set broker.tls.ca_file to the CA that signed it (or broker.tls.server_name to the name it carries); retrying",
                name.to_str());
            *last = Some((reason, Instant::now()));
        }
    }
}

impl ServerCertVerifier for BrokerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            .inspect_err(|e| self.log_refusal(name, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    use super::*;

    /// A CA and what it signed, as PEM.
    struct Pki {
        ca: String,
        server: (String, String),
        client: (String, String),
    }

    fn pki(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |sans: Vec<String>, cn: &str, usage| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            server: leaf(
                vec!["localhost".into(), "127.0.0.1".into()],
                "localhost",
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            client: leaf(vec![], "gsinfer", ExtendedKeyUsagePurpose::ClientAuth),
            ca: ca_pem,
        }
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn server(pki: &Pki, require_client: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
                .unwrap();
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let chain = vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
        Arc::new(builder.with_single_cert(chain, key).unwrap())
    }

    /// Runs a TLS handshake in memory, the client connecting to `host` as
    /// rumqttc does (the name it verifies is `broker.host`).
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        host: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(host.to_string()).unwrap();
        let mut c = ClientConnection::new(client, name)?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            let server_result = s.process_new_packets();
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            server_result?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn verifies_the_broker_against_ca_file_and_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let good = pki("good");
        let other = pki("other");
        let ca = write(dir.path(), "ca.pem", &good.ca, 0o644);
        let wrong_ca = write(dir.path(), "wrong.pem", &other.ca, 0o644);
        let config = TlsConfig {
            ca_file: Some(ca),
            ..TlsConfig::default()
        };
        let client = client_config(&config).unwrap();
        handshake(client.clone(), server(&good, false), "localhost").unwrap();
        handshake(client.clone(), server(&good, false), "127.0.0.1").unwrap();
        // A name the certificate does not carry, then the same with the
        // name it carries as server_name.
        let err = handshake(client, server(&good, false), "10.9.9.9").unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
        let renamed = client_config(&TlsConfig {
            server_name: Some("localhost".into()),
            ..config.clone()
        })
        .unwrap();
        handshake(renamed, server(&good, false), "10.9.9.9").unwrap();
        // Another CA's broker is refused.
        let wrong = client_config(&TlsConfig {
            ca_file: Some(wrong_ca),
            ..TlsConfig::default()
        })
        .unwrap();
        let err = handshake(wrong, server(&good, false), "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{err}"
        );
    }

    #[test]
    fn presents_the_client_certificate_for_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ours = pki("mtls");
        let config = TlsConfig {
            ca_file: Some(write(dir.path(), "ca.pem", &ours.ca, 0o644)),
            client_cert_file: Some(write(dir.path(), "client.pem", &ours.client.0, 0o644)),
            client_key_file: Some(write(dir.path(), "client.key", &ours.client.1, 0o600)),
            server_name: None,
        };
        handshake(
            client_config(&config).unwrap(),
            server(&ours, true),
            "localhost",
        )
        .unwrap();
        let anonymous = TlsConfig {
            client_cert_file: None,
            client_key_file: None,
            ..config.clone()
        };
        assert!(handshake(
            client_config(&anonymous).unwrap(),
            server(&ours, true),
            "localhost"
        )
        .is_err());
        // The key must be private to its owner.
        let key = config.client_key_file.clone().unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = client_config(&config).unwrap_err();
        assert_eq!(err.key(), "broker.tls.client_key_file");
        assert_eq!(
            err.to_string(),
            format!(
                "broker.tls.client_key_file {k} is readable by group/others (mode 0644); run: chmod 600 {k}",
                k = key.display()
            )
        );
    }

    #[test]
    fn unusable_settings_are_one_line_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ours = pki("bad");
        let other = pki("other");
        let ca = write(dir.path(), "ca.pem", &ours.ca, 0o644);
        let cert = write(dir.path(), "client.pem", &ours.client.0, 0o644);
        let key = write(dir.path(), "client.key", &ours.client.1, 0o600);
        let other_key = write(dir.path(), "other.key", &other.client.1, 0o600);
        let not_pem = write(dir.path(), "notes.txt", "hello\n", 0o600);
        let base = TlsConfig {
            ca_file: Some(ca.clone()),
            ..TlsConfig::default()
        };
        let cases: Vec<(TlsConfig, &str, &str)> = vec![
            (
                TlsConfig {
                    ca_file: Some(dir.path().join("missing.pem")),
                    ..TlsConfig::default()
                },
                "broker.tls.ca_file",
                "No such file",
            ),
            (
                TlsConfig {
                    ca_file: Some(not_pem.clone()),
                    ..TlsConfig::default()
                },
                "broker.tls.ca_file",
                "holds no PEM certificate",
            ),
            (
                TlsConfig {
                    client_cert_file: Some(cert.clone()),
                    ..base.clone()
                },
                "broker.tls.client_key_file",
                "is missing while broker.tls.client_cert_file is set",
            ),
            (
                TlsConfig {
                    client_key_file: Some(key.clone()),
                    ..base.clone()
                },
                "broker.tls.client_cert_file",
                "is missing while broker.tls.client_key_file is set",
            ),
            (
                TlsConfig {
                    client_cert_file: Some(cert.clone()),
                    client_key_file: Some(not_pem),
                    ..base.clone()
                },
                "broker.tls.client_key_file",
                "holds no PEM private key",
            ),
            (
                TlsConfig {
                    client_cert_file: Some(cert),
                    client_key_file: Some(other_key),
                    ..base.clone()
                },
                "broker.tls.client_key_file",
                "is it the key of broker.tls.client_cert_file?",
            ),
            (
                TlsConfig {
                    server_name: Some("not a name!".into()),
                    ..base.clone()
                },
                "broker.tls.server_name",
                "neither a DNS name nor an IP address",
            ),
        ];
        for (config, key, text) in cases {
            let err = client_config(&config).unwrap_err();
            let line = err.to_string();
            assert_eq!(err.key(), key, "{line}");
            assert!(line.starts_with(key) && line.contains(text), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }

    #[test]
    fn without_ca_file_the_system_cas_are_trusted() {
        match client_config(&TlsConfig::default()) {
            Ok(_) => {}
            Err(TlsError::NoSystemRoots { reason }) => {
                eprintln!("skipped: no system CA certificates here ({reason})")
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn relative_paths_are_taken_from_the_configuration_folder() {
        let mut c = TlsConfig {
            ca_file: Some("certs/ca.pem".into()),
            client_cert_file: Some("/etc/gsinfer/client.pem".into()),
            client_key_file: Some("client.key".into()),
            server_name: None,
        };
        c.resolve_paths(Path::new("/etc/gsinfer"));
        assert_eq!(c.ca_file.unwrap(), Path::new("/etc/gsinfer/certs/ca.pem"));
        assert_eq!(
            c.client_cert_file.unwrap(),
            Path::new("/etc/gsinfer/client.pem")
        );
        assert_eq!(
            c.client_key_file.unwrap(),
            Path::new("/etc/gsinfer/client.key")
        );
    }
}
