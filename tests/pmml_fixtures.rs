//! Every fixture in `training/pmml/` scores as JPMML-Evaluator did on every reference row:
//! the same label, probabilities and regression values within 1e-9 (relative above 1), and
//! a refusal (no prediction) exactly where JPMML had an error or a missing result. Both the
//! exact evaluator (the Openscoring path) and the batch path the stream uses are checked.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use streamscore::model::pmml::fields::Raw;
use streamscore::model::pmml::{PmmlModel, Prediction};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("training/pmml");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    out.sort();
    assert!(out.len() >= 11, "fixtures missing from {}", dir.display());
    out
}

fn close(a: f64, e: f64) -> bool {
    (a - e).abs() <= 1e-9 * e.abs().max(1.0)
}

fn same(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => close(a.as_f64().unwrap(), e.as_f64().unwrap()),
        (a, e) => a == e,
    }
}

/// Compares one row; returns a description of the first difference.
fn compare(
    results: &Result<Map<String, Value>, String>,
    expected: &Value,
    target: &str,
) -> Option<String> {
    let refused = |r: &Map<String, Value>| r.get(target).is_none_or(Value::is_null);
    match (results, expected.get("results")) {
        (Err(_), None) => None,
        (Ok(r), None) if refused(r) => None,
        (Ok(r), None) => Some(format!(
            "JPMML refused ({}), we answered {r:?}",
            expected["error"]
        )),
        (Err(e), Some(want)) if want[target].is_null() => {
            let _ = e;
            None
        }
        (Err(e), Some(want)) => Some(format!("we refused ({e}), JPMML answered {want}")),
        (Ok(r), Some(want)) => {
            for (k, w) in want.as_object().unwrap() {
                // Non-final outputs JPMML's Python wrapper also returns are not compared.
                let Some(a) = r.get(k) else { continue };
                if !same(a, w) {
                    return Some(format!("`{k}`: ours {a}, JPMML {w}"));
                }
            }
            if r.get(target).is_none() {
                return Some("no target".into());
            }
            None
        }
    }
}

/// The batch path's answer for one row, in the shape `evaluate` gives.
fn batch_answer(model: &PmmlModel, p: &Prediction) -> Option<(Value, Vec<f64>)> {
    let classes = model.classes();
    match p {
        Prediction::Missing => None,
        Prediction::Value(v) => Some((serde_json::json!(v), vec![])),
        Prediction::Class {
            label,
            probabilities,
        } => Some((
            Value::String(classes[*label].clone()),
            probabilities.clone(),
        )),
    }
}

#[test]
fn every_fixture_agrees_with_jpmml_on_every_row() {
    let mut failures = Vec::new();
    for path in fixtures() {
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".expected.json", "");
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let pmml = std::fs::read_to_string(path.with_file_name(format!("{name}.pmml"))).unwrap();
        let model = PmmlModel::parse(&pmml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rows = doc["rows"].as_array().unwrap();
        let expected = doc["expected"].as_array().unwrap();
        let target = model.target_name().to_owned();
        let (mut agree, mut batch_agree) = (0, 0);
        let mut prepared = Vec::new();
        let mut prepared_rows = Vec::new();
        for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
            let results = model.evaluate(row.as_object().unwrap());
            match compare(&results, want, &target) {
                None => agree += 1,
                Some(d) => failures.push(format!("{name} row {i}: {d} (input {row})")),
            }
            let values: Result<Vec<f64>, _> = model
                .features()
                .iter()
                .enumerate()
                .map(|(f, n)| {
                    let raw = match &row[n] {
                        Value::Number(x) => Raw::Number(x.as_f64().unwrap()),
                        Value::String(s) => Raw::Text(s),
                        _ => Raw::Missing,
                    };
                    model.prepare(f, raw)
                })
                .collect();
            if let Ok(v) = values {
                prepared.extend(v);
                prepared_rows.push(i);
            } else if want.get("results").is_some_and(|r| !r[&target].is_null()) {
                failures.push(format!("{name} row {i}: batch path refused the inputs"));
            } else {
                batch_agree += 1;
            }
        }
        let predictions = model.predict_rows(&prepared);
        // The kernel's sums are the exact evaluator's additions in the same order.
        assert_eq!(
            predictions,
            model.predict_rows_exact(&prepared),
            "{name}: kernel and exact path differ"
        );
        for (p, &i) in predictions.iter().zip(&prepared_rows) {
            let want = expected[i].get("results").filter(|r| !r[&target].is_null());
            let ok = match (batch_answer(&model, p), want) {
                (None, None) => true,
                (Some((label, probs)), Some(w)) => {
                    let label_ok = match (&label, &w[&target]) {
                        (Value::String(l), Value::Number(_)) => {
                            model.classes().iter().position(|c| c == l)
                                == model
                                    .classes()
                                    .iter()
                                    .position(|c| w[&target].as_f64() == c.parse::<f64>().ok())
                        }
                        (a, b) => same(a, b),
                    };
                    let probs_ok = model.classes().iter().zip(&probs).all(|(c, p)| {
                        w.get(format!("probability({c})"))
                            .and_then(Value::as_f64)
                            .is_none_or(|e| close(*p, e))
                    });
                    label_ok && probs_ok
                }
                _ => false,
            };
            if ok {
                batch_agree += 1;
            } else {
                failures.push(format!("{name} row {i} (batch): {p:?} vs {want:?}"));
            }
        }
        println!(
            "{name}: {agree}/{} rows agree (exact path), {batch_agree}/{} (batch path{})",
            rows.len(),
            rows.len(),
            if model.has_kernel() { ", kernel" } else { "" }
        );
    }
    let shown: Vec<_> = failures.iter().take(15).collect();
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{shown:#?}",
        failures.len()
    );
}
