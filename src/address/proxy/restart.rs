//! Hot restart of `standin proxy` (SIGUSR2), the way HAProxy reloads: the running proxy starts
//! a new process of the program now on disk with the same arguments and hands it its
//! listening sockets; the new process reads the configuration, serves, and says so (`ready`
//! on a pipe); only then does the old one stop accepting, and it exits once its open
//! connections have ended on their own (at most [`DRAIN_MAX`]). No connection is refused or
//! cut. If the new process does not become ready (bad configuration, a crash, a changed
//! listener address) within [`READY_TIMEOUT`], the old one keeps serving and says why.
//! Under systemd the new process becomes the unit's main process (`MAINPID=`; the unit needs
//! `NotifyAccess=all`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::config::ProxyConfig;
use super::{Bound, ProxyError};
use crate::handover::{self, ProxyHandover};

/// How long a new process gets to serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an old process waits for its connections to end after handing over.
pub const DRAIN_MAX: Duration = Duration::from_secs(600);

/// What a proxy needs to hot-restart itself.
pub struct Restartable {
    /// The program to start: the path this one was started from.
    pub program: PathBuf,
    /// Its arguments (this process's, without the program name).
    pub args: Vec<OsString>,
    /// Hot restarts before this process.
    pub hot_restarts: u64,
    /// Set in a process started by a hot restart: where to say `ready`.
    pub ready: Option<OwnedFd>,
}

/// Close-on-exec duplicates of the proxy's listening sockets, taken when a hot restart
/// begins (the control API's is kept from the start: its address never changes at run time).
pub struct Kept {
    admin: Option<OwnedFd>,
    listeners: BTreeMap<String, OwnedFd>,
}

impl Kept {
    /// The control API's socket, kept for later hand-overs.
    pub fn admin(bound: &Bound) -> std::io::Result<Option<OwnedFd>> {
        bound
            .admin
            .as_ref()
            .map(|a| handover::dup(a.as_raw_fd()))
            .transpose()
    }

    /// Every listener's socket now (a listener moved at run time hands its new socket).
    pub fn now(
        admin: Option<&OwnedFd>,
        listeners: &[std::sync::Arc<super::listener::ListenerRt>],
    ) -> std::io::Result<Kept> {
        let mut out = BTreeMap::new();
        for l in listeners {
            if let Some(fd) = l.dup_socket() {
                out.insert(l.name.clone(), fd?);
            }
        }
        Ok(Kept {
            admin: admin.map(|a| handover::dup(a.as_raw_fd())).transpose()?,
            listeners: out,
        })
    }
}

/// Starts the new process and waits until it serves. Returns its pid, or why not (the new
/// process is then stopped if it still runs).
pub async fn start_successor(kept: &Kept, r: &Restartable) -> Result<u32, String> {
    let (read, write) = handover::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let doc = ProxyHandover {
        format: handover::FORMAT,
        from_pid: std::process::id(),
        from_version: format!("{} (commit {})", crate::version::VERSION, crate::version::COMMIT),
        hot_restarts: r.hot_restarts + 1,
        admin: kept.admin.as_ref().map(|f| f.as_raw_fd()),
        listeners: kept
            .listeners
            .iter()
            .map(|(n, f)| (n.clone(), f.as_raw_fd()))
            .collect(),
        ready: write.as_raw_fd(),
    };
    let json = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    let mut child = handover::spawn_inheriting(&r.program, &r.args, (handover::PROXY_ENV, &json), doc.fds())
        .map_err(|e| format!("cannot start {}: {e}", r.program.display()))?;
    drop(write);
    let pid = child.id();
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    let outcome = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) => return Err("the new process ended without serving".to_string()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.starts_with(b"ready\n") {
                        return Ok(());
                    }
                    if got.len() >= 6 {
                        return Err("the new process said something unexpected".to_string());
                    }
                }
                Err(e) => return Err(format!("cannot read from the new process: {e}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("the new process did not serve within {READY_TIMEOUT:?}")));
    match outcome {
        Ok(()) => {
            // Not ours to wait for any more: it outlives this process (reparented on exit).
            drop(child);
            Ok(pid)
        }
        Err(why) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = tokio::task::spawn_blocking(move || child.wait()).await;
            let status = match status {
                Ok(Ok(s)) => format!(" ({s})"),
                _ => String::new(),
            };
            Err(format!("{why}{status}"))
        }
    }
}

/// Tells the process that started this one that it serves.
pub fn say_ready(fd: OwnedFd) {
    use std::io::Write;
    let mut f = std::fs::File::from(fd);
    if let Err(e) = f.write_all(b"ready\n") {
        tracing::warn!(error = %e, "cannot tell the previous proxy process that this one serves");
    }
}

impl Bound {
    /// The sockets handed over by the previous process, by listener name; a listener it did
    /// not have is bound here. A listener whose address changed cannot take the old socket:
    /// that needs a full restart (the error says so).
    pub async fn from_handover(cfg: &ProxyConfig, h: &ProxyHandover) -> Result<Bound, ProxyError> {
        let take = |fd: std::os::fd::RawFd, what: String, want: std::net::SocketAddr| {
            let err = |source: std::io::Error| ProxyError::Bind {
                what: what.clone(),
                addr: want,
                source,
            };
            let owned = handover::dup(fd).map_err(err)?;
            let std = std::net::TcpListener::from(owned);
            let have = std.local_addr().map_err(err)?;
            if have != want && !(want.port() == 0 && have.ip() == want.ip()) {
                return Err(ProxyError::Conflict(format!(
                    "{what} listens on {have} but the configuration says {want}: an address change needs a full restart"
                )));
            }
            std.set_nonblocking(true).map_err(err)?;
            TcpListener::from_std(std).map_err(err)
        };
        let admin = match (cfg.admin, h.admin) {
            (Some(a), Some(fd)) => Some(take(fd, "the proxy control API".into(), a)?),
            (Some(a), None) => Some(TcpListener::bind(a).await.map_err(|source| ProxyError::Bind {
                what: "the proxy control API".into(),
                addr: a,
                source,
            })?),
            (None, _) => None,
        };
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            let socket = match h.listeners.get(&l.name) {
                Some(fd) => take(*fd, format!("listener {}", l.name), l.listen)?,
                None => TcpListener::bind(l.listen)
                    .await
                    .map_err(|source| ProxyError::Bind {
                        what: format!("listener {}", l.name),
                        addr: l.listen,
                        source,
                    })?,
            };
            listeners.push(socket);
        }
        Ok(Bound { admin, listeners })
    }
}
