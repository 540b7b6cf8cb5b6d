//! The daemon's side of the VIP: runs the keeper process and tells it, from this node's
//! acting role, whether it may hold the address and for how long.
//!
//! While the node acts as active it sends `hold <ms>` on every change of its role or lease and
//! at least every heartbeat, with `ms = lease_until - now - margin` (never past the lease); in
//! any other role it sends `release`. On shutdown it releases, closes the keeper's stdin and
//! waits for it to exit. A keeper that dies is started again with a backoff; the VIP it may
//! have left behind is deleted by the daemon at once, and re-added by the next keeper if the
//! node is still active.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::netlink::Netlink;
use super::{monotonic_us, KeeperArgs, Order, Report, Vip};
use crate::node::shared::{Acting, LocalRole};

/// Everything the driver needs, from the node's config and runtime.
pub struct Driver {
    pub args: KeeperArgs,
    /// The `standin` binary that runs the keeper (the daemon's own executable).
    pub binary: PathBuf,
    /// This node's acting role, published by the role loop.
    pub local: watch::Receiver<LocalRole>,
    pub heartbeat: Duration,
    /// The lease margin (`Timing::lease_margin`), taken off every hold.
    pub margin: Duration,
    /// The VIP while the keeper reports it on the interface (for `/v1/lease`).
    pub held: Arc<Mutex<Option<Vip>>>,
    /// Set when a hold is sent, cleared when the keeper confirms the VIP is off the interface
    /// (the role loop waits for that before it confirms a release to the cluster).
    pub unreleased: Arc<AtomicBool>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A keeper that ran this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// What the keeper must be told now.
pub fn order_for(role: &LocalRole, now: Instant, margin: Duration) -> Order {
    match (role.acting, role.lease_until) {
        (Acting::Active, Some(until)) => {
            let left = until.saturating_duration_since(now).saturating_sub(margin);
            if left.as_millis() == 0 {
                Order::Release
            } else {
                Order::Hold {
                    ms: left.as_millis() as u64,
                    stamp_us: Some(monotonic_us()),
                }
            }
        }
        _ => Order::Release,
    }
}

impl Driver {
    fn spawn(&self) -> std::io::Result<Child> {
        let a = &self.args;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("vip-keeper")
            .arg("--interface")
            .arg(&a.interface)
            .arg("--vip")
            .arg(a.vip.to_string())
            .arg("--garp-count")
            .arg(a.garp_count.to_string())
            .arg("--garp-interval")
            .arg(humantime::format_duration(a.garp_interval).to_string())
            .arg("--garp-refresh")
            .arg(humantime::format_duration(a.garp_refresh).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own process group: a signal to the daemon's group must not reach it; it acts on
        // stdin EOF and its deadline instead.
        cmd.as_std_mut().process_group(0);
        cmd.spawn()
    }

    fn set_held(&self, held: bool) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held.then_some(self.args.vip);
    }

    /// Runs until `cancel`, then releases the VIP and stops the keeper.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(binary = %self.binary.display(), error = %e, "cannot start the vip keeper");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let started = Instant::now();
            tracing::info!(pid = child.id(), interface = %self.args.interface, vip = %self.args.vip, "vip keeper started");
            let stopped = self.drive(&mut child, &cancel).await;
            if stopped {
                return;
            }
            let status = child.wait().await;
            tracing::warn!(status = ?status, interface = %self.args.interface, vip = %self.args.vip, "vip keeper exited; restarting it");
            // A keeper killed outright leaves the VIP behind; it must not outlast the lease
            // while the next keeper is not running yet (it would re-add it on the next hold).
            self.delete_left_behind().await;
            if started.elapsed() >= STABLE {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Deletes the VIP from the interface directly (the daemon has the same rights as the
    /// keeper); errors are logged, the next keeper tries again at its start.
    async fn delete_left_behind(&self) {
        let (iface, vip) = (&self.args.interface, self.args.vip);
        let result = async {
            let nl = Netlink::open()?;
            let index = nl.index_of(iface, vip).await?;
            nl.delete(iface, index, vip).await
        }
        .await;
        match result {
            Ok(true) => {
                tracing::warn!(interface = %iface, vip = %vip, "deleted the vip left by the dead keeper")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot delete the vip left by the dead keeper"),
        }
    }

    /// Feeds one keeper. Returns true when stopped by `cancel` (keeper stopped too), false
    /// when the keeper went away.
    async fn drive(&mut self, child: &mut Child, cancel: &CancellationToken) -> bool {
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return false;
        };
        let mut reports = BufReader::new(stdout).lines();
        let mut last_sent: Option<Order> = None;
        self.local.mark_changed();
        loop {
            let order = order_for(&self.local.borrow_and_update(), Instant::now(), self.margin);
            // Holds go out every time (each one extends the deadline); a release once.
            if !(order == Order::Release && last_sent == Some(Order::Release)) {
                if matches!(order, Order::Hold { .. }) {
                    // Before the write: the keeper may act on it at once.
                    self.unreleased.store(true, Ordering::SeqCst);
                }
                if let Err(e) = stdin.write_all(format!("{order}\n").as_bytes()).await {
                    tracing::warn!(error = %e, "cannot write to the vip keeper");
                    return false;
                }
                last_sent = Some(order);
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.stop(child, stdin).await;
                    return true;
                }
                r = self.local.changed() => if r.is_err() {
                    self.stop(child, stdin).await;
                    return true;
                },
                _ = tokio::time::sleep(self.heartbeat) => {}
                line = reports.next_line() => match line {
                    Ok(Some(line)) => self.on_report(&line, last_sent),
                    Ok(None) | Err(_) => return false,
                },
            }
        }
    }

    fn on_report(&self, line: &str, last_sent: Option<Order>) {
        let (iface, vip) = (&self.args.interface, self.args.vip);
        match Report::parse(line) {
            Some(Report::Held) => {
                tracing::info!(interface = %iface, vip = %vip, "holding the vip");
                self.set_held(true);
            }
            Some(Report::Released) => {
                tracing::info!(interface = %iface, vip = %vip, "not holding the vip");
                self.set_held(false);
                // Off the interface, and no hold in flight that could put it back.
                if !matches!(last_sent, Some(Order::Hold { .. })) {
                    self.unreleased.store(false, Ordering::SeqCst);
                }
            }
            Some(Report::Error(e)) => {
                tracing::warn!(interface = %iface, vip = %vip, error = %e, "vip keeper reports an error")
            }
            None => tracing::warn!(line, "unexpected line from the vip keeper"),
        }
    }

    /// Releases the VIP and lets the keeper exit (stdin EOF); kills it if it hangs.
    async fn stop(&self, child: &mut Child, mut stdin: tokio::process::ChildStdin) {
        let _ = stdin.write_all(format!("{}\n", Order::Release).as_bytes()).await;
        drop(stdin);
        match tokio::time::timeout(Duration::from_secs(3), child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                // It exits 0 only after the VIP is off the interface.
                tracing::info!("vip keeper stopped");
                self.set_held(false);
                self.unreleased.store(false, Ordering::SeqCst);
            }
            Ok(status) => tracing::warn!(status = ?status, "vip keeper stopped with an error"),
            Err(_) => {
                tracing::warn!("vip keeper did not exit within 3 s; killing it");
                let _ = child.kill().await;
                self.delete_left_behind().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(acting: Acting, until: Option<Instant>) -> LocalRole {
        LocalRole {
            acting,
            epoch: 3,
            lease_until: until,
        }
    }

    #[test]
    fn holds_only_while_active_and_never_past_the_lease() {
        let now = Instant::now();
        let margin = Duration::from_millis(40);
        let ms = |o: Order| match o {
            Order::Hold { ms, stamp_us } => {
                assert!(stamp_us.is_some(), "holds are stamped");
                Some(ms)
            }
            Order::Release => None,
        };
        let until = now + Duration::from_millis(360);
        assert_eq!(
            ms(order_for(&role(Acting::Active, Some(until)), now, margin)),
            Some(320)
        );
        // A lease about to run out (within the margin) or gone: release.
        let soon = now + Duration::from_millis(30);
        assert_eq!(
            order_for(&role(Acting::Active, Some(soon)), now, margin),
            Order::Release
        );
        let past = now - Duration::from_millis(1);
        assert_eq!(
            order_for(&role(Acting::Active, Some(past)), now, margin),
            Order::Release
        );
        assert_eq!(
            order_for(&role(Acting::Active, None), now, margin),
            Order::Release
        );
        for acting in [Acting::Standby, Acting::Promoting] {
            assert_eq!(order_for(&role(acting, Some(until)), now, margin), Order::Release);
        }
    }
}
