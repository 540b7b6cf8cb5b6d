//! The coordinator: on the Raft leader, turns what this node knows into a [`ClusterView`],
//! asks [`failover::decide`] what to do, and applies the actions. Runs on every node but acts
//! only while this node leads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::shared::Node;
use crate::clock::unix_ms;
use crate::cluster::rpc::Request;
use crate::cluster::state::Command;
use crate::config::{FailbackMode, NodeKind};
use crate::failover::{self, Action, ClusterView, Deposed, NodeView, Pending, Switchover};

struct State {
    leader_since: Option<Instant>,
    /// The Raft term `leader_since` belongs to: a lost and regained leadership (even within
    /// one slow tick) starts a new wait.
    leader_term: u64,
    /// When each committed promotion was first seen (for the promote timeout).
    pending_seen: HashMap<(String, u64), Instant>,
    /// Nodes whose promotion failed, not tried again before the instant.
    excluded: HashMap<String, Instant>,
    last_elect: Option<Instant>,
    /// Since when no leader is known (witness only: see `witness_rescue`).
    leaderless_since: Option<Instant>,
    /// The grant bound for a deposed (node, epoch), once every other voter reported.
    grant_bound: Option<((String, u64), Instant)>,
}

pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let tick_every = node.config.timing.coordinator_tick();
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied = node.cluster.sm.subscribe();
    let mut st = State {
        leader_since: None,
        leader_term: 0,
        pending_seen: HashMap::new(),
        excluded: HashMap::new(),
        last_elect: None,
        grant_bound: None,
        leaderless_since: None,
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            r = applied.changed() => if r.is_err() { return },
        }
        let info = node.cluster.info();
        witness_rescue(&node, &mut st, &info);
        if !info.is_leader {
            st.leader_since = None;
            st.grant_bound = None;
            st.pending_seen.clear();
            let mut c = node.coordinator.lock().unwrap_or_else(|p| p.into_inner());
            c.is_leader = false;
            c.waiting = None;
            continue;
        }
        let now = Instant::now();
        if st.leader_term != info.term {
            st.leader_since = None;
            st.grant_bound = None;
            st.leader_term = info.term;
        }
        if st.leader_since.is_none() {
            tracing::info!(term = info.term, "became raft leader; coordinating");
            st.leader_since = Some(now);
        }
        refresh_grant_bound(&node, &mut st).await;
        let view = build_view(&node, &mut st, &info, now);
        let now_ms = node.to_ms(now);
        let actions = failover::decide(&view, now_ms);
        let mut waiting = None;
        for action in actions {
            if let Action::Wait { reason } = &action {
                waiting = Some(reason.clone());
            }
            apply(&node, &mut st, action, now).await;
        }
        let mut c = node.coordinator.lock().unwrap_or_else(|p| p.into_inner());
        if c.waiting != waiting {
            if let Some(w) = &waiting {
                tracing::info!(reason = %w, "coordinator waiting");
            }
        }
        c.is_leader = true;
        c.waiting = waiting;
    }
}

/// A witness never campaigns on its own, but if it holds committed entries the surviving data
/// node lacks, that node cannot win an election (the witness refuses a shorter log) and the
/// cluster would stay leaderless. So after two failure timeouts without a leader the witness
/// campaigns itself; it leads (and coordinates) until the data node caught up, and then
/// leadership moves to the active node like from any leader.
fn witness_rescue(node: &Arc<Node>, st: &mut State, info: &crate::cluster::RaftInfo) {
    let wait = node.config.timing.witness_rescue_after();
    // The leader we know of may be long dead: a follower keeps its last leader until another
    // one wins.
    let leader_alive = info.leader.as_deref().is_some_and(|l| {
        node.cluster
            .transport
            .last_heard(l)
            .is_some_and(|t| node.config.timing.is_heard(t, Instant::now()))
    });
    if node.is_data() || leader_alive {
        st.leaderless_since = None;
        return;
    }
    let now = Instant::now();
    let since = *st.leaderless_since.get_or_insert(now);
    let retry = node.config.timing.failure_timeout;
    if now.duration_since(since) < wait || st.last_elect.is_some_and(|t| now.duration_since(t) < retry) {
        return;
    }
    st.last_elect = Some(now);
    tracing::warn!("no leader for {wait:?}: the witness campaigns so the cluster can recover");
    let raft = node.cluster.raft.clone();
    tokio::spawn(async move {
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "witness election trigger failed");
        }
    });
}

/// While a deposed node's lease may still run, asks every other voter for its report (see
/// `lease::bound_ms_ago`). Only a complete set of reports gives a bound.
async fn refresh_grant_bound(node: &Arc<Node>, st: &mut State) {
    let deposed = node
        .cluster
        .sm
        .read(|d| d.state.deposed.clone().filter(|d| !d.released));
    let Some(d) = deposed else {
        st.grant_bound = None;
        return;
    };
    let key = (d.node.clone(), d.epoch);
    if st.grant_bound.as_ref().is_some_and(|(k, _)| *k == key) {
        return;
    }
    let me = node.cluster.me().to_string();
    let timeout = node.config.timing.heartbeat_interval;
    // Every voter (a learner never granted anything); none while one's name is unknown.
    let Some(voters) = node.cluster.all_voters() else {
        return;
    };
    let asks = voters.iter().filter(|m| m.id != d.node && m.id != me).map(|m| {
        let req = Request::LeaseBound {
            leader: me.clone(),
            node: d.node.clone(),
        };
        let transport = node.cluster.transport.clone();
        let id = m.id.clone();
        async move {
            match transport.call(&id, &req, timeout).await {
                Ok(crate::cluster::rpc::Response::LeaseBound(ago)) => {
                    let received = Instant::now();
                    Ok(ago.map(|ms| {
                        received
                            .checked_sub(Duration::from_millis(ms))
                            .unwrap_or(received)
                    }))
                }
                _ => Err(()),
            }
        }
    });
    let replies = futures::future::join_all(asks).await;
    if replies.iter().any(|r| r.is_err()) {
        return;
    }
    let now = Instant::now();
    let local = super::lease::bound_ms_ago(node, &me, &d.node)
        .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now));
    let bound = replies
        .into_iter()
        .flatten()
        .flatten()
        .chain(local)
        .max()
        .unwrap_or(node.origin);
    tracing::info!(node = %d.node, epoch = d.epoch, ago_ms = bound.elapsed().as_millis() as u64, "lease bound from every voter");
    st.grant_bound = Some((key, bound));
}

/// Builds the coordinator's view. Public to the crate for status output.
fn build_view(
    node: &Arc<Node>,
    st: &mut State,
    info: &crate::cluster::RaftInfo,
    now: Instant,
) -> ClusterView {
    let cfg = &node.config;
    let failback = node.live.get().failback.clone();
    let me = node.cluster.me().to_string();
    let state = node.cluster.sm.read(|d| {
        (
            d.state.active.clone(),
            d.state.epoch,
            d.state.deposed.clone(),
            d.state.promotion.clone(),
            d.state.switchover.clone(),
            d.state.nodes.clone(),
        )
    });
    let (active, epoch, deposed, promotion, switchover, records) = state;
    // A node whose promotion failed recently is not tried again for a while (replicated, so
    // a new leader honours it too).
    let exclusion = millis(cfg.timing.promotion_exclusion());
    let failed: HashMap<String, u64> = node.cluster.sm.read(|d| {
        let mut m = HashMap::new();
        for e in d.state.events.iter().rev().take(200) {
            if e.kind == crate::cluster::state::EventKind::PromotionFailed {
                if let Some(n) = &e.node {
                    m.entry(n.clone()).or_insert(e.at_unix_ms + exclusion);
                }
            }
        }
        m
    });
    let unix_now = unix_ms();
    let now_ms = node.to_ms(now);
    let unix_to_ms = |u: u64| {
        if u >= unix_now {
            now_ms.saturating_add(u - unix_now)
        } else {
            now_ms.saturating_sub(unix_now - u)
        }
    };
    let mut heard_count = 0;
    let voters = node.cluster.voters();
    let nodes: Vec<NodeView> = voters
        .iter()
        .map(|m| {
            let last_heard = if m.id == me {
                Some(now_ms)
            } else {
                node.cluster.transport.last_heard(&m.id).map(|t| node.to_ms(t))
            };
            if last_heard.is_some_and(|t| cfg.timing.is_heard_ms(t, now_ms)) {
                heard_count += 1;
            }
            let rec = records.get(&m.id);
            let matched = if m.id == me {
                info.last_log_index
            } else {
                info.matched.get(&m.id).copied().unwrap_or(0)
            };
            NodeView {
                id: m.id.clone(),
                witness: m.kind == NodeKind::Witness,
                priority: m.priority,
                last_heard,
                healthy: rec.is_some_and(|r| r.healthy),
                healthy_since: rec.and_then(|r| r.healthy_since_unix_ms).map(unix_to_ms),
                in_sync: matched.saturating_add(cfg.timing.max_lag) >= info.last_log_index,
                matched,
                maintenance: rec.is_some_and(|r| r.maintenance),
                site: m.site.clone(),
                excluded_until: st
                    .excluded
                    .get(&m.id)
                    .map(|t| node.to_ms(*t))
                    .max(failed.get(&m.id).map(|u| unix_to_ms(*u))),
            }
        })
        .collect();
    let pending = promotion.map(|p| {
        let seen = *st.pending_seen.entry((p.node.clone(), p.epoch)).or_insert(now);
        Pending {
            node: p.node,
            epoch: p.epoch,
            since: node.to_ms(seen),
        }
    });
    let grant_of = deposed.as_ref().map(|d| d.node.clone()).or(active.clone());
    let last_grant = grant_of.and_then(|n| {
        node.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n)
            .map(|t| node.to_ms(*t))
    });
    let leader_since = node.to_ms(st.leader_since.unwrap_or(now));
    let t = &cfg.timing;
    ClusterView {
        nodes,
        active,
        epoch,
        deposed: deposed.map(|d| Deposed {
            node: d.node,
            epoch: d.epoch,
            released: d.released,
            cause: d.cause,
        }),
        pending,
        switchover: switchover.map(|s| Switchover {
            target: s.target,
            cause: s.cause,
            since: unix_to_ms(s.requested_unix_ms),
        }),
        quorum: heard_count * 2 > voters.len(),
        leader_since,
        last_grant,
        leader: me,
        failure_timeout: millis(t.failure_timeout),
        lease: millis(t.lease),
        lease_margin: millis(t.lease_margin()),
        promote_timeout: millis(t.promote_timeout),
        // Live: a reload of `[failback]` applies from the next round.
        auto_failback: failback.mode == FailbackMode::Auto,
        hold_down: millis(failback.hold_down),
        bootstrap_until: leader_since.saturating_add(millis(t.bootstrap_wait())),
        grant_bound: st.grant_bound.as_ref().map(|(_, t)| node.to_ms(*t)),
        switchover_timeout: millis(t.switchover_timeout()),
    }
}

async fn apply(node: &Arc<Node>, st: &mut State, action: Action, now: Instant) {
    let at = unix_ms();
    let cmd = match action {
        Action::Wait { .. } => return,
        Action::Depose {
            node: n,
            epoch,
            cause,
        } => {
            tracing::warn!(node = %n, epoch, cause = %cause, "deposing active node");
            Command::Depose {
                detail: format!("{cause}"),
                node: n,
                epoch,
                cause,
                at,
            }
        }
        Action::Promote {
            node: n,
            epoch,
            previous,
            cause,
            fence,
        } => {
            tracing::warn!(node = %n, epoch, cause = %cause, fence, "promoting");
            Command::Promote {
                node: n,
                epoch,
                previous,
                cause,
                fence,
                at,
            }
        }
        Action::PromotionTimedOut { node: n, epoch } => {
            tracing::warn!(node = %n, epoch, "promotion timed out");
            st.excluded.insert(
                n.clone(),
                crate::config::later(now, node.config.timing.promotion_exclusion()),
            );
            Command::PromotionTimedOut { node: n, epoch, at }
        }
        Action::RequestSwitchover { target, cause } => Command::Switchover {
            target: Some(target),
            cause,
            at,
        },
        Action::CancelSwitchover { reason } => {
            tracing::warn!(reason = %reason, "switchover cancelled");
            Command::CancelSwitchover { reason, at }
        }
        Action::TransferLeadership { to } => {
            // Give the previous attempt time to finish before asking again.
            let due = st
                .last_elect
                .is_none_or(|t| now.duration_since(t) > node.config.timing.coordination_retry());
            let settled = st
                .leader_since
                .is_some_and(|t| now.duration_since(t) > node.config.timing.failure_timeout);
            if due && settled {
                st.last_elect = Some(now);
                tracing::info!(to = %to, "moving raft leadership to the active node");
                let cluster = node.cluster.clone();
                let within = node.config.timing.failure_timeout;
                tokio::spawn(async move {
                    if let Err(e) = cluster.transfer_leadership(&to, within).await {
                        tracing::info!(error = %e, "leadership transfer did not complete");
                    }
                });
            }
            return;
        }
    };
    // Bounded: a coordinator stuck on a write would keep a stale view of its leadership.
    match tokio::time::timeout(
        node.config.timing.coordination_retry(),
        node.cluster.write_local(cmd),
    )
    .await
    {
        Ok(Ok(r)) if !r.ok => tracing::debug!(message = %r.message, "coordinator command refused"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "coordinator command failed"),
        Err(_) => tracing::warn!("coordinator command timed out"),
    }
}

/// Whole milliseconds of `d`, saturating (a `u128` cast with `as` would wrap).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
