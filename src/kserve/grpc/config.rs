//! `[grpc]`: where and how the KServe v2 gRPC API is served.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// KServe v2 gRPC server (`[grpc]`). Its bearer token and inference
/// timeout are the HTTP API's (`status.token_file`,
/// `status.infer_timeout_ms`): one KServe API, two transports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address and port to listen on (plain HTTP/2, no TLS); loopback by
    /// default, as `status.listen`. Triton's gRPC port is 8001. `""` turns
    /// the gRPC API off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request or response message, in bytes; a larger request is
    /// refused with `RESOURCE_EXHAUSTED` before it is decoded.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Inference requests waiting for their batch at once; each holds a
    /// blocking thread while it waits, and further requests queue for a
    /// slot (as `status.threads` bounds the HTTP inferences).
    #[serde(default = "default_concurrent")]
    pub max_concurrent_infers: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8001".into()
}

fn default_max_message() -> usize {
    16 << 20
}

fn default_concurrent() -> usize {
    16
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_message_bytes: default_max_message(),
            max_concurrent_infers: default_concurrent(),
        }
    }
}

impl GrpcConfig {
    /// Whether the gRPC API is served (`listen` is not empty).
    pub fn enabled(&self) -> bool {
        !self.listen.trim().is_empty()
    }

    /// Problems serde cannot see, as `(key, message)`; `status_listen` is
    /// the HTTP server's address, which gRPC cannot share.
    pub fn problems(&self, status_listen: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.enabled() {
            match self.listen.parse::<SocketAddr>() {
                Err(_) => problems.push((
                    "grpc.listen".into(),
                    format!(
                        "`{}` is not an address and port; use e.g. \"127.0.0.1:8001\", or \"\" to turn gRPC off",
                        self.listen
                    ),
                )),
                Ok(addr)
                    if addr.port() != 0 && status_listen.parse::<SocketAddr>() == Ok(addr) =>
                {
                    problems.push((
                        "grpc.listen".into(),
                        format!("`{addr}` is status.listen too; give gRPC a port of its own, e.g. 8001"),
                    ));
                }
                Ok(_) => {}
            }
        }
        if self.max_message_bytes == 0 || self.max_concurrent_infers == 0 {
            problems.push((
                "grpc".into(),
                "max_message_bytes and max_concurrent_infers must be positive".into(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_tritons_port_on_loopback() {
        let c = GrpcConfig::default();
        assert_eq!(c.listen, "127.0.0.1:8001");
        assert!(c.enabled());
        assert!(c.problems("127.0.0.1:8080").is_empty());
    }

    #[test]
    fn empty_listen_turns_grpc_off_and_is_valid() {
        let c = GrpcConfig {
            listen: String::new(),
            ..GrpcConfig::default()
        };
        assert!(!c.enabled());
        assert!(c.problems("127.0.0.1:8080").is_empty());
    }

    #[test]
    fn problems_name_the_key_and_the_value() {
        let c = GrpcConfig {
            listen: "localhost".into(),
            max_concurrent_infers: 0,
            ..GrpcConfig::default()
        };
        let p = c.problems("127.0.0.1:8080");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].0, "grpc.listen");
        assert!(p[0].1.contains("`localhost`"), "{p:?}");
        let same = GrpcConfig {
            listen: "127.0.0.1:8080".into(),
            ..GrpcConfig::default()
        };
        let p = same.problems("127.0.0.1:8080");
        assert!(p[0].1.contains("status.listen too"), "{p:?}");
        // Port 0 (tests): both get a free port of their own.
        let zero = GrpcConfig {
            listen: "127.0.0.1:0".into(),
            ..GrpcConfig::default()
        };
        assert!(zero.problems("127.0.0.1:0").is_empty());
    }
}
