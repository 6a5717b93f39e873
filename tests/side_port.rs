//! The HTTP side port against a running service: hot reload under traffic, refusal of bad
//! model files, admin authorisation, readiness and metrics.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use streamscore::model::ModelFile;
use streamscore::train::iris::{read_csv, train, TrainIrisArgs};

const PARTITIONS: i32 = 3;

fn small_forest(seed: u64) -> ModelFile {
    let data = read_csv(&repo_path("training/iris.csv"), "species").expect("iris data");
    let args = TrainIrisArgs {
        data: repo_path("training/iris.csv"),
        out: "unused".into(),
        label: "species".into(),
        trees: 15,
        max_depth: None,
        max_features: None,
        seed,
    };
    train(&data, &args, false).expect("trained").file
}

fn write_over(path: &Path, bytes: &[u8]) {
    // Replace atomically, as an operator's deploy step would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("written");
    std::fs::rename(&tmp, path).expect("renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_switches_models_without_losing_records() {
    const N: usize = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = dir.path().join("iris.json");
    let (first, second) = (small_forest(1), small_forest(2));
    assert_ne!(first.version, second.version);
    first.write(&model_path).expect("first model written");

    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let service = broker
        .start_service(&topics, &unique("group"), &model_path)
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;

    // Traffic keeps flowing while the model is replaced.
    let traffic = {
        let brokers = broker.brokers.clone();
        let input = topics.input.clone();
        tokio::spawn(async move {
            for chunk in iris_inputs(0..N).chunks(100) {
                produce(&brokers, &input, chunk).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let early = broker
        .collect(&[&topics.output], PARTITIONS, 300, Duration::from_secs(30))
        .await;
    assert!(early.len() >= 300, "scoring started");
    second.write(&model_path).expect("second model written");
    let (status, body) = http(service.http_addr, "POST", "/model/reload", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&second.version), "{body}");
    traffic.await.expect("traffic sent");

    let outputs = broker
        .collect(&[&topics.output], PARTITIONS, N, Duration::from_secs(60))
        .await;
    let mut per_version: HashMap<String, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for out in &outputs {
        let json = out.json();
        ids.insert(json["id"].as_u64().unwrap());
        *per_version
            .entry(json["model_version"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(ids.len(), N, "every record scored");
    assert_eq!(outputs.len(), N, "no record scored twice");
    assert!(
        per_version.get(&first.version).is_some_and(|n| *n > 0),
        "{per_version:?}"
    );
    assert!(
        per_version.get(&second.version).is_some_and(|n| *n > 0),
        "{per_version:?}"
    );
    assert_eq!(per_version.len(), 2, "{per_version:?}");

    // A corrupt file is refused and the second model keeps scoring.
    let good = std::fs::read(&model_path).expect("model bytes");
    write_over(&model_path, &good[..good.len() / 2]);
    let (status, body) = http(service.http_addr, "POST", "/model/reload", &[], "").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("error"), "{body}");
    let (_, model) = http(service.http_addr, "GET", "/model", &[], "").await;
    assert!(model.contains(&second.version), "{model}");
    broker.produce(&topics.input, &iris_inputs(N..N + 10)).await;
    let outputs = broker
        .collect(
            &[&topics.output],
            PARTITIONS,
            N + 10,
            Duration::from_secs(30),
        )
        .await;
    let late: Vec<_> = outputs
        .iter()
        .map(|o| o.json())
        .filter(|j| j["id"].as_u64().unwrap() >= N as u64)
        .collect();
    assert_eq!(late.len(), 10);
    assert!(late
        .iter()
        .all(|j| j["model_version"] == second.version.as_str()));

    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains(r#"streamscore_model_reloads_total{result="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"streamscore_model_reloads_total{result="failed"} 1"#));
    assert!(metrics.contains(&format!("streamscore_records_in_total {}", N + 10)));
    assert!(metrics.contains(&format!("streamscore_records_out_total {}", N + 10)));
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token_and_stay_in_the_model_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = dir.path().join("iris.json");
    small_forest(3).write(&model_path).expect("model written");
    let outside = tempfile::tempdir().expect("tempdir");
    let stray = outside.path().join("other.json");
    small_forest(4).write(&stray).expect("stray model written");

    let broker = TestBroker::start();
    let topics = broker.topics(1).await;
    let config = broker.pipeline_config(&topics, &unique("group"));
    let service = broker
        .start_service_with(config, &model_path, Some("s3cret"))
        .await;
    let addr = service.http_addr;

    // Readiness waits for the partition assignment; health does not.
    let (status, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    wait_ready(addr, Duration::from_secs(30)).await;

    let (status, _) = http(addr, "POST", "/model/reload", &[], "").await;
    assert_eq!(status, 401, "no token");
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(http(addr, "POST", "/model/reload", &wrong, "").await.0, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, body) = http(addr, "POST", "/model/reload", &auth, "").await;
    assert_eq!(status, 200, "{body}");

    let escape = format!(r#"{{"path":"{}"}}"#, stray.display());
    let (status, body) = http(addr, "POST", "/model/reload", &auth, &escape).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/model/reload",
        &auth,
        r#"{"path":"../x.json"}"#,
    )
    .await;
    assert!(status == 403 || status == 422, "{status} {body}");
    let (status, _) = http(addr, "POST", "/model/reload", &auth, "not json").await;
    assert_eq!(status, 400);
    let huge = format!(r#"{{"path":"{}"}}"#, "a".repeat(100_000));
    let (status, _) = http(addr, "POST", "/model/reload", &auth, &huge).await;
    assert_eq!(status, 413, "oversized bodies are refused");

    // Metrics and model metadata stay open.
    let (status, metrics) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("streamscore_batch_latency_seconds"));
    let (status, model) = http(addr, "GET", "/model", &[], "").await;
    assert_eq!(status, 200);
    let model: serde_json::Value = serde_json::from_str(&model).expect("model JSON");
    assert_eq!(model["kind"], "random_forest");
    assert_eq!(model["classes"].as_array().map(Vec::len), Some(3));
    assert_eq!(model["trees"], 15);
    service.stop().await.expect("clean shutdown");
}

/// A ConfigMap mount: `iris.json → ..data/iris.json`, `..data → ..<timestamp>`; an update
/// writes a new timestamped directory and swaps `..data` atomically. Each reload must load
/// what the link names then.
#[cfg(unix)]
#[test]
fn a_reload_follows_a_swapped_symlink() {
    use std::os::unix::fs::symlink;
    use streamscore::model::ModelStore;

    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path();
    let (v1, v2) = (small_forest(5), small_forest(6));
    for (name, model) in [("..2026_01", &v1), ("..2026_02", &v2)] {
        std::fs::create_dir(mount.join(name)).expect("dir");
        model
            .write(&mount.join(name).join("iris.json"))
            .expect("written");
    }
    symlink("..2026_01", mount.join("..data")).expect("..data");
    symlink("..data/iris.json", mount.join("iris.json")).expect("iris.json");

    let store = ModelStore::open(&mount.join("iris.json"), false).expect("opened");
    assert_eq!(store.current().version, v1.version);
    // The kubelet's swap: a new link renamed over the old one.
    symlink("..2026_02", mount.join("..data_tmp")).expect("new link");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swapped");
    let reloaded = store.reload(None).expect("reloaded");
    assert_eq!(
        reloaded.version, v2.version,
        "the new file, not the one at start-up"
    );
}

/// A reload request naming a file cannot tell whether files outside the model directory
/// exist: every refusal reads the same.
#[cfg(unix)]
#[test]
fn reload_refusals_do_not_reveal_which_files_exist() {
    use streamscore::model::ModelStore;

    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    std::fs::create_dir(&models).expect("dir");
    small_forest(3)
        .write(&models.join("iris.json"))
        .expect("written");
    small_forest(4)
        .write(&dir.path().join("exists.json"))
        .expect("written");
    std::os::unix::fs::symlink(dir.path().join("exists.json"), models.join("out.json"))
        .expect("link");
    std::os::unix::fs::symlink(dir.path().join("missing.json"), models.join("gone.json"))
        .expect("link");
    let store = ModelStore::open(&models.join("iris.json"), false).expect("opened");

    let answer = |path: &str| {
        let err = store.reload(Some(Path::new(path))).expect_err("refused");
        err.to_string().replace(path, "<path>")
    };
    let answers: HashSet<String> = [
        "../exists.json",
        "../missing.json",
        "out.json",
        "gone.json",
        "nothing-here.json",
        "/etc/hostname",
        "/nonexistent",
    ]
    .into_iter()
    .map(answer)
    .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
}

/// A client that sends half a request and then nothing cannot hold up shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let broker = TestBroker::start();
    let topics = broker.topics(1).await;
    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(IRIS_MODEL))
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;
    let mut stalled = tokio::net::TcpStream::connect(service.http_addr)
        .await
        .expect("connected");
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("half a request sent");
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), service.stop())
        .await
        .expect("the service stops despite the stalled client")
        .expect("clean shutdown");
    let took = started.elapsed();
    eprintln!("stopped {took:?} after the request was requested, with a half-sent request open");
    assert!(took < Duration::from_secs(12), "{took:?}");
    drop(stalled);
}
