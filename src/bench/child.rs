//! The service under test as a child process, and what can be read off it: readiness and
//! metrics over its side port, CPU time and peak RSS from /proc.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BenchArgs;

pub struct ServiceChild {
    pub child: Child,
    pub http: SocketAddr,
    pub started: Instant,
}

impl Drop for ServiceChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_service(
    args: &BenchArgs,
    brokers: &str,
    input: &str,
    output: &str,
    dead_letters: &str,
    model: &Path,
    extra_args: &[&str],
) -> anyhow::Result<ServiceChild> {
    let http: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let started = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--model"])
        .arg(model)
        .args(["--http-addr", &http.to_string()])
        .args(["--max-batch", &args.max_batch.to_string()])
        .args([
            "--batch-interval",
            &humantime::format_duration(args.batch_interval).to_string(),
        ])
        .args(extra_args)
        .env("STREAMSCORE_BROKERS", brokers)
        .env("STREAMSCORE_INPUT_TOPIC", input)
        .env("STREAMSCORE_OUTPUT_TOPIC", output)
        .env("STREAMSCORE_DEAD_LETTER_TOPIC", dead_letters)
        .env("STREAMSCORE_GROUP", format!("bench-{output}"))
        .env("STREAMSCORE_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the service")?;
    Ok(ServiceChild {
        child,
        http,
        started,
    })
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// From process start to the side port answering (model loaded, HTTP up), and to `/readyz`
/// 200 (the group has assigned partitions: that part is the broker's).
pub struct StartUp {
    pub serving: Duration,
    pub ready: Duration,
}

pub async fn wait_ready(child: &mut ServiceChild, timeout: Duration) -> anyhow::Result<StartUp> {
    let serving = wait_for(child, "/healthz", timeout).await?;
    let ready = wait_for(child, "/readyz", timeout).await?;
    Ok(StartUp { serving, ready })
}

async fn wait_for(
    child: &mut ServiceChild,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, _)) = http_get(child.http, path).await {
            return Ok(child.started.elapsed());
        }
        if let Some(status) = child.child.try_wait()? {
            bail!("the service exited during start-up: {status}");
        }
        if Instant::now() > deadline {
            bail!("the service did not answer {path} with 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A quantile of a Prometheus histogram, interpolated linearly inside its bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    let target = q * total;
    let (mut lower_le, mut lower_count) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return lower_le;
            }
            let fraction = if count > lower_count {
                (target - lower_count) / (count - lower_count)
            } else {
                0.0
            };
            return lower_le + (le - lower_le) * fraction;
        }
        (lower_le, lower_count) = (le, count);
    }
    lower_le
}

/// A quantile of the service's batch-latency histogram, in milliseconds.
pub fn batch_latency_ms(metrics: &str, q: f64) -> f64 {
    histogram_quantile(metrics, "streamscore_batch_latency_seconds", q) * 1e3
}

/// CPU seconds (user + system) and peak RSS in MB of a live process, from /proc.
pub fn process_usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    // USER_HZ is 100 on every Linux this runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok((cpu, hwm_kb / 1024.0))
}
