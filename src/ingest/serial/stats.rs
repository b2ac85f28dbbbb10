//! A serial link's own counters: link state, bytes, frames, resyncs,
//! packet errors and per-APID sequence accounting. Atomics, so the link's
//! task updates them without locks and the status server reads them at
//! any time; registered with the status board as a
//! [`crate::report::SourceStatus`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::config::SerialConfig;
use crate::ingest::ccsds::{PacketError, SeqEvent};
use crate::ingest::framing::DeframeStats;
use crate::report::{MetricFamilies, SourceStatus};

/// Packet errors, in the order of [`SerialStats::packet_errors`].
pub const PACKET_ERRORS: [&str; 6] = ["short", "version", "length", "segmented", "crc", "content"];

/// Counters of one APID of the mission database.
#[derive(Debug, Default)]
pub struct ApidStats {
    /// The APID.
    pub apid: u16,
    /// Packets accepted (CRC good, not a repeat).
    pub packets: AtomicU64,
    /// Sequence-count gaps seen.
    pub gaps: AtomicU64,
    /// Packets missing in those gaps.
    pub missed: AtomicU64,
    /// Repeated sequence counts (the packet is dropped).
    pub repeats: AtomicU64,
    /// Packets failing the packet error control.
    pub crc_errors: AtomicU64,
}

/// See the module docs.
#[derive(Debug)]
pub struct SerialStats {
    name: String,
    device: String,
    framing: &'static str,
    payload: String,
    /// Whether the device is open.
    pub link_up: AtomicBool,
    /// Times the device was opened.
    pub opens: AtomicU64,
    /// Times an open device was lost (read error or end of file).
    pub losses: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Frames delivered by the deframer.
    pub frames: AtomicU64,
    /// See [`DeframeStats::resyncs`].
    pub resyncs: AtomicU64,
    /// Frames over `max_frame_bytes`.
    pub oversized: AtomicU64,
    /// See [`DeframeStats::bad_escapes`].
    pub bad_escapes: AtomicU64,
    /// See [`DeframeStats::ignored`].
    pub ignored: AtomicU64,
    /// See [`DeframeStats::dropped_bytes`].
    pub dropped_bytes: AtomicU64,
    /// Packet errors by [`PACKET_ERRORS`] reason.
    pub packet_errors: [AtomicU64; 6],
    /// Packets of APIDs outside the mission database.
    pub unknown_apid: AtomicU64,
    /// Idle packets (APID 2047), skipped.
    pub idle: AtomicU64,
    /// Samples decoded and handed to the pipeline.
    pub samples: AtomicU64,
    /// Per APID of the mission database, in its order.
    pub apids: Vec<ApidStats>,
}

impl SerialStats {
    /// Zeroed counters for the link `config`, link down.
    pub fn new(config: &SerialConfig) -> SerialStats {
        SerialStats {
            name: config.label(),
            device: config.device.display().to_string(),
            framing: config.framing.as_str(),
            payload: serde_json::to_value(config.payload)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            link_up: AtomicBool::new(false),
            opens: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            last_error: Mutex::new(None),
            bytes: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            bad_escapes: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            packet_errors: Default::default(),
            unknown_apid: AtomicU64::new(0),
            idle: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            apids: config
                .packets
                .iter()
                .map(|p| ApidStats {
                    apid: p.apid,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records that the device was opened.
    pub fn set_up(&self) {
        self.opens.fetch_add(1, Relaxed);
        self.link_up.store(true, Relaxed);
    }

    /// Records that the device is not open, and why.
    pub fn set_down(&self, error: String, lost: bool) {
        if lost {
            self.losses.fetch_add(1, Relaxed);
        }
        self.link_up.store(false, Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Adds a deframer's counters.
    pub fn add_deframe(&self, s: &DeframeStats) {
        self.frames.fetch_add(s.frames, Relaxed);
        self.resyncs.fetch_add(s.resyncs, Relaxed);
        self.oversized.fetch_add(s.oversized, Relaxed);
        self.bad_escapes.fetch_add(s.bad_escapes, Relaxed);
        self.ignored.fetch_add(s.ignored, Relaxed);
        self.dropped_bytes.fetch_add(s.dropped_bytes, Relaxed);
    }

    /// Counts a packet error (for a known APID's CRC error, pass its index).
    pub fn packet_error(&self, e: &PacketError, apid_ix: Option<usize>) {
        let ix = PACKET_ERRORS
            .iter()
            .position(|r| *r == e.as_str())
            .expect("every packet error has a counter");
        self.packet_errors[ix].fetch_add(1, Relaxed);
        if let (PacketError::Crc { .. }, Some(a)) = (e, apid_ix) {
            self.apids[a].crc_errors.fetch_add(1, Relaxed);
        }
    }

    /// Counts a packet whose parameters could not be read.
    pub fn content_error(&self) {
        self.packet_errors[5].fetch_add(1, Relaxed);
    }

    /// Counts a packet of APID index `ix` by what its sequence count says.
    pub fn sequence(&self, ix: usize, event: SeqEvent) {
        let a = &self.apids[ix];
        match event {
            SeqEvent::First | SeqEvent::InOrder => {}
            SeqEvent::Gap { missed } => {
                a.gaps.fetch_add(1, Relaxed);
                a.missed.fetch_add(missed.into(), Relaxed);
            }
            SeqEvent::Repeat => {
                a.repeats.fetch_add(1, Relaxed);
                return;
            }
        }
        a.packets.fetch_add(1, Relaxed);
    }

    /// CRC errors over all APIDs.
    pub fn crc_errors(&self) -> u64 {
        self.packet_errors[4].load(Relaxed)
    }
}

impl SourceStatus for SerialStats {
    fn status(&self) -> Value {
        let errors: serde_json::Map<String, Value> = PACKET_ERRORS
            .iter()
            .zip(&self.packet_errors)
            .map(|(r, c)| (r.to_string(), c.load(Relaxed).into()))
            .collect();
        let apids: Vec<Value> = self
            .apids
            .iter()
            .map(|a| {
                json!({
                    "apid": a.apid, "packets": a.packets.load(Relaxed),
                    "sequence_gaps": a.gaps.load(Relaxed), "packets_missed": a.missed.load(Relaxed),
                    "sequence_repeats": a.repeats.load(Relaxed), "crc_errors": a.crc_errors.load(Relaxed),
                })
            })
            .collect();
        json!({
            "kind": "serial", "name": self.name, "device": self.device,
            "framing": self.framing, "payload": self.payload,
            "link": if self.link_up.load(Relaxed) { "up" } else { "down" },
            "opens": self.opens.load(Relaxed), "link_losses": self.losses.load(Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            "bytes": self.bytes.load(Relaxed), "frames": self.frames.load(Relaxed),
            "resyncs": self.resyncs.load(Relaxed), "oversized_frames": self.oversized.load(Relaxed),
            "bad_escapes": self.bad_escapes.load(Relaxed), "ignored_frames": self.ignored.load(Relaxed),
            "dropped_bytes": self.dropped_bytes.load(Relaxed),
            "crc_errors": self.crc_errors(), "packet_errors": errors,
            "unknown_apid": self.unknown_apid.load(Relaxed), "idle_packets": self.idle.load(Relaxed),
            "samples": self.samples.load(Relaxed), "apids": apids,
        })
    }

    fn metrics(&self, out: &mut MetricFamilies) {
        let s = [("source", self.name.as_str())];
        out.gauge(
            "serial_link_up",
            "1 while the serial device is open.",
            &s,
            self.link_up.load(Relaxed).into(),
        );
        let counters: [(&'static str, &'static str, &AtomicU64); 11] = [
            (
                "serial_opens",
                "Times the serial device was opened.",
                &self.opens,
            ),
            (
                "serial_link_lost",
                "Times an open serial device was lost.",
                &self.losses,
            ),
            (
                "serial_bytes",
                "Bytes read from the serial device.",
                &self.bytes,
            ),
            ("serial_frames", "Frames decoded.", &self.frames),
            (
                "serial_resyncs",
                "Times the deframer discarded input to regain frame sync.",
                &self.resyncs,
            ),
            (
                "serial_oversized_frames",
                "Frames over max_frame_bytes, dropped.",
                &self.oversized,
            ),
            (
                "serial_bad_escapes",
                "KISS/SLIP escape sequences breaking the framing's rules.",
                &self.bad_escapes,
            ),
            (
                "serial_ignored_frames",
                "KISS frames that are not data frames of the selected port.",
                &self.ignored,
            ),
            (
                "serial_dropped_bytes",
                "Bytes in no delivered frame.",
                &self.dropped_bytes,
            ),
            (
                "serial_unknown_apid",
                "Space packets of APIDs outside the mission database.",
                &self.unknown_apid,
            ),
            (
                "serial_samples",
                "Samples decoded from the serial link.",
                &self.samples,
            ),
        ];
        for (name, help, c) in counters {
            out.counter(name, help, &s, c.load(Relaxed));
        }
        for (reason, c) in PACKET_ERRORS.iter().zip(&self.packet_errors) {
            out.counter(
                "serial_packet_errors",
                "Space packets dropped, by reason (crc: packet error control mismatch).",
                &[("source", &self.name), ("reason", reason)],
                c.load(Relaxed),
            );
        }
        for a in &self.apids {
            let apid = a.apid.to_string();
            let l = [("source", self.name.as_str()), ("apid", apid.as_str())];
            out.counter(
                "serial_packets",
                "Space packets accepted, by APID.",
                &l,
                a.packets.load(Relaxed),
            );
            out.counter(
                "serial_sequence_gaps",
                "Gaps in the packet sequence count, by APID.",
                &l,
                a.gaps.load(Relaxed),
            );
            out.counter(
                "serial_packets_missed",
                "Packets missing in sequence-count gaps, by APID.",
                &l,
                a.missed.load(Relaxed),
            );
            out.counter(
                "serial_sequence_repeats",
                "Repeated sequence counts (packets dropped), by APID.",
                &l,
                a.repeats.load(Relaxed),
            );
            out.counter(
                "serial_crc_errors",
                "Space packets failing the packet error control, by APID.",
                &l,
                a.crc_errors.load(Relaxed),
            );
        }
    }
}
