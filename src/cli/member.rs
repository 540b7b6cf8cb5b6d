//! `standin member add|remove|replace|list`: each step is one short, idempotent request to the
//! leader (through any node); this side waits between them, shows the progress, and gives up
//! with the reason at its timeout. A leader change between steps costs a retry, nothing else.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;

use super::client::{api_error, fetch_status, get_json, post, request, TIMEOUT};
use super::{exit, CliError};
use crate::cluster::members::{MembersView, RaftRole};
use crate::config::Member;

/// How often the progress is polled.
const POLL: Duration = Duration::from_millis(200);

/// `standin member list`.
pub async fn list(api: &str, json: bool) -> Result<(), CliError> {
    let (view, raw) = get_json::<MembersView>(api, "/v1/members").await?;
    if json {
        println!("{raw}");
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

/// The member table, by site.
pub fn render(v: &MembersView) -> String {
    let mut out = format!(
        "raft leader {}  last log index {}  ({})\n",
        v.leader.as_deref().unwrap_or("none"),
        v.last_log_index,
        if v.changed {
            "membership changed at run time"
        } else {
            "membership of the config files"
        }
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "site",
        "node",
        "kind",
        "raft",
        "prio",
        "addresses",
        "admin",
        "lag",
    ]);
    let mut rows: Vec<_> = v.members.iter().collect();
    rows.sort_by(|a, b| {
        a.member
            .site
            .cmp(&b.member.site)
            .then(a.member.id.cmp(&b.member.id))
    });
    for m in rows {
        t.add_row(vec![
            m.member.site.clone().unwrap_or_else(|| "-".into()),
            m.member.id.clone(),
            m.member.kind.to_string(),
            match &m.lost_log {
                Some(l) => format!("{} (LOST LOG, had {})", m.raft, l.acknowledged),
                None => m.raft.to_string(),
            },
            m.member.priority.to_string(),
            m.member
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            m.member.admin.to_string(),
            m.lag.map_or_else(|| "-".into(), |l| l.to_string()),
        ]);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    for w in &v.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    for d in &v.drift {
        out.push_str(&format!("drift ({}'s config file): {d}\n", v.view_from));
    }
    out
}

/// A spinner on a terminal (nothing otherwise, or with `--json`).
fn spinner(json: bool) -> Option<indicatif::ProgressBar> {
    (!json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    })
}

/// One membership request, retried while the API says "not yet" (503: a learner catching
/// up, leadership moving) until `deadline`. `Ok(None)`: still not done at the deadline.
async fn step(
    api: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    deadline: Instant,
    mut waiting: impl FnMut(&str),
) -> Result<Option<String>, CliError> {
    loop {
        let reply = request(api, method.clone(), path, body.clone(), TIMEOUT).await?;
        match reply.status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
                return Ok(Some(
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or("done")
                        .to_string(),
                ));
            }
            401 => return Err(CliError::new(exit::NOPERM, api_error(&reply.body, 401))),
            400 => return Err(CliError::new(exit::USAGE, api_error(&reply.body, 400))),
            409 => return Err(CliError::new(exit::REFUSED, api_error(&reply.body, 409))),
            503 if Instant::now() < deadline => {
                waiting(&api_error(&reply.body, 503));
                tokio::time::sleep(POLL).await;
            }
            503 => return Ok(None),
            s => return Err(CliError::new(exit::UNAVAILABLE, api_error(&reply.body, s))),
        }
    }
}

/// `standin member add`: learner, catch-up (with its lag shown), voter.
pub async fn add(api: &str, m: &Member, timeout: Duration, json: bool) -> Result<(), CliError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let pb = spinner(json);
    let say = |msg: &str| {
        if let Some(pb) = &pb {
            pb.set_message(msg.to_string());
        }
    };
    let body = serde_json::to_string(m).map_err(|e| CliError::new(exit::USAGE, e.to_string()))?;
    say(&format!("adding {} as a learner", m.id));
    let Some(msg) = step(api, Method::POST, "/v1/members", Some(body), deadline, say).await? else {
        return Err(CliError::new(
            exit::TEMPFAIL,
            format!("{} not added: no leader answered in time", m.id),
        ));
    };
    if let Some(pb) = &pb {
        pb.println(&msg);
    }
    let mut last_lag = None;
    let result = loop {
        let view = get_json::<MembersView>(api, "/v1/members")
            .await
            .map(|(v, _)| v)
            .ok();
        let me = view
            .as_ref()
            .and_then(|v| v.members.iter().find(|x| x.member.id == m.id));
        match me.map(|x| (x.raft, x.lag)) {
            Some((RaftRole::Voter, _)) => break Ok(()),
            Some((RaftRole::Learner, lag)) => {
                last_lag = lag.or(last_lag);
                say(&match lag {
                    Some(l) => format!("{} is a learner, catching up: {l} entries behind", m.id),
                    None => format!("{} is a learner; waiting for it to answer", m.id),
                });
                if lag.is_some_and(|l| l <= crate::cluster::members::VOTER_LAG) {
                    let path = format!("/v1/members/{}/voter", m.id);
                    if step(api, Method::POST, &path, None, Instant::now(), |_| {})
                        .await?
                        .is_some()
                    {
                        break Ok(());
                    }
                }
            }
            _ => say(&format!("waiting for {} to appear in the membership", m.id)),
        }
        if Instant::now() >= deadline {
            let why = match last_lag {
                Some(l) => format!("it is still {l} entries behind"),
                None => format!(
                    "the leader never heard from it: is it running (with `[node] join = true`) and reachable at {}?",
                    m.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                ),
            };
            break Err(CliError::new(
                exit::TEMPFAIL,
                format!(
                    "{} is still a learner after {}: {why}. It stays a learner; run the command again to go on, or `standin member remove {}`",
                    m.id,
                    humantime::format_duration(Duration::from_secs(timeout.as_secs())),
                    m.id
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    result?;
    let took = start.elapsed();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "node": m.id, "raft": "voter", "took_ms": took.as_millis() as u64})
        );
    } else {
        println!("{} is a voter (took {} ms)", m.id, took.as_millis());
    }
    Ok(())
}

/// `standin member remove`: switch over first if `id` is active, then remove.
pub async fn remove(api: &str, id: &str, timeout: Duration, json: bool) -> Result<(), CliError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let pb = spinner(json);
    let say = |msg: &str| {
        if let Some(pb) = &pb {
            pb.set_message(msg.to_string());
        }
    };
    let status = fetch_status(api).await?;
    // What the leader would refuse anyway, refused before a switchover moves the role.
    let (view, _) = get_json::<MembersView>(api, "/v1/members").await?;
    let data_voters_left = view
        .members
        .iter()
        .filter(|m| {
            m.member.id != id && m.raft == RaftRole::Voter && m.member.kind == crate::config::NodeKind::Data
        })
        .count();
    let is_voter = view
        .members
        .iter()
        .any(|m| m.member.id == id && m.raft == RaftRole::Voter);
    if is_voter && data_voters_left == 0 {
        return Err(CliError::new(
            exit::REFUSED,
            format!(
                "{id} is the last data node that votes: the cluster would have no node to run the service"
            ),
        ));
    }
    if status.active.as_deref() == Some(id) {
        say(&format!("{id} is active: switching over first"));
        let body = serde_json::json!({ "to": null, "from": id });
        let r = post(api, "/v1/switchover", Some(body)).await?;
        if let Some(pb) = &pb {
            pb.println(&r.message);
        }
        loop {
            if Instant::now() >= deadline {
                return Err(CliError::new(
                    exit::TEMPFAIL,
                    format!("{id} is still active after the timeout; nothing removed"),
                ));
            }
            tokio::time::sleep(POLL).await;
            let Ok(s) = fetch_status(api).await else { continue };
            let moved = s.active.as_deref().is_some_and(|a| a != id)
                && s.nodes
                    .iter()
                    .any(|n| Some(&n.id) == s.active.as_ref() && n.role == "active");
            if moved {
                if let Some(pb) = &pb {
                    pb.println(format!(
                        "{} is active at epoch {}",
                        s.active.as_deref().unwrap_or("-"),
                        s.epoch
                    ));
                }
                break;
            }
        }
    }
    say(&format!("removing {id}"));
    let path = format!("/v1/members/{id}");
    let msg = step(api, Method::DELETE, &path, None, deadline, say).await?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let Some(msg) = msg else {
        return Err(CliError::new(
            exit::TEMPFAIL,
            format!("{id} not removed: no leader answered in time"),
        ));
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "node": id, "message": msg, "took_ms": start.elapsed().as_millis() as u64})
        );
    } else {
        println!("{msg}");
    }
    Ok(())
}

/// `standin member replace OLD NEW`: a new id is added before OLD goes (the quorum only grows
/// in between); the same id is removed first, then added afresh (its replication restarts from
/// nothing, as a node whose data directory was lost needs).
pub async fn replace(
    api: &str,
    old: &str,
    new: &Member,
    timeout: Duration,
    json: bool,
) -> Result<(), CliError> {
    if old == new.id {
        remove(api, old, timeout, json).await?;
        add(api, new, timeout, json).await
    } else {
        add(api, new, timeout, json).await?;
        remove(api, old, timeout, json).await
    }
}
