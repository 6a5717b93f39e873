//! JSON Schema output: the prediction JSON as it is, validated against the registered JSON
//! Schema (with its references) by `schema_registry_converter`, framed with the schema id.

use std::sync::Arc;

use schema_registry_converter::blocking::json::{JsonDecoder, JsonSchema};
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{get_payload, SchemaType};
use serde_json::Value;

use super::{mismatch, register_or_fetch};
use crate::record::registry::OutputSchema;
use crate::record::Rejection;

pub struct JsonSchemaOutput {
    id: u32,
    schema: Arc<JsonSchema>,
    /// Holds the compiled validator; the crate's encoder validates the same way, but only
    /// looks schemas up by subject, not by the id `--output-schema-id` gives.
    validator: JsonDecoder,
}

impl JsonSchemaOutput {
    pub fn open(settings: SrSettings, schema: &OutputSchema) -> anyhow::Result<Self> {
        if let OutputSchema::Register { schema, .. } = schema {
            // Refuse what is not JSON before the registry stores it.
            serde_json::from_str::<Value>(schema)
                .map_err(|e| anyhow::anyhow!("output JSON Schema: {e}"))?;
        }
        let id = register_or_fetch(&settings, schema, SchemaType::Json)?.id;
        let validator = JsonDecoder::new(settings);
        // The registered schema as the registry gives it, with its references resolved.
        let schema = validator
            .get_schema(id)
            .map_err(|e| anyhow::anyhow!("fetching output JSON Schema id {id}: {e}"))?;
        // Compile it now: a schema the validator cannot compile stops start-up instead of
        // refusing every record. Only a compile error carries a cause; `null` being invalid
        // is not one.
        if let Err(e) = validator.validate(&schema, &Value::Null) {
            if let Some(cause) = e.cause {
                anyhow::bail!("output JSON Schema id {id}: {}: {cause}", e.error);
            }
        }
        Ok(Self {
            id,
            schema,
            validator,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// The prediction's own bytes, framed, once the schema accepts them.
    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, Rejection> {
        let value: Value = serde_json::from_slice(json).map_err(|e| mismatch(self.id, &e))?;
        self.validator
            .validate(&self.schema, &value)
            .map_err(|e| mismatch(self.id, &e))?;
        Ok(get_payload(self.id, json.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{one_schema_registry, PREDICTION_JSON_SCHEMA};
    use super::*;
    use crate::record::Reason;

    fn open(schema: &str) -> anyhow::Result<JsonSchemaOutput> {
        let settings = one_schema_registry::start(schema, "JSON");
        JsonSchemaOutput::open(
            settings,
            &OutputSchema::Register {
                subject: "scores-value".into(),
                schema: schema.into(),
            },
        )
    }

    #[test]
    fn a_prediction_is_framed_as_it_is() {
        let out = open(PREDICTION_JSON_SCHEMA).unwrap();
        assert_eq!(out.schema_id(), one_schema_registry::ID);
        for json in [
            &br#"{"id":"k1","label":"b","probabilities":{"a":0.25,"b":0.75},"model_version":"rf-1","partition":2,"offset":9}"#[..],
            br#"{"id":7,"prediction":152.5,"model_version":"pm-1","partition":0,"offset":1}"#,
            br#"{"label":"a","probabilities":{"a":1.0},"model_version":"rf-1","partition":0,"offset":0}"#,
        ] {
            let framed = out.encode(json).unwrap();
            assert_eq!(&framed[..5], &[0, 0, 0, 0, 7], "magic byte and id");
            assert_eq!(&framed[5..], json);
        }
    }

    #[test]
    fn what_the_schema_refuses_is_an_output_schema_mismatch() {
        let out = open(PREDICTION_JSON_SCHEMA).unwrap();
        for json in [
            // A recommendation: not a prediction of the shipped schema.
            &br#"{"uid":1,"items":[],"cold_start":false,"model_version":"mf-1","partition":0,"offset":0}"#[..],
            // An id the schema has no type for.
            br#"{"id":{"a":1},"prediction":1.5,"model_version":"pm-1","partition":0,"offset":1}"#,
            br#"{"prediction":"high","model_version":"pm-1","partition":0,"offset":1}"#,
        ] {
            let r = out.encode(json).unwrap_err();
            assert_eq!(r.reason, Reason::OutputSchemaMismatch, "{r}");
            assert!(r.detail.contains("output schema id 7"), "{r}");
        }
    }

    #[test]
    fn a_schema_that_does_not_compile_stops_start_up() {
        let err = open(r#"{"type": "no such type"}"#).err().expect("refused");
        assert!(
            format!("{err:#}").contains("output JSON Schema id 7"),
            "{err:#}"
        );
        assert!(open("not json").is_err());
    }
}
