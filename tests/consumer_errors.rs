//! Consumer errors librdkafka does not recover from by itself: the instance stops being
//! ready at once and the service ends with an error (the binary exits non-zero), leaving what
//! it has not committed to a restart. Injected through the mock cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr, RDKafkaRespErr::*};

async fn stops_on(api: RDKafkaApiKey, error: RDKafkaRespErr, static_member: bool) -> String {
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(2).await;
    let mut config = broker.pipeline_config(&topics, &unique("group"));
    if static_member {
        config
            .consumer_properties
            .push(("group.instance.id".into(), unique("pod")));
    }
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    broker.produce(&topics.input, &iris_inputs(0..100)).await;
    let _ = broker
        .collect(&[&topics.output], 2, 100, Duration::from_secs(30))
        .await;
    mock.request_errors(api, &[error; 50]);
    let state = Arc::clone(&service.state);
    let result = tokio::time::timeout(Duration::from_secs(60), service.wait())
        .await
        .expect("the service stops by itself");
    let message = format!("{:#}", result.expect_err("stopped with an error"));
    assert!(state.ready().is_err(), "not ready");
    eprintln!("{api:?} {error:?}: {message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_static_member_stops() {
    let message = stops_on(
        RDKafkaApiKey::Heartbeat,
        RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID,
        true,
    )
    .await;
    assert!(message.contains("fatal consumer error"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_failure_stops() {
    let message = stops_on(
        RDKafkaApiKey::Fetch,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        false,
    )
    .await;
    assert!(message.contains("not authorized"), "{message}");
}

/// A shutdown whose last commit failed is not a clean stop: it ends with an error (the binary
/// exits non-zero) instead of "every consumed record is committed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_could_not_commit_is_an_error() {
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(2).await;
    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(IRIS_MODEL))
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    // Non-retriable, and without side effects on the group: every commit from now fails.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 1000],
    );
    broker.produce(&topics.input, &iris_inputs(0..100)).await;
    let outputs = broker
        .collect(&[&topics.output], 2, 100, Duration::from_secs(30))
        .await;
    assert_eq!(outputs.len(), 100, "delivered, only not committed");
    let err = service.stop().await.expect_err("not a clean stop");
    let message = format!("{err:#}");
    assert!(message.contains("offset commit failed"), "{message}");
}
