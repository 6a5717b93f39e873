//! The HTTP side port: health, readiness, metrics, model metadata and hot reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::state::ServiceState;
use crate::model::ModelError;

/// Admin requests are tiny JSON documents; anything larger is refused unread.
const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct HttpState {
    pub state: Arc<ServiceState>,
    /// When set, admin endpoints require `Authorization: Bearer <token>`.
    pub admin_token: Option<Arc<str>>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/model", get(model))
        .route("/model/reload", post(reload))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone())
        .merge(crate::openscoring::router(state))
}

/// How long a client may take to send a request's head. Without it a connection that sent
/// half a request holds a graceful shutdown open for as long as the client likes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for requests in progress before dropping their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` is cancelled, then lets requests in progress finish for at most
/// `SHUTDOWN_GRACE`. (axum's own `serve` sets no header-read timeout and waits for every
/// connection without bound, so the accept loop is hyper's, with the same router.)
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a side-port connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection =
            http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out is its own business.
            let _ = connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("side-port connections still open at shutdown; dropped");
    }
    Ok(())
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(http): State<HttpState>) -> Response {
    let state = &http.state;
    let model = state.store.current();
    let mut body = json!({
        "ready": true,
        "partitions": state.assignment.count(),
        "model_version": model.version,
    });
    match state.ready() {
        Ok(()) => (StatusCode::OK, Json(body)).into_response(),
        Err(reason) => {
            body["ready"] = json!(false);
            body["reason"] = json!(reason);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.state.metrics.render(),
    )
        .into_response()
}

async fn model(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(state.state.store.current().describe())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    /// A file in the model directory to load instead of the configured one.
    path: Option<PathBuf>,
}

async fn reload(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <STREAMSCORE_ADMIN_TOKEN>".into(),
        );
    }
    let request: ReloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad reload request: {e}")),
        }
    };
    let service = Arc::clone(&state.state);
    // Reading and compiling a model is blocking file and CPU work: keep it off the
    // async workers.
    let result = tokio::task::spawn_blocking(move || service.reload(request.path.as_deref())).await;
    match result {
        Ok(Ok(model)) => (
            StatusCode::OK,
            Json(json!({ "reloaded": true, "model": model.describe() })),
        )
            .into_response(),
        Ok(Err(e)) => {
            let status = match e {
                ModelError::OutsideModelDir(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.to_string())
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload task failed: {e}"),
        ),
    }
}

pub(crate) fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.admin_token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()))
}

/// Compares without an early exit, so response timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
    }
}
