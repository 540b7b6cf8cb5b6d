//! Reports this node's health to the cluster state: only transitions are written, and a
//! write that fails (no leader yet) is retried until the replicated state matches what the
//! node observes.
//!
//! The replicated record is also reconciled: every [`RECONCILE`] the node compares it with what
//! it observes, and a check that disagrees in two rounds in a row (a lost write, a write by a
//! buggy or hostile peer, a state restored from an old snapshot) is written again. Two rounds,
//! so that a write this node just made and has not applied locally yet is not repeated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::shared::{Acting, Node};
use crate::clock::unix_ms;
use crate::cluster::state::Command;
use crate::config::ServiceMode;
use crate::health::Transition;
use crate::service::ProcState;
use crate::version::VERSION;

/// The name of the check that stands for "the supervised process is running".
pub const PROCESS_CHECK: &str = "process";

/// How often the replicated health record is compared with what this node observes.
pub const RECONCILE: Duration = Duration::from_secs(1);

fn describe(state: &ProcState) -> (bool, String) {
    match state {
        ProcState::Running { pid, .. } => (true, format!("running (pid {pid})")),
        ProcState::Stopped => (false, "stopped".into()),
        ProcState::Starting => (false, "starting".into()),
        ProcState::Exited { code, signal } => (
            false,
            match (code, signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "exited".into(),
            },
        ),
        ProcState::Backoff { restart_in_ms } => (false, format!("crashed; restart in {restart_in_ms} ms")),
    }
}

/// A short digest of the effective configuration, secrets left out (see `Config::digest`).
fn config_digest(config: &crate::config::Config) -> String {
    config.digest()
}

pub async fn run(node: Arc<Node>, mut transitions: UnboundedReceiver<Transition>, cancel: CancellationToken) {
    let me = node.cluster.me().to_string();
    let warm = node
        .config
        .service
        .as_ref()
        .is_some_and(|s| s.mode == ServiceMode::Warm);
    // What the checks say (observed) and what the cluster state has (reported).
    let mut observed: BTreeMap<String, (bool, String)> = node
        .config
        .checks
        .iter()
        .map(|c| (c.name.clone(), (false, "not yet checked".to_string())))
        .collect();
    observed.insert(PROCESS_CHECK.into(), (false, "starting".into()));
    let mut reported: BTreeMap<String, (bool, String)> = BTreeMap::new();
    let mut started = false;
    // A hot restart: the checks go on from where the previous program left them (the cluster
    // has their state), and the node reports a resumption, not a start.
    let resumed_from = node
        .daemon
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .resumed_from
        .clone();
    if resumed_from.is_some() {
        if let Some(h) = &node.health {
            for c in h.snapshot() {
                let detail = if c.healthy { "ok" } else { "not yet checked" };
                observed.insert(c.name, (c.healthy, detail.to_string()));
            }
        }
    }
    let mut proc_rx = node.supervisor.as_ref().map(|s| s.state());
    let mut local_rx = node.local.subscribe();
    // Warm mode: when the service was started for a promotion, and which checks have passed
    // since. Until a check passes once (or the promote timeout runs out), it is not reported
    // failing: a service that is still starting is not a failed service.
    let mut warm_started: Option<std::time::Instant> = None;
    let mut passed_since_start: std::collections::BTreeSet<String> = Default::default();
    let grace = node.config.timing.promote_timeout;
    let mut last_reconcile = std::time::Instant::now();
    // Checks whose replicated state disagreed with ours in the last round.
    let mut suspect: std::collections::BTreeSet<String> = Default::default();
    if let Some(rx) = proc_rx.as_mut() {
        observed.insert(PROCESS_CHECK.into(), describe(&rx.borrow_and_update()));
    }
    loop {
        // A warm standby runs no service by design: it is healthy while the node is up.
        let acting = node.local.borrow().acting != Acting::Standby;
        if warm && acting {
            warm_started.get_or_insert_with(std::time::Instant::now);
            for (k, (healthy, _)) in &observed {
                if *healthy {
                    passed_since_start.insert(k.clone());
                }
            }
        } else {
            warm_started = None;
            passed_since_start.clear();
        }
        let in_grace = warm_started.is_some_and(|s| s.elapsed() < grace);
        let effective: BTreeMap<String, (bool, String)> = observed
            .iter()
            .map(|(k, (healthy, detail))| {
                let v = if warm && !acting {
                    (true, "warm standby (service not running)".to_string())
                } else if in_grace && !healthy && !passed_since_start.contains(k) {
                    (true, "warm start: service starting".to_string())
                } else {
                    (*healthy, detail.clone())
                };
                (k.clone(), v)
            })
            .collect();
        let mut pending = false;
        if !started {
            let cmd = match &resumed_from {
                Some(from) => Command::NodeResumed {
                    node: me.clone(),
                    version: VERSION.into(),
                    from_version: from.clone(),
                    config: config_digest(&node.config),
                    checks: observed.keys().cloned().collect(),
                    at: unix_ms(),
                },
                None => Command::NodeStarted {
                    node: me.clone(),
                    version: VERSION.into(),
                    checks: observed.keys().cloned().collect(),
                    config: config_digest(&node.config),
                    at: unix_ms(),
                },
            };
            match cancellable(&cancel, node.cluster.write(cmd)).await {
                Ok(_) => {
                    started = true;
                    node.started_reported
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    reported = match &resumed_from {
                        // What the cluster had before the restart, as the checks go on from it.
                        Some(_) => node.cluster.sm.read(|d| {
                            d.state
                                .nodes
                                .get(&me)
                                .map(|r| {
                                    r.checks
                                        .iter()
                                        .map(|(k, c)| (k.clone(), (c.healthy, c.detail.clone())))
                                        .collect()
                                })
                                .unwrap_or_default()
                        }),
                        None => observed
                            .keys()
                            .map(|k| (k.clone(), (false, "not yet checked".to_string())))
                            .collect(),
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot register node yet");
                    pending = true;
                }
            }
        }
        if started && !pending && last_reconcile.elapsed() >= RECONCILE {
            last_reconcile = std::time::Instant::now();
            let replicated: BTreeMap<String, bool> = node.cluster.sm.read(|d| {
                d.state
                    .nodes
                    .get(&me)
                    .map(|r| r.checks.iter().map(|(k, c)| (k.clone(), c.healthy)).collect())
                    .unwrap_or_default()
            });
            let mut now_suspect = std::collections::BTreeSet::new();
            for (check, (healthy, _)) in &effective {
                let agrees = replicated.get(check) == Some(healthy);
                let believed = reported.get(check).map(|r| r.0) == Some(*healthy);
                if agrees || !believed {
                    continue;
                }
                if suspect.contains(check) {
                    tracing::warn!(check = %check, healthy, "the replicated health of this node differs from what it observes; writing it again");
                    reported.remove(check);
                } else {
                    now_suspect.insert(check.clone());
                }
            }
            suspect = now_suspect;
        }
        if started {
            for (check, (healthy, detail)) in &effective {
                if reported.get(check).map(|r| r.0) == Some(*healthy) {
                    continue;
                }
                let cmd = Command::Health {
                    node: me.clone(),
                    check: check.clone(),
                    healthy: *healthy,
                    detail: detail.clone(),
                    at: unix_ms(),
                };
                match cancellable(&cancel, node.cluster.write(cmd)).await {
                    Ok(_) => {
                        tracing::info!(check = %check, healthy, detail = %detail, "health transition recorded");
                        reported.insert(check.clone(), (*healthy, detail.clone()));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot record health transition yet");
                        pending = true;
                        break;
                    }
                }
            }
        }
        let retry = if pending {
            Duration::from_millis(50)
        } else if in_grace {
            // Re-evaluate when the warm-start grace may have ended.
            Duration::from_millis(100)
        } else {
            RECONCILE
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            t = transitions.recv() => match t {
                Some(t) => { observed.insert(t.check, (t.healthy, t.detail)); }
                None => return,
            },
            r = async {
                match proc_rx.as_mut() {
                    Some(rx) => rx.changed().await.map(|_| describe(&rx.borrow_and_update())),
                    None => std::future::pending().await,
                }
            } => match r {
                Ok(d) => { observed.insert(PROCESS_CHECK.into(), d); }
                Err(_) => return,
            },
            r = local_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// A write that gives up when the node shuts down (it may wait seconds for a leader).
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, crate::cluster::ClusterError>>,
) -> Result<T, crate::cluster::ClusterError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(crate::cluster::ClusterError::Refused {
            reason: "shutting down".into(),
            retry: true,
        }),
        r = fut => r,
    }
}
