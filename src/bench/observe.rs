//! `streamscore bench --observe`: what windowed statistics, drift and a shadow model cost.
//! Three service runs over the same pre-loaded input, beside the loopback ceiling measured
//! in the same run: statistics off (`--no-stats`), on (`--stats-window 1m --stats-slide 10s`
//! with a stats topic), and on with a shadow model the size of the served one.

use serde::Serialize;

use super::references::{self, ReferenceFigures};
use super::{preload, serve_until_done, BenchArgs, BenchTopics, RunFigures};

#[derive(Debug, Serialize)]
pub struct ObserveReport {
    broker: String,
    partitions: i32,
    ceiling: ReferenceFigures,
    stats_off: RunFigures,
    stats_on: RunFigures,
    shadow: RunFigures,
    stats_off_over_ceiling: f64,
    stats_on_over_ceiling: f64,
    shadow_over_ceiling: f64,
    stats_on_over_stats_off: f64,
    shadow_over_stats_on: f64,
}

pub async fn run(
    args: &BenchArgs,
    brokers: &str,
    topics: &BenchTopics,
    records: usize,
) -> anyhow::Result<ObserveReport> {
    preload(brokers, &topics.input, records).await?;
    let ceiling = references::measure_ceiling(
        brokers,
        &topics.input,
        &topics.ceiling_out,
        records,
        args.batch_interval,
    )
    .await?;
    let model = &args.model;
    let stats_off = serve_until_done(
        args,
        brokers,
        topics,
        &topics.stats_off_out,
        model,
        records,
        &["--no-stats"],
    )
    .await?;
    let stats_on = serve_until_done(
        args,
        brokers,
        topics,
        &topics.stats_on_out,
        model,
        records,
        &[
            "--stats-window",
            "1m",
            "--stats-slide",
            "10s",
            "--stats-topic",
            &topics.stats,
        ],
    )
    .await?;
    let shadow_model = model.to_string_lossy();
    let shadow = serve_until_done(
        args,
        brokers,
        topics,
        &topics.shadow_out,
        model,
        records,
        &[
            "--stats-window",
            "1m",
            "--stats-slide",
            "10s",
            "--stats-topic",
            &topics.stats,
            "--shadow-model",
            &shadow_model,
        ],
    )
    .await?;
    Ok(ObserveReport {
        broker: brokers.to_owned(),
        partitions: args.partitions,
        stats_off_over_ceiling: stats_off.records_per_second / ceiling.records_per_second,
        stats_on_over_ceiling: stats_on.records_per_second / ceiling.records_per_second,
        shadow_over_ceiling: shadow.records_per_second / ceiling.records_per_second,
        stats_on_over_stats_off: stats_on.records_per_second / stats_off.records_per_second,
        shadow_over_stats_on: shadow.records_per_second / stats_on.records_per_second,
        ceiling,
        stats_off,
        stats_on,
        shadow,
    })
}

pub fn print(report: &ObserveReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "broker {} ({} partitions), {} records",
        report.broker, report.partitions, report.stats_off.records
    );
    println!(
        "{:<28} {:>12} {:>10} {:>12} {:>10}",
        "run", "records/s", "× ceiling", "cpu µs/rec", "p99 ms"
    );
    println!(
        "{:<28} {:>12.0} {:>10.2}",
        "loopback ceiling", report.ceiling.records_per_second, 1.0
    );
    for (name, run, ratio) in [
        (
            "stats off",
            &report.stats_off,
            report.stats_off_over_ceiling,
        ),
        (
            "stats on (1m/10s + topic)",
            &report.stats_on,
            report.stats_on_over_ceiling,
        ),
        (
            "stats on + shadow model",
            &report.shadow,
            report.shadow_over_ceiling,
        ),
    ] {
        println!(
            "{:<28} {:>12.0} {:>10.2} {:>12.1} {:>10.1}",
            name, run.records_per_second, ratio, run.cpu_us_per_record, run.batch_latency_p99_ms
        );
    }
    println!(
        "stats on / stats off: {:.3}; shadow / no shadow: {:.3}",
        report.stats_on_over_stats_off, report.shadow_over_stats_on
    );
    println!(
        "shadow compared {:.0} records, skipped {:.0} (behind the stream)",
        report.shadow.shadow_compared, report.shadow.shadow_dropped
    );
    Ok(())
}
