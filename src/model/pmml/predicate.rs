//! Predicates, in PMML's three-valued logic: a comparison with a missing value is neither
//! true nor false but unknown, and what a tree does then is its `missingValueStrategy`.

use super::fields::{Column, Scope};
use super::xml::{self, El};
use crate::model::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Unknown,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Self {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    LessThan,
    LessOrEqual,
    GreaterThan,
    GreaterOrEqual,
}

impl Op {
    pub fn test(self, x: f64, v: f64) -> bool {
        match self {
            Op::Equal => x == v,
            Op::NotEqual => x != v,
            Op::LessThan => x < v,
            Op::LessOrEqual => x <= v,
            Op::GreaterThan => x > v,
            Op::GreaterOrEqual => x >= v,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Predicate {
    True,
    False,
    Compare {
        column: usize,
        op: Op,
        value: f64,
    },
    IsMissing(usize),
    IsNotMissing(usize),
    Set {
        column: usize,
        values: Vec<f64>,
        is_in: bool,
    },
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Xor(Vec<Predicate>),
    Surrogate(Vec<Predicate>),
}

const PREDICATES: [&str; 5] = [
    "True",
    "False",
    "SimplePredicate",
    "SimpleSetPredicate",
    "CompoundPredicate",
];

pub fn is_predicate(node: &El<'_, '_>) -> bool {
    PREDICATES.contains(&xml::name(node))
}

pub fn read(
    node: &El<'_, '_>,
    columns: &mut [Column],
    scope: &Scope,
) -> Result<Predicate, ModelError> {
    let column_of = |node: &El<'_, '_>| -> Result<usize, ModelError> {
        let field = xml::required(node, "field")?;
        scope
            .get(field)
            .ok_or_else(|| xml::err(node, &format!("refers to the undefined field `{field}`")))
    };
    Ok(match xml::name(node) {
        "True" => Predicate::True,
        "False" => Predicate::False,
        "SimplePredicate" => {
            let column = column_of(node)?;
            let op = match xml::required(node, "operator")? {
                "isMissing" => return Ok(Predicate::IsMissing(column)),
                "isNotMissing" => return Ok(Predicate::IsNotMissing(column)),
                "equal" => Op::Equal,
                "notEqual" => Op::NotEqual,
                "lessThan" => Op::LessThan,
                "lessOrEqual" => Op::LessOrEqual,
                "greaterThan" => Op::GreaterThan,
                "greaterOrEqual" => Op::GreaterOrEqual,
                other => return Err(xml::err(node, &format!("operator `{other}` is unknown"))),
            };
            let col = &mut columns[column];
            if col.is_string() && !matches!(op, Op::Equal | Op::NotEqual) {
                return Err(xml::err(
                    node,
                    "ordering comparisons of string fields are not supported",
                ));
            }
            let text = xml::required(node, "value")?;
            let value = col
                .literal(text)
                .ok_or_else(|| xml::err(node, &format!("`{text}` is not a value of the field")))?;
            Predicate::Compare { column, op, value }
        }
        "SimpleSetPredicate" => {
            let column = column_of(node)?;
            let is_in = match xml::required(node, "booleanOperator")? {
                "isIn" => true,
                "isNotIn" => false,
                other => {
                    return Err(xml::err(
                        node,
                        &format!("booleanOperator `{other}` is unknown"),
                    ))
                }
            };
            let array =
                xml::child(node, "Array").ok_or_else(|| xml::err(node, "needs an Array"))?;
            let mut values = Vec::new();
            for text in xml::array_values(&array)? {
                values.push(columns[column].literal(&text).ok_or_else(|| {
                    xml::err(&array, &format!("`{text}` is not a value of the field"))
                })?);
            }
            Predicate::Set {
                column,
                values,
                is_in,
            }
        }
        "CompoundPredicate" => {
            let mut parts = Vec::new();
            for part in xml::children(node) {
                if !is_predicate(&part) {
                    return Err(xml::unsupported(&part));
                }
                parts.push(read(&part, columns, scope)?);
            }
            if parts.len() < 2 {
                return Err(xml::err(node, "needs at least two predicates"));
            }
            match xml::required(node, "booleanOperator")? {
                "and" => Predicate::And(parts),
                "or" => Predicate::Or(parts),
                "xor" => Predicate::Xor(parts),
                "surrogate" => Predicate::Surrogate(parts),
                other => {
                    return Err(xml::err(
                        node,
                        &format!("booleanOperator `{other}` is unknown"),
                    ))
                }
            }
        }
        _ => return Err(xml::unsupported(node)),
    })
}

impl Predicate {
    pub fn eval(&self, row: &[f64]) -> Tri {
        match self {
            Predicate::True => Tri::True,
            Predicate::False => Tri::False,
            Predicate::Compare { column, op, value } => {
                let x = row[*column];
                if x.is_nan() {
                    Tri::Unknown
                } else {
                    op.test(x, *value).into()
                }
            }
            Predicate::IsMissing(c) => row[*c].is_nan().into(),
            Predicate::IsNotMissing(c) => (!row[*c].is_nan()).into(),
            Predicate::Set {
                column,
                values,
                is_in,
            } => {
                let x = row[*column];
                if x.is_nan() {
                    Tri::Unknown
                } else {
                    (values.contains(&x) == *is_in).into()
                }
            }
            Predicate::And(parts) => {
                let mut unknown = false;
                for p in parts {
                    match p.eval(row) {
                        Tri::False => return Tri::False,
                        Tri::Unknown => unknown = true,
                        Tri::True => {}
                    }
                }
                if unknown {
                    Tri::Unknown
                } else {
                    Tri::True
                }
            }
            Predicate::Or(parts) => {
                let mut unknown = false;
                for p in parts {
                    match p.eval(row) {
                        Tri::True => return Tri::True,
                        Tri::Unknown => unknown = true,
                        Tri::False => {}
                    }
                }
                if unknown {
                    Tri::Unknown
                } else {
                    Tri::False
                }
            }
            Predicate::Xor(parts) => {
                let mut odd = false;
                for p in parts {
                    match p.eval(row) {
                        Tri::Unknown => return Tri::Unknown,
                        Tri::True => odd = !odd,
                        Tri::False => {}
                    }
                }
                odd.into()
            }
            Predicate::Surrogate(parts) => parts
                .iter()
                .map(|p| p.eval(row))
                .find(|t| *t != Tri::Unknown)
                .unwrap_or(Tri::Unknown),
        }
    }
}
