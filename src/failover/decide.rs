//! The rules. Read top to bottom: quorum, promotion in flight, the active node, then choosing
//! a successor.

use super::{Action, Cause, ClusterView, Millis, NodeView};

/// Decides what the coordinator should do at `now`. Pure: same view and time, same answer.
pub fn decide(v: &ClusterView, now: Millis) -> Vec<Action> {
    // Without a quorum nothing we commit would stick, and nobody may be promoted.
    if !v.quorum {
        return vec![wait("quorum lost: no promotion possible")];
    }

    // A committed promotion waits for its node's hook result (or times out).
    if let Some(p) = &v.pending {
        // A promoted node that cannot be heard will not report: no need to wait it out.
        if now.saturating_sub(p.since) >= v.promote_timeout || !v.reachable(&p.node, now) {
            return vec![Action::PromotionTimedOut {
                node: p.node.clone(),
                epoch: p.epoch,
            }];
        }
        return vec![wait(format!(
            "promotion of {} at epoch {} in progress",
            p.node, p.epoch
        ))];
    }

    match &v.active {
        Some(active) => decide_with_active(v, now, active),
        None => decide_successor(v, now),
    }
}

fn wait(reason: impl Into<String>) -> Action {
    Action::Wait {
        reason: reason.into(),
    }
}

/// Can `n` be made active now?
fn eligible(v: &ClusterView, n: &NodeView, now: Millis) -> bool {
    !n.witness
        && n.priority > 0
        && n.healthy
        && n.in_sync
        && !n.maintenance
        && n.excluded_until.is_none_or(|t| t <= now)
        && v.reachable(&n.id, now)
}

/// The best candidate other than `exclude`: one on the active (or deposed) node's site first
/// when sites are set (a standby across a WAN link is the last resort, not a peer), then
/// priority, then the most caught-up, then the name (so that the choice is deterministic).
fn best_candidate<'a>(v: &'a ClusterView, now: Millis, exclude: Option<&str>) -> Option<&'a NodeView> {
    let home = v
        .active
        .as_deref()
        .or(v.deposed.as_ref().map(|d| d.node.as_str()))
        .and_then(|a| v.node(a))
        .and_then(|n| n.site.as_deref());
    let away = |n: &NodeView| home.is_some() && n.site.as_deref() != home;
    v.nodes
        .iter()
        .filter(|n| Some(n.id.as_str()) != exclude && eligible(v, n, now))
        .min_by(|a, b| {
            away(a)
                .cmp(&away(b))
                .then(b.priority.cmp(&a.priority))
                .then(b.matched.cmp(&a.matched))
                .then(a.id.cmp(&b.id))
        })
}

/// The node a planned move from `active` should go to, or why there is none.
fn switchover_target<'a>(v: &'a ClusterView, now: Millis, active: &str) -> Result<&'a NodeView, String> {
    let sw = v.switchover.as_ref().expect("caller checked");
    match (&sw.target, sw.cause) {
        (Some(t), _) => {
            if t == active {
                return Err(format!("{t} is already active"));
            }
            let node = v.node(t).ok_or_else(|| format!("{t} is not a member"))?;
            if node.witness {
                return Err(format!("{t} is a witness and never runs the service"));
            }
            if !eligible(v, node, now) {
                // Waiting for the target to catch up is part of a switchover; anything else is
                // a refusal the operator must hear about.
                if node.healthy && !node.maintenance && node.priority > 0 && v.reachable(t, now) {
                    return Err(String::new());
                }
                return Err(format!(
                    "{t} is not an eligible standby (unhealthy, unreachable, in maintenance or priority 0)"
                ));
            }
            Ok(node)
        }
        (None, Cause::Failback) => {
            let best = best_candidate(v, now, None).ok_or("no eligible node to fail back to")?;
            if best.id == active {
                return Err(format!("{active} is already the preferred node"));
            }
            let current = v.node(active).map_or(0, |n| n.priority);
            if best.priority <= current {
                return Err(format!(
                    "{active} already has the highest priority among healthy nodes"
                ));
            }
            Ok(best)
        }
        (None, _) => best_candidate(v, now, Some(active))
            .ok_or_else(|| "no eligible standby to switch over to".to_string()),
    }
}

fn decide_with_active(v: &ClusterView, now: Millis, active: &str) -> Vec<Action> {
    let Some(a) = v.node(active) else {
        // The state names a node that is not a member: depose it so someone valid can take over.
        return vec![Action::Depose {
            node: active.to_string(),
            epoch: v.epoch,
            cause: Cause::NodeLost,
        }];
    };
    let depose = |cause| Action::Depose {
        node: active.to_string(),
        epoch: v.epoch,
        cause,
    };

    // 1. The active node is gone: stop granting its lease at once; a successor follows once
    //    the lease has certainly expired.
    if !v.reachable(active, now) {
        return vec![depose(Cause::NodeLost)];
    }

    // 2. Its service is unhealthy: move if anyone can take over, otherwise keep it (a
    //    degraded service beats none, and it may recover).
    if !a.healthy {
        if best_candidate(v, now, Some(active)).is_some() {
            return vec![depose(Cause::ServiceUnhealthy)];
        }
        return vec![wait(format!("{active} is unhealthy but no standby is eligible"))];
    }

    // 3. Maintenance on the active node: a planned move away, if possible.
    if a.maintenance {
        if best_candidate(v, now, Some(active)).is_some() {
            return vec![depose(Cause::Maintenance)];
        }
        return vec![wait(format!(
            "{active} is in maintenance but no standby is eligible"
        ))];
    }

    // 4. A requested switchover (or failback), unless it waited too long.
    if let Some(sw) = &v.switchover {
        if now.saturating_sub(sw.since) > v.switchover_timeout {
            return vec![Action::CancelSwitchover {
                reason: format!(
                    "not carried out within {} ms (target never became eligible)",
                    v.switchover_timeout
                ),
            }];
        }
        return match switchover_target(v, now, active) {
            Ok(_) => vec![depose(sw.cause)],
            Err(reason) if reason.is_empty() => {
                vec![wait("switchover target is catching up")]
            }
            Err(reason) => vec![Action::CancelSwitchover { reason }],
        };
    }

    let mut actions = Vec::new();

    // 5. Automatic failback: a node with a higher priority than the active one stayed healthy
    //    and in sync for the whole hold-down.
    if v.auto_failback {
        if let Some(best) = best_candidate(v, now, Some(active)) {
            let held = best
                .healthy_since
                .is_some_and(|since| now.saturating_sub(since) >= v.hold_down);
            if best.priority > a.priority && held {
                actions.push(Action::RequestSwitchover {
                    target: best.id.clone(),
                    cause: Cause::Failback,
                });
                return actions;
            }
        }
    }

    // 6. Keep Raft leadership on the active node: then the failure of a standby or the witness
    //    never interrupts its lease renewals.
    if v.leader != active && a.in_sync {
        actions.push(Action::TransferLeadership {
            to: active.to_string(),
        });
    }
    actions
}

fn decide_successor(v: &ClusterView, now: Millis) -> Vec<Action> {
    let deposed = v.deposed.as_ref();

    // Never promote while the previous active may still hold a lease.
    if let Some(d) = deposed {
        if !d.released && now < v.lease_expiry() {
            return vec![wait(format!(
                "waiting {} ms for the lease of {} (epoch {}) to expire",
                v.lease_expiry() - now,
                d.node,
                d.epoch
            ))];
        }
    }

    // A planned move names its target; otherwise the best candidate. The node that just lost
    // or gave up the role (moved away on purpose, crashed, shutting down, restarted) is only
    // taken back when nobody else can serve.
    let exclude = deposed.map(|d| d.node.as_str());
    let target = v
        .switchover
        .as_ref()
        .and_then(|sw| sw.target.as_deref())
        .and_then(|t| v.node(t))
        .filter(|n| eligible(v, n, now));
    let choice = target
        .or_else(|| best_candidate(v, now, exclude))
        .or_else(|| best_candidate(v, now, None));
    let Some(c) = choice else {
        return vec![wait(
            "no eligible standby: none is healthy, reachable, in sync and out of maintenance",
        )];
    };
    if v.epoch == 0 && deposed.is_none() && now < v.bootstrap_until {
        let top = v
            .nodes
            .iter()
            .filter(|n| !n.witness && n.priority > 0 && !n.maintenance)
            .map(|n| n.priority)
            .max()
            .unwrap_or(0);
        if c.priority < top {
            return vec![wait(format!(
                "bootstrap: waiting {} ms for the highest-priority node",
                v.bootstrap_until - now
            ))];
        }
    }
    let cause = match (deposed, &v.switchover) {
        (Some(d), _) => d.cause,
        (None, Some(sw)) => sw.cause,
        (None, None) => Cause::Bootstrap,
    };
    vec![Action::Promote {
        node: c.id.clone(),
        epoch: v.epoch + 1,
        previous: deposed.map(|d| d.node.clone()),
        cause,
        fence: deposed.is_some_and(|d| !d.released && d.node != c.id),
    }]
}
