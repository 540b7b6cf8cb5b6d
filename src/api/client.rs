//! A small HTTP and HTTPS client for the admin API (used by the CLI, the proxy, the demo and
//! tests): one connection per request, `http1` over a TCP stream or a TLS 1.3 stream
//! (tokio-rustls) whose server certificate must chain to the given CA.
//!
//! An address is `host:port`, `http://host:port` or `https://host:port`; a bare `host:port`
//! speaks HTTPS when a CA is given (a CA means the API is served with TLS).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {0:?}: use host:port, http://host:port or https://host:port")]
    Address(String),
    #[error(
        "{api} is an https:// address: give the CA that signed its certificate (--ca FILE or STANDIN_CA)"
    )]
    NoCa { api: String },
    #[error("cannot reach the admin API at {api}: {reason}")]
    Unreachable { api: String, reason: String },
    #[error("no answer from {api} within {timeout:?}")]
    Timeout { api: String, timeout: Duration },
}

/// An HTTP answer: status code and body text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// How to reach an API: the token to send and, for HTTPS, the client TLS config.
#[derive(Clone, Default)]
pub struct Access {
    pub token: Option<String>,
    /// From [`crate::tls::https_client_config`]; `Some` makes bare `host:port` speak HTTPS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Never shows the token.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("https", &self.tls.is_some())
            .finish()
    }
}

impl Access {
    /// An access with the CA at `ca` (HTTPS) and `token`; the error names the file's problem.
    pub fn new(token: Option<String>, ca: Option<&std::path::Path>) -> Result<Access, crate::tls::TlsError> {
        let tls = match ca {
            Some(p) => Some(Arc::new(crate::tls::https_client_config(p)?)),
            None => None,
        };
        Ok(Access { token, tls })
    }
}

/// A parsed address: whether to use TLS, and `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub authority: String,
}

impl Target {
    /// Parses `api` (see the module doc); `default_https` applies to a bare `host:port`.
    pub fn parse(api: &str, default_https: bool) -> Result<Target, ClientError> {
        let (https, rest) = if let Some(r) = api.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = api.strip_prefix("http://") {
            (false, r)
        } else {
            (default_https, api)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let authority: hyper::http::uri::Authority =
            rest.parse().map_err(|_| ClientError::Address(api.to_string()))?;
        if authority.port_u16().is_none() || authority.as_str().contains('@') {
            return Err(ClientError::Address(api.to_string()));
        }
        Ok(Target {
            https,
            authority: authority.as_str().to_string(),
        })
    }

    /// The host part, without brackets around an IPv6 address.
    pub fn host(&self) -> &str {
        let host = match self.authority.rfind(':') {
            Some(i) => &self.authority[..i],
            None => &self.authority,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A byte stream to an API, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens a connection to `api` (TCP, then TLS for HTTPS), all within `timeout`.
pub async fn connect(
    api: &str,
    access: &Access,
    timeout: Duration,
) -> Result<(Target, Box<dyn Io>), ClientError> {
    let target = Target::parse(api, access.tls.is_some())?;
    let unreachable = |reason: String| ClientError::Unreachable {
        api: api.to_string(),
        reason,
    };
    let fut = async {
        let tcp = TcpStream::connect(&target.authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if !target.https {
            return Ok(Box::new(tcp) as Box<dyn Io>);
        }
        let Some(cfg) = access.tls.clone() else {
            return Err(ClientError::NoCa { api: api.to_string() });
        };
        let name = crate::tls::server_name_for(target.host());
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS handshake failed: {}", error_chain(&e))))?;
        Ok(Box::new(tls) as Box<dyn Io>)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map(|io| (target, io)),
        Err(_) => Err(ClientError::Timeout {
            api: api.to_string(),
            timeout,
        }),
    }
}

/// Sends one request to `http://{api}{path}`.
pub async fn request(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    request_with(api, method, path, body, timeout, &Access::default()).await
}

/// A warning when a token would cross the network in plain text: HTTP (not HTTPS) to an
/// address that is not loopback. `None` when there is no token, the API is HTTPS, or local.
pub fn plaintext_token_warning(api: &str, has_token: bool, has_ca: bool) -> Option<String> {
    let target = Target::parse(api, has_ca).ok()?;
    let host = target.host();
    let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (has_token && !target.https && !local).then(|| {
        format!(
            "the API token goes to {api} in plain text: anyone on the path can read it; \
             serve the admin API over HTTPS ([api] tls = true) and give its CA (--ca / STANDIN_CA, or [proxy] api-ca)"
        )
    })
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given.
pub async fn request_with_token(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
    token: Option<&str>,
) -> Result<Reply, ClientError> {
    let access = Access {
        token: token.map(str::to_string),
        tls: None,
    };
    request_with(api, method, path, body, timeout, &access).await
}

/// The error text of an API answer: its `{"error": ...}`, or the status and the start of the
/// body when it is not one.
pub fn error_text(body: &str, status: u16) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {status}: {}", body.chars().take(300).collect::<String>()))
}

/// Sends one request to `api` (HTTP or HTTPS, see the module doc) with `access`'s token.
/// A body is sent as `application/json`. The whole exchange is bounded by `timeout`.
pub async fn request_with(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
    access: &Access,
) -> Result<Reply, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        api: api.to_string(),
        reason,
    };
    let fut = async {
        let (target, io) = connect(api, access, timeout).await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &target.authority);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &access.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| ClientError::Address(format!("{api}{path}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let conn = tokio::spawn(conn);
        let _abort = AbortOnDrop(conn);
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            api: api.to_string(),
            timeout,
        }),
    }
}

/// Aborts the connection task when the request is done or dropped.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An answer whose body is read as it arrives (a backup export): the connection lives as
/// long as this does.
pub struct Streaming {
    pub status: u16,
    pub body: hyper::body::Incoming,
    _conn: AbortOnDrop<Result<(), hyper::Error>>,
}

impl Streaming {
    /// The next piece of the body (`None` at its end).
    pub async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(f) => match f.into_data() {
                    Ok(d) => return Some(Ok(d)),
                    Err(_) => continue,
                },
                Err(e) => {
                    return Some(Err(ClientError::Unreachable {
                        api: "the admin API".into(),
                        reason: format!("the answer was cut off: {}", error_chain(&e)),
                    }))
                }
            }
        }
    }

    /// The whole (small) body as text, for an error answer.
    pub async fn text(mut self) -> String {
        let mut out = Vec::new();
        while let Some(Ok(b)) = self.next().await {
            out.extend_from_slice(&b);
            if out.len() > 64 * 1024 {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Sends one request and returns as soon as the answer's head arrived (within `timeout`);
/// the body is read from the [`Streaming`] answer with no time limit of its own. `body` is
/// sent with `content_type`.
pub async fn request_streaming(
    api: &str,
    method: Method,
    path: &str,
    body: Option<(Vec<u8>, &str)>,
    timeout: Duration,
    access: &Access,
) -> Result<Streaming, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        api: api.to_string(),
        reason,
    };
    let fut = async {
        let (target, io) = connect(api, access, timeout).await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &target.authority);
        let bytes = match body {
            Some((b, ct)) => {
                req = req.header(hyper::header::CONTENT_TYPE, ct);
                b
            }
            None => Vec::new(),
        };
        if let Some(t) = &access.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|_| ClientError::Address(format!("{api}{path}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok(Streaming {
            status: resp.status().as_u16(),
            body: resp.into_body(),
            _conn: conn,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            api: api.to_string(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_a_scheme() {
        let t = |a: &str, d: bool| Target::parse(a, d).map(|t| (t.https, t.authority));
        assert_eq!(
            t("127.0.0.1:7400", false).ok(),
            Some((false, "127.0.0.1:7400".into()))
        );
        assert_eq!(
            t("127.0.0.1:7400", true).ok(),
            Some((true, "127.0.0.1:7400".into()))
        );
        assert_eq!(t("https://n1:7400/", false).ok(), Some((true, "n1:7400".into())));
        assert_eq!(
            t("http://[::1]:7400", true).ok(),
            Some((false, "[::1]:7400".into()))
        );
        assert_eq!(
            Target::parse("https://[::1]:7400", false)
                .map(|t| t.host().to_string())
                .ok(),
            Some("::1".into())
        );
        for bad in ["", "n1", "https://n1", "ftp://n1:1", "u:p@n1:1", "n1:1/x"] {
            assert!(Target::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_in_plain_text_off_the_machine_is_warned_about() {
        let w = |api: &str, token: bool, ca: bool| plaintext_token_warning(api, token, ca).is_some();
        assert!(w("10.0.0.1:7400", true, false));
        assert!(w("http://node-a.example:7400", true, true));
        assert!(!w("10.0.0.1:7400", false, false), "no token, nothing to leak");
        assert!(
            !w("10.0.0.1:7400", true, true),
            "a bare address with a CA is HTTPS"
        );
        assert!(!w("https://10.0.0.1:7400", true, true));
        assert!(!w("127.0.0.1:7400", true, false));
        assert!(!w("localhost:7400", true, false));
        assert!(!w("[::1]:7400", true, false));
    }
}
