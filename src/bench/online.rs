//! `streamscore bench --online`: serving throughput of the recommender with and without a
//! feedback stream being folded in, against the loopback ceiling of the same run.
//!
//! N user events are pre-loaded on the input topic. The frozen run serves them with no
//! feedback; the online run serves them while a producer sends feedback events, from the
//! moment the first request is in to the last, one feedback event per ten requests the
//! service has taken in (paced on its `records_in` counter, read every 100 ms), so the
//! feedback thread competes with scoring for the same cores throughout at 10 % of the
//! request rate (the report gives how many it applied in the window).
//!
//! `--pairs` such pairs run back to back, the order alternating, and the median ratio is
//! the result: on a shared machine one run's figure moves by a quarter with the load of the
//! moment, which a single pair cannot tell from the cost of learning.

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
struct Pair {
    /// Which ran first in this pair.
    first: String,
    frozen: OnlineRun,
    online: OnlineRun,
    online_over_frozen: f64,
    /// Service CPU the feedback added, per feedback event applied (all its threads).
    extra_cpu_us_per_feedback_event: f64,
}

#[derive(Debug, Serialize)]
struct OnlineReport {
    broker: String,
    model: String,
    ceiling: ReferenceFigures,
    pairs: Vec<Pair>,
    /// The median of the pairs' `online_over_frozen`.
    median_online_over_frozen: f64,
    median_frozen_over_ceiling: f64,
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub async fn run(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
    run_id: &str,
    mock: Option<&MockCluster<'static, DefaultProducerContext>>,
    records: usize,
) -> anyhow::Result<()> {
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
    let mut pairs = Vec::new();
    for pair in 0..args.pairs {
        // Every run reads the same input under its own group into its own output; each
        // online run learns from a fresh feedback topic into a fresh state directory.
        let new_topic = |kind: &str| format!("bench-online-{kind}-{run_id}-{pair}");
        let (frozen_out, online_out, feedback_topic) = (
            new_topic("frozen"),
            new_topic("online"),
            new_topic("feedback"),
        );
        for topic in [&frozen_out, &online_out, &feedback_topic] {
            match mock {
                Some(m) => m.create_topic(topic, args.partitions, 1)?,
                None => create_topic(brokers, topic, args.partitions).await?,
            }
        }
        let state_dir =
            std::env::temp_dir().join(format!("streamscore-bench-state-{run_id}-{pair}"));
        let state = state_dir.to_string_lossy().into_owned();
        let online_args = [
            "--feedback-topic",
            feedback_topic.as_str(),
            "--state-dir",
            state.as_str(),
        ];
        // Alternating the order keeps whatever the first or second run of a pair meets
        // (a warmer broker, a load spike) from always falling on the same side.
        let frozen_first = pair % 2 == 0;
        let mut frozen = None;
        let mut online = None;
        for online_turn in [!frozen_first, frozen_first] {
            if online_turn {
                online = Some(
                    serve(
                        args,
                        brokers,
                        topics,
                        &online_out,
                        model,
                        records,
                        &online_args,
                        "online (feedback stream)",
                        Some((&feedback_topic, FEEDBACK_SHARE)),
                    )
                    .await?,
                );
            } else {
                frozen = Some(
                    serve(
                        args,
                        brokers,
                        topics,
                        &frozen_out,
                        model,
                        records,
                        &[],
                        "frozen",
                        None,
                    )
                    .await?,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&state_dir);
        let (Some(frozen), Some(online)) = (frozen, online) else {
            unreachable!("each pair runs both")
        };
        let extra_cpu_us = (online.cpu_us_per_record - frozen.cpu_us_per_record) * records as f64
            / online.feedback_applied.max(1.0);
        let pair = Pair {
            first: if frozen_first { "frozen" } else { "online" }.to_owned(),
            online_over_frozen: online.records_per_second / frozen.records_per_second,
            extra_cpu_us_per_feedback_event: extra_cpu_us,
            frozen,
            online,
        };
        if !args.json {
            eprintln!(
                "pair {}: frozen {:.0}/s, online {:.0}/s, ratio {:.3}",
                pairs.len() + 1,
                pair.frozen.records_per_second,
                pair.online.records_per_second,
                pair.online_over_frozen
            );
        }
        pairs.push(pair);
    }
    let report = OnlineReport {
        broker: brokers.to_owned(),
        model: model.display().to_string(),
        median_online_over_frozen: median(pairs.iter().map(|p| p.online_over_frozen).collect()),
        median_frozen_over_ceiling: median(
            pairs
                .iter()
                .map(|p| p.frozen.records_per_second / ceiling.records_per_second)
                .collect(),
        ),
        ceiling,
        pairs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "broker {}  model {}  {} requests; online runs: one feedback event per {:.0} requests taken in",
        report.broker, report.model, records, 1.0 / FEEDBACK_SHARE
    );
    println!(
        "loopback ceiling {:.0} records/s",
        report.ceiling.records_per_second
    );
    println!(
        "{:<6} {:<28} {:>11} {:>9} {:>9} {:>9} {:>8} {:>20}",
        "pair",
        "run",
        "records/s",
        "cpu µs/r",
        "batch p50",
        "batch p99",
        "peak MB",
        "feedback sent/applied"
    );
    for (at, pair) in report.pairs.iter().enumerate() {
        let runs = if pair.first == "frozen" {
            [&pair.frozen, &pair.online]
        } else {
            [&pair.online, &pair.frozen]
        };
        for r in runs {
            println!(
                "{:<6} {:<28} {:>11.0} {:>9.2} {:>7.1}ms {:>7.1}ms {:>8.1} {:>8.0}/{:.0} ({:.1}%)",
                at + 1,
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
            "{:<6} online / frozen {:.3}; feedback added {:.1} µs of service CPU per event",
            at + 1,
            pair.online_over_frozen,
            pair.extra_cpu_us_per_feedback_event
        );
    }
    println!(
        "median online / frozen over {} pairs: {:.3}   median frozen / ceiling: {:.3}",
        report.pairs.len(),
        report.median_online_over_frozen,
        report.median_frozen_over_ceiling
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
    let uid = if i.is_multiple_of(2) {
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
