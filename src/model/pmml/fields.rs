//! Fields: the data dictionary, what the mining schema does to an input value, and the
//! derived fields computed from them.
//!
//! Every value a model reads is one `f64` "column" of a row: a number (cast to `f32` and
//! back where the field is `float`, which is how JPMML compares it), a string as its index in
//! the field's table of known strings, or NaN for missing. That keeps a row a flat `&[f64]`,
//! which is what the fast tree kernel scores.

use std::collections::HashMap;

use super::xml::{self, El};
use crate::model::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    String,
    Integer,
    Float,
    Double,
    Boolean,
}

impl DataType {
    pub fn parse(node: &El<'_, '_>, key: &str) -> Result<Option<Self>, ModelError> {
        Ok(Some(match xml::attr(node, key) {
            None => return Ok(None),
            Some("string") => DataType::String,
            Some("integer") => DataType::Integer,
            Some("float") => DataType::Float,
            Some("double") => DataType::Double,
            Some("boolean") => DataType::Boolean,
            Some(other) => {
                return Err(xml::err(
                    node,
                    &format!("dataType `{other}` is not supported"),
                ))
            }
        }))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::String => "string",
            DataType::Integer => "integer",
            DataType::Float => "float",
            DataType::Double => "double",
            DataType::Boolean => "boolean",
        }
    }

    /// A number as a value of this type: JPMML rounds a `float` field's value to `f32`
    /// before comparing it, and an `integer` holds whole numbers only.
    pub fn cast(self, v: f64) -> Option<f64> {
        match self {
            DataType::Float => Some(v as f32 as f64),
            DataType::Integer if v.fract() != 0.0 => None,
            DataType::Boolean if v != 0.0 && v != 1.0 => None,
            _ => Some(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpType {
    Categorical,
    Ordinal,
    Continuous,
}

impl OpType {
    pub fn parse(node: &El<'_, '_>) -> Result<Option<Self>, ModelError> {
        Ok(Some(match xml::attr(node, "optype") {
            None => return Ok(None),
            Some("categorical") => OpType::Categorical,
            Some("ordinal") => OpType::Ordinal,
            Some("continuous") => OpType::Continuous,
            Some(other) => return Err(xml::err(node, &format!("optype `{other}` is unknown"))),
        }))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Categorical => "categorical",
            OpType::Ordinal => "ordinal",
            OpType::Continuous => "continuous",
        }
    }
}

/// One column of a row.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    pub op_type: OpType,
    /// String fields: the strings with a code, code = index. The declared valid values come
    /// first (`valid` of them), then any other string the model mentions.
    pub strings: Vec<String>,
    /// Numeric categorical fields: the declared valid values.
    pub numeric_values: Vec<f64>,
    pub valid: usize,
    /// Strings (or numbers, as text) the dictionary declares to mean "missing".
    pub missing_values: Vec<String>,
    pub intervals: Vec<Interval>,
}

impl Column {
    pub fn new(name: &str, data_type: DataType, op_type: OpType) -> Self {
        Self {
            name: name.to_owned(),
            data_type,
            op_type,
            strings: Vec::new(),
            numeric_values: Vec::new(),
            valid: 0,
            missing_values: Vec::new(),
            intervals: Vec::new(),
        }
    }

    pub fn is_string(&self) -> bool {
        self.data_type == DataType::String
    }

    /// The code of a string, adding it if new (for strings a predicate mentions).
    pub fn intern(&mut self, s: &str) -> f64 {
        match self.strings.iter().position(|k| k == s) {
            Some(i) => i as f64,
            None => {
                self.strings.push(s.to_owned());
                (self.strings.len() - 1) as f64
            }
        }
    }

    pub fn code_of(&self, s: &str) -> Option<usize> {
        self.strings.iter().position(|k| k == s)
    }

    /// A literal from the document (a predicate's value, a constant) as this column's value.
    pub fn literal(&mut self, text: &str) -> Option<f64> {
        if self.is_string() {
            return Some(self.intern(text));
        }
        if self.data_type == DataType::Boolean {
            return match text {
                "true" => Some(1.0),
                "false" => Some(0.0),
                t => xml::parse_number(t),
            };
        }
        let v = xml::parse_number(text)?;
        // A literal compared with an integer field stays as written (JPMML compares 2.5 with
        // an integer as numbers); a float field's literals are floats like its values.
        Some(if self.data_type == DataType::Float {
            v as f32 as f64
        } else {
            v
        })
    }

    /// The text of a value for output (`Value`'s string form).
    pub fn display(&self, v: f64) -> Option<String> {
        if v.is_nan() {
            return None;
        }
        if self.is_string() {
            return self.strings.get(v as usize).cloned();
        }
        Some(number_text(v))
    }

    pub fn in_intervals(&self, v: f64) -> bool {
        self.intervals.is_empty() || self.intervals.iter().any(|i| i.contains(v))
    }
}

/// How Java prints a double, near enough for keys and labels: `1.0`, `0.25`, `1.0E-5`.
pub fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e7 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Interval {
    pub left: f64,
    pub right: f64,
    pub left_closed: bool,
    pub right_closed: bool,
}

impl Interval {
    fn contains(&self, v: f64) -> bool {
        let above = if self.left_closed {
            v >= self.left
        } else {
            v > self.left
        };
        let below = if self.right_closed {
            v <= self.right
        } else {
            v < self.right
        };
        above && below
    }
}

/// Reads the `DataDictionary` into columns, in document order.
pub fn data_dictionary(node: &El<'_, '_>) -> Result<Vec<Column>, ModelError> {
    let mut columns = Vec::new();
    for field in xml::children(node) {
        if xml::name(&field) != "DataField" {
            return Err(xml::unsupported(&field));
        }
        let name = xml::required(&field, "name")?;
        let data_type = DataType::parse(&field, "dataType")?
            .ok_or_else(|| xml::err(&field, "needs a dataType"))?;
        let op_type = OpType::parse(&field)?.unwrap_or(if data_type == DataType::String {
            OpType::Categorical
        } else {
            OpType::Continuous
        });
        let mut column = Column::new(name, data_type, op_type);
        let mut others = Vec::new();
        for part in xml::children(&field) {
            match xml::name(&part) {
                "Value" => {
                    let value = xml::required(&part, "value")?;
                    match xml::attr(&part, "property").unwrap_or("valid") {
                        "valid" => {
                            if column.is_string() {
                                if column.code_of(value).is_some() {
                                    return Err(xml::err(&part, "repeats a value"));
                                }
                                column.strings.push(value.to_owned());
                            } else {
                                let v = column.literal(value).ok_or_else(|| {
                                    xml::err(&part, "is not a number of the field's type")
                                })?;
                                column.numeric_values.push(v);
                            }
                        }
                        "invalid" => others.push(value.to_owned()),
                        "missing" => column.missing_values.push(value.to_owned()),
                        p => return Err(xml::err(&part, &format!("property `{p}` is unknown"))),
                    }
                }
                "Interval" => {
                    let closure = xml::required(&part, "closure")?;
                    let (left_closed, right_closed) = match closure {
                        "openClosed" => (false, true),
                        "openOpen" => (false, false),
                        "closedOpen" => (true, false),
                        "closedClosed" => (true, true),
                        c => return Err(xml::err(&part, &format!("closure `{c}` is unknown"))),
                    };
                    column.intervals.push(Interval {
                        left: xml::number(&part, "leftMargin")?.unwrap_or(f64::NEG_INFINITY),
                        right: xml::number(&part, "rightMargin")?.unwrap_or(f64::INFINITY),
                        left_closed,
                        right_closed,
                    });
                }
                _ => return Err(xml::unsupported(&part)),
            }
        }
        column.valid = if column.is_string() {
            column.strings.len()
        } else {
            column.numeric_values.len()
        };
        for other in others {
            if column.is_string() {
                column.intern(&other);
            }
        }
        columns.push(column);
    }
    Ok(columns)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidTreatment {
    ReturnInvalid,
    AsIs,
    AsMissing,
}

/// What the mining schema does to one active field on the way in.
#[derive(Debug, Clone)]
pub struct InputField {
    pub column: usize,
    pub invalid: InvalidTreatment,
    /// Replaces a missing value (already converted to the column's form).
    pub missing_replacement: Option<f64>,
    pub invalid_replacement: Option<f64>,
}

/// A record's value for one field, before the mining schema has seen it.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    Missing,
    Number(f64),
    Text(&'a str),
}

/// Why an input value was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum InputError {
    /// The value is not of the field's type (`"abc"` for a number).
    Type(String),
    /// Of the right type but outside the field's valid values, with `returnInvalid`.
    Invalid(String),
}

impl InputField {
    /// The column value of `raw`, after the mining schema's missing and invalid treatments.
    pub fn prepare(&self, column: &Column, raw: Raw<'_>) -> Result<f64, InputError> {
        let value = match raw {
            Raw::Missing => None,
            Raw::Text(t) if column.missing_values.iter().any(|m| m == t) => None,
            Raw::Number(n) if column.missing_values.iter().any(|m| parses_to(m, n)) => None,
            Raw::Text(t) if column.is_string() => {
                match column.code_of(t) {
                    Some(code) if column.valid == 0 || code < column.valid => Some(code as f64),
                    // Known but not valid, or unknown: with `asIs` an unknown string equals
                    // no value the model tests for.
                    code => return self.invalid(column, code.map_or(-1.0, |c| c as f64), t),
                }
            }
            Raw::Number(n) if column.is_string() => {
                let text = number_text(n);
                match column.code_of(&text) {
                    Some(code) if column.valid == 0 || code < column.valid => Some(code as f64),
                    code => return self.invalid(column, code.map_or(-1.0, |c| c as f64), &text),
                }
            }
            Raw::Text(t) => {
                let n = match (column.data_type, t.trim()) {
                    (DataType::Boolean, "true") => 1.0,
                    (DataType::Boolean, "false") => 0.0,
                    (_, trimmed) => trimmed.parse::<f64>().map_err(|_| {
                        InputError::Type(format!(
                            "`{}` must be a {}, got the string {t:?}",
                            column.name,
                            column.data_type.as_str()
                        ))
                    })?,
                };
                return self.numeric(column, n);
            }
            Raw::Number(n) => return self.numeric(column, n),
        };
        Ok(match value {
            Some(v) => v,
            None => self.missing_replacement.unwrap_or(f64::NAN),
        })
    }

    fn numeric(&self, column: &Column, n: f64) -> Result<f64, InputError> {
        let Some(v) = column.data_type.cast(n).filter(|v| v.is_finite()) else {
            return self.invalid(column, n, &n.to_string());
        };
        let declared = column.numeric_values.is_empty() || column.numeric_values.contains(&v);
        if !declared || !column.in_intervals(v) {
            return self.invalid(column, v, &number_text(v));
        }
        Ok(v)
    }

    fn invalid(&self, column: &Column, as_is: f64, shown: &str) -> Result<f64, InputError> {
        if let Some(v) = self.invalid_replacement {
            return Ok(v);
        }
        match self.invalid {
            InvalidTreatment::ReturnInvalid => Err(InputError::Invalid(format!(
                "`{}` = {shown} is not a valid value of the field",
                column.name
            ))),
            InvalidTreatment::AsIs => Ok(as_is),
            InvalidTreatment::AsMissing => Ok(self.missing_replacement.unwrap_or(f64::NAN)),
        }
    }
}

fn parses_to(text: &str, n: f64) -> bool {
    xml::parse_number(text) == Some(n)
}

/// Names visible to a model: its own local fields, then its parents', then the document's.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    names: HashMap<String, usize>,
}

impl Scope {
    pub fn get(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    pub fn insert(&mut self, name: &str, column: usize) {
        self.names.insert(name.to_owned(), column);
    }
}
