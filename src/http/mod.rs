//! The HTTP server, on tiny_http worker threads of its own: the status page
//! (`/`, [`crate::status::page`]), `/api/status` (JSON), `/metrics` (Prometheus),
//! `/healthz`, `/readyz`, and the KServe v2 endpoints under `/v2`
//! ([`crate::kserve`]).
//!
//! Each request is read into an [`HttpRequest`] within the limits of
//! [`limits`] (body size, socket timeouts, bearer token where
//! required), then answered by a pure routing function, so the routes are
//! tested without sockets.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Header, Request, Response, Server};

pub mod limits;

use self::limits::{bearer_matches, read_body, read_token, BodyError, SocketTimeouts};
use crate::kserve::{self, ServedModels};
use crate::secrets::{Secret, SecretFileError};
use crate::status::metrics::CodeLabel;
use crate::status::{page, StatusBoard, StatusConfig};

/// One request, read in full.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for GET).
    pub body: Vec<u8>,
    /// When the request was taken up.
    pub received: Instant,
}

impl HttpRequest {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: String,
    /// Other headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// A body of `content_type`.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: content_type.to_string(),
            headers: Vec::new(),
            body,
        }
    }

    /// A plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::bytes(
            status,
            "text/plain; charset=utf-8",
            body.into().into_bytes(),
        )
    }

    /// A JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::bytes(status, "application/json", value.to_string().into_bytes())
    }

    /// No body.
    pub fn empty(status: u16) -> Self {
        Self::bytes(status, "text/plain; charset=utf-8", Vec::new())
    }

    /// `{"error": message}`, as KServe clients expect.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running status server; stops on [`StatusServer::stop`].
pub struct StatusServer {
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
}

/// Errors starting the status server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address cannot be bound.
    #[error("cannot listen on {listen} for the status server: {reason}; set status.listen to a free address")]
    Bind {
        /// The address asked for.
        listen: String,
        /// The OS error.
        reason: String,
    },
    /// The token file is unusable.
    #[error(transparent)]
    Token(#[from] SecretFileError),
}

impl std::fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusServer")
            .field("addr", &self.addr())
            .finish()
    }
}

/// What every worker shares.
#[derive(Debug)]
struct Shared {
    config: StatusConfig,
    /// The bearer token; its `Debug` is redacted.
    token: Option<Secret>,
    board: Arc<StatusBoard>,
    models: Arc<ServedModels>,
    timeouts: SocketTimeouts,
    port: u16,
}

impl StatusServer {
    /// Binds `config.listen` and serves `board` and `models` from
    /// `config.threads` worker threads.
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound or the token file
    /// cannot be used.
    pub fn start(
        config: &StatusConfig,
        board: Arc<StatusBoard>,
        models: Arc<ServedModels>,
    ) -> Result<Self, StartError> {
        let token = config.token_file.as_deref().map(read_token).transpose()?;
        let server = Arc::new(Server::http(&config.listen).map_err(|e| StartError::Bind {
            listen: config.listen.clone(),
            reason: e.to_string(),
        })?);
        let port = server.server_addr().to_ip().map_or(0, |a| a.port());
        let shared = Arc::new(Shared {
            config: config.clone(),
            token,
            board,
            models,
            timeouts: SocketTimeouts::default(),
            port,
        });
        let threads = (0..config.threads.max(1))
            .map(|i| {
                let server = Arc::clone(&server);
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        for request in server.incoming_requests() {
                            serve(request, &shared);
                        }
                    })
                    .expect("spawn http thread")
            })
            .collect();
        Ok(Self { server, threads })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.server.server_addr().to_ip()
    }

    /// Stops the server and joins its threads.
    pub fn stop(mut self) {
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// Reads, answers and counts one request.
fn serve(mut request: Request, shared: &Shared) {
    let received = Instant::now();
    let timeout = Duration::from_millis(shared.config.read_timeout_ms);
    if let Some(peer) = request.remote_addr().copied() {
        shared.timeouts.apply(peer, shared.port, timeout);
    }
    let method = request.method().as_str().to_uppercase();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_string(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let mut req = HttpRequest {
        method,
        path,
        headers,
        body: Vec::new(),
        received,
    };
    let reply = if req.method == "POST" || request.body_length().is_some_and(|n| n > 0) {
        let declared = request.body_length();
        match read_body(request.as_reader(), declared, shared.config.max_body_bytes) {
            Ok(body) => {
                req.body = body;
                None
            }
            Err(BodyError::TooLarge) => Some(HttpReply::error(
                413,
                format!(
                    "the request body is larger than status.max_body_bytes ({} bytes); send less, or raise the limit",
                    shared.config.max_body_bytes
                ),
            )),
            Err(BodyError::TimedOut) => Some(HttpReply::error(
                408,
                format!(
                    "the request body did not arrive within status.read_timeout_ms ({} ms)",
                    shared.config.read_timeout_ms
                ),
            )),
            Err(BodyError::Io(e)) => Some(HttpReply::error(400, format!("cannot read the request body: {e}"))),
        }
    } else {
        None
    };
    let reply = reply.unwrap_or_else(|| route(&req, shared));
    shared
        .board
        .metrics
        .http_responses
        .get_or_create(&CodeLabel {
            code: reply.status.to_string(),
        })
        .inc();
    let mut response = Response::from_data(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", &reply.content_type).expect("content type"))
        .with_header(header("Cache-Control", "no-store").expect("static header"));
    for (k, v) in &reply.headers {
        if let Some(h) = header(k, v) {
            response = response.with_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        log::debug!(target: "gsinfer::http", "cannot send response: {e}");
    }
}

/// Answers a request that was read within the limits.
fn route(req: &HttpRequest, shared: &Shared) -> HttpReply {
    if let Some(token) = &shared.token {
        if kserve::needs_token(&req.path)
            && !bearer_matches(req.header("Authorization"), token.expose())
        {
            return HttpReply::error(
                401,
                "this endpoint needs `Authorization: Bearer <token>` with the token of status.token_file",
            )
            .with_header("WWW-Authenticate", "Bearer");
        }
    }
    if req.path == "/v2" || req.path.starts_with("/v2/") {
        let ctx = kserve::Context {
            board: &shared.board,
            models: &shared.models,
            infer_timeout: Duration::from_millis(shared.config.infer_timeout_ms),
        };
        return kserve::route(req, &ctx);
    }
    if req.method != "GET" && req.method != "HEAD" {
        return HttpReply::text(405, "method not allowed: use GET\n").with_header("Allow", "GET");
    }
    let board = &shared.board;
    match req.path.as_str() {
        "/healthz" => HttpReply::text(200, "ok\n"),
        "/readyz" if board.is_ready() => HttpReply::text(200, "ready\n"),
        "/readyz" => HttpReply::text(503, "not ready: engines loading or broker not connected\n"),
        "/api/status" => HttpReply::json(200, &board.snapshot()),
        "/metrics" => {
            let (content_type, text) = board.metrics.render(req.header("Accept").unwrap_or(""));
            HttpReply::bytes(200, content_type, text.into_bytes())
        }
        path => match page::asset(path) {
            Some((content_type, body)) => {
                HttpReply::bytes(200, content_type, body.as_bytes().to_vec())
            }
            None => HttpReply::text(404, format!("not found: {path}\n")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ModelState;
    use std::io::{Read, Write};

    fn request(addr: std::net::SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}Content-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        (
            code,
            buf.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    }

    fn config() -> StatusConfig {
        StatusConfig {
            listen: "127.0.0.1:0".into(),
            threads: 2,
            ..StatusConfig::default()
        }
    }

    #[test]
    fn endpoints_answer_and_readiness_follows_the_board() {
        let board = StatusBoard::new(StatusConfig::default());
        let server = StatusServer::start(&config(), Arc::clone(&board), Arc::default()).unwrap();
        let addr = server.addr().unwrap();
        assert_eq!(request(addr, "GET", "/healthz", "").0, 200);
        assert_eq!(request(addr, "GET", "/readyz", "").0, 503);
        assert_eq!(request(addr, "GET", "/v2/health/ready", "").0, 400);
        board.set_model("m", "tract", ModelState::Ready, 1, 1000, &[1, 2]);
        board.set_connected(true);
        assert_eq!(request(addr, "GET", "/readyz", "").0, 200);
        assert_eq!(request(addr, "GET", "/v2/health/ready", "").0, 200);
        let (code, body) = request(addr, "GET", "/api/status", "");
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["models"][0]["state"], "ready");
        assert_eq!(status["ready"], true);
        let (code, metrics) = request(addr, "GET", "/metrics", "");
        assert_eq!(code, 200);
        assert!(metrics.contains("gsinfer_ready 1"), "{metrics}");
        let (code, page) = request(addr, "GET", "/", "");
        assert_eq!(code, 200);
        assert!(page.contains("app.js"));
        let (code, js) = request(addr, "GET", "/app.js", "");
        assert_eq!(code, 200);
        assert!(js.contains("/api/status"));
        assert_eq!(request(addr, "GET", "/nope", "").0, 404);
        assert_eq!(request(addr, "POST", "/api/status", "").0, 405);
        let (code, body) = request(addr, "GET", "/v2/models/nope", "");
        assert_eq!(code, 404);
        assert!(body.contains("\"error\""), "{body}");
        server.stop();
    }

    #[test]
    fn token_guards_inference_and_body_size_is_limited() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = StatusConfig {
            token_file: Some(token),
            max_body_bytes: 64,
            ..config()
        };
        let board = StatusBoard::new(StatusConfig::default());
        let server = StatusServer::start(&config, Arc::clone(&board), Arc::default()).unwrap();
        let addr = server.addr().unwrap();
        let (code, body) = request(addr, "POST", "/v2/repository/index", "");
        assert_eq!(code, 401, "{body}");
        let (code, body) = request(
            addr,
            "POST",
            "/v2/repository/index",
            "Authorization: Bearer t0ken\r\n",
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(body, "[]");
        // A declared body over the limit is refused before it is read.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer t0ken\r\nContent-Length: 100\r\n\r\n{}", "x".repeat(100)).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        assert!(buf.starts_with("HTTP/1.1 413"), "{buf}");
        server.stop();
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let shared = Shared {
            config: config(),
            token: Some(Secret::new("t0ken")),
            board: StatusBoard::new(StatusConfig::default()),
            models: Arc::default(),
            timeouts: SocketTimeouts::default(),
            port: 0,
        };
        let text = format!("{shared:?}");
        assert!(
            !text.contains("t0ken") && text.contains("redacted"),
            "{text}"
        );
    }
}
