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

use super::child::process_usage;
use crate::pipeline::sink::producer_settings;
use crate::pipeline::source::consumer_settings;
use crate::pipeline::{PipelineConfig, DEFAULT_MAX_BATCH_BYTES};

#[derive(Debug, Clone, Serialize)]
pub struct ReferenceFigures {
    pub name: String,
    pub records: usize,
    pub seconds: f64,
    pub records_per_second: f64,
    /// CPU of the reference's own process, from its first record on.
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
        format: Default::default(),
    }
}

/// The ceiling run in a process of its own (`streamscore loopback`), so that its CPU, like
/// the service's, is its own and not the load generator's or the embedded broker's.
#[derive(clap::Args, Debug, Clone)]
pub struct LoopbackArgs {
    #[arg(long)]
    pub brokers: String,
    #[arg(long)]
    pub input: String,
    #[arg(long)]
    pub output: String,
    #[arg(long)]
    pub records: usize,
    #[arg(long, value_parser = crate::config::parse_interval)]
    pub batch_interval: Duration,
}

#[derive(Serialize, Deserialize)]
struct LoopbackOutput {
    seconds: f64,
    /// This process's CPU from its first record on, every librdkafka thread included.
    cpu_seconds: f64,
}

/// `streamscore loopback`: runs the ceiling and prints its figures as one JSON line.
pub fn run_loopback(args: &LoopbackArgs) -> anyhow::Result<()> {
    let out = loopback_ceiling(
        &args.brokers,
        &args.input,
        &args.output,
        args.records,
        args.batch_interval,
    )?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Consumes `records` records and produces each again unchanged, with the service's own
/// client settings for `batch_interval`, until every one is acknowledged.
fn loopback_ceiling(
    brokers: &str,
    input: &str,
    output: &str,
    records: usize,
    batch_interval: Duration,
) -> anyhow::Result<LoopbackOutput> {
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
    let own_cpu = || process_usage(std::process::id()).map(|(cpu, _)| cpu);
    let mut first: Option<(Instant, f64)> = None;
    let mut copied = 0usize;
    while copied < records {
        if Instant::now() > deadline {
            bail!("the ceiling copied only {copied} of {records} records in an hour");
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = polled else { continue };
        if first.is_none() {
            first = Some((Instant::now(), own_cpu()?));
        }
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
    let (started, cpu_at_first) = first.unwrap_or((Instant::now(), 0.0));
    Ok(LoopbackOutput {
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: own_cpu()? - cpu_at_first,
    })
}

/// Runs the loopback ceiling as a child process and reads its figures.
pub async fn measure_ceiling(
    brokers: &str,
    input: &str,
    output: &str,
    records: usize,
    batch_interval: Duration,
) -> anyhow::Result<ReferenceFigures> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .arg("loopback")
        .args(["--brokers", brokers, "--input", input, "--output", output])
        .args(["--records", &records.to_string()])
        .args([
            "--batch-interval",
            &humantime::format_duration(batch_interval).to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let out = command
        .output()
        .await
        .context("running the loopback ceiling")?;
    let figures: LoopbackOutput = json_line(&out, "the loopback ceiling")?;
    Ok(ReferenceFigures {
        name: "loopback ceiling".into(),
        records,
        seconds: figures.seconds,
        records_per_second: records as f64 / figures.seconds.max(1e-9),
        cpu_us_per_record: Some(figures.cpu_seconds * 1e6 / records.max(1) as f64),
    })
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
    let figures: PeerOutput = json_line(out, "the Python peer")?;
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

/// The figures a reference process printed as its one line of JSON, once it succeeded.
fn json_line<T: serde::de::DeserializeOwned>(
    out: &std::process::Output,
    what: &str,
) -> anyhow::Result<T> {
    if !out.status.success() {
        bail!("{what} failed: {}", out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("reading the figures {what} printed: {line:?}"))
}
