//! `gsinfer replay`: publishes a channel of a recorded data set over MQTT,
//! or writes it to a serial device or pseudo-terminal in one of the
//! framings, as live telemetry, so anyone can feed a running service.
//!
//! Sample `i` gets time stamp `start + i × step` and sequence number `i`,
//! the same stamps `gsinfer eval` uses, so streamed and offline scores line
//! up sample for sample.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{Event, Packet};
use serde_json::json;

use crate::config::Config;
use crate::eval::read_channel;
use crate::ingest::framing::Framing;
use crate::ingest::mqtt::{options, qos};
use crate::ingest::serial::encode::SampleEncoder;
use crate::ingest::serial::{SerialConfig, SerialPayload};

/// Options of `gsinfer replay`.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Data set root (telemanom layout).
    pub data_dir: PathBuf,
    /// Channel to publish (`test/<channel>.npy`).
    pub channel: String,
    /// Samples per second; `None` publishes as fast as the broker acknowledges.
    pub rate: Option<f64>,
    /// Samples per MQTT message (1: one JSON object; more: a JSON array).
    pub batch: usize,
    /// Topic to publish on; default: the first pipeline's first topic filter
    /// with its wildcard level replaced by the channel.
    pub topic: Option<String>,
    /// QoS of the telemetry messages.
    pub qos: u8,
    /// Time stamp of sample 0, ns since the Unix epoch.
    pub start_ns: i64,
    /// Time between samples, ns.
    pub step_ns: i64,
    /// Publish at most this many samples.
    pub limit: Option<usize>,
}

/// What a replay did.
#[derive(Debug, Clone, Copy)]
pub struct ReplayStats {
    /// Samples published.
    pub samples: usize,
    /// MQTT messages published.
    pub messages: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The topic a channel is published on, from a subscription filter:
/// `telemetry/SMAP/+` → `telemetry/SMAP/<channel>`, `telemetry/#` →
/// `telemetry/<channel>`.
///
/// # Errors
/// When the filter's last level is not a wildcard.
pub fn topic_for(filter: &str, channel: &str) -> Result<String> {
    match filter.rsplit_once('/') {
        Some((head, "+" | "#")) => Ok(format!("{head}/{channel}")),
        None if filter == "+" || filter == "#" => Ok(channel.to_string()),
        _ => bail!(
            "cannot derive a topic for channel {channel} from filter `{filter}`; pass --topic"
        ),
    }
}

/// Publishes the channel and waits until the broker acknowledged every
/// QoS 1/2 message.
///
/// # Errors
/// Unreadable data, a bad topic, or a broker that cannot be reached.
pub async fn run(config: &Config, opts: &ReplayOptions) -> Result<ReplayStats> {
    let mut rows = read_channel(&opts.data_dir, "test", &opts.channel)?;
    if let Some(limit) = opts.limit {
        rows.truncate(limit);
    }
    let topic = match &opts.topic {
        Some(t) => t.clone(),
        None => {
            let filter = config
                .pipelines
                .first()
                .and_then(|p| p.topics.first())
                .context("no pipeline topic to publish on; pass --topic")?;
            topic_for(filter, &opts.channel)?
        }
    };
    let client_id = format!("gsinfer-replay-{}-{}", opts.channel, std::process::id());
    let mut broker = config.broker.clone();
    broker.clean_session = true;
    let (client, mut eventloop) =
        crate::ingest::mqtt::client(options(&broker, &client_id, None)?, 256);
    let acked = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(tokio::sync::Notify::new());
    let poller = {
        let acked = Arc::clone(&acked);
        let connected = Arc::clone(&connected);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => connected.notify_one(),
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break Ok(()),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), connected.notified())
        .await
        .with_context(|| {
            format!(
                "cannot reach the broker at {}:{} within 10 s",
                broker.host, broker.port
            )
        })?;
    let q = qos(opts.qos);
    let batch = opts.batch.max(1);
    let started = Instant::now();
    let mut messages = 0usize;
    for (chunk_ix, chunk) in rows.chunks(batch).enumerate() {
        let first = chunk_ix * batch;
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(first as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let samples: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let i = first + k;
                json!({"t": opts.start_ns + i as i64 * opts.step_ns, "seq": i, "v": v})
            })
            .collect();
        let payload = if batch == 1 {
            samples[0].to_string()
        } else {
            serde_json::Value::from(samples).to_string()
        };
        client
            .publish(topic.clone(), q, false, payload.into_bytes())
            .await?;
        messages += 1;
    }
    if opts.qos > 0 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::Relaxed) < messages as u64 {
            if Instant::now() > deadline || poller.is_finished() {
                bail!(
                    "the broker acknowledged {} of {messages} messages",
                    acked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    Ok(ReplayStats {
        samples: rows.len(),
        messages,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where `gsinfer replay --serial` writes, and how.
#[derive(Debug, Clone)]
pub struct SerialTarget {
    /// Serial device or pseudo-terminal.
    pub device: PathBuf,
    /// Line speed, bit/s.
    pub baud_rate: u32,
    /// Framing of the samples.
    pub framing: Framing,
    /// Payload of each frame.
    pub payload: SerialPayload,
    /// APID of the space packets (default: the packet feeding the channel).
    pub apid: Option<u16>,
}

/// Bytes gathered before a write when replaying as fast as possible.
const SERIAL_WRITE_CHUNK: usize = 4096;

/// Writes the channel to a serial device, one frame per sample, encoded
/// with the configuration's mission database for space packets. Sample
/// stamps are as in [`run`]; packet sequence counts start at 0.
///
/// # Errors
/// Unreadable data, no packet definition for the channel, or a device
/// that cannot be opened or written.
pub async fn run_serial(
    config: &Config,
    opts: &ReplayOptions,
    target: &SerialTarget,
) -> Result<ReplayStats> {
    use tokio::io::AsyncWriteExt;
    let mut rows = read_channel(&opts.data_dir, "test", &opts.channel)?;
    if let Some(limit) = opts.limit {
        rows.truncate(limit);
    }
    let mut encoder = SampleEncoder::new(
        config,
        target.framing,
        target.payload,
        target.apid,
        &opts.channel,
    )?;
    let link = SerialConfig::new(
        target.device.clone(),
        target.baud_rate,
        target.framing,
        target.payload,
    );
    let mut port = crate::ingest::serial::open(&link)?;
    let started = Instant::now();
    let mut buf = Vec::with_capacity(2 * SERIAL_WRITE_CHUNK);
    for (i, v) in rows.iter().enumerate() {
        if !encoder.encode(
            opts.start_ns + i as i64 * opts.step_ns,
            i as u64,
            v,
            &mut buf,
        ) {
            bail!(
                "sample {i} of {} has {} values, the packet definition feeds a different number; check the [[serial.packet]] parameters",
                opts.channel,
                v.len()
            );
        }
        let due = opts
            .rate
            .map(|rate| started + Duration::from_secs_f64((i + 1) as f64 / rate));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        if due.is_some() || buf.len() >= SERIAL_WRITE_CHUNK || i + 1 == rows.len() {
            port.write_all(&buf)
                .await
                .with_context(|| format!("cannot write to {}", target.device.display()))?;
            buf.clear();
        }
    }
    port.flush().await?;
    Ok(ReplayStats {
        samples: rows.len(),
        messages: rows.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_from_filter() {
        assert_eq!(
            topic_for("telemetry/SMAP/+", "A-1").unwrap(),
            "telemetry/SMAP/A-1"
        );
        assert_eq!(topic_for("telemetry/#", "A-1").unwrap(), "telemetry/A-1");
        assert!(topic_for("telemetry/SMAP/A-1", "A-1").is_err());
    }
}
