//! The role loop of a data node: turns the replicated state and this node's lease into what
//! the node *does*: act as active (promote hook, service primary) or as standby.
//!
//! The node acts as active only while (a) the committed state names it active at the current
//! epoch and (b) it holds an unexpired lease for that epoch. It stops acting the moment either
//! goes, before its lease can run out: the demote is published first (the service sees
//! "standby" at once), then the `on-demote` hook runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::shared::{Acting, Node};
use crate::clock::unix_ms;
use crate::cluster::state::{Change, Command, HookRecord};
use crate::config::ServiceMode;
use crate::service::hooks::{HookKind, HookOutcome};

fn record(o: &HookOutcome) -> HookRecord {
    HookRecord {
        hook: o.kind.to_string(),
        ok: o.ok,
        exit_code: o.exit_code,
        timed_out: o.timed_out,
        duration_ms: o.duration_ms,
        output: o.output.clone(),
    }
}

/// Commits `cmd` in the background, retrying for a while: the role loop must never block on a
/// leader election.
fn write_async(node: &Arc<Node>, cmd: Command) {
    let node = node.clone();
    tokio::spawn(async move {
        for attempt in 0..50u32 {
            match node.cluster.write(cmd.clone()).await {
                Ok(_) => return,
                Err(e) if e.retryable() && attempt < 49 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not record role change");
                    return;
                }
            }
        }
    });
}

pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let me = node.cluster.me().to_string();
    let mut applied = node.cluster.sm.subscribe();
    let mut lease_rx = node.lease.subscribe();
    // An epoch whose promotion failed here: never retried by this node.
    let mut failed_epoch: Option<u64> = None;
    let heartbeat = node.config.timing.heartbeat_interval;
    // Taken over acting as active (hot restart): the state machine is still replaying its log
    // right after the start; judge the role only once it reached the epoch handed over (or
    // the lease ran out, which demotes below).
    let seeded = *node.local.borrow();
    if seeded.acting == Acting::Active {
        loop {
            let epoch = node.cluster.sm.read(|d| d.state.epoch);
            let lease_left = node.lease.borrow().is_some_and(|l| Instant::now() < l.until);
            if epoch >= seeded.epoch || !lease_left {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = applied.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
    loop {
        let (active, epoch, promotion, deposed) = node.cluster.sm.read(|d| {
            (
                d.state.active.clone(),
                d.state.epoch,
                d.state.promotion.clone(),
                d.state.deposed.clone(),
            )
        });
        let named = active.as_deref() == Some(me.as_str());
        let now = Instant::now();
        let lease = *node.lease.borrow();
        let lease_valid = lease.is_some_and(|l| l.epoch == epoch && now < l.until);
        let local = *node.local.borrow();

        if local.acting == Acting::Active {
            if !named || local.epoch != epoch {
                demote(&node, local.epoch, "deposed").await;
                wait_service_stood_down(&node).await;
                wait_vip_released(&node).await;
                if deposed
                    .as_ref()
                    .is_some_and(|d| d.node == me && d.epoch == local.epoch)
                {
                    write_async(
                        &node,
                        Command::Released {
                            node: me.clone(),
                            epoch: local.epoch,
                            reason: "stopped acting as active".into(),
                            at: unix_ms(),
                        },
                    );
                }
                continue;
            }
            if !lease_valid {
                tracing::warn!(epoch, "lease expired: demoting before it runs out");
                demote(&node, epoch, "lease lost").await;
                continue;
            }
            // Publish the renewed lease so the service keeps acting.
            let until = lease.map(|l| l.until);
            node.local.send_if_modified(|r| {
                let changed = r.lease_until != until;
                r.lease_until = until;
                changed
            });
        } else if named
            && lease_valid
            && failed_epoch != Some(epoch)
            && node.started_reported.load(std::sync::atomic::Ordering::SeqCst)
        {
            let pending = promotion.as_ref().filter(|p| p.node == me && p.epoch == epoch);
            if promote(&node, epoch, pending.cloned()).await == Promoted::HookFailed {
                failed_epoch = Some(epoch);
            }
            continue;
        }

        // Sleep until something changes, or the lease is about to run out.
        let lease_deadline = if node.local.borrow().acting == Acting::Active {
            lease.map(|l| tokio::time::Instant::from_std(l.until))
        } else {
            None
        };
        let far = crate::config::later_tokio(tokio::time::Instant::now(), heartbeat);
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            r = lease_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(lease_deadline.unwrap_or(far).min(far)) => {}
        }
    }
}

/// How a promotion on this node ended.
#[derive(Debug, PartialEq, Eq)]
enum Promoted {
    Acting,
    /// The hook failed: the cluster tries another node; this one never retries the epoch.
    HookFailed,
    /// The hook succeeded but the lease ran out meanwhile: act once it is renewed.
    LeaseLapsed,
}

/// Runs the promotion on this node: fence (if asked), start a warm service, the promote hook;
/// then reports the result.
async fn promote(
    node: &Arc<Node>,
    epoch: u64,
    pending: Option<crate::cluster::state::Promotion>,
) -> Promoted {
    let me = node.cluster.me().to_string();
    let previous = pending.as_ref().and_then(|p| p.previous.clone());
    tracing::info!(epoch, previous = ?previous, "promoting");
    node.local.send_replace(super::LocalRole {
        acting: Acting::Promoting,
        epoch,
        lease_until: None,
    });
    let mut hooks = Vec::new();
    if pending.as_ref().is_some_and(|p| p.fence) {
        let fence = node
            .hooks
            .run(HookKind::Fence, "active", epoch, previous.as_deref())
            .await;
        if fence.ran {
            // The lease already guarantees the old active stopped; the fence result is recorded.
            tracing::info!(ok = fence.ok, "fence hook ran");
            hooks.push(record(&fence));
        }
    }
    if let (Some(sup), Some(svc)) = (&node.supervisor, &node.config.service) {
        if svc.mode == ServiceMode::Warm {
            sup.set_desired(true).await;
        }
    }
    let outcome = node
        .hooks
        .run(HookKind::Promote, "active", epoch, previous.as_deref())
        .await;
    if outcome.ran {
        hooks.push(record(&outcome));
    }
    // The hook may have taken a while: is the lease still good?
    let lease_ok = node
        .lease
        .borrow()
        .is_some_and(|l| l.epoch == epoch && Instant::now() < l.until);
    let ok = outcome.ok;
    if ok && lease_ok {
        let until = node.lease.borrow().map(|l| l.until);
        node.local.send_replace(super::LocalRole {
            acting: Acting::Active,
            epoch,
            lease_until: until,
        });
        tracing::info!(epoch, "acting as active");
    } else {
        node.local.send_replace(super::LocalRole {
            acting: Acting::Standby,
            epoch,
            lease_until: None,
        });
        if let (Some(sup), Some(svc)) = (&node.supervisor, &node.config.service) {
            if svc.mode == ServiceMode::Warm {
                sup.set_desired(false).await;
            }
        }
        if !ok {
            tracing::warn!(epoch, output = %outcome.output, "promote hook failed");
        }
    }
    let at = unix_ms();
    match pending {
        Some(_) => write_async(
            node,
            Command::PromoteResult {
                node: me.clone(),
                epoch,
                ok,
                hooks,
                at,
            },
        ),
        None => {
            for h in hooks {
                write_async(
                    node,
                    Command::HookRun {
                        node: me.clone(),
                        epoch,
                        hook: h,
                        at,
                    },
                );
            }
            if !ok {
                write_async(
                    node,
                    Command::Released {
                        node: me.clone(),
                        epoch,
                        reason: "on-promote hook failed".into(),
                        at,
                    },
                );
            }
        }
    }
    match (ok, lease_ok) {
        (false, _) => Promoted::HookFailed,
        (true, true) => Promoted::Acting,
        (true, false) => Promoted::LeaseLapsed,
    }
}

/// Waits until the service can no longer believe it is active: it has asked `/v1/lease` again
/// and heard "standby", or the lease it was last told has run out. Only then may the node
/// confirm a release (which lets a successor start without waiting for the lease).
async fn wait_service_stood_down(node: &Arc<Node>) {
    loop {
        let handed = *node.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        // The process that was told "active" is gone (crashed, or replaced by a restart that
        // never heard it): nothing can still act on that lease.
        let current = node.supervisor.as_ref().and_then(|s| s.pid());
        let gone = |told: Option<u32>| told.is_none() || told != current;
        match handed {
            Some((until, told)) if Instant::now() < until && !gone(told) => {
                tokio::time::sleep(
                    Duration::from_millis(2).min(until.saturating_duration_since(Instant::now())),
                )
                .await;
            }
            _ => return,
        }
    }
}

/// Waits until the VIP keeper confirmed the address is off the interface, or until any hold
/// it was given has run out (holds never outlast the lease, counted from before the demote).
/// Only then may the node confirm a release: a successor promoted on that release adds the
/// VIP at once, without waiting for our lease.
async fn wait_vip_released(node: &Arc<Node>) {
    let until = crate::config::later(Instant::now(), node.config.timing.lease);
    while node.vip_unreleased.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stops acting as active: the service learns at once, then the demote hook runs.
async fn demote(node: &Arc<Node>, epoch: u64, reason: &str) {
    node.local.send_replace(super::LocalRole {
        acting: Acting::Standby,
        epoch,
        lease_until: None,
    });
    tracing::info!(epoch, reason, "demoted");
    let outcome = node.hooks.run(HookKind::Demote, "standby", epoch, None).await;
    if let (Some(sup), Some(svc)) = (&node.supervisor, &node.config.service) {
        if svc.mode == ServiceMode::Warm {
            sup.set_desired(false).await;
        }
    }
    if outcome.ran {
        write_async(
            node,
            Command::HookRun {
                node: node.cluster.me().to_string(),
                epoch,
                hook: record(&outcome),
                at: unix_ms(),
            },
        );
    }
}

/// On daemon shutdown: stop acting and tell the cluster, so a successor needs no lease wait.
pub async fn shutdown(node: &Arc<Node>) {
    let local = *node.local.borrow();
    if local.acting == Acting::Standby {
        return;
    }
    demote(node, local.epoch, "shutting down").await;
    wait_service_stood_down(node).await;
    wait_vip_released(node).await;
    let me = node.cluster.me().to_string();
    let at = unix_ms();
    // One entry: the coordinator must never see the release without the node being unhealthy,
    // or it could pick this node again.
    let cmd = Command::batch(vec![
        Change::Health {
            node: me.clone(),
            check: super::reporter::PROCESS_CHECK.into(),
            healthy: false,
            detail: "node shutting down".into(),
            at,
        },
        Change::Released {
            node: me,
            epoch: local.epoch,
            reason: "node shutting down".into(),
            at,
        },
    ]);
    if let Err(e) = tokio::time::timeout(Duration::from_secs(2), node.cluster.write(cmd)).await {
        tracing::warn!(error = %e, "could not record release before shutdown");
    }
}
