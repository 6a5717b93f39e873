//! End-to-end tests of the iris scoring service through a Kafka broker (the in-process mock
//! cluster unless `STREAMSCORE_TEST_BROKERS` names another), counting every record.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use streamscore::pipeline::sink::{
    HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};

const PARTITIONS: i32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_record_is_scored_exactly_once_with_key_and_id() {
    const N: usize = 10_000;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let rows = iris_rows();
    let inputs: Vec<_> = (0..N)
        .map(|i| {
            let (features, _) = &rows[i % rows.len()];
            (
                Some(format!("key-{i}").into_bytes()),
                Some(iris_json(i, features)),
            )
        })
        .collect();
    broker.produce(&topics.input, &inputs).await;

    let before_start = epoch_ms();
    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(IRIS_MODEL))
        .await;
    let both = [topics.output.as_str(), topics.dead_letters.as_str()];
    let started = std::time::Instant::now();
    let outputs = broker
        .collect(&both, PARTITIONS, N, Duration::from_secs(90))
        .await;
    let after_collect = epoch_ms();
    eprintln!("{} outputs after {:?}", outputs.len(), started.elapsed());
    service.stop().await.expect("clean shutdown");
    // Once stopped, re-read everything: a stray extra record would show up now.
    let settled = broker
        .collect(&both, PARTITIONS, N + 1, Duration::from_secs(3))
        .await;
    assert_eq!(settled.len(), N, "no extra records after shutdown");

    assert_eq!(
        outputs.len(),
        N,
        "one output per input, nothing dead-lettered"
    );
    let mut seen = HashSet::new();
    let mut correct = 0;
    for out in &outputs {
        assert_eq!(out.topic, topics.output);
        let json = out.json();
        let id = json["id"].as_u64().expect("id kept") as usize;
        assert!(seen.insert(id), "duplicate output for id {id}");
        assert_eq!(out.key_str(), format!("key-{id}"), "key kept");
        let probabilities = json["probabilities"].as_object().expect("probabilities");
        let total: f64 = probabilities.values().map(|p| p.as_f64().unwrap()).sum();
        assert!(
            (total - 1.0).abs() < 1e-3,
            "probabilities sum to 1, got {total}"
        );
        assert!(json["model_version"].as_str().unwrap().starts_with("rf-"));
        assert!(json["offset"].is_i64() && json["partition"].is_i64());
        // Stamped by the service when it produced the output, in milliseconds.
        match out.timestamp {
            rdkafka::Timestamp::CreateTime(ms) => assert!(
                (before_start..=after_collect).contains(&ms),
                "output {id} created at {ms}, outside the run ({before_start}..={after_collect})"
            ),
            other => panic!("output {id} has no creation time: {other:?}"),
        }
        let (_, species) = &rows[id % rows.len()];
        correct += usize::from(json["label"] == species.as_str());
    }
    assert_eq!(seen.len(), N);
    let accuracy = correct as f64 / N as f64;
    assert!(accuracy >= 0.95, "accuracy {accuracy} on the labelled rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_dead_lettered_with_their_reason() {
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let valid = iris_json(0, &[5.1, 3.5, 1.4, 0.2]);
    let ok_rest = r#""sepal_width":3.5,"petal_length":1.4,"petal_width":0.2"#;
    let big = format!(r#"{{"pad":"{}",{ok_rest}}}"#, "x".repeat(300_000));
    let malformed: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("empty", None),
        ("empty", Some(Vec::new())),
        ("not_utf8", Some(b"\xff\xfe\xfd".to_vec())),
        ("invalid_json", Some(b"{\"sepal_length\": 5.1,".to_vec())),
        ("not_object", Some(b"[5.1, 3.5, 1.4, 0.2]".to_vec())),
        (
            "missing_feature",
            Some(format!("{{{ok_rest}}}").into_bytes()),
        ),
        (
            "non_numeric_feature",
            Some(format!(r#"{{"sepal_length":"long",{ok_rest}}}"#).into_bytes()),
        ),
        (
            "non_finite_feature",
            Some(format!(r#"{{"sepal_length":"NaN",{ok_rest}}}"#).into_bytes()),
        ),
        (
            "non_finite_feature",
            Some(format!(r#"{{"sepal_length":1e400,{ok_rest}}}"#).into_bytes()),
        ),
        (
            "duplicate_field",
            Some(format!(r#"{{"sepal_length":1,"sepal_length":2,{ok_rest}}}"#).into_bytes()),
        ),
        ("too_large", Some(big.into_bytes())),
    ];
    // Interleave valid records so a bad one never stalls its neighbours.
    let mut inputs = Vec::new();
    let mut expected = HashMap::new();
    for (i, (reason, value)) in malformed.iter().enumerate() {
        inputs.push((Some(format!("good-{i}").into_bytes()), Some(valid.clone())));
        let key = format!("bad-{i}");
        expected.insert(key.clone(), (*reason, value.clone()));
        inputs.push((Some(key.into_bytes()), value.clone()));
    }
    broker.produce(&topics.input, &inputs).await;

    let mut config = broker.pipeline_config(&topics, &unique("group"));
    config.max_record_bytes = 200_000;
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let outputs = broker
        .collect(
            &[&topics.output, &topics.dead_letters],
            PARTITIONS,
            inputs.len(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(outputs.len(), inputs.len(), "every input lands somewhere");

    let mut seen_keys = HashSet::new();
    for out in &outputs {
        let key = out.key_str();
        assert!(seen_keys.insert(key.clone()), "{key} landed twice");
        if key.starts_with("good-") {
            assert_eq!(out.topic, topics.output, "{key}");
            continue;
        }
        assert_eq!(out.topic, topics.dead_letters, "{key} is dead-lettered");
        let (reason, original) = &expected[&key];
        assert_eq!(
            out.headers.get(HEADER_REASON).map(String::as_str),
            Some(*reason),
            "{key}"
        );
        assert_eq!(out.headers.get(HEADER_SOURCE_TOPIC), Some(&topics.input));
        assert!(out.headers[HEADER_SOURCE_PARTITION].parse::<i32>().is_ok());
        assert!(out.headers[HEADER_SOURCE_OFFSET].parse::<i64>().is_ok());
        // The names Kafka Streams' dead-letter tooling reads (KIP-1034), spelled out so that a
        // renamed constant fails here rather than in someone's replay job.
        for name in [
            "__streams.errors.exception",
            "__streams.errors.message",
            "__streams.errors.topic",
            "__streams.errors.partition",
            "__streams.errors.offset",
        ] {
            assert!(
                out.headers.contains_key(name),
                "{key} lacks {name}: {out:?}"
            );
        }
        // Original bytes travel unchanged (an empty value and no value both read back empty).
        assert_eq!(
            out.value.clone().unwrap_or_default(),
            original.clone().unwrap_or_default(),
            "{key} keeps its bytes"
        );
    }

    // The service is still scoring after all that.
    broker
        .produce(
            &topics.input,
            &[(Some(b"after".to_vec()), Some(valid.clone()))],
        )
        .await;
    let after = broker
        .collect(
            &[&topics.output],
            PARTITIONS,
            malformed.len() + 1,
            Duration::from_secs(30),
        )
        .await;
    assert!(
        after.iter().any(|o| o.key_str() == "after"),
        "scoring continues"
    );
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_resumes_from_its_commits_without_losing_records() {
    const N: usize = 4_000;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let group = unique("group");
    let model = repo_path(IRIS_MODEL);
    let rows = iris_rows();
    let inputs: Vec<_> = (0..N)
        .map(|i| {
            (
                Some(format!("k{i}").into_bytes()),
                Some(iris_json(i, &rows[i % rows.len()].0)),
            )
        })
        .collect();

    // The first instance is stopped while input is still arriving.
    let first = broker.start_service(&topics, &group, &model).await;
    produce_with(
        &unbatched_producer(&broker.brokers),
        &topics.input,
        &inputs[..N / 2],
    )
    .await;
    let early = broker
        .collect(
            &[&topics.output],
            PARTITIONS,
            N / 4,
            Duration::from_secs(60),
        )
        .await;
    assert!(early.len() >= N / 4, "the first instance was scoring");
    let producing = {
        let rest = inputs[N / 2..].to_vec();
        let broker_addr = broker.brokers.clone();
        let input = topics.input.clone();
        tokio::spawn(
            async move { produce_with(&unbatched_producer(&broker_addr), &input, &rest).await },
        )
    };
    first.stop().await.expect("graceful stop");
    producing.await.expect("producer task");

    let second = broker.start_service(&topics, &group, &model).await;
    let mut ids = HashSet::new();
    let outputs = broker
        .collect_until(
            &[&topics.output],
            PARTITIONS,
            Duration::from_secs(60),
            |seen| {
                if let Some(last) = seen.last() {
                    ids.insert(last.json()["id"].as_u64().unwrap());
                }
                ids.len() >= N
            },
        )
        .await;
    second.stop().await.expect("graceful stop");

    let mut counts: HashMap<u64, usize> = HashMap::new();
    for out in &outputs {
        *counts
            .entry(out.json()["id"].as_u64().unwrap())
            .or_default() += 1;
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !counts.contains_key(&(*i as u64)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} inputs never scored, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    // A graceful stop commits the batch in flight, so only records whose commit raced the
    // shutdown could be re-read: at most one batch per partition.
    assert!(
        duplicates <= 500 * PARTITIONS as usize,
        "{duplicates} duplicates"
    );
    eprintln!(
        "restart: {N} inputs, {} outputs, {duplicates} duplicates",
        outputs.len()
    );
}

fn epoch_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}
