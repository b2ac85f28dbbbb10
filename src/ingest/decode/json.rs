//! The JSON payload format: one sample object or an array of them.
//!
//! A batch is read in two passes so that one bad sample cannot spoil its
//! neighbours: the array is first split into borrowed raw elements (no
//! copies), then each element is deserialized on its own. Sample objects are
//! read with hand-written serde visitors, so the only allocation per sample is
//! its values, preallocated to the expected feature count, and unknown or
//! repeated keys are errors.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{parse_rfc3339_ns, too_many, At, DecodeLimits, Decoded, RawSample, RejectReason};

/// Decodes a JSON sample object or batch (see the parent module for the shape).
pub(super) fn decode_json(payload: &[u8], limits: &DecodeLimits) -> Decoded {
    let sample = SampleSeed {
        features: limits.features,
    };
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            if limits.max_samples == 0 {
                return too_many(limits);
            }
            let mut out = Decoded::default();
            match parse_json(payload, sample) {
                Ok(s) => out.check(At::Payload, s, limits.features),
                Err(e) => json_reject(&mut out, At::Payload, "invalid json sample: ", &e),
            }
            out
        }
        Some(b'[') => {
            let over = Cell::new(false);
            let batch = BatchSeed {
                max: limits.max_samples,
                over: &over,
            };
            let raws = match parse_json(payload, batch) {
                Ok(raws) => raws,
                Err(_) if over.get() => return too_many(limits),
                Err(e) => {
                    let detail = format!("invalid json batch: {e}");
                    return Decoded::rejected(RejectReason::Malformed, detail);
                }
            };
            let n = raws.len();
            let mut out = Decoded {
                samples: Vec::with_capacity(n),
                rejects: Vec::new(),
            };
            for (i, raw) in raws.into_iter().enumerate() {
                let at = At::Sample(i, n);
                match parse_json(raw.get().as_bytes(), sample) {
                    Ok(s) => out.check(at, s, limits.features),
                    Err(e) => json_reject(&mut out, at, "", &e),
                }
            }
            out
        }
        _ => Decoded::rejected(
            RejectReason::Malformed,
            "expected a json sample object or an array of them".to_string(),
        ),
    }
}

/// Parses exactly one JSON value from `bytes` with `seed`, then requires the end.
fn parse_json<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> serde_json::Result<S::Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

fn json_reject(out: &mut Decoded, at: At, what: &str, e: &serde_json::Error) {
    let msg = e.to_string();
    // serde_json refuses numbers beyond f64 range (e.g. 1e400) with this
    // message; such a value is beyond f32 range too, i.e. infinite. The unit
    // test `json_numbers_beyond_f32_are_non_finite` pins the message.
    if msg.starts_with("number out of range") {
        let detail = format_args!("a number is beyond f64 and f32 range ({msg})");
        out.reject(at, RejectReason::NonFinite, detail);
    } else {
        out.reject(at, RejectReason::Malformed, format_args!("{what}{msg}"));
    }
}

/// Collects the elements of a JSON batch as borrowed raw text, stopping as
/// soon as there are more than `max` (and setting `over`).
struct BatchSeed<'c> {
    max: usize,
    over: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of sample objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut raws = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if raws.len() == self.max {
                self.over.set(true);
                return Err(de::Error::custom("too many samples"));
            }
            raws.push(raw);
        }
        Ok(raws)
    }
}

/// Deserializes one sample object strictly into a [`RawSample`].
#[derive(Clone, Copy)]
struct SampleSeed {
    features: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum SampleKey {
    T,
    Seq,
    V,
}

impl<'de> DeserializeSeed<'de> for SampleSeed {
    type Value = RawSample;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawSample, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SampleSeed {
    type Value = RawSample;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sample object {\"t\": ..., \"v\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSample, A::Error> {
        let (mut t, mut seq, mut values) = (None, None, None);
        while let Some(key) = map.next_key::<SampleKey>()? {
            match key {
                SampleKey::T if t.is_some() => return Err(de::Error::duplicate_field("t")),
                SampleKey::T => t = Some(map.next_value::<JsonTime>()?.0),
                SampleKey::Seq if seq.is_some() => return Err(de::Error::duplicate_field("seq")),
                SampleKey::Seq => seq = Some(map.next_value::<Option<u64>>()?),
                SampleKey::V if values.is_some() => return Err(de::Error::duplicate_field("v")),
                SampleKey::V => values = Some(map.next_value_seed(ValuesSeed(self.features))?),
            }
        }
        Ok(RawSample {
            t_ns: t.flatten(),
            seq: seq.flatten(),
            values: values.ok_or_else(|| de::Error::missing_field("v"))?,
        })
    }
}

/// The `v` array, preallocated for the expected number of features.
struct ValuesSeed(usize);

impl<'de> DeserializeSeed<'de> for ValuesSeed {
    type Value = Vec<f32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<f32>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
        let mut values = Vec::with_capacity(self.0);
        // Numbers beyond f32 range become ±inf here and are rejected as non-finite.
        while let Some(x) = seq.next_element::<f32>()? {
            values.push(x);
        }
        Ok(values)
    }
}

/// The `t` field: integer ns since the epoch, an RFC 3339 string, or null.
struct JsonTime(Option<i64>);

impl<'de> Deserialize<'de> for JsonTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonTime, D::Error> {
        d.deserialize_any(JsonTimeVisitor)
    }
}

struct JsonTimeVisitor;

impl<'de> Visitor<'de> for JsonTimeVisitor {
    type Value = JsonTime;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("t as integer ns since the unix epoch or an rfc 3339 string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonTime, E> {
        Ok(JsonTime(Some(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonTime, E> {
        i64::try_from(v)
            .map(|v| JsonTime(Some(v)))
            .map_err(|_| E::custom(format_args!("t {v} is outside the i64 ns range")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonTime, E> {
        parse_rfc3339_ns(v)
            .map(|t| JsonTime(Some(t)))
            .map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonTime, E> {
        Ok(JsonTime(None))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use RejectReason::*;

    #[test]
    fn single_sample_with_integer_time_and_seq() {
        let d = json(
            &format!(r#"{{"t": {T0}, "seq": 42, "v": [1, -2.5, 3e2]}}"#),
            3,
        );
        assert!(d.rejects.is_empty(), "{:?}", d.rejects);
        let want = RawSample {
            t_ns: Some(T0),
            seq: Some(42),
            values: vec![1.0, -2.5, 300.0],
        };
        assert_eq!(d.samples, [want]);
    }

    #[test]
    fn time_absent_or_null_is_left_to_the_caller() {
        for payload in [
            r#"{"v": [1.0]}"#,
            r#"{"t": null, "v": [1.0]}"#,
            r#" {"v":[1.0], "seq": null} "#,
        ] {
            assert_eq!(
                json(payload, 1).samples,
                [sample(None, &[1.0])],
                "{payload}"
            );
        }
    }

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        let cases = [
            ("2023-11-14T22:13:20Z", T0),
            ("2023-11-15T00:13:20+02:00", T0),
            ("2023-11-14T17:13:20.000000001-05:00", T0 + 1),
            ("2023-11-14T22:13:20.5z", T0 + 500_000_000),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59Z", -1_000_000_000),
        ];
        for (text, ns) in cases {
            let d = json(&format!(r#"{{"t": "{text}", "v": []}}"#), 0);
            assert_eq!(
                d.samples,
                [sample(Some(ns), &[])],
                "{text}: {:?}",
                d.rejects
            );
        }
        // An escaped string cannot be borrowed from the payload; it still parses.
        let d = json(r#"{"t": "\u0032023-11-14T22:13:20Z", "v": []}"#, 0);
        assert_eq!(d.samples, [sample(Some(T0), &[])]);
    }

    #[test]
    fn bad_times_are_malformed() {
        for t in [
            r#""2023-11-14 22:13:20""#,
            r#""2023-11-14T22:13:20""#, // no offset
            r#""yesterday""#,
            r#""3000-01-01T00:00:00Z""#, // beyond i64 ns
            "1.7e18",
            "9223372036854775808", // i64::MAX + 1
            "true",
            "[1]",
        ] {
            let d = json(&format!(r#"{{"t": {t}, "v": [1]}}"#), 1);
            assert_eq!(only_reject(&d).reason, Malformed, "t = {t}");
        }
        let d = json(r#"{"t": "3000-01-01T00:00:00Z", "v": [1]}"#, 1);
        assert!(
            only_reject(&d).detail.contains("outside the i64 ns range"),
            "{:?}",
            d.rejects
        );
        let d = json(r#"{"t": "yesterday", "v": [1]}"#, 1);
        assert!(
            only_reject(&d)
                .detail
                .contains(r#"t "yesterday" is not rfc 3339"#),
            "{:?}",
            d.rejects
        );
    }

    #[test]
    fn strict_about_keys() {
        let d = json(r#"{"t": 1, "val": [1.0]}"#, 1);
        let r = only_reject(&d);
        assert_eq!(r.reason, Malformed);
        assert!(r.detail.contains("unknown field `val`"), "{}", r.detail);
        let d = json(r#"{"v": [1.0], "v": [2.0]}"#, 1);
        assert!(
            only_reject(&d).detail.contains("duplicate field `v`"),
            "{:?}",
            d.rejects
        );
        let d = json(r#"{"t": 1}"#, 1);
        assert!(
            only_reject(&d).detail.contains("missing field `v`"),
            "{:?}",
            d.rejects
        );
        for bad in [
            r#"{"seq": -1, "v": [1]}"#,
            r#"{"seq": 1.5, "v": [1]}"#,
            r#"{"v": 1}"#,
            r#"{"v": {"0": 1}}"#,
        ] {
            assert_eq!(only_reject(&json(bad, 1)).reason, Malformed, "{bad}");
        }
    }

    #[test]
    fn strings_and_nulls_in_values_are_malformed() {
        for v in [
            r#"["NaN"]"#,
            r#"["Infinity"]"#,
            r#"["1.0"]"#,
            "[null]",
            "[[1]]",
        ] {
            let d = json(&format!(r#"{{"v": {v}}}"#), 1);
            assert_eq!(only_reject(&d).reason, Malformed, "v = {v}");
        }
    }

    #[test]
    fn numbers_beyond_f32_are_non_finite() {
        let d = json(r#"{"v": [1.0, 1e39]}"#, 2);
        let r = only_reject(&d);
        assert_eq!(
            (r.reason, r.detail.as_str()),
            (NonFinite, "value 1 is +inf (f32 range is ±3.4e38)")
        );
        let d = json(r#"{"v": [-3.5e38, 0]}"#, 2);
        assert_eq!(
            only_reject(&d).detail,
            "value 0 is -inf (f32 range is ±3.4e38)"
        );
        // Beyond f64 range: serde_json refuses the number itself.
        let d = json(r#"{"v": [1e400]}"#, 1);
        assert_eq!(only_reject(&d).reason, NonFinite, "{:?}", d.rejects);
        // The largest f32 is fine.
        assert_eq!(json(r#"{"v": [3.4028235e38]}"#, 1).samples.len(), 1);
    }

    #[test]
    fn wrong_length() {
        let d = json(r#"{"v": [1, 2]}"#, 3);
        let r = only_reject(&d);
        assert_eq!(
            (r.reason, r.detail.as_str()),
            (WrongLength, "2 values, expected 3 (features)")
        );
        assert_eq!(only_reject(&json(r#"{"v": []}"#, 1)).reason, WrongLength);
    }

    #[test]
    fn unparseable_payloads_are_one_malformed_reject() {
        let payloads = [
            "",
            "   ",
            "null",
            "42",
            r#""text""#,
            "{",
            r#"{"v": [1]"#,
            r#"{"v": [1]} {"v": [2]}"#,
            r#"{"v": [1]} x"#,
            r#"[{"v": [1]}"#,
            "[1,]",
            "\u{feff}{\"v\": [1]}",
            r#"{"v": [NaN]}"#,
        ];
        for payload in payloads {
            assert_eq!(
                only_reject(&json(payload, 1)).reason,
                Malformed,
                "{payload:?}"
            );
        }
        let d = decode(PayloadFormat::Json, b"{\"v\": [1]}\xff", &limits(1));
        assert_eq!(only_reject(&d).reason, Malformed);
    }

    #[test]
    fn batch_keeps_good_samples_and_rejects_bad_ones_by_index() {
        let payload = format!(
            r#"[
                {{"t": {T0}, "v": [1, 2]}},
                {{"t": {T0}, "v": [1, 2], "extra": 0}},
                {{"v": [1]}},
                {{"v": [1, 1e39]}},
                {{"v": [1, "x"]}},
                42,
                {{"t": "2023-11-14T22:13:20.000000002Z", "seq": 9, "v": [3, 4]}},
                {{"v": [1, 1e400]}},
                {{}}
            ]"#
        );
        let d = json(&payload, 2);
        let second = RawSample {
            t_ns: Some(T0 + 2),
            seq: Some(9),
            values: vec![3.0, 4.0],
        };
        assert_eq!(d.samples, [sample(Some(T0), &[1.0, 2.0]), second]);
        let want = [
            Malformed,
            WrongLength,
            NonFinite,
            Malformed,
            Malformed,
            NonFinite,
            Malformed,
        ];
        assert_eq!(reasons(&d), want);
        let at: Vec<&str> = d
            .rejects
            .iter()
            .map(|r| r.detail.split(':').next().unwrap())
            .collect();
        let want = [1, 2, 3, 4, 5, 7, 8].map(|i| format!("sample {i} of 9"));
        assert_eq!(at, want);
        assert_eq!(
            d.rejects[2].detail,
            "sample 3 of 9: value 1 is +inf (f32 range is ±3.4e38)"
        );
        assert!(
            d.rejects[0].detail.contains("unknown field `extra`"),
            "{}",
            d.rejects[0].detail
        );
        assert!(
            d.rejects[4].detail.contains("expected a sample object"),
            "{}",
            d.rejects[4].detail
        );
    }

    #[test]
    fn empty_batch_is_empty() {
        assert_eq!(json(" [ ] ", 1), Decoded::default());
    }

    #[test]
    fn max_samples() {
        let l = DecodeLimits {
            max_samples: 3,
            ..limits(1)
        };
        let d = decode(
            PayloadFormat::Json,
            br#"[{"v": [1]}, {"v": [2]}, {"v": [3]}]"#,
            &l,
        );
        assert_eq!((d.samples.len(), d.rejects.len()), (3, 0));
        // Bad samples count too, and the payload is refused before its tail is read.
        let payload = br#"[{"v": []}, {"v": [1]}, {"v": [1]}, {"v": [1]}, this is never parsed"#;
        let d = decode(PayloadFormat::Json, payload, &l);
        let r = only_reject(&d);
        let want = (
            Oversized,
            "more than 3 samples in one payload (max_samples)",
        );
        assert_eq!((r.reason, r.detail.as_str()), want);
        let none = DecodeLimits {
            max_samples: 0,
            ..limits(1)
        };
        assert_eq!(
            only_reject(&decode(PayloadFormat::Json, br#"{"v": [1]}"#, &none)).reason,
            Oversized
        );
    }
}
