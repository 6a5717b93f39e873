//! Imported XGBoost, LightGBM and ONNX models against their own library's predictions.
//!
//! `training/gbm/make_fixtures.sh` trains the models with the real libraries and records
//! what `xgboost`, `lightgbm` and `onnxruntime` predict on held-out rows, random rows up to
//! 10 % outside the training range, rows at every split threshold and its f32/f64
//! neighbours, and rows with NaN features. Every row must get the same label and
//! probabilities (or regression value) within 1e-6; the kernel must also agree to the bit with
//! a plain node-by-node walk.

use std::path::{Path, PathBuf};

use serde_json::Value;
use streamscore::model::pmml::Prediction;
use streamscore::model::{LoadedModel, Model};

const TOLERANCE: f64 = 1e-6;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("training/gbm")
}

fn fixtures() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            let stem = name.strip_suffix(".expected.json")?.to_owned();
            let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            Some((stem, doc))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn row(x: &Value) -> Vec<f64> {
    x.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Compares one fixture; returns (rows, rows agreeing, first disagreements).
fn check(name: &str, doc: &Value) -> (usize, usize, Vec<String>) {
    let path = fixtures_dir().join(doc["model"].as_str().unwrap());
    let model = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let Model::Ensemble(ensemble) = &model.model else {
        panic!("{name}: not loaded as an imported ensemble")
    };
    let rows = doc["rows"].as_array().unwrap();
    let matrix: Vec<f64> = rows.iter().flat_map(|r| row(&r["x"])).collect();
    let predicted = ensemble.predict_rows(&matrix);
    let walked = ensemble.predict_rows_walked(&matrix);
    assert_eq!(predicted.len(), rows.len(), "{name}");
    let mut ok = 0;
    let mut errors = Vec::new();
    for (i, ((r, p), w)) in rows.iter().zip(&predicted).zip(&walked).enumerate() {
        assert_eq!(p, w, "{name} row {i}: kernel and walk disagree");
        let mut fail = None;
        match p {
            Prediction::Class {
                label,
                probabilities,
            } => {
                let want = r["label"].as_str().unwrap();
                if model.meta.classes[*label] != want {
                    fail = Some(format!("label {} vs {want}", model.meta.classes[*label]));
                }
                for (k, (got, want)) in probabilities
                    .iter()
                    .zip(r["probabilities"].as_array().unwrap())
                    .enumerate()
                {
                    if let Some(want) = want.as_f64() {
                        if (got - want).abs() > TOLERANCE {
                            fail = Some(format!("p[{k}] {got} vs {want}"));
                        }
                    }
                }
            }
            Prediction::Value(v) => {
                let want = r["prediction"].as_f64().unwrap();
                if (v - want).abs() > TOLERANCE {
                    fail = Some(format!("{v} vs {want} (Δ {:e})", v - want));
                }
            }
            Prediction::Missing => fail = Some("no prediction".into()),
        }
        match fail {
            None => ok += 1,
            Some(f) if errors.len() < 5 => errors.push(format!(
                "row {i} ({}): {f}",
                r["kind"].as_str().unwrap_or("")
            )),
            Some(_) => {}
        }
    }
    (rows.len(), ok, errors)
}

#[test]
fn every_fixture_scores_as_its_library() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 20, "fixtures missing: {}", fixtures.len());
    let mut failures = Vec::new();
    for (name, doc) in &fixtures {
        let (n, ok, errors) = check(name, doc);
        println!("GBM-FIXTURE {name}: {ok}/{n}");
        if ok != n {
            failures.push(format!("{name}: {ok}/{n} {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fixtures_cover_what_the_issue_asks() {
    let fixtures = fixtures();
    for format in ["xgboost", "lightgbm", "onnx"] {
        let of: Vec<&Value> = fixtures
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["format"] == format)
            .collect();
        let binary = of
            .iter()
            .any(|d| d["classes"].as_array().is_some_and(|c| c.len() == 2));
        let multi = of
            .iter()
            .any(|d| d["classes"].as_array().is_some_and(|c| c.len() > 2));
        let regression = of.iter().any(|d| d["task"] == "regression");
        assert!(binary && multi && regression, "{format}");
        for kind in ["heldout", "random", "threshold", "missing"] {
            assert!(
                of.iter().all(|d| d["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["kind"] == kind)),
                "{format}: {kind}"
            );
        }
    }
}

/// Rows with missing features as records would carry them (the field absent, or `null`),
/// through the stream's own decode → score → encode: the library's answer for NaN.
#[test]
fn absent_and_null_fields_score_as_the_librarys_nan() {
    use streamscore::record::SourcePosition;
    use streamscore::transform::{transform_batch, Input, Outcome};
    for name in [
        "xgb_missing",
        "lgb_missing",
        "lgb_zero_missing",
        "onnx_rf_missing",
        "xgb_regression",
    ] {
        let doc: Value = serde_json::from_slice(
            &std::fs::read(fixtures_dir().join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let model =
            LoadedModel::load(&fixtures_dir().join(doc["model"].as_str().unwrap())).unwrap();
        let rows: Vec<&Value> = doc["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "missing")
            .collect();
        assert!(!rows.is_empty(), "{name}");
        let records: Vec<Vec<u8>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut object = serde_json::Map::new();
                for (k, (f, v)) in model
                    .meta
                    .features
                    .iter()
                    .zip(r["x"].as_array().unwrap())
                    .enumerate()
                {
                    // every other missing value absent, the rest explicit nulls
                    if !v.is_null() || (i + k) % 2 == 0 {
                        object.insert(f.clone(), v.clone());
                    }
                }
                serde_json::to_vec(&object).unwrap()
            })
            .collect();
        let inputs: Vec<Input<'_>> = records
            .iter()
            .map(|r| Input {
                payload: Some(r),
                source: SourcePosition {
                    partition: 0,
                    offset: 0,
                },
            })
            .collect();
        for (out, r) in transform_batch(&model, &inputs, 1 << 20).iter().zip(&rows) {
            let Outcome::Scored(json) = out else {
                panic!("{name}: refused {out:?}")
            };
            let got: Value = serde_json::from_slice(json).unwrap();
            if let Some(want) = r["prediction"].as_f64() {
                let v = got["prediction"].as_f64().unwrap();
                assert!((v - want).abs() <= TOLERANCE, "{name}: {v} vs {want}");
            } else {
                assert_eq!(got["label"], r["label"], "{name}");
                for (class, want) in model
                    .meta
                    .classes
                    .iter()
                    .zip(r["probabilities"].as_array().unwrap())
                {
                    let p = got["probabilities"][class].as_f64().unwrap();
                    assert!((p - want.as_f64().unwrap()).abs() <= TOLERANCE, "{name}");
                }
            }
        }
    }
}

/// Each format has a large ensemble among the fixtures: ≥ 300 trees, depth ≥ 8.
#[test]
fn each_format_has_a_large_ensemble() {
    use streamscore::model::ensemble::{Node, Tree};
    fn depth(tree: &Tree) -> usize {
        let mut max = 0;
        let mut stack = vec![(tree.root as usize, 0)];
        while let Some((i, d)) = stack.pop() {
            max = max.max(d);
            if let Node::Split { yes, no, .. } = &tree.nodes[i] {
                stack.push((*yes as usize, d + 1));
                stack.push((*no as usize, d + 1));
            }
        }
        max
    }
    for file in ["xgb_large.json", "lgb_large.txt", "onnx_large.onnx"] {
        let model = LoadedModel::load(&fixtures_dir().join(file)).unwrap();
        let Model::Ensemble(e) = &model.model else {
            panic!("{file}")
        };
        let deepest = e.trees.iter().map(depth).max().unwrap_or(0);
        assert!(
            e.n_trees() >= 300 && deepest >= 8,
            "{file}: {} trees, depth {deepest}",
            e.n_trees()
        );
    }
}
