//! LightGBM's text model (`booster.save_model("m.txt")`).
//!
//! What LightGBM's predictor does (`Tree::NumericalDecision`), and so what this does: the
//! row is read as doubles, values within ±`kZeroThreshold` (1e-35, as a float) reading as 0
//! (the dense-matrix input drops them). A split's `decision_type` carries default-left in
//! bit 1 and the missing type in bits 2–3: *None* — NaN reads as 0 and is compared; *Zero* — NaN
//! and 0 take the default branch; *NaN* — NaN takes the default branch. Otherwise
//! `x <= threshold` (double) goes left. Leaves are added in double, tree `i` to class
//! `i % num_tree_per_iteration`; `average_output` (random-forest mode) divides by the
//! iteration count before the objective's transform.

use std::collections::HashMap;

use super::finish::LgbTransform;
use super::{next_up_f64, Ensemble, Finish, Format, Node, Tree};
use crate::model::ModelError;

/// LightGBM's `kZeroThreshold`: `1e-35f`, a float literal, widened to double.
pub const ZERO_THRESHOLD: f64 = 1e-35f32 as f64;

fn invalid(m: impl Into<String>) -> ModelError {
    ModelError::Invalid(format!("LightGBM model: {}", m.into()))
}

/// Whether `bytes` look like a LightGBM text model.
pub fn looks_like(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]);
    let head = head.trim_start();
    head.starts_with("tree\n") || head.starts_with("tree\r\n") || head.starts_with("version=v")
}

pub fn parse(
    bytes: &[u8],
    feature_names: &[String],
    class_names: &[String],
) -> Result<Ensemble, ModelError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("the file is not UTF-8 text"))?;
    let mut lines = text.lines().map(str::trim_end).peekable();
    let mut header: HashMap<&str, &str> = HashMap::new();
    let mut average_output = false;
    while let Some(line) = lines.peek() {
        if line.starts_with("Tree=") || *line == "end of trees" {
            break;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                header.insert(k, v);
            }
            None if *line == "average_output" => average_output = true,
            None => {}
        }
        lines.next();
    }
    let get = |key: &str| {
        header
            .get(key)
            .copied()
            .ok_or_else(|| invalid(format!("`{key}` is missing from the header")))
    };
    let number = |key: &str| -> Result<usize, ModelError> {
        get(key)?
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 1 << 24)
            .ok_or_else(|| invalid(format!("`{key}` is not a count")))
    };
    let num_class = number("num_class")?;
    let per_iteration = number("num_tree_per_iteration")?;
    let n_features = number("max_feature_idx")? + 1;
    if n_features > super::MAX_FEATURES || num_class > super::MAX_CLASSES {
        return Err(invalid(format!(
            "{n_features} features or {num_class} classes: out of the supported range"
        )));
    }
    let objective = get("objective")?.trim();
    let file_names: Vec<String> = get("feature_names")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if file_names.len() != n_features {
        return Err(invalid(format!(
            "{} feature names for max_feature_idx {}",
            file_names.len(),
            n_features - 1
        )));
    }
    let mut parts = objective.split_whitespace();
    let name = parts.next().unwrap_or("");
    let mut options: HashMap<&str, &str> = HashMap::new();
    for p in parts {
        match p.split_once(':') {
            Some((k, v)) => options.insert(k, v),
            None => options.insert(p, ""),
        };
    }
    if options.contains_key("sqrt") {
        return Err(invalid(
            "objectives with `sqrt` (reg_sqrt) are not supported",
        ));
    }
    let sigmoid = match options.get("sigmoid") {
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| invalid(format!("sigmoid `{s}` is not a positive number")))?,
        None => 1.0,
    };
    let transform = match name {
        "binary" => LgbTransform::Binary { sigmoid },
        "multiclass" | "softmax" => LgbTransform::Softmax,
        "multiclassova" | "ova" | "ovr" | "multiclass_ova" => LgbTransform::Ova { sigmoid },
        "regression" | "regression_l2" | "l2" | "mean_squared_error" | "mse" | "regression_l1"
        | "l1" | "huber" | "fair" | "quantile" | "mape" => LgbTransform::Identity,
        "poisson" | "gamma" | "tweedie" => LgbTransform::Exp,
        other => {
            return Err(invalid(format!(
                "objective `{other}` is not supported (binary, multiclass, multiclassova, the regression objectives, poisson, gamma, tweedie are)"
            )))
        }
    };
    let multi = matches!(transform, LgbTransform::Softmax | LgbTransform::Ova { .. });
    let n_outputs = if multi { num_class } else { 1 };
    if per_iteration != n_outputs || (!multi && num_class != 1) || (multi && num_class < 2) {
        return Err(invalid(format!(
            "num_class {num_class} and num_tree_per_iteration {per_iteration} disagree with objective `{name}`: the class count disagrees with the tree layout"
        )));
    }
    let mut trees = Vec::new();
    let mut ended = false;
    while let Some(line) = lines.next() {
        if line == "end of trees" {
            ended = true;
            break;
        }
        let Some(id) = line.strip_prefix("Tree=") else {
            continue;
        };
        let mut block: HashMap<&str, &str> = HashMap::new();
        while let Some(l) = lines.peek() {
            if l.is_empty() || l.starts_with("Tree=") || *l == "end of trees" {
                break;
            }
            if let Some((k, v)) = l.split_once('=') {
                block.insert(k, v);
            }
            lines.next();
        }
        let t = trees.len();
        let output = (t % n_outputs) as u32;
        trees.push(
            read_tree(&block, output, n_features)
                .map_err(|e| invalid(format!("tree {t} (Tree={id}): {e}")))?,
        );
    }
    if !ended {
        return Err(invalid(
            "no `end of trees` line: the file is truncated or not a LightGBM model",
        ));
    }
    if trees.is_empty() {
        return Err(invalid("the model has no trees"));
    }
    if let Some(sizes) = header.get("tree_sizes") {
        let stated = sizes.split_whitespace().count();
        if stated != trees.len() {
            return Err(invalid(format!(
                "tree_sizes lists {stated} trees, the file has {}",
                trees.len()
            )));
        }
    }
    if trees.len() % n_outputs != 0 {
        return Err(invalid(format!(
            "{} trees for {n_outputs} classes per iteration: the class count disagrees with the tree layout",
            trees.len()
        )));
    }
    let divisor = average_output.then(|| (trees.len() / n_outputs) as f64);
    let features = super::rename(file_names, feature_names, "feature")?;
    let classes = match transform {
        LgbTransform::Binary { .. } => vec!["0".to_owned(), "1".to_owned()],
        LgbTransform::Softmax | LgbTransform::Ova { .. } => {
            (0..num_class).map(|i| i.to_string()).collect()
        }
        _ => Vec::new(),
    };
    let classes = super::rename(classes, class_names, "class")?;
    Ensemble::new(
        Format::Lightgbm,
        features,
        classes,
        trees,
        n_outputs,
        vec![0.0; n_outputs],
        Finish::Lightgbm { transform, divisor },
        serde_json::json!({
            "objective": objective,
            "lightgbm_version": header.get("version"),
            "average_output": average_output,
        }),
    )
}

fn values<T: std::str::FromStr>(
    block: &HashMap<&str, &str>,
    key: &str,
    n: usize,
) -> Result<Vec<T>, String> {
    let text = block
        .get(key)
        .ok_or_else(|| format!("`{key}` is missing"))?;
    let v: Vec<T> = text
        .split_whitespace()
        .map(|s| {
            s.parse::<T>()
                .map_err(|_| format!("`{key}` value `{s}` does not parse"))
        })
        .collect::<Result<_, _>>()?;
    if v.len() != n {
        return Err(format!("`{key}` has {} values, expected {n}", v.len()));
    }
    Ok(v)
}

fn read_tree(block: &HashMap<&str, &str>, output: u32, n_features: usize) -> Result<Tree, String> {
    let leaves: usize = block
        .get("num_leaves")
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n >= 1 && *n <= 1 << 20)
        .ok_or("`num_leaves` is missing or not a count")?;
    if block.get("is_linear").is_some_and(|v| v.trim() != "0") {
        return Err("linear trees are not supported".into());
    }
    if block.get("num_cat").is_some_and(|v| v.trim() != "0") {
        return Err("categorical splits are not supported".into());
    }
    let leaf_value: Vec<f64> = values(block, "leaf_value", leaves)?;
    let leaf = |v: f64| Node::Leaf {
        weights: vec![(output, v)],
    };
    if leaves == 1 {
        return Ok(Tree {
            nodes: vec![leaf(leaf_value[0])],
            root: 0,
        });
    }
    let internal = leaves - 1;
    let feature: Vec<i64> = values(block, "split_feature", internal)?;
    let threshold: Vec<f64> = values(block, "threshold", internal)?;
    let decision: Vec<i64> = values(block, "decision_type", internal)?;
    let left: Vec<i64> = values(block, "left_child", internal)?;
    let right: Vec<i64> = values(block, "right_child", internal)?;
    // Internal nodes first, then the leaves: child `c >= 0` is node `c`, `c < 0` leaf `!c`.
    let child = |c: i64, i: usize| -> Result<u32, String> {
        let index = if c >= 0 {
            usize::try_from(c).ok().filter(|c| *c < internal)
        } else {
            usize::try_from(!c)
                .ok()
                .filter(|l| *l < leaves)
                .map(|l| internal + l)
        };
        index
            .map(|x| x as u32)
            .ok_or_else(|| format!("node {i}: child {c} out of range"))
    };
    let mut nodes = Vec::with_capacity(internal + leaves);
    for i in 0..internal {
        let d = decision[i];
        if !(0..=15).contains(&d) {
            return Err(format!("node {i}: decision_type {d} is unknown"));
        }
        if d & 1 != 0 {
            return Err(format!("node {i}: categorical splits are not supported"));
        }
        let default_left = d & 2 != 0;
        let f = usize::try_from(feature[i])
            .ok()
            .filter(|f| *f < n_features)
            .ok_or_else(|| format!("node {i}: feature {} out of range", feature[i]))?;
        let t = threshold[i];
        if t.is_nan() {
            return Err(format!("node {i}: threshold is NaN"));
        }
        let (special_yes, zero_special) = match (d >> 2) & 3 {
            // None: NaN reads as 0.0 and is compared.
            0 => (0.0 <= t, false),
            // Zero: NaN (read as 0) and 0 take the default branch.
            1 => (default_left, true),
            2 => (default_left, false),
            m => return Err(format!("node {i}: missing type {m} is unknown")),
        };
        nodes.push(Node::Split {
            feature: f as u32,
            threshold: next_up_f64(t),
            yes: child(left[i], i)?,
            no: child(right[i], i)?,
            special_yes,
            zero_special,
        });
    }
    nodes.extend(leaf_value.into_iter().map(leaf));
    Ok(Tree { nodes, root: 0 })
}
