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
pub mod deploy;
mod lease;
mod reporter;
pub mod restart;
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

/// Close-on-exec duplicates of a node's listening sockets, kept from the start for a hot
/// restart (the serving tasks own and close the originals when they stop).
struct ListenerFds {
    admin: std::os::fd::OwnedFd,
    cluster: Vec<std::os::fd::OwnedFd>,
    store: Option<std::os::fd::OwnedFd>,
}

impl ListenerFds {
    fn dup(l: &Listeners) -> std::io::Result<ListenerFds> {
        use std::os::fd::AsRawFd;
        let dup = |l: &TcpListener| crate::handover::dup(l.as_raw_fd());
        Ok(ListenerFds {
            admin: dup(&l.admin)?,
            cluster: l.cluster.iter().map(dup).collect::<std::io::Result<_>>()?,
            store: l.store.as_ref().map(dup).transpose()?,
        })
    }
}

impl Listeners {
    /// The listeners handed over by the previous program (hot restart), checked against the
    /// addresses `config` asks for (a changed address needs a full restart). The handover's
    /// descriptors are duplicated, so they stay open for a fall-back until the take-over.
    pub fn from_handover(config: &Config, h: &crate::handover::Handover) -> Result<Listeners, String> {
        let take = |fd: std::os::fd::RawFd, what: &str, want: SocketAddr| -> Result<TcpListener, String> {
            let owned = crate::handover::dup(fd).map_err(|e| format!("{what}: {e}"))?;
            let std = std::net::TcpListener::from(owned);
            let have = std.local_addr().map_err(|e| format!("{what}: {e}"))?;
            if have != want && !(want.port() == 0 && have.ip() == want.ip()) {
                return Err(format!(
                    "{what} listens on {have} but the configuration says {want}: an address change needs a full restart"
                ));
            }
            std.set_nonblocking(true).map_err(|e| format!("{what}: {e}"))?;
            TcpListener::from_std(std).map_err(|e| format!("{what}: {e}"))
        };
        let me = config.me();
        let admin = take(h.admin, "admin API", me.admin)?;
        let want: Vec<SocketAddr> = config.node.listen.clone().unwrap_or_else(|| me.addresses.clone());
        if want.len() != h.cluster.len() {
            return Err(format!(
                "{} cluster listeners handed over, the configuration has {}: a full restart is needed",
                h.cluster.len(),
                want.len()
            ));
        }
        let cluster = h
            .cluster
            .iter()
            .zip(&want)
            .map(|(fd, addr)| take(*fd, "cluster path", *addr))
            .collect::<Result<_, _>>()?;
        let store = match (&config.store, h.store) {
            (Some(s), Some(fd)) => Some(take(fd, "store", s.listen)?),
            (None, None) => None,
            _ => return Err("the store was added or removed: a full restart is needed".into()),
        };
        Ok(Listeners {
            admin,
            cluster,
            store,
        })
    }

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
/// `watch_reload`). `handover` is what the previous program handed over in a hot restart
/// (see [`restart`]): the service, the VIP keeper, the role and the lease are taken over
/// instead of started; if this program cannot open the cluster state, it goes back to the
/// previous program. A hot restart requested while running ends this function only if it
/// failed after the point of no return (then with an error).
pub async fn run(
    config: Config,
    config_path: std::path::PathBuf,
    listeners: Listeners,
    shutdown: CancellationToken,
    handover: Option<crate::handover::Handover>,
) -> Result<(), NodeError> {
    let config = Arc::new(config);
    let me = config.me().clone();
    let listen_fds = ListenerFds::dup(&listeners)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot keep the listeners for a hot restart"))
        .ok();
    let peers = config
        .members
        .iter()
        .filter(|m| m.id != me.id)
        .map(|m| (m.id.clone(), m.addresses.clone()))
        .collect();
    let start = async {
        let tls = match config.tls.files() {
            Some(files) => Some(Arc::new(crate::tls::Tls::load(files, Some(&me.id))?)),
            None => None,
        };
        let transport = Transport::new(
            me.id.clone(),
            peers,
            config.timing.heartbeat_interval,
            config.timing.failure_timeout,
            tls.clone(),
        );
        let cluster = Cluster::start(&config, transport.clone()).await?;
        Ok::<_, NodeError>((tls, transport, cluster))
    };
    let (tls, transport, cluster) = match (start.await, &handover) {
        (Ok(parts), _) => parts,
        (Err(e), Some(h)) => {
            // Nothing was taken over yet: the previous program resumes with everything.
            tracing::error!(error = %e, "hot restart: this program cannot start; going back to the previous one");
            let why = crate::handover::fall_back(h, &e.to_string());
            tracing::error!(error = %why, "cannot go back to the previous program");
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    if tls.is_none() {
        tracing::warn!(
            "[tls] insecure = true: cluster connections are neither encrypted nor authenticated; \
             anyone who can reach a cluster address can act as a member"
        );
    }
    tracing::info!(node.id = %me.id, kind = %me.kind, "raft started");

    // Past this point the hand-over is taken: what it carries is adopted or dropped.
    let mut adopt_service = None;
    let mut adopt_keeper = None;
    if let Some(h) = &handover {
        let dup = |fd: Option<std::os::fd::RawFd>| fd.and_then(|fd| crate::handover::dup(fd).ok());
        adopt_service = h.service.as_ref().map(|s| service::Adopt {
            pid: s.pid,
            since_unix_ms: s.since_unix_ms,
            stdout: dup(s.stdout),
            stderr: dup(s.stderr),
        });
        adopt_keeper = h.keeper.as_ref().and_then(|k| {
            Some(crate::address::vip::driver::AdoptKeeper {
                pid: k.pid,
                stdin: dup(Some(k.stdin))?,
                stdout: dup(Some(k.stdout))?,
            })
        });
        for fd in h.fds() {
            // SAFETY: the document was checked and each descriptor is closed exactly once,
            // after everything that needed it was duplicated.
            #[allow(unsafe_code)]
            drop(unsafe { crate::handover::own(fd) });
        }
        match &h.failed {
            Some(why) => tracing::error!(reason = %why, "hot restart failed: the previous program resumed"),
            None => {
                tracing::info!(from = %h.from_version, hot_restarts = h.hot_restarts, "hot restart: took over from the previous program")
            }
        }
    }

    // Internal tasks get their own token so that the service is stopped before Raft goes.
    let tasks = CancellationToken::new();
    // The service and the VIP keeper outlive the tasks when the program is replaced (hot
    // restart): they have tokens of their own, cancelled only by a real shutdown.
    let service_token = CancellationToken::new();
    let vip_token = CancellationToken::new();
    let tracker = TaskTracker::new();

    let (transitions_tx, transitions_rx) = tokio::sync::mpsc::unbounded_channel();
    // A hot restart goes on from the checks' states; a check that is new in this program's
    // configuration is assumed healthy until it fails `fall` times (as the service already
    // runs and serves), so adding a check never fails the node over by itself.
    let mut initial_checks = handover.as_ref().map(|h| h.checks.clone()).unwrap_or_default();
    if handover.is_some() {
        for c in &config.checks {
            if !initial_checks.contains_key(&c.name) {
                tracing::info!(check = %c.name, "new check after the hot restart: assumed healthy until it fails");
                initial_checks.insert(c.name.clone(), true);
            }
        }
    }
    // The service runs the version the cluster says this node should run (a deploy's, if
    // one happened; the config file's `[service]` otherwise). An adopted process runs the
    // version this node last reported.
    let (service_version, service_spec) = cluster.sm.read(|d| {
        let v = if adopt_service.is_some() {
            d.change.running_of(&me.id)
        } else {
            d.change.desired_of(&me.id)
        };
        let known = v == 1 || d.change.version(v).is_some();
        let v = if known { v } else { 1 };
        (v, d.change.overlay(v))
    });
    let (health, supervisor) = match (&config.service, me.kind) {
        (Some(svc), NodeKind::Data) => {
            let svc = &service_spec.apply(svc);
            if service_version != 1 {
                tracing::info!(version = service_version, spec = %service_spec.summary(), "service runs a deployed version");
            }
            let health = health::spawn_checks_from(
                config.checks.clone(),
                &initial_checks,
                transitions_tx,
                tasks.clone(),
            );
            let adopted = adopt_service.is_some();
            let sup = service::spawn_supervisor_adopting(
                svc.clone(),
                me.id.clone(),
                adopt_service,
                service_token.clone(),
            );
            // A hot service runs on standbys too; a warm one starts on promotion.
            if svc.mode == crate::config::ServiceMode::Hot && !adopted {
                sup.set_desired(true).await;
            }
            (Some(health), Some(sup))
        }
        _ => (None, None),
    };
    let (restart_tx, mut restart_rx) = tokio::sync::mpsc::channel(4);
    let mut node = Node::new(config.clone(), cluster.clone(), tls.clone(), health, supervisor);
    node.restart = Some(restart_tx.clone());
    *node.daemon.lock().unwrap_or_else(|p| p.into_inner()) = shared::DaemonInfo {
        node: me.id.clone(),
        pid: std::process::id(),
        version: crate::version::VERSION.into(),
        commit: crate::version::COMMIT.into(),
        started_unix_ms: handover
            .as_ref()
            .map_or_else(crate::clock::unix_ms, |h| h.started_unix_ms),
        hot_restarts: handover.as_ref().map_or(0, |h| h.hot_restarts),
        program_started_unix_ms: crate::clock::unix_ms(),
        last_restart_failure: handover.as_ref().and_then(|h| h.failed.clone()),
        resumed_from: handover.as_ref().map(|h| h.from_version.clone()),
    };
    if let Some(h) = &handover {
        seed_role(&node, &h.role);
    }
    let node = Arc::new(node);
    let program = handover
        .as_ref()
        .map(|h| h.program.clone())
        .or_else(|| std::env::current_exe().ok());
    tracker.spawn(watch_reload(
        tls,
        node.live.clone(),
        cluster.clone(),
        config_path.clone(),
        tasks.clone(),
    ));
    tracker.spawn(restart_on_usr2(restart_tx, tasks.clone()));
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
    for (path, l) in listeners.cluster.into_iter().enumerate() {
        tracker.spawn(transport::serve(
            l,
            path,
            transport.clone(),
            handler.clone(),
            peer_token.clone(),
        ));
    }
    transport.spawn_heartbeats(peer_token.clone());
    {
        let (cluster, config) = (cluster.clone(), config.clone());
        tracker.spawn(async move {
            if let Err(e) = cluster.bootstrap(&config).await {
                tracing::error!(error = %e, "cannot create the cluster");
            }
        });
    }
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
    tracker.spawn(deploy::drive(node.clone(), tasks.clone()));
    tracker.spawn(deploy::follow_settings(node.clone(), tasks.clone()));
    if node.supervisor.is_some() {
        tracker.spawn(deploy::follow(node.clone(), service_version, tasks.clone()));
    }
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
    let (keeper_tx, keeper_rx) = tokio::sync::mpsc::channel(1);
    let mut vip_driver = false;
    if let (true, Some(addr)) = (node.is_data(), &config.address) {
        match program.clone() {
            Some(binary) => {
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
                    adopt: adopt_keeper.take(),
                    hand_over: keeper_rx,
                };
                vip_driver = true;
                tracker.spawn(driver.run(vip_token.clone()));
            }
            // Without the keeper the VIP is never added: the node runs, the address stays put.
            None => {
                tracing::error!(vip = %addr.vip, "cannot find our own binary to run the vip keeper")
            }
        }
    }
    tracing::info!(node.id = %me.id, admin = %me.admin, "node running");

    let fatal = failstop::token();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!(node.id = %me.id, "shutting down");
                break;
            }
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
                break;
            }
            Some(req) = restart_rx.recv() => {
                let req: shared::RestartRequest = req;
                let (Some(binary), Some(fds)) = (program.clone(), listen_fds.as_ref()) else {
                    let _ = req.reply.send(Err("this daemon cannot find its program or lost its listeners: restart it".into()));
                    continue;
                };
                if node.local.borrow().acting == Acting::Promoting {
                    let _ = req.reply.send(Err("the node is promoting (fence and promote hooks running): try again once it acts".into()));
                    continue;
                }
                let new = match restart::run_preflight(&binary, &config_path, &config).await {
                    Ok(p) => p,
                    Err(why) => {
                        tracing::error!(reason = %why, "hot restart refused: the new program failed its preflight; this one keeps running");
                        node.daemon.lock().unwrap_or_else(|p| p.into_inner()).last_restart_failure = Some(why.clone());
                        let _ = req.reply.send(Err(why));
                        continue;
                    }
                };
                tracing::info!(version = %new.version, commit = %new.commit, binary = %binary.display(), "hot restart: handing over to the new program");
                let _ = req.reply.send(Ok(format!(
                    "handing over to {} (commit {}) from {}",
                    new.version, new.commit, binary.display()
                )));
                crate::systemd::reloading();
                // Let the reply reach the client before the servers stop.
                tokio::time::sleep(Duration::from_millis(20)).await;
                restart::prepare(&node).await;
                // Stop acting loops without demoting: the role goes over as it is.
                role_token.cancel();
                if let Some(t) = role_task.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
                }
                let keeper = if vip_driver {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    match keeper_tx.send(tx).await {
                        // Bounded: a driver in its restart back-off does not answer.
                        Ok(()) => tokio::time::timeout(Duration::from_secs(1), rx).await.ok().and_then(|r| r.ok()).flatten(),
                        Err(_) => None,
                    }
                } else {
                    None
                };
                let service = match &node.supervisor {
                    Some(sup) => sup.hand_over().await,
                    None => None,
                };
                let role = snapshot_role(&node);
                let checks: std::collections::BTreeMap<String, bool> = node
                    .health
                    .as_ref()
                    .map(|h| h.snapshot().into_iter().map(|c| (c.name, c.healthy)).collect())
                    .unwrap_or_default();
                peer_token.cancel();
                tasks.cancel();
                tracker.close();
                let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), cluster.shutdown()).await;
                let fallback = crate::handover::open_own_program()
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot open this program to go back to"))
                    .ok();
                use std::os::fd::AsRawFd;
                let daemon = node.daemon.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let h = crate::handover::Handover {
                    format: crate::handover::FORMAT,
                    from_version: format!("{} (commit {})", crate::version::VERSION, crate::version::COMMIT),
                    hot_restarts: daemon.hot_restarts + 1,
                    started_unix_ms: daemon.started_unix_ms,
                    program: binary.clone(),
                    admin: fds.admin.as_raw_fd(),
                    cluster: fds.cluster.iter().map(|f| f.as_raw_fd()).collect(),
                    store: fds.store.as_ref().map(|f| f.as_raw_fd()),
                    service: service.as_ref().map(|s| crate::handover::ServiceHandover {
                        pid: s.pid,
                        since_unix_ms: s.since_unix_ms,
                        stdout: s.stdout.as_ref().map(|f| f.as_raw_fd()),
                        stderr: s.stderr.as_ref().map(|f| f.as_raw_fd()),
                    }),
                    keeper: keeper.as_ref().map(|k| crate::handover::KeeperHandover {
                        pid: k.pid,
                        stdin: k.stdin.as_raw_fd(),
                        stdout: k.stdout.as_raw_fd(),
                    }),
                    role,
                    checks,
                    fallback: fallback.as_ref().map(|f| f.as_raw_fd()),
                    failed: None,
                };
                if shutdown.is_cancelled() {
                    // Stopped while handing over: stop for real (service included) below.
                    tracing::info!("shutdown requested during the hot restart: stopping instead");
                    role_task = None;
                    break;
                }
                let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                let err = crate::handover::exec(&binary, &args, &h);
                // Still here: the new program could not even be executed. Go back to this one
                // (same document), which resumes everything.
                tracing::error!(error = %err, binary = %binary.display(), "hot restart: cannot execute the new program; resuming this one");
                let why = crate::handover::fall_back(&h, &format!("cannot execute {}: {err}", binary.display()));
                failstop::trip(format!("hot restart failed and this program cannot resume: {why}"), failstop::EXIT_SOFTWARE);
                // The tasks are gone: stop the service too (the normal shutdown below).
                role_task = None;
                break;
            }
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
    service_token.cancel();
    tasks.cancel();
    vip_token.cancel();
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

/// SIGUSR2 asks for a hot restart (as `standin restart` does over the API); the outcome is
/// logged.
async fn restart_on_usr2(
    restart: tokio::sync::mpsc::Sender<shared::RestartRequest>,
    cancel: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGUSR2: hot restart only through the API");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = usr2.recv() => if r.is_none() { return },
        }
        tracing::info!("SIGUSR2 received: hot restart");
        let (reply, answer) = tokio::sync::oneshot::channel();
        if restart.send(shared::RestartRequest { reply }).await.is_err() {
            return;
        }
        if let Ok(Err(why)) = answer.await {
            tracing::error!(reason = %why, "hot restart did not happen");
        }
    }
}

/// The role as it goes over to the next program.
fn snapshot_role(node: &Node) -> crate::handover::RoleHandover {
    use crate::handover::to_monotonic;
    let local = *node.local.borrow();
    let lease = *node.lease.borrow();
    let handed = *node.handed_out.lock().unwrap_or_else(|p| p.into_inner());
    crate::handover::RoleHandover {
        active: local.acting == Acting::Active,
        epoch: local.epoch,
        lease: lease.map(|l| (l.epoch, to_monotonic(l.until))),
        handed_out: handed.map(|(until, pid)| (to_monotonic(until), pid)),
        vip_unreleased: node.vip_unreleased.load(std::sync::atomic::Ordering::SeqCst),
    }
}

/// Takes over the role the previous program held: acting as active (with its lease, which
/// the lease loop renews from here) if it was.
fn seed_role(node: &Node, role: &crate::handover::RoleHandover) {
    use crate::handover::from_monotonic;
    let lease = role.lease.map(|(epoch, until)| shared::Lease {
        epoch,
        until: from_monotonic(until),
    });
    node.lease.send_replace(lease);
    *node.handed_out.lock().unwrap_or_else(|p| p.into_inner()) =
        role.handed_out.map(|(until, pid)| (from_monotonic(until), pid));
    node.vip_unreleased
        .store(role.vip_unreleased, std::sync::atomic::Ordering::SeqCst);
    // As it was: the role loop checks the replicated state on its first round and demotes
    // (hook, service told, VIP released) if the state moved on meanwhile.
    if role.active {
        node.local.send_replace(shared::LocalRole {
            acting: Acting::Active,
            epoch: role.epoch,
            lease_until: lease.filter(|l| l.epoch == role.epoch).map(|l| l.until),
        });
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
        daemon: node.daemon.clone(),
        restart: node.restart.clone(),
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
