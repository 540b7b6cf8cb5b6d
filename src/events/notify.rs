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
                wait = (wait * 2).min(Duration::from_secs(60));
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
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.as_bytes()).await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("still running after {timeout:?}")),
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
