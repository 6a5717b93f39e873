//! Header names a dead letter carries. They follow Kafka Streams' dead-letter queue (KIP-1034),
//! so tooling written for Streams' DLQs reads ours: `exception` holds our stable reason code
//! where Streams puts an exception class name, and `message` the detail for people.

pub const HEADER_REASON: &str = "__streams.errors.exception";
pub const HEADER_ERROR: &str = "__streams.errors.message";
pub const HEADER_SOURCE_TOPIC: &str = "__streams.errors.topic";
pub const HEADER_SOURCE_PARTITION: &str = "__streams.errors.partition";
pub const HEADER_SOURCE_OFFSET: &str = "__streams.errors.offset";
/// Present when the original value was too large for the dead-letter topic and was dropped;
/// KIP-1034 has no name for this, so it is ours.
pub const HEADER_PAYLOAD_OMITTED: &str = "streamscore.payload.omitted";
