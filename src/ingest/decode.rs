//! Telemetry payload decoding: one MQTT message in, timestamped samples and
//! per-sample rejects out.
//!
//! This is the first stage that touches untrusted bytes, and it runs once per
//! message (tens of thousands per second), so it is strict, bounded and never
//! fails as a whole: bad input becomes [`Reject`]s that the caller counts by
//! [`RejectReason`], and the good samples of the same payload are kept.
//!
//! Formats ([`PayloadFormat`]); `t` is always nanoseconds since the Unix
//! epoch (UTC), given as an integer or as an RFC 3339 string with offset:
//!
//! - `json`: one sample `{"t": 1700000000000000000, "seq": 7, "v": [0.1, 2.0]}`
//!   or a batch `[{...}, {...}]`. `t` and `seq` are optional (`t` absent or
//!   `null`: the caller stamps the receive time); any other key rejects the
//!   sample, so a typo such as `"val"` is caught rather than ignored.
//! - `csv`: lines `t,v0,v1,...`; `t` may be empty; fields may be padded with
//!   spaces; no quoting; blank lines and lines starting with `#` are skipped
//!   (so a header must be a `#` comment); `\n` or `\r\n` line ends.
//! - `f32le`: concatenated records of `t` (i64, little-endian, ns) followed by
//!   `features` × f32 little-endian; no padding, no header.
//!
//! Reject details name where the problem is: `sample i of n` (JSON batch,
//! 0-based like the array index), `line n` (CSV, 1-based like an editor),
//! `record i of n` (f32le, 0-based), and `value j` (0-based index into `v`).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

mod json;

/// Default [`DecodeLimits::max_payload_bytes`]: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Default [`DecodeLimits::max_samples`]: 10 000 samples per payload.
pub const DEFAULT_MAX_SAMPLES: usize = 10_000;

/// Bytes of the `t` field that starts each `f32le` record.
const F32LE_T_BYTES: usize = 8;
/// Bytes of one value in an `f32le` record.
const F32LE_VALUE_BYTES: usize = 4;

/// How a telemetry payload is encoded; configured per subscription.
///
/// Serialized as `"json"`, `"csv"` or `"f32le"`; the default is `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A JSON sample object or a JSON array of them (a batch).
    #[default]
    Json,
    /// CSV lines `t,v0,v1,...`, one sample per line.
    Csv,
    /// Binary records: i64 LE `t` in ns, then `features` × f32 LE.
    F32Le,
}

/// One decoded sample of one channel, before windowing.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    /// Sample time in ns since the Unix epoch (UTC); `None` when the payload
    /// gave none and the caller must stamp the receive time.
    pub t_ns: Option<i64>,
    /// The publisher's sequence number, passed through unchecked (JSON only).
    pub seq: Option<u64>,
    /// Feature values; exactly [`DecodeLimits::features`] long and all finite.
    pub values: Vec<f32>,
}

/// Why a sample or payload was rejected; every reason has its own counter.
///
/// [`decode`] produces `Malformed`, `Oversized`, `NonFinite` and
/// `WrongLength`; later stages (windowing, routing) produce the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The payload or sample cannot be parsed in the configured format.
    Malformed,
    /// The payload exceeds `max_payload_bytes` or `max_samples`.
    Oversized,
    /// A value is NaN or ±infinity (including JSON numbers beyond f32 range).
    NonFinite,
    /// A sample has a different number of values than the channel's features.
    WrongLength,
    /// A sample's time is not after the channel's last accepted sample.
    OutOfOrder,
    /// The topic or APID maps to no configured channel.
    UnknownChannel,
    /// A sample repeats one already accepted (same time or sequence number).
    Duplicate,
    /// The pipeline's model failed to load (the status page says why).
    ModelUnavailable,
}

impl RejectReason {
    /// Every reason, in declaration order (for registering counters up front).
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Malformed,
        RejectReason::Oversized,
        RejectReason::NonFinite,
        RejectReason::WrongLength,
        RejectReason::OutOfOrder,
        RejectReason::UnknownChannel,
        RejectReason::Duplicate,
        RejectReason::ModelUnavailable,
    ];

    /// The stable snake_case name used in metrics labels and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Oversized => "oversized",
            RejectReason::NonFinite => "non_finite",
            RejectReason::WrongLength => "wrong_length",
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::UnknownChannel => "unknown_channel",
            RejectReason::Duplicate => "duplicate",
            RejectReason::ModelUnavailable => "model_unavailable",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected sample or payload: a reason to count and a detail to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Reject {
    /// What kind of problem (the counter to bump).
    pub reason: RejectReason,
    /// Lowercase, specific description, e.g. `sample 3 of 10: value 7 is NaN`.
    pub detail: String,
}

impl Reject {
    /// A reject with the given reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Reject {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

/// Size limits and the expected sample shape for one channel's payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted payload in bytes; default [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub max_payload_bytes: usize,
    /// Most samples (good or bad) in one payload; default [`DEFAULT_MAX_SAMPLES`].
    pub max_samples: usize,
    /// Values per sample the channel's model expects (the `v` length).
    pub features: usize,
}

impl DecodeLimits {
    /// Default limits for samples of `features` values.
    pub fn new(features: usize) -> DecodeLimits {
        DecodeLimits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_samples: DEFAULT_MAX_SAMPLES,
            features,
        }
    }
}

/// The result of decoding one payload: good samples in payload order, and
/// one reject per bad sample (or a single reject for a bad payload).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Accepted samples, in the order they appear in the payload.
    pub samples: Vec<RawSample>,
    /// Rejected samples or payload, in payload order.
    pub rejects: Vec<Reject>,
}

impl Decoded {
    fn rejected(reason: RejectReason, detail: String) -> Decoded {
        Decoded {
            samples: Vec::new(),
            rejects: vec![Reject::new(reason, detail)],
        }
    }

    fn reject(&mut self, at: At, reason: RejectReason, detail: impl fmt::Display) {
        self.rejects
            .push(Reject::new(reason, format!("{at}{detail}")));
    }

    /// Keeps `sample` if it has `features` finite values, rejects it otherwise.
    fn check(&mut self, at: At, sample: RawSample, features: usize) {
        let n = sample.values.len();
        if n != features {
            let detail = format!("{n} values, expected {features} (features)");
            self.reject(at, RejectReason::WrongLength, detail);
        } else if let Some((j, x)) = sample
            .values
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite())
        {
            let what = if x.is_nan() {
                "NaN"
            } else if *x > 0.0 {
                "+inf (f32 range is ±3.4e38)"
            } else {
                "-inf (f32 range is ±3.4e38)"
            };
            self.reject(
                at,
                RejectReason::NonFinite,
                format_args!("value {j} is {what}"),
            );
        } else {
            self.samples.push(sample);
        }
    }
}

/// Where in a payload a reject happened; displays as the detail's prefix.
#[derive(Clone, Copy)]
enum At {
    Payload,
    Sample(usize, usize),
    Line(usize),
    Record(usize, usize),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Payload => Ok(()),
            At::Sample(i, n) => write!(f, "sample {i} of {n}: "),
            At::Line(n) => write!(f, "line {n}: "),
            At::Record(i, n) => write!(f, "record {i} of {n}: "),
        }
    }
}

/// Decodes one payload. Never fails as a whole: problems are in
/// [`Decoded::rejects`]. A payload over `max_payload_bytes` or with more than
/// `max_samples` samples yields one `Oversized` reject and no samples; one
/// that cannot be parsed at all yields one `Malformed` reject.
pub fn decode(format: PayloadFormat, payload: &[u8], limits: &DecodeLimits) -> Decoded {
    if payload.len() > limits.max_payload_bytes {
        let detail = format!(
            "payload is {} bytes, over the {}-byte limit (max_payload_bytes)",
            payload.len(),
            limits.max_payload_bytes
        );
        return Decoded::rejected(RejectReason::Oversized, detail);
    }
    match format {
        PayloadFormat::Json => json::decode_json(payload, limits),
        PayloadFormat::Csv => decode_csv(payload, limits),
        PayloadFormat::F32Le => decode_f32le(payload, limits),
    }
}

fn too_many(limits: &DecodeLimits) -> Decoded {
    let detail = format!(
        "more than {} samples in one payload (max_samples)",
        limits.max_samples
    );
    Decoded::rejected(RejectReason::Oversized, detail)
}

/// Parses `t` given as an RFC 3339 string into ns since the Unix epoch.
fn parse_rfc3339_ns(s: &str) -> Result<i64, String> {
    let at =
        OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("t {s:?} is not rfc 3339 ({e})"))?;
    i64::try_from(at.unix_timestamp_nanos())
        .map_err(|_| format!("t {s:?} is outside the i64 ns range (years 1677 to 2262)"))
}

// ---- CSV -------------------------------------------------------------------

fn decode_csv(payload: &[u8], limits: &DecodeLimits) -> Decoded {
    let mut out = Decoded::default();
    let mut count = 0;
    for (i, line) in payload.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        count += 1;
        if count > limits.max_samples {
            return too_many(limits);
        }
        let at = At::Line(i + 1);
        let parsed = std::str::from_utf8(line)
            .map_err(|e| format!("not valid utf-8 ({e})"))
            .and_then(|line| parse_csv_line(line, limits.features));
        match parsed {
            Ok(sample) => out.check(at, sample, limits.features),
            Err(detail) => out.reject(at, RejectReason::Malformed, detail),
        }
    }
    out
}

fn parse_csv_line(line: &str, features: usize) -> Result<RawSample, String> {
    let mut fields = line.split(',');
    // ASCII whitespace only, as the line itself is trimmed: a line of
    // Unicode spaces (U+00A0) is not a sample without time or values.
    let t = fields.next().unwrap_or_default().trim_ascii();
    let t_ns = if t.is_empty() {
        None
    } else if let Ok(ns) = t.parse::<i64>() {
        Some(ns)
    } else {
        Some(parse_rfc3339_ns(t).map_err(|e| format!("{e}; t must be integer ns or rfc 3339"))?)
    };
    let mut values = Vec::with_capacity(features);
    for (j, field) in fields.enumerate() {
        let field = field.trim_ascii();
        // f32's parser also reads "NaN" and "inf": those are rejected later as non-finite.
        let x = field
            .parse::<f32>()
            .map_err(|_| format!("value {j} {field:?} is not a number"))?;
        values.push(x);
    }
    Ok(RawSample {
        t_ns,
        seq: None,
        values,
    })
}

// ---- f32le -----------------------------------------------------------------

fn decode_f32le(payload: &[u8], limits: &DecodeLimits) -> Decoded {
    let record = F32LE_T_BYTES + F32LE_VALUE_BYTES * limits.features;
    if !payload.len().is_multiple_of(record) {
        let detail = format!(
            "payload is {} bytes, not a whole number of {record}-byte records \
             (i64 t + {} f32 values); check the channel's features",
            payload.len(),
            limits.features
        );
        return Decoded::rejected(RejectReason::Malformed, detail);
    }
    let n = payload.len() / record;
    if n > limits.max_samples {
        return too_many(limits);
    }
    let mut out = Decoded {
        samples: Vec::with_capacity(n),
        rejects: Vec::new(),
    };
    for (i, rec) in payload.chunks_exact(record).enumerate() {
        let (t, rest) = rec
            .split_first_chunk::<F32LE_T_BYTES>()
            .expect("record holds t");
        let values = rest
            .as_chunks::<F32LE_VALUE_BYTES>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect();
        let sample = RawSample {
            t_ns: Some(i64::from_le_bytes(*t)),
            seq: None,
            values,
        };
        out.check(At::Record(i, n), sample, limits.features);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectReason::*;

    pub(super) const T0: i64 = 1_700_000_000_000_000_000;

    pub(super) fn limits(features: usize) -> DecodeLimits {
        DecodeLimits::new(features)
    }

    pub(super) fn json(payload: &str, features: usize) -> Decoded {
        decode(PayloadFormat::Json, payload.as_bytes(), &limits(features))
    }

    pub(super) fn csv(payload: &str, features: usize) -> Decoded {
        decode(PayloadFormat::Csv, payload.as_bytes(), &limits(features))
    }

    pub(super) fn sample(t_ns: Option<i64>, values: &[f32]) -> RawSample {
        RawSample {
            t_ns,
            seq: None,
            values: values.to_vec(),
        }
    }

    pub(super) fn reasons(d: &Decoded) -> Vec<RejectReason> {
        d.rejects.iter().map(|r| r.reason).collect()
    }

    pub(super) fn only_reject(d: &Decoded) -> &Reject {
        assert!(d.samples.is_empty(), "unexpected samples: {:?}", d.samples);
        assert_eq!(d.rejects.len(), 1, "rejects: {:?}", d.rejects);
        &d.rejects[0]
    }

    pub(super) fn f32le(records: &[(i64, &[f32])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, values) in records {
            out.extend_from_slice(&t.to_le_bytes());
            for v in *values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn payload_format_names_and_default() {
        for (format, name) in [
            (PayloadFormat::Json, "\"json\""),
            (PayloadFormat::Csv, "\"csv\""),
            (PayloadFormat::F32Le, "\"f32le\""),
        ] {
            assert_eq!(serde_json::to_string(&format).unwrap(), name);
            assert_eq!(serde_json::from_str::<PayloadFormat>(name).unwrap(), format);
        }
        assert_eq!(PayloadFormat::default(), PayloadFormat::Json);
        assert!(serde_json::from_str::<PayloadFormat>("\"F32LE\"").is_err());
    }

    #[test]
    fn reject_reasons_have_stable_unique_names() {
        let names: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "malformed",
                "oversized",
                "non_finite",
                "wrong_length",
                "out_of_order",
                "unknown_channel",
                "duplicate",
                "model_unavailable"
            ]
        );
        for r in RejectReason::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
            assert_eq!(r.to_string(), r.as_str());
        }
        let reject = Reject::new(NonFinite, "sample 3 of 10: value 7 is NaN");
        assert_eq!(
            reject.to_string(),
            "non_finite: sample 3 of 10: value 7 is NaN"
        );
    }

    #[test]
    fn max_payload_bytes_applies_to_every_format() {
        let l = DecodeLimits {
            max_payload_bytes: 16,
            ..limits(1)
        };
        let ok: [(PayloadFormat, &[u8]); 3] = [
            (PayloadFormat::Json, br#"{"v": [1.0]}"#),
            (PayloadFormat::Csv, b"1,2.0\n"),
            (PayloadFormat::F32Le, &[0; 12]),
        ];
        for (format, payload) in ok {
            assert_eq!(decode(format, payload, &l).samples.len(), 1, "{format:?}");
            let mut big = payload.to_vec();
            big.resize(17, b' ');
            let d = decode(format, &big, &l);
            let r = only_reject(&d);
            assert_eq!(r.reason, Oversized, "{format:?}");
            assert_eq!(
                r.detail,
                "payload is 17 bytes, over the 16-byte limit (max_payload_bytes)"
            );
        }
    }

    #[test]
    fn csv_lines_comments_blanks_and_line_ends() {
        let payload = format!(
            "# t,a,b\n\n{T0},1,2\r\n  \n,3.5, -4 \r\n2023-11-15T00:13:20+02:00,5e0,6\n#end"
        );
        let d = csv(&payload, 2);
        assert!(d.rejects.is_empty(), "{:?}", d.rejects);
        assert_eq!(
            d.samples,
            [
                sample(Some(T0), &[1.0, 2.0]),
                sample(None, &[3.5, -4.0]),
                sample(Some(T0), &[5.0, 6.0])
            ]
        );
        assert_eq!(csv("", 2), Decoded::default());
        assert_eq!(csv("# only a comment\n\n", 2), Decoded::default());
        assert_eq!(csv("-5\n", 0).samples, [sample(Some(-5), &[])]);
    }

    #[test]
    fn csv_bad_lines_are_rejected_alone_with_their_line_number() {
        let payload = b"t,a,b\n1,1,2\n2,1\n3,nan,2\n4,1,-inf\n5,1,,\n6,1,x\n\xff,1,2\n7,1e39,0\n1.5,1,2\n8,1,2";
        let d = decode(PayloadFormat::Csv, payload, &limits(2));
        assert_eq!(
            d.samples,
            [sample(Some(1), &[1.0, 2.0]), sample(Some(8), &[1.0, 2.0])]
        );
        let got: Vec<(RejectReason, &str)> = d
            .rejects
            .iter()
            .map(|r| (r.reason, r.detail.as_str()))
            .collect();
        assert_eq!(
            got[1..7],
            [
                (WrongLength, "line 3: 1 values, expected 2 (features)"),
                (NonFinite, "line 4: value 0 is NaN"),
                (NonFinite, "line 5: value 1 is -inf (f32 range is ±3.4e38)"),
                (Malformed, r#"line 6: value 1 "" is not a number"#),
                (Malformed, r#"line 7: value 1 "x" is not a number"#),
                (
                    Malformed,
                    "line 8: not valid utf-8 (invalid utf-8 sequence of 1 bytes from index 0)"
                ),
            ]
        );
        assert_eq!(
            got[7],
            (NonFinite, "line 9: value 0 is +inf (f32 range is ±3.4e38)")
        );
        // A header line is not a sample (the time crate words the cause).
        assert_eq!(got[0].0, Malformed);
        assert!(
            got[0].1.starts_with(r#"line 1: t "t" is not rfc 3339 ("#),
            "{}",
            got[0].1
        );
        assert!(
            got[0].1.ends_with("; t must be integer ns or rfc 3339"),
            "{}",
            got[0].1
        );
        assert_eq!(got[8].0, Malformed);
        assert!(got[8].1.starts_with("line 10: t \"1.5\""), "{}", got[8].1);
    }

    /// Found by the `payload_csv` fuzz target: a line holding only U+00A0
    /// (no-break space) passed the blank-line check (ASCII whitespace) but
    /// its time field was trimmed to nothing (Unicode whitespace), so it
    /// became a sample with no time and no values.
    #[test]
    fn csv_fields_are_trimmed_of_ascii_whitespace_only() {
        let payload = b"\xd5\xdd\xd3\xdb,,,,,,,,,,,,0,,,,,,,,0\n\x0e23\n\xc2\xa0";
        let d = decode(PayloadFormat::Csv, payload, &limits(0));
        assert!(d.samples.is_empty(), "{:?}", d.samples);
        assert_eq!(reasons(&d), [Malformed, Malformed, Malformed]);
        let d = csv("\u{a0}\n1,\u{a0}2\n", 1);
        assert!(d.samples.is_empty(), "{:?}", d.samples);
        assert_eq!(reasons(&d), [Malformed, Malformed]);
        assert!(
            d.rejects[0]
                .detail
                .starts_with(r#"line 1: t "\u{a0}" is not rfc 3339"#),
            "{}",
            d.rejects[0].detail
        );
    }

    #[test]
    fn csv_max_samples_counts_only_sample_lines() {
        let l = DecodeLimits {
            max_samples: 2,
            ..limits(1)
        };
        let d = decode(PayloadFormat::Csv, b"# c\n1,1\n\n2,x\n# c\n", &l);
        assert_eq!((d.samples.len(), reasons(&d)), (1, vec![Malformed]));
        let d = decode(PayloadFormat::Csv, b"1,1\n2,1\n3,1\n", &l);
        assert_eq!(only_reject(&d).reason, Oversized);
    }

    #[test]
    fn f32le_whole_records() {
        let payload = f32le(&[(T0, &[1.0, -2.0]), (-1, &[0.0, f32::MAX])]);
        let d = decode(PayloadFormat::F32Le, &payload, &limits(2));
        assert!(d.rejects.is_empty());
        assert_eq!(
            d.samples,
            [
                sample(Some(T0), &[1.0, -2.0]),
                sample(Some(-1), &[0.0, f32::MAX])
            ]
        );
        assert_eq!(
            decode(PayloadFormat::F32Le, &[], &limits(2)),
            Decoded::default()
        );
        let d = decode(PayloadFormat::F32Le, &T0.to_le_bytes(), &limits(0));
        assert_eq!(d.samples, [sample(Some(T0), &[])]);
    }

    #[test]
    fn f32le_partial_record_is_malformed() {
        let mut payload = f32le(&[(T0, &[1.0, 2.0]), (T0, &[3.0, 4.0])]);
        payload.pop();
        let d = decode(PayloadFormat::F32Le, &payload, &limits(2));
        let r = only_reject(&d);
        assert_eq!(r.reason, Malformed);
        assert!(
            r.detail
                .starts_with("payload is 31 bytes, not a whole number of 16-byte records"),
            "{}",
            r.detail
        );
        // Records decoded with the wrong feature count do not line up either.
        assert_eq!(
            only_reject(&decode(
                PayloadFormat::F32Le,
                &f32le(&[(T0, &[1.0, 2.0])]),
                &limits(3)
            ))
            .reason,
            Malformed
        );
    }

    #[test]
    fn f32le_non_finite_records_are_rejected_alone() {
        let payload = f32le(&[
            (1, &[1.0, f32::NAN]),
            (2, &[1.0, 2.0]),
            (3, &[f32::NEG_INFINITY, 0.0]),
        ]);
        let d = decode(PayloadFormat::F32Le, &payload, &limits(2));
        assert_eq!(d.samples, [sample(Some(2), &[1.0, 2.0])]);
        let details: Vec<&str> = d.rejects.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "record 0 of 3: value 1 is NaN",
                "record 2 of 3: value 0 is -inf (f32 range is ±3.4e38)"
            ]
        );
        assert_eq!(reasons(&d), [NonFinite, NonFinite]);
    }

    #[test]
    fn f32le_max_samples() {
        let payload = f32le(&[(1, &[1.0]), (2, &[2.0]), (3, &[3.0])]);
        let l = DecodeLimits {
            max_samples: 3,
            ..limits(1)
        };
        assert_eq!(decode(PayloadFormat::F32Le, &payload, &l).samples.len(), 3);
        let l = DecodeLimits {
            max_samples: 2,
            ..limits(1)
        };
        assert_eq!(
            only_reject(&decode(PayloadFormat::F32Le, &payload, &l)).reason,
            Oversized
        );
    }

    #[test]
    fn formats_agree_on_the_same_samples() {
        let records: [(i64, &[f32]); 3] = [
            (T0, &[0.25, -1.0, 7.5]),
            (T0 + 1, &[1e-3, 2e10, -0.0]),
            (0, &[1.0, 2.0, 3.0]),
        ];
        let as_json = format!(
            "[{}]",
            records
                .iter()
                .map(|(t, v)| format!(r#"{{"t":{t},"v":{}}}"#, serde_json::to_string(v).unwrap()))
                .collect::<Vec<_>>()
                .join(",")
        );
        let as_csv: String = records
            .iter()
            .map(|(t, v)| {
                format!(
                    "{t},{}\n",
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect();
        let from_json = json(&as_json, 3);
        assert!(from_json.rejects.is_empty(), "{:?}", from_json.rejects);
        assert_eq!(from_json, csv(&as_csv, 3));
        assert_eq!(
            from_json,
            decode(PayloadFormat::F32Le, &f32le(&records), &limits(3))
        );
    }
}
