//! Files that hold secrets: the broker password (`broker.password_file`),
//! the TLS client key (`broker.tls.client_key_file`) and the HTTP bearer
//! token (`status.token_file`).
//!
//! Secrets never sit in the configuration file, which `check-config`
//! prints and which is usually readable by more people than the service.
//! Each lives in a file of its own that only its owner may read or write:
//! like OpenSSH with its keys, gsinfer refuses a secret file that its group
//! or others can read or write (any of the mode bits `0o077`), and says so
//! in one line naming the key, the path, the mode and the `chmod` that
//! fixes it. What is read is held as a [`Secret`], whose `Debug` and
//! `Display` never show it.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Largest secret file read, in bytes (a 4096-bit RSA key in PEM is about
/// 3.3 KB); a larger one is refused, so a mistaken path (a log, a device)
/// cannot make gsinfer read without end.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Permission bits a secret file must not have: read, write or execute for
/// its group or for others.
const SHARED_BITS: u32 = 0o077;

/// A secret read from a file (a password, a bearer token), never shown by
/// `Debug` or `Display`; [`Secret::expose`] hands it to the one place that
/// needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret file gsinfer refuses; displayed as one line naming the
/// configuration key, the path, what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFileError {
    /// The file cannot be opened or read.
    Unreadable {
        /// Configuration key naming the file, e.g. `broker.password_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// Its group or others may read or write it.
    Shared {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// Not a regular file (a folder, a device, a FIFO).
    NotAFile {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Larger than [`MAX_SECRET_FILE_BYTES`].
    TooLarge {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Holds nothing but white space.
    Empty {
        /// Configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
}

impl SecretFileError {
    /// The configuration key naming the file.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Unreadable { key, .. }
            | Self::Shared { key, .. }
            | Self::NotAFile { key, .. }
            | Self::TooLarge { key, .. }
            | Self::Empty { key, .. } => key,
        }
    }

    /// The path, what is wrong and the fix, without the key (for messages
    /// that name the key already, like configuration errors).
    pub fn detail(&self) -> String {
        match self {
            Self::Unreadable { path, reason, .. } => format!(
                "cannot read {}: {reason}; create it (owned by the user gsinfer runs as, mode 600) or correct the path",
                path.display()
            ),
            Self::Shared { path, mode, .. } => {
                let how = match (mode & 0o044 != 0, mode & 0o022 != 0) {
                    (true, true) => "readable and writable",
                    (true, false) => "readable",
                    (false, true) => "writable",
                    (false, false) => "accessible",
                };
                format!(
                    "{p} is {how} by group/others (mode {mode:04o}); run: chmod 600 {p}",
                    p = path.display()
                )
            }
            Self::NotAFile { path, .. } => format!(
                "{} is not a regular file; point it at a file holding only the secret",
                path.display()
            ),
            Self::TooLarge { path, .. } => format!(
                "{} is larger than {MAX_SECRET_FILE_BYTES} bytes, too large for a secret; point it at the right file",
                path.display()
            ),
            Self::Empty { path, .. } => format!(
                "{} is empty; write the secret into it",
                path.display()
            ),
        }
    }
}

impl fmt::Display for SecretFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key(), self.detail())
    }
}

impl std::error::Error for SecretFileError {}

/// Reads the secret file `path` (named by the configuration key `key`)
/// whole, after checking on the opened file that it is a regular file, at
/// most [`MAX_SECRET_FILE_BYTES`] long, and that neither its group nor
/// others may read or write it.
///
/// # Errors
/// [`SecretFileError`], one line naming `key`, the path and the fix.
pub fn read_private_file(key: &'static str, path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let unreadable = |e: std::io::Error| SecretFileError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // Checked on the open file, so what is checked is what is read;
    // non-blocking, so a FIFO or a terminal at the path cannot hang the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SecretFileError::NotAFile {
            key,
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & SHARED_BITS != 0 {
        return Err(SecretFileError::Shared {
            key,
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            key,
            path: path.to_path_buf(),
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(SecretFileError::Empty {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads a one-line secret (a password, a token) from `path` with the
/// checks of [`read_private_file`]: its first line, without the line end
/// and surrounding white space.
///
/// # Errors
/// [`SecretFileError`]; a file that is not UTF-8 is
/// [`SecretFileError::Unreadable`].
pub fn read_secret_line(key: &'static str, path: &Path) -> Result<Secret, SecretFileError> {
    let bytes = read_private_file(key, path)?;
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason: "it is not UTF-8 text".into(),
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(SecretFileError::Empty {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, text: &[u8], mode: u32) -> PathBuf {
        let p = dir.join("secret");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn shared_files_are_refused_in_one_line_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), b"hunter2\n", 0o644);
        let err = read_secret_line("broker.tls.client_key_file", &p).unwrap_err();
        let line = err.to_string();
        assert_eq!(
            line,
            format!(
                "broker.tls.client_key_file {p} is readable by group/others (mode 0644); run: chmod 600 {p}",
                p = p.display()
            )
        );
        assert!(!line.contains("hunter2"));
        assert_eq!(line.lines().count(), 1);
        for (mode, how) in [
            (0o640, "readable"),
            (0o620, "writable"),
            (0o606, "readable and writable"),
            (0o610, "accessible"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret_line("broker.password_file", &p)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("is {how} by group/others (mode {mode:04o})")),
                "{err}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                read_secret_line("broker.password_file", &p)
                    .unwrap()
                    .expose(),
                "hunter2"
            );
        }
    }

    #[test]
    fn missing_empty_oversized_and_non_files_are_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_secret_line("status.token_file", &dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, SecretFileError::Unreadable { .. }));
        assert!(
            missing.to_string().starts_with("status.token_file ")
                && missing.to_string().contains("No such file"),
            "{missing}"
        );
        let p = file(dir.path(), b" \n\n", 0o600);
        assert!(matches!(
            read_secret_line("status.token_file", &p),
            Err(SecretFileError::Empty { .. })
        ));
        let p = file(dir.path(), &vec![b'a'; 70_000], 0o600);
        assert!(matches!(
            read_private_file("status.token_file", &p),
            Err(SecretFileError::TooLarge { .. })
        ));
        let err = read_private_file("status.token_file", dir.path()).unwrap_err();
        assert!(matches!(err, SecretFileError::NotAFile { .. }), "{err}");
        // A FIFO with no writer: refused at once rather than waited on.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_private_file("status.token_file", &fifo),
            Err(SecretFileError::NotAFile { .. })
        ));
        for e in [missing, err] {
            assert_eq!(e.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn a_secret_is_never_formatted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
