//! The observer without a broker: batches go through the same hook the delivery loops call
//! (`state.observe.transform`), then windows are closed as the stats thread closes them.
//! Drift: a shifted stream takes the PSI gauge over its threshold, an unshifted one does not.
//! Shadow: a candidate that disagrees on a known share of records is reported with exactly
//! that share, without changing the served outputs; promotion swaps it in.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{OwnedMessage, Timestamp};
use streamscore::model::forest::{NodeSpec, TreeSpec};
use streamscore::model::{ForestSpec, ModelBody, ModelFile, ModelMeta, ModelStore};
use streamscore::service::state::ServiceState;
use streamscore::stats::drift::Reference;
use streamscore::stats::emit::emit;
use streamscore::stats::observe::About;
use streamscore::stats::window::WindowSpec;
use streamscore::stats::{now_ms, StatsConfig};
use streamscore::transform::{transform_batch, Outcome};

const FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

fn iris_rows() -> Vec<[f64; 4]> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("training/iris.csv"))
            .expect("iris data");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .take(4)
                .map(|x| x.parse().expect("number"))
                .collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

fn message(i: usize, row: &[f64; 4]) -> OwnedMessage {
    let value = format!(
        r#"{{"id":{i},"sepal_length":{},"sepal_width":{},"petal_length":{},"petal_width":{}}}"#,
        row[0], row[1], row[2], row[3]
    );
    OwnedMessage::new(
        Some(value.into_bytes()),
        Some(format!("k{i}").into_bytes()),
        "in".into(),
        Timestamp::NotAvailable,
        0,
        i as i64,
        None,
    )
}

fn state_for(model: &Path, window_ms: i64) -> Arc<ServiceState> {
    let store = ModelStore::open(model, false).expect("model opens");
    let stats = StatsConfig {
        window: WindowSpec::new(window_ms, window_ms).expect("window"),
        ..StatsConfig::default()
    };
    ServiceState::with_stats(store, stats, About::default())
}

/// Scores `rows` in batches of 100 through the observer; returns the outcomes.
fn feed(state: &ServiceState, rows: &[[f64; 4]]) -> Vec<Outcome> {
    let messages: Vec<OwnedMessage> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| message(i, r))
        .collect();
    let mut outcomes = Vec::new();
    for chunk in messages.chunks(100) {
        let model = state.store.current();
        outcomes.extend(
            state
                .observe
                .transform(&model, None, chunk, 1 << 20, Instant::now()),
        );
    }
    outcomes
}

fn psi_gauge(state: &ServiceState, feature: &str) -> f64 {
    state
        .observe
        .metrics
        .feature_psi
        .get_metric_with_label_values(&[feature])
        .expect("gauge")
        .get()
}

fn shipped_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris-forest.json")
}

#[test]
fn the_psi_gauge_stays_low_for_training_like_data() {
    let state = state_for(&shipped_model(), 60_000);
    // Four passes over the training rows: the reference distribution exactly.
    let rows: Vec<[f64; 4]> = iris_rows().into_iter().cycle().take(600).collect();
    feed(&state, &rows);
    let windows = emit(&state, None, None, now_ms() + 120_000);
    let last = windows
        .iter()
        .rev()
        .find(|w| w["records_in"] == 600)
        .expect("a window with the records");
    let threshold = state.observe.config.drift_threshold;
    for feature in FEATURES {
        let psi = psi_gauge(&state, feature);
        assert!(psi < 0.05, "{feature}: PSI {psi} on unshifted data");
        assert!(psi < threshold);
    }
    assert_eq!(state.observe.metrics.features_drifted.get(), 0);
    assert!(last["drift"]
        .as_array()
        .expect("drift")
        .iter()
        .all(|d| d["drifted"] == false));
}

#[test]
fn the_psi_gauge_crosses_the_threshold_for_shifted_data() {
    let state = state_for(&shipped_model(), 60_000);
    // Petals 1.5 cm longer than anything the model was trained on; the rest unchanged.
    let rows: Vec<[f64; 4]> = iris_rows()
        .into_iter()
        .cycle()
        .take(600)
        .map(|[a, b, c, d]| [a, b, c + 1.5, d])
        .collect();
    feed(&state, &rows);
    emit(&state, None, None, now_ms() + 120_000);
    let threshold = state.observe.config.drift_threshold;
    let petal = psi_gauge(&state, "petal_length");
    assert!(
        petal > threshold,
        "petal_length PSI {petal} should exceed {threshold}"
    );
    for feature in ["sepal_length", "sepal_width", "petal_width"] {
        assert!(psi_gauge(&state, feature) < 0.05, "{feature} did not move");
    }
    assert_eq!(state.observe.metrics.features_drifted.get(), 1);
    let text = state.metrics.render();
    assert!(
        text.contains("streamscore_feature_psi{feature=\"petal_length\"}"),
        "exported to Prometheus"
    );
}

/// One tree on `petal_length`: below `cut` setosa, else virginica.
fn stump(cut: f64, with_reference: bool) -> ModelFile {
    let meta = ModelMeta {
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        classes: vec!["setosa".into(), "versicolor".into(), "virginica".into()],
        params: serde_json::json!({"cut": cut}),
        metrics: Default::default(),
    };
    let body = ModelBody::RandomForest(ForestSpec {
        trees: vec![TreeSpec {
            nodes: vec![
                NodeSpec::Split {
                    feature: 2,
                    threshold: cut,
                    left: 1,
                    right: 2,
                },
                NodeSpec::Leaf {
                    distribution: vec![1.0, 0.0, 0.0],
                },
                NodeSpec::Leaf {
                    distribution: vec![0.0, 0.0, 1.0],
                },
            ],
        }],
    });
    let file = ModelFile::new(meta, body);
    if with_reference {
        let rows: Vec<f64> = iris_rows().iter().flatten().copied().collect();
        let names: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
        file.with_reference(Reference::from_rows(&names, &rows))
    } else {
        file
    }
}

#[test]
fn a_shadow_that_disagrees_on_a_known_share_is_reported_with_that_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("served.json");
    let candidate = dir.path().join("candidate.json");
    stump(2.5, true).write(&served).expect("served written");
    stump(4.0, false)
        .write(&candidate)
        .expect("candidate written");
    let state = state_for(&served, 60_000);
    let shadow = state
        .load_shadow(Path::new("candidate.json"))
        .expect("shadow loads");

    // 1,000 records, petal lengths 1, 3, 5 and 6 in turn: only 3 (a quarter) falls between
    // the two cuts, where the served model says virginica and the shadow setosa.
    let rows: Vec<[f64; 4]> = (0..1000)
        .map(|i| [5.0, 3.0, [1.0, 3.0, 5.0, 6.0][i % 4], 1.0])
        .collect();
    let messages: Vec<OwnedMessage> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| message(i, r))
        .collect();
    let served_model = state.store.current();
    for chunk in messages.chunks(100) {
        let outcomes = state
            .observe
            .transform(&served_model, None, chunk, 1 << 20, Instant::now());
        // The stream's outputs are the served model's, shadow or not.
        let inputs: Vec<_> = chunk
            .iter()
            .map(|m| streamscore::transform::Input {
                payload: rdkafka::message::Message::payload(m),
                source: streamscore::record::SourcePosition {
                    partition: 0,
                    offset: rdkafka::message::Message::offset(m),
                },
            })
            .collect();
        assert_eq!(outcomes, transform_batch(&served_model, &inputs, 1 << 20));
        // One batch at a time, so that none is skipped for being behind.
        let deadline = Instant::now() + Duration::from_secs(20);
        let wanted = rdkafka::message::Message::offset(chunk.last().expect("records")) as u64 + 1;
        while state.observe.shadow.status()["records"].as_u64() < Some(wanted) {
            assert!(
                Instant::now() < deadline,
                "the shadow keeps up with a paced stream"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let status = state.observe.shadow.status();
    assert_eq!(status["version"], shadow.version.as_str());
    assert_eq!(status["compared"], 1000);
    assert_eq!(status["agreed"], 750);
    assert_eq!(status["agreement"], 0.75);
    assert_eq!(status["dropped_records"], 0);
    let confusion = status["confusion"].as_array().expect("confusion");
    let cell = |served: &str, shadow: &str| {
        confusion
            .iter()
            .find(|c| c["served"] == served && c["shadow"] == shadow)
            .map_or(0, |c| c["records"].as_u64().unwrap_or(0))
    };
    assert_eq!(cell("setosa", "setosa"), 250);
    assert_eq!(
        cell("virginica", "setosa"),
        250,
        "the quarter between the cuts"
    );
    assert_eq!(cell("virginica", "virginica"), 500);
    let rendered = state.metrics.render();
    assert!(rendered.contains("streamscore_shadow_records_total{result=\"disagreed\"} 250"));

    // Promotion: the shadow becomes the served model, atomically, and stops shadowing.
    let promoted = state.promote().expect("promoted");
    assert_eq!(promoted.version, shadow.version);
    assert_eq!(state.store.current().version, shadow.version);
    assert!(state.observe.shadow.model().is_none());
    assert!(state.promote().is_err(), "nothing left to promote");
}

#[test]
fn a_shadow_with_other_inputs_is_refused_like_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("served.json");
    stump(2.5, false).write(&served).expect("served written");
    let mut other = stump(4.0, false);
    other.meta.features[0] = "sepal.length".into();
    let other = ModelFile::new(other.meta, other.body);
    other
        .write(&dir.path().join("other.json"))
        .expect("written");
    let state = state_for(&served, 60_000);
    let refused = state.load_shadow(Path::new("other.json"));
    assert!(refused.is_err(), "different inputs cannot be compared");
    assert!(state.observe.shadow.model().is_none());
    assert!(state.load_shadow(Path::new("../outside.json")).is_err());
}

#[test]
fn import_with_reference_data_gives_a_pmml_model_drift_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rf.json");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    streamscore::import::run(&streamscore::import::ImportArgs {
        file: root.join("training/pmml/sklearn_rf_iris.pmml"),
        out: out.clone(),
        features: Vec::new(),
        classes: Vec::new(),
        reference_data: Some(root.join("training/iris.csv")),
    })
    .expect("imported");
    let model = streamscore::model::LoadedModel::load(&out).expect("loads");
    let reference = model.reference.as_ref().expect("a drift reference");
    assert_eq!(
        reference
            .features
            .iter()
            .map(|f| f.feature.as_str())
            .collect::<Vec<_>>(),
        FEATURES
    );
    assert!(reference
        .features
        .iter()
        .all(|f| f.counts.iter().sum::<u64>() == 150));

    // The PMML model's windows carry drift like a native forest's.
    let state = state_for(&out, 60_000);
    let rows: Vec<[f64; 4]> = iris_rows()
        .into_iter()
        .map(|[a, b, c, d]| [a, b * 2.0, c, d])
        .collect();
    feed(&state, &rows);
    emit(&state, None, None, now_ms() + 120_000);
    assert!(psi_gauge(&state, "sepal_width") > state.observe.config.drift_threshold);
    assert!(psi_gauge(&state, "petal_width") < 0.05);

    // A reference that names other columns is refused, not half-used.
    let bad = streamscore::import::run(&streamscore::import::ImportArgs {
        file: root.join("training/pmml/sklearn_rf_iris.pmml"),
        out: dir.path().join("bad.json"),
        features: Vec::new(),
        classes: Vec::new(),
        reference_data: Some(root.join("training/pmml/spark_rf_iris_indexed.labels.txt")),
    });
    assert!(bad.is_err());
}

#[test]
fn a_recommender_window_lists_its_top_items() {
    let state = state_for(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/recommender.json"),
        60_000,
    );
    let messages: Vec<OwnedMessage> = (0..50)
        .map(|i| {
            OwnedMessage::new(
                Some(format!(r#"{{"uid": {}, "n": 3}}"#, 1 + i % 5).into_bytes()),
                None,
                "in".into(),
                Timestamp::NotAvailable,
                0,
                i,
                None,
            )
        })
        .collect();
    let model = state.store.current();
    state
        .observe
        .transform(&model, None, &messages, 1 << 20, Instant::now());
    let windows = emit(&state, None, None, now_ms() + 120_000);
    let window = windows
        .iter()
        .find(|w| w["records_in"] == 50)
        .expect("the window");
    let top = window["top_items"].as_array().expect("top items");
    assert!(!top.is_empty() && top.len() <= 10);
    let counts: Vec<u64> = top.iter().filter_map(|t| t["count"].as_u64()).collect();
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "most recommended first"
    );
    // Five users, ten requests each, three items per list.
    assert!(counts[0] >= 10 && counts.iter().sum::<u64>() <= 150);
    assert!(window.get("predictions").is_none());
}
