//! The KServe v2 API over gRPC, as Triton Inference Server serves it
//! (`inference.GRPCInferenceService`, `proto/grpc_service.proto`), so
//! `tritonclient.grpc` works against gsinfer unchanged: on its own address
//! (`grpc.listen`, Triton's port 8001 on loopback by default), beside the
//! HTTP API of the status server, with the same models, batchers, token
//! and errors ([`crate::kserve::protocol`]).
//!
//! - [`config`], `[grpc]`;
//! - [`proto`], the messages and server trait generated from the proto files;
//! - [`convert`], proto messages ↔ gsinfer's tensors, metadata, statistics;
//! - [`service`], the methods;
//! - [`server`], binding, serving, stopping.
//!
//! Served: ServerLive, ServerReady, ServerMetadata, ModelReady,
//! ModelMetadata, ModelConfig, ModelInfer (typed contents and raw
//! contents), ModelStatistics, RepositoryIndex. The other methods of the
//! service (streaming inference, model load/unload, shared memory, trace
//! and log settings) answer `UNIMPLEMENTED`.
//!
//! References: KServe "Open Inference Protocol (V2)", gRPC; Triton's
//! `grpc_service.proto` (triton-inference-server/common) and
//! `docs/protocol/extension_*.md`.

pub mod config;
pub mod convert;
pub mod proto;
pub mod server;
pub mod service;

pub use config::GrpcConfig;
pub use server::{GrpcServer, StartError};
pub use service::{needs_token, KserveGrpc};
