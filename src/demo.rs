//! `streamscore demo`: the whole service against an embedded broker.
//!
//! librdkafka's mock cluster speaks the Kafka protocol on a loopback port inside this
//! process, so the demo needs nothing installed. It feeds sample records (plus a few broken
//! ones), runs the real service on them, and prints every prediction and dead letter as it
//! arrives on the output topics. A console consumer can attach to the printed address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::model::{LoadedModel, Model};
use crate::pipeline::sink::HEADER_REASON;
use crate::pipeline::PipelineConfig;
use crate::record::DEFAULT_MAX_RECORD_BYTES;
use crate::service::{self, ServiceConfig};
use crate::train::iris::read_csv;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Model the demo service loads; its kind decides the sample traffic.
    #[arg(long, default_value = "models/iris-forest.json")]
    pub model: PathBuf,
    /// Labelled iris rows to send (for a forest model).
    #[arg(long, default_value = "training/iris.csv")]
    pub data: PathBuf,
    /// Keep the broker and service running after the samples are scored.
    #[arg(long)]
    pub forever: bool,
    /// Partitions of each demo topic.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub partitions: i32,
    /// HTTP side port of the demo service (the status page); when it is taken, the demo
    /// takes a free port instead and says so.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Statistics window of the demo (short, so the status page fills quickly).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub stats_window: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_slide: Duration,
    /// A candidate model to run as the demo's shadow.
    #[arg(long)]
    pub shadow_model: Option<PathBuf>,
    /// With --forever: sample records per second that keep flowing after the first pass.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// With --forever: add this many cm to every petal length of the live traffic, to see
    /// the drift figures move (iris models).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub shift: f64,
    /// How long to wait for all samples to come back before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

const INPUT_TOPIC: &str = "features";
const OUTPUT_TOPIC: &str = "predictions";
const DEAD_LETTER_TOPIC: &str = "dead-letters";

/// A sample record: key, value, and the label we expect (for iris rows).
struct Sample {
    key: String,
    value: Vec<u8>,
    expected: Option<String>,
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let model = LoadedModel::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let samples = match &model.model {
        Model::Forest(_) | Model::Pmml(_) | Model::Ensemble(_) => iris_samples(args, &model)?,
        Model::Recommender(_) => user_event_samples(),
    };

    let (http_addr, taken) = free_side_port(args.http_addr);
    let (window, basis) = crate::stats::StatsConfig::from_flags(
        args.stats_window,
        args.stats_slide,
        crate::stats::StatsTime::Processing,
        Duration::ZERO,
    )
    .map_err(|e| anyhow::anyhow!(e))?;

    let cluster = MockCluster::new(1).context("starting the embedded broker")?;
    for topic in [INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC] {
        cluster.create_topic(topic, args.partitions, 1)?;
    }
    let brokers = cluster.bootstrap_servers();
    // The page's address comes first: it is what a new user opens.
    println!("status page: http://{http_addr}/");
    if let Some(note) = taken {
        println!("  ({note})");
    }
    println!("embedded broker: {brokers}");
    println!("read the predictions with: kcat -b {brokers} -t {OUTPUT_TOPIC} -C -e");

    let service = service::start(ServiceConfig {
        pipeline: PipelineConfig {
            brokers: brokers.clone(),
            properties: Vec::new(),
            consumer_properties: vec![
                // The mock answers an empty fetch only after fetch.wait.max.ms; keep the demo
                // snappy.
                ("fetch.wait.max.ms".into(), "20".into()),
                ("session.timeout.ms".into(), "6000".into()),
            ],
            input_topic: INPUT_TOPIC.into(),
            output_topic: OUTPUT_TOPIC.into(),
            dead_letter_topic: DEAD_LETTER_TOPIC.into(),
            group: "streamscore-demo".into(),
            batch_interval: Duration::from_millis(100),
            max_batch: 1000,
            max_batch_bytes: crate::pipeline::DEFAULT_MAX_BATCH_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            guarantee: Default::default(),
            format: Default::default(),
        },
        model: args.model.clone(),
        allow_kind_change: true,
        http_addr,
        admin_token: std::env::var(service::ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty()),
        observe: crate::config::ObserveOptions {
            stats: crate::stats::StatsConfig {
                window,
                basis,
                instance: "streamscore-demo".into(),
                ..Default::default()
            },
            shadow_model: args.shadow_model.clone(),
            shadow_topic: None,
        },
        feedback: None,
    })
    .await?;
    println!(
        "side port: http://{}  (try /model, /metrics, /readyz, /status)",
        service.http_addr
    );

    let interrupted = CancellationToken::new();
    let on_ctrl_c = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });

    let watcher = output_consumer(&brokers, args.partitions)?;
    produce(&brokers, &samples).await?;
    println!(
        "sent {} records to {INPUT_TOPIC}; waiting for results…",
        samples.len()
    );

    let expected: HashMap<&str, &str> = samples
        .iter()
        .filter_map(|s| Some((s.key.as_str(), s.expected.as_deref()?)))
        .collect();
    let tally = watch(&watcher, samples.len(), &expected, args, &interrupted).await;
    if args.forever && !interrupted.is_cancelled() {
        if args.rate > 0 {
            tokio::spawn(live_traffic(
                brokers.clone(),
                live_values(args, &model, &samples),
                args.rate,
                interrupted.clone(),
            ));
            println!("sending {} sample records per second", args.rate);
        }
        println!(
            "serving until Ctrl-C (broker {brokers}, side port http://{})",
            service.http_addr
        );
        interrupted.cancelled().await;
    }
    service.stop().await?;
    let tally = tally?;
    println!(
        "done: {} predictions, {} dead letters{}",
        tally.predictions,
        tally.dead_letters,
        match tally.labelled {
            0 => String::new(),
            n => format!(
                ", accuracy {:.3} on {n} labelled rows",
                tally.correct as f64 / n as f64
            ),
        }
    );
    if tally.predictions + tally.dead_letters < samples.len() && !interrupted.is_cancelled() {
        bail!(
            "only {} of {} records came back",
            tally.predictions + tally.dead_letters,
            samples.len()
        );
    }
    Ok(())
}

/// `wanted`, or a free port on the same address when something else holds it (and a note
/// saying so): the demo is the first thing a new user runs, often beside another program
/// on 8080.
fn free_side_port(wanted: SocketAddr) -> (SocketAddr, Option<String>) {
    match std::net::TcpListener::bind(wanted) {
        // Free: released here and bound again by the service a moment later.
        Ok(_) => (wanted, None),
        Err(e) => {
            let mut fallback = wanted;
            fallback.set_port(0);
            match std::net::TcpListener::bind(fallback).and_then(|l| l.local_addr()) {
                Ok(free) => (free, Some(format!("{wanted} is taken: {e}; using {free}"))),
                // Let the service report the original error.
                Err(_) => (wanted, None),
            }
        }
    }
}

/// Endless sample traffic for `--forever`, so that the status page has a live stream to
/// show: `values` in turn at `rate` per second.
async fn live_traffic(
    brokers: String,
    values: Vec<Vec<u8>>,
    rate: u32,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate as usize).div_ceil(10).max(1);
    let mut next = 0usize;
    while !stop.is_cancelled() {
        tick.tick().await;
        for _ in 0..per_tick {
            let value = &values[next % values.len()];
            let key = format!("live-{next}");
            // A full queue means the broker is behind; the next tick tries again.
            let _ = producer.send_result(FutureRecord::to(INPUT_TOPIC).key(&key).payload(value));
            next += 1;
        }
    }
    Ok(())
}

fn live_values(args: &DemoArgs, model: &LoadedModel, samples: &[Sample]) -> Vec<Vec<u8>> {
    let shifted = match &model.model {
        Model::Forest(_) | Model::Pmml(_) if args.shift != 0.0 => {
            read_csv(&args.data, "species").ok().map(|data| {
                data.records
                    .rows()
                    .into_iter()
                    .map(|row| {
                        let mut object = serde_json::Map::new();
                        for (name, value) in data.features.iter().zip(row) {
                            let v = if name.starts_with("petal_length") {
                                value + args.shift
                            } else {
                                *value
                            };
                            object.insert(name.clone(), serde_json::json!(v));
                        }
                        serde_json::Value::Object(object).to_string().into_bytes()
                    })
                    .collect::<Vec<_>>()
            })
        }
        _ => None,
    };
    shifted.unwrap_or_else(|| samples.iter().map(|s| s.value.clone()).collect())
}

fn iris_samples(args: &DemoArgs, model: &LoadedModel) -> anyhow::Result<Vec<Sample>> {
    let data = read_csv(&args.data, "species")?;
    if data.features != model.meta.features {
        bail!(
            "{} has columns {:?} but the model reads {:?}",
            args.data.display(),
            data.features,
            model.meta.features
        );
    }
    let mut samples: Vec<Sample> = data
        .records
        .rows()
        .into_iter()
        .zip(&data.targets)
        .enumerate()
        .map(|(i, (row, target))| {
            let mut object = serde_json::Map::new();
            object.insert("id".into(), serde_json::json!(i));
            for (name, value) in data.features.iter().zip(row) {
                object.insert(name.clone(), serde_json::json!(value));
            }
            Sample {
                key: format!("iris-{i}"),
                value: serde_json::Value::Object(object).to_string().into_bytes(),
                expected: data.classes.get(*target).cloned(),
            }
        })
        .collect();
    let broken: [&[u8]; 5] = [
        b"this is not json",
        br#"{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}"#,
        br#"{"sepal_length": "wide", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}"#,
        b"[5.1, 3.5, 1.4, 0.2]",
        b"\xff\xfe not utf-8",
    ];
    samples.extend(broken.iter().enumerate().map(|(i, value)| Sample {
        key: format!("broken-{i}"),
        value: value.to_vec(),
        expected: None,
    }));
    Ok(samples)
}

fn user_event_samples() -> Vec<Sample> {
    let mut samples: Vec<Sample> = [196, 186, 22, 244, 166, 298, 115, 253, 305, 6, 999_999]
        .iter()
        .map(|uid| Sample {
            key: format!("user-{uid}"),
            value: serde_json::json!({ "uid": uid, "n": 5 })
                .to_string()
                .into_bytes(),
            expected: None,
        })
        .collect();
    for (i, value) in [&br#"{"user": 196}"#[..], br#"{"uid": "196"}"#, b"{"]
        .iter()
        .enumerate()
    {
        samples.push(Sample {
            key: format!("broken-{i}"),
            value: value.to_vec(),
            expected: None,
        });
    }
    samples
}

async fn produce(brokers: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    for s in samples {
        let record = FutureRecord::to(INPUT_TOPIC).key(&s.key).payload(&s.value);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .context("sending a sample record")?;
    }
    Ok(())
}

fn output_consumer(brokers: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "streamscore-demo-watcher")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in [OUTPUT_TOPIC, DEAD_LETTER_TOPIC] {
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

#[derive(Default)]
struct Tally {
    predictions: usize,
    dead_letters: usize,
    labelled: usize,
    correct: usize,
}

async fn watch(
    consumer: &StreamConsumer,
    expected_total: usize,
    expected_labels: &HashMap<&str, &str>,
    args: &DemoArgs,
    interrupted: &CancellationToken,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let deadline = tokio::time::Instant::now() + args.timeout;
    while tally.predictions + tally.dead_letters < expected_total {
        let message = tokio::select! {
            _ = interrupted.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => bail!("timed out after {:?} waiting for results", args.timeout),
            m = consumer.recv() => m?,
        };
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let value = message
            .payload()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if message.topic() == OUTPUT_TOPIC {
            tally.predictions += 1;
            println!("prediction  {key:<10} {value}");
            if let Some(want) = expected_labels.get(key.as_ref()) {
                let got: Option<String> = serde_json::from_str::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|v| v.get("label")?.as_str().map(str::to_owned));
                tally.labelled += 1;
                tally.correct += usize::from(got.as_deref() == Some(*want));
            }
        } else {
            tally.dead_letters += 1;
            let reason = message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == HEADER_REASON)?
                        .value
                        .map(String::from_utf8_lossy)
                })
                .unwrap_or_default();
            println!("dead letter {key:<10} reason={reason:<20} {value}");
        }
    }
    Ok(tally)
}
