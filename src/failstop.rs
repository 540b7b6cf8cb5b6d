//! Fail-stop: a node that can no longer act correctly stops acting and exits non-zero, so its
//! supervisor (systemd) restarts it, instead of staying up looking alive.
//!
//! What trips it: openraft stopping on its own (a storage error such as a full disk, a log
//! entry that cannot be read back, or a panic in its core), the leader's background log write
//! failing (`cluster::storage`), and a panic in any task of this process (the panic hook). A
//! clean shutdown is not a failure. Once tripped, `node::run` stops answering peers at once
//! (so they fail over without waiting), stops Raft (so this node no longer leads), demotes and
//! stops the service, then returns `NodeError::Fatal` with the exit code. A watchdog thread
//! exits the process anyway if that orderly stop hangs.
//!
//! The state is process-wide (a panic hook is), one node per process. This module sits at the
//! bottom of the layers: anything may trip it, it imports nothing of the crate.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit code for a panic or openraft stopping for a reason other than storage (EX_SOFTWARE).
pub const EXIT_SOFTWARE: i32 = 70;
/// Exit code for a storage failure: disk full, I/O error, a record that cannot be read back
/// (EX_IOERR).
pub const EXIT_STORAGE: i32 = 74;
/// How long the orderly stop may take before the watchdog exits the process.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

struct State {
    token: CancellationToken,
    /// Set by [`arm`] in the daemon: only then does a trip end the process.
    armed: std::sync::atomic::AtomicBool,
    /// The first reason given and its exit code: later trips add nothing.
    reason: Mutex<Option<(String, i32)>>,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| State {
        token: CancellationToken::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
        reason: Mutex::new(None),
    })
}

/// Cancelled once the node must stop.
pub fn token() -> CancellationToken {
    state().token.clone()
}

/// The reason and exit code, once tripped.
pub fn reason() -> Option<(String, i32)> {
    state().reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Trips fail-stop with `reason`; the first caller's reason and code win.
pub fn trip(reason: String, code: i32) {
    let s = state();
    {
        let mut r = s.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_some() {
            return;
        }
        tracing::error!(reason = %reason, exit_code = code, "node can no longer act: stopping (fail-stop)");
        *r = Some((reason, code));
    }
    s.token.cancel();
    if !s.armed.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("failstop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(STOP_DEADLINE);
            eprintln!("standin: fail-stop did not finish within {STOP_DEADLINE:?}; exiting");
            std::process::exit(code);
        });
    if spawned.is_err() {
        std::process::exit(code);
    }
}

/// Arms fail-stop for a daemon process: a trip now also starts the watchdog that ends the
/// process, and a panic hook prints a panic as usual, then trips: a task that panicked may
/// have left the node unable to act, and tokio would otherwise carry on without it. Unarmed
/// (a library user, a unit test), a trip only records the reason and cancels [`token`].
pub fn arm() {
    state().armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        trip(format!("panic: {info}"), EXIT_SOFTWARE);
    }));
}
