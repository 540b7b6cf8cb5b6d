//! The front proxy (`standin proxy`, or a node with a `[proxy]` section): one stable address
//! that reaches whichever node is active (failover mode), or every healthy data node (balance
//! mode, for services that can run active-active).
//!
//! How it fits together:
//! - `watch` follows the cluster (`GET /v1/watch` on any node) and publishes a [`watch::View`];
//! - each `listener` turns views into backends (`upstream`) and a target set, accepts
//!   connections and picks a backend per connection (`tcp`) or per request (`http`);
//! - `health` runs the proxy's own checks in balance mode; outlier ejection lives in `upstream`;
//! - `control` is the runtime API (`GET /v1/proxy`, `PUT|DELETE /v1/proxy/listeners/{name}`),
//!   `status` its JSON.
//!
//! When the active node changes, connections to the old one are drained until `drain-timeout`
//! if the move was planned (a switchover was in progress, or the old node is still healthy and
//! reachable), and closed at once otherwise. While the cluster cannot be reached, the last view
//! stays in force.

pub mod config;
pub mod control;
pub mod health;
pub mod http;
pub mod listener;
pub mod restart;
pub mod status;
pub mod tcp;
pub mod upstream;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::{ListenerConfig, ProxyConfig};
use listener::ListenerRt;
use status::ProxyStatus;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no listener {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A listener address the control API may not bind (`[proxy] allow-bind`).
    #[error("{0}")]
    Forbidden(String),
}

/// The proxy's sockets, bound before anything starts (so a taken port fails at once).
pub struct Bound {
    pub admin: Option<TcpListener>,
    pub listeners: Vec<TcpListener>,
}

impl Bound {
    pub async fn bind(cfg: &ProxyConfig) -> Result<Bound, ProxyError> {
        let admin = match cfg.admin {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|source| ProxyError::Bind {
                what: "the proxy control API".into(),
                addr: a,
                source,
            })?),
            None => None,
        };
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            listeners.push(
                TcpListener::bind(l.listen)
                    .await
                    .map_err(|source| ProxyError::Bind {
                        what: format!("listener {}", l.name),
                        addr: l.listen,
                        source,
                    })?,
            );
        }
        Ok(Bound { admin, listeners })
    }
}

/// The running proxy: its listeners and the cluster watcher.
pub struct Proxy {
    listeners: RwLock<BTreeMap<String, Arc<ListenerRt>>>,
    watcher: watch::Watcher,
    shutdown: CancellationToken,
    /// Serialises PUT/DELETE.
    changes: tokio::sync::Mutex<()>,
    /// The configuration the proxy started with (tokens, `allow-bind`).
    config: ProxyConfig,
    /// This process (shown in the status: which process answers after a hot restart).
    process: status::ProxyProcess,
}

impl Proxy {
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerRt>> {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn all(&self) -> Vec<Arc<ListenerRt>> {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn status(&self) -> ProxyStatus {
        ProxyStatus {
            cluster: self.watcher.status(),
            listeners: self.all().iter().map(|l| status::listener_status(l)).collect(),
            process: Some(self.process.clone()),
        }
    }

    /// Adds a listener or changes one in place (see [`ListenerRt::reconfigure`]). Through the
    /// API a listener may only bind what [`ProxyConfig::may_bind`] allows.
    pub async fn upsert(&self, cfg: ListenerConfig) -> Result<Arc<ListenerRt>, ProxyError> {
        cfg.validate(&format!("listener {}", cfg.name))?;
        if !self.config.may_bind(cfg.listen) {
            return Err(ProxyError::Forbidden(format!(
                "listener {}: {} is a privileged port or not a loopback address; \
                 the control API may bind it only if `proxy.allow-bind` lists it",
                cfg.name, cfg.listen
            )));
        }
        let _one_at_a_time = self.changes.lock().await;
        if cfg.listen.port() != 0 {
            if let Some(other) = self
                .all()
                .into_iter()
                .find(|l| l.name != cfg.name && l.local_addr() == cfg.listen)
            {
                return Err(ProxyError::Conflict(format!(
                    "{} is already used by listener {}",
                    cfg.listen, other.name
                )));
            }
        }
        let (name, listen) = (cfg.name.clone(), cfg.listen);
        let bind_error = |source| ProxyError::Bind {
            what: format!("listener {name}"),
            addr: listen,
            source,
        };
        if let Some(l) = self.listener(&cfg.name) {
            l.reconfigure(cfg.clone()).await.map_err(bind_error)?;
            tracing::info!(listener = %l.name, "listener changed");
            return Ok(l);
        }
        let socket = TcpListener::bind(cfg.listen).await.map_err(bind_error)?;
        let l =
            ListenerRt::start(cfg, socket, self.shutdown.clone(), serve_connection).map_err(bind_error)?;
        if let Some(v) = self.watcher.views.borrow().clone() {
            l.apply_view(&v);
        }
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), l.clone());
        Ok(l)
    }

    /// Stops a listener from accepting; its open connections run to their end.
    pub fn remove(&self, name: &str) -> Result<(), ProxyError> {
        let l = self
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| ProxyError::NotFound(name.to_string()))?;
        l.stop();
        tracing::info!(listener = %name, "listener removed");
        Ok(())
    }
}

/// Runs the proxy until `cancel` fires.
pub async fn run(cfg: ProxyConfig, bound: Bound, cancel: CancellationToken) -> Result<(), ProxyError> {
    run_restartable(cfg, bound, cancel, None).await
}

/// [`run`], and on SIGUSR2 a hot restart (see [`restart`]) when `restartable` says how: the
/// function then returns once the new process serves and this one's connections have ended.
pub async fn run_restartable(
    cfg: ProxyConfig,
    bound: Bound,
    cancel: CancellationToken,
    mut restartable: Option<restart::Restartable>,
) -> Result<(), ProxyError> {
    let kept_admin = match &restartable {
        Some(_) => restart::Kept::admin(&bound)
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot keep the control API's socket: no hot restart"),
            )
            .ok(),
        None => None,
    };
    let access = crate::api::client::Access::new(cfg.resolved_api_token.clone(), cfg.api_ca.as_deref())
        .map_err(|e| crate::config::invalid("proxy.api-ca", e.detail()))?;
    for api in &cfg.cluster {
        let warning = crate::api::client::plaintext_token_warning(
            api,
            cfg.resolved_api_token.is_some(),
            cfg.api_ca.is_some(),
        );
        if let Some(w) = warning {
            tracing::warn!(api = %api, warning = %w, "API token sent in plain text");
        }
    }
    let watcher = watch::spawn(cfg.cluster.clone(), access, cancel.clone());
    let mut listeners = BTreeMap::new();
    for (l, socket) in cfg.listeners.iter().zip(bound.listeners) {
        let rt =
            ListenerRt::start(l.clone(), socket, cancel.clone(), serve_connection).map_err(|source| {
                ProxyError::Bind {
                    what: format!("listener {}", l.name),
                    addr: l.listen,
                    source,
                }
            })?;
        listeners.insert(l.name.clone(), rt);
    }
    let proxy = Arc::new(Proxy {
        listeners: RwLock::new(listeners),
        watcher: watcher.clone(),
        shutdown: cancel.clone(),
        changes: tokio::sync::Mutex::new(()),
        config: cfg,
        process: status::ProxyProcess {
            pid: std::process::id(),
            version: crate::version::VERSION.into(),
            commit: crate::version::COMMIT.into(),
            hot_restarts: restartable.as_ref().map_or(0, |r| r.hot_restarts),
        },
    });
    // The control API stops with the accept loops when a successor takes over.
    let control = cancel.child_token();
    if let Some(admin) = bound.admin {
        if let Ok(a) = admin.local_addr() {
            tracing::info!(admin = %a, "proxy control API listening");
        }
        tokio::spawn(control::serve(admin, proxy.clone(), control.clone()));
    }
    if let Some(ready) = restartable.as_mut().and_then(|r| r.ready.take()) {
        restart::say_ready(ready);
    }
    if restartable.is_some() {
        // The standalone proxy (`Type=notify`); a node's own proxy leaves this to the node.
        crate::systemd::ready("serving");
    }
    let mut usr2 = match (&restartable, &kept_admin) {
        (Some(_), Some(_)) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot watch SIGUSR2: no hot restart"))
            .ok(),
        _ => None,
    };
    let mut views = watcher.views.clone();
    // Set once a successor serves: until when the open connections may drain.
    let mut draining: Option<std::time::Instant> = None;
    loop {
        let view = views.borrow_and_update().clone();
        if let Some(v) = view {
            for l in proxy.all() {
                l.apply_view(&v);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = views.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)), if draining.is_some() => {
                let open: usize = proxy
                    .all()
                    .iter()
                    .map(|l| l.counters.open.load(std::sync::atomic::Ordering::SeqCst))
                    .sum();
                if open == 0 || draining.is_some_and(|d| std::time::Instant::now() >= d) {
                    tracing::info!(open, "proxy hot restart: old process exits");
                    break;
                }
            }
            Some(()) = async { match usr2.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                let (Some(r), Some(admin)) = (&restartable, &kept_admin) else { continue };
                tracing::info!("SIGUSR2 received: hot restart of the proxy");
                let outcome = match restart::Kept::now(admin.as_ref(), &proxy.all()) {
                    Ok(kept) => restart::start_successor(&kept, r).await,
                    Err(e) => Err(format!("cannot duplicate the listening sockets: {e}")),
                };
                match outcome {
                    Err(why) => tracing::error!(reason = %why, "proxy hot restart failed: this process keeps serving"),
                    Ok(pid) => {
                        tracing::info!(new_pid = pid, "proxy hot restart: the new process serves; this one stops accepting and exits when its connections end");
                        crate::systemd::main_pid(pid);
                        control.cancel();
                        for l in proxy.all() {
                            l.stop();
                        }
                        // Views keep being applied while the connections drain: a failover
                        // meanwhile still retires the old active's connections.
                        draining = Some(crate::config::later(std::time::Instant::now(), restart::DRAIN_MAX));
                        usr2 = None;
                    }
                }
            }
        }
    }
    for l in proxy.all() {
        l.stop();
    }
    Ok(())
}

/// Serves one accepted client connection of `l` by the listener's protocol (in a task of its
/// own): the handlers build on the listener, the listener calls them through this.
fn serve_connection(
    l: std::sync::Arc<ListenerRt>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    match l.settings().cfg.protocol {
        config::Protocol::Tcp => drop(tokio::spawn(tcp::serve(l, stream))),
        config::Protocol::Http => drop(tokio::spawn(http::serve(l, stream, peer))),
    }
}
