//! `standin demo add-node|remove-node`: grow the running demo beyond its three nodes and
//! shrink it back, the way an operator adds a machine.
//!
//! add-node writes the new node's config in the demo's style ([`super::layout::spec`]: same
//! timings, TLS and token; `[node] join = true`; members = the live membership plus itself),
//! issues its certificate with the demo's CA, starts `standin node` detached in its own process
//! group (log in `DIR/ID.log`), records it in `demo.json` (`"added": true`) and runs
//! `standin member add` ([`crate::cli::member::add`]). remove-node runs `member remove`, stops
//! the node's processes and drops it from `demo.json`. The running demo stops every added node
//! still in `demo.json` when it stops ([`stop_added`]).

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::layout::{self, DemoFile, DemoNode};
use crate::api::client::{request, request_with_token};
use crate::cli::{exit, CliError};
use crate::cluster::members::MembersView;
use crate::config::{Member, NodeKind};
use crate::lab::harness::{member_toml, NodeFile};

fn fail(code: i32, message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        code,
    }
}

/// A node id the demo can use as a file name and a certificate's name.
fn check_id(id: &str) -> Result<(), CliError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(fail(
            exit::USAGE,
            format!("{id:?} is not a usable node id: use up to 32 letters, digits, '-' or '_'"),
        ))
    }
}

/// The demo's directory, absolute (the new node's config names files in it), and its
/// `demo.json`.
fn open_demo(dir: &Path) -> Result<(PathBuf, DemoFile), CliError> {
    let dir = std::fs::canonicalize(dir).map_err(|e| fail(exit::USAGE, format!("{}: {e}", dir.display())))?;
    let file = layout::read(&dir).map_err(|e| {
        fail(
            exit::USAGE,
            format!("{e}: is `standin demo --dir {}` running?", dir.display()),
        )
    })?;
    crate::cli::client::set_token(Some(file.token.clone()));
    Ok((dir, file))
}

/// The admin API of a demo node that answers (not `except`'s).
async fn live_api(file: &DemoFile, except: Option<&str>) -> Result<String, CliError> {
    for n in file.nodes.iter().filter(|n| Some(n.id.as_str()) != except) {
        let answer = request(&n.admin, Method::GET, "/v1/status", None, Duration::from_secs(1)).await;
        if answer.is_ok_and(|r| r.status == 200) {
            return Ok(n.admin.clone());
        }
    }
    Err(fail(
        exit::UNAVAILABLE,
        format!(
            "no node of the demo in {} answers: is `standin demo --dir {}` running?",
            file.dir, file.dir
        ),
    ))
}

/// The live membership, as the node at `api` sees it.
async fn members(api: &str, token: &str) -> Result<MembersView, CliError> {
    let r = request_with_token(
        api,
        Method::GET,
        "/v1/members",
        None,
        Duration::from_secs(5),
        Some(token),
    )
    .await
    .map_err(|e| fail(exit::UNAVAILABLE, e.to_string()))?;
    if r.status != 200 {
        return Err(fail(
            exit::UNAVAILABLE,
            format!("{api}: GET /v1/members: HTTP {}: {}", r.status, r.body),
        ));
    }
    serde_json::from_str(&r.body).map_err(|e| fail(exit::UNAVAILABLE, format!("{api}: /v1/members: {e}")))
}

/// A free loopback port, its listener kept in `held` until every port is chosen.
fn free_port(held: &mut Vec<std::net::TcpListener>) -> Result<std::net::SocketAddr, CliError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| fail(exit::UNAVAILABLE, format!("cannot bind port 0: {e}")))?;
    let addr = l
        .local_addr()
        .map_err(|e| fail(exit::UNAVAILABLE, e.to_string()))?;
    held.push(l);
    Ok(addr)
}

/// The last lines of a node's log, for an error.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// `standin demo add-node ID --kind data|witness --dir DIR`.
pub async fn add_node(dir: &Path, id: &str, kind: NodeKind, timeout: Duration) -> Result<(), CliError> {
    check_id(id)?;
    let (dir, file) = open_demo(dir)?;
    if file.nodes.iter().any(|n| n.id == id) {
        return Err(fail(
            exit::USAGE,
            format!(
                "{id} is a node of the demo already ({}/demo.json): choose another id",
                dir.display()
            ),
        ));
    }
    let api = live_api(&file, None).await?;
    let view = members(&api, &file.token).await?;
    if view.members.iter().any(|m| m.member.id == id) {
        return Err(fail(
            exit::USAGE,
            format!("{id} is a member of the cluster already (standin member list): choose another id"),
        ));
    }
    let binary = std::env::current_exe()
        .map_err(|e| fail(exit::UNAVAILABLE, format!("cannot find own binary: {e}")))?;
    let spec = layout::spec(&dir, &binary);

    // Ports: admin, two cluster paths, and for a data node its service and store.
    let mut held = Vec::new();
    let admin = free_port(&mut held)?;
    let addresses = vec![free_port(&mut held)?, free_port(&mut held)?];
    let (service, store) = match kind {
        NodeKind::Data => (Some(free_port(&mut held)?), Some(free_port(&mut held)?)),
        NodeKind::Witness => (None, None),
    };
    // Below every data node's priority: the demo's own nodes stay the preferred ones.
    let priority = match kind {
        NodeKind::Data => view
            .members
            .iter()
            .filter(|m| m.member.kind == NodeKind::Data)
            .map(|m| m.member.priority)
            .min()
            .map_or(50, |p| (p / 2).max(1)),
        NodeKind::Witness => 0,
    };
    let me = Member {
        id: id.to_string(),
        kind,
        priority,
        addresses,
        admin,
        service_address: service,
        store_address: store,
        site: None,
    };
    let members: String = view
        .members
        .iter()
        .map(|m| member_toml(&m.member))
        .chain(std::iter::once(member_toml(&me)))
        .collect();
    spec.ensure_certificate(id)
        .map_err(|e| fail(exit::UNAVAILABLE, e.to_string()))?;
    // A data directory left by an earlier node of this id (removed since) holds a log the
    // cluster no longer knows: the new node starts empty.
    let data_dir = dir.join(format!("{id}-data"));
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .map_err(|e| fail(exit::UNAVAILABLE, format!("{}: {e}", data_dir.display())))?;
    }
    let config = dir.join(format!("{id}.toml"));
    let text = spec.config_text(&NodeFile {
        id,
        joiner: true,
        admin,
        service,
        store,
        listen: "",
        members: &members,
    });
    std::fs::write(&config, text)
        .map_err(|e| fail(exit::UNAVAILABLE, format!("{}: {e}", config.display())))?;
    crate::config::Config::load(&config).map_err(|e| {
        fail(
            crate::config::EXIT_CONFIG,
            format!("the config written for {id}: {e}"),
        )
    })?;
    let certs = spec.certs_dir();
    println!(
        "{id} ({kind}): config {}, certificate {} (signed by the demo's CA)",
        config.display(),
        certs.join(format!("{id}.pem")).display()
    );

    // Started detached: its own process group, no terminal, stderr to its log.
    let log_path = dir.join(format!("{id}.log"));
    drop(held);
    let mut child = crate::lab::harness::spawn_node(&binary, &config, &log_path)
        .map_err(|e| fail(exit::UNAVAILABLE, e.0))?;
    let pid = child.id();
    println!(
        "{id}: started `standin node --config {}` (pid {pid}), log {}",
        config.display(),
        log_path.display()
    );
    let node = DemoNode {
        id: id.to_string(),
        kind: kind.to_string(),
        pid: Some(pid),
        service_pid: None,
        admin: admin.to_string(),
        service: service.map(|s| s.to_string()),
        store: store.map(|s| s.to_string()),
        addresses: me.addresses.iter().map(|a| a.to_string()).collect(),
        cert: Some(certs.join(format!("{id}.pem")).display().to_string()),
        key: Some(certs.join(format!("{id}.key")).display().to_string()),
        added: true,
        config: Some(config.display().to_string()),
    };
    // Recorded before it is added: from here on, the demo stops it when it stops.
    layout::update(&dir, |f| f.nodes.push(node)).map_err(|e| fail(exit::UNAVAILABLE, e.to_string()))?;

    // Its admin API answers once it runs (it then waits to be added).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = layout::update(&dir, |f| f.nodes.retain(|n| n.id != id));
            return Err(fail(
                exit::UNAVAILABLE,
                format!(
                    "{id} exited ({status}) before it could be added; its log ({}):\n{}",
                    log_path.display(),
                    log_tail(&log_path)
                ),
            ));
        }
        let up = request(
            &admin.to_string(),
            Method::GET,
            "/v1/status",
            None,
            Duration::from_millis(500),
        )
        .await
        .is_ok();
        if up || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{id}: running and waiting to be added; standin member add {id} --kind {kind} --api {api}");
    // Its pid stays in demo.json; this process does not wait for it.
    drop(child);
    crate::cli::member::add(&api, &me, timeout, false)
        .await
        .map_err(|e| {
            fail(
                e.code,
                format!(
                    "{}\n{id} keeps running (the demo stops it when it stops); `standin demo remove-node {id} --dir {}` takes it out",
                    e.message,
                    dir.display()
                ),
            )
        })?;
    println!(
        "{id} added: `standin member list` shows it; `standin demo remove-node {id} --dir {}` takes it out again",
        dir.display()
    );
    Ok(())
}

/// `standin demo remove-node ID --dir DIR`.
pub async fn remove_node(dir: &Path, id: &str, timeout: Duration) -> Result<(), CliError> {
    let (dir, file) = open_demo(dir)?;
    let Some(node) = file.nodes.iter().find(|n| n.id == id).cloned() else {
        return Err(fail(
            exit::USAGE,
            format!("no node {id} in {}/demo.json", dir.display()),
        ));
    };
    if !node.added {
        return Err(fail(
            exit::USAGE,
            format!(
                "{id} is one of the nodes `standin demo` started: remove-node takes out the nodes `standin demo add-node` added (`standin member remove {id}` removes it from the cluster, the demo keeps running it)"
            ),
        ));
    }
    let api = live_api(&file, Some(id)).await?;
    let view = members(&api, &file.token).await?;
    if view.members.iter().any(|m| m.member.id == id) {
        println!("{id}: standin member remove {id} --api {api}");
        crate::cli::member::remove(&api, id, timeout, false).await?;
    } else {
        println!("{id} is not a member of the cluster: only stopping it");
    }
    // The service's pid as the daemon knows it now (demo.json's may be older).
    let service_pid = lease_service_pid(&node.admin).await.or(node.service_pid);
    let node = DemoNode { service_pid, ..node };
    stop_added(std::slice::from_ref(&node), Duration::from_secs(10)).await;
    println!(
        "{id}: stopped (pid {})",
        node.pid.map_or("-".into(), |p| p.to_string())
    );
    layout::update(&dir, |f| f.nodes.retain(|n| n.id != id))
        .map_err(|e| fail(exit::UNAVAILABLE, e.to_string()))?;
    // Its log is gone from the cluster: an add-node of the same id starts afresh.
    let _ = std::fs::remove_dir_all(dir.join(format!("{id}-data")));
    println!("{id}: removed from demo.json");
    Ok(())
}

/// The service pid a node's daemon reports (`GET /v1/lease`).
pub async fn lease_service_pid(admin: &str) -> Option<u32> {
    let r = request(admin, Method::GET, "/v1/lease", None, Duration::from_millis(300))
        .await
        .ok()?;
    serde_json::from_str::<crate::api::LeaseStatus>(&r.body)
        .ok()?
        .service_pid
}

/// Whether `pid` runs with every one of `words` among its arguments. A process that is gone
/// or a zombie (its command line is empty) does not; nor does a recycled pid.
fn runs(pid: u32, words: &[&str]) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    !raw.is_empty() && words.iter().all(|w| args.iter().any(|a| a == w))
}

/// The daemon's pid if it still runs as this node's `standin node`.
fn daemon(n: &DemoNode) -> Option<u32> {
    let config = n.config.as_deref()?;
    n.pid.filter(|p| runs(*p, &["node", config]))
}

/// The service's pid if it still runs as this node's demo service.
fn service(n: &DemoNode) -> Option<u32> {
    n.service_pid
        .filter(|p| runs(*p, &["demo-service", "--admin", n.admin.as_str()]))
}

/// SIGTERM to the daemon of each added node that still runs: it stops its service and exits.
pub fn terminate(nodes: &[DemoNode]) {
    for n in nodes {
        if let Some(pid) = daemon(n) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

/// Stops added nodes: SIGTERM to each daemon (which stops its service), then after `grace`
/// SIGKILL to the process group of whatever of them still runs, daemon or service. Processes
/// are recognised by their command line, so a recycled pid is never signalled.
pub async fn stop_added(nodes: &[DemoNode], grace: Duration) {
    terminate(nodes);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && nodes.iter().any(|n| daemon(n).is_some()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut left = false;
        for n in nodes {
            for pid in [daemon(n), service(n)].into_iter().flatten() {
                left = true;
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        if !left || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_file_names() {
        assert!(check_id("c").is_ok());
        assert!(check_id("node-2_b").is_ok());
        for bad in ["", "../x", "a b", "a/b", &"x".repeat(33)] {
            let e = check_id(bad).expect_err(bad);
            assert_eq!(e.code, exit::USAGE);
        }
    }

    /// Only a process whose arguments name the node is recognised: this test's own process
    /// is not a demo node, and a pid that does not exist runs nothing.
    #[test]
    fn processes_are_recognised_by_their_arguments() {
        let me = std::process::id();
        assert!(!runs(me, &["node", "/nowhere/c.toml"]));
        assert!(!runs(u32::MAX, &[]));
        let n = DemoNode {
            id: "c".into(),
            kind: "data".into(),
            pid: Some(me),
            service_pid: Some(me),
            admin: "127.0.0.1:1".into(),
            service: None,
            store: None,
            addresses: vec![],
            cert: None,
            key: None,
            added: true,
            config: Some("/nowhere/c.toml".into()),
        };
        assert_eq!(daemon(&n), None);
        assert_eq!(service(&n), None);
    }
}
