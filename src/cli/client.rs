//! Operator commands. Each talks to a node's admin API (`--api host:port` or `STANDIN_API`);
//! every read command takes `--json` and prints exactly what the API returned.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;

use super::{exit, CliError};
use crate::api::client::ClientError;
use crate::api::AdminReply;
use crate::cluster::state::Event;
use crate::config::{ReloadOutcome, ReloadReport};
use crate::status::{NodeStatus, Status};

pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

/// The admin API token for this CLI process (`--token` / `STANDIN_TOKEN`), set once by `run`.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the bearer token every CLI request sends.
pub fn set_token(token: Option<String>) {
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        let _ = TOKEN.set(t);
    }
}

/// The HTTPS client config from `--ca` / `STANDIN_CA`, set once by `run`.
static CA: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Makes every CLI request speak HTTPS, checking the API's certificate against the CA in
/// `path` (a bare `--api host:port` then means `https://`).
pub fn set_ca(path: &std::path::Path) -> Result<(), CliError> {
    let cfg = crate::tls::https_client_config(path).map_err(|e| CliError::new(exit::USAGE, e.to_string()))?;
    let _ = CA.set(std::sync::Arc::new(cfg));
    Ok(())
}

pub(super) async fn request(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<crate::api::client::Reply, ClientError> {
    // The token is sent, never printed: errors name the API, not the request's headers.
    let access = crate::api::client::Access {
        token: TOKEN.get().cloned(),
        tls: CA.get().cloned(),
    };
    crate::api::client::request_with(api, method, path, body, timeout, &access).await
}

/// 401: the token is missing or wrong (exit 77, EX_NOPERM).
fn check_auth(reply: &crate::api::client::Reply) -> Result<(), CliError> {
    if reply.status == 401 {
        return Err(CliError::new(exit::NOPERM, api_error(&reply.body, 401)));
    }
    Ok(())
}

pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
    api: &str,
    path: &str,
) -> Result<(T, String), CliError> {
    let reply = request(api, Method::GET, path, None, TIMEOUT).await?;
    check_auth(&reply)?;
    if reply.status != 200 {
        return Err(CliError::new(
            if reply.status == 400 {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            },
            api_error(&reply.body, reply.status),
        ));
    }
    let parsed = serde_json::from_str(&reply.body)
        .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("unexpected answer from {api}: {e}")))?;
    Ok((parsed, reply.body))
}

pub(super) use crate::api::client::error_text as api_error;

pub(super) async fn post(
    api: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<AdminReply, CliError> {
    // A leader election (e.g. leadership moving to the active node) takes a moment: retry
    // what the API marks as retryable for up to five seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = request(
            api,
            Method::POST,
            path,
            body.as_ref().map(|b| b.to_string()),
            TIMEOUT,
        )
        .await?;
        if reply.status == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break reply;
    };
    check_auth(&reply)?;
    match reply.status {
        200 => serde_json::from_str(&reply.body)
            .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("unexpected answer from {api}: {e}"))),
        400 => Err(CliError::new(exit::USAGE, api_error(&reply.body, 400))),
        409 => Err(CliError::new(exit::REFUSED, api_error(&reply.body, 409))),
        s => Err(CliError::new(exit::UNAVAILABLE, api_error(&reply.body, s))),
    }
}

/// Fetches the cluster status.
pub async fn fetch_status(api: &str) -> Result<Status, CliError> {
    Ok(get_json::<Status>(api, "/v1/status").await?.0)
}

/// `standin status`.
pub async fn status(api: &str, json: bool) -> Result<(), CliError> {
    let (status, raw) = get_json::<Status>(api, "/v1/status").await?;
    if json {
        println!("{raw}");
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn paths_text(n: &NodeStatus) -> String {
    if n.paths.is_empty() {
        return "(self)".into();
    }
    n.paths
        .iter()
        .map(|p| match (p.up, p.rtt_ms) {
            (true, Some(rtt)) => format!("{} up {rtt:.1}ms", p.address),
            (true, None) => format!("{} up", p.address),
            (false, _) => format!("{} DOWN", p.address),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The human-readable status: a header line and one table row per node.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "epoch {}  active {}  raft leader {}  term {}{}\n",
        s.epoch,
        s.active.as_deref().unwrap_or("NONE"),
        s.leader.as_deref().unwrap_or("none"),
        s.term,
        if s.stale {
            format!(
                "  (view of {}: may be out of date, no leader or quorum heard)",
                s.view_from
            )
        } else {
            String::new()
        }
    );
    if s.transport == "insecure" {
        out.push_str(&format!(
            "INSECURE: {} talks to its peers without TLS ([tls] insecure = true)\n",
            s.view_from
        ));
    }
    if let Some(w) = &s.waiting {
        out.push_str(&format!("waiting: {w}\n"));
    }
    if let Some(sw) = &s.switchover {
        out.push_str(&format!(
            "{} in progress to {}\n",
            sw.cause,
            sw.target.as_deref().unwrap_or("the best standby")
        ));
    }
    let sites = s.nodes.iter().any(|n| n.site.is_some());
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = if sites { vec!["site"] } else { Vec::new() };
    header.extend([
        "node",
        "kind",
        "prio",
        "role",
        "healthy",
        "in sync",
        "lag",
        "maint/drain",
        "checks",
        "paths",
        "cert expires",
        "disk, memory",
    ]);
    t.set_header(header);
    // Grouped by site when members have one.
    let mut nodes: Vec<&NodeStatus> = s.nodes.iter().collect();
    if sites {
        nodes.sort_by(|a, b| a.site.cmp(&b.site));
    }
    for n in nodes {
        let checks = n
            .checks
            .iter()
            .map(|c| format!("{} {}", c.name, if c.healthy { "ok" } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join("\n");
        let mut row = if sites {
            vec![n.site.clone().unwrap_or_else(|| "-".into())]
        } else {
            Vec::new()
        };
        row.extend([
            n.id.clone(),
            n.kind.to_string(),
            n.priority.to_string(),
            match (n.raft.as_str(), n.lost_log) {
                (_, true) => format!("{} (LOST LOG: member replace {} {})", n.role, n.id, n.id),
                ("voter", _) => n.role.clone(),
                (raft, _) => format!("{} ({raft})", n.role),
            },
            if n.kind == crate::config::NodeKind::Witness {
                "-".into()
            } else {
                yes_no(n.healthy).to_string()
            },
            yes_no(n.in_sync).to_string(),
            n.lag.to_string(),
            match (n.maintenance, n.drain) {
                (true, true) => "yes, drained".to_string(),
                (true, false) => "yes".to_string(),
                (false, true) => "drained".to_string(),
                (false, false) => "no".to_string(),
            },
            checks,
            paths_text(n),
            match n.cert_not_after_unix {
                Some(t) => crate::tls::in_words(t - crate::tls::unix_now()),
                None => "-".to_string(),
            },
            n.resources
                .as_ref()
                .map(|r| r.summary().replace(", ", "\n"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".to_string()),
        ]);
        t.add_row(row);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    for w in &s.membership_warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    for d in &s.membership_drift {
        out.push_str(&format!("drift ({}'s config file): {d}\n", s.view_from));
    }
    for n in &s.nodes {
        if let Some(b) = &n.backup {
            let last = match b.last_success_unix_ms {
                Some(ms) => format!(
                    "last good {} ago, {} bytes, {}",
                    humantime::format_duration(std::time::Duration::from_secs(
                        crate::clock::unix_ms().saturating_sub(ms) / 1000
                    )),
                    b.size_bytes,
                    b.path
                ),
                None => "no good backup yet".to_string(),
            };
            let failed = match (&b.last_error, b.failures_total) {
                (_, 0) => String::new(),
                (Some(e), n) => format!("; {n} failed, last: {e}"),
                (None, n) => format!("; {n} failed"),
            };
            out.push_str(&format!("backup {}: {last}{failed}\n", n.id));
        }
    }
    out
}

/// `standin events [--since SEQ|AGE] [--limit N]`.
pub async fn events(
    api: &str,
    since: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(s) = since {
        query.push(format!("since={}", encode_query_value(s)));
    }
    if let Some(n) = limit {
        query.push(format!("limit={n}"));
    }
    let path = if query.is_empty() {
        "/v1/events".to_string()
    } else {
        format!("/v1/events?{}", query.join("&"))
    };
    let (events, raw) = get_json::<Vec<Event>>(api, &path).await?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "time (UTC)",
        "event",
        "node",
        "epoch",
        "cause",
        "took",
        "detail",
    ]);
    for e in &events {
        t.add_row(vec![
            format_time(e.at_unix_ms),
            e.kind.to_string(),
            e.node.clone().unwrap_or_default(),
            e.epoch.to_string(),
            e.cause.map(|c| c.to_string()).unwrap_or_default(),
            e.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
            e.detail.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Percent-encodes everything but unreserved characters, so any `--since` text makes a valid
/// request (the API answers a bad value with a 400 naming it).
fn encode_query_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(super) fn format_time(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `standin maintenance on|off NODE`.
pub async fn maintenance(api: &str, node: &str, on: bool, json: bool) -> Result<(), CliError> {
    let r = post(
        api,
        "/v1/maintenance",
        Some(serde_json::json!({"node": node, "on": on})),
    )
    .await?;
    print_reply(&r, json);
    Ok(())
}

/// `standin drain NODE [--off]`: take a node out of load balancing (or back in).
pub async fn drain(api: &str, node: &str, on: bool, json: bool) -> Result<(), CliError> {
    let r = post(
        api,
        "/v1/drain",
        Some(serde_json::json!({"node": node, "on": on})),
    )
    .await?;
    print_reply(&r, json);
    Ok(())
}

/// `standin reload [--node ID]`: `POST /v1/reload` to every member's admin API (or one),
/// then a line per node. Exit 64 if a node's file does not validate, else 69 if a node could
/// not be reached, else 0.
pub async fn reload(api: &str, only: Option<&str>, json: bool) -> Result<(), CliError> {
    let status = fetch_status(api).await?;
    let targets: Vec<(String, String)> = status
        .nodes
        .iter()
        .filter(|n| only.is_none_or(|o| o == n.id))
        .map(|n| (n.id.clone(), n.admin.clone()))
        .collect();
    if targets.is_empty() {
        return Err(CliError::new(
            exit::USAGE,
            format!("no member named {:?}", only.unwrap_or("")),
        ));
    }
    let mut reports: Vec<ReloadReport> = Vec::new();
    for (id, admin) in targets {
        let unreachable = |error: String| ReloadReport {
            error: Some(error),
            ..ReloadReport::new(&id, ReloadOutcome::Unreachable)
        };
        let report = match request(&admin, Method::POST, "/v1/reload", None, TIMEOUT).await {
            Err(e) => unreachable(e.to_string()),
            Ok(reply) => {
                check_auth(&reply)?;
                let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
                let report = match reply.status {
                    200 => serde_json::from_value(body).ok(),
                    422 => serde_json::from_value(body["report"].clone()).ok(),
                    _ => None,
                };
                report.unwrap_or_else(|| unreachable(api_error(&reply.body, reply.status)))
            }
        };
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string(&reports).unwrap_or_default());
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "node",
            "outcome",
            "digest",
            "applied live",
            "needs restart / error",
        ]);
        for r in &reports {
            t.add_row(vec![
                r.node.clone(),
                serde_json::to_value(r.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                r.digest.clone().unwrap_or_else(|| "-".into()),
                r.applied.join(", "),
                match (&r.error, &r.tls_error) {
                    (Some(e), _) => e.clone(),
                    (None, Some(t)) => format!("TLS files not usable: {t}"),
                    (None, None) => r.needs_restart.join(", "),
                },
            ]);
        }
        println!("{t}");
    }
    let count = |o: ReloadOutcome| reports.iter().filter(|r| r.outcome == o).count();
    let tls = reports.iter().filter(|r| r.tls_error.is_some()).count();
    match (
        count(ReloadOutcome::Rejected) + tls,
        count(ReloadOutcome::Unreachable),
    ) {
        (0, 0) => Ok(()),
        (0, n) => Err(CliError::new(
            exit::UNAVAILABLE,
            format!("{n} node(s) could not be reached"),
        )),
        (n, _) => Err(CliError::new(
            exit::USAGE,
            format!("{n} node(s) rejected their configuration or TLS files; nothing changed there"),
        )),
    }
}

fn print_reply(r: &AdminReply, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        println!("{}", r.message);
    }
}

/// `standin switchover [--to NODE]` and `standin failback`: request, then wait until a new
/// epoch is active (or the request is cancelled).
///
/// `expect` is the compare-and-set of `--from NODE` / `--epoch N`: the request is refused
/// (exit 1) unless those still hold when the leader commits it.
pub async fn switchover(
    api: &str,
    to: Option<&str>,
    expect: (Option<&str>, Option<u64>),
    failback: bool,
    wait: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let before = fetch_status(api).await?;
    let r = if failback {
        post(api, "/v1/failback", None).await?
    } else {
        let mut body = serde_json::json!({ "to": to });
        if let Some(f) = expect.0 {
            body["from"] = f.into();
        }
        if let Some(e) = expect.1 {
            body["epoch"] = e.into();
        }
        post(api, "/v1/switchover", Some(body)).await?
    };
    if !json {
        println!("{}", r.message);
    }
    let Some(limit) = wait else {
        if json {
            print_reply(&r, true);
        }
        return Ok(());
    };
    let start = Instant::now();
    let spinner = (!json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(100));
        pb.set_message("waiting for the new active node");
        pb
    });
    let result = loop {
        if start.elapsed() > limit {
            break Err(CliError::new(
                exit::TEMPFAIL,
                format!("no new active node after {}", humantime::format_duration(limit)),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(s) = fetch_status(api).await else { continue };
        let active_role = s
            .active
            .as_ref()
            .and_then(|a| s.nodes.iter().find(|n| &n.id == a))
            .map(|n| n.role.as_str());
        if s.epoch > before.epoch && active_role == Some("active") {
            break Ok(s);
        }
        if s.epoch == before.epoch && s.switchover.is_none() && start.elapsed() > Duration::from_millis(200) {
            // Cancelled: the reason is the last event.
            let (events, _) = get_json::<Vec<Event>>(api, "/v1/events?since=5m").await?;
            let reason = events
                .iter()
                .rev()
                .find(|e| e.kind == crate::cluster::state::EventKind::SwitchoverCancelled)
                .map(|e| e.detail.clone())
                .unwrap_or_else(|| "request dropped".into());
            break Err(CliError::new(
                exit::REFUSED,
                format!("switchover cancelled: {reason}"),
            ));
        }
        if let Some(pb) = &spinner {
            pb.set_message(match &s.waiting {
                Some(w) => w.clone(),
                None => "waiting for the new active node".to_string(),
            });
        }
    };
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    let s = result?;
    let took = start.elapsed();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "active": s.active, "epoch": s.epoch, "previous": before.active, "took_ms": took.as_millis() as u64})
        );
    } else {
        println!(
            "{} is active at epoch {} (was {} at epoch {}), took {} ms",
            s.active.as_deref().unwrap_or("-"),
            s.epoch,
            before.active.as_deref().unwrap_or("none"),
            before.epoch,
            took.as_millis()
        );
    }
    Ok(())
}

/// `standin proxy-status`: a front proxy's listeners and backends.
pub async fn proxy_status(proxy: &str, json: bool) -> Result<(), CliError> {
    let (status, raw) = get_json::<crate::address::proxy::status::ProxyStatus>(proxy, "/v1/proxy").await?;
    if json {
        println!("{raw}");
    } else {
        print!("{}", render_proxy_status(&status));
    }
    Ok(())
}

/// The human-readable proxy status: the cluster view, then one table row per backend.
pub fn render_proxy_status(s: &crate::address::proxy::status::ProxyStatus) -> String {
    let c = &s.cluster;
    let mut out = format!(
        "cluster: {} via {} ({}), epoch {}, active {}{}\n",
        if c.connected {
            "following"
        } else {
            "NOT CONNECTED, using the last view"
        },
        c.source.as_deref().unwrap_or("-"),
        c.method.as_deref().unwrap_or("-"),
        c.epoch.map_or("-".to_string(), |e| e.to_string()),
        c.active.as_deref().unwrap_or("none"),
        if c.stale { " (stale view)" } else { "" }
    );
    if let Some(e) = c.last_error.as_deref().filter(|_| !c.connected) {
        out.push_str(&format!("last error: {e}\n"));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "listener", "address", "mode", "backend", "address", "state", "open", "total", "failures",
    ]);
    for l in &s.listeners {
        let head = format!(
            "{}\n{:?} {:?}\nconns {} open {} reqs {} errors {} retries {}",
            l.name,
            l.settings.target,
            l.settings.protocol,
            l.connections,
            l.open,
            l.requests,
            l.errors,
            l.retries
        )
        .to_lowercase();
        let mode = format!("{:?}", l.settings.mode).to_lowercase();
        if l.upstreams.is_empty() {
            t.add_row(vec![
                head,
                l.address.clone(),
                mode,
                "-".into(),
                "-".into(),
                "no backends".into(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for (i, u) in l.upstreams.iter().enumerate() {
            let mut state = Vec::new();
            if l.active.as_deref() == Some(u.node.as_str()) {
                state.push("ACTIVE".to_string());
            }
            state.push(if u.cluster_ok { "ok" } else { "out (cluster)" }.to_string());
            if !u.check_ok {
                state.push("check FAIL".into());
            }
            if let Some(ms) = u.ejected_ms {
                state.push(format!("ejected {ms} ms"));
            }
            let first = i == 0;
            t.add_row(vec![
                if first { head.clone() } else { String::new() },
                if first { l.address.clone() } else { String::new() },
                if first { mode.clone() } else { String::new() },
                u.node.clone(),
                u.address.clone(),
                state.join(", "),
                u.open.to_string(),
                u.total.to_string(),
                u.failures.to_string(),
            ]);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    out
}

/// One node's hot restart, as `standin restart --json` reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestartReport {
    pub node: String,
    pub ok: bool,
    /// From asking to the new program answering (ms).
    pub handover_ms: Option<u64>,
    /// From asking to the node healthy and in sync again (ms).
    pub ready_ms: Option<u64>,
    pub pid: Option<u32>,
    pub from_version: Option<String>,
    pub version: Option<String>,
    pub hot_restarts: Option<u64>,
    pub error: Option<String>,
}

/// `standin restart [--node ID]`: hot restarts one node, or every member one at a time
/// (witnesses, then standbys, the active node last), each checked back (new program running,
/// healthy, in sync, epoch unchanged) before the next. Exit 0 when all were restarted, 1 at
/// the first that was not (the rest are left alone), 69 if a node cannot be reached.
pub async fn restart(api: &str, only: Option<&str>, wait: Duration, json: bool) -> Result<(), CliError> {
    let status = fetch_status(api).await?;
    let epoch = status.epoch;
    let mut targets: Vec<&NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| only.is_none_or(|o| o == n.id))
        .collect();
    if targets.is_empty() {
        return Err(CliError::new(
            exit::USAGE,
            format!("no member named {:?}", only.unwrap_or("")),
        ));
    }
    // Witnesses, then standbys, the active node last.
    targets.sort_by_key(|n| match n.role.as_str() {
        "witness" => 0,
        "active" | "promoting" => 2,
        _ => 1,
    });
    let mut reports = Vec::new();
    let mut failed = None;
    for n in targets {
        let report = restart_one(n, epoch, wait, json).await?;
        let ok = report.ok;
        if !json {
            match &report.error {
                None => eprintln!(
                    "{}: hot-restarted in {} ms (pid {}, {} -> {}), healthy and in sync after {} ms",
                    report.node,
                    report.handover_ms.unwrap_or(0),
                    report.pid.unwrap_or(0),
                    report.from_version.as_deref().unwrap_or("?"),
                    report.version.as_deref().unwrap_or("?"),
                    report.ready_ms.unwrap_or(0),
                ),
                Some(e) => eprintln!("{}: NOT restarted: {e}", report.node),
            }
        }
        reports.push(report);
        if !ok {
            failed = Some(reports.len() - 1);
            break;
        }
    }
    if json {
        println!("{}", serde_json::to_string(&reports).unwrap_or_default());
    }
    match failed {
        Some(i) => Err(CliError::new(
            1,
            format!(
                "stopped at {}: {}",
                reports[i].node,
                reports[i].error.as_deref().unwrap_or("not restarted")
            ),
        )),
        None => Ok(()),
    }
}

async fn daemon_info(admin: &str) -> Result<crate::node::shared::DaemonInfo, String> {
    let reply = request(admin, Method::GET, "/v1/daemon", None, TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(api_error(&reply.body, reply.status));
    }
    serde_json::from_str(&reply.body).map_err(|e| format!("unreadable /v1/daemon answer: {e}"))
}

async fn restart_one(
    n: &NodeStatus,
    epoch: u64,
    wait: Duration,
    json: bool,
) -> Result<RestartReport, CliError> {
    let mut report = RestartReport {
        node: n.id.clone(),
        ok: false,
        handover_ms: None,
        ready_ms: None,
        pid: None,
        from_version: None,
        version: None,
        hot_restarts: None,
        error: None,
    };
    let before = match daemon_info(&n.admin).await {
        Ok(d) => d,
        Err(e) => {
            return Err(CliError::new(exit::UNAVAILABLE, format!("{}: {e}", n.id)));
        }
    };
    report.from_version = Some(format!("{} ({})", before.version, before.commit));
    if !json {
        eprintln!(
            "{}: handing over (pid {}, version {})...",
            n.id, before.pid, before.version
        );
    }
    let asked = Instant::now();
    let reply = match request(&n.admin, Method::POST, "/v1/restart", None, TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(format!("cannot ask for the restart: {e}"));
            return Ok(report);
        }
    };
    check_auth(&reply)?;
    if reply.status != 202 {
        report.error = Some(api_error(&reply.body, reply.status));
        return Ok(report);
    }
    let deadline = crate::config::later(asked, wait);
    // The new program answers once it runs; the old one may answer for a moment more.
    let after = loop {
        if Instant::now() >= deadline {
            report.error = Some(format!("no new program answered within {wait:?}"));
            return Ok(report);
        }
        if let Ok(d) = daemon_info(&n.admin).await {
            if d.program_started_unix_ms != before.program_started_unix_ms {
                break d;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    report.handover_ms = Some(asked.elapsed().as_millis() as u64);
    report.pid = Some(after.pid);
    report.version = Some(format!("{} ({})", after.version, after.commit));
    report.hot_restarts = Some(after.hot_restarts);
    if after.hot_restarts != before.hot_restarts + 1 || after.pid != before.pid {
        report.error = Some(format!(
            "the previous program resumed: {}",
            after.last_restart_failure.as_deref().unwrap_or("no reason given")
        ));
        return Ok(report);
    }
    // Back in the cluster: reachable, healthy, in sync, the same epoch.
    loop {
        if let Ok(s) = get_json::<Status>(&n.admin, "/v1/status").await.map(|(s, _)| s) {
            if let Some(me) = s.nodes.iter().find(|m| m.id == n.id) {
                if s.epoch != epoch {
                    report.error = Some(format!(
                        "the epoch moved from {epoch} to {} (a failover)",
                        s.epoch
                    ));
                    return Ok(report);
                }
                if me.reachable && me.healthy && (me.in_sync || me.kind == crate::config::NodeKind::Witness) {
                    report.ready_ms = Some(asked.elapsed().as_millis() as u64);
                    report.ok = true;
                    return Ok(report);
                }
            }
        }
        if Instant::now() >= deadline {
            report.error = Some(format!("not healthy and in sync within {wait:?}"));
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The token and TLS settings every request of this CLI process uses (for the apps that take
/// them as a parameter: drills, backups).
pub fn access() -> crate::api::client::Access {
    crate::api::client::Access {
        token: TOKEN.get().cloned(),
        tls: CA.get().cloned(),
    }
}
