//! The managed service: supervising its process, and the role hooks (`hooks`).
//!
//! [`spawn_supervisor`] starts one task that owns the service process. The node runtime tells
//! it whether the service should run ([`Supervisor::set_desired`]) and watches what it is
//! doing ([`Supervisor::state`]); the task does the rest:
//!
//! - the process runs as the leader of its own process group, so stopping it (SIGTERM to the
//!   group, SIGKILL to the group after `stop-grace`) also stops whatever it forked;
//! - its stdout and stderr go to tracing, line by line, under the `service` target;
//! - while it should run and it exits, it is restarted after a backoff that starts at
//!   `restart-backoff-min`, doubles up to `restart-backoff-max`, and resets once the process
//!   stayed up for [`STABLE_UPTIME`];
//! - when the daemon's cancellation token fires, the process is stopped before the task ends,
//!   so a shutdown never leaves the service orphaned. If the task is dropped without that
//!   (runtime torn down), a guard SIGKILLs the group as a last resort.

pub mod hooks;
pub(crate) mod process;

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use process::GroupGuard;

pub use hooks::{HookKind, HookOutcome, HookRunner};

/// A process that stayed up this long is considered healthy again: its next crash restarts
/// after `restart-backoff-min`, not after the last (doubled) backoff.
pub const STABLE_UPTIME: Duration = Duration::from_secs(10);

/// Longest service output line logged as one event; longer lines are split.
const MAX_LINE: u64 = 8 * 1024;

/// What the supervised process is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ProcState {
    /// Not running, and not supposed to run.
    Stopped,
    /// Being spawned.
    Starting,
    Running {
        pid: u32,
        since_unix_ms: u64,
    },
    /// Exited on its own (a crash, from the supervisor's point of view). `signal` is set when
    /// a signal killed it; `code` when it exited. Both are `None` if it could not be started.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Waiting to restart after an exit.
    Backoff {
        restart_in_ms: u64,
    },
}

/// What a [`Supervisor`] handle asks of its task.
enum Request {
    /// Start or stop; the reply is sent once the process runs (or failed to start) or is gone.
    SetDesired(bool, oneshot::Sender<()>),
    /// Run another spec (a deploy): the running process is stopped and, if the service should
    /// run, the new one started; the reply is sent once it runs (or failed to start).
    Replace(Box<ServiceConfig>, oneshot::Sender<()>),
    /// Stop and end the task.
    Shutdown,
    /// Hot restart: describe the running process for the program that replaces this one,
    /// then leave it alone (no restart, no stop) until the process is replaced.
    HandOver(oneshot::Sender<Option<Adopt>>),
}

/// A running service process passed from one daemon program to the next (hot restart): its
/// pid (still a child of this pid), since when it runs, and its output pipes.
#[derive(Debug)]
pub struct Adopt {
    pub pid: u32,
    pub since_unix_ms: u64,
    pub stdout: Option<std::os::fd::OwnedFd>,
    pub stderr: Option<std::os::fd::OwnedFd>,
}

/// Handle to the supervisor task of the managed service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<Request>,
    state: watch::Receiver<ProcState>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::SetDesired(running, _) => write!(f, "SetDesired({running})"),
            Request::Replace(cfg, _) => write!(f, "Replace({})", cfg.command),
            Request::Shutdown => f.write_str("Shutdown"),
            Request::HandOver(_) => f.write_str("HandOver"),
        }
    }
}

/// Starts the supervisor task for `cfg`. The service is not started until
/// [`Supervisor::set_desired`]`(true)`. `node` is this node's id (`STANDIN_NODE`, log field).
/// When `cancel` fires the service is stopped and the task ends.
pub fn spawn_supervisor(cfg: ServiceConfig, node: String, cancel: CancellationToken) -> Supervisor {
    spawn_supervisor_adopting(cfg, node, None, cancel)
}

/// [`spawn_supervisor`], taking over the running process `adopt` handed over by the program
/// this one replaced (hot restart): it is supervised as if this process had started it (it
/// should run; an exit is restarted). A process that cannot be adopted (it exited meanwhile)
/// is logged and started again.
pub fn spawn_supervisor_adopting(
    cfg: ServiceConfig,
    node: String,
    adopt: Option<Adopt>,
    cancel: CancellationToken,
) -> Supervisor {
    let (commands, rx) = mpsc::channel(16);
    let (state_tx, state) = watch::channel(ProcState::Stopped);
    let mut task = Task {
        backoff: cfg.restart_backoff_min,
        cfg,
        node,
        state: state_tx,
        child: None,
        desired: false,
        restart_at: None,
    };
    if let Some(adopt) = adopt {
        task.adopt(adopt);
    }
    tokio::spawn(task.run(rx, cancel));
    Supervisor { commands, state }
}

impl Supervisor {
    /// Starts (`true`) or stops (`false`) the service. Starting returns once the process was
    /// spawned (a failed spawn is retried with backoff). Stopping returns once the whole
    /// process group is gone. Does nothing if the supervisor has ended.
    pub async fn set_desired(&self, running: bool) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Request::SetDesired(running, tx)).await.is_ok() {
            // An Err means the task ended meanwhile (shutdown); nothing left to wait for.
            let _ = rx.await;
        }
    }

    /// Replaces the spec the service runs with (a deploy): stops the running process the way a
    /// stop does (SIGTERM, SIGKILL after `stop-grace`) and starts `cfg` if the service should
    /// run. Returns once the new process was spawned (or failed to, then retried with backoff).
    pub async fn replace(&self, cfg: ServiceConfig) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Request::Replace(Box::new(cfg), tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Hot restart: the running process (if any) with its output pipes, for the program that
    /// replaces this one. From then on the supervisor neither restarts nor stops it.
    pub async fn hand_over(&self) -> Option<Adopt> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Request::HandOver(tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Follows the process state.
    pub fn state(&self) -> watch::Receiver<ProcState> {
        self.state.clone()
    }

    /// The pid of the running process (also its process group id).
    pub fn pid(&self) -> Option<u32> {
        match *self.state.borrow() {
            ProcState::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Kills the service's process group with SIGKILL, as a crash would (failover drills):
    /// the supervisor sees an exit like any other. The pid killed, or `None` if none ran.
    pub fn kill_now(&self) -> Option<u32> {
        let pid = self.pid()?;
        process::signal_group(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        Some(pid)
    }

    /// Stops the service and ends the supervisor task; returns when both are done. Safe to
    /// call more than once, from several clones, and after `cancel` fired.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Request::Shutdown).await;
        // The task owns the only state sender: the channel closes exactly when it has ended.
        let mut state = self.state.clone();
        while state.changed().await.is_ok() {}
    }
}

/// The running process and what the task needs to stop it.
struct Running {
    child: process::Proc,
    pgid: Pid,
    started: Instant,
    since_unix_ms: u64,
    /// SIGKILLs the group if the task is dropped while the process runs.
    guard: GroupGuard,
    /// Close-on-exec duplicates of the read ends of its stdout and stderr, for a hot restart
    /// (the log tasks own the originals).
    stdout: Option<std::os::fd::OwnedFd>,
    stderr: Option<std::os::fd::OwnedFd>,
}

struct Task {
    cfg: ServiceConfig,
    node: String,
    state: watch::Sender<ProcState>,
    child: Option<Running>,
    /// What the node runtime asked for.
    desired: bool,
    /// Next restart delay after an exit.
    backoff: Duration,
    /// Set while in backoff.
    restart_at: Option<tokio::time::Instant>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Request>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(Request::SetDesired(running, reply)) => {
                        self.set_desired(running).await;
                        let _ = reply.send(());
                    }
                    Some(Request::Replace(cfg, reply)) => {
                        self.replace(*cfg).await;
                        let _ = reply.send(());
                    }
                    // All handles dropped is a shutdown too: nobody could stop it later.
                    Some(Request::Shutdown) | None => break,
                    Some(Request::HandOver(reply)) => {
                        let _ = reply.send(self.hand_over());
                        // Frozen until the program is replaced; a shutdown (the replacement
                        // did not happen) still stops the service.
                        loop {
                            tokio::select! {
                                _ = cancel.cancelled() => break,
                                cmd = commands.recv() => match cmd {
                                    Some(Request::Shutdown) | None => break,
                                    Some(Request::SetDesired(_, reply)) | Some(Request::Replace(_, reply)) => { let _ = reply.send(()); }
                                    Some(Request::HandOver(reply)) => { let _ = reply.send(None); }
                                },
                            }
                        }
                        break;
                    }
                },
                status = wait_child(&mut self.child) => self.exited(status),
                _ = sleep_until(self.restart_at) => {
                    self.restart_at = None;
                    self.start();
                }
            }
        }
        self.desired = false;
        self.stop().await;
        tracing::debug!(node = %self.node, "service supervisor ended");
    }

    /// Takes over a process handed over by the previous program (see [`Adopt`]).
    fn adopt(&mut self, adopt: Adopt) {
        self.desired = true;
        let pgid = Pid::from_raw(adopt.pid as i32);
        match process::Adopted::new(adopt.pid) {
            Ok(child) => {
                let stdout = adopt
                    .stdout
                    .as_ref()
                    .and_then(|fd| crate::handover::dup(fd.as_raw_fd()).ok());
                let stderr = adopt
                    .stderr
                    .as_ref()
                    .and_then(|fd| crate::handover::dup(fd.as_raw_fd()).ok());
                for (fd, stream) in [(adopt.stdout, "stdout"), (adopt.stderr, "stderr")] {
                    let Some(fd) = fd else { continue };
                    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                        Ok(pipe) => {
                            tokio::spawn(log_lines(pipe, self.node.clone(), stream));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, stream, "cannot read the adopted service's output")
                        }
                    }
                }
                let up_ms = unix_ms().saturating_sub(adopt.since_unix_ms);
                let started = Instant::now()
                    .checked_sub(Duration::from_millis(up_ms))
                    .unwrap_or_else(Instant::now);
                tracing::info!(node = %self.node, pid = adopt.pid, "service adopted from the previous program (hot restart): not restarted");
                self.child = Some(Running {
                    child: process::Proc::Adopted(child),
                    pgid,
                    started,
                    since_unix_ms: adopt.since_unix_ms,
                    guard: GroupGuard::new(pgid),
                    stdout,
                    stderr,
                });
                self.state.send_replace(ProcState::Running {
                    pid: adopt.pid,
                    since_unix_ms: adopt.since_unix_ms,
                });
            }
            Err(e) => {
                tracing::warn!(node = %self.node, pid = adopt.pid, error = %e, "the service handed over cannot be adopted (it exited?); starting it");
                if process::group_alive(pgid) {
                    process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                }
                self.start();
            }
        }
    }

    /// Describes the running process for the next program, and disarms the group guard:
    /// from now on this task must not kill it, even if it is dropped.
    fn hand_over(&mut self) -> Option<Adopt> {
        let running = self.child.as_mut()?;
        let pid = running.child.id()?;
        running.guard.disarm();
        Some(Adopt {
            pid,
            since_unix_ms: running.since_unix_ms,
            stdout: running
                .stdout
                .as_ref()
                .and_then(|fd| crate::handover::dup(fd.as_raw_fd()).ok()),
            stderr: running
                .stderr
                .as_ref()
                .and_then(|fd| crate::handover::dup(fd.as_raw_fd()).ok()),
        })
    }

    async fn set_desired(&mut self, running: bool) {
        self.desired = running;
        if running {
            // Already running or waiting to restart: leave it be, the backoff protects
            // against a crash loop.
            if self.child.is_none() && self.restart_at.is_none() {
                self.backoff = self.cfg.restart_backoff_min;
                self.start();
            }
        } else {
            self.stop().await;
        }
    }

    async fn replace(&mut self, cfg: ServiceConfig) {
        let desired = self.desired;
        self.desired = false;
        self.stop().await;
        self.restart_at = None;
        self.cfg = cfg;
        self.backoff = self.cfg.restart_backoff_min;
        self.desired = desired;
        if desired {
            self.start();
        }
    }

    fn start(&mut self) {
        self.state.send_replace(ProcState::Starting);
        match self.spawn() {
            Ok(running) => {
                let pid = running.pgid.as_raw().unsigned_abs();
                tracing::info!(node = %self.node, pid, command = %self.cfg.command, "service started");
                let since_unix_ms = running.since_unix_ms;
                self.child = Some(running);
                self.state.send_replace(ProcState::Running { pid, since_unix_ms });
            }
            Err(e) => {
                tracing::error!(node = %self.node, command = %self.cfg.command, error = %e, "cannot start service");
                self.state.send_replace(ProcState::Exited {
                    code: None,
                    signal: None,
                });
                self.schedule_restart();
            }
        }
    }

    fn spawn(&self) -> std::io::Result<Running> {
        let mut cmd = Command::new(&self.cfg.command);
        cmd.args(&self.cfg.args)
            .envs(&self.cfg.env)
            // Set after the configured env so the service cannot be told a wrong node id.
            .env("STANDIN_NODE", &self.node)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.cfg.workdir {
            cmd.current_dir(dir);
        }
        process::confine(&mut cmd);
        let mut child = cmd.spawn()?;
        let pgid =
            process::leader_pgid(&child).ok_or_else(|| std::io::Error::other("spawned child has no pid"))?;
        let guard = GroupGuard::new(pgid);
        let mut stdout = None;
        let mut stderr = None;
        if let Some(out) = child.stdout.take() {
            stdout = crate::handover::dup(out.as_raw_fd()).ok();
            tokio::spawn(log_lines(out, self.node.clone(), "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            stderr = crate::handover::dup(err.as_raw_fd()).ok();
            tokio::spawn(log_lines(err, self.node.clone(), "stderr"));
        }
        Ok(Running {
            child: process::Proc::Spawned(child),
            pgid,
            started: Instant::now(),
            since_unix_ms: unix_ms(),
            guard,
            stdout,
            stderr,
        })
    }

    /// The process exited on its own.
    fn exited(&mut self, status: std::io::Result<ExitStatus>) {
        let Some(mut running) = self.child.take() else {
            return;
        };
        running.guard.disarm();
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        let uptime = running.started.elapsed();
        tracing::warn!(
            node = %self.node,
            pid = running.pgid.as_raw(),
            code = ?code,
            signal = ?signal,
            uptime_ms = u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
            "service exited"
        );
        // Leftover members of the group (workers of a crashed master) would hold its ports
        // and data: kill them before a restart. Done in the background so that commands stay
        // responsive; SIGKILL because their leader is already gone.
        let pgid = running.pgid;
        if process::group_alive(pgid) {
            process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        self.state.send_replace(ProcState::Exited { code, signal });
        if uptime >= STABLE_UPTIME {
            self.backoff = self.cfg.restart_backoff_min;
        }
        if self.desired {
            self.schedule_restart();
        }
    }

    fn schedule_restart(&mut self) {
        let delay = self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(self.cfg.restart_backoff_max);
        self.restart_at = Some(crate::config::later_tokio(tokio::time::Instant::now(), delay));
        self.state.send_replace(ProcState::Backoff {
            restart_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
    }

    /// Stops the process (if any) and cancels a pending restart; publishes `Stopped`.
    async fn stop(&mut self) {
        self.restart_at = None;
        if let Some(mut running) = self.child.take() {
            let pid = running.pgid.as_raw();
            tracing::info!(node = %self.node, pid, "stopping service");
            let status = process::stop_group(&mut running.child, running.pgid, self.cfg.stop_grace).await;
            running.guard.disarm();
            tracing::info!(
                node = %self.node,
                pid,
                code = ?status.and_then(|s| s.code()),
                signal = ?status.and_then(|s| s.signal()),
                "service stopped"
            );
        }
        self.state.send_replace(ProcState::Stopped);
    }
}

/// Waits for the running child to exit; pending forever when there is none, so it can sit in
/// a `select!` next to the other events.
async fn wait_child(child: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match child {
        Some(running) => running.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Forwards a pipe of the service to tracing, one event per line (lossy UTF-8, long lines
/// split at [`MAX_LINE`] bytes).
async fn log_lines(pipe: impl AsyncRead + Unpin, node: String, stream: &'static str) {
    use tokio::io::AsyncReadExt;
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                tracing::info!(target: "service", node = %node, stream, line, "service output");
            }
            Err(e) => {
                tracing::debug!(node = %node, stream, error = %e, "cannot read service output");
                return;
            }
        }
    }
}

use crate::clock::unix_ms;

#[cfg(test)]
mod tests;
