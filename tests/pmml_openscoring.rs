//! The seed design's two Openscoring calls replayed against the side port: the `curl -X PUT`
//! of a JPMML-SparkML forest and the Spark UDF's `POST`, then the stream scored by the
//! uploaded model with no restart; and uploads that must be refused with the old model kept.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const TOKEN: &str = "s3cret";
const PARTITIONS: i32 = 2;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_path(&format!("training/pmml/{name}"))).expect("fixture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_put_and_udf_post_work_and_the_stream_follows_the_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = dir.path().join("RandomForestIris.pmml");
    std::fs::write(&model_path, fixture("spark_rf_iris_indexed.pmml")).expect("model written");

    let broker = TestBroker::start();
    let topics = broker.topics(PARTITIONS).await;
    let config = broker.pipeline_config(&topics, &unique("group"));
    let service = broker
        .start_service_with(config, &model_path, Some(TOKEN))
        .await;
    let addr = service.http_addr;
    wait_ready(addr, Duration::from_secs(30)).await;
    let auth = format!("Bearer {TOKEN}");
    let xml = [
        ("Content-Type", "text/xml"),
        ("Authorization", auth.as_str()),
    ];

    // The seed's deploy, byte for byte the same request.
    let spark = fixture("spark_rf_iris_indexed.pmml");
    let (status, body) = http(
        addr,
        "PUT",
        "/openscoring/model/RandomForestIris",
        &xml,
        &spark,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], "RandomForestIris");
    assert_eq!(answer["miningFunction"], "classification");
    assert_eq!(answer["summary"], "Ensemble model");
    let checksum: String = Sha256::digest(spark.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(answer["properties"]["file.size"], spark.len());
    assert_eq!(answer["properties"]["file.checksum"], checksum);
    assert!(answer["properties"]["created.timestamp"].is_string());
    let inputs: Vec<&str> = answer["schema"]["inputFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    );
    assert_eq!(answer["schema"]["inputFields"][0]["dataType"], "double");
    assert_eq!(answer["schema"]["targetFields"][0]["id"], "label");
    assert_eq!(answer["schema"]["targetFields"][0]["dataType"], "double");
    assert_eq!(
        answer["schema"]["targetFields"][0]["values"],
        serde_json::json!(["0.0", "1.0", "2.0"])
    );
    let outputs = answer["schema"]["outputFields"].to_string();
    for field in [
        "prediction",
        "probability(0)",
        "probability(1)",
        "probability(2)",
    ] {
        assert!(outputs.contains(&format!("\"{field}\"")), "{outputs}");
    }

    // The UDF's request, and the answer JPMML-Evaluator gave for the same row.
    let reference: serde_json::Value =
        serde_json::from_str(&fixture("spark_rf_iris_indexed.expected.json")).unwrap();
    let row = &reference["rows"][0];
    let udf =
        serde_json::json!({"id": "record-0f8fad5b-d9cb-469f-a165-70867728950e", "arguments": row})
            .to_string();
    let json = [("Content-Type", "application/json")];
    let (status, body) = http(
        addr,
        "POST",
        "/openscoring/model/RandomForestIris",
        &json,
        &udf,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], "record-0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_eq!(
        answer["results"]["prediction"],
        reference["expected"][0]["results"]["prediction"]
    );
    assert!(answer["results"]["probability(0)"].is_number());

    let batch = serde_json::json!({"id": "b1", "requests": [
        {"id": "ok", "arguments": row},
        {"id": "bad", "arguments": {"sepal_length": "wide"}},
    ]})
    .to_string();
    let (status, body) = http(
        addr,
        "POST",
        "/openscoring/model/RandomForestIris/batch",
        &json,
        &batch,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], "b1");
    assert_eq!(
        answer["responses"][0]["results"]["prediction"],
        reference["expected"][0]["results"]["prediction"]
    );
    assert_eq!(answer["responses"][1]["id"], "bad");
    assert!(answer["responses"][1]["message"]
        .as_str()
        .unwrap()
        .contains("sepal_length"));

    // One process, one model.
    let (status, _) = http(addr, "GET", "/openscoring/model/SomethingElse", &[], "").await;
    assert_eq!(status, 404);
    let (status, _) = http(
        addr,
        "POST",
        "/openscoring/model/SomethingElse",
        &json,
        &udf,
    )
    .await;
    assert_eq!(status, 404);

    // Refusals: no token, wrong type, hostile or unsupported documents. The model stays.
    let (status, _) = http(
        addr,
        "PUT",
        "/openscoring/model/RandomForestIris",
        &[("Content-Type", "text/xml")],
        &spark,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(
        addr,
        "PUT",
        "/openscoring/model/RandomForestIris",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        &spark,
    )
    .await;
    assert_eq!(status, 415);
    let (_, before) = http(addr, "GET", "/model", &[], "").await;
    for hostile in [
        format!("<!DOCTYPE PMML [<!ENTITY x \"y\">]>{spark}"),
        spark.replace("PMML-4_4", "PMML-9_9"),
        spark[..spark.len() / 2].to_owned(),
        spark
            .replacen("<MiningModel", "<NeuralNetwork", 1)
            .replacen("</MiningModel>", "</NeuralNetwork>", 1),
    ] {
        let (status, body) = http(
            addr,
            "PUT",
            "/openscoring/model/RandomForestIris",
            &xml,
            &hostile,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("message"), "{body}");
    }
    let (_, after) = http(addr, "GET", "/model", &[], "").await;
    assert_eq!(before, after, "a refused upload leaves the model in place");
    let (status, _) = http(
        addr,
        "DELETE",
        "/openscoring/model/RandomForestIris",
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 409);

    // A different forest uploaded: the stream scores with it, no restart, nothing lost.
    let sklearn = fixture("sklearn_rf_iris.pmml");
    let (status, body) = http(
        addr,
        "PUT",
        "/openscoring/model/RandomForestIris",
        &xml,
        &sklearn,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let version = answer["properties"]["model.version"]
        .as_str()
        .unwrap()
        .to_owned();
    const N: usize = 200;
    broker.produce(&topics.input, &iris_inputs(0..N)).await;
    let outputs = collect_ids(&broker, &topics, N, Duration::from_secs(30)).await;
    let counts = id_counts(&outputs);
    assert_eq!(counts.len(), N, "every record scored");
    assert!(counts.values().all(|c| *c == 1), "none twice");
    for out in &outputs {
        let json = out.json();
        assert_eq!(json["model_version"], version.as_str());
        assert!(["setosa", "versicolor", "virginica"].contains(&json["label"].as_str().unwrap()));
    }
    service.shutdown.cancel();
}
