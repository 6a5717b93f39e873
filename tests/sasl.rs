//! SASL/SCRAM-SHA-512 over TLS (SASL_SSL) end to end against a real broker: tansu 0.6.0 with
//! `--authentication`, behind stunnel for TLS (see tests/tls.rs). tansu keeps SCRAM users in its
//! storage engine and its `user create` works only against a broker *without*
//! authentication, so the broker runs on SQLite storage: started open, the user created,
//! then restarted on the same storage requiring SASL. The service runs as the real binary
//! with its own flags (`--security-protocol`, `--sasl-mechanism`, `--sasl-username`,
//! `--sasl-password-file`, `--ssl-ca`).
//!
//! Needs `STREAMSCORE_TANSU_LIBSQL`: a tansu built with `--features dynostore,libsql` (CI
//! builds and caches one); without it the tests say so and return.

mod common;
#[path = "support/tls.rs"]
mod tls_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use common::*;
use tls_support::*;

const TANSU_ENV: &str = "STREAMSCORE_TANSU_LIBSQL";
const USER: &str = "streamscore";
const PASSWORD: &str = "s3cret-scram-password";
const N: usize = 300;
const PARTITIONS: i32 = 2;

/// tansu on SQLite storage in `dir`, on a plaintext port reachable only through stunnel.
fn tansu(bin: &Path, dir: &Path, plain: u16, tls: u16, authentication: bool) -> Reaped {
    let log = std::fs::File::create(dir.join(format!("tansu-auth-{authentication}.log")))
        .expect("tansu log file");
    let mut command = Command::new(bin);
    command
        .current_dir(dir)
        .args(["broker", "--listener-url"])
        .arg(format!("tcp://127.0.0.1:{plain}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{tls}"))
        .args(["--storage-engine", "sqlite://tansu.db"])
        .stdout(Stdio::null())
        .stderr(log);
    if authentication {
        command.arg("--authentication");
    }
    let child = Reaped(command.spawn().expect("tansu starts"));
    wait_listening(plain, "tansu");
    child
}

/// Stops a broker gracefully (SIGTERM), so its storage is closed cleanly.
fn stop(mut broker: Reaped) {
    let _ = Command::new("kill")
        .args(["-TERM", &broker.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct ScramBroker {
    dir: tempfile::TempDir,
    bootstrap: String,
    _tansu: Reaped,
    _proxy: Reaped,
}

impl ScramBroker {
    fn start() -> Option<Self> {
        let Some(bin) = std::env::var_os(TANSU_ENV).map(PathBuf::from) else {
            eprintln!("{TANSU_ENV} is not set: no SASL broker to test against, skipping");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        make_ca(dir.path(), "ca");
        make_cert(dir.path(), "ca", "broker");
        let (plain, tls) = (free_port(), free_port());

        let open = tansu(&bin, dir.path(), plain, tls, false);
        let created = Command::new(&bin)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{plain}"))
            .args(["--mechanism", "scram512", USER, PASSWORD])
            .output()
            .expect("tansu user create runs");
        assert!(
            created.status.success(),
            "tansu user create: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        stop(open);
        let secured = tansu(&bin, dir.path(), plain, tls, true);
        let proxy = stunnel(dir.path(), tls, plain, false);
        Some(Self {
            dir,
            bootstrap: format!("127.0.0.1:{tls}"),
            _tansu: secured,
            _proxy: proxy,
        })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("security.protocol", "SASL_SSL")
            .set("ssl.ca.location", self.path("ca.pem").display().to_string())
            .set("sasl.mechanisms", "SCRAM-SHA-512")
            .set("sasl.username", USER)
            .set("sasl.password", PASSWORD);
        config
    }

    /// The service's command line for this broker, with the password in a file.
    fn serve(&self, topics: &Topics, password: &str, http_addr: &str) -> Command {
        let password_file = self.path(&format!("password-{}", unique("p")));
        std::fs::write(&password_file, password).expect("password file written");
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamscore"));
        command
            .args(["serve", "--model"])
            .arg(repo_path(IRIS_MODEL))
            .args(["--http-addr", http_addr, "--batch-interval", "50ms"])
            .args(["--brokers", &self.bootstrap])
            .args(["--security-protocol", "SASL_SSL"])
            .args(["--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", USER])
            .arg("--sasl-password-file")
            .arg(&password_file)
            .arg("--ssl-ca")
            .arg(self.path("ca.pem"))
            .args(["--input-topic", &topics.input])
            .args(["--output-topic", &topics.output])
            .args(["--dead-letter-topic", &topics.dead_letters])
            .args(["--group", &unique("sasl")])
            .env("STREAMSCORE_LOG_LEVEL", "warn");
        command
    }
}

fn topics() -> Topics {
    Topics {
        input: unique("sasl-in"),
        output: unique("sasl-out"),
        dead_letters: unique("sasl-dlq"),
        partitions: PARTITIONS,
    }
}

/// `/readyz`'s raw answer, or `None` if the service is not (or no longer) listening.
async fn readyz(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(answer).filter(|a| !a.is_empty())
}

fn local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_pipeline_runs_over_sasl_ssl_with_scram() {
    let Some(broker) = ScramBroker::start() else {
        return;
    };
    let topics = topics();
    let admin: AdminClient<DefaultClientContext> = broker.client().create().expect("admin client");
    let new: Vec<NewTopic<'_>> = [&topics.input, &topics.output, &topics.dead_letters]
        .iter()
        .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let created = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics answered over SASL_SSL");
    for r in created {
        r.expect("topic created");
    }
    let producer: FutureProducer = broker.client().create().expect("producer");
    let broken = 3;
    let mut inputs = iris_inputs(0..N);
    inputs.extend((0..broken).map(|i| (None, Some(format!("not json {i}").into_bytes()))));
    produce_with(&producer, &topics.input, &inputs).await;

    let http_addr = local_addr();
    let service = broker
        .serve(&topics, PASSWORD, &http_addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("service starts");
    let service = Reaped(service);

    let (values, dead_letters) =
        collect_outputs(broker.client(), &topics, PARTITIONS, N + broken).await;
    let mut ids: Vec<u64> = values
        .iter()
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .filter_map(|v| v["id"].as_u64())
        .collect();
    let _ = Command::new("kill")
        .args(["-TERM", &service.0.id().to_string()])
        .status();
    let outputs = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "every input scored over SASL_SSL");
    assert_eq!(outputs, N, "and scored once");
    assert_eq!(dead_letters, broken, "every broken input dead-lettered");
}

/// A wrong password: the service stops by itself with an error that says authentication
/// failed, `/readyz` never says ready meanwhile, and the password is not in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_fast_and_clearly() {
    let Some(broker) = ScramBroker::start() else {
        return;
    };
    let wrong = "not-the-password-at-all";
    let http_addr = local_addr();
    let log = broker.path("serve.log");
    let mut service = broker.serve(&topics(), wrong, &http_addr);
    service
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut service = Reaped(service.spawn().expect("service starts"));
    let addr: std::net::SocketAddr = http_addr.parse().expect("address");
    let started = Instant::now();
    let mut answered = 0;
    let status = loop {
        if let Some(status) = service.0.try_wait().expect("child status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running 30 s after start with a wrong password"
        );
        if let Some(answer) = readyz(addr).await {
            assert!(
                !answer.starts_with("HTTP/1.1 200"),
                "ready with a wrong password: {answer}"
            );
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&log).expect("log read");
    eprintln!(
        "stopped after {:.1} s ({answered} /readyz answers, none ready): {}",
        started.elapsed().as_secs_f64(),
        stderr.lines().last().unwrap_or_default()
    );
    assert!(!status.success(), "a wrong password is an error exit");
    let lower = stderr.to_ascii_lowercase();
    assert!(
        lower.contains("authentication") || lower.contains("sasl"),
        "the error names the authentication failure: {stderr}"
    );
    assert!(!stderr.contains(wrong), "the password is never logged");
}
