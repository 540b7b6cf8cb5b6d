//! `standin demo`: a 3-node cluster on loopback (data nodes `a` and `b`, witness `w`) managing
//! the built-in HTTP service, with a live status view. Writes `DIR/demo.json` so scripts can
//! drive it, and stops every process it started on Ctrl-C or SIGTERM, and the nodes
//! `standin demo add-node` added since (`nodes`: they are in demo.json with their pids).
//!
//! The demo also runs a front proxy (in this process) with two failover listeners: the
//! service's floating address (HTTP, with `X-Standin-Epoch`) and the store's (TCP). demo.json
//! holds them as `floating` and `store_floating`.

pub mod layout;
pub mod nodes;
pub mod service;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lab::harness::{HarnessError, LocalCluster};
use layout::{DemoFile, DemoNode};

/// A token of 32 hex digits from the kernel's random source.
fn random_token() -> Result<String, HarnessError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| HarnessError(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the admin API token to `DIR/api.token` (mode 0600) and returns it.
fn write_token(dir: &std::path::Path) -> Result<(String, PathBuf), HarnessError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| HarnessError(format!("{}: {e}", dir.display())))?;
    let token = random_token()?;
    let path = layout::token_file(dir);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
        .map_err(|e| HarnessError(format!("{}: {e}", path.display())))?;
    Ok((token, path))
}

/// The demo's front proxy addresses.
struct Floating {
    service: std::net::SocketAddr,
    store: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

fn proxy_text(cluster: &[String], listen: [&str; 3]) -> String {
    format!(
        "[proxy]\ncluster = [{}]\nadmin = \"{}\"\n\
         [[proxy.listener]]\nname = \"service\"\nlisten = \"{}\"\nprotocol = \"http\"\n\
         [[proxy.listener]]\nname = \"store\"\nlisten = \"{}\"\ntarget = \"store\"\n",
        cluster.join(", "),
        listen[0],
        listen[1],
        listen[2]
    )
}

/// Binds the front proxy's sockets (two failover listeners and its control API on free
/// ports) before the cluster exists, so that the nodes' `[drill]` settings can name them.
async fn bind_proxy() -> Result<(crate::address::proxy::Bound, Floating), HarnessError> {
    use crate::address::proxy::{self, config::ProxyConfig};
    let any = "127.0.0.1:0";
    let cfg = ProxyConfig::parse(&proxy_text(&["\"127.0.0.1:1\"".into()], [any, any, any]))
        .map_err(|e| HarnessError(format!("demo proxy config: {e}")))?;
    let bound = proxy::Bound::bind(&cfg)
        .await
        .map_err(|e| HarnessError(e.to_string()))?;
    let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| HarnessError(e.to_string()));
    let floating = Floating {
        service: addr(&bound.listeners[0])?,
        store: addr(&bound.listeners[1])?,
        admin: addr(
            bound
                .admin
                .as_ref()
                .ok_or_else(|| HarnessError("no proxy admin".into()))?,
        )?,
    };
    Ok((bound, floating))
}

/// Starts the front proxy over the demo cluster on the sockets [`bind_proxy`] bound.
fn start_proxy(
    cluster: &LocalCluster,
    bound: crate::address::proxy::Bound,
    floating: &Floating,
    cancel: &CancellationToken,
) -> Result<(), HarnessError> {
    use crate::address::proxy::{self, config::ProxyConfig};
    let apis: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{}\"", n.admin)).collect();
    let text = proxy_text(
        &apis,
        [
            &floating.admin.to_string(),
            &floating.service.to_string(),
            &floating.store.to_string(),
        ],
    );
    let cfg = ProxyConfig::parse(&text).map_err(|e| HarnessError(format!("demo proxy config: {e}")))?;
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if let Err(e) = proxy::run(cfg, bound, cancel).await {
            tracing::error!(error = %e, "demo proxy failed");
        }
    });
    Ok(())
}

pub async fn run(dir: Option<PathBuf>, cancel: CancellationToken) -> Result<(), HarnessError> {
    let (dir, remove_after) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("standin-demo-{}", std::process::id())),
            true,
        ),
    };
    let binary = std::env::current_exe().map_err(|e| HarnessError(format!("cannot find own binary: {e}")))?;
    let (token, token_file) = write_token(&dir)?;
    let (bound, floating) = bind_proxy().await?;
    let mut spec = layout::spec(&dir, &binary);
    // Drills: the nodes inject faults into themselves when asked, and know what to probe.
    spec.extra_toml.push_str(&format!(
        "[drill]\nenabled = true\nservice = \"http://{}/\"\nstore = \"{}\"\n",
        floating.service, floating.store
    ));
    let mut cluster = LocalCluster::create(spec).await?;
    cluster.start_all()?;
    let tty = std::io::stdout().is_terminal();
    let proxy_cancel = cancel.child_token();
    start_proxy(&cluster, bound, &floating, &proxy_cancel)?;
    println!("standin demo: 3 nodes in {}", dir.display());
    println!(
        "  floating address (front proxy, follows the active node): http://{}/",
        floating.service
    );
    println!(
        "  store floating address: redis-cli -h {} -p {}",
        floating.store.ip(),
        floating.store.port()
    );
    println!(
        "  proxy control API: STANDIN_PROXY={} standin proxy-status",
        floating.admin
    );
    for n in &cluster.nodes {
        println!(
            "  {} ({}): admin http://{}{}",
            n.id,
            if n.witness { "witness" } else { "data" },
            n.admin,
            n.service
                .map(|s| format!("  service http://{s}/"))
                .unwrap_or_default()
        );
        if let Some(st) = n.store {
            println!(
                "      store (Redis protocol): redis-cli -h {} -p {}",
                st.ip(),
                st.port()
            );
        }
    }
    println!(
        "  dashboard: http://{}/  (any node's admin address serves it; metrics at /metrics)",
        cluster.nodes[0].admin
    );
    println!(
        "  try: STANDIN_API={} STANDIN_TOKEN=$(cat {}) standin status | switchover | events; Ctrl-C stops everything",
        cluster.nodes[0].admin,
        token_file.display()
    );
    println!(
        "  failover drill (every scenario, about 12 s; the record stays in the cluster): STANDIN_API={} STANDIN_TOKEN=$(cat {}) standin drill run",
        cluster.nodes[0].admin,
        token_file.display()
    );
    if let Some(certs) = cluster.certs_dir() {
        println!(
            "  nodes talk over mutual TLS: CA and node certificates in {} (standin certs show {}/a.pem)",
            certs.display(),
            certs.display()
        );
    }
    let secrets = (token, token_file);
    let result = live(&mut cluster, &dir, &floating, &secrets, tty, &cancel).await;
    proxy_cancel.cancel();
    println!("stopping the demo cluster...");
    // The nodes `demo add-node` added are stopped too: they are in demo.json with their pids.
    let added: Vec<DemoNode> = layout::read(&dir)
        .map(|f| f.nodes.into_iter().filter(|n| n.added).collect())
        .unwrap_or_default();
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    for id in &ids {
        let _ = cluster.signal_daemon(id, nix::sys::signal::Signal::SIGTERM);
    }
    nodes::terminate(&added);
    for id in &ids {
        let _ = cluster.stop(id, Duration::from_secs(10));
    }
    nodes::stop_added(&added, Duration::from_secs(10)).await;
    drop(cluster);
    if remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("stopped");
    result
}

async fn live(
    cluster: &mut LocalCluster,
    dir: &std::path::Path,
    floating: &Floating,
    (token, token_file): &(String, PathBuf),
    tty: bool,
    cancel: &CancellationToken,
) -> Result<(), HarnessError> {
    let certs = cluster.certs_dir();
    let file_in = |name: String| certs.as_ref().map(|c| c.join(name).display().to_string());
    let mut last_file = None;
    let mut last_line = String::new();
    loop {
        // The demo supervises its nodes the way systemd's `Restart=on-failure` would: a
        // daemon that was killed (a drill's node-shutdown, or `kill -9`) is started again.
        for (id, how) in cluster.restart_failed() {
            println!("demo: node {id}'s daemon ended ({how}); started it again, as its supervisor would");
        }
        let mut nodes = Vec::new();
        for n in &cluster.nodes {
            let service_pid = if n.witness {
                None
            } else {
                cluster.lease(&n.id).await.and_then(|l| l.service_pid)
            };
            nodes.push(DemoNode {
                id: n.id.clone(),
                kind: if n.witness { "witness" } else { "data" }.into(),
                pid: n.pid(),
                service_pid,
                admin: n.admin.to_string(),
                service: n.service.map(|s| s.to_string()),
                store: n.store.map(|s| s.to_string()),
                addresses: n.paths.iter().map(|p| p.to_string()).collect(),
                cert: file_in(format!("{}.pem", n.id)),
                key: file_in(format!("{}.key", n.id)),
                added: false,
                config: None,
            });
        }
        // The services of the nodes `demo add-node` added, as their daemons report them.
        let mut service_pids = BTreeMap::new();
        if last_file.is_some() {
            for n in layout::read(dir).map(|f| f.nodes).unwrap_or_default() {
                if n.added && n.kind == "data" {
                    if let Some(pid) = nodes::lease_service_pid(&n.admin).await {
                        service_pids.insert(n.id, pid);
                    }
                }
            }
        }
        let file = DemoFile {
            dir: dir.display().to_string(),
            floating: floating.service.to_string(),
            store_floating: floating.store.to_string(),
            proxy_admin: floating.admin.to_string(),
            ca: file_in("ca.pem".into()),
            token: token.clone(),
            token_file: token_file.display().to_string(),
            nodes,
        };
        // The first write of this demo drops the added nodes a previous run in DIR left.
        let fresh = last_file.is_none();
        layout::publish(dir, file, fresh, &service_pids, &mut last_file)?;
        match cluster.status().await {
            Some(s) if tty => {
                // Clear the screen and redraw.
                print!("\x1b[2J\x1b[H{}", crate::cli::client::render_status(&s));
                println!("demo dir {}  (Ctrl-C to stop)", dir.display());
            }
            Some(s) => {
                let line = format!(
                    "epoch={} active={} leader={} healthy={}",
                    s.epoch,
                    s.active.as_deref().unwrap_or("none"),
                    s.leader.as_deref().unwrap_or("none"),
                    s.nodes
                        .iter()
                        .filter(|n| n.healthy)
                        .map(|n| n.id.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
            None => {
                if !tty && last_line != "unreachable" {
                    println!("cluster not answering yet");
                    last_line = "unreachable".into();
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
