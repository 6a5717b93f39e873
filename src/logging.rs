//! Log setup: human-readable by default, JSON lines for containers.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The format of the installed subscriber; unset until `init` succeeds.
static INSTALLED: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` overrides `level` with a full filter
/// (e.g. `streamscore=debug,rdkafka=info`). Logs go to stderr: stdout is for data.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("bad log level {level:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    let _ = INSTALLED.set(format);
    if format == LogFormat::Json {
        // The default hook writes a multi-line text report to stderr, which a log collector
        // reading JSON lines would split or drop — exactly the lines that matter most.
        std::panic::set_hook(Box::new(log_panic));
    }
    Ok(())
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    // Not `payload_as_str`: it is newer than the crate's rust-version.
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-string panic payload)");
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
        _ => String::new(),
    };
    tracing::error!(
        target: "panic",
        panic_message = message,
        location = location,
        thread = thread.name().unwrap_or("<unnamed>"),
        backtrace = backtrace,
        "panicked"
    );
}

/// Reports the error that ends the process. With JSON logs it is one more JSON line, so the
/// reason a container exited reaches the log collector intact; otherwise (and when no logger
/// could be installed) the usual `error: ...` line.
pub fn report_fatal(error: &anyhow::Error) {
    match INSTALLED.get() {
        Some(LogFormat::Json) => {
            tracing::error!(target: "streamscore", error = format!("{error:#}"), "exiting on an error");
        }
        _ => eprintln!("error: {error:#}"),
    }
}

/// While the broker is unreachable librdkafka reports the same error many times a second;
/// one line per kind per interval says as much without flooding the logs.
const ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs an error at most once per `ERROR_LOG_INTERVAL`, counting what it held back.
#[derive(Default)]
pub struct LogThrottle {
    state: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl LogThrottle {
    /// Returns `Some(suppressed)` when this occurrence should be logged.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match &mut *state {
            Some((since, suppressed)) if now.duration_since(*since) < ERROR_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            slot => {
                let suppressed = slot.map_or(0, |(_, n)| n);
                *slot = Some((now, 0));
                Some(suppressed)
            }
        }
    }
}
