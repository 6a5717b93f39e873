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

/// The other side of the test above: a commit refused once is retried at shutdown, and the
/// stop is clean because the retry saved every delivered record's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_after_one_refused_commit_saves_it_and_is_clean() {
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(1).await;
    let group = unique("group");
    let service = broker
        .start_service(&topics, &group, &repo_path(IRIS_MODEL))
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    broker.produce(&topics.input, &iris_inputs(0..100)).await;
    let outputs = broker
        .collect(&[&topics.output], 1, 100, Duration::from_secs(30))
        .await;
    assert_eq!(outputs.len(), 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while service.state.metrics.commit_failures.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit was refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service
        .stop()
        .await
        .expect("a clean stop: the retry saved it");

    let offset = committed_offset(&broker, &group, &topics.input);
    assert_eq!(
        offset,
        Some(100),
        "every delivered record's position is saved"
    );
}

/// A record batch that says it is lz4 but holds no lz4 frame: the broker stores it as it is
/// (brokers do not decompress what producers send), and only the consumer finds out.
/// Written with the Kafka protocol by hand, because no client library sends a batch it
/// cannot itself have compressed.
mod corrupt_batch {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    const LZ4: i16 = 3;

    fn crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// RecordBatch v2 holding one "record" whose compressed body is not lz4.
    fn record_batch() -> Vec<u8> {
        let mut after_crc = Vec::new();
        after_crc.extend(LZ4.to_be_bytes()); // attributes
        after_crc.extend(0i32.to_be_bytes()); // last offset delta
        after_crc.extend(0i64.to_be_bytes()); // base timestamp
        after_crc.extend(0i64.to_be_bytes()); // max timestamp
        after_crc.extend((-1i64).to_be_bytes()); // producer id
        after_crc.extend((-1i16).to_be_bytes()); // producer epoch
        after_crc.extend((-1i32).to_be_bytes()); // base sequence
        after_crc.extend(1i32.to_be_bytes()); // records
        after_crc.extend(b"this is not an lz4 frame at all");
        let mut after_length = Vec::new();
        after_length.extend(0i32.to_be_bytes()); // partition leader epoch
        after_length.push(2); // magic
        after_length.extend(crc32c(&after_crc).to_be_bytes());
        after_length.extend(after_crc);
        let mut batch = Vec::new();
        batch.extend(0i64.to_be_bytes()); // base offset, assigned by the broker
        batch.extend((after_length.len() as i32).to_be_bytes());
        batch.extend(after_length);
        batch
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as i16).to_be_bytes());
        out.extend(s.as_bytes());
    }

    /// Appends the batch to `topic`/`partition` (ProduceRequest v3, acks=1) on the broker
    /// at `address`, the partition's leader; panics unless the broker took it.
    pub fn produce(address: &str, topic: &str, partition: i32) {
        let batch = record_batch();
        let mut request = Vec::new();
        request.extend(0i16.to_be_bytes()); // api key: Produce
        request.extend(3i16.to_be_bytes()); // version
        request.extend(7i32.to_be_bytes()); // correlation id
        string(&mut request, "corrupt-batch-test");
        request.extend((-1i16).to_be_bytes()); // no transactional id
        request.extend(1i16.to_be_bytes()); // acks
        request.extend(10_000i32.to_be_bytes()); // timeout
        request.extend(1i32.to_be_bytes()); // one topic
        string(&mut request, topic);
        request.extend(1i32.to_be_bytes()); // one partition
        request.extend(partition.to_be_bytes());
        request.extend((batch.len() as i32).to_be_bytes());
        request.extend(batch);

        let mut stream = TcpStream::connect(address).expect("connect to the broker");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut framed = (request.len() as i32).to_be_bytes().to_vec();
        framed.extend(request);
        stream.write_all(&framed).expect("send the produce request");
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).expect("a produce response");
        let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
        stream
            .read_exact(&mut response)
            .expect("the whole response");
        // correlation id, topics (1), name, partitions (1), index, then the error code.
        let name_end = 4 + 4 + 2 + topic.len();
        let error_at = name_end + 4 + 4;
        let error = i16::from_be_bytes([response[error_at], response[error_at + 1]]);
        assert_eq!(error, 0, "the broker refused the batch: {response:?}");
    }
}

/// A batch the consumer cannot decompress is neither skipped nor retried forever in silence:
/// the instance stops being ready, the service ends with an error naming it, and no offset
/// past the batch is committed, so the records after it wait for an operator instead of
/// being passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_decompressed_stops_uncommitted() {
    let broker = TestBroker::mock();
    let topics = broker.topics(1).await;
    let group = unique("group");
    let service = broker
        .start_service(&topics, &group, &repo_path(IRIS_MODEL))
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    broker.produce(&topics.input, &iris_inputs(0..100)).await;
    let outputs = broker
        .collect(&[&topics.output], 1, 100, Duration::from_secs(30))
        .await;
    assert_eq!(outputs.len(), 100);

    corrupt_batch::produce(&broker.brokers, &topics.input, 0);
    broker.produce(&topics.input, &iris_inputs(100..150)).await;
    let state = Arc::clone(&service.state);
    let result = tokio::time::timeout(Duration::from_secs(60), service.wait())
        .await
        .expect("the service stops by itself");
    let message = format!("{:#}", result.expect_err("stopped with an error"));
    assert!(message.contains("cannot be read"), "{message}");
    assert!(state.ready().is_err(), "not ready");

    let offset = committed_offset(&broker, &group, &topics.input);
    // The corrupt batch sits at offset 100; the records after it must not be passed over.
    assert!(
        offset.is_some_and(|o| o <= 100),
        "committed past the corrupt batch: {offset:?}"
    );
}

/// The group's committed offset of `topic` partition 0, as the broker has it.
fn committed_offset(broker: &TestBroker, group: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", group)
        .create()
        .expect("a consumer");
    let mut partition = rdkafka::TopicPartitionList::new();
    partition.add_partition(topic, 0);
    reader
        .committed_offsets(partition, Duration::from_secs(10))
        .expect("committed offsets")
        .find_partition(topic, 0)
        .and_then(|p| p.offset().to_raw())
}
