//! The binary telemetry payload decoder (`ingest::decode`, format `f32le`)
//! on arbitrary bytes. The first byte picks the limits (features 0 to 7,
//! max_samples 0 to 15); the rest is the MQTT payload. Checks: a payload
//! that is not whole records, or has too many, is one reject; otherwise
//! every record is kept or rejected, a record is rejected exactly when a
//! value is NaN or infinite, and the kept samples, written back as
//! records, are the payload's records byte for byte.
#![no_main]

use gsinfer::ingest::decode::{decode, DecodeLimits, PayloadFormat, RejectReason};
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
    let d = decode(PayloadFormat::F32Le, payload, &limits);
    let record = 8 + 4 * limits.features;
    if payload.len() > limits.max_payload_bytes || payload.len() % record != 0 {
        assert!(d.samples.is_empty() && d.rejects.len() == 1, "{d:?}");
        return;
    }
    let records: Vec<&[u8]> = payload.chunks_exact(record).collect();
    if records.len() > limits.max_samples {
        assert!(d.samples.is_empty() && d.rejects.len() == 1, "{d:?}");
        assert_eq!(d.rejects[0].reason, RejectReason::Oversized);
        return;
    }
    let finite: Vec<&[u8]> = records
        .iter()
        .copied()
        .filter(|r| {
            r[8..]
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite())
        })
        .collect();
    assert_eq!(d.samples.len(), finite.len(), "{d:?}");
    assert_eq!(d.rejects.len(), records.len() - finite.len(), "{d:?}");
    assert!(d
        .rejects
        .iter()
        .all(|r| r.reason == RejectReason::NonFinite));
    for (s, r) in d.samples.iter().zip(finite) {
        let mut again = s
            .t_ns
            .expect("f32le records carry t")
            .to_le_bytes()
            .to_vec();
        for v in &s.values {
            again.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(again, r);
        assert_eq!(s.seq, None);
    }
});
