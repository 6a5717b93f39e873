//! The references a service run is measured against, in the same run on the same broker:
//! the loopback ceiling (the service's own consumer and producer settings with nothing in
//! between: every record consumed and produced again unchanged) and the Python peer that
//! streamscore replaces (`bench/peers/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use crate::pipeline::sink::producer_settings;
use crate::pipeline::source::consumer_settings;
use crate::pipeline::{PipelineConfig, DEFAULT_MAX_BATCH_BYTES};

#[derive(Debug, Clone, Serialize)]
pub struct ReferenceFigures {
    pub name: String,
    pub records: usize,
    pub seconds: f64,
    pub records_per_second: f64,
    /// CPU of the reference's own process; absent for the in-process ceiling, whose process
    /// also runs the load generator (and the embedded broker).
    pub cpu_us_per_record: Option<f64>,
}

/// The service's client settings for a run at `batch_interval`: the interval picks the
/// producer's linger and the consumer's fetch wait (latency mode changes both), so the
/// ceiling must be built for the same interval as the service run it is compared with.
fn settings(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    batch_interval: Duration,
) -> PipelineConfig {
    PipelineConfig {
        brokers: brokers.to_owned(),
        properties: Vec::new(),
        consumer_properties: Vec::new(),
        input_topic: input.to_owned(),
        output_topic: output.to_owned(),
        dead_letter_topic: output.to_owned(),
        group: group.to_owned(),
        batch_interval,
        max_batch: 1,
        max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        max_record_bytes: usize::MAX,
        guarantee: Default::default(),
    }
}

/// Consumes `records` records and produces each again unchanged, with the service's own
/// client settings for `batch_interval`, until every one is acknowledged. Runs on the calling
/// thread.
pub fn loopback_ceiling(
    brokers: &str,
    input: &str,
    output: &str,
    records: usize,
    batch_interval: Duration,
) -> anyhow::Result<ReferenceFigures> {
    let config = settings(
        brokers,
        input,
        output,
        &format!("bench-ceiling-{output}"),
        batch_interval,
    );
    let consumer: BaseConsumer = consumer_settings(&config).create()?;
    let producer: ThreadedProducer<DefaultProducerContext> = producer_settings(&config).create()?;
    consumer.subscribe(&[input])?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut first: Option<Instant> = None;
    let mut copied = 0usize;
    while copied < records {
        if Instant::now() > deadline {
            bail!("the ceiling copied only {copied} of {records} records in an hour");
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = polled else { continue };
        first.get_or_insert_with(Instant::now);
        let mut record = BaseRecord::<[u8], [u8]>::to(output);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        copied += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(ReferenceFigures {
        name: "loopback ceiling".into(),
        records,
        seconds,
        records_per_second: records as f64 / seconds.max(1e-9),
        cpu_us_per_record: None,
    })
}

/// `loopback_ceiling` on a blocking thread, for the async bench runs.
pub async fn measure_ceiling(
    brokers: &str,
    input: &str,
    output: &str,
    records: usize,
    batch_interval: Duration,
) -> anyhow::Result<ReferenceFigures> {
    let (brokers, input, output) = (brokers.to_owned(), input.to_owned(), output.to_owned());
    tokio::task::spawn_blocking(move || {
        loopback_ceiling(&brokers, &input, &output, records, batch_interval)
    })
    .await?
}

/// The peer's interpreter, when `bench/peers/setup.sh` has made its environment.
pub fn python_peer_interpreter(repo: &Path) -> Option<PathBuf> {
    let python = repo.join("bench/peers/.venv/bin/python");
    python.exists().then_some(python)
}

#[derive(Deserialize)]
struct PeerOutput {
    records: usize,
    seconds: f64,
    cpu_seconds: f64,
}

/// The Python peer's command line (`copy`: without the model, bytes only); it reads `records`
/// records from `input` and prints its figures as one JSON line when done.
pub fn python_peer_command(
    python: &Path,
    repo: &Path,
    brokers: &str,
    input: &str,
    output: &str,
    records: usize,
    copy: bool,
) -> Command {
    let mut command = Command::new(python);
    command
        .current_dir(repo)
        .arg("bench/peers/sklearn_peer.py")
        .args(["--brokers", brokers, "--input", input, "--output", output])
        .args(["--group", &format!("bench-peer-{output}")])
        .args(["--records", &records.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if copy {
        command.arg("--copy");
    }
    command
}

/// Runs the Python peer over the pre-loaded input.
pub fn python_peer(
    python: &Path,
    repo: &Path,
    brokers: &str,
    input: &str,
    output: &str,
    records: usize,
    copy: bool,
) -> anyhow::Result<ReferenceFigures> {
    let out = python_peer_command(python, repo, brokers, input, output, records, copy)
        .output()
        .context("running the Python peer")?;
    python_peer_figures(&out, copy)
}

/// The figures a finished peer printed.
pub fn python_peer_figures(
    out: &std::process::Output,
    copy: bool,
) -> anyhow::Result<ReferenceFigures> {
    if !out.status.success() {
        bail!("the Python peer failed: {}", out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let figures: PeerOutput = serde_json::from_str(line.trim())
        .with_context(|| format!("reading the Python peer's figures from {line:?}"))?;
    Ok(ReferenceFigures {
        name: if copy {
            "python confluent-kafka, bytes copied".into()
        } else {
            "python confluent-kafka + scikit-learn RF-100".into()
        },
        records: figures.records,
        seconds: figures.seconds,
        records_per_second: figures.records as f64 / figures.seconds.max(1e-9),
        cpu_us_per_record: Some(figures.cpu_seconds * 1e6 / figures.records.max(1) as f64),
    })
}
