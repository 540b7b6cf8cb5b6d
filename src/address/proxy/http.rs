//! HTTP/1.1 forwarding: a hyper server towards clients, keep-alive on both sides. The backend
//! is chosen per request, so a client's keep-alive connection follows a failover or switchover
//! without reconnecting. Every request gets `X-Standin-Epoch` (so a backend can refuse a stale
//! primary) and `X-Forwarded-For`.
//!
//! Each client connection keeps its own keep-alive connection to each backend it used (as
//! HAProxy does by default): no pool shared between cores, no lock per request. A backend
//! connection watches its backend's kill token, so retiring a backend ends its requests
//! (failure) or lets them finish until the drain timeout (planned), like TCP connections.
//!
//! The connect happens before the request is handed over, so a failed connect is retried (on
//! another node in balance mode; on the new active node in failover mode) with the request
//! intact, body included. A request that reached a backend is never replayed.
//! Upgrades (WebSocket) are not forwarded: use a TCP listener for those.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONNECTION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{ListenerConfig, Mode};
use super::listener::{ListenerRt, Picked};
use super::upstream::Upstream;

pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_STANDIN_EPOCH: HeaderName = HeaderName::from_static("x-standin-epoch");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// One client connection's idle backend connections, by backend.
type Idle = Mutex<Vec<(Arc<Upstream>, SendRequest<Incoming>)>>;

/// Serves one client connection.
pub async fn serve(l: Arc<ListenerRt>, stream: TcpStream, peer: SocketAddr) {
    let xff = HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
    l.counters.open.fetch_add(1, Ordering::Relaxed);
    let shutdown = l.shutdown.clone();
    let idle: Arc<Idle> = Arc::new(Mutex::new(Vec::new()));
    let idle_back = idle.clone();
    let svc = {
        let l = l.clone();
        hyper::service::service_fn(move |req| {
            let l = l.clone();
            let xff = xff.clone();
            let idle = idle.clone();
            async move { Ok::<_, Infallible>(forward(&l, &idle, req, xff).await) }
        })
    };
    let header_read_timeout = l.settings().cfg.header_read_timeout;
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Small requests and answers: one flat buffer and one write() beats writev().
        .writev(false)
        // A client must send a whole request head within this long, also while a keep-alive
        // connection waits for its next request (hyper runs the same timer): slow or idle
        // clients cannot hold connections forever.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(MAX_HEAD)
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
    // Hand this client's idle backend connections to the next client connection.
    let mine = std::mem::take(&mut *idle_back.lock().unwrap_or_else(|p| p.into_inner()));
    let mut pool = l.backend_pool.lock().unwrap_or_else(|p| p.into_inner());
    pool.retain(|(_, s)| !s.is_closed());
    for (up, s) in mine {
        if pool.len() >= BACKEND_POOL_MAX {
            break;
        }
        if !s.is_closed() && !up.kill_token().is_cancelled() {
            pool.push((up, s));
        }
    }
}

/// Largest request head from a client (request line and headers): bigger gets a 431 and the
/// connection closes.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most idle backend connections a listener keeps for later client connections.
const BACKEND_POOL_MAX: usize = 256;

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

/// Why no backend connection could be had.
enum ConnectError {
    Failed,
}

/// A new keep-alive connection to `up`, ended when `up` is retired or the proxy stops.
async fn connect(
    l: &ListenerRt,
    up: &Upstream,
    cfg: &ListenerConfig,
) -> Result<SendRequest<Incoming>, ConnectError> {
    let kill = up.kill_token();
    let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(up.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(listener = %l.name, backend = %up.node, error = %e, "connect failed");
            return Err(ConnectError::Failed);
        }
        Err(_) => {
            tracing::debug!(listener = %l.name, backend = %up.node, "connect timed out");
            return Err(ConnectError::Failed);
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ConnectError::Failed)?;
    let shutdown = l.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = conn => {}
            _ = kill.cancelled() => {}
            _ = shutdown.cancelled() => {}
        }
    });
    Ok(sender)
}

fn take_idle(idle: &Idle, up: &Arc<Upstream>) -> Option<SendRequest<Incoming>> {
    let mut list = idle.lock().unwrap_or_else(|p| p.into_inner());
    // Closed connections (backend gone, or retired) are dropped on the way.
    list.retain(|(_, s)| !s.is_closed());
    let i = list.iter().position(|(u, _)| Arc::ptr_eq(u, up))?;
    Some(list.swap_remove(i).1)
}

async fn forward(
    l: &ListenerRt,
    idle: &Idle,
    req: Request<Incoming>,
    xff: HeaderValue,
) -> Response<ProxyBody> {
    l.counters.requests.fetch_add(1, Ordering::Relaxed);
    let settings = l.settings();
    let cfg = &settings.cfg;
    let mut req = req;
    let headers = req.headers_mut();
    strip_hop_headers(headers);
    match headers.get_mut(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), xff);
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
    let mut deadline: Option<Instant> = None;
    let mut tried = Vec::new();
    let mut attempts = 0u32;
    loop {
        let picked = match l.pick_now(cfg, &tried) {
            Some(p) => p,
            None => {
                let d = *deadline
                    .get_or_insert_with(|| crate::config::later_tokio(Instant::now(), cfg.queue_timeout));
                match l.wait_pick(cfg, &mut tried, d).await {
                    Picked::Backend(u, _, t) => (u, t),
                    Picked::Nothing => {
                        l.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return error(StatusCode::SERVICE_UNAVAILABLE, "no backend available\n");
                    }
                }
            }
        };
        let (up, targets) = picked;
        let mut sender = match take_idle(idle, &up).or_else(|| take_idle(&l.backend_pool, &up)) {
            Some(s) => s,
            None => match connect(l, &up, cfg).await {
                Ok(s) => s,
                Err(ConnectError::Failed) => {
                    up.record_failure(&cfg.outlier);
                    attempts += 1;
                    if cfg.mode == Mode::Balance && attempts > cfg.retries {
                        l.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return error(StatusCode::BAD_GATEWAY, "backend unreachable\n");
                    }
                    l.counters.retries.fetch_add(1, Ordering::Relaxed);
                    deadline
                        .get_or_insert_with(|| crate::config::later_tokio(Instant::now(), cfg.queue_timeout));
                    tried.push(up);
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            // Closed while idle: connect again (not a backend failure).
            continue;
        }
        req.headers_mut()
            .insert(X_STANDIN_EPOCH.clone(), targets.epoch_header.clone());
        drop(targets);
        let open = up.enter();
        let result = match tokio::time::timeout(cfg.request_timeout, sender.try_send_request(req)).await {
            Ok(r) => r,
            Err(_) => {
                // The connection still waits for that answer: it is dropped, never reused.
                drop(open);
                up.record_failure(&cfg.outlier);
                l.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %l.name, backend = %up.node, timeout = ?cfg.request_timeout, "request timed out");
                return error(StatusCode::GATEWAY_TIMEOUT, "backend did not answer in time\n");
            }
        };
        drop(open);
        match result {
            Ok(mut resp) => {
                idle.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((up.clone(), sender));
                if resp.status().is_server_error() {
                    up.record_failure(&cfg.outlier);
                } else {
                    up.record_success();
                }
                strip_hop_headers(resp.headers_mut());
                return resp.map(Either::Left);
            }
            Err(mut e) => match e.take_message() {
                // Not sent (the connection closed as we used it): send it on a new one.
                Some(r) => {
                    req = r;
                    attempts += 1;
                    if attempts > 3 + cfg.retries {
                        l.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return error(StatusCode::BAD_GATEWAY, "backend failed\n");
                    }
                }
                None => {
                    up.record_failure(&cfg.outlier);
                    tracing::debug!(listener = %l.name, backend = %up.node, error = %e.error(), "request failed");
                    l.counters.errors.fetch_add(1, Ordering::Relaxed);
                    return error(StatusCode::BAD_GATEWAY, "backend failed\n");
                }
            },
        }
    }
}
