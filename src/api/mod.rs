//! The admin HTTP API of every node, and the JSON types shared with the CLI.
//!
//! Reads (`/v1/status`, `/v1/events`) answer with the cluster's view from any node: status is
//! fetched from the Raft leader (which has the live replication and path data) and falls back
//! to this node's own view, marked `"stale": true`, if the leader cannot be reached. Mutations
//! are forwarded to the leader and committed to the Raft log.

pub mod backup;
pub mod client;
pub mod drill;
pub mod guard;
pub mod metrics;
pub mod serve;

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

use crate::clock::unix_ms;
use crate::cluster::rpc::{Request, Response as RpcResponse};
use crate::cluster::state::{Command, Event};
use crate::cluster::Cluster;
use crate::cluster::ClusterError;
use crate::config::Config;
use crate::config::NodeKind;
use crate::failover::Cause;
use crate::node::shared::{Acting, LocalRole};
use crate::status::Status;
use crate::status::StatusSource;

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
    /// The virtual IP this node holds right now (as its keeper last reported), if any.
    #[serde(default)]
    pub vip: Option<String>,
}

/// What the admin API takes from the node it runs in: narrow handles, not the whole node, so
/// it can also be served in-process on port 0 against a one-node cluster in a test.
pub struct AdminContext {
    /// The configuration the node started with (addresses, TLS, limits).
    pub config: Arc<Config>,
    /// The configuration in effect now: the access settings (`[api]` token, read-open, hosts)
    /// are read from it per request, so a reload applies to the next request. `POST
    /// /v1/reload` applies reloads to it.
    pub live: crate::config::Live,
    /// The file `config` was read from, read again by `POST /v1/reload` (`None`: started
    /// without one, as in a test).
    pub config_path: Option<std::path::PathBuf>,
    pub cluster: Cluster,
    /// The node's own TLS material (`None`: `[tls] insecure`), reused when `[api] tls` names
    /// no certificate of its own.
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// The cluster's view (`/v1/status`) and this node's own (`/v1/watch`, `/metrics`).
    pub status: Arc<dyn StatusSource>,
    /// This node's role, epoch and lease, as the role loop publishes them.
    pub local: tokio::sync::watch::Receiver<LocalRole>,
    pub health: Option<crate::health::HealthHandle>,
    pub supervisor: Option<crate::service::Supervisor>,
    /// What `/v1/lease` last told the service (until when it may act, and its pid): the role
    /// loop's release waits for it.
    pub handed_out: crate::node::shared::HandedOut,
    /// The virtual IP this node's keeper holds, if any.
    pub vip_held: Arc<std::sync::Mutex<Option<crate::address::vip::Vip>>>,
    /// The daemon process (`GET /v1/daemon`).
    pub daemon: Arc<std::sync::Mutex<crate::node::shared::DaemonInfo>>,
    /// Where `POST /v1/restart` sends a hot restart request (`None`: nothing to restart).
    pub restart: Option<tokio::sync::mpsc::Sender<crate::node::shared::RestartRequest>>,
}

/// Mutations, forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AdminAction {
    Switchover {
        to: Option<String>,
        /// Only if this node is still the active one (compare-and-set).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Only if the epoch is still this one (compare-and-set).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    Failback,
    Maintenance {
        node: String,
        on: bool,
    },
    Drain {
        node: String,
        on: bool,
    },
    /// First step of `standin member add`: the member joins the table and Raft as a learner.
    MemberLearner {
        member: crate::config::Member,
    },
    /// Second step: a caught-up learner becomes a voter.
    MemberVoter {
        id: String,
    },
    /// `standin member remove`: out of Raft, then out of the table.
    MemberRemove {
        id: String,
    },
    /// The membership as the leader sees it (a read: answered with a [`MembersView`]).
    Members,
    /// `standin deploy`: a new version of the service (or an earlier one) goes out, node by
    /// node. Answered with a [`DeployPlan`].
    Deploy(DeployRequest),
    /// `standin config set/apply/rollback`: the cluster settings become `text` (validated on
    /// the leader against its own configuration), if they are still at version `base`.
    Settings {
        text: String,
        change: String,
        by: String,
        base: u64,
    },
    /// `standin drill`: a run's acceptance record, or an operator's confirmation of one.
    Drill(crate::cluster::drills::DrillCmd),
}

/// `GET /v1/config`: a node's effective configuration (secrets redacted) and the cluster
/// settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigView {
    pub node: String,
    /// The digest of the effective configuration.
    pub digest: String,
    /// The digests of the sections every member should share (`config-drift`).
    pub shared: std::collections::BTreeMap<String, String>,
    /// The effective configuration: the file, its live reloads, the cluster settings.
    pub config: serde_json::Value,
    /// Every version of the cluster settings (the last is in effect).
    pub settings: Vec<crate::cluster::change::SettingsVersion>,
}

/// What `standin deploy` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeployRequest {
    /// What the new version changes from the current one (empty with `target`).
    #[serde(default)]
    pub changes: crate::cluster::change::ServiceOverlay,
    #[serde(default)]
    pub label: Option<String>,
    /// Deploy this existing version instead (`standin deploy rollback N`).
    #[serde(default)]
    pub target: Option<u64>,
    #[serde(default)]
    pub strategy: crate::cluster::change::Strategy,
    #[serde(default)]
    pub step_timeout_ms: Option<u64>,
    #[serde(default)]
    pub watch_ms: Option<u64>,
    #[serde(default)]
    pub drain_ms: Option<u64>,
    /// Who asks (as the client says).
    #[serde(default)]
    pub by: Option<String>,
    /// Only answer with the plan.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a deploy request: what will happen (or, with `dry_run`, would).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployPlan {
    pub dry_run: bool,
    /// The deploy started (`None` for a dry run).
    pub deploy: Option<u64>,
    pub from: u64,
    /// The version going out (for a new version, its number once created; a dry run shows
    /// the number it would get).
    pub to: u64,
    pub label: String,
    /// What the version sets, in one line.
    pub spec: String,
    pub strategy: crate::cluster::change::Strategy,
    /// Nodes in order, each with what happens to it.
    pub steps: Vec<String>,
    pub times: crate::cluster::change::DeployTimes,
    pub message: String,
}

/// `GET /v1/deploy`: versions, the deploy under way, and each data node's version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployView {
    pub current: u64,
    pub deploy: Option<crate::cluster::change::Deploy>,
    pub nodes: Vec<DeployNode>,
    pub versions: Vec<crate::cluster::change::ServiceVersion>,
    pub history: Vec<crate::cluster::change::DeployRecord>,
}

/// One data node in [`DeployView`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployNode {
    pub id: String,
    pub desired: u64,
    pub running: u64,
    pub healthy: bool,
    pub active: bool,
    pub drain: bool,
}

/// The change-control view of this node's replicated state.
pub fn deploy_view(cluster: &Cluster) -> DeployView {
    let members = cluster.members();
    cluster.sm.read(|d| DeployView {
        current: d.change.current(),
        deploy: d.change.deploy.clone(),
        nodes: members
            .iter()
            .filter(|m| m.kind == crate::config::NodeKind::Data)
            .map(|m| {
                let rec = d.state.nodes.get(&m.id);
                DeployNode {
                    id: m.id.clone(),
                    desired: d.change.desired_of(&m.id),
                    running: d.change.running_of(&m.id),
                    healthy: rec.is_some_and(|r| r.healthy),
                    active: d.state.active.as_deref() == Some(m.id.as_str()),
                    drain: rec.is_some_and(|r| r.drain),
                }
            })
            .collect(),
        versions: d.change.versions.iter().cloned().collect(),
        history: d.change.history.iter().cloned().collect(),
    })
}

/// The default watch window: long enough for every check to fail `fall` times (and the
/// report to arrive), at least 2 s.
fn default_watch(config: &Config) -> u64 {
    let longest = config
        .checks
        .iter()
        .map(|c| {
            let probes = c.fall.saturating_add(1);
            c.interval.saturating_mul(probes).saturating_mul(2) + c.timeout
        })
        .max()
        .unwrap_or_default();
    u64::try_from(longest.as_millis()).unwrap_or(u64::MAX).max(2000)
}

/// Leader side of `standin deploy`.
async fn start_deploy(config: &Config, cluster: &Cluster, req: DeployRequest) -> Result<String, AdminError> {
    use crate::cluster::change::{ChangeCmd, DeployTimes, ServiceVersion, Strategy};
    let limit = |what: &str, v: Option<u64>, default: u64, max: u64| -> Result<u64, AdminError> {
        let v = v.unwrap_or(default);
        if v > max {
            return Err(AdminError::Invalid(format!("{what} must be at most {max} ms")));
        }
        Ok(v)
    };
    const HOUR: u64 = 3_600_000;
    let times = DeployTimes {
        step_timeout_ms: limit("step-timeout", req.step_timeout_ms, 60_000, HOUR)?.max(1000),
        watch_ms: limit("watch", req.watch_ms, default_watch(config), HOUR)?,
        drain_ms: limit(
            "drain-time",
            req.drain_ms,
            if req.strategy == Strategy::Balance {
                2000
            } else {
                0
            },
            HOUR,
        )?,
    };
    if times.watch_ms.saturating_add(times.drain_ms) >= times.step_timeout_ms {
        return Err(AdminError::Invalid(format!(
            "the step timeout ({} ms) must be longer than the watch window ({} ms) plus the drain time ({} ms): raise --step-timeout",
            times.step_timeout_ms, times.watch_ms, times.drain_ms
        )));
    }
    if config
        .service
        .as_ref()
        .is_some_and(|s| s.mode == crate::config::ServiceMode::Warm)
    {
        return Err(AdminError::Refused(
            "the service runs in warm mode (started on promotion only): a standby would never run the new version before it takes the role, so a deploy cannot test it; change the files and restart the nodes".into(),
        ));
    }
    let label = req.label.clone().unwrap_or_default();
    if label.len() > crate::cluster::change::MAX_LABEL || label.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "label: at most {} printable characters",
            crate::cluster::change::MAX_LABEL
        )));
    }
    let by: String = req
        .by
        .clone()
        .unwrap_or_else(|| "api".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(crate::cluster::change::MAX_NOTE)
        .collect();
    req.changes.validate().map_err(AdminError::Invalid)?;
    let (state, change) = cluster.sm.read(|d| (d.state.clone(), d.change.clone()));
    if let Some(d) = &change.deploy {
        return Err(AdminError::Refused(format!(
            "deploy {} (version {} -> {}) is under way",
            d.id, d.from, d.to
        )));
    }
    let order = crate::cluster::state::plan(&cluster.members(), &state).map_err(AdminError::Refused)?;
    let from = change.current();
    let (version, target, to, overlay) = match req.target {
        Some(t) => {
            if !req.changes.is_empty() {
                return Err(AdminError::Invalid(
                    "deploy an existing version or a change, not both".into(),
                ));
            }
            if t != 1 && change.version(t).is_none() {
                return Err(AdminError::Invalid(format!("there is no version {t}")));
            }
            if t == from {
                return Err(AdminError::Refused(format!("version {t} is the current one")));
            }
            (None, Some(t), t, change.overlay(t))
        }
        None => {
            if req.changes.is_empty() {
                return Err(AdminError::Invalid(
                    "nothing to deploy: name a change (--env, --arg, --command, --workdir, --file)".into(),
                ));
            }
            let overlay = change.overlay(from).then(&req.changes);
            if overlay == change.overlay(from) {
                return Err(AdminError::Refused(format!(
                    "the change makes no difference to the current version {from}"
                )));
            }
            let to = change.next_version();
            let v = ServiceVersion {
                number: 0,
                label: label.clone(),
                overlay: overlay.clone(),
                by: by.clone(),
                at_unix_ms: 0,
                outcome: None,
            };
            (Some(Box::new(v)), None, to, overlay)
        }
    };
    let steps = order
        .iter()
        .map(|n| {
            let mut s = String::new();
            if state.active.as_deref() == Some(n.as_str()) {
                s.push_str("switch the role to an updated standby, then ");
            }
            if req.strategy == Strategy::Balance {
                s.push_str("drain, ");
            }
            s.push_str(&format!(
                "restart {n} on version {to}, watch it healthy for {} ms",
                times.watch_ms
            ));
            if req.strategy == Strategy::Balance {
                s.push_str(", put it back");
            }
            s
        })
        .collect();
    let mut plan = DeployPlan {
        dry_run: req.dry_run,
        deploy: None,
        from,
        to,
        label,
        spec: overlay.summary(),
        strategy: req.strategy,
        steps,
        times,
        message: String::new(),
    };
    if !req.dry_run {
        let r = cluster
            .write_local(Command::Change(ChangeCmd::Start {
                version,
                target,
                strategy: req.strategy,
                plan: order,
                times,
                by,
                at: unix_ms(),
            }))
            .await?;
        if !r.ok {
            return Err(AdminError::Refused(r.message));
        }
        plan.deploy = cluster.sm.read(|d| d.change.deploy.as_ref().map(|d| d.id));
        plan.to = cluster.sm.read(|d| d.change.deploy.as_ref().map_or(to, |d| d.to));
        plan.message = r.message;
    } else {
        plan.message = "dry run: nothing changed".into();
    }
    serde_json::to_string(&plan).map_err(|e| AdminError::Refused(e.to_string()))
}

use crate::cluster::members::{MemberError, MembersView};

impl From<MemberError> for AdminError {
    fn from(e: MemberError) -> Self {
        match e {
            MemberError::Refused(m) => AdminError::Refused(m),
            MemberError::NotYet(m) => AdminError::Cluster(ClusterError::Refused {
                reason: m,
                retry: true,
            }),
            MemberError::Cluster(e) => AdminError::Cluster(e),
        }
    }
}

/// The answer to a mutation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminReply {
    pub ok: bool,
    pub message: String,
    /// The epoch when the request was accepted (a switchover completes at a higher one); on a
    /// failed compare-and-set (`ok: false`), the current epoch.
    pub epoch: u64,
    /// On a failed compare-and-set: the current active node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
}

/// The 409 body of a switchover whose `from`/`epoch` no longer match: the error and the
/// current values, so the caller can decide whether its request was already carried out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreconditionFailed {
    pub error: String,
    pub retry: bool,
    pub active: Option<String>,
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
            AdminError::Cluster(e) => match e {
                ClusterError::NotLeader { .. }
                | ClusterError::LeaderUnreachable { .. }
                | ClusterError::Refused { retry: true, .. } => StatusCode::SERVICE_UNAVAILABLE,
                ClusterError::Refused { retry: false, .. } => StatusCode::CONFLICT,
                ClusterError::DiskLow { .. } => StatusCode::INSUFFICIENT_STORAGE,
                ClusterError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
                ClusterError::Raft(_) | ClusterError::Storage(_) | ClusterError::DataFormat(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
        }
    }
}

use serve::error_response;

/// `GET /` and `/dashboard`: the web dashboard, built into the binary (no external assets).
async fn dashboard_handler() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

/// Serves the admin API until `cancel` fires, with the budgets of `[api]` (see [`serve`]).
///
/// With `[api] tls` it speaks HTTPS only; the certificate files are checked when the config
/// loads, so failing to load them here (changed in between) is logged and nothing is served.
pub async fn serve(listener: TcpListener, node: Arc<AdminContext>, cancel: CancellationToken) {
    let cfg = &node.config.api;
    let limits = serve::Limits {
        header_read_timeout: cfg.header_read_timeout,
        max_connections: cfg.max_connections,
        large_body: Some(serve::LargeBody {
            path: "/v1/restore/chunk",
            max: crate::cluster::backup::MAX_CHUNK_BODY,
            // The token as the guard checks it, read live (a reload applies at once); with no
            // token configured the API is open (loopback or `insecure-open` only).
            allowed: {
                let live = node.live.clone();
                Arc::new(move |headers: &hyper::HeaderMap| {
                    let config = live.get();
                    let Some(token) = config.api.resolved_token.as_deref() else {
                        return true;
                    };
                    headers
                        .get(hyper::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .is_some_and(|g| {
                            crate::config::rules::secret_eq(g.trim().as_bytes(), token.as_bytes())
                        })
                })
            },
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
        }),
    };
    let tls = match cfg.tls_files(&node.config.tls) {
        // The node's own certificate: the same material the transport uses, reloaded with it
        // (every 2 s and on SIGHUP).
        Some(_) if cfg.tls_cert.is_none() && node.tls.is_some() => node.tls.clone(),
        Some(files) => match crate::tls::Tls::load(files, None) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the admin API certificate; the admin API is not served");
                return;
            }
        },
        None => {
            let admin = node.config.me().admin;
            if !admin.ip().is_loopback() {
                // The token, and everything else, crosses the network readable by anyone on
                // the path.
                tracing::warn!(%admin, "the admin API speaks plain HTTP on a non-loopback address; set [api] tls = true");
            }
            None
        }
    };
    serve::serve_with(listener, router(node), limits, tls, cancel).await;
}

/// The admin API's access rules: `[api]` token and read-open, CORS for the members' admin
/// origins only.
fn admin_guard(cfg: &crate::config::Config) -> guard::Guard {
    guard::Guard {
        token: cfg.api.resolved_token.clone(),
        read_open: cfg.api.read_open,
        // The dashboard page holds no data (it asks for it with the token the operator types);
        // `/v1/lease` is the managed service's local contract; the role checks are for load
        // balancers, which send no token.
        open_paths: &[
            "/v1/lease",
            "/v1/role/active",
            "/v1/role/standby",
            "/",
            "/dashboard",
        ],
        origins: guard::Guard::origins_of(cfg.api.scheme(), cfg.members.iter().map(|m| m.admin)),
        scheme: cfg.api.scheme(),
        hosts: cfg.api.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

/// The admin API's access rules of the configuration in effect now: built again after a
/// reload changed it (an old token is refused from the next request on), shared otherwise.
struct LiveGuard {
    live: crate::config::Live,
    /// The configuration the guard was built from, and the guard.
    built: std::sync::Mutex<(Arc<Config>, Arc<guard::Guard>)>,
}

impl LiveGuard {
    fn new(live: crate::config::Live) -> LiveGuard {
        let config = live.get();
        let g = Arc::new(admin_guard(&config));
        LiveGuard {
            live,
            built: std::sync::Mutex::new((config, g)),
        }
    }

    fn current(&self) -> Arc<guard::Guard> {
        let config = self.live.get();
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&built.0, &config) {
            *built = (config.clone(), Arc::new(admin_guard(&config)));
        }
        built.1.clone()
    }
}

/// The guard middleware with the rules in effect now.
async fn live_guard(
    State(g): State<Arc<LiveGuard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    guard::guard(State(g.current()), req, next).await
}

/// The admin API's routes and middleware.
fn router(node: Arc<AdminContext>) -> Router {
    let watchers = Arc::new(tokio::sync::Semaphore::new(
        (node.config.api.max_connections / 2).max(1),
    ));
    Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/events", get(events_handler))
        .route("/v1/lease", get(lease_handler))
        .route(
            "/v1/role/active",
            get(|State(node): State<Arc<AdminContext>>| role_handler(node, RoleCheck::Active)),
        )
        .route(
            "/v1/role/standby",
            get(|State(node): State<Arc<AdminContext>>| role_handler(node, RoleCheck::Standby)),
        )
        .route("/v1/switchover", post(switchover_handler))
        .route("/v1/failback", post(failback_handler))
        .route("/v1/maintenance", post(maintenance_handler))
        .route("/v1/drain", post(drain_handler))
        .route("/v1/reload", post(reload_handler))
        .route("/v1/restart", post(restart_handler))
        .route("/v1/daemon", get(daemon_handler))
        .route("/v1/deploy", get(deploy_get_handler).post(deploy_post_handler))
        .route("/v1/config", get(config_get_handler))
        .route("/v1/config/settings", post(settings_handler))
        .route("/v1/members", get(members_handler).post(member_add_handler))
        .route("/v1/members/:id", axum::routing::delete(member_remove_handler))
        .route("/v1/members/:id/voter", post(member_voter_handler))
        .route(
            "/v1/watch",
            get(move |State(node): State<Arc<AdminContext>>| watch_handler(node, watchers.clone())),
        )
        .route("/v1/drill/fault", get(drill::fault_get).post(drill::fault_post))
        .route("/v1/logs", get(drill::logs_get))
        .route("/v1/drills", get(drill::records_get).post(drill::record_post))
        .route("/v1/drills/begin", post(drill::begin_post))
        .route("/v1/drills/:id", get(drill::record_get))
        .route("/v1/drills/:id/confirm", post(drill::confirm_post))
        .route("/v1/backup", get(backup::export_handler))
        .route("/v1/backup/digest", get(backup::digest_handler))
        .route("/v1/backup/status", get(backup::status_handler))
        .route("/v1/backup/report", post(backup::report_handler))
        .route("/v1/restore/begin", post(backup::begin_handler))
        .route(
            "/v1/restore/chunk",
            post(backup::chunk_handler).layer(axum::extract::DefaultBodyLimit::max(
                crate::cluster::backup::MAX_CHUNK_BODY,
            )),
        )
        .route("/v1/restore/commit", post(backup::commit_handler))
        .route("/v1/restore/abort", post(backup::abort_handler))
        .route("/metrics", get(metrics_handler))
        .route("/", get(dashboard_handler))
        .route("/dashboard", get(dashboard_handler))
        .fallback(serve::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(LiveGuard::new(node.live.clone())),
            live_guard,
        ))
        .with_state(node)
}

async fn status_handler(State(node): State<Arc<AdminContext>>) -> Json<Status> {
    Json(node.status.cluster_status().await)
}

/// Events per `/v1/events` answer unless `limit` says otherwise.
pub const EVENTS_DEFAULT_LIMIT: usize = 100;
/// Most events per `/v1/events` answer.
pub const EVENTS_MAX_LIMIT: usize = 2000;

/// Which events `/v1/events` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    /// Only events with a sequence number of at least this, oldest first (`since=SEQ` is
    /// `SEQ + 1`; `since=-1` is 0, the very first event).
    pub first_seq: Option<u64>,
    /// Only events at or after this Unix time (ms).
    pub from_unix_ms: u64,
    pub limit: usize,
}

/// Parses `/v1/events`' query: `since=SEQ` (a sequence number: events after it, oldest
/// first; `-1`: from the first event, whose number is 0) or `since=AGE` (a duration such as
/// `10m`: events that recent), and `limit=N`
/// (default [`EVENTS_DEFAULT_LIMIT`], at most [`EVENTS_MAX_LIMIT`]). Without `since` the
/// newest `limit` events are returned. Unknown parameters are refused.
pub fn parse_events_query(uri: &axum::http::Uri, now_unix_ms: u64) -> Result<EventsPage, String> {
    let mut page = EventsPage {
        first_seq: None,
        from_unix_ms: 0,
        limit: EVENTS_DEFAULT_LIMIT,
    };
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| format!("invalid query: {}", e.body_text()))?;
    for (k, v) in pairs {
        match k.as_str() {
            "since" if v == "-1" => page.first_seq = Some(0),
            "since" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                let seq: u64 = v
                    .parse()
                    .map_err(|_| format!("invalid `since`: {v:?} is not a sequence number"))?;
                // Nothing comes after the largest sequence number.
                page.first_seq = Some(seq.saturating_add(1));
                if seq == u64::MAX {
                    page.limit = 0;
                }
            }
            "since" => {
                let d = humantime::parse_duration(&v).map_err(|e| {
                    format!("invalid `since`: {e} (a sequence number, or an age such as 30s, 10m, 2h)")
                })?;
                page.from_unix_ms =
                    now_unix_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
            "limit" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("invalid `limit`: {v:?} is not a number"))?;
                if n == 0 || n > EVENTS_MAX_LIMIT {
                    return Err(format!(
                        "invalid `limit`: must be between 1 and {EVENTS_MAX_LIMIT}"
                    ));
                }
                page.limit = n;
            }
            other => return Err(format!("unknown query parameter `{other}` (since, limit)")),
        }
    }
    Ok(page)
}

/// The events of `page`, oldest first: after a sequence number, the first `limit` of them
/// (so a client pages forward with the last `seq` it got); otherwise the newest `limit`.
pub fn select_events<'a>(
    events: impl DoubleEndedIterator<Item = &'a Event>,
    page: &EventsPage,
) -> Vec<Event> {
    let keep = |e: &&Event| page.first_seq.is_none_or(|s| e.seq >= s) && e.at_unix_ms >= page.from_unix_ms;
    if page.first_seq.is_some() {
        events.filter(keep).take(page.limit).cloned().collect()
    } else {
        let mut newest: Vec<Event> = events.rev().filter(keep).take(page.limit).cloned().collect();
        newest.reverse();
        newest
    }
}

async fn events_handler(State(node): State<Arc<AdminContext>>, uri: axum::http::Uri) -> Response {
    let page = match parse_events_query(&uri, unix_ms()) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e, false),
    };
    let events = node
        .cluster
        .sm
        .read(|d| select_events(d.state.events.iter(), &page));
    Json(events).into_response()
}

/// What this node is doing now, by its own role watch: `active` only while it holds an
/// unexpired lease (with the time left), else `promoting` or `standby`.
fn acting_now(local: &LocalRole, now: Instant) -> (&'static str, Option<u64>) {
    match local.acting {
        Acting::Active => match local.lease_until {
            Some(until) if until > now => ("active", Some(until.duration_since(now).as_millis() as u64)),
            _ => ("standby", None),
        },
        Acting::Promoting => ("promoting", None),
        Acting::Standby => ("standby", None),
    }
}

/// Which role a `/v1/role/...` health check asks about.
#[derive(Clone, Copy)]
enum RoleCheck {
    Active,
    Standby,
}

/// `GET /v1/role/active` and `GET /v1/role/standby` (HEAD too): 200 while this node is in
/// that role, 503 otherwise, for a load balancer's health check (Patroni's `/primary` and
/// `/replica`). Active means holding an unexpired lease right now (the same test `/v1/lease`
/// uses); standby means a data node that is not acting, whose own checks pass, and that is
/// neither in maintenance nor drained. A balancer learns of a change only at its next check,
/// so this is not fencing: the old node may get requests until then (see the README). Open
/// like `/v1/lease`: a balancer sends no token, and the answer says only the role.
async fn role_handler(node: Arc<AdminContext>, want: RoleCheck) -> Response {
    let local = *node.local.borrow();
    let (acting, _) = acting_now(&local, Instant::now());
    let is = match want {
        RoleCheck::Active => acting == "active",
        RoleCheck::Standby => {
            let me = node.cluster.me();
            let own = node.status.own_status();
            acting == "standby"
                && own.nodes.iter().any(|n| {
                    n.id == me && n.kind == NodeKind::Data && n.healthy && !n.maintenance && !n.drain
                })
        }
    };
    let body = serde_json::json!({
        "node": node.cluster.me(),
        "role": acting,
        "epoch": local.epoch,
    });
    let code = if is {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn lease_handler(State(node): State<Arc<AdminContext>>) -> Json<LeaseStatus> {
    let local = *node.local.borrow();
    let now = Instant::now();
    let (role, remaining) = acting_now(&local, now);
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
        vip: node
            .vip_held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|v| v.to_string()),
    })
}

/// `POST /v1/switchover`: every field optional; `{}` means "the best standby, now".
#[derive(Debug, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverBody {
    #[serde(alias = "target")]
    pub to: Option<String>,
    /// Refuse (409) unless this node is the active one when the request is committed.
    pub from: Option<String>,
    /// Refuse (409) unless the epoch is this one when the request is committed.
    pub epoch: Option<u64>,
}

/// The body must be a JSON object of [`SwitchoverBody`]: an empty body is refused, so only
/// an explicit `{}` asks for the best standby (a request that lost its body never moves the
/// role).
pub fn parse_switchover_body(body: &[u8]) -> Result<SwitchoverBody, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "invalid switchover request: the body is empty; send a JSON object: {\"to\": \"b\"}, or {} for the best standby"
                .into(),
        );
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid switchover request: {e}"))
}

#[derive(Deserialize)]
struct MaintenanceBody {
    node: String,
    on: bool,
}

async fn switchover_handler(State(node): State<Arc<AdminContext>>, body: axum::body::Bytes) -> Response {
    let b = match parse_switchover_body(&body) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e, false),
    };
    admin(
        &node,
        AdminAction::Switchover {
            to: b.to,
            from: b.from,
            epoch: b.epoch,
        },
    )
    .await
}

/// `GET /v1/members`: the membership as the leader sees it (with each member's replication
/// progress), or as this node does when no leader answers.
async fn members_handler(State(node): State<Arc<AdminContext>>) -> Response {
    let body = match serde_json::to_string(&AdminAction::Members) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
    };
    let view = match forward_admin_raw(&node, &body).await {
        Ok(json) => serde_json::from_str::<MembersView>(&json).ok(),
        Err(_) => None,
    };
    let mut view = view.unwrap_or_else(|| node.cluster.members_view());
    // Drift is about the config file of the node asked.
    view.drift = crate::cluster::members::drift(&node.config.members, &node.cluster.members());
    Json(view).into_response()
}

/// `GET /v1/config`: see [`ConfigView`].
async fn config_get_handler(State(node): State<Arc<AdminContext>>) -> Response {
    let config = node.live.get();
    Json(ConfigView {
        node: node.cluster.me().to_string(),
        digest: config.digest(),
        shared: config.shared_digests(),
        config: config.redacted_json(),
        settings: node
            .cluster
            .sm
            .read(|d| d.change.settings.iter().cloned().collect()),
    })
    .into_response()
}

/// `POST /v1/config/settings` with `{"text", "change", "by", "base"}`: new cluster settings.
async fn settings_handler(State(node): State<Arc<AdminContext>>, body: axum::body::Bytes) -> Response {
    #[derive(Deserialize)]
    struct Body {
        text: String,
        #[serde(default)]
        change: String,
        #[serde(default)]
        by: String,
        base: u64,
    }
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid settings request: {e}"),
                false,
            )
        }
    };
    admin(
        &node,
        AdminAction::Settings {
            text: b.text,
            change: b.change,
            by: b.by,
            base: b.base,
        },
    )
    .await
}

/// `GET /v1/deploy`: see [`DeployView`] (every node has the same replicated state).
async fn deploy_get_handler(State(node): State<Arc<AdminContext>>) -> Response {
    Json(deploy_view(&node.cluster)).into_response()
}

/// `POST /v1/deploy` with a [`DeployRequest`]: starts a deploy on the leader (through any
/// node); answered with the [`DeployPlan`].
async fn deploy_post_handler(State(node): State<Arc<AdminContext>>, body: axum::body::Bytes) -> Response {
    let req: DeployRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid deploy request: {e}"),
                false,
            )
        }
    };
    if let Err(e) = req.changes.validate() {
        return error_response(StatusCode::BAD_REQUEST, e, false);
    }
    let body = match serde_json::to_string(&AdminAction::Deploy(req)) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
    };
    match forward_admin_raw(&node, &body).await {
        Ok(json) => match serde_json::from_str::<DeployPlan>(&json) {
            Ok(plan) => Json(plan).into_response(),
            Err(e) => error_response(
                StatusCode::BAD_GATEWAY,
                format!("bad reply from leader: {e}"),
                true,
            ),
        },
        Err(e) => error_response(e.status(), e.to_string(), e.retryable()),
    }
}

/// `POST /v1/members` with a member (as a `[[member]]` in JSON): adds it as a learner.
async fn member_add_handler(State(node): State<Arc<AdminContext>>, body: axum::body::Bytes) -> Response {
    let member: crate::config::Member = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid member: {e}"), false),
    };
    admin(&node, AdminAction::MemberLearner { member }).await
}

/// `POST /v1/members/{id}/voter`: a caught-up learner becomes a voter (503 while it catches up).
async fn member_voter_handler(
    State(node): State<Arc<AdminContext>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    admin(&node, AdminAction::MemberVoter { id }).await
}

/// `DELETE /v1/members/{id}`: removes a member (not the active node: switch over first).
async fn member_remove_handler(
    State(node): State<Arc<AdminContext>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    admin(&node, AdminAction::MemberRemove { id }).await
}

async fn failback_handler(State(node): State<Arc<AdminContext>>) -> Response {
    admin(&node, AdminAction::Failback).await
}

async fn maintenance_handler(
    State(node): State<Arc<AdminContext>>,
    Json(b): Json<MaintenanceBody>,
) -> Response {
    admin(
        &node,
        AdminAction::Maintenance {
            node: b.node,
            on: b.on,
        },
    )
    .await
}

async fn drain_handler(State(node): State<Arc<AdminContext>>, Json(b): Json<MaintenanceBody>) -> Response {
    admin(
        &node,
        AdminAction::Drain {
            node: b.node,
            on: b.on,
        },
    )
    .await
}

/// `POST /v1/reload`: what SIGHUP does, asked over the API (`standin reload`): reload the TLS
/// files, read the configuration file again and apply what changes live. 200 with the
/// [`ReloadReport`] when the file is valid (`unchanged`, `applied` with the sections now in
/// effect, and/or `needs-restart` with those that differ until a restart), 422 naming the key
/// when it is not (nothing changes), 409 when the node was started without a file. Either way
/// the outcome is recorded in the event history first (best effort, bounded).
///
/// [`ReloadReport`]: crate::config::ReloadReport
async fn reload_handler(State(node): State<Arc<AdminContext>>) -> Response {
    let Some(path) = node.config_path.clone() else {
        return error_response(
            StatusCode::CONFLICT,
            "this node was started without a configuration file".into(),
            false,
        );
    };
    let report = {
        let (live, tls) = (node.live.clone(), node.tls.clone());
        // Reading files (the config, the certificates) blocks: off the async workers.
        match tokio::task::spawn_blocking(move || live.reload(&path, tls.as_deref())).await {
            Ok(r) => r,
            Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
        }
    };
    node.cluster.record_reload(&report).await;
    if report.outcome == crate::config::ReloadOutcome::Rejected {
        let mut body = serde_json::json!({
            "error": report.error.clone().unwrap_or_default(),
            "retry": false,
        });
        body["report"] = serde_json::to_value(&report).unwrap_or_default();
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    Json(report).into_response()
}

/// `POST /v1/restart`: a hot restart of this node's daemon (`standin restart`, SIGUSR2). 202
/// once the new program passed its preflight (the hand-over then begins: watch `GET
/// /v1/daemon` for `hot_restarts`); 422 with the reason when it did not (nothing changed,
/// this program keeps running); 409 when this process cannot be restarted.
async fn restart_handler(State(node): State<Arc<AdminContext>>) -> Response {
    let Some(restart) = node.restart.clone() else {
        return error_response(
            StatusCode::CONFLICT,
            "this node cannot be hot-restarted".into(),
            false,
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if restart
        .send(crate::node::shared::RestartRequest { reply })
        .await
        .is_err()
    {
        return error_response(StatusCode::CONFLICT, "the node is stopping".into(), false);
    }
    match answer.await {
        Ok(Ok(message)) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "message": message })),
        )
            .into_response(),
        Ok(Err(why)) => error_response(StatusCode::UNPROCESSABLE_ENTITY, why, false),
        Err(_) => error_response(StatusCode::CONFLICT, "the node is stopping".into(), false),
    }
}

/// `GET /v1/daemon`: the daemon process behind this node (pid, version, hot restarts).
async fn daemon_handler(State(node): State<Arc<AdminContext>>) -> Json<crate::node::shared::DaemonInfo> {
    Json(node.daemon.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
async fn metrics_handler(State(node): State<Arc<AdminContext>>) -> Response {
    match metrics::render(&node) {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
    }
}

/// Shortest gap between two `/v1/watch` events (bursts of commits are coalesced).
const WATCH_MIN_GAP: Duration = Duration::from_millis(10);
/// Longest gap: an unchanged view is sent again this often (reachability and lag move on
/// their own, and the client learns the stream is alive).
const WATCH_MAX_GAP: Duration = Duration::from_secs(1);

/// `GET /v1/watch`: server-sent events, `event: status` with this node's own view as JSON
/// (not the leader's: it keeps working while this node is cut off, marked `stale`). Sent on
/// connect, on every newly applied entry (at most every 10 ms) and at least every second.
///
/// Streams keep their connection busy for as long as they run, so at most half of
/// `[api] max-connections` may be open at once (more get a 503 to retry): the other half stays
/// for operators' calls.
async fn watch_handler(node: Arc<AdminContext>, watchers: Arc<tokio::sync::Semaphore>) -> Response {
    let Ok(permit) = watchers.try_acquire_owned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many /v1/watch streams on this node; retry, or watch another node".into(),
            true,
        );
    };
    let applied = node.cluster.sm.subscribe();
    let stream = futures::stream::unfold(
        (node, applied, None::<tokio::time::Instant>, permit),
        |(node, mut applied, last, permit)| async move {
            if let Some(last) = last {
                tokio::time::sleep_until(last + WATCH_MIN_GAP).await;
                // A change, or the longest gap passed. An error: the state machine is gone (the
                // node is shutting down).
                if let Ok(Err(_)) = tokio::time::timeout_at(last + WATCH_MAX_GAP, applied.changed()).await {
                    return None;
                }
                applied.borrow_and_update();
            }
            let status = node.status.own_status();
            let data = serde_json::to_string(&status).unwrap_or_default();
            let event = axum::response::sse::Event::default().event("status").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (node, applied, Some(tokio::time::Instant::now()), permit),
            ))
        },
    );
    axum::response::sse::Sse::new(stream).into_response()
}

pub(crate) async fn admin(node: &Arc<AdminContext>, action: AdminAction) -> Response {
    // Bad requests are refused here, whichever node gets them.
    if let Err(e) = validate_admin(&node.cluster.members(), &action) {
        return error_response(e.status(), e.to_string(), false);
    }
    let body = match serde_json::to_string(&action) {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
    };
    match forward_admin(node, &body).await {
        Ok(reply) if !reply.ok => (
            StatusCode::CONFLICT,
            Json(PreconditionFailed {
                error: reply.message,
                retry: false,
                active: reply.active,
                epoch: reply.epoch,
            }),
        )
            .into_response(),
        Ok(reply) => Json(reply).into_response(),
        Err(e) => error_response(e.status(), e.to_string(), e.retryable()),
    }
}

/// Runs an admin action on the leader (here, or forwarded).
async fn forward_admin(node: &Arc<AdminContext>, body: &str) -> Result<AdminReply, AdminError> {
    let json = forward_admin_raw(node, body).await?;
    serde_json::from_str(&json).map_err(|e| AdminError::Refused(format!("bad reply from leader: {e}")))
}

/// Runs an admin action on the leader (here, or forwarded); its JSON answer.
async fn forward_admin_raw(node: &Arc<AdminContext>, body: &str) -> Result<String, AdminError> {
    let info = node.cluster.info();
    let leader = info.leader.ok_or(ClusterError::NotLeader { leader: None })?;
    let json = if leader == node.cluster.me() {
        apply_admin(&node.config, &node.cluster, body).await?
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
            // Never sent: safe to retry.
            Err(
                e @ (crate::cluster::transport::TransportError::Unreachable { .. }
                | crate::cluster::transport::TransportError::UnknownPeer(_)
                | crate::cluster::transport::TransportError::Encode(_)
                | crate::cluster::transport::TransportError::TooLarge { .. }),
            ) => {
                return Err(AdminError::Cluster(ClusterError::LeaderUnreachable {
                    leader,
                    reason: e.to_string(),
                }))
            }
            // Sent, and the answer was lost: the action may have been committed. Not retried
            // (a retried switchover could move the role twice).
            Err(e) => return Err(AdminError::Cluster(ClusterError::OutcomeUnknown(e.to_string()))),
        }
    };
    Ok(json)
}

/// Checks an action against the live membership (members and their kinds).
fn validate_admin(members: &[crate::config::Member], action: &AdminAction) -> Result<(), AdminError> {
    let data_member = |id: &str| -> Result<(), AdminError> {
        match members.iter().find(|m| m.id == id) {
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
        AdminAction::Switchover { to, from, .. } => {
            if let Some(f) = from {
                data_member(f)?;
            }
            match to {
                Some(t) => data_member(t),
                None => Ok(()),
            }
        }
        AdminAction::Maintenance { node, .. } if !members.iter().any(|m| m.id == *node) => Err(
            AdminError::Invalid(format!("{node} is not a member of the cluster")),
        ),
        AdminAction::Drain { node, .. } => data_member(node),
        AdminAction::MemberLearner { member } => crate::config::check_member(member)
            .map_err(|e| AdminError::Invalid(format!("invalid member: {e}"))),
        AdminAction::Drill(cmd) => crate::cluster::drills::check(cmd).map_err(AdminError::Invalid),
        AdminAction::MemberVoter { id } | AdminAction::MemberRemove { id }
            if !members.iter().any(|m| m.id == *id) =>
        {
            Err(AdminError::Invalid(format!(
                "{id} is not a member of the cluster"
            )))
        }
        _ => Ok(()),
    }
}

/// Leader side of an admin action: validate, commit, answer JSON of [`AdminReply`].
pub async fn apply_admin(config: &Config, cluster: &Cluster, body: &str) -> Result<String, AdminError> {
    let action: AdminAction =
        serde_json::from_str(body).map_err(|e| AdminError::Invalid(format!("bad admin request: {e}")))?;
    validate_admin(&cluster.members(), &action)?;
    let (active, epoch) = cluster.sm.read(|d| (d.state.active.clone(), d.state.epoch));
    let at = unix_ms();
    let done = |message: String| {
        serde_json::to_string(&AdminReply {
            ok: true,
            message,
            epoch,
            active: None,
        })
        .map_err(|e| AdminError::Refused(e.to_string()))
    };
    let (cmd, message) = match action {
        AdminAction::Members => {
            return serde_json::to_string(&cluster.members_view())
                .map_err(|e| AdminError::Refused(e.to_string()))
        }
        AdminAction::Deploy(req) => return start_deploy(config, cluster, req).await,
        AdminAction::Drill(mut cmd) => {
            crate::cluster::drills::check(&cmd).map_err(AdminError::Invalid)?;
            match &mut cmd {
                crate::cluster::drills::DrillCmd::Confirm { at: when, .. }
                | crate::cluster::drills::DrillCmd::Begin { at: when, .. }
                | crate::cluster::drills::DrillCmd::Record { at: when, .. } => *when = at,
            }
            let r = cluster.write_local(Command::Drill(cmd)).await?;
            if !r.ok {
                return Err(AdminError::Refused(r.message));
            }
            return done(r.message);
        }
        AdminAction::Settings {
            text,
            change,
            by,
            base,
        } => {
            config
                .with_settings(&text)
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            let clean = |s: &str| -> String {
                s.chars()
                    .filter(|c| !c.is_control())
                    .take(crate::cluster::change::MAX_NOTE)
                    .collect()
            };
            let r = cluster
                .write_local(Command::Change(crate::cluster::change::ChangeCmd::Settings {
                    text,
                    change: clean(&change),
                    by: clean(&by),
                    base,
                    at,
                }))
                .await?;
            if !r.ok {
                return Err(AdminError::Refused(r.message));
            }
            return done(r.message);
        }
        AdminAction::MemberLearner { member } => return done(cluster.add_learner(member).await?),
        AdminAction::MemberVoter { id } => return done(cluster.promote_learner(&id).await?),
        AdminAction::MemberRemove { id } => {
            return done(cluster.remove_member(&id, active.as_deref()).await?)
        }
        AdminAction::Switchover {
            to,
            from,
            epoch: want,
        } => {
            // Compare-and-set: answered with the current values, and checked again when the
            // command is applied (two identical requests make one switchover).
            let matches =
                from.as_ref().is_none_or(|f| active.as_ref() == Some(f)) && want.is_none_or(|e| e == epoch);
            if !matches {
                return precondition_failed(active, epoch);
            }
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
            let cmd = if from.is_some() || want.is_some() {
                Command::SwitchoverIf {
                    target: to,
                    cause: Cause::Switchover,
                    at,
                    from,
                    epoch: want,
                }
            } else {
                Command::Switchover {
                    target: to,
                    cause: Cause::Switchover,
                    at,
                }
            };
            (cmd, msg)
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
    let conditional = matches!(cmd, Command::SwitchoverIf { .. });
    let r = cluster.write_local(cmd).await?;
    if !r.ok {
        if conditional && r.message.starts_with("precondition failed") {
            let (active, epoch) = cluster.sm.read(|d| (d.state.active.clone(), d.state.epoch));
            return precondition_failed(active, epoch);
        }
        return Err(AdminError::Refused(r.message));
    }
    let reply = AdminReply {
        ok: true,
        message,
        epoch,
        active: None,
    };
    serde_json::to_string(&reply).map_err(|e| AdminError::Refused(e.to_string()))
}

/// A failed compare-and-set, as an answer that reaches the API through a forwarding node
/// (`ok: false` with the current values; the API turns it into a 409).
fn precondition_failed(active: Option<String>, epoch: u64) -> Result<String, AdminError> {
    let reply = AdminReply {
        ok: false,
        message: format!(
            "precondition failed: active is {} at epoch {epoch}",
            active.as_deref().unwrap_or("none")
        ),
        epoch,
        active,
    };
    serde_json::to_string(&reply).map_err(|e| AdminError::Refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The HTTP status of a cluster error follows its variant: retry later (503), refused for
    /// good (409), full disk (507), outcome unknown (504).
    #[test]
    fn cluster_errors_map_to_http_statuses_by_variant() {
        let status = |e: ClusterError| {
            let e = AdminError::Cluster(e);
            (e.status(), e.retryable())
        };
        assert_eq!(
            status(ClusterError::NotLeader { leader: None }),
            (StatusCode::SERVICE_UNAVAILABLE, true)
        );
        assert_eq!(
            status(ClusterError::Refused {
                reason: "shutting down".into(),
                retry: true
            }),
            (StatusCode::SERVICE_UNAVAILABLE, true)
        );
        assert_eq!(
            status(ClusterError::Refused {
                reason: "no".into(),
                retry: false
            }),
            (StatusCode::CONFLICT, false)
        );
        assert_eq!(
            status(ClusterError::DiskLow { free: 1, min: 2 }),
            (StatusCode::INSUFFICIENT_STORAGE, false)
        );
        assert_eq!(
            status(ClusterError::OutcomeUnknown("lost".into())),
            (StatusCode::GATEWAY_TIMEOUT, false)
        );
    }

    fn event(seq: u64, at: u64) -> Event {
        Event {
            seq,
            at_unix_ms: at,
            kind: crate::cluster::state::EventKind::NodeStarted,
            node: None,
            epoch: 0,
            cause: None,
            detail: String::new(),
            duration_ms: None,
        }
    }

    fn query(q: &str) -> Result<EventsPage, String> {
        let uri: axum::http::Uri = format!("/v1/events{q}").parse().expect("uri");
        parse_events_query(&uri, 1_000_000)
    }

    #[test]
    fn switchover_bodies() {
        let ok = |b: &str| parse_switchover_body(b.as_bytes()).expect(b);
        assert_eq!(ok("{}"), SwitchoverBody::default());
        assert_eq!(ok("{\"to\": null}"), SwitchoverBody::default());
        assert_eq!(
            ok(r#"{"target": "b", "from": "a", "epoch": 7}"#),
            SwitchoverBody {
                to: Some("b".into()),
                from: Some("a".into()),
                epoch: Some(7)
            }
        );
        for bad in [
            "",
            " \n",
            "{",
            "null",
            "[]",
            "\"b\"",
            r#"{"to": 1}"#,
            r#"{"epoch": -1}"#,
            r#"{"form": "a"}"#,
            "to=b",
        ] {
            let e = parse_switchover_body(bad.as_bytes()).expect_err(bad);
            assert!(e.starts_with("invalid switchover request"), "{bad}: {e}");
        }
    }

    #[test]
    fn events_queries() {
        let page = |first_seq, from_unix_ms, limit| EventsPage {
            first_seq,
            from_unix_ms,
            limit,
        };
        assert_eq!(query(""), Ok(page(None, 0, EVENTS_DEFAULT_LIMIT)));
        assert_eq!(query("?since=12&limit=5"), Ok(page(Some(13), 0, 5)));
        assert_eq!(query("?since=-1"), Ok(page(Some(0), 0, EVENTS_DEFAULT_LIMIT)));
        assert_eq!(query("?since=18446744073709551615").map(|p| p.limit), Ok(0));
        assert_eq!(query("?since=10s"), Ok(page(None, 990_000, EVENTS_DEFAULT_LIMIT)));
        assert_eq!(query("?limit=2000"), Ok(page(None, 0, 2000)));
        for bad in [
            "?limit=0",
            "?limit=2001",
            "?limit=-1",
            "?limit=x",
            "?since=",
            "?since=-3",
            "?since=-0",
            "?since=99999999999999999999999",
            "?since=fast",
            "?after=3",
        ] {
            assert!(query(bad).is_err(), "{bad}");
        }
        // A huge age reaches back to the beginning, not an overflow.
        assert_eq!(query("?since=500000000y").map(|p| p.from_unix_ms), Ok(0));
    }

    #[test]
    fn events_are_paged_forward_from_a_sequence_number() {
        let events: Vec<Event> = (0..=10).map(|s| event(s, s * 10)).collect();
        let seqs =
            |p: &EventsPage| -> Vec<u64> { select_events(events.iter(), p).iter().map(|e| e.seq).collect() };
        let page = |first_seq, from_unix_ms, limit| EventsPage {
            first_seq,
            from_unix_ms,
            limit,
        };
        assert_eq!(seqs(&page(Some(0), 0, 3)), vec![0, 1, 2]);
        assert_eq!(seqs(&page(Some(4), 0, 4)), vec![4, 5, 6, 7]);
        assert_eq!(seqs(&page(Some(8), 0, 100)), vec![8, 9, 10]);
        assert_eq!(seqs(&page(Some(11), 0, 100)), Vec::<u64>::new());
        // Without a sequence number: the newest, oldest first.
        assert_eq!(seqs(&page(None, 0, 3)), vec![8, 9, 10]);
        assert_eq!(seqs(&page(None, 75, 100)), vec![8, 9, 10]);
    }

    /// Mutations of valid bodies, and arbitrary bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let valid = prop::sample::select(vec![
            r#"{"target": "b", "from": "a", "epoch": 7}"#,
            r#"{"to": "b"}"#,
            r#"{"node": "a", "on": true}"#,
            r#"{"action": "switchover", "to": null}"#,
            r#"{"action": "maintenance", "node": "a", "on": false}"#,
        ]);
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            (valid, any::<usize>(), any::<u8>(), 0usize..3).prop_map(|(v, at, b, how)| {
                let mut v = v.as_bytes().to_vec();
                let at = at % (v.len() + 1);
                match how {
                    0 => v.insert(at, b),
                    1 if at < v.len() => v[at] = b,
                    _ => v.truncate(at),
                }
                v
            }),
            // Deep nesting must be refused by serde_json's recursion limit, not overflow.
            (1usize..5000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Admin API bodies (issue 12 fuzzing): every parser either accepts or refuses with a
        /// message, never panics.
        #[test]
        fn admin_bodies_never_panic(b in body()) {
            let _ = parse_switchover_body(&b);
            let _ = serde_json::from_slice::<AdminAction>(&b);
            let _ = serde_json::from_slice::<MaintenanceBody>(&b);
            let _ = serde_json::from_slice::<crate::address::proxy::config::ListenerConfig>(&b);
            if let Ok(text) = std::str::from_utf8(&b) {
                // What the leader does with a forwarded body before touching any state.
                let _ = serde_json::from_str::<AdminAction>(text);
            }
        }

        /// Query strings of `/v1/events`: parsed or refused, never a panic, and the limit is
        /// always within bounds.
        #[test]
        fn events_queries_never_panic(q in prop_oneof![
            "[ -~]{0,64}",
            ("(since|limit|x)", "[0-9a-z%&=.-]{0,24}").prop_map(|(k, v)| format!("{k}={v}")),
            (any::<u64>(), any::<u64>()).prop_map(|(s, l)| format!("since={s}&limit={l}")),
        ]) {
            if let Ok(uri) = format!("/v1/events?{q}").parse::<axum::http::Uri>() {
                if let Ok(p) = parse_events_query(&uri, unix_ms()) {
                    prop_assert!(p.limit <= EVENTS_MAX_LIMIT);
                }
            }
        }
    }
}
