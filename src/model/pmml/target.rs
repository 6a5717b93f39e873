//! The target: a classifier's categories, and the `Targets` rescaling of a regression.

use super::fields::{number_text, Column, DataType};
use super::xml::{self, El};
use crate::model::ModelError;

/// A classification target's categories, in the data dictionary's order: the order of the
/// probabilities everywhere in this module, and the tie-break of the predicted label.
#[derive(Debug, Clone)]
pub struct Categories {
    /// As the document writes them (`"0"`, `"setosa"`).
    pub names: Vec<String>,
    /// For a numeric target, each category's value (`"0"` and `"0.0"` are the same class).
    pub numbers: Option<Vec<f64>>,
    pub data_type: DataType,
}

impl Categories {
    pub fn of(column: &Column, node: &El<'_, '_>) -> Result<Self, ModelError> {
        if column.is_string() {
            if column.valid == 0 {
                return Err(xml::err(
                    node,
                    &format!(
                        "the classification target `{}` declares no values",
                        column.name
                    ),
                ));
            }
            return Ok(Self {
                names: column.strings[..column.valid].to_vec(),
                numbers: None,
                data_type: column.data_type,
            });
        }
        if column.numeric_values.is_empty() {
            return Err(xml::err(
                node,
                &format!(
                    "the classification target `{}` declares no values",
                    column.name
                ),
            ));
        }
        Ok(Self {
            names: column
                .numeric_values
                .iter()
                .map(|v| short_number(*v))
                .collect(),
            numbers: Some(column.numeric_values.clone()),
            data_type: column.data_type,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn index_of(&self, text: &str) -> Option<usize> {
        match &self.numbers {
            None => self.names.iter().position(|n| n == text),
            Some(numbers) => {
                let v = xml::parse_number(text)?;
                numbers.iter().position(|n| *n == v)
            }
        }
    }

    /// The predicted value as JSON, typed like the target field (`2.0` for a double one).
    pub fn value(&self, index: usize) -> serde_json::Value {
        match &self.numbers {
            Some(numbers) => serde_json::json!(numbers[index]),
            None => serde_json::json!(self.names[index]),
        }
    }
}

/// A number as the data dictionary would write it: `0`, `2.5`.
fn short_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        number_text(v)
    }
}

/// `Target rescaleFactor/rescaleConstant`: prediction × factor + constant.
#[derive(Debug, Clone, Copy)]
pub struct Rescale {
    pub factor: f64,
    pub constant: f64,
}

impl Rescale {
    pub fn apply(self, v: f64) -> f64 {
        v * self.factor + self.constant
    }
}

/// Reads `Targets`; only the rescaling of one regression target is supported.
pub fn targets(node: &El<'_, '_>, regression: bool) -> Result<Option<Rescale>, ModelError> {
    let mut targets = xml::children(node);
    let Some(target) = targets.next() else {
        return Ok(None);
    };
    if let Some(extra) = targets.next() {
        return Err(xml::err(&extra, "only one Target is supported"));
    }
    if xml::name(&target) != "Target" {
        return Err(xml::unsupported(&target));
    }
    if let Some(part) = xml::children(&target).next() {
        return Err(xml::unsupported(&part));
    }
    for key in ["min", "max", "castInteger", "defaultValue"] {
        if xml::attr(&target, key).is_some() {
            return Err(xml::err(&target, &format!("`{key}` is not supported")));
        }
    }
    let factor = xml::number(&target, "rescaleFactor")?.unwrap_or(1.0);
    let constant = xml::number(&target, "rescaleConstant")?.unwrap_or(0.0);
    if !regression && (factor != 1.0 || constant != 0.0) {
        return Err(xml::err(
            &target,
            "rescaling applies to regression targets only",
        ));
    }
    Ok(Some(Rescale { factor, constant }))
}
