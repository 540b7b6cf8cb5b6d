//! The node's side of failover drills: faults it injects into itself when asked
//! (`POST /v1/drill/fault`, only with `[drill] enabled = true` and the token), what is in
//! force (`GET /v1/drill/fault`), and its recent log lines (`GET /v1/logs`) as evidence.
//!
//! Every fault ends by itself: a cut path heals when its time is up (the transport compares
//! with the clock on every use), a killed service is restarted by its supervisor, a crashed
//! daemon by its own supervisor (systemd's `Restart=on-failure`, the demo). Nothing depends on
//! the client that asked coming back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::serve::error_response;
use super::AdminContext;

/// A fault a drill asks this node to inject into itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultRequest {
    /// SIGKILL to the managed service's process group.
    KillService,
    /// The service and then the daemon itself are killed with SIGKILL, as a crash would,
    /// `delay_ms` after the answer is sent.
    Crash {
        #[serde(default)]
        delay_ms: u64,
    },
    /// This node's peer paths (`None`: all) drop everything for `for_ms`.
    CutPaths {
        #[serde(default)]
        paths: Option<Vec<usize>>,
        for_ms: u64,
    },
    /// Ends a cut now.
    Heal,
}

/// What is in force on this node (`GET /v1/drill/fault`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FaultView {
    pub node: String,
    pub enabled: bool,
    /// This node's peer paths (its addresses), in order.
    pub paths: usize,
    /// The cut in force: the paths (`None`: all) and the time left.
    pub cut_paths: Option<Vec<usize>>,
    pub cut_all: bool,
    pub cut_remaining_ms: Option<u64>,
    pub max_fault_ms: u64,
    /// What the last request did.
    pub message: Option<String>,
}

/// The longest a crash may be put off.
const MAX_CRASH_DELAY: Duration = Duration::from_secs(10);

fn view(node: &AdminContext, message: Option<String>) -> FaultView {
    let me = node.config.me();
    let cut = node.cluster.transport.path_cut();
    let now = Instant::now();
    FaultView {
        node: me.id.clone(),
        enabled: node.config.drill.enabled,
        paths: me.addresses.len(),
        cut_all: cut.as_ref().is_some_and(|c| c.paths.is_none()),
        cut_remaining_ms: cut
            .as_ref()
            .map(|c| c.until.saturating_duration_since(now).as_millis() as u64),
        cut_paths: cut.and_then(|c| c.paths),
        max_fault_ms: node.config.drill.max_fault.as_millis() as u64,
        message,
    }
}

/// `GET /v1/drill/fault`.
pub async fn fault_get(State(node): State<Arc<AdminContext>>) -> Json<FaultView> {
    Json(view(&node, None))
}

/// `POST /v1/drill/fault`: see [`FaultRequest`]. 403 unless `[drill] enabled = true`.
pub async fn fault_post(
    State(node): State<Arc<AdminContext>>,
    body: Result<Json<FaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.body_text(), false),
    };
    if !node.config.drill.enabled {
        return error_response(
            StatusCode::FORBIDDEN,
            "drills are off on this node: set `[drill] enabled = true` in its config".into(),
            false,
        );
    }
    let max = node.config.drill.max_fault;
    let paths = node.config.me().addresses.len();
    // A drill must not turn into an outage: the active node refuses to crash or isolate
    // itself while no other data node could take over.
    let stops_me = matches!(
        req,
        FaultRequest::Crash { .. } | FaultRequest::CutPaths { paths: None, .. }
    );
    if stops_me && node.local.borrow().acting != crate::node::shared::Acting::Standby {
        let st = node.status.cluster_status().await;
        let me = node.cluster.me().to_string();
        let standby = st.nodes.iter().any(|n| {
            n.id != me
                && n.kind == crate::config::NodeKind::Data
                && n.reachable
                && n.healthy
                && n.in_sync
                && !n.maintenance
                && n.priority > 0
        });
        if !standby {
            return error_response(
                StatusCode::CONFLICT,
                "this node is active and no healthy, in-sync standby could take over: refusing a fault that would stop the service".into(),
                false,
            );
        }
    }
    let message = match req {
        FaultRequest::KillService => {
            let Some(sup) = &node.supervisor else {
                return error_response(StatusCode::CONFLICT, "this node runs no service".into(), false);
            };
            match sup.kill_now() {
                Some(pid) => {
                    tracing::warn!(pid, "drill: killed the service (SIGKILL)");
                    format!("service (pid {pid}) killed")
                }
                None => {
                    return error_response(
                        StatusCode::CONFLICT,
                        "the service is not running now".into(),
                        false,
                    )
                }
            }
        }
        FaultRequest::Crash { delay_ms } => {
            let delay = Duration::from_millis(delay_ms);
            if delay > MAX_CRASH_DELAY {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("delay_ms must be at most {}", MAX_CRASH_DELAY.as_millis()),
                    false,
                );
            }
            let sup = node.supervisor.clone();
            tracing::error!(
                delay_ms,
                "drill: this node's daemon will crash (SIGKILL) with its service"
            );
            tokio::spawn(async move {
                // The answer goes out first.
                tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
                if let Some(pid) = sup.as_ref().and_then(|s| s.kill_now()) {
                    tracing::error!(pid, "drill: killed the service (SIGKILL)");
                }
                tracing::error!("drill: crashing this daemon now (SIGKILL)");
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            });
            format!("crashing in {} ms", delay.as_millis().max(50))
        }
        FaultRequest::CutPaths { paths: which, for_ms } => {
            let d = Duration::from_millis(for_ms);
            if d < Duration::from_millis(100) || d > max {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "for_ms must be between 100 and {} (drill.max-fault)",
                        max.as_millis()
                    ),
                    false,
                );
            }
            if let Some(w) = &which {
                if w.is_empty() || w.len() > paths || w.iter().any(|i| *i >= paths) {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "paths must name some of this node's paths 0..{}",
                            paths.saturating_sub(1)
                        ),
                        false,
                    );
                }
            }
            node.cluster.transport.cut_paths(which.clone(), d);
            let what = match &which {
                None => "every peer path".to_string(),
                Some(w) => format!("peer path(s) {w:?}"),
            };
            tracing::warn!(paths = ?which, for_ms, "drill: {what} cut");
            format!("{what} cut for {for_ms} ms")
        }
        FaultRequest::Heal => {
            if node.cluster.transport.heal_paths() {
                tracing::warn!("drill: cut healed");
                "cut healed".to_string()
            } else {
                "nothing to heal".to_string()
            }
        }
    };
    (StatusCode::OK, Json(view(&node, Some(message)))).into_response()
}

/// `GET /v1/logs?since=UNIX_MS&limit=N`: this node's last log lines (info and above).
pub async fn logs_get(uri: axum::http::Uri) -> Response {
    let Ok(axum::extract::Query(pairs)) = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
    else {
        return error_response(StatusCode::BAD_REQUEST, "invalid query".into(), false);
    };
    let mut since = 0u64;
    let mut limit = 500usize;
    for (k, v) in pairs {
        match k.as_str() {
            "since" => match v.parse() {
                Ok(n) => since = n,
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        format!("invalid `since`: {v:?} is not a Unix time in ms"),
                        false,
                    )
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) => limit = n.min(crate::logring::LINES),
                Err(_) => {
                    return error_response(StatusCode::BAD_REQUEST, format!("invalid `limit`: {v:?}"), false)
                }
            },
            other => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter `{other}`"),
                    false,
                )
            }
        }
    }
    Json(crate::logring::since(since, limit)).into_response()
}

/// One line of `GET /v1/drills`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordSummary {
    pub id: String,
    pub at: u64,
    pub passed: bool,
    pub scheduled: bool,
    pub scenarios: Vec<(String, bool)>,
    pub confirmations: usize,
    pub bytes: usize,
}

/// `GET /v1/drills`: every recorded run, oldest first (this node's replica).
pub async fn records_get(State(node): State<Arc<AdminContext>>) -> Json<Vec<RecordSummary>> {
    Json(node.cluster.sm.read(|d| {
        d.drills
            .records
            .iter()
            .map(|r| RecordSummary {
                id: r.id.clone(),
                at: r.at,
                passed: r.passed,
                scheduled: r.scheduled,
                scenarios: r.scenarios.clone(),
                confirmations: r.confirmations.len(),
                bytes: r.json.len(),
            })
            .collect()
    }))
}

/// `GET /v1/drills/{id}`: the stored record with its confirmations.
pub async fn record_get(
    State(node): State<Arc<AdminContext>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match node.cluster.sm.read(|d| d.drills.get(&id).cloned()) {
        Some(r) => Json(r).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            format!("no drill run {id} is recorded"),
            false,
        ),
    }
}

/// `POST /v1/drills`: stores a run's record (a `DrillCmd::Record`, through the leader).
pub async fn record_post(State(node): State<Arc<AdminContext>>, body: axum::body::Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        id: String,
        at: u64,
        passed: bool,
        #[serde(default)]
        scheduled: bool,
        scenarios: Vec<(String, bool)>,
        json: String,
    }
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid drill record: {e}"),
                false,
            )
        }
    };
    if serde_json::from_str::<serde_json::Value>(&b.json).is_err() {
        return error_response(StatusCode::BAD_REQUEST, "the record is not JSON".into(), false);
    }
    super::admin(
        &node,
        super::AdminAction::Drill(crate::cluster::drills::DrillCmd::Record {
            id: b.id,
            at: b.at,
            passed: b.passed,
            scheduled: b.scheduled,
            scenarios: b.scenarios,
            json: b.json,
        }),
    )
    .await
}

/// `POST /v1/drills/begin` with `{"id": RUN, "scheduled": BOOL, "force": BOOL}`: marks a run under way;
/// 409 while another one is (one drill at a time).
pub async fn begin_post(State(node): State<Arc<AdminContext>>, body: axum::body::Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        id: String,
        #[serde(default)]
        scheduled: bool,
        #[serde(default)]
        force: bool,
    }
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid request: {e}"), false),
    };
    super::admin(
        &node,
        super::AdminAction::Drill(crate::cluster::drills::DrillCmd::Begin {
            id: b.id,
            at: 0,
            scheduled: b.scheduled,
            force: b.force,
        }),
    )
    .await
}

/// `POST /v1/drills/{id}/confirm` with `{"by": NAME, "note": TEXT, "unresolved": [..]}`.
pub async fn confirm_post(
    State(node): State<Arc<AdminContext>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        by: String,
        #[serde(default)]
        note: String,
        #[serde(default)]
        unresolved: Vec<String>,
    }
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid confirmation: {e}"),
                false,
            )
        }
    };
    super::admin(
        &node,
        super::AdminAction::Drill(crate::cluster::drills::DrillCmd::Confirm {
            id,
            by: b.by,
            note: b.note,
            unresolved: b.unresolved,
            at: 0,
        }),
    )
    .await
}
