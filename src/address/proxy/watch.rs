//! Following the cluster: `GET /v1/watch` (server-sent events, one `status` event per change)
//! on EVERY `cluster` admin API at once, each reconnecting with backoff. The view in force is
//! the most recent one heard in the last few seconds: not stale before stale, then the highest
//! epoch, term and commit index. So a node that is killed, frozen or cut off (whose stream goes
//! silent or stale) costs nothing: the others' streams carry the failover. A node that does not
//! have `/v1/watch` (older version) is polled on `/v1/status` every 100 ms instead.
//!
//! Each request carries `[proxy] api-token` (so `read-open = false` on the nodes works) and
//! speaks HTTPS when `api-ca` is set (`api::client::connect`).
//!
//! The proxy only reads the fields it needs ([`View`]), each with a default where older nodes
//! lack it, so proxy and nodes can be upgraded one at a time. While no node answers, the last
//! view stays in force: forwarding continues to the last known active node.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::NodeKind;

/// What the proxy needs from a node's `Status`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct View {
    pub epoch: u64,
    pub active: Option<String>,
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    pub commit_index: u64,
    #[serde(default)]
    pub view_from: String,
    /// The answering node has not heard a quorum: its view may be old.
    #[serde(default)]
    pub stale: bool,
    /// A planned switchover is in progress.
    #[serde(default)]
    pub switchover: Option<serde_json::Value>,
    pub nodes: Vec<ViewNode>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ViewNode {
    pub id: String,
    pub kind: NodeKind,
    pub role: String,
    pub healthy: bool,
    #[serde(default)]
    pub reachable: bool,
    #[serde(default)]
    pub maintenance: bool,
    /// Replicated drain flag: no new connections, existing ones finish.
    #[serde(default)]
    pub drain: bool,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub store: Option<String>,
}

impl View {
    pub fn node(&self, id: &str) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The active node, once it really acts as active (not while it is still promoting).
    pub fn serving_active(&self) -> Option<&ViewNode> {
        self.active
            .as_deref()
            .and_then(|a| self.node(a))
            .filter(|n| n.role == "active")
    }
}

impl ViewNode {
    pub fn address(&self, target: super::config::Target) -> Option<SocketAddr> {
        let a = match target {
            super::config::Target::Service => self.service.as_deref(),
            super::config::Target::Store => self.store.as_deref(),
        };
        a.and_then(|a| a.parse().ok())
    }
}

/// How the watcher is doing, for `GET /v1/proxy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchStatus {
    /// The admin API the current view came from.
    pub source: Option<String>,
    /// `watch` (server-sent events) or `poll` (`/v1/status`, older nodes).
    pub method: Option<String>,
    pub connected: bool,
    pub last_update_ms_ago: Option<u64>,
    pub last_error: Option<String>,
    pub epoch: Option<u64>,
    pub active: Option<String>,
    pub stale: bool,
}

#[derive(Default)]
struct Info {
    source: Option<String>,
    method: Option<&'static str>,
    connected: bool,
    last_update: Option<Instant>,
    last_error: Option<String>,
    /// The latest view from each source, when it came, and how.
    latest: std::collections::HashMap<String, (Instant, &'static str, View)>,
}

/// The watcher's output: the latest view, and its health.
#[derive(Clone)]
pub struct Watcher {
    pub views: watch::Receiver<Option<Arc<View>>>,
    info: Arc<Mutex<Info>>,
}

impl Watcher {
    pub fn status(&self) -> WatchStatus {
        let info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        let view = self.views.borrow().clone();
        WatchStatus {
            source: info.source.clone(),
            method: info.method.map(str::to_string),
            connected: info.connected,
            last_update_ms_ago: info.last_update.map(|t| t.elapsed().as_millis() as u64),
            last_error: info.last_error.clone(),
            epoch: view.as_ref().map(|v| v.epoch),
            active: view.as_ref().and_then(|v| v.active.clone()),
            stale: view.as_ref().is_some_and(|v| v.stale),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("{0}")]
    Failed(String),
    /// The node has no `/v1/watch`: poll it instead.
    #[error("no /v1/watch")]
    NotSupported,
}

/// A node has no event for this long: the connection is dead (it sends at least every 1 s).
const SILENCE: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Starts following the cluster until `cancel` fires.
pub fn spawn(cluster: Vec<String>, access: crate::api::client::Access, cancel: CancellationToken) -> Watcher {
    let (tx, views) = watch::channel(None);
    let info = Arc::new(Mutex::new(Info::default()));
    let watcher = Watcher {
        views,
        info: info.clone(),
    };
    let access = Arc::new(access);
    for api in cluster {
        let (tx, info, cancel, access) = (tx.clone(), info.clone(), cancel.clone(), access.clone());
        tokio::spawn(async move { follow_forever(&api, &access, &tx, &info, &cancel).await });
    }
    watcher
}

/// Follows one node until `cancel`, reconnecting with backoff.
async fn follow_forever(
    api: &str,
    access: &crate::api::client::Access,
    tx: &watch::Sender<Option<Arc<View>>>,
    info: &Mutex<Info>,
    cancel: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = follow(api, access, tx, info) => r,
        };
        let reason = match result {
            Err(WatchError::NotSupported) => {
                tracing::info!(api = %api, "node has no /v1/watch; polling /v1/status");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = poll(api, access, tx, info) => r.err().unwrap_or(WatchError::Failed("stopped".into())),
                }
            }
            Err(e) => e,
            Ok(()) => WatchError::Failed("stream ended".into()),
        };
        {
            let mut inf = info.lock().unwrap_or_else(|p| p.into_inner());
            inf.latest.remove(api);
            if inf.latest.is_empty() {
                inf.connected = false;
            }
            inf.last_error = Some(format!("{api}: {reason}"));
        }
        if started.elapsed() > Duration::from_secs(2) {
            backoff = Duration::from_millis(50);
            warned = false;
        }
        if !warned {
            warned = true;
            tracing::warn!(api = %api, error = %reason, "lost this node's view; following the others");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The rank of a view: current before stale, then the newest state.
fn rank(v: &View) -> (bool, u64, u64, u64) {
    (!v.stale, v.epoch, v.term, v.commit_index)
}

fn publish(
    tx: &watch::Sender<Option<Arc<View>>>,
    info: &Mutex<Info>,
    api: &str,
    method: &'static str,
    view: View,
) {
    let best = {
        let mut inf = info.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        inf.latest.insert(api.to_string(), (now, method, view));
        // Sources silent for a while (a frozen node) no longer count.
        inf.latest
            .retain(|_, (at, _, _)| now.duration_since(*at) < SILENCE);
        let Some(top) = inf.latest.values().map(|(_, _, v)| rank(v)).max() else {
            return;
        };
        // On a tie keep the current source, so equal views do not flip between nodes.
        let current = inf
            .source
            .as_ref()
            .filter(|s| inf.latest.get(*s).is_some_and(|(_, _, v)| rank(v) == top))
            .cloned();
        let source = current.unwrap_or_else(|| {
            let mut tied: Vec<&String> = inf
                .latest
                .iter()
                .filter(|(_, (_, _, v))| rank(v) == top)
                .map(|(k, _)| k)
                .collect();
            tied.sort();
            tied[0].clone()
        });
        let Some((at, how, best)) = inf.latest.get(&source).cloned() else {
            return;
        };
        if !inf.connected || inf.source.as_deref() != Some(source.as_str()) {
            tracing::info!(api = %source, method = how, epoch = best.epoch, active = ?best.active, "following the cluster");
        }
        inf.connected = true;
        inf.source = Some(source);
        inf.method = Some(how);
        inf.last_update = Some(at);
        best
    };
    tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(&best) {
            false
        } else {
            *cur = Some(Arc::new(best));
            true
        }
    });
}

/// Follows `/v1/watch` on one node until it fails.
async fn follow(
    api: &str,
    access: &crate::api::client::Access,
    tx: &watch::Sender<Option<Arc<View>>>,
    info: &Mutex<Info>,
) -> Result<(), WatchError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| WatchError::Failed(format!("{what}: {e}"));
    // TCP, and TLS when the proxy has the cluster's CA (`[proxy] api-ca`).
    let (target, stream) = crate::api::client::connect(api, access, CONNECT_TIMEOUT)
        .await
        .map_err(|e| WatchError::Failed(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed("handshake", &e))?;
    let conn = tokio::spawn(conn);
    let _abort = AbortOnDrop(conn);
    let mut req = hyper::Request::get("/v1/watch")
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::ACCEPT, "text/event-stream");
    if let Some(t) = &access.token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed("request", &e))?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, send.send_request(req))
        .await
        .map_err(|_| WatchError::Failed("no answer".into()))?
        .map_err(|e| failed("request", &e))?;
    if resp.status() == hyper::StatusCode::NOT_FOUND {
        return Err(WatchError::NotSupported);
    }
    if resp.status() == hyper::StatusCode::UNAUTHORIZED {
        return Err(WatchError::Failed(
            "HTTP 401: the admin API needs a token; set `proxy.api-token-file`".into(),
        ));
    }
    if !resp.status().is_success() {
        return Err(WatchError::Failed(format!("HTTP {}", resp.status())));
    }
    let mut body = resp.into_body();
    let mut parser = SseParser::default();
    loop {
        let frame = tokio::time::timeout(SILENCE, body.frame())
            .await
            .map_err(|_| WatchError::Failed(format!("no event for {SILENCE:?}")))?;
        let Some(frame) = frame else {
            return Err(WatchError::Failed("stream ended".into()));
        };
        let frame = frame.map_err(|e| failed("stream", &e))?;
        let Ok(data) = frame.into_data() else { continue };
        parser.push(&data);
        while let Some(ev) = parser.next_event() {
            if ev.name != "status" && !ev.name.is_empty() {
                continue;
            }
            match serde_json::from_str::<View>(&ev.data) {
                Ok(view) => {
                    publish(tx, info, api, "watch", view);
                }
                Err(e) => tracing::warn!(api = %api, error = %e, "unreadable status event"),
            }
        }
    }
}

use crate::api::client::AbortOnDrop;

/// Polls `/v1/status` every 100 ms (nodes without `/v1/watch`) until it fails.
async fn poll(
    api: &str,
    access: &crate::api::client::Access,
    tx: &watch::Sender<Option<Arc<View>>>,
    info: &Mutex<Info>,
) -> Result<(), WatchError> {
    loop {
        let r = crate::api::client::request_with(
            api,
            hyper::Method::GET,
            "/v1/status",
            None,
            CONNECT_TIMEOUT,
            access,
        )
        .await
        .map_err(|e| WatchError::Failed(e.to_string()))?;
        if r.status != 200 {
            return Err(WatchError::Failed(format!("HTTP {}", r.status)));
        }
        let view: View = serde_json::from_str(&r.body)
            .map_err(|e| WatchError::Failed(format!("unreadable status: {e}")))?;
        publish(tx, info, api, "poll", view);
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// One server-sent event.
#[derive(Debug, PartialEq)]
pub struct SseEvent {
    /// The `event:` field (empty: the default `message`).
    pub name: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental `text/event-stream` parser (events end with a blank line; `\n` or `\r\n`).
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
}

impl SseParser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let text = &self.buf[..];
            let (end, skip) = find_blank_line(text)?;
            let block = String::from_utf8_lossy(&text[..end]).into_owned();
            self.buf.advance(end + skip);
            let mut ev = SseEvent {
                name: String::new(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                let line = line.trim_end_matches('\r');
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => ev.name = value.to_string(),
                    "data" => {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                        has_data = true;
                    }
                    _ => {} // comments (": keep-alive"), id, retry
                }
            }
            if has_data {
                return Some(ev);
            }
        }
    }
}

fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_across_chunks() {
        let mut p = SseParser::default();
        p.push(b": hello\n\nevent: status\ndata: {\"a\":");
        assert_eq!(p.next_event(), None);
        p.push(b"1}\n\nevent: status\r\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(
            p.next_event(),
            Some(SseEvent {
                name: "status".into(),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            p.next_event(),
            Some(SseEvent {
                name: "status".into(),
                data: "x\ny".into()
            })
        );
        assert_eq!(p.next_event(), None);
    }

    #[test]
    fn a_view_reads_old_and_new_status_json() {
        let old = r#"{"epoch":3,"active":"a","leader":"a","term":2,"view_from":"a","stale":false,
            "waiting":null,"switchover":null,"commit_index":9,"nodes":[{"id":"a","kind":"data",
            "priority":200,"role":"active","healthy":true,"in_sync":true,"lag":0,"reachable":true,
            "last_heard_ms_ago":0,"maintenance":false,"version":"","admin":"127.0.0.1:1",
            "service":"127.0.0.1:2","checks":[],"paths":[]}]}"#;
        let v: View = serde_json::from_str(old).expect("old status");
        assert_eq!(v.serving_active().map(|n| n.id.as_str()), Some("a"));
        assert!(!v.nodes[0].drain);
        assert_eq!(v.nodes[0].address(super::super::config::Target::Store), None);
        let new = old.replace(
            "\"checks\"",
            "\"store\":\"127.0.0.1:3\",\"drain\":true,\"checks\"",
        );
        let v: View = serde_json::from_str(&new).expect("new status");
        assert!(v.nodes[0].drain);
        assert_eq!(
            v.nodes[0].address(super::super::config::Target::Store),
            Some("127.0.0.1:3".parse().expect("addr"))
        );
    }
}
