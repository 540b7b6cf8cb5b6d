//! Rolling deploys of the managed service, on the node side (see [`crate::cluster::change`]
//! for the replicated state):
//!
//! - [`follow`] runs on every data node: when the version the cluster says this node should
//!   run changes, it restarts the service with that version's spec and reports the version
//!   it runs.
//! - [`drive`] runs on every node and acts on the Raft leader only: it moves the deploy under
//!   way one committed step at a time (switch the role away from the node, drain it, set its
//!   version, wait for it to run healthily, watch it, put it back), and turns a failed step
//!   into a rollback. Its decisions come from the replicated state alone (timeouts from the
//!   committed step times, restarted after a change of leader), so a new leader continues
//!   where the last one stopped.
//!
//! - [`follow_settings`] runs on every node: the cluster settings (`standin config set`) in
//!   the replicated state are applied on top of the node's file (`config::Live`).
//!
//! A deploy waits while a failover is under way (no active node, a promotion or a deposed
//! node whose lease may run), so it never competes with one.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::unix_ms;
use crate::cluster::change::{ChangeCmd, ChangeControl, Deploy, DeployKind, Phase, Strategy};
use crate::cluster::state::failover_under_way;
use crate::cluster::state::{ClusterState, Command};
use crate::config::NodeKind;
use crate::failover::Cause;

use super::Node;

/// How often the driver looks (it also looks whenever the state changes).
const TICK: Duration = Duration::from_millis(100);
/// A switchover requested for a deploy that has not happened is asked again after this long.
const SWITCHOVER_RETRY: Duration = Duration::from_secs(3);

/// Keeps this node's service on the version the cluster says it should run (data nodes).
/// `running` is the version the supervisor runs now.
pub async fn follow(node: Arc<Node>, mut running: u64, cancel: CancellationToken) {
    let (Some(sup), Some(base)) = (node.supervisor.clone(), node.config.service.clone()) else {
        return;
    };
    let me = node.config.node.id.clone();
    let mut applied = node.cluster.sm.subscribe();
    loop {
        let (desired, recorded, known) = node.cluster.sm.read(|d| {
            let want = d.change.desired_of(&me);
            (
                want,
                d.change.running.get(&me).copied(),
                want == 1 || d.change.version(want).is_some(),
            )
        });
        if desired != running && known {
            let overlay = node.cluster.sm.read(|d| d.change.overlay(desired));
            tracing::info!(from = running, to = desired, spec = %overlay.summary(), "service version changes: restarting the service");
            sup.replace(overlay.apply(&base)).await;
            running = desired;
        }
        // Reported once it differs from what the cluster has (never for a cluster that never
        // deployed: version 1 is what every node runs then).
        let deployed = node.cluster.sm.read(|d| !d.change.versions.is_empty());
        if recorded != Some(running) && (deployed || recorded.is_some()) {
            let cmd = Command::Change(ChangeCmd::Running {
                node: me.clone(),
                version: running,
                at: unix_ms(),
            });
            match tokio::time::timeout(Duration::from_secs(2), node.cluster.write(cmd)).await {
                Ok(Ok(r)) if r.ok => continue,
                Ok(Ok(r)) => tracing::debug!(reason = %r.message, "service version not recorded"),
                Ok(Err(e)) => tracing::debug!(error = %e, "service version not recorded yet"),
                Err(_) => tracing::debug!("service version not recorded yet: no answer"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Applies the cluster settings of the replicated state to this node's live configuration
/// whenever they change.
pub async fn follow_settings(node: Arc<Node>, cancel: CancellationToken) {
    let mut applied = node.cluster.sm.subscribe();
    let mut seen: Option<u64> = None;
    loop {
        // The version number first (cheap, read on every applied entry); the text only when
        // it changed.
        let number = node
            .cluster
            .sm
            .read(|d| d.change.settings.back().map_or(0, |v| v.number));
        if seen != Some(number) {
            let text = node.cluster.sm.read(|d| d.change.settings_text());
            if seen.is_some() || text.is_some() {
                tracing::info!(
                    version = number,
                    "cluster settings applied on top of the config file"
                );
            }
            seen = Some(number);
            node.live.set_settings(text);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
        }
    }
}

/// What the driver remembers locally (a new leader starts afresh).
#[derive(Default)]
struct Local {
    /// The deploy, step and phase this leader saw last, and since when (Unix ms): a timeout
    /// runs from the later of the committed phase time and this, so a new leader or the end
    /// of a failover gives the step its whole time again.
    seen: Option<((u64, usize, Phase), u64)>,
    /// A switchover requested for (deploy, step), and when.
    switchover: Option<((u64, usize), u64)>,
    /// Since when the node of this (deploy, step, phase) is seen unhealthy.
    unhealthy: Option<((u64, usize, Phase), u64)>,
    paused: bool,
}

/// Moves the deploy under way while this node is the Raft leader.
pub async fn drive(node: Arc<Node>, cancel: CancellationToken) {
    let mut local = Local::default();
    loop {
        // On a tick only: woken by every applied entry, a store under load would have this
        // task read the state thousands of times a second for nothing.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if !node.cluster.is_leader() {
            local = Local::default();
            continue;
        }
        let Some(d) = node.cluster.sm.read(|d| d.change.deploy.clone()) else {
            local = Local::default();
            continue;
        };
        let (state, change) = node.cluster.sm.read(|d| (d.state.clone(), d.change.clone()));
        if let Err(e) = step(&node, &mut local, &d, &state, &change).await {
            tracing::debug!(error = %e, deploy = d.id, "deploy step not written");
        }
    }
}

async fn write(node: &Node, cmd: ChangeCmd) -> Result<(), String> {
    let r = node
        .cluster
        .write_local(Command::Change(cmd))
        .await
        .map_err(|e| e.to_string())?;
    if r.ok {
        Ok(())
    } else {
        Err(r.message)
    }
}

/// The health of `id` in words (its failing checks), for a failure reason.
fn health_detail(state: &ClusterState, id: &str) -> String {
    let Some(rec) = state.nodes.get(id) else {
        return "no health report".into();
    };
    let failing: Vec<String> = rec
        .checks
        .iter()
        .filter(|(_, c)| !c.healthy)
        .map(|(name, c)| format!("{name}: {}", c.detail))
        .collect();
    if failing.is_empty() {
        "healthy".into()
    } else {
        failing.join("; ")
    }
}

async fn step(
    node: &Node,
    local: &mut Local,
    d: &Deploy,
    state: &ClusterState,
    change: &ChangeControl,
) -> Result<(), String> {
    if failover_under_way(state) {
        if !local.paused {
            tracing::info!(deploy = d.id, "deploy waits: a failover is under way");
        }
        local.paused = true;
        return Ok(());
    }
    let now = unix_ms();
    let key = (d.id, d.step, d.phase);
    if local.paused || local.seen.map(|(k, _)| k) != Some(key) {
        local.seen = Some((key, now));
        local.paused = false;
    }
    let since = local.seen.map_or(now, |(_, t)| t).max(d.phase_at_unix_ms);
    let elapsed = now.saturating_sub(since);
    let timed_out = elapsed > d.times.step_timeout_ms;
    let Some(id) = d.node().map(str::to_string) else {
        return write(
            node,
            ChangeCmd::Done {
                deploy: d.id,
                at: now,
            },
        )
        .await;
    };
    let rec = state.nodes.get(&id);
    let healthy = rec.is_some_and(|r| r.healthy && !r.checks.is_empty());
    let runs_target = change.running_of(&id) == d.to;
    let phase = |phase| ChangeCmd::Phase {
        deploy: d.id,
        step: d.step,
        phase,
        at: now,
    };
    match d.phase {
        Phase::Pending if !node.cluster.members().iter().any(|m| m.id == id) => {
            tracing::info!(deploy = d.id, node = %id, "deploy skips a node that is no longer a member");
            advance(node, d, now).await
        }
        Phase::Pending => {
            let first = if state.active.as_deref() == Some(id.as_str()) {
                Phase::SwitchingOver
            } else if d.strategy == Strategy::Balance {
                Phase::Draining
            } else {
                Phase::Updating
            };
            write(node, phase(first)).await
        }
        Phase::SwitchingOver => {
            if state.active.as_deref() != Some(id.as_str()) {
                let next = if d.strategy == Strategy::Balance {
                    Phase::Draining
                } else {
                    Phase::Updating
                };
                return write(node, phase(next)).await;
            }
            if timed_out {
                return fail(
                    node,
                    d,
                    state,
                    change,
                    format!(
                        "the role did not move off {id} within {} ms",
                        d.times.step_timeout_ms
                    ),
                )
                .await;
            }
            let asked = local.switchover.filter(|(k, _)| *k == (d.id, d.step));
            if state.switchover.is_some()
                || asked.is_some_and(|(_, t)| now.saturating_sub(t) < SWITCHOVER_RETRY.as_millis() as u64)
            {
                return Ok(());
            }
            let Some(target) = switchover_target(node, d, state, change, &id) else {
                tracing::info!(
                    deploy = d.id,
                    version = d.to,
                    "deploy waits for a standby that runs the version healthily"
                );
                return Ok(());
            };
            tracing::info!(deploy = d.id, from = %id, to = %target, "deploy: switching over");
            local.switchover = Some(((d.id, d.step), now));
            let r = node
                .cluster
                .write_local(Command::SwitchoverIf {
                    target: Some(target),
                    cause: Cause::Switchover,
                    at: now,
                    from: Some(id.clone()),
                    epoch: Some(state.epoch),
                })
                .await
                .map_err(|e| e.to_string())?;
            if !r.ok {
                tracing::info!(reason = %r.message, "deploy switchover not accepted; asked again later");
            }
            Ok(())
        }
        Phase::Draining => {
            if !rec.is_some_and(|r| r.drain) {
                return drain(node, &id, true, now).await;
            }
            if elapsed >= d.times.drain_ms {
                return write(node, phase(Phase::Updating)).await;
            }
            Ok(())
        }
        Phase::Updating => {
            if runs_target && change.desired_of(&id) == d.to {
                return write(node, phase(Phase::Watching)).await;
            }
            if timed_out {
                return fail(
                    node,
                    d,
                    state,
                    change,
                    format!(
                        "{id} did not start version {} within {} ms",
                        d.to, d.times.step_timeout_ms
                    ),
                )
                .await;
            }
            Ok(())
        }
        Phase::Watching => {
            // Healthy for the whole window, counted from the later of the phase and the last
            // time the node became healthy: a restart's blip restarts the window, a node that
            // stays unhealthy longer than the window (or never gets a whole window within the
            // step timeout) fails the step.
            if !runs_target {
                return fail(
                    node,
                    d,
                    state,
                    change,
                    format!("{id} no longer runs version {}", d.to),
                )
                .await;
            }
            if healthy {
                local.unhealthy = None;
                let healthy_since = rec.and_then(|r| r.healthy_since_unix_ms).unwrap_or(since);
                if now.saturating_sub(healthy_since.max(since)) >= d.times.watch_ms {
                    if d.strategy == Strategy::Balance {
                        return write(node, phase(Phase::Undraining)).await;
                    }
                    return advance(node, d, now).await;
                }
            } else {
                let first = match local.unhealthy {
                    Some((k, t)) if k == key => t,
                    _ => {
                        local.unhealthy = Some((key, now));
                        now
                    }
                };
                if now.saturating_sub(first) > d.times.watch_ms {
                    return fail(
                        node,
                        d,
                        state,
                        change,
                        format!(
                            "{id} unhealthy on version {} for {} ms: {}",
                            d.to,
                            now.saturating_sub(first),
                            health_detail(state, &id)
                        ),
                    )
                    .await;
                }
            }
            if timed_out {
                return fail(
                    node,
                    d,
                    state,
                    change,
                    format!(
                        "{id} was not healthy for {} ms in a row on version {} within {} ms: {}",
                        d.times.watch_ms,
                        d.to,
                        d.times.step_timeout_ms,
                        health_detail(state, &id)
                    ),
                )
                .await;
            }
            Ok(())
        }
        Phase::Undraining => {
            if rec.is_some_and(|r| r.drain) {
                return drain(node, &id, false, now).await;
            }
            advance(node, d, now).await
        }
    }
}

/// Takes `id` out of load balancing (`on`) or puts it back.
async fn drain(node: &Node, id: &str, on: bool, now: u64) -> Result<(), String> {
    let r = node
        .cluster
        .write_local(Command::Drain {
            node: id.to_string(),
            on,
            at: now,
        })
        .await
        .map_err(|e| e.to_string())?;
    if r.ok {
        Ok(())
    } else {
        Err(r.message)
    }
}

/// The next node, or the end.
async fn advance(node: &Node, d: &Deploy, now: u64) -> Result<(), String> {
    if d.step + 1 < d.plan.len() {
        return write(
            node,
            ChangeCmd::Phase {
                deploy: d.id,
                step: d.step + 1,
                phase: Phase::Pending,
                at: now,
            },
        )
        .await;
    }
    tracing::info!(deploy = d.id, version = d.to, kind = ?d.kind, "deploy done");
    write(
        node,
        ChangeCmd::Done {
            deploy: d.id,
            at: now,
        },
    )
    .await
}

/// Where the role goes from `from`: a healthy data node that runs the deploy's target version
/// and should, not in maintenance; the best priority first.
fn switchover_target(
    node: &Node,
    d: &Deploy,
    state: &ClusterState,
    change: &ChangeControl,
    from: &str,
) -> Option<String> {
    let mut candidates: Vec<_> = node
        .cluster
        .members()
        .iter()
        .filter(|m| m.kind == NodeKind::Data && m.id != from)
        .filter(|m| change.running_of(&m.id) == d.to && change.desired_of(&m.id) == d.to)
        .filter(|m| {
            state
                .nodes
                .get(&m.id)
                .is_some_and(|r| r.healthy && !r.maintenance)
        })
        .map(|m| (m.priority, m.id.clone()))
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.into_iter().next().map(|(_, id)| id)
}

/// A step failed: the nodes that were told to run the new version go back, the failing one
/// first and the active one (if it got it) last; a rollback that fails stops the deploy.
async fn fail(
    node: &Node,
    d: &Deploy,
    state: &ClusterState,
    change: &ChangeControl,
    reason: String,
) -> Result<(), String> {
    tracing::warn!(deploy = d.id, reason = %reason, kind = ?d.kind, "deploy step failed");
    let mut back: Vec<String> = if d.kind == DeployKind::Rollback {
        Vec::new()
    } else {
        d.plan
            .iter()
            .take(d.step + 1)
            .filter(|n| change.desired_of(n) == d.to || change.running_of(n) == d.to)
            .filter(|n| node.cluster.members().iter().any(|m| m.id == **n))
            .cloned()
            .collect()
    };
    // The failing node first (it is not serving), the active node last (it switches over).
    let failing = d.node().map(str::to_string);
    back.sort_by_key(|n| {
        if Some(n) == failing.as_ref() {
            0
        } else if state.active.as_ref() == Some(n) {
            2
        } else {
            1
        }
    });
    write(
        node,
        ChangeCmd::Fail {
            deploy: d.id,
            reason,
            rollback_plan: back,
            at: unix_ms(),
        },
    )
    .await
}
