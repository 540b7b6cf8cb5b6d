//! The Redis-protocol server of a data node: one task per connection, connection-level
//! commands handled here (PING, HELLO, AUTH, SELECT, CLIENT, COMMAND, INFO, MULTI/EXEC, WAIT,
//! READONLY), data commands parsed by `cmd` and sent through [`Replicator`].
//!
//! With `[store] tls` every connection is a TLS 1.3 session (the node certificate or the
//! store's own, reloaded when the files change); the handshake runs inside the client's
//! `max-clients` slot and has a deadline, so clients that never finish it cannot pile up.
//!
//! A connection reads every request already in its buffer (a pipeline) and sends runs of
//! consecutive writes as one group and runs of consecutive reads as one read, so pipelined
//! clients get group commit while each connection keeps its order.
//!
//! The client-facing limits are enforced here: `max-clients` (lowered to the open file limit
//! less a reserve for the rest of the node), the request size (from the peer frame limit, via
//! the codec), Redis's limits for clients that have not authenticated, a per-client reply
//! limit and a node-wide budget for all clients' buffers (an offending client is closed, never
//! the node), a slowdown of AUTH guessing per client address, and echoed arguments cut to
//! 128 bytes. Every limit is listed in the README under "Limits and failure behaviour".

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::replicate::Replicator;
use super::resp::{self, Limits, RespCodec, RespError};
use super::MAX_ENTRY_BYTES;
use crate::cluster::Cluster;
use crate::config::{Config, StoreConfig};
use crate::kv::cmd::{Op, Parsed};
use crate::kv::num::parse_i64;
use crate::kv::reply::Reply;
use crate::kv::{encoded_len, GroupKind, StoreError};
use crate::metrics::NodeMetrics;
use crate::metrics::StoreKind;
use crate::status::StatusSource;

/// Requests taken from one pipeline at most before replies are written.
const MAX_PIPELINE: usize = 512;

/// Replies are written out once this many bytes are buffered, so a long pipeline's replies
/// are never all held at once.
const FLUSH_AT: usize = 64 * 1024;

/// Each connection's buffers up to this size are not charged to `client-buffer-budget`
/// (their total is bounded by `max-clients` instead), so ordinary clients never meet it.
const FREE_PER_CLIENT: usize = 64 * 1024;

/// Arguments echoed in an error reply are cut to this many bytes, as Redis does.
pub const ECHO_MAX: usize = 128;

/// TCP keep-alive idle time of store connections (Redis `tcp-keepalive`, 300 s); probes
/// follow every third of it, three of them, as Redis sets them.
const TCP_KEEPALIVE_SECS: i32 = 300;

/// File descriptors kept for everything but store clients and the connection budgets counted
/// separately (see [`clamp_max_clients`]): redb's files, logs, the supervised service's and
/// the VIP keeper's pipes, the listeners. The front proxy's connections (`[proxy]`, in the same
/// process) are not counted: a node running it needs a file limit well above `max-clients`.
pub const FD_RESERVE: u64 = 64;

/// How much a pending `WAIT` reads ahead from its client (to notice it leave) before it stops
/// reading until the WAIT ends.
const WAIT_READ_AHEAD: usize = 64 * 1024;
/// A `WAIT` polls replication this often at first, doubling up to [`WAIT_POLL_MAX`].
const WAIT_POLL_MIN: Duration = Duration::from_millis(5);
const WAIT_POLL_MAX: Duration = Duration::from_millis(100);

/// A TLS client must finish its handshake within this long after connecting, or it is
/// closed: until then it holds one of the `max-clients` slots.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS files are checked for changes (a renewed certificate) at most this often, when a
/// client connects: new clients get the new certificate, connected ones keep theirs.
const TLS_RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Clients over `max-clients` whose TLS handshake is in progress to send them the refusal:
/// beyond this many at once, further ones are closed without it.
const TLS_REJECTS_AT_ONCE: usize = 64;

/// How long a refused client is given to take the refusal (its handshake included, over TLS).
const REJECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Failed AUTHs per client address within [`AUTH_WINDOW`] answered without delay.
pub const AUTH_FREE_FAILURES: u32 = 10;
/// The window failed AUTHs are counted in, per client address.
pub const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// At most one warning per client address this often (with the failures since the last).
const AUTH_WARN_EVERY: Duration = Duration::from_secs(10);
/// Client addresses tracked at most; beyond, the oldest window is forgotten.
const AUTH_MAX_ADDRESSES: usize = 4096;

/// How long a failed AUTH waits before its reply, given the failures from its address in the
/// current window including this one: none up to [`AUTH_FREE_FAILURES`], then 10 ms doubling
/// per failure up to 1 s. Only the failing connection waits.
pub fn auth_delay(failures: u32) -> Duration {
    if failures <= AUTH_FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - AUTH_FREE_FAILURES - 1).min(7);
    Duration::from_millis(10u64 << doublings).min(Duration::from_secs(1))
}

/// What the store server takes from the node it runs in: narrow handles (no whole node), so
/// it can also be started in-process on port 0 against a one-node cluster in a test.
#[derive(Clone)]
pub struct StoreContext {
    pub config: Arc<Config>,
    pub cluster: Cluster,
    pub metrics: Arc<NodeMetrics>,
    /// The node's own TLS material (`None`: `[tls] insecure`), reused when `[store] tls`
    /// names no certificate of its own.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The cluster's view, for `INFO`.
    pub status: Arc<dyn StatusSource>,
}

struct Shared {
    ctx: StoreContext,
    cfg: StoreConfig,
    replicator: Replicator,
    clients: Arc<Semaphore>,
    next_id: AtomicU64,
    budget: Budget,
    auth_failures: AuthFailures,
}

/// The most store clients this process can serve: `max-clients`, lowered to the file limit
/// less what the rest of the node may hold at once, as Redis lowers `maxclients`: [`FD_RESERVE`],
/// the admin API's `max-connections`, the cluster transport's inbound connections and one
/// outbound connection per path to each peer. So a flood of store clients never starves the
/// admin API or the peers. At least 1.
pub fn clamp_max_clients(max_clients: u32, file_limit: u64, config: &Config) -> u32 {
    let peer_paths: u64 = config
        .members
        .iter()
        .filter(|m| m.id != config.node.id)
        .map(|m| m.addresses.len() as u64)
        .sum();
    let reserve = FD_RESERVE
        .saturating_add(config.api.max_connections as u64)
        .saturating_add(crate::cluster::transport::MAX_INBOUND_CONNS as u64)
        .saturating_add(crate::cluster::transport::MAX_PENDING_HANDSHAKES as u64)
        .saturating_add(peer_paths);
    let room = file_limit.saturating_sub(reserve).max(1);
    u32::try_from(room).map_or(max_clients, |room| max_clients.min(room))
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), if it can be read.
pub fn file_limit() -> Option<u64> {
    nofile().ok().map(|l| l.rlim_cur)
}

#[allow(unsafe_code)]
fn nofile() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// Raises the soft limit on open files to the hard limit (as Redis does at start up, so
/// `max-clients` is clamped as little as the system allows). Returns the (soft, hard) limits
/// in effect afterwards.
#[allow(unsafe_code)]
pub fn raise_file_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = nofile()?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given, which lives on this stack.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = nofile()?;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Serves the store on `listener` until `cancel` fires. With `[store] tls`, clients speak
/// TLS 1.3 (the material was checked when the config loaded; if it no longer loads, the store
/// is not served rather than served in clear).
pub async fn serve(
    listener: TcpListener,
    ctx: StoreContext,
    cfg: StoreConfig,
    replicator: Replicator,
    cancel: CancellationToken,
) {
    let max_clients = match file_limit() {
        Some(limit) => {
            let clamped = clamp_max_clients(cfg.max_clients, limit, &ctx.config);
            if clamped < cfg.max_clients {
                tracing::warn!(
                    configured = cfg.max_clients,
                    serving = clamped,
                    file_limit = limit,
                    "store max-clients lowered to what the open file limit allows"
                );
            }
            clamped
        }
        None => cfg.max_clients,
    };
    let tls = match cfg.tls_files(&ctx.config.tls) {
        None => None,
        // The node's own certificate: the material the transport uses, reloaded with it
        // (every 2 s and on SIGHUP).
        Some(_) if cfg.tls_cert.is_none() && ctx.tls.is_some() => ctx.tls.clone(),
        Some(files) => match crate::tls::Tls::load(files, None) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!(error = %e, "store TLS material does not load; the store is not served");
                return;
            }
        },
    };
    let mut acceptor = tls.as_deref().map(store_acceptor);
    let mut acceptor_generation = tls.as_ref().map_or(0, |t| t.generation());
    let tls_rejects = Arc::new(Semaphore::new(TLS_REJECTS_AT_ONCE));
    let mut reload_checked = Instant::now();
    let shared = Arc::new(Shared {
        ctx,
        clients: Arc::new(Semaphore::new(max_clients as usize)),
        budget: Budget {
            used: AtomicUsize::new(0),
            limit: usize::try_from(cfg.client_buffer_budget).unwrap_or(usize::MAX),
        },
        cfg,
        replicator,
        next_id: AtomicU64::new(1),
        auth_failures: AuthFailures::default(),
    });
    while let Some((stream, remote)) = crate::cluster::transport::accept(&listener, &cancel).await {
        if let Some(t) = tls
            .as_ref()
            .filter(|_| reload_checked.elapsed() >= TLS_RELOAD_CHECK)
        {
            reload_checked = Instant::now();
            if let Err(e) = t.reload_if_changed() {
                tracing::warn!(error = %e, "store TLS files changed but do not load; the old certificate stays in use")
            }
        }
        // New material, loaded here or (for the node's own certificate) by the node on a
        // change or SIGHUP: new clients get it.
        if let Some(t) = tls.as_ref().filter(|t| t.generation() != acceptor_generation) {
            acceptor_generation = t.generation();
            acceptor = Some(store_acceptor(t));
            tracing::info!("store TLS certificate reloaded");
        }
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let cancel = cancel.clone();
        let tls_rejects = tls_rejects.clone();
        tokio::spawn(async move {
            let Ok(permit) = shared.clients.clone().try_acquire_owned() else {
                match acceptor {
                    None => reject(stream).await,
                    // The refusal is sent once the handshake is done, a few at a time.
                    Some(acceptor) => {
                        if let Ok(_slot) = tls_rejects.try_acquire() {
                            let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    reject(tls).await;
                                }
                            })
                            .await;
                        }
                    }
                }
                return;
            };
            // A client that vanished without a FIN frees its slot even though idle clients
            // are never timed out (Redis `timeout 0`).
            crate::net::keepalive(&stream, TCP_KEEPALIVE_SECS);
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let span = tracing::debug_span!("store.conn", client.id = id, client.addr = %remote);
            let _e = span.enter();
            match acceptor {
                None => {
                    let (rd, wr) = stream.into_split();
                    handle(rd, wr, remote, shared, id, cancel).await;
                }
                Some(acceptor) => {
                    // The handshake holds the client's slot, so it has a deadline.
                    let done = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                    };
                    match done {
                        Ok(Ok(tls)) => {
                            let (rd, wr) = tokio::io::split(tls);
                            handle(rd, wr, remote, shared, id, cancel).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client.addr = %remote, error = %e, "store TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client.addr = %remote, "store TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The store's TLS server config: the node's (or the store's own) certificate without the
/// HTTP ALPN of the shared acceptor. A client that offers ALPN (`redis`, say) would otherwise be
/// refused with `no_application_protocol`; Redis negotiates none.
fn store_acceptor(tls: &crate::tls::Tls) -> tokio_rustls::TlsAcceptor {
    let mut cfg = (**tls.acceptor().config()).clone();
    cfg.alpn_protocols.clear();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Refuses a client over `max-clients` as Redis does: the error, then close. Bounded, so a
/// client that does not read cannot hold the descriptor.
async fn reject<S: AsyncWrite + Unpin>(mut stream: S) {
    let mut out = BytesMut::new();
    resp::encode(
        &Reply::Error("ERR max number of clients reached".into()),
        2,
        &mut out,
    );
    let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// All clients' buffers beyond [`FREE_PER_CLIENT`] each, against `client-buffer-budget`.
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// One connection's share of the [`Budget`], given back when the connection ends.
struct Charge<'a> {
    budget: &'a Budget,
    held: usize,
}

impl<'a> Charge<'a> {
    fn new(budget: &'a Budget) -> Self {
        Charge { budget, held: 0 }
    }

    /// Records that the connection's buffers now take `bytes`. False when growing to it
    /// takes the node's total over the budget: the connection must then be closed.
    fn set(&mut self, bytes: usize) -> bool {
        let want = bytes.saturating_sub(FREE_PER_CLIENT);
        if want <= self.held {
            self.budget.used.fetch_sub(self.held - want, Ordering::Relaxed);
            self.held = want;
            return true;
        }
        let add = want - self.held;
        let before = self.budget.used.fetch_add(add, Ordering::Relaxed);
        self.held = want;
        before.saturating_add(add) <= self.budget.limit
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Failed AUTHs per client address: counted, logged at most every [`AUTH_WARN_EVERY`] per
/// address, and slowed down beyond [`AUTH_FREE_FAILURES`] (see [`auth_delay`]).
#[derive(Default)]
struct AuthFailures {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

struct Failures {
    window_start: Instant,
    in_window: u32,
    last_warn: Option<Instant>,
    unreported: u64,
}

impl AuthFailures {
    /// Records a failed AUTH from `ip`, logs it (at most every [`AUTH_WARN_EVERY`] per
    /// address) and returns how long to wait before replying.
    fn failed(&self, ip: IpAddr) -> Duration {
        let (delay, report) = self.record(ip, Instant::now());
        if let Some((failures, in_window)) = report {
            tracing::warn!(
                client.addr = %ip,
                failures,
                in_window,
                "store AUTH failed (wrong password) from this address"
            );
        }
        delay
    }

    /// Counts a failure from `ip` at `now`: the delay before the reply, and, when a warning is
    /// due, the failures since the last warning and in the current window.
    fn record(&self, ip: IpAddr, now: Instant) -> (Duration, Option<(u64, u32)>) {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= AUTH_MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, f| now.saturating_duration_since(f.window_start) < AUTH_WINDOW);
            if map.len() >= AUTH_MAX_ADDRESSES {
                let oldest = map.iter().min_by_key(|(_, f)| f.window_start).map(|(a, _)| *a);
                if let Some(a) = oldest {
                    map.remove(&a);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            window_start: now,
            in_window: 0,
            last_warn: None,
            unreported: 0,
        });
        if now.saturating_duration_since(f.window_start) >= AUTH_WINDOW {
            f.window_start = now;
            f.in_window = 0;
        }
        f.in_window = f.in_window.saturating_add(1);
        f.unreported += 1;
        let mut report = None;
        if f.last_warn
            .is_none_or(|t| now.saturating_duration_since(t) >= AUTH_WARN_EVERY)
        {
            report = Some((f.unreported, f.in_window));
            f.last_warn = Some(now);
            f.unreported = 0;
        }
        (auth_delay(f.in_window), report)
    }
}

/// Per-connection state.
struct Conn {
    id: u64,
    /// The client's address, for counting failed AUTHs.
    ip: IpAddr,
    name: Option<Bytes>,
    authed: bool,
    readonly: bool,
    /// Queued commands between MULTI and EXEC; `Some(true)` in `multi_error` = EXECABORT.
    multi: Option<Vec<Op>>,
    /// Encoded size of the queued commands: a transaction is one log entry.
    multi_bytes: usize,
    multi_error: bool,
}

/// The connection's read side, for what must read while a request is pending (`WAIT`).
struct ConnIo<R> {
    rd: R,
    inbuf: BytesMut,
}

fn err(s: impl Into<String>) -> Reply {
    Reply::Error(s.into())
}

fn store_error(e: &StoreError) -> Reply {
    match e {
        StoreError::NoLeader => {
            err("CLUSTERDOWN no Raft leader (election in progress or quorum lost); try again")
        }
        StoreError::Unknown(m) => err(format!(
            "ERR write outcome unknown ({m}); it may or may not have been applied"
        )),
        StoreError::Refused(m) => err(format!("ERR {m}")),
    }
}

/// One unit of work taken from the pipeline, in order.
enum Item {
    /// A connection-level reply computed here.
    Reply(Reply),
    Write(Op),
    Read(Op),
    Close(Reply),
    /// The client went away (noticed while a request was pending): nothing to answer.
    Gone,
}

/// Serves one client, on a TCP connection or a TLS session (its two halves).
async fn handle<R, W>(
    rd: R,
    mut wr: W,
    remote: SocketAddr,
    shared: Arc<Shared>,
    id: u64,
    cancel: CancellationToken,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let max_request = usize::try_from(shared.cfg.max_request_size).unwrap_or(usize::MAX);
    let limits = Limits {
        max_bulk_len: max_request,
        max_request_len: max_request,
        ..Limits::default()
    };
    let output_limit = usize::try_from(shared.cfg.client_output_buffer_limit).unwrap_or(usize::MAX);
    let mut codec = RespCodec::new(limits);
    let mut io = ConnIo {
        rd,
        inbuf: BytesMut::with_capacity(16 * 1024),
    };
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut charge = Charge::new(&shared.budget);
    let mut conn = Conn {
        id,
        ip: remote.ip(),
        name: None,
        authed: shared.cfg.resolved_requirepass.is_none(),
        readonly: false,
        multi: None,
        multi_bytes: 0,
        multi_error: false,
    };
    codec.set_authenticated(conn.authed);
    loop {
        // Everything already buffered is one pipeline. Before AUTH one request at a time: the
        // size limits for unauthenticated clients apply until the AUTH has run, not after.
        let mut requests = Vec::new();
        let mut protocol_error = None;
        while requests.len() < MAX_PIPELINE {
            match codec.decode(&mut io.inbuf) {
                Ok(Some(args)) => {
                    requests.push(args);
                    if !conn.authed {
                        break;
                    }
                }
                Ok(None) => break,
                Err(RespError::Protocol(msg)) => {
                    protocol_error = Some(msg);
                    break;
                }
                Err(RespError::Io(_)) => return,
            }
        }
        if requests.is_empty() && protocol_error.is_none() {
            let n = tokio::select! {
                _ = cancel.cancelled() => return,
                r = io.rd.read_buf(&mut io.inbuf) => match r { Ok(n) => n, Err(_) => return },
            };
            if n == 0 {
                return;
            }
            if !charge.set(io.inbuf.capacity() + codec.pending_bytes()) {
                over_budget(&mut wr, conn.id, "read").await;
                return;
            }
            continue;
        }
        let mut items = Vec::with_capacity(requests.len());
        for args in requests {
            let item = classify(&shared, &mut conn, &args, &mut codec, &mut io, &cancel).await;
            if matches!(item, Item::Gone) {
                return;
            }
            let close = matches!(item, Item::Close(_));
            items.push(item);
            if close {
                break;
            }
        }
        codec.set_authenticated(conn.authed);
        let mut close = false;
        for (frame, last) in execute(&shared, &mut conn, items).await {
            let frame = match last {
                Some(f) => {
                    close = true;
                    f
                }
                None => frame,
            };
            // The reply's size is known before it is encoded: one over the client's output
            // limit or the node's budget closes the connection instead of being buffered
            // (Redis closes a client over its output buffer hard limit without a reply).
            let size = resp::encoded_len(&frame, codec.protocol());
            if size > output_limit {
                tracing::warn!(
                    client.id = conn.id,
                    reply_bytes = size,
                    "store client closed: reply over client-output-buffer-limit"
                );
                // The replies before it still go out (bounded: a client that does not read
                // cannot hold the connection).
                let _ = tokio::time::timeout(Duration::from_secs(1), write_out(&mut wr, &out)).await;
                return;
            }
            if !charge.set(io.inbuf.capacity() + codec.pending_bytes() + out.len() + size) {
                over_budget(&mut wr, conn.id, "reply").await;
                return;
            }
            let _ = codec.encode(frame, &mut out);
            if out.len() >= FLUSH_AT {
                if write_out(&mut wr, &out).await.is_err() {
                    return;
                }
                out.clear();
                if out.capacity() > 4 * FLUSH_AT {
                    out = BytesMut::with_capacity(16 * 1024);
                }
            }
            if close {
                break;
            }
        }
        if let Some(msg) = protocol_error {
            // Like Redis: reply with the protocol error, then close the connection.
            let _ = codec.encode(err(msg), &mut out);
            close = true;
        }
        if write_out(&mut wr, &out).await.is_err() || close {
            if close {
                // A TLS client is told the session ends (close_notify); bounded.
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            }
            return;
        }
        out.clear();
        if out.capacity() > 4 * FLUSH_AT {
            out = BytesMut::with_capacity(16 * 1024);
        }
        // Shrinking never fails.
        let _ = charge.set(io.inbuf.capacity() + codec.pending_bytes() + out.capacity());
    }
}

/// Writes `out` and flushes it: a TLS session holds written data in its records until then.
async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &[u8]) -> std::io::Result<()> {
    wr.write_all(out).await?;
    wr.flush().await
}

/// Closes a client whose buffers would take the node over `client-buffer-budget`, with an
/// error it can read if it is listening.
async fn over_budget<W: AsyncWrite + Unpin>(wr: &mut W, client: u64, what: &'static str) {
    tracing::warn!(
        client.id = client,
        buffer = what,
        "store client closed: client buffers over client-buffer-budget"
    );
    let mut out = BytesMut::new();
    resp::encode(
        &err("ERR client buffers over the node's client-buffer-budget; closing the connection"),
        2,
        &mut out,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), write_out(wr, &out)).await;
}

/// Runs the items in order: consecutive writes as one group, consecutive reads as one read.
/// Returns (reply, close-after) pairs.
async fn execute(shared: &Shared, conn: &mut Conn, items: Vec<Item>) -> Vec<(Reply, Option<Reply>)> {
    let mut out = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.next() {
        match item {
            Item::Reply(f) => out.push((f, None)),
            Item::Close(f) => {
                out.push((Reply::Simple(String::new()), Some(f)));
                break;
            }
            Item::Gone => break,
            Item::Write(op) => {
                let (ops, bytes) = write_run(op, &mut items);
                let n = ops.len();
                let started = Instant::now();
                let result = write_with_retry(shared, ops, bytes, GroupKind::Pipeline, conn.id).await;
                shared
                    .ctx
                    .metrics
                    .store_done(StoreKind::Write, n, result.is_ok(), started.elapsed());
                match result {
                    Ok(replies) => out.extend(pad(replies, n).into_iter().map(|r| (r, None))),
                    Err(e) => out.extend((0..n).map(|_| (store_error(&e), None))),
                }
            }
            Item::Read(op) => {
                let mut ops = vec![op];
                while let Some(Item::Read(_)) = items.peek() {
                    if let Some(Item::Read(op)) = items.next() {
                        ops.push(op);
                    }
                }
                let n = ops.len();
                let started = Instant::now();
                let (kind, result) = if conn.readonly {
                    (StoreKind::StaleRead, Ok(shared.replicator.read_stale(&ops)))
                } else {
                    (StoreKind::Read, read_with_retry(shared, ops).await)
                };
                shared
                    .ctx
                    .metrics
                    .store_done(kind, n, result.is_ok(), started.elapsed());
                match result {
                    Ok(replies) => out.extend(pad(replies, n).into_iter().map(|r| (r, None))),
                    Err(e) => out.extend((0..n).map(|_| (store_error(&e), None))),
                }
            }
        }
    }
    out
}

/// `first` and the writes right after it, as one group: cut where the next write would take
/// the group past what one log entry may carry ([`MAX_ENTRY_BYTES`]), so a pipeline of large
/// writes goes out as several entries instead of one that no peer frame can hold.
/// Returns the ops and their encoded size.
fn write_run<I: Iterator<Item = Item>>(first: Op, items: &mut std::iter::Peekable<I>) -> (Vec<Op>, usize) {
    let mut bytes = encoded_len(std::slice::from_ref(&first));
    let mut ops = vec![first];
    while let Some(Item::Write(next)) = items.peek() {
        let more = encoded_len(std::slice::from_ref(next));
        if bytes.saturating_add(more) > MAX_ENTRY_BYTES {
            break;
        }
        if let Some(Item::Write(op)) = items.next() {
            bytes += more;
            ops.push(op);
        }
    }
    (ops, bytes)
}

fn pad(mut replies: Vec<Reply>, n: usize) -> Vec<Reply> {
    replies.resize_with(n, || Reply::Error("ERR internal: missing reply".into()));
    replies
}

/// During a failover there is briefly no leader: wait for one (bounded) rather than fail.
async fn write_with_retry(
    shared: &Shared,
    ops: Vec<Op>,
    bytes: usize,
    kind: GroupKind,
    client: u64,
) -> Result<Vec<Reply>, StoreError> {
    let deadline = Instant::now() + shared.cfg.retry_for;
    loop {
        match shared.replicator.write(ops.clone(), bytes, kind, client).await {
            Err(e) if e.retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

async fn read_with_retry(shared: &Shared, ops: Vec<Op>) -> Result<Vec<Reply>, StoreError> {
    let deadline = Instant::now() + shared.cfg.retry_for;
    loop {
        match shared.replicator.read(ops.clone()).await {
            Err(e) if e.retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

fn arity(name: &str) -> Reply {
    err(format!("ERR wrong number of arguments for '{name}' command"))
}

/// A command name, subcommand or option, lowercased; cut to [`ECHO_MAX`] bytes, which no
/// name or number understood here reaches, so an error that echoes it echoes at most that.
fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b.get(..ECHO_MAX).unwrap_or(b)).to_ascii_lowercase()
}

/// A client-provided argument as echoed in an error: at most `max` bytes of it (Redis
/// prints arguments with `%.128s`).
fn echo(arg: &[u8], max: usize) -> String {
    String::from_utf8_lossy(arg.get(..max).unwrap_or(arg)).into_owned()
}

/// Redis's unknown-command error: the name cut to [`ECHO_MAX`] bytes, then arguments while
/// fewer than [`ECHO_MAX`] bytes of them were echoed, each cut to what is left of that.
fn unknown(args: &[Bytes]) -> Reply {
    let name = echo(&args[0], ECHO_MAX);
    let mut rest = String::new();
    for a in &args[1..] {
        if rest.len() >= ECHO_MAX {
            break;
        }
        rest.push_str(&format!("'{}' ", echo(a, ECHO_MAX - rest.len())));
    }
    err(format!(
        "ERR unknown command '{name}', with args beginning with: {rest}"
    ))
}

/// Decides what one request is: answered here, a write, or a read.
async fn classify<R: AsyncRead + Unpin>(
    shared: &Shared,
    conn: &mut Conn,
    args: &[Bytes],
    codec: &mut RespCodec,
    io: &mut ConnIo<R>,
    cancel: &CancellationToken,
) -> Item {
    let name = lower(&args[0]);
    // Before AUTH only AUTH, HELLO and QUIT are allowed (requirepass semantics).
    if !conn.authed && !matches!(name.as_str(), "auth" | "hello" | "quit") {
        return Item::Reply(err("NOAUTH Authentication required."));
    }
    // Inside MULTI everything but the transaction commands is queued.
    if conn.multi.is_some() && !matches!(name.as_str(), "exec" | "discard" | "multi" | "watch" | "quit") {
        return match crate::kv::parse(args) {
            Ok(Parsed::Data(op)) => {
                // The block is one log entry: it must fit one.
                let bytes = conn
                    .multi_bytes
                    .saturating_add(encoded_len(std::slice::from_ref(&op)));
                if bytes > MAX_ENTRY_BYTES {
                    conn.multi_error = true;
                    if let Some(q) = conn.multi.as_mut() {
                        q.clear();
                    }
                    conn.multi_bytes = 0;
                    return Item::Reply(err(format!(
                        "ERR transaction exceeds the largest replicated entry ({MAX_ENTRY_BYTES} bytes)"
                    )));
                }
                conn.multi_bytes = bytes;
                if let Some(q) = conn.multi.as_mut() {
                    q.push(op);
                }
                Item::Reply(Reply::Simple("QUEUED".into()))
            }
            Ok(Parsed::NotData) => {
                conn.multi_error = true;
                Item::Reply(err(format!(
                    "ERR Command not allowed inside a transaction or unknown: '{name}'"
                )))
            }
            Err(e) => {
                conn.multi_error = true;
                Item::Reply(e)
            }
        };
    }
    match name.as_str() {
        "ping" => match args.len() {
            1 => Item::Reply(Reply::Simple("PONG".into())),
            2 => Item::Reply(Reply::Bulk(args[1].clone())),
            _ => Item::Reply(arity("ping")),
        },
        "echo" => match args.len() {
            2 => Item::Reply(Reply::Bulk(args[1].clone())),
            _ => Item::Reply(arity("echo")),
        },
        "quit" => Item::Close(Reply::Ok),
        "select" => match args.get(1) {
            Some(db) if args.len() == 2 => match parse_i64(db) {
                Some(0) => Item::Reply(Reply::Ok),
                Some(_) => Item::Reply(err("ERR DB index is out of range")),
                None => Item::Reply(err("ERR value is not an integer or out of range")),
            },
            _ => Item::Reply(arity("select")),
        },
        "auth" => Item::Reply(auth(shared, conn, &args[1..]).await),
        "hello" => hello(shared, conn, args, codec).await,
        "client" => Item::Reply(client(conn, args)),
        "command" => Item::Reply(command(args)),
        "info" => Item::Reply(Reply::Bulk(Bytes::from(info(shared).await))),
        "readonly" => {
            conn.readonly = true;
            Item::Reply(Reply::Ok)
        }
        "readwrite" => {
            conn.readonly = false;
            Item::Reply(Reply::Ok)
        }
        "multi" => {
            if conn.multi.is_some() {
                return Item::Reply(err("ERR MULTI calls can not be nested"));
            }
            conn.multi = Some(Vec::new());
            conn.multi_bytes = 0;
            conn.multi_error = false;
            Item::Reply(Reply::Ok)
        }
        "discard" => match conn.multi.take() {
            Some(_) => Item::Reply(Reply::Ok),
            None => Item::Reply(err("ERR DISCARD without MULTI")),
        },
        "exec" => {
            let Some(queued) = conn.multi.take() else {
                return Item::Reply(err("ERR EXEC without MULTI"));
            };
            let bytes = std::mem::take(&mut conn.multi_bytes);
            if std::mem::take(&mut conn.multi_error) {
                return Item::Reply(err("EXECABORT Transaction discarded because of previous errors."));
            }
            if queued.is_empty() {
                return Item::Reply(Reply::Array(Vec::new()));
            }
            // One log entry, applied atomically: reads inside see the writes before them.
            match write_with_retry(shared, queued, bytes, GroupKind::Exec, conn.id).await {
                // An Exec group has exactly one reply: the array of the block's replies.
                Ok(replies) => Item::Reply(
                    replies
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| err("ERR internal: missing EXEC reply")),
                ),
                Err(e) => Item::Reply(store_error(&e)),
            }
        }
        "wait" => wait(shared, args, io, cancel).await,
        // Client tools (redis-benchmark, redis-cli) read settings with CONFIG GET; nothing is
        // configurable through the protocol: the TOML file is the one source.
        "config" => match args.get(1).map(|a| lower(a)).as_deref() {
            Some("get") if args.len() >= 3 => Item::Reply(Reply::Map(Vec::new())),
            Some("get") => Item::Reply(arity("config|get")),
            Some("set") | Some("rewrite") | Some("resetstat") => {
                Item::Reply(err("ERR standin is configured through its TOML file, not CONFIG"))
            }
            _ => Item::Reply(err("ERR unknown subcommand. Try CONFIG HELP.")),
        },
        _ => match crate::kv::parse(args) {
            Ok(Parsed::Data(op)) if op.is_write() => Item::Write(op),
            Ok(Parsed::Data(op)) => Item::Read(op),
            Ok(Parsed::NotData) => Item::Reply(unknown(args)),
            Err(e) => Item::Reply(e),
        },
    }
}

/// AUTH: a wrong password is counted per client address and, past a few, answered late (see
/// [`auth_delay`]); only this connection waits.
async fn auth(shared: &Shared, conn: &mut Conn, args: &[Bytes]) -> Reply {
    let (pass, named) = match args.len() {
        1 => (&args[0], false),
        // AUTH username password (Redis 6): only the default user exists.
        2 if &args[0][..] == b"default" => (&args[1], true),
        2 => return err("WRONGPASS invalid username-password pair or user is disabled."),
        _ => return arity("auth"),
    };
    match &shared.cfg.resolved_requirepass {
        // Without a password the default user is `nopass` in Redis: any password works when
        // the user is named, the one-argument form is an error.
        None if named => Reply::Ok,
        None => err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
        Some(p) if crate::config::rules::secret_eq(p.as_bytes(), pass) => {
            conn.authed = true;
            Reply::Ok
        }
        Some(_) => {
            shared.ctx.metrics.store_auth_failed();
            let delay = shared.auth_failures.failed(conn.ip);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }
}

async fn hello(shared: &Shared, conn: &mut Conn, args: &[Bytes], codec: &mut RespCodec) -> Item {
    let mut i = 1;
    let mut proto = None;
    if let Some(v) = args.get(1) {
        match parse_i64(v) {
            Some(p @ (2 | 3)) => proto = Some(p as u8),
            _ => return Item::Reply(err("NOPROTO unsupported protocol version")),
        }
        i = 2;
    }
    while i < args.len() {
        match lower(&args[i]).as_str() {
            "auth" => {
                if i + 3 > args.len() {
                    return Item::Reply(err("ERR Syntax error in HELLO option 'auth'"));
                }
                let reply = auth(shared, conn, &args[i + 1..i + 3]).await;
                if let Reply::Error(_) = reply {
                    return Item::Reply(reply);
                }
                i += 3;
            }
            "setname" if i + 1 < args.len() => {
                conn.name = Some(args[i + 1].clone());
                i += 2;
            }
            other => {
                return Item::Reply(err(format!("ERR Syntax error in HELLO option '{other}'")));
            }
        }
    }
    if !conn.authed {
        return Item::Reply(err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"));
    }
    if let Some(p) = proto {
        codec.set_protocol(p);
    }
    let proto = codec.protocol();
    let s = |v: &str| Reply::Bulk(Bytes::from(v.to_string()));
    Item::Reply(Reply::Map(vec![
        (s("server"), s("standin")),
        (s("version"), s(crate::version::VERSION)),
        (s("proto"), Reply::Int(i64::from(proto))),
        (s("id"), Reply::Int(conn.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::Array(Vec::new())),
    ]))
}

fn client(conn: &mut Conn, args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|a| lower(a)) else {
        return arity("client");
    };
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            if args[2].iter().any(|b| *b == b' ' || *b == b'\n') {
                return err("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            conn.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::Ok
        }
        ("getname", 2) => conn.name.clone().map(Reply::Bulk).unwrap_or(Reply::Nil),
        ("id", 2) => Reply::Int(conn.id as i64),
        // Sent by recent client libraries on connect.
        ("setinfo", 4) => Reply::Ok,
        ("setname" | "getname" | "id" | "setinfo", _) => arity(&format!("client|{sub}")),
        _ => err(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            echo(&args[1], ECHO_MAX)
        )),
    }
}

/// Enough of COMMAND for redis-cli and client libraries: COUNT, DOCS and INFO answer with
/// what we know (an empty docs map is valid and makes redis-cli fall back to plain input).
fn command(args: &[Bytes]) -> Reply {
    match args.get(1).map(|a| lower(a)).as_deref() {
        None => Reply::Array(Vec::new()),
        // The data commands plus the connection commands handled here.
        Some("count") => Reply::Int(90),
        Some("docs") => Reply::Map(Vec::new()),
        Some("info") => Reply::Array(args[2..].iter().map(|_| Reply::NilArray).collect()),
        Some(other) => err(format!("ERR unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

/// WAIT numreplicas timeout: how many *other* nodes hold everything this node has applied.
/// Polls replication at [`WAIT_POLL_MIN`], doubling to [`WAIT_POLL_MAX`], and stops as soon
/// as the client goes away ([`Item::Gone`]): a pending WAIT keeps reading from the client
/// (up to [`WAIT_READ_AHEAD`], kept for the requests after it) to notice it closing.
async fn wait<R: AsyncRead + Unpin>(
    shared: &Shared,
    args: &[Bytes],
    io: &mut ConnIo<R>,
    cancel: &CancellationToken,
) -> Item {
    if args.len() != 3 {
        return Item::Reply(arity("wait"));
    }
    let (Some(n), Some(timeout)) = (parse_i64(&args[1]), parse_i64(&args[2])) else {
        return Item::Reply(err("ERR value is not an integer or out of range"));
    };
    if timeout < 0 {
        return Item::Reply(err("ERR timeout is negative"));
    }
    // Every acknowledged write is already on a quorum; WAIT counts the other voters whose log
    // has everything this node has applied.
    let target = shared.ctx.cluster.info().last_applied;
    let timeout = Duration::from_millis(if timeout == 0 {
        10_000
    } else {
        timeout.unsigned_abs()
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = WAIT_POLL_MIN;
    loop {
        let count = replicas_with(shared, target).await;
        if count >= n || tokio::time::Instant::now() >= deadline {
            return Item::Reply(Reply::Int(count));
        }
        let next = tokio::time::sleep_until((tokio::time::Instant::now() + poll).min(deadline));
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                _ = cancel.cancelled() => return Item::Gone,
                r = io.rd.read_buf(&mut io.inbuf), if io.inbuf.len() < WAIT_READ_AHEAD => match r {
                    Ok(0) | Err(_) => return Item::Gone,
                    // Pipelined after the WAIT: read after it.
                    Ok(_) => {}
                },
            }
        }
        poll = (poll * 2).min(WAIT_POLL_MAX);
    }
}

/// Other nodes known to hold the log up to `index`: never this node itself, so never more
/// than the replicas there are.
async fn replicas_with(shared: &Shared, index: u64) -> i64 {
    let info = shared.ctx.cluster.info();
    let me = shared.ctx.cluster.me();
    if info.is_leader {
        // The leader's replication state lists the leader too (its own log is "matched").
        return info
            .matched
            .iter()
            .filter(|(id, m)| id.as_str() != me && **m >= index)
            .count() as i64;
    }
    let status = shared.ctx.status.cluster_status().await;
    if status.stale {
        return 0;
    }
    // From a follower: the leader itself has it, and every in-sync voter.
    status
        .nodes
        .iter()
        .filter(|n| n.id != me && (n.lag == 0 && n.reachable))
        .count() as i64
}

async fn info(shared: &Shared) -> String {
    let node = &shared.ctx;
    let info = node.cluster.info();
    let status = node.status.cluster_status().await;
    let me = node.cluster.me();
    let (keys, expires, used) = node
        .cluster
        .sm
        .read(|d| (d.kv.len(), d.kv.expires_count(), d.kv.used_memory()));
    let role = match (&status.active, info.is_leader) {
        (Some(a), _) if a == me => "active",
        _ => "standby",
    };
    let mut s = String::new();
    s.push_str("# Server\r\n");
    s.push_str(&format!(
        "redis_version:7.0.0\r\nstandin_version:{}\r\n",
        crate::version::VERSION
    ));
    s.push_str(&format!("process_id:{}\r\nnode:{me}\r\n", std::process::id()));
    s.push_str("\r\n# Memory\r\n");
    s.push_str(&format!(
        "used_memory:{used}\r\nmaxmemory:{}\r\n",
        shared.cfg.maxmemory
    ));
    s.push_str("\r\n# Replication\r\n");
    s.push_str(&format!(
        "role:master\r\nstandin_role:{role}\r\nraft_role:{}\r\nraft_leader:{}\r\nraft_term:{}\r\nepoch:{}\r\nactive:{}\r\ncommit_index:{}\r\napplied_index:{}\r\n",
        if info.is_leader { "leader" } else { "follower" },
        info.leader.as_deref().unwrap_or(""),
        info.term,
        status.epoch,
        status.active.as_deref().unwrap_or(""),
        status.commit_index,
        info.last_applied,
    ));
    for n in &status.nodes {
        s.push_str(&format!(
            "node_{}:kind={},role={},in_sync={},lag={},reachable={}\r\n",
            n.id, n.kind, n.role, n.in_sync, n.lag, n.reachable
        ));
    }
    s.push_str("\r\n# Keyspace\r\n");
    if keys > 0 {
        s.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &Bytes) -> Op {
        match crate::kv::parse(&[
            Bytes::from_static(b"SET"),
            Bytes::from(key.to_string()),
            value.clone(),
        ]) {
            Ok(Parsed::Data(op)) => op,
            other => panic!("SET parsed as {other:?}"),
        }
    }

    /// Pipelined writes that together exceed one log entry go out as several groups, each
    /// within an entry (they used to be one group: a 70 MiB entry no peer frame could carry).
    #[test]
    fn a_run_of_large_writes_is_cut_to_fit_log_entries() {
        // One allocation shared by every op: the size counts, not the memory.
        let value = Bytes::from(vec![b'v'; 35 << 20]);
        let items = vec![
            Item::Write(set("p1", &value)),
            Item::Write(set("p2", &value)),
            Item::Write(set("s1", &Bytes::from_static(b"x"))),
            Item::Write(set("p3", &value)),
            Item::Reply(Reply::Simple("PONG".into())),
            Item::Write(set("s2", &Bytes::from_static(b"y"))),
        ];
        let mut items = items.into_iter().peekable();
        let mut groups = Vec::new();
        while let Some(item) = items.next() {
            match item {
                Item::Write(op) => groups.push(write_run(op, &mut items)),
                _ => groups.push((Vec::new(), 0)),
            }
        }
        let sizes: Vec<usize> = groups.iter().map(|(g, _)| g.len()).collect();
        // p1 | p2 s1 | p3 | (reply) | s2: the reply still ends a run.
        assert_eq!(sizes, vec![1, 2, 1, 0, 1]);
        for (g, bytes) in &groups {
            // The size the run counted (one byte per op above the ops' sizes) undercounts the
            // group by at most the vector's length prefix (a varint: at most 5 bytes), which an
            // entry's 16 bytes per group cover.
            let exact = crate::kv::encoded_len(g);
            assert!(exact <= MAX_ENTRY_BYTES);
            assert!(exact <= bytes + 5, "{bytes} vs {exact}");
        }
    }

    #[test]
    fn auth_delays_grow_after_the_free_failures_up_to_a_second() {
        assert_eq!(auth_delay(1), Duration::ZERO);
        assert_eq!(auth_delay(AUTH_FREE_FAILURES), Duration::ZERO);
        assert_eq!(auth_delay(AUTH_FREE_FAILURES + 1), Duration::from_millis(10));
        assert_eq!(auth_delay(AUTH_FREE_FAILURES + 2), Duration::from_millis(20));
        assert_eq!(auth_delay(u32::MAX), Duration::from_secs(1));
        let delays: Vec<Duration> = (1..100).map(auth_delay).collect();
        assert!(
            delays.windows(2).all(|w| w[0] <= w[1]),
            "never shorter for more failures"
        );
    }

    /// Failed AUTHs are counted per address and window; a warning is due at most every
    /// AUTH_WARN_EVERY per address and carries the failures since the last one.
    #[test]
    fn auth_failures_are_counted_per_address_and_logged_at_most_every_ten_seconds() {
        let f = AuthFailures::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(f.record(a, at(0)), (Duration::ZERO, Some((1, 1))));
        for i in 2..=AUTH_FREE_FAILURES {
            assert_eq!(f.record(a, at(u64::from(i))), (Duration::ZERO, None));
        }
        // Another address has its own count and its own warning.
        assert_eq!(f.record(b, at(20)), (Duration::ZERO, Some((1, 1))));
        let (delay, report) = f.record(a, at(100));
        assert_eq!((delay, report), (auth_delay(AUTH_FREE_FAILURES + 1), None));
        // Ten seconds after the last warning: the failures since then, in one line.
        let (_, report) = f.record(a, at(10_000));
        assert_eq!(
            report,
            Some((AUTH_FREE_FAILURES as u64 + 1, AUTH_FREE_FAILURES + 2))
        );
        // A new window starts the count again.
        let (delay, _) = f.record(a, at(70_001));
        assert_eq!(delay, Duration::ZERO);
    }

    /// The file limit leaves room for the rest of the node: the admin API, redb, the peers.
    #[test]
    fn max_clients_is_clamped_to_the_file_limit() {
        let member = |id: &str, kind: &str, n: u8| {
            format!(
                "[[member]]\nid = \"{id}\"\nkind = \"{kind}\"\naddresses = [\"127.0.0.1:71{n}1\", \"127.0.0.2:71{n}1\"]\nadmin = \"127.0.0.1:71{n}2\"\n\n"
            )
        };
        let text = format!(
            "[tls]\ninsecure = true\n[node]\nid = \"a\"\ndata-dir = \"/tmp/a\"\n\n{}{}{}[service]\ncommand = \"sleep\"\n",
            member("a", "data", 0),
            member("b", "data", 1),
            member("w", "witness", 2)
        );
        let config = Config::parse(&text).expect("valid config");
        // The admin API (256 by default), 64 inbound peer connections, 32 peer handshakes, and
        // two peers with two paths each: four outbound connections.
        let reserve = FD_RESERVE + 256 + 64 + 32 + 4;
        assert_eq!(clamp_max_clients(10_000, 1_000_000, &config), 10_000);
        assert_eq!(clamp_max_clients(10_000, 1024, &config), (1024 - reserve) as u32);
        assert_eq!(clamp_max_clients(10_000, 256, &config), 1);
    }
}
