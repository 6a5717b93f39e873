//! The fault matrix (at-least-once mode): each case counts inputs, outputs, losses and
//! duplicates, and prints a `FAULT-MATRIX` line (README: Delivery guarantees). No case may
//! lose a record; duplicates may only come from the uncommitted tail.
//!
//! Cases that inject faults use the mock cluster; the others run on whatever broker
//! `STREAMSCORE_TEST_BROKERS` names (the mock by default, tansu in CI).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr, RDKafkaRespErr::*};
use streamscore::pipeline::MAX_BATCHES_IN_FLIGHT;

const PARTITIONS: i32 = 4;
const MAX_BATCH: usize = 200;

/// Records a crash can leave produced but uncommitted: every batch holds an in-flight slot from
/// before its first record is produced until its offsets are committed, and the batch being
/// collected has produced nothing.
const UNCOMMITTED_TAIL: usize = MAX_BATCHES_IN_FLIGHT * MAX_BATCH;

async fn start(
    broker: &TestBroker,
    topics: &Topics,
    group: &str,
) -> streamscore::service::ServiceHandle {
    let mut config = broker.pipeline_config(topics, group);
    config.max_batch = MAX_BATCH;
    broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await
}

/// Produces `n` records in chunks, pausing between them, so faults land mid-stream.
fn trickle(
    broker: &TestBroker,
    topic: &str,
    range: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<()> {
    let brokers = broker.brokers.clone();
    let topic = topic.to_owned();
    tokio::spawn(async move {
        for chunk in iris_inputs(range).chunks(100) {
            produce(&brokers, &topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

#[derive(PartialEq)]
enum When {
    /// All input is produced first, then the fault is armed, then the service starts: the
    /// fault hits the service's own requests rather than the test's producer.
    BeforeStart,
    /// While input trickles in and the service is scoring.
    MidStream,
}

/// Runs traffic through one instance while `inject` misbehaves the mock, then checks
/// nothing was lost. Duplicates are allowed (a failed commit re-reads its batch).
async fn injected(case: &str, when: When, inject: impl FnOnce(&Mock)) -> (Tally, String) {
    const N: usize = 3_000;
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(PARTITIONS).await;
    let service = if when == When::BeforeStart {
        broker.produce(&topics.input, &iris_inputs(0..N)).await;
        inject(mock);
        start(&broker, &topics, &unique("group")).await
    } else {
        let service = start(&broker, &topics, &unique("group")).await;
        wait_ready(service.http_addr, Duration::from_secs(30)).await;
        let traffic = trickle(&broker, &topics.input, 0..N);
        let _ = broker
            .collect(&[&topics.output], PARTITIONS, 300, Duration::from_secs(30))
            .await;
        inject(mock);
        traffic.await.expect("traffic sent");
        service
    };
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(90)).await;
    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    service
        .stop()
        .await
        .expect("the service rode out the fault");
    let t = tally(case, N, &outputs);
    assert_eq!(t.missing, 0, "{case}: lost records");
    (t, metrics)
}

fn errors(n: usize, code: RDKafkaRespErr) -> Vec<RDKafkaRespErr> {
    vec![code; n]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_and_up_mid_stream() {
    injected("broker down 2 s, then up", When::MidStream, |mock| {
        mock.broker_down(1).expect("broker down");
        std::thread::sleep(Duration::from_secs(2));
        mock.broker_up(1).expect("broker up");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors() {
    let (t, metrics) = injected(
        "produce: 20 × NOT_ENOUGH_REPLICAS",
        When::BeforeStart,
        |mock| {
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &errors(20, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS),
            );
        },
    )
    .await;
    assert_eq!(
        t.duplicates, 0,
        "the idempotent producer retries without duplicating"
    );
    assert_eq!(
        metric(&metrics, "streamscore_delivery_retries_total"),
        0,
        "librdkafka absorbs retriable errors; the sink never had to re-send"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retriable_produce_errors() {
    // The errors hit every produce request, the dead-letter topic's too: a record the broker
    // keeps refusing is re-sent 5 times, then its `undeliverable` dead letter is refused as
    // well, so the service stops with its batch uncommitted instead of skipping it, and a
    // restarted instance delivers everything. (tests/poison.rs has the case where only the
    // output topic refuses.)
    const N: usize = 3_000;
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(PARTITIONS).await;
    let group = unique("group");
    broker.produce(&topics.input, &iris_inputs(0..N)).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &errors(20, RD_KAFKA_RESP_ERR_INVALID_RECORD),
    );
    let first = start(&broker, &topics, &group).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), first.wait())
        .await
        .expect("the service stops rather than skip a record");
    let err = stopped.expect_err("stopped on the refused record");
    eprintln!("first instance stopped: {err:#}");
    // The broker recovers; a restarted instance picks up from the last commit.
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    let second = start(&broker, &topics, &group).await;
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(90)).await;
    second.stop().await.expect("clean shutdown");
    let t = tally(
        "produce: 20 × INVALID_RECORD (non-retriable), then restart",
        N,
        &outputs,
    );
    assert_eq!(t.missing, 0, "lost records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_offset_commit_errors() {
    injected(
        "offset commit: 5 × COORDINATOR_NOT_AVAILABLE",
        When::MidStream,
        |mock| {
            mock.request_errors(
                RDKafkaApiKey::OffsetCommit,
                &errors(5, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE),
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retriable_offset_commit_errors() {
    let (t, _) = injected(
        "offset commit: 3 × UNKNOWN_MEMBER_ID (non-retriable)",
        When::MidStream,
        |mock| {
            mock.request_errors(
                RDKafkaApiKey::OffsetCommit,
                &errors(3, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID),
            );
        },
    )
    .await;
    // Outputs were delivered; a lost commit only means its batch may be read again.
    assert!(t.duplicates <= 3 * UNCOMMITTED_TAIL, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_broker() {
    let (t, _) = injected("broker round trip +300 ms", When::MidStream, |mock| {
        mock.broker_round_trip_time(1, Duration::from_millis(300))
            .expect("delay set");
    })
    .await;
    assert_eq!(t.duplicates, 0, "slowness alone never duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_and_restarted_three_times() {
    const N: usize = 6_000;
    const CRASHES: usize = 3;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let group = unique("group");
    let batch = MAX_BATCH.to_string();
    let traffic = trickle(&broker, &topics.input, 0..N);
    for crash in 0..CRASHES {
        let service = ServiceProcess::spawn(&broker, &topics, &group, &["--max-batch", &batch]);
        service.ready().await;
        // Let it score a while, then kill it mid-stream without any chance to clean up.
        let target = (crash + 1) * N / (CRASHES + 2);
        let _ = broker
            .collect(
                &[&topics.output],
                PARTITIONS,
                target,
                Duration::from_secs(60),
            )
            .await;
        service.signal("KILL");
        let _ =
            tokio::task::spawn_blocking(move || service.wait_exit(Duration::from_secs(10))).await;
    }
    traffic.await.expect("traffic sent");
    let last = ServiceProcess::spawn(&broker, &topics, &group, &["--max-batch", &batch]);
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(120)).await;
    last.signal("TERM");
    let status = tokio::task::spawn_blocking(move || last.wait_exit(Duration::from_secs(30)))
        .await
        .expect("waited");
    assert!(status.success());
    let t = tally(&format!("SIGKILL × {CRASHES}, restart"), N, &outputs);
    assert_eq!(t.missing, 0, "lost records");
    assert!(
        t.duplicates <= CRASHES * UNCOMMITTED_TAIL,
        "{} duplicates for {CRASHES} crashes; the uncommitted tail is at most {UNCOMMITTED_TAIL}",
        t.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_mid_stream() {
    const N: usize = 6_000;
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let group = unique("group");
    let first = start(&broker, &topics, &group).await;
    wait_ready(first.http_addr, Duration::from_secs(30)).await;
    let traffic = trickle(&broker, &topics.input, 0..N);

    let _ = broker
        .collect(
            &[&topics.output],
            PARTITIONS,
            N / 5,
            Duration::from_secs(60),
        )
        .await;
    let second = start(&broker, &topics, &group).await;
    let third = start(&broker, &topics, &group).await;
    let _ = broker
        .collect(
            &[&topics.output],
            PARTITIONS,
            N / 2,
            Duration::from_secs(60),
        )
        .await;
    // The newcomers really took part: they were given partitions and scored records (or
    // this test would pass with the first instance doing all the work).
    for (name, joined) in [("second", &second), ("third", &third)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while joined.state.metrics.records_in.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {name} instance never scored a record (partitions: {})",
                joined.state.assignment.count()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{name} instance: {} partitions, {} records scored",
            joined.state.assignment.count(),
            joined.state.metrics.records_in.get()
        );
    }
    second.stop().await.expect("second leaves cleanly");
    third.stop().await.expect("third leaves cleanly");
    traffic.await.expect("traffic sent");
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(120)).await;
    first.stop().await.expect("first stops cleanly");

    let t = tally("2nd and 3rd instance join, then leave", N, &outputs);
    assert_eq!(t.missing, 0, "lost records");
    // Revoked partitions wait for in-flight batches to commit, and unscored records of
    // revoked partitions are dropped for the next owner, so a rebalance adds nothing.
    assert!(t.duplicates <= UNCOMMITTED_TAIL, "{t:?}");
}

/// Crash recovery time: SIGKILL an instance mid-stream and restart it at once; the time from
/// the kill until the new process scores its first record. Without static membership the
/// group waits for the dead member's session to expire; with `--instance-id` the restarted
/// member takes its place (and partitions) as soon as it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_time_after_sigkill() {
    let broker = TestBroker::start();
    let cases: [(&str, &[&str]); 3] = [
        (
            "librdkafka defaults (session 45 s), no instance id",
            &[
                "-X",
                "session.timeout.ms=45000",
                "-X",
                "heartbeat.interval.ms=3000",
            ],
        ),
        ("streamscore defaults (session 10 s), no instance id", &[]),
        (
            "streamscore defaults, --instance-id",
            &["--instance-id", "pod-0"],
        ),
    ];
    let mut measured = Vec::new();
    for (case, flags) in cases {
        let topics = broker.topics(PARTITIONS).await;
        let group = unique("group");
        let stop_traffic = tokio_util::sync::CancellationToken::new();
        let traffic = {
            let (brokers, topic, stop) = (
                broker.brokers.clone(),
                topics.input.clone(),
                stop_traffic.clone(),
            );
            tokio::spawn(async move {
                let mut next = 0;
                while !stop.is_cancelled() && next < 200_000 {
                    produce(&brokers, &topic, &iris_inputs(next..next + 100)).await;
                    next += 100;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        // Flags after the harness's own `-X session.timeout.ms=6000` override it; the harness
        // default is dropped here by giving each case its own value or streamscore's.
        let mut args: Vec<&str> = flags.to_vec();
        if !flags.contains(&"session.timeout.ms=45000") {
            args.extend(["-X", "session.timeout.ms=10000"]);
        }
        let first = ServiceProcess::spawn(&broker, &topics, &group, &args);
        first.ready().await;
        let _ = broker
            .collect(&[&topics.output], PARTITIONS, 500, Duration::from_secs(60))
            .await;
        first.signal("KILL");
        let killed = std::time::Instant::now();
        let _ = tokio::task::spawn_blocking(move || first.wait_exit(Duration::from_secs(10))).await;
        let second = ServiceProcess::spawn(&broker, &topics, &group, &args);
        let recovered = loop {
            if let Ok(Ok(stream)) = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(second.http_addr),
            )
            .await
            {
                drop(stream);
                let (_, metrics) = http(second.http_addr, "GET", "/metrics", &[], "").await;
                if metric(&metrics, "streamscore_records_in_total") > 0 {
                    break killed.elapsed();
                }
            }
            assert!(
                killed.elapsed() < Duration::from_secs(120),
                "{case}: no recovery"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        stop_traffic.cancel();
        let _ = traffic.await;
        second.signal("TERM");
        let _ =
            tokio::task::spawn_blocking(move || second.wait_exit(Duration::from_secs(30))).await;
        eprintln!(
            "RECOVERY {case}: {:.1} s from SIGKILL to the restarted instance's first record",
            recovered.as_secs_f64()
        );
        measured.push(recovered);
    }
    assert!(
        measured[1] < Duration::from_secs(20),
        "the default session timeout bounds recovery: {measured:?}"
    );
    // The mock's classic group coordinator keeps static members' ids but does not let a
    // returning `group.instance.id` replace its old member, so on the mock the third case
    // gains only the session timeout; on Kafka it rejoins without waiting for it.
    assert!(
        measured[2] < measured[0],
        "recovery with an instance id is no slower: {measured:?}"
    );
}

/// A commit that fails just before a rebalance frees its batch like a successful one. The
/// revoke commits those delivered offsets before the partitions go (from the rebalance
/// callback, where Apache Kafka accepts a commit: the group is PreparingRebalance and the
/// member still in its generation). The mock cannot show that: it answers every commit with
/// REBALANCE_IN_PROGRESS from the moment a member joins, the revoke's included, so here the
/// refused batch is scored again — once, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_failed_before_a_rebalance_repeats_at_most_that_batch() {
    const N: usize = 400;
    let broker = TestBroker::mock();
    let mock = broker.mock.as_ref().expect("a mock cluster");
    let topics = broker.topics(PARTITIONS).await;
    let group = unique("group");
    let mut config = broker.pipeline_config(&topics, &group);
    config.max_batch = 1000;
    config.batch_interval = Duration::from_secs(1);
    let model = repo_path(IRIS_MODEL);
    let first = broker
        .start_service_with(config.clone(), &model, None)
        .await;
    wait_ready(first.http_addr, Duration::from_secs(30)).await;
    broker.produce(&topics.input, &iris_inputs(0..200)).await;
    let _ = broker
        .collect(&[&topics.output], PARTITIONS, 200, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One batch, whose commit is refused.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    broker.produce(&topics.input, &iris_inputs(200..300)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while first.state.metrics.commit_failures.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the commit failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = broker.start_service_with(config, &model, None).await;
    wait_ready(second.http_addr, Duration::from_secs(30)).await;
    broker.produce(&topics.input, &iris_inputs(300..N)).await;
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(60)).await;
    second.stop().await.expect("second stops cleanly");
    first.stop().await.expect("first stops cleanly");
    let t = tally("a commit refused, then a rebalance", N, &outputs);
    assert_eq!(t.missing, 0, "lost records");
    assert!(
        t.duplicates <= 100,
        "only the refused batch is repeated: {t:?}"
    );
}

/// What one 1 → 3 → 1 scale run saw: the longest time without any output while the group
/// was steady, while two instances joined, and while they left.
#[derive(Debug)]
struct ScaleRun {
    tally: Tally,
    steady_gap: Duration,
    join_pause: Duration,
    leave_pause: Duration,
}

/// The longest stretch inside `[from, to]` with no output arriving.
fn longest_gap(
    arrivals: &[std::time::Instant],
    from: std::time::Instant,
    to: std::time::Instant,
) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in arrivals
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .chain([to])
    {
        longest = longest.max(t.duration_since(last));
        last = t;
    }
    longest
}

async fn scrape(service: &ServiceProcess, series: &str) -> u64 {
    let (_, metrics) = http(service.http_addr, "GET", "/metrics", &[], "").await;
    metric(&metrics, series)
}

/// One instance, then three (two `serve` processes join at once), then one again (they stop
/// with SIGTERM), under a steady stream; every process runs with `flags`. An output reader
/// notes when each output arrives, so each step's pause is the longest time with no output.
async fn scale_one_three_one(case: &str, flags: &[&str]) -> ScaleRun {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    const PARTITIONS: i32 = 6;
    const SETTLE: Duration = Duration::from_secs(2);
    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let group = unique("group");
    let batch = MAX_BATCH.to_string();
    let args: Vec<&str> = [&["--max-batch", &batch][..], flags].concat();
    let first = ServiceProcess::spawn(&broker, &topics, &group, &args);
    first.ready().await;

    let stop = tokio_util::sync::CancellationToken::new();
    let arrivals: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let reader = {
        let (brokers, output, stop, arrivals) = (
            broker.brokers.clone(),
            topics.output.clone(),
            stop.clone(),
            Arc::clone(&arrivals),
        );
        tokio::spawn(async move {
            use rdkafka::consumer::{Consumer as _, StreamConsumer};
            use rdkafka::message::Message as _;
            let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", unique("reader"))
                .set("fetch.wait.max.ms", "10")
                .create()
                .expect("output reader");
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(&output, p, rdkafka::Offset::Beginning)
                    .expect("partition added");
            }
            consumer.assign(&tpl).expect("assigned");
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = consumer.recv() => m,
                };
                let Ok(m) = m else { continue };
                let id = m
                    .payload()
                    .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                    .and_then(|v| v["id"].as_u64());
                if let Some(id) = id {
                    arrivals
                        .lock()
                        .expect("arrivals")
                        .push((Instant::now(), id));
                }
            }
        })
    };
    // About 2,000 records a second, for at most 3 minutes, one record per produce batch:
    // tansu 0.6 skips the rest of a batch for a consumer that resumes inside it.
    let stop_traffic = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let (producer, topic, stop) = (
            unbatched_producer(&broker.brokers),
            topics.input.clone(),
            stop_traffic.clone(),
        );
        tokio::spawn(async move {
            let mut next = 0;
            while !stop.is_cancelled() && next < 360_000 {
                produce_with(&producer, &topic, &iris_inputs(next..next + 20)).await;
                next += 20;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            next
        })
    };
    tokio::time::sleep(SETTLE).await;
    let steady_from = Instant::now();
    tokio::time::sleep(SETTLE).await;

    let joining = Instant::now();
    let second = ServiceProcess::spawn(&broker, &topics, &group, &args);
    let third = ServiceProcess::spawn(&broker, &topics, &group, &args);
    second.ready().await;
    third.ready().await;
    // Every instance holds partitions and has scored some of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, instance) in [("second", &second), ("third", &third), ("first", &first)] {
        while scrape(instance, "streamscore_assigned_partitions").await == 0
            || scrape(instance, "streamscore_records_in_total").await == 0
        {
            assert!(
                Instant::now() < deadline,
                "{case}: the {name} instance got no partitions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let joined = Instant::now();
    tokio::time::sleep(SETTLE).await;

    let leaving = Instant::now();
    second.signal("TERM");
    third.signal("TERM");
    for (name, instance) in [("second", second), ("third", third)] {
        let status =
            tokio::task::spawn_blocking(move || instance.wait_exit(Duration::from_secs(30)))
                .await
                .expect("waited");
        assert!(
            status.success(),
            "{case}: the {name} instance's exit: {status}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape(&first, "streamscore_assigned_partitions").await < PARTITIONS as u64 {
        assert!(
            Instant::now() < deadline,
            "{case}: the first instance did not take every partition back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = Instant::now();
    tokio::time::sleep(SETTLE).await;
    stop_traffic.cancel();
    let n = traffic.await.expect("traffic sent");

    // Every input's output, then a quiet period so that late duplicates are counted too.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count, last) = {
            let seen = arrivals.lock().expect("arrivals");
            let ids: std::collections::HashSet<u64> = seen.iter().map(|(_, id)| *id).collect();
            (ids.len(), seen.last().map(|(t, _)| *t))
        };
        let quiet = last.is_some_and(|t| t.elapsed() >= QUIET_PERIOD);
        if (count >= n && quiet) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    reader.await.expect("reader stopped");
    first.signal("TERM");
    let status = tokio::task::spawn_blocking(move || first.wait_exit(Duration::from_secs(30)))
        .await
        .expect("waited");
    assert!(
        status.success(),
        "{case}: the first instance's exit: {status}"
    );

    let arrivals = std::mem::take(&mut *arrivals.lock().expect("arrivals"));
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for (_, id) in &arrivals {
        *counts.entry(*id).or_default() += 1;
    }
    let times: Vec<Instant> = arrivals.iter().map(|(t, _)| *t).collect();
    if std::env::var_os("STREAMSCORE_TEST_SERVICE_LOGS").is_some() {
        let at = |t: Instant| t.duration_since(steady_from).as_secs_f64();
        eprintln!(
            "TIMELINE {case}: joining {:.2} joined {:.2} leaving {:.2} left {:.2}",
            at(joining),
            at(joined),
            at(leaving),
            at(left)
        );
        for pair in times.windows(2) {
            if pair[1].duration_since(pair[0]) > Duration::from_millis(500) {
                eprintln!("TIMELINE gap {:.2} .. {:.2}", at(pair[0]), at(pair[1]));
            }
        }
    }
    let tally = Tally {
        inputs: n,
        outputs: arrivals.len(),
        missing: (0..n as u64).filter(|i| !counts.contains_key(i)).count(),
        duplicates: counts.values().map(|c| c - 1).sum(),
    };
    let run = ScaleRun {
        steady_gap: longest_gap(&times, steady_from, joining),
        join_pause: longest_gap(&times, joining, joined + SETTLE / 2),
        leave_pause: longest_gap(&times, leaving, left + SETTLE / 2),
        tally,
    };
    eprintln!(
        "FAULT-MATRIX scale 1 → 3 → 1, {case}: in={} out={} lost={} duplicated={}",
        run.tally.inputs, run.tally.outputs, run.tally.missing, run.tally.duplicates
    );
    eprintln!(
        "REBALANCE-PAUSE {case}: longest time without output: steady {:.2} s, \
         2 instances joining {:.2} s (group settled after {:.1} s), 2 leaving {:.2} s \
         (settled after {:.1} s)",
        run.steady_gap.as_secs_f64(),
        run.join_pause.as_secs_f64(),
        joined.duration_since(joining).as_secs_f64(),
        run.leave_pause.as_secs_f64(),
        left.duration_since(leaving).as_secs_f64(),
    );
    assert_eq!(run.tally.missing, 0, "{case}: lost records");
    run
}

/// What at-least-once promises through a scale step: an instance that gives partitions up
/// repeats at most its own uncommitted tail, and only when the broker refuses the commit made
/// on the revoke. Three instances give partitions up here (the first on the join, the second
/// and the third on the leave). librdkafka's mock refuses commits while the group rebalances
/// (`RebalanceInProgress`, dozens of times per run in the services' logs); usually the
/// revoke's own commit then gets through and nothing repeats, but under the full suite's
/// load one run repeated 1,717 records: more than one tail, within three.
fn assert_within_the_tail(run: &ScaleRun) {
    assert!(
        run.tally.duplicates <= 3 * UNCOMMITTED_TAIL,
        "a graceful rebalance repeats nothing beyond the uncommitted tails: {run:?}"
    );
}

/// The default: the classic protocol with the cooperative-sticky assignor. Partitions that
/// keep their owner keep flowing through a join or a leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_with_cooperative_rebalances() {
    let run = scale_one_three_one("classic, cooperative-sticky (default)", &[]).await;
    assert_within_the_tail(&run);
}

/// The eager assignors librdkafka picks by default, for comparison: every join and leave
/// stops every partition. Measured on demand (`--include-ignored`); CI runs the default.
/// The mock refuses the revoke's commit during a rebalance (see
/// `a_commit_failed_before_a_rebalance_repeats_at_most_that_batch`), so eager rebalances
/// repeat batches there; this reports them rather than asserting the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a comparison measurement"]
async fn scaling_one_to_three_to_one_with_eager_rebalances() {
    let run = scale_one_three_one(
        "classic, eager (-X partition.assignment.strategy=range,roundrobin)",
        &["-X", "partition.assignment.strategy=range,roundrobin"],
    )
    .await;
    eprintln!("{run:?}");
}

/// KIP-848: the broker assigns. librdkafka's mock cluster implements ConsumerGroupHeartbeat;
/// tansu 0.6 does not, so against it the service must say so and not turn ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_with_the_kip848_consumer_protocol() {
    let broker = TestBroker::start();
    if broker.is_mock() {
        drop(broker);
        let run = scale_one_three_one(
            "consumer protocol (KIP-848)",
            &["--group-protocol", "consumer"],
        )
        .await;
        assert_within_the_tail(&run);
        return;
    }
    kip848_against_a_broker_without_it(&broker).await;
}

/// tansu 0.6 has no ConsumerGroupHeartbeat. librdkafka then retries for ever and says why
/// only in its debug log; the service must not look merely slow to start.
async fn kip848_against_a_broker_without_it(broker: &TestBroker) {
    let topics = broker.topics(2).await;
    let service = ServiceProcess::spawn(
        broker,
        &topics,
        &unique("group"),
        &["--group-protocol", "consumer"],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(service.http_addr),
        )
        .await
        {
            let (status, body) = http(service.http_addr, "GET", "/readyz", &[], "").await;
            assert_ne!(status, 200, "ready without a group: {body}");
            if body.contains("KIP-848") {
                eprintln!("KIP-848 against a broker without it: {status} {body}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never said why the group stays silent"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
