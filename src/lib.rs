//! streamscore: a Kafka-to-Kafka scoring service.
//!
//! Records flow `pipeline::source` → `pipeline::batch` → `transform` (decode, score, encode)
//! → `pipeline::sink`, and a batch's offsets are committed only after every record it
//! produced has been acknowledged. See README.md for the picture.

pub mod bench;
pub mod config;
pub mod demo;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod online;
pub mod openscoring;
pub mod pipeline;
pub mod record;
pub mod score;
pub mod service;
pub mod shadow;
pub mod stats;
/// The side port, where the rest of the crate has always found it.
pub use service::http;
pub mod train;
pub mod transform;
