//! Record schemas: what the service reads, what it writes, and why it refuses a record.

pub mod decode;
pub mod decode_ensemble;
pub mod decode_pmml;
pub mod encode;
pub mod headers;
pub mod registry;
pub mod trace;

use std::fmt;

/// Default ceiling on one input record; larger ones are dead-lettered unread.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Why a record was dead-lettered. The code is the `__streams.errors.exception` header value, a
/// stable identifier for alerting and replay tooling; the detail is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No value at all, or a zero-length one.
    Empty,
    TooLarge,
    NotUtf8,
    InvalidJson,
    NotObject,
    DuplicateField,
    MissingFeature,
    NonNumericFeature,
    NonFiniteFeature,
    MissingUid,
    InvalidUid,
    InvalidCount,
    /// A value outside what a PMML model declares valid (and told to refuse).
    InvalidValue,
    /// A PMML model that gives no prediction for the record (a missing value it cannot route).
    NoPrediction,
    /// The broker refused the record's output for good (too large, invalid for the topic),
    /// even after re-sending: the input is named, not carried (see README: poison records).
    Undeliverable,
    /// A Schema Registry input that does not start with the Confluent wire format's magic
    /// byte and schema id.
    NotFramed,
    /// The registry does not know the record's schema id (HTTP 404).
    UnknownSchema,
    /// The registry could not be asked (refused, timed out, 5xx, auth refused) for a schema
    /// id this instance has not cached yet.
    RegistryUnavailable,
    /// The record does not decode with (or validate against) its registered schema, or its
    /// schema is of another type than `--input-format`.
    SchemaMismatch,
    /// The prediction does not fit the output schema (`--output-schema`).
    OutputSchemaMismatch,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::Empty,
        Reason::TooLarge,
        Reason::NotUtf8,
        Reason::InvalidJson,
        Reason::NotObject,
        Reason::DuplicateField,
        Reason::MissingFeature,
        Reason::NonNumericFeature,
        Reason::NonFiniteFeature,
        Reason::MissingUid,
        Reason::InvalidUid,
        Reason::InvalidCount,
        Reason::InvalidValue,
        Reason::NoPrediction,
        Reason::Undeliverable,
        Reason::NotFramed,
        Reason::UnknownSchema,
        Reason::RegistryUnavailable,
        Reason::SchemaMismatch,
        Reason::OutputSchemaMismatch,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::NotUtf8 => "not_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotObject => "not_object",
            Reason::DuplicateField => "duplicate_field",
            Reason::MissingFeature => "missing_feature",
            Reason::NonNumericFeature => "non_numeric_feature",
            Reason::NonFiniteFeature => "non_finite_feature",
            Reason::MissingUid => "missing_uid",
            Reason::InvalidUid => "invalid_uid",
            Reason::InvalidCount => "invalid_n",
            Reason::InvalidValue => "invalid_value",
            Reason::NoPrediction => "no_prediction",
            Reason::Undeliverable => "undeliverable",
            Reason::NotFramed => "not_framed",
            Reason::UnknownSchema => "unknown_schema",
            Reason::RegistryUnavailable => "registry_unavailable",
            Reason::SchemaMismatch => "schema_mismatch",
            Reason::OutputSchemaMismatch => "output_schema_mismatch",
        }
    }

    /// The reason with this stable code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Where an input record came from; carried into its output so results can be traced back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePosition {
    pub partition: i32,
    pub offset: i64,
}
