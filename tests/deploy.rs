//! Rolling deploys of the managed service on a real cluster on loopback (data nodes `a`, `b`,
//! witness `w`, mutual TLS, the demo service) with a `standin proxy` in front as the floating
//! address, probed every 10 ms on a new connection each time while `standin deploy` runs.
//!
//! Tests run one at a time (they share two cores and measure interruptions).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use standin::api::client::request;
use standin::api::DeployView;
use standin::cluster::state::EventKind;
use standin::lab::harness::{answer_fields, LocalCluster, Spec};
use tokio_util::sync::CancellationToken;

mod common;
use common::{binary, ProxyProc};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LISTENERS: &str = r#"
[[proxy.listener]]
name = "http"
listen = "127.0.0.1:0"
protocol = "http"
queue-timeout = "3s"
"#;

/// What the client through the floating address saw.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    /// Requests that got no answer, or an answer other than 200 from an active node.
    failed: Vec<String>,
    /// Longest time between two successful answers.
    longest_gap: Duration,
    /// (node, version) of every answer, in order, deduplicated when repeated.
    served_by: Vec<(String, String)>,
    /// Epochs seen: never two nodes at one epoch, never going back.
    stale: u64,
}

/// Probes `addr` every 10 ms (a new connection each time) until cancelled.
fn probe(addr: SocketAddr) -> (Arc<Mutex<Seen>>, CancellationToken, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let cancel = CancellationToken::new();
    let (s2, c2) = (seen.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        let mut last_ok = Instant::now();
        let mut epochs: std::collections::BTreeMap<u64, String> = Default::default();
        let mut max_epoch = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = c2.cancelled() => return,
                _ = tick.tick() => {}
            }
            let r = request(&addr.to_string(), Method::GET, "/", None, Duration::from_secs(5)).await;
            let now = Instant::now();
            let mut seen = s2.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(r) if r.status == 200 => {
                    let (node, epoch, role) = answer_fields(&r.body);
                    let version = r
                        .body
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("version="))
                        .unwrap_or("?")
                        .to_string();
                    if role != Some("active") {
                        seen.failed.push(format!("200 but {}", r.body.trim()));
                        continue;
                    }
                    seen.ok += 1;
                    seen.longest_gap = seen.longest_gap.max(now - last_ok);
                    last_ok = now;
                    let node = node.unwrap_or_default();
                    if let Some(e) = epoch {
                        let first = epochs.entry(e).or_insert_with(|| node.clone());
                        if *first != node || e < max_epoch {
                            seen.stale += 1;
                        }
                        max_epoch = max_epoch.max(e);
                    }
                    if seen.served_by.last() != Some(&(node.clone(), version.clone())) {
                        seen.served_by.push((node, version));
                    }
                }
                Ok(r) => seen.failed.push(format!("HTTP {}: {}", r.status, r.body.trim())),
                Err(e) => seen.failed.push(e.to_string()),
            }
        }
    });
    (seen, cancel, task)
}

struct Fixture {
    cluster: LocalCluster,
    /// Kept for its lifetime (killed on drop).
    _proxy: ProxyProc,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cluster, status) = LocalCluster::launch(Spec::new(dir.path(), &binary()))
            .await
            .expect("cluster");
        let active = status.active.clone().expect("active");
        let proxy = ProxyProc::start(dir.path(), &cluster, LISTENERS);
        proxy.wait_following(&active, Duration::from_secs(15)).await;
        let http = proxy.addr("http").await;
        Fixture {
            cluster,
            _proxy: proxy,
            http,
            dir,
        }
    }

    fn api(&self) -> String {
        self.cluster.nodes[0].admin.to_string()
    }

    async fn view(&self) -> DeployView {
        for n in &self.cluster.nodes {
            let Ok(r) = request(
                &n.admin.to_string(),
                Method::GET,
                "/v1/deploy",
                None,
                Duration::from_secs(2),
            )
            .await
            else {
                continue;
            };
            if let Ok(v) = serde_json::from_str(&r.body) {
                return v;
            }
        }
        panic!("no node answers /v1/deploy")
    }

    /// `standin deploy ARGS` with the CLI, run in the background: its exit code and output.
    fn deploy(&self, args: &[&str]) -> tokio::task::JoinHandle<(Option<i32>, String)> {
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("deploy")
            .args(args)
            .args(["--api", &self.api(), "--step-timeout", "20s", "--watch", "1s"])
            .kill_on_drop(true);
        tokio::spawn(async move {
            let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
                .await
                .expect("deploy finishes within 2 minutes")
                .expect("run standin deploy");
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    }

    async fn events(&self) -> Vec<standin::cluster::state::Event> {
        for n in &self.cluster.nodes {
            if let Some(e) = self.cluster.events(&n.id).await {
                return e;
            }
        }
        Vec::new()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in ["a", "b", "w"] {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {n}.log (last lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A good version goes out under a 10 ms probe of the floating address: the standby first,
/// one switchover, then the old active; no request fails and every node ends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_deploy_switches_over_once_and_fails_no_request() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start().await;
    let before = f.cluster.status().await.expect("status");
    let (seen, stop, task) = probe(f.http);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The plan first: nothing changes.
    let (code, out) = f
        .deploy(&["--env", "DEMO_VERSION=2", "--dry-run"])
        .await
        .expect("dry run");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("plan (dry run)") && out.contains("DEMO_VERSION=2"),
        "{out}"
    );
    assert!(f.view().await.versions.is_empty(), "a dry run creates no version");

    let started = Instant::now();
    let (code, out) = f
        .deploy(&["--env", "DEMO_VERSION=2", "--label", "two"])
        .await
        .expect("deploy");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let _ = task.await;
    assert_eq!(code, Some(0), "{out}\n{}", f.logs());

    let v = f.view().await;
    assert_eq!(v.current, 2, "{v:?}");
    assert!(v.deploy.is_none());
    for n in &v.nodes {
        assert_eq!((n.running, n.desired), (2, 2), "{} after the deploy: {v:?}", n.id);
        assert!(n.healthy, "{} unhealthy after the deploy", n.id);
    }
    assert_eq!(v.versions.last().map(|x| x.label.as_str()), Some("two"));
    let after = f.cluster.status().await.expect("status");
    assert_eq!(
        after.epoch,
        before.epoch + 1,
        "exactly one switchover: {:?} -> {:?}",
        before.active,
        after.active
    );
    assert_ne!(
        after.active, before.active,
        "the role moved to the updated standby"
    );

    {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "deploy took {took:?}; {} answers, {} failed, longest gap {:?}, served by {:?}",
            seen.ok,
            seen.failed.len(),
            seen.longest_gap,
            seen.served_by
        );
        // The one switchover may cost a request or two: the demo service learns its role by
        // polling its daemon every 20 ms, so around the handover the old active already says
        // "standby" before the proxy moves, or the new one not yet "active" (see the README's
        // known gaps). Anything else is a failure.
        let unexpected: Vec<&String> = seen
            .failed
            .iter()
            .filter(|f| !(f.starts_with("HTTP 503") && f.contains("role=standby")))
            .collect();
        assert!(unexpected.is_empty(), "failed requests: {:?}", seen.failed);
        assert!(seen.failed.len() <= 3, "failed requests: {:?}", seen.failed);
        assert_eq!(
            seen.stale, 0,
            "two nodes answered at one epoch, or an epoch went back"
        );
        assert_eq!(
            seen.served_by.last().map(|s| s.1.as_str()),
            Some("2"),
            "the floating address serves version 2 at the end: {:?}",
            seen.served_by
        );
        assert!(
            seen.served_by.iter().all(|(node, version)| {
                // The old active served version 1 only: it was updated after it handed over.
                *node != before.active.clone().unwrap_or_default() || version == "1"
            }),
            "the active node was restarted while active: {:?}",
            seen.served_by
        );
    }
    let events = f.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Deploy && e.detail.contains("deployed")),
        "the history records the deploy"
    );
}

/// A version whose health check fails rolls back on the first standby; the active node never
/// leaves the old version, no request fails, and the alarms say what happened. A good deploy
/// afterwards clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_rolls_back_without_touching_the_active() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start().await;
    let before = f.cluster.status().await.expect("status");
    let active = before.active.clone().expect("active");
    let (seen, stop, task) = probe(f.http);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let deploy = f.deploy(&["--env", "DEMO_BROKEN=1"]);
    // Watch the active node's version while the deploy runs.
    let mut touched = Vec::new();
    while !deploy.is_finished() {
        let v = f.view().await;
        if let Some(n) = v.nodes.iter().find(|n| n.id == active) {
            if n.desired != 1 || n.running != 1 {
                touched.push(format!("{n:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out) = deploy.await.expect("deploy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let _ = task.await;
    assert_eq!(code, Some(1), "a failed deploy exits 1: {out}\n{}", f.logs());
    assert!(out.contains("unhealthy") || out.contains("not healthy"), "{out}");
    assert!(touched.is_empty(), "the active node was touched: {touched:?}");

    let v = f.view().await;
    assert_eq!(v.current, 1);
    for n in &v.nodes {
        assert_eq!(
            (n.running, n.desired),
            (1, 1),
            "{} after the rollback: {v:?}",
            n.id
        );
    }
    let broken = v.versions.iter().find(|x| x.number == 2).expect("version 2 kept");
    let outcome = broken.outcome.clone().unwrap_or_default();
    assert!(outcome.starts_with("failed"), "{outcome}");
    let after = f.cluster.status().await.expect("status");
    assert_eq!(after.epoch, before.epoch, "no switchover");
    assert_eq!(after.active, before.active);
    {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "{} answers, {} failed, longest gap {:?}",
            seen.ok,
            seen.failed.len(),
            seen.longest_gap
        );
        assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
        assert_eq!(seen.stale, 0);
    }

    // Both alarms are raised (by the leader's alarm loop, within a few seconds).
    let raised = |events: &[standin::cluster::state::Event], key: &str, kind: EventKind| {
        events
            .iter()
            .any(|e| e.kind == kind && e.detail.starts_with(&format!("{key}:")))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let e = f.events().await;
        if raised(&e, "deploy-failed", EventKind::AlarmRaised)
            && raised(&e, "rolled-back", EventKind::AlarmRaised)
        {
            break;
        }
        assert!(Instant::now() < deadline, "alarms not raised: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The next good deploy builds on version 1 (not on the broken one) and clears both.
    let (code, out) = f.deploy(&["--env", "DEMO_VERSION=3"]).await.expect("deploy");
    assert_eq!(code, Some(0), "{out}\n{}", f.logs());
    let v = f.view().await;
    let three = v
        .versions
        .iter()
        .find(|x| x.number == v.current)
        .expect("current");
    assert!(
        !three.overlay.env.contains_key("DEMO_BROKEN"),
        "the broken change is not carried on: {three:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let e = f.events().await;
        if raised(&e, "deploy-failed", EventKind::AlarmCleared)
            && raised(&e, "rolled-back", EventKind::AlarmCleared)
        {
            break;
        }
        assert!(Instant::now() < deadline, "alarms not cleared: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The active node (most often also the Raft leader, which drives the deploy) is killed -9 once
/// the first standby is watched on the new version: a failover during the deploy; another node
/// leads, and the deploy ends (done or rolled back) with every node on one version, never two
/// actives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_survives_a_failover_and_the_death_of_the_node_driving_it() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start().await;
    let (seen, stop, task) = probe(f.http);
    let deploy = f.deploy(&["--env", "DEMO_VERSION=2"]);
    // Wait for the first node to be watched on the new version.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = f.view().await;
        if v.deploy
            .as_ref()
            .is_some_and(|d| d.step == 0 && d.phase == standin::cluster::change::Phase::Watching)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deploy never reached its first watch: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The active node is killed: a failover during the deploy (the standby being watched on
    // the new version takes over), and most often the Raft leader driving the deploy too.
    let status = f.cluster.status().await.expect("status");
    let victim = status.active.clone().expect("active");
    eprintln!(
        "killing the active node {victim} (raft leader: {:?})",
        status.leader
    );
    f.cluster.kill(&victim).await.expect("kill -9");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = victim;
    f.cluster.start(&leader).expect("restart");
    let (code, out) = deploy.await.expect("deploy");
    eprintln!("deploy exited {code:?}: {out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = f.view().await;
        let settled = v.deploy.is_none()
            && v.nodes
                .iter()
                .all(|n| n.running == v.current && n.desired == v.current && n.healthy);
        if settled {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the deploy did not end: {v:?}\n{}",
            f.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.cancel();
    let _ = task.await;
    let last = v.history.last().expect("a finished deploy");
    eprintln!("deploy ended: {} (current version {})", last.outcome, v.current);
    assert!(
        last.outcome == "deployed" || last.outcome.starts_with("rolled back"),
        "{last:?}"
    );
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    assert_eq!(seen.stale, 0, "two actives, or an epoch went back");
}

/// Cluster settings through the Raft log: `config set` reaches every member, `config history`
/// records it, `config rollback 0` restores the files' value, a timing is refused naming the
/// key; a file that differs on one member raises `config-drift`, put back it clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_settings_reach_every_node_and_drift_is_an_alarm() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .arg("config")
            .args(args)
            .args(["--api", &f.api()])
            .output()
            .expect("run standin config");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let retention = |id: &str| {
        let admin = f.cluster.node(id).expect("node").admin.to_string();
        async move {
            let r = request(&admin, Method::GET, "/v1/config", None, Duration::from_secs(2))
                .await
                .expect("GET /v1/config");
            let v: standin::api::ConfigView = serde_json::from_str(&r.body).expect("config view");
            v.config["events"]["retention"].as_u64()
        }
    };
    let default = retention("a").await;
    let (code, out) = cli(&["set", "events.retention", "1234"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("applied on every member"), "{out}");
    for id in ["a", "b", "w"] {
        assert_eq!(retention(id).await, Some(1234), "{id}");
    }
    let (code, out) = cli(&["history"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("events.retention = 1234"), "{out}");
    let (code, out) = cli(&["set", "timing.failure-timeout", "\"2s\""]);
    assert_eq!(code, Some(64), "a timing is refused: {out}");
    assert!(out.contains("timing"), "{out}");
    let (code, out) = cli(&["set", "failback.mode", "sideways"]);
    assert_ne!(code, Some(0), "a bad value is refused: {out}");
    assert!(out.contains("failback"), "{out}");
    let (code, out) = cli(&["rollback", "0"]);
    assert_eq!(code, Some(0), "{out}");
    for id in ["a", "b", "w"] {
        assert_eq!(retention(id).await, default, "{id} after the rollback");
    }

    // Drift: b's file gets another [events] retention, read again with SIGHUP.
    let b_conf = f.cluster.node("b").expect("b").config.clone();
    let original = std::fs::read_to_string(&b_conf).expect("b's config");
    std::fs::write(&b_conf, format!("{original}\n[events]\nretention = 777\n")).expect("write");
    f.cluster
        .signal_daemon("b", nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let has = |events: &[standin::cluster::state::Event], kind: EventKind| {
        events
            .iter()
            .any(|e| e.kind == kind && e.detail.starts_with("config-drift:"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = f.events().await;
        if has(&e, EventKind::AlarmRaised) {
            let d = e
                .iter()
                .find(|e| e.kind == EventKind::AlarmRaised && e.detail.starts_with("config-drift:"))
                .map(|e| e.detail.clone())
                .unwrap_or_default();
            assert!(d.contains("[events]"), "{d}");
            break;
        }
        assert!(Instant::now() < deadline, "config-drift not raised");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out) = cli(&["diff"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("[events] differs (DRIFT"), "{out}");
    std::fs::write(&b_conf, original).expect("write");
    f.cluster
        .signal_daemon("b", nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if has(&f.events().await, EventKind::AlarmCleared) {
            break;
        }
        assert!(Instant::now() < deadline, "config-drift not cleared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--strategy balance`: each node is drained before its restart and put back after (the
/// history shows both phases for both nodes); every node ends on the new version, undrained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_deploy_drains_each_node_and_puts_it_back() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start().await;
    let (code, out) = f
        .deploy(&[
            "--env",
            "DEMO_VERSION=2",
            "--strategy",
            "balance",
            "--drain-time",
            "300ms",
        ])
        .await
        .expect("deploy");
    assert_eq!(code, Some(0), "{out}\n{}", f.logs());
    let v = f.view().await;
    assert_eq!(v.current, 2);
    for n in &v.nodes {
        assert_eq!((n.running, n.desired, n.drain), (2, 2, false), "{n:?}");
    }
    let events = f.events().await;
    for node in ["a", "b"] {
        for phase in ["draining", "undraining"] {
            assert!(
                events.iter().any(|e| e.kind == EventKind::Deploy
                    && e.node.as_deref() == Some(node)
                    && e.detail.contains(&format!(": {phase} {node} "))),
                "no {phase} step for {node}: {:?}",
                events
                    .iter()
                    .filter(|e| e.kind == EventKind::Deploy)
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::Drain && e.node.as_deref() == Some(node)),
            "{node} was never drained"
        );
    }
}
