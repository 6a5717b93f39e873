//! Why a feedback record is not learned from: the reason code and detail its dead letter
//! carries (the same headers as a scoring input's, see README "Dead letters").
//!
//! Decoding takes the fast path first (one `serde` pass into `FeedbackEvent`); only a record
//! that fails it is parsed again, loosely, to say which field is wrong.

use serde_json::Value;

use super::state::FeedbackEvent;
use crate::model::Recommender;

/// A stable code per way a feedback record can be unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackReason {
    Empty,
    TooLarge,
    NotUtf8,
    InvalidJson,
    NotObject,
    DuplicateField,
    UnknownField,
    MissingUid,
    InvalidUid,
    MissingItem,
    InvalidItem,
    InvalidRating,
    RatingOutOfRange,
    UnknownItem,
}

impl FeedbackReason {
    pub const ALL: [FeedbackReason; 14] = [
        FeedbackReason::Empty,
        FeedbackReason::TooLarge,
        FeedbackReason::NotUtf8,
        FeedbackReason::InvalidJson,
        FeedbackReason::NotObject,
        FeedbackReason::DuplicateField,
        FeedbackReason::UnknownField,
        FeedbackReason::MissingUid,
        FeedbackReason::InvalidUid,
        FeedbackReason::MissingItem,
        FeedbackReason::InvalidItem,
        FeedbackReason::InvalidRating,
        FeedbackReason::RatingOutOfRange,
        FeedbackReason::UnknownItem,
    ];

    /// The `streamscore.reason` header; shared codes mean what they mean for scoring input.
    pub fn code(self) -> &'static str {
        match self {
            FeedbackReason::Empty => "empty",
            FeedbackReason::TooLarge => "too_large",
            FeedbackReason::NotUtf8 => "not_utf8",
            FeedbackReason::InvalidJson => "invalid_json",
            FeedbackReason::NotObject => "not_object",
            FeedbackReason::DuplicateField => "duplicate_field",
            FeedbackReason::UnknownField => "unknown_field",
            FeedbackReason::MissingUid => "missing_uid",
            FeedbackReason::InvalidUid => "invalid_uid",
            FeedbackReason::MissingItem => "missing_item",
            FeedbackReason::InvalidItem => "invalid_item",
            FeedbackReason::InvalidRating => "invalid_rating",
            FeedbackReason::RatingOutOfRange => "rating_out_of_range",
            FeedbackReason::UnknownItem => "unknown_item",
        }
    }
}

/// A feedback record refused, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: FeedbackReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: FeedbackReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Decodes one feedback record's value (`None`: the record has none), at most `max_bytes`.
pub fn decode(payload: Option<&[u8]>, max_bytes: usize) -> Result<FeedbackEvent, Rejection> {
    let payload = match payload {
        Some(p) if !p.is_empty() => p,
        _ => return Err(Rejection::new(FeedbackReason::Empty, "no value")),
    };
    if payload.len() > max_bytes {
        return Err(Rejection::new(
            FeedbackReason::TooLarge,
            format!("{} bytes, over the limit of {max_bytes}", payload.len()),
        ));
    }
    // `serde` would also take a struct from an array (`[196, 242]`): only an object is one.
    let is_object = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    let event = match serde_json::from_slice::<FeedbackEvent>(payload) {
        Ok(event) if is_object => event,
        Ok(_) => {
            return Err(Rejection::new(
                FeedbackReason::NotObject,
                "JSON, but not an object",
            ))
        }
        Err(e) => return Err(explain(payload, &e)),
    };
    if event.rating.is_some_and(|r| !r.is_finite()) {
        return Err(Rejection::new(
            FeedbackReason::InvalidRating,
            "`rating` overflows a number",
        ));
    }
    Ok(event)
}

/// Says what is wrong with a record the strict decoder refused.
fn explain(payload: &[u8], strict: &serde_json::Error) -> Rejection {
    use FeedbackReason as R;
    let Ok(text) = std::str::from_utf8(payload) else {
        return Rejection::new(R::NotUtf8, "the value is not UTF-8");
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Rejection::new(R::InvalidJson, format!("not JSON: {e}")),
    };
    let Value::Object(fields) = value else {
        return Rejection::new(R::NotObject, "JSON, but not an object");
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "uid" | "item" | "rating"))
    {
        return Rejection::new(
            R::UnknownField,
            format!("field `{unknown}`: a feedback event has uid, item and rating only"),
        );
    }
    let integer =
        |name: &str, missing: FeedbackReason, invalid: FeedbackReason| match fields.get(name) {
            None => Some(Rejection::new(missing, format!("no `{name}`"))),
            Some(v) if v.as_i64().is_none() => Some(Rejection::new(
                invalid,
                format!("`{name}` must be an integer, found {v}"),
            )),
            Some(_) => None,
        };
    if let Some(r) = integer("uid", R::MissingUid, R::InvalidUid) {
        return r;
    }
    if let Some(r) = integer("item", R::MissingItem, R::InvalidItem) {
        return r;
    }
    match fields.get("rating") {
        Some(Value::Number(n)) if !n.as_f64().is_some_and(|r| (r as f32).is_finite()) => {
            return Rejection::new(R::InvalidRating, format!("`rating` {n} overflows a number"))
        }
        Some(Value::Null) | None | Some(Value::Number(_)) => {}
        Some(v) => {
            return Rejection::new(
                R::InvalidRating,
                format!("`rating` must be a number or absent, found {v}"),
            )
        }
    }
    // Loosely fine, strictly not: a field given twice (the loose parse keeps the last).
    Rejection::new(R::DuplicateField, format!("{strict}"))
}

/// Refuses an event the served model cannot learn from: a rating outside `range`, or an
/// item the model does not have (new items arrive with a retrain, which carries their
/// ratings).
pub fn check(
    event: &FeedbackEvent,
    model: &Recommender,
    range: (f32, f32),
) -> Result<(), Rejection> {
    if let Some(r) = event.rating {
        if !(range.0..=range.1).contains(&r) {
            return Err(Rejection::new(
                FeedbackReason::RatingOutOfRange,
                format!("`rating` {r} is outside {}..{}", range.0, range.1),
            ));
        }
    }
    if model.item_index(event.item).is_none() {
        return Err(Rejection::new(
            FeedbackReason::UnknownItem,
            format!("item {} is not in the served model", event.item),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unusable_record_gets_its_own_reason() {
        use FeedbackReason as R;
        let too_large = [b' '; 2000];
        let cases: [(Option<&[u8]>, FeedbackReason); 18] = [
            (None, R::Empty),
            (Some(b""), R::Empty),
            (Some(&too_large), R::TooLarge),
            (Some(b"{\"uid\": \"\xff\"}"), R::NotUtf8),
            (Some(b"not json"), R::InvalidJson),
            (Some(br#"{"uid": 1, "item": 2"#), R::InvalidJson),
            (Some(b"[1, 2]"), R::NotObject),
            (
                Some(br#"{"uid": 1, "uid": 2, "item": 2}"#),
                R::DuplicateField,
            ),
            (
                Some(br#"{"uid": 1, "item": 2, "extra": 1}"#),
                R::UnknownField,
            ),
            (Some(br#"{"item": 2}"#), R::MissingUid),
            (Some(br#"{"uid": "196", "item": 1}"#), R::InvalidUid),
            (Some(br#"{"uid": 1.5, "item": 1}"#), R::InvalidUid),
            (Some(br#"{"uid": 196}"#), R::MissingItem),
            (Some(br#"{"uid": 1, "item": [2]}"#), R::InvalidItem),
            (
                Some(br#"{"uid": 1, "item": 2, "rating": "5"}"#),
                R::InvalidRating,
            ),
            (
                Some(br#"{"uid": 1, "item": 2, "rating": 1e39}"#),
                R::InvalidRating,
            ),
            (
                Some(br#"{"uid": 1, "item": 2, "rating": true}"#),
                R::InvalidRating,
            ),
            (Some(b"17"), R::NotObject),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(payload, want)| {
                let got = decode(*payload, 1024).map_err(|r| r.reason);
                (got != Err(*want)).then(|| {
                    let shown = payload.map(String::from_utf8_lossy);
                    format!("{shown:?}: {got:?}, want {want:?}")
                })
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Every code is distinct: a dead letter's reason names one cause.
        let codes: std::collections::HashSet<&str> =
            FeedbackReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), FeedbackReason::ALL.len());
    }

    #[test]
    fn good_records_decode() {
        assert_eq!(
            decode(Some(br#"{"uid": 196, "item": 242, "rating": 3.5}"#), 1024),
            Ok(FeedbackEvent {
                uid: 196,
                item: 242,
                rating: Some(3.5)
            })
        );
        assert_eq!(
            decode(Some(br#"{"uid": 196, "item": 242, "rating": null}"#), 1024).map(|e| e.rating),
            Ok(None)
        );
    }
}
