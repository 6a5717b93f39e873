//! ONNX models whose graph is one `ai.onnx.ml` `TreeEnsembleClassifier` or
//! `TreeEnsembleRegressor` (what skl2onnx writes for scikit-learn forests and gradient
//! boosting), with or without the `ZipMap` after it.
//!
//! The protobuf is decoded by `prost` into types generated from the `onnx-ml.proto` vendored
//! beside this file (`proto.rs`, committed, so a build needs neither `protoc` nor the
//! network; prost bounds message nesting at 100 levels).
//!
//! Scoring follows onnxruntime's CPU kernel (`tree_ensemble_common.h`,
//! `tree_ensemble_aggregator.h`, `ml_common.h`): the float input and the float thresholds
//! are compared in `f32` by the node's mode (`BRANCH_LEQ`, `BRANCH_LT`, `BRANCH_GTE`,
//! `BRANCH_GT`); a NaN goes to the true branch when `nodes_missing_value_tracks_true` says so,
//! otherwise to the false branch (every comparison with NaN is false). A tree's root is the
//! first node listed for it. Leaf weights add in `f32` in tree order; then the classifier's
//! base values, label rule and post-transform (`NONE`, `LOGISTIC`, `SOFTMAX`) or the
//! regressor's sum or average plus base value.

/// The types generated from `onnx-ml.proto` (public so that tests and fuzzers can build
/// hostile models).
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto;

use std::collections::HashMap;

use prost::Message;

use super::finish::{OnnxClassifier, PostTransform};
use super::{next_up_f32, Ensemble, Finish, Format, Node, Tree};
use crate::model::ModelError;

fn invalid(m: impl Into<String>) -> ModelError {
    ModelError::Invalid(format!("ONNX model: {}", m.into()))
}

const ML_DOMAIN: &str = "ai.onnx.ml";

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

pub fn parse(
    bytes: &[u8],
    feature_names: &[String],
    class_names: &[String],
) -> Result<Ensemble, ModelError> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| {
        invalid(format!(
            "not a valid ONNX protobuf ({e}); is the file truncated?"
        ))
    })?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| invalid("the model has no graph"))?;
    let mut tree_op = None;
    for node in &graph.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let domain = node.domain.as_deref().unwrap_or("");
        match (domain, op) {
            (ML_DOMAIN, "TreeEnsembleClassifier" | "TreeEnsembleRegressor") => {
                if tree_op.replace(node).is_some() {
                    return Err(invalid("more than one tree ensemble in the graph"));
                }
            }
            // Pass-throughs: the label's identity, the probabilities as a map.
            ("", "Identity") | (ML_DOMAIN, "ZipMap") => {}
            _ => {
                return Err(invalid(format!(
                    "operator `{domain}:{op}` is not supported: only a TreeEnsembleClassifier or TreeEnsembleRegressor on the graph input, with Identity and ZipMap after it"
                )))
            }
        }
    }
    let node = tree_op.ok_or_else(|| {
        invalid("the graph has no TreeEnsembleClassifier or TreeEnsembleRegressor")
    })?;
    if graph.input.len() != 1 {
        return Err(invalid(format!(
            "{} graph inputs; one float tensor is expected",
            graph.input.len()
        )));
    }
    let input = &graph.input[0];
    if node.input.first() != input.name.as_ref() {
        return Err(invalid(
            "the tree ensemble does not read the graph input directly",
        ));
    }
    let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(proto::type_proto::Value::TensorType(t)) => t,
        _ => return Err(invalid("the graph input is not a tensor")),
    };
    if tensor.elem_type != Some(FLOAT) {
        return Err(invalid(format!(
            "the input tensor's element type is {:?}; only float (1) is supported",
            tensor.elem_type
        )));
    }
    let declared_width = tensor.shape.as_ref().and_then(|s| {
        s.dim.get(1).and_then(|d| match d.value {
            Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        })
    });
    let attrs = Attributes::new(node)?;
    let classifier = node.op_type.as_deref() == Some("TreeEnsembleClassifier");
    let structure = read_nodes(&attrs)?;
    let max_feature = structure.max_feature;
    let n_features = match declared_width {
        Some(w) if (1..=1 << 20).contains(&w) => w as usize,
        Some(w) => return Err(invalid(format!("input width {w} is not supported"))),
        None => max_feature + 1,
    };
    let file_names: Vec<String> = (0..n_features).map(|i| format!("f{i}")).collect();
    let features = super::rename(file_names, feature_names, "feature")?;
    let post = match attrs.string("post_transform")?.as_deref().unwrap_or("NONE") {
        "NONE" => PostTransform::None,
        "LOGISTIC" => PostTransform::Logistic,
        "SOFTMAX" => PostTransform::Softmax,
        other => {
            return Err(invalid(format!(
                "post_transform {other} is not supported (NONE, LOGISTIC, SOFTMAX are)"
            )))
        }
    };
    for tensor_attr in [
        "nodes_values_as_tensor",
        "class_weights_as_tensor",
        "target_weights_as_tensor",
        "base_values_as_tensor",
        "nodes_hitrates_as_tensor",
    ] {
        if attrs.has(tensor_attr) {
            return Err(invalid(format!(
                "`{tensor_attr}` (double-precision trees) is not supported"
            )));
        }
    }
    let base_values = attrs.floats("base_values");
    if let Some(b) = base_values.iter().find(|b| !b.is_finite()) {
        return Err(invalid(format!("base value {b} is not finite")));
    }
    let summary = serde_json::json!({
        "operator": node.op_type,
        "producer": model.producer_name,
        "producer_version": model.producer_version,
        "post_transform": attrs.string("post_transform")?,
    });
    if classifier {
        let ints = attrs.ints("classlabels_int64s");
        let strings = attrs.strings("classlabels_strings")?;
        let (labels, int_labels) =
            match (ints.is_empty(), strings.is_empty()) {
                (false, true) => (ints.iter().map(i64::to_string).collect::<Vec<_>>(), true),
                (true, false) => (strings, false),
                _ => return Err(invalid(
                    "a classifier needs exactly one of classlabels_int64s and classlabels_strings",
                )),
            };
        let n = labels.len();
        if n < 2 {
            return Err(invalid(format!("{n} class labels")));
        }
        let class_ids = attrs.ints("class_ids");
        let class_weights = attrs.floats("class_weights");
        let trees = attach(
            structure,
            &attrs.ints("class_treeids"),
            &attrs.ints("class_nodeids"),
            &class_ids,
            &class_weights,
            n,
        )?;
        let mut written = std::collections::BTreeSet::new();
        written.extend(class_ids.iter().copied());
        let binary_case = n == 2 && written.len() == 1;
        let weights_all_positive = class_weights.iter().all(|w| *w >= 0.0);
        let scored = scored_classes(&trees, n)?;
        if n > 2 && base_values.len() > n {
            return Err(invalid(format!(
                "{} base values for {n} classes",
                base_values.len()
            )));
        }
        if n == 2 {
            if base_values.len() > 2 {
                return Err(invalid(format!(
                    "{} base values for 2 classes",
                    base_values.len()
                )));
            }
            let single = base_values.len() != 2 && !scored[1];
            if single && !binary_case && base_values.len() == 1 {
                return Err(invalid(
                    "two classes, one base value and no weights for the second class: onnxruntime writes one score for two classes",
                ));
            }
            if !binary_case && int_labels && ints != [0, 1] {
                return Err(invalid(
                    "two integer labels other than [0, 1] with weights for both: onnxruntime's label is 0 or 1 then, not a class label",
                ));
            }
        } else if !scored.iter().any(|s| *s) {
            return Err(invalid("no class has any weight"));
        }
        let classes = super::rename(labels, class_names, "class")?;
        Ensemble::new(
            Format::Onnx,
            features,
            classes,
            trees,
            n,
            vec![0.0; n],
            Finish::OnnxClassifier(OnnxClassifier {
                post,
                base_values,
                scored,
                binary_case,
                weights_all_positive,
            }),
            summary,
        )
    } else {
        let targets = attrs.int("n_targets").unwrap_or(1);
        if targets != 1 {
            return Err(invalid(format!(
                "{targets} targets; only single-target regressors are supported"
            )));
        }
        if post != PostTransform::None {
            return Err(invalid("a regressor's post_transform must be NONE"));
        }
        let average = match attrs
            .string("aggregate_function")?
            .as_deref()
            .unwrap_or("SUM")
        {
            "SUM" => false,
            "AVERAGE" => true,
            other => {
                return Err(invalid(format!(
                    "aggregate_function {other} is not supported (SUM, AVERAGE are)"
                )))
            }
        };
        let base = match base_values.len() {
            0 => 0.0,
            1 => base_values[0],
            k => return Err(invalid(format!("{k} base values for one target"))),
        };
        let mut trees = attach(
            structure,
            &attrs.ints("target_treeids"),
            &attrs.ints("target_nodeids"),
            &attrs.ints("target_ids"),
            &attrs.floats("target_weights"),
            1,
        )?;
        // onnxruntime adds a single target's first leaf weight only.
        for (t, tree) in trees.iter_mut().enumerate() {
            for (i, node) in tree.nodes.iter_mut().enumerate() {
                if let Node::Leaf { weights } = node {
                    if weights.is_empty() {
                        return Err(invalid(format!("tree {t}, leaf {i} has no target weight")));
                    }
                    weights.truncate(1);
                }
            }
        }
        if !class_names.is_empty() {
            return Err(invalid("a regressor has no classes to name"));
        }
        Ensemble::new(
            Format::Onnx,
            features,
            Vec::new(),
            trees,
            1,
            vec![0.0],
            Finish::OnnxRegressor { average, base },
            summary,
        )
    }
}

/// A node's attributes by name.
struct Attributes<'n> {
    by_name: HashMap<&'n str, &'n proto::AttributeProto>,
}

impl<'n> Attributes<'n> {
    fn new(node: &'n proto::NodeProto) -> Result<Self, ModelError> {
        let mut by_name = HashMap::new();
        for a in &node.attribute {
            let name = a.name.as_deref().unwrap_or("");
            if by_name.insert(name, a).is_some() {
                return Err(invalid(format!("attribute `{name}` appears twice")));
            }
        }
        Ok(Self { by_name })
    }

    fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        self.by_name
            .get(name)
            .map(|a| a.ints.clone())
            .unwrap_or_default()
    }

    fn int(&self, name: &str) -> Option<i64> {
        self.by_name.get(name).and_then(|a| a.i)
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.by_name
            .get(name)
            .map(|a| a.floats.clone())
            .unwrap_or_default()
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, ModelError> {
        self.by_name
            .get(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone()).map_err(|_| {
                            invalid(format!("`{name}` holds a string that is not UTF-8"))
                        })
                    })
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    fn string(&self, name: &str) -> Result<Option<String>, ModelError> {
        self.by_name
            .get(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| {
                String::from_utf8(s.clone()).map_err(|_| invalid(format!("`{name}` is not UTF-8")))
            })
            .transpose()
    }
}

/// The trees' shapes, before their leaves get weights.
struct Structure {
    trees: Vec<Tree>,
    /// `(tree id, node id)` → (tree index, node index).
    index: HashMap<(i64, i64), (usize, usize)>,
    max_feature: usize,
}

fn read_nodes(attrs: &Attributes<'_>) -> Result<Structure, ModelError> {
    let tree_ids = attrs.ints("nodes_treeids");
    let node_ids = attrs.ints("nodes_nodeids");
    let features = attrs.ints("nodes_featureids");
    let values = attrs.floats("nodes_values");
    let modes = attrs.strings("nodes_modes")?;
    let true_ids = attrs.ints("nodes_truenodeids");
    let false_ids = attrs.ints("nodes_falsenodeids");
    let tracks = attrs.ints("nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    if n == 0 {
        return Err(invalid("the ensemble has no nodes"));
    }
    if [
        node_ids.len(),
        features.len(),
        values.len(),
        modes.len(),
        true_ids.len(),
        false_ids.len(),
    ]
    .iter()
    .any(|l| *l != n)
    {
        return Err(invalid("the nodes_* attributes have different lengths"));
    }
    if n > super::MAX_NODES {
        return Err(invalid(format!("{n} nodes: too many")));
    }
    // Trees are runs of equal tree ids, in the order listed.
    let mut index = HashMap::with_capacity(n);
    let mut tree_of = Vec::with_capacity(n);
    let mut starts = Vec::new();
    let mut seen_trees = std::collections::HashSet::new();
    for i in 0..n {
        if i == 0 || tree_ids[i] != tree_ids[i - 1] {
            if !seen_trees.insert(tree_ids[i]) {
                return Err(invalid(format!(
                    "the nodes of tree {} are not listed together",
                    tree_ids[i]
                )));
            }
            starts.push(i);
        }
        let t = starts.len() - 1;
        let local = i - starts[t];
        if index
            .insert((tree_ids[i], node_ids[i]), (t, local))
            .is_some()
        {
            return Err(invalid(format!(
                "node {} of tree {} is listed twice",
                node_ids[i], tree_ids[i]
            )));
        }
        tree_of.push(t);
    }
    let mut trees: Vec<Tree> = starts
        .iter()
        .map(|_| Tree {
            nodes: Vec::new(),
            root: 0,
        })
        .collect();
    let mut max_feature = 0;
    for i in 0..n {
        let t = tree_of[i];
        let child = |id: i64, which: &str| -> Result<u32, ModelError> {
            match index.get(&(tree_ids[i], id)) {
                Some((ct, local)) if *ct == t => Ok(*local as u32),
                _ => Err(invalid(format!(
                    "tree {}, node {}: {which} node {id} does not exist in the tree",
                    tree_ids[i], node_ids[i]
                ))),
            }
        };
        let mode = modes[i].as_str();
        let node = if mode == "LEAF" {
            Node::Leaf {
                weights: Vec::new(),
            }
        } else {
            let feature = usize::try_from(features[i])
                .ok()
                .filter(|f| *f < 1 << 20)
                .ok_or_else(|| {
                    invalid(format!(
                        "tree {}, node {}: feature {} out of range",
                        tree_ids[i], node_ids[i], features[i]
                    ))
                })?;
            max_feature = max_feature.max(feature);
            let t32 = values[i];
            if t32.is_nan() {
                return Err(invalid(format!(
                    "tree {}, node {}: threshold is NaN",
                    tree_ids[i], node_ids[i]
                )));
            }
            let tracks_true = tracks.get(i).copied().unwrap_or(0) == 1;
            let (true_node, false_node) =
                (child(true_ids[i], "true")?, child(false_ids[i], "false")?);
            // Rewritten to `x < threshold` → yes.
            let (threshold, yes, no, special_yes) = match mode {
                "BRANCH_LEQ" => (next_up_f32(t32), true_node, false_node, tracks_true),
                "BRANCH_LT" => (t32, true_node, false_node, tracks_true),
                "BRANCH_GTE" => (t32, false_node, true_node, !tracks_true),
                "BRANCH_GT" => (next_up_f32(t32), false_node, true_node, !tracks_true),
                other => {
                    return Err(invalid(format!(
                        "tree {}, node {}: mode {other} is not supported",
                        tree_ids[i], node_ids[i]
                    )))
                }
            };
            Node::Split {
                feature: feature as u32,
                threshold: f64::from(threshold),
                yes,
                no,
                special_yes,
                zero_special: false,
            }
        };
        trees[t].nodes.push(node);
    }
    Ok(Structure {
        trees,
        index,
        max_feature,
    })
}

/// Puts the `*_weights` on their leaves, in the order listed (onnxruntime's order).
fn attach(
    structure: Structure,
    tree_ids: &[i64],
    node_ids: &[i64],
    ids: &[i64],
    weights: &[f32],
    n_outputs: usize,
) -> Result<Vec<Tree>, ModelError> {
    let Structure {
        mut trees, index, ..
    } = structure;
    let n = weights.len();
    if tree_ids.len() != n || node_ids.len() != n || ids.len() != n {
        return Err(invalid("the weight attributes have different lengths"));
    }
    for k in 0..n {
        let &(t, local) = index.get(&(tree_ids[k], node_ids[k])).ok_or_else(|| {
            invalid(format!(
                "a weight names node {} of tree {}, which does not exist",
                node_ids[k], tree_ids[k]
            ))
        })?;
        let output = usize::try_from(ids[k])
            .ok()
            .filter(|o| *o < n_outputs)
            .ok_or_else(|| {
                invalid(format!(
                    "a weight is for class or target {}, but the model has {n_outputs}: the class count disagrees with the trees",
                    ids[k]
                ))
            })?;
        if !weights[k].is_finite() {
            return Err(invalid(format!("weight {} is not finite", weights[k])));
        }
        // Weights on a branch are never reached (onnxruntime adds a leaf's only).
        if let Node::Leaf { weights: w } = &mut trees[t].nodes[local] {
            w.push((output as u32, f64::from(weights[k])));
        }
    }
    Ok(trees)
}

/// onnxruntime adds a class's base value and considers it for the label only when some
/// reached leaf wrote it (`has_score`). That is fixed per class when some tree writes it at
/// every leaf (always) or no leaf does (never); a class written on some paths only would
/// change with the row, which is refused.
fn scored_classes(trees: &[Tree], n: usize) -> Result<Vec<bool>, ModelError> {
    let mut scored = Vec::with_capacity(n);
    for class in 0..n as u32 {
        let writes = |node: &Node| match node {
            Node::Leaf { weights } => weights.iter().any(|(o, _)| *o == class),
            Node::Split { .. } => false,
        };
        let always = trees.iter().any(|t| {
            t.nodes
                .iter()
                .filter(|n| matches!(n, Node::Leaf { .. }))
                .all(writes)
        });
        let never = !trees.iter().any(|t| t.nodes.iter().any(writes));
        if !always && !never {
            return Err(invalid(format!(
                "class {class} has weights on some leaves only, which onnxruntime scores row by row; not supported"
            )));
        }
        scored.push(always);
    }
    Ok(scored)
}
