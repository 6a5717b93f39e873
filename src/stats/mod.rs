//! Windowed statistics of the prediction stream, input drift, and the live figures behind
//! the status page.
//!
//! - `window`: sliding windows (length, slide) over processing or event time, each emitted
//!   once;
//! - `drift`: reference histograms per input feature and the population stability index;
//! - `tally`: what one pane of a window counts;
//! - `observe`: the hook the delivery loops call once per batch, and the figures it keeps;
//! - `emit`: the thread that closes windows and writes them to the stats topic, and the
//!   read-back that lets a restart carry on after the last window emitted.

pub mod drift;
pub mod emit;
pub mod observe;
pub mod tally;
pub mod window;

use std::time::Duration;

pub use observe::Observer;
use window::{TimeBasis, WindowSpec};

/// `--stats-*` settings.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Off: no windows, drift or label figures (the status page keeps rates and timing).
    pub enabled: bool,
    pub window: WindowSpec,
    pub basis: TimeBasis,
    /// Where each closed window is written as one JSON record; none: `/status` only.
    pub topic: Option<String>,
    /// PSI above which a feature counts as drifted.
    pub drift_threshold: f64,
    /// Names this instance's windows on the stats topic, so that a restart finds its own.
    pub instance: String,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: WindowSpec {
                length_ms: 60_000,
                slide_ms: 10_000,
            },
            basis: TimeBasis::Processing,
            topic: None,
            drift_threshold: drift::DEFAULT_THRESHOLD,
            instance: "streamscore".into(),
        }
    }
}

/// `--stats-time`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsTime {
    /// When the service scored the record (the default).
    Processing,
    /// The record's Kafka timestamp, with `--stats-lateness` allowed.
    Event,
}

impl StatsConfig {
    pub fn from_flags(
        window: Duration,
        slide: Duration,
        time: StatsTime,
        lateness: Duration,
    ) -> Result<(WindowSpec, TimeBasis), String> {
        let spec = WindowSpec::new(window.as_millis() as i64, slide.as_millis() as i64)?;
        let basis = match time {
            StatsTime::Processing => TimeBasis::Processing,
            StatsTime::Event => TimeBasis::Event {
                lateness_ms: lateness.as_millis() as i64,
            },
        };
        Ok((spec, basis))
    }
}

/// Milliseconds since the Unix epoch, the unit of window bounds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
