//! One micro-batch through decode → score → encode, on one model snapshot.
//!
//! Shared by the Kafka pipeline and the `score` command, so that what is tested offline is
//! exactly what runs on the stream. The model is scored once per batch (one vectorised call);
//! records that fail to decode never reach it and come back as rejections in input order.

use ndarray::Array2;
use serde_json::value::RawValue;

use crate::model::ensemble::Ensemble;
use crate::model::forest::argmax_rows;
use crate::model::pmml::{PmmlModel, Prediction};
use crate::model::recommender::{Request, UserOverride};
use crate::model::{Forest, LoadedModel, Model, Recommender};
use crate::online::Overlay;
use crate::record::decode::{decode_user_event, payload_text, FeatureDecoder, FeatureSchema};
use crate::record::decode_ensemble::EnsembleDecoder;
use crate::record::decode_pmml::PmmlDecoder;
use crate::record::encode::{
    to_json, ClassificationWriter, Items, RecommendationOut, RegressionOut,
};
use crate::record::{Reason, Rejection, SourcePosition};

#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub payload: Option<&'a [u8]>,
    pub source: SourcePosition,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The output record's JSON value.
    Scored(Vec<u8>),
    Rejected(Rejection),
}

/// What a batch's records looked like on the way through, for statistics, drift and the
/// shadow model (`stats::observe`). Every method has a no-op default, so the plain
/// `transform_batch` pays nothing for it.
pub trait Watch {
    /// The decoded feature rows of the batch, row-major (NaN: missing), once per batch.
    fn rows(&mut self, _features: &[f64], _width: usize) {}
    /// Decoding is done; scoring starts.
    fn decoded(&mut self) {}
    /// One scored record of a classifier, in input order among the scored ones.
    fn class<P: Copy + Into<f64>>(&mut self, _label: usize, _probabilities: &[P]) {}
    /// One scored record of a regression.
    fn value(&mut self, _prediction: f64) {}
    /// One scored record of a recommender: its items, best first.
    fn items(&mut self, _items: &mut dyn Iterator<Item = i64>) {}
}

/// The watch that sees nothing.
pub struct Unwatched;
impl Watch for Unwatched {}

/// Turns a batch of inputs into one outcome per input, in the same order.
pub fn transform_batch(
    model: &LoadedModel,
    inputs: &[Input<'_>],
    max_record_bytes: usize,
) -> Vec<Outcome> {
    transform_batch_with(model, None, inputs, max_record_bytes)
}

/// `transform_batch`, with what the recommender learned online (`crate::online`) layered
/// over the model for the users it knows about.
pub fn transform_batch_with(
    model: &LoadedModel,
    overlay: Option<&Overlay>,
    inputs: &[Input<'_>],
    max_record_bytes: usize,
) -> Vec<Outcome> {
    transform_batch_watched(model, overlay, inputs, max_record_bytes, &mut Unwatched)
}

/// `transform_batch_with`, telling `watch` what it decoded and predicted.
pub fn transform_batch_watched(
    model: &LoadedModel,
    overlay: Option<&Overlay>,
    inputs: &[Input<'_>],
    max_record_bytes: usize,
    watch: &mut impl Watch,
) -> Vec<Outcome> {
    match &model.model {
        Model::Forest(forest) => classify(model, forest, inputs, max_record_bytes, watch),
        Model::Recommender(recommender) => {
            recommend(model, recommender, overlay, inputs, max_record_bytes, watch)
        }
        Model::Pmml(pmml) => score_pmml(model, pmml, inputs, max_record_bytes, watch),
        Model::Ensemble(e) => score_ensemble(model, e, inputs, max_record_bytes, watch),
    }
}

fn classify(
    model: &LoadedModel,
    forest: &Forest,
    inputs: &[Input<'_>],
    max_bytes: usize,
    watch: &mut impl Watch,
) -> Vec<Outcome> {
    let n_features = model.meta.features.len();
    let mut decoder = FeatureDecoder::new(FeatureSchema::new(&model.meta.features));
    let mut matrix = Vec::with_capacity(inputs.len() * n_features);
    let mut decoded: Vec<Result<Option<&RawValue>, Rejection>> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let start = matrix.len();
        matrix.resize(start + n_features, 0.0);
        let result = payload_text(input.payload, max_bytes)
            .and_then(|text| decoder.decode(text, &mut matrix[start..]));
        if result.is_err() {
            matrix.truncate(start);
        }
        decoded.push(result);
    }
    watch.rows(&matrix, n_features);
    watch.decoded();
    let rows = matrix.len() / n_features;
    let probabilities = match Array2::from_shape_vec((rows, n_features), matrix) {
        Ok(features) => forest.predict_proba(features.view()),
        Err(_) => unreachable!("the matrix holds exactly `rows` rows of `n_features` values"),
    };
    let labels = argmax_rows(&probabilities);
    let writer = ClassificationWriter::new(&model.meta.classes, &model.version);
    let mut row = 0;
    decoded
        .into_iter()
        .zip(inputs)
        .map(|(result, input)| match result {
            Err(rejection) => Outcome::Rejected(rejection),
            Ok(id) => {
                let probs = probabilities.row(row);
                let probs = probs.as_slice().unwrap_or_default();
                watch.class(labels[row], probs);
                let out = writer.write(id, probs, labels[row], input.source);
                row += 1;
                Outcome::Scored(out)
            }
        })
        .collect()
}

/// A PMML model's batch: the same shape as `classify`, with missing values allowed through
/// to the model and a record it gives no prediction for refused after scoring.
fn score_pmml(
    model: &LoadedModel,
    pmml: &PmmlModel,
    inputs: &[Input<'_>],
    max_bytes: usize,
    watch: &mut impl Watch,
) -> Vec<Outcome> {
    let n_features = pmml.features().len();
    let mut decoder = PmmlDecoder::new(pmml, &model.meta.features);
    let (matrix, decoded) = decode_rows(inputs, max_bytes, n_features, |text, row| {
        decoder.decode(text, row)
    });
    watch.rows(&matrix, n_features);
    watch.decoded();
    let predictions = pmml.predict_rows(&matrix);
    encode_predictions(model, inputs, decoded, predictions, watch)
}

/// An imported ensemble's batch: missing values go through to the model as NaN.
fn score_ensemble(
    model: &LoadedModel,
    ensemble: &Ensemble,
    inputs: &[Input<'_>],
    max_bytes: usize,
    watch: &mut impl Watch,
) -> Vec<Outcome> {
    let n_features = model.meta.features.len();
    let mut decoder = EnsembleDecoder::new(&model.meta.features);
    let (matrix, decoded) = decode_rows(inputs, max_bytes, n_features, |text, row| {
        decoder.decode(text, row)
    });
    watch.rows(&matrix, n_features);
    watch.decoded();
    let predictions = ensemble.predict_rows(&matrix);
    encode_predictions(model, inputs, decoded, predictions, watch)
}

/// Rows of `n_features` (missing values NaN), one per record that decodes, in input order,
/// and each record's id or rejection.
type DecodedRows<'a> = (Vec<f64>, Vec<Result<Option<&'a RawValue>, Rejection>>);

fn decode_rows<'a>(
    inputs: &[Input<'a>],
    max_bytes: usize,
    n_features: usize,
    mut decode: impl FnMut(&'a str, &mut [f64]) -> Result<Option<&'a RawValue>, Rejection>,
) -> DecodedRows<'a> {
    let mut matrix = Vec::with_capacity(inputs.len() * n_features);
    let mut decoded = Vec::with_capacity(inputs.len());
    for input in inputs {
        let start = matrix.len();
        matrix.resize(start + n_features, f64::NAN);
        let result = payload_text(input.payload, max_bytes)
            .and_then(|text| decode(text, &mut matrix[start..]));
        if result.is_err() {
            matrix.truncate(start);
        }
        decoded.push(result);
    }
    (matrix, decoded)
}

/// Predictions (one per decoded record, in order) and rejections back into input order.
fn encode_predictions(
    model: &LoadedModel,
    inputs: &[Input<'_>],
    decoded: Vec<Result<Option<&RawValue>, Rejection>>,
    predictions: Vec<Prediction>,
    watch: &mut impl Watch,
) -> Vec<Outcome> {
    let mut predictions = predictions.into_iter();
    let writer = ClassificationWriter::new(&model.meta.classes, &model.version);
    decoded
        .into_iter()
        .zip(inputs)
        .map(|(result, input)| {
            let id = match result {
                Err(rejection) => return Outcome::Rejected(rejection),
                Ok(id) => id,
            };
            let source = input.source;
            match predictions.next().unwrap_or(Prediction::Missing) {
                Prediction::Missing => Outcome::Rejected(Rejection::new(
                    Reason::NoPrediction,
                    "the model gives no prediction for these inputs (a missing value it does not route)",
                )),
                Prediction::Value(prediction) => {
                    watch.value(prediction);
                    Outcome::Scored(to_json(&RegressionOut {
                    id,
                    prediction,
                    model_version: &model.version,
                    partition: source.partition,
                    offset: source.offset,
                    }))
                }
                Prediction::Class {
                    label,
                    probabilities,
                } => {
                    watch.class(label, &probabilities);
                    Outcome::Scored(writer.write(id, &probabilities, label, source))
                }
            }
        })
        .collect()
}

fn recommend(
    model: &LoadedModel,
    recommender: &Recommender,
    overlay: Option<&Overlay>,
    inputs: &[Input<'_>],
    max_bytes: usize,
    watch: &mut impl Watch,
) -> Vec<Outcome> {
    let decoded: Vec<_> = inputs
        .iter()
        .map(|input| payload_text(input.payload, max_bytes).and_then(decode_user_event))
        .collect();
    let requests: Vec<Request> = decoded
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|e| Request { uid: e.uid, n: e.n })
        .collect();
    watch.decoded();
    let learned = overlay.map_or_else(Vec::new, |o| o.lookup(requests.iter().map(|r| r.uid)));
    let overrides: Vec<Option<UserOverride<'_>>> = learned
        .iter()
        .map(|l| {
            l.as_deref().map(|l| UserOverride {
                // Factors solved against another model (a reload the feedback thread has
                // not caught up with) would score nonsense; what the user saw still holds.
                learned: l
                    .solved
                    .as_ref()
                    .filter(|_| *l.model_version == *model.version)
                    .map(|s| (s.bias, &s.factors[..])),
                seen: &l.seen,
            })
        })
        .collect();
    let mut recommendations = recommender
        .recommend_batch_with(&requests, &overrides)
        .into_iter();
    decoded
        .into_iter()
        .zip(inputs)
        .map(|(result, input)| match result {
            Err(rejection) => Outcome::Rejected(rejection),
            Ok(event) => {
                let Some(rec) = recommendations.next() else {
                    unreachable!("the recommender answers every request")
                };
                watch.items(&mut rec.items.iter().map(|i| i.item));
                Outcome::Scored(to_json(&RecommendationOut {
                    id: event.id,
                    uid: event.uid,
                    items: Items(&rec),
                    cold_start: rec.cold_start,
                    model_version: &model.version,
                    partition: input.source.partition,
                    offset: input.source.offset,
                }))
            }
        })
        .collect()
}
