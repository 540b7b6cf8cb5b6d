//! Process-group plumbing shared by the supervisor, the role hooks and exec health checks.
//!
//! Everything standin starts runs as the leader of its own process group, so one signal to the
//! group reaches the program *and* whatever it forked. This file owns the three things that
//! need care around that: signalling a group, knowing when a group is really gone (orphaned
//! members may linger as zombies when PID 1 does not reap them), and running a one-shot
//! `sh -c` command with a deadline.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// How often a stopping group is polled for leftover members.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How long we wait for a SIGKILLed process to disappear before giving up on it. SIGKILL
/// cannot be ignored, so only a process stuck in uninterruptible sleep takes this long.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Sends `signal` to the whole process group `pgid`. A group that is already gone is not an
/// error: stopping something that stopped by itself is the expected race.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), %signal, error = %e, "cannot signal process group"),
    }
}

/// SIGKILLs a process group when dropped, unless disarmed.
///
/// This is the last resort that keeps a managed process from outliving its owner when a task
/// is aborted or the runtime shuts down mid-operation (tokio's `kill_on_drop` only reaches the
/// group leader, not its children). It must be disarmed once the leader has been reaped:
/// after that the group id may be reused by an unrelated process.
pub(crate) struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    pub(crate) fn new(pgid: Pid) -> Self {
        GroupGuard { pgid: Some(pgid) }
    }

    /// The leader was reaped; the guard must not signal the group id any more.
    pub(crate) fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

/// Whether any live (non-zombie) process is still in group `pgid`.
///
/// `killpg(pgid, 0)` alone is not enough: a member orphaned by the leader's exit is reparented
/// to PID 1, and if PID 1 does not reap (minimal containers), it stays a zombie in the group
/// forever. So on Linux we scan `/proc`, and fall back to `killpg` where it cannot be read.
pub(crate) fn group_alive(pgid: Pid) -> bool {
    match proc_group_alive(pgid) {
        Some(alive) => alive,
        None => !matches!(killpg(pgid, None), Err(Errno::ESRCH)),
    }
}

fn proc_group_alive(pgid: Pid) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // The process may exit between read_dir and this read; that is simply "not a member".
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat) {
            if pgrp == pgid.as_raw() && state != 'Z' && state != 'X' {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// Extracts (state, process group) from `/proc/<pid>/stat`. The command name is in
/// parentheses and may itself contain spaces or parentheses, so parse from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether process `pid` exists and is not a zombie. Tests use it to prove a stop worked.
#[cfg(test)]
pub(crate) fn pid_alive(pid: i32) -> bool {
    if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(parse_stat(&stat), Some(('Z' | 'X', _))),
        // No /proc: trust kill(2).
        Err(_) => true,
    }
}

/// Polls until group `pgid` has no live member or `deadline` passes. Returns whether it is gone.
async fn wait_group_gone(pgid: Pid, deadline: Instant) -> bool {
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Stops a process group whose leader is `child`: SIGTERM to the group, SIGKILL to the group
/// once `grace` has passed, and returns only when the leader is reaped and no other member is
/// alive (or a bounded wait after SIGKILL expired, which is logged).
///
/// Returns the leader's exit status if it could be collected.
pub(crate) async fn stop_group(child: &mut Proc, pgid: Pid, grace: Duration) -> Option<ExitStatus> {
    let deadline = crate::config::later(Instant::now(), grace);
    signal_group(pgid, Signal::SIGTERM);
    let status = match tokio::time::timeout_at(deadline.into(), child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::info!(pgid = pgid.as_raw(), "process ignored SIGTERM; sending SIGKILL");
            signal_group(pgid, Signal::SIGKILL);
            match tokio::time::timeout(KILL_WAIT, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    tracing::warn!(pgid = pgid.as_raw(), "process survived SIGKILL");
                    None
                }
            }
        }
    };
    // The leader is gone; the rest of the group (workers, `cmd &` children) got the same
    // signals but may still be exiting, or may have ignored SIGTERM.
    if !wait_group_gone(pgid, deadline).await {
        signal_group(pgid, Signal::SIGKILL);
        if !wait_group_gone(pgid, Instant::now() + KILL_WAIT).await {
            tracing::warn!(pgid = pgid.as_raw(), "process group members survived SIGKILL");
        }
    }
    status
}

/// A child process: one this process spawned (tokio reaps it), or one it adopted from the
/// program it replaced in a hot restart (same pid, so still its child: watched through a
/// pidfd and reaped with `waitpid`).
pub enum Proc {
    Spawned(Child),
    Adopted(Adopted),
}

impl Proc {
    /// Waits for the process to exit and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Spawned(child) => child.wait().await,
            Proc::Adopted(a) => a.wait().await,
        }
    }

    pub fn id(&self) -> Option<u32> {
        match self {
            Proc::Spawned(child) => child.id(),
            Proc::Adopted(a) => (a.status.is_none()).then_some(a.pid),
        }
    }

    /// SIGKILLs the process (not its group).
    pub async fn kill(&mut self) -> std::io::Result<()> {
        match self {
            Proc::Spawned(child) => child.kill().await,
            Proc::Adopted(a) => {
                if a.status.is_none() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(a.pid as i32), Signal::SIGKILL);
                    a.wait().await?;
                }
                Ok(())
            }
        }
    }
}

/// A child inherited across `execve` from the program this one replaced.
pub struct Adopted {
    pid: u32,
    pidfd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// Set once reaped: the pid may then belong to someone else.
    status: Option<ExitStatus>,
}

impl Adopted {
    /// Adopts child `pid`. Fails if it is not a live child of this process.
    pub fn new(pid: u32) -> std::io::Result<Adopted> {
        use std::os::fd::FromRawFd;
        let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        #[allow(unsafe_code)]
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned to us by the kernel.
        #[allow(unsafe_code)]
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until dropped.
        #[allow(unsafe_code)]
        let pidfd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        let mut adopted = Adopted {
            pid,
            pidfd,
            status: None,
        };
        // Must be our child: WNOHANG on a pid that is not gives ECHILD.
        adopted.try_reap()?;
        Ok(adopted)
    }

    /// Reaps the process if it has exited.
    fn try_reap(&mut self) -> std::io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut raw: libc::c_int = 0;
        // SAFETY: waitpid writes the status into `raw`; WNOHANG makes it return at once.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::waitpid(self.pid as i32, &mut raw, libc::WNOHANG) };
        match rc {
            0 => Ok(None),
            r if r < 0 => Err(std::io::Error::last_os_error()),
            _ => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_reap()? {
                return Ok(s);
            }
            // The pidfd turns readable when the process exits.
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }
}

/// Spawns `sh -c command` as the leader of a new process group, stdin closed.
pub(crate) fn shell(command: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .process_group(0)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    confine(&mut cmd);
    cmd
}

/// What the service and the hooks must not inherit from the daemon: systemd's notification
/// and socket-activation variables (a service that speaks sd_notify would message standin's
/// unit), and the ambient capabilities the unit grants for the virtual IP (CAP_NET_ADMIN,
/// CAP_NET_RAW): only the VIP keeper needs them, not the service or a hook.
pub(crate) fn confine(cmd: &mut Command) {
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        cmd.env_remove(var);
    }
    // SAFETY: the closure runs in the child between fork and exec and only makes one prctl
    // system call (async-signal-safe), touching no memory of the parent. A kernel without
    // ambient capabilities answers EINVAL, which leaves nothing to clear: ignored.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
            Ok(())
        });
    }
}

/// The process group id of a just-spawned group leader (its pid).
pub(crate) fn leader_pgid(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
}

/// What became of a one-shot command run by [`run_shell`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ShellOutcome {
    /// Exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// Terminating signal, if it was killed.
    pub signal: Option<i32>,
    /// It ran past its deadline and the group was SIGKILLed.
    pub timed_out: bool,
    /// stdout and stderr interleaved in arrival order, at most `capture` bytes (lossy UTF-8).
    pub output: String,
    /// It could not be started at all.
    pub spawn_error: Option<String>,
}

impl ShellOutcome {
    pub(crate) fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// Once the leader has exited, how long we keep reading output. A background child that
/// inherited the pipes may hold them open forever; we do not wait for it.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

/// Runs `sh -c command` with extra `env` in its own process group. After `timeout` the whole
/// group is SIGKILLed. Up to `capture` bytes of stdout+stderr are kept (0 = discard output).
pub(crate) async fn run_shell(
    command: &str,
    env: &[(&str, String)],
    timeout: Duration,
    capture: usize,
) -> ShellOutcome {
    let mut cmd = shell(command);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    if capture == 0 {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return ShellOutcome {
                spawn_error: Some(e.to_string()),
                ..ShellOutcome::default()
            }
        }
    };
    let Some(pgid) = leader_pgid(&child) else {
        // Only possible if the child was already reaped, which we have not done yet.
        return ShellOutcome {
            spawn_error: Some("child has no pid".into()),
            ..ShellOutcome::default()
        };
    };
    let mut guard = GroupGuard::new(pgid);

    let buf = Arc::new(Mutex::new(Vec::with_capacity(capture.min(4096))));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(collect(out, buf.clone(), capture));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(collect(err, buf.clone(), capture));
    }

    let mut outcome = ShellOutcome::default();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            outcome.timed_out = true;
            signal_group(pgid, Signal::SIGKILL);
            // Only a process stuck in uninterruptible sleep outlives SIGKILL; do not hang
            // the caller on it.
            tokio::time::timeout(KILL_WAIT, child.wait())
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("survived SIGKILL")))
        }
    };
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            // Reaped: the group id may be reused from now on, so the guard must not fire.
            guard.disarm();
            outcome.exit_code = status.code();
            outcome.signal = status.signal();
        }
        Err(e) => outcome.spawn_error = Some(format!("cannot wait for child: {e}")),
    }
    if outcome.timed_out {
        // Members that escaped into a new session still hold the pipes; they are not ours.
        let _ = wait_group_gone(pgid, Instant::now() + KILL_WAIT).await;
    }
    let _ = tokio::time::timeout(OUTPUT_DRAIN, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let bytes = match buf.lock() {
        Ok(b) => b.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    outcome.output = String::from_utf8_lossy(&bytes).into_owned();
    outcome
}

/// Appends what `pipe` yields to `buf` until it holds `cap` bytes, then keeps reading and
/// discarding so the child never blocks on a full pipe.
async fn collect(mut pipe: impl AsyncRead + Unpin, buf: Arc<Mutex<Vec<u8>>>, cap: usize) {
    let mut chunk = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut b = match buf.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = cap.saturating_sub(b.len());
        b.extend_from_slice(&chunk[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confined child sees neither systemd's notification socket nor ambient capabilities.
    #[tokio::test]
    async fn a_confined_child_inherits_no_notify_socket_and_no_ambient_caps() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo \"[$NOTIFY_SOCKET]\"; grep CapAmb /proc/self/status")
            .env("NOTIFY_SOCKET", "/run/systemd/notify");
        confine(&mut cmd);
        let out = cmd.output().await.expect("run sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("[]"), "{text}");
        assert!(text.contains("CapAmb:\t0000000000000000"), "{text}");
    }

    #[test]
    fn parse_stat_handles_odd_names() {
        let s = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560";
        assert_eq!(parse_stat(s), Some(('S', 1234)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[tokio::test]
    async fn run_shell_captures_output_and_exit_code() {
        let out = run_shell("echo hi; echo err >&2; exit 4", &[], Duration::from_secs(5), 2048).await;
        assert_eq!(out.exit_code, Some(4));
        assert!(!out.timed_out);
        assert!(out.output.contains("hi") && out.output.contains("err"), "{out:?}");
    }

    #[tokio::test]
    async fn run_shell_output_is_capped() {
        let out = run_shell("yes | head -c 100000", &[], Duration::from_secs(5), 100).await;
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.output.len(), 100);
    }
}
