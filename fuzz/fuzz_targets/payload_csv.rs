//! The CSV telemetry payload decoder (`ingest::decode`, format `csv`) on
//! arbitrary bytes. The first byte picks the limits (features 0 to 7,
//! max_samples 0 to 15); the rest is the MQTT payload. Checks: every
//! sample has `features` finite values; every non-blank, non-comment line
//! is either kept or rejected (one reject in all when there are too many);
//! and the kept samples, written back as CSV lines, decode to the same
//! samples, bit for bit.
#![no_main]

use gsinfer::ingest::decode::{decode, DecodeLimits, PayloadFormat, RawSample, RejectReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let limits = DecodeLimits {
        max_payload_bytes: 2048,
        max_samples: usize::from(pick >> 4),
        features: usize::from(pick & 7),
    };
    let d = decode(PayloadFormat::Csv, payload, &limits);
    for s in &d.samples {
        assert_eq!(s.values.len(), limits.features);
        assert!(s.values.iter().all(|v| v.is_finite()), "{s:?}");
        assert_eq!(s.seq, None);
    }
    let lines = payload
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .count();
    let oversized = d
        .rejects
        .iter()
        .any(|r| r.reason == RejectReason::Oversized);
    if payload.len() > limits.max_payload_bytes || lines > limits.max_samples {
        assert!(
            oversized && d.samples.is_empty() && d.rejects.len() == 1,
            "{d:?}"
        );
    } else {
        assert_eq!(
            d.samples.len() + d.rejects.len(),
            lines,
            "one sample or reject per line: {d:?}"
        );
    }

    // Round trip through the documented format.
    let mut text = String::from("# t,v0,v1,...\r\n");
    for s in &d.samples {
        if let Some(t) = s.t_ns {
            text.push_str(&t.to_string());
        }
        for v in &s.values {
            text.push_str(&format!(", {v}"));
        }
        text.push('\n');
    }
    let wide = DecodeLimits {
        max_payload_bytes: usize::MAX,
        max_samples: usize::MAX,
        ..limits
    };
    let again = decode(PayloadFormat::Csv, text.as_bytes(), &wide);
    assert!(again.rejects.is_empty(), "{text:?}: {:?}", again.rejects);
    assert_eq!(bits(&again.samples), bits(&d.samples), "{text:?}");
});

fn bits(samples: &[RawSample]) -> Vec<(Option<i64>, Vec<u32>)> {
    samples
        .iter()
        .map(|s| (s.t_ns, s.values.iter().map(|v| v.to_bits()).collect()))
        .collect()
}
