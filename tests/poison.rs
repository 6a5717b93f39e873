//! Poison records: outputs the broker refuses for good. After bounded re-sends they go to the
//! dead-letter topic as `undeliverable`, and the stream goes on; if the dead-letter topic
//! refuses them too, the service stops with the batch uncommitted and readiness false. Both
//! delivery modes.
//!
//! The mock cluster injects request errors per API for the whole cluster, which would hit the
//! dead-letter topic as well; here the output topic's partitions are led by their own broker
//! and the errors are pushed onto that broker alone (`common::MockBrokers`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::types::RDKafkaRespErr;
use streamscore::pipeline::sink::{
    HEADER_ERROR, HEADER_PAYLOAD_OMITTED, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
};
use streamscore::pipeline::Guarantee;
use streamscore::service::ServiceHandle;

const PARTITIONS: i32 = 2;
const INPUT_BROKER: i32 = 1;
const OUTPUT_BROKER: i32 = 2;
const DEAD_LETTER_BROKER: i32 = 3;

async fn start(cluster: &MockBrokers, topics: &Topics, guarantee: Guarantee) -> ServiceHandle {
    let mut config = cluster.broker.pipeline_config(topics, &unique("group"));
    config.max_batch = 100;
    config.guarantee = guarantee;
    cluster
        .broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await
}

fn exactly_once() -> Guarantee {
    Guarantee::ExactlyOnce {
        transactional_id: unique("txn"),
    }
}

/// Input keys (`k<i>`) seen on the output topic and as `undeliverable` dead letters, read until
/// every input is accounted for and then 2 s more, so later duplicates are counted too.
async fn outcomes(
    cluster: &MockBrokers,
    topics: &Topics,
    n: usize,
) -> (HashMap<String, usize>, Vec<Collected>) {
    let mut keys = std::collections::HashSet::new();
    let got = collect_settled(
        &cluster.broker,
        &[&topics.output, &topics.dead_letters],
        PARTITIONS,
        Duration::from_secs(60),
        |c| {
            keys.insert(c.key_str());
            keys.len() >= n
        },
    )
    .await;
    let mut counts = HashMap::new();
    for c in &got {
        *counts.entry(c.key_str()).or_default() += 1;
    }
    let undeliverable = got
        .iter()
        .filter(|c| c.topic == topics.dead_letters)
        .cloned()
        .collect();
    (counts, undeliverable)
}

fn check_undeliverable(letters: &[Collected]) {
    assert!(!letters.is_empty(), "some outputs were dead-lettered");
    for l in letters {
        assert_eq!(l.headers[HEADER_REASON], "undeliverable", "{l:?}");
        assert_eq!(l.headers[HEADER_PAYLOAD_OMITTED], "true");
        assert!(l.value.is_none(), "no value: {l:?}");
        assert!(l.headers.contains_key(HEADER_SOURCE_PARTITION));
        assert!(l.headers.contains_key(HEADER_SOURCE_OFFSET));
        assert!(l.headers[HEADER_ERROR].contains("InvalidRecord"), "{l:?}");
    }
}

/// `errors` refusals of the output broker's produce requests: at-least-once needs enough for
/// one batch to exhaust its re-sends; exactly-once learns from a single aborted attempt.
async fn a_refused_output_is_dead_lettered(guarantee: Guarantee, errors: usize) {
    let mode = format!("{guarantee:?}");
    const N: usize = 600;
    let cluster = MockBrokers::start(3);
    let topics = cluster.topics(
        PARTITIONS,
        [INPUT_BROKER, OUTPUT_BROKER, DEAD_LETTER_BROKER],
    );
    cluster
        .broker
        .produce(&topics.input, &iris_inputs(0..N))
        .await;
    cluster.refuse_produce(
        OUTPUT_BROKER,
        errors,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD,
    );
    let service = start(&cluster, &topics, guarantee).await;
    let (counts, undeliverable) = outcomes(&cluster, &topics, N).await;
    // The stream went on: still ready, and the dead letters are counted.
    wait_ready(service.http_addr, Duration::from_secs(10)).await;
    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    service.stop().await.expect("clean shutdown");

    let missing = (0..N)
        .filter(|i| !counts.contains_key(&format!("k{i}")))
        .count();
    assert_eq!(
        missing, 0,
        "every input is an output or an undeliverable dead letter"
    );
    check_undeliverable(&undeliverable);
    let counted = metric(
        &metrics,
        r#"streamscore_records_dead_lettered_total{reason="undeliverable"}"#,
    );
    assert!(counted >= 1, "{counted}");
    eprintln!(
        "FAULT-MATRIX poison output ({}): in={N} out={} lost=0 undeliverable={} duplicated={}",
        mode.split_whitespace().next().unwrap_or_default(),
        counts.values().sum::<usize>(),
        undeliverable.len(),
        counts.values().map(|c| c - 1).sum::<usize>()
    );
}

async fn stops_when_the_dead_letter_topic_refuses_too(guarantee: Guarantee) {
    const N: usize = 300;
    let cluster = MockBrokers::start(3);
    let topics = cluster.topics(
        PARTITIONS,
        [INPUT_BROKER, OUTPUT_BROKER, DEAD_LETTER_BROKER],
    );
    cluster
        .broker
        .produce(&topics.input, &iris_inputs(0..N))
        .await;
    for broker in [OUTPUT_BROKER, DEAD_LETTER_BROKER] {
        cluster.refuse_produce(
            broker,
            500,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD,
        );
    }
    let service = start(&cluster, &topics, guarantee).await;
    let state = Arc::clone(&service.state);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(90), service.wait())
        .await
        .expect("the service stops instead of looping");
    let err = result.expect_err("stopped with an error");
    let message = format!("{err:#}");
    eprintln!("stopped after {:?}: {message}", started.elapsed());
    assert!(message.contains("dead-letter topic"), "{message}");
    assert!(message.contains("uncommitted"), "{message}");
    assert!(state.ready().is_err(), "not ready once stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_dead_letters_a_refused_output() {
    a_refused_output_is_dead_lettered(Guarantee::AtLeastOnce, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_stops_uncommitted_when_dead_letters_are_refused_too() {
    stops_when_the_dead_letter_topic_refuses_too(Guarantee::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_dead_letters_a_refused_output() {
    a_refused_output_is_dead_lettered(exactly_once(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_stops_instead_of_replaying_forever() {
    stops_when_the_dead_letter_topic_refuses_too(exactly_once()).await;
}
