//! Results out over MQTT: per-channel scores (optional, rate-limited),
//! anomaly events (QoS 1), and the retained service status.
//!
//! Payload schemas (README.md, "MQTT payloads"):
//! - `<prefix>/<model>/<channel>/score`: `{"type":"score","model","channel",
//!   "index","t","error","score","threshold","anomalous"}`
//! - `<prefix>/events`: `{"type":"event","event":"anomaly_start"|"anomaly_end",
//!   "model","channel","start","end","start_t","end_t","max_score","threshold"}`
//! - `<prefix>/status` (retained): `{"state":"online"|"offline",...}`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::AsyncClient;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::events::{EventSink, StageEvent};
use crate::ingest::mqtt::{qos, Outbox};
use crate::score::{AnomalyEvent, Score};
use crate::watchdog::Stage;

/// Result topics (`[publish]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// First level of every result topic.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Publish every score on `<prefix>/<model>/<channel>/score`.
    #[serde(default = "default_true")]
    pub scores: bool,
    /// QoS of score messages.
    #[serde(default)]
    pub score_qos: u8,
    /// Most scores per second per channel; 0 publishes all of them.
    #[serde(default)]
    pub score_max_rate_hz: f64,
    /// QoS of event messages.
    #[serde(default = "default_events_qos")]
    pub events_qos: u8,
}

fn default_prefix() -> String {
    "gsinfer".into()
}
fn default_true() -> bool {
    true
}
fn default_events_qos() -> u8 {
    1
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            topic_prefix: default_prefix(),
            scores: true,
            score_qos: 0,
            score_max_rate_hz: 0.0,
            events_qos: default_events_qos(),
        }
    }
}

impl PublishConfig {
    /// The retained status topic.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.topic_prefix)
    }

    /// The events topic.
    pub fn events_topic(&self) -> String {
        format!("{}/events", self.topic_prefix)
    }

    /// The score topic of one channel.
    pub fn score_topic(&self, model: &str, channel: &str) -> String {
        format!("{}/{model}/{channel}/score", self.topic_prefix)
    }
}

/// The JSON of one score (the score topic's payload, and `gsinfer eval --json`).
pub fn score_json(model: &str, channel: &str, s: &Score) -> Value {
    json!({
        "type": "score", "model": model, "channel": channel, "index": s.index, "t": s.t_ns,
        "error": s.error, "score": s.score, "threshold": s.threshold, "anomalous": s.anomalous,
    })
}

/// An anomaly's stable id, the same on its `anomaly_start` and its
/// `anomaly_end` and across restarts (the channel state, time stamps
/// included, is restored): `<model>/<channel>/<start_t>`, `start_t` the
/// first anomalous sample's time stamp in ns since the Unix epoch. A
/// consumer that sees an id twice (redelivered after a crash) keeps one.
pub fn event_id(model: &str, channel: &str, e: &AnomalyEvent) -> String {
    format!("{model}/{channel}/{}", e.start_t_ns)
}

/// The JSON of one anomaly event (the events topic's payload, and `gsinfer eval --json`).
pub fn event_json(model: &str, channel: &str, e: &AnomalyEvent) -> Value {
    let mut v = json!({
        "type": "event", "event": e.event.as_str(), "id": event_id(model, channel, e),
        "model": model, "channel": channel,
        "start": e.start, "end": e.end, "start_t": e.start_t_ns, "end_t": e.end_t_ns,
        "max_score": e.max_score, "threshold": e.threshold,
    });
    if let Some(reason) = e.closed {
        v["closed"] = reason.into();
    }
    v
}

/// An anomaly event as the events topic carries it: a model's on one
/// channel, or an ensemble's with the members that voted in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvent {
    /// The model, or the ensemble's name.
    pub model: Arc<str>,
    /// The channel.
    pub channel: Arc<str>,
    /// The event.
    pub event: AnomalyEvent,
    /// An ensemble's member models on the channel; `None` for a model's own event.
    pub members: Option<Vec<String>>,
}

impl ModelEvent {
    /// The payload: [`event_json`], with `members` for an ensemble's event.
    pub fn to_json(&self) -> Value {
        let mut value = event_json(&self.model, &self.channel, &self.event);
        if let Some(members) = &self.members {
            value["members"] = members.as_slice().into();
        }
        value
    }
}

/// One message for the publisher task.
#[derive(Debug)]
pub enum Outgoing {
    /// A channel's score.
    Score {
        /// Model name.
        model: Arc<str>,
        /// Channel name.
        channel: Arc<str>,
        /// The score.
        score: Score,
    },
    /// An anomaly event, rendered here, once, as it is published.
    Event(ModelEvent),
    /// A checkpoint's mark: answered, once everything queued before it is
    /// handed to the MQTT client, with the [`Outbox::handed`] count that
    /// covers it (wait for it with [`Outbox::written`]).
    Mark(oneshot::Sender<u64>),
}

/// Publishes everything received on `rx` until it closes; scores are
/// rate-limited per channel, events are never dropped here; marks are
/// answered in queue order. Each message handed to the MQTT client is
/// counted on `outbox` and is one unit of progress on `stage`.
pub async fn run_publisher(
    client: AsyncClient,
    outbox: Arc<Outbox>,
    mut rx: mpsc::Receiver<Outgoing>,
    config: PublishConfig,
    events: Arc<dyn EventSink>,
    stage: Stage,
) {
    let min_gap = (config.score_max_rate_hz > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / config.score_max_rate_hz));
    let mut last: HashMap<(Arc<str>, Arc<str>), Instant> = HashMap::new();
    let events_topic = config.events_topic();
    while let Some(msg) = rx.recv().await {
        let _busy = stage.begin();
        let (topic, q, payload) = match msg {
            Outgoing::Score {
                model,
                channel,
                score,
            } => {
                if !config.scores {
                    continue;
                }
                if let Some(gap) = min_gap {
                    let now = Instant::now();
                    let key = (model.clone(), channel.clone());
                    if last.get(&key).is_some_and(|t| now.duration_since(*t) < gap) {
                        continue;
                    }
                    last.insert(key, now);
                }
                let payload = score_json(&model, &channel, &score).to_string();
                (
                    config.score_topic(&model, &channel),
                    qos(config.score_qos),
                    payload,
                )
            }
            Outgoing::Event(event) => (
                events_topic.clone(),
                qos(config.events_qos),
                event.to_json().to_string(),
            ),
            Outgoing::Mark(reply) => {
                let _ = reply.send(outbox.handed());
                continue;
            }
        };
        let sent = outbox.publish(&client, topic, q, false, payload.into_bytes());
        if let Err(e) = sent.await {
            events.emit(StageEvent::PublishFailed { error: &e });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::score::EventKind;

    #[test]
    fn event_json_carries_the_documented_keys() {
        let e = AnomalyEvent {
            event: EventKind::AnomalyEnd,
            start: 5,
            start_t_ns: 50,
            end: Some(9),
            end_t_ns: Some(90),
            max_score: 1.5,
            threshold: 0.5,
            closed: None,
        };
        let v = event_json("m", "A-1", &e);
        assert_eq!(v["event"], "anomaly_end");
        assert_eq!(v["channel"], "A-1");
        assert_eq!(v["start"], 5);
        assert_eq!(v["end"], 9);
        assert!(v.get("members").is_none());
        let fused = ModelEvent {
            model: Arc::from("majority"),
            channel: Arc::from("A-1"),
            event: e,
            members: Some(vec!["lstm".into(), "vae".into()]),
        };
        let v = fused.to_json();
        assert_eq!(v["model"], "majority");
        assert_eq!(v["members"], serde_json::json!(["lstm", "vae"]));
    }
}
