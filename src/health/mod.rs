//! Health checks of the managed service: probing, rise/fall thresholds, transitions.
//!
//! [`spawn_checks`] runs one task per `[[check]]`. Each task probes on its `interval`, every
//! probe bounded by the check's `timeout` (`probe` owns the tcp, http and exec probes), and
//! feeds the result to the thresholds (HAProxy semantics): a check starts *unhealthy*, turns
//! healthy after `rise` consecutive successes, and turns unhealthy again only after `fall`
//! consecutive failures, so a single lost probe, or a flapping one, never flips it.
//!
//! Only transitions go to the channel, which the node runtime turns into cluster events and
//! failover inputs. The full per-check picture (latency, counters, recent results) is read
//! through [`HealthHandle::snapshot`] by the admin API.

mod probe;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::CheckConfig;
use probe::Prober;

/// How many recent probe results a [`CheckStatus`] keeps.
pub const RECENT_RESULTS: usize = 20;

/// The current state of one check, as reported by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub name: String,
    /// The thresholded state: what failover decisions use.
    pub healthy: bool,
    /// Short text of the last probe: "ok", "status 500", "connect refused", "timeout", ...
    pub last_result: Option<String>,
    pub last_latency_ms: Option<f64>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    /// When `healthy` last changed (never, while it is still in its initial unhealthy state).
    pub last_change_unix_ms: Option<u64>,
    /// Up to the last [`RECENT_RESULTS`] probe results, newest last.
    pub recent: Vec<bool>,
}

impl CheckStatus {
    /// The state of a check that has not been probed yet: unhealthy until proven otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        CheckStatus {
            name: name.into(),
            healthy: false,
            last_result: None,
            last_latency_ms: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_change_unix_ms: None,
            recent: Vec::new(),
        }
    }

    /// Applies one probe result and the `rise`/`fall` thresholds. Returns `true` when
    /// `healthy` changed.
    pub fn record(&mut self, probe: &ProbeResult, rise: u32, fall: u32, now_unix_ms: u64) -> bool {
        if probe.ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
        } else {
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
        }
        self.last_result = Some(probe.detail.clone());
        self.last_latency_ms = Some(probe.latency_ms);
        // Keep the Vec (not a VecDeque) because it is what gets serialized; 20 elements make
        // the shift free.
        if self.recent.len() >= RECENT_RESULTS {
            self.recent.remove(0);
        }
        self.recent.push(probe.ok);

        let flip = if self.healthy {
            self.consecutive_fail >= fall
        } else {
            self.consecutive_ok >= rise
        };
        if flip {
            self.healthy = !self.healthy;
            self.last_change_unix_ms = Some(now_unix_ms);
        }
        flip
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    /// Short text: "ok" or why it failed.
    pub detail: String,
    pub latency_ms: f64,
}

/// A check changed between healthy and unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub check: String,
    pub healthy: bool,
    /// The result of the probe that caused the change ("ok", "timeout", ...).
    pub detail: String,
}

/// Reads the state of the running checks. Cheap to clone; the checks stop when the
/// cancellation token given to [`spawn_checks`] fires, not when handles are dropped.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    /// One entry per check, in config order. A std mutex: it is held only to copy or update
    /// a few fields, never across an await.
    statuses: Arc<Mutex<Vec<CheckStatus>>>,
}

impl HealthHandle {
    /// The current state of every check, in config order.
    pub fn snapshot(&self) -> Vec<CheckStatus> {
        self.lock().clone()
    }

    /// Whether every check is healthy. True when there are no checks.
    pub fn all_healthy(&self) -> bool {
        self.lock().iter().all(|s| s.healthy)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<CheckStatus>> {
        // A panic while holding the lock cannot leave a half-updated status that matters more
        // than losing health reporting altogether, so keep going with the data.
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts one probing task per check. Transitions are sent on `transitions` (a closed
/// receiver is ignored: the snapshot stays current). All tasks end when `cancel` fires,
/// killing an exec probe that is still running.
pub fn spawn_checks(
    checks: Vec<CheckConfig>,
    transitions: UnboundedSender<Transition>,
    cancel: CancellationToken,
) -> HealthHandle {
    spawn_checks_from(checks, &std::collections::BTreeMap::new(), transitions, cancel)
}

/// [`spawn_checks`], each check starting in the state `initial` gives it (a check it does
/// not name starts unhealthy). A hot restart continues where the previous program stopped:
/// a healthy check stays healthy until `fall` probes fail, and no transition is sent for a
/// state the cluster already has.
pub fn spawn_checks_from(
    checks: Vec<CheckConfig>,
    initial: &std::collections::BTreeMap<String, bool>,
    transitions: UnboundedSender<Transition>,
    cancel: CancellationToken,
) -> HealthHandle {
    let handle = HealthHandle {
        statuses: Arc::new(Mutex::new(
            checks
                .iter()
                .map(|c| {
                    let mut s = CheckStatus::new(&c.name);
                    if initial.get(&c.name) == Some(&true) {
                        s.healthy = true;
                        s.last_result = Some("healthy before the hot restart".into());
                    }
                    s
                })
                .collect(),
        )),
    };
    for (index, check) in checks.into_iter().enumerate() {
        let task = CheckTask {
            index,
            prober: Prober::new(&check.kind),
            check,
            handle: handle.clone(),
            transitions: transitions.clone(),
        };
        tokio::spawn(task.run(cancel.clone()));
    }
    handle
}

struct CheckTask {
    /// Position of this check's status in the handle.
    index: usize,
    check: CheckConfig,
    prober: Prober,
    handle: HealthHandle,
    transitions: UnboundedSender<Transition>,
}

impl CheckTask {
    async fn run(self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.check.interval);
        // A slow probe delays the next one instead of causing a burst of catch-up probes.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.prober.probe(self.check.timeout) => outcome,
            };
            let result = ProbeResult {
                ok: outcome.is_ok(),
                detail: outcome.err().unwrap_or_else(|| "ok".to_string()),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            };
            self.record(result);
        }
    }

    fn record(&self, result: ProbeResult) {
        let changed = {
            let mut statuses = self.handle.lock();
            let Some(status) = statuses.get_mut(self.index) else {
                return;
            };
            status
                .record(&result, self.check.rise, self.check.fall, unix_ms())
                .then_some(status.healthy)
        };
        let Some(healthy) = changed else {
            tracing::trace!(check = %self.check.name, ok = result.ok, detail = %result.detail, "probe");
            return;
        };
        if healthy {
            tracing::info!(check = %self.check.name, detail = %result.detail, "check healthy");
        } else {
            tracing::warn!(check = %self.check.name, detail = %result.detail, "check unhealthy");
        }
        // Nobody listening is not an error: the snapshot still tells the story.
        let _ = self.transitions.send(Transition {
            check: self.check.name.clone(),
            healthy,
            detail: result.detail,
        });
    }
}

use crate::clock::unix_ms;

#[cfg(test)]
mod tests;
