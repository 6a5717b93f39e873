//! Service configuration: flags, `STREAMSCORE_*` environment variables, and librdkafka
//! properties passed through verbatim.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::pipeline::Guarantee;
use crate::record::registry::output::default_schema;
use crate::record::registry::{
    InputFormat, OutputFormat, OutputSchema, RecordFormat, RegistrySettings,
};
use crate::record::DEFAULT_MAX_RECORD_BYTES;
use crate::stats::{StatsConfig, StatsTime};

/// Prefix of environment variables that become librdkafka properties:
/// `STREAMSCORE_KAFKA_SECURITY_PROTOCOL=SASL_SSL` → `security.protocol=SASL_SSL`.
pub const KAFKA_ENV_PREFIX: &str = "STREAMSCORE_KAFKA_";

/// Environment variable holding the SASL password, for platforms that inject secrets as
/// variables; it is never a flag, so that it stays out of `ps` and shell history.
pub const SASL_PASSWORD_ENV: &str = "STREAMSCORE_SASL_PASSWORD";

#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "STREAMSCORE_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// How to reach the brokers. Defaults to SASL_SSL when a SASL mechanism is given, SSL
    /// when only TLS files are, else PLAINTEXT.
    #[arg(long, env = "STREAMSCORE_SECURITY_PROTOCOL", value_enum)]
    pub security_protocol: Option<SecurityProtocol>,
    /// PEM file of the CA certificate(s) that signed the brokers' certificates (default:
    /// the system's trust store).
    #[arg(long, env = "STREAMSCORE_SSL_CA")]
    pub ssl_ca: Option<PathBuf>,
    /// PEM client certificate, for brokers that require mutual TLS.
    #[arg(long, env = "STREAMSCORE_SSL_CERT", requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "STREAMSCORE_SSL_KEY", requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    #[arg(long, env = "STREAMSCORE_SASL_MECHANISM", value_enum)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[arg(long, env = "STREAMSCORE_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// File holding the SASL password (a mounted Secret); `STREAMSCORE_SASL_PASSWORD` is
    /// the alternative.
    #[arg(long, env = "STREAMSCORE_SASL_PASSWORD_FILE")]
    pub sasl_password_file: Option<PathBuf>,
    /// librdkafka property for both the consumer and the producer, as in kcat (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "OAUTHBEARER")]
    OauthBearer,
}

impl KafkaArgs {
    /// The connection flags as librdkafka properties, then `STREAMSCORE_KAFKA_*` variables,
    /// then `-X` flags: later ones win, so `-X` can override anything.
    pub fn all_properties(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut props = self.connection_properties(std::env::var(SASL_PASSWORD_ENV).ok())?;
        props.extend(properties_from_env(std::env::vars()));
        props.extend(self.properties.iter().cloned());
        Ok(props)
    }

    fn connection_properties(
        &self,
        password_from_env: Option<String>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        use anyhow::Context;
        let mut props = Vec::new();
        let mut set = |key: &str, value: String| props.push((key.to_owned(), value));
        let tls_files = self.ssl_ca.is_some() || self.ssl_cert.is_some();
        let protocol = self
            .security_protocol
            .or(match (self.sasl_mechanism, tls_files) {
                (Some(_), _) => Some(SecurityProtocol::SaslSsl),
                (None, true) => Some(SecurityProtocol::Ssl),
                (None, false) => None,
            });
        if let Some(protocol) = protocol {
            set("security.protocol", protocol.librdkafka_name().to_owned());
        }
        for (key, path) in [
            ("ssl.ca.location", &self.ssl_ca),
            ("ssl.certificate.location", &self.ssl_cert),
            ("ssl.key.location", &self.ssl_key),
        ] {
            if let Some(path) = path {
                set(key, path.display().to_string());
            }
        }
        if let Some(mechanism) = self.sasl_mechanism {
            set("sasl.mechanism", mechanism.librdkafka_name().to_owned());
        }
        if let Some(user) = &self.sasl_username {
            set("sasl.username", user.clone());
        }
        let password = match &self.sasl_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the SASL password file {}", path.display()))?
                    // A Secret written with `echo` ends in a newline that is not the password.
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => password_from_env,
        };
        if let Some(password) = password {
            set("sasl.password", password);
        }
        Ok(props)
    }
}

impl SecurityProtocol {
    fn librdkafka_name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }
}

impl SaslMechanism {
    fn librdkafka_name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
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
    /// Consumer group protocol. `classic` (JoinGroup/SyncGroup, every Kafka) with the
    /// cooperative-sticky assignor, so a scale step moves only the partitions that change
    /// owner; or `consumer` (KIP-848, Apache Kafka 4.0+), where the broker assigns and sets
    /// the session timeout and heartbeat interval.
    #[arg(long, env = "STREAMSCORE_GROUP_PROTOCOL", value_enum, default_value_t = GroupProtocol::Classic)]
    pub group_protocol: GroupProtocol,
    /// Address of the HTTP side port (health, readiness, metrics, model admin).
    #[arg(long, env = "STREAMSCORE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub observe: ObserveArgs,
    #[command(flatten)]
    pub online: OnlineArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Environment variable holding the Schema Registry password (Confluent Cloud: the API
/// secret), when no password file is given; never a flag.
pub const REGISTRY_PASSWORD_ENV: &str = "STREAMSCORE_SCHEMA_REGISTRY_PASSWORD";

/// Schema Registry input and output (see README: Schema Registry).
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Schema Registry base URL (Confluent, Karapace, Redpanda), e.g. http://registry:8081.
    #[arg(long, env = "STREAMSCORE_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,
    /// Basic-auth user for the registry (Confluent Cloud: the API key).
    #[arg(
        long,
        env = "STREAMSCORE_SCHEMA_REGISTRY_USER",
        requires = "schema_registry"
    )]
    pub schema_registry_user: Option<String>,
    /// File holding the registry password (else `STREAMSCORE_SCHEMA_REGISTRY_PASSWORD`).
    #[arg(
        long,
        env = "STREAMSCORE_SCHEMA_REGISTRY_PASSWORD_FILE",
        requires = "schema_registry_user"
    )]
    pub schema_registry_password_file: Option<PathBuf>,
    /// Bound on one registry call (connect and read); only a schema id's first record waits.
    #[arg(long, env = "STREAMSCORE_SCHEMA_REGISTRY_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub schema_registry_timeout: Duration,
    /// How input values are framed.
    #[arg(long, env = "STREAMSCORE_INPUT_FORMAT", value_enum, default_value_t)]
    pub input_format: InputFormat,
    /// How output values are framed.
    #[arg(long, env = "STREAMSCORE_OUTPUT_FORMAT", value_enum, default_value_t)]
    pub output_format: OutputFormat,
    /// Subject the output schema is registered under (default: `<output-topic>-value`).
    #[arg(
        long,
        env = "STREAMSCORE_OUTPUT_SUBJECT",
        conflicts_with = "output_schema_id"
    )]
    pub output_subject: Option<String>,
    /// Schema file to register for the output, in the output format's language (`.avsc`,
    /// JSON Schema, `.proto`); default: the built-in prediction schema of that format.
    #[arg(
        long,
        env = "STREAMSCORE_OUTPUT_SCHEMA",
        conflicts_with = "output_schema_id"
    )]
    pub output_schema: Option<PathBuf>,
    /// An already registered output schema id, instead of registering one (Avro, JSON Schema).
    #[arg(long, env = "STREAMSCORE_OUTPUT_SCHEMA_ID")]
    pub output_schema_id: Option<u32>,
    /// The Protobuf message to write, e.g. `streamscore.Prediction` (default: the first).
    #[arg(long, env = "STREAMSCORE_OUTPUT_MESSAGE")]
    pub output_message: Option<String>,
}

impl RegistryArgs {
    pub fn record_format(
        &self,
        output_topic: &str,
        password_from_env: Option<String>,
    ) -> anyhow::Result<RecordFormat> {
        let format = RecordFormat {
            input: self.input_format,
            output: self.output_format,
            registry: None,
            output_schema: None,
            output_message: None,
        };
        if format.is_json() {
            return Ok(format);
        }
        let Some(url) = &self.schema_registry else {
            anyhow::bail!(
                "--input-format/--output-format other than json need --schema-registry URL"
            );
        };
        let password = match &self.schema_registry_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| {
                        format!(
                            "reading the schema registry password file {}",
                            path.display()
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => password_from_env,
        };
        let basic_auth = self
            .schema_registry_user
            .clone()
            .map(|user| (user, password.unwrap_or_default()));
        let output_schema = match (default_schema(self.output_format), self.output_schema_id) {
            (None, _) => None,
            (Some(_), Some(id)) => Some(OutputSchema::Id(id)),
            (Some(default), None) => Some(OutputSchema::Register {
                subject: self
                    .output_subject
                    .clone()
                    .unwrap_or_else(|| format!("{output_topic}-value")),
                schema: match &self.output_schema {
                    Some(path) => std::fs::read_to_string(path)
                        .with_context(|| format!("reading the output schema {}", path.display()))?,
                    None => default.to_owned(),
                },
            }),
        };
        Ok(RecordFormat {
            registry: Some(RegistrySettings {
                url: url.trim_end_matches('/').to_owned(),
                basic_auth,
                timeout: self.schema_registry_timeout,
            }),
            output_schema,
            output_message: self.output_message.clone(),
            ..format
        })
    }
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
    /// Lowest rating a feedback event may carry (below: dead-lettered, `rating_out_of_range`).
    #[arg(
        long,
        env = "STREAMSCORE_FEEDBACK_MIN_RATING",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub feedback_min_rating: f32,
    /// Highest rating a feedback event may carry.
    #[arg(
        long,
        env = "STREAMSCORE_FEEDBACK_MAX_RATING",
        default_value_t = 5.0,
        allow_negative_numbers = true
    )]
    pub feedback_max_rating: f32,
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
                rating_range: (self.feedback_min_rating, self.feedback_max_rating),
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
    pub fn pipeline_config(&self) -> anyhow::Result<crate::pipeline::PipelineConfig> {
        let instance_id = self
            .instance_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        if self.registry.input_format != InputFormat::Json && self.observe.shadow_model.is_some() {
            // The shadow model re-reads the consumed values, which would be framed bytes.
            anyhow::bail!("--shadow-model reads JSON input only; it cannot be combined with --input-format {:?}", self.registry.input_format);
        }
        Ok(crate::pipeline::PipelineConfig {
            brokers: self.kafka.brokers.clone(),
            properties: self.kafka.all_properties()?,
            consumer_properties: instance_id
                .map(|id| ("group.instance.id".to_owned(), id.to_owned()))
                .into_iter()
                .chain([(
                    GROUP_PROTOCOL.to_owned(),
                    self.group_protocol.librdkafka_name().to_owned(),
                )])
                .collect(),
            input_topic: self.input_topic.clone(),
            output_topic: self.output_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            group: self.group.clone(),
            batch_interval: self.batch_interval,
            max_batch: self.max_batch as usize,
            max_batch_bytes: self.max_batch_bytes,
            max_record_bytes: self.max_record_bytes,
            format: self.registry.record_format(
                &self.output_topic,
                std::env::var(REGISTRY_PASSWORD_ENV).ok(),
            )?,
            guarantee: match self.guarantee {
                GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
                GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce {
                    transactional_id: self.transactional_id.clone().unwrap_or_else(|| {
                        default_transactional_id(&self.group, instance_id, hostname())
                    }),
                },
            },
        })
    }
}

impl ServeArgs {
    /// The name this instance's statistics windows carry: stable across restarts.
    pub fn instance(&self) -> String {
        let name = self
            .instance_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .or_else(hostname)
            .unwrap_or_else(|| "streamscore".to_owned());
        format!("{}-{name}", self.group)
    }
}

const GROUP_PROTOCOL: &str = "group.protocol";

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    Classic,
    Consumer,
}

impl GroupProtocol {
    fn librdkafka_name(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }

    /// The protocol these settings ask for: the last `group.protocol` wins, as in librdkafka;
    /// librdkafka's own default is classic.
    pub fn of<'a>(settings: impl IntoIterator<Item = &'a (String, String)>) -> Self {
        let chosen = settings
            .into_iter()
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(GROUP_PROTOCOL))
            .last();
        match chosen {
            Some((_, v)) if v.trim().eq_ignore_ascii_case("consumer") => GroupProtocol::Consumer,
            _ => GroupProtocol::Classic,
        }
    }
}

/// Settings the KIP-848 protocol moves to the broker; librdkafka refuses them with it.
const CLASSIC_ONLY: [(&str, &str); 4] = [
    (
        "session.timeout.ms",
        "the broker sets it (group.consumer.session.timeout.ms)",
    ),
    (
        "heartbeat.interval.ms",
        "the broker sets it (group.consumer.heartbeat.interval.ms)",
    ),
    (
        "partition.assignment.strategy",
        "the broker assigns; choose its assignor with -X group.remote.assignor=uniform|range",
    ),
    ("group.protocol.type", "it belongs to the classic protocol"),
];

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
    for (key, _) in &config.properties {
        if key.trim().eq_ignore_ascii_case(GROUP_PROTOCOL) {
            anyhow::bail!("-X {GROUP_PROTOCOL} is refused: use --group-protocol classic|consumer");
        }
    }
    if GroupProtocol::of(config.properties.iter().chain(&config.consumer_properties))
        == GroupProtocol::Consumer
    {
        for (key, value) in &config.properties {
            let key = key.trim().to_ascii_lowercase();
            if let Some((_, why)) = CLASSIC_ONLY.iter().find(|(k, _)| *k == key) {
                anyhow::bail!(
                    "-X {key}={value} is refused with --group-protocol consumer (KIP-848): {why}; \
                     drop it, or use --group-protocol classic"
                );
            }
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

pub fn parse_interval(s: &str) -> Result<Duration, String> {
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

    #[derive(clap::Parser)]
    struct KafkaCli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn connection(args: &[&str], password_env: Option<&str>) -> Vec<(String, String)> {
        use clap::Parser;
        let cli =
            KafkaCli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        cli.kafka
            .connection_properties(password_env.map(str::to_owned))
            .unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sasl_flags_become_librdkafka_properties_with_sasl_ssl_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let secret = secret.display().to_string();
        assert_eq!(
            connection(
                &[
                    "--sasl-mechanism",
                    "SCRAM-SHA-512",
                    "--sasl-username",
                    "svc",
                    "--sasl-password-file",
                    &secret,
                ],
                Some("from-env"),
            ),
            pairs(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "svc"),
                ("sasl.password", "s3cret"),
            ])
        );
        assert_eq!(
            connection(
                &["--sasl-mechanism", "PLAIN", "--sasl-username", "k"],
                Some("p")
            ),
            pairs(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "k"),
                ("sasl.password", "p"),
            ])
        );
    }

    #[test]
    fn tls_files_imply_ssl_and_an_explicit_protocol_wins() {
        assert_eq!(
            connection(
                &[
                    "--ssl-ca",
                    "/ca.pem",
                    "--ssl-cert",
                    "/c.pem",
                    "--ssl-key",
                    "/c.key"
                ],
                None
            ),
            pairs(&[
                ("security.protocol", "SSL"),
                ("ssl.ca.location", "/ca.pem"),
                ("ssl.certificate.location", "/c.pem"),
                ("ssl.key.location", "/c.key"),
            ])
        );
        assert_eq!(
            connection(
                &[
                    "--security-protocol",
                    "SASL_PLAINTEXT",
                    "--sasl-mechanism",
                    "PLAIN"
                ],
                None
            ),
            pairs(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "PLAIN"),
            ])
        );
        assert!(connection(&[], Some("unused"))
            .iter()
            .all(|(k, _)| k == "sasl.password"));
    }

    #[test]
    fn a_missing_password_file_is_a_clear_error_and_bad_values_are_refused() {
        use clap::Parser;
        let cli =
            KafkaCli::try_parse_from(["x", "--sasl-password-file", "/nonexistent/pw"]).unwrap();
        let err = cli.kafka.connection_properties(None).unwrap_err();
        assert!(format!("{err:#}").contains("SASL password file"), "{err:#}");
        assert!(KafkaCli::try_parse_from(["x", "--sasl-mechanism", "GSSAPI"]).is_err());
        assert!(KafkaCli::try_parse_from(["x", "--ssl-cert", "/c.pem"]).is_err());
    }

    fn pipeline(properties: &[(&str, &str)], input: &str) -> crate::pipeline::PipelineConfig {
        let args = ServeArgs::try_parse_from(["serve", "--input-topic", input]).unwrap();
        let mut config = args.pipeline_config().unwrap();
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
    fn registry_formats_need_a_registry_and_default_the_output_subject() {
        use crate::record::registry::{InputFormat, OutputFormat, OutputSchema};
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
                .map(|c| c.serve)
        };
        let json = parse(&[]).unwrap().pipeline_config().unwrap();
        assert!(json.format.is_json() && json.format.registry.is_none());
        let err = parse(&["--input-format", "avro"])
            .unwrap()
            .pipeline_config()
            .unwrap_err();
        assert!(format!("{err:#}").contains("--schema-registry"), "{err:#}");

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("sr-password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let config = parse(&[
            "--schema-registry",
            "http://sr:8081/",
            "--schema-registry-user",
            "key",
            "--schema-registry-password-file",
            secret.to_str().unwrap(),
            "--input-format",
            "protobuf",
            "--output-format",
            "avro",
            "--output-topic",
            "scores",
        ])
        .unwrap()
        .pipeline_config()
        .unwrap();
        let format = config.format;
        assert_eq!(
            (format.input, format.output),
            (InputFormat::Protobuf, OutputFormat::Avro)
        );
        let registry = format.registry.unwrap();
        assert_eq!(registry.url, "http://sr:8081");
        assert_eq!(registry.basic_auth, Some(("key".into(), "s3cret".into())));
        assert!(
            !format!("{registry:?}").contains("s3cret"),
            "the password is not printed"
        );
        match format.output_schema {
            Some(OutputSchema::Register { subject, schema }) => {
                assert_eq!(subject, "scores-value");
                assert!(schema.contains("\"Prediction\""));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["--output-subject", "a", "--output-schema-id", "3"]).is_err());

        // Each registry output format registers its own built-in schema by default.
        let output = |args: &[&str]| {
            let base = [
                "--schema-registry",
                "http://sr:8081",
                "--output-topic",
                "scores",
            ];
            parse(&[&base[..], args].concat())
                .unwrap()
                .pipeline_config()
                .unwrap()
                .format
        };
        let proto = output(&["--output-format", "protobuf", "--output-message", "P"]);
        assert_eq!(proto.output_message.as_deref(), Some("P"));
        match proto.output_schema {
            Some(OutputSchema::Register { schema, .. }) => {
                assert!(schema.contains("message Prediction"))
            }
            other => panic!("{other:?}"),
        }
        match output(&["--output-format", "json-schema"]).output_schema {
            Some(OutputSchema::Register { schema, .. }) => {
                assert!(schema.contains("streamscore.Prediction"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            output(&["--output-format", "json-schema", "--output-schema-id", "4"]).output_schema,
            Some(OutputSchema::Id(4))
        ));
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
    fn the_group_protocol_is_a_flag_and_kip848_refuses_the_settings_it_moves_to_the_broker() {
        use clap::Parser;
        let classic = Cli::try_parse_from(["serve"]).unwrap();
        let mut classic = classic.serve.pipeline_config().unwrap();
        assert_eq!(
            classic.consumer_properties,
            vec![("group.protocol".to_string(), "classic".to_string())]
        );
        classic.properties = vec![("session.timeout.ms".into(), "6000".into())];
        refuse_unsafe_settings(&classic).unwrap();

        let cli = Cli::try_parse_from(["serve", "--group-protocol", "consumer"]).unwrap();
        let kip848 = cli.serve.pipeline_config().unwrap();
        assert_eq!(
            GroupProtocol::of(&kip848.consumer_properties),
            GroupProtocol::Consumer
        );
        refuse_unsafe_settings(&kip848).unwrap();
        for key in [
            "session.timeout.ms",
            "Heartbeat.Interval.Ms",
            "partition.assignment.strategy",
            "group.protocol.type",
        ] {
            let mut config = kip848.clone();
            config.properties = vec![(key.into(), "1".into())];
            let err = refuse_unsafe_settings(&config).unwrap_err().to_string();
            assert!(
                err.contains(&key.to_ascii_lowercase())
                    && err.contains("--group-protocol consumer"),
                "{err}"
            );
        }
        // One way to choose it: a -X that disagreed with the flag would win silently.
        let mut config = kip848.clone();
        config.properties = vec![("group.protocol".into(), "classic".into())];
        let err = refuse_unsafe_settings(&config).unwrap_err().to_string();
        assert!(err.contains("use --group-protocol"), "{err}");
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
            cli.serve.pipeline_config().unwrap().consumer_properties[0],
            ("group.instance.id".to_string(), "streamscore-2".to_string())
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
