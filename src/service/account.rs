//! Where what the router reports goes: each [`Fact`] bumps its counters on
//! the status board (and, for rejects and non-finite errors, writes its
//! stable log line); each score and event is recorded on the board (an
//! event also logged for the operator), then handed to the publisher. The
//! pipeline path touches the board and the metrics here and nowhere else.

use tokio::sync::mpsc;

use crate::ingest::Origin;
use crate::publish::Outgoing;
use crate::status::board::MQTT_SOURCE;
use crate::status::{Metrics, StatusBoard};

use super::router::{Fact, Routed};

/// Records `routed` on `board`, then hands its messages to the publisher,
/// waiting for room (the publisher queue's full-policy).
pub async fn deliver(routed: Routed, board: &StatusBoard, out: &mpsc::Sender<Outgoing>) {
    record(board, &routed);
    for msg in routed.outgoing {
        if out.send(msg).await.is_err() {
            board.metrics.publish_errors.inc();
        }
    }
}

/// Records `routed`'s facts and messages on `board`.
pub fn record(board: &StatusBoard, routed: &Routed) {
    for fact in &routed.facts {
        record_fact(board, fact);
    }
    for msg in &routed.outgoing {
        record_outgoing(board, msg);
    }
}

fn record_fact(board: &StatusBoard, fact: &Fact) {
    let m = &board.metrics;
    match fact {
        Fact::Rejected {
            origin,
            reject,
            count,
            log,
        } => {
            m.reject(reject.reason.as_str(), *count);
            if let Some(suppressed) = log {
                log::warn!(target: "gsinfer::ingest", "rejected input on {origin}: {reject} ({suppressed} more of this reason suppressed)");
            }
        }
        Fact::Input {
            origin: Origin::Mqtt { .. },
            messages,
            bytes,
            samples,
        } => board.record_input(MQTT_SOURCE, *messages, *bytes, *samples),
        // The link counts its own messages and bytes (status::sources).
        Fact::Input {
            origin: Origin::Serial { link },
            samples,
            ..
        } => board.record_source_samples(link, *samples),
        // Counted by the run that received it.
        Fact::Input {
            origin: Origin::Journal,
            ..
        } => {}
        Fact::Samples {
            model,
            channel,
            count,
        } => board.record_samples(model, channel, *count),
        Fact::Windows { model, count } => Metrics::add(&m.windows, model, *count),
        Fact::Dropped {
            model,
            reason,
            count,
        } => m.dropped(model, *reason, *count),
        Fact::QueueDepth { model, depth } => m.set_queue_depth(model, *depth),
        Fact::Latencies { model, micros } => {
            for us in micros {
                board.record_latency(model, *us);
            }
        }
        Fact::LateForecasts { model, count } => Metrics::add(&m.late_forecasts, model, *count),
        Fact::NonFinite { model, count } => {
            log::warn!(
                target: "gsinfer::service",
                "model {model}: {count} raw errors were NaN or infinite and were left out of scoring (a model output that is not finite)"
            );
            Metrics::add(&m.nonfinite_errors, model, *count);
        }
    }
}

fn record_outgoing(board: &StatusBoard, msg: &Outgoing) {
    match msg {
        Outgoing::Score {
            model,
            channel,
            score,
        } => board.record_score(model, channel, score),
        Outgoing::Event(e) => {
            let (model, channel, event) = (&e.model, &e.channel, &e.event);
            log::warn!(target: "gsinfer::events", "model {model} channel {channel}: {} at sample {} (max score {:.4}, threshold {:.4})",
                event.event.as_str(), event.end.unwrap_or(event.start), event.max_score, event.threshold);
            board.record_event(e);
        }
        Outgoing::Mark(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::DropReason;
    use crate::ingest::{Reject, RejectReason};
    use crate::publish::ModelEvent;
    use crate::score::{AnomalyEvent, EventKind};
    use crate::status::StatusConfig;

    #[test]
    fn facts_and_messages_show_on_the_board() {
        let board = StatusBoard::new(StatusConfig::default());
        let model: Arc<str> = Arc::from("m");
        let channel: Arc<str> = Arc::from("A-1");
        let origin = Origin::Mqtt {
            topic: Arc::from("telemetry/A-1"),
        };
        let event = AnomalyEvent {
            event: EventKind::AnomalyStart,
            start: 3,
            start_t_ns: 30,
            end: None,
            end_t_ns: None,
            max_score: 2.0,
            threshold: 1.0,
            closed: None,
        };
        let routed = Routed {
            facts: vec![
                Fact::Rejected {
                    origin: origin.clone(),
                    reject: Reject::new(RejectReason::ModelUnavailable, "model x failed"),
                    count: 3,
                    log: None,
                },
                Fact::Input {
                    origin,
                    messages: 1,
                    bytes: 10,
                    samples: 2,
                },
                Fact::Samples {
                    model: Arc::clone(&model),
                    channel: Arc::clone(&channel),
                    count: 2,
                },
                Fact::Dropped {
                    model: Arc::clone(&model),
                    reason: DropReason::QueueFull,
                    count: 1,
                },
            ],
            outgoing: vec![Outgoing::Event(ModelEvent {
                model,
                channel,
                event,
                members: None,
            })],
        };
        record(&board, &routed);
        let m = &board.metrics;
        assert_eq!(m.rejected_count("model_unavailable"), 3);
        assert_eq!(m.dropped_count("m"), 1);
        let s = board.snapshot();
        assert_eq!(s["sources"][0]["samples"], 2);
        assert_eq!(s["channels"][0]["samples"], 2);
        assert_eq!(s["events"][0]["event"], "anomaly_start");
        assert_eq!(s["events"][0]["channel"], "A-1");
    }
}
