//! Hosts in network namespaces for the VIP test and benchmark: one Linux bridge in a "switch"
//! namespace and one namespace per host, each linked to the bridge by a veth pair whose host
//! end is `eth0` with a static address in one /24.
//!
//! Everything is named after a tag and this process's id, so concurrent runs never meet.
//! Dropping the [`Lab`] kills every process still running in its namespaces (resuming stopped
//! ones first) and deletes the namespaces, also when the run failed half-way through building
//! it. Needs root and iproute2's `ip`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::lab::harness::HarnessError;

/// Runs `ip ARGS`; its stdout, or an error with its stderr.
pub fn ip(args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HarnessError(format!("cannot run `ip {}`: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(HarnessError(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Root (namespaces, netlink, raw sockets) and the `ip` command, or an error saying which is
/// missing.
pub fn require_root_and_iproute2() -> Result<(), HarnessError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(HarnessError(
            "network namespaces, netlink and raw sockets need root: run as root".into(),
        ));
    }
    if !runs("ip", "-V") {
        return Err(HarnessError(
            "the `ip` command is missing: install iproute2".into(),
        ));
    }
    Ok(())
}

/// Whether `program arg` (e.g. `--version`) runs and succeeds: the program is installed.
pub fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Moves the calling thread into network namespace `ns`: sockets it opens from now on (and
/// threads it starts) live there.
pub fn enter(ns: &str) -> Result<(), HarnessError> {
    let path = Path::new("/var/run/netns").join(ns);
    let f = File::open(&path).map_err(|e| HarnessError(format!("{}: {e}", path.display())))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| HarnessError(format!("setns {ns}: {e}")))
}

/// The pids of every process in namespace `ns`.
pub fn pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `/proc/PID/cmdline` has an argument equal to `arg`.
pub fn cmdline_has(pid: i32, arg: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
}

/// One host: its namespace and its address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub id: String,
    pub ns: String,
    pub addr: Ipv4Addr,
}

pub struct Lab {
    switch: String,
    hosts: Vec<Host>,
    subnet: [u8; 3],
}

impl Lab {
    /// A bridge and one namespace per `(id, last octet)` in `subnet.0/24`.
    pub fn create(tag: &str, subnet: [u8; 3], hosts: &[(&str, u8)]) -> Result<Lab, HarnessError> {
        let pid = std::process::id();
        let mut lab = Lab {
            switch: format!("standin-{tag}{pid}-sw"),
            hosts: Vec::new(),
            subnet,
        };
        ip(&["netns", "add", &lab.switch])?;
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        for (id, octet) in hosts {
            let host = Host {
                id: id.to_string(),
                ns: format!("standin-{tag}{pid}-{id}"),
                addr: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], *octet),
            };
            ip(&["netns", "add", &host.ns])?;
            // Registered at once: from here on, Drop deletes it.
            lab.hosts.push(host.clone());
            let port = format!("p{id}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host.ns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lab.switch,
            ])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &host.ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
        }
        Ok(lab)
    }

    pub fn host(&self, id: &str) -> Result<&Host, HarnessError> {
        self.hosts
            .iter()
            .find(|h| h.id == id)
            .ok_or_else(|| HarnessError(format!("no host {id} in the lab")))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// An address in the lab's /24 that no host has (for a VIP).
    pub fn spare_addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], octet)
    }

    /// `ip netns exec NS`, ready for the program and its arguments.
    pub fn exec(&self, id: &str) -> Result<Command, HarnessError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(id)?.ns]);
        Ok(cmd)
    }

    /// The MAC address of the host's `eth0`.
    pub fn mac(&self, id: &str) -> Result<String, HarnessError> {
        let out = ip(&["-n", &self.host(id)?.ns, "-o", "link", "show", "eth0"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| HarnessError(format!("no link/ether in `ip link`: {out}")))
    }

    /// The MAC address the host's neighbour table has for `addr`, if any.
    pub fn neighbour(&self, id: &str, addr: Ipv4Addr) -> Option<String> {
        let out = ip(&["-n", &self.host(id).ok()?.ns, "neigh", "show", &addr.to_string()]).ok()?;
        out.split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_string)
    }

    /// Whether the host has `addr` on any interface; None if `ip` could not tell.
    pub fn has_addr(&self, id: &str, addr: Ipv4Addr) -> Option<bool> {
        let out = ip(&["-n", &self.host(id).ok()?.ns, "-4", "-o", "addr", "show"]).ok()?;
        Some(out.contains(&format!(" {addr}/")))
    }

    /// Brings the host's `eth0` up or down (down: the host is gone from the network).
    pub fn link(&self, id: &str, up: bool) -> Result<(), HarnessError> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.host(id)?.ns, "link", "set", "eth0", state]).map(|_| ())
    }

    /// Cuts the host off (the bridge stops forwarding on its port) or connects it again. Its
    /// `eth0` keeps its carrier and addresses and everything on it keeps running: a partition
    /// beyond the host's own link, which link monitoring (keepalived's FAULT state) cannot see.
    pub fn cut(&self, id: &str, cut: bool) -> Result<(), HarnessError> {
        self.host(id)?;
        // Bridge port states: 0 disabled, 3 forwarding.
        let state = if cut { "0" } else { "3" };
        let out = Command::new("ip")
            .args(["netns", "exec", &self.switch, "bridge", "link", "set", "dev"])
            .arg(format!("p{id}"))
            .args(["state", state])
            .output()
            .map_err(|e| HarnessError(format!("cannot run `bridge`: {e}")))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "`bridge link set dev p{id} state {state}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Removes `addr/24` from the host's `eth0` if it is there (what a reboot does to an
    /// address a daemon added).
    pub fn forget_addr(&self, id: &str, addr: Ipv4Addr) -> Result<(), HarnessError> {
        if self.has_addr(id, addr) == Some(true) {
            ip(&[
                "-n",
                &self.host(id)?.ns,
                "addr",
                "del",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
        }
        Ok(())
    }

    /// SIGKILL to every process in the host's namespace (resumed first if stopped).
    pub fn kill_all(&self, id: &str) -> Result<(), HarnessError> {
        let ns = &self.host(id)?.ns;
        for pid in pids(ns) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut all: Vec<&str> = self.hosts.iter().map(|h| h.ns.as_str()).collect();
        all.push(&self.switch);
        for ns in &all {
            for pid in pids(ns) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for ns in &all {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// What an [`AddrSampler`] saw.
#[derive(Debug, Default, Clone)]
pub struct AddrSamples {
    /// Rounds of reading every host.
    pub count: u64,
    /// Rounds that proved the address on two hosts at once (see [`AddrSampler`]).
    pub overlaps: Vec<String>,
    /// Rounds that saw two holders whose re-read showed the first one gone: a hand-over
    /// between two reads, not an overlap.
    pub handovers_between_reads: u64,
    /// Every change of "has the address" per host id, with its time.
    pub changes: Vec<(Instant, String, bool)>,
}

/// Reads `ip -4 -o addr show up` in every given namespace, one after the other, every ~5 ms,
/// on a thread of its own, and records who has an address on an interface that is up. Two holders in one round may be a
/// hand-over between the reads, so the first holder is read again: if it still has the
/// address, it had it before and after the other was seen with it, and that is an overlap.
pub struct AddrSampler {
    samples: Arc<Mutex<AddrSamples>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AddrSampler {
    /// Samples `hosts` (id, namespace) for `addr` until stopped, for at most `limit`.
    pub fn start(hosts: Vec<(String, String)>, addr: Ipv4Addr, limit: Duration) -> AddrSampler {
        let samples = Arc::new(Mutex::new(AddrSamples::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (out, halt) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let needle = format!(" {addr}/");
            // Interfaces that are up only: a host whose link is down (a dead machine, in the
            // benchmark) holds nothing anyone can reach.
            let has = |ns: &str| {
                ip(&["-n", ns, "-4", "-o", "addr", "show", "up"])
                    .ok()
                    .map(|text| text.contains(&needle))
            };
            let mut present: Vec<Option<bool>> = vec![None; hosts.len()];
            let deadline = Instant::now() + limit;
            while !halt.load(Ordering::SeqCst) && Instant::now() < deadline {
                let mut holders = Vec::new();
                for (i, (id, ns)) in hosts.iter().enumerate() {
                    let Some(h) = has(ns) else { continue };
                    if h {
                        holders.push(i);
                    }
                    if present[i] != Some(h) {
                        present[i] = Some(h);
                        lock(&out).changes.push((Instant::now(), id.clone(), h));
                    }
                }
                let proven = holders.len() > 1 && has(&hosts[holders[0]].1) == Some(true);
                let mut s = lock(&out);
                s.count += 1;
                if proven {
                    let ids: Vec<&str> = holders.iter().map(|i| hosts[*i].0.as_str()).collect();
                    s.overlaps.push(format!("{addr} on {ids:?}"));
                } else if holders.len() > 1 {
                    s.handovers_between_reads += 1;
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        AddrSampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> AddrSamples {
        lock(&self.samples).clone()
    }

    /// Stops sampling; everything seen.
    pub fn stop(mut self) -> AddrSamples {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AddrSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
