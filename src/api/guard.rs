//! Who may call an HTTP API (the admin API and the proxy's control API): the bearer token,
//! and the browser rules that keep a web page the operator happens to open from acting
//! through the operator's browser.
//!
//! - Mutations (any method but `GET`, `HEAD`, `OPTIONS`) need the token when one is set;
//!   reads too unless `read_open` (never the backup export, `/v1/backup…`: it is the whole
//!   key space; nor the daemon's log lines, `/v1/logs`). Without a token the API is open: the config allows that
//!   only on a loopback address or with an explicit `insecure-open`.
//! - CORS is granted only to the allowed origins (the members' own admin origins), never `*`:
//!   the answer names the caller's origin. A preflight from any other origin gets no
//!   `Access-Control-Allow-*` header, so the browser does not send the request.
//! - A mutation that carries an `Origin` header that is not allowed is refused with 403 before
//!   anything happens (a "simple" cross-origin POST is sent without a preflight).
//! - A mutation with a body needs `Content-Type: application/json` (415 otherwise), which a
//!   page cannot send cross-origin without a preflight; `application/octet-stream` (binary
//!   restore chunks) is not CORS-safelisted either, so it passes too.
//! - The `Host` a request names must be an IP address, `localhost` or one of the configured
//!   host names (421 otherwise): a page whose DNS name an attacker points at this address
//!   ("DNS rebinding") is same-origin to the browser, and would otherwise read everything
//!   the API shows without a token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::serve::error_response;

/// The access rules of one API.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Required by mutations (and reads unless `read_open`).
    pub token: Option<String>,
    pub read_open: bool,
    /// Paths open to everyone, whatever the method (`/v1/lease`, the dashboard page).
    pub open_paths: &'static [&'static str],
    /// Origins (`scheme://host:port`, lower case) granted CORS and allowed to mutate.
    pub origins: Vec<String>,
    /// `http` or `https`: with a token, a page served by this API itself (its origin is this
    /// scheme and the request's `Host`) may call it too, whatever name the browser used.
    pub scheme: &'static str,
    /// DNS names (lower case) requests may name in `Host`, besides IP addresses and
    /// `localhost`.
    pub hosts: Vec<String>,
}

impl Guard {
    /// The origins of a set of API addresses (`host:port`), loopback ones also as
    /// `localhost`.
    pub fn origins_of(scheme: &str, addrs: impl IntoIterator<Item = std::net::SocketAddr>) -> Vec<String> {
        let mut out = Vec::new();
        for a in addrs {
            out.push(format!("{scheme}://{a}"));
            if a.ip().is_loopback() {
                out.push(format!("{scheme}://localhost:{}", a.port()));
            }
        }
        out
    }

    /// Whether `origin` may call this API from a browser.
    fn allows(&self, origin: &str, headers: &HeaderMap) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        // The page came from this very API (same origin), under a name not in the list. Only
        // with a token: then a rebound DNS name gains nothing (the token is not sent by the
        // browser on its own), while without one it would let any site that points its name
        // at this address act.
        self.token.is_some()
            && headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| origin == format!("{}://{}", self.scheme, h.to_ascii_lowercase()))
    }
}

/// Whether `host` (a `Host` header: a name or address, and maybe a port) is an IP address,
/// `localhost`, or one of `names`.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    // `[v6]:port`, `[v6]`, `v4:port`, `name:port`, `name`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host.as_str(), |(n, _)| n)
    };
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || names.iter().any(|n| n == name)
}

/// A media type of `application/json` (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/json") || t.eq_ignore_ascii_case("application/octet-stream")
        })
}

/// The middleware: see the module doc.
pub async fn guard(
    State(g): State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("?").to_string());
    let allowed = origin
        .as_deref()
        .filter(|o| g.allows(o, req.headers()))
        .map(str::to_string);
    // HTTP/1.1 requires `Host`; a client without one is not a browser.
    if let Some(host) = req.headers().get(header::HOST) {
        let host = host.to_str().unwrap_or("?");
        if !host_allowed(host, &g.hosts) {
            tracing::warn!(host = %host, path = %req.uri().path(), "request for an unknown host name refused");
            return error_response(
                StatusCode::MISDIRECTED_REQUEST,
                "this API answers only to IP addresses, localhost and the host names in its config (`hosts`)"
                    .into(),
                false,
            );
        }
    }
    let method = req.method().clone();
    if method == Method::OPTIONS {
        // A preflight (or any OPTIONS): allow headers only for an allowed origin.
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(o) = &allowed {
            cors_headers(resp.headers_mut(), o, true);
        }
        return resp;
    }
    let mutation = !matches!(method, Method::GET | Method::HEAD);
    if mutation {
        if let (Some(o), None) = (&origin, &allowed) {
            tracing::warn!(origin = %o, path = %req.uri().path(), "cross-origin request refused");
            return error_response(
                StatusCode::FORBIDDEN,
                format!(
                    "cross-origin request refused: origin {o:?} is not one of this cluster's admin addresses"
                ),
                false,
            );
        }
        let has_body = axum::body::HttpBody::size_hint(req.body()).lower() > 0;
        if has_body && !is_json(req.headers()) {
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a request body needs `Content-Type: application/json`".into(),
                false,
            );
        }
    }
    let mut resp = match check_token(&g, &req, mutation) {
        Some(refusal) => refusal,
        None => next.run(req).await,
    };
    if let Some(o) = &allowed {
        cors_headers(resp.headers_mut(), o, false);
    }
    resp
}

/// The refusal, if the request needs the token and does not carry it.
fn check_token(g: &Guard, req: &axum::extract::Request, mutation: bool) -> Option<Response> {
    let token = g.token.as_deref()?;
    let open = g.open_paths.contains(&req.uri().path());
    // A backup export is the whole key space, and log lines can name anything the daemon
    // saw: they need the token even where reads are open.
    let path = req.uri().path();
    let secret_read = path.starts_with("/v1/backup") || path == "/v1/logs";
    if open || (!mutation && g.read_open && !secret_read) {
        return None;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| crate::config::rules::secret_eq(g.trim().as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut r = error_response(
        StatusCode::UNAUTHORIZED,
        if given.is_some() {
            "wrong API token".into()
        } else {
            "this call needs the API token: Authorization: Bearer <token> (standin --token / STANDIN_TOKEN)"
                .into()
        },
        false,
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"standin\""),
    );
    Some(r)
}

fn cors_headers(h: &mut HeaderMap, origin: &str, preflight: bool) {
    let Ok(o) = HeaderValue::from_str(origin) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    fn app(token: Option<&str>) -> Router {
        let g = Arc::new(Guard {
            token: token.map(str::to_string),
            read_open: true,
            open_paths: &["/open"],
            origins: Guard::origins_of("http", ["127.0.0.1:7400".parse().expect("addr")]),
            scheme: "http",
            hosts: vec!["node-a".into()],
        });
        Router::new()
            .route("/r", get(|| async { "read" }))
            .route("/m", post(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(g, guard))
    }

    async fn call(app: Router, method: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(if method == "GET" { "/r" } else { "/m" });
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app.oneshot(
            req.body(axum::body::Body::from(body.to_string()))
                .expect("request"),
        )
        .await
        .expect("infallible")
    }

    fn acao(r: &Response) -> Option<&str> {
        r.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn only_member_origins_get_cors_and_may_mutate() {
        let member = ("origin", "http://127.0.0.1:7400");
        let evil = ("origin", "http://evil.example");
        let json = ("content-type", "application/json");
        let pre = call(app(None), "OPTIONS", &[member], "").await;
        assert_eq!(acao(&pre), Some("http://127.0.0.1:7400"));
        assert!(pre.headers().contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
        let local = call(app(None), "OPTIONS", &[("origin", "http://localhost:7400")], "").await;
        assert_eq!(acao(&local), Some("http://localhost:7400"));
        let pre = call(app(None), "OPTIONS", &[evil], "").await;
        assert!(
            !pre.headers()
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{:?}",
            pre.headers()
        );
        // A foreign origin may not act, with or without a JSON body; a member origin may.
        assert_eq!(call(app(None), "POST", &[evil], "").await.status(), 403);
        assert_eq!(call(app(None), "POST", &[evil, json], "{}").await.status(), 403);
        assert_eq!(
            call(app(None), "POST", &[("origin", "null")], "").await.status(),
            403
        );
        let ok = call(app(None), "POST", &[member, json], "{}").await;
        assert_eq!(
            (ok.status(), acao(&ok)),
            (StatusCode::OK, Some("http://127.0.0.1:7400"))
        );
        // A text/plain body (a CORS "simple request") is refused even without an Origin.
        assert_eq!(
            call(app(None), "POST", &[("content-type", "text/plain")], "{}")
                .await
                .status(),
            415
        );
        assert_eq!(call(app(None), "POST", &[], "{}").await.status(), 415);
        assert_eq!(call(app(None), "POST", &[], "").await.status(), 200);
        // Reads from a foreign origin are answered without CORS headers (the browser hides
        // the answer from the page).
        let r = call(app(None), "GET", &[evil], "").await;
        assert_eq!((r.status(), acao(&r)), (StatusCode::OK, None));
    }

    #[tokio::test]
    async fn mutations_need_the_token_and_the_same_host_origin_only_with_one() {
        let t = "0123456789abcdef";
        let bearer = format!("Bearer {t}");
        let auth = ("authorization", bearer.as_str());
        assert_eq!(call(app(Some(t)), "POST", &[], "").await.status(), 401);
        assert_eq!(
            call(
                app(Some(t)),
                "POST",
                &[("authorization", "Bearer 0123456789abcdeX")],
                ""
            )
            .await
            .status(),
            401
        );
        assert_eq!(call(app(Some(t)), "POST", &[auth], "").await.status(), 200);
        assert_eq!(call(app(Some(t)), "GET", &[], "").await.status(), 200);
        // The dashboard opened under a host name: same origin as the Host it asks.
        let named = [("origin", "http://node-a:7400"), ("host", "node-a:7400"), auth];
        assert_eq!(call(app(Some(t)), "POST", &named, "").await.status(), 200);
        assert_eq!(call(app(None), "POST", &named[..2], "").await.status(), 403);
    }

    /// DNS rebinding: a page whose name was pointed at this address is same-origin to the
    /// browser, and could read status, events and metrics without a token. A request must
    /// name an IP address, `localhost` or a configured host name.
    #[tokio::test]
    async fn only_addresses_localhost_and_configured_names_are_served() {
        for host in [
            "127.0.0.1:7400",
            "10.0.0.1",
            "[::1]:7400",
            "localhost:7400",
            "NODE-A:7400",
            "node-a",
        ] {
            let r = call(app(None), "GET", &[("host", host)], "").await;
            assert_eq!(r.status(), 200, "{host}");
        }
        for host in [
            "evil.example:7400",
            "evil.example",
            "node-a.evil.example:7400",
            "[evil]:1",
            "127.0.0.1.nip.io",
        ] {
            let r = call(app(None), "GET", &[("host", host)], "").await;
            assert_eq!(r.status(), 421, "{host}");
        }
        assert!(host_allowed("127.0.0.1", &[]));
        assert!(!host_allowed("localhost.evil", &[]));
    }

    /// The backup export is the whole key space: `read-open` does not open it.
    #[tokio::test]
    async fn the_backup_export_needs_the_token_even_when_reads_are_open() {
        let g = Arc::new(Guard {
            token: Some("t0k3n".into()),
            read_open: true,
            open_paths: &[],
            origins: Vec::new(),
            scheme: "http",
            hosts: Vec::new(),
        });
        let app = Router::new()
            .route("/v1/backup", get(|| async { "everything" }))
            .route("/v1/logs", get(|| async { "lines" }))
            .route("/v1/status", get(|| async { "status" }))
            .layer(axum::middleware::from_fn_with_state(g, guard));
        let get_it = |path: &'static str, token: Option<&'static str>| {
            let app = app.clone();
            async move {
                let mut req = axum::http::Request::builder()
                    .uri(path)
                    .header("host", "127.0.0.1");
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                app.oneshot(req.body(axum::body::Body::empty()).expect("request"))
                    .await
                    .expect("answer")
                    .status()
            }
        };
        assert_eq!(get_it("/v1/status", None).await, StatusCode::OK);
        assert_eq!(get_it("/v1/backup", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(get_it("/v1/logs", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(get_it("/v1/logs", Some("t0k3n")).await, StatusCode::OK);
        assert_eq!(get_it("/v1/backup", Some("t0k3n")).await, StatusCode::OK);
    }
}
