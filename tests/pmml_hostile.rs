//! PMML documents that must be refused, each with a message that says why (and where), and
//! never a crash: the loader faces uploads from the network.

use streamscore::model::pmml::PmmlModel;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("training/pmml")
        .join(name);
    std::fs::read_to_string(path).expect("fixture")
}

fn refused(text: &str) -> String {
    match PmmlModel::parse(text) {
        Ok(_) => panic!("accepted:\n{}", &text[..text.len().min(400)]),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = r#"<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4"><DataDictionary><DataField name="x" optype="continuous" dataType="double"/><DataField name="y" optype="continuous" dataType="double"/></DataDictionary>"#;

fn tree(body: &str) -> String {
    format!(
        r#"{HEAD}<TreeModel functionName="regression"><MiningSchema><MiningField name="y" usageType="target"/><MiningField name="x"/></MiningSchema>{body}</TreeModel></PMML>"#
    )
}

#[test]
fn a_minimal_document_loads() {
    let ok = tree(
        r#"<Node score="1"><True/><Node score="2"><SimplePredicate field="x" operator="lessThan" value="0"/></Node></Node>"#,
    );
    PmmlModel::parse(&ok)
        .expect("the baseline loads, so the refusals below are about their one change");
}

#[test]
fn malformed_xml() {
    let e = refused(&fixture("sklearn_dt_iris.pmml")[..3000]);
    assert!(e.contains("well-formed"), "{e}");
    let e = refused("this is not xml");
    assert!(e.contains("well-formed"), "{e}");
}

#[test]
fn doctype_and_entities_are_never_expanded() {
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><PMML xmlns="http://www.dmg.org/PMML-4_4">&lol2;</PMML>"#;
    let e = refused(laughs);
    assert!(e.contains("well-formed") || e.contains("DTD"), "{e}");
    let external = r#"<?xml version="1.0"?><!DOCTYPE PMML [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><PMML xmlns="http://www.dmg.org/PMML-4_4"><Header>&xxe;</Header></PMML>"#;
    refused(external);
}

#[test]
fn deep_nesting_is_refused_before_any_recursion() {
    let depth = 300_000;
    let nodes = format!(
        "{}{}",
        r#"<Node score="1"><True/>"#.repeat(depth),
        "</Node>".repeat(depth)
    );
    let e = refused(&tree(&nodes));
    assert!(e.contains("nest more than"), "{e}");
}

#[test]
fn unknown_namespaces() {
    let e = refused(&fixture("sklearn_dt_iris.pmml").replace("PMML-4_4", "PMML-5_0"));
    assert!(e.contains("namespace"), "{e}");
    let e = refused(
        &fixture("sklearn_dt_iris.pmml").replace(r#" xmlns="http://www.dmg.org/PMML-4_4""#, ""),
    );
    assert!(e.contains("namespace"), "{e}");
}

#[test]
fn unsupported_model_kinds_are_named_with_their_line() {
    for kind in [
        "NeuralNetwork",
        "SupportVectorMachineModel",
        "NaiveBayesModel",
        "Scorecard",
    ] {
        let text =
            format!("{HEAD}\n<{kind} functionName=\"regression\"><MiningSchema/></{kind}></PMML>");
        let e = refused(&text);
        assert!(e.contains(&format!("line 2: <{kind}>")), "{e}");
    }
}

#[test]
fn unsupported_constructs_are_named() {
    let e = refused(&tree(
        r#"<Node score="1"><True/><Node score="2"><SimplePredicate field="x" operator="lessThan" value="0"/><Extension/><Partition/></Node></Node>"#,
    ));
    assert!(e.contains("<Partition>"), "{e}");
    let e = refused(&tree(r#"<Node score="1"><True/></Node>"#).replace(
        r#"functionName="regression">"#,
        r#"functionName="regression" missingValueStrategy="weightedConfidence">"#,
    ));
    assert!(e.contains("weightedConfidence"), "{e}");
    let e = refused(&tree(
        r#"<Node score="1"><True/><Node score="2"><SimplePredicate field="x" operator="about" value="0"/></Node></Node>"#,
    ));
    assert!(e.contains("about"), "{e}");
}

#[test]
fn references_to_undefined_fields() {
    let e = refused(&tree(
        r#"<Node score="1"><True/><Node score="2"><SimplePredicate field="z" operator="lessThan" value="0"/></Node></Node>"#,
    ));
    assert!(e.contains("undefined field `z`"), "{e}");
    let e = refused(
        &tree(r#"<Node score="1"><True/></Node>"#)
            .replace(r#"<MiningField name="x"/>"#, r#"<MiningField name="w"/>"#),
    );
    assert!(e.contains("undefined field `w`"), "{e}");
}

#[test]
fn a_failing_model_verification_refuses_the_model() {
    let good = fixture("sklearn_dt_iris.pmml");
    PmmlModel::parse(&good).expect("its own verification rows pass");
    // Swap the first row's expected probabilities: the model disagrees with its file.
    let bad = good.replacen(
        "<data:probability_setosa>1.0</data:probability_setosa>",
        "<data:probability_setosa>0.0</data:probability_setosa>",
        1,
    );
    assert_ne!(good, bad);
    let e = refused(&bad);
    assert!(e.contains("ModelVerification row 1 fails"), "{e}");
}

#[test]
fn bad_numbers_and_categories() {
    let e = refused(&tree(r#"<Node score="abc"><True/></Node>"#));
    assert!(e.contains("not a number"), "{e}");
    let e = refused(&tree(
        r#"<Node score="1"><True/><Node score="2"><SimplePredicate field="x" operator="lessThan" value="zero"/></Node></Node>"#,
    ));
    assert!(e.contains("zero"), "{e}");
}

#[test]
fn nesting_just_within_the_bound_loads_and_scores_without_overflow() {
    // Trees and compound predicates as deep as the depth bound allows, on a test thread's
    // default stack: the recursive readers and evaluators must fit.
    let depth = 500;
    let nodes = format!(
        "{}{}",
        r#"<Node score="1"><SimplePredicate field="x" operator="lessThan" value="5"/>"#
            .repeat(depth),
        "</Node>".repeat(depth)
    )
    .replacen(
        "SimplePredicate field=\"x\" operator=\"lessThan\" value=\"5\"",
        "True",
        1,
    );
    let m = PmmlModel::parse(&tree(&nodes)).expect("500 deep is within the bound");
    let args = serde_json::json!({"x": 1}).as_object().cloned().unwrap();
    assert_eq!(m.evaluate(&args).unwrap()["y"], 1.0);
    let deep_predicate = format!(
        "{}<True/><True/>{}",
        r#"<CompoundPredicate booleanOperator="and"><True/>"#.repeat(depth - 8),
        "</CompoundPredicate>".repeat(depth - 8)
    );
    let nodes = format!(r#"<Node score="1"><True/><Node score="2">{deep_predicate}</Node></Node>"#);
    let m = PmmlModel::parse(&tree(&nodes)).expect("loads");
    assert_eq!(m.evaluate(&args).unwrap()["y"], 2.0);
}

#[test]
fn segments_must_share_their_ensembles_categories() {
    let text = fixture("spark_rf_iris.pmml");
    // Give the first tree a target of its own: the same categories in another order, which
    // would index the ensemble's probabilities wrongly.
    let bad = text.replacen(
        "<TreeModel functionName=\"classification\" missingValueStrategy=\"nullPrediction\">\n                    <MiningSchema>",
        "<TreeModel functionName=\"classification\" missingValueStrategy=\"nullPrediction\">\n                    <MiningSchema><MiningField name=\"k\" usageType=\"target\"/>",
        1,
    ).replacen("<DataDictionary>", "<DataDictionary><DataField name=\"k\" optype=\"categorical\" dataType=\"string\"><Value value=\"setosa\"/><Value value=\"virginica\"/><Value value=\"versicolor\"/></DataField>", 1);
    assert_ne!(text, bad);
    let e = refused(&bad);
    assert!(e.contains("categories must be"), "{e}");
}
