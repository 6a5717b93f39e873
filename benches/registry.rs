//! The Schema Registry input path per record, against the format's own library.
//!
//! `cargo bench --bench registry`. Three figures per 1,000 iris records, all with the schema
//! already cached: `streamscore_avro` (framing, `schema_registry_converter` + `apache-avro`
//! decode, the mapping to JSON and the JSON feature decoder: what a registry record costs
//! before scoring), `apache_avro_only` (the reference: `apache-avro` reading the same
//! bodies, nothing else) and `json_input` (the same records as plain JSON through the JSON
//! decoder: the default path).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use schema_registry_converter::schema_registry_common::get_payload;

use streamscore::record::decode::{FeatureDecoder, FeatureSchema};
use streamscore::record::registry::input::InputDecoder;
use streamscore::record::registry::{client, InputFormat, RegistrySettings};

const SCHEMA: &str = r#"{"type":"record","name":"Iris","fields":[{"name":"id","type":"long"},
{"name":"sepal_length","type":"double"},{"name":"sepal_width","type":"double"},
{"name":"petal_length","type":"double"},{"name":"petal_width","type":"double"}]}"#;
const N: usize = 1000;

/// A registry that answers every request (at most 16) with schema id 1.
fn mock_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let body = serde_json::json!({ "schema": SCHEMA }).to_string();
        for stream in listener.incoming().take(16).flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

fn records(schema: &Schema) -> (Vec<Vec<u8>>, Vec<String>) {
    let writer = GenericDatumWriter::builder(schema).build().expect("writer");
    (0..N)
        .map(|i| {
            let f = |k: usize| 1.0 + ((i * 7 + k * 3) % 60) as f64 / 10.0;
            let value = Value::Record(vec![
                ("id".into(), Value::Long(i as i64)),
                ("sepal_length".into(), Value::Double(f(0))),
                ("sepal_width".into(), Value::Double(f(1))),
                ("petal_length".into(), Value::Double(f(2))),
                ("petal_width".into(), Value::Double(f(3))),
            ]);
            let body = writer.write_value_to_vec(value).expect("encodes");
            let json = format!(
                r#"{{"id":{i},"sepal_length":{},"sepal_width":{},"petal_length":{},"petal_width":{}}}"#,
                f(0),
                f(1),
                f(2),
                f(3)
            );
            (get_payload(1, body), json)
        })
        .unzip()
}

fn registry_input(c: &mut Criterion) {
    let schema = Schema::parse_str(SCHEMA).expect("schema");
    let (framed, json) = records(&schema);
    let settings = client::settings(&RegistrySettings {
        url: mock_registry(),
        basic_auth: None,
        timeout: Duration::from_secs(2),
    })
    .expect("settings");
    let mut decoder = InputDecoder::new(InputFormat::Avro, settings).expect("a registry format");
    let names: Vec<String> = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        .map(String::from)
        .to_vec();
    let mut features = FeatureDecoder::new(FeatureSchema::new(&names));
    // The one registry call; everything measured below is cached.
    decoder
        .decode(Some(&framed[0]), 1 << 20)
        .expect("schema fetched");

    let mut group = c.benchmark_group("registry_input");
    group.throughput(Throughput::Elements(N as u64));
    let mut row = [0.0; 4];
    group.bench_function("streamscore_avro", |b| {
        b.iter(|| {
            for record in &framed {
                let text = decoder.decode(Some(record), 1 << 20).expect("decodes");
                let text = std::str::from_utf8(&text).expect("utf-8");
                black_box(features.decode(text, &mut row).expect("features").is_some());
            }
        })
    });
    let reader = GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    group.bench_function("apache_avro_only", |b| {
        b.iter(|| {
            for record in &framed {
                black_box(reader.read_value(&mut &record[5..]).expect("reads"));
            }
        })
    });
    group.bench_function("json_input", |b| {
        b.iter(|| {
            for text in &json {
                black_box(features.decode(text, &mut row).expect("features").is_some());
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = registry;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = registry_input
}
criterion_main!(registry);
