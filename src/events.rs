//! What the stages say about themselves: typed events, emitted through one
//! [`EventSink`], so that no stage (ingest, batch, engine, publish) knows
//! the status room. The status board is the sink the service wires in
//! (`status::board`): it logs each event with its stable code and bumps the
//! counters and gauges the event stands for; tests can pass any other sink.
//!
//! Logging ([`log_event`]) gives every line the structured fields
//! `EVENT` (the stable code, e.g. `broker_lost`), and `MODEL` or `SOURCE`
//! where the event has one: under systemd they are journal fields
//! (`journalctl -u gsinfer EVENT=batch_failed MODEL=lstm_A-1`), on stderr
//! they are in the text.

use std::fmt;
use std::time::Duration;

/// One thing a stage reports. Borrowed fields live as long as the call.
#[derive(Clone, Copy)]
pub enum StageEvent<'a> {
    /// The MQTT client has a session with the broker.
    BrokerConnected {
        /// Whether the broker kept this client's session (MQTT CONNACK).
        session_present: bool,
    },
    /// The connection to the broker was lost; the client reconnects.
    BrokerLost {
        /// Why.
        error: &'a dyn fmt::Display,
    },
    /// A connection attempt failed while none was up. `report` is set for
    /// the attempts worth a line (the first, then one a minute), the rest
    /// are logged at debug level.
    BrokerUnreachable {
        /// Failed attempts since the last connection.
        attempts: u32,
        /// Why the last one failed.
        error: &'a dyn fmt::Display,
        /// The longest wait between attempts.
        backoff_max: Duration,
        /// Whether this attempt gets a warning line.
        report: bool,
    },
    /// The connection was closed at stop, after the last results went out.
    BrokerClosed,
    /// An MQTT message was dropped: the pipeline task's queue was full
    /// (the ingest queue's full-policy), so it was acknowledged unprocessed.
    IngestOverflow,
    /// The MQTT client refused a result or event for publishing.
    PublishFailed {
        /// The client's error.
        error: &'a dyn fmt::Display,
    },
    /// A batch ran on `model`'s engine.
    BatchRan {
        /// Model name.
        model: &'a str,
        /// The batch size the engine ran (padded bucket or exact size).
        bucket: usize,
        /// The engine's time for it.
        infer: Duration,
        /// The dispatch size the batcher learned from it.
        dispatch_size: usize,
    },
    /// A batch failed on `model`'s engine; its windows and request items
    /// are dropped (`engine_error`).
    BatchFailed {
        /// Model name.
        model: &'a str,
        /// Items in the batch.
        items: usize,
        /// The engine's error.
        error: &'a dyn fmt::Display,
    },
    /// An item waited `waited` in `model`'s batch queue before its batch ran.
    QueueWaited {
        /// Model name.
        model: &'a str,
        /// `telemetry`, `http` or `grpc`.
        source: &'a str,
        /// Time from queueing to dispatch.
        waited: Duration,
    },
    /// Items left in `model`'s batch queue as a batch is taken.
    QueueDepth {
        /// Model name.
        model: &'a str,
        /// Items queued.
        depth: usize,
    },
}

impl StageEvent<'_> {
    /// The event's stable code: the `EVENT` journal field, never reworded.
    pub fn code(&self) -> &'static str {
        match self {
            StageEvent::BrokerConnected { .. } => "broker_connected",
            StageEvent::BrokerLost { .. } => "broker_lost",
            StageEvent::BrokerUnreachable { .. } => "broker_unreachable",
            StageEvent::BrokerClosed => "broker_closed",
            StageEvent::IngestOverflow => "ingest_overflow",
            StageEvent::PublishFailed { .. } => "publish_failed",
            StageEvent::BatchRan { .. } => "batch_ran",
            StageEvent::BatchFailed { .. } => "batch_failed",
            StageEvent::QueueWaited { .. } => "queue_waited",
            StageEvent::QueueDepth { .. } => "queue_depth",
        }
    }
}

impl fmt::Debug for StageEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Where stages send their events. Implementations must be cheap and must
/// not block: stages call it on their hot paths (the engine thread once per
/// batch and item, the MQTT event loop per dropped message).
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Takes one event.
    fn emit(&self, event: StageEvent<'_>);
}

/// Writes the log line an event stands for, if any, with the `EVENT`
/// field and `MODEL` or `SOURCE` where it has them. Metrics-only events
/// (a batch that ran, queue times and depths, a dropped MQTT message,
/// counted instead) write nothing.
pub fn log_event(event: &StageEvent<'_>) {
    let code = event.code();
    match *event {
        StageEvent::BrokerConnected { session_present } => {
            log::info!(target: "gsinfer::mqtt", event = code, source = "mqtt"; "connected to the broker (session present: {session_present})")
        }
        StageEvent::BrokerLost { error } => {
            log::warn!(target: "gsinfer::mqtt", event = code, source = "mqtt"; "lost the broker connection: {error}; reconnecting")
        }
        StageEvent::BrokerUnreachable {
            attempts,
            error,
            backoff_max,
            report,
        } => {
            if report {
                log::warn!(target: "gsinfer::mqtt", event = code, source = "mqtt"; "cannot connect to the broker ({attempts} attempt(s) so far): {error}; retrying with backoff up to {backoff_max:?}")
            } else {
                log::debug!(target: "gsinfer::mqtt", event = code, source = "mqtt"; "cannot connect to the broker: {error}")
            }
        }
        StageEvent::BrokerClosed => {
            log::info!(target: "gsinfer::mqtt", event = code, source = "mqtt"; "disconnected from the broker")
        }
        StageEvent::PublishFailed { error } => {
            log::warn!(target: "gsinfer::publish", event = code; "cannot publish: {error}")
        }
        StageEvent::BatchFailed {
            model,
            items,
            error,
        } => {
            log::error!(target: "gsinfer::engine", event = code, model = model; "model {model}: batch of {items} failed: {error}")
        }
        StageEvent::IngestOverflow
        | StageEvent::BatchRan { .. }
        | StageEvent::QueueWaited { .. }
        | StageEvent::QueueDepth { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_own_stable_code() {
        let e = "x";
        let all = [
            StageEvent::BrokerConnected {
                session_present: true,
            },
            StageEvent::BrokerLost { error: &e },
            StageEvent::BrokerUnreachable {
                attempts: 1,
                error: &e,
                backoff_max: Duration::from_secs(1),
                report: true,
            },
            StageEvent::BrokerClosed,
            StageEvent::IngestOverflow,
            StageEvent::PublishFailed { error: &e },
            StageEvent::BatchRan {
                model: "m",
                bucket: 1,
                infer: Duration::ZERO,
                dispatch_size: 1,
            },
            StageEvent::BatchFailed {
                model: "m",
                items: 1,
                error: &e,
            },
            StageEvent::QueueWaited {
                model: "m",
                source: "telemetry",
                waited: Duration::ZERO,
            },
            StageEvent::QueueDepth {
                model: "m",
                depth: 0,
            },
        ];
        let mut codes: Vec<&str> = all.iter().map(StageEvent::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            log_event(e);
        }
    }
}
