//! A local cluster of real `standin node` processes on loopback: used by `standin demo`, the
//! failover benchmark and the multi-process tests.
//!
//! Ports are chosen by binding port 0 and releasing the socket just before the node binds it.
//! Every node runs in its own process group, so a fault can hit the daemon and its service
//! together (`killpg`) or one of them alone; paths can be cut through relays
//! ([`crate::lab::relay`]). Dropping the cluster kills every process group it started.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::api::client::request;
use crate::api::LeaseStatus;
use crate::lab::relay::Relay;
use crate::status::Status;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(pub String);

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// How to build the local cluster.
#[derive(Debug, Clone)]
pub struct Spec {
    pub dir: PathBuf,
    /// The `standin` binary to run.
    pub binary: PathBuf,
    /// Data nodes, in priority order (the first has the highest priority).
    pub data_nodes: Vec<String>,
    pub witness: bool,
    /// Route each node's second path through a relay the harness controls (for path faults).
    pub relay_second_path: bool,
    /// Route every path between every ordered pair of nodes through its own relay, so that
    /// [`LocalCluster::partition`] can cut one node off completely.
    pub partitionable: bool,
    /// Extra TOML appended to every config (timing, failback, hooks...).
    pub extra_toml: String,
    /// Extra lines for every node's `[node]` section (e.g. `min-free-disk = 0`).
    pub node_toml: String,
    /// Hooks per data node, as TOML lines for `[hooks]`.
    pub hooks_toml: String,
    /// Extra TOML lines for `[service]` (e.g. `mode = "warm"`).
    pub service_toml: String,
    /// What each data node runs as its service.
    pub service: ServiceKind,
    /// Run the Redis-protocol store on every data node; extra lines for `[store]`.
    pub store: bool,
    pub store_toml: String,
    /// Mutual TLS between the nodes, with a CA and certificates made in `DIR/certs`
    /// (default); `false` writes `[tls] insecure = true`.
    pub tls: bool,
    /// Nodes made ready to join later (id, witness): ports, certificate and a config with
    /// `[node] join = true` listing the initial members and itself. The initial members' files
    /// do not list them; `start_all` leaves them out (start one, then `standin member add`).
    pub joiners: Vec<(String, bool)>,
}

impl Spec {
    pub fn new(dir: &Path, binary: &Path) -> Spec {
        Spec {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            data_nodes: vec!["a".into(), "b".into()],
            witness: true,
            relay_second_path: false,
            partitionable: false,
            extra_toml: String::new(),
            node_toml: String::new(),
            hooks_toml: String::new(),
            service_toml: String::new(),
            service: ServiceKind::Demo,
            store: true,
            store_toml: String::new(),
            tls: true,
            joiners: Vec::new(),
        }
    }
}

/// What one node's config file is written from (see [`Spec::config_text`]).
pub struct NodeFile<'a> {
    pub id: &'a str,
    /// Written with `[node] join = true`: it waits for `standin member add`.
    pub joiner: bool,
    pub admin: SocketAddr,
    /// A data node's service address (`None`: a witness).
    pub service: Option<SocketAddr>,
    pub store: Option<SocketAddr>,
    /// A `listen = [...]` line for `[node]`, or nothing (bind the member's addresses).
    pub listen: &'a str,
    /// The `[[member]]` blocks (see [`member_toml`]).
    pub members: &'a str,
}

/// One `[[member]]` block, as the harness writes it.
pub fn member_toml(m: &crate::config::Member) -> String {
    let addrs: Vec<String> = m.addresses.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "\n[[member]]\nid = \"{}\"\nkind = \"{}\"\npriority = {}\naddresses = [{}]\nadmin = \"{}\"\n{}{}{}",
        m.id,
        m.kind,
        m.priority,
        addrs.join(", "),
        m.admin,
        m.service_address
            .map(|s| format!("service-address = \"{s}\"\n"))
            .unwrap_or_default(),
        m.store_address
            .map(|s| format!("store-address = \"{s}\"\n"))
            .unwrap_or_default(),
        m.site
            .as_ref()
            .map(|s| format!("site = \"{s}\"\n"))
            .unwrap_or_default(),
    )
}

impl Spec {
    /// The directory of the cluster CA and the node certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Makes the cluster CA (once) and `id`'s certificate in [`Spec::certs_dir`], unless they
    /// exist already.
    pub fn ensure_certificate(&self, id: &str) -> Result<(), HarnessError> {
        let certs = self.certs_dir();
        if !certs.join("ca.pem").exists() {
            crate::tls::init_ca(&certs, "standin local cluster CA", CERT_VALIDITY)
                .map_err(|e| err(format!("cluster CA: {e}")))?;
        }
        if !certs.join(format!("{id}.pem")).exists() {
            crate::tls::issue_files(
                &certs,
                &certs,
                id,
                &["127.0.0.1".into(), "localhost".into()],
                CERT_VALIDITY,
            )
            .map_err(|e| err(format!("certificate of {id}: {e}")))?;
        }
        Ok(())
    }

    /// The config file of one node: TLS, `[node]` (its data directory `DIR/ID-data`), the
    /// members, the extra TOML, and for a data node its service, store and hooks.
    pub fn config_text(&self, n: &NodeFile<'_>) -> String {
        let tls = if self.tls {
            let certs = self.certs_dir();
            format!(
                "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                certs.join("ca.pem").display(),
                certs.join(format!("{}.pem", n.id)).display(),
                certs.join(format!("{}.key", n.id)).display()
            )
        } else {
            "[tls]\ninsecure = true\n".to_string()
        };
        let data_dir = self.dir.join(format!("{}-data", n.id));
        let mut text = format!(
            "# generated by standin's local cluster harness\n{tls}\n[node]\nid = \"{}\"\ndata-dir = \"{}\"\n{}\n{}{}{}\n{}\n",
            n.id,
            data_dir.display(),
            self.node_toml,
            if n.joiner { "join = true\n" } else { "" },
            n.listen,
            n.members,
            self.extra_toml
        );
        if let Some(svc) = n.service {
            text.push_str(&format!(
                "\n[service]\ncommand = \"{}\"\nargs = [{}]\nstop-grace = \"2s\"\n{}\n[[check]]\nname = \"http\"\nkind = \"http\"\nurl = \"http://{svc}/health\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n",
                self.binary.display(),
                self.service.args(svc, n.id, n.admin),
                self.service_toml,
                svc = svc,
            ));
            if let Some(st) = n.store {
                text.push_str(&format!("\n[store]\nlisten = \"{st}\"\n{}\n", self.store_toml));
            }
            if !self.hooks_toml.is_empty() {
                text.push_str(&format!("\n[hooks]\n{}\n", self.hooks_toml));
            }
        }
        text
    }
}

/// The program each data node supervises, on the node's service address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// `standin demo-service`: lease-aware, answers `node=.. epoch=.. role=active`.
    Demo,
    /// `standin bench-backend`: a fixed answer as fast as hyper gives it (proxy benchmark).
    BenchBackend,
}

impl ServiceKind {
    /// The arguments of `standin` that run this service for `node`.
    fn args(self, listen: SocketAddr, node: &str, admin: SocketAddr) -> String {
        match self {
            ServiceKind::Demo => format!(
                "\"demo-service\", \"--listen\", \"{listen}\", \"--node\", \"{node}\", \"--admin\", \"{admin}\""
            ),
            ServiceKind::BenchBackend => format!("\"bench-backend\", \"--listen\", \"{listen}\""),
        }
    }
}

/// One node of the local cluster.
pub struct LocalNode {
    pub id: String,
    pub witness: bool,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub service: Option<SocketAddr>,
    /// The node's Redis-protocol store, if enabled.
    pub store: Option<SocketAddr>,
    /// Advertised cluster addresses (the second may be a relay).
    pub paths: Vec<SocketAddr>,
    pub child: Option<Child>,
    /// Made to join later (see [`Spec::joiners`]).
    pub joiner: bool,
}

impl LocalNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// Reserves a free port by binding port 0. The listener is kept in `held` until every port of
/// the cluster is chosen, so the kernel never hands the same port out twice.
fn free_port_held(held: &mut Vec<StdListener>) -> Result<SocketAddr, HarnessError> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| err(format!("cannot bind port 0: {e}")))?;
    let addr = l.local_addr().map_err(|e| err(e.to_string()))?;
    held.push(l);
    Ok(addr)
}

/// Validity of the certificates the harness makes.
const CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A running local cluster.
pub struct LocalCluster {
    pub spec: Spec,
    pub nodes: Vec<LocalNode>,
    /// Relays of each node's second path, by node id.
    pub relays: BTreeMap<String, Relay>,
    /// With `partitionable`: (from, to, relay) for every path of every ordered pair.
    pub pair_relays: Vec<(String, String, Relay)>,
    /// Service processes seen (killed with the cluster, in case a daemon died before them).
    service_pids: std::sync::Mutex<Vec<u32>>,
}

/// Starts `BINARY node --config CONFIG` detached: its own process group, no terminal, stderr
/// appended to `log` (`STANDIN_LOG` passed on, default `info,openraft=off`).
pub fn spawn_node(binary: &Path, config: &Path, log: &Path) -> Result<Child, HarnessError> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| err(format!("{}: {e}", log.display())))?;
    Command::new(binary)
        .arg("node")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .env(
            "STANDIN_LOG",
            std::env::var("STANDIN_LOG").unwrap_or_else(|_| "info,openraft=off".into()),
        )
        .process_group(0)
        .spawn()
        .map_err(|e| err(format!("cannot start {}: {e}", binary.display())))
}

impl LocalCluster {
    /// Chooses ports, writes one config per node under `spec.dir` (nothing is started).
    pub async fn create(spec: Spec) -> Result<LocalCluster, HarnessError> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| err(format!("{}: {e}", spec.dir.display())))?;
        let mut ids: Vec<(String, bool)> = spec.data_nodes.iter().map(|d| (d.clone(), false)).collect();
        if spec.witness {
            ids.push(("w".into(), true));
        }
        let initial = ids.len();
        ids.extend(spec.joiners.iter().cloned());
        let mut nodes = Vec::new();
        let mut listens = BTreeMap::new();
        let mut relays = BTreeMap::new();
        let mut held = Vec::new();
        for (i, (id, witness)) in ids.iter().enumerate() {
            let admin = free_port_held(&mut held)?;
            let p1 = free_port_held(&mut held)?;
            let p2 = free_port_held(&mut held)?;
            let service = if *witness {
                None
            } else {
                Some(free_port_held(&mut held)?)
            };
            let store = if *witness || !spec.store {
                None
            } else {
                Some(free_port_held(&mut held)?)
            };
            let mut paths = vec![p1, p2];
            if spec.partitionable {
                listens.insert(id.clone(), vec![p1, p2]);
            } else if spec.relay_second_path {
                let relay = Relay::start(p2).await.map_err(|e| err(e.to_string()))?;
                paths[1] = relay.listen;
                relays.insert(id.clone(), relay);
                listens.insert(id.clone(), vec![p1, p2]);
            }
            nodes.push(LocalNode {
                id: id.clone(),
                witness: *witness,
                config: spec.dir.join(format!("{id}.toml")),
                admin,
                service,
                store,
                paths,
                child: None,
                joiner: i >= initial,
            });
        }
        // With partitionable, node X reaches peer Y through relays of its own (X→Y), so cutting
        // every relay from or to X isolates X in both directions.
        let mut pair_relays = Vec::new();
        let mut peer_paths: BTreeMap<(String, String), Vec<SocketAddr>> = BTreeMap::new();
        if spec.partitionable {
            for from in &nodes {
                for to in nodes.iter().filter(|t| t.id != from.id) {
                    let mut addrs = Vec::new();
                    for p in &to.paths {
                        let relay = Relay::start(*p).await.map_err(|e| err(e.to_string()))?;
                        addrs.push(relay.listen);
                        pair_relays.push((from.id.clone(), to.id.clone(), relay));
                    }
                    peer_paths.insert((from.id.clone(), to.id.clone()), addrs);
                }
            }
        }
        let count = spec.data_nodes.len() as u32;
        let members_for = |me: &str| {
            let mut members = String::new();
            for (i, n) in nodes.iter().enumerate().filter(|(_, n)| !n.joiner || n.id == me) {
                let paths = peer_paths
                    .get(&(me.to_string(), n.id.clone()))
                    .unwrap_or(&n.paths);
                members.push_str(&member_toml(&crate::config::Member {
                    id: n.id.clone(),
                    kind: if n.witness {
                        crate::config::NodeKind::Witness
                    } else {
                        crate::config::NodeKind::Data
                    },
                    priority: if n.witness {
                        0
                    } else {
                        100 * count.saturating_sub(i as u32).max(1)
                    },
                    addresses: paths.clone(),
                    admin: n.admin,
                    service_address: n.service,
                    store_address: n.store,
                    site: None,
                }));
            }
            members
        };
        if spec.tls {
            for n in &nodes {
                spec.ensure_certificate(&n.id)?;
            }
        }
        for n in &nodes {
            let members = members_for(&n.id);
            let listen = listens
                .get(&n.id)
                .map(|l: &Vec<SocketAddr>| {
                    let l: Vec<String> = l.iter().map(|a| format!("\"{a}\"")).collect();
                    format!("listen = [{}]\n", l.join(", "))
                })
                .unwrap_or_default();
            let text = spec.config_text(&NodeFile {
                id: &n.id,
                joiner: n.joiner,
                admin: n.admin,
                service: n.service,
                store: n.store,
                listen: &listen,
                members: &members,
            });
            std::fs::write(&n.config, text).map_err(|e| err(format!("{}: {e}", n.config.display())))?;
        }
        // Released only now: the nodes bind them when they start.
        drop(held);
        Ok(LocalCluster {
            spec,
            nodes,
            relays,
            pair_relays,
            service_pids: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The directory of the cluster CA and the node certificates (`ca.pem`, `ID.pem`,
    /// `ID.key`), when the cluster runs with TLS.
    pub fn certs_dir(&self) -> Option<PathBuf> {
        self.spec.tls.then(|| self.spec.certs_dir())
    }

    pub fn node(&self, id: &str) -> Option<&LocalNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut LocalNode, HarnessError> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| err(format!("no node {id}")))
    }

    /// Starts `standin node` for `id` in its own process group; stderr goes to `DIR/ID.log`.
    pub fn start(&mut self, id: &str) -> Result<(), HarnessError> {
        let binary = self.spec.binary.clone();
        let log_path = self.spec.dir.join(format!("{id}.log"));
        let n = self.node_mut(id)?;
        if let Some(c) = n.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                return Err(err(format!("{id} is already running")));
            }
        }
        n.child = Some(spawn_node(&binary, &n.config, &log_path)?);
        Ok(())
    }

    /// What a supervisor with `Restart=on-failure` does: every node whose daemon ended on a
    /// signal or with a failure status (not 0, not 64: a config error) is started again.
    /// Returns the nodes restarted and how their daemons had ended.
    pub fn restart_failed(&mut self) -> Vec<(String, String)> {
        let mut ended = Vec::new();
        for n in &mut self.nodes {
            let Some(c) = n.child.as_mut() else { continue };
            if let Ok(Some(status)) = c.try_wait() {
                if !matches!(status.code(), Some(0) | Some(64)) {
                    ended.push((n.id.clone(), status.to_string()));
                }
            }
        }
        let mut restarted = Vec::new();
        for (id, how) in ended {
            if self.start(&id).is_ok() {
                restarted.push((id, how));
            }
        }
        restarted
    }

    pub fn start_all(&mut self) -> Result<(), HarnessError> {
        let ids: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.joiner)
            .map(|n| n.id.clone())
            .collect();
        for id in ids {
            self.start(&id)?;
        }
        Ok(())
    }

    /// Sends `sig` to the node's whole process group (daemon and service).
    pub fn signal_group(&self, id: &str, sig: Signal) -> Result<(), HarnessError> {
        let pid = self
            .node(id)
            .and_then(|n| n.pid())
            .ok_or_else(|| err(format!("{id} not running")))?;
        killpg(Pid::from_raw(pid as i32), sig).map_err(|e| err(format!("killpg {id}: {e}")))
    }

    /// Cuts every cluster path from and to `id` (needs `partitionable`): a black hole, both ways.
    pub fn partition(&self, id: &str) {
        for (from, to, relay) in &self.pair_relays {
            if from == id || to == id {
                relay.set_cut(true);
            }
        }
    }

    /// Restores every cluster path.
    pub fn heal(&self) {
        for (_, _, relay) in &self.pair_relays {
            relay.set_cut(false);
        }
    }

    /// Sends `sig` to the daemon only.
    pub fn signal_daemon(&self, id: &str, sig: Signal) -> Result<(), HarnessError> {
        let pid = self
            .node(id)
            .and_then(|n| n.pid())
            .ok_or_else(|| err(format!("{id} not running")))?;
        kill(Pid::from_raw(pid as i32), sig).map_err(|e| err(format!("kill {id}: {e}")))
    }

    /// `kill -9` of the node's daemon and its service (each has its own process group), and
    /// reaps the daemon.
    pub async fn kill(&mut self, id: &str) -> Result<(), HarnessError> {
        let service = self.lease(id).await.and_then(|l| l.service_pid);
        let _ = self.signal_group(id, Signal::SIGKILL);
        if let Some(pid) = service {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let n = self.node_mut(id)?;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// Graceful stop (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&mut self, id: &str, grace: Duration) -> Result<(), HarnessError> {
        let _ = self.signal_daemon(id, Signal::SIGTERM);
        let n = self.node_mut(id)?;
        if let Some(mut c) = n.child.take() {
            let deadline = Instant::now() + grace;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }

    /// The cluster status from the running nodes (see [`best_status`]).
    pub async fn status(&self) -> Option<Status> {
        let admins: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.admin)
            .collect();
        best_status(&admins).await
    }

    /// The replicated event history, as node `id` has it.
    pub async fn events(&self, id: &str) -> Option<Vec<crate::cluster::state::Event>> {
        let n = self.node(id)?;
        let r = request(
            &n.admin.to_string(),
            Method::GET,
            // The whole history (the default is the newest 100).
            "/v1/events?limit=2000",
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
        serde_json::from_str(&r.body).ok()
    }

    /// What a node's daemon says about its own role (and its service's pid).
    pub async fn lease(&self, id: &str) -> Option<LeaseStatus> {
        let n = self.node(id)?;
        let r = request(
            &n.admin.to_string(),
            Method::GET,
            "/v1/lease",
            None,
            Duration::from_millis(800),
        )
        .await
        .ok()?;
        let l: LeaseStatus = serde_json::from_str(&r.body).ok()?;
        if let Some(pid) = l.service_pid {
            let mut seen = self.service_pids.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
        Some(l)
    }

    /// Waits until `pred` holds for the status, checking every 50 ms, at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status, HarnessError> {
        wait_status(|| self.status(), timeout, what, pred).await
    }

    /// Creates the cluster of `spec`, starts every node and waits (at most 30 s) until it is
    /// ready: what nearly every multi-process test does first.
    pub async fn launch(spec: Spec) -> Result<(LocalCluster, Status), HarnessError> {
        let mut cluster = LocalCluster::create(spec).await?;
        cluster.start_all()?;
        let status = cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok((cluster, status))
    }

    /// Waits until Raft leadership sits on the active node (the coordinator moves it there
    /// after a start or a failover), so that a test measures from a settled cluster.
    pub async fn wait_settled(&self, timeout: Duration) -> Result<Status, HarnessError> {
        self.wait_for(timeout, "the active node leading", |s| {
            s.leader.is_some() && s.leader == s.active
        })
        .await
    }

    /// Waits until node `id`'s daemon has exited; its exit status, or `None` after `within`
    /// (or if it was never started).
    pub async fn wait_exit(&mut self, id: &str, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let n = self.nodes.iter_mut().find(|n| n.id == id)?;
            if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some node is active (role "active") and every data node is healthy.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Status, HarnessError> {
        self.wait_for(timeout, "an active node and healthy standbys", is_ready)
            .await
    }
}

/// The cluster status from the admin APIs at `admins`: the leader's view if any node can give
/// it (a node that just woke up from SIGSTOP may still believe it leads and answer with old
/// state), else the first answer.
pub async fn best_status(admins: &[SocketAddr]) -> Option<Status> {
    let mut fallback = None;
    let mut best: Option<Status> = None;
    for admin in admins {
        let Ok(r) = request(
            &admin.to_string(),
            Method::GET,
            "/v1/status",
            None,
            Duration::from_millis(800),
        )
        .await
        else {
            continue;
        };
        if r.status != 200 {
            continue;
        }
        let Ok(s) = serde_json::from_str::<Status>(&r.body) else {
            continue;
        };
        let authoritative = !s.stale && s.leader.as_deref() == Some(s.view_from.as_str());
        if authoritative {
            best = match best.take() {
                Some(b) if b.term >= s.term => Some(b),
                _ => Some(s),
            };
        } else {
            fallback.get_or_insert(s);
        }
    }
    best.or(fallback)
}

/// Waits until `pred` holds for what `status` reads, checking every 50 ms, at most `timeout`.
pub async fn wait_status<F, Fut>(
    status: F,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Status) -> bool,
) -> Result<Status, HarnessError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = status().await {
            if pred(&s) {
                return Ok(s);
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(err(format!(
        "timed out after {timeout:?} waiting for {what}; last status: {}",
        last.map(|s| serde_json::to_string(&s).unwrap_or_default())
            .unwrap_or_else(|| "none".into())
    )))
}

/// Some node is active (role "active") and every data node is healthy and in sync.
pub fn is_ready(s: &Status) -> bool {
    let active_ok = s
        .active
        .as_ref()
        .and_then(|a| s.nodes.iter().find(|n| &n.id == a))
        .is_some_and(|n| n.role == "active");
    active_ok
        && s.nodes
            .iter()
            .filter(|n| n.kind == crate::config::NodeKind::Data)
            .all(|n| n.healthy && n.in_sync)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
                let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for pid in self.service_pids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// Probes a demo service once: `Some((node, epoch))` if it answered as active.
pub async fn probe_service(addr: SocketAddr, timeout: Duration) -> Option<(String, u64)> {
    let r = request(&addr.to_string(), Method::GET, "/", None, timeout)
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    parse_active(&r.body)
}

/// The `key=value` words of a service's answer: `node`, `epoch` and `role`.
pub fn answer_fields(body: &str) -> (Option<String>, Option<u64>, Option<&str>) {
    let (mut node, mut epoch, mut role) = (None, None, None);
    for kv in body.split_whitespace() {
        match kv.split_once('=') {
            Some(("node", v)) => node = Some(v.to_string()),
            Some(("epoch", v)) => epoch = v.parse().ok(),
            Some(("role", v)) => role = Some(v),
            _ => {}
        }
    }
    (node, epoch, role)
}

/// Parses the demo service's answer `node=a epoch=3 role=active`.
pub fn parse_active(body: &str) -> Option<(String, u64)> {
    let (node, epoch, role) = answer_fields(body);
    if role != Some("active") {
        return None;
    }
    Some((node?, epoch?))
}
