//! One listener at run time: its settings, its backends, the accept loop, and the choice of a
//! backend for a new connection or request.
//!
//! The request path reads two snapshots and no lock it could wait on: the settings
//! (`Arc<Settings>` behind a `RwLock` that only a `PUT` writes) and the [`Targets`] (a
//! `tokio::sync::watch` that a new cluster view or a `PUT` replaces). Queued connections wait
//! on that same watch, so a new active node releases them at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{Balance, ListenerConfig, Mode};
use super::health;
use super::upstream::{now_ms, Upstream};
use super::watch::View;

/// Settings in force (replaced whole by a `PUT`).
pub struct Settings {
    pub cfg: ListenerConfig,
}

/// Where traffic may go, as of the last cluster view.
pub struct Targets {
    pub epoch: u64,
    /// `X-Standin-Epoch`, built once per epoch.
    pub epoch_header: HeaderValue,
    /// The active node's backend, once it serves as active.
    pub active: Option<Arc<Upstream>>,
    /// Every data node with an address for this listener's target.
    pub pool: Vec<Arc<Upstream>>,
}

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    pub open: AtomicUsize,
}

/// Serves one accepted client connection of a listener (by its protocol). Given by the proxy
/// at start, so that this file, which the protocol handlers build on, does not import them.
pub type ServeConnection = fn(Arc<ListenerRt>, TcpStream, SocketAddr);

pub struct ListenerRt {
    pub name: String,
    serve: ServeConnection,
    settings: RwLock<Arc<Settings>>,
    local_addr: RwLock<SocketAddr>,
    /// Stops the current accept loop (not the connections it accepted).
    accept_stop: Mutex<CancellationToken>,
    /// The socket the current accept loop serves (shared with it), for a hot restart to hand
    /// over; `None` once stopped, so the socket closes when its loop ends.
    socket: Mutex<Option<Arc<TcpListener>>>,
    targets: watch::Sender<Arc<Targets>>,
    upstreams: Mutex<BTreeMap<String, Arc<Upstream>>>,
    last_view: Mutex<Option<Arc<View>>>,
    /// Active health checks, one task per backend, by node id.
    checks: Mutex<BTreeMap<String, CancellationToken>>,
    rr: AtomicUsize,
    pub counters: Counters,
    /// The proxy's shutdown: ends accept loops, checks and connections.
    pub shutdown: CancellationToken,
    /// HTTP: idle keep-alive backend connections left by client connections that closed, for
    /// the next client connection (as HAProxy's `http-reuse`): without it, one connection per
    /// client request would cost a backend connect per request.
    pub backend_pool: Mutex<
        Vec<(
            Arc<Upstream>,
            hyper::client::conn::http1::SendRequest<hyper::body::Incoming>,
        )>,
    >,
}

/// What an attempt to reach a backend gave.
pub enum Picked {
    Backend(Arc<Upstream>, CancellationToken, Arc<Targets>),
    /// Nothing to forward to before the queue timeout.
    Nothing,
}

impl ListenerRt {
    /// Starts serving on `listener` (already bound).
    pub fn start(
        cfg: ListenerConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
        serve: ServeConnection,
    ) -> std::io::Result<Arc<ListenerRt>> {
        let addr = listener.local_addr()?;
        let (targets, _) = watch::channel(Arc::new(Targets {
            epoch: 0,
            epoch_header: HeaderValue::from_static("0"),
            active: None,
            pool: Vec::new(),
        }));
        let l = Arc::new(ListenerRt {
            name: cfg.name.clone(),
            serve,
            settings: RwLock::new(Arc::new(Settings { cfg })),
            local_addr: RwLock::new(addr),
            accept_stop: Mutex::new(CancellationToken::new()),
            socket: Mutex::new(None),
            targets,
            upstreams: Mutex::new(BTreeMap::new()),
            last_view: Mutex::new(None),
            checks: Mutex::new(BTreeMap::new()),
            rr: AtomicUsize::new(0),
            counters: Counters::default(),
            shutdown,
            backend_pool: Mutex::new(Vec::new()),
        });
        l.spawn_accept(listener);
        tracing::info!(listener = %l.name, listen = %addr, "listening");
        Ok(l)
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        *self.local_addr.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn targets(&self) -> Arc<Targets> {
        self.targets.borrow().clone()
    }

    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// A close-on-exec duplicate of the socket this listener accepts on (hot restart).
    pub fn dup_socket(&self) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        use std::os::fd::AsRawFd;
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(crate::handover::dup(socket.as_raw_fd()))
    }

    fn spawn_accept(self: &Arc<Self>, listener: TcpListener) {
        let listener = Arc::new(listener);
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener.clone());
        let stop = {
            let mut s = self.accept_stop.lock().unwrap_or_else(|p| p.into_inner());
            *s = self.shutdown.child_token();
            s.clone()
        };
        let l = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: do not spin.
                            tracing::warn!(listener = %l.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                l.counters.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                crate::net::keepalive(&stream, crate::net::HTTP_KEEPALIVE_SECS);
                (l.serve)(l.clone(), stream, peer);
            }
        });
    }

    /// Applies new settings without dropping connections: a new listen address is bound
    /// before the old listener closes; everything else applies to new connections/requests
    /// (an HTTP keep-alive connection picks up the new settings at its next request).
    pub async fn reconfigure(self: &Arc<Self>, cfg: ListenerConfig) -> std::io::Result<()> {
        let old = self.settings();
        // The address it is bound to counts as unchanged too (configured as port 0, then
        // PUT back with the port it got, as `GET` shows it).
        if cfg.listen != old.cfg.listen && cfg.listen != self.local_addr() {
            let listener = TcpListener::bind(cfg.listen).await?;
            let addr = listener.local_addr()?;
            let previous = std::mem::take(&mut *self.accept_stop.lock().unwrap_or_else(|p| p.into_inner()));
            self.spawn_accept(listener);
            previous.cancel();
            *self.local_addr.write().unwrap_or_else(|p| p.into_inner()) = addr;
            tracing::info!(listener = %self.name, listen = %addr, "listen address changed");
        }
        let restart_checks =
            cfg.health != old.cfg.health || cfg.mode != old.cfg.mode || cfg.protocol != old.cfg.protocol;
        let target_changed = cfg.target != old.cfg.target;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Settings { cfg });
        if target_changed {
            // Other addresses: the old backends' connections finish, new ones go to the new.
            let old_ups = std::mem::take(&mut *self.upstreams.lock().unwrap_or_else(|p| p.into_inner()));
            for u in old_ups.values() {
                u.retire(Some(old.cfg.drain_timeout));
            }
        }
        if restart_checks || target_changed {
            self.stop_checks();
        }
        let view = self.last_view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(v) = view {
            self.apply_view(&v);
        }
        Ok(())
    }

    /// Stops accepting and checking; open connections keep running until they end.
    pub fn stop(&self) {
        self.socket.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.accept_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
        self.stop_checks();
    }

    fn stop_checks(&self) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c) in std::mem::take(&mut *checks) {
            c.cancel();
        }
    }

    /// Follows a new cluster view: backends, their cluster verdict, the active node; closes
    /// or drains the connections of a replaced active node.
    pub fn apply_view(&self, view: &Arc<View>) {
        let settings = self.settings();
        let cfg = &settings.cfg;
        let prev_view = self
            .last_view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(view.clone());
        let mut ups = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let mut pool = Vec::new();
        for n in view
            .nodes
            .iter()
            .filter(|n| n.kind == crate::config::NodeKind::Data)
        {
            let Some(addr) = n.address(cfg.target) else {
                continue;
            };
            let up = match ups.get(&n.id) {
                Some(u) if u.addr == addr => u.clone(),
                other => {
                    if let Some(old) = other {
                        old.retire(Some(cfg.drain_timeout));
                    }
                    let u = Arc::new(Upstream::new(n.id.clone(), addr));
                    ups.insert(n.id.clone(), u.clone());
                    u
                }
            };
            up.set_cluster_ok(n.healthy && !n.maintenance && !n.drain);
            pool.push(up);
        }
        ups.retain(|id, u| {
            let keep = pool.iter().any(|p| &p.node == id);
            if !keep {
                u.retire(Some(cfg.drain_timeout));
            }
            keep
        });
        drop(ups);

        let active = view
            .serving_active()
            .and_then(|n| pool.iter().find(|u| u.node == n.id).cloned());
        let before = self.targets();
        if let Some(old) = &before.active {
            let replaced = active.as_ref().is_none_or(|a| !Arc::ptr_eq(a, old));
            if replaced && cfg.mode == Mode::Failover {
                let planned = prev_view.as_ref().is_some_and(|p| p.switchover.is_some())
                    || view.node(&old.node).is_some_and(|n| n.healthy && n.reachable);
                tracing::info!(
                    listener = %self.name, old = %old.node, new = ?active.as_ref().map(|a| &a.node),
                    epoch = view.epoch, planned,
                    "active node replaced: {}",
                    if planned { "draining its connections" } else { "closing its connections" }
                );
                old.retire(planned.then_some(cfg.drain_timeout));
            }
        }
        let epoch_header = if before.epoch == view.epoch {
            before.epoch_header.clone()
        } else {
            HeaderValue::from(view.epoch)
        };
        if cfg.mode == Mode::Balance {
            self.sync_checks(&settings, &pool);
        } else {
            for u in &pool {
                u.set_check_ok(true);
            }
        }
        self.targets.send_replace(Arc::new(Targets {
            epoch: view.epoch,
            epoch_header,
            active,
            pool,
        }));
    }

    fn sync_checks(&self, settings: &Settings, pool: &[Arc<Upstream>]) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks.retain(|id, c| {
            let keep = pool.iter().any(|u| &u.node == id);
            if !keep {
                c.cancel();
            }
            keep
        });
        for u in pool {
            if !checks.contains_key(&u.node) {
                let token = self.shutdown.child_token();
                checks.insert(u.node.clone(), token.clone());
                health::spawn(
                    self.name.clone(),
                    u.clone(),
                    settings.cfg.health.clone(),
                    settings.cfg.protocol,
                    token,
                );
            }
        }
    }

    /// Chooses a backend for new traffic, skipping `tried`.
    fn pick(&self, t: &Targets, cfg: &ListenerConfig, tried: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let untried = |u: &Arc<Upstream>| !tried.iter().any(|x| Arc::ptr_eq(x, u));
        match cfg.mode {
            Mode::Failover => t.active.clone().filter(untried),
            Mode::Balance => {
                let now = now_ms();
                // Ejected backends only when nothing else is left: the last one is never ejected.
                let fresh = |u: &Arc<Upstream>| u.serviceable() && untried(u) && u.ejected_for(now).is_none();
                let any = |u: &Arc<Upstream>| u.serviceable() && untried(u);
                self.choose(t, cfg.balance, fresh)
                    .or_else(|| self.choose(t, cfg.balance, any))
            }
        }
    }

    fn choose(
        &self,
        t: &Targets,
        balance: Balance,
        ok: impl Fn(&Arc<Upstream>) -> bool,
    ) -> Option<Arc<Upstream>> {
        let n = t.pool.len();
        if n == 0 {
            return None;
        }
        match balance {
            Balance::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| &t.pool[(start + i) % n]).find(|u| ok(u)).cloned()
            }
            Balance::LeastConn => {
                // Ties go round robin, so equal backends share the load.
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &t.pool[(start + i) % n])
                    .filter(|u| ok(u))
                    .min_by_key(|u| u.open.load(Ordering::Relaxed))
                    .cloned()
            }
        }
    }

    /// A backend for new traffic right now, without subscribing to changes (the fast path).
    pub fn pick_now(
        &self,
        cfg: &ListenerConfig,
        tried: &[Arc<Upstream>],
    ) -> Option<(Arc<Upstream>, Arc<Targets>)> {
        let t = self.targets.borrow().clone();
        let u = self.pick(&t, cfg, tried)?;
        Some((u, t))
    }

    /// Finds a backend for new traffic, waiting up to the queue timeout while there is none.
    /// `tried` holds backends that failed for this connection or request.
    pub async fn wait_pick(
        &self,
        cfg: &ListenerConfig,
        tried: &mut Vec<Arc<Upstream>>,
        deadline: Instant,
    ) -> Picked {
        let mut rx = self.targets.subscribe();
        loop {
            let t = rx.borrow_and_update().clone();
            if let Some(u) = self.pick(&t, cfg, tried) {
                let kill = u.kill_token();
                return Picked::Backend(u, kill, t);
            }
            let now = Instant::now();
            if now >= deadline {
                return Picked::Nothing;
            }
            // Re-check now and then even without a new view: health, ejections, and (failover)
            // the active node's service coming back.
            tokio::select! {
                _ = self.shutdown.cancelled() => return Picked::Nothing,
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline.min(now + Duration::from_millis(50))) => {}
            }
            if cfg.mode == Mode::Failover {
                tried.clear();
            }
        }
    }

    /// A TCP connection to a backend, with retries (balance) or waiting for the active node
    /// (failover), within the queue timeout.
    pub async fn connect(
        &self,
        cfg: &ListenerConfig,
    ) -> Option<(Arc<Upstream>, CancellationToken, TcpStream)> {
        let mut deadline = None;
        let mut tried = Vec::new();
        let mut attempts = 0u32;
        loop {
            let (u, kill) = match self.pick_now(cfg, &tried) {
                Some((u, _)) => {
                    let kill = u.kill_token();
                    (u, kill)
                }
                None => {
                    let d = *deadline
                        .get_or_insert_with(|| crate::config::later_tokio(Instant::now(), cfg.queue_timeout));
                    match self.wait_pick(cfg, &mut tried, d).await {
                        Picked::Backend(u, kill, _) => (u, kill),
                        Picked::Nothing => return None,
                    }
                }
            };
            match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(u.addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    u.record_success();
                    return Some((u, kill, s));
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %self.name, backend = %u.node, error = %e, "connect failed");
                }
                Err(_) => tracing::debug!(listener = %self.name, backend = %u.node, "connect timed out"),
            }
            u.record_failure(&cfg.outlier);
            attempts += 1;
            if cfg.mode == Mode::Balance && attempts > cfg.retries {
                return None;
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            deadline.get_or_insert_with(|| crate::config::later_tokio(Instant::now(), cfg.queue_timeout));
            tried.push(u);
        }
    }
}
