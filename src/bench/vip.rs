//! `standin bench failover --via vip` (BENCHMARKS.md §1 through the virtual IP), with
//! keepalived from Debian's package run the same way beside it.
//!
//! Each system gets its own [`Lab`]: hosts in network namespaces on one bridge, a client
//! namespace, and the VIP `.100` of the lab's /24. The benchmark's own thread enters the client
//! namespace; its client opens a new TCP connection to `VIP:8080` every 10 ms (each request
//! on its own, so a slow one never delays the next) and records which node answered.
//!
//! - standin: data nodes `a` (priority 200) and `b` (100) and witness `w`, each
//!   `standin node` with the demo service, an HTTP check and `[address]` at defaults.
//! - keepalived: `a` and `b`, one VRRP instance each (`state BACKUP`, `nopreempt`, priorities
//!   200 and 100: like standin, no automatic failback), and a fixed-answer HTTP backend on each.
//!   Run twice: at its defaults (VRRPv2, 1 s adverts) and at its fastest (VRRPv3, 10 ms
//!   adverts).
//!
//! Faults, on whichever node serves at the VIP:
//! - node killed: SIGKILL to every process in the node's namespace and its link down (the
//!   machine is gone: nothing of it can release the VIP or answer ARP). Recovery: the address
//!   the daemon had added is gone (as after a reboot), link up, daemons started again.
//! - node frozen: SIGSTOP of the daemon; SIGCONT as recovery.
//! - node isolated: the node's port on the bridge down, so it is cut off from every other
//!   host while it and its `eth0` keep running (a partition); the port up again as recovery.
//! - service killed (standin only: keepalived needs a track script for this), planned
//!   switchover (standin only).
//!
//! Interruption = from the fault (or the last answer of the old node after it) to the first
//! answer of the new one. Also counted: answers of the old node after the new one had
//! answered in the same trial (two nodes serving at the VIP), and moves nobody caused.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{percentile, print_json, progress, Fault, Interruptions, Profile, Scratch, Spawned};
use crate::api::client::request;
use crate::lab::harness::{best_status, is_ready, wait_status, HarnessError};
use crate::lab::netns::{self, Lab};

/// The service port on every node (the demo service, or the fixed-answer backend).
pub const PORT: u16 = 8080;
/// The admin API port of `standin node` in the lab.
pub const ADMIN_PORT: u16 = 7400;
/// The Raft/heartbeat port of `standin node` in the lab.
pub const PEER_PORT: u16 = 7100;

/// One member of a standin cluster in a lab: its id and, for a data node, its priority
/// (`None`: a witness).
pub type Member<'a> = (&'a str, Option<u32>);

/// Writes `standin node` configs for `members`, one per host of `lab` with the same id, into
/// `dir`: data nodes run the demo service on `0.0.0.0:PORT` with an HTTP check and hold `vip`
/// on `eth0`; `extra` (e.g. a `[timing]` section) goes into every config; everything else is
/// at its default. Returns each member's config path.
pub fn standin_configs(
    lab: &Lab,
    dir: &Path,
    binary: &Path,
    vip: Ipv4Addr,
    members: &[Member<'_>],
    extra: &str,
) -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let mut peers = String::new();
    for (id, priority) in members {
        let addr = lab.host(id)?.addr;
        let (kind, priority) = match priority {
            Some(p) => ("data", *p),
            None => ("witness", 0),
        };
        peers.push_str(&format!(
            "\n[[member]]\nid = \"{id}\"\nkind = \"{kind}\"\npriority = {priority}\n\
             addresses = [\"{addr}:{PEER_PORT}\"]\nadmin = \"{addr}:{ADMIN_PORT}\"\n\
             service-address = \"{addr}:{PORT}\"\n"
        ));
    }
    // Mutual TLS between the members, as in production, with a CA made for the lab.
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        crate::tls::init_ca(&certs, "standin VIP lab CA", Duration::from_secs(7 * 86_400))
            .map_err(|e| HarnessError(format!("lab CA: {e}")))?;
    }
    let mut out = Vec::new();
    for (id, priority) in members {
        let addr = lab.host(id)?.addr;
        if !certs.join(format!("{id}.pem")).exists() {
            crate::tls::issue_files(&certs, &certs, id, &[], Duration::from_secs(7 * 86_400))
                .map_err(|e| HarnessError(format!("certificate of {id}: {e}")))?;
        }
        // The admin API listens on the lab's own addresses with no token: open on purpose,
        // in network namespaces nothing else reaches.
        let mut text = format!(
            "[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n[api]\ninsecure-open = true\n\n\
             [node]\nid = \"{id}\"\ndata-dir = \"{}\"\n{peers}",
            dir.join(format!("{id}-data")).display(),
            ca = certs.join("ca.pem").display(),
            cert = certs.join(format!("{id}.pem")).display(),
            key = certs.join(format!("{id}.key")).display(),
        );
        if priority.is_some() {
            text.push_str(&format!(
                "\n[service]\ncommand = \"{bin}\"\n\
                 args = [\"demo-service\", \"--listen\", \"0.0.0.0:{PORT}\", \"--node\", \"{id}\", \"--admin\", \"{addr}:{ADMIN_PORT}\"]\n\
                 stop-grace = \"2s\"\n\n\
                 [[check]]\nname = \"http\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{PORT}/health\"\n\
                 interval = \"100ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n\n\
                 [address]\nvip = \"{vip}/24\"\ninterface = \"eth0\"\n",
                bin = binary.display(),
            ));
        }
        text.push_str(extra);
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, text).map_err(|e| HarnessError(format!("{}: {e}", path.display())))?;
        out.push((id.to_string(), path));
    }
    Ok(out)
}

/// Which system a row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Standin,
    /// keepalived at its defaults: VRRPv2, 1 s adverts.
    KeepalivedDefaults,
    /// keepalived at its fastest: VRRPv3, 10 ms adverts.
    KeepalivedFast,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Standin => "standin",
            System::KeepalivedDefaults => "keepalived (defaults: VRRPv2, 1 s adverts)",
            System::KeepalivedFast => "keepalived (VRRPv3, 10 ms adverts)",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VipRow {
    pub system: System,
    /// standin's timings (standin's rows only).
    pub profile: Option<Profile>,
    pub fault: Fault,
    /// `failed`: trials where no other node answered at the VIP within 15 s.
    #[serde(flatten)]
    pub interruptions: Interruptions,
    /// Moves nobody caused: for standin, promotions in the replicated history beyond one at
    /// bootstrap and one per trial; for keepalived, a steady window before a fault in which
    /// two nodes answered.
    pub false_failovers: usize,
    /// Answers of the old node after the new one had answered, before the old node was
    /// restarted or resumed: two nodes serving at the VIP (must be 0).
    pub old_node_answers_after_move: usize,
    /// Rounds of reading `ip addr` in every data node's namespace during the trials, and how
    /// many of them proved the VIP on two nodes at once (must be 0).
    pub vip_samples: u64,
    pub vip_on_two_nodes: usize,
    /// Trials after which the restarted or resumed old node served at the VIP again (standin:
    /// it must come back as a standby).
    pub took_back_on_recovery: usize,
    /// After recovery, the time until the VIP answered again, for trials where the recovery
    /// itself cut the client off (the resumed or restarted node took the VIP back).
    pub recovery_outages_ms: Vec<f64>,
}

/// One successful answer at the VIP.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    node: String,
    epoch: Option<u64>,
}

/// The client: a request to `target` every `interval`, each on its own connection and task.
struct VipClient {
    answers: Arc<Mutex<Vec<Answer>>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// `node=a epoch=3 role=active` (demo service) or `node=a` (fixed-answer backend); a node that
/// says it is not active does not count as an answer.
fn parse_answer(body: &str) -> Option<(String, Option<u64>)> {
    let (node, epoch, role) = crate::lab::harness::answer_fields(body);
    if role.is_some_and(|r| r != "active") {
        return None;
    }
    Some((node?, epoch))
}

impl VipClient {
    fn start(target: SocketAddr, interval: Duration) -> VipClient {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let (log, stop) = (answers.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let addr = target.to_string();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let (log, addr, stop) = (log.clone(), addr.clone(), stop.clone());
                // At most timeout/interval = 30 requests in flight.
                tokio::spawn(async move {
                    let r = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = request(&addr, Method::GET, "/", None, Duration::from_millis(300)) => r,
                    };
                    let Ok(r) = r else { return };
                    if r.status != 200 {
                        return;
                    }
                    if let Some((node, epoch)) = parse_answer(&r.body) {
                        let at = Instant::now();
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Answer { at, node, epoch });
                    }
                });
            }
        });
        VipClient {
            answers,
            cancel,
            task,
        }
    }

    fn since(&self, from: Instant) -> Vec<Answer> {
        let log = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().filter(|a| a.at >= from).cloned().collect()
    }

    /// Waits for the first answer after `fault` from a node other than `old` (and, when the
    /// answers carry epochs, with an epoch above `old_epoch`). Returns the interruption: from
    /// `max(fault, last answer of old before it)` to that answer, and the answer's time.
    async fn wait_moved(
        &self,
        old: &str,
        old_epoch: Option<u64>,
        fault: Instant,
        timeout: Duration,
    ) -> Option<(Duration, Instant)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let answers = self.since(fault);
            let moved = |a: &Answer| a.node != old && a.epoch.zip(old_epoch).is_none_or(|(e, o)| e > o);
            if let Some(new) = answers.iter().filter(|a| moved(a)).map(|a| a.at).min() {
                let last_old = answers
                    .iter()
                    .filter(|a| a.node == old && a.at < new)
                    .map(|a| a.at)
                    .max()
                    .unwrap_or(fault);
                return Some((new.duration_since(last_old), new));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Waits until only one node has answered for `steady`; that node. None after `timeout`.
    async fn wait_steady(&self, steady: Duration, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let now = Instant::now();
            if let Some(from) = now.checked_sub(steady) {
                let window = self.since(from);
                let first = window.first().map(|a| a.node.clone());
                // A full window: answers from its start to now, all from one node.
                let covered = window
                    .first()
                    .is_some_and(|a| a.at <= from + Duration::from_millis(50))
                    && window
                        .last()
                        .is_some_and(|a| now.duration_since(a.at) < Duration::from_millis(50));
                if covered && window.iter().all(|a| Some(&a.node) == first.as_ref()) {
                    return first;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Runs the benchmark through the VIP and prints its table (or JSON). Blocking: it runs on a
/// thread of its own that enters the labs' client namespaces.
pub fn failover(
    trials: usize,
    faults: Vec<Fault>,
    keepalived: bool,
    profile: Profile,
    json: bool,
) -> Result<(), HarnessError> {
    netns::require_root_and_iproute2()?;
    if keepalived && !netns::runs("keepalived", "--version") {
        return Err(HarnessError(
            "keepalived is not installed (apt-get install keepalived), or pass --without-keepalived".into(),
        ));
    }
    let binary = std::env::current_exe().map_err(|e| HarnessError(e.to_string()))?;
    let faults2 = faults.clone();
    let worker = std::thread::spawn(move || -> Result<Vec<VipRow>, HarnessError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HarnessError(format!("runtime: {e}")))?;
        rt.block_on(super::until_interrupted(async move {
            let scratch = Scratch::new("standin-bench-vip")?;
            let mut rows = Vec::new();
            for fault in &faults2 {
                rows.push(standin_fault(&binary, scratch.path(), *fault, trials, profile).await?);
            }
            if keepalived {
                for system in [System::KeepalivedDefaults, System::KeepalivedFast] {
                    for fault in faults2
                        .iter()
                        .filter(|f| matches!(f, Fault::NodeKilled | Fault::NodeFrozen | Fault::NodeIsolated))
                    {
                        rows.push(keepalived_fault(&binary, scratch.path(), system, *fault, trials).await?);
                    }
                }
            }
            Ok(rows)
        }))
    });
    let rows = worker
        .join()
        .map_err(|_| HarnessError("the benchmark thread panicked".into()))??;
    print(&rows, &faults, keepalived, json)
}

fn print(rows: &[VipRow], faults: &[Fault], keepalived: bool, json: bool) -> Result<(), HarnessError> {
    if json {
        print_json(rows)?;
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "system",
        "fault",
        "trials",
        "failed",
        "p50",
        "p99",
        "max",
        "false failovers",
        "old node answered after move",
        "VIP on two nodes",
        "old node took VIP back",
    ]);
    for r in rows {
        let system = match r.profile {
            Some(Profile::Fast) => format!("{} (fast timings)", r.system.name()),
            Some(Profile::Default) => format!("{} (defaults)", r.system.name()),
            None => r.system.name().to_string(),
        };
        let mut row = vec![system, r.fault.name().to_string()];
        row.extend(r.interruptions.cells());
        row.extend([
            r.false_failovers.to_string(),
            r.old_node_answers_after_move.to_string(),
            format!("{} of {} samples", r.vip_on_two_nodes, r.vip_samples),
            r.took_back_on_recovery.to_string(),
        ]);
        t.add_row(row);
    }
    println!("{t}");
    println!(
        "client in its own network namespace: a new connection to the VIP every 10 ms; interruption = \
         fault (or last answer of the old node) -> first answer of the new one"
    );
    println!("node killed = SIGKILL to everything in the node's namespace and its link down");
    if rows.iter().any(|r| r.fault == Fault::NodeIsolated) {
        println!(
            "node isolated = the bridge stops forwarding on the node's port; it keeps running, carrier up"
        );
    }
    if let Some(p) = rows.iter().find_map(|r| r.profile) {
        println!("standin timings: {}", p.name());
    }
    for r in rows.iter().filter(|r| !r.recovery_outages_ms.is_empty()) {
        let mut o = r.recovery_outages_ms.clone();
        o.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{} / {}: the recovery itself cut the client off in {} trial(s) (median {:.0} ms, max {:.0} ms)",
            r.system.name(),
            r.fault.name(),
            o.len(),
            percentile(&o, 50.0).unwrap_or(0.0),
            o.last().copied().unwrap_or(0.0)
        );
    }
    if keepalived
        && faults
            .iter()
            .any(|f| matches!(f, Fault::ServiceKilled | Fault::Switchover))
    {
        println!(
            "keepalived rows: node killed, frozen and isolated only (a service check needs a track script; no planned switchover)"
        );
    }
    Ok(())
}

/// The standin side of one fault: a fresh lab and cluster, `trials` faults.
async fn standin_fault(
    binary: &Path,
    scratch: &Path,
    fault: Fault,
    trials: usize,
    profile: Profile,
) -> Result<VipRow, HarnessError> {
    const MEMBERS: [Member<'static>; 3] = [("a", Some(200)), ("b", Some(100)), ("w", None)];
    let lab = Lab::create("bv", [10, 232, 0], &[("a", 1), ("b", 2), ("w", 3), ("cl", 50)])?;
    netns::enter(&lab.host("cl")?.ns)?;
    let vip = lab.spare_addr(100);
    let dir = scratch.join(format!("standin-{fault:?}"));
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError(format!("{}: {e}", dir.display())))?;
    let configs = standin_configs(&lab, &dir, binary, vip, &MEMBERS, profile.toml())?;
    let admins: Vec<SocketAddr> = lab
        .hosts()
        .iter()
        .filter(|h| h.id != "cl")
        .map(|h| SocketAddr::from((h.addr, ADMIN_PORT)))
        .collect();
    let start = |id: &str| -> Result<Spawned, HarnessError> {
        let config = &configs
            .iter()
            .find(|(c, _)| c == id)
            .ok_or_else(|| HarnessError(format!("no config for {id}")))?
            .1;
        let mut cmd = lab.exec(id)?;
        cmd.arg(binary)
            .args(["node", "--config"])
            .arg(config)
            .env("STANDIN_LOG", "info,openraft=off");
        Spawned::start(
            &mut cmd,
            &dir.join(format!("{id}.log")),
            &format!("standin node {id}"),
        )
    };
    let mut daemons: Vec<(String, Option<Spawned>)> = Vec::new();
    for (id, _) in MEMBERS {
        daemons.push((id.to_string(), Some(start(id)?)));
    }
    let status = || best_status(&admins);
    wait_status(
        status,
        Duration::from_secs(60),
        "an active node and healthy standbys",
        is_ready,
    )
    .await
    .map_err(|e| with_logs(e, &dir))?;
    let client = start_client(vip, Duration::from_millis(300), &dir).await?;
    let sampler = sample_vip(&lab, &["a", "b"], vip)?;

    let bar = progress(trials, &format!("{} / {}", System::Standin.name(), fault.name()));
    let (mut tally, mut quiet_window) = (Tally::default(), 0);
    for _ in 0..trials {
        bar.inc(1);
        let before = wait_status(status, Duration::from_secs(30), "a ready cluster", is_ready).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let steady = wait_status(status, Duration::from_secs(30), "a ready cluster", is_ready).await?;
        if steady.epoch != before.epoch {
            quiet_window += 1;
        }
        let old = steady
            .active
            .clone()
            .ok_or_else(|| HarnessError("no active node".into()))?;
        let old_admin = SocketAddr::from((lab.host(&old)?.addr, ADMIN_PORT)).to_string();
        let daemon_pid = |daemons: &Vec<(String, Option<Spawned>)>| {
            daemons
                .iter()
                .find(|(id, _)| *id == old)
                .and_then(|(_, s)| s.as_ref())
                .map(|s| Pid::from_raw(s.pid() as i32))
        };
        let t0 = Instant::now();
        match fault {
            Fault::NodeKilled => {
                lab.kill_all(&old)?;
                lab.link(&old, false)?;
                if let Some((_, s)) = daemons.iter_mut().find(|(id, _)| *id == old) {
                    s.take();
                }
            }
            Fault::ServiceKilled => {
                let lease = request(&old_admin, Method::GET, "/v1/lease", None, Duration::from_secs(1))
                    .await
                    .ok()
                    .and_then(|r| serde_json::from_str::<crate::api::LeaseStatus>(&r.body).ok());
                let pid = lease
                    .and_then(|l| l.service_pid)
                    .ok_or_else(|| HarnessError(format!("no service pid for {old}")))?;
                killpg(Pid::from_raw(pid as i32), Signal::SIGKILL)
                    .map_err(|e| HarnessError(format!("kill the service: {e}")))?;
            }
            Fault::NodeFrozen => {
                let pid =
                    daemon_pid(&daemons).ok_or_else(|| HarnessError(format!("{old} is not running")))?;
                kill(pid, Signal::SIGSTOP).map_err(|e| HarnessError(format!("SIGSTOP {old}: {e}")))?;
            }
            Fault::NodeIsolated => lab.cut(&old, true)?,
            Fault::Switchover => super::request_switchover(&old_admin).await?,
        }
        let moved = client
            .wait_moved(&old, Some(steady.epoch), t0, Duration::from_secs(15))
            .await;
        tally.moved(&client, &old, moved);
        // Recover: the old node comes back as a standby.
        let recovered = Instant::now();
        match fault {
            Fault::NodeKilled => {
                lab.forget_addr(&old, vip)?;
                lab.link(&old, true)?;
                let s = start(&old)?;
                if let Some((_, slot)) = daemons.iter_mut().find(|(id, _)| *id == old) {
                    *slot = Some(s);
                }
            }
            Fault::NodeFrozen => {
                if let Some(pid) = daemon_pid(&daemons) {
                    let _ = kill(pid, Signal::SIGCONT);
                }
            }
            Fault::NodeIsolated => lab.cut(&old, false)?,
            Fault::ServiceKilled | Fault::Switchover => {}
        }
        wait_status(
            status,
            Duration::from_secs(60),
            "the old active back as a healthy standby",
            |s| {
                s.epoch > steady.epoch
                    && s.nodes
                        .iter()
                        .any(|n| n.id == old && n.role == "standby" && n.healthy && n.in_sync)
            },
        )
        .await
        .map_err(|e| with_logs(e, &dir))?;
        tally.recovered(
            after_recovery(&client, recovered, Duration::from_millis(500), &dir).await?,
            &old,
        );
    }
    bar.finish_and_clear();
    let data_admin = SocketAddr::from((lab.host("a")?.addr, ADMIN_PORT)).to_string();
    let events = request(
        &data_admin,
        Method::GET,
        // The whole history (the default is the newest 100).
        "/v1/events?limit=2000",
        None,
        Duration::from_secs(2),
    )
    .await
    .ok()
    .and_then(|r| serde_json::from_str(&r.body).ok());
    let false_failovers = super::extra_promotions(events, tally.samples.len(), quiet_window);
    client.stop().await;
    let seen = sampler.stop();
    drop(daemons);
    drop(lab);
    Ok(tally.row(
        System::Standin,
        Some(profile),
        fault,
        trials,
        false_failovers,
        seen,
    ))
}

/// What the trials of one row add up to.
#[derive(Default)]
struct Tally {
    samples: Vec<f64>,
    failed: usize,
    after_move: usize,
    recovery_outages: Vec<f64>,
    took_back: usize,
}

impl Tally {
    /// The move a trial waited for (None: it did not come): its interruption, and how often
    /// the old node answered since the new one did.
    fn moved(&mut self, client: &VipClient, old: &str, moved: Option<(Duration, Instant)>) {
        match moved {
            Some((d, new_at)) => {
                self.samples.push(d.as_secs_f64() * 1000.0);
                self.after_move += client.since(new_at).iter().filter(|a| a.node == old).count();
            }
            None => self.failed += 1,
        }
    }

    /// What [`after_recovery`] found.
    fn recovered(&mut self, (outage, serving): (Option<f64>, String), old: &str) {
        self.recovery_outages.extend(outage);
        self.took_back += usize::from(serving == old);
    }

    fn row(
        self,
        system: System,
        profile: Option<Profile>,
        fault: Fault,
        trials: usize,
        false_failovers: usize,
        seen: netns::AddrSamples,
    ) -> VipRow {
        VipRow {
            system,
            profile,
            fault,
            interruptions: Interruptions::new(trials, self.failed, self.samples),
            false_failovers,
            old_node_answers_after_move: self.after_move,
            vip_samples: seen.count,
            vip_on_two_nodes: seen.overlaps.len(),
            took_back_on_recovery: self.took_back,
            recovery_outages_ms: self.recovery_outages,
        }
    }
}

/// Starts the client of the VIP and waits until one node has answered for `steady`.
async fn start_client(vip: Ipv4Addr, steady: Duration, dir: &Path) -> Result<VipClient, HarnessError> {
    let client = VipClient::start(SocketAddr::from((vip, PORT)), Duration::from_millis(10));
    match client.wait_steady(steady, Duration::from_secs(30)).await {
        Some(_) => Ok(client),
        None => Err(with_logs(
            HarnessError(format!("nobody answered at the VIP {vip}:{PORT}")),
            dir,
        )),
    }
}

/// After a recovery (restart or SIGCONT of the old node at `recovered`): waits `settle`, then
/// until one node answers steadily. Returns the longest gap in the answers since the recovery
/// if it was over 200 ms (the recovery itself cut the client off), and the node serving now.
async fn after_recovery(
    client: &VipClient,
    recovered: Instant,
    settle: Duration,
    dir: &Path,
) -> Result<(Option<f64>, String), HarnessError> {
    tokio::time::sleep(settle).await;
    let serving = client
        .wait_steady(Duration::from_millis(500), Duration::from_secs(90))
        .await
        .ok_or_else(|| {
            with_logs(
                HarnessError("the VIP did not answer steadily after recovery".into()),
                dir,
            )
        })?;
    let mut gap = Duration::ZERO;
    let mut prev = recovered;
    for at in client.since(recovered).iter().map(|a| a.at) {
        gap = gap.max(at.saturating_duration_since(prev));
        prev = at;
    }
    Ok((
        (gap > Duration::from_millis(200)).then_some(gap.as_secs_f64() * 1000.0),
        serving,
    ))
}

/// Samples which of `ids` hold `vip`, for at most two hours (the benchmark stops it sooner).
fn sample_vip(lab: &Lab, ids: &[&str], vip: Ipv4Addr) -> Result<netns::AddrSampler, HarnessError> {
    let hosts = ids
        .iter()
        .map(|id| Ok((id.to_string(), lab.host(id)?.ns.clone())))
        .collect::<Result<Vec<_>, HarnessError>>()?;
    Ok(netns::AddrSampler::start(hosts, vip, Duration::from_secs(7200)))
}

/// `e` with the last lines of every `*.log` in `dir`.
fn with_logs(e: HarnessError, dir: &Path) -> HarnessError {
    let mut text = e.0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HarnessError(text);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!("\n---- {} ----\n", path.display()));
            for l in tail.iter().rev() {
                text.push_str(l);
                text.push('\n');
            }
        }
    }
    HarnessError(text)
}

/// keepalived's config for one node of the lab.
fn keepalived_config(id: &str, priority: u32, vip: Ipv4Addr, system: System) -> String {
    let (version, advert) = match system {
        System::KeepalivedFast => (3, "0.01"),
        _ => (2, "1"),
    };
    format!(
        "global_defs {{\n    router_id {id}\n    vrrp_version {version}\n}}\n\
         vrrp_instance standin_bench {{\n    state BACKUP\n    nopreempt\n    interface eth0\n    \
         virtual_router_id 51\n    priority {priority}\n    advert_int {advert}\n    \
         virtual_ipaddress {{\n        {vip}/24 dev eth0\n    }}\n}}\n"
    )
}

/// keepalived and a fixed-answer backend on one host of the lab.
struct KeepalivedNode {
    _backend: Spawned,
    keepalived: Spawned,
}

impl KeepalivedNode {
    fn start(
        lab: &Lab,
        dir: &Path,
        binary: &Path,
        id: &str,
        config: &Path,
    ) -> Result<KeepalivedNode, HarnessError> {
        let log = dir.join(format!("{id}.log"));
        let mut backend = lab.exec(id)?;
        backend
            .arg(binary)
            .args([
                "bench-backend",
                "--listen",
                &format!("0.0.0.0:{PORT}"),
                "--answer",
            ])
            .arg(format!("node={id}\n"));
        let backend = Spawned::start(&mut backend, &log, &format!("the backend on {id}"))?;
        let mut ka = lab.exec(id)?;
        // In the foreground, logging to the console, VRRP only, with pid files of its own.
        ka.args([
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "-f",
        ])
        .arg(config)
        .arg("-p")
        .arg(dir.join(format!("{id}-keepalived.pid")))
        .arg("-r")
        .arg(dir.join(format!("{id}-vrrp.pid")));
        // A machine that comes back has no pid files from before (/run is a tmpfs). Left in
        // place, keepalived may find a pid in them that is now another process (or a zombie
        // nobody reaped in a container) and refuse to start: "daemon is already running".
        for f in ["keepalived", "vrrp"] {
            let _ = std::fs::remove_file(dir.join(format!("{id}-{f}.pid")));
        }
        let keepalived = Spawned::start(&mut ka, &log, &format!("keepalived on {id}"))?;
        Ok(KeepalivedNode {
            _backend: backend,
            keepalived,
        })
    }

    /// Every keepalived process of this node (the parent and its VRRP child).
    fn keepalived_pids(&self, lab: &Lab, id: &str) -> Vec<Pid> {
        let parent = self.keepalived.pid() as i32;
        lab.host(id)
            .map(|h| netns::pids(&h.ns))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                *p == parent
                    || std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "keepalived")
            })
            .map(Pid::from_raw)
            .collect()
    }
}

/// How many times keepalived on `id` logged that it entered BACKUP state.
fn backup_entries(dir: &Path, id: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{id}.log")))
        .map(|l| l.matches("Entering BACKUP STATE").count())
        .unwrap_or(0)
}

/// The keepalived side of one fault: a fresh lab, keepalived and a backend on `a` and `b`.
async fn keepalived_fault(
    binary: &Path,
    scratch: &Path,
    system: System,
    fault: Fault,
    trials: usize,
) -> Result<VipRow, HarnessError> {
    let lab = Lab::create("bk", [10, 233, 0], &[("a", 1), ("b", 2), ("cl", 50)])?;
    netns::enter(&lab.host("cl")?.ns)?;
    let vip = lab.spare_addr(100);
    let dir = scratch.join(format!("{system:?}-{fault:?}"));
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError(format!("{}: {e}", dir.display())))?;
    let mut nodes: Vec<(&str, Option<KeepalivedNode>, PathBuf)> = Vec::new();
    for (id, priority) in [("a", 200), ("b", 100)] {
        let config = dir.join(format!("{id}-keepalived.conf"));
        std::fs::write(&config, keepalived_config(id, priority, vip, system))
            .map_err(|e| HarnessError(format!("{}: {e}", config.display())))?;
        let node = KeepalivedNode::start(&lab, &dir, binary, id, &config)?;
        nodes.push((id, Some(node), config));
    }
    let client = start_client(vip, Duration::from_millis(500), &dir).await?;
    let sampler = sample_vip(&lab, &["a", "b"], vip)?;

    let bar = progress(trials, &format!("{} / {}", system.name(), fault.name()));
    let (mut tally, mut false_failovers) = (Tally::default(), 0);
    for _ in 0..trials {
        bar.inc(1);
        // Steady state: one node answered for the last second. Another node answering in the
        // 300 ms after that is a move nobody caused.
        let old = client
            .wait_steady(Duration::from_secs(1), Duration::from_secs(60))
            .await
            .ok_or_else(|| with_logs(HarnessError("the VIP did not settle on one node".into()), &dir))?;
        let quiet = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if client.since(quiet).iter().any(|a| a.node != old) {
            false_failovers += 1;
        }
        let slot = nodes
            .iter_mut()
            .find(|(id, ..)| *id == old)
            .ok_or_else(|| HarnessError(format!("unknown node {old}")))?;
        let t0 = Instant::now();
        let frozen = match fault {
            Fault::NodeFrozen => {
                let pids = slot
                    .1
                    .as_ref()
                    .map(|n| n.keepalived_pids(&lab, &old))
                    .unwrap_or_default();
                for p in &pids {
                    let _ = kill(*p, Signal::SIGSTOP);
                }
                pids
            }
            Fault::NodeIsolated => {
                lab.cut(&old, true)?;
                Vec::new()
            }
            _ => {
                lab.kill_all(&old)?;
                lab.link(&old, false)?;
                slot.1.take();
                Vec::new()
            }
        };
        let moved = client.wait_moved(&old, None, t0, Duration::from_secs(15)).await;
        tally.moved(&client, &old, moved);
        // Recover, then wait until the VIP answers steadily again.
        let recovered = Instant::now();
        match fault {
            Fault::NodeFrozen => {
                for p in &frozen {
                    let _ = kill(*p, Signal::SIGCONT);
                }
            }
            Fault::NodeIsolated => lab.cut(&old, false)?,
            _ => {
                lab.forget_addr(&old, vip)?;
                lab.link(&old, true)?;
                let entered = backup_entries(&dir, &old);
                let (_, slot, config) = nodes
                    .iter_mut()
                    .find(|(id, ..)| *id == old)
                    .ok_or_else(|| HarnessError(format!("unknown node {old}")))?;
                *slot = Some(KeepalivedNode::start(&lab, &dir, binary, &old, config)?);
                // Up as a backup before the next trial kills the master.
                let deadline = Instant::now() + Duration::from_secs(10);
                while backup_entries(&dir, &old) <= entered && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        // Give the resumed or restarted node time to act (3 adverts and then some).
        let settle = match system {
            System::KeepalivedDefaults => Duration::from_secs(4),
            _ => Duration::from_millis(500),
        };
        tally.recovered(after_recovery(&client, recovered, settle, &dir).await?, &old);
    }
    bar.finish_and_clear();
    client.stop().await;
    let seen = sampler.stop();
    drop(nodes);
    drop(lab);
    Ok(tally.row(system, None, fault, trials, false_failovers, seen))
}
