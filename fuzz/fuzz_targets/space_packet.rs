//! The whole serial decoder (KISS deframer, space-packet checks, sequence
//! tracking, mission database) on arbitrary bytes. The input's first byte
//! picks the framing, the rest is the link's byte stream: it must never
//! panic, and every sample must have the channel's number of values.
#![no_main]

use std::sync::Arc;

use gsinfer::ingest::decode::DecodeLimits;
use gsinfer::ingest::serial::{DecodedBatch, SerialConfig, SerialDecoder, SerialStats};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
device = "/dev/null"
framing = "kiss"
max_frame_bytes = 200
[[packet]]
apid = 1
crc = true
time = { byte_offset = 0, type = "f64", unit = "s", epoch_ns = -1000 }
parameter = [
  { byte_offset = 8, type = "i16", count = 3, channel = "a", scale = 0.1 },
  { byte_offset = 14, type = "u64", byte_order = "little", channel = "b" },
]
[[packet]]
apid = 2
secondary_header_bytes = 3
parameter = [ { byte_offset = 0, type = "f32", channel = "c" } ]
"#;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let framing = ["kiss", "slip", "cobs", "line"][usize::from(pick % 4)];
    let text = CONFIG.replace("\"kiss\"", &format!("{framing:?}"));
    let config: SerialConfig = toml::from_str(&text).unwrap();
    let stats = Arc::new(SerialStats::new(&config));
    let mut d = SerialDecoder::new(&config, DecodeLimits::new(3), stats);
    let mut out = DecodedBatch::default();
    for chunk in input.chunks(usize::from(pick / 4).max(1)) {
        d.push(chunk, 1_000, &mut out);
    }
    for (channel, s) in &out.samples {
        let want = match &**channel {
            "a" => 3,
            _ => 1,
        };
        assert_eq!(s.values.len(), want);
        assert!(s.t_ns.is_some());
    }
});
