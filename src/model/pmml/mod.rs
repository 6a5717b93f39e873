//! PMML models: a document read into an exact evaluator of its models, with tree forests
//! also compiled into a flat kernel for rows that have every value.
//!
//! The supported subset is what sklearn2pmml and JPMML-SparkML write for tree models (see
//! the README's "PMML models"); anything else is refused with the element and line it is
//! at, never scored approximately.
//!
//! `xml` reads the document safely; `fields` and `expr` hold the data dictionary, mining
//! schema and derived fields; `predicate` and `tree` the tree models; `target` categories
//! and rescaling; `model` the model tree (segmentations, regressions, outputs) and its exact
//! evaluation; `kernel` the fast form of forests; `verify` the `ModelVerification` check.

pub mod export;
mod expr;
pub mod fields;
mod kernel;
mod model;
mod predicate;
mod target;
mod tree;
mod verify;
mod xml;

use serde_json::{json, Map, Value};

use self::fields::{Column, InputError, InputField, InvalidTreatment, Raw, Scope};
pub use self::model::Prediction;
use self::model::{Node, Reader, TopSchema};
use self::target::Categories;
use crate::model::ModelError;

/// Whether `bytes` look like a PMML document rather than a streamscore model file.
pub fn looks_like_pmml(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    trimmed.starts_with('<')
}

#[derive(Debug)]
pub struct PmmlModel {
    columns: Vec<Column>,
    /// Active fields, in mining schema order, and the column each fills.
    inputs: Vec<InputField>,
    input_names: Vec<String>,
    global: Vec<expr::Derived>,
    root: Node,
    target_name: String,
    categories: Option<Categories>,
    summary: String,
    kernel: Option<kernel::Kernel>,
}

/// Stack for reading a document: the readers and the kernel compiler recurse once or twice
/// per nesting level, up to `xml::MAX_DEPTH`, which on a caller's stack (a 2 MiB runtime
/// worker, say) an unoptimised build would not fit. Only what is used is ever committed.
const PARSE_STACK_BYTES: usize = 256 << 20;

impl PmmlModel {
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        std::thread::scope(|scope| {
            let reader = std::thread::Builder::new()
                .name("pmml-parse".into())
                .stack_size(PARSE_STACK_BYTES)
                .spawn_scoped(scope, || Self::parse_here(text))
                .map_err(|e| ModelError::Invalid(format!("cannot start the PMML reader: {e}")))?;
            reader
                .join()
                .map_err(|_| ModelError::Invalid("the PMML reader failed".into()))?
        })
    }

    fn parse_here(text: &str) -> Result<Self, ModelError> {
        let doc = xml::parse(text)?;
        let root = doc.root_element();
        let mut columns = Vec::new();
        let mut scope = Scope::default();
        let mut global = Vec::new();
        let mut model_el = None;
        for part in xml::children(&root) {
            match xml::name(&part) {
                "Header" | "MiningBuildTask" => {}
                "DataDictionary" => {
                    columns = fields::data_dictionary(&part)?;
                    for (i, c) in columns.iter().enumerate() {
                        scope.insert(&c.name, i);
                    }
                }
                "TransformationDictionary" => {
                    global = expr::derived_fields(&part, &mut columns, &mut scope)?;
                }
                _ if model::is_model(&part) => {
                    if model_el.is_some() {
                        return Err(xml::err(
                            &part,
                            "a document with more than one model is not supported",
                        ));
                    }
                    model_el = Some(part);
                }
                _ => return Err(xml::unsupported(&part)),
            }
        }
        let model_el = model_el.ok_or_else(|| {
            xml::err(
                &root,
                "holds no supported model (TreeModel, MiningModel, RegressionModel)",
            )
        })?;
        let n_dictionary = columns.len();
        let mut top = TopSchema {
            fields: Vec::new(),
            target: None,
            verification: None,
        };
        let (root_model, _) = Reader {
            columns: &mut columns,
        }
        .model(&model_el, &scope, None, Some(&mut top))?;
        let target = top
            .target
            .ok_or_else(|| xml::err(&model_el, "needs a target field in its MiningSchema"))?;
        let mut inputs = Vec::new();
        let mut input_names = Vec::new();
        for field in &top.fields {
            let name = xml::required(field, "name")?;
            let Some(column) = scope.get(name) else {
                continue;
            };
            let usage = xml::attr(field, "usageType").unwrap_or("active");
            if usage != "active" {
                continue;
            }
            if column >= n_dictionary {
                return Err(xml::err(field, "an active field must be a DataField"));
            }
            let invalid = match xml::attr(field, "invalidValueTreatment").unwrap_or("returnInvalid")
            {
                "returnInvalid" => InvalidTreatment::ReturnInvalid,
                "asIs" => InvalidTreatment::AsIs,
                "asMissing" => InvalidTreatment::AsMissing,
                "asValue" => InvalidTreatment::ReturnInvalid,
                other => {
                    return Err(xml::err(
                        field,
                        &format!("invalidValueTreatment `{other}` is unknown"),
                    ))
                }
            };
            if xml::attr(field, "outliers").is_some_and(|o| o != "asIs") {
                return Err(xml::err(field, "only outliers=\"asIs\" is supported"));
            }
            let literal =
                |key: &str, columns: &mut Vec<Column>| -> Result<Option<f64>, ModelError> {
                    match xml::attr(field, key) {
                        None => Ok(None),
                        Some(text) => columns[column].literal(text).map(Some).ok_or_else(|| {
                            xml::err(field, &format!("`{key}` is not a value of the field"))
                        }),
                    }
                };
            let missing_replacement = literal("missingValueReplacement", &mut columns)?;
            let invalid_replacement = literal("invalidValueReplacement", &mut columns)?;
            if input_names.contains(&name.to_owned()) {
                return Err(xml::err(field, "is listed twice"));
            }
            input_names.push(name.to_owned());
            inputs.push(InputField {
                column,
                invalid,
                missing_replacement,
                invalid_replacement,
            });
        }
        let categories = root_model.categories.clone();
        let summary = match xml::name(&model_el) {
            "MiningModel" => "Ensemble model",
            "TreeModel" => "Tree model",
            _ => "Regression model",
        }
        .to_owned();
        let mut kernel = kernel::Kernel::compile(&root_model, &columns);
        if let Some(k) = &mut kernel {
            let input_columns: Vec<usize> = inputs.iter().map(|i| i.column).collect();
            k.gather_from_inputs(&input_columns, !global.is_empty());
        }
        let model = Self {
            target_name: columns[target].name.clone(),
            columns,
            inputs,
            input_names,
            global,
            root: root_model,
            categories,
            summary,
            kernel,
        };
        if let Some(v) = top.verification {
            verify::check(&model, &v)?;
        }
        Ok(model)
    }

    /// Input field names, in the order `prepare` and `predict_rows` take them.
    pub fn features(&self) -> &[String] {
        &self.input_names
    }

    /// A classifier's category names (empty for a regression).
    pub fn classes(&self) -> Vec<String> {
        self.categories
            .as_ref()
            .map(|c| c.names.clone())
            .unwrap_or_default()
    }

    pub fn is_classification(&self) -> bool {
        self.categories.is_some()
    }

    pub fn summary(&self) -> &str {
        &self.summary
    }

    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// Whether forests of this model score complete rows through the flat kernel.
    pub fn has_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    pub fn n_trees(&self) -> usize {
        self.kernel.as_ref().map_or(0, kernel::Kernel::n_trees)
    }

    /// The value of input `i` after the mining schema's treatments.
    pub fn prepare(&self, i: usize, raw: Raw<'_>) -> Result<f64, InputError> {
        let input = &self.inputs[i];
        input.prepare(&self.columns[input.column], raw)
    }

    /// Predictions for rows of prepared inputs (`features().len()` values each).
    pub fn predict_rows(&self, inputs: &[f64]) -> Vec<Prediction> {
        let n = self.inputs.len();
        if n == 0 {
            return Vec::new();
        }
        let mut row = vec![f64::NAN; self.columns.len()];
        let fast = match &self.kernel {
            Some(k) => k.predict(self, inputs),
            None => vec![None; inputs.len() / n],
        };
        inputs
            .chunks_exact(n)
            .zip(fast)
            .map(|(values, fast)| match fast {
                Some(p) => p,
                None => self.predict_exact(values, &mut row),
            })
            .collect()
    }

    /// Predictions of the exact evaluator alone (what the kernel is tested against).
    pub fn predict_rows_exact(&self, inputs: &[f64]) -> Vec<Prediction> {
        let n = self.inputs.len().max(1);
        let mut row = vec![f64::NAN; self.columns.len()];
        inputs
            .chunks_exact(n)
            .map(|values| self.predict_exact(values, &mut row))
            .collect()
    }

    fn width(&self) -> usize {
        self.columns.len()
    }

    fn fill(&self, values: &[f64], row: &mut [f64]) {
        self.fill_row(values, row);
    }

    fn rescaled(&self, v: f64) -> f64 {
        self.root.rescale.map_or(v, |r| r.apply(v))
    }

    /// The exact evaluation of one row of prepared inputs, `row` as scratch.
    fn predict_exact(&self, values: &[f64], row: &mut [f64]) -> Prediction {
        self.fill_row(values, row);
        self.root.eval(row)
    }

    fn fill_row(&self, values: &[f64], row: &mut [f64]) {
        row.iter_mut().for_each(|v| *v = f64::NAN);
        for (input, v) in self.inputs.iter().zip(values) {
            row[input.column] = *v;
        }
        for d in &self.global {
            d.compute(row);
        }
    }

    /// Openscoring's evaluation of one request's `arguments`: the target and the final
    /// output fields, typed as the model declares them.
    pub fn evaluate(&self, arguments: &Map<String, Value>) -> Result<Map<String, Value>, String> {
        let mut values = Vec::with_capacity(self.inputs.len());
        for (i, name) in self.input_names.iter().enumerate() {
            let raw = match arguments.get(name) {
                None | Some(Value::Null) => Raw::Missing,
                Some(Value::Number(n)) => Raw::Number(n.as_f64().unwrap_or(f64::NAN)),
                Some(Value::String(s)) => Raw::Text(s),
                Some(Value::Bool(b)) => Raw::Number(if *b { 1.0 } else { 0.0 }),
                Some(other) => return Err(format!("argument `{name}` cannot be {other}")),
            };
            values.push(self.prepare(i, raw).map_err(|e| match e {
                InputError::Type(m) | InputError::Invalid(m) => m,
            })?);
        }
        let mut row = vec![f64::NAN; self.columns.len()];
        let p = self.predict_exact(&values, &mut row);
        Ok(self.results(&p, &row))
    }

    fn results(&self, p: &Prediction, row: &[f64]) -> Map<String, Value> {
        let mut out = Map::new();
        let target = match (p, &self.categories) {
            (Prediction::Class { label, .. }, Some(c)) => c.value(*label),
            (Prediction::Value(v), _) => json!(v),
            _ => Value::Null,
        };
        out.insert(self.target_name.clone(), target);
        for o in self.root.outputs.iter().filter(|o| o.final_result) {
            let column = &self.columns[o.column];
            let v = row[o.column];
            let value = if v.is_nan() {
                Value::Null
            } else if column.is_string() {
                column.display(v).map_or(Value::Null, Value::String)
            } else {
                json!(v)
            };
            out.insert(o.name.clone(), value);
        }
        out
    }

    /// Openscoring's model schema: input, target and output fields.
    pub fn schema(&self) -> Value {
        let field = |c: &Column| {
            let mut f = json!({
                "id": c.name,
                "name": c.name,
                "dataType": c.data_type.as_str(),
                "opType": c.op_type.as_str(),
            });
            let values: Vec<String> = if c.is_string() {
                c.strings[..c.valid].to_vec()
            } else {
                c.numeric_values
                    .iter()
                    .map(|v| fields::number_text(*v))
                    .collect()
            };
            if !values.is_empty() && c.op_type != fields::OpType::Continuous {
                f["values"] = json!(values);
            }
            f
        };
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|i| field(&self.columns[i.column]))
            .collect();
        let target_column = self.columns.iter().find(|c| c.name == self.target_name);
        let targets: Vec<Value> = target_column.map(field).into_iter().collect();
        let outputs: Vec<Value> = self
            .root
            .outputs
            .iter()
            .filter(|o| o.final_result)
            .map(|o| {
                let c = &self.columns[o.column];
                json!({"id": o.name, "name": o.name, "dataType": c.data_type.as_str(), "opType": c.op_type.as_str()})
            })
            .collect();
        json!({"inputFields": inputs, "targetFields": targets, "outputFields": outputs})
    }

    pub fn mining_function(&self) -> &'static str {
        if self.is_classification() {
            "classification"
        } else {
            "regression"
        }
    }
}
