//! Service configuration: flags, `STREAMSCORE_*` environment variables, and librdkafka
//! properties passed through verbatim.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pipeline::Guarantee;
use crate::record::DEFAULT_MAX_RECORD_BYTES;
use crate::stats::{StatsConfig, StatsTime};

/// Prefix of environment variables that become librdkafka properties:
/// `STREAMSCORE_KAFKA_SECURITY_PROTOCOL=SASL_SSL` → `security.protocol=SASL_SSL`.
pub const KAFKA_ENV_PREFIX: &str = "STREAMSCORE_KAFKA_";

#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "STREAMSCORE_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// librdkafka property for both the consumer and the producer, as in kcat (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

impl KafkaArgs {
    /// `-X` flags plus `STREAMSCORE_KAFKA_*` variables; flags win on conflicts.
    pub fn all_properties(&self) -> Vec<(String, String)> {
        let mut props = properties_from_env(std::env::vars());
        props.extend(self.properties.iter().cloned());
        props
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[arg(long, env = "STREAMSCORE_INPUT_TOPIC", default_value = "features")]
    pub input_topic: String,
    #[arg(long, env = "STREAMSCORE_OUTPUT_TOPIC", default_value = "predictions")]
    pub output_topic: String,
    #[arg(
        long,
        env = "STREAMSCORE_DEAD_LETTER_TOPIC",
        default_value = "dead-letters"
    )]
    pub dead_letter_topic: String,
    /// Consumer group; instances with the same group share the input partitions.
    #[arg(long, env = "STREAMSCORE_GROUP", default_value = "streamscore")]
    pub group: String,
    /// Model file; reloads re-read it, and may only name files in its directory.
    #[arg(
        long,
        env = "STREAMSCORE_MODEL",
        default_value = "models/iris-forest.json"
    )]
    pub model: PathBuf,
    /// Let a reload replace the model with one of another kind.
    #[arg(long, env = "STREAMSCORE_ALLOW_KIND_CHANGE")]
    pub allow_kind_change: bool,
    /// A micro-batch closes this long after its first record (e.g. 100ms, 1s). `0` is
    /// latency mode: a batch closes as soon as the consumer has nothing more ready.
    #[arg(long, env = "STREAMSCORE_BATCH_INTERVAL", default_value = "100ms", value_parser = parse_interval)]
    pub batch_interval: Duration,
    /// ... or when it holds this many records.
    #[arg(long, env = "STREAMSCORE_MAX_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_batch: u32,
    /// ... or when its records' values add up to this many bytes.
    #[arg(long, env = "STREAMSCORE_MAX_BATCH_BYTES", default_value_t = crate::pipeline::DEFAULT_MAX_BATCH_BYTES,
          value_parser = parse_batch_bytes)]
    pub max_batch_bytes: usize,
    /// Larger input records are dead-lettered as `too_large`.
    #[arg(long, env = "STREAMSCORE_MAX_RECORD_BYTES", default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// `at-least-once` (default) or `exactly-once` (one Kafka transaction per batch).
    #[arg(long, env = "STREAMSCORE_GUARANTEE", value_enum, default_value_t = GuaranteeArg::AtLeastOnce)]
    pub guarantee: GuaranteeArg,
    /// Transactional id in exactly-once mode; stable per instance, so a restarted instance
    /// fences its own zombie. Defaults to `<group>-<hostname>`.
    #[arg(long, env = "STREAMSCORE_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// Address of the HTTP side port (health, readiness, metrics, model admin).
    #[arg(long, env = "STREAMSCORE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// Windowed statistics, drift and the shadow model.
#[derive(clap::Args, Debug, Clone)]
pub struct ObserveArgs {
    /// Turn windowed statistics and drift off (the status page keeps rates and timing).
    #[arg(long, env = "STREAMSCORE_NO_STATS")]
    pub no_stats: bool,
    /// Length of a statistics window (e.g. 1m).
    #[arg(long, env = "STREAMSCORE_STATS_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub stats_window: Duration,
    /// How often a window closes; the window is a whole number of slides.
    #[arg(long, env = "STREAMSCORE_STATS_SLIDE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stats_slide: Duration,
    /// `processing` (default: when the record was scored) or `event` (its Kafka timestamp).
    #[arg(long, env = "STREAMSCORE_STATS_TIME", value_enum, default_value_t = StatsTime::Processing)]
    pub stats_time: StatsTime,
    /// Event time only: how far behind the newest timestamp a record may be and still count.
    #[arg(long, env = "STREAMSCORE_STATS_LATENESS", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stats_lateness: Duration,
    /// Topic that receives one JSON record per closed window (none: `/status` only).
    #[arg(long, env = "STREAMSCORE_STATS_TOPIC")]
    pub stats_topic: Option<String>,
    /// PSI above which an input feature is reported as drifted.
    #[arg(long, env = "STREAMSCORE_DRIFT_THRESHOLD", default_value_t = crate::stats::drift::DEFAULT_THRESHOLD)]
    pub drift_threshold: f64,
    /// A candidate model scored beside the served one (same inputs), off the output path.
    #[arg(long, env = "STREAMSCORE_SHADOW_MODEL")]
    pub shadow_model: Option<PathBuf>,
    /// Topic for the shadow model's predictions (none: they are only compared).
    #[arg(long, env = "STREAMSCORE_SHADOW_TOPIC")]
    pub shadow_topic: Option<String>,
}

/// `ObserveArgs`, checked.
#[derive(Debug, Clone, Default)]
pub struct ObserveOptions {
    pub stats: StatsConfig,
    pub shadow_model: Option<PathBuf>,
    pub shadow_topic: Option<String>,
}

impl ObserveArgs {
    pub fn options(&self, instance: String) -> Result<ObserveOptions, String> {
        let (window, basis) = StatsConfig::from_flags(
            self.stats_window,
            self.stats_slide,
            self.stats_time,
            self.stats_lateness,
        )?;
        if !(self.drift_threshold.is_finite() && self.drift_threshold > 0.0) {
            return Err("--drift-threshold must be a number above zero".into());
        }
        Ok(ObserveOptions {
            stats: StatsConfig {
                enabled: !self.no_stats,
                window,
                basis,
                topic: self.stats_topic.clone(),
                drift_threshold: self.drift_threshold,
                instance,
            },
            shadow_model: self.shadow_model.clone(),
            shadow_topic: self.shadow_topic.clone(),
        })
    }
}

impl ServeArgs {
    pub fn pipeline_config(&self) -> crate::pipeline::PipelineConfig {
        crate::pipeline::PipelineConfig {
            brokers: self.kafka.brokers.clone(),
            properties: self.kafka.all_properties(),
            consumer_properties: Vec::new(),
            input_topic: self.input_topic.clone(),
            output_topic: self.output_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            group: self.group.clone(),
            batch_interval: self.batch_interval,
            max_batch: self.max_batch as usize,
            max_batch_bytes: self.max_batch_bytes,
            max_record_bytes: self.max_record_bytes,
            guarantee: match self.guarantee {
                GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
                GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce {
                    transactional_id: self
                        .transactional_id
                        .clone()
                        .unwrap_or_else(|| format!("{}-{}", self.group, hostname())),
                },
            },
        }
    }
}

impl ServeArgs {
    /// The name this instance's statistics windows carry: stable across restarts.
    pub fn instance(&self) -> String {
        format!("{}-{}", self.group, hostname())
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuaranteeArg {
    AtLeastOnce,
    ExactlyOnce,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "streamscore".to_owned())
}

pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka property), got {s:?}"
        )),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (try 100ms, 1s, or 0 for latency mode)"))
}

fn parse_batch_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of bytes, got {s:?}"))?;
    if n == 0 {
        return Err("the batch byte limit must be above zero".into());
    }
    Ok(n)
}

fn properties_from_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = vars
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(KAFKA_ENV_PREFIX)?;
            Some((key.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    props.sort();
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse() {
        assert_eq!(
            parse_property("security.protocol=SASL_SSL").unwrap(),
            ("security.protocol".into(), "SASL_SSL".into())
        );
        assert_eq!(parse_property("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }

    #[test]
    fn env_properties_map_to_librdkafka_names() {
        let vars = vec![
            (
                "STREAMSCORE_KAFKA_SASL_MECHANISM".to_string(),
                "PLAIN".to_string(),
            ),
            ("STREAMSCORE_BROKERS".to_string(), "x:1".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        assert_eq!(
            properties_from_env(vars.into_iter()),
            vec![("sasl.mechanism".to_string(), "PLAIN".to_string())]
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_interval("0s").unwrap(), Duration::ZERO);
        assert!(parse_interval("soon").is_err());
    }
}
