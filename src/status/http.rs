//! The HTTP endpoints, on tiny_http threads of their own: `/` (a small
//! self-refreshing page), `/api/status` (JSON), `/metrics` (Prometheus
//! text), `/healthz` and `/readyz`.

use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Response, Server};

use super::StatusBoard;

const PAGE: &str = include_str!("page.html");

/// A running status server; stops on [`StatusServer::stop`].
pub struct StatusServer {
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
}

/// Errors starting the status server.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen} for the status server: {reason}; set status.listen to a free address")]
pub struct BindError {
    /// The address asked for.
    pub listen: String,
    /// The OS error.
    pub reason: String,
}

impl std::fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusServer")
            .field("addr", &self.addr())
            .finish()
    }
}

impl StatusServer {
    /// Binds `listen` and serves `board` from `threads` worker threads.
    ///
    /// # Errors
    /// [`BindError`] when the address cannot be bound.
    pub fn start(listen: &str, board: Arc<StatusBoard>, threads: usize) -> Result<Self, BindError> {
        let server = Arc::new(Server::http(listen).map_err(|e| BindError {
            listen: listen.to_string(),
            reason: e.to_string(),
        })?);
        let threads = (0..threads.max(1))
            .map(|i| {
                let server = Arc::clone(&server);
                let board = Arc::clone(&board);
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        for request in server.incoming_requests() {
                            let response = route(request.method(), request.url(), &board);
                            if let Err(e) = request.respond(response) {
                                log::debug!("http: cannot send response: {e}");
                            }
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
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header")
}

fn text(status: u16, content_type: &str, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

fn route(method: &Method, url: &str, board: &StatusBoard) -> Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or("");
    if *method != Method::Get && *method != Method::Head {
        return text(
            405,
            "text/plain; charset=utf-8",
            "method not allowed: use GET\n".into(),
        );
    }
    match path {
        "/" => text(200, "text/html; charset=utf-8", PAGE.to_string()),
        "/healthz" => text(200, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" if board.is_ready() => text(200, "text/plain; charset=utf-8", "ready\n".into()),
        "/readyz" => text(
            503,
            "text/plain; charset=utf-8",
            "not ready: engines loading or broker not connected\n".into(),
        ),
        "/api/status" => text(200, "application/json", board.snapshot().to_string()),
        "/metrics" => text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            board.metrics.render(),
        ),
        _ => text(
            404,
            "text/plain; charset=utf-8",
            format!("not found: {path}\n"),
        ),
    }
}
