//! `streamscore bench --online`: serving throughput of the recommender with and without a
//! feedback stream being folded in, against the loopback ceiling of the same run.
//!
//! N user events are pre-loaded on the input topic. The frozen run serves them with no
//! feedback; the online run serves them while a producer sends feedback events, from the
//! moment the first request is in to the last, one feedback event per ten requests the
//! service has taken in (paced on its `records_in` counter, read every 100 ms), so the
//! feedback thread competes with scoring for the same cores throughout at 10 % of the
//! request rate (the report gives how many it applied in the window).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureRecord};
use serde::Serialize;

use super::child::{batch_latency_ms, metric_sum};
use super::references::{self, ReferenceFigures};
use super::{create_topic, producer, run_service, BenchArgs, BenchTopics};

/// Feedback events per request pre-loaded.
const FEEDBACK_SHARE: f64 = 0.1;

#[derive(Debug, Serialize)]
struct OnlineRun {
    name: String,
    records: usize,
    seconds: f64,
    records_per_second: f64,
    cpu_us_per_record: f64,
    batch_latency_p50_ms: f64,
    batch_latency_p99_ms: f64,
    peak_rss_mb: f64,
    /// Feedback events folded in while the requests were served.
    feedback_applied: f64,
    /// Feedback events sent while the requests were served.
    feedback_sent: f64,
}

#[derive(Debug, Serialize)]
struct OnlineReport {
    broker: String,
    model: String,
    ceiling: ReferenceFigures,
    frozen: OnlineRun,
    online: OnlineRun,
    online_over_frozen: f64,
    frozen_over_ceiling: f64,
    online_over_ceiling: f64,
}

pub async fn run(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
    run_id: &str,
    mock: Option<&MockCluster<'static, DefaultProducerContext>>,
    records: usize,
) -> anyhow::Result<()> {
    let feedback_topic = format!("bench-feedback-{run_id}");
    match mock {
        Some(m) => m.create_topic(&feedback_topic, args.partitions, 1)?,
        None => create_topic(brokers, &feedback_topic, args.partitions).await?,
    }
    preload(brokers, &topics.input, records, |i| {
        // About one request in eleven is for a user the model does not know.
        let uid = 1 + (i * 7) % 1100;
        (
            format!("u{uid}"),
            format!(r#"{{"id":{i},"uid":{uid},"n":10}}"#),
        )
    })
    .await?;
    let ceiling = references::measure_ceiling(
        brokers,
        &topics.input,
        &topics.ceiling_out,
        records,
        args.batch_interval,
    )
    .await?;
    let model = &args.online_model;
    let frozen = serve(
        args,
        brokers,
        topics,
        &topics.forest_out,
        model,
        records,
        &[],
        "frozen",
        None,
    )
    .await?;

    let state_dir = std::env::temp_dir().join(format!("streamscore-bench-state-{run_id}"));
    let state = state_dir.to_string_lossy().into_owned();
    let online = serve(
        args,
        brokers,
        topics,
        &topics.identity_out,
        model,
        records,
        &["--feedback-topic", &feedback_topic, "--state-dir", &state],
        "online (feedback stream)",
        Some((&feedback_topic, FEEDBACK_SHARE)),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&state_dir);
    let report = OnlineReport {
        broker: brokers.to_owned(),
        model: model.display().to_string(),
        online_over_frozen: online.records_per_second / frozen.records_per_second,
        frozen_over_ceiling: frozen.records_per_second / ceiling.records_per_second,
        online_over_ceiling: online.records_per_second / ceiling.records_per_second,
        ceiling,
        frozen,
        online,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "broker {}  model {}  {} requests; online run: one feedback event per {:.0} requests taken in",
        report.broker, report.model, records, 1.0 / FEEDBACK_SHARE
    );
    println!(
        "{:<28} {:>11} {:>9} {:>9} {:>9} {:>8} {:>20}",
        "run",
        "records/s",
        "cpu µs/r",
        "batch p50",
        "batch p99",
        "peak MB",
        "feedback sent/applied"
    );
    println!(
        "{:<28} {:>11.0}",
        report.ceiling.name, report.ceiling.records_per_second
    );
    for r in [&report.frozen, &report.online] {
        println!(
            "{:<28} {:>11.0} {:>9.2} {:>7.1}ms {:>7.1}ms {:>8.1} {:>8.0}/{:.0} ({:.1}%)",
            r.name,
            r.records_per_second,
            r.cpu_us_per_record,
            r.batch_latency_p50_ms,
            r.batch_latency_p99_ms,
            r.peak_rss_mb,
            r.feedback_sent,
            r.feedback_applied,
            100.0 * r.feedback_applied / r.records.max(1) as f64
        );
    }
    println!(
        "online / frozen: {:.3}   frozen / ceiling: {:.3}   online / ceiling: {:.3}",
        report.online_over_frozen, report.frozen_over_ceiling, report.online_over_ceiling
    );
    Ok(())
}

async fn preload(
    brokers: &str,
    topic: &str,
    n: usize,
    record: impl Fn(usize) -> (String, String),
) -> anyhow::Result<()> {
    let producer = producer(brokers, "20")?;
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n {
        let (key, value) = record(i);
        let mut message = FutureRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send_result(message) {
                Ok(d) => break deliveries.push(d),
                Err((_, back)) => {
                    message = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e).context("pre-loading")?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
    output: &str,
    model: &Path,
    records: usize,
    extra_args: &[&str],
    name: &str,
    feedback: Option<(&str, f64)>,
) -> anyhow::Result<OnlineRun> {
    let sender = match feedback {
        Some(_) => Some(producer(brokers, "5")?),
        None => None,
    };
    let mut sent = 0usize;
    let send_feedback = |metrics: &str| {
        let (Some(producer), Some((topic, share))) = (&sender, feedback) else {
            return;
        };
        let due = (metric_sum(metrics, "streamscore_records_in_total") * share) as usize;
        while sent < due {
            let (key, value) = feedback_event(sent);
            // Delivery is not awaited: the sender must keep its pace.
            if producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .is_err()
            {
                break;
            }
            sent += 1;
        }
    };
    let run = run_service(
        args,
        brokers,
        topics,
        output,
        model,
        records,
        extra_args,
        send_feedback,
    )
    .await?;
    let (metrics, seconds, cpu_seconds, peak_rss_mb) =
        (&run.metrics, run.seconds, run.cpu_seconds, run.peak_rss_mb);
    Ok(OnlineRun {
        name: name.to_owned(),
        records,
        seconds,
        records_per_second: records as f64 / seconds.max(1e-9),
        cpu_us_per_record: cpu_seconds * 1e6 / records.max(1) as f64,
        batch_latency_p50_ms: batch_latency_ms(metrics, 0.5),
        batch_latency_p99_ms: batch_latency_ms(metrics, 0.99),
        peak_rss_mb,
        feedback_applied: metric_sum(metrics, "streamscore_feedback_events_total"),
        feedback_sent: sent as f64,
    })
}

/// The `i`-th feedback event: half known users, half new ones; keyed by user.
fn feedback_event(i: usize) -> (String, String) {
    let uid = if i % 2 == 0 {
        1 + (i * 13) % 1000
    } else {
        2_000_000 + (i * 17) % 5000
    };
    (
        format!("u{uid}"),
        format!(
            r#"{{"uid":{uid},"item":{},"rating":{}}}"#,
            1 + (i * 31) % 1700,
            1 + i % 5
        ),
    )
}
