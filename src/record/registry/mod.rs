//! Confluent Schema Registry formats around the JSON core: registry-framed input is turned
//! into the JSON object the decoders read, and the prediction JSON into registry-framed Avro,
//! JSON Schema or Protobuf.
//!
//! JSON in and out (the default) never enters this module's per-record path: `Framing::json`
//! is a no-op checked once per batch.

pub mod client;
pub mod input;
pub mod output;

use std::time::Duration;

use crate::record::Rejection;
use crate::transform::Outcome;
use input::InputDecoder;
use output::OutputEncoder;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Plain JSON objects (no registry).
    #[default]
    Json,
    /// Confluent-framed Avro.
    Avro,
    /// Confluent-framed JSON, validated against its JSON Schema.
    JsonSchema,
    /// Confluent-framed Protobuf (message indexes after the schema id).
    Protobuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Json,
    /// Confluent-framed Avro under the registered output schema.
    Avro,
    /// Confluent-framed JSON, validated against the registered JSON Schema.
    JsonSchema,
    /// Confluent-framed Protobuf (with the message index) of the registered `.proto`.
    Protobuf,
}

#[derive(Clone)]
pub struct RegistrySettings {
    pub url: String,
    /// User and password (Confluent Cloud: API key and secret).
    pub basic_auth: Option<(String, String)>,
    /// Bounds every registry call: connect and read.
    pub timeout: Duration,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs and panics.
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("user", &self.basic_auth.as_ref().map(|(u, _)| u))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub enum OutputSchema {
    /// Register this schema (of the output format) under the subject at start-up
    /// (idempotent).
    Register { subject: String, schema: String },
    /// Use this registered schema id.
    Id(u32),
}

/// How records are framed on the input and output topics.
#[derive(Debug, Clone, Default)]
pub struct RecordFormat {
    pub input: InputFormat,
    pub output: OutputFormat,
    pub registry: Option<RegistrySettings>,
    pub output_schema: Option<OutputSchema>,
    /// The Protobuf message written (default: the `.proto`'s first).
    pub output_message: Option<String>,
}

impl RecordFormat {
    pub fn is_json(&self) -> bool {
        self.input == InputFormat::Json && self.output == OutputFormat::Json
    }
}

/// The per-pipeline state of a `RecordFormat`: registry clients and schema caches. It is
/// opened on the scoring thread (the crate's blocking client must not live inside the async
/// runtime) and used there only.
#[derive(Default)]
pub struct Framing {
    input: Option<InputDecoder>,
    output: Option<OutputEncoder>,
}

impl Framing {
    /// Plain JSON both ways.
    pub fn json() -> Self {
        Self::default()
    }

    /// Connects to the registry and resolves the output schema; an error here means the
    /// pipeline cannot start (a registry that is down at start-up for output, a bad schema).
    pub fn open(format: &RecordFormat) -> anyhow::Result<Self> {
        if format.is_json() {
            return Ok(Self::json());
        }
        let Some(registry) = &format.registry else {
            anyhow::bail!("--input-format/--output-format other than json need --schema-registry");
        };
        tracing::info!(
            registry = %registry.url,
            input = ?format.input,
            output = ?format.output,
            "schema registry formats"
        );
        let settings = client::settings(registry)?;
        let input = InputDecoder::new(format.input, settings.clone());
        let output = match &format.output_schema {
            None if format.output == OutputFormat::Json => None,
            None => anyhow::bail!(
                "an --output-format other than json needs --output-subject or --output-schema-id"
            ),
            Some(schema) => OutputEncoder::open(
                format.output,
                &settings,
                schema,
                format.output_message.as_deref(),
            )?,
        };
        if let Some(out) = &output {
            tracing::info!(schema_id = out.schema_id(), "output schema resolved");
        }
        Ok(Self { input, output })
    }

    pub fn decodes(&self) -> bool {
        self.input.is_some()
    }

    /// Each record as JSON text, or its rejection; empty when the input is plain JSON.
    pub fn decode_all<'a>(
        &mut self,
        payloads: impl Iterator<Item = Option<&'a [u8]>>,
        max_bytes: usize,
    ) -> Vec<Result<Vec<u8>, Rejection>> {
        match &mut self.input {
            None => Vec::new(),
            Some(decoder) => payloads.map(|p| decoder.decode(p, max_bytes)).collect(),
        }
    }

    /// Puts the input rejections of `decode_all` in place of what scoring an absent value
    /// gave.
    pub fn reject_inputs(decoded: Vec<Result<Vec<u8>, Rejection>>, outcomes: &mut [Outcome]) {
        for (outcome, d) in outcomes.iter_mut().zip(decoded) {
            if let Err(rejection) = d {
                *outcome = Outcome::Rejected(rejection);
            }
        }
    }

    /// Encodes the scored outputs in the output format (nothing to do for JSON).
    pub fn encode_outputs(&self, outcomes: &mut [Outcome]) {
        let Some(output) = &self.output else {
            return;
        };
        for outcome in outcomes.iter_mut() {
            if let Outcome::Scored(json) = outcome {
                *outcome = match output.encode(json) {
                    Ok(framed) => Outcome::Scored(framed),
                    Err(rejection) => Outcome::Rejected(rejection),
                };
            }
        }
    }

    pub fn is_json(&self) -> bool {
        self.input.is_none() && self.output.is_none()
    }
}
