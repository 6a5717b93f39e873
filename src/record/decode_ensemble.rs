//! Input decoding for imported tree ensembles (XGBoost, LightGBM, ONNX): numeric fields by
//! the model's input names, and `null` or an absent field as a missing value (NaN), which
//! each library routes by its own rule (default branch, missing type, tracks-true).

use serde_json::value::RawValue;

use super::decode::{for_each_field, is_number, json_type, take_once, FeatureSchema};
use super::{Reason, Rejection};

/// Decodes records into rows of `names.len()` values; holds its scratch state.
pub struct EnsembleDecoder<'m> {
    names: &'m [String],
    schema: FeatureSchema,
    seen: Vec<bool>,
}

impl<'m> EnsembleDecoder<'m> {
    pub fn new(names: &'m [String]) -> Self {
        let schema = FeatureSchema::new(names);
        Self {
            names,
            seen: vec![false; schema.len()],
            schema,
        }
    }

    /// Fills `row` (NaN where a feature is missing) and returns the record's `id`, if any.
    pub fn decode<'a>(
        &mut self,
        text: &'a str,
        row: &mut [f64],
    ) -> Result<Option<&'a RawValue>, Rejection> {
        self.seen.iter_mut().for_each(|s| *s = false);
        row.iter_mut().for_each(|v| *v = f64::NAN);
        let mut id = None;
        let (schema, seen, names) = (&self.schema, &mut self.seen, self.names);
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
            let v = value.get();
            if v == "null" {
                return Ok(());
            }
            if !is_number(value) {
                return Err(Rejection::new(
                    Reason::NonNumericFeature,
                    format!(
                        "feature `{}` must be a number or null, got {}",
                        names[i],
                        json_type(value)
                    ),
                ));
            }
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
            row[i] = n;
            Ok(())
        })?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_null_are_missing_and_strings_are_refused() {
        let names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let mut d = EnsembleDecoder::new(&names);
        let mut row = [0.0; 3];
        let id = d
            .decode(r#"{"id": 7, "a": 1.5, "b": null}"#, &mut row)
            .unwrap();
        assert_eq!(id.map(|r| r.get()), Some("7"));
        assert_eq!(row[0], 1.5);
        assert!(row[1].is_nan() && row[2].is_nan());
        let err = d.decode(r#"{"a": "1.5"}"#, &mut row).unwrap_err();
        assert_eq!(err.reason, Reason::NonNumericFeature);
        let err = d.decode(r#"{"a": 1, "a": 2}"#, &mut row).unwrap_err();
        assert_eq!(err.reason, Reason::DuplicateField);
        let err = d.decode(r#"{"a": 1e400}"#, &mut row).unwrap_err();
        assert_eq!(err.reason, Reason::NonFiniteFeature);
    }
}
