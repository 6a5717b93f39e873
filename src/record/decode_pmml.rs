//! Input decoding for PMML models: any field names, numbers or strings as the model
//! declares, and `null` or an absent field as a missing value, which the model's own
//! missing-value rules then handle (a model that cannot score it is refused later, with
//! `no_prediction`).

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::decode::{for_each_field, is_number, json_type, take_once, FeatureSchema};
use super::{Reason, Rejection};
use crate::model::pmml::fields::{InputError, Raw};
use crate::model::pmml::PmmlModel;

/// Decodes records into rows of prepared PMML inputs; holds its scratch state.
pub struct PmmlDecoder<'m> {
    model: &'m PmmlModel,
    names: &'m [String],
    schema: FeatureSchema,
    seen: Vec<bool>,
}

impl<'m> PmmlDecoder<'m> {
    /// `names`: what records call the model's input fields, in its order.
    pub fn new(model: &'m PmmlModel, names: &'m [String]) -> Self {
        let schema = FeatureSchema::new(names);
        Self {
            model,
            names,
            seen: vec![false; schema.len()],
            schema,
        }
    }

    /// Fills `row` with the record's prepared inputs and returns its `id` field, if any.
    pub fn decode<'a>(
        &mut self,
        text: &'a str,
        row: &mut [f64],
    ) -> Result<Option<&'a RawValue>, Rejection> {
        self.seen.iter_mut().for_each(|s| *s = false);
        let mut id = None;
        let (model, schema, seen, names) = (self.model, &self.schema, &mut self.seen, self.names);
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
                    format!("feature `{}` appears more than once", names[i]),
                ));
            }
            let text: Cow<'_, str>;
            let raw = match value.get() {
                "null" => Raw::Missing,
                "true" => Raw::Number(1.0),
                "false" => Raw::Number(0.0),
                v if is_number(value) => {
                    let n: f64 = v.parse().map_err(|_| {
                        Rejection::new(
                            Reason::NonNumericFeature,
                            format!("feature `{}` is not a number: {v}", names[i]),
                        )
                    })?;
                    if !n.is_finite() {
                        return Err(Rejection::new(
                            Reason::NonFiniteFeature,
                            format!("feature `{}` is out of range: {v}", names[i]),
                        ));
                    }
                    Raw::Number(n)
                }
                v if v.starts_with('"') => {
                    text = serde_json::from_str(v)
                        .map_err(|e| Rejection::new(Reason::InvalidJson, e.to_string()))?;
                    Raw::Text(&text)
                }
                _ => {
                    return Err(Rejection::new(
                        Reason::NonNumericFeature,
                        format!(
                            "feature `{}` must be a number or a string, got {}",
                            names[i],
                            json_type(value)
                        ),
                    ))
                }
            };
            row[i] = prepare(model, i, raw)?;
            Ok(())
        })?;
        for (i, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
            row[i] = prepare(model, i, Raw::Missing)?;
        }
        Ok(id)
    }
}

fn prepare(model: &PmmlModel, i: usize, raw: Raw<'_>) -> Result<f64, Rejection> {
    model.prepare(i, raw).map_err(|e| match e {
        InputError::Type(m) => Rejection::new(Reason::NonNumericFeature, m),
        InputError::Invalid(m) => Rejection::new(Reason::InvalidValue, m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris_tree() -> PmmlModel {
        let text = std::fs::read_to_string("training/pmml/sklearn_dt_iris.pmml")
            .unwrap_or_else(|e| panic!("the fixture: {e}"));
        PmmlModel::parse(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn numbers_booleans_and_missing_values_reach_the_model_as_it_reads_them() {
        let model = iris_tree();
        let names = model.features().to_vec();
        let mut decoder = PmmlDecoder::new(&model, &names);
        let mut row = vec![0.0; names.len()];
        let values = [1.5, 2.25, -0.5, 3.0];
        let record = names
            .iter()
            .zip(values)
            .map(|(name, v)| format!("\"{name}\":{v}"))
            .collect::<Vec<_>>()
            .join(",");
        let text = format!("{{\"id\":7,{record}}}");
        let id = decoder
            .decode(&text, &mut row)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(id.map(RawValue::get), Some("7"));
        let expected: Vec<f64> = (0..names.len())
            .map(|i| model.prepare(i, Raw::Number(values[i])).unwrap_or(f64::NAN))
            .collect();
        assert_eq!(
            row, expected,
            "numbers pass through the model's preparation"
        );

        let absent = format!("{{\"{}\":true}}", names[0]);
        decoder
            .decode(&absent, &mut row)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            row[0],
            model.prepare(0, Raw::Number(1.0)).unwrap_or(f64::NAN)
        );
        assert!(
            row[1].is_nan(),
            "an absent field is a missing value: {row:?}"
        );

        let array = format!("{{\"{}\":[1]}}", names[0]);
        let err = decoder.decode(&array, &mut row).expect_err("an array");
        assert_eq!(err.reason, Reason::NonNumericFeature);
    }
}
