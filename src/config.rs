//! Service configuration: flags, `STREAMSCORE_*` environment variables, and librdkafka
//! properties passed through verbatim.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pipeline::Guarantee;
use crate::record::DEFAULT_MAX_RECORD_BYTES;

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
    pub online: OnlineArgs,
}

/// Online learning from a feedback topic (recommender models only).
#[derive(clap::Args, Debug, Clone)]
pub struct OnlineArgs {
    /// Topic of ratings (`{"uid": 196, "item": 242, "rating": 3.5}`) and implicit events
    /// (`{"uid": 196, "item": 242}`) to fold into the recommender as they arrive; key them
    /// by user so that each user's events stay in order.
    #[arg(long, env = "STREAMSCORE_FEEDBACK_TOPIC")]
    pub feedback_topic: Option<String>,
    /// Directory of the learned state's checkpoint (`online-state.json`).
    #[arg(long, env = "STREAMSCORE_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// How often the learned state and its feedback offsets are checkpointed.
    #[arg(long, env = "STREAMSCORE_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    /// Users whose learned state is kept; the least recently updated is forgotten beyond it.
    #[arg(long, env = "STREAMSCORE_ONLINE_MAX_USERS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub online_max_users: u32,
    /// Feedback events kept per user (the oldest is forgotten beyond it).
    #[arg(long, env = "STREAMSCORE_ONLINE_MAX_EVENTS_PER_USER", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub online_max_events_per_user: u32,
    /// λ, the regularisation of a user's fold-in (least squares with item factors fixed).
    #[arg(long, env = "STREAMSCORE_ONLINE_REG", default_value_t = crate::online::OnlineConfig::default().reg, value_parser = parse_positive)]
    pub online_reg: f64,
    /// An implicit event counts as a rating this far above the model's mean rating.
    #[arg(long, env = "STREAMSCORE_IMPLICIT_BOOST", default_value_t = 1.0)]
    pub implicit_boost: f32,
}

impl OnlineArgs {
    pub fn feedback_config(&self) -> Option<crate::online::feedback::FeedbackConfig> {
        let topic = self.feedback_topic.clone().filter(|t| !t.is_empty())?;
        Some(crate::online::feedback::FeedbackConfig {
            topic,
            state_dir: self.state_dir.clone(),
            checkpoint_interval: self.checkpoint_interval,
            online: crate::online::OnlineConfig {
                reg: self.online_reg,
                implicit_boost: self.implicit_boost,
                max_users: self.online_max_users as usize,
                max_events_per_user: self.online_max_events_per_user as usize,
            },
        })
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number above zero, got {s:?}")),
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
