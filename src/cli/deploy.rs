//! `standin deploy`: a new version of the managed service goes out node by node (the leader
//! drives it; see `node::deploy`), and this side shows the progress until every node runs it
//! healthily (exit 0) or the deploy failed and rolled back (exit 1). `deploy status`,
//! `deploy history` and `deploy rollback` read and steer the same replicated state.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;

use super::client::{api_error, get_json, request, TIMEOUT};
use super::{exit, CliError};
use crate::api::{DeployPlan, DeployRequest, DeployView};
use crate::cluster::change::{DeployKind, ServiceOverlay};

/// How often the progress is polled.
const POLL: Duration = Duration::from_millis(200);

/// The changes `standin deploy` names, from its options. `--file` is a `[service]` section
/// (with or without the header): its command, args, env and workdir.
pub fn changes(
    command: Option<String>,
    args: Vec<String>,
    env: Vec<String>,
    workdir: Option<std::path::PathBuf>,
    file: Option<&std::path::Path>,
) -> Result<ServiceOverlay, CliError> {
    let mut o = ServiceOverlay::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::new(exit::USAGE, format!("{}: {e}", path.display())))?;
        #[derive(serde::Deserialize)]
        struct Wrapped {
            service: crate::config::ServiceConfig,
        }
        let svc = match toml::from_str::<Wrapped>(&text) {
            Ok(w) => w.service,
            Err(_) => toml::from_str::<crate::config::ServiceConfig>(&text)
                .map_err(|e| CliError::new(exit::USAGE, format!("{}: {e}", path.display())))?,
        };
        o.command = Some(svc.command);
        o.args = Some(svc.args);
        o.env = svc.env;
        o.workdir = svc.workdir;
    }
    if command.is_some() {
        o.command = command;
    }
    if !args.is_empty() {
        o.args = Some(args);
    }
    for kv in env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CliError::new(
                exit::USAGE,
                format!("--env {kv}: expected NAME=VALUE"),
            ));
        };
        o.env.insert(k.to_string(), v.to_string());
    }
    if let Some(w) = workdir {
        o.workdir = Some(w);
    }
    o.validate().map_err(|e| CliError::new(exit::USAGE, e))?;
    Ok(o)
}

/// Who runs the command, for the history: `$USER@host` (as the client says: the API knows a
/// token, not users).
pub fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// `standin deploy` (and `deploy rollback`): asks for the deploy, then follows it unless
/// `wait` is zero.
pub async fn deploy(api: &str, req: DeployRequest, wait: Duration, json: bool) -> Result<(), CliError> {
    let body = serde_json::to_string(&req).map_err(|e| CliError::new(exit::USAGE, e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let r = request(api, Method::POST, "/v1/deploy", Some(body.clone()), TIMEOUT).await?;
        if r.status == 503 && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            continue;
        }
        break r;
    };
    let plan: DeployPlan = match reply.status {
        200 => serde_json::from_str(&reply.body)
            .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("unexpected answer from {api}: {e}")))?,
        401 => return Err(CliError::new(exit::NOPERM, api_error(&reply.body, 401))),
        400 => return Err(CliError::new(exit::USAGE, api_error(&reply.body, 400))),
        409 => return Err(CliError::new(exit::REFUSED, api_error(&reply.body, 409))),
        s => return Err(CliError::new(exit::UNAVAILABLE, api_error(&reply.body, s))),
    };
    if plan.dry_run || wait.is_zero() {
        if json {
            println!("{}", serde_json::to_string(&plan).unwrap_or_default());
        } else {
            print!("{}", render_plan(&plan));
        }
        return Ok(());
    }
    if !json {
        print!("{}", render_plan(&plan));
    }
    let Some(id) = plan.deploy else {
        return Err(CliError::new(
            exit::UNAVAILABLE,
            "the leader did not say which deploy started",
        ));
    };
    follow(api, id, plan.steps.len() as u64, wait, json).await
}

/// Follows deploy `id` (and the rollback that reverses it, if one does) to its end.
async fn follow(api: &str, id: u64, steps: u64, wait: Duration, json: bool) -> Result<(), CliError> {
    let deadline = Instant::now() + wait;
    let pb = (!json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(steps);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} nodes  {elapsed}  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    });
    let mut last_line = String::new();
    let mut following = id;
    loop {
        let view = get_json::<DeployView>(api, "/v1/deploy").await.map(|(v, _)| v);
        if let Ok(v) = &view {
            if let Some(d) = &v.deploy {
                if d.id == following || d.reverses == Some(following) {
                    following = d.id;
                    let line = format!(
                        "{}{} {} (version {} -> {})",
                        if d.kind == DeployKind::Rollback {
                            "ROLLING BACK: "
                        } else {
                            ""
                        },
                        d.phase,
                        d.node().unwrap_or("-"),
                        d.from,
                        d.to
                    );
                    match &pb {
                        Some(pb) => {
                            pb.set_length(d.plan.len() as u64);
                            pb.set_position(d.step as u64);
                            pb.set_message(line.clone());
                        }
                        None if !json && line != last_line => eprintln!("{line}"),
                        None => {}
                    }
                    last_line = line;
                }
            } else if let Some(r) = v.history.iter().rev().find(|r| r.id == following) {
                if let Some(pb) = &pb {
                    pb.finish_and_clear();
                }
                let deployed = r.ok && r.kind == DeployKind::Deploy;
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    print!("{}", render_nodes(v));
                    println!("deploy {}: {}", r.id, r.outcome);
                }
                if deployed {
                    return Ok(());
                }
                let failure = v
                    .history
                    .iter()
                    .find(|h| h.id == id)
                    .map_or_else(|| r.outcome.clone(), |h| h.outcome.clone());
                return Err(CliError::new(
                    exit::REFUSED,
                    format!("deploy {id} did not complete: {failure}"),
                ));
            }
        }
        if Instant::now() >= deadline {
            if let Some(pb) = &pb {
                pb.abandon();
            }
            return Err(CliError::new(
                exit::TEMPFAIL,
                format!(
                    "deploy {id} still under way after {}: it goes on; follow it with `standin deploy status`",
                    humantime::format_duration(Duration::from_secs(wait.as_secs()))
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn render_plan(p: &DeployPlan) -> String {
    let mut out = format!(
        "{}version {} -> {}{} ({:?}): {}\n",
        if p.dry_run { "plan (dry run): " } else { "deploy: " },
        p.from,
        p.to,
        if p.label.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", p.label)
        },
        p.strategy,
        p.spec
    );
    for (i, s) in p.steps.iter().enumerate() {
        out.push_str(&format!("  {}. {s}\n", i + 1));
    }
    out.push_str(&format!(
        "  each step within {} ms; a failure rolls the updated nodes back\n",
        p.times.step_timeout_ms
    ));
    out
}

fn render_nodes(v: &DeployView) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["node", "role", "runs", "should run", "healthy", "drained"]);
    for n in &v.nodes {
        t.add_row(vec![
            n.id.clone(),
            if n.active { "active" } else { "standby" }.to_string(),
            n.running.to_string(),
            n.desired.to_string(),
            if n.healthy { "yes" } else { "NO" }.to_string(),
            if n.drain { "yes" } else { "" }.to_string(),
        ]);
    }
    format!("{t}\n")
}

/// `standin deploy status`.
pub async fn status(api: &str, json: bool) -> Result<(), CliError> {
    let (v, raw) = get_json::<DeployView>(api, "/v1/deploy").await?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    let mut out = format!("current version {}\n", v.current);
    match &v.deploy {
        Some(d) => out.push_str(&format!(
            "{} {} under way: version {} -> {}, {} {} (step {} of {}), by {}\n",
            if d.kind == DeployKind::Rollback {
                "rollback"
            } else {
                "deploy"
            },
            d.id,
            d.from,
            d.to,
            d.phase,
            d.node().unwrap_or("-"),
            d.step + 1,
            d.plan.len(),
            d.by
        )),
        None => out.push_str("no deploy under way\n"),
    }
    out.push_str(&render_nodes(&v));
    if let Some(r) = v.history.last() {
        out.push_str(&format!(
            "last: deploy {} ({} -> {}): {}\n",
            r.id, r.from, r.to, r.outcome
        ));
    }
    print!("{out}");
    Ok(())
}

/// `standin deploy history`: every version, and the deploys.
pub async fn history(api: &str, json: bool) -> Result<(), CliError> {
    let (v, raw) = get_json::<DeployView>(api, "/v1/deploy").await?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["version", "label", "spec", "by", "created", "outcome"]);
    for ver in &v.versions {
        t.add_row(vec![
            format!(
                "{}{}",
                ver.number,
                if ver.number == v.current { " *" } else { "" }
            ),
            ver.label.clone(),
            ver.overlay.summary(),
            ver.by.clone(),
            super::client::format_time(ver.at_unix_ms),
            ver.outcome.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
    let mut d = Table::new();
    d.load_preset(UTF8_FULL_CONDENSED);
    d.set_header(vec![
        "deploy", "kind", "versions", "nodes", "by", "ended", "outcome",
    ]);
    for r in &v.history {
        d.add_row(vec![
            r.id.to_string(),
            format!("{:?}", r.kind).to_lowercase(),
            format!("{} -> {}", r.from, r.to),
            r.plan.join(", "),
            r.by.clone(),
            super::client::format_time(r.ended_unix_ms),
            r.outcome.clone(),
        ]);
    }
    println!("{d}");
    Ok(())
}

/// `standin deploy rollback [N]`: the version before the current one (or `N`) goes out the
/// same careful way.
pub async fn rollback(
    api: &str,
    to: Option<u64>,
    mut req: DeployRequest,
    wait: Duration,
    json: bool,
) -> Result<(), CliError> {
    let target = match to {
        Some(n) => n,
        None => {
            let (v, _) = get_json::<DeployView>(api, "/v1/deploy").await?;
            v.history
                .iter()
                .rev()
                .find(|r| r.ok && r.kind == DeployKind::Deploy && r.to == v.current)
                .map(|r| r.from)
                .ok_or_else(|| {
                    CliError::new(
                        exit::REFUSED,
                        format!(
                            "no earlier version to go back to from version {}; name one: `standin deploy rollback N`",
                            v.current
                        ),
                    )
                })?
        }
    };
    req.target = Some(target);
    deploy(api, req, wait, json).await
}
