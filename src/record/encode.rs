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

/// The classification output as serde writes it: the reference `ClassificationWriter` is
/// held to in tests and measured against in `benches/kernels.rs`.
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

/// Writes classification outputs byte for byte as `Classification` serialises them, with the
/// class names and model version escaped once per batch instead of once per record: string
/// escaping was the largest part of encoding in a profile of the scoring thread.
pub struct ClassificationWriter {
    /// `"name":` per class, escaped and quoted.
    class_keys: Vec<String>,
    /// `"name"` per class, for the label.
    class_values: Vec<String>,
    /// `,"model_version":"..","partition":`.
    version_and_partition: String,
}

impl ClassificationWriter {
    pub fn new(classes: &[String], model_version: &str) -> Self {
        let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
        let class_values: Vec<String> = classes.iter().map(|c| quoted(c)).collect();
        Self {
            class_keys: class_values.iter().map(|c| format!("{c}:")).collect(),
            class_values,
            version_and_partition: format!(
                ",\"model_version\":{},\"partition\":",
                quoted(model_version)
            ),
        }
    }

    /// One output record: the same bytes as `to_json(&Classification::new(..))`.
    pub fn write<P: Serialize>(
        &self,
        id: Option<&RawValue>,
        probabilities: &[P],
        label_index: usize,
        source: SourcePosition,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        out.push(b'{');
        if let Some(id) = id {
            out.extend_from_slice(b"\"id\":");
            out.extend_from_slice(id.get().as_bytes());
            out.push(b',');
        }
        out.extend_from_slice(b"\"label\":");
        out.extend_from_slice(
            self.class_values
                .get(label_index)
                .map_or("\"\"", String::as_str)
                .as_bytes(),
        );
        out.extend_from_slice(b",\"probabilities\":{");
        for (i, (key, p)) in self.class_keys.iter().zip(probabilities).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            // Numbers go through serde_json itself, so they read exactly as before
            // (shortest round-trip digits, `null` for a non-finite value).
            let _ = serde_json::to_writer(&mut out, p);
        }
        out.push(b'}');
        out.extend_from_slice(self.version_and_partition.as_bytes());
        let _ = serde_json::to_writer(&mut out, &source.partition);
        out.extend_from_slice(b",\"offset\":");
        let _ = serde_json::to_writer(&mut out, &source.offset);
        out.push(b'}');
        out
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

    /// The writer must be indistinguishable from serde's rendering of `Classification`.
    #[test]
    fn the_classification_writer_writes_what_serde_writes() {
        let awkward = vec![
            "a".to_string(),
            "quote\"back\\slash".to_string(),
            "tab\tnewline\n\u{1}".to_string(),
            "é ü 雪 🐟".to_string(),
        ];
        let plain = vec!["setosa".to_string(), "versicolor".to_string()];
        let ids = [
            None,
            Some(RawValue::from_string("\"k-1\"".into()).unwrap()),
            Some(RawValue::from_string("12345678901234567890".into()).unwrap()),
            Some(RawValue::from_string("{\"nested\":[1,2]}".into()).unwrap()),
        ];
        let rows: [&[f32]; 4] = [
            &[0.25, 0.75, 0.0, 1.0],
            &[f32::NAN, f32::INFINITY, 1e-30, 0.1],
            &[0.333_333_34, 0.666_666_7, -0.0, 3.0e38],
            &[0.5],
        ];
        let sources = [
            SourcePosition {
                partition: 0,
                offset: 0,
            },
            SourcePosition {
                partition: 31,
                offset: i64::MAX,
            },
            SourcePosition {
                partition: -1,
                offset: -1,
            },
        ];
        for (classes, version) in [(&awkward, "rf-\"x\"\u{7f}"), (&plain, "rf-1")] {
            let writer = ClassificationWriter::new(classes, version);
            for id in &ids {
                for row in rows {
                    for label in [0, 1, 7] {
                        for source in sources {
                            let expected = to_json(&Classification::new(
                                id.as_deref(),
                                classes,
                                row,
                                label,
                                version,
                                source,
                            ));
                            let written = writer.write(id.as_deref(), row, label, source);
                            assert_eq!(
                                String::from_utf8_lossy(&written),
                                String::from_utf8_lossy(&expected)
                            );
                        }
                    }
                }
            }
        }
        let doubles =
            ClassificationWriter::new(&plain, "pm-1").write(None, &[0.1f64, 0.9], 1, sources[0]);
        let expected = to_json(&Classification::new(
            None,
            &plain,
            &[0.1f64, 0.9],
            1,
            "pm-1",
            sources[0],
        ));
        assert_eq!(doubles, expected);
    }

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
