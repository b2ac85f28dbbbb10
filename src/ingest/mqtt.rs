//! The MQTT side: connection options, which pipelines a topic is for
//! ([`TopicRoutes`]), and the one task that polls the rumqttc event loop
//! forever.
//!
//! The event loop must be polled continuously (rumqttc misses keep-alives
//! otherwise), so this task never waits on anything downstream: when the
//! ingest queue has room, a message is decoded (once per distinct format
//! and limits among the pipelines its topic matches) and handed over as a
//! [`SampleBatch`]; when the queue is full, it is dropped undecoded and
//! counted. Subscriptions and the retained status are requested with
//! `try_*` calls. After a lost connection it sleeps a capped, jittered,
//! exponential backoff and polls again, which reconnects.
//!
//! Acknowledgements are manual (MQTT 3.1.1 §4.3.2): a QoS 1 message is
//! acknowledged only once the router has taken its samples (see
//! [`SampleBatch::ack`]), so a message still queued inside gsinfer when the
//! process stops is redelivered by the broker to the next run of the same
//! persistent session instead of being lost. A message dropped because the
//! ingest queue is full is acknowledged at once (and counted): holding it
//! unacknowledged would use up the broker's in-flight window for this client
//! and stall delivery until the next reconnect.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, SubscribeFilter,
    TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};

use super::batch::{now_ns, Ack, Decoding, Dispatch, Origin, Refused, SampleBatch};
use super::decode::{decode, DecodeLimits, PayloadFormat};
use super::tls::{self, TlsConfig, TlsError};
use crate::events::{EventSink, StageEvent};
use crate::secrets::{read_secret_line, Secret, SecretFileError};
use crate::shutdown::Stop;

/// MQTT broker connection (`[broker]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Broker TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; with a persistent session it must be unique and stable.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// User name, if the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (never the password itself in this file).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Start a clean session on connect; `false` (default) keeps the session
    /// so QoS 1 telemetry queued at the broker during a reconnect is not lost.
    #[serde(default)]
    pub clean_session: bool,
    /// QoS of the telemetry subscriptions.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Largest MQTT packet accepted or sent, in bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// First reconnect delay in ms; doubles up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in ms.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// MQTT over TLS (`[broker.tls]`); absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "gsinfer".into()
}
fn default_keep_alive() -> u64 {
    15
}
fn default_qos() -> u8 {
    1
}
fn default_max_packet() -> usize {
    1 << 20
}
fn default_reconnect_min() -> u64 {
    100
}
fn default_reconnect_max() -> u64 {
    30_000
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            host: default_host(),
            port: default_port(),
            client_id: default_client_id(),
            username: None,
            password_file: None,
            keep_alive_s: default_keep_alive(),
            clean_session: false,
            qos: default_qos(),
            max_packet_bytes: default_max_packet(),
            reconnect_min_ms: default_reconnect_min(),
            reconnect_max_ms: default_reconnect_max(),
            tls: None,
        }
    }
}

/// Errors preparing the MQTT connection, each one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The password file is refused (missing, empty, or readable by others).
    #[error(transparent)]
    Password(#[from] SecretFileError),
    /// The `[broker.tls]` settings cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// MQTT QoS from its number (0, 1, anything else 2; validated in config).
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Connection options: client id, keep-alive, session, credentials, packet
/// limits, TLS, and the last will `offline` (retained) on `status_topic`.
///
/// The password is read here, from `broker.password_file`, and goes only
/// into the returned options (whose `Debug`, rumqttc's, shows it: never
/// format them).
///
/// # Errors
/// [`MqttError::Password`] when the password file is refused (see
/// [`crate::secrets`]), [`MqttError::Tls`] when a `[broker.tls]` file is.
pub fn options(
    config: &BrokerConfig,
    client_id: &str,
    status_topic: Option<&str>,
) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(client_id, &config.host, config.port);
    o.set_keep_alive(Duration::from_secs(config.keep_alive_s.max(1)));
    o.set_clean_session(config.clean_session);
    o.set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
    o.set_inflight(100);
    o.set_manual_acks(true);
    if let Some(user) = &config.username {
        let password = match &config.password_file {
            Some(p) => read_secret_line("broker.password_file", p)?,
            None => Secret::new(""),
        };
        o.set_credentials(user, password.expose());
    }
    if let Some(tls) = &config.tls {
        let client = tls::client_config(tls)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(client)));
    }
    if let Some(topic) = status_topic {
        o.set_last_will(LastWill::new(
            topic,
            offline_payload(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    Ok(o)
}

/// The retained `gsinfer/status` payload of a service that is gone.
pub fn offline_payload() -> Vec<u8> {
    serde_json::json!({"state": "offline"})
        .to_string()
        .into_bytes()
}

/// The channel a telemetry topic carries: its last level
/// (`telemetry/SMAP/A-1` → `A-1`).
pub fn channel_of(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or("")
}

/// One pipeline as the MQTT side sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRoute {
    /// Its topic filters (`[[pipeline]] topics`).
    pub filters: Vec<String>,
    /// Its payload format.
    pub format: PayloadFormat,
    /// Its decode limits.
    pub limits: DecodeLimits,
}

impl TopicRoute {
    /// Whether `topic` matches one of the filters.
    pub fn matches(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| rumqttc::matches(topic, f))
    }
}

/// Which pipelines a message is for and how to decode it for them: every
/// pipeline's [`TopicRoute`], in config order. No I/O and no clock.
///
/// Filters without wildcards (one topic each, as per-channel pipelines
/// have) are looked up by topic; only pipelines with a `+` or `#` filter
/// are matched one by one. Scanning every filter cost each message time in
/// proportion to the pipelines, ~10 000 matches per message at 10 000
/// per-channel pipelines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicRoutes {
    routes: Vec<TopicRoute>,
    /// Per plain topic: the pipelines with that exact filter, ascending.
    exact: HashMap<String, Vec<usize>>,
    /// Pipelines with a wildcard filter, ascending.
    wildcard: Vec<usize>,
}

impl TopicRoutes {
    /// Routes for the pipelines `routes`, in config order (a pipeline's
    /// index is its place here).
    pub fn new(routes: Vec<TopicRoute>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (ix, route) in routes.iter().enumerate() {
            if route.filters.iter().any(|f| f.contains(['+', '#'])) {
                wildcard.push(ix);
            } else {
                for f in &route.filters {
                    let ixs = exact.entry(f.clone()).or_default();
                    if ixs.last() != Some(&ix) {
                        ixs.push(ix);
                    }
                }
            }
        }
        Self {
            routes,
            exact,
            wildcard,
        }
    }

    /// The pipelines whose filters match `topic`, in config order.
    fn matching(&self, topic: &str) -> Vec<usize> {
        let mut ixs: Vec<usize> = self.exact.get(topic).cloned().unwrap_or_default();
        let wild = self.wildcard.iter().copied();
        ixs.extend(wild.filter(|&ix| self.routes[ix].matches(topic)));
        ixs.sort_unstable();
        ixs
    }

    /// Decodes `msg`, received at `received_ns` (ns since the Unix epoch),
    /// once per distinct (format, limits) among the pipelines whose filters
    /// match its topic; samples are tagged with the topic's channel
    /// ([`channel_of`]). A topic no filter matches gives a batch with no
    /// decoding, which the router rejects as `unknown_channel`.
    pub fn batch(&self, msg: Inbound, received_ns: i64) -> SampleBatch {
        let channel: Arc<str> = Arc::from(channel_of(&msg.topic));
        let mut decoded: Vec<((PayloadFormat, DecodeLimits), Decoding)> = Vec::new();
        for ix in self.matching(&msg.topic) {
            let route = &self.routes[ix];
            let key = (route.format, route.limits);
            if let Some((_, d)) = decoded.iter_mut().find(|(k, _)| *k == key) {
                d.pipelines.push(ix);
                continue;
            }
            let out = decode(route.format, &msg.payload, &route.limits);
            let samples = out.samples.into_iter();
            let d = Decoding {
                pipelines: vec![ix],
                samples: samples.map(|s| (Arc::clone(&channel), s)).collect(),
                rejects: out.rejects,
            };
            decoded.push((key, d));
        }
        SampleBatch {
            origin: Origin::Mqtt {
                topic: Arc::from(msg.topic),
            },
            received: msg.received,
            received_ns,
            bytes: msg.payload.len(),
            decoded: decoded.into_iter().map(|(_, d)| d).collect(),
            ack: msg.ack.map(Ack::new),
            message: true,
        }
    }
}

/// One MQTT message as received.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Topic it was published on.
    pub topic: String,
    /// Raw payload.
    pub payload: bytes::Bytes,
    /// When the event loop received it.
    pub received: Instant,
    /// The packet header to acknowledge once the samples are taken
    /// (`AsyncClient::ack`); `None` for QoS 0. Payload and topic are empty.
    pub ack: Option<rumqttc::Publish>,
}

impl Inbound {
    /// A message as handed over by the event loop: topic and payload moved
    /// out of `p`, and for QoS 1 and 2 the header needed to acknowledge it.
    pub fn from_publish(p: rumqttc::Publish, received: Instant) -> Self {
        let ack = (p.qos != QoS::AtMostOnce).then(|| {
            let mut header = rumqttc::Publish::new(String::new(), p.qos, Vec::<u8>::new());
            header.pkid = p.pkid;
            header
        });
        Self {
            topic: p.topic,
            payload: p.payload,
            received,
            ack,
        }
    }
}

/// Acknowledges the message of packet `header` ([`SampleBatch::ack`]) to
/// the broker, waiting for room in the client's request queue when it is
/// full. Call once the message's samples are in the pipelines.
pub async fn acknowledge(client: &AsyncClient, header: &rumqttc::Publish) {
    if client.try_ack(header).is_err() {
        // Full (the event loop is reconnecting) or closed (shutting down):
        // an acknowledgement lost here only means the broker redelivers.
        let _ = client.ack(header).await;
    }
}

/// The client and its event loop for `options`, with `capacity` requests
/// queued at most, on a socket with TCP_NODELAY: telemetry and results are
/// small packets, and Nagle's algorithm holding one back until the previous
/// is acknowledged adds up to a delayed-ACK period (40 ms on Linux) to it
/// (BENCHMARKS.md, "The broker floor and Nagle").
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// How far the MQTT client's outgoing PUBLISH packets have got: how many
/// were handed to the client (its request queue, in this process's memory)
/// and how many of those its event loop has written to the broker
/// connection (flushed to the socket, so a SIGKILL after that no longer
/// loses them: the kernel still sends what the socket holds).
///
/// A checkpoint waits on it ([`Outbox::written`]) so that a saved state
/// never counts a window as settled while its score could still die with
/// the process (RELIABILITY.md). Every publish through the client goes
/// through [`Outbox::publish`] or [`Outbox::try_publish`], which count it
/// *before* it is handed over, and the event
/// loop counts each `Outgoing::Publish` it reports with [`Outbox::wrote`],
/// never past the handed count; so retransmissions after a reconnect cannot
/// make the count run ahead for good. When the connection is lost, what was
/// handed is counted as written ([`Outbox::disconnected`]): it is either
/// retransmitted by the client (QoS 1/2) or gone (QoS 0), and nothing a
/// checkpoint could wait for; while disconnected, [`Outbox::written`]
/// does not wait.
#[derive(Debug)]
pub struct Outbox {
    handed: AtomicU64,
    written: tokio::sync::watch::Sender<u64>,
    connected: AtomicBool,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            handed: Default::default(),
            written: tokio::sync::watch::channel(0).0,
            connected: Default::default(),
        }
    }
}

impl Outbox {
    /// Counts one publish about to be handed to the client (done by
    /// [`Outbox::publish`]; tests count publishes they stand for).
    pub(crate) fn handing(&self) {
        self.handed.fetch_add(1, Ordering::SeqCst);
    }

    /// Publishes through `client`, waiting for room in its request queue,
    /// counted here (see the type's docs).
    ///
    /// # Errors
    /// The client's, when its event loop is gone (the publish is then
    /// counted as written: nothing will write it).
    pub async fn publish(
        &self,
        client: &AsyncClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), rumqttc::ClientError> {
        self.handing();
        self.uncount_refused(client.publish(topic, qos, retain, payload).await)
    }

    /// As [`Outbox::publish`], without waiting: refused when the client's
    /// request queue is full.
    ///
    /// # Errors
    /// The client's: its queue is full or its event loop is gone.
    pub fn try_publish(
        &self,
        client: &AsyncClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), rumqttc::ClientError> {
        self.handing();
        self.uncount_refused(client.try_publish(topic, qos, retain, payload))
    }

    /// A publish the client refused will never be written: counted as
    /// written, so no checkpoint waits for it.
    fn uncount_refused(
        &self,
        sent: Result<(), rumqttc::ClientError>,
    ) -> Result<(), rumqttc::ClientError> {
        if sent.is_err() {
            self.wrote();
        }
        sent
    }

    /// Publishes handed to the client so far.
    pub fn handed(&self) -> u64 {
        self.handed.load(Ordering::SeqCst)
    }

    /// One publish written to the connection (or refused by the client,
    /// which never writes it).
    pub fn wrote(&self) {
        let handed = self.handed();
        self.written.send_modify(|w| *w = (*w + 1).min(handed));
    }

    /// The connection is up (CONNACK received).
    pub fn connected(&self) {
        (self.connected).store(true, Ordering::SeqCst);
    }

    /// The connection is lost: everything handed counts as written, and
    /// waits end.
    pub fn disconnected(&self) {
        (self.connected).store(false, Ordering::SeqCst);
        let handed = self.handed();
        self.written.send_modify(|w| *w = (*w).max(handed));
    }

    /// Waits until the first `target` publishes handed are written to the
    /// connection, or returns at once while it is down.
    pub async fn written(&self, target: u64) {
        let mut rx = self.written.subscribe();
        let connected = || (self.connected).load(Ordering::SeqCst);
        while connected() && *rx.borrow_and_update() < target {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Most topic filters in one SUBSCRIBE packet.
const SUBSCRIBE_FILTERS: usize = 128;
/// Most bytes of topic filters in one SUBSCRIBE packet (well under any
/// broker's packet limit).
const SUBSCRIBE_BYTES: usize = 16 * 1024;

/// The SUBSCRIBE packets for `subscriptions`: each filter once (at the
/// highest QoS asked for it), in first-seen order, packed at most
/// `SUBSCRIBE_FILTERS` filters and `SUBSCRIBE_BYTES` bytes a packet.
///
/// Why: one packet per filter through the client's bounded request queue
/// lost every filter past the queue's capacity (1 024) at start, so a
/// configuration of 10 000 per-channel topics received telemetry on 1 024.
pub fn subscribe_packets(subscriptions: &[(String, QoS)]) -> Vec<Vec<SubscribeFilter>> {
    let mut order: Vec<(String, QoS)> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (filter, q) in subscriptions {
        match seen.get(filter.as_str()) {
            Some(&i) if *q as u8 > order[i].1 as u8 => order[i].1 = *q,
            Some(_) => {}
            None => {
                seen.insert(filter, order.len());
                order.push((filter.clone(), *q));
            }
        }
    }
    let mut packets: Vec<Vec<SubscribeFilter>> = Vec::new();
    let mut bytes = 0;
    for (filter, q) in order {
        let full = packets.last().is_none_or(|p: &Vec<SubscribeFilter>| {
            p.len() >= SUBSCRIBE_FILTERS || bytes + filter.len() > SUBSCRIBE_BYTES
        });
        if full {
            packets.push(Vec::new());
            bytes = 0;
        }
        bytes += filter.len();
        packets
            .last_mut()
            .expect("pushed above")
            .push(SubscribeFilter::new(filter, q));
    }
    packets
}

/// Where the subscriptions of the current session stand: the SUBSCRIBE
/// packets (from [`subscribe_packets`]), those still queued (indices, in
/// order) and those sent awaiting their SUBACK, so a refused filter can be
/// named.
#[derive(Debug, Default)]
struct Subscribing {
    packets: Vec<Vec<SubscribeFilter>>,
    queued: VecDeque<usize>,
    sent: HashMap<u16, usize>,
    refused: usize,
    sender: Option<tokio::task::JoinHandle<()>>,
}

impl Subscribing {
    fn new(packets: Vec<Vec<SubscribeFilter>>) -> Self {
        Self {
            packets,
            ..Self::default()
        }
    }

    /// Starts subscribing on a new session: a task of its own waits for
    /// room in the client's request queue, so the event loop, which drains
    /// that queue, never waits on it.
    fn start(&mut self, client: &AsyncClient) {
        if let Some(old) = self.sender.take() {
            old.abort();
        }
        self.queued = (0..self.packets.len()).collect();
        self.sent.clear();
        self.refused = 0;
        let (client, packets) = (client.clone(), self.packets.clone());
        self.sender = Some(tokio::spawn(async move {
            for packet in packets {
                if let Err(e) = client.subscribe_many(packet).await {
                    log::error!(target: "gsinfer::mqtt", "cannot subscribe: {e}");
                    return;
                }
            }
        }));
    }

    /// A SUBSCRIBE packet `pkid` went out (in queue order).
    fn sent(&mut self, pkid: u16) {
        if let Some(packet) = self.queued.pop_front() {
            self.sent.insert(pkid, packet);
        }
    }

    /// The broker answered SUBSCRIBE `ack.pkid`: each refused filter is
    /// logged, and the whole set once every packet is answered.
    fn acked(&mut self, ack: &rumqttc::SubAck) {
        let Some(packet) = self.sent.remove(&ack.pkid) else {
            return;
        };
        for (filter, code) in self.packets[packet].iter().zip(&ack.return_codes) {
            if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                self.refused += 1;
                log::error!(target: "gsinfer::mqtt", "the broker refused the subscription to {}: the pipelines on it get no telemetry; check the broker's ACL for this client", filter.path);
            }
        }
        if self.queued.is_empty() && self.sent.is_empty() {
            let filters: usize = self.packets.iter().map(Vec::len).sum();
            let ok = filters - self.refused;
            log::info!(target: "gsinfer::mqtt", "subscribed to {ok} of {filters} topic filter(s)");
        }
    }
}

/// How often a broker that stays unreachable is reported at `warn`.
const CONNECT_WARN_EVERY: Duration = Duration::from_secs(60);

/// What the event loop task needs besides the event loop.
#[derive(Debug)]
pub struct EventLoopTask {
    /// Client handle, for subscribing and the status message.
    pub client: AsyncClient,
    /// Topic filters to subscribe on every new session.
    pub subscriptions: Vec<(String, QoS)>,
    /// Which pipelines a message is for, and how to decode it.
    pub topics: TopicRoutes,
    /// Where telemetry goes, decoded: the pipeline tasks' queues.
    pub inbound: Dispatch,
    /// Retained status topic and its `online` payload.
    pub status: Option<(String, Vec<u8>)>,
    /// Reconnect backoff bounds.
    pub backoff: (Duration, Duration),
    /// Where the task reports connections, losses and dropped messages.
    pub events: Arc<dyn EventSink>,
    /// Counts the publishes it writes to the connection.
    pub outbox: Arc<Outbox>,
}

impl EventLoopTask {
    /// Polls `eventloop` until `stop` is set; never blocks on downstream work.
    pub async fn run(self, mut eventloop: EventLoop, stop: Stop) {
        let mut delay = self.backoff.0;
        let mut connected = false;
        let mut disconnecting = false;
        // Failed connection attempts since the last success, and when the
        // last warning about them was logged.
        let mut failures = 0u32;
        let mut last_warning: Option<Instant> = None;
        let mut subscribing = Subscribing::new(subscribe_packets(&self.subscriptions));
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = stop.wait() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    failures = 0;
                    last_warning = None;
                    delay = self.backoff.0;
                    self.outbox.connected();
                    self.events.emit(StageEvent::BrokerConnected {
                        session_present: ack.session_present,
                    });
                    subscribing.start(&self.client);
                    if let Some((topic, payload)) = &self.status {
                        let _ = self.outbox.try_publish(
                            &self.client,
                            topic.clone(),
                            QoS::AtLeastOnce,
                            true,
                            payload.clone(),
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = Inbound::from_publish(p, Instant::now());
                    match self.inbound.try_send(self.topics.batch(msg, now_ns())) {
                        Ok(()) => {}
                        Err(Refused::Full(header)) => {
                            self.events.emit(StageEvent::IngestOverflow);
                            // Dropped by the overload policy: acknowledge now so the
                            // broker's in-flight window for this client stays open.
                            if let Some(header) = &header {
                                let _ = self.client.try_ack(header);
                            }
                        }
                        // Shutting down: left unacknowledged, the broker keeps it
                        // for the next run of this persistent session.
                        Err(Refused::Closed) => {}
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => self.outbox.wrote(),
                Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => subscribing.sent(pkid),
                Ok(Event::Incoming(Packet::SubAck(ack))) => subscribing.acked(&ack),
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    // Keep polling until the broker closes the connection:
                    // what was queued before DISCONNECT (the last results,
                    // the offline status) may still sit in the write buffer.
                    log::info!(target: "gsinfer::mqtt", "disconnecting from the broker");
                    disconnecting = true;
                }
                Ok(_) => {}
                Err(_) if disconnecting => {
                    self.events.emit(StageEvent::BrokerClosed);
                    break;
                }
                Err(e) => {
                    if connected {
                        self.outbox.disconnected();
                        self.events.emit(StageEvent::BrokerLost { error: &e });
                        connected = false;
                        failures = 0;
                    } else {
                        failures += 1;
                        // The first failure, then one line a minute while it lasts.
                        let report =
                            last_warning.is_none_or(|t: Instant| t.elapsed() >= CONNECT_WARN_EVERY);
                        if report {
                            last_warning = Some(Instant::now());
                        }
                        self.events.emit(StageEvent::BrokerUnreachable {
                            attempts: failures,
                            error: &e,
                            backoff_max: self.backoff.1,
                            report,
                        });
                    }
                    let jitter = rand::rng().random_range(0.5..1.0);
                    tokio::select! {
                        _ = tokio::time::sleep(delay.mul_f64(jitter)) => {},
                        _ = stop.wait() => break,
                    }
                    delay = (delay * 2).min(self.backoff.1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::RejectReason;

    #[tokio::test]
    async fn an_outbox_wait_ends_when_the_publishes_handed_before_it_are_written() {
        let outbox = Outbox::default();
        outbox.connected();
        outbox.handing();
        outbox.handing();
        let target = outbox.handed();
        assert_eq!(target, 2);
        let wait = outbox.written(target);
        tokio::pin!(wait);
        outbox.wrote();
        tokio::select! {
            biased;
            () = &mut wait => panic!("one of two written ended the wait"),
            () = std::future::ready(()) => {}
        }
        outbox.wrote();
        wait.await;
    }

    #[tokio::test]
    async fn an_outbox_never_counts_more_written_than_handed() {
        let outbox = Outbox::default();
        outbox.connected();
        outbox.handing();
        // Retransmissions after a reconnect are reported as publishes too.
        for _ in 0..5 {
            outbox.wrote();
        }
        outbox.handing();
        let wait = outbox.written(outbox.handed());
        tokio::pin!(wait);
        tokio::select! {
            biased;
            () = &mut wait => panic!("the count ran ahead of what was handed"),
            () = std::future::ready(()) => {}
        }
        outbox.wrote();
        wait.await;
    }

    #[tokio::test]
    async fn a_lost_connection_ends_outbox_waits_and_none_waits_while_it_is_down() {
        let outbox = Arc::new(Outbox::default());
        outbox.connected();
        outbox.handing();
        let target = outbox.handed();
        let waiting = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move { outbox.written(target).await })
        };
        tokio::task::yield_now().await;
        outbox.disconnected();
        waiting.await.unwrap();
        // Down: a new publish is not waited for.
        outbox.handing();
        outbox.written(outbox.handed()).await;
    }

    fn route(filter: &str, format: PayloadFormat, features: usize) -> TopicRoute {
        TopicRoute {
            filters: vec![filter.into()],
            format,
            limits: DecodeLimits::new(features),
        }
    }

    fn message(topic: &str, payload: &str, qos: QoS) -> Inbound {
        let mut p = rumqttc::Publish::new(topic, qos, payload.as_bytes().to_vec());
        p.pkid = 7;
        Inbound::from_publish(p, Instant::now())
    }

    #[test]
    fn subscriptions_are_deduplicated_and_packed_in_order() {
        let mut subs: Vec<(String, QoS)> = (0..300)
            .map(|i| (format!("t/c{i}"), QoS::AtMostOnce))
            .collect();
        subs.push(("t/c5".into(), QoS::AtLeastOnce));
        let packets = subscribe_packets(&subs);
        let sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![128, 128, 44]);
        assert_eq!(packets[0][0].path, "t/c0");
        assert_eq!(packets[2][43].path, "t/c299");
        // A filter asked twice is subscribed once, at the higher QoS.
        assert_eq!(packets[0][5].qos, QoS::AtLeastOnce);
        // Long filters: no packet carries more than 16 KiB of them.
        let long: Vec<(String, QoS)> = (0..10)
            .map(|i| (format!("{i}{}", "x".repeat(4_000)), QoS::AtMostOnce))
            .collect();
        let sizes: Vec<usize> = subscribe_packets(&long).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[test]
    fn a_refused_filter_is_counted_against_its_packet() {
        let filter = |f: &str| SubscribeFilter::new(f.into(), QoS::AtLeastOnce);
        let mut s = Subscribing::new(vec![vec![filter("a"), filter("b")], vec![filter("c")]]);
        s.queued = [0, 1].into();
        s.sent(7);
        s.sent(8);
        s.acked(&rumqttc::SubAck::new(
            8,
            vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        ));
        s.acked(&rumqttc::SubAck::new(
            7,
            vec![
                rumqttc::SubscribeReasonCode::Failure,
                rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce),
            ],
        ));
        assert_eq!(s.refused, 1);
        assert!(s.sent.is_empty() && s.queued.is_empty());
    }

    #[test]
    fn pipelines_sharing_a_format_share_one_decoding() {
        let routes = TopicRoutes::new(vec![
            route("telemetry/+", PayloadFormat::Json, 2),
            route("other/#", PayloadFormat::Json, 2),
            route("telemetry/A-1", PayloadFormat::Json, 2),
        ]);
        let msg = message("telemetry/A-1", r#"{"v": [1, 2]}"#, QoS::AtLeastOnce);
        let batch = routes.batch(msg, 5);
        assert_eq!(batch.decoded.len(), 1);
        assert_eq!(batch.decoded[0].pipelines, vec![0, 2]);
        let (channel, sample) = &batch.decoded[0].samples[0];
        assert_eq!((&**channel, sample.t_ns), ("A-1", None));
        assert_eq!(batch.received_ns, 5);
        assert_eq!(batch.origin.to_string(), "telemetry/A-1");
        assert_eq!(
            batch.ack.as_ref().and_then(Ack::header).map(|a| a.pkid),
            Some(7)
        );
    }

    #[test]
    fn other_formats_or_limits_decode_again() {
        let routes = TopicRoutes::new(vec![
            route("t/+", PayloadFormat::Json, 2),
            route("t/+", PayloadFormat::Json, 3),
            route("t/+", PayloadFormat::Csv, 2),
            route("t/+", PayloadFormat::Json, 2),
        ]);
        let batch = routes.batch(message("t/c", r#"{"v": [1, 2]}"#, QoS::AtMostOnce), 0);
        let pipelines: Vec<_> = batch.decoded.iter().map(|d| d.pipelines.clone()).collect();
        assert_eq!(pipelines, vec![vec![0, 3], vec![1], vec![2]]);
        // Each decoding rejects by its own rules.
        assert_eq!(batch.decoded[0].samples.len(), 1);
        assert_eq!(
            batch.decoded[1].rejects[0].reason,
            RejectReason::WrongLength
        );
        assert_eq!(batch.decoded[2].rejects[0].reason, RejectReason::Malformed);
        assert!(batch.ack.is_none());
    }

    #[test]
    fn exact_and_wildcard_filters_route_in_config_order() {
        let mut two = route("a/X-1", PayloadFormat::Json, 1);
        two.filters.push("b/+".into());
        let routes = TopicRoutes::new(vec![
            route("a/X-2", PayloadFormat::Json, 1),
            route("a/+", PayloadFormat::Json, 1),
            route("a/X-1", PayloadFormat::Json, 1),
            two,
            route("#", PayloadFormat::Json, 1),
            route("a/X-1", PayloadFormat::Json, 1),
        ]);
        let pipelines = |topic: &str| {
            let batch = routes.batch(message(topic, r#"{"v": [1]}"#, QoS::AtMostOnce), 0);
            batch
                .decoded
                .iter()
                .flat_map(|d| d.pipelines.clone())
                .collect::<Vec<_>>()
        };
        // Exact filters and wildcards merged, in config order, each once.
        assert_eq!(pipelines("a/X-1"), vec![1, 2, 3, 4, 5]);
        assert_eq!(pipelines("a/X-2"), vec![0, 1, 4]);
        assert_eq!(pipelines("b/X-1"), vec![3, 4]);
        assert_eq!(pipelines("c"), vec![4]);
        // A plain filter is the whole topic, not a prefix.
        assert_eq!(pipelines("a/X-1/more"), vec![4]);
    }

    #[test]
    fn a_topic_no_filter_matches_is_for_no_pipeline() {
        let routes = TopicRoutes::new(vec![route("telemetry/+", PayloadFormat::Json, 1)]);
        let batch = routes.batch(message("elsewhere/A-1", "{}", QoS::AtLeastOnce), 0);
        assert!(batch.decoded.is_empty());
        assert_eq!(batch.bytes, 2);
    }
}
