//! The registry connection: settings for `schema_registry_converter`'s blocking client, what
//! its errors mean for a record, and the pause after the registry failed to answer.
//!
//! The crate does the HTTP and keeps its own schema caches; this module only decides which
//! dead-letter reason an error is, and keeps a registry that is down from costing a timeout
//! per record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;

use super::RegistrySettings;
use crate::record::{Reason, Rejection};

/// After the registry failed to answer, schema ids not cached yet are dead-lettered without
/// asking for this long: a registry that is down costs one timeout per pause, not one per
/// record. Ids already cached keep decoding throughout.
pub const DOWN_PAUSE: Duration = Duration::from_secs(5);
/// An id the registry said it does not know is asked about again after this long (a
/// registry restored from a backup, a replica that lagged), not on every record.
pub const UNKNOWN_RECHECK: Duration = Duration::from_secs(60);

pub fn settings(config: &RegistrySettings) -> anyhow::Result<SrSettings> {
    let mut builder = SrSettings::new_builder(config.url.clone());
    builder.set_timeout(config.timeout);
    if let Some((user, password)) = &config.basic_auth {
        builder.set_basic_authorization(user, Some(password));
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("schema registry client for {}: {e}", config.url))
}

/// The reason a registry call's error gives a record. Network failures and 502/503 are what
/// the crate calls retriable; any other non-2xx answer but 404 (500, 401, 403) also means
/// "the registry could not tell us", not "the record is wrong".
pub fn classify(error: &SRCError) -> Reason {
    const HTTP_FAILED: &str = "HTTP request to schema registry failed with status";
    if error.retriable {
        return Reason::RegistryUnavailable;
    }
    match error.error.strip_prefix(HTTP_FAILED) {
        Some(status) if status.trim_start().starts_with("404") => Reason::UnknownSchema,
        Some(_) => Reason::RegistryUnavailable,
        None => Reason::SchemaMismatch,
    }
}

/// A registry error as a record's rejection, with the crate's own words as the detail.
pub fn rejection(id: u32, error: &SRCError) -> Rejection {
    let reason = classify(error);
    let cause = error.cause.as_deref().unwrap_or("");
    let what = match reason {
        Reason::UnknownSchema => format!("schema id {id} is not in the registry"),
        Reason::RegistryUnavailable => format!("the registry did not give schema id {id}"),
        _ => format!("schema id {id}"),
    };
    Rejection::new(
        reason,
        format!("{what}: {} {cause}", error.error).trim_end(),
    )
}

/// What this instance knows about schema ids and the registry, so that only the first record
/// of an id (per pause) ever waits for HTTP.
#[derive(Debug, Default)]
pub struct IdGate {
    /// Ids that resolved: their schemas are in the crate's caches.
    known: HashMap<u32, ()>,
    /// Ids the registry said it does not know, with when to ask again.
    refused: HashMap<u32, (Instant, Rejection)>,
    /// The registry failed to answer: until when, and what it said.
    down: Option<(Instant, String)>,
    expired: bool,
}

impl IdGate {
    pub fn is_known(&self, id: u32) -> bool {
        self.known.contains_key(&id)
    }

    /// The rejection for an id that must not be asked about now, if any.
    pub fn blocked(&mut self, id: u32, now: Instant) -> Option<Rejection> {
        if let Some((until, rejection)) = self.refused.get(&id) {
            if now < *until {
                return Some(rejection.clone());
            }
            self.refused.remove(&id);
            self.expired = true;
        }
        match &self.down {
            Some((until, detail)) if now < *until => Some(Rejection::new(
                Reason::RegistryUnavailable,
                format!("schema id {id} is not cached and the registry is not answering ({detail}); asking again within {DOWN_PAUSE:?}"),
            )),
            Some(_) => {
                self.down = None;
                None
            }
            None => None,
        }
    }

    /// The id decoded: its schema is in the crate's cache from now on.
    pub fn mark_known(&mut self, id: u32) {
        self.known.insert(id, ());
    }

    /// Whether a refused id's recheck time has passed since the last call: the crate's
    /// cached errors must then be dropped for it to ask the registry again.
    pub fn take_expired(&mut self) -> bool {
        std::mem::take(&mut self.expired)
    }

    /// Records a failure seen for `id`, so that the next records of it do not ask again.
    pub fn remember(&mut self, id: u32, rejection: &Rejection, now: Instant) {
        match rejection.reason {
            Reason::RegistryUnavailable => {
                self.known.remove(&id);
                self.down = Some((now + DOWN_PAUSE, rejection.detail.clone()));
            }
            Reason::UnknownSchema => {
                self.refused
                    .insert(id, (now + UNKNOWN_RECHECK, rejection.clone()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(error: &str, retriable: bool) -> SRCError {
        SRCError::new(error, None, retriable)
    }

    #[test]
    fn errors_map_to_reasons() {
        let http = |s: &str| {
            err(
                &format!("HTTP request to schema registry failed with status {s}"),
                false,
            )
        };
        assert_eq!(classify(&http("404 Not Found")), Reason::UnknownSchema);
        assert_eq!(
            classify(&http("500 Internal Server Error")),
            Reason::RegistryUnavailable
        );
        assert_eq!(
            classify(&http("401 Unauthorized")),
            Reason::RegistryUnavailable
        );
        assert_eq!(
            classify(&err("http call to schema registry failed", true)),
            Reason::RegistryUnavailable
        );
        assert_eq!(
            classify(&err(
                "HTTP request to schema registry failed with status 503 Service Unavailable",
                true
            )),
            Reason::RegistryUnavailable
        );
        assert_eq!(
            classify(&err("could not create value from bytes", false)),
            Reason::SchemaMismatch
        );
    }

    #[test]
    fn a_down_registry_blocks_uncached_ids_for_a_pause_only() {
        let mut gate = IdGate::default();
        let t0 = Instant::now();
        gate.known.insert(1, ());
        let down = Rejection::new(Reason::RegistryUnavailable, "connection refused");
        gate.remember(2, &down, t0);
        assert!(gate.is_known(1), "a cached id is unaffected");
        let blocked = gate
            .blocked(3, t0 + Duration::from_millis(10))
            .expect("paused");
        assert_eq!(blocked.reason, Reason::RegistryUnavailable);
        assert!(
            blocked.detail.contains("connection refused"),
            "{}",
            blocked.detail
        );
        assert!(
            gate.blocked(3, t0 + DOWN_PAUSE).is_none(),
            "asks again after the pause"
        );
        assert!(gate.blocked(3, t0 + DOWN_PAUSE).is_none());
    }

    #[test]
    fn an_unknown_id_is_remembered_until_the_recheck() {
        let mut gate = IdGate::default();
        let t0 = Instant::now();
        let unknown = Rejection::new(Reason::UnknownSchema, "schema id 9 is not in the registry");
        gate.remember(9, &unknown, t0);
        assert_eq!(gate.blocked(9, t0), Some(unknown));
        assert!(
            gate.blocked(8, t0).is_none(),
            "other ids are still asked about"
        );
        assert!(!gate.take_expired());
        assert!(gate.blocked(9, t0 + UNKNOWN_RECHECK).is_none());
        assert!(
            gate.take_expired(),
            "the crate's cached 404 must be dropped now"
        );
        assert!(!gate.take_expired());
    }
}
