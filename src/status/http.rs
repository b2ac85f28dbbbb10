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
        "/metrics" => {
            let mut body = board.metrics.render();
            super::sources::append_metrics(&mut body, &board.source_metrics());
            text(200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        _ => text(
            404,
            "text/plain; charset=utf-8",
            format!("not found: {path}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ModelState, StatusConfig};
    use std::io::{Read, Write};

    fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
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

    #[test]
    fn endpoints_answer_and_readiness_follows_the_board() {
        let board = StatusBoard::new(StatusConfig::default());
        let server = StatusServer::start("127.0.0.1:0", Arc::clone(&board), 1).unwrap();
        let addr = server.addr().unwrap();
        assert_eq!(request(addr, "GET", "/healthz").0, 200);
        assert_eq!(request(addr, "GET", "/readyz").0, 503);
        board.set_model("m", "tract", ModelState::Ready, 1, 1000, &[1, 2]);
        board.set_connected(true);
        assert_eq!(request(addr, "GET", "/readyz").0, 200);
        let (code, body) = request(addr, "GET", "/api/status");
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["models"][0]["state"], "ready");
        assert_eq!(status["ready"], true);
        let (code, metrics) = request(addr, "GET", "/metrics");
        assert_eq!(code, 200);
        assert!(metrics.contains("gsinfer_ready 1"), "{metrics}");
        let (code, page) = request(addr, "GET", "/");
        assert_eq!(code, 200);
        assert!(page.contains("/api/status"));
        assert_eq!(request(addr, "GET", "/nope").0, 404);
        assert_eq!(request(addr, "POST", "/api/status").0, 405);
        server.stop();
    }
}
