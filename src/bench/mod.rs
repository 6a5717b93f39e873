//! `streamscore bench`: end-to-end figures of the real service against a broker, next to
//! references measured in the same run.
//!
//! The service under test is this same binary running `serve` as a child process, so its
//! CPU time and peak RSS are its own (read from /proc), not the load generator's. Throughput
//! mode pre-loads N records, then reads them all with: the loopback ceiling (the service's
//! client settings, records copied with nothing in between), the service with the model,
//! the service with an identity model (what the model itself costs), and the Python peer the
//! service replaces, bytes only and with scikit-learn (when `bench/peers/setup.sh` has made
//! its environment). E2e mode (`e2e`) produces while the outputs are read back. Latency mode
//! produces at a fixed rate and measures each record from its send time (carried in its
//! `id`) to the moment its output is read.

mod child;
mod e2e;
mod observe;
mod online;
mod references;

pub use references::{run_loopback, LoopbackArgs};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use child::{batch_latency_ms, http_get, metric_sum, process_usage, spawn_service, wait_ready};
use references::ReferenceFigures;

use crate::model::forest::{NodeSpec, TreeSpec};
use crate::model::{ForestSpec, ModelBody, ModelFile};

/// The mock cluster keeps only about 5 MiB per partition; beyond this many records per
/// partition the oldest input would silently vanish before it is read.
const MOCK_RECORDS_PER_PARTITION: usize = 20_000;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker to run against; an embedded mock cluster when absent (N is then capped).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Records to pre-load (throughput mode).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,
    /// A random-forest model file.
    #[arg(long, default_value = "models/iris-forest.json")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub max_batch: u32,
    #[arg(long, default_value = "100ms", value_parser = crate::config::parse_interval)]
    pub batch_interval: Duration,
    /// Fixed-rate latency run instead of the throughput runs.
    #[arg(long)]
    pub latency: bool,
    /// Instead of pre-loading the input: a generator produces as fast as it can while the
    /// outputs are read back, for the ceiling, the service and the Python peer alike.
    #[arg(long, conflicts_with_all = ["latency", "observe", "online"])]
    pub e2e: bool,
    /// Records per second in latency mode.
    #[arg(long, default_value_t = 5000)]
    pub rate: u32,
    /// Length of the latency run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of the usual runs: the service with statistics off, on (1m window, 10s slide,
    /// a stats topic) and on with a shadow model (the same model again), against the
    /// loopback ceiling.
    #[arg(long)]
    pub observe: bool,
    /// Recommender serving with and without a feedback stream (10 % of the requests)
    /// folded in, instead of the forest runs.
    #[arg(long)]
    pub online: bool,
    /// The recommender model of `--online`.
    #[arg(long, default_value = "models/recommender.json")]
    pub online_model: PathBuf,
    /// `--online`: paired runs (without and with feedback, the order alternating from pair
    /// to pair); the median ratio is the result.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub pairs: u32,
}

#[derive(Debug, Serialize)]
struct RunFigures {
    model: String,
    records: usize,
    seconds: f64,
    records_per_second: f64,
    batch_latency_p50_ms: f64,
    batch_latency_p99_ms: f64,
    /// CPU of the service process from its first record in to its last one out.
    cpu_seconds: f64,
    cpu_us_per_record: f64,
    peak_rss_mb: f64,
    start_to_serving_ms: f64,
    start_to_ready_ms: f64,
    /// Records a shadow model compared, and skipped because it fell behind (shadow runs).
    shadow_compared: f64,
    shadow_dropped: f64,
}

#[derive(Debug, Serialize)]
struct ThroughputReport {
    broker: String,
    partitions: i32,
    preload_records_per_second: f64,
    ceiling: ReferenceFigures,
    forest: RunFigures,
    exactly_once: RunFigures,
    identity: RunFigures,
    python_copy: Option<ReferenceFigures>,
    python_sklearn: Option<ReferenceFigures>,
    forest_over_ceiling: f64,
    forest_over_python_sklearn: Option<f64>,
    forest_over_identity: f64,
    exactly_once_over_at_least_once: f64,
}

#[derive(Debug, Serialize)]
struct LatencyReport {
    broker: String,
    rate: u32,
    seconds: f64,
    sent: usize,
    received: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The same generator and reader with nothing in between.
    floor_p50_ms: f64,
    floor_p99_ms: f64,
    batch_interval: String,
    batch_latency_p50_ms: f64,
    batch_latency_p99_ms: f64,
    cpu_us_per_record: f64,
    peak_rss_mb: f64,
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mock = match &args.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1).context("starting the embedded broker")?),
    };
    let brokers = match (&args.brokers, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => unreachable!("a mock is started when no broker is given"),
    };
    let run_id = format!(
        "{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );
    let topics = BenchTopics::new(&run_id);
    for topic in topics.all() {
        ensure_topic(mock.as_ref(), &brokers, topic, args.partitions).await?;
    }
    if args.online {
        let records = capped(args.records, mock.is_some(), args.partitions);
        return online::run(args, &brokers, &topics, &run_id, mock.as_ref(), records).await;
    }
    let work = tempfile_dir()?;
    let identity_model = work.join("identity.json");
    identity_of(&args.model)?.write(&identity_model)?;

    if args.e2e {
        let records = capped(args.records, mock.is_some(), args.partitions);
        let report = e2e::run(args, &brokers, &run_id, mock.as_ref(), records).await?;
        e2e::print(&report, args.json)?;
    } else if args.latency {
        let report = latency(args, &brokers, &topics).await?;
        print_latency(&report, args.json)?;
    } else if args.observe {
        let records = capped(args.records, mock.is_some(), args.partitions);
        let report = observe::run(args, &brokers, &topics, records).await?;
        observe::print(&report, args.json)?;
    } else {
        let records = capped(args.records, mock.is_some(), args.partitions);
        let preload_rate = preload(&brokers, &topics.input, records).await?;
        let ceiling = references::measure_ceiling(
            &brokers,
            &topics.input,
            &topics.ceiling_out,
            records,
            args.batch_interval,
        )
        .await?;
        let forest = serve_until_done(
            args,
            &brokers,
            &topics,
            &topics.forest_out,
            &args.model,
            records,
            &[],
        )
        .await?;
        let exactly_once = serve_until_done(
            args,
            &brokers,
            &topics,
            &topics.exactly_once_out,
            &args.model,
            records,
            &[
                "--guarantee",
                "exactly-once",
                "--transactional-id",
                &format!("bench-{run_id}"),
            ],
        )
        .await?;
        let identity = serve_until_done(
            args,
            &brokers,
            &topics,
            &topics.identity_out,
            &identity_model,
            records,
            &[],
        )
        .await?;
        let repo = std::env::current_dir()?;
        let (python_copy, python_sklearn) = match references::python_peer_interpreter(&repo) {
            None => {
                eprintln!("no Python peer: run bench/peers/setup.sh to measure against it");
                (None, None)
            }
            Some(python) => {
                let run = |copy: bool, output: String| {
                    let (python, repo, brokers, input) = (
                        python.clone(),
                        repo.clone(),
                        brokers.clone(),
                        topics.input.clone(),
                    );
                    tokio::task::spawn_blocking(move || {
                        references::python_peer(
                            &python, &repo, &brokers, &input, &output, records, copy,
                        )
                    })
                };
                let copy = run(true, topics.peer_copy_out.clone()).await??;
                let sklearn = run(false, topics.peer_sklearn_out.clone()).await??;
                (Some(copy), Some(sklearn))
            }
        };
        let report = ThroughputReport {
            broker: brokers.clone(),
            partitions: args.partitions,
            preload_records_per_second: preload_rate,
            forest_over_ceiling: forest.records_per_second / ceiling.records_per_second,
            forest_over_python_sklearn: python_sklearn
                .as_ref()
                .map(|p| forest.records_per_second / p.records_per_second),
            forest_over_identity: forest.records_per_second / identity.records_per_second,
            exactly_once_over_at_least_once: exactly_once.records_per_second
                / forest.records_per_second,
            ceiling,
            forest,
            exactly_once,
            identity,
            python_copy,
            python_sklearn,
        };
        print_throughput(&report, args.json)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `records`, capped at what the embedded mock keeps.
fn capped(records: usize, mock: bool, partitions: i32) -> usize {
    let cap = MOCK_RECORDS_PER_PARTITION * partitions as usize;
    if mock && records > cap {
        eprintln!("embedded mock broker: capping N at {cap} (it keeps ~5 MiB per partition); pass --brokers for larger runs");
        return cap;
    }
    records
}

struct BenchTopics {
    stats_off_out: String,
    stats_on_out: String,
    shadow_out: String,
    stats: String,
    input: String,
    ceiling_out: String,
    forest_out: String,
    exactly_once_out: String,
    identity_out: String,
    peer_copy_out: String,
    peer_sklearn_out: String,
    dead_letters: String,
}

impl BenchTopics {
    fn new(run_id: &str) -> Self {
        Self {
            stats_off_out: format!("bench-stats-off-{run_id}"),
            stats_on_out: format!("bench-stats-on-{run_id}"),
            shadow_out: format!("bench-shadow-{run_id}"),
            stats: format!("bench-stats-{run_id}"),
            input: format!("bench-in-{run_id}"),
            ceiling_out: format!("bench-ceiling-{run_id}"),
            forest_out: format!("bench-forest-{run_id}"),
            exactly_once_out: format!("bench-eos-{run_id}"),
            identity_out: format!("bench-identity-{run_id}"),
            peer_copy_out: format!("bench-peer-copy-{run_id}"),
            peer_sklearn_out: format!("bench-peer-sklearn-{run_id}"),
            dead_letters: format!("bench-dlq-{run_id}"),
        }
    }

    fn all(&self) -> [&str; 12] {
        [
            &self.stats_off_out,
            &self.stats_on_out,
            &self.shadow_out,
            &self.stats,
            &self.input,
            &self.ceiling_out,
            &self.forest_out,
            &self.exactly_once_out,
            &self.identity_out,
            &self.peer_copy_out,
            &self.peer_sklearn_out,
            &self.dead_letters,
        ]
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("streamscore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Creates `name` on the embedded mock (which has no CreateTopics) or through the admin API.
async fn ensure_topic(
    mock: Option<&MockCluster<'static, DefaultProducerContext>>,
    brokers: &str,
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    match mock {
        Some(m) => Ok(m.create_topic(name, partitions, 1)?),
        None => create_topic(brokers, name, partitions).await,
    }
}

async fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        r.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

/// The same features and classes as `model`, scored by one leaf: what the pipeline costs
/// without the model.
fn identity_of(model: &Path) -> anyhow::Result<ModelFile> {
    let file = ModelFile::read(model)?;
    let classes = file.meta.classes.len();
    if !matches!(file.body, ModelBody::RandomForest(_)) || classes == 0 {
        bail!("the benchmark needs a random-forest model");
    }
    let leaf = NodeSpec::Leaf {
        distribution: vec![1.0 / classes as f32; classes],
    };
    let body = ModelBody::RandomForest(ForestSpec {
        trees: vec![TreeSpec { nodes: vec![leaf] }],
    });
    Ok(ModelFile::new(file.meta, body))
}

fn producer(brokers: &str, linger_ms: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn iris_value(id: u64, i: usize) -> String {
    // A few distinct rows, so the forest takes different paths.
    const ROWS: [[f64; 4]; 3] = [
        [5.1, 3.5, 1.4, 0.2],
        [6.4, 3.2, 4.5, 1.5],
        [6.3, 3.3, 6.0, 2.5],
    ];
    let r = ROWS[i % ROWS.len()];
    format!(
        r#"{{"id":{id},"sepal_length":{},"sepal_width":{},"petal_length":{},"petal_width":{}}}"#,
        r[0], r[1], r[2], r[3]
    )
}

/// Produces `n` records and waits for all acknowledgements; returns records per second.
async fn preload(brokers: &str, topic: &str, n: usize) -> anyhow::Result<f64> {
    let producer = producer(brokers, "20")?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(n.min(1 << 20));
    for i in 0..n {
        let key = format!("k{i}");
        let value = iris_value(i as u64, i);
        let mut record = FutureRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(d) => break deliveries.push(d),
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for d in deliveries {
        d.await?
            .map_err(|(e, _)| e)
            .context("pre-loading the input")?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// What one service run measured, from its first record in to its last commit.
struct ServiceRun {
    /// The last `/metrics` text, read once every record was done.
    metrics: String,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_mb: f64,
    start_up: child::StartUp,
}

/// Starts the service as a child process and watches it until `records` records are done,
/// handing every `/metrics` read to `tick` (to pace a side load by the service's progress).
#[allow(clippy::too_many_arguments)]
async fn run_service(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
    output: &str,
    model: &Path,
    records: usize,
    extra_args: &[&str],
    mut tick: impl FnMut(&str),
) -> anyhow::Result<ServiceRun> {
    let mut child = spawn_service(
        args,
        brokers,
        &topics.input,
        output,
        &topics.dead_letters,
        model,
        extra_args,
    )?;
    let start_up = wait_ready(&mut child, Duration::from_secs(60)).await?;
    // Polled often until the first record is in (nothing flows yet, so it costs the service
    // nothing that counts), then rarely: rendering metrics costs the service CPU too. The
    // end of the run is the service's own last-commit timestamp, not this poll's.
    let mut first_in: Option<(SystemTime, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let metrics = loop {
        let Some((_, metrics)) = http_get(child.http, "/metrics").await else {
            bail!("the service stopped answering");
        };
        if first_in.is_none() && metric_sum(&metrics, "streamscore_records_in_total") > 0.0 {
            first_in = Some((SystemTime::now(), process_usage(child.child.id())?.0));
        }
        tick(&metrics);
        let done = metric_sum(&metrics, "streamscore_records_out_total")
            + metric_sum(&metrics, "streamscore_records_dead_lettered_total");
        if done >= records as f64 {
            break metrics;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {records} records done after an hour");
        }
        let pause = if first_in.is_some() { 100 } else { 2 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    };
    let (cpu_total, peak_rss_mb) = process_usage(child.child.id())?;
    let (first_seen, cpu_at_first) = first_in.unwrap_or((SystemTime::now(), 0.0));
    let last_commit = UNIX_EPOCH
        + Duration::from_secs_f64(metric_sum(
            &metrics,
            "streamscore_last_commit_timestamp_seconds",
        ));
    let seconds = last_commit
        .duration_since(first_seen)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok(ServiceRun {
        metrics,
        seconds,
        cpu_seconds: cpu_total - cpu_at_first,
        peak_rss_mb,
        start_up,
    })
}

async fn serve_until_done(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
    output: &str,
    model: &Path,
    records: usize,
    extra_args: &[&str],
) -> anyhow::Result<RunFigures> {
    let run = run_service(
        args,
        brokers,
        topics,
        output,
        model,
        records,
        extra_args,
        |_| {},
    )
    .await?;
    let metrics = &run.metrics;
    Ok(RunFigures {
        model: model.display().to_string(),
        records,
        seconds: run.seconds,
        records_per_second: records as f64 / run.seconds.max(1e-9),
        batch_latency_p50_ms: batch_latency_ms(metrics, 0.5),
        batch_latency_p99_ms: batch_latency_ms(metrics, 0.99),
        cpu_seconds: run.cpu_seconds,
        cpu_us_per_record: run.cpu_seconds * 1e6 / records.max(1) as f64,
        peak_rss_mb: run.peak_rss_mb,
        start_to_serving_ms: run.start_up.serving.as_secs_f64() * 1e3,
        start_to_ready_ms: run.start_up.ready.as_secs_f64() * 1e3,
        shadow_compared: metric_sum(
            metrics,
            "streamscore_shadow_records_total{result=\"agreed\"}",
        ) + metric_sum(
            metrics,
            "streamscore_shadow_records_total{result=\"disagreed\"}",
        ),
        shadow_dropped: metric_sum(metrics, "streamscore_shadow_dropped_records_total"),
    })
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Per-record latencies at a fixed rate: records produced to `input` with their send time in
/// `id`, read back from `read_from`.
struct LatencySample {
    sent: usize,
    received: usize,
    /// After the warm-up, sorted.
    latencies_us: Vec<u64>,
}

const WARM_UP: Duration = Duration::from_secs(1);

impl LatencySample {
    fn quantile_ms(&self, q: f64) -> f64 {
        self.latencies_us
            .get(((self.latencies_us.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |us| *us as f64 / 1e3)
    }
}

async fn sample_latency(
    args: &BenchArgs,
    brokers: &str,
    input: &str,
    read_from: &str,
) -> anyhow::Result<LatencySample> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-reader-{read_from}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(read_from, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let producer = producer(brokers, "5")?;
    let total = (f64::from(args.rate) * args.duration.as_secs_f64()) as usize;
    let input = input.to_owned();
    let rate = args.rate;
    let sender = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while sent < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(total);
            while sent < due {
                let key = format!("k{sent}");
                let value = iris_value(now_micros(), sent);
                // A full queue here means the broker is far behind; the sample is lost
                // to the figures, which the received count shows.
                let _ = producer.send_result(FutureRecord::to(&input).key(&key).payload(&value));
                sent += 1;
            }
        }
        let _ = producer.flush(Duration::from_secs(10));
        sent
    });

    let mut latencies_us: Vec<u64> = Vec::with_capacity(total);
    let mut received = 0usize;
    // The first second holds connection set-up and the first fetches of every client: a
    // start-up cost, not the steady latency the figures are about.
    let warm_up_until = now_micros() + WARM_UP.as_micros() as u64;
    let deadline = Instant::now() + args.duration + Duration::from_secs(30);
    while received < total {
        let message = tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => break,
            m = consumer.recv() => m,
        };
        let Ok(message) = message else { continue };
        let sent_at = message
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|v| v["id"].as_u64());
        if let Some(sent_at) = sent_at {
            received += 1;
            if sent_at >= warm_up_until {
                latencies_us.push(now_micros().saturating_sub(sent_at));
            }
        }
    }
    let sent = sender.await?;
    latencies_us.sort_unstable();
    Ok(LatencySample {
        sent,
        received,
        latencies_us,
    })
}

async fn latency(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
) -> anyhow::Result<LatencyReport> {
    // The harness floor first: the same generator and reader on one topic, nothing between.
    let floor = sample_latency(args, brokers, &topics.ceiling_out, &topics.ceiling_out).await?;
    let mut child = spawn_service(
        args,
        brokers,
        &topics.input,
        &topics.forest_out,
        &topics.dead_letters,
        &args.model,
        &[],
    )?;
    wait_ready(&mut child, Duration::from_secs(60)).await?;
    let (cpu_before, _) = process_usage(child.child.id())?;
    let sample = sample_latency(args, brokers, &topics.input, &topics.forest_out).await?;
    let (cpu_after, peak_rss_mb) = process_usage(child.child.id())?;
    let metrics = http_get(child.http, "/metrics")
        .await
        .map(|(_, m)| m)
        .unwrap_or_default();
    Ok(LatencyReport {
        broker: brokers.to_owned(),
        rate: args.rate,
        seconds: args.duration.as_secs_f64(),
        sent: sample.sent,
        received: sample.received,
        p50_ms: sample.quantile_ms(0.5),
        p99_ms: sample.quantile_ms(0.99),
        max_ms: sample.quantile_ms(1.0),
        floor_p50_ms: floor.quantile_ms(0.5),
        floor_p99_ms: floor.quantile_ms(0.99),
        batch_interval: humantime::format_duration(args.batch_interval).to_string(),
        batch_latency_p50_ms: batch_latency_ms(&metrics, 0.5),
        batch_latency_p99_ms: batch_latency_ms(&metrics, 0.99),
        cpu_us_per_record: (cpu_after - cpu_before) * 1e6 / sample.sent.max(1) as f64,
        peak_rss_mb,
    })
}

fn print_throughput(r: &ThroughputReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "broker {}  partitions {}  pre-load {:.0} records/s",
        r.broker, r.partitions, r.preload_records_per_second
    );
    println!(
        "{:<46} {:>9} {:>8} {:>11} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "run",
        "records",
        "seconds",
        "records/s",
        "cpu µs/r",
        "batch p50",
        "batch p99",
        "peak MB",
        "ready ms"
    );
    let reference = |f: &ReferenceFigures| {
        println!(
            "{:<46} {:>9} {:>8.2} {:>11.0} {:>9} {:>9} {:>9} {:>8} {:>8}",
            f.name,
            f.records,
            f.seconds,
            f.records_per_second,
            f.cpu_us_per_record
                .map_or("-".into(), |c| format!("{c:.2}")),
            "-",
            "-",
            "-",
            "-"
        )
    };
    reference(&r.ceiling);
    for (name, f) in [
        ("streamscore, forest", &r.forest),
        ("streamscore, forest, exactly-once", &r.exactly_once),
        ("streamscore, identity model", &r.identity),
    ] {
        println!(
            "{:<46} {:>9} {:>8.2} {:>11.0} {:>9.2} {:>7.1}ms {:>7.1}ms {:>8.1} {:>4.0}/{:<5.0}",
            name,
            f.records,
            f.seconds,
            f.records_per_second,
            f.cpu_us_per_record,
            f.batch_latency_p50_ms,
            f.batch_latency_p99_ms,
            f.peak_rss_mb,
            f.start_to_serving_ms,
            f.start_to_ready_ms
        );
    }
    for f in [&r.python_copy, &r.python_sklearn].into_iter().flatten() {
        reference(f);
    }
    println!("forest / loopback ceiling: {:.3}", r.forest_over_ceiling);
    if let Some(ceiling_cpu) = r.ceiling.cpu_us_per_record {
        println!(
            "CPU per record, forest / loopback ceiling (librdkafka alone, our settings): {:.2}",
            r.forest.cpu_us_per_record / ceiling_cpu
        );
    }
    if let Some(ratio) = r.forest_over_python_sklearn {
        println!("forest / python + scikit-learn: {ratio:.2}");
    }
    println!("forest / identity model: {:.3}", r.forest_over_identity);
    println!(
        "exactly-once / at-least-once: {:.3} (CPU per record {:.2}x)",
        r.exactly_once_over_at_least_once,
        r.exactly_once.cpu_us_per_record / r.forest.cpu_us_per_record
    );
    Ok(())
}

fn print_latency(r: &LatencyReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "broker {}  {} records/s for {:.0} s, batch interval {}",
        r.broker, r.rate, r.seconds, r.batch_interval
    );
    println!(
        "harness floor (generator reads its own topic): p50 {:.1} ms  p99 {:.1} ms",
        r.floor_p50_ms, r.floor_p99_ms
    );
    println!(
        "through streamscore: sent {}  received {}  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        r.sent, r.received, r.p50_ms, r.p99_ms, r.max_ms
    );
    println!(
        "service: batch latency p50 {:.1} ms  p99 {:.1} ms, {:.2} cpu µs/record, peak RSS {:.1} MB",
        r.batch_latency_p50_ms, r.batch_latency_p99_ms, r.cpu_us_per_record, r.peak_rss_mb
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::child::{histogram_quantile, metric_sum};
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let text = "h_bucket{le=\"0.01\"} 0\nh_bucket{le=\"0.02\"} 50\nh_bucket{le=\"0.04\"} 100\nh_bucket{le=\"+Inf\"} 100\n";
        assert!((histogram_quantile(text, "h", 0.5) - 0.02).abs() < 1e-12);
        assert!((histogram_quantile(text, "h", 0.75) - 0.03).abs() < 1e-12);
        assert_eq!(histogram_quantile("", "h", 0.5), 0.0);
    }

    #[test]
    fn metric_sums_add_labelled_series_only_of_that_name() {
        let text = "# HELP x\nx_total 3\nx_total{reason=\"a\"} 2\nx_totally 100\n";
        assert_eq!(metric_sum(text, "x_total"), 5.0);
    }

    #[test]
    fn the_identity_model_is_a_valid_one_leaf_forest() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris-forest.json");
        let identity = identity_of(&path).unwrap();
        let loaded = crate::model::LoadedModel::from_file(identity).unwrap();
        let crate::model::Model::Forest(forest) = &loaded.model else {
            panic!("not a forest")
        };
        assert_eq!(forest.n_trees(), 1);
        let probs = forest.predict_proba(ndarray::array![[5.1, 3.5, 1.4, 0.2]].view());
        assert!(probs.iter().all(|p| (p - 1.0 / 3.0).abs() < 1e-6));
    }
}
