//! XGBoost, LightGBM and ONNX files as streamscore model files: detection, wrapping (the
//! library's file kept as the body, its schema as metadata) and compiling on load.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::ensemble::{self, Ensemble, Format};
use super::{ImportedSpec, ModelBody, ModelError, ModelFile, ModelMeta};

/// The library a file comes from, by extension (`.onnx`, `.txt`) or content (an XGBoost
/// JSON's `learner`, LightGBM's `tree` header); `None` for anything else (a streamscore
/// model file, say).
pub fn detect(path: &Path, bytes: &[u8]) -> Option<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() == Some("onnx") {
        return Some(Format::Onnx);
    }
    if ensemble::xgboost::looks_like(bytes) {
        return Some(Format::Xgboost);
    }
    if ext.as_deref() == Some("txt") || ensemble::lightgbm::looks_like(bytes) {
        return Some(Format::Lightgbm);
    }
    None
}

/// Like [`detect`] for bytes with no name (an upload): text formats by content, anything
/// that is not UTF-8 taken for an ONNX protobuf.
pub fn detect_bytes(bytes: &[u8]) -> Option<Format> {
    if ensemble::xgboost::looks_like(bytes) {
        Some(Format::Xgboost)
    } else if ensemble::lightgbm::looks_like(bytes) {
        Some(Format::Lightgbm)
    } else if std::str::from_utf8(bytes).is_err() {
        Some(Format::Onnx)
    } else {
        None
    }
}

/// A model file around a library's model: the file as its body, `feature_names` and
/// `class_names` renaming its inputs and classes (empty keeps the file's).
pub fn file(
    bytes: &[u8],
    format: Format,
    feature_names: Vec<String>,
    class_names: Vec<String>,
) -> Result<ModelFile, ModelError> {
    let document = match format {
        Format::Onnx => base64::engine::general_purpose::STANDARD.encode(bytes),
        _ => std::str::from_utf8(bytes)
            .map_err(|_| {
                ModelError::Invalid(format!("a {} model must be UTF-8 text", format.name()))
            })?
            .to_owned(),
    };
    let spec = ImportedSpec {
        document,
        feature_names,
        class_names,
    };
    let model = compile(&spec, format)?;
    let checksum: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let params = serde_json::json!({
        "source": format.name(),
        "function": if model.is_classification() { "classification" } else { "regression" },
        "trees": model.n_trees(),
        "file_size": bytes.len(),
        "file_sha256": checksum,
    });
    let meta = meta(&model, params)?;
    let body = match format {
        Format::Xgboost => ModelBody::Xgboost(spec),
        Format::Lightgbm => ModelBody::Lightgbm(spec),
        Format::Onnx => ModelBody::Onnx(spec),
    };
    Ok(ModelFile::new(meta, body))
}

pub fn compile(spec: &ImportedSpec, format: Format) -> Result<Ensemble, ModelError> {
    let (features, classes) = (&spec.feature_names, &spec.class_names);
    match format {
        Format::Xgboost => ensemble::xgboost::parse(spec.document.as_bytes(), features, classes),
        Format::Lightgbm => ensemble::lightgbm::parse(spec.document.as_bytes(), features, classes),
        Format::Onnx => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(spec.document.as_bytes())
                .map_err(|e| ModelError::Invalid(format!("the ONNX body is not base64: {e}")))?;
            ensemble::onnx::parse(&bytes, features, classes)
        }
    }
}

/// The model's schema as metadata, with the checks the decoder and encoder rely on.
pub fn meta(model: &Ensemble, params: serde_json::Value) -> Result<ModelMeta, ModelError> {
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = model.features.iter().find(|f| !names.insert(*f)) {
        return Err(ModelError::Invalid(format!(
            "feature `{twice}` is listed twice"
        )));
    }
    if model.features.iter().any(|f| f == "id") {
        return Err(ModelError::Invalid(
            "an input named `id` would collide with the record's id; rename the inputs with --features".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = model.classes.iter().find(|c| !seen.insert(*c)) {
        return Err(ModelError::Invalid(format!(
            "class `{twice}` is listed twice"
        )));
    }
    Ok(ModelMeta {
        features: model.features.clone(),
        classes: model.classes.clone(),
        params,
        metrics: BTreeMap::new(),
    })
}
