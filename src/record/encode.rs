//! Output records: the JSON written to the output topic, one per scored input.
//!
//! Classification:
//! `{"id":..,"label":"setosa","probabilities":{"setosa":0.98,..},"model_version":"rf-..","partition":0,"offset":42}`
//! Regression (PMML models):
//! `{"id":..,"prediction":152.3,"model_version":"pm-..","partition":0,"offset":42}`
//! Recommendation:
//! `{"id":..,"uid":196,"items":[{"item":50,"score":4.9,"title":".."}],"cold_start":false,"model_version":"mf-..","partition":0,"offset":42}`
//! `id` is present only when the input had one, and is copied verbatim.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::SourcePosition;
use crate::model::recommender::Recommendation;

#[derive(Serialize)]
pub struct Classification<'a, P: Serialize = f32> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RawValue>,
    pub label: &'a str,
    pub probabilities: Probabilities<'a, P>,
    pub model_version: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Class names zipped with one row of probabilities, written as a JSON object. Native
/// forests give `f32`; PMML models compute in double and keep every digit.
pub struct Probabilities<'a, P = f32> {
    pub classes: &'a [String],
    pub values: &'a [P],
}

impl<P: Serialize> Serialize for Probabilities<'_, P> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.classes.len()))?;
        for (class, p) in self.classes.iter().zip(self.values) {
            map.serialize_entry(class, p)?;
        }
        map.end()
    }
}

/// A regression's output: `{"id":..,"prediction":152.3,"model_version":..,"partition":..,"offset":..}`.
#[derive(Serialize)]
pub struct RegressionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RawValue>,
    pub prediction: f64,
    pub model_version: &'a str,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Serialize)]
pub struct RecommendationOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RawValue>,
    pub uid: i64,
    pub items: Items<'a>,
    pub cold_start: bool,
    pub model_version: &'a str,
    pub partition: i32,
    pub offset: i64,
}

pub struct Items<'a>(pub &'a Recommendation<'a>);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Item<'a> {
            item: i64,
            score: f32,
            #[serde(skip_serializing_if = "Option::is_none")]
            title: Option<&'a str>,
        }
        let mut seq = serializer.serialize_seq(Some(self.0.items.len()))?;
        for it in &self.0.items {
            seq.serialize_element(&Item {
                item: it.item,
                score: it.score,
                title: it.title,
            })?;
        }
        seq.end()
    }
}

/// Serialises into a fresh buffer sized for a typical record.
pub fn to_json(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    // Writing borrowed plain data into a Vec has no failure path: no I/O, string keys only.
    let _ = serde_json::to_writer(&mut out, value);
    out
}

impl<'a, P: Serialize> Classification<'a, P> {
    pub fn new(
        id: Option<&'a RawValue>,
        classes: &'a [String],
        probabilities: &'a [P],
        label_index: usize,
        model_version: &'a str,
        source: SourcePosition,
    ) -> Self {
        Self {
            id,
            label: classes.get(label_index).map_or("", String::as_str),
            probabilities: Probabilities {
                classes,
                values: probabilities,
            },
            model_version,
            partition: source.partition,
            offset: source.offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_schema() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let id = RawValue::from_string("\"k1\"".into()).unwrap();
        let out = Classification::new(
            Some(&id),
            &classes,
            &[0.25, 0.75],
            1,
            "rf-1",
            SourcePosition {
                partition: 2,
                offset: 9,
            },
        );
        let json: serde_json::Value = serde_json::from_slice(&to_json(&out)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"k1","label":"b","probabilities":{"a":0.25,"b":0.75},
                "model_version":"rf-1","partition":2,"offset":9})
        );
    }
}
