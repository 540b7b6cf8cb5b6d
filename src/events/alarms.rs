//! The Raft leader's alarm loop: derives degraded states, keeps them as replicated alarms
//! (raised once, cleared once: the replicated set is the de-duplication, and it survives a
//! change of leader), sets the history's retention, and notifies about new events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::notify::{deliver, Notification};
use crate::clock::unix_ms;
use crate::cluster::state::{Change, Command, Event, EventKind, NodeRecord};
use crate::cluster::Cluster;
use crate::config::NodeKind;
use crate::status::Status;
use crate::status::StatusSource;

/// A certificate that expires sooner than this raises an alarm.
pub const CERT_WARN: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often the leader re-evaluates.
const EVERY: Duration = Duration::from_millis(250);
/// Events older than this are not notified by a leader that finds them unnotified.
const STALE_AFTER: Duration = Duration::from_secs(300);

/// How often the leader asks every member where its config file disagrees with the live
/// membership (the `membership-drift:ID` alarms), and its disk and memory figures.
const DRIFT_EVERY: Duration = Duration::from_secs(5);

/// Each member's config-file drift (see [`crate::cluster::members::drift`]): the leader's own
/// from `status`, the others' from their own status, asked over the cluster transport. A
/// member that does not answer keeps what it said last (its absence is its own alarm).
async fn member_drift(
    cluster: &Cluster,
    status: &Status,
    previous: &BTreeMap<String, Reported>,
) -> BTreeMap<String, Reported> {
    use crate::cluster::rpc::{Request, Response};
    let members = cluster.members();
    let asks = members.iter().filter(|m| m.id != status.view_from).map(|m| {
        let id = m.id.clone();
        async move {
            let answer = cluster
                .transport
                .call(&id, &Request::Status, Duration::from_millis(500))
                .await;
            let reported = match answer {
                Ok(Response::Json(s)) => serde_json::from_str::<Status>(&s).ok().map(|s| {
                    // Its disk and memory as it measured them, for the leader's view.
                    let own = s.nodes.iter().find(|n| n.id == id && s.view_from == id);
                    if let Some(r) = own.and_then(|n| n.resources.clone()) {
                        cluster.space.remember(&id, r);
                    }
                    Reported {
                        drift: s.membership_drift,
                        shared: s.config_shared,
                    }
                }),
                _ => None,
            };
            (id, reported)
        }
    });
    let mut out: BTreeMap<String, Reported> = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(id, d)| {
            let d = d.or_else(|| previous.get(&id).cloned())?;
            Some((id, d))
        })
        .collect();
    out.insert(
        status.view_from.clone(),
        Reported {
            drift: status.membership_drift.clone(),
            shared: status.config_shared.clone(),
        },
    );
    out
}

/// What a member reported about its configuration.
#[derive(Debug, Clone, Default)]
struct Reported {
    /// Where its file disagrees with the live membership.
    drift: Vec<String>,
    /// Digests of its shared sections (empty from a build that does not report them).
    shared: BTreeMap<String, String>,
}

/// `config-drift` while the members' shared sections differ (see
/// [`crate::config::SHARED_SECTIONS`]; `hooks` between data nodes only): the detail names
/// each section and how the members group by its value.
fn config_drift_alarm(
    reported: &BTreeMap<String, Reported>,
    members: &[crate::config::Member],
) -> BTreeMap<String, String> {
    let mut parts = Vec::new();
    for section in crate::config::SHARED_SECTIONS {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, r) in reported {
            let data = members
                .iter()
                .any(|m| m.id == *id && m.kind == crate::config::NodeKind::Data);
            if *section == "hooks" && !data {
                continue;
            }
            if let Some(d) = r.shared.get(*section) {
                groups.entry(d.as_str()).or_default().push(id.as_str());
            }
        }
        if groups.len() > 1 {
            let sides: Vec<String> = groups.values().map(|ids| ids.join(",")).collect();
            parts.push(format!("[{section}] differs: {}", sides.join(" vs ")));
        }
    }
    let mut out = BTreeMap::new();
    if !parts.is_empty() {
        out.insert(
            "config-drift".to_string(),
            format!("{}; `standin config diff` shows the values", parts.join("; ")),
        );
    }
    out
}

/// `membership-drift:ID` for each member whose config file disagrees with the membership.
fn drift_alarms(drift: &BTreeMap<String, Reported>) -> BTreeMap<String, String> {
    drift
        .iter()
        .map(|(id, r)| (id, &r.drift))
        .filter(|(_, d)| !d.is_empty())
        .map(|(id, d)| {
            (
                format!("membership-drift:{id}"),
                format!(
                    "the config file of {id} disagrees with the live membership: {}",
                    d.join("; ")
                ),
            )
        })
        .collect()
}

/// On the leader: notifies new events and raises or clears alarms from this node's own view
/// (`status`), until `cancel` fires.
pub async fn run(
    cluster: Cluster,
    config: crate::config::Live,
    status: Arc<dyn StatusSource>,
    cancel: CancellationToken,
) {
    // `[alarms]` and `[events]` apply live: read again each round.
    let mut live = config.subscribe();
    let mut config = live.borrow_and_update().clone();
    let mut cfg = Arc::new(config.alarms.clone());
    let me = cluster.me().to_string();
    // A new leader's view needs a moment (heartbeats, reports) before it judges anything.
    let grace = config.timing.settle_grace();
    let mut leading: Option<(u64, Instant)> = None;
    let mut drift: BTreeMap<String, Reported> = BTreeMap::new();
    let mut drift_asked: Option<Instant> = None;
    // Events up to this sequence number were handled (by us or a previous leader).
    let mut handled: u64 = 0;
    // `drill-overdue` counts from here when no drill ever passed.
    let watching_since = unix_ms();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if live.has_changed().unwrap_or(false) {
            config = live.borrow_and_update().clone();
            cfg = Arc::new(config.alarms.clone());
        }
        let info = cluster.info();
        if !info.is_leader {
            leading = None;
            continue;
        }
        if leading.map(|(t, _)| t) != Some(info.term) {
            leading = Some((info.term, Instant::now()));
            // Continue where the previous leader's notifications were recorded as done (it may
            // have sent some more: receivers de-duplicate on `seq`).
            handled = cluster.sm.read(|d| d.state.notified_up_to);
        }
        let (retention, raised, records, events) = cluster.sm.read(|d| {
            (
                d.state.event_retention,
                d.state.alarms.clone(),
                d.state.nodes.clone(),
                d.state
                    .events
                    .iter()
                    .filter(|e| e.seq > handled)
                    .cloned()
                    .collect::<Vec<Event>>(),
            )
        });
        let mut writes = Vec::new();
        // Never replay old history (e.g. the first leader after an upgrade).
        let too_old = unix_ms().saturating_sub(STALE_AFTER.as_millis() as u64);
        for e in events.iter().filter(|e| e.at_unix_ms >= too_old) {
            for n in notifications(e, &me) {
                tracing::info!(state = n.state, title = %n.title, node = ?n.node, detail = %n.detail, "alarm");
                deliver(&cfg, n);
            }
        }
        if let Some(last) = events.last() {
            handled = handled.max(last.seq);
            writes.push(Change::Notified { seq: last.seq });
        }
        if retention != Some(config.events.retention) {
            writes.push(Change::SetRetention {
                events: config.events.retention,
            });
        }
        if leading.is_some_and(|(_, since)| since.elapsed() >= grace) {
            let status = status.own_status();
            if drift_asked.is_none_or(|t| t.elapsed() >= DRIFT_EVERY) {
                drift_asked = Some(Instant::now());
                drift = member_drift(&cluster, &status, &drift).await;
            }
            let mut want = evaluate(&status, &records);
            want.extend(drift_alarms(&drift));
            want.extend(config_drift_alarm(&drift, &cluster.members()));
            want.extend(cluster.sm.read(|d| d.change.alarms()));
            let overdue = config.drill.overdue_after().map(|d| d.as_millis() as u64);
            // Without a passing drill, the age counts from the oldest event kept (the cluster's
            // history, not this leader's start: a leader change must not restart the clock).
            want.extend(cluster.sm.read(|d| {
                let since = d
                    .state
                    .events
                    .iter()
                    .next()
                    .map_or(watching_since, |e| e.at_unix_ms.min(watching_since));
                d.drills.alarms(unix_ms(), overdue, since)
            }));
            let at = unix_ms();
            let (backup_alarms, abandoned) =
                cluster.sm.read(|d| (d.backup.alarms(at), d.backup.abandoned(at)));
            want.extend(backup_alarms);
            if let Some(id) = abandoned {
                // Its own entry: the state machine applies it, not a batch.
                let abort = Command::Backup(crate::cluster::backup::BackupCmd::Abort {
                    id,
                    reason: "no progress for 10 minutes".into(),
                    at,
                });
                let _ = tokio::time::timeout(Duration::from_secs(1), cluster.write_local(abort)).await;
            }
            for (key, detail) in &want {
                if !raised.contains_key(key) {
                    writes.push(Change::Alarm {
                        key: key.clone(),
                        raise: true,
                        detail: detail.clone(),
                        at,
                    });
                }
            }
            for (key, rec) in &raised {
                if !want.contains_key(key) {
                    writes.push(Change::Alarm {
                        key: key.clone(),
                        raise: false,
                        detail: format!("recovered (raised: {})", rec.detail),
                        at,
                    });
                }
            }
        }
        if !writes.is_empty() {
            let cmd = Command::batch(writes);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), cluster.write_local(cmd)).await {
                tracing::debug!(error = %e, "could not record alarms");
            }
        }
    }
}

/// The degraded states in `status` (the leader's live view), by alarm key, with a detail.
pub fn evaluate(status: &Status, records: &BTreeMap<String, NodeRecord>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let reachable: BTreeSet<&str> = status
        .nodes
        .iter()
        .filter(|n| n.reachable || n.id == status.view_from)
        .map(|n| n.id.as_str())
        .collect();
    if let Some(active) = &status.active {
        let ready: Vec<&str> = status
            .nodes
            .iter()
            .filter(|n| {
                n.kind == NodeKind::Data
                    && &n.id != active
                    && n.role == "standby"
                    && n.healthy
                    && n.in_sync
                    && !n.maintenance
            })
            .map(|n| n.id.as_str())
            .collect();
        if ready.is_empty() {
            out.insert(
                "no-in-sync-standby".to_string(),
                format!("no healthy, in-sync standby could take over from {active}"),
            );
        }
    }
    for n in &status.nodes {
        if n.id != status.view_from && !n.reachable {
            out.insert(
                format!("node-unreachable:{}", n.id),
                format!("{} not heard on any path", n.id),
            );
            continue;
        }
        if n.kind == NodeKind::Data && status.active.as_deref() != Some(n.id.as_str()) && !n.healthy {
            let failing: Vec<String> = n
                .checks
                .iter()
                .filter(|c| !c.healthy)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            out.insert(
                format!("standby-unhealthy:{}", n.id),
                if failing.is_empty() {
                    "not healthy".to_string()
                } else {
                    failing.join("; ")
                },
            );
        }
    }
    // Paths as every node reported them, between nodes that are both still heard (a node not
    // heard at all is its own alarm).
    for (id, rec) in records {
        for (key, up) in &rec.paths {
            let Some((peer, address)) = key.split_once(' ') else {
                continue;
            };
            if !up && reachable.contains(id.as_str()) && reachable.contains(peer) {
                out.insert(
                    format!("path-down:{id}>{peer}@{address}"),
                    format!("heartbeat path from {id} to {peer} via {address} is down"),
                );
            }
        }
    }
    // Certificates: each node's own, and its peers' as the leader last saw them in a TLS
    // handshake (a node re-handshakes with every peer soon after it loads a new one).
    let now = crate::tls::unix_now();
    for n in &status.nodes {
        if let Some(t) = n.cert_not_after_unix {
            if t - now < CERT_WARN.as_secs() as i64 {
                out.insert(
                    format!("cert-expiring:{}", n.id),
                    format!(
                        "the TLS certificate of {} expires {}; issue a new one (standin certs issue {} --ca DIR) and put it in place",
                        n.id,
                        crate::tls::in_words(t - now),
                        n.id
                    ),
                );
            }
        }
    }
    let voting: Vec<&str> = status
        .nodes
        .iter()
        .filter(|n| n.raft == "voter")
        .map(|n| n.id.as_str())
        .collect();
    let voters = voting.len();
    let majority = voters / 2 + 1;
    let reachable_voters = voting.iter().filter(|v| reachable.contains(**v)).count();
    if reachable_voters <= majority {
        out.insert(
            "quorum-at-risk".to_string(),
            format!("{reachable_voters} of {voters} voters reachable: one more failure loses the quorum"),
        );
    }
    for n in status.nodes.iter().filter(|n| n.lost_log) {
        out.insert(
            format!("member-lost-log:{}", n.id),
            format!(
                "{0} answered with less log than it had acknowledged (its data directory was lost?); it is kept out of replication: run `standin member replace {0} {0}`",
                n.id
            ),
        );
    }
    out.extend(super::resources::alarms(status, &reachable));
    let versions: BTreeSet<&str> = status
        .nodes
        .iter()
        .filter(|n| reachable.contains(n.id.as_str()) && !n.version.is_empty())
        .map(|n| n.version.as_str())
        .collect();
    if versions.len() > 1 {
        out.insert(
            "version-mismatch".to_string(),
            format!(
                "nodes run different versions: {}",
                versions.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    out
}

pub(crate) fn severity_of(key: &str) -> &'static str {
    match key.split(':').next().unwrap_or(key) {
        "no-in-sync-standby" | "quorum-at-risk" | "node-unreachable" | "member-lost-log"
        | "disk-critical" => "critical",
        _ => "warning",
    }
}

/// What to send for one event of the history (most events send nothing).
pub fn notifications(e: &Event, sender: &str) -> Vec<Notification> {
    let base =
        |state: &'static str, severity: &'static str, title: String, alarm: Option<String>| Notification {
            state,
            severity,
            alarm,
            title,
            kind: e.kind.to_string(),
            node: e.node.clone(),
            epoch: e.epoch,
            cause: e.cause.map(|c| c.to_string()),
            detail: e.detail.clone(),
            interruption_ms: e.duration_ms,
            at_unix_ms: e.at_unix_ms,
            seq: e.seq,
            sender: sender.to_string(),
        };
    let mut out = Vec::new();
    match e.kind {
        EventKind::Promoted => {
            let cause = e.cause.map(|c| c.to_string()).unwrap_or_default();
            let (title, severity) = match cause.as_str() {
                "bootstrap" => return out,
                "switchover" => ("switchover", "info"),
                "failback" => ("failback", "info"),
                "maintenance" => ("switchover", "info"),
                _ => ("failover", "critical"),
            };
            out.push(base("event", severity, title.to_string(), None));
            if e.detail.contains("on-fence") {
                out.push(base("event", "warning", "fence".to_string(), None));
            }
        }
        EventKind::PromotionFailed => out.push(base("event", "warning", "promotion failed".into(), None)),
        EventKind::AlarmRaised | EventKind::AlarmCleared => {
            let key = e
                .detail
                .split_once(": ")
                .map_or(e.detail.as_str(), |(k, _)| k)
                .to_string();
            let raised = e.kind == EventKind::AlarmRaised;
            let severity = if raised { severity_of(&key) } else { "info" };
            let title = key.split(':').next().unwrap_or(&key).to_string();
            out.push(base(
                if raised { "raised" } else { "cleared" },
                severity,
                title,
                Some(key),
            ));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::NodeStatus;

    fn node(id: &str, kind: NodeKind, role: &str, version: &str) -> NodeStatus {
        NodeStatus {
            id: id.into(),
            kind,
            priority: 100,
            role: role.into(),
            healthy: true,
            in_sync: true,
            lag: 0,
            reachable: true,
            last_heard_ms_ago: Some(10),
            maintenance: false,
            drain: false,
            version: version.into(),
            admin: String::new(),
            service: None,
            store: None,
            checks: Vec::new(),
            paths: Vec::new(),
            cert_not_after_unix: None,
            raft: "voter".into(),
            site: None,
            lost_log: false,
            resources: None,
            backup: None,
        }
    }

    fn cluster(versions: [&str; 3]) -> Status {
        Status {
            epoch: 1,
            active: Some("a".into()),
            leader: Some("a".into()),
            term: 1,
            view_from: "a".into(),
            stale: false,
            waiting: None,
            switchover: None,
            commit_index: 1,
            nodes: vec![
                node("a", NodeKind::Data, "active", versions[0]),
                node("b", NodeKind::Data, "standby", versions[1]),
                node("w", NodeKind::Witness, "witness", versions[2]),
            ],
            membership_drift: Vec::new(),
            membership_warnings: Vec::new(),
            transport: "mutual-tls".into(),
            config_shared: BTreeMap::new(),
        }
    }

    #[test]
    fn config_drift_names_the_section_and_ignores_a_witness_without_hooks() {
        let member = |id: &str, kind| crate::config::Member {
            id: id.into(),
            kind,
            priority: 100,
            addresses: vec!["127.0.0.1:1".parse().expect("addr")],
            admin: "127.0.0.1:2".parse().expect("addr"),
            service_address: None,
            store_address: None,
            site: None,
        };
        let members = [
            member("a", NodeKind::Data),
            member("b", NodeKind::Data),
            member("w", NodeKind::Witness),
        ];
        let shared = |timing: &str, hooks: &str| Reported {
            drift: Vec::new(),
            shared: [("timing", timing), ("hooks", hooks)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut reported: BTreeMap<String, Reported> = BTreeMap::new();
        reported.insert("a".into(), shared("t1", "h1"));
        reported.insert("b".into(), shared("t1", "h1"));
        reported.insert("w".into(), shared("t1", "none"));
        assert!(
            config_drift_alarm(&reported, &members).is_empty(),
            "a witness has no hooks"
        );
        reported.insert("b".into(), shared("t2", "h1"));
        let alarms = config_drift_alarm(&reported, &members);
        let detail = alarms.get("config-drift").expect("raised");
        assert!(detail.contains("[timing] differs: a,w vs b"), "{detail}");
        assert!(!detail.contains("hooks"), "{detail}");
        // A member that does not report digests (an older build) is left out.
        reported.insert("b".into(), Reported::default());
        assert!(config_drift_alarm(&reported, &members).is_empty());
    }

    /// `version-mismatch` is up while the members run different versions (a rolling upgrade
    /// half done) and gone once they all run the same; a node that reported no version yet
    /// does not count.
    #[test]
    fn the_version_mismatch_alarm_lasts_while_versions_differ() {
        let records = BTreeMap::new();
        let all_same = evaluate(&cluster(["0.1.0", "0.1.0", "0.1.0"]), &records);
        assert!(!all_same.contains_key("version-mismatch"), "{all_same:?}");

        let upgrading = evaluate(&cluster(["0.1.0", "0.2.0", "0.1.0"]), &records);
        assert_eq!(
            upgrading.get("version-mismatch").map(String::as_str),
            Some("nodes run different versions: 0.1.0, 0.2.0")
        );
        assert_eq!(severity_of("version-mismatch"), "warning");

        let unknown = evaluate(&cluster(["0.2.0", "0.2.0", ""]), &records);
        assert!(!unknown.contains_key("version-mismatch"), "{unknown:?}");
        let done = evaluate(&cluster(["0.2.0", "0.2.0", "0.2.0"]), &records);
        assert!(done.is_empty(), "{done:?}");
    }
}
