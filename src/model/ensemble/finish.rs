//! From accumulated margins to the prediction each library returns: its link function in
//! its own precision, and its rule for the label.

use super::Ensemble;
use crate::model::pmml::Prediction;
use crate::model::ModelError;

#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// XGBoost's objective transforms, in `f32` as its CPU predictor does.
    Xgboost(XgbObjective),
    /// LightGBM's, in double; `divisor` is the iteration count of an `average_output`
    /// (random-forest) model.
    Lightgbm {
        transform: LgbTransform,
        divisor: Option<f64>,
    },
    /// onnxruntime's `TreeEnsembleClassifier` (see `onnx.rs` for how the fields are derived).
    OnnxClassifier(OnnxClassifier),
    /// onnxruntime's `TreeEnsembleRegressor`, one target: sum, or average over the trees,
    /// plus the base value.
    OnnxRegressor { average: bool, base: f32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XgbObjective {
    /// `binary:logistic`: two classes, p = sigmoid(margin), label 1 when p > 0.5.
    BinaryLogistic,
    /// `multi:softprob`: softmax; label the first largest probability.
    Softprob,
    /// `multi:softmax`: label the first largest margin; probabilities as `softprob`.
    Softmax,
    /// `reg:squarederror` and other identity links, and `binary:logitraw` (the margin).
    Identity,
    /// `reg:logistic`: sigmoid as a regression value.
    RegLogistic,
    /// `count:poisson`: exp.
    Exp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LgbTransform {
    /// `binary`: two classes, p = 1 / (1 + exp(-sigmoid × margin)).
    Binary {
        sigmoid: f64,
    },
    /// `multiclass`: softmax.
    Softmax,
    /// `multiclassova`: a sigmoid per class.
    Ova {
        sigmoid: f64,
    },
    Identity,
    /// `poisson`, `gamma`, `tweedie`: exp.
    Exp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
}

/// The branch of onnxruntime's classifier finishing that a model takes, fixed at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxClassifier {
    pub post: PostTransform,
    pub base_values: Vec<f32>,
    /// Per class: whether some leaf of every row's trees writes it (`has_score`); the
    /// loader refuses classes written only on some paths.
    pub scored: Vec<bool>,
    /// Two class labels and weights for one class only (onnxruntime's `binary_case_`).
    pub binary_case: bool,
    pub weights_all_positive: bool,
}

impl Finish {
    pub(super) fn check(&self, e: &Ensemble) -> Result<(), ModelError> {
        let classes = e.classes.len();
        let expect = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(ModelError::Invalid(format!(
                    "{what}: {classes} classes for {} outputs",
                    e.n_outputs
                )))
            }
        };
        match self {
            Finish::Xgboost(XgbObjective::BinaryLogistic) => {
                expect(classes == 2 && e.n_outputs == 1, "binary:logistic")
            }
            Finish::Xgboost(XgbObjective::Softprob | XgbObjective::Softmax) => expect(
                classes >= 2 && e.n_outputs == classes,
                "a softmax objective",
            ),
            Finish::Xgboost(_) => expect(classes == 0 && e.n_outputs == 1, "a regression"),
            Finish::Lightgbm { transform, .. } => match transform {
                LgbTransform::Binary { .. } => {
                    expect(classes == 2 && e.n_outputs == 1, "objective binary")
                }
                LgbTransform::Softmax | LgbTransform::Ova { .. } => expect(
                    classes >= 2 && e.n_outputs == classes,
                    "a multiclass objective",
                ),
                _ => expect(classes == 0 && e.n_outputs == 1, "a regression"),
            },
            Finish::OnnxClassifier(c) => expect(
                classes >= 2 && e.n_outputs == classes && c.scored.len() == classes,
                "TreeEnsembleClassifier",
            ),
            Finish::OnnxRegressor { .. } => {
                expect(classes == 0 && e.n_outputs == 1, "TreeEnsembleRegressor")
            }
        }
    }

    pub(super) fn apply(&self, e: &Ensemble, sums: &[f64]) -> Prediction {
        match self {
            Finish::Xgboost(objective) => xgboost(*objective, sums),
            Finish::Lightgbm { transform, divisor } => lightgbm(*transform, *divisor, sums),
            Finish::OnnxClassifier(c) => c.apply(sums),
            Finish::OnnxRegressor { average, base } => {
                let mut score = sums[0] as f32;
                if *average {
                    score /= e.n_trees() as f32;
                }
                Prediction::Value(f64::from(score + base))
            }
        }
    }
}

/// XGBoost's `common::Sigmoid(float)`.
fn xgb_sigmoid(x: f32) -> f32 {
    let x = (-x).min(88.7f32);
    let denom = x.exp() + 1.0f32 + 1e-16f32;
    1.0f32 / denom
}

/// XGBoost's `common::Softmax`: exponentials in `f32`, their sum in double.
fn xgb_softmax(margins: &[f32]) -> Vec<f32> {
    let wmax = margins.iter().copied().fold(margins[0], f32::max);
    let exps: Vec<f32> = margins.iter().map(|m| (m - wmax).exp()).collect();
    let wsum: f64 = exps.iter().map(|e| f64::from(*e)).sum();
    exps.iter().map(|e| e / wsum as f32).collect()
}

/// The first largest value's index (`std::max_element`, numpy's `argmax`).
fn first_max<T: PartialOrd + Copy>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn xgboost(objective: XgbObjective, sums: &[f64]) -> Prediction {
    // Only the multi-class objectives need every margin; the others read the first without
    // a per-row allocation.
    let margin = sums[0] as f32;
    let margins = || -> Vec<f32> { sums.iter().map(|s| *s as f32).collect() };
    match objective {
        XgbObjective::BinaryLogistic => {
            let p = xgb_sigmoid(margin);
            Prediction::Class {
                label: usize::from(p > 0.5),
                probabilities: vec![f64::from(1.0f32 - p), f64::from(p)],
            }
        }
        XgbObjective::Softprob => {
            let p = xgb_softmax(&margins());
            Prediction::Class {
                label: first_max(&p),
                probabilities: p.into_iter().map(f64::from).collect(),
            }
        }
        XgbObjective::Softmax => {
            let margins = margins();
            Prediction::Class {
                label: first_max(&margins),
                probabilities: xgb_softmax(&margins).into_iter().map(f64::from).collect(),
            }
        }
        XgbObjective::Identity => Prediction::Value(f64::from(margin)),
        XgbObjective::RegLogistic => Prediction::Value(f64::from(xgb_sigmoid(margin))),
        XgbObjective::Exp => Prediction::Value(f64::from(margin.exp())),
    }
}

fn lightgbm(transform: LgbTransform, divisor: Option<f64>, sums: &[f64]) -> Prediction {
    let raw: Vec<f64> = match divisor {
        Some(d) => sums.iter().map(|s| s / d).collect(),
        None => sums.to_vec(),
    };
    // LightGBM writes `1.0f / (1.0f + std::exp(...))`: float literals, double arithmetic.
    let sigmoid = |x: f64, s: f64| 1.0 / (1.0 + (-s * x).exp());
    match transform {
        LgbTransform::Binary { sigmoid: s } => {
            let p = sigmoid(raw[0], s);
            Prediction::Class {
                label: usize::from(p > 0.5),
                probabilities: vec![1.0 - p, p],
            }
        }
        LgbTransform::Softmax => {
            let wmax = raw.iter().copied().fold(raw[0], f64::max);
            let exps: Vec<f64> = raw.iter().map(|r| (r - wmax).exp()).collect();
            let wsum: f64 = exps.iter().sum();
            let p: Vec<f64> = exps.iter().map(|e| e / wsum).collect();
            Prediction::Class {
                label: first_max(&p),
                probabilities: p,
            }
        }
        LgbTransform::Ova { sigmoid: s } => {
            let p: Vec<f64> = raw.iter().map(|r| sigmoid(*r, s)).collect();
            Prediction::Class {
                label: first_max(&p),
                probabilities: p,
            }
        }
        LgbTransform::Identity => Prediction::Value(raw[0]),
        LgbTransform::Exp => Prediction::Value(raw[0].exp()),
    }
}

/// onnxruntime's `ComputeLogistic`.
fn ort_logistic(val: f32) -> f32 {
    let v = 1.0f32 / (1.0f32 + (-val.abs()).exp());
    if val < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// onnxruntime's `ComputeSoftmax` in `f32`.
fn ort_softmax(values: &mut [f32]) {
    let mut v_max = -f32::MAX;
    for v in values.iter() {
        if *v > v_max {
            v_max = *v;
        }
    }
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - v_max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

impl OnnxClassifier {
    /// onnxruntime's `TreeAggregatorClassifier::FinalizeScores` and `write_scores`, for the
    /// branches the loader accepts.
    fn apply(&self, sums: &[f64]) -> Prediction {
        let mut scores: Vec<f32> = sums.iter().map(|s| *s as f32).collect();
        let n = scores.len();
        if n > 2 {
            for (k, b) in self.base_values.iter().enumerate() {
                scores[k] += b;
            }
            let mut label = usize::MAX;
            for k in 0..n {
                if self.scored[k] && (label == usize::MAX || scores[k] > scores[label]) {
                    label = k;
                }
            }
            self.transform(&mut scores);
            return Prediction::Class {
                label: if label == usize::MAX { 0 } else { label },
                probabilities: scores.into_iter().map(f64::from).collect(),
            };
        }
        // Two classes: the binary branches.
        let mut has1 = self.scored[1];
        let mut write_additional: i32 = -1;
        match self.base_values.len() {
            2 => {
                if has1 {
                    scores[1] = self.base_values[1] + scores[0];
                    scores[0] = -scores[1];
                    has1 = true;
                } else {
                    scores[1] += self.base_values[1];
                    scores[0] += self.base_values[0];
                }
            }
            1 => scores[0] += self.base_values[0],
            _ => write_additional = 3,
        }
        let single = self.base_values.len() != 2 && !has1;
        if single {
            scores.truncate(1);
        }
        let pos = if scores.len() == 2 && has1 {
            scores[1]
        } else if self.scored[0] {
            scores[0]
        } else {
            0.0
        };
        let label = if self.binary_case {
            if self.weights_all_positive {
                write_additional = if pos > 0.5 { 0 } else { 1 };
                usize::from(pos > 0.5)
            } else {
                write_additional = if pos > 0.0 { 2 } else { 3 };
                usize::from(pos > 0.0)
            }
        } else {
            usize::from(pos > 0.0)
        };
        if scores.len() >= 2 {
            self.transform(&mut scores);
        } else {
            let s = scores[0];
            scores = match (write_additional, self.post) {
                (0 | 1, _) => vec![1.0 - s, s],
                (2 | 3, PostTransform::Logistic) => vec![ort_logistic(-s), ort_logistic(s)],
                (2, _) => vec![-s, s],
                (3, _) => vec![s, -s],
                // The loader refuses models that reach here (onnxruntime writes one score).
                _ => vec![f32::NAN, f32::NAN],
            };
        }
        Prediction::Class {
            label,
            probabilities: scores.into_iter().map(f64::from).collect(),
        }
    }

    fn transform(&self, scores: &mut [f32]) {
        match self.post {
            PostTransform::None => {}
            PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = ort_logistic(*s)),
            PostTransform::Softmax => ort_softmax(scores),
        }
    }
}
