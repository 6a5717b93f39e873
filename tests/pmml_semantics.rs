//! PMML semantics the exporters' fixtures do not reach, each checked against what the PMML
//! 4.4 specification (and JPMML-Evaluator) says the result is.

use serde_json::{json, Value};
use streamscore::model::pmml::PmmlModel;

const HEAD: &str = r#"<PMML xmlns="http://www.dmg.org/PMML-4_3" version="4.3"><DataDictionary><DataField name="x" optype="continuous" dataType="double"/><DataField name="c" optype="categorical" dataType="string"><Value value="a"/><Value value="b"/><Value value="c"/></DataField><DataField name="y" optype="continuous" dataType="double"/><DataField name="k" optype="categorical" dataType="string"><Value value="no"/><Value value="yes"/></DataField></DataDictionary>"#;

fn regression_tree(attrs: &str, nodes: &str, schema: &str) -> PmmlModel {
    let text = format!(
        r#"{HEAD}<TreeModel functionName="regression" {attrs}><MiningSchema><MiningField name="y" usageType="target"/><MiningField name="x"/><MiningField name="c" {schema}/></MiningSchema>{nodes}</TreeModel></PMML>"#
    );
    PmmlModel::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn predict(model: &PmmlModel, args: Value) -> Value {
    match model.evaluate(args.as_object().unwrap()) {
        Ok(r) => r[model.target_name()].clone(),
        Err(e) => json!({ "error": e }),
    }
}

/// Root 0; x < 1 → node 1 (score 1), else node 2 (score 2); node 2 splits on c.
const TREE: &str = r#"<Node id="0" score="0" defaultChild="2"><True/>
  <Node id="1" score="1"><SimplePredicate field="x" operator="lessThan" value="1"/></Node>
  <Node id="2" score="2" defaultChild="21"><SimplePredicate field="x" operator="greaterOrEqual" value="1"/>
    <Node id="21" score="21"><SimpleSetPredicate field="c" booleanOperator="isIn"><Array type="string">a b</Array></SimpleSetPredicate></Node>
    <Node id="22" score="22"><SimpleSetPredicate field="c" booleanOperator="isNotIn"><Array type="string">a b</Array></SimpleSetPredicate></Node>
  </Node>
</Node>"#;

#[test]
fn missing_value_strategies() {
    let row = json!({"x": null, "c": "c"});
    let deep = json!({"x": 5, "c": null});
    let m = regression_tree(r#"missingValueStrategy="defaultChild""#, TREE, "");
    assert_eq!(
        predict(&m, row.clone()),
        json!(22.0),
        "default child 2, then c=c goes to 22"
    );
    assert_eq!(predict(&m, deep.clone()), json!(21.0));
    let m = regression_tree(r#"missingValueStrategy="lastPrediction""#, TREE, "");
    assert_eq!(predict(&m, row.clone()), json!(0.0));
    assert_eq!(predict(&m, deep.clone()), json!(2.0));
    let m = regression_tree(r#"missingValueStrategy="nullPrediction""#, TREE, "");
    assert_eq!(predict(&m, row.clone()), Value::Null);
    // `none`: an unknown predicate is false, and with no child true the node is null...
    let m = regression_tree(r#"missingValueStrategy="none""#, TREE, "");
    assert_eq!(predict(&m, row.clone()), Value::Null);
    // ...or its own score with returnLastPrediction.
    let m = regression_tree(
        r#"missingValueStrategy="none" noTrueChildStrategy="returnLastPrediction""#,
        TREE,
        "",
    );
    assert_eq!(predict(&m, row), json!(0.0));
    assert_eq!(predict(&m, deep), json!(2.0));
    assert_eq!(predict(&m, json!({"x": 0.5, "c": "a"})), json!(1.0));
}

#[test]
fn compound_predicates_in_three_valued_logic() {
    let nodes = |op: &str| {
        format!(
            r#"<Node score="0"><True/><Node score="1"><CompoundPredicate booleanOperator="{op}"><SimplePredicate field="x" operator="greaterThan" value="0"/><SimplePredicate field="c" operator="equal" value="a"/></CompoundPredicate></Node><Node score="2"><True/></Node></Node>"#
        )
    };
    let cases = [
        // (operator, x, c, expected): unknown falls through to the `True` sibling under `none`.
        ("and", json!(1), json!("a"), 1.0),
        ("and", json!(1), json!("b"), 2.0),
        ("and", json!(-1), Value::Null, 2.0),
        ("or", json!(-1), json!("a"), 1.0),
        ("or", Value::Null, json!("a"), 1.0),
        ("or", Value::Null, json!("b"), 2.0),
        ("xor", json!(1), json!("a"), 2.0),
        ("xor", json!(1), json!("b"), 1.0),
        ("xor", Value::Null, json!("b"), 2.0),
        ("surrogate", Value::Null, json!("a"), 1.0),
        ("surrogate", json!(-1), json!("a"), 2.0),
        ("surrogate", Value::Null, Value::Null, 2.0),
    ];
    for (op, x, c, want) in cases {
        let m = regression_tree("", &nodes(op), "");
        assert_eq!(
            predict(&m, json!({"x": x, "c": c})),
            json!(want),
            "{op} {x} {c}"
        );
    }
}

#[test]
fn invalid_values_and_replacements() {
    let nodes = r#"<Node score="0"><True/><Node score="1"><SimplePredicate field="c" operator="equal" value="a"/></Node><Node score="2"><True/></Node></Node>"#;
    let strict = regression_tree("", nodes, "");
    assert!(predict(&strict, json!({"x": 1, "c": "zzz"}))["error"].is_string());
    let lenient = regression_tree(
        "",
        nodes,
        r#"invalidValueTreatment="asMissing" missingValueReplacement="a""#,
    );
    assert_eq!(predict(&lenient, json!({"x": 1, "c": "zzz"})), json!(1.0));
    assert_eq!(predict(&lenient, json!({"x": 1})), json!(1.0));
    let as_is = regression_tree("", nodes, r#"invalidValueTreatment="asIs""#);
    assert_eq!(predict(&as_is, json!({"x": 1, "c": "zzz"})), json!(2.0));
}

fn ensemble(method: &str, function: &str, segments: &[(&str, f64)], extra: &str) -> PmmlModel {
    let target = if function == "classification" {
        "k"
    } else {
        "y"
    };
    let segs: String = segments
        .iter()
        .enumerate()
        .map(|(i, (tree, w))| {
            format!(
                r#"<Segment id="{i}" weight="{w}"><True/><TreeModel functionName="{function}"><MiningSchema><MiningField name="x"/></MiningSchema>{tree}</TreeModel></Segment>"#
            )
        })
        .collect();
    let text = format!(
        r#"{HEAD}<MiningModel functionName="{function}"><MiningSchema><MiningField name="{target}" usageType="target"/><MiningField name="x"/></MiningSchema>{extra}<Segmentation multipleModelMethod="{method}">{segs}</Segmentation></MiningModel></PMML>"#
    );
    PmmlModel::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn leaf(score: &str, yes: f64) -> String {
    format!(
        r#"<Node score="{score}"><True/><ScoreDistribution value="yes" recordCount="{}"/><ScoreDistribution value="no" recordCount="{}"/></Node>"#,
        yes * 10.0,
        (1.0 - yes) * 10.0
    )
}

#[test]
fn votes_and_weighted_aggregations() {
    let trees = [
        (leaf("yes", 0.6), 1.0),
        (leaf("no", 0.2), 3.0),
        (leaf("yes", 0.9), 1.0),
    ];
    let trees: Vec<(&str, f64)> = trees.iter().map(|(t, w)| (t.as_str(), *w)).collect();
    let args = json!({"x": 0});
    let m = ensemble("majorityVote", "classification", &trees, "");
    let r = m.evaluate(args.as_object().unwrap()).unwrap();
    assert_eq!(r["k"], "yes");
    let m = ensemble(
        "weightedMajorityVote",
        "classification",
        &trees,
        r#"<Output><OutputField name="p" feature="probability" value="yes"/></Output>"#,
    );
    let r = m.evaluate(args.as_object().unwrap()).unwrap();
    assert_eq!(r["k"], "no", "weights 1 + 1 for yes, 3 for no");
    assert_eq!(r["p"], json!(2.0 / 5.0));
    let m = ensemble(
        "weightedAverage",
        "classification",
        &trees,
        r#"<Output><OutputField name="p" feature="probability" value="yes"/></Output>"#,
    );
    let r = m.evaluate(args.as_object().unwrap()).unwrap();
    assert_eq!(r["p"], json!((0.6 + 3.0 * 0.2 + 0.9) / 5.0));

    let values = [
        (r#"<Node score="2"><True/></Node>"#, 1.0),
        (r#"<Node score="5"><True/></Node>"#, 4.0),
    ];
    let targets =
        r#"<Targets><Target field="y" rescaleFactor="10" rescaleConstant="1"/></Targets>"#;
    let m = ensemble("weightedAverage", "regression", &values, targets);
    assert_eq!(
        predict(&m, args.clone()),
        json!(((2.0 + 4.0 * 5.0) / 5.0) * 10.0 + 1.0)
    );
    let m = ensemble("sum", "regression", &values, "");
    assert_eq!(predict(&m, args), json!(7.0));
}

fn tree_on_derived(apply: &str) -> Result<PmmlModel, String> {
    let text = format!(
        r#"{HEAD}<TreeModel functionName="regression"><MiningSchema><MiningField name="y" usageType="target"/><MiningField name="x"/></MiningSchema><LocalTransformations><DerivedField name="z" optype="continuous" dataType="double">{apply}</DerivedField></LocalTransformations><Node score="0"><True/><Node score="1"><SimplePredicate field="z" operator="lessThan" value="2"/></Node><Node score="2"><True/></Node></Node></TreeModel></PMML>"#
    );
    PmmlModel::parse(&text).map_err(|e| e.to_string())
}

#[test]
fn a_function_takes_exactly_its_number_of_arguments() {
    let add = tree_on_derived(
        r#"<Apply function="+"><FieldRef field="x"/><Constant dataType="double">1</Constant></Apply>"#,
    )
    .unwrap_or_else(|e| panic!("two arguments to + are its arity: {e}"));
    assert_eq!(predict(&add, json!({"x": 0.5})), json!(1.0), "z = 1.5");
    assert_eq!(predict(&add, json!({"x": 1.5})), json!(2.0), "z = 2.5");
    let one = tree_on_derived(r#"<Apply function="+"><FieldRef field="x"/></Apply>"#);
    assert!(one.is_err_and(|e| e.contains("1 arguments")));
}

#[test]
fn outlier_treatments_other_than_as_is_are_refused() {
    let mining = |attrs: &str| {
        let text = format!(
            r#"{HEAD}<TreeModel functionName="regression"><MiningSchema><MiningField name="y" usageType="target"/><MiningField name="x" {attrs}/></MiningSchema>{TREE}</TreeModel></PMML>"#
        );
        PmmlModel::parse(&text).map_err(|e| e.to_string())
    };
    assert!(mining(r#"outliers="asIs""#).is_ok());
    assert!(mining("").is_ok());
    for treatment in ["asMissingValues", "asExtremeValues"] {
        let refused = mining(&format!(
            r#"outliers="{treatment}" lowValue="0" highValue="3""#
        ));
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("outliers")),
            "{treatment}: {refused:?}"
        );
    }
}
