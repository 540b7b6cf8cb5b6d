//! Serves an axum router over HTTP/1.1 with budgets, for the admin API and the proxy's control
//! API: a header-read timeout (which hyper also runs while a keep-alive connection waits for
//! its next request, so it is the idle timeout too), a cap on open connections, a request body
//! limit, a request head size limit, TCP keep-alive on every accepted socket, and JSON bodies
//! on every error answer (axum's own rejections included).
//!
//! With TLS ([`serve_with`]), each connection's handshake must finish within the header-read
//! timeout (and counts as idle, so it is evicted first at the cap): a client that never
//! completes it cannot hold a slot. The certificate files are checked for changes every
//! [`TLS_RELOAD_EVERY`]; new connections use the new certificate, open ones keep theirs. A
//! client speaking plain HTTP to the TLS port gets a plain-text 400 saying so.
//!
//! At the connection cap the oldest connection with no request in progress (idle, or still
//! sending its head: a slowloris) is closed to make room, as nginx reuses idle keep-alive
//! connections; only when every connection is busy is the new one closed. So idle or slow
//! clients can never lock operators out of the API.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Largest request body (JSON of an admin call or a proxy listener): bigger gets a 413.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head (request line and headers): bigger gets a 431 and the connection closes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request (hyper's default; more gets a 431).
pub const MAX_HEADERS: usize = 100;
/// Open connections finish their request this long after shutdown begins.
const DRAIN: Duration = Duration::from_secs(2);

/// The budgets of one listener.
#[derive(Clone)]
pub struct Limits {
    /// Whole request head within this long, and the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Open connections at most (see the module doc for what happens at the cap).
    pub max_connections: usize,
    /// One path whose POST bodies may be larger than [`MAX_BODY`] (the admin API's restore
    /// chunks); read within the same time budget.
    pub large_body: Option<LargeBody>,
}

/// A path whose POST bodies may be large: only for a request `allowed` says carries the
/// right credentials (checked before a byte of the body is read), and one at a time.
#[derive(Clone)]
pub struct LargeBody {
    pub path: &'static str,
    pub max: usize,
    pub allowed: Arc<dyn Fn(&hyper::HeaderMap) -> bool + Send + Sync>,
    pub one_at_a_time: Arc<tokio::sync::Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
            large_body: None,
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in progress, counting an answer's body until it is sent (a `/v1/watch`
    /// stream is busy for its whole life).
    busy: Arc<AtomicUsize>,
    /// Closes the connection (only when idle).
    evict: CancellationToken,
}

/// The open connections by accept order (the first is the oldest).
type Conns = Arc<Mutex<BTreeMap<u64, Conn>>>;

/// How often the certificate files of a TLS listener are checked for changes.
pub const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` with `limits` until `cancel` fires, then lets open requests
/// finish for a short while.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, cancel: CancellationToken) {
    serve_with(listener, app, limits, None, cancel).await;
}

/// [`serve`], over TLS when `tls` is given (HTTPS only on this listener).
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<crate::tls::Tls>>,
    cancel: CancellationToken,
) {
    let app = app
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors));
    let conns: Conns = Arc::default();
    let tracker = TaskTracker::new();
    let mut next_id = 0u64;
    let mut accept_errors = 0u32;
    let mut reload = tokio::time::interval(TLS_RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = reload.tick(), if tls.is_some() => {
                if let Some(t) = &tls {
                    match t.reload_if_changed() {
                        Ok(true) => tracing::info!("HTTPS certificate reloaded; new connections use it"),
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "HTTPS certificate not reloaded; the previous one stays in use"),
                    }
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => { accept_errors = 0; x }
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: wait a
                    // little instead of spinning; open connections keep being served.
                    accept_errors = accept_errors.saturating_add(1);
                    if accept_errors == 1 {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            }
        };
        if !make_room(&conns, limits.max_connections) {
            tracing::debug!(%peer, "HTTP connection refused: every connection is busy");
            drop(stream);
            continue;
        }
        // A peer that vanished is found even while it waits on a long answer (`/v1/watch`).
        crate::net::keepalive(&stream, crate::net::HTTP_KEEPALIVE_SECS);
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        let conn = Conn {
            busy: Arc::new(AtomicUsize::new(0)),
            evict: CancellationToken::new(),
        };
        let (busy, evict) = (conn.busy.clone(), conn.evict.clone());
        conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, conn);
        let (app, conns, cancel) = (app.clone(), conns.clone(), cancel.clone());
        let limits = limits.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tracker.spawn(async move {
            match acceptor {
                None => serve_connection(stream, app, limits.clone(), busy, evict, cancel).await,
                Some(acceptor) => {
                    let handshake = tls_handshake(stream, acceptor, limits.header_read_timeout);
                    let stream = tokio::select! {
                        s = handshake => s,
                        _ = evict.cancelled() => None,
                        _ = cancel.cancelled() => None,
                    };
                    if let Some(stream) = stream {
                        serve_connection(stream, app, limits, busy, evict, cancel).await;
                    }
                }
            }
            conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN, tracker.wait()).await;
}

/// Below the cap, or made room by evicting the oldest idle connection.
fn make_room(conns: &Conns, max: usize) -> bool {
    let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() < max {
        return true;
    }
    let idle = map
        .iter()
        .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
        .map(|(id, _)| *id);
    match idle {
        Some(id) => {
            if let Some(c) = map.remove(&id) {
                c.evict.cancel();
            }
            true
        }
        None => false,
    }
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Completes the TLS handshake within `deadline`; a client that sends plain HTTP instead is
/// told so in plain text and closed.
async fn tls_handshake(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    deadline: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let work = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if first[0] != TLS_HANDSHAKE {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let msg = "this admin API speaks HTTPS only: use https:// (standin --ca FILE)\n";
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
            let mut stream = stream;
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
            // Lingering close: read (and drop) what the client sent, at most MAX_HEAD +
            // MAX_BODY bytes, until it closes (bounded by the deadline around us); closing
            // with unread data would reset the connection and could lose the answer.
            let mut sink = [0u8; 4096];
            let mut left = MAX_HEAD + MAX_BODY;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            return None;
        }
        match acceptor.accept(stream).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(s) => s,
        Err(_) => {
            tracing::debug!("TLS handshake not finished within the header-read timeout");
            None
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    limits: Limits,
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
    cancel: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let busy = busy.clone();
        let body_timeout = limits.header_read_timeout;
        let large_body = limits.large_body.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = BusyGuard::new(busy.clone());
            let app = app.clone();
            let large_body = large_body.clone();
            async move {
                // The body (at most MAX_BODY) is read whole, within the header-read timeout: a
                // client trickling its body would otherwise hold a busy connection forever.
                let (parts, body) = req.into_parts();
                // A large body only with the credentials, and one at a time: memory is taken
                // for nobody else.
                let mut _large_permit = None;
                let max = match &large_body {
                    Some(l) if parts.method == hyper::Method::POST && parts.uri.path() == l.path => {
                        if !(l.allowed)(&parts.headers) {
                            let msg =
                                "this call needs the API token: Authorization: Bearer <token>".to_string();
                            return Ok(error_response(StatusCode::UNAUTHORIZED, msg, false));
                        }
                        match l.one_at_a_time.clone().try_acquire_owned() {
                            Ok(p) => _large_permit = Some(p),
                            Err(_) => {
                                let msg = "another large request is being read; retry".to_string();
                                return Ok(error_response(StatusCode::SERVICE_UNAVAILABLE, msg, true));
                            }
                        }
                        l.max
                    }
                    _ => MAX_BODY,
                };
                let read =
                    tokio::time::timeout(body_timeout, http_body_util::Limited::new(body, max).collect());
                let body = match read.await {
                    Ok(Ok(b)) => Body::from(b.to_bytes()),
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        let msg = format!("request body larger than {max} bytes");
                        return Ok(error_response(StatusCode::PAYLOAD_TOO_LARGE, msg, false));
                    }
                    Ok(Err(e)) => {
                        let msg = format!("cannot read the request body: {e}");
                        return Ok(error_response(StatusCode::BAD_REQUEST, msg, false));
                    }
                    Err(_) => {
                        let msg = "the request body did not arrive in time".to_string();
                        return Ok(error_response(StatusCode::REQUEST_TIMEOUT, msg, false));
                    }
                };
                let resp = app.oneshot(hyper::Request::from_parts(parts, body)).await;
                // The guard lives as long as the answer's body: a stream stays busy.
                resp.map(|r| {
                    r.map(|b| {
                        Body::new(b.map_frame(move |f| {
                            let _ = &guard;
                            f
                        }))
                    })
                })
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut evictable = true;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = evict.cancelled(), if evictable => {
                // Chosen while idle; a request that began since then is served to its end.
                if busy.load(Ordering::Acquire) == 0 {
                    tracing::debug!("idle HTTP connection closed to make room");
                    return;
                }
                evictable = false;
            }
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN, conn).await;
                return;
            }
        }
    }
}

/// Counts one request in progress until dropped.
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn new(busy: Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(busy)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The JSON body of every error answer: what went wrong and whether repeating the same request
/// later may succeed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub retry: bool,
}

/// An error answer with a JSON body.
pub fn error_response(status: StatusCode, message: String, retry: bool) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: message,
            retry,
        }),
    )
        .into_response()
}

/// The JSON 404 for paths no route serves.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", uri.path()),
        false,
    )
}

/// Largest rejection text kept when an error answer is turned into JSON.
const MAX_ERROR_TEXT: usize = 1024;

/// Turns error answers that are not JSON (axum's rejections of a bad body, a wrong content
/// type, a method not allowed) into `{"error": ..., "retry": ...}`, keeping status and headers.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_ERROR_TEXT).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let retry = status == StatusCode::SERVICE_UNAVAILABLE;
    let json = serde_json::to_vec(&ErrorBody {
        error: message,
        retry,
    })
    .unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1:0 with a few routes; stopped when the token is dropped.
    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio_util::sync::DropGuard) {
        #[derive(serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            n: u32,
        }
        let app = Router::new()
            .route("/ping", get(|| async { "pong" }))
            .route("/json", post(|axum::Json(_b): axum::Json<Body>| async { "ok" }))
            .route(
                "/big",
                post(|b: axum::body::Bytes| async move { b.len().to_string() })
                    .layer(axum::extract::DefaultBodyLimit::max(4 * MAX_BODY)),
            )
            .fallback(not_found);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, cancel.clone()));
        (addr, cancel.drop_guard())
    }

    /// Sends `raw` on a new connection and reads the answer until the server closes.
    async fn exchange(addr: std::net::SocketAddr, raw: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        // A reset after the answer (the server refused a body it did not read) ends it too.
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer within 10 s");
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn json_error(body: &str) -> ErrorBody {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON error ({e}): {body:?}"))
    }

    #[tokio::test]
    async fn every_error_answer_is_json() {
        let (addr, _stop) = start(Limits::default()).await;
        let close = "Connection: close\r\nHost: x\r\n";
        let cases = [
            (format!("GET /nowhere HTTP/1.1\r\n{close}\r\n"), 404),
            (format!("DELETE /ping HTTP/1.1\r\n{close}\r\n"), 405),
            (
                format!("POST /json HTTP/1.1\r\n{close}Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{{bad "),
                400,
            ),
            (
                format!("POST /json HTTP/1.1\r\n{close}Content-Type: text/plain\r\nContent-Length: 7\r\n\r\n{{\"n\":1}}"),
                415,
            ),
            (
                format!("POST /json HTTP/1.1\r\n{close}Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{{\"n\":-1}}"),
                422,
            ),
            (
                format!(
                    "POST /json HTTP/1.1\r\n{close}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                    MAX_BODY + 1,
                    " ".repeat(MAX_BODY + 1)
                ),
                413,
            ),
        ];
        for (raw, want) in cases {
            let (status, body) = exchange(addr, &raw).await;
            assert_eq!(status, want, "{raw:?}: {body}");
            let e = json_error(&body);
            assert!(!e.error.is_empty() && !e.retry, "{raw:?}: {body}");
        }
        let (status, body) = exchange(addr, &format!("GET /ping HTTP/1.1\r\n{close}\r\n")).await;
        assert_eq!((status, body.as_str()), (200, "pong"));
    }

    /// The large-body path takes a large body only from a request with the credentials,
    /// refused before the body is read; other paths keep the small limit.
    #[tokio::test]
    async fn a_large_body_needs_the_credentials_first() {
        let (addr, _stop) = start(Limits {
            large_body: Some(LargeBody {
                path: "/big",
                max: 4 * MAX_BODY,
                allowed: Arc::new(|h: &hyper::HeaderMap| h.contains_key("x-ok")),
                one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
            }),
            ..Limits::default()
        })
        .await;
        let big = |extra: &str| {
            format!(
                "POST /big HTTP/1.1\r\nConnection: close\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                2 * MAX_BODY,
                " ".repeat(2 * MAX_BODY)
            )
        };
        let (status, body) = exchange(addr, &big("")).await;
        assert_eq!(status, 401, "{body}");
        let (status, body) = exchange(addr, &big("x-ok: 1\r\n")).await;
        assert_eq!((status, body), (200, (2 * MAX_BODY).to_string()));
    }

    /// A slowloris client (a request head that never ends) is disconnected after the
    /// header-read timeout.
    #[tokio::test]
    async fn a_partial_request_head_is_cut_off_after_the_header_read_timeout() {
        let (addr, _stop) = start(Limits {
            header_read_timeout: Duration::from_millis(200),
            max_connections: 8,
            large_body: None,
        })
        .await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        // Generous bound only so that a regression fails instead of hanging.
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("the server closed the connection")
            .unwrap_or(0);
        assert!(
            n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    /// A body that trickles in is cut off after the header-read timeout, with a JSON 408.
    #[tokio::test]
    async fn a_slow_request_body_is_cut_off() {
        let (addr, _stop) = start(Limits {
            header_read_timeout: Duration::from_millis(200),
            max_connections: 8,
            large_body: None,
        })
        .await;
        let (status, body) = exchange(
            addr,
            "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{",
        )
        .await;
        assert_eq!(status, 408, "{body}");
        json_error(&body);
    }

    /// More idle connections than the cap do not lock a new client out: the oldest idle one
    /// makes room.
    #[tokio::test]
    async fn idle_connections_beyond_the_cap_do_not_lock_out_a_new_client() {
        let (addr, _stop) = start(Limits {
            header_read_timeout: Duration::from_secs(60),
            max_connections: 16,
            large_body: None,
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let (status, body) =
            exchange(addr, "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "pong"));
        drop(idle);
    }
}
