//! The e2e mode: a generator produces N records as fast as it can while a reader reads the
//! outputs back, so the figure is what a live stream sees, broker round trips and all. Every
//! scorer is measured the same way, on fresh topics of the same broker, in one run:
//! - the **loopback ceiling**: the generator and the reader on one topic, nothing between;
//! - **streamscore** (`serve` as a child process, group joined before the first record);
//! - the **Python peer**, with scikit-learn and bytes only, also joined before the load.
//!
//! Throughput is N over the time from the first record sent to the N-th output read.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::child::{process_usage, spawn_service, wait_ready};
use super::references::{python_peer_command, python_peer_figures, python_peer_interpreter};
use super::{ensure_topic, iris_value, BenchArgs};

#[derive(Debug, Serialize)]
pub struct E2eFigures {
    name: String,
    records: usize,
    seconds: f64,
    records_per_second: f64,
    /// CPU of the scorer's own process over the run; absent for the ceiling, which has no
    /// process of its own.
    cpu_us_per_record: Option<f64>,
    /// CPU of this process over the run: the generator, the reader and, on the embedded
    /// mock, the broker. With the scorer's own, it is what the two cores were asked for.
    harness_cpu_us_per_record: f64,
    peak_rss_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct E2eReport {
    broker: String,
    partitions: i32,
    records: usize,
    ceiling: E2eFigures,
    streamscore: E2eFigures,
    python_copy: Option<E2eFigures>,
    python_sklearn: Option<E2eFigures>,
    streamscore_over_ceiling: f64,
    streamscore_over_python_sklearn: Option<f64>,
}

/// Fresh topics per scorer: a scorer must find exactly its own N records.
struct E2eTopics {
    loopback: String,
    service_in: String,
    service_out: String,
    peer_copy_in: String,
    peer_copy_out: String,
    peer_sklearn_in: String,
    peer_sklearn_out: String,
    dead_letters: String,
}

impl E2eTopics {
    fn new(run_id: &str) -> Self {
        let name = |what: &str| format!("bench-e2e-{what}-{run_id}");
        Self {
            loopback: name("loopback"),
            service_in: name("service-in"),
            service_out: name("service-out"),
            peer_copy_in: name("peer-copy-in"),
            peer_copy_out: name("peer-copy-out"),
            peer_sklearn_in: name("peer-sklearn-in"),
            peer_sklearn_out: name("peer-sklearn-out"),
            dead_letters: name("dlq"),
        }
    }

    fn all(&self) -> [&str; 8] {
        [
            &self.loopback,
            &self.service_in,
            &self.service_out,
            &self.peer_copy_in,
            &self.peer_copy_out,
            &self.peer_sklearn_in,
            &self.peer_sklearn_out,
            &self.dead_letters,
        ]
    }
}

pub async fn run(
    args: &BenchArgs,
    brokers: &str,
    run_id: &str,
    mock: Option<&MockCluster<'static, DefaultProducerContext>>,
    records: usize,
) -> anyhow::Result<E2eReport> {
    let topics = E2eTopics::new(run_id);
    for topic in topics.all() {
        ensure_topic(mock, brokers, topic, args.partitions).await?;
    }
    let partitions = args.partitions;

    let ceiling_run = drive(
        brokers,
        &topics.loopback,
        &topics.loopback,
        partitions,
        records,
    )
    .await
    .context("the loopback ceiling")?;
    let ceiling = figures(
        "loopback ceiling (generator reads its own topic)",
        records,
        &ceiling_run,
        None,
        None,
    );

    let mut child = spawn_service(
        args,
        brokers,
        &topics.service_in,
        &topics.service_out,
        &topics.dead_letters,
        &args.model,
        &[],
    )?;
    wait_ready(&mut child, Duration::from_secs(60)).await?;
    let (cpu_before, _) = process_usage(child.child.id())?;
    let service_run = drive(
        brokers,
        &topics.service_in,
        &topics.service_out,
        partitions,
        records,
    )
    .await
    .context("streamscore")?;
    let (cpu_after, peak_rss_mb) = process_usage(child.child.id())?;
    drop(child);
    let streamscore = figures(
        "streamscore, forest (defaults)",
        records,
        &service_run,
        Some((cpu_after - cpu_before) * 1e6 / records.max(1) as f64),
        Some(peak_rss_mb),
    );

    let repo = std::env::current_dir()?;
    let (python_copy, python_sklearn) = match python_peer_interpreter(&repo) {
        None => {
            eprintln!("no Python peer: run bench/peers/setup.sh to measure against it");
            (None, None)
        }
        Some(python) => {
            let mut figures = Vec::new();
            for (copy, input, output) in [
                (true, &topics.peer_copy_in, &topics.peer_copy_out),
                (false, &topics.peer_sklearn_in, &topics.peer_sklearn_out),
            ] {
                let command =
                    python_peer_command(&python, &repo, brokers, input, output, records, copy);
                figures.push(
                    drive_peer(command, brokers, input, output, partitions, records, copy).await?,
                );
            }
            let sklearn = figures.pop();
            let copy = figures.pop();
            (copy, sklearn)
        }
    };
    Ok(E2eReport {
        broker: brokers.to_owned(),
        partitions,
        records,
        streamscore_over_ceiling: streamscore.records_per_second / ceiling.records_per_second,
        streamscore_over_python_sklearn: python_sklearn
            .as_ref()
            .map(|p| streamscore.records_per_second / p.records_per_second),
        ceiling,
        streamscore,
        python_copy,
        python_sklearn,
    })
}

fn figures(
    name: &str,
    records: usize,
    run: &Drive,
    cpu_us_per_record: Option<f64>,
    peak_rss_mb: Option<f64>,
) -> E2eFigures {
    E2eFigures {
        name: name.to_owned(),
        records,
        seconds: run.seconds,
        records_per_second: records as f64 / run.seconds.max(1e-9),
        cpu_us_per_record,
        harness_cpu_us_per_record: run.harness_cpu_seconds * 1e6 / records.max(1) as f64,
        peak_rss_mb,
    }
}

/// Starts the peer, waits until its group has assigned it partitions (so the load does not
/// pile up behind a join, which would turn the run into a pre-loaded one), then drives it.
async fn drive_peer(
    mut command: std::process::Command,
    brokers: &str,
    input: &str,
    output: &str,
    partitions: i32,
    records: usize,
    copy: bool,
) -> anyhow::Result<E2eFigures> {
    let ready_file = std::env::temp_dir().join(format!("streamscore-e2e-{output}.ready"));
    let _ = std::fs::remove_file(&ready_file);
    let child = command
        .arg("--ready-file")
        .arg(&ready_file)
        .spawn()
        .context("starting the Python peer")?;
    let joined = wait_for_file(&ready_file, Duration::from_secs(120)).await;
    let _ = std::fs::remove_file(&ready_file);
    if let Err(e) = joined {
        let _ = kill(child);
        return Err(e);
    }
    let run = match drive(brokers, input, output, partitions, records).await {
        Ok(run) => run,
        Err(e) => {
            let _ = kill(child);
            return Err(e);
        }
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let peer = python_peer_figures(&out, copy)?;
    // The peer's own throughput counts from its first consumed batch; the e2e figure is the
    // same clock as every other row here, and its CPU includes its start-up (training).
    Ok(figures(
        &peer.name,
        records,
        &run,
        peer.cpu_us_per_record,
        None,
    ))
}

fn kill(mut child: std::process::Child) -> std::io::Result<()> {
    child.kill()?;
    child.wait().map(|_| ())
}

async fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("the Python peer was not assigned partitions within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Produces `records` records to `input` as fast as the producer takes them while reading
/// `output` from its beginning, timed from the first send to the `records`-th read.
async fn drive(
    brokers: &str,
    input: &str,
    output: &str,
    partitions: i32,
    records: usize,
) -> anyhow::Result<Drive> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-e2e-reader-{output}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(output, p, Offset::Beginning)?;
    }
    reader.assign(&assignment)?;
    let generator: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;

    warm_up_reader(&reader, &generator, output, partitions)?;

    let (harness_cpu_before, _) = process_usage(std::process::id())?;
    let started = Instant::now();
    let input = input.to_owned();
    let sender = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for i in 0..records {
            let key = format!("k{i}");
            let value = iris_value(i as u64, i);
            let mut record = BaseRecord::<str, str>::to(&input).key(&key).payload(&value);
            loop {
                match generator.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        generator.flush(Duration::from_secs(60))?;
        Ok(())
    });
    // Generous for any broker this runs against, yet bounded: a scorer that stalls fails the
    // run instead of hanging it.
    let deadline = started + Duration::from_secs(120) + Duration::from_millis(records as u64);
    let received = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut received = 0usize;
        while received < records && Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => received += 1,
                Some(Err(e)) => eprintln!("e2e reader: {e}"),
                None => {}
            }
        }
        Ok(received)
    });
    let received = received.await??;
    let seconds = started.elapsed().as_secs_f64();
    let (harness_cpu_after, _) = process_usage(std::process::id())?;
    sender.await??;
    if received < records {
        bail!("only {received} of {records} outputs were read back in time");
    }
    Ok(Drive {
        seconds,
        harness_cpu_seconds: harness_cpu_after - harness_cpu_before,
    })
}

struct Drive {
    seconds: f64,
    harness_cpu_seconds: f64,
}

/// A fresh consumer takes about half a second on the mock broker to look up its
/// partitions and start fetching. Counted inside the run, that start-up was most of every
/// scorer's time at 20,000 records per partition (the ceiling and all scorers read their
/// first output ~0.48 s after the first send, then all 20,000 within 30 ms), so the run
/// measured the reader, not the scorers. One marker per partition, written straight to
/// the output topic (no scorer reads it) and read back before the clock starts, leaves
/// the reader fetching every partition.
fn warm_up_reader(
    reader: &BaseConsumer,
    generator: &ThreadedProducer<DefaultProducerContext>,
    output: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    for partition in 0..partitions {
        let marker = BaseRecord::<str, str>::to(output)
            .partition(partition)
            .key("bench-e2e-warm-up")
            .payload("{}");
        generator.send(marker).map_err(|(e, _)| e)?;
    }
    generator.flush(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut markers = 0;
    while markers < partitions {
        if Instant::now() > deadline {
            bail!("the e2e reader read {markers} of {partitions} warm-up markers in 30 s");
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => markers += 1,
            Some(Err(e)) => eprintln!("e2e reader, warming up: {e}"),
            None => {}
        }
    }
    Ok(())
}

pub fn print(r: &E2eReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "e2e: broker {}  partitions {}  {} records produced while the outputs are read back",
        r.broker, r.partitions, r.records
    );
    println!(
        "{:<52} {:>8} {:>11} {:>9} {:>10} {:>8}",
        "run", "seconds", "records/s", "cpu µs/r", "harness µs", "peak MB"
    );
    let rows = [Some(&r.ceiling), Some(&r.streamscore)]
        .into_iter()
        .chain([r.python_copy.as_ref(), r.python_sklearn.as_ref()]);
    for f in rows.flatten() {
        println!(
            "{:<52} {:>8.2} {:>11.0} {:>9} {:>10.2} {:>8}",
            f.name,
            f.seconds,
            f.records_per_second,
            f.cpu_us_per_record
                .map_or("-".into(), |c| format!("{c:.2}")),
            f.harness_cpu_us_per_record,
            f.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
        );
    }
    println!(
        "streamscore / loopback ceiling: {:.3}",
        r.streamscore_over_ceiling
    );
    if let Some(ratio) = r.streamscore_over_python_sklearn {
        println!("streamscore / python + scikit-learn: {ratio:.2}");
    }
    Ok(())
}
