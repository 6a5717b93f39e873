//! Throw-away TLS for tests against tansu: a CA and certificates made with the `openssl` CLI,
//! and stunnel terminating TLS in front of a plaintext broker (tansu 0.6 cannot switch TLS on
//! from its command line), and the reader of what the service wrote through such a broker.
//! Shared by tests/tls.rs and tests/sasl.rs.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `openssl` with `args` in `dir`, failing the test with its output on an error.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate it signed for `name` (with 127.0.0.1 as its address, which is
/// what librdkafka checks the broker's certificate against).
pub fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
}

pub fn make_cert(dir: &Path, ca: &str, name: &str) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("extension file written");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Killed on drop, so that a failing test leaves no broker or proxy behind.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn stunnel_binary() -> PathBuf {
    // Debian installs it as stunnel4, with `stunnel` as an alternative that may be absent.
    ["/usr/bin/stunnel4", "/usr/bin/stunnel"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("stunnel4"))
}

/// stunnel in `dir`, accepting TLS on `tls` with `broker.pem`/`broker.key` and forwarding to
/// the plaintext `plain` port; with `require_client_cert`, only clients `ca.pem` signed.
pub fn stunnel(dir: &Path, tls: u16, plain: u16, require_client_cert: bool) -> Reaped {
    let mut conf = format!(
        "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n\
         cert = broker.pem\nkey = broker.key\n"
    );
    if require_client_cert {
        conf.push_str("verify = 2\nCAfile = ca.pem\n");
    }
    std::fs::write(dir.join("stunnel.conf"), conf).expect("stunnel config written");
    let proxy = Command::new(stunnel_binary())
        .current_dir(dir)
        .arg("stunnel.conf")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel starts (apt-get install stunnel4)");
    let proxy = Reaped(proxy);
    wait_listening(tls, "stunnel");
    proxy
}

/// Reads the output and dead-letter topics from the beginning with `client` (a TLS or
/// SASL_SSL client of the broker) until `count` records or 90 s: the outputs' values and the
/// number of dead letters.
pub async fn collect_outputs(
    mut client: rdkafka::config::ClientConfig,
    topics: &crate::common::Topics,
    partitions: i32,
    count: usize,
) -> (Vec<Vec<u8>>, usize) {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: StreamConsumer = client
        .set("group.id", crate::common::unique("tls-collector"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("collector");
    let mut tpl = TopicPartitionList::new();
    for topic in [&topics.output, &topics.dead_letters] {
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition added");
        }
    }
    consumer.assign(&tpl).expect("assigned");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (mut outputs, mut dead_letters) = (Vec::new(), 0);
    while outputs.len() + dead_letters < count {
        let message = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            m = consumer.recv() => m,
        };
        let Ok(m) = message else { continue };
        if m.topic() == topics.dead_letters {
            dead_letters += 1;
        } else {
            outputs.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    (outputs, dead_letters)
}
