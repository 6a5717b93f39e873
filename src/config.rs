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
    /// fences its own zombie. Defaults to `<group>-<instance id>`, else `<group>-<hostname>`.
    #[arg(long, env = "STREAMSCORE_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// Static group membership (`group.instance.id`): a stable name per instance, such as the
    /// pod name. A restarted instance then takes its partitions back at once instead of
    /// waiting for its old session to expire, and no rebalance moves them meanwhile.
    #[arg(long, env = "STREAMSCORE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Address of the HTTP side port (health, readiness, metrics, model admin).
    #[arg(long, env = "STREAMSCORE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
}

impl ServeArgs {
    pub fn pipeline_config(&self) -> crate::pipeline::PipelineConfig {
        let instance_id = self
            .instance_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        crate::pipeline::PipelineConfig {
            brokers: self.kafka.brokers.clone(),
            properties: self.kafka.all_properties(),
            consumer_properties: instance_id
                .map(|id| vec![("group.instance.id".to_owned(), id.to_owned())])
                .unwrap_or_default(),
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
                    transactional_id: self.transactional_id.clone().unwrap_or_else(|| {
                        default_transactional_id(&self.group, instance_id, hostname())
                    }),
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

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// A transactional id that differs per instance: two instances sharing one fence each other
/// in a loop. The instance id or hostname keeps it stable across restarts (a restart fences
/// its own zombie); with neither, a random suffix at least keeps instances apart.
fn default_transactional_id(
    group: &str,
    instance_id: Option<&str>,
    host: Option<String>,
) -> String {
    if let Some(id) = instance_id.map(str::to_owned).or(host) {
        return format!("{group}-{id}");
    }
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process: enough to tell instances apart.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let suffix = hasher.finish();
    tracing::warn!(
        "no --transactional-id, --instance-id or hostname: using a random transactional id; \
         a restarted instance will not fence its predecessor"
    );
    format!("{group}-{suffix:016x}")
}

/// librdkafka settings that would silently break the delivery guarantee, refused at start-up.
/// The pipeline commits offsets itself, only after a batch's outputs are acknowledged; its
/// revoke handling and commits name one topic.
pub fn refuse_unsafe_settings(config: &crate::pipeline::PipelineConfig) -> anyhow::Result<()> {
    for (key, value) in config.properties.iter().chain(&config.consumer_properties) {
        let key = key.trim().to_ascii_lowercase();
        let off = matches!(value.trim().to_ascii_lowercase().as_str(), "false" | "0");
        match key.as_str() {
            "enable.auto.commit" | "enable.auto.offset.store" if !off => anyhow::bail!(
                "-X {key}={value} is refused: it would commit offsets of records whose outputs \
                 are not yet acknowledged (records lost on a crash); streamscore commits them \
                 itself after delivery"
            ),
            "transactional.id" => anyhow::bail!(
                "-X transactional.id is refused: use --guarantee exactly-once with \
                 --transactional-id, which also runs the transactions"
            ),
            "group.id" => anyhow::bail!("-X group.id is refused: use --group"),
            _ => {}
        }
    }
    if config.input_topic.starts_with('^') {
        anyhow::bail!(
            "the input topic {:?} is a regular expression, which is not supported: offsets, \
             revokes and rewinds are tracked for one named topic; name the topic",
            config.input_topic
        );
    }
    Ok(())
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

    fn pipeline(properties: &[(&str, &str)], input: &str) -> crate::pipeline::PipelineConfig {
        let args = ServeArgs::try_parse_from(["serve", "--input-topic", input]).unwrap();
        let mut config = args.pipeline_config();
        config.properties = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    impl ServeArgs {
        fn try_parse_from(args: [&str; 3]) -> Result<Self, clap::Error> {
            use clap::Parser;
            Cli::try_parse_from(args).map(|c| c.serve)
        }
    }

    #[test]
    fn settings_that_break_the_guarantee_are_refused() {
        for (k, v) in [
            ("enable.auto.commit", "true"),
            ("ENABLE.AUTO.COMMIT", " 1"),
            ("enable.auto.offset.store", "true"),
            ("transactional.id", "x"),
            ("group.id", "other"),
        ] {
            let err = refuse_unsafe_settings(&pipeline(&[(k, v)], "in")).unwrap_err();
            assert!(err.to_string().contains("refused"), "{k}={v}: {err}");
        }
        for (k, v) in [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "0"),
            ("linger.ms", "5"),
        ] {
            refuse_unsafe_settings(&pipeline(&[(k, v)], "in")).unwrap();
        }
        let err = refuse_unsafe_settings(&pipeline(&[], "^in-.*")).unwrap_err();
        assert!(err.to_string().contains("regular expression"), "{err}");
    }

    #[test]
    fn transactional_ids_differ_per_instance_even_without_a_hostname() {
        assert_eq!(
            default_transactional_id("g", Some("pod-0"), Some("host".into())),
            "g-pod-0"
        );
        assert_eq!(
            default_transactional_id("g", None, Some("host".into())),
            "g-host"
        );
        let a = default_transactional_id("g", None, None);
        let b = default_transactional_id("g", None, None);
        assert!(a.starts_with("g-") && a != b, "{a} {b}");
    }

    #[test]
    fn the_instance_id_becomes_static_membership() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["serve", "--instance-id", "streamscore-2"]).unwrap();
        assert_eq!(
            cli.serve.pipeline_config().consumer_properties,
            vec![("group.instance.id".to_string(), "streamscore-2".to_string())]
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
