//! The probes behind each check kind: tcp connect, HTTP GET, and `sh -c` exec.
//!
//! A probe answers `Ok(())` or `Err(short reason)`; the reason ends up in
//! `CheckStatus::last_result`, so it is kept short and stable ("connect refused", "timeout",
//! "status 500") rather than a full error chain.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{header, Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::config::CheckKind;
use crate::service::process;

/// At most this much of an HTTP response body is read to look for the expected text.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Failure reasons longer than this are cut, to keep status output on one line.
const MAX_DETAIL: usize = 120;

/// A check kind, prepared once (URL parsed, client built) and probed many times.
pub(crate) enum Prober {
    Tcp(SocketAddr),
    /// Boxed: the client is large and the other variants are tiny.
    Http(Box<HttpProbe>),
    Exec(String),
}

pub(crate) struct HttpProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// `Err` holds why the configured URL is unusable; every probe then fails with it.
    uri: Result<Uri, String>,
    status: u16,
    body: Option<String>,
}

impl Prober {
    pub(crate) fn new(kind: &CheckKind) -> Self {
        match kind {
            CheckKind::Tcp { address } => Prober::Tcp(*address),
            CheckKind::Http { url, status, body } => Prober::Http(Box::new(HttpProbe {
                // No idle connections: a pooled keep-alive connection would hide a server
                // that no longer accepts new ones.
                client: Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build_http(),
                uri: url.parse::<Uri>().map_err(|e| format!("bad url: {e}")),
                status: *status,
                body: body.clone(),
            })),
            CheckKind::Exec { command } => Prober::Exec(command.clone()),
        }
    }

    /// Runs one probe, bounded by `timeout`.
    pub(crate) async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let result = match self {
            // The exec probe enforces its own deadline, because on timeout it must kill the
            // process group, not just stop waiting for it.
            Prober::Exec(command) => return exec(command, timeout).await,
            Prober::Tcp(addr) => tokio::time::timeout(timeout, tcp(*addr)).await,
            Prober::Http(p) => {
                let uri = p.uri.as_ref().map_err(Clone::clone)?;
                let probe = http(&p.client, uri, p.status, p.body.as_deref());
                tokio::time::timeout(timeout, probe).await
            }
        };
        result.unwrap_or_else(|_| Err("timeout".to_string()))
    }
}

async fn tcp(addr: SocketAddr) -> Result<(), String> {
    TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| io_reason(&e))
}

async fn http(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &Uri,
    want_status: u16,
    want_body: Option<&str>,
) -> Result<(), String> {
    let request = Request::get(uri.clone())
        .header(header::USER_AGENT, "standin-health")
        .body(Empty::new())
        .map_err(|e| short(format!("bad request: {e}")))?;
    let response = client.request(request).await.map_err(|e| {
        // The useful part ("connection refused") is an io::Error deep in the chain.
        let mut source = e.source();
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                return io_reason(io);
            }
            source = err.source();
        }
        if e.is_connect() {
            "connect failed".to_string()
        } else {
            short(format!("request failed: {e}"))
        }
    })?;
    let status = response.status().as_u16();
    if status != want_status {
        return Err(format!("status {status}"));
    }
    let Some(needle) = want_body else {
        return Ok(());
    };
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while seen.len() < MAX_BODY {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(short(format!("body read failed: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_BODY - seen.len();
                    seen.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    if contains(&seen, needle.as_bytes()) {
        Ok(())
    } else {
        Err("body mismatch".to_string())
    }
}

async fn exec(command: &str, timeout: Duration) -> Result<(), String> {
    let out = process::run_shell(command, &[], timeout, 0).await;
    if out.timed_out {
        return Err("timeout".to_string());
    }
    if let Some(e) = out.spawn_error {
        return Err(short(format!("cannot run: {e}")));
    }
    match (out.exit_code, out.signal) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(format!("exit {code}")),
        (None, Some(signal)) => Err(format!("killed by signal {signal}")),
        (None, None) => Err("no exit status".to_string()),
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::TimedOut => "timeout".to_string(),
        _ => short(e.to_string()),
    }
}

fn short(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
