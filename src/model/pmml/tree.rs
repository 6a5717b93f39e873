//! `TreeModel`: nodes as read, and the exact walk that JPMML-Evaluator does.

use super::fields::{Column, Scope};
use super::predicate::{self, Predicate, Tri};
use super::target::Categories;
use super::xml::{self, El};
use crate::model::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingStrategy {
    None,
    NullPrediction,
    LastPrediction,
    DefaultChild,
}

#[derive(Debug, Clone)]
pub struct TreeNode {
    pub predicate: Predicate,
    pub children: Vec<u32>,
    pub default_child: Option<u32>,
    /// Regression: the score. Classification: the label's category index.
    pub score: Option<f64>,
    /// Classification: the class probabilities, in the target's category order.
    pub probabilities: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<TreeNode>,
    pub missing: MissingStrategy,
    /// `noTrueChildStrategy="returnLastPrediction"`; else a node no child takes is null.
    pub last_prediction: bool,
}

/// Reads a `TreeModel`'s root `Node` (the model's other parts are read by the caller).
pub fn read(
    model: &El<'_, '_>,
    root: &El<'_, '_>,
    columns: &mut [Column],
    scope: &Scope,
    categories: Option<&Categories>,
) -> Result<Tree, ModelError> {
    let missing = match xml::attr(model, "missingValueStrategy").unwrap_or("none") {
        "none" => MissingStrategy::None,
        "nullPrediction" => MissingStrategy::NullPrediction,
        "lastPrediction" => MissingStrategy::LastPrediction,
        "defaultChild" => MissingStrategy::DefaultChild,
        other => {
            return Err(xml::err(
                model,
                &format!("missingValueStrategy `{other}` is not supported"),
            ))
        }
    };
    let last_prediction =
        match xml::attr(model, "noTrueChildStrategy").unwrap_or("returnNullPrediction") {
            "returnNullPrediction" => false,
            "returnLastPrediction" => true,
            other => {
                return Err(xml::err(
                    model,
                    &format!("noTrueChildStrategy `{other}` is unknown"),
                ))
            }
        };
    match xml::attr(model, "splitCharacteristic").unwrap_or("multiSplit") {
        "binarySplit" | "multiSplit" => {}
        other => {
            return Err(xml::err(
                model,
                &format!("splitCharacteristic `{other}` is unknown"),
            ))
        }
    }
    let mut tree = Tree {
        nodes: Vec::new(),
        missing,
        last_prediction,
    };
    let mut reader = Reader {
        columns,
        scope,
        categories,
        tree: &mut tree,
    };
    reader.node(root)?;
    Ok(tree)
}

struct Reader<'r> {
    columns: &'r mut [Column],
    scope: &'r Scope,
    categories: Option<&'r Categories>,
    tree: &'r mut Tree,
}

impl Reader<'_> {
    /// Depth is bounded by the document's (checked when it was parsed), so recursion is safe.
    fn node(&mut self, node: &El<'_, '_>) -> Result<u32, ModelError> {
        if xml::name(node) != "Node" {
            return Err(xml::unsupported(node));
        }
        let index = self.tree.nodes.len() as u32;
        self.tree.nodes.push(TreeNode {
            predicate: Predicate::True,
            children: Vec::new(),
            default_child: None,
            score: None,
            probabilities: Vec::new(),
        });
        let mut predicate = None;
        let mut children = Vec::new();
        let mut child_ids = Vec::new();
        let mut distribution: Vec<(f64, Option<f64>, f64)> = Vec::new();
        for part in xml::children(node) {
            match xml::name(&part) {
                n if predicate::is_predicate(&part)
                    && predicate.is_none()
                    && children.is_empty() =>
                {
                    let _ = n;
                    predicate = Some(predicate::read(&part, self.columns, self.scope)?);
                }
                "Node" => {
                    child_ids.push(xml::attr(&part, "id").map(str::to_owned));
                    children.push(self.node(&part)?);
                }
                "ScoreDistribution" => {
                    let Some(categories) = self.categories else {
                        return Err(xml::err(&part, "is only read in classification trees"));
                    };
                    let value = xml::required(&part, "value")?;
                    let class = categories.index_of(value).ok_or_else(|| {
                        xml::err(&part, &format!("`{value}` is not a category of the target"))
                    })?;
                    let count = xml::number(&part, "recordCount")?.unwrap_or(f64::NAN);
                    let probability = xml::number(&part, "probability")?;
                    distribution.push((class as f64, probability, count));
                }
                _ => return Err(xml::unsupported(&part)),
            }
        }
        let predicate = predicate.ok_or_else(|| xml::err(node, "needs a predicate"))?;
        let score = match (xml::attr(node, "score"), self.categories) {
            (None, _) => None,
            (Some(s), Some(categories)) => Some(
                categories
                    .index_of(s)
                    .ok_or_else(|| xml::err(node, &format!("score `{s}` is not a category")))?
                    as f64,
            ),
            (Some(s), None) => Some(
                xml::parse_number(s)
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| xml::err(node, &format!("score `{s}` is not a number")))?,
            ),
        };
        let mut probabilities = Vec::new();
        if let Some(categories) = self.categories {
            probabilities = vec![0.0; categories.len()];
            if distribution.iter().all(|d| d.1.is_some()) && !distribution.is_empty() {
                for (class, p, _) in &distribution {
                    probabilities[*class as usize] = p.unwrap_or(0.0);
                }
            } else if !distribution.is_empty() {
                // Counts only: JPMML divides each by their sum.
                let sum: f64 = distribution.iter().map(|d| d.2).sum();
                if sum.is_nan() || sum <= 0.0 {
                    return Err(xml::err(node, "record counts must be positive"));
                }
                for (class, _, count) in &distribution {
                    probabilities[*class as usize] = count / sum;
                }
            } else if let Some(score) = score {
                probabilities[score as usize] = 1.0;
            }
        }
        let score = match (score, self.categories) {
            (None, Some(_)) if !distribution.is_empty() => Some(argmax(&probabilities) as f64),
            (s, _) => s,
        };
        let default_child = match xml::attr(node, "defaultChild") {
            None => None,
            Some(id) => {
                let at = child_ids
                    .iter()
                    .position(|c| c.as_deref() == Some(id))
                    .ok_or_else(|| {
                        xml::err(node, &format!("defaultChild `{id}` is not a child"))
                    })?;
                Some(children[at])
            }
        };
        if self.tree.missing == MissingStrategy::DefaultChild
            && !children.is_empty()
            && default_child.is_none()
        {
            return Err(xml::err(
                node,
                "missingValueStrategy=\"defaultChild\" needs a defaultChild here",
            ));
        }
        let slot = &mut self.tree.nodes[index as usize];
        slot.predicate = predicate;
        slot.children = children;
        slot.default_child = default_child;
        slot.score = score;
        slot.probabilities = probabilities;
        Ok(index)
    }
}

/// Index of the largest value, the first on ties.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

impl Tree {
    /// The node whose score is the tree's prediction for `row`, or `None` for a null one.
    pub fn walk(&self, row: &[f64]) -> Option<&TreeNode> {
        let root = &self.nodes[0];
        if root.predicate.eval(row) != Tri::True {
            return None;
        }
        let mut node = root;
        'descend: loop {
            if node.children.is_empty() {
                return self.scored(node);
            }
            for &c in &node.children {
                let child = &self.nodes[c as usize];
                match child.predicate.eval(row) {
                    Tri::True => {
                        node = child;
                        continue 'descend;
                    }
                    Tri::False => {}
                    Tri::Unknown => match self.missing {
                        MissingStrategy::None => {}
                        MissingStrategy::NullPrediction => return None,
                        MissingStrategy::LastPrediction => return self.scored(node),
                        MissingStrategy::DefaultChild => {
                            let d = node.default_child?;
                            node = &self.nodes[d as usize];
                            continue 'descend;
                        }
                    },
                }
            }
            return if self.last_prediction {
                self.scored(node)
            } else {
                None
            };
        }
    }

    fn scored<'t>(&self, node: &'t TreeNode) -> Option<&'t TreeNode> {
        node.score.map(|_| node)
    }
}
