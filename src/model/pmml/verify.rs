//! `ModelVerification`: the exporter's own predictions for a few rows, scored again on load.
//! A model that disagrees with them is refused: it would score the stream differently from
//! the system that trained it.

use serde_json::{Map, Value};

use super::xml::{self, El};
use super::PmmlModel;
use crate::model::ModelError;

struct Check {
    field: String,
    column: String,
    precision: f64,
    zero: f64,
}

pub fn check(model: &PmmlModel, el: &El<'_, '_>) -> Result<(), ModelError> {
    let fields_el = xml::child(el, "VerificationFields")
        .ok_or_else(|| xml::err(el, "needs VerificationFields"))?;
    let table =
        xml::child(el, "InlineTable").ok_or_else(|| xml::err(el, "needs an InlineTable"))?;
    let mut checks = Vec::new();
    for f in xml::children(&fields_el) {
        if xml::name(&f) != "VerificationField" {
            return Err(xml::unsupported(&f));
        }
        let field = xml::required(&f, "field")?.to_owned();
        let column = xml::attr(&f, "column").unwrap_or(&field);
        let column = column.rsplit(':').next().unwrap_or(column).to_owned();
        checks.push(Check {
            field,
            column,
            precision: xml::number(&f, "precision")?.unwrap_or(1e-6),
            zero: xml::number(&f, "zeroThreshold")?.unwrap_or(1e-16),
        });
    }
    for (n, row) in xml::children(&table).enumerate() {
        let cell = |column: &str| {
            xml::children(&row)
                .find(|c| xml::name(c) == column)
                .map(|c| c.text().unwrap_or("").to_owned())
        };
        let mut arguments = Map::new();
        for c in &checks {
            if model.features().contains(&c.field) {
                let value = match cell(&c.column) {
                    None => Value::Null,
                    Some(text) => match xml::parse_number(&text) {
                        Some(v) if v.is_finite() => serde_json::json!(v),
                        _ => Value::String(text),
                    },
                };
                arguments.insert(c.field.clone(), value);
            }
        }
        let results = model.evaluate(&arguments).map_err(|e| {
            xml::err(
                &row,
                &format!("verification row {} cannot be scored: {e}", n + 1),
            )
        })?;
        for c in checks
            .iter()
            .filter(|c| !model.features().contains(&c.field))
        {
            let Some(expected) = cell(&c.column) else {
                continue;
            };
            let actual = results.get(&c.field).ok_or_else(|| {
                xml::err(
                    &row,
                    &format!("verifies `{}`, which the model does not output", c.field),
                )
            })?;
            let ok = match (actual, xml::parse_number(&expected)) {
                (Value::Number(a), Some(e)) => {
                    let a = a.as_f64().unwrap_or(f64::NAN);
                    (a.abs() <= c.zero && e.abs() <= c.zero)
                        || (a - e).abs() <= c.precision * e.abs()
                }
                (Value::String(a), _) => *a == expected,
                (Value::Null, _) => expected.is_empty(),
                _ => false,
            };
            if !ok {
                return Err(xml::err(
                    &row,
                    &format!(
                        "ModelVerification row {} fails: `{}` is {actual}, the file expects {expected}",
                        n + 1,
                        c.field
                    ),
                ));
            }
        }
    }
    Ok(())
}
