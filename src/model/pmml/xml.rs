//! Reading a PMML document safely, and the element helpers the other parts share.
//!
//! A model file can come from an HTTP upload, so the reader trusts nothing: no DTD (and so no
//! entity, internal or external, is ever expanded), a bounded node count, a bounded nesting
//! depth checked before any recursive walk, and one of the PMML namespaces this build knows.
//! Every refusal names the element and its line, so that a user can find it in the file.

use roxmltree::{Document, Node, ParsingOptions};

use crate::model::ModelError;

/// The PMML versions read here, by their namespace.
pub const NAMESPACES: [&str; 3] = [
    "http://www.dmg.org/PMML-4_2",
    "http://www.dmg.org/PMML-4_3",
    "http://www.dmg.org/PMML-4_4",
];

/// Deeper than any exporter nests (a tree of depth d nests about d + 8 elements), and shallow
/// enough that the recursive readers and evaluators, a few hundred bytes a frame, stay far
/// from the bottom of a 2 MiB thread stack.
pub const MAX_DEPTH: usize = 512;

/// A 100-tree forest is a few hundred thousand nodes; this leaves room for much larger ones
/// while bounding the memory a hostile upload can make the parser take.
const MAX_NODES: u32 = 20_000_000;

pub type El<'a, 'i> = Node<'a, 'i>;

/// Parses `text` and checks the envelope: root `PMML` in a known namespace, depth bounded.
pub fn parse(text: &str) -> Result<Document<'_>, ModelError> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options)
        .map_err(|e| ModelError::Invalid(format!("not a well-formed PMML document: {e}")))?;
    let root = doc.root_element();
    let ns = root.tag_name().namespace().unwrap_or("");
    if root.tag_name().name() != "PMML" {
        return Err(err(&root, "the root element must be PMML"));
    }
    if !NAMESPACES.contains(&ns) {
        return Err(err(
            &root,
            &format!("namespace `{ns}` is not one of PMML 4.2, 4.3 or 4.4 ({NAMESPACES:?})"),
        ));
    }
    // Depth of every node, found iteratively: the document order visits a parent before its
    // children, so one pass with a stack of open ancestors measures it without recursion.
    let mut stack: Vec<roxmltree::NodeId> = Vec::new();
    for node in root.descendants().filter(Node::is_element) {
        while let Some(top) = stack.last() {
            if node.ancestors().nth(1).map(|p| p.id()) == Some(*top) {
                break;
            }
            stack.pop();
        }
        stack.push(node.id());
        if stack.len() > MAX_DEPTH {
            return Err(err(
                &node,
                &format!("elements nest more than {MAX_DEPTH} deep"),
            ));
        }
    }
    Ok(doc)
}

/// 1-based line of an element's start tag.
pub fn line(node: &El<'_, '_>) -> u32 {
    node.document().text_pos_at(node.range().start).row
}

/// An error about `node`, naming it and its line.
pub fn err(node: &El<'_, '_>, message: &str) -> ModelError {
    ModelError::Invalid(format!(
        "line {}: <{}>: {message}",
        line(node),
        node.tag_name().name()
    ))
}

/// The element is not part of the subset this build evaluates.
pub fn unsupported(node: &El<'_, '_>) -> ModelError {
    err(
        node,
        "is not supported by streamscore's PMML subset (see README: PMML models)",
    )
}

pub fn name<'a>(node: &El<'a, '_>) -> &'a str {
    node.tag_name().name()
}

/// Child elements, without `Extension`s (vendor data that never changes a score).
pub fn children<'a, 'i>(node: &El<'a, 'i>) -> impl Iterator<Item = El<'a, 'i>> {
    node.children()
        .filter(|c| c.is_element() && c.tag_name().name() != "Extension")
}

pub fn child<'a, 'i>(node: &El<'a, 'i>, tag: &str) -> Option<El<'a, 'i>> {
    children(node).find(|c| name(c) == tag)
}

pub fn attr<'a>(node: &El<'a, '_>, key: &str) -> Option<&'a str> {
    node.attribute(key)
}

pub fn required<'a>(node: &El<'a, '_>, key: &str) -> Result<&'a str, ModelError> {
    node.attribute(key)
        .ok_or_else(|| err(node, &format!("needs the attribute `{key}`")))
}

pub fn number(node: &El<'_, '_>, key: &str) -> Result<Option<f64>, ModelError> {
    match node.attribute(key) {
        None => Ok(None),
        Some(text) => parse_number(text)
            .map(Some)
            .ok_or_else(|| err(node, &format!("`{key}`=\"{text}\" is not a number"))),
    }
}

/// A PMML number: XML Schema's spelling, which includes `INF`, `-INF` and `NaN`.
pub fn parse_number(text: &str) -> Option<f64> {
    match text.trim() {
        "INF" => Some(f64::INFINITY),
        "-INF" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

/// The values of an `Array` element: whitespace-separated, strings optionally in double
/// quotes with `\"` inside.
pub fn array_values(node: &El<'_, '_>) -> Result<Vec<String>, ModelError> {
    let text = node.text().unwrap_or("");
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut value = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(err(node, "a quoted value is not closed")),
                    Some('\\') if chars.peek() == Some(&'"') => {
                        chars.next();
                        value.push('"');
                    }
                    Some('"') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push(value);
    }
    if let Some(n) = number(node, "n")? {
        if n as usize != out.len() {
            return Err(err(
                node,
                &format!("says n={n} but holds {} values", out.len()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(body: &str) -> String {
        format!(r#"<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">{body}</PMML>"#)
    }

    #[test]
    fn refuses_dtds_and_entities() {
        let text = r#"<?xml version="1.0"?><!DOCTYPE PMML [<!ENTITY a "aaaa">]><PMML xmlns="http://www.dmg.org/PMML-4_4">&a;</PMML>"#;
        assert!(parse(text).is_err());
        let text = r#"<!DOCTYPE PMML SYSTEM "file:///etc/passwd"><PMML xmlns="http://www.dmg.org/PMML-4_4"/>"#;
        assert!(parse(text).is_err());
    }

    #[test]
    fn refuses_unknown_namespaces_and_roots() {
        assert!(parse(r#"<PMML xmlns="http://www.dmg.org/PMML-3_2"/>"#).is_err());
        assert!(parse(r#"<PMML/>"#).is_err());
        assert!(parse(r#"<Model xmlns="http://www.dmg.org/PMML-4_4"/>"#).is_err());
        assert!(parse(&doc("")).is_ok());
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        let depth = 200_000;
        let text = doc(&format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth)));
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("nest more than"), "{e}");
    }

    #[test]
    fn reads_arrays() {
        let text = doc(r#"<Array type="string" n="3">a "b c" "d\"e"</Array>"#);
        let d = parse(&text).unwrap();
        let array = d.root_element().first_element_child().unwrap();
        assert_eq!(array_values(&array).unwrap(), ["a", "b c", "d\"e"]);
    }
}
