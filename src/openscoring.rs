//! An Openscoring-compatible REST API on the side port, so that clients written for an
//! Openscoring server (the seed design's `curl -X PUT` deploy and its Spark UDF's `POST`)
//! work unchanged against streamscore.
//!
//! One process serves one model, the stream's: `PUT` replaces it (under the reload rules,
//! guarded by the admin token) and names it; `GET` and `POST` answer for that name only, and
//! any other is 404. Evaluation uses the exact PMML evaluator, as Openscoring does, so its
//! results carry the model's own output fields.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::http::HttpState;
use crate::model::{detect_import_bytes, import_file, pmml_file, LoadedModel, Model, ModelError};
use crate::record::{SourcePosition, DEFAULT_MAX_RECORD_BYTES};
use crate::transform::{transform_batch, Input, Outcome};

/// Largest model upload by default: real PMML forests are 0.3–5 MB.
pub const DEFAULT_UPLOAD_LIMIT: usize = 64 << 20;

/// Overrides `DEFAULT_UPLOAD_LIMIT` (bytes).
pub const UPLOAD_LIMIT_ENV: &str = "STREAMSCORE_MODEL_UPLOAD_LIMIT";

/// Largest batch request, in requests.
const MAX_BATCH: usize = 10_000;

/// What Openscoring reports about the deployed model besides its schema.
#[derive(Debug, Clone)]
struct Deployed {
    id: String,
    /// The model version this description is of; a reload from file replaces the model
    /// under the same id, and is noticed by the version changing.
    version: String,
    created: SystemTime,
    accessed: SystemTime,
    size: Option<usize>,
    checksum: Option<String>,
}

#[derive(Clone)]
struct OsState {
    http: HttpState,
    deployed: Arc<Mutex<Deployed>>,
}

/// The Openscoring routes under `/openscoring`, with their own upload limit.
pub fn router(http: HttpState) -> Router {
    let limit = std::env::var(UPLOAD_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_UPLOAD_LIMIT);
    router_with_limit(http, limit)
}

pub fn router_with_limit(http: HttpState, upload_limit: usize) -> Router {
    let model = http.state.store.current();
    let id = http
        .state
        .store
        .configured_path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let now = SystemTime::now();
    let (size, checksum) = file_facts(&model);
    let deployed = Deployed {
        id,
        version: model.version.clone(),
        created: now,
        accessed: now,
        size,
        checksum,
    };
    let state = OsState {
        http,
        deployed: Arc::new(Mutex::new(deployed)),
    };
    Router::new()
        .route(
            "/openscoring/model/{id}",
            put(deploy).get(describe).post(evaluate).delete(undeploy),
        )
        .route("/openscoring/model/{id}/batch", axum::routing::post(batch))
        .route("/openscoring/model", axum::routing::get(list))
        .layer(DefaultBodyLimit::max(upload_limit))
        .with_state(state)
}

fn file_facts(model: &LoadedModel) -> (Option<usize>, Option<String>) {
    let size = model.meta.params.get("file_size").and_then(Value::as_u64);
    let checksum = model
        .meta
        .params
        .get("file_sha256")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (size.map(|s| s as usize), checksum)
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "message": text.into() }))).into_response()
}

/// A refused request, as Openscoring writes one: `{"message": ...}` with its status.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        message(self.0, self.1)
    }
}

fn lock(m: &Mutex<Deployed>) -> std::sync::MutexGuard<'_, Deployed> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The deployed model if `id` names it, refreshing what a reload from file changed.
fn deployed(state: &OsState, id: &str) -> Result<(Arc<LoadedModel>, Deployed), Refusal> {
    let model = state.http.state.store.current();
    let mut d = lock(&state.deployed);
    if d.id != id {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!(
                "Model \"{id}\" not found (this process serves \"{}\")",
                d.id
            ),
        ));
    }
    if d.version != model.version {
        let (size, checksum) = file_facts(&model);
        d.version = model.version.clone();
        d.created = SystemTime::now();
        d.size = size;
        d.checksum = checksum;
    }
    d.accessed = SystemTime::now();
    Ok((model, d.clone()))
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Openscoring's `ModelResponse`.
fn model_response(model: &LoadedModel, d: &Deployed) -> Value {
    let (function, summary, schema) = match &model.model {
        Model::Pmml(p) => (p.mining_function(), p.summary().to_owned(), p.schema()),
        Model::Forest(_) => (
            "classification",
            "Ensemble model".to_owned(),
            native_schema(model),
        ),
        Model::Recommender(_) => ("regression", "Matrix factorization".to_owned(), json!({})),
        Model::Ensemble(e) if e.is_classification() => (
            "classification",
            "Ensemble model".to_owned(),
            native_schema(model),
        ),
        Model::Ensemble(_) => ("regression", "Ensemble model".to_owned(), json!({})),
    };
    let mut properties = json!({
        "created.timestamp": timestamp(d.created),
        "accessed.timestamp": timestamp(d.accessed),
        "model.version": model.version,
    });
    if let Some(size) = d.size {
        properties["file.size"] = json!(size);
    }
    if let Some(checksum) = &d.checksum {
        properties["file.checksum"] = json!(checksum);
    }
    json!({
        "id": d.id,
        "miningFunction": function,
        "summary": summary,
        "properties": properties,
        "schema": schema,
    })
}

/// The schema of a native forest, described as Openscoring would describe its PMML.
fn native_schema(model: &LoadedModel) -> Value {
    let inputs: Vec<Value> = model
        .meta
        .features
        .iter()
        .map(|f| json!({"id": f, "name": f, "dataType": "double", "opType": "continuous"}))
        .collect();
    let mut outputs = vec![
        json!({"id": "label", "name": "label", "dataType": "string", "opType": "categorical"}),
    ];
    outputs.extend(model.meta.classes.iter().map(|c| {
        let name = format!("probability({c})");
        json!({"id": name, "name": name, "dataType": "double", "opType": "continuous"})
    }));
    json!({
        "inputFields": inputs,
        "targetFields": [{"id": "label", "name": "label", "dataType": "string", "opType": "categorical", "values": model.meta.classes}],
        "outputFields": outputs,
    })
}

async fn list(State(state): State<OsState>) -> Json<Value> {
    Json(json!([lock(&state.deployed).id.clone()]))
}

async fn describe(State(state): State<OsState>, Path(id): Path<String>) -> Response {
    match deployed(&state, &id) {
        Ok((model, d)) => Json(model_response(&model, &d)).into_response(),
        Err(r) => r.into_response(),
    }
}

fn authorized(state: &OsState, headers: &HeaderMap) -> Result<(), Refusal> {
    if crate::http::authorized(&state.http, headers) {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <STREAMSCORE_ADMIN_TOKEN>".into(),
        ))
    }
}

async fn deploy(
    State(state): State<OsState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r.into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let pmml = matches!(
        content_type.as_deref(),
        Some("text/xml" | "application/xml")
    );
    // XGBoost JSON, LightGBM text and ONNX protobuf uploads are told apart by content.
    let imported = matches!(
        content_type.as_deref(),
        Some("application/json" | "text/plain" | "application/octet-stream")
    );
    // A body of none of the formats under a non-XML type (a PMML sent as JSON, say) is the
    // wrong media type, as it was before the other formats were accepted.
    if !pmml && (!imported || detect_import_bytes(&body).is_none()) {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a model is deployed as a PMML document (Content-Type text/xml or application/xml), an XGBoost JSON model (application/json), a LightGBM text model (text/plain) or an ONNX model (application/octet-stream)",
        );
    }
    let shared = Arc::clone(&state.http.state);
    let size = body.len();
    let checksum: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Parsing and compiling a forest is CPU work of milliseconds to seconds: keep it off
    // the async workers that serve the pipeline.
    let result = tokio::task::spawn_blocking(move || {
        let file = if pmml {
            pmml_file(&body, Vec::new())?
        } else {
            let format = detect_import_bytes(&body).ok_or_else(|| {
                ModelError::Invalid(
                    "the upload is neither an XGBoost JSON, a LightGBM text nor an ONNX model"
                        .into(),
                )
            })?;
            import_file(&body, format, Vec::new(), Vec::new())?
        };
        let candidate = LoadedModel::from_file(file)?;
        shared.store.replace(candidate)
    })
    .await;
    let model = match result {
        Ok(Ok(model)) => model,
        Ok(Err(e)) => {
            state
                .http
                .state
                .metrics
                .reloads
                .with_label_values(&["failed"])
                .inc();
            warn!(error = %e, "model upload refused; the previous model keeps scoring");
            let status = match e {
                ModelError::KindChanged { .. } | ModelError::FeaturesChanged { .. } => {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::BAD_REQUEST,
            };
            return message(status, e.to_string());
        }
        Err(e) => {
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("upload task failed: {e}"),
            )
        }
    };
    let shared = &state.http.state;
    shared.metrics.reloads.with_label_values(&["ok"]).inc();
    shared
        .metrics
        .set_model(&model.kind().to_string(), &model.version);
    info!(id = %id, version = %model.version, "model deployed through the Openscoring API");
    let now = SystemTime::now();
    let d = {
        let mut d = lock(&state.deployed);
        let created = d.id != id;
        *d = Deployed {
            id,
            version: model.version.clone(),
            created: now,
            accessed: now,
            size: Some(size),
            checksum: Some(checksum),
        };
        (d.clone(), created)
    };
    let status = if d.1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(model_response(&model, &d.0))).into_response()
}

async fn undeploy(
    State(state): State<OsState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = deployed(&state, &id) {
        return r.into_response();
    }
    message(
        StatusCode::CONFLICT,
        "this process scores its stream with this model and cannot run without one; PUT a replacement instead",
    )
}

#[derive(Deserialize)]
struct EvaluationRequest {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Deserialize)]
struct BatchRequest {
    #[serde(default)]
    id: Option<Value>,
    requests: Vec<EvaluationRequest>,
}

/// The served model, if `id` names it, and the request body; what every evaluation needs.
fn deployed_and_parsed<T: serde::de::DeserializeOwned>(
    state: &OsState,
    id: &str,
    body: &[u8],
) -> Result<(Arc<LoadedModel>, T), Refusal> {
    let (model, _) = deployed(state, id)?;
    Ok((model, parse(body)?))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// One request's response: `{"id", "results"}`, or `{"id", "message"}` when it cannot be
/// scored.
fn evaluate_one(model: &LoadedModel, request: &EvaluationRequest) -> Result<Value, Value> {
    let id = request.id.clone().unwrap_or(Value::Null);
    let results = match &model.model {
        Model::Pmml(p) => p.evaluate(&request.arguments),
        _ => evaluate_native(model, &request.arguments),
    };
    match results {
        Ok(results) => Ok(json!({ "id": id, "results": results })),
        Err(m) => Err(json!({ "id": id, "message": m })),
    }
}

/// A native model's answer through the stream's own decode → score → encode.
fn evaluate_native(
    model: &LoadedModel,
    arguments: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let record = serde_json::to_vec(arguments).map_err(|e| e.to_string())?;
    let input = Input {
        payload: Some(&record),
        source: SourcePosition {
            partition: -1,
            offset: -1,
        },
    };
    match transform_batch(model, &[input], DEFAULT_MAX_RECORD_BYTES).pop() {
        Some(Outcome::Scored(json)) => {
            let out: Value = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
            let mut results = Map::new();
            for key in ["label", "prediction"] {
                if let Some(v) = out.get(key) {
                    results.insert(key.into(), v.clone());
                }
            }
            if let Some(Value::Object(probs)) = out.get("probabilities") {
                for (c, p) in probs {
                    results.insert(format!("probability({c})"), p.clone());
                }
            }
            if let Some(items) = out.get("items") {
                results.insert("items".into(), items.clone());
            }
            Ok(results)
        }
        Some(Outcome::Rejected(r)) => Err(r.to_string()),
        None => Err("no outcome".into()),
    }
}

async fn evaluate(
    State(state): State<OsState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (model, request) = match deployed_and_parsed::<EvaluationRequest>(&state, &id, &body) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    match evaluate_one(&model, &request) {
        Ok(v) => Json(v).into_response(),
        Err(v) => (StatusCode::BAD_REQUEST, Json(v)).into_response(),
    }
}

async fn batch(
    State(state): State<OsState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (model, request) = match deployed_and_parsed::<BatchRequest>(&state, &id, &body) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    if request.requests.len() > MAX_BATCH {
        return message(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_BATCH} requests per batch"),
        );
    }
    let responses = tokio::task::spawn_blocking(move || {
        request
            .requests
            .iter()
            .map(|r| evaluate_one(&model, r).unwrap_or_else(|e| e))
            .collect::<Vec<Value>>()
    })
    .await;
    match responses {
        Ok(responses) => Json(json!({ "id": request.id, "responses": responses })).into_response(),
        Err(e) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("batch task failed: {e}"),
        ),
    }
}
