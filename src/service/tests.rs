//! Supervisor tests against real processes. Every wait is bounded.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use process::pid_alive;

/// Upper bound for any single condition a test waits for.
const WAIT: Duration = Duration::from_secs(10);

fn config(command: &str, args: &[&str]) -> ServiceConfig {
    ServiceConfig {
        command: command.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        workdir: None,
        mode: Default::default(),
        stop_grace: Duration::from_millis(200),
        restart_backoff_min: Duration::from_millis(50),
        restart_backoff_max: Duration::from_millis(200),
    }
}

fn sh(script: &str) -> ServiceConfig {
    config("sh", &["-c", script])
}

/// Waits until the state satisfies `pred`, returning it.
async fn wait_state(rx: &mut watch::Receiver<ProcState>, pred: impl Fn(&ProcState) -> bool) -> ProcState {
    let state = tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
        .await
        .expect("state reached in time")
        .expect("supervisor alive");
    state.clone()
}

async fn read_pid(path: &Path) -> i32 {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("pid file written")
}

fn running_pid(s: &ProcState) -> i32 {
    match s {
        ProcState::Running { pid, .. } => i32::try_from(*pid).expect("pid fits i32"),
        other => panic!("not running: {other:?}"),
    }
}

#[tokio::test]
async fn start_and_stop() {
    let cancel = CancellationToken::new();
    let sup = spawn_supervisor(config("sleep", &["30"]), "a".into(), cancel.clone());
    assert_eq!(*sup.state().borrow(), ProcState::Stopped);
    sup.set_desired(true).await;
    let pid = running_pid(&sup.state().borrow());
    assert_eq!(sup.pid(), Some(pid.unsigned_abs()));
    assert!(pid_alive(pid));

    let started = Instant::now();
    sup.set_desired(false).await;
    // sleep dies on SIGTERM: no need to wait for the grace period, let alone SIGKILL.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(*sup.state().borrow(), ProcState::Stopped);
    assert!(nix::sys::signal::kill(Pid::from_raw(pid), None).is_err());
    assert_eq!(sup.pid(), None);
    sup.shutdown().await;
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    // The marker shows the trap is installed before we send SIGTERM.
    let script = format!("trap '' TERM; echo $$ > '{}'; sleep 30", ready.display());
    let sup = spawn_supervisor(sh(&script), "a".into(), CancellationToken::new());
    sup.set_desired(true).await;
    let pid = read_pid(&ready).await;
    assert_eq!(sup.pid(), Some(pid.unsigned_abs()));

    let started = Instant::now();
    tokio::time::timeout(WAIT, sup.set_desired(false))
        .await
        .expect("stop returns");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "killed before the grace: {took:?}"
    );
    assert!(!pid_alive(pid));
    assert_eq!(*sup.state().borrow(), ProcState::Stopped);
    sup.shutdown().await;
}

#[tokio::test]
async fn children_die_with_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child");
    let script = format!("sleep 30 & echo $! > '{}'; sleep 30", pidfile.display());
    let sup = spawn_supervisor(sh(&script), "a".into(), CancellationToken::new());
    sup.set_desired(true).await;
    let child = read_pid(&pidfile).await;
    assert!(pid_alive(child));
    sup.set_desired(false).await;
    // set_desired(false) returns once the whole group is gone.
    assert!(!pid_alive(child), "background child {child} survived");
    sup.shutdown().await;
}

#[tokio::test]
async fn crashing_service_is_restarted_with_backoff() {
    // Stays up long enough that each Running state is observable before it exits.
    let sup = spawn_supervisor(sh("sleep 0.2; exit 3"), "a".into(), CancellationToken::new());
    let mut rx = sup.state();
    sup.set_desired(true).await;
    let mut pids = BTreeSet::new();
    let mut backoffs = Vec::new();
    tokio::time::timeout(WAIT, async {
        while pids.len() < 3 {
            match rx.borrow_and_update().clone() {
                ProcState::Running { pid, .. } => {
                    pids.insert(pid);
                }
                // Exited is usually replaced by Backoff before we look, but if seen it is right.
                ProcState::Exited { code, .. } => assert_eq!(code, Some(3)),
                ProcState::Backoff { restart_in_ms } => backoffs.push(restart_in_ms),
                _ => {}
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    })
    .await
    .expect("restarted twice in time");
    assert!(pids.len() >= 3, "starts seen: {pids:?}");
    // Backoff doubles from 50ms and is capped at 200ms.
    assert_eq!(backoffs.first(), Some(&50), "{backoffs:?}");
    assert!(backoffs.iter().all(|b| *b <= 200), "{backoffs:?}");
    assert!(backoffs.contains(&100), "{backoffs:?}");

    sup.set_desired(false).await;
    assert_eq!(*sup.state().borrow(), ProcState::Stopped);
    sup.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_the_service() {
    let cancel = CancellationToken::new();
    let sup = spawn_supervisor(config("sleep", &["30"]), "a".into(), cancel.clone());
    sup.set_desired(true).await;
    let pid = running_pid(&sup.state().borrow());
    cancel.cancel();
    // shutdown after cancel must still wait for the stop, then return.
    tokio::time::timeout(WAIT, sup.shutdown())
        .await
        .expect("shutdown returns");
    assert!(!pid_alive(pid));
    assert_eq!(*sup.state().borrow(), ProcState::Stopped);
    // Everything after the end is a harmless no-op.
    sup.set_desired(true).await;
    sup.shutdown().await;
}

#[tokio::test]
async fn env_and_workdir_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = sh("echo \"$STANDIN_NODE $GREETING $(pwd)\" > out; sleep 30");
    cfg.env.insert("GREETING".into(), "hello".into());
    cfg.workdir = Some(dir.path().to_path_buf());
    let sup = spawn_supervisor(cfg, "node-a".into(), CancellationToken::new());
    sup.set_desired(true).await;
    let out = dir.path().join("out");
    let text = tokio::time::timeout(WAIT, async {
        loop {
            match std::fs::read_to_string(&out) {
                Ok(t) if t.ends_with('\n') => return t,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("service wrote its file");
    let canonical = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
    assert_eq!(text.trim(), format!("node-a hello {}", canonical.display()));
    sup.shutdown().await;
}

#[tokio::test]
async fn missing_program_backs_off() {
    let sup = spawn_supervisor(
        config("/nonexistent/standin-test-program", &[]),
        "a".into(),
        CancellationToken::new(),
    );
    let mut rx = sup.state();
    sup.set_desired(true).await;
    wait_state(&mut rx, |s| matches!(s, ProcState::Backoff { .. })).await;
    sup.set_desired(false).await;
    assert_eq!(*sup.state().borrow(), ProcState::Stopped);
    sup.shutdown().await;
}

#[tokio::test]
async fn stop_during_backoff_cancels_the_restart() {
    let sup = spawn_supervisor(sh("exit 0"), "a".into(), CancellationToken::new());
    let mut rx = sup.state();
    sup.set_desired(true).await;
    let state = wait_state(&mut rx, |s| matches!(s, ProcState::Backoff { .. })).await;
    assert!(matches!(state, ProcState::Backoff { .. }));
    sup.set_desired(false).await;
    assert_eq!(*rx.borrow(), ProcState::Stopped);
    // No restart is pending any more. Proving an absence needs a fixed wait: longer than the
    // 50ms backoff that was cancelled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*rx.borrow(), ProcState::Stopped);
    sup.shutdown().await;
}
