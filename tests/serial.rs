//! Serial links against real pseudo-terminals: `socat` links two ptys, the
//! serial source reads one end, the test writes frames into the other.
//! Frames come from an independent encoder (tests/tools/frames.py: Python
//! `spacepackets` for the packets, KISS/SLIP/COBS written from their
//! specifications), and the decoded values are checked against the values
//! the test asked for. The last test replays a real SMAP channel as space
//! packets over a pty into `gsinfer run` and compares its scores with
//! `gsinfer eval`.

mod common;
mod serial_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{data_dir, mosquitto_available, Broker, Subscriber};
use gsinfer::ingest::decode::RejectReason;
use serde_json::{json, Value};
use serial_support::{encode, python_available, Link, Socat};

/// Upper bound on waiting for anything; a guard against hangs only.
const GUARD: Duration = Duration::from_secs(120);

/// The mission database of the decoding tests: every parameter type, both
/// byte orders, scale and offset, an array, a time field, two APIDs.
fn mission(device: &Path, framing: &str, extra: &str) -> String {
    format!(
        r#"
device = "{}"
framing = "{framing}"
max_frame_bytes = 128
reopen_min_ms = 20
reopen_max_ms = 200
{extra}
[[packet]]
apid = 100
crc = true
time = {{ byte_offset = 0, type = "u64", unit = "ns" }}
parameter = [
  {{ byte_offset = 8, type = "u8", channel = "A", feature = 0 }},
  {{ byte_offset = 9, type = "i16", channel = "A", feature = 1, scale = 0.5, offset = 10.0 }},
  {{ byte_offset = 11, type = "u32", byte_order = "little", channel = "A", feature = 2 }},
  {{ byte_offset = 15, type = "f32", count = 2, channel = "B", feature = 0 }},
  {{ byte_offset = 23, type = "f64", channel = "B", feature = 2 }},
  {{ byte_offset = 31, type = "i64", channel = "B", feature = 3, scale = 0.001 }},
]
[[packet]]
apid = 200
parameter = [
  {{ byte_offset = 0, type = "i8", channel = "C", feature = 0 }},
  {{ byte_offset = 1, type = "u16", byte_order = "little", channel = "C", feature = 1 }},
  {{ byte_offset = 3, type = "i32", channel = "C", feature = 2, offset = -1.0 }},
  {{ byte_offset = 7, type = "u64", channel = "C", feature = 3 }},
]
"#,
        device.display()
    )
}

/// Decoded samples: channel, values, time stamp.
type Got = Vec<(String, Vec<f32>, Option<i64>)>;

/// Packet `i` of APID 100 and the samples it must decode to.
fn packet_100(i: u64, seq: u64) -> (Value, Got) {
    let t = 1_700_000_000_000_000_000 + i as i64 * 1_000_000;
    let (u8v, i16v, u32v) = (200 - i, -300 + 7 * i as i64, 70_000 + i);
    let (f1, f2, f64v, i64v) = (1.25 * i as f64, -0.5, 1e10 + i as f64, -123_456 - i as i64);
    let item = json!({"apid": 100, "seq": seq, "crc": true, "fields": [
        ["u64", t, "big"], ["u8", u8v, "big"], ["i16", i16v, "big"], ["u32", u32v, "little"],
        ["f32", f1, "big"], ["f32", f2, "big"], ["f64", f64v, "big"], ["i64", i64v, "big"],
    ]});
    let samples = vec![
        (
            "A".to_string(),
            vec![u8v as f32, (i16v as f64 * 0.5 + 10.0) as f32, u32v as f32],
            Some(t),
        ),
        (
            "B".to_string(),
            vec![
                f1 as f32,
                f2 as f32,
                f64v as f32,
                (i64v as f64 * 0.001) as f32,
            ],
            Some(t),
        ),
    ];
    (item, samples)
}

/// Packet of APID 200 (no CRC, no time field) and its sample's values.
fn packet_200(seq: u64) -> (Value, Vec<f32>) {
    let item = json!({"apid": 200, "seq": seq, "fields": [
        ["i8", -5, "big"], ["u16", 65_000, "little"], ["i32", -2_000_000_000, "big"], ["u64", 1u64 << 40, "big"],
    ]});
    (
        item,
        vec![-5.0, 65_000.0, -2_000_000_001.0, (1u64 << 40) as f32],
    )
}

fn values(link: &Link) -> Got {
    link.samples()
        .into_iter()
        .map(|(c, s)| (c.to_string(), s.values, s.t_ns))
        .collect()
}

#[test]
fn space_packets_from_an_independent_encoder_decode_to_the_right_values() {
    if !python_available() {
        return;
    }
    for framing in ["kiss", "slip", "cobs"] {
        let Some(socat) = Socat::start() else { return };
        let link = Link::start(&mission(&socat.device(), framing, ""));
        let mut items = Vec::new();
        let mut want: Got = Vec::new();
        let mut want_c = Vec::new();
        for i in 0..20u64 {
            let (item, samples) = packet_100(i, (16_380 + i) % 16_384); // the count wraps
            items.push(item);
            want.extend(samples);
            if i % 5 == 0 {
                let (item, c) = packet_200(i / 5);
                items.push(item);
                want_c.push(c);
            }
        }
        items.push(json!({"apid": 300, "seq": 0, "fields": [["u8", 1, "big"]]}));
        items.push(json!({"apid": 2047, "seq": 0, "fields": [["u8", 0, "big"]]}));
        let frames = encode(framing, &items);
        let mut peer = socat.peer();
        for f in &frames {
            peer.write_all(f).unwrap();
        }
        // The link counts a frame before its samples and rejects reach the
        // recorder through the source's channel: wait for the last of them
        // too (the unknown APID's reject comes after every sample).
        assert!(
            link.wait_until(GUARD, |l| l.stats.frames.load(Relaxed)
                == frames.len() as u64
                && !l.rejects().is_empty()),
            "{framing}: {}",
            link.status()
        );
        let got = values(&link);
        let (got_c, got_ab): (Got, Got) = got.into_iter().partition(|(c, _, _)| c == "C");
        assert_eq!(got_ab, want, "{framing}");
        assert_eq!(
            got_c.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
            want_c,
            "{framing}"
        );
        // Without a time field, samples carry the receive time, strictly increasing.
        assert!(got_c.windows(2).all(|w| w[0].2 < w[1].2), "{framing}");
        let s = &link.stats;
        assert_eq!(s.unknown_apid.load(Relaxed), 1, "{framing}");
        assert_eq!(s.idle.load(Relaxed), 1, "{framing}");
        assert_eq!(s.apids[0].packets.load(Relaxed), 20, "{framing}");
        assert_eq!(s.apids[1].packets.load(Relaxed), 4, "{framing}");
        assert_eq!(
            s.apids[0].gaps.load(Relaxed),
            0,
            "{framing}: wrap is no gap"
        );
        assert_eq!(s.crc_errors(), 0, "{framing}");
        assert_eq!(s.resyncs.load(Relaxed), 0, "{framing}");
        let rejects = link.rejects();
        assert_eq!(rejects.len(), 1, "{framing}: {rejects:?}");
        assert_eq!(rejects[0].reason, RejectReason::UnknownChannel);
        assert!(rejects[0].detail.contains("apid 300"), "{rejects:?}");
        link.stop();
    }
}

#[test]
fn noise_truncation_oversize_crc_and_sequence_faults_are_skipped_and_counted() {
    if !python_available() {
        return;
    }
    // Fixed noise with every delimiter and escape byte in it.
    let noise: Vec<u8> = (0..97u32)
        .map(|i| match i % 11 {
            0 => 0xC0,
            3 => 0xDB,
            7 => 0x00,
            _ => (i.wrapping_mul(2_654_435_761) >> 13) as u8,
        })
        .collect();
    for framing in ["kiss", "slip", "cobs"] {
        let Some(socat) = Socat::start() else { return };
        let link = Link::start(&mission(&socat.device(), framing, ""));
        let good: Vec<(Value, Got)> = (0..6).map(|i| packet_100(i, i + (i >= 4) as u64)).collect();
        let mut items: Vec<Value> = good.iter().map(|g| g.0.clone()).collect();
        // 6: packet 5 with its CRC broken (sent before the good one); 7: a
        // repeat of packet 5's count; 8: longer than max_frame_bytes (128).
        let mut corrupt = encode_packet(&good[5].0);
        corrupt[12] ^= 0x01;
        items.push(json!({"raw": hex(&corrupt)}));
        items.push(packet_100(9, 6).0);
        let big: Vec<Value> = (0..40).map(|_| json!(["f32", 1.0, "big"])).collect();
        items.push(json!({"apid": 200, "seq": 9, "fields": big}));
        let frames = encode(framing, &items);
        let mut wire = Vec::new();
        wire.extend_from_slice(&frames[0]);
        wire.extend_from_slice(&noise);
        wire.extend_from_slice(&frames[1]);
        wire.extend_from_slice(&frames[2][..frames[2].len() / 2]); // truncated: the rest never comes
        for i in [3, 4, 6, 5, 7, 8] {
            wire.extend_from_slice(&frames[i]);
            wire.extend_from_slice(&noise[..13]);
        }
        let mut peer = socat.peer();
        // Odd-sized writes, so frames straddle reads.
        for chunk in wire.chunks(37) {
            peer.write_all(chunk).unwrap();
        }
        let want: Got = [0, 1, 3, 4, 5]
            .iter()
            .flat_map(|&i| good[i].1.clone())
            .collect();
        assert!(
            link.wait_until(GUARD, |l| l.samples().len() >= want.len()
                && l.stats.bytes.load(Relaxed) == wire.len() as u64),
            "{framing}: {}",
            link.status()
        );
        assert_eq!(values(&link), want, "{framing}");
        let s = &link.stats;
        let apid = &s.apids[0];
        assert_eq!(
            apid.crc_errors.load(Relaxed),
            1,
            "{framing}: {}",
            link.status()
        );
        assert_eq!(apid.repeats.load(Relaxed), 1, "{framing}");
        // Count 2 was truncated and count 5 (packet 4 sent as 5) skipped:
        // 1 → 3 and 3 → 5 are gaps, the repeat of 6 is not.
        assert_eq!(apid.gaps.load(Relaxed), 2, "{framing}");
        assert_eq!(s.oversized.load(Relaxed), 1, "{framing}");
        let errors: u64 = s.packet_errors.iter().map(|c| c.load(Relaxed)).sum();
        assert!(
            s.resyncs.load(Relaxed) + errors >= 3,
            "{framing}: noise and truncation counted: {}",
            link.status()
        );
        let reasons: Vec<RejectReason> = link.rejects().iter().map(|r| r.reason).collect();
        for r in [
            RejectReason::Oversized,
            RejectReason::Duplicate,
            RejectReason::Malformed,
        ] {
            assert!(reasons.contains(&r), "{framing}: {r:?} not in {reasons:?}");
        }
        link.stop();
    }
}

fn encode_packet(item: &Value) -> Vec<u8> {
    // The packet alone: framed as a line, minus the newline.
    let mut f = encode("line", std::slice::from_ref(item)).remove(0);
    f.pop();
    f
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn json_lines_on_line_framing() {
    if !python_available() {
        return;
    }
    let Some(socat) = Socat::start() else { return };
    let config = format!(
        "device = \"{}\"\nframing = \"line\"\npayload = \"json\"\nchannel = \"L\"\nmax_frame_bytes = 100\n",
        socat.device().display()
    );
    let link = Link::start(&config);
    let items = vec![
        json!({"json": {"t": 5, "v": [1.5, -2.0]}}),
        json!({"json": {"v": [3.0, 4.0]}}),
        json!({"json": {"t": 7, "v": vec![0.25; 40]}}), // over 100 bytes
        json!({"json": {"t": 8, "v": [5.0, 6.0], "bogus": 1}}),
        json!({"json": {"t": 9, "v": [7.0, 8.0]}}),
    ];
    let frames = encode("line", &items);
    let mut peer = socat.peer();
    for f in &frames {
        peer.write_all(f).unwrap();
    }
    peer.write_all(b"not json\r\n").unwrap();
    assert!(
        link.wait_until(GUARD, |l| l.rejects().len() >= 3),
        "{}",
        link.status()
    );
    let got = values(&link);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].1.clone(), got[0].2), (vec![1.5, -2.0], Some(5)));
    assert_eq!(got[1].1, vec![3.0, 4.0]);
    assert!(
        got[1].2.unwrap() > 1_600_000_000_000_000_000,
        "receive time"
    );
    assert_eq!((got[2].1.clone(), got[2].2), (vec![7.0, 8.0], Some(9)));
    let mut reasons: Vec<&str> = link.rejects().iter().map(|r| r.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, vec!["malformed", "malformed", "oversized"]);
    link.stop();
}

#[test]
fn the_link_comes_back_when_the_device_does() {
    if !python_available() {
        return;
    }
    let Some(mut socat) = Socat::start() else {
        return;
    };
    let link = Link::start(&mission(&socat.device(), "kiss", ""));
    let send = |socat: &Socat, i: u64| {
        let frames = encode("kiss", &[packet_100(i, i).0]);
        socat.peer().write_all(&frames[0]).unwrap();
    };
    assert!(link.wait_until(GUARD, |l| l.stats.link_up.load(Relaxed)));
    send(&socat, 0);
    assert!(
        link.wait_until(GUARD, |l| l.samples().len() == 2),
        "{}",
        link.status()
    );

    // Unplug: the pty pair disappears, link path and all.
    socat.stop();
    assert!(
        link.wait_until(GUARD, |l| !l.stats.link_up.load(Relaxed)
            && l.stats.losses.load(Relaxed) == 1),
        "{}",
        link.status()
    );
    // It keeps trying while the device is missing...
    assert!(link.wait_until(GUARD, |l| l.status()["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("cannot open"))));
    // ...and is back once the device is, on the same path.
    socat.restart();
    assert!(
        link.wait_until(GUARD, |l| l.stats.link_up.load(Relaxed)
            && l.stats.opens.load(Relaxed) == 2),
        "{}",
        link.status()
    );
    send(&socat, 2);
    assert!(
        link.wait_until(GUARD, |l| l.samples().len() == 4),
        "{}",
        link.status()
    );
    // The packet lost while unplugged shows as a gap.
    assert_eq!(link.stats.apids[0].gaps.load(Relaxed), 1);
    let status = link.status();
    assert_eq!(status["link"], "up");
    assert_eq!(status["link_losses"], 1);
    link.stop();
}

/// The example pipeline fed by a serial link carrying space packets.
fn e2e_config(dir: &Path, broker: u16, status: u16, device: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/gsinfer.example.toml")).unwrap();
    let mut text = common::gsinfer::any_grpc_port(&common::gsinfer::counting_example(&example))
        .replace("port = 1883", &format!("port = {broker}"))
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{status}\""),
        )
        .replace(
            "path = \"../model_repository\"",
            &format!(
                "path = {:?}",
                root.join("model_repository").display().to_string()
            ),
        )
        .replace(
            "client_id = \"gsinfer\"",
            "client_id = \"gsinfer-serial-e2e\"",
        )
        .replace("score_qos = 0", "score_qos = 1")
        .replace("queue_capacity = 4096", "queue_capacity = 16384");
    text.push_str(&format!(
        r#"
[[serial]]
name = "modem"
device = "{}"
framing = "kiss"
payload = "ccsds"
model = "smap_lstm"

[[serial.packet]]
apid = 100
crc = true
time = {{ byte_offset = 0, type = "i64", unit = "ns" }}
parameter = [ {{ byte_offset = 8, type = "f32", count = 25, channel = "S-1", feature = 0 }} ]
"#,
        device.display()
    ));
    let path = dir.join("gsinfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_smap_channel_replayed_as_space_packets_over_a_pty_scores_like_eval() {
    if !mosquitto_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let Some(socat) = Socat::start() else { return };
    let bin = env!("CARGO_BIN_EXE_gsinfer");
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let status_port = serial_support::free_port();
    let config = e2e_config(dir.path(), broker.port, status_port, &socat.device());

    let eval = Command::new(bin)
        .args(["eval", "--json", "--channel", "S-1", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let want: BTreeMap<u64, f64> = String::from_utf8(eval.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "score")
        .map(|v| (v["index"].as_u64().unwrap(), v["score"].as_f64().unwrap()))
        .collect();
    assert!(want.len() > 1000);

    let sub = Subscriber::start(broker.port, &["gsinfer/#"]);
    let _service = serial_support::Service::spawn(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("STATE_DIRECTORY", config.parent().unwrap()),
    );
    assert!(
        serial_support::wait(GUARD, || serial_support::http_get(status_port, "/readyz")
            .is_some_and(|(s, _)| s == 200)),
        "service never became ready"
    );
    // Hold the writing end open, so socat keeps the link up after replay closes it.
    let _peer = socat.peer();
    let replay = Command::new(bin)
        .args(["replay", "--fast", "--channel", "S-1", "--serial"])
        .arg(socat.peer_path())
        .args([
            "--framing",
            "kiss",
            "--payload",
            "ccsds",
            "--apid",
            "100",
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(replay.success(), "replay failed");

    let topic = "gsinfer/smap_lstm/S-1/score";
    let complete = sub.wait_for(
        |m| m.iter().filter(|(t, _)| t == topic).count() >= want.len(),
        GUARD * 2,
    );
    let got: BTreeMap<u64, f64> = sub
        .snapshot()
        .iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| {
            let v: Value = serde_json::from_slice(p).unwrap();
            (v["index"].as_u64().unwrap(), v["score"].as_f64().unwrap())
        })
        .collect();
    let (_, status) = serial_support::http_get(status_port, "/api/status").unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert!(
        complete,
        "received {} of {} scores; {}",
        got.len(),
        want.len(),
        status["sources"]
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (index, w) in &want {
        let g = got[index];
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "index {index}: {g} vs {w}"
        );
    }

    let rows = gsinfer::eval::read_channel(&data, "test", "S-1")
        .unwrap()
        .len() as u64;
    let link = &status["sources"][0];
    assert_eq!(link["name"], "modem");
    assert_eq!(link["link"], "up");
    assert_eq!(link["frames"], rows);
    assert_eq!(link["crc_errors"], 0);
    assert_eq!(link["apids"][0]["packets"], rows);
    assert_eq!(link["apids"][0]["sequence_gaps"], 0);
    let (_, metrics) = serial_support::http_get(status_port, "/metrics").unwrap();
    for line in [
        "gsinfer_serial_link_up{source=\"modem\"} 1".to_string(),
        format!("gsinfer_serial_frames_total{{source=\"modem\"}} {rows}"),
        format!("gsinfer_serial_packets_total{{source=\"modem\",apid=\"100\"}} {rows}"),
        "gsinfer_serial_crc_errors_total{source=\"modem\",apid=\"100\"} 0".to_string(),
    ] {
        assert!(
            metrics.contains(&line),
            "missing `{line}` in /metrics:\n{metrics}"
        );
    }
}
