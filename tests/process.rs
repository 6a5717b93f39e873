//! The real binary as an operator runs it: flags, SIGHUP reload, SIGTERM drain, exit code,
//! and the committed offsets it leaves behind.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streamscore::model::ModelFile;

const BIN: &str = env!("CARGO_BIN_EXE_streamscore");

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits for the child to exit, killing it if it overstays `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_flag_says_what_is_wrong() {
    let out = Command::new(BIN)
        .args(["serve", "--max-batch", "0"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-batch"), "{stderr}");

    let out = Command::new(BIN)
        .args(["serve", "--batch-interval", "soon"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch-interval"));

    let out = Command::new(BIN)
        .args([
            "serve",
            "--model",
            "/nonexistent/model.json",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/model.json"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file").count(),
        1,
        "the cause is said once: {stderr}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, "{\"kind\":").expect("model file written");
    let out = Command::new(BIN)
        .args(["serve", "--http-addr", "127.0.0.1:0", "--model"])
        .arg(&truncated)
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("EOF while parsing").count(),
        1,
        "the cause is said once: {stderr}"
    );
}

#[test]
fn settings_that_would_break_the_guarantee_are_refused_at_start_up() {
    for args in [
        &["-X", "enable.auto.commit=true"][..],
        &["-X", "enable.auto.offset.store=true"],
        &["--input-topic", "^features-.*"],
        // KIP-848 moves these to the broker; librdkafka would refuse them less clearly.
        &[
            "--group-protocol",
            "consumer",
            "-X",
            "session.timeout.ms=6000",
        ],
        &[
            "--group-protocol",
            "consumer",
            "-X",
            "partition.assignment.strategy=range",
        ],
        &["-X", "group.protocol=consumer"],
    ] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--brokers",
                "127.0.0.1:1",
            ])
            .args(args)
            .output()
            .expect("binary runs");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refused") || stderr.contains("regular expression"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn score_reports_bad_lines_and_keeps_going() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"sepal_length\":5.1,\"sepal_width\":3.5,\"petal_length\":1.4,\"petal_width\":0.2}\n\
         not json\n\
         {\"sepal.length\":6.7,\"sepal.width\":3.0,\"petal.length\":5.2,\"petal.width\":2.3}\n",
    )
    .expect("input written");
    let out = Command::new(BIN)
        .args([
            "score",
            "--model",
            &repo_path(IRIS_MODEL).display().to_string(),
        ])
        .arg(&input)
        .output()
        .expect("binary runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rejected line makes the exit status 1"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let labels: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["label"].to_string()
        })
        .collect();
    assert_eq!(labels, vec!["\"setosa\"", "\"virginica\""]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: invalid_json"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains_commits_and_exits_zero() {
    let broker = TestBroker::start();
    let topics = broker.topics(2).await;
    let group = unique("group");
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = dir.path().join("iris.json");
    std::fs::copy(repo_path(IRIS_MODEL), &model_path).expect("model copied");
    let port = free_port();

    let mut child = Command::new(BIN)
        .args(["serve", "--model"])
        .arg(&model_path)
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--batch-interval", "50ms", "-X", "fetch.wait.max.ms=10"])
        .args(["-X", "session.timeout.ms=6000"])
        .env("STREAMSCORE_BROKERS", &broker.brokers)
        .env("STREAMSCORE_INPUT_TOPIC", &topics.input)
        .env("STREAMSCORE_OUTPUT_TOPIC", &topics.output)
        .env("STREAMSCORE_DEAD_LETTER_TOPIC", &topics.dead_letters)
        .env("STREAMSCORE_GROUP", &group)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("service starts");
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let ready = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_ready(addr, Duration::from_secs(30)).await;
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("ready in time");

    let rows = iris_rows();
    let inputs: Vec<Input> = (0..500)
        .map(|i| {
            (
                Some(format!("k{i}").into_bytes()),
                Some(iris_json(i, &rows[i % 150].0)),
            )
        })
        .collect();
    broker.produce(&topics.input, &inputs[..250]).await;
    let first = broker
        .collect(&[&topics.output], 2, 250, Duration::from_secs(30))
        .await;
    assert_eq!(first.len(), 250);

    // SIGHUP re-reads the configured file.
    let before = ModelFile::read(&model_path).expect("model");
    let data = streamscore::train::iris::read_csv(&repo_path("training/iris.csv"), "species")
        .expect("data");
    let args = streamscore::train::iris::TrainIrisArgs {
        data: repo_path("training/iris.csv"),
        out: model_path.clone(),
        label: "species".into(),
        trees: 10,
        max_depth: None,
        max_features: None,
        seed: 99,
    };
    let replacement = streamscore::train::iris::train(&data, &args, false)
        .expect("trained")
        .file;
    assert_ne!(replacement.version, before.version);
    replacement.write(&model_path).expect("replacement written");
    signal(&child, "HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, model) = http(addr, "GET", "/model", &[], "").await;
        if model.contains(&replacement.version) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload: {model}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    broker.produce(&topics.input, &inputs[250..]).await;
    let all = collect_ids(&broker, &topics, 500, Duration::from_secs(30)).await;
    let counts = id_counts(&all);
    assert_eq!(counts.len(), 500, "every input scored");
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} ids repeated, e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(5)]
    );
    assert_eq!(all.len(), 500);
    assert!(all[250..]
        .iter()
        .chain(&all[..250])
        .any(|o| o.json()["model_version"] == replacement.version.as_str()));

    signal(&child, "TERM");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(30)))
            .await
            .expect("waited");
    assert_eq!(status.code(), Some(0), "graceful exit");

    // Everything consumed was committed: per partition, the group's committed offset is one
    // past the last input offset that produced an output. (Compared with what was consumed
    // rather than with watermarks: brokers differ in how offsets advance.)
    let mut expected: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for out in &all {
        let json = out.json();
        let (p, o) = (
            json["partition"].as_i64().unwrap() as i32,
            json["offset"].as_i64().unwrap(),
        );
        let slot = expected.entry(p).or_insert(0);
        *slot = (*slot).max(o + 1);
    }
    let brokers = broker.brokers.clone();
    let input = topics.input.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in expected.keys() {
            tpl.add_partition(&input, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        for (p, next) in expected {
            let entry = committed.find_partition(&input, p).map(|e| e.offset());
            assert_eq!(
                entry,
                Some(Offset::Offset(next)),
                "partition {p} committed past its last record"
            );
        }
    })
    .await
    .expect("checked");
}
