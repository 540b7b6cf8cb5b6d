//! The node daemon: binds its ports, starts Raft, the transport, the coordinator, the role
//! loop, the service supervisor and health checks, serves the admin API, and shuts all of it
//! down on one cancellation token.
//!
//! ```text
//!   health checks ──transitions──> reporter ──Command::Health──> Raft (leader)
//!   supervisor ────process state──┘                                │ applied state
//!   coordinator (on the leader): ClusterView -> failover::decide -> commands / Elect RPCs
//!   role loop (data nodes): state + lease grants -> promote / demote hooks, service role
//! ```

mod coordinator;
mod lease;
mod reporter;
pub mod role;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::rpc::{Request, Response};
use crate::cluster::transport::{self, Transport};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, NodeKind};
use crate::failstop;
use crate::health::{self};
use crate::service::{self};
use crate::store::replicate::Replicator;

pub mod shared;

pub use shared::{Acting, CoordinatorStatus, LocalRole, Node};

/// Errors that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The TLS files could not be loaded (they were checked when the config loaded, so they
    /// changed since).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The node stopped because it could no longer act (see [`crate::failstop`]); exit with
    /// `code`.
    #[error("stopped: {reason}")]
    Fatal { reason: String, code: i32 },
}

impl NodeError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeError::Fatal { code, .. } => *code,
            NodeError::Tls(_) => crate::config::EXIT_CONFIG,
            NodeError::Cluster(ClusterError::Storage(_)) => failstop::EXIT_STORAGE,
            NodeError::Cluster(ClusterError::DataFormat(_)) => crate::config::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Listeners a node needs, bound before anything else starts.
pub struct Listeners {
    pub admin: TcpListener,
    pub cluster: Vec<TcpListener>,
    /// The Redis-protocol store, if `[store]` is configured.
    pub store: Option<TcpListener>,
}

impl Listeners {
    /// Binds the admin API and every cluster address of this node.
    pub async fn bind(config: &Config) -> Result<Listeners, NodeError> {
        let me = config.me();
        let admin = TcpListener::bind(me.admin)
            .await
            .map_err(|source| NodeError::Bind {
                what: "admin API",
                addr: me.admin,
                source,
            })?;
        let mut cluster = Vec::new();
        for addr in config.node.listen.as_ref().unwrap_or(&me.addresses) {
            cluster.push(TcpListener::bind(addr).await.map_err(|source| NodeError::Bind {
                what: "cluster path",
                addr: *addr,
                source,
            })?);
        }
        let store = match &config.store {
            Some(s) => Some(
                TcpListener::bind(s.listen)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "store",
                        addr: s.listen,
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Listeners {
            admin,
            cluster,
            store,
        })
    }
}

/// How often the TLS files are checked for a change.
const TLS_POLL: Duration = Duration::from_secs(2);

/// Reloads the TLS files when they change (checked every [`TLS_POLL`]) and on SIGHUP (what
/// `systemctl reload` sends), and on SIGHUP also reads the configuration file again: a file
/// that does not validate is reported naming its key and changes nothing; a valid one that
/// differs has its live settings applied to `live` and the rest reported as needing a restart
/// (see `config::reload`); both are recorded as events (`Cluster::record_reload`). New
/// connections use a new certificate; open ones keep theirs, so a rotation interrupts nothing.
/// Files that do not load leave the old ones in use and are reported once. SIGHUP never stops
/// the node.
async fn watch_reload(
    tls: Option<Arc<crate::tls::Tls>>,
    live: crate::config::Live,
    cluster: Cluster,
    path: std::path::PathBuf,
    cancel: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; TLS files are still reloaded when they change");
            None
        }
    };
    let mut tick = tokio::time::interval(TLS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => match &tls {
                Some(tls) => tls.reload_if_changed(),
                None => Ok(false),
            },
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                crate::systemd::reloading();
                tracing::info!("SIGHUP received: reloading TLS files and reading the configuration again");
                let report = live.reload(&path, tls.as_deref());
                crate::systemd::ready("reloaded");
                cluster.record_reload(&report).await;
                continue;
            }
        };
        let Some(tls) = &tls else { continue };
        match result {
            Ok(true) => tracing::info!(
                cert = %tls.files().cert.display(),
                expires_unix = tls.not_after(),
                "TLS certificate reloaded; new connections use it"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the previous ones")
            }
        }
    }
}

/// Runs a node until `shutdown` fires, then stops everything (service included) and returns.
///
/// `config_path` is the file `config` was read from: SIGHUP reads it again (see
/// `watch_reload`).
pub async fn run(
    config: Config,
    config_path: std::path::PathBuf,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let config = Arc::new(config);
    let me = config.me().clone();
    let peers = config
        .members
        .iter()
        .filter(|m| m.id != me.id)
        .map(|m| (m.id.clone(), m.addresses.clone()))
        .collect();
    let tls = match config.tls.files() {
        Some(files) => Some(Arc::new(crate::tls::Tls::load(files, Some(&me.id))?)),
        None => {
            tracing::warn!(
                "[tls] insecure = true: cluster connections are neither encrypted nor authenticated; \
                 anyone who can reach a cluster address can act as a member"
            );
            None
        }
    };
    let transport = Transport::new(
        me.id.clone(),
        peers,
        config.timing.heartbeat_interval,
        config.timing.failure_timeout,
        tls.clone(),
    );
    let cluster = Cluster::start(&config, transport.clone()).await?;
    tracing::info!(node.id = %me.id, kind = %me.kind, "raft started");

    // Internal tasks get their own token so that the service is stopped before Raft goes.
    let tasks = CancellationToken::new();
    let tracker = TaskTracker::new();

    let (transitions_tx, transitions_rx) = tokio::sync::mpsc::unbounded_channel();
    let (health, supervisor) = match (&config.service, me.kind) {
        (Some(svc), NodeKind::Data) => {
            let health = health::spawn_checks(config.checks.clone(), transitions_tx, tasks.clone());
            let sup = service::spawn_supervisor(svc.clone(), me.id.clone(), tasks.clone());
            // A hot service runs on standbys too; a warm one starts on promotion.
            if svc.mode == crate::config::ServiceMode::Hot {
                sup.set_desired(true).await;
            }
            (Some(health), Some(sup))
        }
        _ => (None, None),
    };
    let node = Arc::new(Node::new(
        config.clone(),
        cluster.clone(),
        tls.clone(),
        health,
        supervisor,
    ));
    tracker.spawn(watch_reload(
        tls,
        node.live.clone(),
        cluster.clone(),
        config_path.clone(),
        tasks.clone(),
    ));
    crate::systemd::spawn_watchdog(tasks.clone());
    // READY=1 once a leader is known (the role loop can then decide this node's role), or
    // after the bootstrap wait if none is (no quorum yet: the unit must not time out).
    {
        let cluster = cluster.clone();
        let cancel = tasks.clone();
        let wait = config.timing.bootstrap_wait();
        tracker.spawn(async move {
            let start = tokio::time::Instant::now();
            loop {
                let leader = cluster.info().leader;
                if leader.is_some() || start.elapsed() >= wait {
                    let leader = leader.as_deref().unwrap_or("not yet known").to_string();
                    crate::systemd::ready(&format!("running; raft leader {leader}"));
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
    }
    let maxmemory = config.store.as_ref().map_or(0, |s| s.maxmemory);
    let replicator = crate::store::replicate::Replicator::start(
        cluster.clone(),
        node.metrics.clone(),
        maxmemory,
        tasks.clone(),
    );

    // Peer connections.
    let handler: transport::Handler = {
        let node = node.clone();
        let store = replicator.clone();
        Arc::new(move |from, req| {
            let node = node.clone();
            let store = store.clone();
            async move { handle_peer(&node, &store, from, req).await }.boxed()
        })
    };
    // Peers are served on their own token: on fail-stop they stop hearing us first.
    let peer_token = tasks.child_token();
    for l in listeners.cluster {
        tracker.spawn(transport::serve(
            l,
            transport.clone(),
            handler.clone(),
            peer_token.clone(),
        ));
    }
    transport.spawn_heartbeats(peer_token.clone());
    tracker.spawn(watch_raft(cluster.clone(), tasks.clone()));

    tracker.spawn(crate::api::serve(
        listeners.admin,
        Arc::new(admin_context(&node, Some(config_path.clone()))),
        tasks.clone(),
    ));
    if let (Some(l), Some(cfg)) = (listeners.store, config.store.clone()) {
        tracker.spawn(crate::store::server::serve(
            l,
            store_context(&node),
            cfg,
            replicator,
            tasks.clone(),
        ));
    }
    tracker.spawn(coordinator::run(node.clone(), tasks.clone()));
    tracker.spawn(crate::events::paths::run(
        cluster.clone(),
        config.clone(),
        tasks.clone(),
    ));
    tracker.spawn(crate::events::alarms::run(
        cluster.clone(),
        node.live.clone(),
        node.clone(),
        tasks.clone(),
    ));
    // The role and lease loops stop first on shutdown, so nothing re-promotes while the node
    // steps down.
    let role_token = tasks.child_token();
    let mut role_task = None;
    if node.is_data() {
        tracker.spawn(cluster.clone().run_prevote_gate(peer_token.clone()));
        // On the role token: it stops before the shutdown records this node unhealthy, and
        // must not write it healthy again afterwards.
        tracker.spawn(reporter::run(node.clone(), transitions_rx, role_token.clone()));
        tracker.spawn(lease::run(node.clone(), role_token.clone()));
        role_task = Some(tokio::spawn(role::run(node.clone(), role_token.clone())));
    }
    if let (true, Some(addr)) = (node.is_data(), &config.address) {
        match std::env::current_exe() {
            Ok(binary) => {
                let driver = crate::address::vip::driver::Driver {
                    args: crate::address::vip::KeeperArgs {
                        interface: addr.interface.clone(),
                        vip: addr.vip(),
                        garp_count: addr.garp_count,
                        garp_interval: addr.garp_interval,
                        garp_refresh: addr.garp_refresh,
                    },
                    binary,
                    local: node.local.subscribe(),
                    heartbeat: config.timing.heartbeat_interval,
                    margin: config.timing.lease_margin(),
                    held: node.vip_held.clone(),
                    unreleased: node.vip_unreleased.clone(),
                };
                tracker.spawn(driver.run(tasks.clone()));
            }
            // Without the keeper the VIP is never added: the node runs, the address stays put.
            Err(e) => {
                tracing::error!(error = %e, vip = %addr.vip, "cannot find our own binary to run the vip keeper")
            }
        }
    }
    tracing::info!(node.id = %me.id, admin = %me.admin, "node running");

    let fatal = failstop::token();
    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!(node.id = %me.id, "shutting down"),
        _ = fatal.cancelled() => {
            // Best effort, bounded: put the reason into the replicated history through the
            // leader (a follower's Raft may be dead while the leader is fine). Others raise
            // `node-unreachable` once we are gone either way.
            if let Some((reason, _)) = failstop::reason() {
                let cmd = crate::cluster::Command::Health {
                    node: me.id.clone(),
                    check: reporter::PROCESS_CHECK.into(),
                    healthy: false,
                    detail: format!("fail-stop: {reason}"),
                    at: crate::clock::unix_ms(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), cluster.write(cmd)).await;
            }
            // Peers must see us gone now, and Raft must stop leading, before the (bounded)
            // demotion below: a node that cannot act must not hold the cluster.
            peer_token.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), cluster.shutdown()).await;
        }
    }
    // Stop acting as active first (demote hook, release), then the service.
    role_token.cancel();
    if let Some(t) = role_task {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    role::shutdown(&node).await;
    if let Some(sup) = &node.supervisor {
        sup.shutdown().await;
    }
    tasks.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5 s");
    }
    cluster.shutdown().await;
    match failstop::reason() {
        Some((reason, code)) => Err(NodeError::Fatal { reason, code }),
        None => Ok(()),
    }
}

/// Trips fail-stop when openraft stops on its own (storage error, panic in its core): from
/// then on this node can neither lead nor follow, so it must not look alive.
async fn watch_raft(cluster: Cluster, cancel: CancellationToken) {
    let mut metrics = cluster.raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            let (reason, code) = match fatal {
                openraft::error::Fatal::StorageError(e) => {
                    (format!("raft storage failed: {e}"), failstop::EXIT_STORAGE)
                }
                other => (format!("raft stopped: {other}"), failstop::EXIT_SOFTWARE),
            };
            failstop::trip(reason, code);
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                // The core is gone without saying why; during our own shutdown `cancel` fires
                // first.
                if !cancel.is_cancelled() {
                    failstop::trip("raft stopped".into(), failstop::EXIT_SOFTWARE);
                }
                return;
            },
        }
    }
}

/// The admin API's handles on `node`: what `node::run` serves it with (and an in-process
/// test too, so both wire it the same way).
pub fn admin_context(node: &Arc<Node>, config_path: Option<std::path::PathBuf>) -> crate::api::AdminContext {
    crate::api::AdminContext {
        config_path,
        config: node.config.clone(),
        live: node.live.clone(),
        cluster: node.cluster.clone(),
        tls: node.tls.clone(),
        metrics: node.metrics.clone(),
        status: node.clone(),
        local: node.local.subscribe(),
        health: node.health.clone(),
        supervisor: node.supervisor.clone(),
        handed_out: node.handed_out.clone(),
        vip_held: node.vip_held.clone(),
    }
}

/// The store server's handles on `node`.
pub fn store_context(node: &Arc<Node>) -> crate::store::server::StoreContext {
    crate::store::server::StoreContext {
        config: node.config.clone(),
        cluster: node.cluster.clone(),
        metrics: node.metrics.clone(),
        tls: node.tls.clone(),
        status: node.clone(),
    }
}

/// Answers one request from a peer; `store` serves the store writes and reads other nodes
/// forward to this one while it leads (a witness may lead for a while, so every node has one).
async fn handle_peer(node: &Arc<Node>, store: &Replicator, from: String, req: Request) -> Response {
    if let Request::AppendEntries(_) = &req {
        // Recorded before the request is handled, so the instant precedes our answer.
        node.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from.clone(), Instant::now());
    }
    let req = match node.cluster.handle_raft(&from, req).await {
        Ok(resp) => return resp,
        Err(req) => req,
    };
    match req {
        // A node asks for its own lease only: a grant recorded for another member would hold
        // off that member's failover for as long as the asker keeps asking.
        Request::Lease { node: who, .. } if who != from => {
            tracing::warn!(peer = %from, lease_for = %who, "lease request for another member refused");
            Response::Lease(crate::cluster::rpc::LeaseReply::Refused(format!(
                "{from} cannot ask for a lease for {who}"
            )))
        }
        Request::Lease { node: who, epoch } => Response::Lease(lease::grant(node, &who, epoch).await),
        Request::StoreWrite { ops, kind } => Response::Store(store.write_local(ops, kind, None).await),
        Request::StoreRead { ops } => Response::Store(store.read_local(ops).await),
        Request::LeaseBound { leader, node: who } => {
            Response::LeaseBound(lease::bound_ms_ago(node, &leader, &who))
        }
        Request::Status => match crate::status::build::local_status(node) {
            Ok(s) => Response::Json(s),
            Err(e) => Response::Error {
                message: e,
                retry: true,
            },
        },
        Request::Admin(body) => match crate::api::apply_admin(&node.config, &node.cluster, &body).await {
            Ok(s) => Response::Json(s),
            Err(e) => Response::Error {
                message: e.to_string(),
                retry: e.retryable(),
            },
        },
        other => {
            tracing::warn!(peer = %from, request = ?other, "unexpected request");
            Response::Error {
                message: "unexpected request".into(),
                retry: false,
            }
        }
    }
}
