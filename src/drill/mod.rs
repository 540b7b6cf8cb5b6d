//! Failover drills: acceptance tests run against a live cluster through its admin API.
//!
//! A run takes the scenarios one after another. Before each it waits for a healthy cluster;
//! it injects the scenario's fault through the node's own drill API (`api::drill`: the node
//! kills its service, crashes its daemon or cuts its own peer paths, and heals by itself), or
//! asks for a switchover; it watches what the cluster does; and it measures what a client
//! sees all along: the service through its floating address, the store through its own
//! (writes, read back at the end of each scenario), and every data node's own answer to "are
//! you active?". The record (`record`) is stored in the cluster (`POST /v1/drills`).

pub mod probe;
pub mod record;
pub mod schedule;

use std::time::{Duration, Instant};

use hyper::Method;
use serde::de::DeserializeOwned;

use crate::api::client::{error_text, Access};
use crate::clock::unix_ms;
use crate::cluster::state::{Event, EventKind};
use crate::config::drill::ProbeTarget;
use crate::status::Status;
use probe::{Probes, Reply, Resp};
use record::{NodeDigest, NodeVersion, Record, ScenarioRecord, StoreStats, TimingSummary};

/// What a run does.
#[derive(Clone)]
pub struct Plan {
    /// A node's admin API (any member; others are tried when it does not answer).
    pub api: String,
    pub access: Access,
    pub scenarios: Vec<String>,
    pub service: ProbeTarget,
    /// The store's floating address and its password.
    pub store: Option<(String, Option<String>)>,
    /// Overrides every scenario's default maximum interruption.
    pub max_interruption: Option<Duration>,
    pub scheduled: bool,
    /// How long `recovery` waits for the faulted nodes to come back.
    pub recovery_timeout: Duration,
    /// Start even if the cluster records another run under way (its client went away).
    pub force: bool,
}

/// Requests to the admin APIs of the cluster.
struct Api {
    access: Access,
    /// Admin addresses to try, the one given first.
    admins: Vec<String>,
}

const CALL: Duration = Duration::from_secs(3);
/// How long a fault scenario waits for a healthy cluster before it gives up.
const HEALTHY_WAIT: Duration = Duration::from_secs(60);
/// How long the others wait before they go ahead on a degraded cluster.
const DEGRADED_WAIT: Duration = Duration::from_secs(15);
/// Evidence bounds per scenario.
const LOG_LINES_PER_NODE: usize = 25;
const EVENT_LINES: usize = 60;
const LINE_CHARS: usize = 240;

impl Api {
    async fn call(
        &self,
        admin: &str,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        crate::api::client::request_with(admin, method, path, body, CALL, &self.access)
            .await
            .map(|r| (r.status, r.body))
            .map_err(|e| e.to_string())
    }

    async fn get<T: DeserializeOwned>(&self, admin: &str, path: &str) -> Result<T, String> {
        let (status, body) = self.call(admin, Method::GET, path, None).await?;
        if status != 200 {
            return Err(format!("{admin}{path}: {}", error_text(&body, status)));
        }
        serde_json::from_str(&body).map_err(|e| format!("{admin}{path}: unexpected answer: {e}"))
    }

    /// The cluster's view from the first node that has a current one (a stale view, e.g.
    /// from an isolated node, only if no node has better).
    async fn status(&self) -> Result<Status, String> {
        let mut stale = None;
        let mut last = String::from("no admin address");
        for a in &self.admins {
            match self.get::<Status>(a, "/v1/status").await {
                Ok(s) if !s.stale => return Ok(s),
                Ok(s) => stale = Some(s),
                Err(e) => last = e,
            }
        }
        stale.ok_or(last)
    }

    /// A POST through the first node that answers.
    async fn post_any(&self, path: &str, body: serde_json::Value) -> Result<(u16, String), String> {
        let mut last = String::from("no admin address");
        for a in &self.admins {
            match self.call(a, Method::POST, path, Some(body.to_string())).await {
                Ok(r) if r.0 != 503 => return Ok(r),
                Ok(r) => last = error_text(&r.1, r.0),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn learn(&mut self, st: &Status) {
        for n in &st.nodes {
            if !self.admins.contains(&n.admin) {
                self.admins.push(n.admin.clone());
            }
        }
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() <= LINE_CHARS {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(LINE_CHARS).collect();
        t.push('…');
        t
    }
}

/// Why `st` is not a healthy cluster to start a scenario on, if it is not.
pub fn unhealthy(st: &Status) -> Option<String> {
    if st.stale {
        return Some(format!("{} has no leader (stale view)", st.view_from));
    }
    if st.active.is_none() {
        return Some("no node is active".into());
    }
    if st.switchover.is_some() {
        return Some("a switchover is under way".into());
    }
    let mut why = Vec::new();
    for n in &st.nodes {
        if !n.reachable && n.id != st.view_from {
            why.push(format!("{} unreachable", n.id));
        } else if n.lost_log {
            why.push(format!("{} lost its log", n.id));
        } else if n.kind == crate::config::NodeKind::Data && !n.healthy {
            why.push(format!("{} unhealthy", n.id));
        } else if n.kind == crate::config::NodeKind::Data && !n.in_sync {
            why.push(format!("{} not in sync", n.id));
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The timing profile, from a node's effective configuration.
async fn timing(api: &Api) -> TimingSummary {
    let mut t = TimingSummary {
        heartbeat_ms: 100,
        failure_timeout_ms: 1000,
        lease_ms: 1000,
    };
    for a in &api.admins {
        if let Ok(v) = api.get::<serde_json::Value>(a, "/v1/config").await {
            let ms = |k: &str| -> Option<u64> {
                let s = v.get("config")?.get("timing")?.get(k)?.as_str()?;
                humantime::parse_duration(s).ok().map(|d| d.as_millis() as u64)
            };
            t.heartbeat_ms = ms("heartbeat-interval").unwrap_or(t.heartbeat_ms);
            t.failure_timeout_ms = ms("failure-timeout").unwrap_or(t.failure_timeout_ms);
            t.lease_ms = ms("lease").unwrap_or(t.lease_ms);
            break;
        }
    }
    t
}

/// The interruption a scenario may cause by default: a planned switchover 1 s; a cut link
/// none the client should notice (500 ms of slack for a loaded machine); an unplanned
/// failover the failure timeout, the old lease and a second for promotion and the proxy.
fn default_max(name: &str, t: &TimingSummary) -> u64 {
    match name {
        "planned-switchover" => 1000,
        "link-failure" => 500,
        _ => t.failure_timeout_ms + t.lease_ms + 1000,
    }
}

/// How long a cut lasts: well past the failure timeout (a failover would have happened).
fn cut_for(name: &str, t: &TimingSummary) -> u64 {
    match name {
        "link-failure" => (t.failure_timeout_ms * 4).max(3000),
        _ => (t.failure_timeout_ms * 4 + t.lease_ms).max(4000),
    }
}

struct Run<'a> {
    id: String,
    plan: &'a Plan,
    api: Api,
    timing: TimingSummary,
    probes: Probes,
    /// Nodes a fault left out, for `recovery`.
    faulted: Vec<String>,
    /// When the last cut ends (Unix ms).
    cut_until: u64,
}

/// A run id from its start time: `YYYYMMDD-HHMMSS` (UTC).
pub fn run_id(at_ms: u64) -> String {
    let t =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(at_ms)).to_string();
    t.trim_end_matches('Z').replace(['-', ':'], "").replace('T', "-")
}

/// Runs the plan's scenarios and returns the record (stored in the cluster when it could be:
/// the second value says why not).
pub async fn run(
    plan: &Plan,
    say: &(dyn Fn(&str) + Send + Sync),
) -> Result<(Record, Option<String>), String> {
    for s in &plan.scenarios {
        if !crate::config::drill::SCENARIOS.contains(&s.as_str()) {
            return Err(format!(
                "unknown scenario `{s}`: one of {}",
                crate::config::drill::SCENARIOS.join(", ")
            ));
        }
    }
    let mut api = Api {
        access: plan.access.clone(),
        admins: vec![plan.api.clone()],
    };
    let st = api
        .status()
        .await
        .map_err(|e| format!("cannot read the cluster's status: {e}"))?;
    api.learn(&st);
    let started = unix_ms();
    let id = run_id(started);
    match api
        .post_any(
            "/v1/drills/begin",
            serde_json::json!({"id": id, "scheduled": plan.scheduled, "force": plan.force}),
        )
        .await
    {
        Ok((200, _)) => {}
        Ok((status, body)) => return Err(error_text(&body, status)),
        Err(e) => return Err(format!("cannot start the run: {e}")),
    }
    let timing = timing(&api).await;
    let data_admins: Vec<(String, String)> = st
        .nodes
        .iter()
        .filter(|n| n.kind == crate::config::NodeKind::Data)
        .map(|n| (n.id.clone(), n.admin.clone()))
        .collect();
    let probes = Probes::start(plan.service.clone(), plan.store.clone(), &id, data_admins);
    let mut record = Record {
        id: id.clone(),
        started_unix_ms: started,
        scheduled: plan.scheduled,
        api: plan.api.clone(),
        service_probe: plan.service.to_string(),
        store_probe: plan.store.as_ref().map(|s| s.0.clone()),
        nodes: st
            .nodes
            .iter()
            .map(|n| NodeVersion {
                id: n.id.clone(),
                kind: n.kind.to_string(),
                version: n.version.clone(),
                role: n.role.clone(),
            })
            .collect(),
        timing: timing.clone(),
        ..Default::default()
    };
    // Each daemon's own word on its program (the status carries what it reported at start).
    for n in &mut record.nodes {
        let admin = st.nodes.iter().find(|x| x.id == n.id).map(|x| x.admin.clone());
        if let Some(admin) = admin {
            if let Ok(d) = api
                .get::<crate::node::shared::DaemonInfo>(&admin, "/v1/daemon")
                .await
            {
                n.version = format!("{} ({})", d.version, d.commit);
            }
        }
        if n.version.is_empty() {
            n.version = "unknown (the node did not answer)".into();
        }
    }
    say(&format!("drill {id}: {} scenario(s)", plan.scenarios.len()));
    // The probes get a moment to see the service up before the first fault.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut run = Run {
        id: id.clone(),
        plan,
        api,
        timing,
        probes,
        faulted: Vec::new(),
        cut_until: 0,
    };
    for name in &plan.scenarios {
        say(&format!("{name}: running"));
        let s = run.scenario(name).await;
        say(&format!(
            "{name}: {}{}",
            if s.passed { "pass" } else { "FAIL" },
            match (&s.reason, s.failover_ms) {
                (Some(r), _) => format!(" — {r}"),
                (None, Some(f)) => format!(
                    " (failover {f} ms, interruption {} ms)",
                    s.service.interruption_ms
                ),
                (None, None) => format!(" (interruption {} ms)", s.service.interruption_ms),
            }
        ));
        record.scenarios.push(s);
    }
    // A cut still in force ends by itself; the run waits for it so that it leaves the
    // cluster as it found it.
    let left = run.cut_until.saturating_sub(unix_ms());
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left)).await;
    }
    let samples = run.probes.stop().await;
    if let Some((addr, password)) = &plan.store {
        // Every acknowledged write of the run, once more, now that every cut healed and the
        // faulted nodes are back (a rollback of a rejoining node would show here).
        let (writes, failed, acked): (u64, u64, Vec<(String, String)>) = {
            let s = samples.lock().unwrap_or_else(|p| p.into_inner());
            (
                s.store.len() as u64,
                s.store.iter().filter(|x| !x.acked).count() as u64,
                s.store
                    .iter()
                    .filter(|x| x.acked)
                    .map(|x| (x.key.clone(), x.value.clone()))
                    .collect(),
            )
        };
        let mut st = StoreStats {
            writes,
            acked: acked.len() as u64,
            failed,
            ..Default::default()
        };
        match read_back(addr, password.clone(), &acked).await {
            Ok(lost) => {
                st.lost = lost.len() as u64;
                st.lost_keys = lost.into_iter().take(10).collect();
            }
            Err(e) => {
                st.lost = st.acked;
                st.first_error = Some(format!("not read back: {e}"));
            }
        }
        record.store_final = Some(st);
        let keys: Vec<String> = samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .store
            .iter()
            .map(|s| s.key.clone())
            .collect();
        cleanup(addr, password.clone(), &id, keys).await;
    }
    record.finished_unix_ms = unix_ms();
    record.unresolved = record
        .scenarios
        .iter()
        .filter(|s| !s.passed)
        .map(|s| format!("{}: {}", s.name, s.reason.as_deref().unwrap_or("failed")))
        .collect();
    if let Some(st) = record.store_final.as_ref().filter(|st| st.lost > 0) {
        record.unresolved.push(format!(
            "{} acknowledged write(s) of the run did not read back at its end",
            st.lost
        ));
    }
    record.passed = !record.scenarios.is_empty()
        && record.scenarios.iter().all(|s| s.passed)
        && record.store_final.as_ref().is_none_or(|st| st.lost == 0);
    fit(&mut record);
    let stored = store_record(&run.api, &record).await.err();
    Ok((record, stored))
}

/// Trims the evidence until the record fits the cluster's limit: log lines first, then events.
fn fit(r: &mut Record) {
    // Both limits: the document's own, and the request that carries it as a JSON string.
    let fits = |r: &Record| {
        serde_json::to_string(r).is_ok_and(|doc| {
            doc.len() <= crate::cluster::drills::MAX_RECORD_BYTES
                && serde_json::to_string(&doc)
                    .is_ok_and(|quoted| quoted.len() + 2048 <= crate::api::serve::MAX_BODY)
        })
    };
    while !fits(r) {
        let longest = r
            .scenarios
            .iter_mut()
            .max_by_key(|s| s.logs.len() + s.events.len());
        let Some(s) = longest else { break };
        if s.logs.len() > 4 {
            let keep = s.logs.len() / 2;
            s.logs.drain(..s.logs.len() - keep);
        } else if s.events.len() > 4 {
            let keep = s.events.len() / 2;
            s.events.drain(..s.events.len() - keep);
        } else {
            for s in &mut r.scenarios {
                s.logs.clear();
                s.events.clear();
            }
            break;
        }
    }
}

async fn store_record(api: &Api, r: &Record) -> Result<(), String> {
    let json = serde_json::to_string(r).map_err(|e| e.to_string())?;
    let body = serde_json::json!({
        "id": r.id,
        "at": r.started_unix_ms,
        "passed": r.passed,
        "scheduled": r.scheduled,
        "scenarios": r.outcomes(),
        "json": json,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.post_any("/v1/drills", body.clone()).await {
            Ok((200, _)) => return Ok(()),
            Ok((s, b)) if Instant::now() >= deadline || s != 503 => return Err(error_text(&b, s)),
            Err(e) if Instant::now() >= deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Removes the keys the drill wrote (best effort: a failure leaves them, named by the run).
async fn cleanup(addr: &str, password: Option<String>, id: &str, mut keys: Vec<String>) {
    keys.extend((0..CONSISTENCY_KEYS).map(|i| format!("standin-drill:{id}:c:{i}")));
    let mut c = Resp::new(addr.to_string(), password);
    for chunk in keys.chunks(200) {
        let mut args: Vec<&[u8]> = vec![b"DEL"];
        args.extend(chunk.iter().map(|k| k.as_bytes()));
        if c.call(&args).await.is_err() {
            tracing::info!(run = id, "drill keys left in the store (standin-drill:{id}:*)");
            return;
        }
    }
}

/// Keys `store-consistency` writes.
const CONSISTENCY_KEYS: usize = 500;
/// Every key a drill writes expires after an hour, so that a drill client that dies leaves
/// nothing in the store for long.
pub const KEY_TTL_MS: &str = "3600000";

/// Reads `pairs` back through `addr`; returns the keys that did not read back as written.
/// `Err` if the store could not be read at all within 15 s.
async fn read_back(
    addr: &str,
    password: Option<String>,
    pairs: &[(String, String)],
) -> Result<Vec<String>, String> {
    let mut c = Resp::new(addr.to_string(), password);
    let mut lost = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (k, v) in pairs {
        loop {
            match c.call(&[b"GET", k.as_bytes()]).await {
                Ok(Reply::Bulk(Some(got))) => {
                    if got != v.as_bytes() {
                        lost.push(k.clone());
                    }
                    break;
                }
                Ok(Reply::Bulk(None)) => {
                    lost.push(k.clone());
                    break;
                }
                other if Instant::now() >= deadline => {
                    return Err(format!("the store did not answer reads: {other:?}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(lost)
}

impl Run<'_> {
    async fn status(&mut self) -> Result<Status, String> {
        let st = self.api.status().await?;
        self.api.learn(&st);
        Ok(st)
    }

    async fn wait_healthy(&mut self, within: Duration) -> Result<Status, String> {
        let deadline = Instant::now() + within;
        loop {
            let why = match self.status().await {
                Ok(st) => match unhealthy(&st) {
                    None => return Ok(st),
                    Some(w) => w,
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until another node than `from` is active at a later epoch than `epoch`; the
    /// time it took from `t0`.
    async fn wait_takeover(
        &mut self,
        from: &str,
        epoch: u64,
        t0: Instant,
        within: Duration,
    ) -> Result<(Status, u64), String> {
        let deadline = t0 + within;
        loop {
            if let Ok(st) = self.status().await {
                if st.active.as_deref().is_some_and(|a| a != from) && st.epoch > epoch {
                    return Ok((st, t0.elapsed().as_millis() as u64));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no other node became active within {} ms",
                    within.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn admin_of(&self, st: &Status, id: &str) -> Option<String> {
        st.nodes.iter().find(|n| n.id == id).map(|n| n.admin.clone())
    }

    async fn fault(&self, admin: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let (status, text) = self
            .api
            .call(admin, Method::POST, "/v1/drill/fault", Some(body.to_string()))
            .await?;
        if status != 200 {
            return Err(error_text(&text, status));
        }
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    async fn scenario(&mut self, name: &str) -> ScenarioRecord {
        let mut s = ScenarioRecord {
            name: name.to_string(),
            max_interruption_ms: self
                .plan
                .max_interruption
                .map_or_else(|| default_max(name, &self.timing), |d| d.as_millis() as u64),
            ..Default::default()
        };
        // A fault is injected only into a healthy cluster (into a degraded one it could stop
        // the service). A switchover, a recovery or a consistency check goes ahead on a
        // degraded one after a short wait: the cluster's own checks and refusals are what
        // they test.
        let degraded_ok = matches!(name, "planned-switchover" | "recovery" | "store-consistency");
        let before = if name == "recovery" {
            self.status().await
        } else if degraded_ok {
            match self.wait_healthy(DEGRADED_WAIT).await {
                Ok(st) => Ok(st),
                Err(why) => {
                    s.observed = format!("started on a degraded cluster ({why}); ");
                    self.status().await
                }
            }
        } else {
            self.wait_healthy(HEALTHY_WAIT).await
        };
        s.started_unix_ms = unix_ms();
        let before = match before {
            Ok(st) => st,
            Err(why) => {
                s.ended_unix_ms = unix_ms();
                s.expected = expected(name, &s);
                s.observed = "not started".into();
                s.reason = Some(format!("the cluster was not healthy before the scenario: {why}"));
                self.evidence(&mut s).await;
                return s;
            }
        };
        s.active_before = before.active.clone();
        s.epoch_before = before.epoch;
        s.expected = expected(name, &s);
        let outcome = match name {
            "planned-switchover" => self.planned_switchover(&mut s, &before).await,
            "link-failure" => self.link_failure(&mut s, &before).await,
            "service-crash" => self.service_crash(&mut s, &before).await,
            "node-isolation" => self.node_isolation(&mut s, &before).await,
            "node-shutdown" => self.node_shutdown(&mut s, &before).await,
            "recovery" => self.recovery(&mut s).await,
            "store-consistency" => self.store_consistency(&mut s).await,
            other => Err(format!("unknown scenario {other}")),
        };
        // Let the probes see the end of the window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.ended_unix_ms = unix_ms();
        if let Ok(st) = self.status().await {
            s.active_after = st.active.clone();
            s.epoch_after = st.epoch;
        }
        self.evidence(&mut s).await;
        let mut reasons = Vec::new();
        if let Err(e) = outcome {
            reasons.push(e);
        }
        if s.service.interruption_ms > s.max_interruption_ms {
            reasons.push(format!(
                "the service was interrupted for {} ms (at most {} ms allowed)",
                s.service.interruption_ms, s.max_interruption_ms
            ));
        }
        if let Some(st) = &s.store {
            if st.lost > 0 {
                reasons.push(format!("{} acknowledged write(s) lost", st.lost));
            }
            // A store that acknowledged nothing proves nothing about lost writes.
            if st.writes > 0 && st.acked == 0 {
                reasons.push(format!(
                    "the store acknowledged none of {} writes (first error: {})",
                    st.writes,
                    st.first_error.as_deref().unwrap_or("-")
                ));
            }
        }
        if !s.two_actives.is_empty() {
            reasons.push(format!("two nodes acted as active at once: {}", s.two_actives[0]));
        }
        s.passed = reasons.is_empty();
        s.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        s
    }

    async fn planned_switchover(&mut self, s: &mut ScenarioRecord, before: &Status) -> Result<(), String> {
        let from = before.active.clone().unwrap_or_default();
        let t0 = Instant::now();
        let (status, body) = self
            .api
            .post_any(
                "/v1/switchover",
                serde_json::json!({ "from": from, "epoch": before.epoch }),
            )
            .await?;
        if status != 200 {
            let why = error_text(&body, status);
            let still = self.status().await.ok().and_then(|st| st.active);
            s.observed += &format!(
                "switchover refused: {why}; the active node {} kept serving",
                still.as_deref().unwrap_or("(none!)")
            );
            return Err(format!("switchover refused: {why}"));
        }
        let within = Duration::from_millis(s.max_interruption_ms) + Duration::from_secs(10);
        // Accepted, then carried out, or cancelled by the coordinator (no eligible standby):
        // the reason is the cancellation's event.
        let deadline = t0 + within;
        let (st, ms) = loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let Ok(st) = self.status().await else { continue };
            if st.active.as_deref().is_some_and(|a| a != from) && st.epoch > before.epoch {
                break (st, t0.elapsed().as_millis() as u64);
            }
            if st.epoch == before.epoch
                && st.switchover.is_none()
                && t0.elapsed() > Duration::from_millis(200)
            {
                let admin = st
                    .leader
                    .as_deref()
                    .and_then(|l| self.admin_of(&st, l))
                    .unwrap_or(self.plan.api.clone());
                let events = self
                    .api
                    .get::<Vec<Event>>(&admin, "/v1/events?since=5m")
                    .await
                    .unwrap_or_default();
                let why = events
                    .iter()
                    .rev()
                    .find(|e| e.kind == EventKind::SwitchoverCancelled)
                    .map_or_else(|| "request dropped".to_string(), |e| e.detail.clone());
                s.observed += &format!(
                    "switchover accepted, then cancelled: {why}; the active node {} kept serving",
                    st.active.as_deref().unwrap_or("(none!)")
                );
                return Err(format!("switchover refused: {why}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no other node became active within {} ms{}",
                    within.as_millis(),
                    st.waiting
                        .map(|w| format!(" (the cluster is waiting: {w})"))
                        .unwrap_or_default()
                ));
            }
        };
        s.failover_ms = Some(ms);
        s.observed += &format!(
            "{} became active at epoch {} {} ms after the request; {} is standby",
            st.active.as_deref().unwrap_or("?"),
            st.epoch,
            ms,
            from
        );
        Ok(())
    }

    async fn link_failure(&mut self, s: &mut ScenarioRecord, before: &Status) -> Result<(), String> {
        let target = before.active.clone().unwrap_or_default();
        s.target = Some(target.clone());
        let admin = self.admin_of(before, &target).ok_or("no admin address")?;
        let view: serde_json::Value = self.api.get(&admin, "/v1/drill/fault").await?;
        if view["paths"].as_u64().unwrap_or(0) < 2 {
            s.observed += "not run";
            return Err(format!(
                "{target} has a single peer path: losing it isolates the node; give every member a second address (redundant links)"
            ));
        }
        let for_ms = cut_for("link-failure", &self.timing);
        let v = self
            .fault(
                &admin,
                serde_json::json!({"fault": "cut-paths", "paths": [0], "for_ms": for_ms}),
            )
            .await?;
        let t0 = Instant::now();
        self.cut_until = unix_ms() + for_ms;
        // Watch the cluster for the whole cut, and a moment after it heals.
        let mut failover = None;
        while t0.elapsed() < Duration::from_millis(for_ms + 1000) {
            if let Ok(st) = self.status().await {
                if st.epoch != before.epoch || st.active.as_deref() != Some(target.as_str()) {
                    failover.get_or_insert((st.active.clone(), st.epoch, t0.elapsed().as_millis()));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let msg = v.get("message").and_then(|m| m.as_str()).unwrap_or("cut");
        match failover {
            None => {
                s.observed += &format!(
                    "{target}: {msg}; no failover: {target} stayed active at epoch {}",
                    before.epoch
                );
                Ok(())
            }
            Some((active, epoch, after)) => {
                s.observed += &format!(
                    "{target}: {msg}; the role moved to {} (epoch {epoch}) {after} ms into the cut",
                    active.as_deref().unwrap_or("nobody")
                );
                Err("a single path's failure caused a failover".into())
            }
        }
    }

    async fn service_crash(&mut self, s: &mut ScenarioRecord, before: &Status) -> Result<(), String> {
        let target = before.active.clone().unwrap_or_default();
        s.target = Some(target.clone());
        let admin = self.admin_of(before, &target).ok_or("no admin address")?;
        let t0 = Instant::now();
        let t0_ms = unix_ms();
        let v = self
            .fault(&admin, serde_json::json!({"fault": "kill-service"}))
            .await?;
        let within = Duration::from_millis(s.max_interruption_ms) + Duration::from_secs(15);
        // Serving again: a successful probe after a failed one after the kill, or none failed.
        let deadline = t0 + within;
        loop {
            let back = {
                let samples = self.probes.samples.lock().unwrap_or_else(|p| p.into_inner());
                let after: Vec<_> = samples.service.iter().filter(|x| x.at_ms > t0_ms).collect();
                let failed_at = after.iter().position(|x| !x.ok);
                match failed_at {
                    Some(i) => after[i..].iter().any(|x| x.ok),
                    None => after.len() >= 25,
                }
            };
            if back
                && self
                    .status()
                    .await
                    .ok()
                    .as_ref()
                    .is_some_and(|st| st.active.is_some())
            {
                break;
            }
            if Instant::now() >= deadline {
                s.observed += &format!(
                    "{}; the service did not serve again",
                    v["message"].as_str().unwrap_or("killed")
                );
                return Err(format!(
                    "the service did not serve again within {} ms",
                    within.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let st = self.status().await?;
        let moved = st.active.as_deref() != Some(target.as_str());
        if moved {
            s.failover_ms = Some(t0.elapsed().as_millis() as u64);
        }
        s.observed += &format!(
            "{} on {target}; {} serves at epoch {}{}",
            v["message"].as_str().unwrap_or("killed"),
            st.active.as_deref().unwrap_or("?"),
            st.epoch,
            if moved {
                " (failover)"
            } else {
                " (restarted in place)"
            }
        );
        Ok(())
    }

    async fn node_isolation(&mut self, s: &mut ScenarioRecord, before: &Status) -> Result<(), String> {
        let target = before.active.clone().unwrap_or_default();
        s.target = Some(target.clone());
        let admin = self.admin_of(before, &target).ok_or("no admin address")?;
        let for_ms = cut_for("node-isolation", &self.timing);
        let others: Vec<String> = before
            .nodes
            .iter()
            .filter(|n| n.id != target)
            .map(|n| n.admin.clone())
            .collect();
        self.fault(
            &admin,
            serde_json::json!({"fault": "cut-paths", "for_ms": for_ms}),
        )
        .await?;
        let t0 = Instant::now();
        self.cut_until = unix_ms() + for_ms;
        self.faulted.push(target.clone());
        // The other nodes' view: the isolated one only knows its own.
        let saved = std::mem::replace(&mut self.api.admins, others);
        let within = Duration::from_millis(s.max_interruption_ms) + Duration::from_secs(10);
        let took = self.wait_takeover(&target, before.epoch, t0, within).await;
        let mut all = std::mem::replace(&mut self.api.admins, saved);
        all.retain(|a| !self.api.admins.contains(a));
        self.api.admins.extend(all);
        let (st, ms) = took?;
        s.failover_ms = Some(ms);
        // The isolated node must not act as active any more (it lost its quorum and lease).
        let stood_down = match self.api.call(&admin, Method::GET, "/v1/role/active", None).await {
            Ok((200, _)) => "still says it is active",
            Ok(_) => "acts as standby",
            Err(_) => "does not answer",
        };
        s.observed += &format!(
            "every peer path of {target} cut for {for_ms} ms; {} became active at epoch {} after {ms} ms; {target} {stood_down}",
            st.active.as_deref().unwrap_or("?"),
            st.epoch
        );
        if stood_down == "still says it is active" {
            return Err(format!("{target} still acts as active after the takeover"));
        }
        Ok(())
    }

    async fn node_shutdown(&mut self, s: &mut ScenarioRecord, before: &Status) -> Result<(), String> {
        let target = before.active.clone().unwrap_or_default();
        s.target = Some(target.clone());
        let admin = self.admin_of(before, &target).ok_or("no admin address")?;
        self.fault(&admin, serde_json::json!({"fault": "crash", "delay_ms": 0}))
            .await?;
        let t0 = Instant::now();
        self.faulted.push(target.clone());
        let within = Duration::from_millis(s.max_interruption_ms) + Duration::from_secs(10);
        let (st, ms) = self.wait_takeover(&target, before.epoch, t0, within).await?;
        s.failover_ms = Some(ms);
        let down = self
            .api
            .call(&admin, Method::GET, "/v1/daemon", None)
            .await
            .is_err();
        s.observed += &format!(
            "{target}'s daemon and service were killed (SIGKILL); {} became active at epoch {} after {ms} ms{}",
            st.active.as_deref().unwrap_or("?"),
            st.epoch,
            if down {
                String::new()
            } else {
                format!("; {target} answers again already (restarted by its supervisor)")
            }
        );
        Ok(())
    }

    async fn recovery(&mut self, s: &mut ScenarioRecord) -> Result<(), String> {
        let t0 = Instant::now();
        let faulted = std::mem::take(&mut self.faulted);
        s.target = (!faulted.is_empty()).then(|| faulted.join(","));
        let st = self.wait_healthy(self.plan.recovery_timeout).await.map_err(|why| {
            format!(
                "the cluster was not whole again within {} s: {why} (a crashed daemon comes back only under a supervisor: systemd's Restart=on-failure, or the demo)",
                self.plan.recovery_timeout.as_secs()
            )
        });
        let st = match st {
            Ok(st) => st,
            Err(e) => {
                s.observed += "not recovered";
                return Err(e);
            }
        };
        let ms = t0.elapsed().as_millis();
        let roles: Vec<String> = faulted
            .iter()
            .map(|f| {
                let role = st
                    .nodes
                    .iter()
                    .find(|n| &n.id == f)
                    .map_or("gone", |n| n.role.as_str());
                format!("{f} is {role}")
            })
            .collect();
        s.observed += &if faulted.is_empty() {
            format!(
                "nothing to recover; every node healthy and in sync ({} active)",
                st.active.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "every node healthy and in sync {ms} ms after the scenario started; {}; {} active at epoch {}",
                roles.join(", "),
                st.active.as_deref().unwrap_or("?"),
                st.epoch
            )
        };
        Ok(())
    }

    async fn store_consistency(&mut self, s: &mut ScenarioRecord) -> Result<(), String> {
        let Some((addr, password)) = self.plan.store.clone() else {
            s.observed += "not run";
            return Err("no store address to check (--store, or [drill] store)".into());
        };
        let id = self.id.clone();
        let mut c = Resp::new(addr.clone(), password.clone());
        let mut acked = Vec::new();
        let mut failed = 0u64;
        let mut first_error: Option<String> = None;
        for i in 0..CONSISTENCY_KEYS {
            let k = format!("standin-drill:{id}:c:{i}");
            let v = format!("{i}");
            match c
                .call(&[b"SET", k.as_bytes(), v.as_bytes(), b"PX", KEY_TTL_MS.as_bytes()])
                .await
            {
                Ok(Reply::Simple(ok)) if ok == "OK" => acked.push((k, v)),
                Ok(other) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{other:?}"));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        // Every data node's key space must converge to the same digest: the store probe
        // pauses meanwhile, so that the nodes can agree.
        self.probes.pause_store(true);
        let st = self.status().await?;
        let data: Vec<(String, String)> = st
            .nodes
            .iter()
            .filter(|n| n.kind == crate::config::NodeKind::Data)
            .map(|n| (n.id.clone(), n.admin.clone()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        let digests = loop {
            let mut got = Vec::new();
            for (node, admin) in &data {
                if let Ok(d) = self
                    .api
                    .get::<crate::api::backup::DigestView>(admin, "/v1/backup/digest?local=true")
                    .await
                {
                    got.push(NodeDigest {
                        node: node.clone(),
                        keys: d.keys,
                        digest: d.digest,
                        applied_index: d.index,
                    });
                }
            }
            let same = got.len() == data.len() && got.windows(2).all(|w| w[0].digest == w[1].digest);
            if same || Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.probes.pause_store(false);
        s.digests = digests.clone();
        let lost = read_back(&addr, password, &acked).await?;
        let agree = digests.len() == data.len() && digests.windows(2).all(|w| w[0].digest == w[1].digest);
        s.observed += &format!(
            "{} of {CONSISTENCY_KEYS} writes acknowledged ({failed} failed), {} read back as written; digests {}",
            acked.len(),
            acked.len() - lost.len(),
            if agree {
                format!("agree on {} data node(s): {}", digests.len(), digests.first().map_or("-", |d| d.digest.as_str()))
            } else {
                format!(
                    "DIFFER: {}",
                    digests.iter().map(|d| format!("{}={} ({} keys)", d.node, d.digest, d.keys)).collect::<Vec<_>>().join(", ")
                )
            }
        );
        if !lost.is_empty() {
            return Err(format!("{} acknowledged consistency write(s) lost", lost.len()));
        }
        if failed > 0 {
            return Err(format!(
                "{failed} of {CONSISTENCY_KEYS} writes to a healthy cluster failed (first: {})",
                first_error.unwrap_or_default()
            ));
        }
        if !agree {
            return Err("the data nodes' key spaces differ".into());
        }
        Ok(())
    }

    /// Fills the measured and collected parts of `s` for its window.
    async fn evidence(&mut self, s: &mut ScenarioRecord) {
        let (from, to) = (s.started_unix_ms, s.ended_unix_ms);
        let (service, store, two) = {
            let samples = self.probes.samples.lock().unwrap_or_else(|p| p.into_inner());
            let service = probe::service_stats(&samples.service, from, to);
            let store: Vec<(String, String, bool, Option<String>)> = samples
                .store
                .iter()
                .filter(|x| x.at_ms >= from && x.at_ms <= to)
                .map(|x| (x.key.clone(), x.value.clone(), x.acked, x.error.clone()))
                .collect();
            let two: Vec<String> = samples
                .two_actives
                .iter()
                .filter(|x| x.at_ms >= from && x.at_ms <= to)
                .map(|x| format!("{} at {}", x.nodes.join(" and "), x.at_ms))
                .collect();
            (service, store, two)
        };
        s.service = service;
        s.two_actives = two;
        if let Some((addr, password)) = &self.plan.store {
            let acked: Vec<(String, String)> = store
                .iter()
                .filter(|x| x.2)
                .map(|x| (x.0.clone(), x.1.clone()))
                .collect();
            let mut st = StoreStats {
                writes: store.len() as u64,
                acked: acked.len() as u64,
                failed: store.iter().filter(|x| !x.2).count() as u64,
                first_error: store.iter().find_map(|x| x.3.clone()),
                ..Default::default()
            };
            match read_back(addr, password.clone(), &acked).await {
                Ok(lost) => {
                    st.lost = lost.len() as u64;
                    st.lost_keys = lost.into_iter().take(10).collect();
                }
                Err(e) => {
                    // Unverified is not the same as lost, but it cannot pass.
                    st.lost = acked.len() as u64;
                    s.observed
                        .push_str(&format!("; acknowledged writes could not be read back: {e}"));
                }
            }
            s.store = Some(st);
        }
        // Events of the window, from the cluster's history: the leader's copy first (an
        // isolated node's is behind).
        let age = unix_ms().saturating_sub(from) + 1000;
        let path = format!("/v1/events?since={age}ms&limit=500");
        let mut order = self.api.admins.clone();
        if let Ok(st) = self.status().await {
            if let Some(l) = st.leader.as_deref().and_then(|l| self.admin_of(&st, l)) {
                order.retain(|a| *a != l);
                order.insert(0, l);
            }
        }
        for a in order {
            if let Ok(events) = self.api.get::<Vec<Event>>(&a, &path).await {
                for e in events
                    .iter()
                    .filter(|e| e.at_unix_ms >= from && e.at_unix_ms <= to + 2000)
                {
                    let line = clip(&format!(
                        "{} {} {} {}",
                        e.at_unix_ms,
                        e.kind,
                        e.node.as_deref().unwrap_or("-"),
                        e.detail
                    ));
                    match e.kind {
                        EventKind::AlarmRaised => s.alarms_raised.push(clip(&e.detail)),
                        EventKind::AlarmCleared => s.alarms_cleared.push(clip(&e.detail)),
                        _ => {}
                    }
                    if s.events.len() < EVENT_LINES {
                        s.events.push(line);
                    }
                }
                break;
            }
        }
        // Log lines of the window from every node that answers: warnings and errors first.
        let nodes: Vec<String> = self.api.admins.clone();
        for a in nodes {
            let path = format!("/v1/logs?since={from}&limit=2000");
            let Ok(lines) = self.api.get::<Vec<crate::logring::LogLine>>(&a, &path).await else {
                continue;
            };
            let mut picked: Vec<&crate::logring::LogLine> = lines
                .iter()
                .filter(|l| l.unix_ms <= to + 2000 && l.level != "info")
                .collect();
            if picked.len() < LOG_LINES_PER_NODE {
                let room = LOG_LINES_PER_NODE - picked.len();
                let infos: Vec<&crate::logring::LogLine> = lines
                    .iter()
                    .filter(|l| l.unix_ms <= to + 2000 && l.level == "info")
                    .collect();
                picked.extend(infos.iter().rev().take(room).rev());
            }
            picked.sort_by_key(|l| l.unix_ms);
            picked.truncate(LOG_LINES_PER_NODE);
            for l in picked {
                s.logs
                    .push(clip(&format!("{a} {} {} {}", l.unix_ms, l.level, l.text)));
            }
        }
    }
}

/// What a scenario expects, in words, with its limit.
fn expected(name: &str, s: &ScenarioRecord) -> String {
    let max = s.max_interruption_ms;
    match name {
        "planned-switchover" => format!(
            "on request the role moves to an eligible standby; the service is interrupted at most {max} ms; no acknowledged write is lost; never two actives"
        ),
        "link-failure" => format!(
            "one peer path of the active node fails: no failover (same active, same epoch); the service is interrupted at most {max} ms"
        ),
        "service-crash" => format!(
            "the active node's service is killed: it serves again (restarted, or a standby takes over) within {max} ms; no acknowledged write is lost"
        ),
        "node-isolation" => format!(
            "every peer path of the active node fails: a standby takes over within {max} ms; the isolated node stops acting as active first (never two actives); no acknowledged write is lost"
        ),
        "node-shutdown" => format!(
            "the active node's daemon and service stop (SIGKILL): a standby takes over within {max} ms; no acknowledged write is lost"
        ),
        "recovery" => "every faulted node comes back healthy and in sync as a standby (active again only through a configured failback)".to_string(),
        "store-consistency" => "every acknowledged write of the run reads back as written; every data node's key space has the same digest".to_string(),
        other => format!("unknown scenario {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_sortable_times() {
        assert_eq!(run_id(0), "19700101-000000");
        assert_eq!(run_id(1_796_525_725_123), "20261206-025525");
        assert!(
            crate::cluster::drills::check(&crate::cluster::drills::DrillCmd::Record {
                id: run_id(unix_ms()),
                at: 0,
                passed: true,
                scheduled: false,
                scenarios: vec![("recovery".into(), true)],
                json: "{}".into(),
            })
            .is_ok()
        );
    }

    #[test]
    fn limits_follow_the_timing_profile() {
        let t = TimingSummary {
            heartbeat_ms: 50,
            failure_timeout_ms: 300,
            lease_ms: 250,
        };
        assert_eq!(default_max("planned-switchover", &t), 1000);
        assert_eq!(default_max("node-shutdown", &t), 1550);
        assert!(cut_for("link-failure", &t) >= 3000);
        assert!(cut_for("node-isolation", &t) >= 4 * 300);
    }

    #[test]
    fn oversized_records_are_trimmed_to_the_cluster_limit() {
        let mut r = Record::default();
        for i in 0..7 {
            r.scenarios.push(ScenarioRecord {
                name: format!("s{i}"),
                logs: vec!["x".repeat(LINE_CHARS); 400],
                events: vec!["y".repeat(LINE_CHARS); 100],
                ..Default::default()
            });
        }
        fit(&mut r);
        assert!(serde_json::to_string(&r).unwrap().len() <= crate::cluster::drills::MAX_RECORD_BYTES);
        assert!(
            r.scenarios.iter().any(|s| !s.logs.is_empty()),
            "trimmed, not emptied"
        );
    }
}
