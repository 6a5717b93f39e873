//! Expressions of derived and output fields: the kinds the tree exporters write (`FieldRef`
//! with a cast, `Constant`, arithmetic `Apply`, `MapValues` over an `InlineTable`).

use super::fields::{Column, DataType, OpType, Scope};
use super::xml::{self, El};
use crate::model::ModelError;

#[derive(Debug, Clone)]
pub enum Expr {
    Field(usize),
    Constant(f64),
    Apply(Func, Vec<Expr>),
    /// Input column, (input value, output value) pairs, the value of an unmatched input and
    /// of a missing one.
    MapValues {
        input: usize,
        table: Vec<(f64, f64)>,
        default: f64,
        missing: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Exp,
    Ln,
    Abs,
    Pow,
    IsMissing,
    IsNotMissing,
    If,
}

impl Func {
    fn parse(name: &str) -> Option<(Self, usize, Option<usize>)> {
        Some(match name {
            "+" => (Func::Add, 2, Some(2)),
            "-" => (Func::Sub, 2, Some(2)),
            "*" => (Func::Mul, 2, Some(2)),
            "/" => (Func::Div, 2, Some(2)),
            "min" => (Func::Min, 1, None),
            "max" => (Func::Max, 1, None),
            "exp" => (Func::Exp, 1, Some(1)),
            "ln" => (Func::Ln, 1, Some(1)),
            "abs" => (Func::Abs, 1, Some(1)),
            "pow" => (Func::Pow, 2, Some(2)),
            "isMissing" => (Func::IsMissing, 1, Some(1)),
            "isNotMissing" => (Func::IsNotMissing, 1, Some(1)),
            "if" => (Func::If, 2, Some(3)),
            _ => return None,
        })
    }
}

/// What reading an expression needs: the columns so far and the names in scope.
pub struct Ctx<'c> {
    pub columns: &'c mut Vec<Column>,
    pub scope: &'c Scope,
}

/// Reads the one expression child of `parent` (a `DerivedField` or `OutputField`), whose
/// result goes into `out` (a column of its own, already added).
pub fn read(parent: &El<'_, '_>, ctx: &mut Ctx<'_>, out: usize) -> Result<Expr, ModelError> {
    let mut exprs = xml::children(parent).filter(|c| xml::name(c) != "Value");
    let node = exprs
        .next()
        .ok_or_else(|| xml::err(parent, "needs an expression"))?;
    if let Some(extra) = exprs.next() {
        return Err(xml::unsupported(&extra));
    }
    expression(&node, ctx, out)
}

fn field_ref(node: &El<'_, '_>, ctx: &Ctx<'_>, key: &str) -> Result<usize, ModelError> {
    let name = xml::required(node, key)?;
    ctx.scope
        .get(name)
        .ok_or_else(|| xml::err(node, &format!("refers to the undefined field `{name}`")))
}

fn expression(node: &El<'_, '_>, ctx: &mut Ctx<'_>, out: usize) -> Result<Expr, ModelError> {
    match xml::name(node) {
        "FieldRef" => {
            let column = field_ref(node, ctx, "field")?;
            if xml::attr(node, "mapMissingTo").is_some() {
                return Err(xml::err(node, "mapMissingTo is not supported"));
            }
            let (from, to) = (&ctx.columns[column], &ctx.columns[out]);
            if from.is_string() != to.is_string() {
                return Err(xml::err(
                    node,
                    "converting between strings and numbers is not supported",
                ));
            }
            if from.is_string() {
                // Codes are per column: the derived column takes the referenced one's table.
                let strings = from.strings.clone();
                let valid = from.valid;
                let to = &mut ctx.columns[out];
                to.strings = strings;
                to.valid = valid;
            }
            Ok(Expr::Field(column))
        }
        "Constant" => {
            let text = node.text().unwrap_or("").trim();
            if xml::attr(node, "missing") == Some("true") {
                return Ok(Expr::Constant(f64::NAN));
            }
            let data_type = DataType::parse(node, "dataType")?.unwrap_or(DataType::Double);
            if data_type == DataType::String {
                return Err(xml::err(node, "string constants are not supported"));
            }
            let v = xml::parse_number(text)
                .and_then(|v| data_type.cast(v))
                .ok_or_else(|| xml::err(node, "is not a number of its type"))?;
            Ok(Expr::Constant(v))
        }
        "Apply" => {
            let function = xml::required(node, "function")?;
            let (func, min, max) = Func::parse(function).ok_or_else(|| {
                xml::err(node, &format!("function `{function}` is not supported"))
            })?;
            if xml::attr(node, "mapMissingTo").is_some()
                || xml::attr(node, "defaultValue").is_some()
            {
                return Err(xml::err(
                    node,
                    "mapMissingTo/defaultValue are not supported",
                ));
            }
            if xml::attr(node, "invalidValueTreatment").is_some_and(|t| t != "returnInvalid") {
                return Err(xml::err(
                    node,
                    "only invalidValueTreatment=\"returnInvalid\" is supported",
                ));
            }
            let mut args = Vec::new();
            for arg in xml::children(node) {
                let e = expression(&arg, ctx, out)?;
                if let Expr::Field(c) = e {
                    if ctx.columns[c].is_string() {
                        return Err(xml::err(&arg, "string arguments are not supported"));
                    }
                }
                args.push(e);
            }
            if args.len() < min || max.is_some_and(|m| args.len() > m) {
                return Err(xml::err(
                    node,
                    &format!("`{function}` has {} arguments", args.len()),
                ));
            }
            Ok(Expr::Apply(func, args))
        }
        "MapValues" => map_values(node, ctx, out),
        _ => Err(xml::unsupported(node)),
    }
}

fn map_values(node: &El<'_, '_>, ctx: &mut Ctx<'_>, out: usize) -> Result<Expr, ModelError> {
    let output_column = xml::required(node, "outputColumn")?;
    let mut pairs = xml::children(node).filter(|c| xml::name(c) == "FieldColumnPair");
    let pair = pairs
        .next()
        .ok_or_else(|| xml::err(node, "needs a FieldColumnPair"))?;
    if pairs.next().is_some() {
        return Err(xml::err(node, "only one FieldColumnPair is supported"));
    }
    let input = field_ref(&pair, ctx, "field")?;
    let input_column = xml::required(&pair, "column")?;
    let table =
        xml::child(node, "InlineTable").ok_or_else(|| xml::err(node, "needs an InlineTable"))?;
    if let Some(other) =
        xml::children(node).find(|c| !matches!(xml::name(c), "FieldColumnPair" | "InlineTable"))
    {
        return Err(xml::unsupported(&other));
    }
    let local = |name: &str| name.rsplit(':').next().unwrap_or(name).to_owned();
    let (input_column, output_column) = (local(input_column), local(output_column));
    let mut rows = Vec::new();
    for row in xml::children(&table) {
        if xml::name(&row) != "row" {
            return Err(xml::unsupported(&row));
        }
        let cell = |col: &str| {
            xml::children(&row)
                .find(|c| xml::name(c) == col)
                .map(|c| c.text().unwrap_or("").to_owned())
        };
        let (Some(i), Some(o)) = (cell(&input_column), cell(&output_column)) else {
            return Err(xml::err(&row, "lacks the mapped columns"));
        };
        let key = literal_of(ctx, input, &i).ok_or_else(|| xml::err(&row, "bad input value"))?;
        let value = literal_of(ctx, out, &o).ok_or_else(|| xml::err(&row, "bad output value"))?;
        rows.push((key, value));
    }
    let default = match xml::attr(node, "defaultValue") {
        Some(d) => literal_of(ctx, out, d).ok_or_else(|| xml::err(node, "bad defaultValue"))?,
        None => f64::NAN,
    };
    let missing = match xml::attr(node, "mapMissingTo") {
        Some(d) => literal_of(ctx, out, d).ok_or_else(|| xml::err(node, "bad mapMissingTo"))?,
        None => f64::NAN,
    };
    Ok(Expr::MapValues {
        input,
        table: rows,
        default,
        missing,
    })
}

fn literal_of(ctx: &mut Ctx<'_>, column: usize, text: &str) -> Option<f64> {
    ctx.columns[column].literal(text)
}

impl Expr {
    pub fn eval(&self, row: &[f64]) -> f64 {
        match self {
            Expr::Field(c) => row[*c],
            Expr::Constant(v) => *v,
            Expr::MapValues {
                input,
                table,
                default,
                missing,
            } => {
                let v = row[*input];
                if v.is_nan() {
                    return *missing;
                }
                table
                    .iter()
                    .find(|(k, _)| *k == v)
                    .map_or(*default, |(_, o)| *o)
            }
            Expr::Apply(func, args) => {
                let arg = |i: usize| args[i].eval(row);
                match func {
                    Func::IsMissing => bool_value(arg(0).is_nan()),
                    Func::IsNotMissing => bool_value(!arg(0).is_nan()),
                    Func::If => {
                        let cond = arg(0);
                        if cond.is_nan() {
                            f64::NAN
                        } else if cond != 0.0 {
                            arg(1)
                        } else if args.len() == 3 {
                            arg(2)
                        } else {
                            f64::NAN
                        }
                    }
                    // Every other function is missing when any argument is (PMML's default).
                    _ => {
                        let values: Vec<f64> = args.iter().map(|a| a.eval(row)).collect();
                        if values.iter().any(|v| v.is_nan()) {
                            return f64::NAN;
                        }
                        match func {
                            Func::Add => values[0] + values[1],
                            Func::Sub => values[0] - values[1],
                            Func::Mul => values[0] * values[1],
                            Func::Div => values[0] / values[1],
                            Func::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                            Func::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                            Func::Exp => values[0].exp(),
                            Func::Ln => values[0].ln(),
                            Func::Abs => values[0].abs(),
                            Func::Pow => values[0].powf(values[1]),
                            Func::IsMissing | Func::IsNotMissing | Func::If => {
                                unreachable!("handled above")
                            }
                        }
                    }
                }
            }
        }
    }
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// A derived field: its column, expression and the type its result is cast to.
#[derive(Debug, Clone)]
pub struct Derived {
    pub column: usize,
    pub expr: Expr,
    pub data_type: DataType,
}

impl Derived {
    pub fn compute(&self, row: &mut [f64]) {
        let v = self.expr.eval(row);
        row[self.column] = match self.data_type {
            DataType::String => v,
            t => t.cast(v).unwrap_or(f64::NAN),
        };
    }
}

/// Reads the `DerivedField`s of a `TransformationDictionary` or `LocalTransformations`,
/// each visible to the ones after it.
pub fn derived_fields(
    node: &El<'_, '_>,
    columns: &mut Vec<Column>,
    scope: &mut Scope,
) -> Result<Vec<Derived>, ModelError> {
    let mut out = Vec::new();
    for field in xml::children(node) {
        if xml::name(&field) != "DerivedField" {
            return Err(xml::unsupported(&field));
        }
        let name = xml::required(&field, "name")?;
        let data_type = DataType::parse(&field, "dataType")?
            .ok_or_else(|| xml::err(&field, "needs a dataType"))?;
        let op_type = OpType::parse(&field)?.unwrap_or(OpType::Continuous);
        columns.push(Column::new(name, data_type, op_type));
        let column = columns.len() - 1;
        let expr = read(&field, &mut Ctx { columns, scope }, column)?;
        scope.insert(name, column);
        out.push(Derived {
            column,
            expr,
            data_type,
        });
    }
    Ok(out)
}
