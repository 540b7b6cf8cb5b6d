//! systemd's service notifications (`Type=notify`): `READY=1` once the node knows its role,
//! `RELOADING=1` while it re-reads its configuration, `STOPPING=1` when it shuts down, and
//! `WATCHDOG=1` keep-alives when the unit sets `WatchdogSec`. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}

/// `READY=1` with a one-line status.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` (with the monotonic time systemd 253 and later ask for).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `MAINPID=pid`: a proxy's hot restart hands the unit to the new process (the unit needs
/// `NotifyAccess=all` so that the new process may notify too).
pub fn main_pid(pid: u32) {
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Status("hot restart: new process serves"),
    ]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// With `WatchdogSec` set on the unit, sends `WATCHDOG=1` at half that interval until `cancel`
/// fires. The pings come from the runtime's own task: a wedged runtime stops them and systemd
/// restarts the node (fail-stop, as DESIGN.md asks).
pub fn spawn_watchdog(cancel: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    tracing::info!(interval_ms = every.as_millis() as u64, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
