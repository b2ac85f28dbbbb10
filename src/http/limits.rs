//! Limits on what HTTP clients can make the status server do: a bearer
//! token for the endpoints that run or list models, a body size limit, and
//! socket read/write timeouts.
//!
//! tiny_http 0.12 sets no timeouts on the connections it accepts (and a
//! timeout on the listening socket would end its accept loop), so before a
//! worker reads a request body it finds the connection's socket among the
//! process's descriptors by its peer address and sets `SO_RCVTIMEO` and
//! `SO_SNDTIMEO` on it. A stalled client then costs one worker at most
//! `status.read_timeout_ms`, and an idle keep-alive connection is closed
//! (tiny_http answers 408) after as long.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::secrets::{read_secret_line, Secret, SecretFileError};

/// Reads the bearer token from `path` (`status.token_file`): its first
/// line, trimmed. Refuses a file its group or others can read or write, as
/// every secret file (see [`crate::secrets`]).
///
/// # Errors
/// [`SecretFileError`], one line naming the key, the file and the fix.
pub fn read_token(path: &Path) -> Result<Secret, SecretFileError> {
    read_secret_line("status.token_file", path)
}

/// Whether `authorization` (the header's value, if any) carries `token` as
/// a bearer token. Compares in time independent of where they differ.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (*a.get(i).unwrap_or(&0) ^ *b.get(i).unwrap_or(&0)) as usize;
    }
    diff == 0
}

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the limit (413).
    TooLarge,
    /// The client stalled past the read timeout (408).
    TimedOut,
    /// The connection failed (400).
    Io(String),
}

/// Reads a body of at most `limit` bytes; `declared` is its Content-Length,
/// if given, checked before anything is read.
///
/// # Errors
/// [`BodyError`].
pub fn read_body(
    reader: &mut dyn Read,
    declared: Option<usize>,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    match reader.take(limit as u64 + 1).read_to_end(&mut body) {
        Ok(_) if body.len() > limit => Err(BodyError::TooLarge),
        Ok(_) => Ok(body),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Err(BodyError::TimedOut)
        }
        Err(e) => Err(BodyError::Io(e.to_string())),
    }
}

/// Connections whose socket already has its timeouts, by peer address.
#[derive(Debug, Default)]
pub struct SocketTimeouts {
    done: Mutex<HashSet<SocketAddr>>,
}

/// Peer addresses remembered before the set is cleared (a forgotten one
/// only costs another scan).
const REMEMBERED_PEERS: usize = 4096;

impl SocketTimeouts {
    /// Sets read and write `timeout` on the socket of the connection from
    /// `peer` to local port `port`, once per peer address. Returns whether
    /// the socket was found (or had been).
    pub fn apply(&self, peer: SocketAddr, port: u16, timeout: Duration) -> bool {
        {
            let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            if done.contains(&peer) {
                return true;
            }
        }
        let Some(found) = find_socket(peer, port, timeout) else {
            return false;
        };
        if found {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            if done.len() >= REMEMBERED_PEERS {
                done.clear();
            }
            done.insert(peer);
        }
        found
    }
}

/// The socket address an `fd` reports through `query` (`getpeername` or
/// `getsockname`), if `fd` is an internet socket.
fn socket_addr(
    fd: libc::c_int,
    query: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: `query` writes at most `len` bytes into the storage, which is
    // large enough for any socket address; on a descriptor that is not (or
    // no longer) a socket it fails and nothing is read.
    let (_, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            if query(fd, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
    .ok()?;
    addr.as_socket()
}

/// Scans `/proc/self/fd` for the TCP socket from `peer` to local `port`
/// and sets its timeouts. `None` when the scan itself is impossible.
fn find_socket(peer: SocketAddr, port: u16, timeout: Duration) -> Option<bool> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if socket_addr(fd, libc::getpeername) != Some(peer)
            || socket_addr(fd, libc::getsockname).map(|a| a.port()) != Some(port)
        {
            continue;
        }
        // The connection's socket: tiny_http keeps it open while the
        // request being served holds it, which is while we run.
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let ok = [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO].iter().all(|opt| {
            // SAFETY: a valid timeval of the size given, on a live descriptor.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    *opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) == 0
            }
        });
        return Some(ok);
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn token_file_must_be_private_and_non_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_token(&path).unwrap_err().to_string();
            assert!(
                err.starts_with("status.token_file ")
                    && err.contains("by group/others")
                    && err.contains(&format!("run: chmod 600 {}", path.display())),
                "{err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&path).unwrap().expose(), "s3cret");
        assert_eq!(
            format!("{:?}", read_token(&path).unwrap()),
            "Secret(<redacted>)"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token(&path),
            Err(SecretFileError::Empty { .. })
        ));
        assert!(matches!(
            read_token(&dir.path().join("missing")),
            Err(SecretFileError::Unreadable { .. })
        ));
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(!bearer_matches(Some("Bearer abcd"), "abc"));
        assert!(!bearer_matches(Some("Bearer ab"), "abc"));
        assert!(!bearer_matches(Some("Basic abc"), "abc"));
        assert!(!bearer_matches(None, "abc"));
    }

    #[test]
    fn body_limit_is_checked_before_and_while_reading() {
        let mut small: &[u8] = b"hello";
        assert_eq!(read_body(&mut small, Some(5), 5).unwrap(), b"hello");
        let mut big: &[u8] = b"hello!";
        assert_eq!(read_body(&mut big, None, 5), Err(BodyError::TooLarge));
        let mut unread: &[u8] = b"";
        assert_eq!(read_body(&mut unread, Some(6), 5), Err(BodyError::TooLarge));
    }

    #[test]
    fn finds_an_accepted_socket_and_sets_its_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let timeouts = SocketTimeouts::default();
        assert!(timeouts.apply(peer, port, Duration::from_millis(1500)));
        assert_eq!(
            server_side.read_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        client.write_all(b"x").unwrap();
    }
}
