//! Input decoding: bytes → feature rows or user events, or a `Rejection` with its reason.
//!
//! The payload is parsed once, in place: top-level field values are borrowed as raw JSON
//! text and only the fields a model reads are converted. Nothing is copied or allocated per
//! record on the accepted path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Reason, Rejection};
use crate::model::recommender::MAX_N;

/// Default number of items a user event asks for when it has no `n`.
pub const DEFAULT_N: usize = 10;

/// Validates the envelope every record shares: present, within the size limit, UTF-8.
pub fn payload_text(payload: Option<&[u8]>, max_bytes: usize) -> Result<&str, Rejection> {
    let bytes = match payload {
        None | Some([]) => return Err(Rejection::new(Reason::Empty, "the record has no value")),
        Some(b) => b,
    };
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("{} bytes is over the {max_bytes}-byte limit", bytes.len()),
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            Reason::NotUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })
}

/// Calls `on_field` for every top-level field of a JSON object, values borrowed raw.
///
/// A JSON syntax error outranks anything `on_field` reported: a record that is not JSON is
/// `invalid_json` whatever its first fields looked like. Otherwise the first rejection wins.
pub(crate) fn for_each_field<'a>(
    text: &'a str,
    on_field: impl FnMut(&str, &'a RawValue) -> Result<(), Rejection>,
) -> Result<(), Rejection> {
    let mut walker = FieldWalker {
        on_field,
        first_rejection: None,
        other_type: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = (&mut walker).deserialize(&mut de).and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(Rejection::new(Reason::InvalidJson, e.to_string()));
    }
    if let Some(kind) = walker.other_type {
        return Err(Rejection::new(
            Reason::NotObject,
            format!("expected a JSON object, got {kind}"),
        ));
    }
    walker.first_rejection.map_or(Ok(()), Err)
}

struct FieldWalker<F> {
    on_field: F,
    first_rejection: Option<Rejection>,
    other_type: Option<&'static str>,
}

impl<'de, F> DeserializeSeed<'de> for &mut FieldWalker<F>
where
    F: FnMut(&str, &'de RawValue) -> Result<(), Rejection>,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, F> Visitor<'de> for &mut FieldWalker<F>
where
    F: FnMut(&str, &'de RawValue) -> Result<(), Rejection>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(FieldName(name)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            if self.first_rejection.is_none() {
                if let Err(rejection) = (self.on_field)(&name, value) {
                    self.first_rejection = Some(rejection);
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other_type = Some("an array");
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.other_type = Some("a string");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.other_type = Some("a boolean");
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.other_type = Some("a number");
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.other_type = Some("a number");
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.other_type = Some("a number");
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.other_type = Some("null");
        Ok(())
    }
}

/// An object key, borrowed from the payload unless it contains escapes.
struct FieldName<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// What kind of JSON value raw text holds, for error messages.
pub(crate) fn json_type(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

pub(crate) fn is_number(raw: &RawValue) -> bool {
    matches!(raw.get().as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// The names a feature is accepted under: its own, and the dotted form
/// (`sepal.length`) the Spark pipelines this service replaces emitted.
#[derive(Debug, Clone)]
pub struct FeatureSchema {
    names: Vec<String>,
    /// Every accepted name to its feature's index. A scan of the names would cost a
    /// comparison per feature for every field of every record: quadratic in the features.
    index: HashMap<String, usize, BuildHasherDefault<NameHasher>>,
}

impl FeatureSchema {
    pub fn new(names: &[String]) -> Self {
        let mut index = HashMap::with_capacity_and_hasher(2 * names.len(), Default::default());
        // A feature's own name wins over another's dotted form, and the first of equal
        // names wins.
        for (i, name) in names.iter().enumerate() {
            index.entry(name.clone()).or_insert(i);
        }
        for (i, name) in names.iter().enumerate() {
            index.entry(name.replace('_', ".")).or_insert(i);
        }
        Self {
            names: names.to_vec(),
            index,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub(crate) fn index_of(&self, field: &str) -> Option<usize> {
        self.index.get(field).copied()
    }
}

/// A multiply-rotate hash (FxHash's) for field names: several times cheaper than the default
/// SipHash on names this short, which matters at a few lookups per record. Its keys are
/// not secret, so a sender could make the names it sends collide with one bucket; a lookup
/// then walks that bucket's entries, at worst all `2 × features` of them: never more than a
/// scan of the names, which is what it replaces.
#[derive(Default)]
struct NameHasher(u64);

impl NameHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0; 8];
            le.copy_from_slice(word);
            self.add(u64::from_le_bytes(le));
        }
        // Byte by byte: a copy of a variable length would be a call to memcpy.
        let rest = words
            .remainder()
            .iter()
            .rev()
            .fold(0, |word, &byte| word << 8 | u64::from(byte));
        self.add(rest);
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Decodes feature records into rows of a batch matrix. Holds its scratch state so that
/// decoding a batch allocates nothing per record.
pub struct FeatureDecoder {
    schema: FeatureSchema,
    seen: Vec<bool>,
}

impl FeatureDecoder {
    pub fn new(schema: FeatureSchema) -> Self {
        let seen = vec![false; schema.len()];
        Self { schema, seen }
    }

    /// Fills `row` with the record's features and returns its `id` field, if any.
    pub fn decode<'a>(
        &mut self,
        text: &'a str,
        row: &mut [f64],
    ) -> Result<Option<&'a RawValue>, Rejection> {
        debug_assert_eq!(row.len(), self.schema.len());
        self.seen.iter_mut().for_each(|s| *s = false);
        let mut id = None;
        let schema = &self.schema;
        let seen = &mut self.seen;
        for_each_field(text, |field, value| {
            if field == "id" {
                return take_once(&mut id, value, field);
            }
            let Some(i) = schema.index_of(field) else {
                return Ok(());
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(Rejection::new(
                    Reason::DuplicateField,
                    format!("feature `{}` appears more than once", schema.names[i]),
                ));
            }
            row[i] = feature_value(&schema.names[i], value)?;
            Ok(())
        })?;
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(Rejection::new(
                Reason::MissingFeature,
                format!("feature `{}` is missing", schema.names[missing]),
            ));
        }
        Ok(id)
    }
}

pub(crate) fn take_once<'a>(
    slot: &mut Option<&'a RawValue>,
    value: &'a RawValue,
    field: &str,
) -> Result<(), Rejection> {
    if slot.replace(value).is_some() {
        return Err(Rejection::new(
            Reason::DuplicateField,
            format!("field `{field}` appears more than once"),
        ));
    }
    Ok(())
}

fn feature_value(name: &str, raw: &RawValue) -> Result<f64, Rejection> {
    if is_number(raw) {
        let v: f64 = raw.get().parse().map_err(|_| {
            Rejection::new(
                Reason::NonNumericFeature,
                format!("feature `{name}` is not a number: {}", raw.get()),
            )
        })?;
        if !v.is_finite() {
            return Err(Rejection::new(
                Reason::NonFiniteFeature,
                format!("feature `{name}` is out of range: {}", raw.get()),
            ));
        }
        return Ok(v);
    }
    // "NaN" and "Infinity" arrive as strings because JSON has no such literals; name them
    // for what they are rather than as just any string.
    // Owned, so that an escaped spelling (`"\u004eaN"`) is recognised too; this is the
    // rejection path, where an allocation costs nothing that matters.
    if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
        if text.trim().parse::<f64>().is_ok_and(|v| !v.is_finite()) {
            return Err(Rejection::new(
                Reason::NonFiniteFeature,
                format!("feature `{name}` is not finite: {}", raw.get()),
            ));
        }
    }
    Err(Rejection::new(
        Reason::NonNumericFeature,
        format!("feature `{name}` must be a number, got {}", json_type(raw)),
    ))
}

/// A positive JSON integer, capped at `MAX_N` however large it is written.
fn positive_count(text: &str) -> Option<usize> {
    let digits = text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty();
    if !digits || text.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(text.parse::<usize>().map_or(MAX_N, |n| n.min(MAX_N)))
}

/// A request for one user's recommendations.
#[derive(Debug, Clone, Copy)]
pub struct UserEvent<'a> {
    pub id: Option<&'a RawValue>,
    pub uid: i64,
    pub n: usize,
}

/// Decodes `{"uid": 196, "n": 5}`; `n` defaults to `DEFAULT_N` and is capped at `MAX_N`.
pub fn decode_user_event(text: &str) -> Result<UserEvent<'_>, Rejection> {
    let mut id = None;
    let mut uid = None;
    let mut n = None;
    for_each_field(text, |field, value| match field {
        "id" => take_once(&mut id, value, field),
        "uid" => take_once(&mut uid, value, field),
        "n" => take_once(&mut n, value, field),
        _ => Ok(()),
    })?;
    let uid_raw =
        uid.ok_or_else(|| Rejection::new(Reason::MissingUid, "field `uid` is missing"))?;
    let uid = uid_raw.get().parse::<i64>().map_err(|_| {
        Rejection::new(
            Reason::InvalidUid,
            format!("`uid` must be an integer, got {}", uid_raw.get()),
        )
    })?;
    let n = match n {
        None => DEFAULT_N,
        Some(raw) => positive_count(raw.get()).ok_or_else(|| {
            Rejection::new(
                Reason::InvalidCount,
                format!("`n` must be a positive integer, got {}", raw.get()),
            )
        })?,
    };
    Ok(UserEvent { id, uid, n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris() -> FeatureDecoder {
        let names: Vec<String> = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        FeatureDecoder::new(FeatureSchema::new(&names))
    }

    fn decode_iris(text: &str) -> Result<[f64; 4], Rejection> {
        let mut row = [0.0; 4];
        iris().decode(text, &mut row).map(|_| row)
    }

    fn reason_of(payload: &[u8]) -> Reason {
        let text = match payload_text(Some(payload), 200) {
            Ok(t) => t,
            Err(r) => return r.reason,
        };
        match decode_iris(text) {
            Ok(_) => panic!("{:?} was accepted", String::from_utf8_lossy(payload)),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn reads_underscored_and_dotted_names_and_ignores_extras() {
        let row = decode_iris(
            r#"{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2,"x":[1]}"#,
        )
        .unwrap();
        assert_eq!(row, [5.1, 3.5, 1.4, 0.2]);
        let row = decode_iris(
            r#"{"sepal.length":6,"sepal.width":2.9,"petal.length":4.5,"petal.width":1.5}"#,
        )
        .unwrap();
        assert_eq!(row, [6.0, 2.9, 4.5, 1.5]);
    }

    #[test]
    fn keeps_the_id_raw() {
        let mut row = [0.0; 4];
        let mut decoder = iris();
        let text =
            r#"{"id":"a-1","sepal_length":1,"sepal_width":2,"petal_length":3,"petal_width":4}"#;
        let id = decoder.decode(text, &mut row).unwrap();
        assert_eq!(id.map(RawValue::get), Some(r#""a-1""#));
    }

    #[test]
    fn names_every_dead_letter_reason() {
        let ok = r#""sepal_width":1,"petal_length":1,"petal_width":1"#;
        let cases: Vec<(Vec<u8>, Reason)> = vec![
            (vec![], Reason::Empty),
            (vec![b'{'; 201], Reason::TooLarge),
            (vec![0xff, 0xfe, b'{', b'}'], Reason::NotUtf8),
            (b"{\"sepal_length\":".to_vec(), Reason::InvalidJson),
            (b"hello".to_vec(), Reason::InvalidJson),
            (b"[1,2]".to_vec(), Reason::NotObject),
            (b"42".to_vec(), Reason::NotObject),
            (b"null".to_vec(), Reason::NotObject),
            (format!(r#"{{{ok}}}"#).into_bytes(), Reason::MissingFeature),
            (
                format!(r#"{{"sepal_length":"5",{ok}}}"#).into_bytes(),
                Reason::NonNumericFeature,
            ),
            (
                format!(r#"{{"sepal_length":null,{ok}}}"#).into_bytes(),
                Reason::NonNumericFeature,
            ),
            (
                format!(r#"{{"sepal_length":"NaN",{ok}}}"#).into_bytes(),
                Reason::NonFiniteFeature,
            ),
            (
                format!(r#"{{"sepal_length":1e999,{ok}}}"#).into_bytes(),
                Reason::NonFiniteFeature,
            ),
            (
                format!(r#"{{"sepal_length":1,"sepal.length":2,{ok}}}"#).into_bytes(),
                Reason::DuplicateField,
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(
                reason_of(&payload),
                want,
                "{:?}",
                String::from_utf8_lossy(&payload)
            );
        }
        assert_eq!(payload_text(None, 10).unwrap_err().reason, Reason::Empty);
    }

    #[test]
    fn syntax_errors_outrank_field_errors() {
        let r = decode_iris(r#"{"sepal_length":"x", nope"#).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJson);
    }

    #[test]
    fn bare_nan_is_not_json_and_deep_nesting_is_harmless() {
        let ok = r#""sepal_width":1,"petal_length":1,"petal_width":1"#;
        let r = decode_iris(&format!(r#"{{"sepal_length":NaN,{ok}}}"#)).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJson);
        // Nesting is skipped, never recursed into, so depth cannot exhaust the stack.
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(decode_iris(&deep).unwrap_err().reason, Reason::NotObject);
        let deep_field = format!(
            r#"{{"x":{}{},"sepal_length":1,{ok}}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert_eq!(decode_iris(&deep_field).unwrap(), [1.0; 4]);
    }

    #[test]
    fn user_events() {
        let e = decode_user_event(r#"{"uid":196}"#).unwrap();
        assert_eq!((e.uid, e.n), (196, DEFAULT_N));
        let e = decode_user_event(r#"{"uid":-3,"n":100000,"id":7}"#).unwrap();
        assert_eq!(
            (e.uid, e.n, e.id.map(RawValue::get)),
            (-3, MAX_N, Some("7"))
        );
        for (text, want) in [
            (r#"{"user":196}"#, Reason::MissingUid),
            (r#"{"uid":"196"}"#, Reason::InvalidUid),
            (r#"{"uid":1.5}"#, Reason::InvalidUid),
            (r#"{"uid":99999999999999999999}"#, Reason::InvalidUid),
            (r#"{"uid":1,"n":0}"#, Reason::InvalidCount),
            (r#"{"uid":1,"n":"3"}"#, Reason::InvalidCount),
            (r#"{"uid":1,"uid":2}"#, Reason::DuplicateField),
            (r#"[{"uid":1}]"#, Reason::NotObject),
        ] {
            assert_eq!(decode_user_event(text).unwrap_err().reason, want, "{text}");
        }
    }
}
