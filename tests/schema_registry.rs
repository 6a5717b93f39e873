//! Schema Registry input and output through the iris pipeline on the mock cluster.
//!
//! No registry server can be installed here (Confluent's needs a JVM download, Karapace is
//! not on the package registries), so `MockRegistry` is an in-process axum server that
//! implements the endpoints the service and the serializers call: `GET /schemas/ids/{id}`
//! and `POST /subjects/{subject}/versions`. Input records are framed by
//! `schema_registry_converter`'s own serializers (Avro, JSON Schema, Protobuf), the same
//! crate the service decodes with, against that registry.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use schema_registry_converter::blocking::avro::AvroEncoder;
use schema_registry_converter::blocking::json::{JsonDecoder, JsonEncoder};
use schema_registry_converter::blocking::proto_decoder::ProtoDecoder;
use schema_registry_converter::blocking::proto_encoder::ProtoEncoder;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::prost_reflect::SerializeOptions;
use schema_registry_converter::schema_registry_common::{
    get_payload, SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::json;
use streamscore::pipeline::sink::HEADER_REASON;
use streamscore::pipeline::PipelineConfig;
use streamscore::record::registry::output::default_schema;
use streamscore::record::registry::{
    InputFormat, OutputFormat, OutputSchema, RecordFormat, RegistrySettings,
};

const PARTITIONS: i32 = 2;

const IRIS_AVRO: &str = r#"{"type":"record","name":"Iris","namespace":"test","fields":[
  {"name":"id","type":"long"},
  {"name":"sepal_length","type":"double"},{"name":"sepal_width","type":"double"},
  {"name":"petal_length","type":"double"},{"name":"petal_width","type":"double"}]}"#;

/// A second version with an extra field, for an id the service has not cached.
const IRIS_AVRO_V2: &str = r#"{"type":"record","name":"Iris","namespace":"test","fields":[
  {"name":"id","type":"long"},{"name":"source","type":"string","default":"lab"},
  {"name":"sepal_length","type":"double"},{"name":"sepal_width","type":"double"},
  {"name":"petal_length","type":"double"},{"name":"petal_width","type":"double"}]}"#;

const IRIS_JSON_SCHEMA: &str = r#"{"type":"object","properties":{
  "id":{"type":"integer"},
  "sepal_length":{"type":"number"},"sepal_width":{"type":"number"},
  "petal_length":{"type":"number"},"petal_width":{"type":"number"}},
  "required":["id","sepal_length","sepal_width","petal_length","petal_width"]}"#;

/// Two messages, the second one used: its message index (1) is framed after the schema id.
const IRIS_PROTO: &str = r#"syntax = "proto3";
package test;
message Other { string name = 1; }
message Iris {
  int64 id = 1;
  double sepal_length = 2;
  double sepal_width = 3;
  double petal_length = 4;
  double petal_width = 5;
}
"#;

#[derive(Default)]
struct Registry {
    /// Index + 1 is the schema id.
    schemas: Vec<(String, Option<String>)>,
    subjects: HashMap<String, Vec<u32>>,
    gets: HashMap<u32, usize>,
}

/// The registry endpoints the service and the serializers call, in process.
#[derive(Clone, Default)]
struct MockRegistry {
    state: Arc<Mutex<Registry>>,
    /// Answers 503 to everything while set.
    down: Arc<AtomicBool>,
}

impl MockRegistry {
    async fn start(&self) -> String {
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/subjects/{subject}/versions", post(register))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn gets(&self, id: u32) -> usize {
        self.state
            .lock()
            .unwrap()
            .gets
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    fn latest(&self, subject: &str) -> (u32, String) {
        let state = self.state.lock().unwrap();
        let id = *state.subjects[subject].last().expect("registered");
        (id, state.schemas[id as usize - 1].0.clone())
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error_code": 50301, "message": "down for the test"})),
    )
        .into_response()
}

async fn schema_by_id(State(registry): State<MockRegistry>, Path(id): Path<u32>) -> Response {
    if registry.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let mut state = registry.state.lock().unwrap();
    *state.gets.entry(id).or_default() += 1;
    match state.schemas.get((id as usize).wrapping_sub(1)) {
        Some((schema, kind)) => {
            let mut body = json!({"schema": schema});
            if let Some(kind) = kind {
                body["schemaType"] = json!(kind);
            }
            Json(body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        )
            .into_response(),
    }
}

async fn register(
    State(registry): State<MockRegistry>,
    Path(subject): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if registry.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let schema = body["schema"].as_str().unwrap_or_default().to_owned();
    let kind = body["schemaType"]
        .as_str()
        .filter(|k| *k != "AVRO")
        .map(str::to_owned);
    let mut state = registry.state.lock().unwrap();
    // Registering the same schema again gives its id, as a real registry does.
    let existing = state.subjects.get(&subject).and_then(|ids| {
        ids.iter()
            .copied()
            .find(|id| state.schemas[*id as usize - 1] == (schema.clone(), kind.clone()))
    });
    let id = match existing {
        Some(id) => id,
        None => {
            state.schemas.push((schema, kind));
            let id = state.schemas.len() as u32;
            state.subjects.entry(subject).or_default().push(id);
            id
        }
    };
    Json(json!({"id": id})).into_response()
}

fn sr(url: &str) -> SrSettings {
    SrSettings::new_builder(url.to_owned())
        .no_proxy()
        .build()
        .expect("settings")
}

/// The blocking serializers must not run (or be dropped) on the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("serializer thread")
}

fn strategy(topic: &str, schema_type: SchemaType, schema: &str) -> SubjectNameStrategy {
    SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.to_owned(),
        false,
        SuppliedSchema::new(None, schema_type, schema.to_owned()),
    )
}

/// The Avro record as the serializer takes it (`encode_struct` maps Rust types to Avro ones).
#[derive(serde::Serialize)]
struct Iris {
    id: i64,
    sepal_length: f64,
    sepal_width: f64,
    petal_length: f64,
    petal_width: f64,
}

/// Version 2 of the schema: one more field.
#[derive(serde::Serialize)]
struct IrisV2 {
    id: i64,
    source: &'static str,
    sepal_length: f64,
    sepal_width: f64,
    petal_length: f64,
    petal_width: f64,
}

impl Iris {
    fn new(id: usize, f: &[f64; 4]) -> Self {
        Self {
            id: id as i64,
            sepal_length: f[0],
            sepal_width: f[1],
            petal_length: f[2],
            petal_width: f[3],
        }
    }
}

fn iris_value(id: usize, f: &[f64; 4]) -> serde_json::Value {
    json!({"id": id, "sepal_length": f[0], "sepal_width": f[1], "petal_length": f[2], "petal_width": f[3]})
}

/// `n` iris rows framed by the crate's serializer for `format`, keyed `key-{id}`.
async fn framed_iris(
    url: &str,
    topic: &str,
    format: InputFormat,
    ids: std::ops::Range<usize>,
) -> Vec<Input> {
    let url = url.to_owned();
    let topic = topic.to_owned();
    blocking(move || {
        let rows = iris_rows();
        let settings = sr(&url);
        let avro = AvroEncoder::new(settings.clone());
        let json_schema = JsonEncoder::new(settings.clone());
        let proto = ProtoEncoder::new(settings);
        ids.map(|id| {
            let features = &rows[id % rows.len()].0;
            let value = iris_value(id, features);
            let bytes = match format {
                InputFormat::Avro => avro
                    .encode_struct(
                        Iris::new(id, features),
                        &strategy(&topic, SchemaType::Avro, IRIS_AVRO),
                    )
                    .expect("avro encodes"),
                InputFormat::JsonSchema => json_schema
                    .encode(
                        &value,
                        &strategy(&topic, SchemaType::Json, IRIS_JSON_SCHEMA),
                    )
                    .expect("json schema encodes"),
                InputFormat::Protobuf => proto
                    .encode_json(
                        &value,
                        "test.Iris",
                        &strategy(&topic, SchemaType::Protobuf, IRIS_PROTO),
                    )
                    .expect("protobuf encodes"),
                InputFormat::Json => unreachable!("not a registry format"),
            };
            (Some(format!("key-{id}").into_bytes()), Some(bytes))
        })
        .collect()
    })
    .await
}

fn registry_pipeline(
    broker: &TestBroker,
    topics: &Topics,
    url: &str,
    input: InputFormat,
    output: OutputFormat,
) -> PipelineConfig {
    let mut config = broker.pipeline_config(topics, &unique("group"));
    config.format = RecordFormat {
        input,
        output,
        registry: Some(RegistrySettings {
            url: url.to_owned(),
            basic_auth: None,
            timeout: Duration::from_secs(2),
        }),
        output_schema: default_schema(output).map(|schema| OutputSchema::Register {
            subject: format!("{}-value", topics.output),
            schema: schema.to_owned(),
        }),
        output_message: None,
    };
    config
}

/// Runs the iris model with `config` over `inputs`, until one record per input landed on the
/// output or dead-letter topic.
async fn score_all(
    broker: &TestBroker,
    topics: &Topics,
    config: PipelineConfig,
    inputs: &[Input],
) -> Vec<Collected> {
    broker.produce(&topics.input, inputs).await;
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let both = [topics.output.as_str(), topics.dead_letters.as_str()];
    let outputs = broker
        .collect(&both, PARTITIONS, inputs.len(), Duration::from_secs(60))
        .await;
    service.stop().await.expect("clean shutdown");
    assert_eq!(outputs.len(), inputs.len(), "one output per input");
    outputs
}

/// The outputs of the output topic, each checked to be framed with the id registered under
/// `<output>-value` and decoded as JSON by an independent decoder of that format with the
/// schema the registry holds: `apache-avro`, the crate's `JsonDecoder` (which validates), its
/// `ProtoDecoder` (declared field names; the shipped `.proto`'s integer id is `id_integer`).
async fn decode_outputs(
    registry: &MockRegistry,
    url: &str,
    topics: &Topics,
    format: OutputFormat,
    outputs: &[Collected],
) -> Vec<(Collected, serde_json::Value)> {
    let (output_id, output_schema) = registry.latest(&format!("{}-value", topics.output));
    let outputs: Vec<Collected> = outputs
        .iter()
        .filter(|o| o.topic == topics.output)
        .cloned()
        .collect();
    let url = url.to_owned();
    blocking(move || {
        let settings = sr(&url);
        let json_schema = JsonDecoder::new(settings.clone());
        let proto = ProtoDecoder::new(settings);
        let avro = (format == OutputFormat::Avro).then(|| {
            apache_avro::Schema::parse_str(&output_schema).expect("registered schema parses")
        });
        outputs
            .into_iter()
            .map(|out| {
                let value = out.value.as_deref().expect("a value");
                assert_eq!(value[0], 0, "magic byte");
                assert_eq!(
                    u32::from_be_bytes(value[1..5].try_into().unwrap()),
                    output_id
                );
                let json = match (format, &avro) {
                    (OutputFormat::Avro, Some(schema)) => {
                        let decoded = GenericDatumReader::builder(schema)
                            .build()
                            .and_then(|r| r.read_value(&mut &value[5..]))
                            .expect("output decodes with the registered schema");
                        serde_json::Value::try_from(decoded).expect("as JSON")
                    }
                    (OutputFormat::JsonSchema, _) => {
                        let decoded = json_schema
                            .decode(Some(value))
                            .expect("output decodes")
                            .expect("a value");
                        json_schema
                            .validate(&decoded.schema, &decoded.value)
                            .expect("output is valid under the registered JSON Schema");
                        decoded.value
                    }
                    (OutputFormat::Protobuf, _) => proto
                        .decode_with_context(Some(value))
                        .expect("output decodes with the registered .proto")
                        .expect("a value")
                        .value
                        .serialize_with_options(
                            serde_json::value::Serializer,
                            &SerializeOptions::new()
                                .use_proto_field_name(true)
                                .stringify_64_bit_integers(false)
                                .skip_default_fields(false),
                        )
                        .expect("as JSON"),
                    _ => unreachable!("not a registry output format"),
                };
                (out, json)
            })
            .collect()
    })
    .await
}

/// Every framed record is scored; every output is framed under the registered output schema
/// and decodes with it, keeps its key and id, and carries the right species; each input
/// schema id was fetched once.
async fn scores_every_framed_record(format: InputFormat, output: OutputFormat) {
    const N: usize = 300;
    let registry = MockRegistry::default();
    let url = registry.start().await;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let inputs = framed_iris(&url, &topics.input, format, 0..N).await;
    let input_id = u32::from_be_bytes(inputs[0].1.as_ref().unwrap()[1..5].try_into().unwrap());
    // Framed with the right id, but not what the schema allows.
    let mismatching = match format {
        // A double cut short.
        InputFormat::Avro => vec![2, 0x10],
        // Valid JSON that the JSON Schema refuses.
        InputFormat::JsonSchema => {
            br#"{"id":1,"sepal_length":"long","sepal_width":1,"petal_length":1,"petal_width":1}"#
                .to_vec()
        }
        // Message index [1], then a field header whose length runs past the end.
        InputFormat::Protobuf => vec![2, 2, 0x12, 0x40, 1],
        InputFormat::Json => unreachable!(),
    };
    let mut inputs = inputs;
    inputs.push((
        Some(b"mismatch".to_vec()),
        Some(get_payload(input_id, mismatching)),
    ));

    let config = registry_pipeline(&broker, &topics, &url, format, output);
    let outputs = score_all(&broker, &topics, config, &inputs).await;
    let dead = reasons(&outputs, &topics.dead_letters);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead.get("mismatch").map(String::as_str),
        Some("schema_mismatch")
    );

    let rows = iris_rows();
    let mut seen = vec![false; N];
    let mut correct = 0;
    for (out, json) in decode_outputs(&registry, &url, &topics, output, &outputs).await {
        let id = json
            .get("id")
            .or_else(|| json.get("id_integer"))
            .and_then(serde_json::Value::as_u64)
            .expect("id kept") as usize;
        assert!(!std::mem::replace(&mut seen[id], true), "duplicate {id}");
        assert_eq!(out.key_str(), format!("key-{id}"), "key kept");
        assert!(json["model_version"].as_str().unwrap().starts_with("rf-"));
        let total: f64 = json["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!(
            (total - 1.0).abs() < 1e-3,
            "probabilities sum to 1: {total}"
        );
        correct += usize::from(json["label"] == rows[id % rows.len()].1.as_str());
    }
    assert!(seen.iter().all(|s| *s));
    assert!(
        correct as f64 / N as f64 >= 0.95,
        "{correct}/{N} labels right"
    );
    assert_eq!(
        registry.gets(input_id),
        1,
        "the input schema is fetched once, then cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_scored_and_written_as_avro() {
    scores_every_framed_record(InputFormat::Avro, OutputFormat::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_records_are_scored_and_written_as_avro() {
    scores_every_framed_record(InputFormat::JsonSchema, OutputFormat::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_are_scored_and_written_as_avro() {
    scores_every_framed_record(InputFormat::Protobuf, OutputFormat::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_scored_and_written_as_json_schema() {
    scores_every_framed_record(InputFormat::Avro, OutputFormat::JsonSchema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_are_scored_and_written_as_protobuf() {
    scores_every_framed_record(InputFormat::Protobuf, OutputFormat::Protobuf).await;
}

/// A JSON Schema that takes two of the three species.
const TWO_SPECIES_JSON_SCHEMA: &str = r#"{"type":"object","properties":{
  "id":{"type":"integer"},"label":{"enum":["setosa","versicolor"]},
  "probabilities":{"type":"object"},"model_version":{"type":"string"},
  "partition":{"type":"integer"},"offset":{"type":"integer"}},
  "required":["id","label","probabilities"]}"#;

/// A `.proto` whose second message takes two of the three species as an enum.
const TWO_SPECIES_PROTO: &str = r#"syntax = "proto3";
package custom;
message Unused { string name = 1; }
enum Species { setosa = 0; versicolor = 1; }
message TwoSpecies {
  int64 id = 1;
  Species label = 2;
  map<string, double> probabilities = 3;
  string model_version = 4;
  int32 partition = 5;
  int64 offset = 6;
}
"#;

/// A custom output schema (and, for Protobuf, a named message that is not the first): the
/// predictions it takes are written under it and decode with it; the ones it refuses (the
/// third species) are dead-lettered as `output_schema_mismatch`, with their key, none dropped.
async fn a_custom_output_schema_dead_letters_what_it_refuses(
    output: OutputFormat,
    schema: &str,
    message: Option<&str>,
) {
    const N: usize = 150;
    let registry = MockRegistry::default();
    let url = registry.start().await;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let inputs = framed_iris(&url, &topics.input, InputFormat::Avro, 0..N).await;
    let mut config = registry_pipeline(&broker, &topics, &url, InputFormat::Avro, output);
    config.format.output_schema = Some(OutputSchema::Register {
        subject: format!("{}-value", topics.output),
        schema: schema.to_owned(),
    });
    config.format.output_message = message.map(str::to_owned);
    let outputs = score_all(&broker, &topics, config, &inputs).await;

    let rows = iris_rows();
    let species = |key: &str| {
        let id: usize = key.trim_start_matches("key-").parse().expect("a key-N key");
        rows[id % rows.len()].1.clone()
    };
    let dead = reasons(&outputs, &topics.dead_letters);
    assert!(!dead.is_empty(), "the third species is refused");
    for (key, reason) in &dead {
        assert_eq!(reason, "output_schema_mismatch", "{key}");
    }
    let virginica = dead.keys().filter(|k| species(k) == "virginica").count();
    assert!(
        virginica * 10 >= dead.len() * 9,
        "{virginica} of {} dead letters are virginica rows",
        dead.len()
    );
    let decoded = decode_outputs(&registry, &url, &topics, output, &outputs).await;
    assert_eq!(decoded.len() + dead.len(), N);
    for (out, json) in decoded {
        assert_ne!(json["label"], "virginica");
        assert!(json["probabilities"].is_object(), "{json}");
        assert_eq!(
            out.key_str(),
            format!("key-{}", json["id"].as_u64().expect("id")),
            "key and id kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_json_schema_output_dead_letters_what_it_refuses() {
    a_custom_output_schema_dead_letters_what_it_refuses(
        OutputFormat::JsonSchema,
        TWO_SPECIES_JSON_SCHEMA,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_protobuf_output_dead_letters_what_it_refuses() {
    a_custom_output_schema_dead_letters_what_it_refuses(
        OutputFormat::Protobuf,
        TWO_SPECIES_PROTO,
        Some("custom.TwoSpecies"),
    )
    .await;
}

fn reasons(outputs: &[Collected], dead_letters: &str) -> HashMap<String, String> {
    outputs
        .iter()
        .filter(|o| o.topic == dead_letters)
        .map(|o| {
            (
                o.key_str(),
                o.headers.get(HEADER_REASON).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// Unknown ids, records that are not framed or do not match their schema, and a registry
/// that goes down are dead-lettered with their reasons; ids cached before it went down keep
/// being scored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_registry_records_are_dead_lettered_with_their_reason() {
    let registry = MockRegistry::default();
    let url = registry.start().await;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;

    let good = framed_iris(&url, &topics.input, InputFormat::Avro, 0..20).await;
    let avro_id = u32::from_be_bytes(good[0].1.as_ref().unwrap()[1..5].try_into().unwrap());
    let proto = framed_iris(&url, &topics.input, InputFormat::Protobuf, 100..102).await;
    let valid_json = iris_json(0, &[5.1, 3.5, 1.4, 0.2]);
    let mut bad: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for i in 0..5 {
        // Several records of one unknown id: the registry is asked once.
        bad.push((
            format!("unknown-{i}"),
            get_payload(999, vec![2, 4]),
            "unknown_schema",
        ));
    }
    bad.push(("plain-json".into(), valid_json, "not_framed"));
    bad.push(("magic-1".into(), vec![1, 0, 0, 0, 1, 2], "not_framed"));
    bad.push(("short".into(), vec![0, 0, 0], "not_framed"));
    // A record of the Avro schema cut short: the body does not decode.
    let truncated = good[0].1.as_ref().unwrap()[..9].to_vec();
    bad.push(("truncated".into(), truncated, "schema_mismatch"));
    for (i, (_, p)) in proto.iter().enumerate() {
        // A Protobuf schema's record where Avro is configured.
        bad.push((
            format!("protobuf-{i}"),
            p.clone().unwrap(),
            "schema_mismatch",
        ));
    }
    let mut inputs = good.clone();
    inputs.extend(
        bad.iter()
            .map(|(k, v, _)| (Some(k.clone().into_bytes()), Some(v.clone()))),
    );
    broker.produce(&topics.input, &inputs).await;

    let config = registry_pipeline(
        &broker,
        &topics,
        &url,
        InputFormat::Avro,
        OutputFormat::Json,
    );
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let both = [topics.output.as_str(), topics.dead_letters.as_str()];
    let first = broker
        .collect(&both, PARTITIONS, inputs.len(), Duration::from_secs(60))
        .await;
    assert_eq!(first.len(), inputs.len(), "every input lands somewhere");
    let scored = first.iter().filter(|o| o.topic == topics.output).count();
    assert_eq!(scored, good.len(), "the valid records are scored");
    let got = reasons(&first, &topics.dead_letters);
    for (key, _, want) in &bad {
        assert_eq!(got.get(key).map(String::as_str), Some(*want), "{key}");
    }
    assert_eq!(registry.gets(999), 1, "an unknown id is asked about once");

    // A new schema version registered, then the registry goes down: the cached id is still
    // scored, the new one is dead-lettered as `registry_unavailable`, nothing is dropped.
    let v2: Vec<Input> = {
        let url = url.clone();
        let topic = topics.input.clone();
        blocking(move || {
            let encoder = AvroEncoder::new(sr(&url));
            (0..5)
                .map(|i| {
                    let value = IrisV2 {
                        id: 500 + i,
                        source: "field",
                        sepal_length: 5.1,
                        sepal_width: 3.5,
                        petal_length: 1.4,
                        petal_width: 0.2,
                    };
                    let bytes = encoder
                        .encode_struct(value, &strategy(&topic, SchemaType::Avro, IRIS_AVRO_V2))
                        .expect("v2 encodes");
                    (Some(format!("v2-{i}").into_bytes()), Some(bytes))
                })
                .collect()
        })
        .await
    };
    let cached = framed_iris(&url, &topics.input, InputFormat::Avro, 20..30).await;
    assert_eq!(cached[0].1.as_ref().unwrap()[1..5], avro_id.to_be_bytes());
    registry.down.store(true, Ordering::SeqCst);
    let mut second = v2.clone();
    second.extend(cached.iter().cloned());
    broker.produce(&topics.input, &second).await;
    let total = inputs.len() + second.len();
    let all = broker
        .collect(&both, PARTITIONS, total, Duration::from_secs(60))
        .await;
    assert_eq!(all.len(), total, "every input lands somewhere");
    let got = reasons(&all, &topics.dead_letters);
    for i in 0..5 {
        assert_eq!(
            got.get(&format!("v2-{i}")).map(String::as_str),
            Some("registry_unavailable")
        );
    }
    let scored: Vec<String> = all
        .iter()
        .filter(|o| o.topic == topics.output)
        .map(Collected::key_str)
        .collect();
    assert_eq!(
        scored.len(),
        30,
        "the cached id keeps being scored while the registry is down"
    );
    assert!(
        service.state.health.failure().is_none(),
        "a registry outage does not fail the service"
    );
    service.stop().await.expect("clean shutdown");
}

/// The output schema cannot be registered: the pipeline does not start consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_schema_that_cannot_be_registered_stops_the_service() {
    let registry = MockRegistry::default();
    let url = registry.start().await;
    registry.down.store(true, Ordering::SeqCst);
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let config = registry_pipeline(
        &broker,
        &topics,
        &url,
        InputFormat::Avro,
        OutputFormat::Avro,
    );
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let err = tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .expect("the service ends")
        .expect_err("with an error");
    let message = format!("{err:#}");
    assert!(
        message.contains("registering the output schema"),
        "{message}"
    );
}
