//! A small HTTP client for the admin API (used by the CLI, the demo and tests).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {0:?}: use host:port")]
    Address(String),
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

/// Sends one request to `http://{api}{path}`.
pub async fn request(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    request_with_token(api, method, path, body, timeout, None).await
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
    let uri: hyper::Uri = format!("http://{api}{path}")
        .parse()
        .map_err(|_| ClientError::Address(api.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Address(e.to_string()))?;
    let unreachable = |reason: String| ClientError::Unreachable {
        api: api.to_string(),
        reason,
    };
    let fut = async {
        let resp = client
            .request(req)
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
