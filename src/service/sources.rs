//! Starting and stopping the telemetry sources: the MQTT client with its
//! event loop task (which also carries the results out and the retained
//! status), and one task per serial link. Both hand [`SampleBatch`]es to
//! the pipeline task.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rumqttc::AsyncClient;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ingest::mqtt::{self, EventLoopTask, Outbox, TopicRoute, TopicRoutes};
use crate::ingest::serial::SerialSource;
use crate::ingest::Dispatch;
use crate::shutdown::Stop;
use crate::status::StatusBoard;

/// Requests the MQTT client queues for its event loop (publishes,
/// acknowledgements, subscriptions).
const CLIENT_CAPACITY: usize = 1024;

/// The running sources.
#[derive(Debug)]
pub struct Sources {
    /// The MQTT client: publishes results, acknowledges telemetry.
    pub client: AsyncClient,
    /// How far the client's publishes have got (see [`Outbox`]).
    pub outbox: Arc<Outbox>,
    status_topic: String,
    event_loop: JoinHandle<()>,
    stop_loop: Stop,
    serial: Vec<JoinHandle<()>>,
    stop_serial: Stop,
}

impl Sources {
    /// Connects to the broker (in the background: the event loop task
    /// retries) and opens the serial links; MQTT telemetry goes to `mqtt`,
    /// serial telemetry to `serial`.
    ///
    /// # Errors
    /// The broker options cannot be built (password file, TLS files).
    pub fn start(
        config: &Config,
        board: &Arc<StatusBoard>,
        mqtt: Dispatch,
        serial: Dispatch,
    ) -> Result<Sources> {
        let status_topic = config.publish.status_topic();
        let broker = &config.broker;
        let options = mqtt::options(broker, &broker.client_id, Some(&status_topic))?;
        log::info!(target: "gsinfer::mqtt", "broker {}:{} over {}", broker.host, broker.port,
            broker.tls.as_ref().map_or_else(|| "plain TCP".to_string(), |t| t.describe()));
        let (client, eventloop) = mqtt::client(options, CLIENT_CAPACITY);
        let online = serde_json::json!({
            "state": "online", "version": env!("CARGO_PKG_VERSION"),
            "models": config.pipelines.iter().map(|p| p.model.clone()).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let qos = mqtt::qos(broker.qos);
        let pipelines = &config.pipelines;
        let subscriptions = pipelines
            .iter()
            .flat_map(|p| p.topics.iter().map(|t| (t.clone(), qos)))
            .collect();
        let topics = TopicRoutes::new(
            (pipelines.iter())
                .map(|p| TopicRoute {
                    filters: p.topics.clone(),
                    format: p.format,
                    limits: config.ingest.limits(p.features),
                })
                .collect(),
        );
        let outbox = Arc::new(Outbox::default());
        let stop_loop = Stop::default();
        let event_loop = tokio::spawn(
            EventLoopTask {
                client: client.clone(),
                subscriptions,
                topics,
                inbound: mqtt,
                status: Some((status_topic.clone(), online)),
                backoff: (
                    Duration::from_millis(broker.reconnect_min_ms),
                    Duration::from_millis(broker.reconnect_max_ms),
                ),
                events: Arc::clone(board) as Arc<dyn crate::events::EventSink>,
                outbox: Arc::clone(&outbox),
            }
            .run(eventloop, stop_loop.clone()),
        );
        let stop_serial = Stop::default();
        let mut tasks = Vec::new();
        for link in &config.serial {
            let Some(ix) = link.pipeline_index(pipelines) else {
                continue; // validation rejects this
            };
            let limits = config.ingest.limits(pipelines[ix].features);
            let (source, stats) = SerialSource::new(link, ix, limits, serial.clone());
            board.register_source(&link.label(), "serial", &link.device.display().to_string());
            board.add_source(stats);
            tasks.push(tokio::spawn(source.run(stop_serial.clone())));
        }
        Ok(Sources {
            client,
            outbox,
            status_topic,
            event_loop,
            stop_loop,
            serial: tasks,
            stop_serial,
        })
    }

    /// Stops the serial links and waits for their tasks to end.
    pub async fn stop_serial(&mut self) {
        self.stop_serial.trigger();
        for t in self.serial.drain(..) {
            let _ = t.await;
        }
    }

    /// Sets the retained status to offline, disconnects, and waits up to
    /// `timeout` for the broker to take the last messages before stopping
    /// the event loop.
    pub async fn disconnect(self, board: &StatusBoard, timeout: Duration) {
        let offline = mqtt::offline_payload();
        let (topic, qos) = (self.status_topic, rumqttc::QoS::AtLeastOnce);
        let published = self.outbox.publish(&self.client, topic, qos, true, offline);
        let _ = published.await;
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(timeout, async {
            // Until the broker has closed the connection (or was not there).
            while board.is_ready() && !self.event_loop.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_err()
        {
            log::warn!(target: "gsinfer", "broker did not take the last messages within {timeout:?}");
        }
        self.stop_loop.trigger();
        let _ = self.event_loop.await;
    }
}
