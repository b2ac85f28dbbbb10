//! Serial links: a device read by `tokio-serial`, frames cut by one of the
//! [`framing`](crate::ingest::framing)s, and each frame decoded as a CCSDS
//! space packet through the [`mission`](crate::ingest::mission) database
//! or as an MQTT payload format. The samples enter the same per-pipeline
//! path as MQTT telemetry.
//!
//! [`config`] is the `[[serial]]` section, [`decoder`] the pure bytes →
//! samples stage, [`source`] the task that owns the device, [`stats`] the
//! link's counters, and [`encode`] the inverse used by `gsinfer replay`.

pub mod config;
pub mod decoder;
pub mod encode;
pub mod source;
pub mod stats;

pub use config::{validate, FlowControl, Parity, SerialConfig, SerialPayload};
pub use decoder::{DecodedBatch, SerialDecoder};
pub use source::{open, SerialError, SerialSource};
pub use stats::SerialStats;
