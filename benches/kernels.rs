//! The scoring kernels, per row / per user / per record.
//!
//! `cargo bench --bench kernels` (a few minutes on two cores); `cargo bench --bench kernels
//! -- forest` runs one group. Every benchmark sets `Throughput::Elements` to the batch size,
//! so criterion's `thrpt` line is rows (users, records) per second and `time / batch` is the
//! per-element figure the README quotes.
//!
//! Targets: forest ≤ 1 µs per row at batch 1000 with 100 trees; recommender ≤ 20 µs per
//! user at batch 256 with 100 factors and 1,700 items.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::value::RawValue;

use streamscore::model::forest::argmax_rows;
use streamscore::model::recommender::Request;
use streamscore::model::{
    LoadedModel, Model, ModelBody, ModelFile, ModelMeta, Recommender, RecommenderSpec,
};
use streamscore::record::decode::{decode_user_event, FeatureDecoder, FeatureSchema};
use streamscore::record::encode::{
    to_json, Classification, ClassificationWriter, Items, RecommendationOut,
};
use streamscore::record::{SourcePosition, DEFAULT_MAX_RECORD_BYTES};
use streamscore::train::ratings::{self, GenParams};
use streamscore::transform::{transform_batch, Input, Outcome};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn iris_model() -> LoadedModel {
    let path = repo_path("models/iris-forest.json");
    LoadedModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `n` rows drawn from the 150 iris rows, each as often as the others, in a fixed random
/// order: the file is sorted by species, and in that order a walk down a tree takes the
/// same turns row after row, which flatters branch prediction as no real stream would.
fn iris_rows(n: usize) -> Array2<f64> {
    let path = repo_path("training/iris.csv");
    let data = streamscore::train::iris::read_csv(&path, "species")
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let mut picks: Vec<usize> = (0..n).map(|i| i % data.records.nrows()).collect();
    picks.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(150));
    data.records.select(Axis(0), &picks)
}

/// Iris rows as producers send them: an id, the four features, in the model's names.
fn iris_records(model: &LoadedModel, n: usize) -> Vec<String> {
    let rows = iris_rows(n);
    rows.rows()
        .into_iter()
        .enumerate()
        .map(|(r, row)| {
            let mut fields = vec![format!(r#""id":"r-{r}""#)];
            for (name, v) in model.meta.features.iter().zip(row) {
                // `{:?}` keeps a decimal point, as a JSON writer of doubles would.
                fields.push(format!(r#""{name}":{v:?}"#));
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect()
}

fn forest(c: &mut Criterion) {
    let model = iris_model();
    let Model::Forest(forest) = &model.model else {
        panic!("models/iris-forest.json is not a forest");
    };
    assert_eq!(forest.n_trees(), 100, "the target is stated for 100 trees");
    let mut group = c.benchmark_group("forest_predict");
    for batch in [1usize, 100, 1000] {
        let rows = iris_rows(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &rows, |b, rows| {
            b.iter(|| forest.predict_proba(black_box(rows.view())))
        });
    }
    group.finish();
}

/// The shipped 100-tree forest imported from PMML (written from the same trees) against the
/// native kernel, batch 1000; and a real sklearn2pmml export of 100 trees for scale. The
/// PMML figure includes the mining-schema copy into full rows that the stream path does.
fn pmml_forest(c: &mut Criterion) {
    use streamscore::model::pmml::export::forest_to_pmml;
    use streamscore::model::pmml::fields::Raw;
    use streamscore::model::pmml::PmmlModel;

    let model = iris_model();
    let Model::Forest(forest) = &model.model else {
        panic!("models/iris-forest.json is not a forest");
    };
    let file =
        ModelFile::read(&repo_path("models/iris-forest.json")).unwrap_or_else(|e| panic!("{e}"));
    let ModelBody::RandomForest(spec) = &file.body else {
        panic!("not a forest");
    };
    let same_trees = PmmlModel::parse(&forest_to_pmml(
        spec,
        &file.meta.features,
        &file.meta.classes,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let sklearn_path = repo_path("training/pmml/sklearn_rf_iris.pmml");
    let sklearn =
        PmmlModel::parse(&std::fs::read_to_string(&sklearn_path).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((same_trees.n_trees(), sklearn.n_trees()), (100, 100));
    let batch = 1000;
    let rows = iris_rows(batch);
    let prepared = |m: &PmmlModel| -> Vec<f64> {
        rows.iter()
            .enumerate()
            .map(|(i, v)| m.prepare(i % 4, Raw::Number(*v)).unwrap_or(f64::NAN))
            .collect()
    };
    let (same_inputs, sklearn_inputs) = (prepared(&same_trees), prepared(&sklearn));
    let mut group = c.benchmark_group("pmml_forest_predict");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function("native_100_trees/1000", |b| {
        b.iter(|| forest.predict_proba(black_box(rows.view())))
    });
    group.bench_function("imported_same_100_trees/1000", |b| {
        b.iter(|| same_trees.predict_rows(black_box(&same_inputs)))
    });
    group.bench_function("sklearn2pmml_100_trees/1000", |b| {
        b.iter(|| sklearn.predict_rows(black_box(&sklearn_inputs)))
    });
    group.bench_function("imported_same_100_trees_exact_path/1000", |b| {
        b.iter(|| same_trees.predict_rows_exact(black_box(&same_inputs)))
    });
    group.finish();
}

/// The fixture rows of an imported model (held-out, random, threshold and missing rows, as
/// `training/gbm` recorded them) cycled to `n`: what `bench/gbm_predict.py` feeds the
/// libraries' own predict.
fn gbm_rows(name: &str, n: usize) -> Vec<f64> {
    let path = repo_path(&format!("training/gbm/{name}.expected.json"));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<Vec<f64>> = doc["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r["x"]
                        .as_array()
                        .map(|x| x.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    (0..n).flat_map(|i| rows[i % rows.len()].clone()).collect()
}

/// Imported XGBoost, LightGBM and ONNX ensembles per row at batch 1000, next to the native
/// 100-tree forest: a 100-tree depth-6 XGBoost model (the ≤ 1 µs/row target) and the 300-tree
/// depth-8 models of each format.
fn imported_gbm(c: &mut Criterion) {
    use streamscore::model::ensemble::Ensemble;

    let native = iris_model();
    let Model::Forest(forest) = &native.model else {
        panic!("models/iris-forest.json is not a forest");
    };
    let batch = 1000;
    let iris = iris_rows(batch);
    let mut group = c.benchmark_group("imported_gbm_predict");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function("native_forest_100_trees/1000", |b| {
        b.iter(|| forest.predict_proba(black_box(iris.view())))
    });
    for (name, file) in [
        ("xgboost_100_trees_depth6", "xgb_100x6.json"),
        ("xgboost_300_trees_depth8", "xgb_large.json"),
        ("lightgbm_300_trees_depth8", "lgb_large.txt"),
        ("onnx_sklearn_gbm_300_trees_depth8", "onnx_large.onnx"),
    ] {
        let model = LoadedModel::load(&repo_path(&format!("training/gbm/{file}")))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let Model::Ensemble(ensemble) = &model.model else {
            panic!("{file} is not an imported ensemble");
        };
        let ensemble: &Ensemble = ensemble;
        let stem = file.split('.').next().unwrap_or(file);
        let rows = gbm_rows(stem, batch);
        group.bench_function(format!("{name}/1000"), |b| {
            b.iter(|| ensemble.predict_rows(black_box(&rows)))
        });
    }
    group.finish();
}

const USERS: usize = 1000;
const ITEMS: usize = 1700;
const FACTORS: usize = 100;

/// A recommender of the shipped model's shape: 1000 users, 1700 items, 100 factors. The
/// rated sets come from the synthetic MovieLens generator (Zipf item popularity, at least
/// 20 ratings per user, 100,000 in all) so that the exclusion work is realistic; the factors
/// are random, which does not change the arithmetic and skips minutes of training.
fn recommender_spec() -> RecommenderSpec {
    let synthetic = ratings::generate(&GenParams {
        users: USERS,
        items: ITEMS,
        ..GenParams::default()
    })
    .unwrap_or_else(|e| panic!("generating ratings: {e:#}"));
    let mut rated = vec![Vec::new(); USERS];
    for r in &synthetic.ratings {
        rated[(r.user - 1) as usize].push((r.item - 1) as u32);
    }
    assert!(rated.iter().all(|items| !items.is_empty()));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-0.2..0.2)).collect() };
    RecommenderSpec {
        factors: FACTORS,
        global_mean: synthetic.global_mean,
        user_ids: (1..=USERS as i64).collect(),
        user_bias: synthetic.user_bias.clone(),
        user_factors: random(USERS * FACTORS),
        item_ids: (1..=ITEMS as i64).collect(),
        item_bias: synthetic.item_bias.clone(),
        item_factors: random(ITEMS * FACTORS),
        item_titles: (1..=ITEMS)
            .map(|i| Some(format!("Item {i} (1997)")))
            .collect(),
        rated,
    }
}

/// `batch` known users, spread over the user range, each asking for `n` items.
fn user_requests(batch: usize, n: usize) -> Vec<Request> {
    (0..batch)
        .map(|b| Request {
            uid: (b * 7 % USERS) as i64 + 1,
            n,
        })
        .collect()
}

fn recommender(c: &mut Criterion) {
    let spec = recommender_spec();
    let model = Recommender::compile(&spec).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("recommender_top10");
    for batch in [1usize, 256] {
        let requests = user_requests(batch, 10);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &requests, |b, reqs| {
            b.iter(|| model.recommend_batch(black_box(reqs)))
        });
    }
    group.finish();
}

/// Folding one feedback event in (`streamscore::online`): the user's log is 20 items, so
/// every event re-solves the user from 20 new ratings, plus a known user's training items.
/// The reference is the dominant term done by ndarray's own matrix multiply alone: the Gram
/// product `ZᵀZ` of the same rows, with no gathering, no Cholesky, no bookkeeping.
fn online_fold_in(c: &mut Criterion) {
    use streamscore::online::{FeedbackEvent, OnlineConfig, OnlineState};
    let spec = recommender_spec();
    let model = Recommender::compile(&spec).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("online_fold_in");
    group.throughput(Throughput::Elements(1));
    let known_uid = 1i64;
    let trained = spec.rated[0].len();
    for (name, uid) in [("new_user", 5_000_000i64), ("known_user", known_uid)] {
        let mut state = OnlineState::new(OnlineConfig::default(), "bench");
        let mut offset = 0i64;
        group.bench_function(name, |b| {
            b.iter(|| {
                offset += 1;
                let event = FeedbackEvent {
                    uid,
                    // Items the known user did not rate at training time (ids from 1).
                    item: ITEMS as i64 - (offset % 20),
                    rating: Some(1.0 + (offset % 5) as f32),
                };
                black_box(state.apply(&model, 0, offset, event))
            })
        });
    }
    for (name, rows) in [
        ("ndarray_gram_new_user", 20),
        ("ndarray_gram_known_user", trained + 20),
    ] {
        let z = Array2::<f64>::from_shape_fn((rows, FACTORS + 1), |(r, f)| {
            ((r * 7 + f) % 13) as f64 * 0.01
        });
        group.bench_function(name, |b| b.iter(|| black_box(black_box(&z).t().dot(&z))));
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let model = iris_model();
    let records = iris_records(&model, 150);
    let events: Vec<String> = (0..150)
        .map(|i| format!(r#"{{"id":"e-{i}","uid":{},"n":10}}"#, i * 7 % USERS + 1))
        .collect();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(records.len() as u64));
    let mut decoder = FeatureDecoder::new(FeatureSchema::new(&model.meta.features));
    let mut row = vec![0.0; model.meta.features.len()];
    group.bench_function("iris_features", |b| {
        b.iter(|| {
            for text in &records {
                let decoded = decoder.decode(black_box(text), &mut row);
                black_box((decoded.is_ok(), &row));
            }
        })
    });
    // The format's own library on the same records, as a plain serde user would read them:
    // a derived struct of the four features and the id borrowed raw.
    #[derive(serde::Deserialize)]
    struct IrisRecord<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
        sepal_length: f64,
        sepal_width: f64,
        petal_length: f64,
        petal_width: f64,
    }
    group.bench_function("iris_features_serde_derive", |b| {
        b.iter(|| {
            for text in &records {
                let decoded = serde_json::from_str::<IrisRecord>(black_box(text));
                black_box(
                    decoded
                        .map(|r| {
                            (
                                r.id.is_some(),
                                r.sepal_length + r.sepal_width + r.petal_length + r.petal_width,
                            )
                        })
                        .is_ok(),
                );
            }
        })
    });
    // A wide model: how a field finds its feature matters more the more features there are.
    let names: Vec<String> = (0..100).map(|i| format!("feature_{i:03}")).collect();
    let wide: Vec<String> = (0..150)
        .map(|r| {
            let fields: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!(r#""{name}":{}.25"#, (i + r) % 10))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    let mut wide_decoder = FeatureDecoder::new(FeatureSchema::new(&names));
    let mut wide_row = vec![0.0; names.len()];
    assert!(wide_decoder.decode(&wide[0], &mut wide_row).is_ok());
    group.throughput(Throughput::Elements(wide.len() as u64));
    group.bench_function("100_features", |b| {
        b.iter(|| {
            for text in &wide {
                let decoded = wide_decoder.decode(black_box(text), &mut wide_row);
                black_box((decoded.is_ok(), &wide_row));
            }
        })
    });
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("user_event", |b| {
        b.iter(|| {
            for text in &events {
                black_box(decode_user_event(black_box(text)).is_ok());
            }
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let model = iris_model();
    let Model::Forest(forest) = &model.model else {
        panic!("models/iris-forest.json is not a forest");
    };
    let probabilities = forest.predict_proba(iris_rows(150).view());
    let labels = argmax_rows(&probabilities);
    let ids: Vec<Box<RawValue>> = (0..150)
        .map(|i| RawValue::from_string(format!(r#""r-{i}""#)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("classification", |b| {
        b.iter(|| {
            let writer = ClassificationWriter::new(&model.meta.classes, &model.version);
            for (r, id) in ids.iter().enumerate() {
                let probs = probabilities.row(r);
                black_box(writer.write(
                    Some(id),
                    probs.as_slice().unwrap_or_default(),
                    labels[r],
                    SourcePosition {
                        partition: 3,
                        offset: 1_000_000 + r as i64,
                    },
                ));
            }
        })
    });
    // The same records through serde_json's own serialiser: what the writer replaces.
    group.bench_function("classification_serde", |b| {
        b.iter(|| {
            for (r, id) in ids.iter().enumerate() {
                let probs = probabilities.row(r);
                let out = Classification::new(
                    Some(id),
                    &model.meta.classes,
                    probs.as_slice().unwrap_or_default(),
                    labels[r],
                    &model.version,
                    SourcePosition {
                        partition: 3,
                        offset: 1_000_000 + r as i64,
                    },
                );
                black_box(to_json(&out));
            }
        })
    });

    let recommender = Recommender::compile(&recommender_spec()).unwrap_or_else(|e| panic!("{e}"));
    let requests = user_requests(150, 10);
    let recommendations = recommender.recommend_batch(&requests);
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function("recommendation_top10", |b| {
        b.iter(|| {
            for (r, (request, rec)) in requests.iter().zip(&recommendations).enumerate() {
                black_box(to_json(&RecommendationOut {
                    id: None,
                    uid: request.uid,
                    items: Items(rec),
                    cold_start: rec.cold_start,
                    model_version: "mf-000000000000",
                    partition: 3,
                    offset: 1_000_000 + r as i64,
                }));
            }
        })
    });
    group.finish();
}

fn as_inputs(payloads: &[String]) -> Vec<Input<'_>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            payload: Some(p.as_bytes()),
            source: SourcePosition {
                partition: 0,
                offset: i as i64,
            },
        })
        .collect()
}

fn assert_all_scored(outcomes: &[Outcome]) {
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Scored(_))));
}

fn transform(c: &mut Criterion) {
    let iris = iris_model();
    let payloads = iris_records(&iris, 1000);
    let inputs = as_inputs(&payloads);
    assert_all_scored(&transform_batch(&iris, &inputs, DEFAULT_MAX_RECORD_BYTES));
    let mut group = c.benchmark_group("transform_batch");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("iris_1000", |b| {
        b.iter(|| transform_batch(&iris, black_box(&inputs), DEFAULT_MAX_RECORD_BYTES))
    });

    let meta = ModelMeta {
        features: vec!["uid".into()],
        classes: Vec::new(),
        params: serde_json::json!({}),
        metrics: Default::default(),
    };
    let file = ModelFile::new(meta, ModelBody::MatrixFactorization(recommender_spec()));
    let recommender = LoadedModel::from_file(file).unwrap_or_else(|e| panic!("{e}"));
    let payloads: Vec<String> = user_requests(256, 10)
        .iter()
        .map(|r| format!(r#"{{"uid":{}}}"#, r.uid))
        .collect();
    let inputs = as_inputs(&payloads);
    assert_all_scored(&transform_batch(
        &recommender,
        &inputs,
        DEFAULT_MAX_RECORD_BYTES,
    ));
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("recommender_256", |b| {
        b.iter(|| transform_batch(&recommender, black_box(&inputs), DEFAULT_MAX_RECORD_BYTES))
    });
    group.finish();
}

/// Short runs: on a shared two-core machine longer ones only average in more neighbours.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// What the observer adds on the scoring thread: the same 1,000 iris records through
/// `transform_batch` and through the delivery loops' hook (`observe.transform`: windows,
/// drift bins, figures), with statistics on and off.
fn observe(c: &mut Criterion) {
    use rdkafka::message::{OwnedMessage, Timestamp};
    use std::time::Instant;
    use streamscore::model::ModelStore;
    use streamscore::service::state::ServiceState;
    use streamscore::stats::observe::About;
    use streamscore::stats::StatsConfig;

    let path = repo_path("models/iris-forest.json");
    let iris = iris_model();
    let payloads = iris_records(&iris, 1000);
    let messages: Vec<OwnedMessage> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            OwnedMessage::new(
                Some(p.clone().into_bytes()),
                None,
                "in".into(),
                Timestamp::CreateTime(1_700_000_000_000 + i as i64),
                (i % 4) as i32,
                i as i64,
                None,
            )
        })
        .collect();
    let inputs = as_inputs(&payloads);
    let state_with = |enabled: bool| {
        let store = ModelStore::open(&path, false).expect("model");
        let stats = StatsConfig {
            enabled,
            ..StatsConfig::default()
        };
        ServiceState::with_stats(store, stats, About::default())
    };
    let (on, off) = (state_with(true), state_with(false));
    let model = on.store.current();
    let mut group = c.benchmark_group("observe");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("transform_batch_iris_1000", |b| {
        b.iter(|| transform_batch(&model, black_box(&inputs), DEFAULT_MAX_RECORD_BYTES))
    });
    group.bench_function("stats_on_iris_1000", |b| {
        b.iter(|| {
            on.observe.transform(
                &model,
                None,
                black_box(&messages),
                DEFAULT_MAX_RECORD_BYTES,
                Instant::now(),
            )
        })
    });
    group.bench_function("stats_off_iris_1000", |b| {
        b.iter(|| {
            off.observe.transform(
                &model,
                None,
                black_box(&messages),
                DEFAULT_MAX_RECORD_BYTES,
                Instant::now(),
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = kernels;
    config = config();
    targets = forest, pmml_forest, imported_gbm, recommender, online_fold_in, decode, encode, transform, observe
}
criterion_main!(kernels);
