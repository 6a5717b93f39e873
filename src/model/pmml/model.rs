//! The models of a document as a tree: `TreeModel`, `RegressionModel` and `MiningModel`
//! segmentations of them, read from XML and evaluated exactly as JPMML-Evaluator does.

use super::expr::{self, Ctx, Derived, Expr};
use super::fields::{Column, DataType, OpType, Scope};
use super::predicate::{self, Predicate, Tri};
use super::target::{self, Categories, Rescale};
use super::tree::{self, argmax, Tree};
use super::xml::{self, El};
use crate::model::ModelError;

/// A model's result for one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Missing,
    /// Label's category index and the probabilities, in category order.
    Class {
        label: usize,
        probabilities: Vec<f64>,
    },
    Value(f64),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub local: Vec<Derived>,
    pub categories: Option<Categories>,
    pub rescale: Option<Rescale>,
    pub outputs: Vec<OutputDef>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Tree(Tree),
    Regression(Regression),
    Mining(Mining),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    MajorityVote,
    WeightedMajorityVote,
    Average,
    WeightedAverage,
    Sum,
    ModelChain,
    SelectFirst,
}

#[derive(Debug, Clone)]
pub struct Mining {
    pub method: Method,
    pub segments: Vec<Segment>,
    /// `missingPredictionTreatment="returnMissing"`; else a missing segment is skipped.
    pub return_missing: bool,
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub predicate: Predicate,
    pub weight: f64,
    pub model: Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    None,
    Logit,
    Softmax,
    Exp,
}

#[derive(Debug, Clone)]
pub struct Regression {
    pub tables: Vec<Table>,
    pub normalization: Normalization,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub intercept: f64,
    /// (column, exponent, coefficient)
    pub numeric: Vec<(usize, i32, f64)>,
    /// (column, value, coefficient)
    pub categorical: Vec<(usize, f64, f64)>,
    pub category: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum Feature {
    Predicted,
    /// A category's probability; that of the predicted one when `None`.
    Probability(Option<usize>),
    Transformed(Expr),
}

#[derive(Debug, Clone)]
pub struct OutputDef {
    pub name: String,
    pub column: usize,
    pub feature: Feature,
    pub final_result: bool,
    /// Predicted values: each category's value in this output's column.
    pub category_values: Vec<f64>,
}

/// What reading a model needs besides its element.
pub struct Reader<'r> {
    pub columns: &'r mut Vec<Column>,
}

/// The top model's mining fields, for the caller to turn into input treatments.
pub struct TopSchema<'a, 'i> {
    pub fields: Vec<El<'a, 'i>>,
    pub target: Option<usize>,
    pub verification: Option<El<'a, 'i>>,
}

const MODELS: [&str; 3] = ["TreeModel", "MiningModel", "RegressionModel"];

pub fn is_model(node: &El<'_, '_>) -> bool {
    MODELS.contains(&xml::name(node))
}

impl Reader<'_> {
    /// Reads one model. `inherited` is the enclosing classifier's categories (the segments
    /// of a forest name no target of their own); `top` the outermost model, whose mining
    /// fields are the inputs.
    pub fn model<'a, 'i>(
        &mut self,
        el: &El<'a, 'i>,
        outer: &Scope,
        inherited: Option<&Categories>,
        top: Option<&mut TopSchema<'a, 'i>>,
    ) -> Result<(Node, Scope), ModelError> {
        let classification = match xml::required(el, "functionName")? {
            "classification" => true,
            "regression" => false,
            other => {
                return Err(xml::err(
                    el,
                    &format!("functionName `{other}` is not supported"),
                ))
            }
        };
        if let Some(mc) = xml::attr(el, "x-mathContext").or(xml::attr(el, "mathContext")) {
            if mc != "double" {
                return Err(xml::err(
                    el,
                    &format!("mathContext `{mc}` is not supported"),
                ));
            }
        }
        if xml::attr(el, "isScorable") == Some("false") {
            return Err(xml::err(el, "is marked not scorable"));
        }
        let mut scope = outer.clone();
        let mut schema = None;
        let (mut output_el, mut targets_el, mut body) = (None, None, Vec::new());
        let mut top = top;
        for part in xml::children(el) {
            match xml::name(&part) {
                "MiningSchema" => schema = Some(part),
                "Output" => output_el = Some(part),
                "Targets" => targets_el = Some(part),
                "ModelStats" | "ModelExplanation" => {}
                "LocalTransformations" => {
                    let derived = expr::derived_fields(&part, self.columns, &mut scope)?;
                    body.push(Body::Local(derived));
                }
                "ModelVerification" => match top.as_deref_mut() {
                    Some(t) => t.verification = Some(part),
                    None => return Err(xml::err(&part, "is only read on the outermost model")),
                },
                "Node" | "Segmentation" | "RegressionTable" => body.push(Body::Part(part)),
                _ => return Err(xml::unsupported(&part)),
            }
        }
        let schema = schema.ok_or_else(|| xml::err(el, "needs a MiningSchema"))?;
        let mut target_column = None;
        for field in xml::children(&schema) {
            if xml::name(&field) != "MiningField" {
                return Err(xml::unsupported(&field));
            }
            let name = xml::required(&field, "name")?;
            let column = outer.get(name).ok_or_else(|| {
                xml::err(&field, &format!("refers to the undefined field `{name}`"))
            })?;
            match xml::attr(&field, "usageType").unwrap_or("active") {
                "active" => {}
                "target" | "predicted" => target_column = Some(column),
                "supplementary" => {}
                other => {
                    return Err(xml::err(
                        &field,
                        &format!("usageType `{other}` is not supported"),
                    ))
                }
            }
            match top.as_deref_mut() {
                Some(t) => t.fields.push(field),
                None => {
                    let treated = [
                        "missingValueReplacement",
                        "invalidValueTreatment",
                        "invalidValueReplacement",
                        "outliers",
                        "lowValue",
                        "highValue",
                    ];
                    if let Some(key) = treated.iter().find(|k| xml::attr(&field, k).is_some()) {
                        return Err(xml::err(
                            &field,
                            &format!("`{key}` is only supported on the outermost model"),
                        ));
                    }
                }
            }
        }
        if let Some(t) = top {
            t.target = target_column;
        }
        let categories = match (classification, target_column) {
            (false, _) => None,
            (true, Some(c)) => Some(Categories::of(&self.columns[c], &schema)?),
            (true, None) => Some(
                inherited
                    .cloned()
                    .ok_or_else(|| xml::err(&schema, "a classifier needs a target field"))?,
            ),
        };
        let rescale = match targets_el {
            Some(t) => target::targets(&t, !classification)?,
            None => None,
        };
        let mut local = Vec::new();
        let mut kind = None;
        for part in body {
            match part {
                Body::Local(d) => local.extend(d),
                Body::Part(part) => {
                    let k = match xml::name(&part) {
                        "Node" if xml::name(el) == "TreeModel" && kind.is_none() => Kind::Tree(
                            tree::read(el, &part, self.columns, &scope, categories.as_ref())?,
                        ),
                        "Segmentation" if xml::name(el) == "MiningModel" && kind.is_none() => {
                            Kind::Mining(self.segmentation(&part, &scope, categories.as_ref())?)
                        }
                        "RegressionTable" if xml::name(el) == "RegressionModel" => {
                            let table = self.table(&part, &scope, categories.as_ref())?;
                            match &mut kind {
                                Some(Kind::Regression(r)) => {
                                    r.tables.push(table);
                                    continue;
                                }
                                _ => Kind::Regression(Regression {
                                    tables: vec![table],
                                    normalization: normalization(el)?,
                                }),
                            }
                        }
                        _ => return Err(xml::unsupported(&part)),
                    };
                    kind = Some(k);
                }
            }
        }
        let kind = kind.ok_or_else(|| xml::err(el, "has no model body"))?;
        if let Kind::Regression(r) = &kind {
            check_regression(el, r, categories.as_ref())?;
        }
        let mut outputs = Vec::new();
        if let Some(output) = output_el {
            for field in xml::children(&output) {
                outputs.push(self.output(&field, &mut scope, categories.as_ref())?);
            }
        }
        Ok((
            Node {
                kind,
                local,
                categories,
                rescale,
                outputs,
            },
            scope,
        ))
    }

    fn segmentation(
        &mut self,
        el: &El<'_, '_>,
        scope: &Scope,
        categories: Option<&Categories>,
    ) -> Result<Mining, ModelError> {
        let method = match xml::required(el, "multipleModelMethod")? {
            "majorityVote" => Method::MajorityVote,
            "weightedMajorityVote" => Method::WeightedMajorityVote,
            "average" => Method::Average,
            "weightedAverage" => Method::WeightedAverage,
            "sum" => Method::Sum,
            "modelChain" => Method::ModelChain,
            "selectFirst" => Method::SelectFirst,
            other => {
                return Err(xml::err(
                    el,
                    &format!("multipleModelMethod `{other}` is not supported"),
                ))
            }
        };
        let classification = categories.is_some();
        let fits = match method {
            Method::MajorityVote | Method::WeightedMajorityVote => classification,
            Method::Sum => !classification,
            _ => true,
        };
        if !fits {
            return Err(xml::err(
                el,
                "this multipleModelMethod does not fit the model's function",
            ));
        }
        let return_missing = match xml::attr(el, "missingPredictionTreatment").unwrap_or("continue")
        {
            "returnMissing" => true,
            "continue" | "skipSegment" => false,
            other => {
                return Err(xml::err(
                    el,
                    &format!("missingPredictionTreatment `{other}` is unknown"),
                ))
            }
        };
        if xml::attr(el, "missingThreshold").is_some() {
            return Err(xml::err(el, "missingThreshold is not supported"));
        }
        let mut chain_scope = scope.clone();
        let mut segments = Vec::new();
        for seg in xml::children(el) {
            if xml::name(&seg) != "Segment" {
                return Err(xml::unsupported(&seg));
            }
            let weight = xml::number(&seg, "weight")?.unwrap_or(1.0);
            let mut parts = xml::children(&seg);
            let (Some(p), Some(m)) = (parts.next(), parts.next()) else {
                return Err(xml::err(&seg, "needs a predicate and a model"));
            };
            if let Some(extra) = parts.next() {
                return Err(xml::unsupported(&extra));
            }
            if !predicate::is_predicate(&p) {
                return Err(xml::unsupported(&p));
            }
            if !is_model(&m) {
                return Err(xml::unsupported(&m));
            }
            let seg_scope = if method == Method::ModelChain {
                &chain_scope
            } else {
                scope
            };
            let predicate = predicate::read(&p, self.columns, seg_scope)?;
            let (model, after) = self.model(&m, seg_scope, categories, None)?;
            if model.categories.is_some() != classification && method != Method::ModelChain {
                return Err(xml::err(&m, "a segment's function must be its ensemble's"));
            }
            // Votes and averages index the ensemble's categories by the segment's labels.
            if let (Some(mine), Some(theirs)) = (&model.categories, categories) {
                if method != Method::ModelChain && mine.names != theirs.names {
                    return Err(xml::err(
                        &m,
                        "a segment's categories must be its ensemble's",
                    ));
                }
            }
            if method == Method::ModelChain {
                for out in &model.outputs {
                    chain_scope.insert(&out.name, out.column);
                }
                let _ = after;
            }
            segments.push(Segment {
                predicate,
                weight,
                model,
            });
        }
        if segments.is_empty() {
            return Err(xml::err(el, "has no segments"));
        }
        if method == Method::ModelChain {
            let last = &segments[segments.len() - 1].model;
            if last.categories.is_some() != classification {
                return Err(xml::err(
                    el,
                    "the chain's last model must have the ensemble's function",
                ));
            }
        }
        Ok(Mining {
            method,
            segments,
            return_missing,
        })
    }

    fn table(
        &mut self,
        el: &El<'_, '_>,
        scope: &Scope,
        categories: Option<&Categories>,
    ) -> Result<Table, ModelError> {
        let intercept = xml::number(el, "intercept")?.unwrap_or(0.0);
        let category =
            match (xml::attr(el, "targetCategory"), categories) {
                (Some(c), Some(cats)) => Some(cats.index_of(c).ok_or_else(|| {
                    xml::err(el, &format!("targetCategory `{c}` is not a category"))
                })?),
                (None, Some(_)) => return Err(xml::err(el, "needs a targetCategory")),
                (_, None) => None,
            };
        let mut table = Table {
            intercept,
            numeric: Vec::new(),
            categorical: Vec::new(),
            category,
        };
        for p in xml::children(el) {
            let name = xml::required(&p, "name")?;
            let column = scope
                .get(name)
                .ok_or_else(|| xml::err(&p, &format!("refers to the undefined field `{name}`")))?;
            let coefficient = xml::number(&p, "coefficient")?
                .ok_or_else(|| xml::err(&p, "needs a coefficient"))?;
            match xml::name(&p) {
                "NumericPredictor" => {
                    let exponent = xml::number(&p, "exponent")?.unwrap_or(1.0);
                    if exponent.fract() != 0.0 || exponent.abs() > 64.0 {
                        return Err(xml::err(&p, "exponent must be a small integer"));
                    }
                    table.numeric.push((column, exponent as i32, coefficient));
                }
                "CategoricalPredictor" => {
                    let text = xml::required(&p, "value")?;
                    let value = self.columns[column]
                        .literal(text)
                        .ok_or_else(|| xml::err(&p, "value is not of the field's type"))?;
                    table.categorical.push((column, value, coefficient));
                }
                _ => return Err(xml::unsupported(&p)),
            }
        }
        Ok(table)
    }

    fn output(
        &mut self,
        el: &El<'_, '_>,
        scope: &mut Scope,
        categories: Option<&Categories>,
    ) -> Result<OutputDef, ModelError> {
        if xml::name(el) != "OutputField" {
            return Err(xml::unsupported(el));
        }
        let name = xml::required(el, "name")?;
        let feature_name = xml::attr(el, "feature").unwrap_or("predictedValue");
        // Without a dataType, a predicted value has the target's type; anything else is a
        // number.
        let data_type =
            DataType::parse(el, "dataType")?.unwrap_or(match (feature_name, categories) {
                ("predictedValue", Some(c)) => c.data_type,
                _ => DataType::Double,
            });
        let op_type = OpType::parse(el)?.unwrap_or(OpType::Continuous);
        self.columns.push(Column::new(name, data_type, op_type));
        let column = self.columns.len() - 1;
        let final_result = xml::attr(el, "isFinalResult") != Some("false");
        if xml::attr(el, "segmentId").is_some() {
            return Err(xml::err(el, "segmentId is not supported"));
        }
        let feature = match feature_name {
            "predictedValue" => Feature::Predicted,
            "probability" => {
                let Some(cats) = categories else {
                    return Err(xml::err(el, "probability of a regression"));
                };
                match xml::attr(el, "value") {
                    None => Feature::Probability(None),
                    Some(v) => Feature::Probability(Some(
                        cats.index_of(v)
                            .ok_or_else(|| xml::err(el, &format!("`{v}` is not a category")))?,
                    )),
                }
            }
            "transformedValue" | "decision" => {
                let e = expr::read(
                    el,
                    &mut Ctx {
                        columns: self.columns,
                        scope,
                    },
                    column,
                )?;
                Feature::Transformed(e)
            }
            other => return Err(xml::err(el, &format!("feature `{other}` is not supported"))),
        };
        let mut category_values = Vec::new();
        if let (Feature::Predicted, Some(cats)) = (&feature, categories) {
            for (i, n) in cats.names.iter().enumerate() {
                let col = &mut self.columns[column];
                let v = match &cats.numbers {
                    Some(numbers) if !col.is_string() => Some(numbers[i]),
                    _ => col.literal(n),
                };
                category_values.push(v.ok_or_else(|| {
                    xml::err(
                        el,
                        &format!("category `{n}` is not a {}", data_type.as_str()),
                    )
                })?);
            }
        }
        scope.insert(name, column);
        Ok(OutputDef {
            name: name.to_owned(),
            column,
            feature,
            final_result,
            category_values,
        })
    }
}

enum Body<'a, 'i> {
    Local(Vec<Derived>),
    Part(El<'a, 'i>),
}

fn normalization(el: &El<'_, '_>) -> Result<Normalization, ModelError> {
    Ok(
        match xml::attr(el, "normalizationMethod").unwrap_or("none") {
            "none" => Normalization::None,
            "logit" => Normalization::Logit,
            "softmax" => Normalization::Softmax,
            "exp" => Normalization::Exp,
            other => {
                return Err(xml::err(
                    el,
                    &format!("normalizationMethod `{other}` is not supported"),
                ))
            }
        },
    )
}

fn check_regression(
    el: &El<'_, '_>,
    r: &Regression,
    categories: Option<&Categories>,
) -> Result<(), ModelError> {
    match categories {
        None => {
            if r.tables.len() != 1 || r.normalization == Normalization::Softmax {
                return Err(xml::err(
                    el,
                    "a regression has one RegressionTable and no softmax",
                ));
            }
        }
        Some(cats) => {
            if r.tables.len() != cats.len() {
                return Err(xml::err(el, "needs one RegressionTable per category"));
            }
            let ok = match r.normalization {
                Normalization::Softmax => true,
                Normalization::Logit | Normalization::None => cats.len() == 2,
                Normalization::Exp => false,
            };
            if !ok {
                return Err(xml::err(
                    el,
                    "this normalizationMethod does not fit the categories",
                ));
            }
        }
    }
    Ok(())
}

impl Node {
    /// Evaluates the model on a full row (inputs and global derived fields set), writing its
    /// local and output fields into their columns.
    pub fn eval(&self, row: &mut [f64]) -> Prediction {
        for d in &self.local {
            d.compute(row);
        }
        let mut p = match &self.kind {
            Kind::Tree(t) => match t.walk(row) {
                None => Prediction::Missing,
                Some(node) => match &self.categories {
                    Some(_) => Prediction::Class {
                        label: node.score.unwrap_or(0.0) as usize,
                        probabilities: node.probabilities.clone(),
                    },
                    None => Prediction::Value(node.score.unwrap_or(f64::NAN)),
                },
            },
            Kind::Regression(r) => r.eval(row, self.categories.as_ref()),
            Kind::Mining(m) => m.eval(row, self.categories.as_ref()),
        };
        if let (Some(r), Prediction::Value(v)) = (self.rescale, &mut p) {
            *v = r.apply(*v);
        }
        self.write_outputs(&p, row);
        p
    }

    pub fn write_outputs(&self, p: &Prediction, row: &mut [f64]) {
        for out in &self.outputs {
            let v = match (&out.feature, p) {
                (Feature::Transformed(e), _) => e.eval(row),
                (_, Prediction::Missing) => f64::NAN,
                (Feature::Predicted, Prediction::Class { label, .. }) => {
                    out.category_values[*label]
                }
                (Feature::Predicted, Prediction::Value(v)) => *v,
                (Feature::Probability(Some(c)), Prediction::Class { probabilities, .. }) => {
                    probabilities[*c]
                }
                (
                    Feature::Probability(None),
                    Prediction::Class {
                        label,
                        probabilities,
                    },
                ) => probabilities[*label],
                (Feature::Probability(_), Prediction::Value(_)) => f64::NAN,
            };
            row[out.column] = v;
        }
    }
}

impl Regression {
    fn eval(&self, row: &[f64], categories: Option<&Categories>) -> Prediction {
        let mut ys = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let mut y = t.intercept;
            for &(c, e, coef) in &t.numeric {
                let x = row[c];
                if x.is_nan() {
                    return Prediction::Missing;
                }
                y += coef * if e == 1 { x } else { x.powi(e) };
            }
            for &(c, v, coef) in &t.categorical {
                let x = row[c];
                if x.is_nan() {
                    return Prediction::Missing;
                }
                if x == v {
                    y += coef;
                }
            }
            ys.push(y);
        }
        let Some(cats) = categories else {
            let y = ys[0];
            return Prediction::Value(match self.normalization {
                Normalization::Logit => 1.0 / (1.0 + (-y).exp()),
                Normalization::Exp => y.exp(),
                _ => y,
            });
        };
        let mut probabilities = vec![0.0; cats.len()];
        match self.normalization {
            Normalization::Softmax => {
                let max = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = ys.iter().map(|y| (y - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for (t, e) in self.tables.iter().zip(&exps) {
                    probabilities[t.category.unwrap_or(0)] = e / sum;
                }
            }
            // Binary: the first table gives its category's probability, the other the rest.
            Normalization::Logit | Normalization::None => {
                let p0 = match self.normalization {
                    Normalization::Logit => 1.0 / (1.0 + (-ys[0]).exp()),
                    _ => ys[0],
                };
                probabilities[self.tables[0].category.unwrap_or(0)] = p0;
                probabilities[self.tables[1].category.unwrap_or(1)] = 1.0 - p0;
            }
            Normalization::Exp => return Prediction::Missing,
        }
        Prediction::Class {
            label: argmax(&probabilities),
            probabilities,
        }
    }
}

impl Mining {
    fn eval(&self, row: &mut [f64], categories: Option<&Categories>) -> Prediction {
        match self.method {
            Method::ModelChain => {
                let mut last = Prediction::Missing;
                for seg in &self.segments {
                    if seg.predicate.eval(row) != Tri::True {
                        continue;
                    }
                    last = seg.model.eval(row);
                    if last == Prediction::Missing && self.return_missing {
                        return Prediction::Missing;
                    }
                }
                last
            }
            Method::SelectFirst => {
                for seg in &self.segments {
                    if seg.predicate.eval(row) == Tri::True {
                        return seg.model.eval(row);
                    }
                }
                Prediction::Missing
            }
            method => {
                let n = categories.map_or(1, Categories::len);
                let mut sums = vec![0.0; n];
                let (mut count, mut weights) = (0usize, 0.0);
                for seg in &self.segments {
                    if seg.predicate.eval(row) != Tri::True {
                        continue;
                    }
                    let p = seg.model.eval(row);
                    let w = seg.weight;
                    match (&p, method) {
                        (Prediction::Missing, _) => {
                            if self.return_missing {
                                return Prediction::Missing;
                            }
                            continue;
                        }
                        (Prediction::Class { label, .. }, Method::MajorityVote) => {
                            sums[*label] += 1.0
                        }
                        (Prediction::Class { label, .. }, Method::WeightedMajorityVote) => {
                            sums[*label] += w
                        }
                        (Prediction::Class { probabilities, .. }, Method::Average) => {
                            for (s, p) in sums.iter_mut().zip(probabilities) {
                                *s += p;
                            }
                        }
                        (Prediction::Class { probabilities, .. }, _) => {
                            for (s, p) in sums.iter_mut().zip(probabilities) {
                                *s += w * p;
                            }
                        }
                        (Prediction::Value(v), Method::WeightedAverage) => sums[0] += w * v,
                        (Prediction::Value(v), _) => sums[0] += v,
                    }
                    count += 1;
                    weights += w;
                }
                if count == 0 {
                    return Prediction::Missing;
                }
                let divisor = match method {
                    Method::Sum => 1.0,
                    Method::Average => count as f64,
                    Method::MajorityVote => count as f64,
                    _ => weights,
                };
                match categories {
                    None => Prediction::Value(sums[0] / divisor),
                    Some(_) => {
                        for s in &mut sums {
                            *s /= divisor;
                        }
                        Prediction::Class {
                            label: argmax(&sums),
                            probabilities: sums,
                        }
                    }
                }
            }
        }
    }
}
