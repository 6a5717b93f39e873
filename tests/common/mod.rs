//! Test harness: a broker (librdkafka's in-process mock cluster, or an external broker named
//! by `STREAMSCORE_TEST_BROKERS`), the real service started in-process, and bounded helpers
//! to produce inputs and collect what comes out.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use streamscore::pipeline::PipelineConfig;
use streamscore::record::DEFAULT_MAX_RECORD_BYTES;
use streamscore::service::{self, ServiceConfig, ServiceHandle};

/// Environment variable naming an external broker to run against instead of the mock.
pub const BROKERS_ENV: &str = "STREAMSCORE_TEST_BROKERS";

pub const IRIS_MODEL: &str = "models/iris-forest.json";

/// A record to produce: key and value, either possibly absent.
pub type Input = (Option<Vec<u8>>, Option<Vec<u8>>);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestBroker {
    pub brokers: String,
    pub mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

/// The three topics one service instance uses, with their partition count.
#[derive(Clone, Debug)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dead_letters: String,
    pub partitions: i32,
}

impl TestBroker {
    pub fn start() -> Self {
        match std::env::var(BROKERS_ENV) {
            Ok(brokers) if !brokers.is_empty() => Self {
                brokers,
                mock: None,
            },
            _ => Self::mock(),
        }
    }

    /// Always the in-process mock, for tests that inject faults through it.
    pub fn mock() -> Self {
        let mock = MockCluster::new(1).expect("mock cluster starts");
        Self {
            brokers: mock.bootstrap_servers(),
            mock: Some(mock),
        }
    }

    pub fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    pub async fn topics(&self, partitions: i32) -> Topics {
        let topics = Topics {
            input: unique("in"),
            output: unique("out"),
            dead_letters: unique("dlq"),
            partitions,
        };
        for name in [&topics.input, &topics.output, &topics.dead_letters] {
            self.create_topic(name, partitions).await;
        }
        topics
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        if let Some(mock) = &self.mock {
            mock.create_topic(name, partitions, 1)
                .expect("mock topic created");
            return;
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create_topics answered");
        for r in results {
            r.expect("topic created");
        }
    }

    pub fn pipeline_config(&self, topics: &Topics, group: &str) -> PipelineConfig {
        PipelineConfig {
            brokers: self.brokers.clone(),
            properties: Vec::new(),
            consumer_properties: vec![
                // Fast empty fetches and quick rebalances keep test latency low.
                ("fetch.wait.max.ms".into(), "10".into()),
                ("session.timeout.ms".into(), "6000".into()),
                ("heartbeat.interval.ms".into(), "500".into()),
            ],
            input_topic: topics.input.clone(),
            output_topic: topics.output.clone(),
            dead_letter_topic: topics.dead_letters.clone(),
            group: group.to_owned(),
            batch_interval: Duration::from_millis(50),
            max_batch: 500,
            max_batch_bytes: streamscore::pipeline::DEFAULT_MAX_BATCH_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            guarantee: Default::default(),
            format: Default::default(),
        }
    }

    pub async fn start_service(&self, topics: &Topics, group: &str, model: &Path) -> ServiceHandle {
        self.start_service_with(self.pipeline_config(topics, group), model, None)
            .await
    }

    pub async fn start_service_with(
        &self,
        pipeline: PipelineConfig,
        model: &Path,
        admin_token: Option<&str>,
    ) -> ServiceHandle {
        self.start_service_observed(pipeline, model, admin_token, Default::default())
            .await
    }

    /// A service with statistics, drift and shadow settings of its own.
    pub async fn start_service_observed(
        &self,
        pipeline: PipelineConfig,
        model: &Path,
        admin_token: Option<&str>,
        observe: streamscore::config::ObserveOptions,
    ) -> ServiceHandle {
        service::start(ServiceConfig {
            pipeline,
            model: model.to_path_buf(),
            allow_kind_change: false,
            http_addr: "127.0.0.1:0".parse().expect("loopback address"),
            admin_token: admin_token.map(str::to_owned),
            observe,
            feedback: None,
        })
        .await
        .expect("service starts")
    }

    pub fn producer(&self) -> FutureProducer {
        producer(&self.brokers)
    }

    /// Produces `(key, value)` records and waits until all are acknowledged.
    pub async fn produce(&self, topic: &str, records: &[Input]) {
        produce(&self.brokers, topic, records).await
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    // The mock keeps ~5 MiB per partition; compression keeps large runs inside it.
    compressed_producer(brokers, "lz4")
}

pub fn compressed_producer(brokers: &str, codec: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("compression.type", codec)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// One record per record batch. tansu 0.6 serves a fetch from an offset inside a batch by
/// skipping the rest of that batch, so a consumer resuming from a commit that fell mid-batch
/// would lose records to the broker; tests that restart a consumer produce this way.
pub fn unbatched_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Produces `(key, value)` records and waits until all are acknowledged.
pub async fn produce(brokers: &str, topic: &str, records: &[Input]) {
    produce_with(&producer(brokers), topic, records).await
}

/// The same, through a producer of the caller's (a codec, say).
pub async fn produce_with(producer: &FutureProducer, topic: &str, records: &[Input]) {
    let mut deliveries = Vec::with_capacity(records.len());
    for (key, value) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    deliveries.push(d);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("cannot produce a test input: {e}"),
            }
        }
    }
    // Fault-injection tests make the broker refuse some produce requests, ours included:
    // re-send those inputs (bounded) so the test's own traffic is complete.
    let mut attempts = 0;
    while !deliveries.is_empty() {
        let mut failed = Vec::new();
        for d in deliveries {
            if let Err((e, message)) = d.await.expect("delivery answered") {
                failed.push((e, message));
            }
        }
        attempts += 1;
        assert!(
            failed.is_empty() || attempts < 10,
            "inputs not delivered: {:?}",
            failed.first().map(|f| &f.0)
        );
        deliveries = failed
            .iter()
            .map(|(_, m)| {
                let mut record = FutureRecord::<[u8], [u8]>::to(m.topic());
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(v) = m.payload() {
                    record = record.payload(v);
                }
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("re-sent")
            })
            .collect();
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");
}

impl TestBroker {
    /// Reads `topics` from the beginning until `count` records arrived or `timeout` passed.
    pub async fn collect(
        &self,
        topics: &[&str],
        partitions: i32,
        count: usize,
        timeout: Duration,
    ) -> Vec<Collected> {
        self.collect_until(topics, partitions, timeout, |seen| seen.len() >= count)
            .await
    }

    /// Reads `topics` from the beginning until `done` holds for what was read, or `timeout`.
    pub async fn collect_until(
        &self,
        topics: &[&str],
        partitions: i32,
        timeout: Duration,
        mut done: impl FnMut(&[Collected]) -> bool,
    ) -> Vec<Collected> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", unique("collector"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("collector consumer");
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .expect("partition added");
            }
        }
        consumer.assign(&tpl).expect("assigned");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) {
            let message = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                // `done` may depend on time passing (a quiet period), not only on records.
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                m = consumer.recv() => m,
            };
            let Ok(m) = message else { continue };
            out.push(Collected {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                timestamp: m.timestamp(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        out
    }
}

/// A mock cluster of several brokers driven through librdkafka's own mock API where the
/// rdkafka crate does not wrap it: topics placed on chosen brokers, request errors pushed
/// onto one broker, and the requests the brokers received, counted by API.
pub struct MockBrokers {
    owner: rdkafka::producer::BaseProducer,
    pub broker: TestBroker,
}

impl MockBrokers {
    pub fn start(brokers: usize) -> Self {
        use rdkafka::producer::Producer as _;
        let owner: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .expect("mock cluster");
        let bootstrap = owner
            .client()
            .mock_cluster()
            .expect("a mock cluster")
            .bootstrap_servers();
        let this = Self {
            owner,
            broker: TestBroker {
                brokers: bootstrap,
                mock: None,
            },
        };
        // SAFETY: the cluster is owned by `owner`, alive for as long as `this`.
        unsafe { rdkafka::bindings::rd_kafka_mock_start_request_tracking(this.raw()) };
        this
    }

    fn raw(&self) -> *mut rdkafka::bindings::rd_kafka_mock_cluster_t {
        use rdkafka::producer::Producer as _;
        // SAFETY: a live client handle; the mock cluster it owns lives as long as it does.
        let mock = unsafe {
            rdkafka::bindings::rd_kafka_handle_mock_cluster(self.owner.client().native_ptr())
        };
        assert!(!mock.is_null(), "the client owns a mock cluster");
        mock
    }

    /// A topic whose partitions are all led by `leader`.
    pub fn topic(&self, prefix: &str, partitions: i32, leader: i32) -> String {
        use rdkafka::producer::Producer as _;
        let name = unique(prefix);
        let mock = self.owner.client().mock_cluster().expect("a mock cluster");
        mock.create_topic(&name, partitions, 1)
            .expect("topic created");
        for p in 0..partitions {
            mock.partition_leader(&name, p, Some(leader))
                .expect("leader set");
        }
        name
    }

    /// Input, output and dead-letter topics led by the given brokers.
    pub fn topics(&self, partitions: i32, leaders: [i32; 3]) -> Topics {
        Topics {
            input: self.topic("in", partitions, leaders[0]),
            output: self.topic("out", partitions, leaders[1]),
            dead_letters: self.topic("dlq", partitions, leaders[2]),
            partitions,
        }
    }

    /// The next `n` produce requests `broker` receives are answered with `error`.
    pub fn refuse_produce(&self, broker: i32, n: usize, error: rdkafka::types::RDKafkaRespErr) {
        for _ in 0..n {
            // SAFETY: a live cluster; the variadic arguments are `cnt` (= 1) pairs of (error
            // code, round-trip time in ms), both C ints.
            unsafe {
                rdkafka::bindings::rd_kafka_mock_broker_push_request_error_rtts(
                    self.raw(),
                    broker,
                    rdkafka::types::RDKafkaApiKey::Produce as i16,
                    1,
                    error as std::os::raw::c_int,
                    0 as std::os::raw::c_int,
                );
            }
        }
    }

    /// How many requests of `api` the brokers have received since the cluster started.
    pub fn requests(&self, api: rdkafka::types::RDKafkaApiKey) -> usize {
        let mut count = 0usize;
        // SAFETY: the array and its requests come from the mock and are freed once, here.
        unsafe {
            let requests = rdkafka::bindings::rd_kafka_mock_get_requests(self.raw(), &mut count);
            let seen = (0..count)
                .filter(|i| {
                    rdkafka::bindings::rd_kafka_mock_request_api_key(*requests.add(*i))
                        == api as i16
                })
                .count();
            rdkafka::bindings::rd_kafka_mock_request_destroy_array(requests, count);
            seen
        }
    }
}

#[derive(Debug, Clone)]
pub struct Collected {
    pub topic: String,
    pub partition: i32,
    pub timestamp: rdkafka::Timestamp,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl Collected {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default()).expect("output is JSON")
    }

    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
}

/// The 150 labelled iris rows: features (in model order) and species.
pub fn iris_rows() -> Vec<([f64; 4], String)> {
    let mut reader = csv::Reader::from_path(repo_path("training/iris.csv")).expect("iris.csv");
    reader
        .records()
        .map(|r| {
            let r = r.expect("row");
            let f = |i: usize| r[i].parse::<f64>().expect("number");
            ([f(0), f(1), f(2), f(3)], r[4].to_owned())
        })
        .collect()
}

pub fn iris_json(id: usize, features: &[f64; 4]) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "sepal_length": features[0],
        "sepal_width": features[1],
        "petal_length": features[2],
        "petal_width": features[3],
    })
    .to_string()
    .into_bytes()
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A minimal HTTP/1.1 client for the side port: (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("side port reachable");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("response read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `/readyz` until it answers 200, for at most `timeout`.
pub async fn wait_ready(addr: std::net::SocketAddr, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, _) = http(addr, "GET", "/readyz", &[], "").await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service not ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real binary running `serve` against a test broker.
pub struct ServiceProcess {
    pub child: std::process::Child,
    pub http_addr: std::net::SocketAddr,
}

impl ServiceProcess {
    pub fn spawn(broker: &TestBroker, topics: &Topics, group: &str, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let http_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let kip848 = extra
            .windows(2)
            .any(|w| w == ["--group-protocol", "consumer"]);
        // For a look at what a process did: its log, one file per process, in this directory.
        let logs = std::env::var_os("STREAMSCORE_TEST_SERVICE_LOGS").map(|dir| {
            let path = std::path::Path::new(&dir).join(format!("serve-{}.log", http_addr.port()));
            std::fs::File::create(&path)
                .map(std::process::Stdio::from)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
        });
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(["serve", "--model"])
            .arg(repo_path(IRIS_MODEL))
            .args([
                "--http-addr",
                &http_addr.to_string(),
                "--batch-interval",
                "50ms",
            ])
            .args(["-X", "fetch.wait.max.ms=10"])
            // A short session for the classic protocol; KIP-848 refuses it (the broker sets it).
            .args(if kip848 {
                &[][..]
            } else {
                &["-X", "session.timeout.ms=6000"][..]
            })
            .args(extra)
            .env("STREAMSCORE_BROKERS", &broker.brokers)
            .env("STREAMSCORE_INPUT_TOPIC", &topics.input)
            .env("STREAMSCORE_OUTPUT_TOPIC", &topics.output)
            .env("STREAMSCORE_DEAD_LETTER_TOPIC", &topics.dead_letters)
            .env("STREAMSCORE_GROUP", group)
            .env(
                "STREAMSCORE_LOG_LEVEL",
                if logs.is_some() { "info" } else { "warn" },
            )
            .stdout(std::process::Stdio::null())
            .stderr(logs.unwrap_or_else(std::process::Stdio::null))
            .spawn()
            .expect("service starts");
        Self { child, http_addr }
    }

    /// Waits until the side port answers and the group has assigned partitions.
    pub async fn ready(&self) {
        let wait = async {
            while tokio::net::TcpStream::connect(self.http_addr)
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            wait_ready(self.http_addr, Duration::from_secs(30)).await;
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("ready in time");
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit, killing it if it overstays `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the service did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Outputs per input id, for counting losses and duplicates.
pub fn id_counts(outputs: &[Collected]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for out in outputs {
        if let Some(id) = out.json()["id"].as_u64() {
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

/// Keyed iris records with ids in `range`.
pub fn iris_inputs(range: std::ops::Range<usize>) -> Vec<Input> {
    let rows = iris_rows();
    range
        .map(|i| {
            (
                Some(format!("k{i}").into_bytes()),
                Some(iris_json(i, &rows[i % rows.len()].0)),
            )
        })
        .collect()
}

/// How long collection goes on after every expected record was seen, so that duplicates
/// arriving later are counted too.
pub const QUIET_PERIOD: Duration = Duration::from_secs(2);

/// Reads `topics` until `complete` (fed each record as it arrives) says everything expected
/// has come, then until nothing new arrives for `QUIET_PERIOD` (or `timeout` overall).
pub async fn collect_settled(
    broker: &TestBroker,
    topics: &[&str],
    partitions: i32,
    timeout: Duration,
    mut complete: impl FnMut(&Collected) -> bool,
) -> Vec<Collected> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut done = false;
    let mut last_new = tokio::time::Instant::now();
    let mut seen = 0;
    broker
        .collect_until(topics, partitions, timeout, |got| {
            let now = tokio::time::Instant::now();
            for c in &got[seen..] {
                done |= complete(c);
                last_new = now;
            }
            seen = got.len();
            (done && now.duration_since(last_new) >= QUIET_PERIOD) || now >= deadline
        })
        .await
}

/// Reads the output topic until every id below `n` has appeared (or `timeout`), then for a
/// quiet period more, so later duplicates are counted.
pub async fn collect_ids(
    broker: &TestBroker,
    topics: &Topics,
    n: usize,
    timeout: Duration,
) -> Vec<Collected> {
    let mut seen = std::collections::HashSet::new();
    collect_settled(broker, &[&topics.output], topics.partitions, timeout, |c| {
        if let Some(id) = c.json()["id"].as_u64() {
            seen.insert(id);
        }
        seen.len() >= n
    })
    .await
}

/// The value of one series in a Prometheus text exposition. A series that is absent is a
/// test failure, not a zero: a renamed metric must not pass an `== 0` check.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric series {series} is not exposed"))
}

/// Loss and duplicate counts of a run, printed for the fault matrix.
#[derive(Debug)]
pub struct Tally {
    pub inputs: usize,
    pub outputs: usize,
    pub missing: usize,
    pub duplicates: usize,
}

pub fn tally(case: &str, n: usize, outputs: &[Collected]) -> Tally {
    let counts = id_counts(outputs);
    let missing = (0..n as u64).filter(|i| !counts.contains_key(i)).count();
    let duplicates = counts.values().map(|c| c - 1).sum();
    let t = Tally {
        inputs: n,
        outputs: outputs.len(),
        missing,
        duplicates,
    };
    eprintln!(
        "FAULT-MATRIX {case}: in={} out={} lost={} duplicated={}",
        t.inputs, t.outputs, t.missing, t.duplicates
    );
    t
}
