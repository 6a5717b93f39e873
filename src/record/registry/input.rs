//! Schema Registry input: a Confluent-framed Avro, JSON Schema or Protobuf value becomes the
//! JSON object the JSON decoder reads, so that a registry record yields exactly the feature
//! row (and the same rejections: missing, non-numeric, non-finite features) a JSON record
//! with the same field names does.
//!
//! Framing, schema lookup, caching and decoding are `schema_registry_converter`'s (with
//! `apache-avro`, `jsonschema` and `prost-reflect` underneath); this module maps values to
//! JSON and errors to dead-letter reasons.

use std::time::Instant;

use apache_avro::types::Value as AvroValue;
use schema_registry_converter::blocking::avro::AvroDecoder;
use schema_registry_converter::blocking::json::JsonDecoder;
use schema_registry_converter::blocking::proto_decoder::ProtoDecoder;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::prost_reflect::SerializeOptions;
use schema_registry_converter::schema_registry_common::{get_bytes_result, BytesResult};
use serde_json::Value as JsonValue;

use super::client::{self, IdGate};
use super::InputFormat;
use crate::record::{Reason, Rejection};

enum Codec {
    Avro(AvroDecoder),
    Json(JsonDecoder),
    Protobuf(ProtoDecoder),
}

pub struct InputDecoder {
    codec: Codec,
    gate: IdGate,
}

impl InputDecoder {
    /// `None` for plain JSON input, which needs no registry.
    pub fn new(format: InputFormat, settings: SrSettings) -> Option<Self> {
        let codec = match format {
            InputFormat::Json => return None,
            InputFormat::Avro => Codec::Avro(AvroDecoder::new(settings)),
            InputFormat::JsonSchema => Codec::Json(JsonDecoder::new(settings)),
            InputFormat::Protobuf => Codec::Protobuf(ProtoDecoder::new(settings)),
        };
        Some(Self {
            codec,
            gate: IdGate::default(),
        })
    }

    /// The record as a JSON object's text, or why it cannot be read. Only the first record
    /// of a schema id this instance has not seen asks the registry.
    pub fn decode(
        &mut self,
        payload: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Vec<u8>, Rejection> {
        let bytes = match payload {
            None | Some([]) => {
                return Err(Rejection::new(Reason::Empty, "the record has no value"))
            }
            Some(b) if b.len() > max_bytes => {
                return Err(Rejection::new(
                    Reason::TooLarge,
                    format!("{} bytes is over the {max_bytes}-byte limit", b.len()),
                ))
            }
            Some(b) => b,
        };
        let id = match get_bytes_result(Some(bytes)) {
            BytesResult::Valid(id, _) => id,
            _ => {
                return Err(Rejection::new(
                    Reason::NotFramed,
                    format!(
                        "not in the Schema Registry wire format (magic byte 0, 4-byte schema id): starts with {:02x?}",
                        &bytes[..bytes.len().min(5)]
                    ),
                ))
            }
        };
        let now = Instant::now();
        if !self.gate.is_known(id) {
            if let Some(rejection) = self.gate.blocked(id, now) {
                return Err(rejection);
            }
            if self.gate.take_expired() {
                self.forget_errors();
            }
        }
        match self.decode_value(bytes) {
            Ok(json) => {
                self.gate.mark_known(id);
                // Serialising a `serde_json::Value` into a Vec cannot fail.
                Ok(serde_json::to_vec(&json).unwrap_or_default())
            }
            Err(Failure::Registry(e)) => {
                let rejection = client::rejection(id, &e);
                if rejection.reason == Reason::RegistryUnavailable && !e.retriable {
                    // The crate caches non-retriable errors (a 500, a 401); this one is about
                    // the registry, not the id, so it must be asked again after the pause.
                    self.forget_errors();
                }
                self.gate.remember(id, &rejection, now);
                Err(rejection)
            }
            Err(Failure::Invalid(detail)) => Err(Rejection::new(
                Reason::SchemaMismatch,
                format!("does not match schema id {id}: {detail}"),
            )),
        }
    }

    fn decode_value(&self, bytes: &[u8]) -> Result<JsonValue, Failure> {
        match &self.codec {
            Codec::Avro(decoder) => {
                let decoded = decoder.decode(Some(bytes)).map_err(Failure::from_crate)?;
                Ok(avro_to_json(decoded.value))
            }
            Codec::Json(decoder) => {
                let decoded = decoder
                    .decode(Some(bytes))
                    .map_err(Failure::from_crate)?
                    .ok_or_else(|| Failure::Invalid("no value".into()))?;
                decoder
                    .validate(&decoded.schema, &decoded.value)
                    .map_err(|e| Failure::Invalid(describe(&e)))?;
                Ok(decoded.value)
            }
            Codec::Protobuf(decoder) => {
                let decoded = decoder
                    .decode_with_context(Some(bytes))
                    .map_err(Failure::from_crate)?
                    .ok_or_else(|| Failure::Invalid("no value".into()))?;
                decoded
                    .value
                    .serialize_with_options(serde_json::value::Serializer, &protobuf_as_json())
                    .map_err(|e| Failure::Invalid(e.to_string()))
            }
        }
    }

    fn forget_errors(&self) {
        match &self.codec {
            Codec::Avro(d) => d.remove_errors_from_cache(),
            Codec::Json(d) => d.remove_errors_from_cache(),
            Codec::Protobuf(d) => d.remove_errors_from_cache(),
        }
    }
}

enum Failure {
    /// The crate's error: the registry's or the record's (`client::classify` tells which).
    Registry(SRCError),
    /// The record decoded but is not what its schema allows.
    Invalid(String),
}

impl Failure {
    fn from_crate(e: SRCError) -> Self {
        match client::classify(&e) {
            Reason::SchemaMismatch => Failure::Invalid(describe(&e)),
            _ => Failure::Registry(e),
        }
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// An Avro value as JSON. Non-finite floats become the strings JSON uses for them, so that
/// the JSON decoder names them (`non_finite_feature`) instead of this module guessing.
pub fn avro_to_json(value: AvroValue) -> JsonValue {
    match value {
        AvroValue::Record(fields) => JsonValue::Object(
            fields
                .into_iter()
                .map(|(name, v)| (name, avro_to_json(v)))
                .collect(),
        ),
        AvroValue::Map(items) => JsonValue::Object(
            items
                .into_iter()
                .map(|(name, v)| (name, avro_to_json(v)))
                .collect(),
        ),
        AvroValue::Array(items) => JsonValue::Array(items.into_iter().map(avro_to_json).collect()),
        AvroValue::Union(_, inner) => avro_to_json(*inner),
        AvroValue::Float(f) => float(f64::from(f)),
        AvroValue::Double(d) => float(d),
        // Everything else converts losslessly, by the crate's own rules.
        other => JsonValue::try_from(other).unwrap_or(JsonValue::Null),
    }
}

fn float(v: f64) -> JsonValue {
    match serde_json::Number::from_f64(v) {
        Some(n) => JsonValue::Number(n),
        None if v.is_nan() => JsonValue::String("NaN".into()),
        None if v > 0.0 => JsonValue::String("Infinity".into()),
        None => JsonValue::String("-Infinity".into()),
    }
}

/// How a Protobuf message reads as JSON here: field names as declared (`sepal_length`, not
/// `sepalLength`), 64-bit integers as numbers, unset proto3 fields as their defaults; proto3's
/// canonical JSON writes NaN as "NaN", which the JSON decoder refuses as
/// `non_finite_feature`.
pub(crate) fn protobuf_as_json() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avro_values_become_the_json_the_decoder_reads() {
        let record = AvroValue::Record(vec![
            (
                "id".into(),
                AvroValue::Union(1, Box::new(AvroValue::String("r-1".into()))),
            ),
            ("sepal_length".into(), AvroValue::Double(5.1)),
            ("sepal_width".into(), AvroValue::Float(3.5)),
            ("petal_length".into(), AvroValue::Int(1)),
            ("petal_width".into(), AvroValue::Double(f64::NAN)),
            ("n".into(), AvroValue::Union(0, Box::new(AvroValue::Null))),
        ]);
        assert_eq!(
            avro_to_json(record),
            serde_json::json!({"id": "r-1", "sepal_length": 5.1, "sepal_width": 3.5,
                "petal_length": 1, "petal_width": "NaN", "n": null})
        );
        assert_eq!(
            avro_to_json(AvroValue::Double(f64::NEG_INFINITY)),
            "-Infinity"
        );
    }

    fn decoder() -> InputDecoder {
        // A port nothing listens on: any registry call fails at once.
        let settings = super::super::client::settings(&super::super::RegistrySettings {
            url: "http://127.0.0.1:9".into(),
            basic_auth: None,
            timeout: std::time::Duration::from_millis(500),
        })
        .unwrap();
        InputDecoder::new(InputFormat::Avro, settings).unwrap()
    }

    #[test]
    fn framing_edge_cases_never_reach_the_registry() {
        let mut d = decoder();
        let reason = |d: &mut InputDecoder, p: Option<&[u8]>| d.decode(p, 16).unwrap_err().reason;
        assert_eq!(reason(&mut d, None), Reason::Empty);
        assert_eq!(reason(&mut d, Some(&[])), Reason::Empty);
        assert_eq!(reason(&mut d, Some(&[0; 17])), Reason::TooLarge);
        assert_eq!(
            reason(&mut d, Some(b"{\"a\":1}")),
            Reason::NotFramed,
            "plain JSON"
        );
        assert_eq!(
            reason(&mut d, Some(&[1, 0, 0, 0, 1, 2])),
            Reason::NotFramed,
            "magic byte 1"
        );
        assert_eq!(
            reason(&mut d, Some(&[0, 0, 0, 1])),
            Reason::NotFramed,
            "id cut short"
        );
    }

    #[test]
    fn a_registry_that_is_down_is_asked_once_per_pause() {
        let mut d = decoder();
        let first = d.decode(Some(&[0, 0, 0, 0, 7, 2]), 100).unwrap_err();
        assert_eq!(first.reason, Reason::RegistryUnavailable, "{first}");
        // Another id inside the pause: refused from memory, with the registry's answer.
        let started = Instant::now();
        let second = d.decode(Some(&[0, 0, 0, 0, 8, 2]), 100).unwrap_err();
        assert_eq!(second.reason, Reason::RegistryUnavailable);
        assert!(second.detail.contains("not answering"), "{second}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }
}
