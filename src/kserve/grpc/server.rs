//! The gRPC server: binds `grpc.listen` before anything else starts (a
//! taken address fails start-up, as `status.listen` does), then serves
//! [`KserveGrpc`] on one tokio task until [`GrpcServer::stop`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::service::KserveGrpc;
use super::GrpcConfig;
use crate::http::limits::read_token;
use crate::kserve::ServedModels;
use crate::secrets::SecretFileError;
use crate::shutdown::Stop;
use crate::status::{StatusBoard, StatusConfig};

/// Longest [`GrpcServer::stop`] waits for calls in flight to finish and
/// clients to go, before it drops their connections.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors starting the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address cannot be bound.
    #[error("cannot listen on {listen} for the KServe gRPC API: {reason}; set grpc.listen to a free address, or \"\" to turn gRPC off")]
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

/// The running gRPC server, or nothing when `grpc.listen` is empty.
#[derive(Debug)]
pub struct GrpcServer {
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    stop: Stop,
    task: JoinHandle<()>,
}

impl GrpcServer {
    /// Binds `config.listen` and serves the KServe v2 gRPC API over
    /// `models` on the current tokio runtime, with the HTTP API's token
    /// (`status.token_file`) and inference timeout
    /// (`status.infer_timeout_ms`). Nothing when `config.listen` is empty.
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound or the token file
    /// cannot be used.
    pub fn start(
        config: &GrpcConfig,
        status: &StatusConfig,
        board: Arc<StatusBoard>,
        models: Arc<ServedModels>,
    ) -> Result<Self, StartError> {
        if !config.enabled() {
            log::info!(target: "gsinfer", "KServe gRPC off (grpc.listen is empty)");
            return Ok(Self { running: None });
        }
        let token = status.token_file.as_deref().map(read_token).transpose()?;
        let bind_error = |e: std::io::Error| StartError::Bind {
            listen: config.listen.clone(),
            reason: e.to_string(),
        };
        let listener = std::net::TcpListener::bind(&config.listen).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = GrpcInferenceServiceServer::new(KserveGrpc::new(
            board,
            models,
            token,
            Duration::from_millis(status.infer_timeout_ms),
            config.max_concurrent_infers,
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let stop = Stop::default();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, incoming, async move { signal.wait().await })
                .await;
            if let Err(e) = served {
                log::error!(target: "gsinfer::grpc", "the KServe gRPC server stopped: {e}");
            }
        });
        log::info!(target: "gsinfer", "KServe gRPC on {addr}");
        Ok(Self {
            running: Some(Running { addr, stop, task }),
        })
    }

    /// The bound address (useful with port 0); `None` when gRPC is off.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|r| r.addr)
    }

    /// Stops taking connections, lets calls in flight finish for up to
    /// 5 s, then drops what is left.
    pub async fn stop(self) {
        let Some(Running { stop, mut task, .. }) = self.running else {
            return;
        };
        stop.trigger();
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            log::warn!(target: "gsinfer::grpc", "gRPC calls still in flight after {STOP_TIMEOUT:?}; dropping them");
            task.abort();
        }
    }
}
