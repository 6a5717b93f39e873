//! Avro output: the prediction JSON resolved against the output schema by `apache-avro`,
//! framed with the schema id.

use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{get_payload, SchemaType};

use super::{mismatch, register_or_fetch};
use crate::record::registry::OutputSchema;
use crate::record::Rejection;

pub struct AvroOutput {
    id: u32,
    schema: Schema,
}

impl AvroOutput {
    /// Registers the schema under the subject (the registry answers with the existing id if
    /// it already has it) or fetches the configured id. Called once, before the first batch.
    pub fn open(settings: &SrSettings, schema: &OutputSchema) -> anyhow::Result<Self> {
        if let OutputSchema::Register { schema, .. } = schema {
            // Refuse a schema we cannot write with before the registry stores it.
            Schema::parse_str(schema).map_err(|e| anyhow::anyhow!("output schema: {e}"))?;
        }
        let registered = register_or_fetch(settings, schema, SchemaType::Avro)?;
        let schema = Schema::parse_str(&registered.schema).map_err(|e| {
            anyhow::anyhow!("output schema id {} does not parse: {e}", registered.id)
        })?;
        Ok(Self {
            id: registered.id,
            schema,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// One output record's JSON as a framed Avro value of the output schema.
    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, Rejection> {
        let mismatch = |e: &dyn std::fmt::Display| mismatch(self.id, e);
        let json: serde_json::Value = serde_json::from_slice(json).map_err(|e| mismatch(&e))?;
        // Avro's resolution keeps the schema's fields and drops the rest without a word: a
        // recommendation under the classification schema would go out as nulls.
        if let (Schema::Record(record), serde_json::Value::Object(fields)) = (&self.schema, &json) {
            if let Some(extra) = fields.keys().find(|k| !record.lookup.contains_key(*k)) {
                return Err(mismatch(&format!(
                    "the output schema has no field {extra:?}"
                )));
            }
        }
        let value = AvroValue::try_from(json)
            .and_then(|v| v.resolve(&self.schema))
            .map_err(|e| mismatch(&e))?;
        let datum = GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .map_err(|e| mismatch(&e))?;
        Ok(get_payload(self.id, datum))
    }
}

#[cfg(test)]
mod tests {
    use super::super::PREDICTION_SCHEMA;
    use super::*;
    use crate::record::Reason;

    fn output() -> AvroOutput {
        AvroOutput {
            id: 42,
            schema: Schema::parse_str(PREDICTION_SCHEMA).unwrap(),
        }
    }

    #[test]
    fn a_prediction_with_fields_the_schema_lacks_is_refused_not_trimmed() {
        let recommendation = br#"{"uid":196,"items":[{"item":50,"score":4.9}],"cold_start":false,"model_version":"mf-1","partition":0,"offset":1}"#;
        let r = output().encode(recommendation).unwrap_err();
        assert_eq!(r.reason, Reason::OutputSchemaMismatch, "{r}");
        assert!(r.detail.contains("has no field \"cold_start\""), "{r}");
    }

    #[test]
    fn a_classification_round_trips_through_the_shipped_schema() {
        let json = br#"{"id":"k1","label":"b","probabilities":{"a":0.25,"b":0.75},"model_version":"rf-1","partition":2,"offset":9}"#;
        let framed = output().encode(json).unwrap();
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 42], "magic byte and id");
        let schema = Schema::parse_str(PREDICTION_SCHEMA).unwrap();
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .and_then(|r| r.read_value(&mut &framed[5..]))
            .unwrap();
        let back = serde_json::Value::try_from(value).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"id":"k1","label":"b","probabilities":{"a":0.25,"b":0.75},
                "prediction":null,"model_version":"rf-1","partition":2,"offset":9})
        );
    }

    #[test]
    fn a_prediction_that_does_not_fit_is_refused_with_its_reason() {
        let r = output().encode(br#"{"uid":1,"items":[]}"#).unwrap_err();
        assert_eq!(r.reason, Reason::OutputSchemaMismatch, "{r}");
    }
}
