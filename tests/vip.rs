//! The virtual IP in network namespaces, with real processes, real netlink and real ARP.
//!
//! One bridge in a "switch" namespace; data nodes `a` and `b`, witness `w` and a client each
//! in their own namespace, linked to the bridge by a veth. Every node runs
//! `ip netns exec NS standin node` with the demo service as `[service]` and `[address]` on
//! `eth0`. The test thread enters the client namespace (setns) and talks HTTP to the VIP;
//! a sampler runs `ip -4 -o addr show` in every node namespace every ~15 ms and fails the test
//! if the VIP is ever seen in two at once.
//!
//! Needs root and iproute2 (CI has both); without them it fails, saying so.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

const SUBNET: &str = "10.231.0";
const VIP: &str = "10.231.0.100";
const PORT: u16 = 8080;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_standin")
}

/// Runs `ip ARGS`, failing the test with its stderr if it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_root_and_iproute2() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/vip.rs needs root (network namespaces, netlink, raw sockets); run the suite as root"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "tests/vip.rs needs the `ip` command: install iproute2");
}

struct NodeProc {
    id: &'static str,
    ns: String,
    addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Everything the test created; dropping it kills every process and deletes every namespace.
struct Net {
    dir: tempfile::TempDir,
    switch: String,
    client: String,
    nodes: Vec<NodeProc>,
}

impl Net {
    fn create() -> Net {
        let pid = std::process::id();
        let switch = format!("standin-vip{pid}-sw");
        let client = format!("standin-vip{pid}-cl");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut net = Net {
            dir,
            switch: switch.clone(),
            client: client.clone(),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        let hosts = [("a", 1), ("b", 2), ("w", 3), ("cl", 50)];
        for (id, host) in hosts {
            let ns = format!("standin-vip{pid}-{id}");
            if id != "cl" {
                net.nodes.push(NodeProc {
                    id,
                    ns: ns.clone(),
                    addr: format!("{SUBNET}.{host}"),
                    config: net.dir.path().join(format!("{id}.toml")),
                    log: net.dir.path().join(format!("{id}.log")),
                    child: None,
                });
            }
            ip(&["netns", "add", &ns]);
            let port = format!("p{id}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &switch,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{SUBNET}.{host}/24"),
                "dev",
                "eth0",
            ]);
        }
        net
    }

    fn node(&self, id: &str) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node")
    }

    fn node_mut(&mut self, id: &str) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    fn write_configs(&self) {
        let mut members = String::new();
        for n in &self.nodes {
            let (kind, priority) = match n.id {
                "a" => ("data", 200),
                "b" => ("data", 100),
                _ => ("witness", 0),
            };
            members.push_str(&format!(
                "\n[[member]]\nid = \"{}\"\nkind = \"{kind}\"\npriority = {priority}\naddresses = [\"{}:7100\"]\nadmin = \"{}:7400\"\n",
                n.id, n.addr, n.addr
            ));
        }
        for n in &self.nodes {
            let mut text = format!(
                "[node]\nid = \"{}\"\ndata-dir = \"{}\"\n{members}",
                n.id,
                self.dir.path().join(format!("{}-data", n.id)).display()
            );
            if n.id != "w" {
                text.push_str(&format!(
                    "\n[service]\ncommand = \"{bin}\"\nargs = [\"demo-service\", \"--listen\", \"0.0.0.0:{PORT}\", \"--node\", \"{id}\", \"--admin\", \"{addr}:7400\"]\nstop-grace = \"2s\"\n\n[[check]]\nname = \"http\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{PORT}/health\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n\n[address]\nvip = \"{VIP}/24\"\ninterface = \"eth0\"\ngarp-count = 3\ngarp-interval = \"100ms\"\n",
                    bin = binary(),
                    id = n.id,
                    addr = n.addr,
                ));
            }
            std::fs::write(&n.config, text).expect("write config");
        }
    }

    /// Starts `ip netns exec NS standin node` in its own process group (ip execs the daemon,
    /// so the child's pid is the daemon's).
    fn start(&mut self, id: &str) {
        let n = self.node_mut(id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns, binary(), "node", "--config"])
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("STANDIN_LOG", "info,openraft=off")
            .process_group(0)
            .spawn()
            .expect("start node");
        n.child = Some(child);
    }

    fn daemon_pid(&self, id: &str) -> Pid {
        let pid = self.node(id).child.as_ref().expect("running").id();
        Pid::from_raw(pid as i32)
    }

    /// The MAC of `eth0` in a namespace.
    fn mac(&self, ns: &str) -> String {
        let out = ip(&["-n", ns, "-o", "link", "show", "eth0"]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("link/ether in `ip link` output")
            .to_string()
    }

    /// The client's neighbour entry for the VIP: its MAC, if it has one.
    fn client_arp(&self) -> Option<String> {
        let out = ip(&["-n", &self.client, "neigh", "show", VIP]);
        out.split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_string)
    }

    fn dump_logs(&self) {
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} log (last 40 lines) ----", n.id);
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
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let pg = Pid::from_raw(c.id() as i32);
                let _ = killpg(pg, Signal::SIGCONT);
                let _ = killpg(pg, Signal::SIGKILL);
                let _ = c.wait();
            }
        }
        // Keepers and services run in their own process groups: kill whatever still runs in
        // our namespaces, then delete them.
        let mut all: Vec<String> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        all.push(self.client.clone());
        all.push(self.switch.clone());
        for ns in &all {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for ns in &all {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The pid of the `standin vip-keeper` running in namespace `ns`, if any.
fn keeper_pid(ns: &str) -> Option<Pid> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"vip-keeper"))
        })
        .map(Pid::from_raw)
}

/// Moves the calling thread into network namespace `ns`: its sockets live there from now on.
fn enter(ns: &str) {
    let f = File::open(Path::new("/var/run/netns").join(ns)).expect("open the namespace");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
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
    let addr: SocketAddr = format!("{VIP}:{PORT}").parse().expect("addr");
    let (status, body) = http_get(addr, "/", Duration::from_millis(300))?;
    let (node, _) = standin::demo::harness::parse_active(&body)?;
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

fn status_from(addr: &str) -> Option<standin::api::Status> {
    let (code, body) = http_get(
        format!("{addr}:7400").parse().ok()?,
        "/v1/status",
        Duration::from_millis(800),
    )?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// What the sampler saw: per namespace, every change of "VIP present" with its time.
#[derive(Default)]
struct Samples {
    count: u64,
    overlaps: Vec<String>,
    /// Rounds that saw two holders whose re-read showed the first one gone: a hand-over
    /// between two reads, not an overlap.
    handovers_between_reads: u64,
    changes: Vec<(Instant, &'static str, bool)>,
}

fn start_sampler(
    nodes: Vec<(&'static str, String)>,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Samples>>, std::thread::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let s2 = samples.clone();
    let handle = std::thread::spawn(move || {
        let mut present: Vec<Option<bool>> = vec![None; nodes.len()];
        let needle = format!(" {VIP}/");
        let has_vip = |ns: &str| {
            Command::new("ip")
                .args(["-n", ns, "-4", "-o", "addr", "show"])
                .output()
                .ok()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains(&needle))
        };
        // Bounded: the test stops it, and it never runs past two minutes anyway.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let mut holders = Vec::new();
            for (i, (id, ns)) in nodes.iter().enumerate() {
                let Some(has) = has_vip(ns) else { continue };
                if has {
                    holders.push(i);
                }
                if present[i] != Some(has) {
                    present[i] = Some(has);
                    s2.lock().unwrap().changes.push((Instant::now(), id, has));
                }
            }
            // The namespaces are read one after the other, so two holders in one round may be
            // a hand-over that happened between the reads. Read the first holder again: if it
            // still has the VIP, it had it before and after the other was seen with it.
            let proven = holders.len() > 1 && has_vip(&nodes[holders[0]].1) == Some(true);
            let mut s = s2.lock().unwrap();
            s.count += 1;
            if proven {
                let ids: Vec<&str> = holders.iter().map(|i| nodes[*i].0).collect();
                s.overlaps.push(format!("VIP on {ids:?}"));
            } else if holders.len() > 1 {
                s.handovers_between_reads += 1;
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (samples, handle)
}

#[test]
fn the_vip_follows_the_active_node_and_is_never_on_two() {
    require_root_and_iproute2();
    let test_start = Instant::now();
    let mut net = Net::create();
    net.write_configs();
    let mac_a = net.mac(&net.node("a").ns);
    let mac_b = net.mac(&net.node("b").ns);
    enter(&net.client);

    let stop = Arc::new(AtomicBool::new(false));
    let nodes = net.nodes.iter().map(|n| (n.id, n.ns.clone())).collect();
    let (samples, sampler) = start_sampler(nodes, stop.clone());

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
        format!("{SUBNET}.1:7400").parse().unwrap(),
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
    let keeper = keeper_pid(&net.node("a").ns).expect("a's keeper runs");
    let keeper_killed = Instant::now();
    kill(keeper, Signal::SIGKILL).expect("kill -9 the keeper");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = keeper_pid(&net.node("a").ns).is_some_and(|p| p != keeper);
        if again && who_serves().as_deref() == Some("a") {
            break;
        }
        assert!(Instant::now() < deadline, "a's keeper was not restarted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cleared = samples
        .lock()
        .unwrap()
        .changes
        .iter()
        .any(|(t, id, has)| *id == "a" && !has && *t >= keeper_killed);
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
    if let Some(mut c) = net.node_mut("a").child.take() {
        let _ = c.wait();
    }
    let moved_kill = wait_served_by("b", Duration::from_secs(10));
    eprintln!("kill -9: the client reached b at the VIP {moved_kill:?} after the kill");
    let arp_deadline = Instant::now() + Duration::from_secs(2);
    while net.client_arp().as_deref() != Some(mac_b.as_str()) && Instant::now() < arp_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        net.client_arp().as_deref(),
        Some(mac_b.as_str()),
        "the client's ARP entry for the VIP moved to b's MAC (never flushed)"
    );
    let a_dropped = samples
        .lock()
        .unwrap()
        .changes
        .iter()
        .find(|(t, id, has)| *id == "a" && !has && *t >= killed)
        .map(|(t, ..)| t.duration_since(killed));
    eprintln!("kill -9: the VIP left a's namespace {a_dropped:?} after the kill");
    assert!(a_dropped.is_some(), "the VIP was not seen leaving a");

    // a comes back as a standby (its keeper starts by clearing any stale VIP).
    net.start("a");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = status_from(&format!("{SUBNET}.2")).is_some_and(|s| {
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
    let b_dropped = samples
        .lock()
        .unwrap()
        .changes
        .iter()
        .find(|(t, id, has)| *id == "b" && !has && *t >= stopped)
        .map(|(t, ..)| t.duration_since(stopped));
    eprintln!("SIGSTOP: the VIP left b's frozen namespace {b_dropped:?} after the stop");
    assert!(b_dropped.is_some(), "the VIP was not seen leaving b");
    let arp_deadline = Instant::now() + Duration::from_secs(2);
    while net.client_arp().as_deref() != Some(mac_a.as_str()) && Instant::now() < arp_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        net.client_arp().as_deref(),
        Some(mac_a.as_str()),
        "ARP moved back to a"
    );
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
    let b_retook = samples
        .lock()
        .unwrap()
        .changes
        .iter()
        .any(|(t, id, has)| *id == "b" && *has && *t >= woke);
    assert!(!b_retook, "b took the VIP back after SIGCONT");

    // (4) SIGTERM of the active daemon releases the VIP before it exits.
    kill(net.daemon_pid("a"), Signal::SIGTERM).expect("SIGTERM a");
    let mut child = net.node_mut("a").child.take().expect("a running");
    let exit_deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < exit_deadline, "a did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a_addrs = ip(&["-n", &net.node("a").ns, "-4", "-o", "addr", "show"]);
    assert!(
        !a_addrs.contains(&format!(" {VIP}/")),
        "a exited holding the VIP: {a_addrs}"
    );

    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let s = samples.lock().unwrap();
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
