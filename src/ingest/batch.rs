//! What every source hands to the router: a [`SampleBatch`].
//!
//! MQTT messages and serial reads arrive differently (one payload on a
//! topic, a stream of frames on a link) but leave their source the same
//! way: decoded and checked once, tagged with their channel, with the
//! decode rejects beside them, bound for the pipelines that take them. The
//! router then has one path for every sample, whatever brought it.

use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::decode::{RawSample, Reject};

/// Nanoseconds since the Unix epoch now: the receive time sources stamp on
/// what they read.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Where a batch came from, for logs and the per-source counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An MQTT message on this topic.
    Mqtt {
        /// The topic it was published on.
        topic: Arc<str>,
    },
    /// A read from the serial link of this name ([`crate::ingest::serial::SerialConfig::label`]).
    Serial {
        /// The link's name.
        link: Arc<str>,
    },
}

impl fmt::Display for Origin {
    /// The topic, or `serial link <name>`: the `<topic>` of the log line
    /// `rejected input on <topic>: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Mqtt { topic } => f.write_str(topic),
            Origin::Serial { link } => write!(f, "serial link {link}"),
        }
    }
}

/// One decoding of a source's input and the pipelines it is for.
///
/// An input is decoded once per distinct payload format and
/// [`DecodeLimits`](super::DecodeLimits) among the pipelines it is for:
/// once, unless pipelines on the same topic differ in format or features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoding {
    /// Indices of the pipelines (in config order) that take these samples.
    pub pipelines: Vec<usize>,
    /// Samples with their channel, in input order.
    pub samples: Vec<(Arc<str>, RawSample)>,
    /// What yielded no sample, by reason.
    pub rejects: Vec<Reject>,
}

/// Telemetry from one source, decoded, on its way to the router.
#[derive(Debug)]
pub struct SampleBatch {
    /// The topic or serial link it came from.
    pub origin: Origin,
    /// When it was received (the latency metric starts here).
    pub received: Instant,
    /// The same moment in ns since the Unix epoch: the time stamp of a
    /// sample that carries none.
    pub received_ns: i64,
    /// Size of the input in bytes (the MQTT payload; a serial link counts
    /// its own bytes).
    pub bytes: usize,
    /// The input decoded for its pipelines; empty when it is for none (a
    /// topic no pipeline's filters match).
    pub decoded: Vec<Decoding>,
    /// MQTT QoS 1 and 2: the packet header to acknowledge once the router
    /// has taken the samples ([`crate::ingest::mqtt::acknowledge`]); `None`
    /// for QoS 0 and serial links.
    pub ack: Option<rumqttc::Publish>,
}
