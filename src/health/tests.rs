//! Threshold rules as pure tables, then every probe kind against real sockets and processes.
//! Every wait for a transition is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::config::CheckKind;

/// Upper bound for any single condition a test waits for.
const WAIT: Duration = Duration::from_secs(10);

fn result(ok: bool) -> ProbeResult {
    ProbeResult {
        ok,
        detail: if ok { "ok" } else { "timeout" }.into(),
        latency_ms: 1.0,
    }
}

/// Feeds `results` to a fresh status and returns `healthy` after each one.
fn run(results: &[bool], rise: u32, fall: u32) -> Vec<bool> {
    let mut status = CheckStatus::new("c");
    results
        .iter()
        .map(|ok| {
            status.record(&result(*ok), rise, fall, 0);
            status.healthy
        })
        .collect()
}

#[test]
fn thresholds() {
    let (t, f) = (true, false);
    // (probe results, rise, fall, healthy after each probe)
    let table: &[(&[bool], u32, u32, &[bool])] = &[
        // Starts unhealthy; needs `rise` successes in a row.
        (&[t, t, t], 2, 2, &[f, t, t]),
        (&[t, f, t, t], 2, 2, &[f, f, f, t]),
        (&[t], 1, 1, &[t]),
        // Failing from the start never reports anything but unhealthy.
        (&[f, f, f], 2, 2, &[f, f, f]),
        // fall = 2: one failure does not flip, two do.
        (&[t, t, f, t, f, f], 2, 2, &[f, t, t, t, t, f]),
        // Flapping: failures are never consecutive, so it never falls.
        (&[t, t, f, t, f, t, f, t, f], 2, 2, &[f, t, t, t, t, t, t, t, t]),
        // ...and once unhealthy, flapping never rises either.
        (&[t, f, t, f, t, f], 2, 2, &[f, f, f, f, f, f]),
        // fall = 1: the first failure flips.
        (&[t, f], 1, 1, &[t, f]),
    ];
    for (results, rise, fall, want) in table {
        assert_eq!(
            run(results, *rise, *fall),
            *want,
            "results {results:?} rise {rise} fall {fall}"
        );
    }
}

#[test]
fn status_bookkeeping() {
    let mut s = CheckStatus::new("c");
    assert!(!s.record(&result(true), 2, 2, 5));
    assert_eq!(s.last_change_unix_ms, None);
    assert!(s.record(&result(true), 2, 2, 7));
    assert_eq!(s.last_change_unix_ms, Some(7));
    assert!(!s.record(&result(false), 2, 2, 9));
    assert_eq!((s.consecutive_ok, s.consecutive_fail), (0, 1));
    assert_eq!(s.last_result.as_deref(), Some("timeout"));
    for _ in 0..30 {
        s.record(&result(true), 2, 2, 10);
    }
    assert_eq!(s.recent.len(), RECENT_RESULTS);
    assert!(s.recent.iter().all(|ok| *ok));
    assert_eq!(s.consecutive_ok, 30);
}

fn check(name: &str, kind: CheckKind, rise: u32, fall: u32) -> CheckConfig {
    CheckConfig {
        name: name.into(),
        kind,
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        rise,
        fall,
    }
}

async fn next_transition(rx: &mut mpsc::UnboundedReceiver<Transition>) -> Transition {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("transition in time")
        .expect("channel open")
}

/// Waits until the snapshot of the only check satisfies `pred`.
async fn wait_snapshot(handle: &HealthHandle, pred: impl Fn(&CheckStatus) -> bool) -> CheckStatus {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(s) = handle.snapshot().into_iter().next() {
                if pred(&s) {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition reached in time")
}

/// Accepts and drops connections until the listener is dropped with the task.
fn accept_forever(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    })
}

#[tokio::test]
async fn no_checks_is_healthy() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let handle = spawn_checks(Vec::new(), tx, CancellationToken::new());
    assert!(handle.all_healthy());
    assert!(handle.snapshot().is_empty());
}

#[tokio::test]
async fn tcp_rises_then_falls_when_the_listener_goes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = accept_forever(listener);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handle = spawn_checks(
        vec![check("port", CheckKind::Tcp { address: addr }, 2, 2)],
        tx,
        cancel.clone(),
    );
    assert!(!handle.all_healthy(), "checks start unhealthy");

    let t = next_transition(&mut rx).await;
    assert_eq!(
        t,
        Transition {
            check: "port".into(),
            healthy: true,
            detail: "ok".into()
        }
    );
    assert!(handle.all_healthy());
    let s = &handle.snapshot()[0];
    assert!(s.consecutive_ok >= 2 && s.last_change_unix_ms.is_some());
    assert!(s.last_latency_ms.is_some());

    server.abort();
    let _ = server.await;
    let t = next_transition(&mut rx).await;
    assert!(!t.healthy);
    assert_eq!(t.detail, "connect refused");
    let s = &handle.snapshot()[0];
    assert!(!s.healthy && s.consecutive_fail >= 2);
    cancel.cancel();
}

/// A minimal HTTP/1.1 server answering every request with the current status and `body`.
async fn http_server(status: Arc<AtomicU16>, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

fn http_check(addr: SocketAddr, path: &str, body: Option<&str>) -> CheckKind {
    CheckKind::Http {
        url: format!("http://{addr}{path}"),
        status: 200,
        body: body.map(str::to_string),
    }
}

#[tokio::test]
async fn http_status_decides() {
    let status = Arc::new(AtomicU16::new(200));
    let addr = http_server(status.clone(), "I am fine").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handle = spawn_checks(
        vec![check("web", http_check(addr, "/health", Some("fine")), 2, 2)],
        tx,
        cancel.clone(),
    );
    let t = next_transition(&mut rx).await;
    assert!(t.healthy, "{t:?}");

    status.store(500, Ordering::SeqCst);
    let t = next_transition(&mut rx).await;
    assert!(!t.healthy);
    assert_eq!(t.detail, "status 500");
    assert!(!handle.all_healthy());

    status.store(200, Ordering::SeqCst);
    assert!(next_transition(&mut rx).await.healthy);
    cancel.cancel();
}

#[tokio::test]
async fn http_body_must_match() {
    let addr = http_server(Arc::new(AtomicU16::new(200)), "degraded").await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handle = spawn_checks(
        vec![check("web", http_check(addr, "/", Some("fine")), 1, 1)],
        tx,
        cancel.clone(),
    );
    let s = wait_snapshot(&handle, |s| s.consecutive_fail >= 2).await;
    assert!(!s.healthy);
    assert_eq!(s.last_result.as_deref(), Some("body mismatch"));
    cancel.cancel();
}

#[tokio::test]
async fn http_connect_refused() {
    // Bind then drop, so the port is very likely closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handle = spawn_checks(
        vec![check("web", http_check(addr, "/", None), 1, 1)],
        tx,
        cancel.clone(),
    );
    let s = wait_snapshot(&handle, |s| s.last_result.is_some()).await;
    assert_eq!(s.last_result.as_deref(), Some("connect refused"));
    cancel.cancel();
}

fn exec(command: &str) -> CheckKind {
    CheckKind::Exec {
        command: command.into(),
    }
}

#[tokio::test]
async fn exec_true_is_healthy_false_is_not() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handle = spawn_checks(
        vec![check("ok", exec("true"), 2, 2), check("bad", exec("false"), 2, 2)],
        tx,
        cancel.clone(),
    );
    let t = next_transition(&mut rx).await;
    assert_eq!(t.check, "ok");
    assert!(t.healthy);
    let bad = tokio::time::timeout(WAIT, async {
        loop {
            let snap = handle.snapshot();
            if snap[1].consecutive_fail >= 3 {
                return snap[1].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("false probed");
    assert!(!bad.healthy);
    assert_eq!(bad.last_result.as_deref(), Some("exit 1"));
    assert!(!handle.all_healthy());
    cancel.cancel();
    // `false` never produced a transition: it started unhealthy and stayed so.
    while let Ok(t) = rx.try_recv() {
        assert_ne!(t.check, "bad", "{t:?}");
    }
}

#[tokio::test]
async fn exec_timeout_kills_the_probe() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let mut cfg = check("slow", exec("sleep 5"), 1, 1);
    cfg.timeout = Duration::from_millis(100);
    let handle = spawn_checks(vec![cfg], tx, cancel.clone());
    let s = wait_snapshot(&handle, |s| s.last_result.is_some()).await;
    assert_eq!(s.last_result.as_deref(), Some("timeout"));
    let latency = s.last_latency_ms.expect("latency");
    assert!(latency < 2000.0, "probe took {latency}ms");
    cancel.cancel();
}

#[tokio::test]
async fn flapping_exec_never_falls() {
    // Alternates: fails when the flag exists (and removes it), succeeds otherwise (and sets
    // it). So successes and failures strictly alternate, starting with a success.
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("flag");
    let cmd = format!(
        "if [ -e '{f}' ]; then rm '{f}'; exit 1; else touch '{f}'; fi",
        f = flag.display()
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let handle = spawn_checks(vec![check("flappy", exec(&cmd), 1, 2)], tx, cancel.clone());
    assert!(next_transition(&mut rx).await.healthy);
    let s = wait_snapshot(&handle, |s| s.recent.len() >= 12).await;
    assert!(s.recent.contains(&false), "{s:?}");
    assert!(s.healthy);
    cancel.cancel();
    assert!(rx.try_recv().is_err(), "flapping caused a transition");
}
