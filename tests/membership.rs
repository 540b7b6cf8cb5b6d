//! Membership changes on a running cluster, under a continuous write load checked the
//! Jepsen way (every acknowledged key read back at the end, nothing nobody wrote): grow 3 -> 5
//! (a data node and a witness) and back; a data node whose data directory was wiped is kept
//! out (no panic anywhere) and replaced; the active node removed (switchover first).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standin::lab::harness::{LocalCluster, Spec};
use standin::lab::probe::Prober;
use standin::status::Status;

mod common;
use common::binary;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes unique keys to the stores at `stores` until stopped; records what was
/// acknowledged and what may or may not have been applied.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    unknown: Arc<Mutex<Vec<String>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(stores: Vec<SocketAddr>, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for w in 0..2usize {
            let (stop, acked, unknown, stores) =
                (stop.clone(), acked.clone(), unknown.clone(), stores.clone());
            let tag = tag.to_string();
            workers.push(std::thread::spawn(move || {
                let mut con: Option<redis::Connection> = None;
                let mut target = w;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 200_000 {
                    if con.is_none() {
                        target = (target + 1) % stores.len();
                        let client =
                            redis::Client::open(format!("redis://{}/", stores[target])).expect("url");
                        con = client
                            .get_connection_with_timeout(Duration::from_millis(500))
                            .ok();
                        if let Some(c) = con.as_mut() {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        }
                        if con.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    let Some(cn) = con.as_mut() else { continue };
                    let key = format!("{tag}-w{w}-{i}");
                    i += 1;
                    let r: redis::RedisResult<String> = redis::cmd("SET").arg(&key).arg(i).query(cn);
                    match r {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(_) => {
                            unknown.lock().unwrap().push(key);
                            con = None;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        Load {
            stop,
            acked,
            unknown,
            workers,
        }
    }

    /// Stops the load and checks every acknowledged key on the store at `reader`: returns
    /// (acknowledged, lost, unexpected).
    async fn check(self, reader: SocketAddr, tag: &str) -> (usize, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().expect("worker");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let unknown = std::mem::take(&mut *self.unknown.lock().unwrap());
        let pattern = format!("{tag}-*");
        let keys: Vec<String> = tokio::task::spawn_blocking(move || {
            let client = redis::Client::open(format!("redis://{reader}/")).expect("url");
            let mut con = client.get_connection().expect("connect");
            redis::cmd("KEYS").arg(pattern).query(&mut con).expect("keys")
        })
        .await
        .expect("join");
        let present: BTreeSet<&String> = keys.iter().collect();
        let lost: Vec<String> = acked.iter().filter(|k| !present.contains(k)).cloned().collect();
        let attempted: BTreeSet<&String> = acked.iter().chain(unknown.iter()).collect();
        let unexpected: Vec<String> = keys.iter().filter(|k| !attempted.contains(k)).cloned().collect();
        (acked.len(), lost, unexpected)
    }
}

/// Runs `standin ARGS --api ADMIN`, returning (exit code, stdout, stderr).
fn standin(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("--api")
        .arg(admin.to_string())
        .output()
        .expect("run standin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `standin member add` for the harness's node `id`.
fn member_add(c: &LocalCluster, via: SocketAddr, verb: &[&str], id: &str) -> (i32, String, String) {
    let n = c.node(id).expect("node");
    let mut args: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
    args.push(id.into());
    args.push("--kind".into());
    args.push(if n.witness { "witness" } else { "data" }.into());
    for p in &n.paths {
        args.push("--address".into());
        args.push(p.to_string());
    }
    args.push("--admin".into());
    args.push(n.admin.to_string());
    if let Some(s) = n.service {
        args.push("--service-address".into());
        args.push(s.to_string());
    }
    if let Some(s) = n.store {
        args.push("--store-address".into());
        args.push(s.to_string());
    }
    args.push("--priority".into());
    args.push(if n.witness { "0" } else { "50" }.into());
    args.push("--timeout".into());
    args.push("60s".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    standin(via, &refs)
}

/// Keeps only the `[[member]]` entries of `ids` in the config file at `path`.
fn keep_members(path: &std::path::Path, ids: &[&str]) {
    let text = std::fs::read_to_string(path).expect("config");
    let mut parts = text.split("\n[[member]]");
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        // A member block runs until the next section header.
        let (block, rest) = match part.find("\n[") {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if ids.iter().any(|id| block.contains(&format!("id = \"{id}\""))) {
            out.push_str("\n[[member]]");
            out.push_str(block);
        }
        out.push_str(rest);
    }
    std::fs::write(path, out).expect("write config");
}

fn voters(s: &Status) -> Vec<String> {
    s.nodes
        .iter()
        .filter(|n| n.raft == "voter")
        .map(|n| n.id.clone())
        .collect()
}

/// Probes every data node's service (joiners included) every 10 ms: two nodes answering as
/// active in one round, or an epoch going back, is counted.
fn prober(c: &LocalCluster) -> Prober {
    Prober::start(
        c.nodes.iter().filter_map(|n| n.service).collect(),
        Duration::from_millis(10),
    )
}

/// Stops the prober: no round saw two actives or an old epoch.
async fn never_two_actives(p: Prober) {
    let stale = p.stale_answers();
    p.stop().await;
    assert_eq!(stale, 0, "rounds with two active nodes or an epoch going back");
}

/// Every started daemon is still running (none panicked or exited).
fn all_alive(c: &mut LocalCluster) {
    for n in &mut c.nodes {
        if let Some(ch) = n.child.as_mut() {
            assert!(
                matches!(ch.try_wait(), Ok(None)),
                "{} exited: {:?}",
                n.id,
                ch.try_wait()
            );
        }
    }
}

fn log_of(c: &LocalCluster, id: &str) -> String {
    std::fs::read_to_string(c.spec.dir.join(format!("{id}.log"))).unwrap_or_default()
}

/// Grow 3 -> 5 (a data node and a second witness join) and shrink back to 3, under writes:
/// no failover, nothing lost, the new data node serves the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_back_under_writes() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.joiners = vec![("c".into(), false), ("v".into(), true)];
    let mut c = LocalCluster::create(spec).await.expect("create");
    c.start_all().expect("start");
    let before = c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let admin_a = c.node("a").expect("a").admin;
    let stores: Vec<SocketAddr> = ["a", "b"]
        .iter()
        .map(|id| c.node(id).and_then(|n| n.store).expect("store"))
        .collect();
    let load = Load::start(stores, "grow");
    let probe = prober(&c);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // c's file lists only itself and the witness (never the Raft leader): it learns the
    // others from the leader's log.
    keep_members(&c.node("c").expect("c").config, &["c", "w"]);
    // A joining node waits: it neither creates a cluster nor disturbs this one.
    c.start("c").expect("start c");
    c.start("v").expect("start v");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = c.status().await.expect("status");
    assert_eq!(voters(&s).len(), 3, "{:?}", voters(&s));
    assert!(
        log_of(&c, "c").contains("waiting to be added"),
        "{}",
        log_of(&c, "c")
    );

    let started = Instant::now();
    let (code, out, err) = member_add(&c, admin_a, &["member", "add"], "c");
    assert_eq!(code, 0, "member add c: {out}{err}");
    assert!(out.contains("c is a voter"), "{out}");
    let add_c = started.elapsed();
    let (code, out, err) = member_add(&c, admin_a, &["member", "add"], "v");
    assert_eq!(code, 0, "member add v: {out}{err}");
    let s = c
        .wait_for(Duration::from_secs(30), "five voters, c in sync", |s| {
            voters(s).len() == 5 && s.nodes.iter().any(|n| n.id == "c" && n.in_sync && n.healthy)
        })
        .await
        .expect("five voters");
    assert!(
        s.membership_drift.iter().any(|d| d.contains("c is a member")) || s.view_from == "c",
        "{:?}",
        s.membership_drift
    );
    // The list shows both new members as voters.
    let (code, out, _) = standin(admin_a, &["member", "list", "--json"]);
    assert_eq!(code, 0);
    let view: serde_json::Value = serde_json::from_str(&out).expect("json");
    let raft_of = |id: &str| {
        view["members"]
            .as_array()
            .and_then(|m| m.iter().find(|x| x["id"] == id))
            .map(|x| x["raft"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(raft_of("c").as_deref(), Some("voter"), "{out}");
    assert_eq!(raft_of("v").as_deref(), Some("voter"), "{out}");

    // The files of a and b do not list the new members: the leader raises a drift alarm for
    // each (it asks every member every 5 s).
    let drift_raised = |events: &[standin::cluster::state::Event], id: &str| {
        events.iter().any(|e| {
            e.kind == standin::cluster::state::EventKind::AlarmRaised
                && e.detail.starts_with(&format!("membership-drift:{id}:"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = c.events("a").await.unwrap_or_default();
        if drift_raised(&events, "a") && drift_raised(&events, "b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no membership-drift alarms for a and b: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Back to three.
    for id in ["v", "c"] {
        let (code, out, err) = standin(admin_a, &["member", "remove", id, "--timeout", "30s"]);
        assert_eq!(code, 0, "member remove {id}: {out}{err}");
    }
    let s = c
        .wait_for(Duration::from_secs(30), "three voters", |s| {
            voters(s).len() == 3 && !s.nodes.iter().any(|n| n.id == "c" || n.id == "v")
        })
        .await
        .expect("three voters");
    // Their files agree with the membership again: the drift alarms clear.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = c.events("a").await.unwrap_or_default();
        let cleared = |id: &str| {
            events.iter().any(|e| {
                e.kind == standin::cluster::state::EventKind::AlarmCleared
                    && e.detail.starts_with(&format!("membership-drift:{id}:"))
            })
        };
        if cleared("a") && cleared("b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "membership-drift alarms not cleared: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reader = c.node("b").and_then(|n| n.store).expect("store");
    let (acked, lost, unexpected) = load.check(reader, "grow").await;
    println!(
        "grow/shrink: acknowledged={acked} lost={} unexpected={} add-c={} ms epoch {} -> {}",
        lost.len(),
        unexpected.len(),
        add_c.as_millis(),
        before.epoch,
        s.epoch
    );
    assert!(acked > 100, "the load ran: {acked}");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(unexpected.is_empty(), "keys nobody wrote: {unexpected:?}");
    assert_eq!(s.epoch, before.epoch, "no failover while the membership changed");
    assert_eq!(s.active, before.active);
    never_two_actives(probe).await;
    all_alive(&mut c);
}

/// A standby's data directory is wiped and the node restarted under its old identity: the
/// leader keeps it out (no panic, openraft #898), says so (status, alarm), and `member replace
/// b b` brings it back with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_kept_out_and_replaced() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec::new(dir.path(), &binary());
    let mut c = LocalCluster::create(spec).await.expect("create");
    c.start_all().expect("start");
    let before = c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let active = before.active.clone().expect("active");
    let standby = if active == "a" { "b" } else { "a" };
    let admin = c.node(&active).expect("active").admin;
    let store = c.node(&active).and_then(|n| n.store).expect("store");
    let load = Load::start(vec![store], "wipe");
    let probe = prober(&c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The coordinator moves Raft leadership to the active node: the leader then has the
    // standby's acknowledgements when its log goes.
    let led = c
        .wait_for(Duration::from_secs(20), "the active node leads Raft", |s| {
            s.leader == s.active
        })
        .await;
    assert!(
        led.is_ok(),
        "a:\n{}\nb:\n{}\nw:\n{}",
        log_of(&c, "a"),
        log_of(&c, "b"),
        log_of(&c, "w")
    );

    c.kill(standby).await.expect("kill");
    std::fs::remove_dir_all(dir.path().join(format!("{standby}-data"))).expect("wipe");
    c.start(standby).expect("restart");
    // The leader had its acknowledgements: the empty log is a revert, kept from openraft.
    let kept_out = c
        .wait_for(
            Duration::from_secs(20),
            "the wiped node reported as having lost its log",
            |s| s.nodes.iter().any(|n| n.id == standby && n.lost_log),
        )
        .await;
    assert!(
        kept_out.is_ok(),
        "not reported: leader log:\n{}\nwiped node log:\n{}",
        log_of(&c, &active),
        log_of(&c, standby)
    );
    // It waits, the others go on: no panic, no failover, and it neither votes nor creates a
    // cluster of its own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    all_alive(&mut c);
    assert!(
        log_of(&c, standby).contains("a leader reaches it"),
        "{}",
        log_of(&c, standby)
    );
    let (code, out, _) = standin(admin, &["status", "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("member-lost-log") || out.contains("\"lost_log\":true"),
        "{out}"
    );

    let (code, out, err) = member_add(&c, admin, &["member", "replace", standby], standby);
    assert_eq!(code, 0, "member replace: {out}{err}");
    let s = c
        .wait_for(Duration::from_secs(60), "the replaced node back in sync", |s| {
            voters(s).len() == 3
                && s.nodes
                    .iter()
                    .any(|n| n.id == standby && n.in_sync && !n.lost_log)
        })
        .await
        .expect("back");
    let reader = c.node(standby).and_then(|n| n.store).expect("store");
    // Reads on a follower see what it applied: wait for it to apply what the leader has.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, lost, unexpected) = load.check(store, "wipe").await;
    println!(
        "wipe/replace: acknowledged={acked} lost={} unexpected={}",
        lost.len(),
        unexpected.len()
    );
    assert!(acked > 100, "the load ran: {acked}");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(unexpected.is_empty(), "keys nobody wrote: {unexpected:?}");
    // The replaced node holds the data too.
    let n: usize = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://{reader}/")).expect("url");
        let mut con = client.get_connection().expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS").arg("wipe-*").query(&mut con).expect("keys");
        keys.len()
    })
    .await
    .expect("join");
    assert!(n >= acked, "the replaced node has {n} of {acked} keys");
    assert_eq!(s.epoch, before.epoch, "a standby's replacement moves no role");
    never_two_actives(probe).await;
    all_alive(&mut c);
}

/// Removing the active node switches over first (one new epoch), then removes it; writes go
/// on against the new active node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_active_node_switches_over_first() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.data_nodes = vec!["a".into(), "b".into(), "c".into()];
    spec.witness = false;
    let mut c = LocalCluster::create(spec).await.expect("create");
    c.start_all().expect("start");
    let before = c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let active = before.active.clone().expect("active");
    let others: Vec<String> = ["a", "b", "c"]
        .iter()
        .filter(|x| **x != active)
        .map(|x| x.to_string())
        .collect();
    let via = c.node(&others[0]).expect("node").admin;
    let stores: Vec<SocketAddr> = others
        .iter()
        .map(|id| c.node(id).and_then(|n| n.store).expect("store"))
        .collect();
    let load = Load::start(stores.clone(), "remove");
    let probe = prober(&c);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (code, out, err) = standin(via, &["member", "remove", &active, "--timeout", "30s"]);
    assert_eq!(code, 0, "member remove {active}: {out}{err}");
    let s = c
        .wait_for(Duration::from_secs(30), "two voters, a new active", |s| {
            voters(s).len() == 2
                && s.active.as_deref().is_some_and(|a| a != active)
                && !s.nodes.iter().any(|n| n.id == active)
        })
        .await
        .expect("removed");
    assert_eq!(s.epoch, before.epoch + 1, "exactly one switchover");
    never_two_actives(probe).await;
    assert!(
        s.membership_warnings.iter().any(|w| w.contains("2 voters")),
        "{:?}",
        s.membership_warnings
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, lost, unexpected) = load.check(stores[0], "remove").await;
    println!(
        "remove active: acknowledged={acked} lost={} unexpected={}",
        lost.len(),
        unexpected.len()
    );
    assert!(acked > 50, "the load ran: {acked}");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(unexpected.is_empty(), "keys nobody wrote: {unexpected:?}");
    // The standby may go too (one data voter is a quorum of one); the last data voter may not.
    let now_active = s.active.clone().expect("active");
    let standby = others
        .iter()
        .find(|o| **o != now_active)
        .expect("standby")
        .clone();
    let via = c.node(&now_active).expect("node").admin;
    let (code, out, err) = standin(via, &["member", "remove", &standby, "--timeout", "30s"]);
    assert_eq!(code, 0, "member remove {standby}: {out}{err}");
    let (code, out, err) = standin(via, &["member", "remove", &now_active, "--timeout", "10s"]);
    assert_eq!(code, 1, "removing the last data voter is refused: {out}{err}");
    assert!(err.contains("last data node"), "{err}");
    all_alive(&mut c);
}
