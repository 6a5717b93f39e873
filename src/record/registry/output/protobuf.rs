//! Protobuf output: the prediction JSON mapped by field name onto a message of the registered
//! `.proto` (protobuf's JSON mapping, `prost-reflect`), encoded and framed with the schema id
//! and the message's index by `schema_registry_converter`'s `ProtoEncoder`.
//!
//! One rule beyond the JSON mapping: a JSON field with no message field of its name but a
//! `oneof` of that name (the shipped schema's `id`) is written to the oneof's member of the
//! value's JSON type, so that an id keeps its type (a string, an exact 64-bit integer, a
//! double, a boolean) without the schema guessing one.

use schema_registry_converter::blocking::proto_encoder::ProtoEncoder;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor,
};
use schema_registry_converter::schema_registry_common::{
    get_bytes_result, BytesResult, SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::{Map, Value};

use super::mismatch;
use crate::record::registry::OutputSchema;
use crate::record::Rejection;

pub struct ProtobufOutput {
    id: u32,
    encoder: ProtoEncoder,
    /// Registers under the configured subject; the encoder caches what it registered.
    strategy: SubjectNameStrategy,
    message: MessageDescriptor,
}

impl ProtobufOutput {
    /// Registers the `.proto` under the subject and compiles it; `message` names the message
    /// written (fully qualified or within the file's package), else the file's first.
    pub fn open(
        settings: SrSettings,
        schema: &OutputSchema,
        message: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (subject, text) = match schema {
            OutputSchema::Register { subject, schema } => (subject, schema),
            // The crate's encoder resolves its schema by subject only.
            OutputSchema::Id(id) => anyhow::bail!(
                "--output-schema-id ({id}) is not supported with --output-format protobuf: \
                 give the .proto with --output-schema (registered under --output-subject)"
            ),
        };
        // Parsed here to refuse a bad file before the registry stores it, and to find the
        // message's full name; the encoder compiles it again with the registry's answer.
        let file = protox_parse::parse("output.proto", text)
            .map_err(|e| anyhow::anyhow!("output .proto: {e}"))?;
        let qualify = |name: &str| match file.package.as_deref() {
            Some(package) if !package.is_empty() => format!("{package}.{name}"),
            _ => name.to_owned(),
        };
        let full_name = match message {
            Some(name) if name.contains('.') => name.to_owned(),
            Some(name) => qualify(name),
            None => match file.message_type.first().and_then(|m| m.name.as_deref()) {
                Some(name) => qualify(name),
                None => anyhow::bail!("output .proto declares no message"),
            },
        };
        let strategy = SubjectNameStrategy::RecordNameStrategyWithSchema(SuppliedSchema::new(
            Some(subject.clone()),
            SchemaType::Protobuf,
            text.clone(),
        ));
        let encoder = ProtoEncoder::new(settings);
        let message = encoder
            .get_message_descriptor(&full_name, &strategy)
            .map_err(|e| {
                anyhow::anyhow!(
                    "registering the output schema under subject {subject} (message {full_name}): {e}"
                )
            })?;
        // The encoder does not tell the registered id; an empty message, framed once, does.
        let probe = encoder
            .encode(&DynamicMessage::new(message.clone()), &strategy)
            .map_err(|e| anyhow::anyhow!("encoding with the output schema: {e}"))?;
        let BytesResult::Valid(id, _) = get_bytes_result(Some(&probe)) else {
            anyhow::bail!("the protobuf encoder gave no schema id");
        };
        Ok(Self {
            id,
            encoder,
            strategy,
            message,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.id
    }

    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, Rejection> {
        let fields = match serde_json::from_slice(json) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(mismatch(self.id, &"the prediction is not a JSON object")),
            Err(e) => return Err(mismatch(self.id, &e)),
        };
        let fields = into_oneofs(&self.message, fields).map_err(|e| mismatch(self.id, &e))?;
        // Unknown fields are refused, not dropped: a prediction field the schema has no place
        // for is a mismatch.
        let message = DynamicMessage::deserialize_with_options(
            self.message.clone(),
            Value::Object(fields),
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .map_err(|e| mismatch(self.id, &e))?;
        self.encoder
            .encode(&message, &self.strategy)
            .map_err(|e| mismatch(self.id, &e))
    }
}

/// Moves each JSON field named like a (non-synthetic) oneof of `message` that has no field
/// of that name to the oneof's first member whose type takes the value. A null stays unset.
fn into_oneofs(
    message: &MessageDescriptor,
    mut fields: Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    for oneof in message.oneofs().filter(|o| !o.is_synthetic()) {
        let name = oneof.name();
        if message.get_field_by_name(name).is_some() {
            continue;
        }
        let Some(value) = fields.remove(name) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        let member = oneof
            .fields()
            .find(|f| takes(&f.kind(), &value))
            .ok_or_else(|| format!("no member of oneof {name} takes {value}"))?;
        fields.insert(member.name().to_owned(), value);
    }
    Ok(fields)
}

/// Whether a field of `kind` holds `value` with its JSON type: an integer goes to an integer
/// field (range checked by the mapping), a non-integral number to a floating one.
fn takes(kind: &Kind, value: &Value) -> bool {
    match value {
        Value::String(_) => matches!(kind, Kind::String),
        Value::Bool(_) => matches!(kind, Kind::Bool),
        Value::Number(n) if n.is_f64() => matches!(kind, Kind::Double | Kind::Float),
        Value::Number(_) => matches!(
            kind,
            Kind::Int64
                | Kind::Sint64
                | Kind::Sfixed64
                | Kind::Uint64
                | Kind::Fixed64
                | Kind::Int32
                | Kind::Sint32
                | Kind::Sfixed32
                | Kind::Uint32
                | Kind::Fixed32
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{one_schema_registry, PREDICTION_PROTO};
    use super::*;
    use crate::record::Reason;
    use schema_registry_converter::blocking::proto_decoder::ProtoDecoder;

    fn open(schema: &str, message: Option<&str>) -> anyhow::Result<(ProtobufOutput, SrSettings)> {
        let settings = one_schema_registry::start(schema, "PROTOBUF");
        let out = ProtobufOutput::open(
            settings.clone(),
            &OutputSchema::Register {
                subject: "scores-value".into(),
                schema: schema.into(),
            },
            message,
        )?;
        Ok((out, settings))
    }

    /// Decoded by the crate's decoder with the schema the registry holds, as JSON with the
    /// declared field names.
    fn decode(settings: SrSettings, framed: &[u8]) -> Value {
        let decoded = ProtoDecoder::new(settings)
            .decode_with_context(Some(framed))
            .unwrap()
            .unwrap();
        decoded
            .value
            .serialize_with_options(
                serde_json::value::Serializer,
                &crate::record::registry::input::protobuf_as_json(),
            )
            .unwrap()
    }

    #[test]
    fn ids_keep_their_json_type_in_the_shipped_message() {
        let (out, settings) = open(PREDICTION_PROTO, None).unwrap();
        assert_eq!(out.schema_id(), one_schema_registry::ID);
        let cases = [
            (r#""k1""#, serde_json::json!({"id_string": "k1"})),
            (
                "9007199254740993",
                serde_json::json!({"id_integer": 9007199254740993_i64}),
            ),
            ("-3", serde_json::json!({"id_integer": -3})),
            ("2.5", serde_json::json!({"id_number": 2.5})),
            ("true", serde_json::json!({"id_boolean": true})),
            ("null", serde_json::json!({})),
        ];
        for (id, want) in cases {
            let json = format!(
                r#"{{"id":{id},"label":"b","probabilities":{{"a":0.25,"b":0.75}},"model_version":"rf-1","partition":2,"offset":9}}"#
            );
            let framed = out.encode(json.as_bytes()).unwrap();
            assert_eq!(
                &framed[..6],
                &[0, 0, 0, 0, 7, 0],
                "magic byte, id, index [0]"
            );
            let mut want = want;
            let body = serde_json::json!({"label": "b", "probabilities": {"a": 0.25, "b": 0.75},
                "model_version": "rf-1", "partition": 2, "offset": 9});
            want.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            assert_eq!(decode(settings.clone(), &framed), want, "id {id}");
        }
        let regression =
            br#"{"id":1,"prediction":152.5,"model_version":"pm-1","partition":0,"offset":1}"#;
        let back = decode(settings, &out.encode(regression).unwrap());
        assert_eq!(back["prediction"], 152.5);
        assert!(back.get("label").is_none(), "an unset optional stays unset");
    }

    #[test]
    fn a_named_message_of_a_custom_proto_is_written_with_its_index() {
        let proto = r#"syntax = "proto3"; package custom;
            message Other { string name = 1; }
            message Scored { string id = 1; string label = 2; int64 offset = 3;
                             int32 partition = 4; string model_version = 5;
                             map<string, float> probabilities = 6; }"#;
        let (out, settings) = open(proto, Some("Scored")).unwrap();
        let json = br#"{"id":"k1","label":"b","probabilities":{"a":0.25,"b":0.75},"model_version":"rf-1","partition":2,"offset":9}"#;
        let framed = out.encode(json).unwrap();
        assert_eq!(&framed[..7], &[0, 0, 0, 0, 7, 2, 2], "message index [1]");
        assert_eq!(decode(settings, &framed)["id"], "k1");
        assert!(open(proto, Some("Missing")).is_err());
    }

    #[test]
    fn what_the_message_has_no_place_for_is_an_output_schema_mismatch() {
        let (out, _) = open(PREDICTION_PROTO, None).unwrap();
        for json in [
            // A recommendation: `uid`, `items`, `cold_start` are not fields of the message.
            &br#"{"uid":1,"items":[],"cold_start":false,"model_version":"mf-1","partition":0,"offset":0}"#[..],
            // An id of a type the oneof has no member for.
            br#"{"id":[1],"prediction":1.5,"model_version":"pm-1","partition":0,"offset":1}"#,
            // An integer id beyond int64.
            br#"{"id":18446744073709551615,"prediction":1.5,"model_version":"pm-1","partition":0,"offset":1}"#,
            br#"{"prediction":"high","model_version":"pm-1","partition":0,"offset":1}"#,
            b"[1]",
        ] {
            let r = out.encode(json).unwrap_err();
            assert_eq!(r.reason, Reason::OutputSchemaMismatch, "{r}");
            assert!(r.detail.contains("output schema id 7"), "{r}");
        }
    }

    #[test]
    fn output_schema_id_is_refused_for_protobuf_at_start_up() {
        let settings = one_schema_registry::start(PREDICTION_PROTO, "PROTOBUF");
        let err = ProtobufOutput::open(settings, &OutputSchema::Id(7), None)
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("--output-schema-id"), "{err:#}");
        assert!(open("syntax = \"proto3\"; message {", None).is_err());
    }
}
