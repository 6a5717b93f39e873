//! Models: the file format, its validation, and the scoring forms the pipeline calls.
//!
//! A model file is one JSON document: an envelope (format, version, creation time, metadata)
//! around a body whose `kind` decides how records are decoded and scored. The version is a
//! content hash, re-checked on load, so a truncated or hand-edited file is refused rather
//! than half-trusted.

pub mod ensemble;
pub mod forest;
mod imports;
mod mask;
pub mod pmml;
pub mod recommender;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use forest::{Forest, ForestSpec};
pub use imports::{
    detect as detect_import, detect_bytes as detect_import_bytes, file as import_file,
};
pub use recommender::{Recommender, RecommenderSpec};
pub use store::ModelStore;

/// The model-file layout this build reads and writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // Not `source`: the OS error is already in the message, and a source would print it a
    // second time in every error chain (`error: cannot read ...: No such file: No such file`).
    #[error("cannot read model file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    // No `#[from]` (which makes it the source, said twice in an error chain): see `From`.
    #[error("model file is not valid JSON of the expected shape: {0}")]
    Parse(serde_json::Error),
    #[error("model file format {0} is not supported (this build reads format {FORMAT})")]
    UnsupportedFormat(u32),
    #[error("model file version {stated} does not match its contents (hash {actual}): the file is corrupt or was edited")]
    VersionMismatch { stated: String, actual: String },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("model kind would change from {from} to {to}; allow it explicitly to switch kinds")]
    KindChanged { from: ModelKind, to: ModelKind },
    #[error("model features would change from {from:?} to {to:?}")]
    FeaturesChanged { from: Vec<String>, to: Vec<String> },
    #[error("{0} is not a file in the model directory")]
    OutsideModelDir(PathBuf),
}

impl From<serde_json::Error> for ModelError {
    fn from(error: serde_json::Error) -> Self {
        ModelError::Parse(error)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    RandomForest,
    MatrixFactorization,
    Pmml,
    Xgboost,
    Lightgbm,
    Onnx,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::RandomForest => "random_forest",
            ModelKind::MatrixFactorization => "matrix_factorization",
            ModelKind::Pmml => "pmml",
            ModelKind::Xgboost => "xgboost",
            ModelKind::Lightgbm => "lightgbm",
            ModelKind::Onnx => "onnx",
        })
    }
}

/// What a model says about itself, served by `GET /model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Input fields, in the order the model reads them.
    pub features: Vec<String>,
    /// Output labels of a classifier; empty for a recommender.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Hyperparameters the model was trained with.
    #[serde(default)]
    pub params: serde_json::Value,
    /// Evaluation figures printed at training time.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "model", rename_all = "snake_case")]
pub enum ModelBody {
    RandomForest(ForestSpec),
    MatrixFactorization(RecommenderSpec),
    Pmml(PmmlSpec),
    Xgboost(ImportedSpec),
    Lightgbm(ImportedSpec),
    Onnx(ImportedSpec),
}

/// An XGBoost, LightGBM or ONNX model kept as the library wrote it (text; an ONNX protobuf
/// in base64), compiled again on every load, like a PMML document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedSpec {
    pub document: String,
    /// Names records use for the model's input columns, in order; empty keeps the file's
    /// (XGBoost's `feature_names`, LightGBM's, or `f0, f1, ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_names: Vec<String>,
    /// Names for the classes, in the model's order; empty keeps the file's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

/// A PMML document kept as its text, so that loading compiles it again with whatever this
/// build does best, and the content hash covers exactly what scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PmmlSpec {
    pub document: String,
    /// Names for a classifier's categories, in the model's category order (what the Spark
    /// pipelines' `IndexToString` did for an index-valued target); empty keeps the model's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// Names records use for the model's input fields, in the model's order; empty keeps
    /// the model's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_names: Vec<String>,
}

impl ModelBody {
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelBody::RandomForest(_) => ModelKind::RandomForest,
            ModelBody::MatrixFactorization(_) => ModelKind::MatrixFactorization,
            ModelBody::Pmml(_) => ModelKind::Pmml,
            ModelBody::Xgboost(_) => ModelKind::Xgboost,
            ModelBody::Lightgbm(_) => ModelKind::Lightgbm,
            ModelBody::Onnx(_) => ModelKind::Onnx,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub format: u32,
    pub version: String,
    pub created_at: String,
    pub meta: ModelMeta,
    #[serde(flatten)]
    pub body: ModelBody,
    /// The training data's distribution per input feature, for drift (`stats::drift`).
    /// Absent in files made before it existed; their version hash is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::stats::drift::Reference>,
}

impl ModelFile {
    /// Wraps a freshly trained body, stamping its content hash and creation time.
    ///
    /// `SOURCE_DATE_EPOCH` pins the creation time, so that the same data and seed give a
    /// byte-identical file (the reproducible-builds convention).
    pub fn new(meta: ModelMeta, body: ModelBody) -> Self {
        let version = content_version(&meta, &body, None);
        Self {
            format: FORMAT,
            version,
            created_at: creation_time(),
            meta,
            body,
            reference: None,
        }
    }

    /// The same model with a drift reference, under the version hash that covers it.
    pub fn with_reference(mut self, reference: crate::stats::drift::Reference) -> Self {
        self.version = content_version(&self.meta, &self.body, Some(&reference));
        self.reference = Some(reference);
        self
    }

    pub fn kind(&self) -> ModelKind {
        self.body.kind()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let file: ModelFile = serde_json::from_slice(bytes)?;
        if file.format != FORMAT {
            return Err(ModelError::UnsupportedFormat(file.format));
        }
        let actual = content_version(&file.meta, &file.body, file.reference.as_ref());
        if actual != file.version {
            return Err(ModelError::VersionMismatch {
                stated: file.version,
                actual,
            });
        }
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|error| ModelError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::from_json(&bytes)
    }

    /// Writes through a temporary file and a rename, so a service reloading this path
    /// never reads a half-written model.
    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        let io_err = |error| ModelError::Io {
            path: path.to_owned(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self)?;
        std::fs::write(&tmp, bytes).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)
    }
}

fn content_version(
    meta: &ModelMeta,
    body: &ModelBody,
    reference: Option<&crate::stats::drift::Reference>,
) -> String {
    let prefix = match body.kind() {
        ModelKind::RandomForest => "rf",
        ModelKind::MatrixFactorization => "mf",
        ModelKind::Pmml => "pm",
        ModelKind::Xgboost => "xg",
        ModelKind::Lightgbm => "lg",
        ModelKind::Onnx => "ox",
    };
    let mut hasher = Sha256::new();
    // Serialising plain data to a Vec cannot fail: no maps with non-string keys, no I/O.
    let bytes = match reference {
        None => serde_json::to_vec(&(FORMAT, meta, body)),
        Some(reference) => serde_json::to_vec(&(FORMAT, meta, body, reference)),
    }
    .unwrap_or_default();
    hasher.update(&bytes);
    let digest = hasher.finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn creation_time() -> String {
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap_or_else(SystemTime::now);
    humantime::format_rfc3339_seconds(now).to_string()
}

/// Names the decoder and encoder rely on: a feature must be findable under its own name and
/// its dotted alias without colliding with another (or with `id`, which is the record's),
/// and class names become the keys of the output's probabilities object.
fn validate_names(meta: &ModelMeta) -> Result<(), ModelError> {
    let mut seen = std::collections::HashSet::new();
    for name in &meta.features {
        if name == "id" {
            return Err(ModelError::Invalid(
                "a feature may not be named `id`".into(),
            ));
        }
        let dotted = name.replace('_', ".");
        if !seen.insert(name.clone()) || (dotted != *name && !seen.insert(dotted)) {
            return Err(ModelError::Invalid(format!(
                "feature `{name}` collides with another feature or its dotted alias"
            )));
        }
    }
    let mut classes = std::collections::HashSet::new();
    if let Some(twice) = meta.classes.iter().find(|c| !classes.insert(*c)) {
        return Err(ModelError::Invalid(format!(
            "class `{twice}` is listed twice"
        )));
    }
    Ok(())
}

/// Largest magnitude a recommender parameter may have: far beyond anything SGD produces,
/// and small enough that no dot product of `factors` terms can overflow f32.
const MAX_PARAMETER: f32 = 1e6;

/// Values a structurally valid file can still get wrong: leaf class weights that are not a
/// distribution (the output's probabilities would not sum to 1), and recommender parameters
/// so large that scores overflow to infinity (written as `null`).
fn validate_values(body: &ModelBody) -> Result<(), ModelError> {
    match body {
        ModelBody::RandomForest(spec) => {
            for (t, tree) in spec.trees.iter().enumerate() {
                for (n, node) in tree.nodes.iter().enumerate() {
                    if let forest::NodeSpec::Leaf { distribution } = node {
                        let sum: f32 = distribution.iter().sum();
                        if (sum - 1.0).abs() > 1e-3 {
                            return Err(ModelError::Invalid(format!(
                                "tree {t}, node {n}: class weights sum to {sum}, not 1"
                            )));
                        }
                    }
                }
            }
        }
        ModelBody::Pmml(_)
        | ModelBody::Xgboost(_)
        | ModelBody::Lightgbm(_)
        | ModelBody::Onnx(_) => {}
        ModelBody::MatrixFactorization(spec) => {
            let too_large = spec
                .user_factors
                .iter()
                .chain(&spec.item_factors)
                .chain(&spec.user_bias)
                .chain(&spec.item_bias)
                .chain(std::iter::once(&spec.global_mean))
                .any(|v| v.abs() > MAX_PARAMETER);
            if too_large || spec.factors > 10_000 {
                return Err(ModelError::Invalid(format!(
                    "recommender parameters beyond ±{MAX_PARAMETER:e} (or over 10,000 factors) would overflow scores"
                )));
            }
        }
    }
    Ok(())
}

/// A model ready to score: its file's description plus the compiled scoring form.
#[derive(Debug)]
pub struct LoadedModel {
    pub version: String,
    pub created_at: String,
    pub meta: ModelMeta,
    pub model: Model,
    /// The drift reference of the file, checked against the model's features.
    pub reference: Option<std::sync::Arc<crate::stats::drift::Reference>>,
    /// When this process loaded it (ms since the Unix epoch).
    pub loaded_at_ms: i64,
}

/// The scoring forms, one per kind. The pipeline matches on this once per batch.
#[derive(Debug)]
pub enum Model {
    Forest(Forest),
    Recommender(Recommender),
    Pmml(Box<pmml::PmmlModel>),
    /// An imported XGBoost, LightGBM or ONNX tree ensemble.
    Ensemble(Box<ensemble::Ensemble>),
}

impl LoadedModel {
    pub fn from_file(file: ModelFile) -> Result<Self, ModelError> {
        let reference = match &file.reference {
            None => None,
            Some(r) => {
                r.validate(&file.meta.features)
                    .map_err(ModelError::Invalid)?;
                Some(std::sync::Arc::new(r.clone()))
            }
        };
        let loaded_at_ms = crate::stats::now_ms();
        if let ModelBody::Pmml(spec) = &file.body {
            let model = compile_pmml(spec)?;
            let meta = pmml_meta(&model, spec, file.meta.params.clone())?;
            if meta.features != file.meta.features || meta.classes != file.meta.classes {
                return Err(ModelError::Invalid(
                    "the file's features or classes are not its PMML document's".into(),
                ));
            }
            return Ok(Self {
                version: file.version,
                created_at: file.created_at,
                meta,
                model: Model::Pmml(Box::new(model)),
                reference,
                loaded_at_ms,
            });
        }
        if let Some((spec, format)) = imported(&file.body) {
            let model = imports::compile(spec, format)?;
            let meta = imports::meta(&model, file.meta.params.clone())?;
            if meta.features != file.meta.features || meta.classes != file.meta.classes {
                return Err(ModelError::Invalid(
                    "the file's features or classes are not its imported model's".into(),
                ));
            }
            return Ok(Self {
                version: file.version,
                created_at: file.created_at,
                meta,
                model: Model::Ensemble(Box::new(model)),
                reference,
                loaded_at_ms,
            });
        }
        validate_names(&file.meta)?;
        validate_values(&file.body)?;
        let model = match &file.body {
            ModelBody::RandomForest(spec) => {
                if file.meta.features.is_empty() {
                    return Err(ModelError::Invalid(
                        "a forest needs at least one feature".into(),
                    ));
                }
                Model::Forest(Forest::compile(
                    spec,
                    file.meta.features.len(),
                    file.meta.classes.len(),
                )?)
            }
            ModelBody::MatrixFactorization(spec) => Model::Recommender(Recommender::compile(spec)?),
            ModelBody::Pmml(_)
            | ModelBody::Xgboost(_)
            | ModelBody::Lightgbm(_)
            | ModelBody::Onnx(_) => unreachable!("handled above"),
        };
        Ok(Self {
            version: file.version,
            created_at: file.created_at,
            meta: file.meta,
            model,
            reference,
            loaded_at_ms,
        })
    }

    /// Loads a streamscore model file, or a PMML document (by its `.pmml`/`.xml` extension
    /// or its content) directly.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|error| ModelError::Io {
            path: path.to_owned(),
            error,
        })?;
        let by_extension = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("pmml") || e.eq_ignore_ascii_case("xml"));
        if by_extension || pmml::looks_like_pmml(&bytes) {
            return Self::from_file(pmml_file(&bytes, Vec::new())?);
        }
        if let Some(format) = imports::detect(path, &bytes) {
            return Self::from_file(imports::file(&bytes, format, Vec::new(), Vec::new())?);
        }
        Self::from_file(ModelFile::from_json(&bytes)?)
    }

    pub fn kind(&self) -> ModelKind {
        match &self.model {
            Model::Forest(_) => ModelKind::RandomForest,
            Model::Recommender(_) => ModelKind::MatrixFactorization,
            Model::Pmml(_) => ModelKind::Pmml,
            Model::Ensemble(e) => match e.format {
                ensemble::Format::Xgboost => ModelKind::Xgboost,
                ensemble::Format::Lightgbm => ModelKind::Lightgbm,
                ensemble::Format::Onnx => ModelKind::Onnx,
            },
        }
    }

    /// The metadata document served by `GET /model`.
    pub fn describe(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "kind": self.kind(),
            "version": self.version,
            "created_at": self.created_at,
            "features": self.meta.features,
            "classes": self.meta.classes,
            "params": self.meta.params,
            "metrics": self.meta.metrics,
            "loaded_at": crate::stats::observe::rfc3339_ms(self.loaded_at_ms),
            "drift_reference": self.reference.as_ref().map(|r| {
                r.features.iter().map(|f| f.feature.clone()).collect::<Vec<_>>()
            }),
        });
        let detail = match &self.model {
            Model::Forest(f) => serde_json::json!({ "trees": f.n_trees() }),
            Model::Pmml(m) => serde_json::json!({
                "function": m.mining_function(),
                "target": m.target_name(),
                "summary": m.summary(),
                "fast_kernel_trees": m.n_trees(),
            }),
            Model::Recommender(r) => r.describe(),
            Model::Ensemble(e) => serde_json::json!({
                "function": if e.is_classification() { "classification" } else { "regression" },
                "trees": e.n_trees(),
                "source": e.summary,
            }),
        };
        if let (Some(doc), serde_json::Value::Object(extra)) = (doc.as_object_mut(), detail) {
            doc.extend(extra);
        }
        doc
    }
}

/// A model file around a PMML document: the document as its body, its schema as metadata,
/// `class_names` renaming its categories (empty keeps them).
pub fn pmml_file(bytes: &[u8], class_names: Vec<String>) -> Result<ModelFile, ModelError> {
    pmml_file_renamed(bytes, Vec::new(), class_names)
}

/// `pmml_file` with the input fields renamed too (`feature_names`, empty keeps them).
pub fn pmml_file_renamed(
    bytes: &[u8],
    feature_names: Vec<String>,
    class_names: Vec<String>,
) -> Result<ModelFile, ModelError> {
    let document = std::str::from_utf8(bytes)
        .map_err(|e| ModelError::Invalid(format!("a PMML document must be UTF-8: {e}")))?
        .to_owned();
    let spec = PmmlSpec {
        document,
        class_names,
        feature_names,
    };
    let model = compile_pmml(&spec)?;
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    let checksum: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let params = serde_json::json!({
        "source": "pmml",
        "function": model.mining_function(),
        "target": model.target_name(),
        "file_size": bytes.len(),
        "file_sha256": checksum,
    });
    let meta = pmml_meta(&model, &spec, params)?;
    Ok(ModelFile::new(meta, ModelBody::Pmml(spec)))
}

/// The imported-ensemble body of a file, if it is one, and its library.
fn imported(body: &ModelBody) -> Option<(&ImportedSpec, ensemble::Format)> {
    match body {
        ModelBody::Xgboost(s) => Some((s, ensemble::Format::Xgboost)),
        ModelBody::Lightgbm(s) => Some((s, ensemble::Format::Lightgbm)),
        ModelBody::Onnx(s) => Some((s, ensemble::Format::Onnx)),
        _ => None,
    }
}

fn compile_pmml(spec: &PmmlSpec) -> Result<pmml::PmmlModel, ModelError> {
    pmml::PmmlModel::parse(&spec.document)
}

fn pmml_meta(
    model: &pmml::PmmlModel,
    spec: &PmmlSpec,
    params: serde_json::Value,
) -> Result<ModelMeta, ModelError> {
    let features = if spec.feature_names.is_empty() {
        model.features().to_vec()
    } else if spec.feature_names.len() == model.features().len() {
        spec.feature_names.clone()
    } else {
        return Err(ModelError::Invalid(format!(
            "{} feature names for a model of {} input fields {:?}",
            spec.feature_names.len(),
            model.features().len(),
            model.features()
        )));
    };
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = features.iter().find(|f| !names.insert(*f)) {
        return Err(ModelError::Invalid(format!(
            "feature `{twice}` is listed twice"
        )));
    }
    if features.iter().any(|f| f == "id") {
        return Err(ModelError::Invalid(
            "an input field named `id` would collide with the record's id".into(),
        ));
    }
    let classes = if spec.class_names.is_empty() {
        model.classes()
    } else if spec.class_names.len() == model.classes().len() {
        spec.class_names.clone()
    } else {
        return Err(ModelError::Invalid(format!(
            "{} class names for a model of {} categories {:?}",
            spec.class_names.len(),
            model.classes().len(),
            model.classes()
        )));
    };
    let meta = ModelMeta {
        features,
        classes,
        params,
        metrics: BTreeMap::new(),
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = meta.classes.iter().find(|c| !seen.insert(*c)) {
        return Err(ModelError::Invalid(format!(
            "class `{twice}` is listed twice"
        )));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::forest::{NodeSpec, TreeSpec};
    use super::*;

    fn tiny() -> ModelFile {
        let meta = ModelMeta {
            features: vec!["x".into()],
            classes: vec!["a".into(), "b".into()],
            params: serde_json::json!({}),
            metrics: BTreeMap::new(),
        };
        let body = ModelBody::RandomForest(ForestSpec {
            trees: vec![TreeSpec {
                nodes: vec![NodeSpec::Leaf {
                    distribution: vec![0.5, 0.5],
                }],
            }],
        });
        ModelFile::new(meta, body)
    }

    #[test]
    fn round_trips_and_checks_its_hash() {
        let file = tiny();
        let bytes = serde_json::to_vec(&file).unwrap();
        assert_eq!(ModelFile::from_json(&bytes).unwrap(), file);

        let edited = String::from_utf8(bytes).unwrap().replace("0.5", "0.25");
        assert!(matches!(
            ModelFile::from_json(edited.as_bytes()),
            Err(ModelError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn refuses_recommenders_whose_scores_would_overflow() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/recommender.json");
        let file = ModelFile::read(&path).unwrap();
        assert!(LoadedModel::from_file(file.clone()).is_ok());
        let ModelBody::MatrixFactorization(mut spec) = file.body else {
            panic!("not a recommender")
        };
        spec.item_factors[0] = 3e38;
        let edited = ModelFile::new(file.meta, ModelBody::MatrixFactorization(spec));
        let err = LoadedModel::from_file(edited).unwrap_err();
        assert!(matches!(err, ModelError::Invalid(_)), "{err}");
    }

    #[test]
    fn refuses_truncated_and_foreign_files() {
        let bytes = serde_json::to_vec(&tiny()).unwrap();
        assert!(matches!(
            ModelFile::from_json(&bytes[..bytes.len() / 2]),
            Err(ModelError::Parse(_))
        ));
        assert!(ModelFile::from_json(b"{\"hello\": 1}").is_err());
        let mut future = tiny();
        future.format = 99;
        let bytes = serde_json::to_vec(&future).unwrap();
        assert!(matches!(
            ModelFile::from_json(&bytes),
            Err(ModelError::UnsupportedFormat(99))
        ));
    }
}
