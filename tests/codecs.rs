//! Every compression codec a producer may use on the input is read and scored, and the
//! service's own output codec can be any of them too. (zstd input was once never scored:
//! librdkafka had been built without it, and the records were silently not delivered.)

mod common;

use std::time::Duration;

use common::*;

const N: usize = 300;
const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

async fn scored_through(input_codec: &str, output_codec: &str) -> usize {
    let broker = TestBroker::start();
    let topics = broker.topics(2).await;
    produce_with(
        &compressed_producer(&broker.brokers, input_codec),
        &topics.input,
        &iris_inputs(0..N),
    )
    .await;
    let mut config = broker.pipeline_config(&topics, &unique("codec"));
    config
        .properties
        .push(("compression.type".into(), output_codec.into()));
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let outputs = broker
        .collect(
            &[&topics.output],
            topics.partitions,
            N,
            Duration::from_secs(60),
        )
        .await;
    service.stop().await.expect("clean shutdown");
    id_counts(&outputs).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_in_every_codec_is_scored() {
    for codec in CODECS {
        assert_eq!(
            scored_through(codec, "lz4").await,
            N,
            "input compressed with {codec}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_in_every_codec_is_readable() {
    for codec in CODECS {
        assert_eq!(
            scored_through("none", codec).await,
            N,
            "output compressed with {codec}"
        );
    }
}
