//! Hostile input (Reliability §5): every malformed record gets a specific dead-letter reason
//! and nothing panics, in either decoder or in the model-file loader.
//!
//! The corpus pins each hostile input to its exact outcome. The proptest properties then look
//! for what the corpus did not think of; their case counts are kept small enough for CI in a
//! debug build, and `PROPTEST_CASES` raises them for a longer run.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::{Number, Value};

use common::{repo_path, unique, TestBroker, IRIS_MODEL};
use streamscore::model::forest::{ForestSpec, NodeSpec, TreeSpec};
use streamscore::model::{LoadedModel, Model, ModelBody, ModelFile, ModelMeta, RecommenderSpec};
use streamscore::pipeline::sink::{
    HEADER_ERROR, HEADER_PAYLOAD_OMITTED, HEADER_REASON, HEADER_SOURCE_TOPIC,
};
use streamscore::record::{Reason, SourcePosition, DEFAULT_MAX_RECORD_BYTES};
use streamscore::transform::{transform_batch, Input, Outcome};

const RECOMMENDER_MODEL: &str = "models/recommender.json";
const FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
const DOTTED: [&str; 4] = ["sepal.length", "sepal.width", "petal.length", "petal.width"];
const TEN_MB: usize = 10 << 20;

fn iris() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| LoadedModel::load(&repo_path(IRIS_MODEL)).expect("iris model loads"))
}

fn recommender() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        LoadedModel::load(&repo_path(RECOMMENDER_MODEL)).expect("recommender model loads")
    })
}

fn position(i: usize) -> SourcePosition {
    SourcePosition {
        partition: 0,
        offset: i as i64,
    }
}

/// Each payload's offset is its index, so that outputs can be matched back to inputs.
fn transform(model: &LoadedModel, payloads: &[Option<Vec<u8>>], max_bytes: usize) -> Vec<Outcome> {
    let inputs: Vec<Input<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            payload: p.as_deref(),
            source: position(i),
        })
        .collect();
    transform_batch(model, &inputs, max_bytes)
}

/// The fields every scored output carries, read without building a `Value`: an `id` copied
/// verbatim may be nested deeper than `serde_json`'s recursion limit, or hold a lone
/// surrogate escape that a `String` cannot.
#[derive(Deserialize)]
struct Envelope {
    model_version: String,
    offset: i64,
}

// ---------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Scored,
    Rejected(Reason),
}

struct Case {
    name: &'static str,
    value: Option<Vec<u8>>,
    want: Want,
    /// Must appear in a rejection's detail: the README promises it names the field and
    /// what was found.
    detail: &'static str,
}

fn case(name: &'static str, value: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name,
        value: Some(value.into()),
        want,
        detail: "",
    }
}

fn rejected(name: &'static str, value: impl Into<Vec<u8>>, reason: Reason) -> Case {
    case(name, value, Want::Rejected(reason))
}

fn scored(name: &'static str, value: impl Into<Vec<u8>>) -> Case {
    case(name, value, Want::Scored)
}

impl Case {
    fn naming(mut self, detail: &'static str) -> Self {
        self.detail = detail;
        self
    }
}

/// A valid iris record whose `sepal_length` is written as `raw`, plus `extra` fields.
fn iris_with(raw: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"sepal_length":{raw},"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2{extra}}}"#
    )
    .into_bytes()
}

const VALID_IRIS: &str =
    r#"{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2}"#;

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn iris_corpus() -> Vec<Case> {
    use Reason::*;
    let deep_array = nested("[", "", "]", 100_000);
    let deep_object = nested(r#"{"a":"#, "0", "}", 100_000);
    vec![
        // Empty.
        Case {
            name: "no value",
            value: None,
            want: Want::Rejected(Empty),
            detail: "",
        },
        rejected("zero-length value", "", Empty),
        rejected("whitespace only", " \n\t", InvalidJson),
        // Invalid UTF-8.
        rejected("bytes that are never UTF-8", b"\xff\xfe\xfd".to_vec(), NotUtf8),
        rejected(
            "Latin-1 in a string of an otherwise valid record",
            cat(&[&VALID_IRIS.as_bytes()[..VALID_IRIS.len() - 1], b",\"note\":\"caf\xe9\"}"]),
            NotUtf8,
        )
        .naming("at byte 86"),
        rejected(
            "Latin-1 in a field name",
            cat(&[b"{\"s\xe9pal_length\":5.1", &iris_with("5.1", "")[1..]]),
            NotUtf8,
        ),
        rejected(
            "UTF-8-encoded surrogate",
            cat(&[b"{\"x\":\"\xed\xa0\x80\",", &VALID_IRIS.as_bytes()[1..]]),
            NotUtf8,
        ),
        rejected("overlong encoding", b"{\"x\":\"\xc0\xaf\"}".to_vec(), NotUtf8),
        rejected(
            "multi-byte character cut off at the end",
            b"{\"x\":\"\xc3".to_vec(),
            NotUtf8,
        ),
        rejected(
            "UTF-16 with a byte-order mark",
            VALID_IRIS
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .fold(vec![0xff, 0xfe], |mut v, b| {
                    v.push(b);
                    v
                }),
            NotUtf8,
        ),
        rejected(
            "UTF-8 byte-order mark",
            cat(&[b"\xef\xbb\xbf", VALID_IRIS.as_bytes()]),
            InvalidJson,
        ),
        rejected("NUL byte", iris_with("5.1\0", ""), InvalidJson),
        scored(
            "lone surrogate escape in an extra field",
            iris_with("5.1", r#","note":"\ud800""#),
        ),
        rejected("lone surrogate escape as a feature", iris_with(r#""\ud800""#, ""), NonNumericFeature),
        // Truncated and otherwise broken JSON.
        rejected("just an opening brace", "{", InvalidJson),
        rejected(
            "missing closing brace",
            &VALID_IRIS.as_bytes()[..VALID_IRIS.len() - 1],
            InvalidJson,
        ),
        rejected("cut inside a key", r#"{"sepal_len"#, InvalidJson),
        rejected("cut after a colon", r#"{"sepal_length":"#, InvalidJson),
        rejected("cut inside a number", r#"{"sepal_length":5."#, InvalidJson),
        rejected("cut inside an escape", r#"{"x":"\u00"#, InvalidJson),
        rejected(
            "a syntax error outranks an earlier bad feature",
            r#"{"sepal_length":"x", nope"#,
            InvalidJson,
        ),
        rejected("trailing garbage", format!("{VALID_IRIS}x"), InvalidJson),
        rejected("two documents", format!("{VALID_IRIS} {VALID_IRIS}"), InvalidJson),
        rejected("trailing comma", iris_with("5.1", ","), InvalidJson),
        rejected("single quotes", VALID_IRIS.replace('"', "'"), InvalidJson),
        rejected("unquoted keys", VALID_IRIS.replace('"', ""), InvalidJson),
        rejected("a comment", iris_with("5.1 /* cm */", ""), InvalidJson),
        scored("trailing whitespace", format!("{VALID_IRIS}\n\r\t ")),
        // Deep nesting: skipped, never recursed into.
        rejected("deep array, unclosed", "[".repeat(200_000), InvalidJson),
        rejected("deep array", deep_array.clone(), NotObject),
        rejected("deep object", deep_object.clone(), MissingFeature),
        scored(
            "deep array in an extra field",
            iris_with("5.1", &format!(r#","x":{deep_array}"#)),
        ),
        scored(
            "deep object in an extra field",
            iris_with("5.1", &format!(r#","x":{deep_object}"#)),
        ),
        scored("deep array as the id", iris_with("5.1", &format!(r#","id":{deep_array}"#))),
        rejected(
            "deep array as a feature",
            iris_with(&deep_array, ""),
            NonNumericFeature,
        )
        .naming("an array"),
        rejected(
            "deep array in an extra field, unclosed",
            iris_with("5.1", &format!(r#","x":{}"#, "[".repeat(100_000))),
            InvalidJson,
        ),
        // Huge and tiny numbers.
        rejected("1e400", iris_with("1e400", ""), NonFiniteFeature).naming("sepal_length"),
        rejected("-1e400", iris_with("-1e400", ""), NonFiniteFeature),
        rejected("a 400-digit integer", iris_with(&"9".repeat(400), ""), NonFiniteFeature),
        rejected(
            "just past the largest double",
            iris_with("1.7976931348623159e308", ""),
            NonFiniteFeature,
        ),
        scored("the largest double", iris_with("1.7976931348623157e308", "")),
        scored("a 300-digit integer", iris_with(&"9".repeat(300), "")),
        scored("1e-400 underflows to zero", iris_with("1e-400", "")),
        scored("the smallest subnormal", iris_with("5e-324", "")),
        scored("negative zero", iris_with("-0", "")),
        scored("an exponent", iris_with("51E-1", "")),
        scored("a huge number in an extra field", iris_with("5.1", ",\"x\":1e999999")),
        rejected("a leading zero", iris_with("05.1", ""), InvalidJson),
        rejected("a leading plus", iris_with("+5.1", ""), InvalidJson),
        rejected("a bare fraction", iris_with(".5", ""), InvalidJson),
        rejected("hexadecimal", iris_with("0x10", ""), InvalidJson),
        // NaN and Infinity: JSON has no such literals, so bare ones are not JSON.
        rejected("bare NaN", iris_with("NaN", ""), InvalidJson),
        rejected("bare Infinity", iris_with("Infinity", ""), InvalidJson),
        rejected("bare -Infinity", iris_with("-Infinity", ""), InvalidJson),
        rejected("bare nan", iris_with("nan", ""), InvalidJson),
        rejected("bare NaN in an extra field", iris_with("5.1", ",\"x\":NaN"), InvalidJson),
        rejected(r#""NaN""#, iris_with(r#""NaN""#, ""), NonFiniteFeature)
            .naming("sepal_length"),
        rejected(r#""Infinity""#, iris_with(r#""Infinity""#, ""), NonFiniteFeature),
        rejected(r#""-Infinity""#, iris_with(r#""-Infinity""#, ""), NonFiniteFeature),
        rejected(r#""inf""#, iris_with(r#""inf""#, ""), NonFiniteFeature),
        rejected(r#""nan""#, iris_with(r#""nan""#, ""), NonFiniteFeature),
        rejected(r#"" NaN ""#, iris_with(r#"" NaN ""#, ""), NonFiniteFeature),
        rejected(r#""1e400""#, iris_with(r#""1e400""#, ""), NonFiniteFeature),
        scored(r#""NaN" in an extra field"#, iris_with("5.1", r#","x":"NaN""#)),
        // Wrong types.
        rejected("a numeric string", iris_with(r#""5.1""#, ""), NonNumericFeature)
            .naming("sepal_length` must be a number, got a string"),
        rejected("a boolean", iris_with("true", ""), NonNumericFeature).naming("a boolean"),
        rejected("null", iris_with("null", ""), NonNumericFeature).naming("null"),
        rejected("an array", iris_with("[5.1]", ""), NonNumericFeature).naming("an array"),
        rejected("an object", iris_with(r#"{"v":5.1}"#, ""), NonNumericFeature)
            .naming("an object"),
        rejected("a top-level string", r#""sepal_length""#, NotObject).naming("a string"),
        rejected("a top-level number", "5.1", NotObject).naming("a number"),
        rejected("a top-level boolean", "true", NotObject),
        rejected("a top-level null", "null", NotObject).naming("null"),
        rejected("a top-level array of features", "[5.1,3.5,1.4,0.2]", NotObject)
            .naming("an array"),
        rejected("an empty array", "[]", NotObject),
        scored("a string id", iris_with("5.1", r#","id":"a-1""#)),
        scored("an object id", iris_with("5.1", r#","id":{"k":[1,null]}"#)),
        scored("a null id", iris_with("5.1", r#","id":null"#)),
        // Duplicate keys.
        rejected(
            "a feature twice",
            iris_with("5.1", r#","sepal_length":6"#),
            DuplicateField,
        )
        .naming("sepal_length"),
        rejected(
            "a feature under both names",
            iris_with("5.1", r#","sepal.length":6"#),
            DuplicateField,
        )
        .naming("sepal_length"),
        rejected(
            "a dotted feature twice",
            r#"{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal.width":1,"petal.width":1}"#,
            DuplicateField,
        )
        .naming("petal_width"),
        rejected(
            "a feature twice, once with an escaped name",
            iris_with("5.1", r#","sepal\u005flength":6"#),
            DuplicateField,
        ),
        rejected("the id twice", iris_with("5.1", r#","id":1,"id":2"#), DuplicateField)
            .naming("id"),
        rejected(
            "a duplicate whose first copy is bad: the first rejection wins",
            iris_with(r#""x""#, r#","sepal_length":6"#),
            NonNumericFeature,
        ),
        scored("an extra field twice", iris_with("5.1", r#","x":1,"x":"two""#)),
        // Extra and missing fields.
        scored(
            "extra fields of every type",
            iris_with(
                "5.1",
                r#","species":"setosa","n":[1,2],"m":{"a":null},"t":true,"z":null,"f":-1e-7"#,
            ),
        ),
        scored(
            "an escaped feature name",
            replace_first(&iris_with("5.1", ""), b"sepal_length", br"sepal\u005flength"),
        ),
        scored(
            "dotted names",
            VALID_IRIS.replace('_', "."),
        ),
        rejected("no fields", "{}", MissingFeature).naming("sepal_length"),
        rejected(
            "one feature missing",
            r#"{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4}"#,
            MissingFeature,
        )
        .naming("petal_width"),
        rejected(
            "features nested one level down",
            format!(r#"{{"features":{VALID_IRIS}}}"#),
            MissingFeature,
        ),
        rejected(
            "names differing in case",
            VALID_IRIS.to_uppercase(),
            MissingFeature,
        ),
        rejected(
            "a hyphenated alias is not an alias",
            VALID_IRIS.replace("sepal_length", "sepal-length"),
            MissingFeature,
        ),
        // Size: a value at the limit is read, one byte over is not.
        scored("exactly at the size limit", padded_iris(DEFAULT_MAX_RECORD_BYTES)),
        rejected(
            "one byte over the size limit",
            padded_iris(DEFAULT_MAX_RECORD_BYTES + 1),
            TooLarge,
        )
        .naming("1048577 bytes"),
        rejected("10 MB", padded_iris(TEN_MB), TooLarge),
        rejected(
            "10 MB of invalid UTF-8: refused before it is read",
            vec![0xff; TEN_MB],
            TooLarge,
        ),
        rejected(
            "10 MB of nesting: refused before it is read",
            "[".repeat(TEN_MB),
            TooLarge,
        ),
    ]
}

fn replace_first(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    cat(&[&bytes[..at], to, &bytes[at + from.len()..]])
}

/// A valid iris record padded with an extra field to exactly `len` bytes. The padding is
/// not repetitive, so that compression on the wire does not hide its size.
fn padded_iris(len: usize) -> Vec<u8> {
    let head = br#"{"id":"padded","pad":""#;
    let tail = &VALID_IRIS.as_bytes()[1..];
    let pad_len = len - head.len() - tail.len() - 2;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(head);
    out.extend((0..pad_len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(state % 62) as usize]
    }));
    out.extend_from_slice(b"\",");
    out.extend_from_slice(tail);
    assert_eq!(out.len(), len);
    out
}

fn user_event_corpus() -> Vec<Case> {
    use Reason::*;
    let deep_array = nested("[", "", "]", 100_000);
    vec![
        Case {
            name: "no value",
            value: None,
            want: Want::Rejected(Empty),
            detail: "",
        },
        rejected("zero-length value", "", Empty),
        rejected("bytes that are never UTF-8", b"\xff".to_vec(), NotUtf8),
        rejected(
            "Latin-1 in the uid",
            b"{\"uid\":\"\xe9\"}".to_vec(),
            NotUtf8,
        ),
        rejected(
            "Latin-1 in an extra field",
            b"{\"uid\":196,\"name\":\"Ren\xe9\"}".to_vec(),
            NotUtf8,
        ),
        // Truncated and deeply nested.
        rejected("cut after the colon", r#"{"uid":"#, InvalidJson),
        rejected("missing closing brace", r#"{"uid":196"#, InvalidJson),
        rejected("deep array, unclosed", "[".repeat(200_000), InvalidJson),
        rejected("deep array", deep_array.clone(), NotObject),
        scored(
            "deep array in an extra field",
            format!(r#"{{"x":{deep_array},"uid":196}}"#),
        ),
        rejected(
            "deep array as the uid",
            format!(r#"{{"uid":{deep_array}}}"#),
            InvalidUid,
        ),
        // Huge numbers, NaN and Infinity.
        rejected("uid 1e400", r#"{"uid":1e400}"#, InvalidUid),
        rejected("uid past i64", r#"{"uid":9223372036854775808}"#, InvalidUid)
            .naming("9223372036854775808"),
        scored("uid i64::MAX", r#"{"uid":9223372036854775807}"#),
        scored("uid i64::MIN", r#"{"uid":-9223372036854775808}"#),
        scored("uid -0", r#"{"uid":-0}"#),
        rejected("uid in exponent form", r#"{"uid":1e2}"#, InvalidUid),
        rejected("uid bare NaN", r#"{"uid":NaN}"#, InvalidJson),
        rejected("uid bare Infinity", r#"{"uid":Infinity}"#, InvalidJson),
        rejected(r#"uid "NaN""#, r#"{"uid":"NaN"}"#, InvalidUid),
        rejected("n bare NaN", r#"{"uid":196,"n":NaN}"#, InvalidJson),
        rejected(
            r#"n "Infinity""#,
            r#"{"uid":196,"n":"Infinity"}"#,
            InvalidCount,
        ),
        rejected("n 1e400", r#"{"uid":196,"n":1e400}"#, InvalidCount),
        scored("n far over the cap", r#"{"uid":196,"n":100000}"#),
        scored("n u64::MAX", r#"{"uid":196,"n":18446744073709551615}"#),
        // Wrong types.
        rejected("uid a numeric string", r#"{"uid":"196"}"#, InvalidUid).naming(r#""196""#),
        rejected("uid a fraction", r#"{"uid":1.5}"#, InvalidUid),
        rejected("uid a whole fraction", r#"{"uid":196.0}"#, InvalidUid),
        rejected("uid a boolean", r#"{"uid":true}"#, InvalidUid),
        rejected("uid null", r#"{"uid":null}"#, InvalidUid),
        rejected("uid an array", r#"{"uid":[196]}"#, InvalidUid),
        rejected("uid an object", r#"{"uid":{"id":196}}"#, InvalidUid),
        rejected("n zero", r#"{"uid":196,"n":0}"#, InvalidCount),
        rejected("n negative", r#"{"uid":196,"n":-1}"#, InvalidCount),
        rejected("n a fraction", r#"{"uid":196,"n":2.5}"#, InvalidCount),
        rejected("n a numeric string", r#"{"uid":196,"n":"5"}"#, InvalidCount),
        rejected("n null", r#"{"uid":196,"n":null}"#, InvalidCount),
        rejected("n a boolean", r#"{"uid":196,"n":true}"#, InvalidCount),
        rejected("a top-level number", "196", NotObject),
        rejected("a top-level string", r#""196""#, NotObject),
        rejected("a top-level null", "null", NotObject),
        rejected("an array of events", r#"[{"uid":196}]"#, NotObject),
        // Duplicate keys.
        rejected("uid twice", r#"{"uid":196,"uid":197}"#, DuplicateField).naming("uid"),
        rejected(
            "uid twice, the second one bad",
            r#"{"uid":196,"uid":"x"}"#,
            DuplicateField,
        ),
        rejected("n twice", r#"{"uid":196,"n":1,"n":2}"#, DuplicateField).naming("`n`"),
        rejected("id twice", r#"{"uid":196,"id":1,"id":1}"#, DuplicateField),
        scored("an extra field twice", r#"{"uid":196,"x":1,"x":2}"#),
        // Extra and missing fields.
        scored(
            "extra fields of every type",
            r#"{"uid":196,"user":"x","f":[1,{"a":null}],"t":false,"z":null,"big":1e999}"#,
        ),
        scored("an escaped uid name", r#"{"\u0075id":196}"#),
        scored("an unknown user", r#"{"uid":-42,"n":3}"#),
        rejected("no fields", "{}", MissingUid),
        rejected("uid in upper case", r#"{"UID":196}"#, MissingUid),
        rejected("user_id is not uid", r#"{"user_id":196}"#, MissingUid),
        // Size.
        rejected("10 MB", padded_iris(TEN_MB), TooLarge),
    ]
}

/// Runs a corpus through `model` both as one batch and record by record, and checks every
/// outcome against the table.
fn check_corpus(model: &LoadedModel, corpus: &[Case]) -> Vec<String> {
    let payloads: Vec<Option<Vec<u8>>> = corpus.iter().map(|c| c.value.clone()).collect();
    let outcomes = transform(model, &payloads, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(outcomes.len(), corpus.len(), "one outcome per input");
    let mut failures = Vec::new();
    for (i, (case, outcome)) in corpus.iter().zip(&outcomes).enumerate() {
        let got = match outcome {
            Outcome::Scored(bytes) => {
                let envelope: Envelope = match serde_json::from_slice(bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.push(format!("{}: output is not JSON: {e}", case.name));
                        continue;
                    }
                };
                assert_eq!(
                    envelope.offset, i as i64,
                    "{}: outputs in input order",
                    case.name
                );
                assert_eq!(envelope.model_version, model.version);
                Want::Scored
            }
            Outcome::Rejected(r) => {
                if !r.detail.contains(case.detail) {
                    failures.push(format!(
                        "{}: detail {:?} does not mention {:?}",
                        case.name, r.detail, case.detail
                    ));
                }
                Want::Rejected(r.reason)
            }
        };
        if got != case.want {
            failures.push(format!(
                "{}: want {:?}, got {outcome:.200?}",
                case.name, case.want
            ));
        }
        // A record's outcome does not depend on its neighbours.
        let alone = transform_batch(
            model,
            &[Input {
                payload: case.value.as_deref(),
                source: position(i),
            }],
            DEFAULT_MAX_RECORD_BYTES,
        );
        if alone.first() != Some(outcome) {
            failures.push(format!("{}: differs when scored alone", case.name));
        }
    }
    failures
}

#[test]
fn iris_corpus_gets_specific_reasons() {
    let failures = check_corpus(iris(), &iris_corpus());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn user_event_corpus_gets_specific_reasons() {
    let failures = check_corpus(recommender(), &user_event_corpus());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scored_corpus_records_carry_their_id_and_sensible_results() {
    let record = iris_with("5.1", r#","id":{"k":[1,null]},"x":"NaN""#);
    let outcomes = transform(iris(), &[Some(record)], DEFAULT_MAX_RECORD_BYTES);
    let Outcome::Scored(bytes) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    let json: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(json["id"], serde_json::json!({"k": [1, null]}));
    assert_eq!(json["label"], "setosa");

    let events = [
        r#"{"uid":196,"n":100000,"id":"e1"}"#,
        r#"{"uid":-9223372036854775808,"n":3}"#,
    ];
    let payloads: Vec<_> = events.iter().map(|e| Some(e.as_bytes().to_vec())).collect();
    let outcomes = transform(recommender(), &payloads, DEFAULT_MAX_RECORD_BYTES);
    let json: Vec<Value> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Scored(bytes) => serde_json::from_slice(bytes).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(json[0]["id"], "e1");
    assert_eq!(json[0]["cold_start"], false);
    let items = json[0]["items"].as_array().unwrap().len();
    assert!(items > 0 && items <= 100, "n is capped at MAX_N: {items}");
    assert_eq!(json[1]["uid"], i64::MIN);
    assert_eq!(json[1]["cold_start"], true);
    assert_eq!(json[1]["items"].as_array().unwrap().len(), 3);
}

/// A 10 MB value is refused on its length alone: the same bytes score under a limit that
/// admits them, and 10 MB that is not even UTF-8 gets the same reason, so the size check
/// comes before any reading.
#[test]
fn a_10_mb_value_is_refused_without_being_parsed() {
    let big = vec![Some(padded_iris(TEN_MB))];
    let refused = transform(iris(), &big, DEFAULT_MAX_RECORD_BYTES);
    assert!(
        matches!(&refused[0], Outcome::Rejected(r) if r.reason == Reason::TooLarge),
        "{:.200?}",
        refused[0]
    );
    let admitted = transform(iris(), &big, 16 << 20);
    assert!(
        matches!(admitted[0], Outcome::Scored(_)),
        "{:.200?}",
        admitted[0]
    );
    let garbage = vec![Some(vec![0xff; TEN_MB])];
    let refused = transform(iris(), &garbage, DEFAULT_MAX_RECORD_BYTES);
    assert!(
        matches!(&refused[0], Outcome::Rejected(r) if r.reason == Reason::TooLarge),
        "{:.200?}",
        refused[0]
    );
}

// ---------------------------------------------------------------------------------------
// Through the pipeline (mock cluster unless STREAMSCORE_TEST_BROKERS is set)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_a_key_come_out_without_a_key() {
    let broker = TestBroker::start();
    let topics = broker.topics(1).await;
    broker
        .produce(
            &topics.input,
            &[
                (None, Some(VALID_IRIS.as_bytes().to_vec())),
                (None, Some(br#"{"sepal_length":"#.to_vec())),
            ],
        )
        .await;
    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(IRIS_MODEL))
        .await;
    let outputs = broker
        .collect(
            &[&topics.output, &topics.dead_letters],
            1,
            2,
            Duration::from_secs(30),
        )
        .await;
    service.stop().await.expect("clean shutdown");

    assert_eq!(outputs.len(), 2, "{outputs:?}");
    let scored = outputs.iter().find(|o| o.topic == topics.output);
    let dead = outputs.iter().find(|o| o.topic == topics.dead_letters);
    let (Some(scored), Some(dead)) = (scored, dead) else {
        panic!("want one output and one dead letter: {outputs:?}")
    };
    assert_eq!(scored.key, None, "a null key stays null, not empty");
    assert_eq!(scored.json()["label"], "setosa");
    assert_eq!(dead.key, None, "a null key stays null, not empty");
    assert_eq!(
        dead.headers.get(HEADER_REASON).map(String::as_str),
        Some("invalid_json")
    );
    assert_eq!(dead.value.as_deref(), Some(&br#"{"sepal_length":"#[..]));
}

/// The harness's producer keeps librdkafka's 1 MB `message.max.bytes` (it would refuse the
/// record before sending it), and compresses (which would hide the size on the wire).
fn large_message_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", (16 << 20).to_string())
        .set("compression.type", "none")
        .create()
        .expect("producer")
}

/// The mock broker stores a 10 MB record: it has no size limit (a real broker's default
/// `max.message.bytes` of 1 MB would refuse it, and the service would never see it). It
/// keeps about 5 MB per partition, and the append that evicts an oversized record also
/// skips the log start past the record being appended, which is then never delivered; so
/// the big record goes alone into partition 0 and everything else into partition 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_value_is_dead_lettered_as_too_large() {
    let broker = TestBroker::start();
    let topics = broker.topics(2).await;
    let big = padded_iris(TEN_MB);
    let producer = large_message_producer(&broker.brokers);
    producer
        .send(
            FutureRecord::to(&topics.input)
                .partition(0)
                .key("huge")
                .payload(&big),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker took the 10 MB record");

    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(IRIS_MODEL))
        .await;
    let started = Instant::now();
    let outputs = broker
        .collect(
            &[&topics.output, &topics.dead_letters],
            2,
            1,
            Duration::from_secs(60),
        )
        .await;
    eprintln!("10 MB record dead-lettered after {:?}", started.elapsed());

    // Still scoring afterwards.
    producer
        .send(
            FutureRecord::to(&topics.input)
                .partition(1)
                .key("after")
                .payload(VALID_IRIS),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    let after = broker
        .collect_until(&[&topics.output], 2, Duration::from_secs(30), |seen| {
            seen.iter().any(|o| o.key_str() == "after")
        })
        .await;
    service.stop().await.expect("clean shutdown");

    assert_eq!(outputs.len(), 1, "the 10 MB record lands somewhere");
    let dead = &outputs[0];
    assert_eq!(dead.topic, topics.dead_letters);
    assert_eq!(dead.key_str(), "huge");
    assert_eq!(
        dead.headers.get(HEADER_REASON).map(String::as_str),
        Some("too_large")
    );
    assert!(dead.headers[HEADER_ERROR].contains(&big.len().to_string()));
    assert_eq!(dead.headers.get(HEADER_SOURCE_TOPIC), Some(&topics.input));
    // The mock takes the 10 MB dead letter whole; a broker with a smaller limit gets it
    // without its value, flagged.
    match &dead.value {
        Some(value) => assert!(value == &big, "the original value, unchanged"),
        None => assert_eq!(
            dead.headers.get(HEADER_PAYLOAD_OMITTED).map(String::as_str),
            Some("true")
        ),
    }
    assert!(
        after.iter().any(|o| o.key_str() == "after"),
        "scoring continues"
    );
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

/// One outcome per input, in input order, each the same as the record would get alone, and
/// every scored output well-formed.
fn check_batch(model: &LoadedModel, payloads: &[Option<Vec<u8>>]) -> Result<(), TestCaseError> {
    let outcomes = transform(model, payloads, DEFAULT_MAX_RECORD_BYTES);
    prop_assert_eq!(outcomes.len(), payloads.len());
    for (i, (outcome, payload)) in outcomes.iter().zip(payloads).enumerate() {
        let alone = transform_batch(
            model,
            &[Input {
                payload: payload.as_deref(),
                source: position(i),
            }],
            DEFAULT_MAX_RECORD_BYTES,
        );
        prop_assert_eq!(&alone[0], outcome);
        if let Outcome::Scored(bytes) = outcome {
            let envelope: Envelope = serde_json::from_slice(bytes)
                .map_err(|e| TestCaseError::fail(format!("output is not JSON: {e}")))?;
            prop_assert_eq!(envelope.offset, i as i64);
            prop_assert_eq!(&envelope.model_version, &model.version);
        }
    }
    Ok(())
}

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b" ",
    b"\"sepal_length\"",
    b"\"sepal.width\"",
    b"\"petal_length\"",
    b"\"petal_width\"",
    b"\"uid\"",
    b"\"n\"",
    b"\"id\"",
    b"1",
    b"-0",
    b"5.1",
    b"1e400",
    b"99999999999999999999",
    b"NaN",
    b"\"NaN\"",
    b"Infinity",
    b"null",
    b"true",
    b"\"x\"",
    b"\\u00",
    b"\\ud800",
    b"\\",
    b"\0",
];

/// Kept apart and rare: one such byte anywhere makes a record `not_utf8`, which would
/// otherwise hide every later stage of the decoder.
const NOT_UTF8: &[&[u8]] = &[b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"];

fn token() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        30 => prop::sample::select(TOKENS),
        1 => prop::sample::select(NOT_UTF8),
    ]
}

/// Fragments of the grammar, so that random inputs get past the first byte of the parser.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(token(), 0..48).prop_map(|t| t.concat())
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Truncate(Index),
    Flip(Index, u8),
    Splice(Index, usize, Vec<u8>),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        any::<Index>().prop_map(ByteEdit::Truncate),
        (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| ByteEdit::Flip(at, mask)),
        (
            any::<Index>(),
            0..8usize,
            prop_oneof![
                1 => prop::collection::vec(any::<u8>(), 0..8),
                3 => token().prop_map(<[u8]>::to_vec),
            ]
        )
            .prop_map(|(at, removed, inserted)| ByteEdit::Splice(at, removed, inserted)),
    ]
}

fn apply(bytes: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits {
        match edit {
            ByteEdit::Truncate(at) => out.truncate(at.index(out.len() + 1)),
            ByteEdit::Flip(at, mask) if !out.is_empty() => {
                let i = at.index(out.len());
                out[i] ^= mask;
            }
            ByteEdit::Flip(..) => {}
            ByteEdit::Splice(at, removed, inserted) => {
                let start = at.index(out.len() + 1);
                let end = (start + removed).min(out.len());
                out.splice(start..end, inserted.iter().copied());
            }
        }
    }
    out
}

fn mutated_record() -> impl Strategy<Value = Vec<u8>> {
    const VALID: &[&[u8]] = &[
        VALID_IRIS.as_bytes(),
        br#"{"id":"k","sepal.length":6,"sepal.width":2.9,"petal.length":4.5,"petal.width":1.5}"#,
        br#"{"uid":196,"n":5,"id":7}"#,
        br#"{"uid":-3}"#,
    ];
    (
        prop_oneof![
            prop::sample::select(VALID).prop_map(<[u8]>::to_vec),
            record_like(),
        ],
        prop::collection::vec(byte_edit(), 0..3),
    )
        .prop_map(|(record, edits)| apply(&record, &edits))
}

fn payload() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        3 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Some),
        3 => token_soup().prop_map(Some),
        3 => mutated_record().prop_map(Some),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(
            FEATURES.iter().chain(&DOTTED).chain(&["id", "uid", "n"]).copied().collect::<Vec<_>>()
        )
        .prop_map(String::from),
        1 => ".{0,8}",
    ]
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => 0.0..10.0f64,
        1 => any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1000..1000i64).prop_map(Value::from),
        finite().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec!["NaN", "Infinity", "-inf", "1e400", "5.1", "196", ""])
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Numbers as text, including ones no `f64` or `i64` holds.
fn raw_number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,400})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,5})?",
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "1e-400",
            "-0",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "5e-324",
            "18446744073709551616",
            "-9223372036854775809",
        ])
        .prop_map(String::from),
    ]
}

/// A field's value as JSON text.
fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json_value().prop_map(|v| v.to_string()),
        1 => raw_number(),
    ]
}

/// Renders an object by hand, so that keys may repeat and numbers may be out of range.
fn render(fields: &[(String, String)]) -> Vec<u8> {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

/// A field the decoder reads: its name, or (for a feature) its dotted alias; usually a
/// plausible value, sometimes a hostile one; occasionally missing or repeated.
fn read_field(
    names: &'static [&'static str],
    plausible: BoxedStrategy<String>,
) -> impl Strategy<Value = Vec<(String, String)>> {
    (
        prop::sample::select(names),
        prop_oneof![3 => plausible, 1 => field_text()],
        prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)],
    )
        .prop_map(|(name, value, copies)| vec![(name.to_string(), value); copies])
}

/// Objects shaped like the records the decoders expect, so that most of them get past the
/// envelope checks and exercise the field-level ones and the scoring behind them.
fn record_like() -> impl Strategy<Value = Vec<u8>> {
    const NAMES: [[&str; 2]; 4] = [
        ["sepal_length", "sepal.length"],
        ["sepal_width", "sepal.width"],
        ["petal_length", "petal.length"],
        ["petal_width", "petal.width"],
    ];
    let number = || finite().prop_map(|f| Value::from(f).to_string()).boxed();
    let iris = (
        read_field(&NAMES[0], number()),
        read_field(&NAMES[1], number()),
        read_field(&NAMES[2], number()),
        read_field(&NAMES[3], number()),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d].concat());
    let user = (
        read_field(&["uid"], (-5..1005i64).prop_map(|u| u.to_string()).boxed()),
        prop_oneof![
            Just(vec![]),
            read_field(&["n"], (1..120u32).prop_map(|n| n.to_string()).boxed()),
        ],
    )
        .prop_map(|(uid, n)| [uid, n].concat());
    (
        prop_oneof![iris.boxed(), user.boxed()],
        prop::collection::vec((key(), field_text()), 0..3),
    )
        .prop_flat_map(|(fields, extras)| Just([fields, extras].concat()).prop_shuffle())
        .prop_map(|fields| render(&fields))
}

fn json_document() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec((key(), field_text()), 0..10).prop_map(|f| render(&f)),
        record_like(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_keep_their_order(
        payloads in prop::collection::vec(payload(), 0..8)
    ) {
        check_batch(iris(), &payloads)?;
        check_batch(recommender(), &payloads)?;
    }

    #[test]
    fn arbitrary_json_never_panics_and_keeps_its_order(
        documents in prop::collection::vec(json_document(), 0..8)
    ) {
        let payloads: Vec<_> = documents.into_iter().map(Some).collect();
        check_batch(iris(), &payloads)?;
        check_batch(recommender(), &payloads)?;
    }
}

fn is_read_by_iris(name: &str) -> bool {
    name == "id" || FEATURES.contains(&name) || DOTTED.contains(&name)
}

fn extra_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof!["[a-z_.]{0,14}", ".{0,10}"]
                .prop_filter("a name the model does not read", |n| !is_read_by_iris(n)),
            field_text(),
        ),
        0..6,
    )
}

/// A valid iris record: features, optional id and extra fields, in any order.
fn iris_record() -> impl Strategy<Value = ([f64; 4], Option<Value>, Vec<(String, String)>)> {
    (
        prop::array::uniform4(finite()),
        prop::option::of(json_value()),
        extra_fields(),
    )
        .prop_flat_map(|(features, id, extras)| {
            let mut fields = extras;
            fields.extend(
                FEATURES
                    .iter()
                    .zip(features)
                    .map(|(name, f)| (name.to_string(), Value::from(f).to_string())),
            );
            if let Some(id) = &id {
                fields.push(("id".into(), id.to_string()));
            }
            (Just(features), Just(id), Just(fields).prop_shuffle())
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_iris_records_are_scored_whatever_else_they_hold(
        (features, id, fields) in iris_record()
    ) {
        let outcomes = transform(iris(), &[Some(render(&fields))], DEFAULT_MAX_RECORD_BYTES);
        let Outcome::Scored(bytes) = &outcomes[0] else {
            return Err(TestCaseError::fail(format!("{:?}", outcomes[0])));
        };
        let json: Value = serde_json::from_slice(bytes).expect("output is JSON");
        let probabilities = json["probabilities"].as_object().expect("probabilities");
        let total: f64 = probabilities.values().filter_map(Value::as_f64).sum();
        prop_assert!((total - 1.0).abs() <= 1e-4, "probabilities sum to {}", total);

        // The very probabilities the forest gives these features: the decoder read each
        // feature into its own column, whatever the field order.
        let Model::Forest(forest) = &iris().model else { unreachable!("iris is a forest") };
        let row = ndarray::Array2::from_shape_vec((1, 4), features.to_vec()).unwrap();
        let expected = forest.predict_proba(row.view());
        for (class, p) in iris().meta.classes.iter().zip(expected.row(0)) {
            prop_assert_eq!(probabilities[class].as_f64().map(|v| v as f32), Some(*p), "{}", class);
        }
        if let Some(id) = id {
            prop_assert_eq!(&json["id"], &id);
        } else {
            prop_assert!(json.get("id").is_none());
        }
    }

    #[test]
    fn dotted_and_underscored_names_are_the_same_field(
        values in prop::array::uniform4(prop_oneof![
            2 => finite().prop_map(|f| Value::from(f).to_string()),
            1 => field_text(),
        ]),
        dotted in any::<[bool; 4]>(),
        extras in extra_fields(),
    ) {
        let record = |use_dotted: [bool; 4]| {
            let mut fields = extras.clone();
            for (i, value) in values.iter().enumerate() {
                let name = if use_dotted[i] { DOTTED[i] } else { FEATURES[i] };
                fields.push((name.to_string(), value.clone()));
            }
            Some(render(&fields))
        };
        // Each scored alone, at the same source position, so that even the outputs' bytes
        // can be compared.
        let outcomes: Vec<_> = [record([false; 4]), record(dotted), record([true; 4])]
            .iter()
            .map(|p| transform(iris(), std::slice::from_ref(p), DEFAULT_MAX_RECORD_BYTES))
            .collect();
        prop_assert_eq!(&outcomes[0], &outcomes[1]);
        prop_assert_eq!(&outcomes[0], &outcomes[2]);
    }
}

// ---------------------------------------------------------------------------------------
// The model-file loader
// ---------------------------------------------------------------------------------------

fn iris_file_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(repo_path(IRIS_MODEL)).expect("iris model file"))
}

/// A recommender small enough to load hundreds of times: the shipped one is 3.7 MB.
fn small_recommender_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let meta = ModelMeta {
            features: vec!["uid".into()],
            classes: vec![],
            params: serde_json::json!({"factors": 2}),
            metrics: Default::default(),
        };
        let body = ModelBody::MatrixFactorization(RecommenderSpec {
            factors: 2,
            global_mean: 3.5,
            user_ids: vec![10, 20, 30],
            user_bias: vec![0.1, -0.2, 0.0],
            user_factors: vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5],
            item_ids: vec![100, 200, 300, 400],
            item_bias: vec![0.0, 0.2, -0.2, 0.1],
            item_factors: vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0, -1.0, 2.0],
            item_titles: vec![Some("A".into()), None, Some("C".into()), Some("D".into())],
            rated: vec![vec![0], vec![1, 3], vec![]],
        });
        serde_json::to_vec(&ModelFile::new(meta, body)).expect("serialises")
    })
}

/// A forest small enough to load hundreds of times, for the structural mutations.
fn small_forest_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let meta = ModelMeta {
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            classes: vec!["a".into(), "b".into()],
            params: serde_json::json!({"trees": 2}),
            metrics: Default::default(),
        };
        let leaf = |a: f32| NodeSpec::Leaf {
            distribution: vec![a, 1.0 - a],
        };
        let body = ModelBody::RandomForest(ForestSpec {
            trees: vec![
                TreeSpec {
                    nodes: vec![
                        NodeSpec::Split {
                            feature: 2,
                            threshold: 2.45,
                            left: 1,
                            right: 2,
                        },
                        leaf(1.0),
                        leaf(0.25),
                    ],
                },
                TreeSpec {
                    nodes: vec![leaf(0.5)],
                },
            ],
        });
        serde_json::to_vec(&ModelFile::new(meta, body)).expect("serialises")
    })
}

/// Scores a mixed batch with a model that loaded, which must not panic either.
fn score_smoke(model: &LoadedModel) -> Result<(), TestCaseError> {
    let payloads = [
        Some(VALID_IRIS.as_bytes().to_vec()),
        Some(br#"{"uid":10,"n":3}"#.to_vec()),
        Some(br#"{"uid":-1,"n":100}"#.to_vec()),
        Some(b"{}".to_vec()),
        None,
    ];
    let outcomes = transform(model, &payloads, DEFAULT_MAX_RECORD_BYTES);
    prop_assert_eq!(outcomes.len(), payloads.len());
    Ok(())
}

/// Loads possibly corrupted bytes. The version is a hash of the file's meaning, so a file
/// that still passes the check must mean exactly what the original meant.
fn check_load(original: &[u8], bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(file) = ModelFile::from_json(bytes) else {
        return Ok(());
    };
    let original = ModelFile::from_json(original).expect("the original loads");
    prop_assert_eq!(&file.version, &original.version);
    prop_assert_eq!(&file.meta, &original.meta);
    prop_assert_eq!(&file.body, &original.body);
    let loaded = LoadedModel::from_file(file)
        .map_err(|e| TestCaseError::fail(format!("same meaning, yet refused: {e}")))?;
    score_smoke(&loaded)
}

#[derive(Debug, Clone)]
enum TreeEdit {
    /// Replaces one of the numbers.
    Number(Index, Value),
    /// Replaces one of the strings: feature and class names, titles.
    Text(Index, String),
    /// Replaces any node with any JSON.
    Replace(Index, Value),
    RemoveElement(Index, Index),
    DuplicateElement(Index, Index),
}

/// Numbers that probe the loader's checks: indices out of range, sizes that overflow,
/// values no `f32` holds.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0..8u64).prop_map(Value::from),
        prop::sample::select(vec![
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
            1 << 40,
        ])
        .prop_map(Value::from),
        (-8..0i64).prop_map(Value::from),
        prop::sample::select(vec![0.5, -0.5, 1e30, 1e300, -1e300, 1e-300, 3.4e38, -0.0])
            .prop_map(Value::from),
    ]
}

fn tree_edit() -> impl Strategy<Value = TreeEdit> {
    prop_oneof![
        4 => (any::<Index>(), hostile_number()).prop_map(|(at, v)| TreeEdit::Number(at, v)),
        2 => (
            any::<Index>(),
            prop::sample::select(vec!["id", "sepal_length", "sepal.length", "a", ""]),
        )
            .prop_map(|(at, t)| TreeEdit::Text(at, t.to_string())),
        1 => (any::<Index>(), json_value()).prop_map(|(at, v)| TreeEdit::Replace(at, v)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, e)| TreeEdit::RemoveElement(a, e)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, e)| TreeEdit::DuplicateElement(a, e)),
    ]
}

/// JSON pointers to every node of `v` that `keep` selects, in pre-order.
fn pointers(v: &Value, at: &str, keep: fn(&Value) -> bool, out: &mut Vec<String>) {
    if keep(v) {
        out.push(at.to_owned());
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, &format!("{at}/{i}"), keep, out);
            }
        }
        Value::Object(fields) => {
            for (k, item) in fields {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(item, &format!("{at}/{k}"), keep, out);
            }
        }
        _ => {}
    }
}

/// The node `at` selects among those `keep` selects, if there is one.
fn pick<'a>(tree: &'a mut Value, at: &Index, keep: fn(&Value) -> bool) -> Option<&'a mut Value> {
    let mut found = Vec::new();
    pointers(tree, "", keep, &mut found);
    if found.is_empty() {
        return None;
    }
    let pointer = found.swap_remove(at.index(found.len()));
    tree.pointer_mut(&pointer)
}

fn edit_tree(tree: &mut Value, edit: &TreeEdit) {
    match edit {
        TreeEdit::Number(at, new) => {
            if let Some(node) = pick(tree, at, Value::is_number) {
                *node = new.clone();
            }
        }
        TreeEdit::Text(at, new) => {
            if let Some(node) = pick(tree, at, Value::is_string) {
                *node = Value::from(new.as_str());
            }
        }
        TreeEdit::Replace(at, new) => {
            if let Some(node) = pick(tree, at, |_| true) {
                *node = new.clone();
            }
        }
        TreeEdit::RemoveElement(at, element) => {
            let non_empty = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
            if let Some(Value::Array(items)) = pick(tree, at, non_empty) {
                items.remove(element.index(items.len()));
            }
        }
        TreeEdit::DuplicateElement(at, element) => {
            let non_empty = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
            if let Some(Value::Array(items)) = pick(tree, at, non_empty) {
                let copy = items[element.index(items.len())].clone();
                items.push(copy);
            }
        }
    }
}

/// Loads a model file whose structure was edited and whose version was then re-stamped,
/// as a hand-edited (rather than corrupted) file would be: past the hash, every check of
/// `LoadedModel::from_file` is reached, and none may panic.
fn check_restamped(original: &[u8], edits: &[TreeEdit]) -> Result<(), TestCaseError> {
    let mut tree: Value = serde_json::from_slice(original).expect("the original is JSON");
    for edit in edits {
        edit_tree(&mut tree, edit);
    }
    let Ok(file) = serde_json::from_value::<ModelFile>(tree) else {
        return Ok(());
    };
    let restamped = ModelFile::new(file.meta, file.body);
    if let Ok(bytes) = serde_json::to_vec(&restamped) {
        if let Ok(reread) = ModelFile::from_json(&bytes) {
            if let Ok(model) = LoadedModel::from_file(reread) {
                score_smoke(&model)?;
            }
        }
    }
    if let Ok(model) = LoadedModel::from_file(restamped) {
        score_smoke(&model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn corrupted_model_files_are_refused_or_mean_the_same(
        which in 0..3usize,
        edits in prop::collection::vec(byte_edit(), 1..4),
    ) {
        let original = [iris_file_bytes(), small_recommender_bytes(), small_forest_bytes()][which];
        check_load(original, &apply(original, &edits))?;
    }

    #[test]
    fn arbitrary_json_is_not_a_model(document in json_document()) {
        prop_assert!(ModelFile::from_json(&document).is_err());
    }

    #[test]
    fn hand_edited_model_files_load_or_are_refused_without_panicking(
        which in 0..2usize,
        edits in prop::collection::vec(tree_edit(), 1..4),
    ) {
        let original = [small_recommender_bytes(), small_forest_bytes()][which];
        check_restamped(original, &edits)?;
    }
}

/// Hand edits of the shipped forest: fewer cases, since each one re-hashes 70 kB.
#[test]
fn hand_edited_shipped_forest_loads_or_is_refused_without_panicking() {
    let mut runner = proptest::test_runner::TestRunner::new(config(32));
    runner
        .run(&prop::collection::vec(tree_edit(), 1..4), |edits| {
            check_restamped(iris_file_bytes(), &edits)
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Known deviations: each asserts what the README (or the code's own doc) promises and what
// the code does not do yet. Ignored so that CI stays green; drop the `ignore` with the fix.
// ---------------------------------------------------------------------------------------

#[test]
fn nan_spelled_with_an_escape_is_non_finite() {
    let outcomes = transform(
        iris(),
        &[Some(iris_with(r#""\u004eaN""#, ""))],
        DEFAULT_MAX_RECORD_BYTES,
    );
    assert!(
        matches!(&outcomes[0], Outcome::Rejected(r) if r.reason == Reason::NonFiniteFeature),
        "{:?}",
        outcomes[0]
    );
}

#[test]
fn any_positive_n_is_capped() {
    let outcomes = transform(
        recommender(),
        &[Some(br#"{"uid":196,"n":18446744073709551616}"#.to_vec())],
        DEFAULT_MAX_RECORD_BYTES,
    );
    assert!(
        matches!(outcomes[0], Outcome::Scored(_)),
        "{:?}",
        outcomes[0]
    );
}

/// Re-stamps the small forest after `edit`, as a hand-edited file would be.
fn edited_forest(edit: impl FnOnce(&mut Value)) -> ModelFile {
    let mut tree: Value = serde_json::from_slice(small_forest_bytes()).unwrap();
    edit(&mut tree);
    let file: ModelFile = serde_json::from_value(tree).unwrap();
    ModelFile::new(file.meta, file.body)
}

#[test]
fn forests_that_cannot_score_correctly_are_refused() {
    let cases: Vec<(&str, ModelFile)> = vec![
        // Every record would then be dead-lettered as missing_feature.
        (
            "a feature named twice",
            edited_forest(|t| t["meta"]["features"][1] = "sepal_length".into()),
        ),
        (
            "a feature named as another's dotted alias",
            edited_forest(|t| t["meta"]["features"][1] = "sepal.length".into()),
        ),
        (
            "a feature named id",
            edited_forest(|t| t["meta"]["features"][1] = "id".into()),
        ),
        // The output's probabilities object would hold the key twice.
        (
            "a class named twice",
            edited_forest(|t| t["meta"]["classes"] = serde_json::json!(["a", "a"])),
        ),
        // forest.rs: "Class frequencies ... (sums to 1)"; outputs would not.
        (
            "a leaf whose weights do not sum to 1",
            edited_forest(|t| {
                t["model"]["trees"][0]["nodes"][1]["distribution"] = serde_json::json!([5.0, 0.0])
            }),
        ),
    ];
    let accepted: Vec<&str> = cases
        .into_iter()
        .filter(|(_, file)| LoadedModel::from_file(file.clone()).is_ok())
        .map(|(name, _)| name)
        .collect();
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}
