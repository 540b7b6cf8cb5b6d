//! Multi-process tests: real `standin node` processes on loopback (data nodes `a`, `b`, witness
//! `w`), real faults (`kill -9`, `SIGSTOP`, a black-holed network path), and a client that
//! probes every service every 10 ms and fails the test if two nodes ever answer as active in
//! the same round or an older epoch answers after a newer one.
//!
//! Tests run one at a time (they share two cores and measure liveness).

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use standin::cluster::state::{Event, EventKind};
use standin::lab::harness::{LocalCluster, Spec};
use standin::lab::probe::Prober;
use standin::status::Status;

mod common;
use common::binary;
use common::{sample, scrape};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    cluster: LocalCluster,
    prober: Option<Prober>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(relay: bool, extra_toml: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = Spec::new(dir.path(), &binary());
        spec.relay_second_path = relay;
        spec.extra_toml = extra_toml.to_string();
        let mut cluster = LocalCluster::create(spec).await.expect("create cluster");
        cluster.start_all().expect("start");
        cluster
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("cluster ready");
        let services = cluster.nodes.iter().filter_map(|n| n.service).collect();
        let prober = Some(Prober::start(services, Duration::from_millis(10)));
        Fixture {
            cluster,
            prober,
            _dir: dir,
        }
    }

    async fn status(&self) -> Status {
        self.cluster.status().await.expect("some node answers")
    }

    fn api(&self, id: &str) -> String {
        self.cluster.node(id).expect("node").admin.to_string()
    }

    /// Waits for a node other than `old` to be active at an epoch above `epoch`.
    async fn wait_new_active(&self, old: &str, epoch: u64, timeout: Duration) -> Status {
        self.cluster
            .wait_for(timeout, "a new active node", |s| {
                s.epoch > epoch
                    && s.active.as_deref().is_some_and(|a| a != old)
                    && s.nodes
                        .iter()
                        .any(|n| Some(&n.id) == s.active.as_ref() && n.role == "active")
            })
            .await
            .expect("failover")
    }

    async fn wait_standby(&self, id: &str, timeout: Duration) -> Status {
        self.cluster
            .wait_for(timeout, "the node back as a healthy standby", |s| {
                s.nodes
                    .iter()
                    .any(|n| n.id == id && n.role == "standby" && n.healthy && n.in_sync)
            })
            .await
            .expect("rejoin as standby")
    }

    async fn events(&self, id: &str) -> Vec<Event> {
        self.cluster.events(id).await.expect("events")
    }

    /// Stops probing and asserts no two nodes ever acted as active at once.
    async fn assert_single_active(&mut self) {
        let prober = self.prober.take().expect("prober");
        let stale = prober.stale_answers();
        prober.stop().await;
        assert_eq!(
            stale, 0,
            "two nodes answered as active, or an old epoch answered after a newer one"
        );
    }

    /// Observes the cluster for `d` and asserts the active node and epoch did not change.
    async fn assert_no_failover(&self, d: Duration, active: &str, epoch: u64) {
        let deadline = std::time::Instant::now() + d;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.cluster.status().await {
                assert_eq!(s.epoch, epoch, "epoch moved: {s:?}");
                assert_eq!(s.active.as_deref(), Some(active), "active moved: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn active_of(s: &Status) -> String {
    s.active.clone().expect("an active node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_node_fails_over_and_it_rejoins_as_standby() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let old = active_of(&s);
    assert_eq!(old, "a", "the highest-priority node starts active");
    f.cluster.kill(&old).await.expect("kill");
    let after = f.wait_new_active(&old, s.epoch, Duration::from_secs(10)).await;
    assert_eq!(after.epoch, s.epoch + 1, "one promotion, one epoch");
    let events = f.events("b").await;
    let deposed = events
        .iter()
        .find(|e| e.kind == EventKind::Deposed && e.node.as_deref() == Some("a"))
        .expect("deposed event");
    assert_eq!(deposed.cause, Some(standin::failover::Cause::NodeLost));
    assert!(events
        .iter()
        .any(|e| e.kind == EventKind::Promoted && e.node.as_deref() == Some("b") && e.duration_ms.is_some()));

    // The old node comes back as a standby and does not take the role back (manual failback).
    f.cluster.start(&old).expect("restart");
    let back = f.wait_standby(&old, Duration::from_secs(20)).await;
    assert_eq!(back.active.as_deref(), Some("b"));
    f.assert_no_failover(Duration::from_secs(1), "b", after.epoch)
        .await;
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_service_only_fails_over() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let old = active_of(&s);
    let pid = f
        .cluster
        .lease(&old)
        .await
        .and_then(|l| l.service_pid)
        .expect("service pid");
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill service");
    let after = f.wait_new_active(&old, s.epoch, Duration::from_secs(10)).await;
    let events = f.events(&active_of(&after)).await;
    assert!(events.iter().any(|e| e.kind == EventKind::Deposed
        && e.node.as_deref() == Some(old.as_str())
        && e.cause == Some(standin::failover::Cause::ServiceUnhealthy)));
    // The daemon lived: the old active released its lease itself, so no fencing was needed.
    let promoted = events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Promoting)
        .expect("promoting event");
    assert!(!promoted.detail.contains("fencing"), "{promoted:?}");
    // The supervisor restarts the crashed service; the node is a healthy standby again.
    f.wait_standby(&old, Duration::from_secs(20)).await;
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_beyond_the_failure_timeout_fails_over_and_sigcont_rejoins_as_standby() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let old = active_of(&s);
    f.cluster.signal_daemon(&old, Signal::SIGSTOP).expect("stop");
    let after = f.wait_new_active(&old, s.epoch, Duration::from_secs(10)).await;
    // Let it sleep well past its lease, then wake it: it must not act as active again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.cluster.signal_daemon(&old, Signal::SIGCONT).expect("cont");
    let back = f.wait_standby(&old, Duration::from_secs(20)).await;
    assert_eq!(back.active, after.active);
    assert_eq!(back.epoch, after.epoch);
    let lease = f.cluster.lease(&old).await.expect("lease");
    assert_eq!(lease.role, "standby");
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_the_failure_timeout_causes_no_failover() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let active = active_of(&s);
    for _ in 0..3 {
        f.cluster.signal_daemon(&active, Signal::SIGSTOP).expect("stop");
        // Default failure timeout is 500 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.cluster.signal_daemon(&active, Signal::SIGCONT).expect("cont");
        f.assert_no_failover(Duration::from_millis(1500), &active, s.epoch)
            .await;
    }
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_two_paths_causes_no_failover() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(true, "").await;
    let s = f.status().await;
    let active = active_of(&s);
    // The second path of every node goes dark (a switch dies): packets vanish, no resets.
    for relay in f.cluster.relays.values() {
        relay.set_cut(true);
    }
    let down = f
        .cluster
        .wait_for(Duration::from_secs(10), "second paths reported down", |st| {
            st.nodes
                .iter()
                .filter(|n| !n.paths.is_empty())
                .all(|n| n.paths.len() == 2 && n.paths[0].up && !n.paths[1].up)
        })
        .await
        .expect("path state visible");
    assert_eq!(down.epoch, s.epoch);
    f.assert_no_failover(Duration::from_secs(2), &active, s.epoch)
        .await;
    for relay in f.cluster.relays.values() {
        relay.set_cut(false);
    }
    f.cluster
        .wait_for(Duration::from_secs(10), "second paths back up", |st| {
            st.nodes
                .iter()
                .filter(|n| !n.paths.is_empty())
                .all(|n| n.paths.iter().all(|p| p.up))
        })
        .await
        .expect("paths recover");
    f.assert_no_failover(Duration::from_millis(500), &active, s.epoch)
        .await;
    f.assert_single_active().await;
}

fn cli(args: &[&str], api: &str) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("STANDIN_API", api)
        .output()
        .expect("run cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_and_failback_through_the_cli() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    assert_eq!(active_of(&s), "a");
    let api = f.api("w"); // any node answers, even the witness
    let (code, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["switchover", "--to", "b", "--json"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["active"], "b");
    assert_eq!(v["epoch"], s.epoch + 1);
    let events = f.events("b").await;
    let promoted = events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Promoting)
        .expect("promoting");
    assert_eq!(promoted.cause, Some(standin::failover::Cause::Switchover));
    assert!(
        !promoted.detail.contains("fencing"),
        "planned: the old active released: {promoted:?}"
    );

    // Refusals are clear and do not move anything.
    let (code, _, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["switchover", "--to", "w"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("witness"), "{err}");

    // Failback goes to the preferred (highest-priority) node.
    let (code, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["failback", "--json"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["active"], "a");
    assert_eq!(v["epoch"], s.epoch + 2);
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_moves_the_role_away_and_status_json_is_stable() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let api = f.api("a");
    let (code, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["maintenance", "on", "a", "--json"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out} {err}");
    let after = f.wait_new_active("a", s.epoch, Duration::from_secs(10)).await;
    assert_eq!(active_of(&after), "b");
    let a = after.nodes.iter().find(|n| n.id == "a").expect("a");
    assert!(a.maintenance);

    // The JSON scripts rely on.
    let (code, out, _) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["status", "--json"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(v["epoch"].is_u64());
    assert_eq!(v["active"], "b");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for key in ["id", "kind", "role", "healthy", "in_sync", "paths"] {
            assert!(n.get(key).is_some(), "node lacks {key}: {n}");
        }
    }
    let w = nodes.iter().find(|n| n["id"] == "w").expect("w");
    assert_eq!(w["kind"], "witness");
    assert_eq!(w["role"], "witness");

    let (code, _, _) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["maintenance", "off", "a"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0);
    f.cluster
        .wait_for(Duration::from_secs(5), "maintenance off", |st| {
            st.nodes.iter().any(|n| n.id == "a" && !n.maintenance)
        })
        .await
        .expect("maintenance off");
    f.assert_no_failover(Duration::from_secs(1), "b", after.epoch)
        .await;
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_keeps_the_state() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let before = f.events("a").await;
    let last_seq = before.last().map(|e| e.seq).expect("events");
    f.assert_single_active().await;
    let ids: Vec<String> = f.cluster.nodes.iter().map(|n| n.id.clone()).collect();
    for id in &ids {
        f.cluster.stop(id, Duration::from_secs(10)).expect("stop");
    }
    f.cluster.start_all().expect("start again");
    let after = f
        .cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("ready again");
    assert!(
        after.epoch > s.epoch,
        "a restarted active never resumes on its own: new epoch"
    );
    let events = f.events("b").await;
    // History survived the restart, in order, without gaps.
    for e in &before {
        assert!(
            events.iter().any(|x| x.seq == e.seq && x.kind == e.kind),
            "lost event {e:?}"
        );
    }
    assert!(events
        .iter()
        .any(|e| e.seq > last_seq && e.kind == EventKind::Released));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "event seqs have gaps: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_active_hands_over_without_waiting_for_its_lease() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    let old = active_of(&s);
    f.cluster
        .stop(&old, Duration::from_secs(10))
        .expect("graceful stop");
    let after = f.wait_new_active(&old, s.epoch, Duration::from_secs(10)).await;
    let events = f.events(&active_of(&after)).await;
    let released = events
        .iter()
        .any(|e| e.kind == EventKind::Released && e.node.as_deref() == Some(old.as_str()));
    assert!(released, "a stopping active releases its role: {events:?}");
    let promoted = events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Promoting)
        .expect("promoting");
    assert!(!promoted.detail.contains("fencing"), "{promoted:?}");
    // Its service was stopped with it.
    assert!(f.cluster.lease(&old).await.is_none(), "the daemon is gone");
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_promote_hook_moves_on_to_the_next_candidate() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    // Node a refuses to become active; b accepts.
    spec.hooks_toml = "on-promote = 'echo checking; test \"$STANDIN_NODE\" != a'\n".into();
    let mut cluster = LocalCluster::create(spec).await.expect("create");
    cluster.start_all().expect("start");
    let s = cluster.wait_ready(Duration::from_secs(30)).await.expect("ready");
    assert_eq!(s.active.as_deref(), Some("b"));
    let events = cluster.events("b").await.expect("events");
    let failed = events
        .iter()
        .find(|e| e.kind == EventKind::PromotionFailed)
        .expect("a promotion-failed event");
    assert_eq!(failed.node.as_deref(), Some("a"));
    assert!(failed.detail.contains("on-promote failed"), "{failed:?}");
    let ok = events
        .iter()
        .find(|e| e.kind == EventKind::Promoted)
        .expect("promoted");
    assert_eq!(ok.node.as_deref(), Some("b"));
    assert!(ok.epoch > failed.epoch, "the failed promotion used up its epoch");
}

/// The witness holds committed entries the surviving data node lacks: that node cannot win an
/// election on its own, so the witness leads until it has caught up, and the failover happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_leads_when_the_survivor_lacks_committed_entries() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    assert_eq!(active_of(&s), "a");
    // Leadership follows the active node.
    f.cluster
        .wait_for(Duration::from_secs(10), "a leading raft", |st| {
            st.leader.as_deref() == Some("a")
        })
        .await
        .expect("leadership moves to the active node");
    f.cluster.signal_daemon("b", Signal::SIGSTOP).expect("stop b");
    // Entries committed by a and w only.
    for on in [true, false, true, false] {
        let r = standin::api::client::request(
            &f.api("a"),
            hyper::Method::POST,
            "/v1/maintenance",
            Some(format!("{{\"node\":\"w\",\"on\":{on}}}")),
            Duration::from_secs(5),
        )
        .await
        .expect("maintenance");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    f.cluster.kill("a").await.expect("kill a");
    f.cluster.signal_daemon("b", Signal::SIGCONT).expect("cont b");
    let after = f.wait_new_active("a", s.epoch, Duration::from_secs(20)).await;
    assert_eq!(active_of(&after), "b");
    let events = f.events("b").await;
    assert!(
        events.iter().filter(|e| e.kind == EventKind::Maintenance).count() >= 4,
        "b caught up with what a and w committed"
    );
    f.assert_single_active().await;
}

/// Warm mode: the standby runs no service; promotion starts it, and a service that is still
/// starting is not taken for a failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_standby_starts_the_service_on_promotion() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.service_toml = "mode = \"warm\"\n".into();
    let mut cluster = LocalCluster::create(spec).await.expect("create");
    cluster.start_all().expect("start");
    let s = cluster.wait_ready(Duration::from_secs(30)).await.expect("ready");
    assert_eq!(s.active.as_deref(), Some("a"));
    assert!(cluster.lease("a").await.and_then(|l| l.service_pid).is_some());
    assert!(
        cluster.lease("b").await.expect("b").service_pid.is_none(),
        "a warm standby runs no service"
    );
    let services = cluster.nodes.iter().filter_map(|n| n.service).collect();
    let prober = Prober::start(services, Duration::from_millis(10));
    cluster.kill("a").await.expect("kill a");
    let after = cluster
        .wait_for(Duration::from_secs(10), "b active", |st| {
            st.active.as_deref() == Some("b") && st.nodes.iter().any(|n| n.id == "b" && n.role == "active")
        })
        .await
        .expect("failover to the warm standby");
    assert!(cluster.lease("b").await.and_then(|l| l.service_pid).is_some());
    // It stays there: no bouncing while the service starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let st = cluster.status().await.expect("status");
        assert_eq!(st.epoch, after.epoch, "{st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stale = prober.stale_answers();
    prober.stop().await;
    assert_eq!(stale, 0);
}

/// The active node loses every path to the others (both directions black-holed): the others
/// fail over, the isolated node demotes itself before its lease can run out (the probe never
/// sees two actives), and after the partition heals it is a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_active_demotes_itself_and_the_others_fail_over() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.partitionable = true;
    let mut cluster = LocalCluster::create(spec).await.expect("create");
    cluster.start_all().expect("start");
    let s = cluster.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let old = active_of(&s);
    let services = cluster.nodes.iter().filter_map(|n| n.service).collect();
    let prober = Prober::start(services, Duration::from_millis(10));
    cluster.partition(&old);
    let after = cluster
        .wait_for(
            Duration::from_secs(10),
            "a new active on the majority side",
            |st| st.epoch > s.epoch && st.active.as_deref().is_some_and(|a| a != old) && !st.stale,
        )
        .await
        .expect("failover");
    // The isolated node says (on its own admin API, which is not cut) that it is a standby.
    let lease = cluster.lease(&old).await.expect("isolated node answers");
    assert_eq!(lease.role, "standby", "{lease:?}");
    cluster.heal();
    cluster
        .wait_for(
            Duration::from_secs(20),
            "the isolated node back as a healthy standby",
            |st| {
                st.nodes
                    .iter()
                    .any(|n| n.id == old && n.role == "standby" && n.healthy && n.in_sync)
            },
        )
        .await
        .expect("rejoin");
    let end = cluster.status().await.expect("status");
    assert_eq!(end.active, after.active);
    let stale = prober.stale_answers();
    prober.stop().await;
    assert_eq!(stale, 0, "two nodes acted as active");
}

/// Reads `GET /v1/watch` on `admin` until `pred` holds for an `event: status`, or `timeout`.
/// Returns how many status events were read.
async fn watch_until(
    admin: &str,
    timeout: Duration,
    pred: impl Fn(&Status) -> bool,
) -> Result<usize, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| format!("connect {admin}: {e}"))?;
    s.write_all(
        format!("GET /v1/watch HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(s).lines();
    let mut events = 0;
    let mut saw_sse_header = false;
    let read = async {
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            if line
                .to_ascii_lowercase()
                .starts_with("content-type: text/event-stream")
            {
                saw_sse_header = true;
            }
            // Chunked framing puts sizes on their own lines; data lines are intact.
            if let Some(json) = line.strip_prefix("data: ") {
                let st: Status =
                    serde_json::from_str(json).map_err(|e| format!("bad status event: {e}: {json}"))?;
                events += 1;
                if pred(&st) {
                    return Ok(());
                }
            }
        }
        Err("stream ended".to_string())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) if saw_sse_header => Ok(events),
        Ok(Ok(())) => Err("not served as text/event-stream".into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("condition not seen in {timeout:?} ({events} events)")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_replicated_and_pushed_to_watchers() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start(false, "").await;
    let s = f.status().await;
    let active = active_of(&s);
    // Every data node reports its store address for front proxies.
    for n in s.nodes.iter().filter(|n| n.id != "w") {
        assert!(n.store.is_some() && !n.drain, "{n:?}");
    }
    // A watcher on the witness (which never leads) sees the drain of b as soon as it commits.
    let witness_api = f.api("w");
    let watcher = tokio::spawn(async move {
        watch_until(&witness_api, Duration::from_secs(10), |st| {
            st.nodes.iter().any(|n| n.id == "b" && n.drain)
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    let api = f.api("a");
    let (code, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["drain", "b", "--json"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out} {err}");
    let events = watcher.await.expect("join").expect("drain pushed to the watcher");
    println!(
        "drain seen by a watcher {} ms after the CLI started ({events} events)",
        t.elapsed().as_millis()
    );
    assert!(
        events >= 2,
        "the first event comes on connect, the drain in a later one"
    );
    // Draining is about load balancing: it moves no role.
    f.assert_no_failover(Duration::from_millis(500), &active, s.epoch)
        .await;
    let (code, _, _) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["drain", "b", "--off"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0);
    f.cluster
        .wait_for(Duration::from_secs(5), "drain off", |st| {
            st.nodes.iter().any(|n| n.id == "b" && !n.drain)
        })
        .await
        .expect("drain off");
    // A witness cannot be drained: it serves nothing. Refused with the usage exit code.
    let (code, _, err) = tokio::task::spawn_blocking(move || cli(&["drain", "w"], &api))
        .await
        .expect("join");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("witness"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_parses_and_follows_a_failover() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start(false, "").await;
    let s = f.status().await;
    assert_eq!(active_of(&s), "a");
    // Some store traffic on a's store, so the store families have samples.
    let store = f.cluster.node("a").and_then(|n| n.store).expect("store");
    let v = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://{store}/")).expect("client");
        let mut con = client.get_connection().expect("connect");
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).expect("SET");
        redis::cmd("GET").arg("k").query::<String>(&mut con).expect("GET")
    })
    .await
    .expect("join");
    assert_eq!(v, "v");

    let m = scrape(&f.api("a")).await;
    assert_eq!(
        sample(&m, "standin_node_role", &[("node", "a"), ("role", "active")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "standin_node_role", &[("node", "w"), ("role", "witness")]),
        Some(1.0)
    );
    // A live witness is healthy (its health is its liveness: an alert on 0 means it is down).
    assert_eq!(sample(&m, "standin_node_healthy", &[("node", "w")]), Some(1.0));
    assert_eq!(sample(&m, "standin_node_healthy", &[("node", "a")]), Some(1.0));
    // Which build runs, for dashboards and a version-drift alert.
    let build: Vec<_> = m
        .iter()
        .filter(|(name, _, _)| name == "standin_build_info")
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    assert!(
        build[0]
            .1
            .iter()
            .any(|(k, v)| k == "version" && v == env!("CARGO_PKG_VERSION")),
        "{build:?}"
    );
    assert!(
        build[0].1.iter().any(|(k, v)| k == "commit" && !v.is_empty()),
        "{build:?}"
    );
    assert_eq!(
        sample(&m, "standin_cluster", &[("figure", "epoch")]),
        Some(s.epoch as f64)
    );
    assert_eq!(
        sample(&m, "standin_acting", &[("node", "a"), ("acting", "active")]),
        Some(1.0)
    );
    assert!(sample(&m, "standin_lease_remaining_seconds", &[("node", "a")]).is_some_and(|v| v > 0.0));
    assert!(sample(&m, "standin_raft", &[("figure", "term")]).is_some_and(|v| v >= 1.0));
    assert_eq!(sample(&m, "standin_path_up", &[("peer", "b")]), Some(1.0));
    assert!(sample(&m, "standin_path_rtt_seconds", &[("peer", "w")]).is_some());
    assert_eq!(
        sample(
            &m,
            "standin_check_healthy",
            &[("node", "a"), ("check", "process")]
        ),
        Some(1.0)
    );
    assert!(sample(
        &m,
        "standin_store_ops_total",
        &[("kind", "write"), ("outcome", "ok")]
    )
    .is_some_and(|v| v >= 1.0));
    assert!(sample(
        &m,
        "standin_store_request_latency_seconds_count",
        &[("kind", "read")]
    )
    .is_some_and(|v| v >= 1.0));
    let bootstraps = sample(
        &m,
        "standin_events_total",
        &[("kind", "promoted"), ("cause", "bootstrap")],
    );
    assert_eq!(bootstraps, Some(1.0));
    assert!(sample(
        &m,
        "standin_events_total",
        &[("kind", "promoted"), ("cause", "node-lost")]
    )
    .is_none());

    // A failover shows up in the counters of the survivor (replicated, so any node agrees).
    f.cluster.kill("a").await.expect("kill");
    let after = f.wait_new_active("a", s.epoch, Duration::from_secs(10)).await;
    let m = scrape(&f.api("w")).await;
    assert_eq!(
        sample(
            &m,
            "standin_events_total",
            &[("kind", "promoted"), ("cause", "node-lost")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "standin_cluster", &[("figure", "epoch")]),
        Some(after.epoch as f64)
    );
    assert_eq!(
        sample(&m, "standin_node_role", &[("node", "a"), ("role", "unreachable")]),
        Some(1.0)
    );
    assert_eq!(sample(&m, "standin_path_up", &[("peer", "a")]), Some(0.0));
    f.assert_single_active().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_guards_mutations_and_the_cli_sends_it() {
    let _g = SERIAL.lock().await;
    let token = "s3cret-token-for-tests-0123";
    let f = Fixture::start(false, &format!("[api]\ntoken = \"{token}\"\n")).await;
    let api = f.api("b");
    // Read-only calls stay open by default; mutations need the token.
    let (code, _, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["status"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["maintenance", "on", "b"], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 77, "no token: EX_NOPERM; {err}");
    assert!(err.contains("token"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || {
            cli(
                &["maintenance", "on", "b", "--token", "wrong-token-0123456789"],
                &api,
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("wrong API token"), "{err}");
    let (code, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&["maintenance", "on", "b", "--token", token], &api)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out} {err}");
    f.cluster
        .wait_for(Duration::from_secs(5), "maintenance on b", |st| {
            st.nodes.iter().any(|n| n.id == "b" && n.maintenance)
        })
        .await
        .expect("maintenance with the token");
    // STANDIN_TOKEN works like --token; a raw POST without it gets 401 with WWW-Authenticate.
    let out = Command::new(binary())
        .args(["maintenance", "off", "b", "--api", &api])
        .env("STANDIN_TOKEN", token)
        .output()
        .expect("run cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = standin::api::client::request(
        &api,
        hyper::Method::POST,
        "/v1/failback",
        Some("{}".into()),
        Duration::from_secs(5),
    )
    .await
    .expect("request");
    assert_eq!(r.status, 401, "{}", r.body);
    // A dashboard served by another node may call this one: the CORS preflight from that
    // member's origin is answered without the token, and answers carry the headers a browser
    // needs, naming that origin (never `*`). Other origins get none (issue 13).
    let member = format!("http://{}", f.api("a"));
    let raw = |req: String| {
        let (api, member) = (api.clone(), member.clone());
        move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&api).expect("connect");
            s.write_all(req.replace("HOST", &api).replace("MEMBER", &member).as_bytes())
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out.to_ascii_lowercase()
        }
    };
    let pre = tokio::task::spawn_blocking(raw(
        "OPTIONS /v1/drain HTTP/1.1\r\nHost: HOST\r\nOrigin: MEMBER\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n".into(),
    ))
    .await
    .expect("join");
    assert!(pre.starts_with("http/1.1 204"), "{pre}");
    assert!(
        pre.contains(&format!("access-control-allow-origin: {member}")),
        "{pre}"
    );
    assert!(
        pre.contains("access-control-allow-headers: authorization, content-type"),
        "{pre}"
    );
    assert!(pre.contains("access-control-allow-methods: get, post"), "{pre}");
    let get = tokio::task::spawn_blocking(raw(
        "GET /v1/status HTTP/1.1\r\nHost: HOST\r\nOrigin: MEMBER\r\nConnection: close\r\n\r\n".into(),
    ))
    .await
    .expect("join");
    assert!(
        get.starts_with("http/1.1 200") && get.contains(&format!("access-control-allow-origin: {member}")),
        "{get}"
    );
    let foreign = tokio::task::spawn_blocking(raw(
        "OPTIONS /v1/drain HTTP/1.1\r\nHost: HOST\r\nOrigin: http://elsewhere\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n".into(),
    ))
    .await
    .expect("join");
    assert!(!foreign.contains("access-control-allow"), "{foreign}");
    // The managed service's lease endpoint is always open.
    let r = standin::api::client::request(
        &api,
        hyper::Method::GET,
        "/v1/lease",
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("lease");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A webhook receiver: records every JSON body POSTed to it; answers the very first request
/// with 500 (so delivery has to retry), the rest with 200.
struct Webhook {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    async fn start() -> Webhook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn({
            let got = got.clone();
            async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let got = got.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        // Headers, then Content-Length bytes of body (bounded).
                        let body = loop {
                            let Ok(n) = s.read(&mut chunk).await else { return };
                            if n == 0 || buf.len() > 1 << 20 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            let text = String::from_utf8_lossy(&buf).to_string();
                            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                                let len = head
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                    })
                                    .unwrap_or(0);
                                if body.len() >= len {
                                    break body[..len].to_string();
                                }
                            }
                        };
                        let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                            let mut v = v;
                            v["_answered"] = serde_json::json!(if first { 500 } else { 200 });
                            got.lock().unwrap().push(v);
                        }
                        let status = if first {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let _ = s
                            .write_all(
                                format!(
                                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                )
                                .as_bytes(),
                            )
                            .await;
                    });
                }
            }
        });
        Webhook { addr, got, task }
    }

    fn all(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) for a notification matching `pred`.
    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(v) = self.all().into_iter().find(|v| pred(v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {what} notification; got: {:#?}", self.all());
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_raised_and_cleared_through_a_webhook() {
    let _g = SERIAL.lock().await;
    let hook = Webhook::start().await;
    // The exec channel too: each notification's JSON into a file of its own (runs overlap).
    let out = tempfile::tempdir().expect("tempdir");
    let exec_dir = out.path().to_path_buf();
    let mut f = Fixture::start(
        true,
        &format!(
            "[alarms]\nwebhook = [\"http://{}/hook\"]\nexec = \"cat > '{}'/$STANDIN_ALARM_STATE-$$.json\"\nbackoff = \"50ms\"\n",
            hook.addr,
            exec_dir.display()
        ),
    )
    .await;
    let s = f.status().await;
    let active = active_of(&s);

    // A heartbeat path goes down (the second path of every pair) and comes back.
    for relay in f.cluster.relays.values() {
        relay.set_cut(true);
    }
    let raised = hook
        .wait("path-down raised", Duration::from_secs(15), |v| {
            v["state"] == "raised" && v["alarm"].as_str().is_some_and(|k| k.starts_with("path-down:"))
        })
        .await;
    let key = raised["alarm"].as_str().expect("key").to_string();
    assert_eq!(raised["severity"], "warning");
    for relay in f.cluster.relays.values() {
        relay.set_cut(false);
    }
    hook.wait("path-down cleared", Duration::from_secs(15), |v| {
        v["state"] == "cleared" && v["alarm"] == key.as_str()
    })
    .await;

    // The active node dies: a failover notification, and the degraded states it leaves.
    f.cluster.kill(&active).await.expect("kill");
    let failover = hook
        .wait("failover", Duration::from_secs(15), |v| {
            v["state"] == "event" && v["title"] == "failover"
        })
        .await;
    assert_eq!(failover["cause"], "node-lost");
    assert_eq!(failover["severity"], "critical");
    assert!(failover["interruption_ms"].is_u64(), "{failover}");
    let new_active = failover["node"].as_str().expect("node").to_string();
    assert_ne!(new_active, active);
    for key in [
        format!("node-unreachable:{active}"),
        "no-in-sync-standby".into(),
        "quorum-at-risk".into(),
    ] {
        hook.wait(&format!("{key} raised"), Duration::from_secs(15), |v| {
            v["state"] == "raised" && v["alarm"] == key.as_str()
        })
        .await;
    }
    // It comes back: the alarms clear.
    f.cluster.start(&active).expect("restart");
    for key in [
        format!("node-unreachable:{active}"),
        "no-in-sync-standby".into(),
        "quorum-at-risk".into(),
    ] {
        hook.wait(&format!("{key} cleared"), Duration::from_secs(30), |v| {
            v["state"] == "cleared" && v["alarm"] == key.as_str()
        })
        .await;
    }

    let all = hook.all();
    // De-duplicated: a key is raised at most once more than it is cleared. A delivery may be
    // repeated (a retry, or a new leader resuming); receivers drop repeats by `seq`.
    let mut balance: std::collections::BTreeMap<String, i64> = Default::default();
    let mut seqs = std::collections::BTreeSet::new();
    for v in all.iter().filter(|v| v["_answered"] == 200) {
        if !seqs.insert(v["seq"].as_u64()) {
            continue;
        }
        if let Some(k) = v["alarm"].as_str() {
            *balance.entry(k.to_string()).or_default() += if v["state"] == "raised" { 1 } else { -1 };
        }
    }
    assert!(
        balance.values().all(|b| *b == 0 || *b == 1),
        "repeated alarms: {balance:?}"
    );
    // The first delivery was answered 500 and retried: its sequence number arrived again.
    let first = &all[0];
    assert_eq!(first["_answered"], 500);
    assert!(
        all[1..]
            .iter()
            .any(|v| v["seq"] == first["seq"] && v["title"] == first["title"] && v["_answered"] == 200),
        "the failed delivery was not retried: {first}"
    );
    // The exec command got the same notifications as JSON on stdin.
    let execd: Vec<serde_json::Value> = std::fs::read_dir(&exec_dir)
        .expect("exec dir")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        // A run still in progress may not have written its file completely yet.
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    let lines = format!("{execd:?}");
    assert!(
        execd
            .iter()
            .any(|v| v["title"] == "failover" && v["cause"] == "node-lost"),
        "exec did not get the failover: {lines}"
    );
    assert!(execd.iter().any(|v| v["state"] == "cleared"), "{lines}");
    println!(
        "{} notifications: {:?}",
        all.len(),
        all.iter()
            .map(|v| format!("{} {}", v["state"], v["title"]))
            .collect::<Vec<_>>()
    );
    f.assert_single_active().await;
}
