//! The status page in a real browser, against a running service: headless Chromium loads
//! `GET /`, runs its script (which fetches `/status`), and the test reads the rendered DOM
//! (`--dump-dom`) and checks the tables and charts show the figures `/status` reports.
//! Also: W3C `traceparent` from input to output and dead letter, and the
//! OpenTelemetry-named metrics.
//!
//! Chromium is Debian's `chromium` package (installed by `.ci/run`). Without it the browser
//! test says so and passes, unless `STREAMSCORE_REQUIRE_BROWSER` is set (as `.ci/run`
//! does), where a missing browser fails it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use streamscore::config::ObserveOptions;
use streamscore::stats::window::WindowSpec;
use streamscore::stats::StatsConfig;
use streamscore::train::iris::{read_csv, train, TrainIrisArgs};

const PARTITIONS: i32 = 3;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// The page as Chromium renders it after its script has run.
fn dump_dom(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("chromium status").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("chromium output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the element carrying `data-field="name"`.
fn field(dom: &str, name: &str) -> Option<String> {
    let marker = format!("data-field=\"{name}\"");
    let at = dom.find(&marker)?;
    let after = &dom[at..];
    let start = after.find('>')? + 1;
    let end = after[start..].find('<')? + start;
    Some(after[start..end].replace("&gt;", ">").replace("&amp;", "&"))
}

fn number(dom: &str, name: &str) -> f64 {
    let text = field(dom, name).unwrap_or_else(|| panic!("the page has no {name}"));
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} shows {text:?}, not a number"))
}

/// An attribute of the element whose start tag begins with `tag_start`.
fn attribute(dom: &str, tag_start: &str, name: &str) -> Option<String> {
    let at = dom.find(tag_start)?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let key = format!("{name}=\"");
    let from = tag.find(&key)? + key.len();
    Some(tag[from..from + tag[from..].find('"')?].to_owned())
}

async fn status(addr: std::net::SocketAddr) -> Value {
    let (code, body) = http(addr, "GET", "/status", &[], "").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

fn small_forest(seed: u64, trees: u32) -> streamscore::model::ModelFile {
    let data = read_csv(&repo_path("training/iris.csv"), "species").expect("iris data");
    let args = TrainIrisArgs {
        data: repo_path("training/iris.csv"),
        out: "unused".into(),
        label: "species".into(),
        trees,
        max_depth: Some(2),
        max_features: None,
        seed,
    };
    train(&data, &args, false).expect("trained").file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_status_reports() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("STREAMSCORE_REQUIRE_BROWSER").is_none(),
            "no chromium on PATH, and STREAMSCORE_REQUIRE_BROWSER is set (.ci/run installs it)"
        );
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
        return;
    };
    const N: usize = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("served.json");
    std::fs::copy(repo_path(IRIS_MODEL), &served).expect("model copied");
    let candidate = dir.path().join("candidate.json");
    small_forest(7, 3)
        .write(&candidate)
        .expect("candidate written");

    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    // A window longer than the test: the figures the page shows stay still once the
    // stream is idle, so the browser and this test read the same ones.
    let observe = ObserveOptions {
        stats: StatsConfig {
            window: WindowSpec::new(600_000, 600_000).expect("window"),
            ..StatsConfig::default()
        },
        shadow_model: Some(candidate.clone()),
        shadow_topic: None,
    };
    let service = broker
        .start_service_observed(
            broker.pipeline_config(&topics, &unique("group")),
            &served,
            None,
            observe,
        )
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;

    let mut inputs = iris_inputs(0..N);
    inputs.push((Some(b"bad-1".to_vec()), Some(b"not json".to_vec())));
    inputs.push((Some(b"bad-2".to_vec()), Some(b"[1, 2]".to_vec())));
    inputs.push((
        Some(b"bad-3".to_vec()),
        Some(b"{\"sepal_length\": 1}".to_vec()),
    ));
    produce(&broker.brokers, &topics.input, &inputs).await;

    // Wait until every record is delivered and the shadow has compared them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let s = status(service.http_addr).await;
        let done = s["counters"]["records_out"].as_u64().unwrap_or(0)
            + s["counters"]["dead_letters"].as_u64().unwrap_or(0);
        // The rate series ends with the last full second: wait until it holds the input.
        let charted = s["rates"]["series"]
            .as_array()
            .is_some_and(|series| series.iter().any(|p| p[1].as_u64() > Some(0)));
        if done >= inputs.len() as u64
            && s["shadow"]["records"].as_u64() >= Some(inputs.len() as u64)
            && charted
        {
            break s;
        }
        assert!(Instant::now() < deadline, "not all records done: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let url = format!("http://{}/", service.http_addr);
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || dump_dom(browser, &url)
    })
    .await
    .expect("browser task");
    let after = status(service.http_addr).await;
    assert!(
        dom.contains("data-rendered="),
        "the page's script ran and rendered /status: {}",
        &dom[..dom.len().min(2000)]
    );

    // Header and model.
    assert_eq!(field(&dom, "guarantee").as_deref(), Some("at-least-once"));
    let assignment: Vec<String> = before["service"]["assignment"]
        .as_array()
        .expect("assignment")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(field(&dom, "assignment"), Some(assignment.join(", ")));
    assert_eq!(
        field(&dom, "model-version").as_deref(),
        before["model"]["version"].as_str()
    );
    assert_eq!(field(&dom, "model-kind").as_deref(), Some("random_forest"));
    // Counters and per-version counts.
    assert_eq!(
        number(&dom, "records-in"),
        before["counters"]["records_in"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(number(&dom, "records-out"), N as f64);
    assert_eq!(number(&dom, "dead-total"), 3.0);
    for v in before["versions"].as_array().expect("versions") {
        let name = format!("version:{}", v["version"].as_str().unwrap_or_default());
        assert_eq!(number(&dom, &name), v["records"].as_f64().unwrap_or(-1.0));
    }
    // Dead letters by reason.
    let dead = before["dead_letters"].as_object().expect("dead letters");
    assert_eq!(dead.values().filter_map(Value::as_u64).sum::<u64>(), 3);
    for (reason, n) in dead {
        assert_eq!(
            number(&dom, &format!("dead:{reason}")),
            n.as_f64().unwrap_or(-1.0),
            "{reason}"
        );
    }
    // The label distribution of the window, and its record count.
    let window = &before["window"]["current"];
    assert_eq!(
        number(&dom, "win-in"),
        window["records_in"].as_f64().unwrap_or(-1.0)
    );
    let predictions = window["predictions"].as_object().expect("predictions");
    assert_eq!(
        predictions.values().filter_map(Value::as_u64).sum::<u64>(),
        N as u64
    );
    for (label, n) in predictions {
        assert_eq!(
            number(&dom, &format!("label:{label}")),
            n.as_f64().unwrap_or(-1.0),
            "{label}"
        );
    }
    // Drift per feature, as /status computes it for the window.
    for d in window["drift"].as_array().expect("drift") {
        let feature = d["feature"].as_str().expect("feature");
        let shown = number(&dom, &format!("psi:{feature}"));
        let psi = d["psi"].as_f64().expect("psi");
        assert!(
            (shown - psi).abs() < 0.0005 + 1e-9,
            "{feature}: page {shown}, /status {psi}"
        );
    }
    // Consumer lag per partition.
    for l in after["lag"].as_array().expect("lag") {
        let p = l["partition"].as_i64().expect("partition");
        assert_eq!(
            number(&dom, &format!("lag:{p}")),
            l["records"].as_f64().unwrap_or(-1.0)
        );
    }
    // The shadow's agreement and its confusion table.
    let shadow = &before["shadow"];
    assert_eq!(
        field(&dom, "shadow-version").as_deref(),
        shadow["version"].as_str()
    );
    let agreement = shadow["agreement"].as_f64().expect("agreement");
    assert_eq!(
        field(&dom, "shadow-agreement"),
        Some(format!("{:.1} %", 100.0 * agreement))
    );
    for c in shadow["confusion"].as_array().expect("confusion") {
        let name = format!(
            "confusion:{}|{}",
            c["served"].as_str().unwrap_or_default(),
            c["shadow"].as_str().unwrap_or_default()
        );
        assert_eq!(
            number(&dom, &name),
            c["records"].as_f64().unwrap_or(-1.0),
            "{name}"
        );
    }
    // The batch phases: the table's means are those of the batches /status lists.
    let batches = before["batches"].as_array().expect("batches");
    assert!(!batches.is_empty());
    for phase in ["poll", "decode", "score", "produce", "commit"] {
        let key = format!("{phase}_ms");
        let mean =
            batches.iter().filter_map(|b| b[&key].as_f64()).sum::<f64>() / batches.len() as f64;
        let shown = number(&dom, &format!("phase-{phase}"));
        assert!(
            (shown - mean).abs() <= 0.005 + 1e-9,
            "{phase}: page {shown}, /status {mean}"
        );
    }
    let drawn_batches: usize = attribute(&dom, "<svg id=\"batch-chart\"", "data-batches")
        .and_then(|v| v.parse().ok())
        .expect("batch chart drawn");
    assert_eq!(drawn_batches, batches.len().min(40));
    // The rate chart: both series drawn over the whole span, its peak the series' peak.
    let series = before["rates"]["series"].as_array().expect("series");
    let peak_in = series
        .iter()
        .filter_map(|s| s[1].as_u64())
        .max()
        .unwrap_or(0);
    assert!(peak_in > 0);
    assert_eq!(
        attribute(&dom, "<svg id=\"rate-chart\"", "data-peak-input"),
        Some(peak_in.to_string())
    );
    assert_eq!(
        attribute(&dom, "<svg id=\"rate-chart\"", "data-points"),
        Some(series.len().to_string())
    );
    assert_eq!(
        dom.matches("<polyline").count(),
        2,
        "input and processed lines"
    );

    service.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_travels_to_the_output_and_the_dead_letter() {
    let broker = TestBroker::start();
    let topics = broker.topics(1).await;
    let service = broker
        .start_service(&topics, &unique("group"), &repo_path(IRIS_MODEL))
        .await;
    wait_ready(service.http_addr, Duration::from_secs(30)).await;

    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let producer = broker.producer();
    let with_trace = |key: &'static str, value: &'static [u8], tp: &'static str| {
        FutureRecord::<str, [u8]>::to(&topics.input)
            .key(key)
            .payload(value)
            .headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "traceparent",
                        value: Some(tp),
                    })
                    .insert(Header {
                        key: "tracestate",
                        value: Some("congo=t61rcWkgMzE"),
                    }),
            )
    };
    let good =
        br#"{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}"#;
    for record in [
        with_trace("good", good, parent),
        with_trace("bad", b"not json", parent),
        with_trace("malformed", good, "00-xyz-01"),
    ] {
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("input sent");
    }
    let out = broker
        .collect(
            &[&topics.output, &topics.dead_letters],
            1,
            3,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(out.len(), 3);
    let by_key = |k: &str| {
        out.iter()
            .find(|c| c.key.as_deref() == Some(k.as_bytes()))
            .unwrap_or_else(|| panic!("no record for {k}"))
    };
    let good_out = by_key("good");
    assert_eq!(good_out.topic, topics.output);
    assert_eq!(
        good_out.headers.get("traceparent").map(String::as_str),
        Some(parent)
    );
    assert_eq!(
        good_out.headers.get("tracestate").map(String::as_str),
        Some("congo=t61rcWkgMzE")
    );
    let dead = by_key("bad");
    assert_eq!(dead.topic, topics.dead_letters);
    assert_eq!(
        dead.headers.get("traceparent").map(String::as_str),
        Some(parent)
    );
    let malformed = by_key("malformed");
    assert!(
        !malformed.headers.contains_key("traceparent"),
        "a traceparent that does not parse is not passed on"
    );

    // The OpenTelemetry-named measures count the same records.
    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    let consumed = metric(
        &metrics,
        &format!(
            "messaging_client_consumed_messages_total{{messaging_consumer_group_name=\"{}\",messaging_destination_name=\"{}\",messaging_operation_name=\"poll\",messaging_system=\"kafka\"}}",
            service.state.observe.about.group, topics.input
        ),
    );
    assert_eq!(consumed, 3, "{metrics}");
    assert!(metrics.contains("messaging_process_duration_seconds_bucket"));
    let sent_outputs = metric(
        &metrics,
        &format!(
            "messaging_client_sent_messages_total{{messaging_destination_name=\"{}\",messaging_operation_name=\"send\",messaging_system=\"kafka\"}}",
            topics.output
        ),
    );
    assert_eq!(sent_outputs, 2);
    service.stop().await.expect("clean stop");
}

#[test]
fn the_page_is_self_contained() {
    let page = streamscore::service::status::PAGE;
    for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
        let allowed = page.matches("http://www.w3.org/2000/svg").count();
        let found = page.matches(external).count();
        let extra = if external == "http://" {
            found - allowed
        } else {
            found
        };
        assert_eq!(
            extra, 0,
            "the page refers to something outside itself: {external}"
        );
    }
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/service/status.html")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_admin_endpoints_load_and_promote_a_candidate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("served.json");
    std::fs::copy(repo_path(IRIS_MODEL), &served).expect("model copied");
    let candidate = small_forest(11, 5);
    candidate
        .write(&dir.path().join("candidate.json"))
        .expect("candidate written");
    let broker = TestBroker::start();
    let topics = broker.topics(1).await;
    let shadow_topic = unique("shadow");
    broker.create_topic(&shadow_topic, 1).await;
    let service = broker
        .start_service_observed(
            broker.pipeline_config(&topics, &unique("group")),
            &served,
            Some("secret"),
            ObserveOptions {
                shadow_topic: Some(shadow_topic.clone()),
                ..ObserveOptions::default()
            },
        )
        .await;
    let addr = service.http_addr;
    wait_ready(addr, Duration::from_secs(30)).await;
    let auth = [("Authorization", "Bearer secret")];
    let body = r#"{"path": "candidate.json"}"#;

    let (code, _) = http(addr, "POST", "/model/shadow", &[], body).await;
    assert_eq!(code, 401, "admin token required");
    let (code, _) = http(addr, "POST", "/model/promote", &auth, "").await;
    assert_eq!(code, 404, "nothing to promote yet");
    let (code, _) = http(
        addr,
        "POST",
        "/model/shadow",
        &auth,
        r#"{"path": "../x.json"}"#,
    )
    .await;
    assert!(
        code == 403 || code == 422,
        "outside the model directory: {code}"
    );
    let (code, reply) = http(addr, "POST", "/model/shadow", &auth, body).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        status(addr).await["shadow"]["version"].as_str(),
        Some(candidate.version.as_str())
    );

    produce(&broker.brokers, &topics.input, &iris_inputs(0..200)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(addr).await["shadow"]["compared"].as_u64() < Some(200) {
        assert!(Instant::now() < deadline, "the shadow compared the records");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // --shadow-topic: the shadow's own predictions, keyed like the inputs.
    let shadowed = broker
        .collect(&[&shadow_topic], 1, 200, Duration::from_secs(30))
        .await;
    assert_eq!(shadowed.len(), 200);
    assert!(shadowed
        .iter()
        .all(|o| o.json()["model_version"] == candidate.version.as_str()));
    let (code, reply) = http(addr, "POST", "/model/promote", &auth, "").await;
    assert_eq!(code, 200, "{reply}");
    let (_, model) = http(addr, "GET", "/model", &[], "").await;
    assert!(model.contains(&candidate.version), "{model}");
    assert!(
        status(addr).await["shadow"].is_null(),
        "promotion ends shadowing"
    );

    // Records after the promotion are scored by the promoted model.
    produce(&broker.brokers, &topics.input, &iris_inputs(200..210)).await;
    let outputs = broker
        .collect(&[&topics.output], 1, 210, Duration::from_secs(30))
        .await;
    assert!(outputs
        .iter()
        .filter(|o| o.json()["id"].as_u64() >= Some(200))
        .all(|o| o.json()["model_version"] == candidate.version.as_str()));
    service.stop().await.expect("clean stop");
}
