//! The status page (`GET /`) and the figures behind it (`GET /status`).
//!
//! The page is one self-contained HTML document, compiled into the binary: its styles,
//! script and SVG charts are inline and it loads nothing else, so it works offline and
//! behind a port-forward (it asks for `status` relative to its own address).

use serde_json::{json, Value};

use super::state::ServiceState;
use crate::record::Reason;

pub const PAGE: &str = include_str!("status.html");

/// The `/status` document: everything the page shows.
pub fn status(state: &ServiceState) -> Value {
    let observe = &state.observe;
    let about = &observe.about;
    let metrics = &state.metrics;
    let partitions = state.assignment.partitions();
    let lag: Vec<(i32, i64)> = partitions
        .iter()
        .map(|p| {
            let records = metrics
                .consumer_lag
                .get_metric_with_label_values(&[&about.input_topic, &p.to_string()])
                .map_or(0, |g| g.get());
            (*p, records)
        })
        .collect();
    let mut doc = observe.status(&lag);
    let model = state.store.current();
    let dead_letters: serde_json::Map<String, Value> = Reason::ALL
        .iter()
        .map(|r| {
            let n = metrics
                .records_dead_lettered
                .get_metric_with_label_values(&[r.code()])
                .map_or(0, |c| c.get());
            (r.code().to_owned(), json!(n))
        })
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .collect();
    let ready = state.ready();
    let extra = json!({
        "service": {
            "guarantee": about.guarantee,
            "group": about.group,
            "input_topic": about.input_topic,
            "output_topic": about.output_topic,
            "dead_letter_topic": about.dead_letter_topic,
            "assignment": partitions,
            "ready": ready.is_ok(),
            "reason": ready.err(),
        },
        "model": {
            "kind": model.kind(),
            "version": model.version,
            "created_at": model.created_at,
            "loaded_at": crate::stats::observe::rfc3339_ms(model.loaded_at_ms),
            "classes": model.meta.classes,
            "features": model.meta.features,
        },
        "counters": {
            "records_in": metrics.records_in.get(),
            "records_out": metrics.records_out.get(),
            "dead_letters": dead_letters.values().filter_map(Value::as_u64).sum::<u64>(),
            "batches": metrics.batches.get(),
        },
        "dead_letters": dead_letters,
        "shadow": observe.shadow.status(),
    });
    if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
        doc.extend(extra);
    }
    doc
}
