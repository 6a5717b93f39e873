//! Exactly-once mode against the mock cluster.
//!
//! What the mock can show: the transactional calls succeed end to end, injected errors on
//! each transactional request are recovered from without skipping a record, and a second
//! instance with the same transactional id fences the first. What it cannot show: the mock
//! hands aborted records to read_committed consumers and does not store offsets sent to a
//! transaction, so "each result exactly once after aborts and restarts" rests on a real
//! broker (README: Delivery guarantees).

mod common;

use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use streamscore::pipeline::Guarantee;
use streamscore::service::ServiceHandle;

const PARTITIONS: i32 = 2;

async fn start_eos(
    broker: &TestBroker,
    topics: &Topics,
    group: &str,
    txn_id: &str,
) -> ServiceHandle {
    let mut config = broker.pipeline_config(topics, group);
    config.guarantee = Guarantee::ExactlyOnce {
        transactional_id: txn_id.to_owned(),
    };
    broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_commits_as_one_transaction() {
    const N: usize = 2_000;
    // The broker's own count of transactional requests is the check: the service's counters
    // of batches and transactions move together and could not disagree.
    let cluster = MockBrokers::start(1);
    let broker = &cluster.broker;
    let topics = cluster.topics(PARTITIONS, [1, 1, 1]);
    broker.produce(&topics.input, &iris_inputs(0..N)).await;
    let service = start_eos(broker, &topics, &unique("group"), &unique("txn")).await;
    let outputs = collect_ids(broker, &topics, N, Duration::from_secs(60)).await;
    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    service.stop().await.expect("clean shutdown");

    let counts = id_counts(&outputs);
    assert_eq!(counts.len(), N, "every input scored");
    assert!(counts.values().all(|c| *c == 1), "no fault, no duplicate");
    let committed = metric(
        &metrics,
        r#"streamscore_transactions_total{result="committed"}"#,
    ) as usize;
    let batches = metric(&metrics, "streamscore_batches_total") as usize;
    assert_eq!(
        metric(
            &metrics,
            r#"streamscore_transactions_total{result="aborted"}"#
        ),
        0
    );
    let end_txn = cluster.requests(RDKafkaApiKey::EndTxn);
    let add_offsets = cluster.requests(RDKafkaApiKey::AddOffsetsToTxn);
    let txn_offset_commits = cluster.requests(RDKafkaApiKey::TxnOffsetCommit);
    let offset_commits = cluster.requests(RDKafkaApiKey::OffsetCommit);
    eprintln!(
        "{batches} batches, {committed} committed; broker saw {end_txn} EndTxn, {add_offsets} \
         AddOffsetsToTxn, {txn_offset_commits} TxnOffsetCommit, {offset_commits} OffsetCommit"
    );
    assert!(batches >= N / 500, "{batches} batches of at most 500");
    assert_eq!(committed, batches);
    assert_eq!(end_txn, committed, "one EndTxn per batch");
    assert_eq!(
        add_offsets, committed,
        "every transaction carries its offsets"
    );
    assert_eq!(txn_offset_commits, committed);
    assert_eq!(
        offset_commits, 0,
        "no offset committed outside a transaction"
    );
}

/// Injects `errors` into the broker's answers to `api` while records flow, then checks that
/// every input still comes out (at least once: the mock shows aborted records too).
async fn survives(api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) -> (usize, u64, u64) {
    const N: usize = 600;
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(PARTITIONS).await;
    if api == RDKafkaApiKey::InitProducerId {
        mock.request_errors(api, errors);
    }
    let service = start_eos(&broker, &topics, &unique("group"), &unique("txn")).await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    broker.produce(&topics.input, &iris_inputs(0..N / 2)).await;
    let _ = broker
        .collect(&[&topics.output], PARTITIONS, 50, Duration::from_secs(30))
        .await;
    if api != RDKafkaApiKey::InitProducerId {
        mock.request_errors(api, errors);
    }
    broker.produce(&topics.input, &iris_inputs(N / 2..N)).await;
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(60)).await;
    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    service
        .stop()
        .await
        .expect("the service survived the faults");

    let counts = id_counts(&outputs);
    let missing: Vec<u64> = (0..N as u64).filter(|i| !counts.contains_key(i)).collect();
    assert!(missing.is_empty(), "{api:?}: skipped {missing:?}");
    let duplicates = counts.values().map(|c| c - 1).sum();
    let committed = metric(
        &metrics,
        r#"streamscore_transactions_total{result="committed"}"#,
    );
    let aborted = metric(
        &metrics,
        r#"streamscore_transactions_total{result="aborted"}"#,
    );
    eprintln!("{api:?}: {N} in, {} out, {duplicates} duplicates (aborted batches re-read), {committed} committed, {aborted} aborted", outputs.len());
    (duplicates, committed, aborted)
}

use RDKafkaRespErr::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_id_errors_are_retried() {
    let (duplicates, committed, aborted) = survives(
        RDKafkaApiKey::InitProducerId,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
        ],
    )
    .await;
    assert!(committed > 0);
    assert_eq!((duplicates, aborted), (0, 0), "retried before any batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_partitions_to_txn_errors_abort_and_replay() {
    let (_, committed, aborted) = survives(
        RDKafkaApiKey::AddPartitionsToTxn,
        &[
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ],
    )
    .await;
    assert!(committed > 0);
    assert!(aborted >= 1, "an authorization failure aborts the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_offset_commit_errors_are_recovered() {
    let (_, committed, _) = survives(
        RDKafkaApiKey::TxnOffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        ],
    )
    .await;
    assert!(committed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_txn_errors_are_recovered() {
    let (_, committed, _) = survives(
        RDKafkaApiKey::EndTxn,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
        ],
    )
    .await;
    assert!(committed > 0);
}

/// Fencing, as the broker reports it. A real broker answers a zombie's EndTxn with
/// PRODUCER_FENCED once another instance has initialised the same transactional id; the mock
/// does not track epochs that way (a second instance with the same id does not fence the
/// first on it), so the test injects that answer and then starts the replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_instance_stops_and_its_replacement_recovers_everything() {
    const N: usize = 600;
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(PARTITIONS).await;
    let (group, txn_id) = (unique("group"), unique("txn"));
    let first = start_eos(&broker, &topics, &group, &txn_id).await;
    wait_ready(first.http_addr, Duration::from_secs(30)).await;
    broker.produce(&topics.input, &iris_inputs(0..N / 2)).await;
    let _ = broker
        .collect(
            &[&topics.output],
            PARTITIONS,
            N / 2,
            Duration::from_secs(30),
        )
        .await;

    mock.request_errors(RDKafkaApiKey::EndTxn, &[RD_KAFKA_RESP_ERR_PRODUCER_FENCED]);
    broker.produce(&topics.input, &iris_inputs(N / 2..N)).await;
    let first_result = tokio::time::timeout(Duration::from_secs(60), first.wait())
        .await
        .expect("the fenced instance stops by itself");
    let err = first_result.expect_err("a fenced instance stops with an error");
    assert!(format!("{err:#}").contains("fatal"), "{err:#}");

    // The replacement takes the same transactional id and group and finishes the work.
    let second = start_eos(&broker, &topics, &group, &txn_id).await;
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(60)).await;
    assert_eq!(id_counts(&outputs).len(), N, "every input scored");
    second.stop().await.expect("clean shutdown");
}
