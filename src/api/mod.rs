//! The admin HTTP API of every node, and the JSON types shared with the CLI.
//!
//! Reads (`/v1/status`, `/v1/events`) answer with the cluster's view from any node: status is
//! fetched from the Raft leader (which has the live replication and path data) and falls back
//! to this node's own view, marked `"stale": true`, if the leader cannot be reached. Mutations
//! are forwarded to the leader and committed to the Raft log.

pub mod client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::rpc::{Request, Response as RpcResponse};
use crate::cluster::state::{Command, Event};
use crate::cluster::transport::{unix_ms, PathStatus};
use crate::cluster::ClusterError;
use crate::config::NodeKind;
use crate::failover::Cause;
use crate::node::role::Acting;
use crate::node::Node;

/// `GET /v1/status` and `standin status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub epoch: u64,
    pub active: Option<String>,
    pub leader: Option<String>,
    pub term: u64,
    /// The node whose view this is (the leader, unless `stale`).
    pub view_from: String,
    /// True when the leader could not be reached and this is a follower's own view.
    pub stale: bool,
    /// What the coordinator is waiting for, if anything.
    pub waiting: Option<String>,
    pub switchover: Option<SwitchoverStatus>,
    pub commit_index: u64,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwitchoverStatus {
    pub target: Option<String>,
    pub cause: Cause,
    pub requested_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub id: String,
    pub kind: NodeKind,
    pub priority: u32,
    /// `active`, `promoting`, `standby` or `witness`.
    pub role: String,
    pub healthy: bool,
    /// Replication within `max-lag` of the leader (always true for the leader itself).
    pub in_sync: bool,
    /// Log entries behind the leader.
    pub lag: u64,
    /// Heard on some path within the failure timeout.
    pub reachable: bool,
    pub last_heard_ms_ago: Option<u64>,
    pub maintenance: bool,
    /// Taken out of load balancing (`standin drain`).
    #[serde(default)]
    pub drain: bool,
    pub version: String,
    pub admin: String,
    pub service: Option<String>,
    /// The node's Redis-protocol store address (`store-address` in its `[[member]]`).
    #[serde(default)]
    pub store: Option<String>,
    pub checks: Vec<CheckStatusJson>,
    /// Paths from `view_from` to this node (empty for `view_from` itself).
    pub paths: Vec<PathStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckStatusJson {
    pub name: String,
    pub healthy: bool,
    pub detail: String,
    pub since_unix_ms: u64,
}

/// `GET /v1/lease`: what this node is doing, for the managed service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseStatus {
    pub node: String,
    /// `active`, `promoting` or `standby`.
    pub role: String,
    pub epoch: u64,
    /// While active: how long the service may keep acting without hearing from us again.
    pub lease_remaining_ms: Option<u64>,
    /// The supervised service process, if running.
    pub service_pid: Option<u32>,
}

/// Mutations, forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AdminAction {
    Switchover { to: Option<String> },
    Failback,
    Maintenance { node: String, on: bool },
    Drain { node: String, on: bool },
}

/// The answer to a mutation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminReply {
    pub ok: bool,
    pub message: String,
    /// The epoch when the request was accepted (a switchover completes at a higher one).
    pub epoch: u64,
}

/// Errors of admin calls, mapped to HTTP status codes.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl AdminError {
    pub fn retryable(&self) -> bool {
        matches!(self, AdminError::Cluster(e) if e.retryable())
    }
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Refused(_) => StatusCode::CONFLICT,
            AdminError::Cluster(e) if e.retryable() => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Cluster(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    retry: bool,
}

fn error_response(status: StatusCode, message: String, retry: bool) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message,
            retry,
        }),
    )
        .into_response()
}

/// Serves the admin API until `cancel` fires.
pub async fn serve(listener: TcpListener, node: Arc<Node>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/events", get(events_handler))
        .route("/v1/lease", get(lease_handler))
        .route("/v1/switchover", post(switchover_handler))
        .route("/v1/failback", post(failback_handler))
        .route("/v1/maintenance", post(maintenance_handler))
        .route("/v1/drain", post(drain_handler))
        .route("/v1/watch", get(watch_handler))
        .with_state(node);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// This node's own view, as JSON.
pub fn local_status(node: &Arc<Node>) -> Result<String, String> {
    serde_json::to_string(&build_status(node)).map_err(|e| e.to_string())
}

fn build_status(node: &Arc<Node>) -> Status {
    let cfg = &node.config;
    let info = node.cluster.info();
    let me = node.cluster.me().to_string();
    let (active, epoch, promotion, switchover, records) = node.cluster.sm.read(|d| {
        (
            d.state.active.clone(),
            d.state.epoch,
            d.state.promotion.clone(),
            d.state.switchover.clone(),
            d.state.nodes.clone(),
        )
    });
    let now = Instant::now();
    let failure_timeout = cfg.timing.failure_timeout;
    let nodes = cfg
        .members
        .iter()
        .map(|m| {
            let rec = records.get(&m.id).cloned().unwrap_or_default();
            let role = if m.kind == NodeKind::Witness {
                "witness"
            } else if active.as_deref() == Some(m.id.as_str()) {
                if promotion.as_ref().is_some_and(|p| p.node == m.id) {
                    "promoting"
                } else {
                    "active"
                }
            } else {
                "standby"
            };
            let (last_heard, paths) = if m.id == me {
                (Some(now), Vec::new())
            } else {
                (
                    node.cluster.transport.last_heard(&m.id),
                    node.cluster.transport.paths(&m.id),
                )
            };
            let matched = if m.id == me {
                info.last_log_index
            } else {
                info.matched.get(&m.id).copied().unwrap_or(0)
            };
            let lag = if info.is_leader {
                info.last_log_index.saturating_sub(matched)
            } else {
                0
            };
            let reachable = last_heard.is_some_and(|t| now.duration_since(t) < failure_timeout);
            // A node nobody hears is shown as such, whatever it last reported.
            let role = if reachable { role } else { "unreachable" };
            NodeStatus {
                id: m.id.clone(),
                kind: m.kind,
                priority: m.priority,
                role: role.to_string(),
                healthy: rec.healthy && reachable,
                in_sync: if info.is_leader {
                    reachable && lag <= cfg.timing.max_lag
                } else {
                    reachable
                },
                lag,
                reachable,
                last_heard_ms_ago: last_heard.map(|t| now.duration_since(t).as_millis() as u64),
                maintenance: rec.maintenance,
                drain: rec.drain,
                version: rec.version.clone(),
                admin: m.admin.to_string(),
                service: m.service_address.map(|a| a.to_string()),
                store: m.store_address.map(|a| a.to_string()),
                checks: rec
                    .checks
                    .iter()
                    .map(|(name, c)| CheckStatusJson {
                        name: name.clone(),
                        healthy: c.healthy,
                        detail: c.detail.clone(),
                        since_unix_ms: c.since_unix_ms,
                    })
                    .collect(),
                paths,
            }
        })
        .collect();
    let waiting = node
        .coordinator
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .waiting
        .clone();
    Status {
        epoch,
        active,
        leader: info.leader,
        term: info.term,
        view_from: me,
        // A leader cut off from the quorum (openraft 0.9 does not step down by itself) does not
        // speak for the cluster either.
        stale: !info.is_leader || {
            let heard = nodes_heard(node);
            heard * 2 <= cfg.members.len()
        },
        waiting,
        switchover: switchover.map(|s| SwitchoverStatus {
            target: s.target,
            cause: s.cause,
            requested_unix_ms: s.requested_unix_ms,
        }),
        commit_index: info.committed,
        nodes,
    }
}

/// Voters heard within the failure timeout, this node included.
fn nodes_heard(node: &Arc<Node>) -> usize {
    let me = node.cluster.me();
    let ft = node.config.timing.failure_timeout;
    node.config
        .members
        .iter()
        .filter(|m| {
            m.id == me
                || node
                    .cluster
                    .transport
                    .last_heard(&m.id)
                    .is_some_and(|t| t.elapsed() < ft)
        })
        .count()
}

/// The cluster's view: from the leader if it can be reached, else our own (stale).
pub async fn cluster_status(node: &Arc<Node>) -> Status {
    let info = node.cluster.info();
    if let Some(leader) = info.leader.filter(|l| l != node.cluster.me()) {
        if let Ok(RpcResponse::Json(s)) = node
            .cluster
            .transport
            .call(&leader, &Request::Status, Duration::from_millis(500))
            .await
        {
            if let Ok(status) = serde_json::from_str::<Status>(&s) {
                return status;
            }
        }
    }
    build_status(node)
}

async fn status_handler(State(node): State<Arc<Node>>) -> Json<Status> {
    Json(cluster_status(&node).await)
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Only events newer than this (e.g. "10m").
    since: Option<String>,
}

async fn events_handler(State(node): State<Arc<Node>>, Query(q): Query<EventsQuery>) -> Response {
    let cutoff = match q.since.as_deref().map(humantime::parse_duration) {
        None => 0,
        Some(Ok(d)) => unix_ms().saturating_sub(d.as_millis() as u64),
        Some(Err(e)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid `since`: {e} (use e.g. 30s, 10m, 2h)"),
                false,
            )
        }
    };
    let events: Vec<Event> = node.cluster.sm.read(|d| {
        d.state
            .events
            .iter()
            .filter(|e| e.at_unix_ms >= cutoff)
            .cloned()
            .collect()
    });
    Json(events).into_response()
}

async fn lease_handler(State(node): State<Arc<Node>>) -> Json<LeaseStatus> {
    let local = *node.local.borrow();
    let now = Instant::now();
    let (role, remaining) = match local.acting {
        Acting::Active => match local.lease_until {
            Some(until) if until > now => ("active", Some(until.duration_since(now).as_millis() as u64)),
            _ => ("standby", None),
        },
        Acting::Promoting => ("promoting", None),
        Acting::Standby => ("standby", None),
    };
    {
        // Remember what the service was told: a release waits until it has heard "standby"
        // or the lease it was given has run out.
        let mut handed = node.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        let pid = node.supervisor.as_ref().and_then(|s| s.pid());
        match (role, local.lease_until) {
            ("active", Some(until)) => *handed = Some((handed.map_or(until, |h| h.0.max(until)), pid)),
            _ => *handed = None,
        }
    }
    Json(LeaseStatus {
        node: node.cluster.me().to_string(),
        role: role.to_string(),
        epoch: local.epoch,
        lease_remaining_ms: remaining,
        service_pid: node.supervisor.as_ref().and_then(|s| s.pid()),
    })
}

#[derive(Deserialize, Default)]
struct SwitchoverBody {
    to: Option<String>,
}

#[derive(Deserialize)]
struct MaintenanceBody {
    node: String,
    on: bool,
}

async fn switchover_handler(State(node): State<Arc<Node>>, body: Option<Json<SwitchoverBody>>) -> Response {
    let to = body.and_then(|b| b.0.to);
    admin(&node, AdminAction::Switchover { to }).await
}

async fn failback_handler(State(node): State<Arc<Node>>) -> Response {
    admin(&node, AdminAction::Failback).await
}

async fn maintenance_handler(State(node): State<Arc<Node>>, Json(b): Json<MaintenanceBody>) -> Response {
    admin(
        &node,
        AdminAction::Maintenance {
            node: b.node,
            on: b.on,
        },
    )
    .await
}

async fn drain_handler(State(node): State<Arc<Node>>, Json(b): Json<MaintenanceBody>) -> Response {
    admin(
        &node,
        AdminAction::Drain {
            node: b.node,
            on: b.on,
        },
    )
    .await
}

/// Shortest gap between two `/v1/watch` events (bursts of commits are coalesced).
const WATCH_MIN_GAP: Duration = Duration::from_millis(10);
/// Longest gap: an unchanged view is sent again this often (reachability and lag move on
/// their own, and the client learns the stream is alive).
const WATCH_MAX_GAP: Duration = Duration::from_secs(1);

/// `GET /v1/watch`: server-sent events, `event: status` with this node's own view as JSON
/// (not the leader's: it keeps working while this node is cut off, marked `stale`). Sent on
/// connect, on every newly applied entry (at most every 10 ms) and at least every second.
async fn watch_handler(
    State(node): State<Arc<Node>>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    let applied = node.cluster.sm.subscribe();
    let stream = futures::stream::unfold(
        (node, applied, None::<tokio::time::Instant>),
        |(node, mut applied, last)| async move {
            if let Some(last) = last {
                tokio::time::sleep_until(last + WATCH_MIN_GAP).await;
                // A change, or the longest gap passed. An error: the state machine is gone (the
                // node is shutting down).
                if let Ok(Err(_)) = tokio::time::timeout_at(last + WATCH_MAX_GAP, applied.changed()).await {
                    return None;
                }
                applied.borrow_and_update();
            }
            let status = build_status(&node);
            let data = serde_json::to_string(&status).unwrap_or_default();
            let event = axum::response::sse::Event::default().event("status").data(data);
            Some((Ok(event), (node, applied, Some(tokio::time::Instant::now()))))
        },
    );
    axum::response::sse::Sse::new(stream)
}

async fn admin(node: &Arc<Node>, action: AdminAction) -> Response {
    // Bad requests are refused here, whichever node gets them.
    if let Err(e) = validate_admin(&node.config, &action) {
        return error_response(e.status(), e.to_string(), false);
    }
    let body = match serde_json::to_string(&action) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
    };
    match forward_admin(node, &body).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => error_response(e.status(), e.to_string(), e.retryable()),
    }
}

/// Runs an admin action on the leader (here, or forwarded).
async fn forward_admin(node: &Arc<Node>, body: &str) -> Result<AdminReply, AdminError> {
    let info = node.cluster.info();
    let leader = info.leader.ok_or(ClusterError::NoLeader)?;
    let json = if leader == node.cluster.me() {
        apply_admin(node, body).await?
    } else {
        match node
            .cluster
            .transport
            .call(&leader, &Request::Admin(body.to_string()), Duration::from_secs(5))
            .await
        {
            Ok(RpcResponse::Json(s)) => s,
            Ok(RpcResponse::Error { message, retry }) => {
                return Err(if retry {
                    AdminError::Cluster(ClusterError::LeaderUnreachable {
                        leader,
                        reason: message,
                    })
                } else {
                    AdminError::Refused(message)
                })
            }
            Ok(other) => return Err(AdminError::Refused(format!("unexpected reply {other:?}"))),
            Err(e) => {
                return Err(AdminError::Cluster(ClusterError::LeaderUnreachable {
                    leader,
                    reason: e.to_string(),
                }))
            }
        }
    };
    serde_json::from_str(&json).map_err(|e| AdminError::Refused(format!("bad reply from leader: {e}")))
}

/// Checks an action against the configuration (members and their kinds).
fn validate_admin(cfg: &crate::config::Config, action: &AdminAction) -> Result<(), AdminError> {
    let data_member = |id: &str| -> Result<(), AdminError> {
        match cfg.member(id) {
            None => Err(AdminError::Invalid(format!(
                "{id} is not a member of the cluster"
            ))),
            Some(m) if m.kind == NodeKind::Witness => Err(AdminError::Invalid(format!(
                "{id} is a witness and never runs the service"
            ))),
            Some(_) => Ok(()),
        }
    };
    match action {
        AdminAction::Switchover { to: Some(t) } => data_member(t),
        AdminAction::Maintenance { node, .. } if cfg.member(node).is_none() => Err(AdminError::Invalid(
            format!("{node} is not a member of the cluster"),
        )),
        AdminAction::Drain { node, .. } => data_member(node),
        _ => Ok(()),
    }
}

/// Leader side of an admin action: validate, commit, answer JSON of [`AdminReply`].
pub async fn apply_admin(node: &Arc<Node>, body: &str) -> Result<String, AdminError> {
    let action: AdminAction =
        serde_json::from_str(body).map_err(|e| AdminError::Invalid(format!("bad admin request: {e}")))?;
    validate_admin(&node.config, &action)?;
    let (active, epoch) = node.cluster.sm.read(|d| (d.state.active.clone(), d.state.epoch));
    let at = unix_ms();
    let (cmd, message) = match action {
        AdminAction::Switchover { to } => {
            if let Some(t) = &to {
                if active.as_deref() == Some(t.as_str()) {
                    return Err(AdminError::Refused(format!("{t} is already active")));
                }
            }
            if active.is_none() {
                return Err(AdminError::Refused(
                    "no node is active; failover is already choosing one".into(),
                ));
            }
            let msg = format!(
                "switchover from {} to {} requested",
                active.as_deref().unwrap_or("-"),
                to.as_deref().unwrap_or("the best standby")
            );
            (
                Command::Switchover {
                    target: to,
                    cause: Cause::Switchover,
                    at,
                },
                msg,
            )
        }
        AdminAction::Failback => {
            if active.is_none() {
                return Err(AdminError::Refused("no node is active".into()));
            }
            (
                Command::Switchover {
                    target: None,
                    cause: Cause::Failback,
                    at,
                },
                "failback to the preferred node requested".to_string(),
            )
        }
        AdminAction::Maintenance { node: n, on } => {
            let msg = format!("maintenance {} for {n}", if on { "on" } else { "off" });
            (Command::Maintenance { node: n, on, at }, msg)
        }
        AdminAction::Drain { node: n, on } => {
            let msg = format!("drain {} for {n}", if on { "on" } else { "off" });
            (Command::Drain { node: n, on, at }, msg)
        }
    };
    let r = node.cluster.write_local(cmd).await?;
    if !r.ok {
        return Err(AdminError::Refused(r.message));
    }
    let reply = AdminReply {
        ok: true,
        message,
        epoch,
    };
    serde_json::to_string(&reply).map_err(|e| AdminError::Refused(e.to_string()))
}
