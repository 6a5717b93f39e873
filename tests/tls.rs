//! TLS end to end against a real broker: tansu 0.6.0 (which cannot switch TLS on from its
//! command line) behind a TLS-terminating proxy (stunnel), advertising the proxy's address, so
//! every client connection, the service's included, is TLS exactly as against a TLS listener of
//! a real cluster. A throw-away CA and certificates are made per run with the `openssl` CLI.
//!
//! Needs `STREAMSCORE_TANSU` (the tansu binary; CI sets it) and `stunnel4`; without
//! `STREAMSCORE_TANSU` the tests say so and return, since no TLS broker can be had.

mod common;
#[path = "support/tls.rs"]
mod tls_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::*;
use tls_support::*;

const TANSU_ENV: &str = "STREAMSCORE_TANSU";
const N: usize = 300;
const PARTITIONS: i32 = 2;

/// tansu on a plaintext loopback port, reachable only through stunnel's TLS port.
struct TlsBroker {
    dir: tempfile::TempDir,
    bootstrap: String,
    _tansu: Reaped,
    _proxy: Reaped,
}

impl TlsBroker {
    /// `None` (with a note) where no tansu binary is configured.
    fn start(require_client_cert: bool) -> Option<Self> {
        let Ok(tansu) = std::env::var(TANSU_ENV) else {
            eprintln!("{TANSU_ENV} is not set: no TLS broker to test against, skipping");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        make_ca(dir.path(), "ca");
        make_cert(dir.path(), "ca", "broker");
        make_cert(dir.path(), "ca", "client");
        make_ca(dir.path(), "rogue-ca");

        let (plain, tls) = (free_port(), free_port());
        let bootstrap = format!("127.0.0.1:{tls}");
        let tansu = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{plain}"),
            ])
            .args(["--advertised-listener-url", &format!("tcp://{bootstrap}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let tansu = Reaped(tansu);
        wait_listening(plain, "tansu");

        let proxy = stunnel(dir.path(), tls, plain, require_client_cert);
        Some(Self {
            dir,
            bootstrap,
            _tansu: tansu,
            _proxy: proxy,
        })
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// Client TLS settings: trust `ca`, and present the client certificate if `with_cert`.
    fn tls_properties(&self, ca: &str, with_cert: bool) -> Vec<(String, String)> {
        let mut props = vec![
            ("security.protocol".to_owned(), "SSL".to_owned()),
            (
                "ssl.ca.location".to_owned(),
                self.path(&format!("{ca}.pem")),
            ),
        ];
        if with_cert {
            props.push(("ssl.certificate.location".into(), self.path("client.pem")));
            props.push(("ssl.key.location".into(), self.path("client.key")));
        }
        props
    }

    fn client(&self, with_cert: bool) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in self.tls_properties("ca", with_cert) {
            config.set(k, v);
        }
        config
    }

    async fn create_topics(&self, with_cert: bool, names: &[&str]) {
        let admin: AdminClient<DefaultClientContext> =
            self.client(with_cert).create().expect("admin client");
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create_topics answered over TLS");
        for r in results {
            r.expect("topic created");
        }
    }
}

fn topics() -> Topics {
    Topics {
        input: unique("tls-in"),
        output: unique("tls-out"),
        dead_letters: unique("tls-dlq"),
        partitions: PARTITIONS,
    }
}

/// Produces the iris inputs plus `broken` undecodable records, over TLS.
async fn produce_over_tls(broker: &TlsBroker, with_cert: bool, topic: &str, broken: usize) {
    let producer: FutureProducer = broker
        .client(with_cert)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut records = iris_inputs(0..N);
    records.extend((0..broken).map(|i| (None, Some(format!("not json {i}").into_bytes()))));
    for (key, value) in &records {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produced over TLS");
    }
}

async fn scored_over_tls(require_client_cert: bool) {
    let Some(broker) = TlsBroker::start(require_client_cert) else {
        return;
    };
    let topics = topics();
    broker
        .create_topics(
            require_client_cert,
            &[&topics.input, &topics.output, &topics.dead_letters],
        )
        .await;
    let broken = 3;
    produce_over_tls(&broker, require_client_cert, &topics.input, broken).await;

    let plain = TestBroker {
        brokers: broker.bootstrap.clone(),
        mock: None,
    };
    let mut config = plain.pipeline_config(&topics, &unique("tls"));
    config.properties = broker.tls_properties("ca", require_client_cert);
    let service = plain
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let (outputs, dead_letters) = collect_outputs(
        broker.client(require_client_cert),
        &topics,
        PARTITIONS,
        N + broken,
    )
    .await;
    service.stop().await.expect("clean shutdown");

    let mut ids: Vec<u64> = outputs
        .iter()
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok()?["id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "every input scored once over TLS");
    assert_eq!(dead_letters, broken, "every broken input dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_pipeline_runs_over_tls() {
    scored_over_tls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_pipeline_runs_over_mutual_tls() {
    scored_over_tls(true).await;
}

/// A broker whose certificate the service does not trust: the service stops at start-up with
/// the TLS error, instead of retrying forever while looking healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_fails_fast_and_clearly() {
    let Some(broker) = TlsBroker::start(false) else {
        return;
    };
    let topics = topics();
    let plain = TestBroker {
        brokers: broker.bootstrap.clone(),
        mock: None,
    };
    let mut config = plain.pipeline_config(&topics, &unique("tls-untrusted"));
    config.properties = broker.tls_properties("rogue-ca", false);
    let service = plain
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;
    let http_addr = service.http_addr;
    let (status, body) = http(http_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(
        status, 503,
        "not ready while the broker is untrusted: {body}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .expect("the service stops by itself within 30 s");
    let err = ended.expect_err("an untrusted broker is an error");
    let message = format!("{err:#}");
    assert!(
        message.contains("SSL") || message.contains("certificate"),
        "the error names the TLS failure: {message}"
    );
}
