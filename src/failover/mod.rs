//! The failover decision: a pure function from what the coordinator knows to what it should do.
//!
//! The Raft leader runs the coordinator (`node::coordinator`). Every tick it builds a
//! [`ClusterView`] from the replicated cluster state, its own heartbeat observations and Raft's
//! replication progress, calls [`decide`], and applies the returned [`Action`]s (committing
//! them to the Raft log, or sending RPCs). `decide` does no I/O and reads no clock: time is
//! the `now` parameter, so every rule is a table-driven scenario test (`tests.rs`).
//!
//! The lifecycle of the active role is described in `docs/failover-lifecycle.md`.

mod decide;
#[cfg(test)]
mod tests;

pub use decide::decide;

use serde::{Deserialize, Serialize};

/// Milliseconds on the coordinator's monotonic clock.
pub type Millis = u64;

/// Why the active role moved (or is moving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// No node was active (cluster start, or after a failed promotion).
    Bootstrap,
    /// The active node was not heard on any path for the failure timeout.
    NodeLost,
    /// The active node's service failed its health checks (or its process died).
    ServiceUnhealthy,
    /// An operator asked for a planned switchover.
    Switchover,
    /// The preferred node came back (automatic after hold-down, or `standin failback`).
    Failback,
    /// The active node was put into maintenance.
    Maintenance,
    /// The active node gave up its role itself (lost quorum, restarted, hook failed).
    Released,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Bootstrap => "bootstrap",
            Cause::NodeLost => "node-lost",
            Cause::ServiceUnhealthy => "service-unhealthy",
            Cause::Switchover => "switchover",
            Cause::Failback => "failback",
            Cause::Maintenance => "maintenance",
            Cause::Released => "released",
        })
    }
}

/// What the coordinator knows about one voter.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    /// Witnesses vote and may coordinate, but are never made active.
    pub witness: bool,
    /// Higher is preferred; 0 = never promote.
    pub priority: u32,
    /// Last time the coordinator heard this node on any path (`None`: never).
    /// The coordinator's own node counts as heard `now`.
    pub last_heard: Option<Millis>,
    /// All health checks passing and the service process running (after rise/fall).
    pub healthy: bool,
    /// Since when `healthy` has been true without interruption (for failback hold-down).
    pub healthy_since: Option<Millis>,
    /// Raft replication has this node within `max-lag` entries of the leader.
    pub in_sync: bool,
    /// Highest log index known to be replicated to this node.
    pub matched: u64,
    /// In maintenance: never promoted, and moved away from if active.
    pub maintenance: bool,
    /// A promotion of this node failed; it is not a candidate before this time.
    pub excluded_until: Option<Millis>,
    /// The member's `site` label: a candidate on the active node's site is preferred.
    pub site: Option<String>,
}

/// An active node that was deposed and whose lease may still be running.
#[derive(Debug, Clone, PartialEq)]
pub struct Deposed {
    pub node: String,
    pub epoch: u64,
    /// The node confirmed it stopped acting as active: no need to wait for its lease.
    pub released: bool,
    /// Why it was deposed; carried into the promotion that follows.
    pub cause: Cause,
}

/// A planned move that an operator (or the failback policy) asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Switchover {
    /// `None`: the best other candidate.
    pub target: Option<String>,
    pub cause: Cause,
    /// When it was requested; a request not carried out within `switchover_timeout` is
    /// dropped, so it never happens long after the operator gave up on it.
    pub since: Millis,
}

/// A promotion that was committed and whose node has not yet reported the hook's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub node: String,
    pub epoch: u64,
    pub since: Millis,
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    /// The node entitled to act as active, and its epoch (fencing token).
    pub active: Option<String>,
    pub epoch: u64,
    /// Set while the previous active's lease may still run.
    pub deposed: Option<Deposed>,
    pub pending: Option<Pending>,
    pub switchover: Option<Switchover>,
    /// The coordinator (Raft leader) heard from a quorum recently.
    pub quorum: bool,
    /// When this coordinator became Raft leader. Grants by an earlier leader may run until
    /// `leader_since + lease`.
    pub leader_since: Millis,
    /// The last lease grant this coordinator gave to the (former) active node.
    pub last_grant: Option<Millis>,
    /// The node currently leading Raft (this coordinator).
    pub leader: String,
    pub failure_timeout: Millis,
    pub lease: Millis,
    /// Added to every lease wait, for clock-rate differences between nodes.
    pub lease_margin: Millis,
    pub promote_timeout: Millis,
    pub auto_failback: bool,
    pub hold_down: Millis,
    /// While the cluster has never had an active node (epoch 0), promotion waits until this
    /// time for the highest-priority data node, so the first active does not depend on which
    /// node happened to start first.
    pub bootstrap_until: Millis,
    /// A proven upper bound on when any lease grant to the deposed node was confirmed: every
    /// voter but the deposed one reported when it last took part in a leader's confirmation
    /// round (see `node::lease`). When known it replaces `leader_since`, so a new leader does
    /// not wait a full lease after its own election.
    pub grant_bound: Option<Millis>,
    pub switchover_timeout: Millis,
}

/// What the coordinator should do now. Several may be returned; they are applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the role from `node`: the leader stops granting it a lease and the node demotes.
    Depose { node: String, epoch: u64, cause: Cause },
    /// Make `node` active at `epoch` (always the previous epoch + 1).
    /// `fence`: the previous active was not confirmed stopped; run `on-fence` first.
    Promote {
        node: String,
        epoch: u64,
        previous: Option<String>,
        cause: Cause,
        fence: bool,
    },
    /// A committed promotion got no result in time: count it as failed.
    PromotionTimedOut { node: String, epoch: u64 },
    /// Request a planned move (used by automatic failback).
    RequestSwitchover { target: String, cause: Cause },
    /// Drop a switchover request that cannot or need not be carried out.
    CancelSwitchover { reason: String },
    /// Move Raft leadership to the active node so that a standby's failure never disturbs it.
    TransferLeadership { to: String },
    /// Nothing can be done yet; `reason` is shown in status and logs.
    Wait { reason: String },
}

impl ClusterView {
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Heard on some path within the failure timeout.
    pub fn reachable(&self, id: &str, now: Millis) -> bool {
        self.node(id)
            .and_then(|n| n.last_heard)
            .is_some_and(|t| now.saturating_sub(t) < self.failure_timeout)
    }

    /// The earliest time at which any lease granted to a deposed node has certainly expired.
    pub fn lease_expiry(&self) -> Millis {
        let since = self.grant_bound.unwrap_or(self.leader_since);
        let granted = self.last_grant.unwrap_or(0).max(since);
        granted
            .saturating_add(self.lease)
            .saturating_add(self.lease_margin)
    }
}
