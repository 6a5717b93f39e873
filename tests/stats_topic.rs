//! Windows on the stats topic, emitted once across a restart: event-time windows over
//! records with fixed timestamps; a second instance with the same name re-reads every record
//! (a new consumer group, as after a crash before any commit) and must not emit again a
//! window the first one put on the topic.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::producer::FutureRecord;
use streamscore::config::ObserveOptions;
use streamscore::stats::window::{TimeBasis, WindowSpec};
use streamscore::stats::StatsConfig;

const BASE_MS: i64 = 1_700_000_000_000;

async fn run_instance(
    broker: &TestBroker,
    topics: &Topics,
    stats_topic: &str,
    instance: &str,
    records: usize,
) {
    let observe = ObserveOptions {
        stats: StatsConfig {
            window: WindowSpec::new(1_000, 1_000).expect("window"),
            basis: TimeBasis::Event { lateness_ms: 0 },
            topic: Some(stats_topic.to_owned()),
            instance: instance.to_owned(),
            ..StatsConfig::default()
        },
        shadow_model: None,
        shadow_topic: None,
    };
    let service = broker
        .start_service_observed(
            broker.pipeline_config(topics, &unique("group")),
            &repo_path(IRIS_MODEL),
            None,
            observe,
        )
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    // Every record scored, then two stats ticks for the windows to go out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
        if metric(&metrics, "streamscore_records_out_total") >= records as u64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "records not scored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    service.stop().await.expect("clean stop");
}

/// Window ends per instance, in topic order.
async fn windows(broker: &TestBroker, stats_topic: &str, at_least: usize) -> Vec<(String, i64)> {
    broker
        .collect(&[stats_topic], 1, at_least, Duration::from_secs(20))
        .await
        .iter()
        .map(|c| {
            let w = c.json();
            (
                w["instance"].as_str().unwrap_or_default().to_owned(),
                w["window_end_ms"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_emit_a_window_twice() {
    const N: usize = 100;
    let broker = TestBroker::start();
    let topics = broker.topics(1).await;
    let stats_topic = unique("stats");
    broker.create_topic(&stats_topic, 1).await;
    // 100 records 100 ms apart: event time runs from BASE to BASE + 9.9 s.
    let producer = broker.producer();
    for (i, (key, value)) in iris_inputs(0..N).into_iter().enumerate() {
        let key = key.expect("key");
        let value = value.expect("value");
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(&topics.input)
                    .key(&key)
                    .payload(&value)
                    .timestamp(BASE_MS + 100 * i as i64),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("input sent");
    }

    run_instance(&broker, &topics, &stats_topic, "node-a", N).await;
    let first = windows(&broker, &stats_topic, 9).await;
    // The watermark is the newest timestamp (BASE + 9.9 s): windows ending BASE+1 s ... +9 s.
    assert_eq!(
        first.iter().map(|(_, end)| *end).collect::<Vec<_>>(),
        (1..=9).map(|s| BASE_MS + 1_000 * s).collect::<Vec<_>>()
    );

    // The same instance again, re-reading everything: nothing new to emit.
    run_instance(&broker, &topics, &stats_topic, "node-a", N).await;
    let after = windows(&broker, &stats_topic, 10).await;
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for w in &after {
        *seen.entry(w.clone()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a window was emitted twice: {after:?}"
    );
    assert_eq!(after.len(), 9, "{after:?}");

    // Another instance name has no windows of its own on the topic: it emits them all,
    // which is what the read-back is keyed on.
    run_instance(&broker, &topics, &stats_topic, "node-b", N).await;
    let both = windows(&broker, &stats_topic, 18).await;
    assert_eq!(both.iter().filter(|(i, _)| i == "node-b").count(), 9);
}
