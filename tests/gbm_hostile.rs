//! XGBoost, LightGBM and ONNX files that must be refused with a message that says why, never
//! scored and never a crash or a hang: uploads and reloads come from the network. Through the
//! side port, a refused reload or upload is a 4xx and the running model keeps scoring.

mod common;

use std::time::Duration;

use prost::Message;
use serde_json::Value;
use streamscore::model::ensemble::onnx::proto;
use streamscore::model::{detect_import, import_file, LoadedModel};

use common::{http, repo_path, unique, wait_ready, TestBroker};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("training/gbm/{name}"))).expect("fixture")
}

/// Loads `bytes` as the file `name` would be; the error text when refused.
fn refused(name: &str, bytes: &[u8]) -> String {
    let path = std::path::Path::new(name);
    let format = detect_import(path, bytes).expect("recognised as an import");
    match import_file(bytes, format, Vec::new(), Vec::new()).and_then(LoadedModel::from_file) {
        Ok(_) => panic!("{name}: accepted"),
        Err(e) => e.to_string(),
    }
}

fn loads(name: &str, bytes: &[u8]) {
    let format = detect_import(std::path::Path::new(name), bytes).expect("recognised");
    import_file(bytes, format, Vec::new(), Vec::new())
        .and_then(LoadedModel::from_file)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn xgb_edit(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&fixture(name)).unwrap();
    edit(&mut doc);
    serde_json::to_vec(&doc).unwrap()
}

fn tree0(doc: &mut Value) -> &mut Value {
    &mut doc["learner"]["gradient_booster"]["model"]["trees"][0]
}

#[test]
fn xgboost_refusals() {
    let good = fixture("xgb_binary.json");
    loads("m.json", &good);
    let e = refused("m.json", &good[..good.len() / 2]);
    assert!(
        e.contains("not valid JSON") && e.contains("truncated"),
        "{e}"
    );

    let e = refused(
        "m.json",
        &xgb_edit("xgb_binary.json", |d| {
            tree0(d)["left_children"][0] = 999.into()
        }),
    );
    assert!(e.contains("out of range"), "{e}");
    // Node 1 pointing back at itself: a cycle that never reaches a leaf.
    let e = refused(
        "m.json",
        &xgb_edit("xgb_binary.json", |d| {
            tree0(d)["left_children"][1] = 0.into();
            tree0(d)["right_children"][1] = 1.into();
        }),
    );
    assert!(e.contains("reached twice"), "{e}");
    let e = refused(
        "m.json",
        &xgb_edit("xgb_binary.json", |d| {
            tree0(d)["right_children"][0] = 5.into()
        }),
    );
    assert!(e.contains("left child + 1"), "{e}");
    // XGBoost writes a NaN as a bare `NaN`, which is not JSON.
    let text = String::from_utf8(good.clone()).unwrap();
    let nan = text.replacen("\"split_conditions\":[", "\"split_conditions\":[NaN,", 1);
    let e = refused("m.json", nan.as_bytes());
    assert!(e.contains("not valid JSON"), "{e}");
    // Class counts against the tree layout.
    let e = refused(
        "m.json",
        &xgb_edit("xgb_iris.json", |d| {
            d["learner"]["learner_model_param"]["num_class"] = "2".into();
            d["learner"]["objective"]["softmax_multiclass_param"]["num_class"] = "2".into();
        }),
    );
    assert!(
        e.contains("disagrees with the tree layout") || e.contains("base scores"),
        "{e}"
    );
    let e = refused(
        "m.json",
        &xgb_edit("xgb_iris.json", |d| {
            d["learner"]["learner_model_param"]["num_class"] = "4".into();
            d["learner"]["learner_model_param"]["base_score"] = "[0.5]".into();
        }),
    );
    assert!(e.contains("disagrees with the tree layout"), "{e}");
    let e = refused(
        "m.json",
        &xgb_edit("xgb_binary.json", |d| {
            d["learner"]["gradient_booster"]["name"] = "dart".into()
        }),
    );
    assert!(e.contains("dart"), "{e}");
    let e = refused(
        "m.json",
        &xgb_edit("xgb_binary.json", |d| {
            d["learner"]["objective"]["name"] = "rank:pairwise".into()
        }),
    );
    assert!(e.contains("rank:pairwise"), "{e}");
    // Stated sizes that would be allocated before anything could contradict them.
    let e = refused(
        "m.json",
        &xgb_edit("xgb_logitraw.json", |d| {
            d["learner"]["learner_model_param"]["num_feature"] = "2000000000".into()
        }),
    );
    assert!(e.contains("out of the supported range"), "{e}");
    let e = refused(
        "m.json",
        &xgb_edit("xgb_iris.json", |d| {
            d["learner"]["learner_model_param"]["num_class"] = "2000000000".into()
        }),
    );
    assert!(e.contains("out of the supported range"), "{e}");
    let e = refused(
        "m.json",
        &xgb_edit("xgb_binary.json", |d| tree0(d)["split_type"][0] = 1.into()),
    );
    assert!(e.contains("categorical"), "{e}");
}

fn lgb_edit(from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("lgb_binary.txt")).unwrap();
    assert!(text.contains(from), "{from}");
    text.replacen(from, to, 1).into_bytes()
}

/// The first tree's `key=` line, with its values.
fn lgb_line(key: &str) -> String {
    let text = String::from_utf8(fixture("lgb_binary.txt")).unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .unwrap()
        .to_owned()
}

#[test]
fn lightgbm_refusals() {
    let good = fixture("lgb_binary.txt");
    loads("m.txt", &good);
    let e = refused("m.txt", &good[..good.len() / 2]);
    assert!(e.contains("truncated"), "{e}");

    let left = lgb_line("left_child");
    let mut values: Vec<String> = left["left_child=".len()..]
        .split(' ')
        .map(str::to_owned)
        .collect();
    values[0] = "99".into();
    let e = refused(
        "m.txt",
        &lgb_edit(&left, &format!("left_child={}", values.join(" "))),
    );
    assert!(e.contains("out of range"), "{e}");
    values[0] = "0".into();
    let e = refused(
        "m.txt",
        &lgb_edit(&left, &format!("left_child={}", values.join(" "))),
    );
    assert!(e.contains("reached twice"), "{e}");

    let threshold = lgb_line("threshold");
    let mut t: Vec<&str> = threshold["threshold=".len()..].split(' ').collect();
    t[0] = "nan";
    let e = refused(
        "m.txt",
        &lgb_edit(&threshold, &format!("threshold={}", t.join(" "))),
    );
    assert!(e.contains("NaN"), "{e}");

    let e = refused(
        "m.txt",
        &lgb_edit(
            "num_class=1\nnum_tree_per_iteration=1",
            "num_class=3\nnum_tree_per_iteration=3",
        ),
    );
    assert!(e.contains("disagree"), "{e}");
    let e = refused("m.txt", &lgb_edit("decision_type=2 ", "decision_type=1 "));
    assert!(e.contains("categorical"), "{e}");
    let e = refused("m.txt", &lgb_edit("is_linear=0", "is_linear=1"));
    assert!(e.contains("linear"), "{e}");
    let e = refused(
        "m.txt",
        &lgb_edit("objective=binary", "objective=lambdarank"),
    );
    assert!(e.contains("lambdarank"), "{e}");
}

fn onnx_edit(name: &str, edit: impl FnOnce(&mut proto::NodeProto)) -> Vec<u8> {
    let mut model = proto::ModelProto::decode(fixture(name).as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| {
            n.op_type
                .as_deref()
                .unwrap_or("")
                .starts_with("TreeEnsemble")
        })
        .unwrap();
    edit(node);
    model.encode_to_vec()
}

fn attr<'a>(node: &'a mut proto::NodeProto, name: &str) -> &'a mut proto::AttributeProto {
    node.attribute
        .iter_mut()
        .find(|a| a.name.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn onnx_refusals() {
    let good = fixture("onnx_rf_iris.onnx");
    loads("m.onnx", &good);
    let e = refused("m.onnx", &good[..good.len() / 2]);
    assert!(e.contains("not a valid ONNX protobuf"), "{e}");
    let e = refused("m.onnx", b"\x00\x01garbage");
    assert!(e.contains("ONNX"), "{e}");

    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_rf_iris.onnx", |n| {
            attr(n, "nodes_truenodeids").ints[0] = 100_000
        }),
    );
    assert!(e.contains("does not exist"), "{e}");
    // The root's true branch pointing back at the root: a tree that never reaches a leaf.
    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_rf_iris.onnx", |n| {
            let id = attr(n, "nodes_nodeids").ints[0];
            attr(n, "nodes_truenodeids").ints[0] = id;
        }),
    );
    assert!(e.contains("reached twice"), "{e}");
    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_rf_iris.onnx", |n| {
            attr(n, "nodes_values").floats[0] = f32::NAN
        }),
    );
    assert!(e.contains("NaN"), "{e}");
    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_rf_iris.onnx", |n| {
            attr(n, "classlabels_int64s").ints.truncate(2)
        }),
    );
    assert!(e.contains("class count disagrees"), "{e}");
    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_rf_iris.onnx", |n| {
            attr(n, "nodes_modes").strings[0] = b"BRANCH_EQ".to_vec()
        }),
    );
    assert!(e.contains("BRANCH_EQ"), "{e}");
    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_rf_iris.onnx", |n| {
            attr(n, "nodes_featureids").ints[0] = 7
        }),
    );
    assert!(e.contains("feature 7 out of range"), "{e}");
    let e = refused(
        "m.onnx",
        &onnx_edit("onnx_gb_iris.onnx", |n| {
            attr(n, "post_transform").s = Some(b"PROBIT".to_vec())
        }),
    );
    assert!(e.contains("PROBIT"), "{e}");
}

#[test]
fn random_bytes_never_panic() {
    // A cheap stand-in for the fuzzers (`cargo fuzz run load_import`): flipped bytes of every
    // format either load or are refused, and never crash.
    let mut state = 0x2545f4914f6cdd1du64;
    for name in ["xgb_binary.json", "lgb_binary.txt", "onnx_rf_iris.onnx"] {
        let good = fixture(name);
        for _ in 0..60 {
            let mut bytes = good.clone();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            if let Some(format) = detect_import(std::path::Path::new(name), &bytes) {
                let _ = import_file(&bytes, format, Vec::new(), Vec::new())
                    .and_then(LoadedModel::from_file);
            }
        }
    }
}

const TOKEN: &str = "hostile-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reloads_and_uploads_are_4xx_and_the_model_keeps_scoring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = dir.path().join("model.json");
    std::fs::write(&model_path, fixture("xgb_binary.json")).unwrap();
    let hostile = xgb_edit("xgb_binary.json", |d| {
        tree0(d)["left_children"][0] = 999.into()
    });
    std::fs::write(dir.path().join("hostile.json"), &hostile).unwrap();
    let good = fixture("onnx_rf_binary.onnx");
    std::fs::write(dir.path().join("truncated.onnx"), &good[..good.len() / 3]).unwrap();

    let broker = TestBroker::mock();
    let topics = broker.topics(1).await;
    let config = broker.pipeline_config(&topics, &unique("group"));
    let service = broker
        .start_service_with(config, &model_path, Some(TOKEN))
        .await;
    let addr = service.http_addr;
    wait_ready(addr, Duration::from_secs(30)).await;
    let auth = format!("Bearer {TOKEN}");
    let (status, before) = http(addr, "GET", "/model", &[], "").await;
    assert_eq!(status, 200);
    assert!(before.contains("\"xgboost\""), "{before}");

    for file in ["hostile.json", "truncated.onnx"] {
        let (status, body) = http(
            addr,
            "POST",
            "/model/reload",
            &[("Authorization", auth.as_str())],
            &format!("{{\"path\": \"{file}\"}}"),
        )
        .await;
        assert_eq!(status, 422, "{file}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    let upload = String::from_utf8(hostile).unwrap();
    let (status, body) = http(
        addr,
        "PUT",
        "/openscoring/model/model",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        &upload,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("out of range"), "{body}");
    let (_, after) = http(addr, "GET", "/model", &[], "").await;
    assert_eq!(before, after, "the running model is kept");

    // and it still scores, through Openscoring's evaluate
    let (status, body) = http(
        addr,
        "POST",
        "/openscoring/model/model",
        &[("Content-Type", "application/json")],
        r#"{"id": "r1", "arguments": {"f0": 0.5, "f1": -1.0, "f2": null}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("probabilities") || body.contains("label"),
        "{body}"
    );
    service.stop().await.expect("clean shutdown");
}
