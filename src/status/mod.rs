//! The status model: what `standin status`, `GET /v1/status`, the dashboard, the store's
//! `INFO` and the alarms all read. The types here are plain data (no node, no I/O);
//! [`build`] fills them from a running node, and [`StatusSource`] is the narrow handle a
//! part takes when it only needs the cluster's view (the store server's `INFO`).

pub mod build;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::cluster::resources::Resources;
use crate::cluster::transport::PathStatus;
use crate::config::NodeKind;
use crate::failover::Cause;

/// Something that can tell the cluster's current view: the running node (the leader's view
/// if it can be reached, else its own, marked stale).
pub trait StatusSource: Send + Sync {
    /// The cluster's view: the leader's if it can be reached, else this node's own (stale).
    fn cluster_status(&self) -> BoxFuture<'_, Status>;
    /// This node's own view, now (what the leader judges alarms on).
    fn own_status(&self) -> Status;
}

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
    /// How `view_from` talks to its peers: `mutual-tls`, or `insecure` (`[tls] insecure =
    /// true`: neither encrypted nor authenticated).
    #[serde(default)]
    pub transport: String,
    /// Where `view_from`'s config file disagrees with the live membership, one line each.
    #[serde(default)]
    pub membership_drift: Vec<String>,
    /// Things about the membership an operator should know (an even number of voters).
    #[serde(default)]
    pub membership_warnings: Vec<String>,
    /// A digest of each section of `view_from`'s effective configuration that every member
    /// should have the same (`config::SHARED_SECTIONS`): the leader compares them
    /// (`config-drift`).
    #[serde(default)]
    pub config_shared: std::collections::BTreeMap<String, String>,
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
    /// When the node's certificate expires (Unix seconds): `view_from`'s own, and each
    /// peer's as last shown in a TLS handshake with `view_from`.
    #[serde(default)]
    pub cert_not_after_unix: Option<i64>,
    /// Where the member stands in Raft: `voter`, `learner` (being added: catching up) or
    /// `none` (in the member table only, while a change is under way).
    #[serde(default = "voter")]
    pub raft: String,
    /// The member's `site` label, if any.
    #[serde(default)]
    pub site: Option<String>,
    /// The node answered the leader with less log than it had acknowledged (its data directory
    /// was lost): kept out until `standin member replace ID ID`.
    #[serde(default)]
    pub lost_log: bool,
    /// The node's data disk and memory, as the node measured them (its own view's, or what it
    /// last told the leader; none from a node not heard recently or an older build).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// The node's last scheduled backup (`[backup]`), as it reported it; `None` without any.
    #[serde(default)]
    pub backup: Option<NodeBackup>,
}

/// A node's scheduled backups as `status` shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeBackup {
    pub last_success_unix_ms: Option<u64>,
    pub size_bytes: u64,
    pub path: String,
    pub failures_total: u64,
    pub last_error: Option<String>,
}

fn voter() -> String {
    "voter".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckStatusJson {
    pub name: String,
    pub healthy: bool,
    pub detail: String,
    pub since_unix_ms: u64,
    /// The last probe results (oldest first) and the last probe's latency: known only to the
    /// node that runs the check, so filled in that node's own view.
    #[serde(default)]
    pub recent: Vec<bool>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
}
