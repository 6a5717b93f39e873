//! A native forest written as PMML: what lets the same trees be scored both ways (the
//! benchmark compares the two kernels on them), and a way out to other PMML consumers.

use std::fmt::Write;

use crate::model::forest::{ForestSpec, NodeSpec};

/// The forest as a PMML 4.4 `MiningModel` averaging one `TreeModel` per tree; a split's
/// `x < t` is a `lessThan` predicate, its right branch `True`. Features are doubles, the
/// target `label` a string with `classes` as its values.
pub fn forest_to_pmml(spec: &ForestSpec, features: &[String], classes: &[String]) -> String {
    let mut out = String::new();
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('"', "&quot;")
    };
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    out.push_str("\n<PMML xmlns=\"http://www.dmg.org/PMML-4_4\" version=\"4.4\">\n<Header><Application name=\"streamscore\"/></Header>\n<DataDictionary>");
    for f in features {
        let _ = write!(
            out,
            r#"<DataField name="{}" optype="continuous" dataType="double"/>"#,
            esc(f)
        );
    }
    out.push_str(r#"<DataField name="label" optype="categorical" dataType="string">"#);
    for c in classes {
        let _ = write!(out, r#"<Value value="{}"/>"#, esc(c));
    }
    out.push_str("</DataField></DataDictionary>\n");
    let schema: String = features
        .iter()
        .map(|f| format!(r#"<MiningField name="{}"/>"#, esc(f)))
        .collect();
    let _ = write!(
        out,
        r#"<MiningModel functionName="classification"><MiningSchema><MiningField name="label" usageType="target"/>{schema}</MiningSchema><Segmentation multipleModelMethod="average">"#
    );
    for (t, tree) in spec.trees.iter().enumerate() {
        let _ = write!(
            out,
            "\n<Segment id=\"{}\"><True/><TreeModel functionName=\"classification\"><MiningSchema>{schema}</MiningSchema>",
            t + 1
        );
        // Depth-first without recursion: (node, predicate) pairs, closing tags as markers.
        let mut stack: Vec<Option<(usize, String)>> = vec![Some((0, "<True/>".into()))];
        while let Some(item) = stack.pop() {
            let Some((at, predicate)) = item else {
                out.push_str("</Node>");
                continue;
            };
            match &tree.nodes[at] {
                NodeSpec::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    let _ = write!(out, "<Node>{predicate}");
                    stack.push(None);
                    stack.push(Some((*right, "<True/>".into())));
                    stack.push(Some((
                        *left,
                        format!(
                            r#"<SimplePredicate field="{}" operator="lessThan" value="{threshold:?}"/>"#,
                            esc(&features[*feature])
                        ),
                    )));
                }
                NodeSpec::Leaf { distribution } => {
                    let best = distribution.iter().enumerate().fold(0, |b, (i, p)| {
                        if *p > distribution[b] {
                            i
                        } else {
                            b
                        }
                    });
                    let _ = write!(out, r#"<Node score="{}">{predicate}"#, esc(&classes[best]));
                    for (c, p) in classes.iter().zip(distribution) {
                        let _ = write!(
                            out,
                            r#"<ScoreDistribution value="{}" recordCount="{}" probability="{:?}"/>"#,
                            esc(c),
                            f64::from(*p),
                            f64::from(*p)
                        );
                    }
                    out.push_str("</Node>");
                }
            }
        }
        out.push_str("</TreeModel></Segment>");
    }
    out.push_str("\n</Segmentation></MiningModel>\n</PMML>\n");
    out
}
