//! XGBoost's JSON model (`Booster.save_model("m.json")`, schema of XGBoost 1.x–3.x).
//!
//! What XGBoost's CPU predictor does, and so what this does: the row is read as `f32`; a
//! missing value (NaN) takes the node's `default_left`; otherwise `x < split_condition`
//! (both `f32`) goes to the left child, which XGBoost takes to be `left`, and the right child
//! to be `left + 1` (a file saying otherwise is refused rather than scored differently from
//! XGBoost). A leaf's value is its `split_condition`. Margins start at the base score turned
//! into a margin by the objective (`logit` for the logistic objectives, `log` for Poisson)
//! and add tree by tree in `f32` into the tree's output group (`tree_info`).

use serde_json::Value;

use super::finish::XgbObjective;
use super::{Ensemble, Finish, Format, Node, Tree};
use crate::model::ModelError;

fn invalid(m: impl Into<String>) -> ModelError {
    ModelError::Invalid(format!("XGBoost model: {}", m.into()))
}

/// Whether `bytes` look like an XGBoost JSON model (a top-level `learner`).
pub fn looks_like(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]);
    let head = head.trim_start();
    head.starts_with('{') && head.contains("\"learner\"")
}

/// Reads a model; `feature_names`/`class_names` (empty: the file's, or `f0..`/`0..`) rename
/// the inputs and classes.
pub fn parse(
    bytes: &[u8],
    feature_names: &[String],
    class_names: &[String],
) -> Result<Ensemble, ModelError> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("not valid JSON ({e}); is the file truncated?")))?;
    let learner = field(&doc, "learner")?;
    let param = field(learner, "learner_model_param")?;
    let num_feature = count(field(param, "num_feature")?, "num_feature")?;
    let num_class = count(field(param, "num_class")?, "num_class")?;
    if num_feature == 0 || num_feature > super::MAX_FEATURES || num_class > super::MAX_CLASSES {
        return Err(invalid(format!(
            "num_feature {num_feature} or num_class {num_class} is out of the supported range (1..={} features, ≤ {} classes)",
            super::MAX_FEATURES,
            super::MAX_CLASSES
        )));
    }
    if let Some(t) = param.get("num_target") {
        if count(t, "num_target")? > 1 {
            return Err(invalid("multi-target models are not supported"));
        }
    }
    let objective = text(
        field(field(learner, "objective")?, "name")?,
        "objective name",
    )?;
    let booster = field(learner, "gradient_booster")?;
    let booster_name = text(field(booster, "name")?, "gradient_booster name")?;
    if booster_name != "gbtree" {
        return Err(invalid(format!(
            "booster `{booster_name}` is not supported (only gbtree; dart's dropout weights are refused rather than approximated)"
        )));
    }
    let model = field(booster, "model")?;
    if let Some(Value::Array(w)) = model.get("weight_drop") {
        if w.iter().any(|v| v.as_f64() != Some(1.0)) {
            return Err(invalid("trees with drop weights (dart) are not supported"));
        }
    }
    let trees_json = array(field(model, "trees")?, "trees")?;
    let tree_info = array(field(model, "tree_info")?, "tree_info")?;
    if tree_info.len() != trees_json.len() {
        return Err(invalid(format!(
            "tree_info has {} entries for {} trees",
            tree_info.len(),
            trees_json.len()
        )));
    }
    if let Some(p) = model.get("gbtree_model_param") {
        let stated = count(field(p, "num_trees")?, "num_trees")?;
        if stated != trees_json.len() {
            return Err(invalid(format!(
                "num_trees says {stated}, the file has {} trees",
                trees_json.len()
            )));
        }
    }
    let (finish, n_outputs) = match objective {
        "binary:logistic" => (XgbObjective::BinaryLogistic, 1),
        "binary:logitraw" => (XgbObjective::Identity, 1),
        "multi:softprob" => (XgbObjective::Softprob, num_class),
        "multi:softmax" => (XgbObjective::Softmax, num_class),
        "reg:squarederror" | "reg:linear" => (XgbObjective::Identity, 1),
        "reg:logistic" => (XgbObjective::RegLogistic, 1),
        "count:poisson" => (XgbObjective::Exp, 1),
        other => {
            return Err(invalid(format!(
                "objective `{other}` is not supported (binary:logistic, binary:logitraw, multi:softprob, multi:softmax, reg:squarederror, reg:logistic, count:poisson are)"
            )))
        }
    };
    let multi = matches!(finish, XgbObjective::Softprob | XgbObjective::Softmax);
    if multi && num_class < 2 {
        return Err(invalid(format!("{objective} with num_class {num_class}")));
    }
    if !multi && num_class > 1 {
        return Err(invalid(format!(
            "{objective} with num_class {num_class}: the class count disagrees with the objective"
        )));
    }
    let base = base_score(field(param, "base_score")?, n_outputs, objective)?;
    let mut trees = Vec::with_capacity(trees_json.len());
    for (t, (tree, group)) in trees_json.iter().zip(tree_info).enumerate() {
        let group = count(group, "tree_info")?;
        if group >= n_outputs {
            return Err(invalid(format!(
                "tree {t} belongs to output group {group}, but the model has {n_outputs} (num_class {num_class}): the class count disagrees with the tree layout"
            )));
        }
        trees.push(
            read_tree(tree, group as u32, num_feature)
                .map_err(|e| invalid(format!("tree {t}: {e}")))?,
        );
    }
    if multi && trees.len() % n_outputs != 0 {
        return Err(invalid(format!(
            "{} trees for {n_outputs} classes: the class count disagrees with the tree layout",
            trees.len()
        )));
    }
    let file_names: Vec<String> = match learner.get("feature_names") {
        Some(Value::Array(names)) if !names.is_empty() => names
            .iter()
            .map(|n| text(n, "feature name").map(str::to_owned))
            .collect::<Result<_, _>>()?,
        _ => (0..num_feature).map(|i| format!("f{i}")).collect(),
    };
    if file_names.len() != num_feature {
        return Err(invalid(format!(
            "{} feature names for num_feature {num_feature}",
            file_names.len()
        )));
    }
    if let Some(Value::Array(types)) = learner.get("feature_types") {
        if types.iter().any(|t| t.as_str() == Some("c")) {
            return Err(invalid("categorical features are not supported"));
        }
    }
    let features = super::rename(file_names, feature_names, "feature")?;
    let classes = match finish {
        XgbObjective::BinaryLogistic => vec!["0".to_owned(), "1".to_owned()],
        XgbObjective::Softprob | XgbObjective::Softmax => {
            (0..num_class).map(|i| i.to_string()).collect()
        }
        _ => Vec::new(),
    };
    let classes = super::rename(classes, class_names, "class")?;
    let version = doc.get("version").cloned().unwrap_or(Value::Null);
    Ensemble::new(
        Format::Xgboost,
        features,
        classes,
        trees,
        n_outputs,
        base,
        Finish::Xgboost(finish),
        serde_json::json!({"objective": objective, "xgboost_version": version}),
    )
}

fn field<'v>(v: &'v Value, key: &str) -> Result<&'v Value, ModelError> {
    v.get(key)
        .ok_or_else(|| invalid(format!("`{key}` is missing")))
}

fn array<'v>(v: &'v Value, what: &str) -> Result<&'v [Value], ModelError> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| invalid(format!("`{what}` is not an array")))
}

fn text<'v>(v: &'v Value, what: &str) -> Result<&'v str, ModelError> {
    v.as_str()
        .ok_or_else(|| invalid(format!("`{what}` is not a string")))
}

/// A non-negative count, written as a number or (XGBoost's parameters) as a string.
fn count(v: &Value, what: &str) -> Result<usize, ModelError> {
    let n = match v {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= 1 << 31)
        .ok_or_else(|| invalid(format!("`{what}` is not a count: {v}")))
}

/// `base_score`: a number, a string (`"5E-1"`) or, since XGBoost 3.1, a string vector
/// (`"[5E-1]"`, one per class), turned into margins as the objective does.
fn base_score(v: &Value, n_outputs: usize, objective: &str) -> Result<Vec<f64>, ModelError> {
    let values: Vec<f32> = match v {
        Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32],
        Value::String(s) => {
            let s = s.trim();
            let inner = s
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(s);
            inner
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<f32>()
                        .map_err(|_| invalid(format!("base_score `{s}` is not a number")))
                })
                .collect::<Result<_, _>>()?
        }
        other => return Err(invalid(format!("base_score {other} is not a number"))),
    };
    let values = match values.len() {
        1 => vec![values[0]; n_outputs],
        n if n == n_outputs => values,
        n => return Err(invalid(format!("{n} base scores for {n_outputs} outputs"))),
    };
    let mut margins = Vec::with_capacity(values.len());
    for v in values {
        if !v.is_finite() {
            return Err(invalid(format!("base_score {v} is not finite")));
        }
        let m = match objective {
            "binary:logistic" | "reg:logistic" => {
                if !(0.0..=1.0).contains(&v) {
                    return Err(invalid(format!(
                        "base_score {v} must be in [0, 1] for {objective}"
                    )));
                }
                // LogisticProbToMargin: clamp to [kRtEps, 1 - kRtEps], then Logit, in f32.
                let p = v.clamp(1e-6f32, 1.0f32 - 1e-6f32);
                -(1.0f32 / p - 1.0f32).ln()
            }
            "count:poisson" => {
                if v <= 0.0 {
                    return Err(invalid(format!(
                        "base_score {v} must be positive for {objective}"
                    )));
                }
                v.ln()
            }
            _ => v,
        };
        margins.push(f64::from(m));
    }
    Ok(margins)
}

fn ints(tree: &Value, key: &str) -> Result<Vec<i64>, String> {
    let arr = tree
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{key}` is missing"))?;
    arr.iter()
        .map(|v| match v {
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Number(n) => n.as_i64(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("`{key}` holds a value that is not an integer"))
}

fn read_tree(tree: &Value, group: u32, num_feature: usize) -> Result<Tree, String> {
    let left = ints(tree, "left_children")?;
    let right = ints(tree, "right_children")?;
    let index = ints(tree, "split_indices")?;
    let default_left = ints(tree, "default_left")?;
    let conditions: Vec<f64> = tree
        .get("split_conditions")
        .and_then(Value::as_array)
        .ok_or("`split_conditions` is missing")?
        .iter()
        .map(|v| v.as_f64().ok_or("a split condition is not a number"))
        .collect::<Result<_, _>>()?;
    let n = left.len();
    if n == 0 {
        return Err("no nodes".into());
    }
    if [
        right.len(),
        index.len(),
        default_left.len(),
        conditions.len(),
    ]
    .iter()
    .any(|l| *l != n)
    {
        return Err("node arrays of different lengths".into());
    }
    if let Some(p) = tree.get("tree_param") {
        if let Some(stated) = p.get("num_nodes") {
            let stated = count(stated, "num_nodes").map_err(|e| e.to_string())?;
            if stated != n {
                return Err(format!("num_nodes says {stated}, the arrays hold {n}"));
            }
        }
        if let Some(size) = p.get("size_leaf_vector") {
            if count(size, "size_leaf_vector").map_err(|e| e.to_string())? > 1 {
                return Err("vector leaves (multi-target trees) are not supported".into());
            }
        }
    }
    if let Some(types) = tree.get("split_type").and_then(Value::as_array) {
        if types.iter().any(|t| t.as_i64() != Some(0)) {
            return Err("categorical splits are not supported".into());
        }
    }
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        if left[i] == -1 {
            nodes.push(Node::Leaf {
                weights: vec![(group, f64::from(conditions[i] as f32))],
            });
            continue;
        }
        let l = usize::try_from(left[i])
            .ok()
            .filter(|l| *l < n)
            .ok_or_else(|| format!("node {i}: left child {} out of range", left[i]))?;
        // XGBoost's predictor goes to `left + 1` for the right branch, whatever
        // right_children says: a file where they differ is not what XGBoost scores.
        if right[i] != left[i] + 1 || l + 1 >= n {
            return Err(format!(
                "node {i}: right child {} is not left child + 1 ({}), as XGBoost's predictor assumes",
                right[i],
                left[i] + 1
            ));
        }
        let feature = usize::try_from(index[i])
            .ok()
            .filter(|f| *f < num_feature)
            .ok_or_else(|| format!("node {i}: feature {} out of range", index[i]))?;
        let t = conditions[i] as f32;
        if t.is_nan() {
            return Err(format!("node {i}: split condition is NaN"));
        }
        nodes.push(Node::Split {
            feature: feature as u32,
            threshold: f64::from(t),
            yes: l as u32,
            no: l as u32 + 1,
            special_yes: default_left[i] != 0,
            zero_special: false,
        });
    }
    Ok(Tree { nodes, root: 0 })
}
