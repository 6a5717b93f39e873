//! Schema Registry output: the prediction JSON, written in the Confluent wire format under
//! a schema registered once at start-up (or named by id), as Avro, JSON Schema or Protobuf.
//!
//! Each format is a module of its own; `OutputEncoder` is the one thing the pipeline calls.
//! A prediction the output schema does not accept is a record's rejection
//! (`output_schema_mismatch`), never a changed or dropped value.

mod avro;
mod json_schema;
mod protobuf;

use schema_registry_converter::blocking::schema_registry::{
    get_schema_by_id_and_type, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{
    RegisteredSchema, SchemaType, SuppliedSchema,
};

use super::{OutputFormat, OutputSchema};
use crate::record::{Reason, Rejection};
pub use avro::AvroOutput;
pub use json_schema::JsonSchemaOutput;
pub use protobuf::ProtobufOutput;

/// The Avro schema registered when `--output-schema` names no file: classifications and
/// regressions (recommendations need a schema of their own).
pub const PREDICTION_SCHEMA: &str = include_str!("prediction.avsc");
/// The same prediction as a JSON Schema.
pub const PREDICTION_JSON_SCHEMA: &str = include_str!("prediction.schema.json");
/// The same prediction as a proto3 message (`streamscore.Prediction`).
pub const PREDICTION_PROTO: &str = include_str!("prediction.proto");

/// The schema registered for `format` when no `--output-schema` file is given.
pub fn default_schema(format: OutputFormat) -> Option<&'static str> {
    match format {
        OutputFormat::Json => None,
        OutputFormat::Avro => Some(PREDICTION_SCHEMA),
        OutputFormat::JsonSchema => Some(PREDICTION_JSON_SCHEMA),
        OutputFormat::Protobuf => Some(PREDICTION_PROTO),
    }
}

/// The encoder of one registry output format, resolved against the registry at start-up.
pub enum OutputEncoder {
    Avro(AvroOutput),
    JsonSchema(JsonSchemaOutput),
    Protobuf(ProtobufOutput),
}

impl OutputEncoder {
    /// `None` for plain JSON output. `message` names the Protobuf message to write (default:
    /// the schema's first). Called once, on the scoring thread, before the first batch.
    pub fn open(
        format: OutputFormat,
        settings: &SrSettings,
        schema: &OutputSchema,
        message: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        Ok(Some(match format {
            OutputFormat::Json => return Ok(None),
            OutputFormat::Avro => Self::Avro(AvroOutput::open(settings, schema)?),
            OutputFormat::JsonSchema => {
                Self::JsonSchema(JsonSchemaOutput::open(settings.clone(), schema)?)
            }
            OutputFormat::Protobuf => {
                Self::Protobuf(ProtobufOutput::open(settings.clone(), schema, message)?)
            }
        }))
    }

    pub fn schema_id(&self) -> u32 {
        match self {
            Self::Avro(o) => o.schema_id(),
            Self::JsonSchema(o) => o.schema_id(),
            Self::Protobuf(o) => o.schema_id(),
        }
    }

    /// One output record's JSON, framed in the output format, or why the schema refuses it.
    pub fn encode(&self, json: &[u8]) -> Result<Vec<u8>, Rejection> {
        match self {
            Self::Avro(o) => o.encode(json),
            Self::JsonSchema(o) => o.encode(json),
            Self::Protobuf(o) => o.encode(json),
        }
    }
}

/// Registers the schema under its subject (the registry answers with the existing id if it
/// already has it) or fetches the configured id, checking it is a schema of `kind`.
fn register_or_fetch(
    settings: &SrSettings,
    schema: &OutputSchema,
    kind: SchemaType,
) -> anyhow::Result<RegisteredSchema> {
    match schema {
        OutputSchema::Register { subject, schema } => post_schema(
            settings,
            subject.clone(),
            SuppliedSchema::new(None, kind, schema.clone()),
        )
        .map_err(|e| anyhow::anyhow!("registering the output schema under subject {subject}: {e}")),
        OutputSchema::Id(id) => get_schema_by_id_and_type(*id, settings, kind)
            .map_err(|e| anyhow::anyhow!("fetching output schema id {id}: {e}")),
    }
}

/// The rejection of a prediction that output schema `id` does not accept.
fn mismatch(id: u32, cause: &dyn std::fmt::Display) -> Rejection {
    Rejection::new(
        Reason::OutputSchemaMismatch,
        format!("the prediction does not fit output schema id {id}: {cause}"),
    )
}

/// A registry that knows one schema: every registration gets id 7, `GET /schemas/ids/7`
/// answers with it. Served from a thread of its own, because the crate's blocking client
/// must not be called from inside an async runtime.
#[cfg(test)]
pub(crate) mod one_schema_registry {
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use schema_registry_converter::blocking::schema_registry::SrSettings;
    use serde_json::json;

    pub const ID: u32 = 7;

    pub fn start(schema: &str, kind: &str) -> SrSettings {
        let body = json!({"schema": schema, "schemaType": kind});
        let app = Router::new()
            .route(
                "/schemas/ids/{id}",
                get(move || std::future::ready(Json(body))),
            )
            .route(
                "/subjects/{subject}/versions",
                post(|| std::future::ready(Json(json!({"id": ID})))),
            );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await
            })
        });
        SrSettings::new_builder(url).no_proxy().build().unwrap()
    }
}
