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

use std::os::fd::{AsRawFd, RawFd};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::netlink::Netlink;
use super::{monotonic_us, KeeperArgs, Order, Report, Vip};
use crate::node::shared::{Acting, LocalRole};
use crate::service::process::Proc;

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
    /// A keeper handed over by the program this one replaced (hot restart): driven instead of
    /// starting a new one.
    pub adopt: Option<AdoptKeeper>,
    /// Hot restart: asks the driver for its keeper (pid and pipes) and to stop driving it.
    pub hand_over: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<Option<AdoptKeeper>>>,
}

/// A running keeper passed between daemon programs (hot restart): its pid (a child of this
/// pid), the write end of its stdin and the read end of its stdout.
#[derive(Debug)]
pub struct AdoptKeeper {
    pub pid: u32,
    pub stdin: std::os::fd::OwnedFd,
    pub stdout: std::os::fd::OwnedFd,
}

/// A keeper process being driven, spawned or adopted.
struct Keeper {
    proc: Proc,
    stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
    stdout: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    /// The raw descriptors of the two pipes, for a hand-over.
    fds: (RawFd, RawFd),
}

impl Keeper {
    fn spawned(mut child: Child) -> std::io::Result<Keeper> {
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("keeper spawned without pipes"));
        };
        let fds = (stdin.as_raw_fd(), stdout.as_raw_fd());
        Ok(Keeper {
            proc: Proc::Spawned(child),
            stdin: Some(Box::new(stdin)),
            stdout: Some(Box::new(stdout)),
            fds,
        })
    }

    fn adopted(a: AdoptKeeper) -> std::io::Result<Keeper> {
        let fds = (a.stdin.as_raw_fd(), a.stdout.as_raw_fd());
        let proc = Proc::Adopted(crate::service::process::Adopted::new(a.pid)?);
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(a.stdin)?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(a.stdout)?;
        Ok(Keeper {
            proc,
            stdin: Some(Box::new(stdin)),
            stdout: Some(Box::new(stdout)),
            fds,
        })
    }
}

/// How driving one keeper ended.
enum Driven {
    /// `cancel`: the keeper released the VIP and was stopped.
    Stopped,
    /// Handed over to the next program.
    HandedOver,
    /// The keeper went away (crash, closed pipe).
    KeeperGone,
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

    /// Runs until `cancel`, then releases the VIP and stops the keeper; or until a hand-over
    /// (hot restart), after which the keeper is left alone, holding what it was told.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let adopted = self.adopt.take().map(|a| {
                let pid = a.pid;
                Keeper::adopted(a).inspect_err(|e| {
                    tracing::warn!(pid, error = %e, "the vip keeper handed over cannot be adopted; starting a new one")
                })
            });
            let mut keeper = match adopted {
                Some(Ok(k)) => {
                    tracing::info!(
                        pid = k.proc.id(),
                        "vip keeper adopted from the previous program (hot restart)"
                    );
                    k
                }
                _ => match self.spawn().and_then(Keeper::spawned) {
                    Ok(k) => {
                        tracing::info!(pid = k.proc.id(), interface = %self.args.interface, vip = %self.args.vip, "vip keeper started");
                        k
                    }
                    Err(e) => {
                        tracing::error!(binary = %self.binary.display(), error = %e, "cannot start the vip keeper");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let started = Instant::now();
            match self.drive(&mut keeper, &cancel).await {
                Driven::Stopped => return,
                Driven::HandedOver => {
                    // Leave the keeper to the next program; this task has nothing left to do.
                    cancel.cancelled().await;
                    return;
                }
                Driven::KeeperGone => {}
            }
            let status = keeper.proc.wait().await;
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

    /// Feeds one keeper until `cancel` (keeper stopped too), a hand-over, or the keeper going
    /// away.
    async fn drive(&mut self, keeper: &mut Keeper, cancel: &CancellationToken) -> Driven {
        let (Some(mut stdin), Some(stdout)) = (keeper.stdin.take(), keeper.stdout.take()) else {
            return Driven::KeeperGone;
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
                    return Driven::KeeperGone;
                }
                last_sent = Some(order);
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.stop(&mut keeper.proc, stdin).await;
                    return Driven::Stopped;
                }
                r = self.local.changed() => if r.is_err() {
                    self.stop(&mut keeper.proc, stdin).await;
                    return Driven::Stopped;
                },
                Some(reply) = self.hand_over.recv() => {
                    let handed = match (keeper.proc.id(), crate::handover::dup(keeper.fds.0), crate::handover::dup(keeper.fds.1)) {
                        (Some(pid), Ok(stdin), Ok(stdout)) => Some(AdoptKeeper { pid, stdin, stdout }),
                        _ => None,
                    };
                    let _ = reply.send(handed);
                    // The originals stay open too: an `execve` closes them, a failed hand-over
                    // leaves the keeper to expire its hold and the daemon to shut down.
                    std::mem::forget(stdin);
                    std::mem::forget(reports);
                    return Driven::HandedOver;
                }
                _ = tokio::time::sleep(self.heartbeat) => {}
                line = reports.next_line() => match line {
                    Ok(Some(line)) => self.on_report(&line, last_sent),
                    Ok(None) | Err(_) => return Driven::KeeperGone,
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
    async fn stop(&self, child: &mut Proc, mut stdin: Box<dyn tokio::io::AsyncWrite + Unpin + Send>) {
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
