//! The proxy's control API (axum on `[proxy] admin`):
//! - `GET /v1/proxy`: the cluster view in force, listeners, backends, counters;
//! - `PUT /v1/proxy/listeners/{name}` (JSON body: the listener's settings, as in TOML): add
//!   a listener or change one without dropping established connections;
//! - `DELETE /v1/proxy/listeners/{name}`: stop accepting; open connections run to their end.
//!
//! Served with the admin API's budgets and JSON errors (`api::serve`), and its access rules
//! (`api::guard`): mutations need `[proxy] token` when one is set (without one the config
//! allows only a loopback address), CORS only for the control API's own origin, 403 for a
//! mutation from any other origin, JSON bodies only. Listeners may be bound only to what
//! `[proxy] allow-bind` allows (403 otherwise).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::ListenerConfig;
use super::status::listener_status;
use super::{Proxy, ProxyError};

/// Errors are `{"error": ..., "retry": false}`, like the admin API's.
fn error(status: StatusCode, message: String) -> Response {
    crate::api::serve::error_response(status, message, false)
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = match &self {
            ProxyError::Config(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Bind { .. } | ProxyError::Conflict(_) => StatusCode::CONFLICT,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        error(status, self.to_string())
    }
}

pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, cancel: CancellationToken) {
    let own = listener.local_addr().ok();
    let guard = Arc::new(crate::api::guard::Guard {
        token: proxy.config.resolved_token.clone(),
        read_open: true,
        open_paths: &[],
        origins: crate::api::guard::Guard::origins_of("http", own),
        scheme: "http",
        // The control API is reached by address; names are refused (DNS rebinding).
        hosts: Vec::new(),
    });
    let app = Router::new()
        .route("/v1/proxy", get(status))
        .route("/metrics", get(metrics))
        .route(
            "/v1/proxy/listeners/:name",
            get(get_listener).put(put_listener).delete(delete_listener),
        )
        .fallback(crate::api::serve::not_found)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::api::guard::guard,
        ))
        .with_state(proxy);
    // The admin API's budgets (header-read and idle timeout, connection cap, body limit).
    crate::api::serve::serve(listener, app, crate::api::serve::Limits::default(), cancel).await;
}

/// `GET /metrics`: the proxy's counters in Prometheus / OpenMetrics text (its own registry,
/// built from the same figures as `GET /v1/proxy`).
async fn metrics(State(p): State<Arc<Proxy>>) -> Response {
    match render_metrics(&p.status()) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn render_metrics(st: &super::status::ProxyStatus) -> Result<String, std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::MetricType;

    #[derive(Debug)]
    struct Snapshot(super::status::ProxyStatus);
    impl prometheus_client::collector::Collector for Snapshot {
        fn encode(
            &self,
            mut enc: prometheus_client::encoding::DescriptorEncoder<'_>,
        ) -> Result<(), std::fmt::Error> {
            let st = &self.0;
            use crate::metrics::l;
            let mut m = enc.encode_descriptor(
                "cluster_connected",
                "1 while a cluster view is being received",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(st.cluster.connected)).encode(m.encode_family(&l(&[]))?)?;
            let mut m = enc.encode_descriptor(
                "cluster_epoch",
                "The epoch of the view in force",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(st.cluster.epoch.unwrap_or(0) as i64).encode(m.encode_family(&l(&[]))?)?;
            type Pick = fn(&super::status::ListenerStatus) -> u64;
            let counters: [(&str, &str, Pick); 4] = [
                ("connections", "Client connections accepted", |x| x.connections),
                ("requests", "HTTP requests forwarded (http listeners)", |x| {
                    x.requests
                }),
                (
                    "errors",
                    "Connections or requests that failed (no backend, backend failed)",
                    |x| x.errors,
                ),
                ("retries", "Connects retried on another node", |x| x.retries),
            ];
            for (name, help, pick) in counters {
                let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                for x in &st.listeners {
                    ConstCounter::new(pick(x)).encode(m.encode_family(&l(&[("listener", &x.name)]))?)?;
                }
            }
            let mut m = enc.encode_descriptor(
                "open_connections",
                "Client connections open now",
                None,
                MetricType::Gauge,
            )?;
            for x in &st.listeners {
                ConstGauge::new(x.open as i64).encode(m.encode_family(&l(&[("listener", &x.name)]))?)?;
            }
            let mut m = enc.encode_descriptor(
                "backend_up",
                "1 if the backend may get new connections (cluster, checks, not ejected)",
                None,
                MetricType::Gauge,
            )?;
            for x in &st.listeners {
                for u in &x.upstreams {
                    let up = u.cluster_ok && u.check_ok && u.ejected_ms.is_none();
                    ConstGauge::new(i64::from(up))
                        .encode(m.encode_family(&l(&[("listener", &x.name), ("node", &u.node)]))?)?;
                }
            }
            let mut m = enc.encode_descriptor(
                "backend_failures",
                "Failed connects or 5xx answers per backend",
                None,
                MetricType::Counter,
            )?;
            for x in &st.listeners {
                for u in &x.upstreams {
                    ConstCounter::new(u.failures)
                        .encode(m.encode_family(&l(&[("listener", &x.name), ("node", &u.node)]))?)?;
                }
            }
            let mut m = enc.encode_descriptor(
                "backend_ejections",
                "Outlier ejections per backend",
                None,
                MetricType::Counter,
            )?;
            for x in &st.listeners {
                for u in &x.upstreams {
                    ConstCounter::new(u64::from(u.ejections))
                        .encode(m.encode_family(&l(&[("listener", &x.name), ("node", &u.node)]))?)?;
                }
            }
            Ok(())
        }
    }
    let mut reg = prometheus_client::registry::Registry::with_prefix("standin_proxy");
    reg.register_collector(Box::new(Snapshot(st.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
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
