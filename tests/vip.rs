//! The virtual IP in network namespaces, with real processes, real netlink and real ARP.
//!
//! One bridge in a "switch" namespace; data nodes `a` and `b`, witness `w` and a client each
//! in their own namespace, linked to the bridge by a veth. Every node runs
//! `ip netns exec NS standin node` with the demo service as `[service]` and `[address]` on
//! `eth0` (the namespaces are the lab's, `standin::lab::netns`, and the configs the VIP
//! benchmark's, `standin::bench::vip`).
//! The test thread enters the client namespace (setns) and talks HTTP to the VIP; a sampler
//! runs `ip -4 -o addr show` in every node namespace every ~15 ms and fails the test if the
//! VIP is ever seen in two at once.
//!
//! Needs root and iproute2 (CI has both); without them it fails, saying so.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use standin::bench::vip::{standin_configs, ADMIN_PORT, PORT};
use standin::lab::netns::{self, AddrSampler, Lab};

const SUBNET: [u8; 3] = [10, 231, 0];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 100);

mod common;
use common::binary;

/// Everything the test created; dropping it kills every process and deletes every namespace.
struct Net {
    dir: tempfile::TempDir,
    configs: Vec<(String, PathBuf)>,
    children: Vec<(String, Child)>,
    lab: Lab,
}

impl Net {
    fn create() -> Net {
        netns::require_root_and_iproute2().expect("tests/vip.rs needs root and iproute2");
        let dir = tempfile::tempdir().expect("tempdir");
        let lab =
            Lab::create("vip", SUBNET, &[("a", 1), ("b", 2), ("w", 3), ("cl", 50)]).expect("namespaces");
        assert_eq!(lab.spare_addr(100), VIP);
        let members = [("a", Some(200)), ("b", Some(100)), ("w", None)];
        let configs = standin_configs(&lab, dir.path(), &binary(), VIP, &members, "").expect("configs");
        // The data nodes also re-announce the VIP every 300 ms while they hold it
        // (STANDIN_TEST_GARP_REFRESH=0s turns that off: the ARP check below must then fail).
        let refresh = std::env::var("STANDIN_TEST_GARP_REFRESH").unwrap_or_else(|_| "300ms".into());
        for (id, path) in &configs {
            if id != "w" {
                let text = std::fs::read_to_string(path).expect("config");
                let line = format!("interface = \"eth0\"\ngarp-refresh = \"{refresh}\"\n");
                let text = text.replace("interface = \"eth0\"\n", &line);
                assert!(text.contains("garp-refresh"), "{text}");
                std::fs::write(path, text).expect("config");
            }
        }
        Net {
            dir,
            configs,
            children: Vec::new(),
            lab,
        }
    }

    fn ns(&self, id: &str) -> String {
        self.lab.host(id).expect("host").ns.clone()
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// Starts `ip netns exec NS standin node` in its own process group (ip execs the daemon,
    /// so the child's pid is the daemon's).
    fn start(&mut self, id: &str) {
        let config = &self.configs.iter().find(|(c, _)| c == id).expect("config").1;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(id))
            .expect("log file");
        let child = self
            .lab
            .exec(id)
            .expect("host")
            .arg(binary())
            .args(["node", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("STANDIN_LOG", "info,openraft=off")
            .process_group(0)
            .spawn()
            .expect("start node");
        self.children.push((id.to_string(), child));
    }

    /// The daemon's child handle, taken out (it no longer counts as running).
    fn take(&mut self, id: &str) -> Option<Child> {
        let i = self.children.iter().position(|(c, _)| c == id)?;
        Some(self.children.remove(i).1)
    }

    fn daemon_pid(&self, id: &str) -> Pid {
        let (_, c) = self.children.iter().find(|(c, _)| c == id).expect("running");
        Pid::from_raw(c.id() as i32)
    }

    /// The client's neighbour entry for the VIP: its MAC, if it has one.
    fn client_arp(&self) -> Option<String> {
        self.lab.neighbour("cl", VIP)
    }

    /// Waits until the client's ARP entry for the VIP is `mac`, at most `timeout`; the time it
    /// took. Fails the test with `what` otherwise.
    fn wait_client_arp(&self, mac: &str, timeout: Duration, what: &str) -> Duration {
        let start = Instant::now();
        while self.client_arp().as_deref() != Some(mac) && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.client_arp().as_deref(), Some(mac), "{what}");
        start.elapsed()
    }

    fn dump_logs(&self) {
        for (id, _) in &self.configs {
            let log = std::fs::read_to_string(self.log(id)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {id} log (last 40 lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for (_, c) in &mut self.children {
            let pg = Pid::from_raw(c.id() as i32);
            let _ = killpg(pg, Signal::SIGCONT);
            let _ = killpg(pg, Signal::SIGKILL);
            let _ = c.wait();
        }
        // Keepers and services run in their own process groups: the lab, dropped next, kills
        // whatever still runs in its namespaces and deletes them.
    }
}

/// The pid of the `standin vip-keeper` running in namespace `ns`, if any.
fn keeper_pid(ns: &str) -> Option<Pid> {
    netns::pids(ns)
        .into_iter()
        .find(|p| netns::cmdline_has(*p, "vip-keeper"))
        .map(Pid::from_raw)
}

/// One HTTP/1.0 GET; the status code and body, or None on any failure.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Asks the service behind the VIP who it is: `Some(node)` if it answered as active.
fn who_serves() -> Option<String> {
    let addr = SocketAddr::from((VIP, PORT));
    let (status, body) = http_get(addr, "/", Duration::from_millis(300))?;
    let (node, _) = standin::lab::harness::parse_active(&body)?;
    (status == 200).then_some(node)
}

/// Polls the VIP until `want` answers as active; the time it took.
fn wait_served_by(want: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        last = who_serves();
        if last.as_deref() == Some(want) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{want} did not answer at the VIP within {timeout:?}; last answer: {last:?}");
}

fn status_from(addr: &str) -> Option<standin::status::Status> {
    let (code, body) = http_get(
        format!("{addr}:{ADMIN_PORT}").parse().ok()?,
        "/v1/status",
        Duration::from_millis(800),
    )?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn the_vip_follows_the_active_node_and_is_never_on_two() {
    let test_start = Instant::now();
    let mut net = Net::create();
    let mac_a = net.lab.mac("a").expect("a's MAC");
    let mac_b = net.lab.mac("b").expect("b's MAC");
    netns::enter(&net.ns("cl")).expect("enter the client namespace");

    let nodes = ["a", "b", "w"]
        .iter()
        .map(|id| (id.to_string(), net.ns(id)))
        .collect();
    // Bounded: the test stops it, and it never runs past two minutes anyway.
    let sampler = AddrSampler::start(nodes, VIP, Duration::from_secs(120));

    for id in ["a", "b", "w"] {
        net.start(id);
    }

    // (1) The highest-priority node is active and reachable at the VIP; the client's ARP entry
    // for the VIP is a's MAC, and a reports the VIP on /v1/lease.
    let took = wait_served_by("a", Duration::from_secs(30));
    eprintln!("a serves at the VIP {took:?} after start");
    assert_eq!(
        net.client_arp().as_deref(),
        Some(mac_a.as_str()),
        "client ARP for the VIP"
    );
    let (_, lease) = http_get(
        SocketAddr::from((net.lab.host("a").unwrap().addr, ADMIN_PORT)),
        "/v1/lease",
        Duration::from_secs(1),
    )
    .expect("a's /v1/lease");
    let lease: standin::api::LeaseStatus = serde_json::from_str(&lease).expect("lease json");
    assert_eq!(
        lease.vip.as_deref(),
        Some(format!("{VIP}/24").as_str()),
        "{lease:?}"
    );

    // A keeper killed with -9 is started again by its daemon; the new one clears the VIP it
    // finds and takes it again on the next hold.
    let keeper = keeper_pid(&net.ns("a")).expect("a's keeper runs");
    let keeper_killed = Instant::now();
    kill(keeper, Signal::SIGKILL).expect("kill -9 the keeper");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = keeper_pid(&net.ns("a")).is_some_and(|p| p != keeper);
        if again && who_serves().as_deref() == Some("a") {
            break;
        }
        assert!(Instant::now() < deadline, "a's keeper was not restarted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cleared = sampler
        .snapshot()
        .changes
        .iter()
        .any(|(t, id, has)| id == "a" && !has && *t >= keeper_killed);
    eprintln!(
        "keeper killed: restarted in {:?}, VIP cleared in between: {cleared}",
        keeper_killed.elapsed()
    );
    // Let the client's ARP entry settle, so that a change later is the announcement's doing.
    std::thread::sleep(Duration::from_millis(300));

    // (2) kill -9 of a's daemon (its process group; the keeper has its own): the keeper sees
    // stdin close and drops the VIP; b takes it and announces it.
    let killed = Instant::now();
    killpg(net.daemon_pid("a"), Signal::SIGKILL).expect("kill -9 a");
    if let Some(mut c) = net.take("a") {
        let _ = c.wait();
    }
    let moved_kill = wait_served_by("b", Duration::from_secs(10));
    eprintln!("kill -9: the client reached b at the VIP {moved_kill:?} after the kill");
    net.wait_client_arp(
        &mac_b,
        Duration::from_secs(2),
        "the client's ARP entry for the VIP moved to b's MAC (never flushed)",
    );
    let a_dropped = sampler
        .snapshot()
        .changes
        .iter()
        .find(|(t, id, has)| id == "a" && !has && *t >= killed)
        .map(|(t, ..)| t.duration_since(killed));
    eprintln!("kill -9: the VIP left a's namespace {a_dropped:?} after the kill");
    assert!(a_dropped.is_some(), "the VIP was not seen leaving a");

    // a comes back as a standby (its keeper starts by clearing any stale VIP).
    net.start("a");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = status_from(&net.lab.host("b").unwrap().addr.to_string()).is_some_and(|s| {
            s.active.as_deref() == Some("b")
                && s.nodes
                    .iter()
                    .any(|n| n.id == "a" && n.role == "standby" && n.healthy && n.in_sync)
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "a did not rejoin as a healthy standby");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(who_serves().as_deref(), Some("b"), "b still serves at the VIP");

    // (3) SIGSTOP of b's daemon beyond the failure timeout: b's keeper drops the VIP when its
    // hold runs out; a takes it. After SIGCONT, b does not take it back.
    let stopped = Instant::now();
    kill(net.daemon_pid("b"), Signal::SIGSTOP).expect("SIGSTOP b");
    let moved_stop = wait_served_by("a", Duration::from_secs(10));
    eprintln!("SIGSTOP: the client reached a at the VIP {moved_stop:?} after the stop");
    let b_dropped = sampler
        .snapshot()
        .changes
        .iter()
        .find(|(t, id, has)| id == "b" && !has && *t >= stopped)
        .map(|(t, ..)| t.duration_since(stopped));
    eprintln!("SIGSTOP: the VIP left b's frozen namespace {b_dropped:?} after the stop");
    assert!(b_dropped.is_some(), "the VIP was not seen leaving b");
    net.wait_client_arp(&mac_a, Duration::from_secs(2), "ARP moved back to a");
    // `garp-refresh`: a client entry that went wrong meanwhile (here: set to b's MAC) is put
    // right by the holder's next announcement, with no traffic from the client. The burst of
    // 3 announcements 100 ms apart that came with the takeover is over after 200 ms: wait past
    // it, so that only a refresh can do it. (Linux may ignore an update within `locktime`, 1 s,
    // of the entry's last change: allow for that.)
    std::thread::sleep(Duration::from_millis(600));
    netns::ip(&[
        "-n",
        &net.ns("cl"),
        "neigh",
        "replace",
        &VIP.to_string(),
        "lladdr",
        &mac_b,
        "dev",
        "eth0",
        "nud",
        "reachable",
    ])
    .expect("set a wrong ARP entry");
    let corrected = net.wait_client_arp(
        &mac_a,
        Duration::from_secs(4),
        "the refresh announcements did not correct the client's ARP entry",
    );
    eprintln!("garp-refresh: a wrong ARP entry was corrected {corrected:?} after it was set");
    std::thread::sleep(Duration::from_millis(500));
    let woke = Instant::now();
    kill(net.daemon_pid("b"), Signal::SIGCONT).expect("SIGCONT b");
    let watch_until = Instant::now() + Duration::from_secs(2);
    let mut answers = 0;
    while Instant::now() < watch_until {
        if let Some(node) = who_serves() {
            assert_eq!(node, "a", "after SIGCONT, b answered at the VIP");
            answers += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answers > 0, "nobody answered at the VIP after SIGCONT");
    let b_retook = sampler
        .snapshot()
        .changes
        .iter()
        .any(|(t, id, has)| id == "b" && *has && *t >= woke);
    assert!(!b_retook, "b took the VIP back after SIGCONT");

    // (4) SIGTERM of the active daemon releases the VIP before it exits.
    kill(net.daemon_pid("a"), Signal::SIGTERM).expect("SIGTERM a");
    let mut child = net.take("a").expect("a running");
    let exit_deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < exit_deadline, "a did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        net.lab.has_addr("a", VIP),
        Some(false),
        "a exited holding the VIP"
    );

    let s = sampler.stop();
    eprintln!(
        "sampler: {} samples of every node namespace, {} with the VIP on two nodes ({} hand-overs between two reads); test took {:?}",
        s.count,
        s.overlaps.len(),
        s.handovers_between_reads,
        test_start.elapsed()
    );
    assert!(s.count > 100, "too few samples: {}", s.count);
    assert!(
        s.overlaps.is_empty(),
        "VIP on two nodes at once: {:?}",
        s.overlaps
    );
}

/// `standin bench failover --via vip` (standin's rows only: keepalived is not installed by CI)
/// runs end to end, and its counts of what must never happen are zero.
#[test]
fn the_vip_failover_benchmark_runs_and_never_sees_two_holders() {
    netns::require_root_and_iproute2().expect("root and iproute2");
    let child = std::process::Command::new(binary())
        .args([
            "bench",
            "failover",
            "--via",
            "vip",
            "--without-keepalived",
            "--trials",
            "2",
            "--faults",
            "node-killed,node-isolated,switchover",
            "--json",
        ])
        .env("STANDIN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the benchmark");
    let pid = child.id();
    let out = child.wait_with_output().expect("the benchmark's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the benchmark failed: {stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in rows {
        eprintln!(
            "{} {}: p50 {} ms, max {} ms, {} VIP samples",
            r["system"], r["fault"], r["p50_ms"], r["max_ms"], r["vip_samples"]
        );
        assert_eq!(r["system"], "standin", "{r}");
        assert_eq!(r["trials"], 2, "{r}");
        assert_eq!(r["failed"], 0, "every trial moved the VIP: {r}");
        assert_eq!(r["samples_ms"].as_array().map(Vec::len), Some(2), "{r}");
        assert_eq!(r["false_failovers"], 0, "{r}");
        assert_eq!(r["old_node_answers_after_move"], 0, "{r}");
        assert_eq!(r["vip_on_two_nodes"], 0, "{r}");
        assert_eq!(r["took_back_on_recovery"], 0, "{r}");
        assert!(r["vip_samples"].as_u64().is_some_and(|n| n > 10), "{r}");
    }
    // Nothing of the benchmark's is left behind.
    let left = netns::ip(&["netns", "list"]).expect("ip netns list");
    assert!(
        !left.contains(&format!("standin-bv{pid}-")),
        "namespaces left behind: {left}"
    );
}
