//! HTTP/1.1 forwarding: a hyper server towards clients and a pooled hyper-util client towards
//! the backends, keep-alive on both sides. The backend is chosen per request, so a client's
//! keep-alive connection follows a failover or switchover without reconnecting. Every request
//! gets `X-Standin-Epoch` (so a backend can refuse a stale primary) and `X-Forwarded-For`.
//!
//! A request that failed to connect is retried (on another node in balance mode; on the new
//! active node in failover mode) if it has no body; requests with a body are not replayed.
//! Upgrades (WebSocket) are not forwarded: use a TCP listener for those.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::{Either, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONNECTION};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::Mode;
use super::listener::{ListenerRt, Picked};

pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_STANDIN_EPOCH: HeaderName = HeaderName::from_static("x-standin-epoch");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one client connection.
pub async fn serve(l: Arc<ListenerRt>, stream: TcpStream, peer: SocketAddr) {
    let xff = HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
    l.counters.open.fetch_add(1, Ordering::Relaxed);
    let shutdown = l.shutdown.clone();
    let svc = {
        let l = l.clone();
        hyper::service::service_fn(move |req| {
            let l = l.clone();
            let xff = xff.clone();
            async move { Ok::<_, Infallible>(forward(&l, req, xff).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(listener = %l.name, error = %e, "client connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
        }
    }
    l.counters.open.fetch_sub(1, Ordering::Relaxed);
}

fn error(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(msg.as_bytes()))));
    *r.status_mut() = status;
    r
}

fn strip_hop_headers(h: &mut hyper::HeaderMap) {
    h.remove(CONNECTION);
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
}

async fn forward(l: &ListenerRt, req: Request<Incoming>, xff: HeaderValue) -> Response<ProxyBody> {
    l.counters.requests.fetch_add(1, Ordering::Relaxed);
    let settings = l.settings();
    let cfg = &settings.cfg;
    let (mut parts, body) = req.into_parts();
    strip_hop_headers(&mut parts.headers);
    match parts.headers.get_mut(&X_FORWARDED_FOR) {
        None => {
            parts.headers.insert(X_FORWARDED_FOR.clone(), xff);
        }
        Some(v) => {
            let mut joined = v.as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(xff.as_bytes());
            if let Ok(j) = HeaderValue::from_bytes(&joined) {
                *v = j;
            }
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Only a request without a body can be sent again after a failed connect.
    let bodiless = hyper::body::Body::is_end_stream(&body);
    let may_retry = bodiless && (cfg.mode == Mode::Failover || cfg.retries > 0);
    let mut body = Some(body);
    let deadline = Instant::now() + cfg.queue_timeout;
    let mut tried = Vec::new();
    let mut attempts = 0u32;
    loop {
        let Picked::Backend(up, kill, targets) = l.wait_pick(cfg, &mut tried, deadline).await else {
            l.counters.errors.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::SERVICE_UNAVAILABLE, "no backend available\n");
        };
        let mut uri = hyper::http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(up.authority.clone());
        uri.path_and_query = Some(path.clone());
        let Ok(uri) = Uri::from_parts(uri) else {
            return error(StatusCode::BAD_REQUEST, "bad request target\n");
        };
        let mut headers = if may_retry {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        headers.insert(X_STANDIN_EPOCH.clone(), targets.epoch_header.clone());
        drop(targets);
        let mut req = Request::new(match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Empty::new()),
        });
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = parts.version;
        *req.headers_mut() = headers;
        let open = up.enter();
        let result = tokio::select! {
            r = settings.http.request(req) => r,
            _ = kill.cancelled() => {
                l.counters.errors.fetch_add(1, Ordering::Relaxed);
                return error(StatusCode::BAD_GATEWAY, "backend replaced\n");
            }
        };
        drop(open);
        match result {
            Ok(mut resp) => {
                if resp.status().is_server_error() {
                    up.record_failure(&cfg.outlier);
                } else {
                    up.record_success();
                }
                strip_hop_headers(resp.headers_mut());
                return resp.map(Either::Left);
            }
            Err(e) => {
                up.record_failure(&cfg.outlier);
                let connect = e.is_connect();
                tracing::debug!(listener = %l.name, backend = %up.node, error = %e, connect, "request failed");
                attempts += 1;
                let again = connect && may_retry && (cfg.mode == Mode::Failover || attempts <= cfg.retries);
                if !again {
                    l.counters.errors.fetch_add(1, Ordering::Relaxed);
                    return error(StatusCode::BAD_GATEWAY, "backend failed\n");
                }
                l.counters.retries.fetch_add(1, Ordering::Relaxed);
                tried.push(up);
            }
        }
    }
}
