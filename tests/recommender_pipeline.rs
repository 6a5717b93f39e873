//! The recommender served through the same pipeline: user events in, top-N lists out.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use streamscore::model::{LoadedModel, Model};
use streamscore::pipeline::sink::HEADER_REASON;

const PARTITIONS: i32 = 3;
const MODEL: &str = "models/recommender.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_get_top_n_lists_and_bad_events_are_dead_lettered() {
    const N: usize = 2_000;
    let model = LoadedModel::load(&repo_path(MODEL)).expect("shipped recommender loads");
    let Model::Recommender(recommender) = &model.model else {
        panic!("{MODEL} is not a recommender");
    };
    let known_users = recommender.n_users() as i64;

    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let mut inputs: Vec<Input> = (0..N)
        .map(|i| {
            // Mostly known users (ids start at 1), some unknown ones for the cold start.
            let uid = if i % 10 == 0 {
                1_000_000 + i as i64
            } else {
                1 + (i as i64 % known_users)
            };
            let value = serde_json::json!({ "id": i, "uid": uid, "n": 1 + i % 12 }).to_string();
            (Some(format!("e{i}").into_bytes()), Some(value.into_bytes()))
        })
        .collect();
    let bad = [
        (r#"{"user": 196}"#, "missing_uid"),
        (r#"{"uid": "196"}"#, "invalid_uid"),
        (r#"{"uid": 1.5}"#, "invalid_uid"),
        (r#"{"uid": 196, "n": 0}"#, "invalid_n"),
        (r#"{"uid": 196"#, "invalid_json"),
    ];
    for (i, (value, _)) in bad.iter().enumerate() {
        inputs.push((
            Some(format!("bad{i}").into_bytes()),
            Some(value.as_bytes().to_vec()),
        ));
    }
    broker.produce(&topics.input, &inputs).await;

    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(MODEL))
        .await;
    let both = [topics.output.as_str(), topics.dead_letters.as_str()];
    let outputs = broker
        .collect(&both, PARTITIONS, inputs.len(), Duration::from_secs(60))
        .await;
    service.stop().await.expect("clean shutdown");
    assert_eq!(outputs.len(), inputs.len(), "every event lands once");

    let mut ids = HashSet::new();
    for out in &outputs {
        let key = out.key_str();
        if let Some(i) = key.strip_prefix("bad") {
            let i: usize = i.parse().unwrap();
            assert_eq!(out.topic, topics.dead_letters);
            assert_eq!(out.headers[HEADER_REASON], bad[i].1, "{key}");
            continue;
        }
        assert_eq!(out.topic, topics.output, "{key}");
        let json = out.json();
        let id = json["id"].as_u64().unwrap() as usize;
        assert!(ids.insert(id), "duplicate {id}");
        assert_eq!(key, format!("e{id}"));
        let items = json["items"].as_array().expect("items");
        assert_eq!(items.len(), 1 + id % 12, "n items asked for");
        let scores: Vec<f64> = items
            .iter()
            .map(|it| it["score"].as_f64().unwrap())
            .collect();
        if !id.is_multiple_of(10) {
            // Personal lists are ranked by predicted rating; cold-start lists by popularity.
            assert!(
                scores.windows(2).all(|w| w[0] >= w[1]),
                "best first: {scores:?}"
            );
        }
        let distinct: HashSet<i64> = items
            .iter()
            .map(|it| it["item"].as_i64().unwrap())
            .collect();
        assert_eq!(distinct.len(), items.len(), "no item twice");
        assert_eq!(
            json["cold_start"],
            id.is_multiple_of(10),
            "cold start only for unknown users"
        );
        assert_eq!(json["model_version"], model.version.as_str());
    }
    assert_eq!(ids.len(), N);
}
