//! The state every task of a node shares: the [`Node`] the composition root (`node::run`)
//! builds once, and the small types it holds (the local role, the lease, the coordinator's
//! conclusion). It imports only what lies below it (cluster, config, service, health, the
//! live metrics, the VIP's value type); the API, the store server, events and the role loops read
//! it, and nothing here reaches up to them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::{Config, NodeKind};
use crate::health::HealthHandle;
use crate::service::hooks::HookRunner;
use crate::service::Supervisor;

/// What this node is doing right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acting {
    #[default]
    Standby,
    /// Running fence/promote hooks; not yet serving as active.
    Promoting,
    Active,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalRole {
    pub acting: Acting,
    pub epoch: u64,
    /// While active: the instant the lease runs out (the service must stop acting by then).
    pub lease_until: Option<Instant>,
}

/// What the coordinator last concluded; shown in status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CoordinatorStatus {
    pub is_leader: bool,
    /// Why nothing happened, when something is waiting ("waiting for the lease of a ...").
    pub waiting: Option<String>,
}

/// A lease this node holds: it may act as active for `epoch` until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    pub until: Instant,
}

/// What `/v1/lease` last told the managed service: until when it may act, and the pid it was
/// told (the role loop's release waits until the service heard "standby" or that time passed).
pub type HandedOut = Arc<Mutex<Option<(Instant, Option<u32>)>>>;

/// The daemon process behind a node (`GET /v1/daemon`): what `standin restart` watches to
/// see a hot restart happen (same pid, one more hot restart, the new version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DaemonInfo {
    pub node: String,
    pub pid: u32,
    pub version: String,
    pub commit: String,
    /// When this pid started (the first program, before any hot restart).
    pub started_unix_ms: u64,
    /// Hot restarts this pid went through.
    pub hot_restarts: u64,
    /// When the running program took over (its own start).
    pub program_started_unix_ms: u64,
    /// Why the last hot restart did not happen (the previous program kept or took back the
    /// node), if it did not.
    pub last_restart_failure: Option<String>,
    /// The version this program took over from (hot restart), if it did.
    pub resumed_from: Option<String>,
}

/// A request for a hot restart of this node's daemon (`POST /v1/restart`, SIGUSR2). The reply
/// says whether the new program passed its preflight and the hand-over begins (the reply is
/// sent before the program is replaced) or why not.
#[derive(Debug)]
pub struct RestartRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// Everything the node's tasks share.
pub struct Node {
    /// The configuration the node started with: what needs a restart to change (timings,
    /// addresses, members, the service, the checks). Live settings are read from `live`.
    pub config: Arc<Config>,
    /// The configuration in effect now: `config` with the live settings of every valid reload
    /// applied (hooks, failback, alarms, event retention, the API's access settings).
    pub live: crate::config::Live,
    pub cluster: Cluster,
    /// Monotonic origin for the coordinator's millisecond clock.
    pub origin: Instant,
    /// Leader side: when a lease request of each node last arrived (grants may run until then
    /// plus the lease).
    pub grants: Mutex<HashMap<String, Instant>>,
    /// When each node last sent us Raft AppendEntries (as leader): the confirmation rounds
    /// this node took part in, for `node::lease::bound_ms_ago`.
    pub appends: Mutex<HashMap<String, Instant>>,
    /// This node's acting role, for the service (`/v1/lease`) and status.
    pub local: watch::Sender<LocalRole>,
    /// The latest lease end told to the service through `/v1/lease`, until the service has
    /// been told "standby" again. A release waits for this (see `role::wait_service_stood_down`).
    pub handed_out: HandedOut,
    /// The lease this node holds, if any (holder side).
    pub lease: watch::Sender<Option<Lease>>,
    pub coordinator: Mutex<CoordinatorStatus>,
    pub health: Option<HealthHandle>,
    pub supervisor: Option<Supervisor>,
    pub hooks: HookRunner,
    /// This node's Prometheus registry (live metrics; the rest is read at scrape time).
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// The virtual IP while this node's keeper reports it on the interface.
    pub vip_held: Arc<Mutex<Option<crate::address::vip::Vip>>>,
    /// True from the first hold sent to the VIP keeper until it confirms a release: a release
    /// of the active role is committed only after this clears (see `role::wait_vip_released`).
    pub vip_unreleased: Arc<std::sync::atomic::AtomicBool>,
    /// The node's certificates (`None`: `[tls] insecure = true`), reloaded when they change.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Set once this process's `NodeStarted` report is committed. The role loop does not act
    /// as active before: a start report committed after this process was promoted would step
    /// it down as "restarted" (it was seen once when the report was held up by a frozen
    /// leader), and acting in between would make that a failover of a node that never failed.
    pub started_reported: std::sync::atomic::AtomicBool,
    /// The daemon process (pid, program version, hot restarts).
    pub daemon: Arc<Mutex<DaemonInfo>>,
    /// Where hot restart requests go (`None` in in-process tests: no daemon to replace).
    pub restart: Option<tokio::sync::mpsc::Sender<RestartRequest>>,
}

impl Node {
    /// A node's shared state, as `node::run` builds it (and an in-process test may).
    pub fn new(
        config: Arc<Config>,
        cluster: Cluster,
        tls: Option<Arc<crate::tls::Tls>>,
        health: Option<HealthHandle>,
        supervisor: Option<Supervisor>,
    ) -> Node {
        let me = config.node.id.clone();
        let live = crate::config::Live::new(config.clone());
        Node {
            hooks: HookRunner::live(live.clone(), me),
            live,
            config,
            cluster,
            origin: Instant::now(),
            grants: Mutex::new(HashMap::new()),
            appends: Mutex::new(HashMap::new()),
            handed_out: Arc::new(Mutex::new(None)),
            local: watch::channel(LocalRole::default()).0,
            lease: watch::channel(None).0,
            coordinator: Mutex::new(CoordinatorStatus::default()),
            health,
            supervisor,
            metrics: Arc::new(crate::metrics::NodeMetrics::new()),
            vip_held: Arc::new(Mutex::new(None)),
            vip_unreleased: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            tls,
            started_reported: std::sync::atomic::AtomicBool::new(false),
            daemon: Arc::new(Mutex::new(DaemonInfo::default())),
            restart: None,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn to_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    pub fn is_data(&self) -> bool {
        self.config.me().kind == NodeKind::Data
    }
}
