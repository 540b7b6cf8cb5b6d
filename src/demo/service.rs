//! The demo's managed service: a tiny HTTP server that answers with the node, the epoch and
//! the version serving it, and only claims to be active while its node holds a lease.
//!
//! Its version comes from `DEMO_VERSION` in its environment (default 1), and with
//! `DEMO_BROKEN=1` its health check (`/health`) fails: what `standin deploy --env ...` changes
//! to show a good deploy and an automatic rollback.
//!
//! It learns its role by asking the local daemon (`GET /v1/lease`) every 20 ms and stops
//! claiming "active" by itself when the lease it last heard of runs out, even if the daemon is
//! frozen or dead. That is what a lease-aware backend does: no stale primary after a
//! `SIGSTOP` of the daemon.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use hyper::Method;
use tokio_util::sync::CancellationToken;

use crate::api::client::request;
use crate::api::LeaseStatus;

#[derive(Default)]
struct Role {
    epoch: u64,
    /// Active until this instant (from the daemon's remaining lease).
    until: Option<Instant>,
}

struct Shared {
    node: String,
    /// `DEMO_VERSION` (default "1").
    version: String,
    /// `DEMO_BROKEN=1`: `/health` fails.
    broken: bool,
    role: Mutex<Role>,
}

/// Runs the demo service until `cancel` fires or its parent daemon goes away.
pub async fn run(
    listen: SocketAddr,
    node: String,
    admin: SocketAddr,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let version = std::env::var("DEMO_VERSION")
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 64 && !v.contains(char::is_whitespace))
        .unwrap_or_else(|| "1".into());
    let broken = std::env::var("DEMO_BROKEN").is_ok_and(|v| v == "1");
    if broken {
        tracing::warn!(%version, "DEMO_BROKEN=1: the health check fails");
    }
    let shared = Arc::new(Shared {
        node,
        version,
        broken,
        role: Mutex::new(Role::default()),
    });
    let poller = {
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { poll_role(shared, admin, cancel).await })
    };
    let app = Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/echo", get(echo))
        .route("/delay/:ms", get(delay))
        .with_state(shared);
    let c2 = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { c2.cancelled().await })
            .await
    });
    cancel.cancelled().await;
    let _ = poller.await;
    // Graceful, but bounded: an idle client connection must not keep the process alive.
    match tokio::time::timeout(Duration::from_secs(1), server).await {
        Ok(Ok(r)) => r,
        _ => Ok(()),
    }
}

async fn root(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    let role = s.role.lock().unwrap_or_else(|p| p.into_inner());
    match role.until {
        Some(until) if Instant::now() < until => (
            StatusCode::OK,
            format!(
                "node={} epoch={} role=active version={}\n",
                s.node, role.epoch, s.version
            ),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node={} role=standby version={}\n", s.node, s.version),
        ),
    }
}

async fn health(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    if s.broken {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("broken (DEMO_BROKEN=1), version={}\n", s.version),
        )
    } else {
        (StatusCode::OK, format!("ok version={}\n", s.version))
    }
}

/// Answers in any role (for load-balancing tests): the node, its role, and the request's
/// headers, one `name: value` per line.
async fn echo(State(s): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> String {
    let active = {
        let role = s.role.lock().unwrap_or_else(|p| p.into_inner());
        role.until.is_some_and(|u| Instant::now() < u)
    };
    let mut out = format!(
        "node={} role={} version={}\n",
        s.node,
        if active { "active" } else { "standby" },
        s.version
    );
    for (name, value) in &headers {
        out.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out
}

/// Answers like `/echo` after `ms` milliseconds (at most a minute): a slow backend, for trying
/// a proxy's request timeout.
async fn delay(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(ms): axum::extract::Path<u64>,
    headers: axum::http::HeaderMap,
) -> String {
    tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    echo(State(s), headers).await
}

async fn poll_role(shared: Arc<Shared>, admin: SocketAddr, cancel: CancellationToken) {
    let parent = nix::unistd::getppid();
    let admin = admin.to_string();
    loop {
        // Our daemon died (we were re-parented): a service must not outlive its supervisor.
        if nix::unistd::getppid() != parent {
            // Cancel before logging: our stderr was the daemon's pipe and may be gone.
            cancel.cancel();
            tracing::warn!("daemon gone; demo service exits");
            return;
        }
        let sent = Instant::now();
        let reply = request(&admin, Method::GET, "/v1/lease", None, Duration::from_millis(200)).await;
        if let Ok(r) = reply {
            if let Ok(l) = serde_json::from_str::<LeaseStatus>(&r.body) {
                let mut role = shared.role.lock().unwrap_or_else(|p| p.into_inner());
                match (l.role.as_str(), l.lease_remaining_ms) {
                    ("active", Some(ms)) => {
                        role.epoch = l.epoch;
                        // Counted from when we asked, so the daemon's lease ends no earlier.
                        role.until = Some(sent + Duration::from_millis(ms));
                    }
                    _ => role.until = None,
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}
