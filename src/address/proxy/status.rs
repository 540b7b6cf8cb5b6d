//! `GET /v1/proxy` and `standin proxy-status --json`: listeners, their backends, counters.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::config::ListenerConfig;
use super::listener::ListenerRt;
use super::upstream::now_ms;
use super::watch::WatchStatus;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProxyStatus {
    pub cluster: WatchStatus,
    pub listeners: Vec<ListenerStatus>,
    /// The process that answered (after a hot restart: the new one).
    #[serde(default)]
    pub process: Option<ProxyProcess>,
}

/// A proxy process: its pid, program version and hot restarts so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProxyProcess {
    pub pid: u32,
    pub version: String,
    pub commit: String,
    pub hot_restarts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    /// The bound address (the real port when the config said 0).
    pub address: String,
    pub settings: ListenerConfig,
    /// The epoch of the view in force (sent as `X-Standin-Epoch`).
    pub epoch: u64,
    /// The node new traffic goes to (failover mode).
    pub active: Option<String>,
    /// Accepted client connections.
    pub connections: u64,
    /// Client connections open now.
    pub open: usize,
    /// HTTP requests forwarded.
    pub requests: u64,
    /// Connections or requests that found no backend or whose backend failed.
    pub errors: u64,
    /// Connects tried again (on another node, or on the new active node).
    pub retries: u64,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStatus {
    pub node: String,
    pub address: String,
    /// Healthy in the cluster's view, not in maintenance, not drained.
    pub cluster_ok: bool,
    /// The proxy's own health check passes (balance mode; always true otherwise).
    pub check_ok: bool,
    /// Ejected by outlier detection for this many more milliseconds.
    pub ejected_ms: Option<u64>,
    pub ejections: u32,
    /// Open connections (TCP) or requests in flight (HTTP).
    pub open: usize,
    pub total: u64,
    pub failures: u64,
}

pub fn listener_status(l: &ListenerRt) -> ListenerStatus {
    let settings = l.settings();
    let targets = l.targets();
    let now = now_ms();
    let c = &l.counters;
    ListenerStatus {
        name: l.name.clone(),
        address: l.local_addr().to_string(),
        settings: settings.cfg.clone(),
        epoch: targets.epoch,
        active: targets.active.as_ref().map(|a| a.node.clone()),
        connections: c.connections.load(Ordering::Relaxed),
        open: c.open.load(Ordering::Relaxed),
        requests: c.requests.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
        upstreams: l
            .upstreams()
            .iter()
            .map(|u| UpstreamStatus {
                node: u.node.clone(),
                address: u.addr.to_string(),
                cluster_ok: u.cluster_ok(),
                check_ok: u.check_ok(),
                ejected_ms: u.ejected_for(now),
                ejections: u.ejections(),
                open: u.open.load(Ordering::Relaxed),
                total: u.total.load(Ordering::Relaxed),
                failures: u.failures.load(Ordering::Relaxed),
            })
            .collect(),
    }
}
