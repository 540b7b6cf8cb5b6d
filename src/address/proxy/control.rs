//! The proxy's control API (axum on `[proxy] admin`):
//! - `GET /v1/proxy`: the cluster view in force, listeners, backends, counters;
//! - `PUT /v1/proxy/listeners/{name}` (JSON body: the listener's settings, as in TOML): add
//!   a listener or change one without dropping established connections;
//! - `DELETE /v1/proxy/listeners/{name}`: stop accepting; open connections run to their end.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::ListenerConfig;
use super::status::listener_status;
use super::{Proxy, ProxyError};

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = match &self {
            ProxyError::Config(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Bind { .. } | ProxyError::Conflict(_) => StatusCode::CONFLICT,
        };
        error(status, self.to_string())
    }
}

pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/v1/proxy", get(status))
        .route(
            "/v1/proxy/listeners/:name",
            get(get_listener).put(put_listener).delete(delete_listener),
        )
        .with_state(proxy);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "proxy control API stopped");
    }
}

async fn status(State(p): State<Arc<Proxy>>) -> Response {
    Json(p.status()).into_response()
}

async fn get_listener(State(p): State<Arc<Proxy>>, Path(name): Path<String>) -> Response {
    match p.listener(&name) {
        Some(l) => Json(listener_status(&l)).into_response(),
        None => ProxyError::NotFound(name).into_response(),
    }
}

async fn put_listener(State(p): State<Arc<Proxy>>, Path(name): Path<String>, body: Bytes) -> Response {
    let mut cfg: ListenerConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid listener settings: {e}")),
    };
    if !cfg.name.is_empty() && cfg.name != name {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the body names listener {:?} but the path {name:?}", cfg.name),
        );
    }
    cfg.name = name;
    match p.upsert(cfg).await {
        Ok(l) => Json(listener_status(&l)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete_listener(State(p): State<Arc<Proxy>>, Path(name): Path<String>) -> Response {
    match p.remove(&name) {
        Ok(()) => Json(serde_json::json!({"ok": true, "message": format!("listener {name} removed; open connections continue")}))
            .into_response(),
        Err(e) => e.into_response(),
    }
}
