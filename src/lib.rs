//! gsinfer: an inference appliance for satellite ground stations.
//!
//! Telemetry arrives over MQTT, is cut into per-channel windows
//! ([`window`]), micro-batched under a fixed latency budget ([`batch`]), run
//! on an engine ([`engine`]), scored ([`score`]) and published ([`publish`]),
//! while [`status`] shows what is happening; [`kserve`] takes inference
//! requests from KServe v2 clients into the same batchers. [`service`] wires the stages;
//! [`eval`] runs the same [`pipeline`] offline; [`cli::replay`] feeds recorded
//! telemetry to a running service.
#![deny(missing_docs)]

pub mod background;
pub mod batch;
pub mod cli;
pub mod config;
pub mod engine;
pub mod eval;
pub mod events;
pub mod http;
pub mod infer;
pub mod ingest;
pub mod journal;
pub mod kserve;
pub mod logging;
pub mod pipeline;
pub mod publish;
pub mod report;
pub mod repository;
pub mod score;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod watchdog;
pub mod window;

// jemalloc is the global allocator of every binary built on this library
// (feature `jemalloc`, on by default): status::process says why, and reads
// its heap figures.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
