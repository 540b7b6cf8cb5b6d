//! Delivers notifications: a JSON POST to every webhook, an exec command, and syslog. Webhook
//! and exec deliveries are retried with doubling backoff up to `attempts`; each runs in its own
//! task so a slow receiver delays nothing else.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::AlarmsConfig;

/// One notification, as POSTed to webhooks and piped to the exec command.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notification {
    /// `raised`, `cleared` (alarms) or `event` (failover, switchover, fence, ...).
    pub state: &'static str,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    /// The alarm's key for `raised`/`cleared` (the same key for both).
    pub alarm: Option<String>,
    /// What happened, in words: "failover", "switchover", "fence", "promotion failed", or the
    /// alarm's name.
    pub title: String,
    /// The event kind in the history (`promoted`, `alarm-raised`, ...).
    pub kind: String,
    pub node: Option<String>,
    pub epoch: u64,
    pub cause: Option<String>,
    pub detail: String,
    /// For a failover or switchover: how long no node was active.
    pub interruption_ms: Option<u64>,
    pub at_unix_ms: u64,
    /// The event's sequence number in the history (receivers can de-duplicate on it).
    pub seq: u64,
    /// The node that sent it (the Raft leader at the time).
    pub sender: String,
}

/// Sends `n` everywhere `[alarms]` says, in the background.
pub fn deliver(cfg: &Arc<AlarmsConfig>, n: Notification) {
    let body = match serde_json::to_string(&n) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a notification");
            return;
        }
    };
    for url in &cfg.webhook {
        let (cfg, url, body) = (cfg.clone(), url.clone(), body.clone());
        tokio::spawn(async move {
            retry(&cfg, &format!("webhook {url}"), || {
                webhook(&url, &body, cfg.timeout)
            })
            .await
        });
    }
    if let Some(cmd) = &cfg.exec {
        let (cfg, cmd, body, n) = (cfg.clone(), cmd.clone(), body.clone(), n.clone());
        tokio::spawn(async move {
            retry(&cfg, &format!("exec {cmd}"), || {
                exec(&cmd, &body, &n, cfg.timeout)
            })
            .await
        });
    }
    if cfg.syslog {
        if let Err(e) = syslog(&n) {
            tracing::warn!(error = %e, "cannot write the notification to syslog (/dev/log)");
        }
    }
}

async fn retry<F, Fut>(cfg: &AlarmsConfig, what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut wait = cfg.backoff;
    for i in 1..=cfg.attempts {
        match attempt().await {
            Ok(()) => return,
            Err(e) if i < cfg.attempts => {
                tracing::info!(%what, attempt = i, error = %e, "notification not delivered, retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(Duration::from_secs(60));
            }
            Err(e) => tracing::warn!(%what, attempts = i, error = %e, "notification dropped"),
        }
    }
}

async fn webhook(url: &str, body: &str, timeout: Duration) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let authority = uri.authority().map(|a| a.to_string()).ok_or("no host in URL")?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let r = crate::api::client::request(
        &authority,
        hyper::Method::POST,
        &path,
        Some(body.to_string()),
        timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status))
    }
}

/// Runs the exec alarm in its own process group. The timeout covers everything: writing the
/// JSON to its stdin (a program that never reads it would otherwise block us once the pipe is
/// full) and waiting for it; on timeout the whole group is killed, so children it started
/// (`curl ... &`) do not outlive the attempt.
async fn exec(cmd: &str, body: &str, n: &Notification, timeout: Duration) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("STANDIN_ALARM_STATE", n.state)
        .env("STANDIN_ALARM_SEVERITY", n.severity)
        .env("STANDIN_ALARM_TITLE", &n.title)
        .env("STANDIN_ALARM_KEY", n.alarm.as_deref().unwrap_or(""))
        .env("STANDIN_ALARM_NODE", n.node.as_deref().unwrap_or(""))
        .env("STANDIN_ALARM_DETAIL", &n.detail)
        .env("STANDIN_EPOCH", n.epoch.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(pipe) = stdin.as_mut() {
            // A program that exits without reading its stdin closes the pipe: not an error.
            let _ = pipe.write_all(body.as_bytes()).await;
        }
        // End of input, so a program reading to the end goes on.
        drop(stdin.take());
        child.wait().await
    };
    let result = tokio::time::timeout(timeout, run).await;
    match result {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            if let Some(pgid) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // Reap the shell (it was killed with its group).
            let _ = child.wait().await;
            Err(format!(
                "still running after {timeout:?}; its process group was killed"
            ))
        }
    }
}

/// One RFC 3164 line to the local syslog socket: facility daemon, severity from the
/// notification.
fn syslog(n: &Notification) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    // daemon (3) * 8 + crit (2) / warning (4) / info (6)
    let pri = 3 * 8
        + match n.severity {
            "critical" => 2,
            "warning" => 4,
            _ => 6,
        };
    let line = format!(
        "<{pri}>standin[{}]: {} {}{}: {}",
        std::process::id(),
        n.state,
        n.title,
        n.node.as_deref().map(|x| format!(" on {x}")).unwrap_or_default(),
        n.detail
    );
    sock.send_to(line.as_bytes(), "/dev/log").map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> Notification {
        Notification {
            state: "event",
            severity: "info",
            alarm: None,
            title: "test".into(),
            kind: "promoted".into(),
            node: Some("a".into()),
            epoch: 1,
            cause: None,
            detail: String::new(),
            interruption_ms: None,
            at_unix_ms: 0,
            seq: 1,
            sender: "a".into(),
        }
    }

    /// Whether `pid` is still a running process (a zombie counts as gone).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn the_exec_timeout_covers_stdin_and_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        // Never reads stdin (the 1 MiB body fills the pipe), and leaves a child behind.
        let cmd = format!("sleep 60 & echo $! > {}; sleep 60", pidfile.display());
        let body = "x".repeat(1 << 20);
        let n = notification();
        let run = exec(&cmd, &body, &n, Duration::from_millis(500));
        // A generous bound only so that a regression fails instead of hanging the suite.
        let r = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("exec returned: its timeout covers writing stdin");
        let e = r.expect_err("timed out");
        assert!(e.contains("still running"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the script wrote its child's pid")
            .trim()
            .parse()
            .expect("pid");
        // SIGKILL is delivered at once, the orphan is reaped by init: wait for that, bounded.
        let mut gone = false;
        for _ in 0..200 {
            if !alive(pid) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !gone {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            panic!("the exec alarm's child {pid} survived the timeout");
        }
    }

    /// Values reach the exec alarm through its environment and stdin, never as shell text: a
    /// check's output (in the detail) or a title holding `$(...)` is not run.
    #[tokio::test]
    async fn alarm_values_with_shell_syntax_are_passed_not_executed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pwned = dir.path().join("pwned");
        let out = dir.path().join("out");
        let evil = format!("$(touch {p}) `touch {p}`; touch {p}", p = pwned.display());
        let mut n = notification();
        n.detail = evil.clone();
        n.title = evil.clone();
        let cmd = format!(
            "printf '%s|%s|' \"$STANDIN_ALARM_DETAIL\" \"$STANDIN_ALARM_TITLE\" > '{o}'; cat >> '{o}'",
            o = out.display()
        );
        let body = serde_json::to_string(&evil).expect("json");
        exec(&cmd, &body, &n, Duration::from_secs(10))
            .await
            .expect("delivered");
        assert_eq!(
            std::fs::read_to_string(&out).expect("written"),
            format!("{evil}|{evil}|{body}")
        );
        assert!(!pwned.exists(), "a value was run as a command");
    }

    #[tokio::test]
    async fn an_exec_that_reads_its_input_and_exits_0_is_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out.json");
        let cmd = format!("cat > {}", out.display());
        exec(&cmd, "{\"seq\":1}", &notification(), Duration::from_secs(10))
            .await
            .expect("delivered");
        assert_eq!(std::fs::read_to_string(&out).expect("written"), "{\"seq\":1}");
    }
}
