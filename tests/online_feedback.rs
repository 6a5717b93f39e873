//! Online learning end to end: a feedback topic folded into the recommender while it
//! serves, and the learned state surviving a SIGKILL exactly.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use streamscore::model::recommender::Request;
use streamscore::model::{LoadedModel, Model};
use streamscore::online::feedback::FeedbackConfig;
use streamscore::online::state::Checkpoint;
use streamscore::online::OnlineConfig;
use streamscore::record::headers::{
    HEADER_ERROR, HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_TOPIC,
};
use streamscore::service::{self, ServiceConfig};

const PARTITIONS: i32 = 3;
const MODEL: &str = "models/recommender.json";

fn feedback(uid: i64, item: i64, rating: Option<f32>) -> Input {
    let value = match rating {
        Some(r) => serde_json::json!({ "uid": uid, "item": item, "rating": r }),
        None => serde_json::json!({ "uid": uid, "item": item }),
    };
    (
        Some(uid.to_string().into_bytes()),
        Some(value.to_string().into_bytes()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rated_items_leave_the_list_and_a_new_user_gets_a_personal_one() {
    let loaded = LoadedModel::load(&repo_path(MODEL)).expect("shipped recommender loads");
    let Model::Recommender(model) = &loaded.model else {
        panic!("{MODEL} is not a recommender");
    };
    const KNOWN: i64 = 1;
    const NEW: i64 = 9_000_001;
    let before = model.recommend_batch(&[Request { uid: KNOWN, n: 5 }]);
    let top5: Vec<i64> = before[0].items.iter().map(|s| s.item).collect();
    let popular = model.recommend_batch(&[Request { uid: NEW, n: 10 }]);
    assert!(popular[0].cold_start);

    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let feedback_topic = unique("feedback");
    broker.create_topic(&feedback_topic, PARTITIONS).await;
    let state_dir = tempfile::tempdir().expect("temp dir");

    let mut events: Vec<Input> = top5
        .iter()
        .enumerate()
        .map(|(at, &item)| feedback(KNOWN, item, (at != 2).then_some(1.0 + at as f32)))
        .collect();
    // The new user loves the popular list's first ten items... and it shows: they leave.
    let new_items: Vec<i64> = popular[0].items.iter().map(|s| s.item).collect();
    events.extend(new_items.iter().map(|&item| feedback(NEW, item, Some(4.5))));
    events.push((Some(b"x".to_vec()), Some(b"{\"uid\": 1}".to_vec())));
    broker.produce(&feedback_topic, &events).await;

    let service = service::start(ServiceConfig {
        pipeline: broker.pipeline_config(&topics, &unique("group")),
        model: repo_path(MODEL),
        allow_kind_change: false,
        http_addr: "127.0.0.1:0".parse().expect("loopback"),
        admin_token: None,
        observe: Default::default(),
        feedback: Some(FeedbackConfig {
            topic: feedback_topic.clone(),
            state_dir: state_dir.path().to_path_buf(),
            checkpoint_interval: Duration::from_millis(200),
            online: OnlineConfig::default(),
        }),
    })
    .await
    .expect("service starts");
    let overlay = service.state.overlay().expect("online learning on");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let count = |result: &str| {
        overlay
            .metrics
            .feedback_events
            .with_label_values(&[result])
            .get() as usize
    };
    while count("applied") < events.len() - 1 || count("rejected") < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "feedback not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let requests: Vec<Input> = [KNOWN, NEW]
        .iter()
        .map(|uid| {
            let value = serde_json::json!({ "id": uid, "uid": uid, "n": 20 }).to_string();
            (None, Some(value.into_bytes()))
        })
        .collect();
    broker.produce(&topics.input, &requests).await;
    let outputs = broker
        .collect(&[&topics.output], PARTITIONS, 2, Duration::from_secs(60))
        .await;
    let metrics = http(service.http_addr, "GET", "/metrics", &[], "").await.1;
    service.stop().await.expect("clean shutdown");
    assert_eq!(outputs.len(), 2);
    for out in &outputs {
        let json = out.json();
        let uid = json["uid"].as_i64().expect("uid");
        let items: HashSet<i64> = json["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|it| it["item"].as_i64().expect("item"))
            .collect();
        assert_eq!(items.len(), 20);
        let rated = if uid == KNOWN { &top5 } else { &new_items };
        for item in rated {
            assert!(!items.contains(item), "user {uid} rated {item}: {items:?}");
        }
        assert_eq!(json["cold_start"], false, "user {uid} is personalised");
    }
    for series in [
        "streamscore_online_users 2",
        "streamscore_online_users_folded_in_total 15",
        "streamscore_feedback_events_total{result=\"rejected\"} 1",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("streamscore_checkpoint_bytes"));
    // The final checkpoint holds both users and every offset.
    let saved: Checkpoint = serde_json::from_slice(
        &std::fs::read(state_dir.path().join("online-state.json")).expect("checkpoint written"),
    )
    .expect("checkpoint parses");
    assert_eq!(saved.users.len(), 2);
    assert_eq!(
        saved.offsets.values().sum::<i64>(),
        events.len() as i64,
        "{saved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_feedback_is_dead_lettered_with_its_reason() {
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let feedback_topic = unique("feedback");
    broker.create_topic(&feedback_topic, 1).await;
    let state_dir = tempfile::tempdir().expect("temp dir");
    // Item 50 and user 1 are in the shipped model; ratings run 1..5.
    let bad: [(&str, &[u8]); 7] = [
        ("invalid_json", br#"{"uid": 1, "item""#),
        ("missing_item", br#"{"uid": 1}"#),
        ("invalid_uid", br#"{"uid": "one", "item": 50}"#),
        (
            "rating_out_of_range",
            br#"{"uid": 1, "item": 50, "rating": 9}"#,
        ),
        (
            "unknown_item",
            br#"{"uid": 1, "item": 999999, "rating": 4}"#,
        ),
        ("unknown_field", br#"{"uid": 1, "item": 50, "stars": 4}"#),
        ("empty", b""),
    ];
    let mut events: Vec<Input> = bad
        .iter()
        .enumerate()
        .map(|(at, (_, value))| (Some(format!("k{at}").into_bytes()), Some(value.to_vec())))
        .collect();
    events.push(feedback(1, 50, Some(4.0)));
    broker.produce(&feedback_topic, &events).await;

    let service = service::start(ServiceConfig {
        pipeline: broker.pipeline_config(&topics, &unique("group")),
        model: repo_path(MODEL),
        allow_kind_change: false,
        http_addr: "127.0.0.1:0".parse().expect("loopback"),
        admin_token: None,
        observe: Default::default(),
        feedback: Some(FeedbackConfig {
            topic: feedback_topic.clone(),
            state_dir: state_dir.path().to_path_buf(),
            checkpoint_interval: Duration::from_millis(200),
            online: OnlineConfig::default(),
        }),
    })
    .await
    .expect("service starts");
    let letters = broker
        .collect(
            &[&topics.dead_letters],
            PARTITIONS,
            bad.len(),
            Duration::from_secs(30),
        )
        .await;
    let metrics = http(service.http_addr, "GET", "/metrics", &[], "").await.1;
    service.stop().await.expect("clean shutdown");

    assert_eq!(letters.len(), bad.len(), "{letters:?}");
    for letter in &letters {
        let at: usize = letter
            .key_str()
            .trim_start_matches('k')
            .parse()
            .expect("the original key");
        let (reason, value) = bad[at];
        let header = |name: &str| letter.headers.get(name).map(String::as_str);
        assert_eq!(header(HEADER_REASON), Some(reason), "{letter:?}");
        assert!(
            header(HEADER_ERROR).is_some_and(|e| !e.is_empty()),
            "{letter:?}"
        );
        assert_eq!(header(HEADER_SOURCE_TOPIC), Some(feedback_topic.as_str()));
        assert_eq!(header(HEADER_SOURCE_OFFSET), Some(at.to_string().as_str()));
        assert_eq!(letter.value.as_deref().unwrap_or_default(), value);
    }
    for series in [
        "streamscore_feedback_events_total{result=\"rejected\"} 7",
        "streamscore_feedback_events_total{result=\"applied\"} 1",
        "streamscore_feedback_dead_lettered_total{reason=\"unknown_item\"} 1",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    // The state moved past all of them: a restart does not dead-letter them again.
    let saved: Checkpoint = serde_json::from_slice(
        &std::fs::read(state_dir.path().join("online-state.json")).expect("checkpoint written"),
    )
    .expect("checkpoint parses");
    assert_eq!(saved.offsets.get(&0), Some(&(events.len() as i64)));
}

/// The real binary serving with a feedback topic, its state in `state_dir`.
fn spawn_learner(
    broker: &TestBroker,
    topics: &Topics,
    feedback_topic: &str,
    state_dir: &Path,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["serve", "--model"])
        .arg(repo_path(MODEL))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--feedback-topic",
            feedback_topic,
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .args([
            "--checkpoint-interval",
            "100ms",
            "-X",
            "fetch.wait.max.ms=10",
        ])
        .env("STREAMSCORE_BROKERS", &broker.brokers)
        .env("STREAMSCORE_INPUT_TOPIC", &topics.input)
        .env("STREAMSCORE_OUTPUT_TOPIC", &topics.output)
        .env("STREAMSCORE_DEAD_LETTER_TOPIC", &topics.dead_letters)
        .env("STREAMSCORE_GROUP", unique("group"))
        .env("STREAMSCORE_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("service starts")
}

fn read_checkpoint(dir: &Path) -> Option<Checkpoint> {
    let bytes = std::fs::read(dir.join("online-state.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until the checkpoint in `dir` reflects at least `records` feedback records.
async fn wait_for_checkpoint(dir: &Path, records: i64, timeout: Duration) -> Checkpoint {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(saved) = read_checkpoint(dir) {
            if saved.offsets.values().sum::<i64>() >= records {
                return saved;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint in {} did not reach {records} records in {timeout:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminate(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            assert!(status.success(), "clean exit: {status}");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not stop in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What must match between two runs: every user's log and factors, and the count applied.
/// (`touched`, the eviction order, follows how partitions interleaved, which no run fixes.)
fn comparable(mut saved: Checkpoint) -> Checkpoint {
    for user in &mut saved.users {
        user.touched = 0;
    }
    saved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_stream_and_a_restart_give_the_state_of_a_run_without_it() {
    // Mostly new users (cheap solves in a debug build), some known ones, some implicit.
    let events: Vec<Input> = (0..600)
        .map(|i: i64| {
            let uid = if i % 30 == 0 {
                1 + i % 7
            } else {
                5_000_000 + i % 40
            };
            let item = 1 + (i * 37) % 1600;
            feedback(
                uid,
                item,
                (i % 6 != 0).then_some(1.0 + (i % 9) as f32 * 0.5),
            )
        })
        .collect();
    let (first, rest) = events.split_at(400);
    let total = events.len() as i64;

    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let feedback_topic = unique("feedback");
    broker.create_topic(&feedback_topic, PARTITIONS).await;
    let producer = unbatched_producer(&broker.brokers);
    produce_with(&producer, &feedback_topic, first).await;

    // The run without a kill.
    let reference_dir = tempfile::tempdir().expect("temp dir");
    let reference = spawn_learner(&broker, &topics, &feedback_topic, reference_dir.path());
    produce_with(&producer, &feedback_topic, rest).await;
    wait_for_checkpoint(reference_dir.path(), total, Duration::from_secs(120)).await;
    terminate(reference);
    let want = read_checkpoint(reference_dir.path()).expect("reference checkpoint");
    assert_eq!(want.applied, total as u64);

    // The same feedback, killed mid-stream. The checkpoint is then behind what the killed
    // process had applied, which the restart must apply again exactly once.
    let killed_dir = tempfile::tempdir().expect("temp dir");
    let mut killed = spawn_learner(&broker, &topics, &feedback_topic, killed_dir.path());
    let at_kill = wait_for_checkpoint(killed_dir.path(), 200, Duration::from_secs(120)).await;
    killed.kill().expect("SIGKILL");
    let _ = killed.wait();
    let on_disk = read_checkpoint(killed_dir.path()).expect("checkpoint survives the kill");
    let reflected = on_disk.offsets.values().sum::<i64>();
    eprintln!(
        "killed with {} records in the checkpoint ({} when first seen)",
        reflected,
        at_kill.offsets.values().sum::<i64>()
    );
    assert!(reflected < total, "the kill came after the stream ended");

    let restarted = spawn_learner(&broker, &topics, &feedback_topic, killed_dir.path());
    wait_for_checkpoint(killed_dir.path(), total, Duration::from_secs(120)).await;
    terminate(restarted);
    let got = read_checkpoint(killed_dir.path()).expect("restarted checkpoint");
    assert_eq!(
        got.applied, total as u64,
        "nothing applied twice, nothing lost"
    );
    assert_eq!(comparable(got), comparable(want));
}
