//! The JSON telemetry payload decoder (`ingest::decode`, format `json`) on
//! arbitrary bytes. The first byte picks the limits (features 0 to 7,
//! max_samples 0 to 15); the rest is the MQTT payload. Checks: every
//! sample has `features` finite values; every sample of the payload is
//! either kept or rejected (one reject in all for a payload that is not
//! JSON or has too many samples); and the kept samples, written back as
//! JSON, decode to the same samples, bit for bit.
#![no_main]

use gsinfer::ingest::decode::{decode, DecodeLimits, PayloadFormat, RawSample, RejectReason};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let limits = DecodeLimits {
        max_payload_bytes: 2048,
        max_samples: usize::from(pick >> 4),
        features: usize::from(pick & 7),
    };
    let d = decode(PayloadFormat::Json, payload, &limits);
    for s in &d.samples {
        assert_eq!(s.values.len(), limits.features);
        assert!(s.values.iter().all(|v| v.is_finite()), "{s:?}");
    }
    let total = d.samples.len() + d.rejects.len();
    let oversized = d
        .rejects
        .iter()
        .any(|r| r.reason == RejectReason::Oversized);
    if oversized || payload.len() > limits.max_payload_bytes {
        assert!(d.samples.is_empty() && d.rejects.len() == 1, "{d:?}");
    } else if let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(payload) {
        assert_eq!(
            total,
            items.len(),
            "one sample or reject per batch item: {d:?}"
        );
        assert!(items.len() <= limits.max_samples);
    } else {
        assert_eq!(total, 1, "one sample or one reject: {d:?}");
    }
    assert!(d.samples.len() <= limits.max_samples.max(1));
    assert!(d.rejects.iter().all(|r| !r.detail.is_empty()));

    // Round trip through the documented format.
    let text = serde_json::to_string(&d.samples.iter().map(to_json).collect::<Vec<_>>()).unwrap();
    let wide = DecodeLimits {
        max_payload_bytes: usize::MAX,
        max_samples: usize::MAX,
        ..limits
    };
    let again = decode(PayloadFormat::Json, text.as_bytes(), &wide);
    assert!(again.rejects.is_empty(), "{text}: {:?}", again.rejects);
    assert_eq!(bits(&again.samples), bits(&d.samples), "{text}");
});

fn to_json(s: &RawSample) -> serde_json::Value {
    let mut v = serde_json::json!({ "v": s.values });
    if let Some(t) = s.t_ns {
        v["t"] = t.into();
    }
    if let Some(seq) = s.seq {
        v["seq"] = seq.into();
    }
    v
}

fn bits(samples: &[RawSample]) -> Vec<(Option<i64>, Option<u64>, Vec<u32>)> {
    samples
        .iter()
        .map(|s| {
            (
                s.t_ns,
                s.seq,
                s.values.iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}
