//! The task that owns one serial device: open it, read it, decode what
//! arrives, hand the samples to the pipeline task as a [`SampleBatch`]
//! bound for the link's pipeline; when the device goes
//! away (unplugged, the pty closed), reopen it with a capped, jittered
//! exponential backoff until it is back or the service stops.
//!
//! Hand-over policy: the task *waits* when the queue to the pipeline task
//! is full. That task never blocks on inference, so a full queue is a
//! short burst; waiting pushes back onto the link (RTS/CTS or XON/XOFF
//! where configured, else the kernel's buffer) instead of dropping frames
//! that were already read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio_serial::SerialPortBuilderExt;

use super::config::{FlowControl, Parity, SerialConfig};
use super::decoder::{DecodedBatch, SerialDecoder};
use super::stats::SerialStats;
use crate::ingest::batch::{now_ns, Decoding, Dispatch, Origin, SampleBatch};
use crate::ingest::decode::DecodeLimits;
use crate::shutdown::Stop;

/// Bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

/// Errors opening a serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The device could not be opened or configured.
    #[error("cannot open serial device {device}: {reason}; check that it is plugged in, the path (serial.device) and permissions (group dialout)")]
    Open {
        /// The device path.
        device: String,
        /// The OS error.
        reason: String,
    },
}

/// Opens and configures the device of `config` for async reads and writes.
///
/// # Errors
/// [`SerialError::Open`].
pub fn open(config: &SerialConfig) -> Result<tokio_serial::SerialStream, SerialError> {
    let device = config.device.display().to_string();
    let data_bits = match config.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match config.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let flow = match config.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    let stop_bits = if config.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(&device, config.baud_rate)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow)
        .open_native_async()
        .map_err(|e| SerialError::Open {
            device: device.clone(),
            reason: e.to_string(),
        })
}

/// One serial link's task; see the module docs.
#[derive(Debug)]
pub struct SerialSource {
    config: SerialConfig,
    pipeline: usize,
    name: Arc<str>,
    decoder: SerialDecoder,
    tx: Dispatch,
}

/// How a session with an open device ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl SerialSource {
    /// A source for the validated link `config` feeding pipeline
    /// `pipeline` through `tx` (the pipeline tasks' queues, or one queue);
    /// its counters are returned for the status board.
    pub fn new(
        config: &SerialConfig,
        pipeline: usize,
        limits: DecodeLimits,
        tx: impl Into<Dispatch>,
    ) -> (SerialSource, Arc<SerialStats>) {
        let stats = Arc::new(SerialStats::new(config));
        let source = SerialSource {
            config: config.clone(),
            pipeline,
            name: Arc::from(config.label()),
            decoder: SerialDecoder::new(config, limits, Arc::clone(&stats)),
            tx: tx.into(),
        };
        (source, stats)
    }

    /// Opens, reads and reopens the device until `stop` is triggered or the
    /// pipeline task has gone.
    pub async fn run(mut self, stop: Stop) {
        let min = Duration::from_millis(self.config.reopen_min_ms.max(1));
        let max = Duration::from_millis(self.config.reopen_max_ms).max(min);
        let mut delay = min;
        let mut last_error = String::new();
        let stats = Arc::clone(self.decoder.stats());
        loop {
            match open(&self.config) {
                Ok(port) => {
                    log::info!(target: "gsinfer::serial", "serial link `{}`: {} open", self.name, self.config.device.display());
                    stats.set_up();
                    delay = min;
                    last_error.clear();
                    self.decoder.reset();
                    match self.read(port, &stop).await {
                        Ended::Stopped => {
                            stats.set_down("stopped".into(), false);
                            return;
                        }
                        Ended::Lost(e) => {
                            log::warn!(target: "gsinfer::serial", "serial link `{}`: lost the device: {e}; reopening", self.name);
                            stats.set_down(e, true);
                        }
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if e != last_error {
                        log::warn!(target: "gsinfer::serial", "serial link `{}`: {e}; retrying", self.name);
                    }
                    stats.set_down(e.clone(), false);
                    last_error = e;
                }
            }
            let jitter = rand::rng().random_range(0.5..1.0);
            tokio::select! {
                _ = tokio::time::sleep(delay.mul_f64(jitter)) => {}
                _ = stop.wait() => return,
            }
            delay = (delay * 2).min(max);
        }
    }

    async fn read(&mut self, mut port: tokio_serial::SerialStream, stop: &Stop) -> Ended {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = tokio::select! {
                r = port.read(&mut buf) => match r {
                    Ok(0) => return Ended::Lost("end of file".into()),
                    Ok(n) => n,
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                _ = stop.wait() => return Ended::Stopped,
            };
            let (received, received_ns) = (Instant::now(), now_ns());
            let mut out = DecodedBatch::default();
            self.decoder.push(&buf[..n], received_ns, &mut out);
            if out.is_empty() {
                continue;
            }
            let batch = SampleBatch {
                origin: Origin::Serial {
                    link: Arc::clone(&self.name),
                },
                received,
                received_ns,
                bytes: n,
                decoded: vec![Decoding {
                    pipelines: vec![self.pipeline],
                    samples: out.samples,
                    rejects: out.rejects,
                }],
                ack: None,
                message: true,
            };
            tokio::select! {
                r = self.tx.send(batch) => if r.is_err() { return Ended::Stopped },
                _ = stop.wait() => return Ended::Stopped,
            }
        }
    }
}
