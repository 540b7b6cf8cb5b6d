//! Leases: the active node acts only while the Raft leader has confirmed, with a quorum round
//! started after the request arrived, that the replicated state names it active.
//!
//! Safety argument (see docs/failover-lifecycle.md): the node counts its lease from the moment
//! it *sent* the request, which precedes the leader's quorum round; a successor leader is
//! elected only after that round, and waits a full lease (plus margin) after its election;
//! the same leader waits a full lease after the last request it answered for the deposed node.
//! So a successor is never promoted while an old grant may still run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::shared::{Lease, Node};
use crate::cluster::rpc::{LeaseReply, Request, Response};

/// Leader side: answer a lease request of `who` for `epoch`.
pub async fn grant(node: &Arc<Node>, who: &str, epoch: u64) -> LeaseReply {
    let names_active = |node: &Arc<Node>| {
        node.cluster
            .sm
            .read(|d| d.state.active.as_deref() == Some(who) && d.state.epoch == epoch)
    };
    if !names_active(node) {
        return LeaseReply::Refused(format!("{who} is not active at epoch {epoch}"));
    }
    // From here on a grant may run: the coordinator waits a lease after this instant.
    node.grants
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(who.to_string(), Instant::now());
    if let Err(e) = node.cluster.confirm_leadership().await {
        return LeaseReply::Refused(format!("leadership not confirmed by a quorum: {e}"));
    }
    // The barrier applied everything committed before it: check again.
    if !names_active(node) {
        return LeaseReply::Refused(format!("{who} is no longer active at epoch {epoch}"));
    }
    LeaseReply::Granted
}

/// This node's contribution to a grant bound: the latest instant at which it took part in a
/// confirmation round of a leader other than `leader` (it received AppendEntries from it), or
/// answered a lease request of `deposed` itself (as a leader), in milliseconds ago.
///
/// Any grant to `deposed` was confirmed by a quorum: by its leader and by followers that
/// received the leader's round after the request was sent. If every voter but `deposed`
/// reports, the latest report bounds when a grant could have started; the holder stops
/// acting a lease after its own send time, which came earlier still.
pub fn bound_ms_ago(node: &Arc<Node>, leader: &str, deposed: &str) -> Option<u64> {
    let appends = node
        .appends
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(from, _)| from.as_str() != leader)
        .map(|(_, t)| *t)
        .max();
    let granted = node
        .grants
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(deposed)
        .copied();
    // Records are in memory: a restarted node cannot know what it did before it started, so
    // its own start time is the earliest it may answer.
    let last = appends.max(granted).unwrap_or(node.origin).max(node.origin);
    Some(last.elapsed().as_millis() as u64 + 1)
}

/// Holder side: while the state names this node active, renew the lease every heartbeat.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let timing = node.config.timing.clone();
    let me = node.cluster.me().to_string();
    let mut tick = tokio::time::interval(timing.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied = node.cluster.sm.subscribe();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            // A promotion should not wait for the next tick to get its first lease.
            r = applied.changed() => if r.is_err() { return },
        }
        let (active, epoch) = node.cluster.sm.read(|d| (d.state.active.clone(), d.state.epoch));
        if active.as_deref() != Some(me.as_str()) {
            continue;
        }
        let held = node.lease.borrow().is_some_and(|l| l.epoch == epoch);
        // Renew at most once per tick, plus once right away when a new epoch starts.
        let sent = Instant::now();
        let reply = request(&node, &me, epoch, timing.lease_request_timeout()).await;
        match reply {
            Ok(LeaseReply::Granted) => {
                let until = crate::config::later(sent, timing.lease_held_for());
                node.lease.send_if_modified(|l| {
                    let newer = l.is_none_or(|old| old.epoch != epoch || old.until < until);
                    if newer {
                        *l = Some(Lease { epoch, until });
                    }
                    newer
                });
            }
            Ok(LeaseReply::Refused(why)) => {
                tracing::debug!(epoch, reason = %why, "lease refused");
            }
            Err(e) => {
                if held {
                    tracing::warn!(epoch, error = %e, "lease renewal failed");
                }
            }
        }
        if held {
            // Skip the extra renewal an apply notification would trigger within this tick.
            applied.borrow_and_update();
        }
    }
}

async fn request(node: &Arc<Node>, me: &str, epoch: u64, timeout: Duration) -> Result<LeaseReply, String> {
    let leader = node.cluster.info().leader.ok_or("no leader known")?;
    if leader == me {
        return tokio::time::timeout(timeout, grant(node, me, epoch))
            .await
            .map_err(|_| "leadership confirmation timed out".to_string());
    }
    let req = Request::Lease {
        node: me.to_string(),
        epoch,
    };
    match node.cluster.transport.call(&leader, &req, timeout).await {
        Ok(Response::Lease(r)) => Ok(r),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
