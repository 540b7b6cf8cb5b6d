//! The cluster transport: persistent TCP connections to every peer over each of its addresses
//! (one address = one independent network path), request/response multiplexed by id.
//!
//! Every path carries its own heartbeat (`Ping`), so the state of each path (up/down, RTT, loss,
//! last heard) is known separately, and a node counts as heard while *any* path reaches it.
//! Liveness comes only from answers to our own pings, on the connection we opened to that
//! peer's address, echoing the ping's random nonce: a message that merely claims to come from
//! a peer (its `from` field) proves nothing and never keeps a dead node "reachable". RPCs go over the best path that is up and fall back to the others when
//! a connection cannot be made; a path whose ping times out has its connection dropped so the
//! next use reconnects (a half-open connection after a partition never lingers).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Range};
use super::rpc::{Frame, Request, Response};

/// Largest frame accepted (see [`crate::sizes`], where every size limit between nodes is
/// derived from it).
pub use crate::sizes::MAX_FRAME;
/// Most inbound peer connections served at once: a member needs one per path per peer, and
/// reconnects briefly overlap; beyond this, new connections are closed at once.
pub const MAX_INBOUND_CONNS: usize = 64;
/// TLS handshakes of inbound connections under way at once. A new one beyond this evicts the
/// oldest: handshakes have their own budget, apart from [`MAX_INBOUND_CONNS`], so connections
/// that never finish a handshake cannot lock members out (64 idle TCP connections used to
/// hold every inbound slot for the whole handshake deadline, again and again); a member's
/// handshake takes milliseconds, so to evict it a flood must open this many connections
/// within those milliseconds.
pub const MAX_PENDING_HANDSHAKES: usize = 32;
/// A frame that has started arriving must be complete within this long, or the connection is
/// closed: a sender that declares a large frame and stalls cannot keep its buffer.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);
/// Largest frame of a request that carries no bulk data (ping, vote, lease, elect, status,
/// admin, pre-vote, and cluster commands: a batch holds at most 1024 small changes). Only
/// appends, snapshots and forwarded store operations may use the whole [`MAX_FRAME`]: a
/// decoded request takes many times its encoded size in memory, so the kinds that never need
/// it never get it.
pub const SMALL_REQUEST: usize = 1024 * 1024;

/// The request kind of an encoded `Frame<Request>` (its id, `from` and the variant index, read
/// without decoding the body), if the bytes hold that much.
fn request_kind(bytes: &[u8]) -> Option<u32> {
    let (_, rest) = postcard::take_from_bytes::<u64>(bytes).ok()?;
    let (_, rest) = postcard::take_from_bytes::<&str>(rest).ok()?;
    let (kind, _) = postcard::take_from_bytes::<u32>(rest).ok()?;
    Some(kind)
}

/// Whether a request of `kind` may be larger than [`SMALL_REQUEST`]: appends, snapshots and
/// store writes and reads (variant indices of [`Request`], which the wire keeps stable).
fn may_be_large(kind: u32) -> bool {
    const APPEND: u32 = 1;
    const SNAPSHOT: u32 = 3;
    const STORE_WRITE: u32 = 10;
    const STORE_READ: u32 = 11;
    matches!(kind, APPEND | SNAPSHOT | STORE_WRITE | STORE_READ)
}

/// Requests of one inbound connection being handled at once: beyond, the connection is not
/// read until one finishes (TCP pushes back on the sender), so a peer that sends requests and
/// never reads the answers cannot make this node queue answers without end.
pub const MAX_INFLIGHT: usize = 32;
/// An inbound connection must send a frame from a member within this long (at least three
/// heartbeat intervals) or it is closed: real peers ping on every path every heartbeat, so a
/// connection that never speaks only holds a slot of [`MAX_INBOUND_CONNS`].
pub const PROVE_DEADLINE: Duration = Duration::from_secs(5);
/// How much the read buffer grows at a time while a large frame arrives: memory follows the
/// bytes received, never the length a header declares.
const READ_CHUNK: usize = 64 * 1024;
/// Results kept per path to compute loss.
const LOSS_WINDOW: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    #[error("{peer} unreachable on every path: {last}")]
    Unreachable { peer: String, last: String },
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    /// The request was sent but the connection died before the answer: it may have run.
    #[error("connection to {peer} lost after sending: {reason}")]
    Lost { peer: String, reason: String },
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The request does not fit in a frame; nothing was sent.
    #[error("request of {size} bytes exceeds the {limit}-byte frame limit")]
    TooLarge { size: usize, limit: usize },
}

/// What is known about one path to one peer. Shown by `standin status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathStatus {
    pub address: String,
    pub up: bool,
    /// Smoothed round-trip time of heartbeats.
    pub rtt_ms: Option<f64>,
    /// Milliseconds since the last heartbeat answer on this path.
    pub last_heard_ms_ago: Option<u64>,
    /// Share of the last heartbeats that got no answer (0.0 - 1.0).
    pub loss: f64,
    pub last_error: Option<String>,
    /// The peer protocol version negotiated on this path's connection (`None`: none yet).
    #[serde(default)]
    pub protocol: Option<u32>,
}

#[derive(Default)]
struct PathStats {
    rtt_ms: Option<f64>,
    last_pong: Option<Instant>,
    recent: VecDeque<bool>,
    last_error: Option<String>,
    was_up: bool,
    /// The protocol version of the path's current connection.
    protocol: Option<u32>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// A peer connection's byte stream: TLS over TCP, or plain TCP when running insecure.
trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerIo for T {}
type BoxIo = Box<dyn PeerIo>;

type FrameSink = FramedWrite<WriteHalf<BoxIo>, LengthDelimitedCodec>;

/// Why an inbound peer connection or frame was refused, counted in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The TLS handshake failed: no certificate, one from another CA, an expired one, or
    /// not TLS at all.
    Handshake,
    /// A valid certificate for an id that is not a member of this cluster.
    NotMember,
    /// A frame claiming to come from a member other than the one its certificate names.
    WrongId,
    /// A member that speaks no peer protocol version this node speaks.
    Protocol,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Handshake,
        Refusal::NotMember,
        Refusal::WrongId,
        Refusal::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Handshake => "handshake",
            Refusal::NotMember => "not-member",
            Refusal::WrongId => "wrong-id",
            Refusal::Protocol => "protocol",
        }
    }
}

/// The sending side of a connection. Callers write their own frames, one at a time: no
/// writer task to wake for each message. `None` once the connection is closed (dropping the
/// write half sends FIN, so the peer sees the close at once).
#[derive(Clone)]
struct Writer(Arc<tokio::sync::Mutex<Option<FrameSink>>>);

impl Writer {
    fn new(sink: FrameSink) -> Self {
        Writer(Arc::new(tokio::sync::Mutex::new(Some(sink))))
    }

    /// Writes one frame. An error means the frame may be partly written: the caller must
    /// close the connection, so no later frame follows the partial one.
    async fn send(&self, bytes: Bytes) -> std::io::Result<()> {
        match self.0.lock().await.as_mut() {
            Some(sink) => sink.send(bytes).await,
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "connection closed",
            )),
        }
    }

    async fn close(&self) {
        self.0.lock().await.take();
    }
}

struct Conn {
    writer: Writer,
    pending: Pending,
    closed: CancellationToken,
    /// The TLS generation ([`crate::tls::Tls::generation`]) it was made with.
    generation: u64,
    /// When the certificate the peer showed expires (Unix seconds): the connection is not
    /// used past it.
    peer_not_after: Option<i64>,
    /// The peer protocol version negotiated for this connection: what a later version would
    /// choose its encodings by.
    protocol: u32,
}

/// How long a connection replaced after a certificate reload may go on serving the requests
/// it already carries before it is closed.
const RETIRE_AFTER: Duration = Duration::from_secs(10);

/// Closes `conn` once it carries no request (or after [`RETIRE_AFTER`]): a connection made
/// with an old certificate finishes its work, and new requests go over a new one.
fn retire(conn: Arc<Conn>) {
    tokio::spawn(async move {
        let deadline = Instant::now() + RETIRE_AFTER;
        while !lock(&conn.pending).is_empty() && Instant::now() < deadline && !conn.closed.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        conn.closed.cancel();
    });
}

struct Path {
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// A connection being made, shared by every caller that needs one meanwhile.
    attempt: Mutex<Option<Attempt>>,
    stats: Mutex<PathStats>,
}

/// A connection attempt (TCP connect and TLS handshake) running in its own task.
type Attempt = futures::future::Shared<futures::future::BoxFuture<'static, Result<Arc<Conn>, String>>>;

/// How long one connection attempt may take. It runs in its own task, not within the
/// deadline of the request that needed it: a TLS handshake can take longer than an
/// append's 50 ms on a loaded machine, and cutting it off there would mean never connecting.
const CONNECT_DEADLINE: Duration = Duration::from_secs(3);

struct Peer {
    paths: Vec<Path>,
    /// Stops this peer's heartbeat tasks once it leaves the membership.
    gone: CancellationToken,
    /// When the certificate this peer last showed expires (Unix seconds), from either side
    /// of a TLS handshake.
    cert_not_after: Mutex<Option<i64>>,
}

struct Inner {
    me: String,
    /// Every other member, by id. Changes with the live membership ([`Transport::set_peers`]).
    peers: std::sync::RwLock<BTreeMap<String, Arc<Peer>>>,
    /// The heartbeats' parent token, once [`Transport::spawn_heartbeats`] ran: a peer added
    /// later gets its heartbeat tasks under it.
    beat: std::sync::OnceLock<CancellationToken>,

    next_id: AtomicU64,
    /// Source of ping nonces (seeded at random; see [`nonce_seed`]).
    next_nonce: AtomicU64,
    /// Inbound connections being served, against [`MAX_INBOUND_CONNS`].
    inbound: Arc<tokio::sync::Semaphore>,
    /// Bytes buffered by inbound connections, against [`INBOUND_BUFFER_BUDGET`].
    buffers: Arc<BufferBudget>,
    /// Inbound TLS handshakes under way, oldest first, against [`MAX_PENDING_HANDSHAKES`].
    handshakes: Mutex<VecDeque<(u64, CancellationToken)>>,
    next_handshake: AtomicU64,
    /// The heartbeat interval and failure timeout, for the durations derived from them.
    timing: crate::config::Timing,
    /// Mutual TLS on every connection; `None` when running insecure.
    tls: Option<Arc<crate::tls::Tls>>,
    /// Refusals by [`Refusal`], in its order.
    refused: [AtomicU64; 4],
    /// The peer protocol versions this node speaks ([`Range::OURS`] but in tests).
    protocols: Range,
    /// Paths a drill cut, until when (see [`Transport::cut_paths`]).
    cut: Mutex<Option<PathCut>>,
    /// Whether `cut` may hold one: every frame asks, and almost always the answer is no
    /// without taking the lock.
    cut_set: std::sync::atomic::AtomicBool,
}

/// Paths of this node a drill cut: nothing goes out on them and what comes in is not
/// answered, as on a dead link, until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCut {
    /// Path indexes (the order of this node's addresses); `None`: every path.
    pub paths: Option<Vec<usize>>,
    pub until: Instant,
}

/// Handle to the transport; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

impl Peer {
    fn new(addrs: Vec<SocketAddr>) -> Peer {
        Peer {
            paths: addrs
                .into_iter()
                .map(|addr| Path {
                    addr,
                    conn: tokio::sync::Mutex::new(None),
                    attempt: Mutex::new(None),
                    stats: Mutex::new(PathStats::default()),
                })
                .collect(),
            gone: CancellationToken::new(),
            cert_not_after: Mutex::new(None),
        }
    }
}

impl Transport {
    /// `peers`: every other member with its addresses (paths), in configured order. `tls`:
    /// the node's certificates; every connection, in and out, then uses mutual TLS and a peer
    /// may act only as the member its certificate names.
    pub fn new(
        me: String,
        peers: Vec<(String, Vec<SocketAddr>)>,
        heartbeat_interval: Duration,
        failure_timeout: Duration,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Self {
        let peers = peers
            .into_iter()
            .map(|(id, addrs)| (id, Arc::new(Peer::new(addrs))))
            .collect();
        Transport {
            inner: Arc::new(Inner {
                me,
                peers: std::sync::RwLock::new(peers),
                beat: std::sync::OnceLock::new(),

                next_id: AtomicU64::new(1),
                next_nonce: AtomicU64::new(nonce_seed()),
                inbound: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_CONNS)),
                buffers: Arc::default(),
                handshakes: Mutex::default(),
                next_handshake: AtomicU64::new(0),
                timing: crate::config::Timing {
                    heartbeat_interval,
                    failure_timeout,
                    ..crate::config::Timing::default()
                },
                tls,
                refused: Default::default(),
                protocols: Range::OURS,
                cut: Mutex::new(None),
                cut_set: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// This transport speaking `protocols` instead of [`Range::OURS`]: for tests of the
    /// negotiation between versions. Only on a transport not yet cloned (else unchanged).
    #[doc(hidden)]
    pub fn speaking(mut self, protocols: Range) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.protocols = protocols;
        }
        self
    }

    /// The peer protocol versions this node speaks.
    pub fn protocols(&self) -> Range {
        self.inner.protocols
    }

    /// Whether connections use mutual TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Inbound connections and frames refused so far, by reason.
    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (*r, self.inner.refused[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// When the certificate `peer` last showed expires (Unix seconds), if it was seen.
    pub fn peer_cert_not_after(&self, peer: &str) -> Option<i64> {
        *lock(&self.peer(peer)?.cert_not_after)
    }

    /// Records the expiry of the certificate `peer` showed, and returns it.
    fn saw_certificate(
        &self,
        peer: &str,
        certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Option<i64> {
        let info = certs
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::cert_info(c.as_ref()).ok())?;
        if let Some(p) = self.peer(peer) {
            *lock(&p.cert_not_after) = Some(info.not_after);
        }
        Some(info.not_after)
    }

    fn refuse(&self, r: Refusal) {
        self.inner.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Cuts this node's paths (`None`: all of them) for `duration`, as a dead link would:
    /// requests on them get no answer (they wait out their deadline), and requests arriving on
    /// them are read and dropped. Heals by itself when the time is up; a new cut replaces the
    /// previous one. For failover drills (`[drill] enabled`).
    pub fn cut_paths(&self, paths: Option<Vec<usize>>, duration: Duration) -> PathCut {
        let cut = PathCut {
            paths,
            until: Instant::now() + duration,
        };
        *lock(&self.inner.cut) = Some(cut.clone());
        self.inner.cut_set.store(true, Ordering::Release);
        cut
    }

    /// Ends a drill's cut now; `true` if one was in force.
    pub fn heal_paths(&self) -> bool {
        let mut cut = lock(&self.inner.cut);
        self.inner.cut_set.store(false, Ordering::Release);
        cut.take().is_some_and(|c| c.until > Instant::now())
    }

    /// The cut in force, if any.
    pub fn path_cut(&self) -> Option<PathCut> {
        let mut cut = lock(&self.inner.cut);
        if cut.as_ref().is_some_and(|c| c.until <= Instant::now()) {
            *cut = None;
            self.inner.cut_set.store(false, Ordering::Release);
        }
        cut.clone()
    }

    fn is_cut(&self, idx: usize) -> bool {
        if !self.inner.cut_set.load(Ordering::Acquire) {
            return false;
        }
        self.path_cut()
            .is_some_and(|c| c.paths.as_ref().is_none_or(|p| p.contains(&idx)))
    }

    pub fn me(&self) -> &str {
        &self.inner.me
    }

    pub fn peer_ids(&self) -> Vec<String> {
        read(&self.inner.peers).keys().cloned().collect()
    }

    /// The last time `peer` answered one of our heartbeats, on any path.
    pub fn last_heard(&self, peer: &str) -> Option<Instant> {
        let p = self.peer(peer)?;
        p.paths
            .iter()
            .filter_map(|path| lock(&path.stats).last_pong)
            .max()
    }

    /// Whether `name` is a peer of this node (a member other than ourselves).
    pub fn is_peer(&self, name: &str) -> bool {
        read(&self.inner.peers).contains_key(name)
    }

    /// Adds the peers of `peers` this node does not know (a member list learned from a
    /// member: see `Request::MemberTable`); known ones are left as they are. Returns the ids
    /// added.
    pub fn add_peers(&self, peers: &[(String, Vec<SocketAddr>)]) -> Vec<String> {
        let mut added = Vec::new();
        {
            let mut map = self.inner.peers.write().unwrap_or_else(|p| p.into_inner());
            for (id, addrs) in peers {
                if *id != self.inner.me && !map.contains_key(id) && !addrs.is_empty() {
                    let p = Arc::new(Peer::new(addrs.clone()));
                    map.insert(id.clone(), p.clone());
                    added.push((id.clone(), p));
                }
            }
        }
        for (id, p) in &added {
            tracing::info!(peer = %id, "peer learned from a member's table");
            self.beat_peer(id, p);
        }
        added.into_iter().map(|(id, _)| id).collect()
    }

    /// State of every path to `peer`.
    pub fn paths(&self, peer: &str) -> Vec<PathStatus> {
        let Some(p) = self.peer(peer) else {
            return Vec::new();
        };
        let now = Instant::now();
        p.paths
            .iter()
            .map(|path| {
                let s = lock(&path.stats);
                let lost = s.recent.iter().filter(|ok| !**ok).count();
                PathStatus {
                    address: path.addr.to_string(),
                    up: self.path_up(&s, now),
                    rtt_ms: s.rtt_ms.map(|r| (r * 100.0).round() / 100.0),
                    last_heard_ms_ago: s.last_pong.map(|t| now.duration_since(t).as_millis() as u64),
                    loss: if s.recent.is_empty() {
                        0.0
                    } else {
                        lost as f64 / s.recent.len() as f64
                    },
                    last_error: s.last_error.clone(),
                    protocol: s.protocol,
                }
            })
            .collect()
    }

    fn path_up(&self, s: &PathStats, now: Instant) -> bool {
        s.last_pong.is_some_and(|t| self.inner.timing.is_heard(t, now))
    }

    fn encode(&self, req: &Request, limit: usize) -> Result<(u64, Bytes), TransportError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame {
            id,
            from: self.inner.me.clone(),
            body: req,
        };
        let bytes = postcard::to_allocvec(&frame).map_err(|e| TransportError::Encode(e.to_string()))?;
        // Refused here, before anything is sent: a frame the peer would reject would close the
        // connection, and with it the heartbeats of this path.
        if bytes.len() > limit.min(MAX_FRAME) {
            return Err(TransportError::TooLarge {
                size: bytes.len(),
                limit: limit.min(MAX_FRAME),
            });
        }
        Ok((id, Bytes::from(bytes)))
    }

    /// Sends `req` to `peer` over its best path, falling back to the other paths when a
    /// connection cannot be made. Waits at most `timeout` in all.
    pub async fn call(
        &self,
        peer: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.call_inner(peer, req, timeout, true, MAX_FRAME).await
    }

    /// Like [`Transport::call`], but refuses (with [`TransportError::TooLarge`], before
    /// sending) a request that encodes to more than `limit` bytes.
    pub async fn call_within(
        &self,
        peer: &str,
        req: &Request,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, TransportError> {
        self.call_inner(peer, req, timeout, true, limit).await
    }

    /// Like [`Transport::call`] for requests that must not run twice (store writes, forwarded
    /// commands): another path is tried only if the request was never sent; once sent, a lost
    /// connection is reported as [`TransportError::Lost`].
    pub async fn call_once(
        &self,
        peer: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.call_inner(peer, req, timeout, false, MAX_FRAME).await
    }

    async fn call_inner(
        &self,
        peer: &str,
        req: &Request,
        timeout: Duration,
        idempotent: bool,
        limit: usize,
    ) -> Result<Response, TransportError> {
        let p = self
            .peer(peer)
            .ok_or_else(|| TransportError::UnknownPeer(peer.to_string()))?;
        let deadline = Instant::now() + timeout;
        // Paths that are up first (fastest first), then the others in configured order.
        let now = Instant::now();
        let mut order: Vec<(usize, bool, f64)> = p
            .paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let s = lock(&path.stats);
                (i, self.path_up(&s, now), s.rtt_ms.unwrap_or(f64::MAX))
            })
            .collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.total_cmp(&b.2)).then(a.0.cmp(&b.0)));
        let mut last = String::from("no path configured");
        for (i, _, _) in order {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.call_path(peer, i, req, remaining, limit).await {
                Ok(r) => return Ok(r),
                Err(PathError::Timeout) => {
                    return Err(TransportError::Timeout {
                        peer: peer.to_string(),
                        timeout,
                    })
                }
                // Would fail the same way on every path.
                Err(PathError::Encode(e)) => return Err(e),
                Err(PathError::Failed(e)) => last = e,
                Err(PathError::Lost(e)) if idempotent => last = e,
                Err(PathError::Lost(reason)) => {
                    return Err(TransportError::Lost {
                        peer: peer.to_string(),
                        reason,
                    })
                }
            }
        }
        Err(TransportError::Unreachable {
            peer: peer.to_string(),
            last,
        })
    }

    async fn call_path(
        &self,
        peer: &str,
        idx: usize,
        req: &Request,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, PathError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.is_cut(idx) {
            // A dead link answers nothing: the request waits out its deadline.
            tokio::time::sleep_until(deadline).await;
            return Err(PathError::Failed("no answer (path cut by a drill)".into()));
        }
        let conn = self.connection(peer, idx, deadline).await?;
        self.call_conn(&conn, req, deadline, limit).await
    }

    /// Sends `req` on `conn` and waits for the answer until `deadline`.
    async fn call_conn(
        &self,
        conn: &Conn,
        req: &Request,
        deadline: tokio::time::Instant,
        limit: usize,
    ) -> Result<Response, PathError> {
        let (id, bytes) = self.encode(req, limit).map_err(PathError::Encode)?;
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        // Waiting for our turn to write sends nothing, so `call_once` may still try another
        // path if the turn never comes (a peer that stops reading blocks the writer ahead).
        let mut sink = tokio::select! {
            s = conn.writer.0.lock() => s,
            _ = tokio::time::sleep_until(deadline) => {
                lock(&conn.pending).remove(&id);
                conn.closed.cancel();
                return Err(PathError::Failed("peer not reading".into()));
            }
            _ = conn.closed.cancelled() => {
                lock(&conn.pending).remove(&id);
                return Err(PathError::Failed("connection closed".into()));
            }
        };
        let Some(writer) = sink.as_mut() else {
            lock(&conn.pending).remove(&id);
            return Err(PathError::Failed("connection closed".into()));
        };
        // Once writing has begun, part of the frame may be out: a failure closes the
        // connection (the peer drops an incomplete frame), and the outcome is unknown.
        let written = tokio::select! {
            r = writer.send(bytes) => r.map_err(|e| e.to_string()),
            _ = tokio::time::sleep_until(deadline) => Err("send timed out (peer not reading)".into()),
            _ = conn.closed.cancelled() => Err("connection closed".into()),
        };
        if let Err(e) = written {
            sink.take();
            drop(sink);
            lock(&conn.pending).remove(&id);
            conn.closed.cancel();
            return Err(PathError::Lost(e));
        }
        drop(sink);
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(PathError::Lost("connection closed".into())),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(PathError::Timeout)
            }
        }
    }

    /// The open connection of path `idx` of `peer`, or a new one. A new one is made by an
    /// attempt of its own (see [`CONNECT_DEADLINE`]) that callers wait for until their own
    /// deadline; one that gives up leaves the attempt running for the next.
    async fn connection(
        &self,
        peer: &str,
        idx: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Conn>, PathError> {
        let Some(p) = self.peer(peer) else {
            return Err(PathError::Failed(format!("{peer} is no longer a member")));
        };
        // The peer may have been replaced (its addresses changed) since the caller chose `idx`.
        let Some(path) = p.paths.get(idx) else {
            return Err(PathError::Failed(format!("{peer} has no path {idx} any more")));
        };
        let attempt = {
            let mut slot = match tokio::time::timeout_at(deadline, path.conn.lock()).await {
                Ok(s) => s,
                Err(_) => return Err(PathError::Timeout),
            };
            let generation = self.inner.tls.as_ref().map_or(0, |t| t.generation());
            if let Some(c) = slot.take() {
                if c.peer_not_after.is_some_and(|t| t <= crate::tls::unix_now()) {
                    // The peer's certificate expired while connected: a new handshake decides.
                    tracing::warn!(peer, path = %path.addr, "the peer's certificate expired; reconnecting");
                    c.closed.cancel();
                } else if !c.closed.is_cancelled() {
                    if c.generation == generation {
                        *slot = Some(c.clone());
                        return Ok(c);
                    }
                    // Our certificate changed: the peer sees the new one on a new connection.
                    retire(c);
                }
            }
            let mut current = lock(&path.attempt);
            match current.as_ref() {
                Some(a) => a.clone(),
                None => {
                    let (t, p) = (self.clone(), peer.to_string());
                    let task = tokio::spawn(async move { t.connect_path(&p, idx, generation).await });
                    let a: Attempt = async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("connect task failed: {e}")))
                    }
                    .boxed()
                    .shared();
                    *current = Some(a.clone());
                    a
                }
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(PathError::Failed(e)),
            Err(_) => Err(PathError::Failed(format!("still connecting to {}", path.addr))),
        }
    }

    /// One connection attempt: TCP, then the TLS handshake (the server must name `peer`)
    /// and the protocol version's negotiation, within [`CONNECT_DEADLINE`]. The connection is
    /// installed in the path's slot.
    async fn connect_path(&self, peer: &str, idx: usize, generation: u64) -> Result<Arc<Conn>, String> {
        let p = self
            .peer(peer)
            .ok_or_else(|| format!("{peer} is no longer a member"))?;
        let path = p
            .paths
            .get(idx)
            .ok_or_else(|| format!("{peer} has no path {idx} any more"))?;
        let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
        let attempt = async {
            let (io, peer_not_after, settled) = self.open(peer, path.addr).await?;
            let mut conn = spawn_client_conn(io, generation, peer_not_after);
            conn.protocol = match settled {
                Some(v) => v,
                None => match self.hello(peer, &conn, deadline).await {
                    Ok(v) => v,
                    Err(e) => {
                        conn.closed.cancel();
                        return Err(e);
                    }
                },
            };
            Ok(Arc::new(conn))
        };
        let result = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect to {} timed out", path.addr)),
        };
        let mut slot = path.conn.lock().await;
        match &result {
            Ok(conn) => {
                *slot = Some(conn.clone());
                let mut s = lock(&path.stats);
                if s.protocol != Some(conn.protocol) {
                    tracing::debug!(peer, path = %path.addr, protocol = conn.protocol, "peer protocol negotiated");
                }
                s.protocol = Some(conn.protocol);
            }
            Err(e) => {
                let mut s = lock(&path.stats);
                // A version mismatch is logged once per path, not on every heartbeat.
                if e.starts_with("peer ")
                    && e.contains(" speaks protocol ")
                    && s.last_error.as_ref() != Some(e)
                {
                    tracing::error!(peer, path = %path.addr, "{e}");
                }
                s.last_error = Some(e.clone());
                s.protocol = None;
            }
        }
        *lock(&path.attempt) = None;
        drop(slot);
        result
    }

    /// A connected, authenticated byte stream to `addr`, where member `peer` listens, when
    /// the certificate it showed expires, and the protocol version the TLS handshake settled
    /// (`None`: not settled there, see [`Transport::hello`]). The client offers every version
    /// it speaks as an ALPN name, newest first; the server picks the highest it speaks too.
    async fn open(&self, peer: &str, addr: SocketAddr) -> Result<(BoxIo, Option<i64>, Option<u32>), String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.inner.tls else {
            return Ok((Box::new(stream), None, None));
        };
        let mut cfg = (*tls.peer_client_config(peer).map_err(|e| format!("tls: {e}"))?).clone();
        cfg.alpn_protocols = self.inner.protocols.alpn();
        let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(crate::tls::peer_server_name(), stream)
            .await
            .map_err(|e| format!("tls handshake with {addr}: {e}"))?;
        let not_after = self.saw_certificate(peer, s.get_ref().1.peer_certificates());
        // rustls accepts only a name we offered: one of our versions.
        let settled = s.get_ref().1.alpn_protocol().and_then(protocol::version_of_alpn);
        Ok((Box::new(s), not_after, settled))
    }

    /// Settles the protocol version of a new connection in-band (no TLS, or a server that
    /// picked no ALPN name): sends [`Request::Hello`] with the versions we speak. A server
    /// from before negotiation answers with an error: it speaks version 1 only.
    async fn hello(&self, peer: &str, conn: &Conn, deadline: tokio::time::Instant) -> Result<u32, String> {
        let ours = self.inner.protocols;
        let hello = Request::Hello {
            min: ours.min,
            max: ours.max,
        };
        let theirs = match self.call_conn(conn, &hello, deadline, SMALL_REQUEST).await {
            Ok(Response::Hello { min, max, chosen }) => {
                let Some(theirs) = Range::new(min, max) else {
                    return Err(format!("{peer} sent an invalid protocol range {min}..{max}"));
                };
                match chosen {
                    Some(v) if ours.contains(v) && theirs.contains(v) => return Ok(v),
                    Some(v) => {
                        return Err(format!(
                            "{peer} chose protocol {v}, which this node ({ours}) does not speak"
                        ))
                    }
                    None => theirs,
                }
            }
            Ok(Response::Error { .. }) => Range::LEGACY,
            Ok(other) => return Err(format!("{peer} answered the protocol hello with {other:?}")),
            Err(PathError::Timeout) => return Err(format!("{peer} did not answer the protocol hello")),
            Err(PathError::Failed(e)) | Err(PathError::Lost(e)) => {
                return Err(format!("protocol hello with {peer}: {e}"))
            }
            Err(PathError::Encode(e)) => return Err(e.to_string()),
        };
        ours.highest_common(&theirs)
            .ok_or_else(|| protocol::mismatch(peer, &theirs, &ours))
    }

    /// Drops the connection of a path (after a heartbeat timeout) so the next use reconnects.
    async fn reset_path(&self, path: &Path) {
        if let Some(c) = path.conn.lock().await.take() {
            c.closed.cancel();
        }
        lock(&path.stats).protocol = None;
    }

    /// Starts one heartbeat task per path per peer.
    pub fn spawn_heartbeats(&self, cancel: CancellationToken) {
        if self.inner.beat.set(cancel).is_err() {
            return;
        }
        let peers: Vec<(String, Arc<Peer>)> = read(&self.inner.peers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (peer, p) in peers {
            self.beat_peer(&peer, &p);
        }
    }

    /// Starts the heartbeat tasks of `peer`, if heartbeats run.
    fn beat_peer(&self, peer: &str, p: &Peer) {
        let Some(parent) = self.inner.beat.get() else {
            return;
        };
        for idx in 0..p.paths.len() {
            let t = self.clone();
            let peer = peer.to_string();
            let cancel = parent.child_token();
            let gone = p.gone.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = gone.cancelled() => {}
                    _ = t.heartbeat_path(peer, idx, cancel) => {}
                }
            });
        }
    }

    /// Makes the peer set `peers` (every other member with its addresses): a new member is
    /// added (its heartbeats start), one that left is dropped (its heartbeats stop, its
    /// connections close), one whose addresses changed is replaced. Returns whether anything
    /// changed.
    pub fn set_peers(&self, peers: &[(String, Vec<SocketAddr>)]) -> bool {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        {
            let mut map = self.inner.peers.write().unwrap_or_else(|p| p.into_inner());
            let wanted: BTreeMap<&str, &Vec<SocketAddr>> = peers
                .iter()
                .filter(|(id, _)| *id != self.inner.me)
                .map(|(id, a)| (id.as_str(), a))
                .collect();
            map.retain(|id, p| {
                let keep = wanted
                    .get(id.as_str())
                    .is_some_and(|addrs| p.paths.iter().map(|x| x.addr).eq(addrs.iter().copied()));
                if !keep {
                    removed.push((id.clone(), p.clone()));
                }
                keep
            });
            for (id, addrs) in wanted {
                if !map.contains_key(id) {
                    let p = Arc::new(Peer::new(addrs.clone()));
                    map.insert(id.to_string(), p.clone());
                    added.push((id.to_string(), p));
                }
            }
        }
        for (id, p) in &removed {
            tracing::info!(peer = %id, "peer left the membership (or changed its addresses)");
            p.gone.cancel();
            for path in &p.paths {
                if let Ok(mut slot) = path.conn.try_lock() {
                    if let Some(c) = slot.take() {
                        c.closed.cancel();
                    }
                }
            }
        }
        for (id, p) in &added {
            tracing::info!(peer = %id, paths = p.paths.len(), "peer joined the membership");
            self.beat_peer(id, p);
        }
        !added.is_empty() || !removed.is_empty()
    }

    /// The peer named `name`, if it is one.
    fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        read(&self.inner.peers).get(name).cloned()
    }

    async fn heartbeat_path(self, peer: String, idx: usize, cancel: CancellationToken) {
        let interval = self.inner.timing.heartbeat_interval;
        // A ping must come back well within the failure timeout to count.
        let ping_timeout = self.inner.timing.ping_timeout();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let start = Instant::now();
            let nonce = self.inner.next_nonce.fetch_add(1, Ordering::Relaxed);
            let ping = Request::Ping { nonce };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.call_path(&peer, idx, &ping, ping_timeout, MAX_FRAME) => r,
            };
            let Some(p) = self.peer(&peer) else { return };
            let Some(path) = p.paths.get(idx) else { return };
            let ok = matches!(result, Ok(Response::Pong { nonce: n }) if n == nonce);
            {
                let mut s = lock(&path.stats);
                s.recent.push_back(ok);
                while s.recent.len() > LOSS_WINDOW {
                    s.recent.pop_front();
                }
                if ok {
                    let rtt = start.elapsed().as_secs_f64() * 1000.0;
                    s.rtt_ms = Some(match s.rtt_ms {
                        Some(prev) => prev * 0.8 + rtt * 0.2,
                        None => rtt,
                    });
                    s.last_pong = Some(Instant::now());
                    s.last_error = None;
                } else {
                    s.last_error = Some(match &result {
                        Err(PathError::Timeout) => "heartbeat timed out".to_string(),
                        Err(PathError::Failed(e)) | Err(PathError::Lost(e)) => e.clone(),
                        Err(PathError::Encode(e)) => e.to_string(),
                        Ok(other) => format!("unexpected reply {other:?}"),
                    });
                }
                let up = self.path_up(&s, Instant::now());
                if up != s.was_up {
                    s.was_up = up;
                    if up {
                        tracing::info!(peer = %peer, path = %path.addr, "path up");
                    } else {
                        tracing::warn!(peer = %peer, path = %path.addr, error = ?s.last_error, "path down");
                    }
                }
            }
            if !ok {
                self.reset_path(path).await;
            }
        }
    }
}

enum PathError {
    Timeout,
    /// Could not be encoded (or too large): nothing was sent.
    Encode(TransportError),
    /// Sent, then the connection died.
    Lost(String),
    Failed(String),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Bytes held at once by all inbound peer connections in frames not yet complete. Four
/// largest frames; a sender that would take the total past it loses its connection, the node
/// and the other connections go on.
pub const INBOUND_BUFFER_BUDGET: usize = 4 * MAX_FRAME;

/// What all inbound peer connections hold in their read buffers, against
/// [`INBOUND_BUFFER_BUDGET`].
#[derive(Debug, Default)]
pub struct BufferBudget {
    used: AtomicUsize,
}

/// The reading half of the frame format (a 4-byte big-endian length, then the frame), which
/// unlike `LengthDelimitedCodec` does not reserve the declared length up front: the buffer
/// grows by [`READ_CHUNK`] as bytes arrive. A frame over [`MAX_FRAME`] is an error, and so is
/// buffering past the shared budget, if one is given.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    budget: Option<Arc<BufferBudget>>,
    /// What this connection counts against the budget now.
    held: usize,
}

impl FrameDecoder {
    /// A decoder whose buffered bytes count against `budget`.
    pub fn with_budget(budget: Arc<BufferBudget>) -> Self {
        FrameDecoder {
            budget: Some(budget),
            held: 0,
        }
    }

    /// Counts `now` buffered bytes against the budget; an error if that takes the total past
    /// it (a connection holding less than one read chunk is never refused).
    fn account(&mut self, now: usize) -> std::io::Result<()> {
        let Some(b) = &self.budget else {
            return Ok(());
        };
        let total = if now >= self.held {
            b.used.fetch_add(now - self.held, Ordering::Relaxed) + (now - self.held)
        } else {
            b.used.fetch_sub(self.held - now, Ordering::Relaxed) - (self.held - now)
        };
        self.held = now;
        if total > INBOUND_BUFFER_BUDGET && now > READ_CHUNK {
            return Err(std::io::Error::other(format!(
                "peer read buffers over the {INBOUND_BUFFER_BUDGET}-byte budget"
            )));
        }
        Ok(())
    }
}

impl Drop for FrameDecoder {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.used.fetch_sub(self.held, Ordering::Relaxed);
        }
    }
}

impl tokio_util::codec::Decoder for FrameDecoder {
    type Item = bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        self.account(src.len())?;
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
            ));
        }
        let total = 4 + len;
        if src.len() < total {
            let missing = total - src.len();
            src.reserve(missing.min(READ_CHUNK));
            return Ok(None);
        }
        let mut frame = src.split_to(total);
        let _ = frame.split_to(4);
        self.account(src.len())?;
        Ok(Some(frame))
    }
}

fn spawn_client_conn(stream: BoxIo, generation: u64, peer_not_after: Option<i64>) -> Conn {
    let (read, write) = tokio::io::split(stream);
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let closed = CancellationToken::new();
    let writer = Writer::new(FramedWrite::new(write, codec()));
    let mut source = FramedRead::new(read, FrameDecoder::default());
    {
        let closed = closed.clone();
        let pending = pending.clone();
        let writer = writer.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = closed.cancelled() => break,
                    f = source.next() => f,
                };
                let Some(Ok(bytes)) = frame else { break };
                let Ok(frame) = postcard::from_bytes::<Frame<Response>>(&bytes) else {
                    tracing::warn!("undecodable response frame; closing connection");
                    break;
                };
                if let Some(tx) = lock(&pending).remove(&frame.id) {
                    let _ = tx.send(frame.body);
                }
            }
            closed.cancel();
            // Callers waiting on this connection learn at once that it is gone.
            lock(&pending).clear();
            writer.close().await;
        });
    }
    Conn {
        writer,
        pending,
        closed,
        generation,
        peer_not_after,
        protocol: protocol::Range::LEGACY.max,
    }
}

/// Handles one inbound request. Returned futures run concurrently.
pub type Handler =
    Arc<dyn Fn(String, Request) -> futures::future::BoxFuture<'static, Response> + Send + Sync>;

/// Accepts peer connections on `listener` until `cancel` fires, at most
/// [`MAX_INBOUND_CONNS`] authenticated ones at once over all listeners (more are closed at
/// once: the listener never runs the node out of descriptors or memory), and at most
/// [`MAX_PENDING_HANDSHAKES`] handshakes under way.
/// Serves peers on `listener`, this node's path `path` (the index of its address).
pub async fn serve(
    listener: TcpListener,
    path: usize,
    transport: Transport,
    handler: Handler,
    cancel: CancellationToken,
) {
    while let Some((stream, remote)) = accept(&listener, &cancel).await {
        crate::net::keepalive(&stream, PEER_KEEPALIVE_SECS);
        let transport = transport.clone();
        let handler = handler.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Some((io, peer, expires, negotiated)) = transport.authenticate(stream, remote, &cancel).await
            else {
                return;
            };
            // Only an authenticated connection (or any, running insecure) takes a slot.
            let Ok(permit) = transport.inner.inbound.clone().try_acquire_owned() else {
                tracing::warn!(%remote, limit = MAX_INBOUND_CONNS, "too many peer connections; closing a new one");
                return;
            };
            let conn = Inbound {
                remote,
                peer,
                expires,
                negotiated,
                path,
            };
            serve_conn(io, conn, transport, handler, cancel).await;
            drop(permit);
        });
    }
}

impl Transport {
    /// Registers an inbound handshake; when [`MAX_PENDING_HANDSHAKES`] are under way, the
    /// oldest is told to give up. Returns its ticket and the token that says so.
    fn start_handshake(&self) -> (u64, CancellationToken) {
        let ticket = self.inner.next_handshake.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut pending = lock(&self.inner.handshakes);
        while pending.len() >= MAX_PENDING_HANDSHAKES {
            if let Some((_, oldest)) = pending.pop_front() {
                oldest.cancel();
            }
        }
        pending.push_back((ticket, token.clone()));
        (ticket, token)
    }

    /// Completes the TLS handshake of an inbound connection (within [`PROVE_DEADLINE`]),
    /// learns which member its certificate names and negotiates the protocol version: the
    /// highest of the client's ALPN names that this node speaks too. `None`: refused (logged
    /// and counted). The member is `None` without TLS: frames then name their sender
    /// themselves, and the version is settled by a `Hello` (or its absence).
    async fn authenticate(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        cancel: &CancellationToken,
    ) -> Option<(BoxIo, Option<String>, Option<i64>, Negotiated)> {
        let Some(tls) = &self.inner.tls else {
            return Some((Box::new(stream), None, None, Negotiated::Open));
        };
        let config = tls.peer_server_config()?;
        let ours = self.inner.protocols;
        let within = self.inner.timing.silence_allowed(PROVE_DEADLINE);
        let (ticket, evicted) = self.start_handshake();
        let handshake = async move {
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let theirs = start.client_hello().alpn().and_then(Range::from_alpn);
            // No version common: the handshake completes without an ALPN name, so that the
            // refusal can name the member and tell it our versions (see `serve_conn`).
            let negotiated = match theirs {
                None => Negotiated::Open,
                Some(theirs) => match ours.highest_common(&theirs) {
                    Some(v) => Negotiated::Version(v),
                    None => Negotiated::Refused(theirs),
                },
            };
            let mut config = (*config).clone();
            config.alpn_protocols = match negotiated {
                Negotiated::Version(v) => Range { min: v, max: v }.alpn(),
                _ => Vec::new(),
            };
            let io = start.into_stream(Arc::new(config)).await?;
            Ok::<_, std::io::Error>((io, negotiated))
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => None,
            _ = evicted.cancelled() => Some(Err(())),
            r = tokio::time::timeout(within, handshake) => Some(Ok(r)),
        };
        lock(&self.inner.handshakes).retain(|(t, _)| *t != ticket);
        let accepted = match accepted? {
            Ok(r) => r,
            Err(()) => {
                self.refuse(Refusal::Handshake);
                tracing::warn!(%remote, limit = MAX_PENDING_HANDSHAKES, "too many peer TLS handshakes under way; closing the oldest");
                return None;
            }
        };
        let (io, negotiated) = match accepted {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.refuse(Refusal::Handshake);
                tracing::warn!(%remote, error = %e, "peer TLS handshake refused");
                return None;
            }
            Err(_) => {
                self.refuse(Refusal::Handshake);
                tracing::warn!(%remote, "peer TLS handshake not completed in time; closing");
                return None;
            }
        };
        let named = crate::tls::peer_node_id(io.get_ref().1.peer_certificates());
        match named {
            Some(id) if self.is_peer(&id) => {
                self.saw_certificate(&id, io.get_ref().1.peer_certificates());
                let expires = io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::tls::cert_info(c.as_ref()).ok())
                    .map(|i| i.not_after);
                if let Negotiated::Refused(theirs) = negotiated {
                    self.refuse(Refusal::Protocol);
                    tracing::error!(%remote, "{}", protocol::mismatch(&id, &theirs, &ours));
                }
                Some((Box::new(io), Some(id), expires, negotiated))
            }
            other => {
                self.refuse(Refusal::NotMember);
                tracing::warn!(%remote, certificate_names = ?other, "peer certificate names no member of this cluster; closing");
                None
            }
        }
    }
}

/// TCP keep-alive on peer connections: probes after 10 s idle, 3 s apart, 3 of them.
const PEER_KEEPALIVE_SECS: i32 = 10;

/// The next connection (with `TCP_NODELAY`), or `None` once `cancel` fires. Accept errors
/// (e.g. out of file descriptors) are logged and retried after a short pause, never fatal.
pub async fn accept(listener: &TcpListener, cancel: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, remote));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// Where the protocol version of an inbound connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negotiated {
    /// Settled in the TLS handshake.
    Version(u32),
    /// Not settled: a `Hello` may come first; any other first frame is from a build before
    /// negotiation (version 1).
    Open,
    /// The client speaks these versions, none of ours: its first frame is answered with the
    /// refusal and the connection closes.
    Refused(Range),
}

/// What the handshake of an inbound connection established. `peer`: the member its
/// certificate names (with TLS); every frame must then claim that member, and the handler
/// hears that name, never the frame's own. `expires`: when that certificate expires (Unix
/// seconds); the connection is closed then, as a new one with it would be refused.
struct Inbound {
    remote: SocketAddr,
    peer: Option<String>,
    expires: Option<i64>,
    negotiated: Negotiated,
    /// Which of this node's paths it arrived on.
    path: usize,
}

/// Serves one connection.
async fn serve_conn(
    stream: BoxIo,
    conn: Inbound,
    transport: Transport,
    handler: Handler,
    cancel: CancellationToken,
) {
    let Inbound {
        remote,
        peer,
        expires,
        mut negotiated,
        path,
    } = conn;
    let ours = transport.inner.protocols;
    let (read, write) = tokio::io::split(stream);
    let mut source = FramedRead::new(read, FrameDecoder::with_budget(transport.inner.buffers.clone()));
    // Each answer is written by the task that computed it.
    let writer = Writer::new(FramedWrite::new(write, codec()));
    let me = transport.me().to_string();
    let conn_done = CancellationToken::new();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partial_since: Option<Instant> = None;
    let accepted = Instant::now();
    let prove_within = transport.inner.timing.silence_allowed(PROVE_DEADLINE);
    let mut proven = false;
    let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
    // An answer the peer does not take within the frame deadline closes the connection: it
    // is not read, and answers must not pile up behind it.
    let reply = |writer: Writer, conn_done: CancellationToken, bytes: Bytes| async move {
        tokio::select! {
            r = tokio::time::timeout(FRAME_DEADLINE, writer.send(bytes)) => if !matches!(r, Ok(Ok(()))) {
                // A partly written answer: nothing may follow it.
                conn_done.cancel();
                writer.close().await;
            },
            _ = conn_done.cancelled() => {}
        }
    };
    loop {
        // Read the next request only once one of the in-flight slots is free.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = conn_done.cancelled() => break,
            p = inflight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let frame = loop {
            tokio::select! {
                _ = cancel.cancelled() => break None,
                _ = conn_done.cancelled() => break None,
                f = source.next() => break Some(f),
                // Waiting for a frame is unbounded (an idle peer is fine) once the connection
                // has proven itself; finishing one that has started arriving is not.
                _ = check.tick() => {
                    if !proven && accepted.elapsed() > prove_within {
                        tracing::warn!(%remote, "peer connection sent no member frame in time; closing");
                        break None;
                    }
                    if expires.is_some_and(|t| crate::tls::unix_now() > t) {
                        tracing::warn!(%remote, certificate_names = ?peer, "peer certificate expired; closing its connection");
                        break None;
                    }
                    if source.read_buffer().is_empty() {
                        partial_since = None;
                    } else if partial_since.get_or_insert_with(Instant::now).elapsed() > FRAME_DEADLINE {
                        tracing::warn!(%remote, buffered = source.read_buffer().len(), "peer frame not completed in time; closing");
                        break None;
                    }
                }
            }
        };
        let Some(frame) = frame else { break };
        partial_since = None;
        if matches!(frame, Some(Ok(_))) && transport.is_cut(path) {
            // A drill cut this path: what arrives on it is lost, as on a dead link. (An end
            // or an error still ends the connection below.)
            drop(permit);
            continue;
        }
        let bytes = match frame {
            Some(Ok(b)) => b,
            // A peer that stops (or drops a connection it replaced) closes without TLS's
            // close_notify: an ordinary end, not worth a warning.
            Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(%remote, "peer connection closed");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(%remote, error = %e, "peer connection closed");
                break;
            }
            None => break,
        };
        // A refused frame gets an error answer (when its id can be read) and the connection
        // goes on: the length prefix kept the stream in step.
        let refusal = if bytes.len() > SMALL_REQUEST && !request_kind(&bytes).is_some_and(may_be_large) {
            tracing::warn!(%remote, len = bytes.len(), kind = ?request_kind(&bytes), "oversized request from peer; refused without decoding");
            Err(format!(
                "request of {} bytes: this kind may carry at most {SMALL_REQUEST}",
                bytes.len()
            ))
        } else {
            match postcard::from_bytes::<Frame<Request>>(&bytes) {
                Err(e) => {
                    tracing::warn!(%remote, error = %e, len = bytes.len(), "malformed frame from peer");
                    Err(format!("malformed request: {e}"))
                }
                Ok(f) if peer.as_ref().is_some_and(|p| *p != f.from) => {
                    transport.refuse(Refusal::WrongId);
                    tracing::warn!(%remote, from = %f.from, certificate_names = ?peer, "frame claims another member than its certificate names; refused");
                    Err(format!(
                        "this connection's certificate names {:?}; it cannot act as {:?}",
                        peer.as_deref().unwrap_or_default(),
                        f.from
                    ))
                }
                Ok(f) if !transport.is_peer(&f.from) => {
                    tracing::warn!(%remote, from = %f.from, "request from a node that is not a member; refused");
                    Err(format!("{:?} is not a member of this cluster", f.from))
                }
                Ok(f) => Ok(f),
            }
        };
        let frame = match refusal {
            Ok(f) => f,
            Err(message) => {
                if let Ok((id, _)) = postcard::take_from_bytes::<u64>(&bytes) {
                    let resp = Response::Error {
                        message,
                        retry: false,
                    };
                    reply(writer.clone(), conn_done.clone(), encode_response(&me, id, &resp)).await;
                }
                continue;
            }
        };
        proven = true;
        let id = frame.id;
        // The protocol version: a hello settles it (once), any other first frame too.
        let refused = match (&frame.body, negotiated) {
            (Request::Hello { min, max }, _) => {
                let theirs = Range::new(*min, *max);
                let chosen = match negotiated {
                    Negotiated::Refused(_) => None,
                    _ => theirs.and_then(|t| ours.highest_common(&t)),
                };
                let answer = Response::Hello {
                    min: ours.min,
                    max: ours.max,
                    chosen,
                };
                reply(
                    writer.clone(),
                    conn_done.clone(),
                    encode_response(&me, id, &answer),
                )
                .await;
                match (chosen, theirs) {
                    (Some(v), _) => {
                        tracing::debug!(%remote, from = %frame.from, protocol = v, "peer protocol negotiated");
                        negotiated = Negotiated::Version(v);
                        continue;
                    }
                    // Logged at the handshake already.
                    (None, _) if matches!(negotiated, Negotiated::Refused(_)) => {}
                    (None, Some(theirs)) => {
                        transport.refuse(Refusal::Protocol);
                        tracing::error!(%remote, "{}", protocol::mismatch(&frame.from, &theirs, &ours));
                    }
                    (None, None) => {
                        transport.refuse(Refusal::Protocol);
                        tracing::error!(%remote, from = %frame.from, min, max, "peer sent an invalid protocol range; closing");
                    }
                }
                break;
            }
            (_, Negotiated::Version(_)) => None,
            (_, Negotiated::Open) if ours.contains(Range::LEGACY.max) => {
                negotiated = Negotiated::Version(Range::LEGACY.max);
                None
            }
            (_, Negotiated::Open) => {
                transport.refuse(Refusal::Protocol);
                let text = protocol::mismatch(&frame.from, &Range::LEGACY, &ours);
                tracing::error!(%remote, "{text}");
                Some(Range::LEGACY)
            }
            (_, Negotiated::Refused(theirs)) => Some(theirs),
        };
        if let Some(theirs) = refused {
            // Told as the peer sees it: this node is its peer.
            let resp = Response::Error {
                message: protocol::mismatch(&me, &ours, &theirs),
                retry: false,
            };
            reply(writer.clone(), conn_done.clone(), encode_response(&me, id, &resp)).await;
            break;
        }
        if let Request::Ping { nonce } = frame.body {
            reply(
                writer.clone(),
                conn_done.clone(),
                encode_response(&me, id, &Response::Pong { nonce }),
            )
            .await;
            continue;
        }
        let fut = handler(frame.from, frame.body);
        let (me, writer, conn_done) = (me.clone(), writer.clone(), conn_done.clone());
        tokio::spawn(async move {
            let resp = fut.await;
            reply(writer, conn_done, encode_response(&me, id, &resp)).await;
            drop(permit);
        });
    }
    conn_done.cancel();
    writer.close().await;
}

fn encode_response(me: &str, id: u64, resp: &Response) -> Bytes {
    let frame = Frame {
        id,
        from: me.to_string(),
        body: resp,
    };
    // An answer too large for a frame goes back as an error for that request: the connection
    // (and the heartbeats it carries) stays up.
    let encoded = postcard::to_allocvec(&frame).and_then(|b| {
        if b.len() > MAX_FRAME {
            Err(postcard::Error::SerializeBufferFull)
        } else {
            Ok(b)
        }
    });
    match encoded {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            let fallback = Frame {
                id,
                from: me.to_string(),
                body: Response::Error {
                    message: format!("cannot encode response: {e}"),
                    retry: false,
                },
            };
            Bytes::from(postcard::to_allocvec(&fallback).unwrap_or_default())
        }
    }
}

/// A random start for ping nonces (the standard library's per-process hash keys, mixed with
/// the clock), so a nonce cannot be guessed from an earlier run or another node.
fn nonce_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::{Change, Command};
    use crate::cluster::TypeConfig;
    use bytes::BytesMut;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    /// A header that declares a 64 MiB frame used to reserve 64 MiB at once (200 such
    /// four-byte connections took a witness to 13 GB of virtual memory).
    #[test]
    fn a_declared_length_reserves_only_what_arrives() {
        let mut buf = BytesMut::from(&(MAX_FRAME as u32).to_be_bytes()[..]);
        assert!(FrameDecoder::default()
            .decode(&mut buf)
            .expect("a valid header")
            .is_none());
        assert!(buf.capacity() <= 4 + READ_CHUNK, "reserved {}", buf.capacity());

        let mut buf = BytesMut::from(&((MAX_FRAME + 1) as u32).to_be_bytes()[..]);
        assert!(FrameDecoder::default().decode(&mut buf).is_err());

        let mut buf = BytesMut::from(&[0, 0, 0, 3, b'a', b'b', b'c', 0, 0][..]);
        assert_eq!(
            &FrameDecoder::default()
                .decode(&mut buf)
                .expect("ok")
                .expect("frame")[..],
            b"abc"
        );
        assert_eq!(&buf[..], &[0, 0]);
    }

    /// Ten connections each 30 MiB into a declared 64 MiB frame added 310 MB of memory; now
    /// all inbound connections share a budget, and the one that would cross it is refused
    /// (its connection closes) while the others keep theirs.
    #[test]
    fn inbound_buffers_share_a_budget() {
        let budget = Arc::new(BufferBudget::default());
        let header = (MAX_FRAME as u32).to_be_bytes();
        let partial = |mib: usize| {
            let mut b = BytesMut::from(&header[..]);
            b.extend_from_slice(&vec![0u8; mib * 1024 * 1024]);
            b
        };
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut dec = FrameDecoder::with_budget(budget.clone());
            let mut buf = partial(30);
            assert!(dec.decode(&mut buf).expect("within the budget").is_none());
            held.push((dec, buf));
        }
        let mut dec = FrameDecoder::with_budget(budget.clone());
        let mut buf = partial(30);
        assert!(
            dec.decode(&mut buf).is_err(),
            "the ninth 30 MiB buffer crosses 256 MiB"
        );
        drop(dec);
        // Closing connections gives their bytes back.
        held.truncate(1);
        let mut dec = FrameDecoder::with_budget(budget.clone());
        assert!(dec.decode(&mut partial(30)).expect("room again").is_none());
        drop(dec);
        drop(held);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// Serves a transport named "b" (peer "a") on port 0 with `handler`.
    async fn serve_b(handler: Handler) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let t = Transport::new(
            "b".into(),
            vec![("a".into(), Vec::new())],
            Duration::from_millis(100),
            Duration::from_millis(500),
            None,
        );
        tokio::spawn(serve(listener, 0, t, handler, cancel.clone()));
        (addr, cancel)
    }

    fn raw(id: u64, from: &str, req: &Request) -> Vec<u8> {
        let body = postcard::to_allocvec(&Frame {
            id,
            from: from.to_string(),
            body: req,
        })
        .expect("encode");
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    /// A peer that sends requests and never reads the answers used to make the node queue
    /// every answer (400 status requests of 3 KB in all: +801 MiB). Now at most
    /// `MAX_INFLIGHT` requests of a connection are handled at once; the rest wait unread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_in_flight_per_connection_are_bounded() {
        use std::sync::atomic::AtomicUsize;
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let handler: Handler = {
            let (now, most, started) = (now.clone(), most.clone(), started.clone());
            Arc::new(move |_from, _req| {
                let (now, most, started) = (now.clone(), most.clone(), started.clone());
                Box::pin(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Response::Json("x".repeat(1024 * 1024))
                })
            })
        };
        let (addr, cancel) = serve_b(handler).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let mut bytes = Vec::new();
        for id in 0..200 {
            bytes.extend(raw(id, "a", &Request::Status));
        }
        use tokio::io::AsyncWriteExt;
        conn.write_all(&bytes).await.expect("send");
        // Long enough for several rounds of handling, never reading an answer.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            most.load(Ordering::SeqCst) <= MAX_INFLIGHT,
            "{} at once",
            most.load(Ordering::SeqCst)
        );
        // The answers are not read: beyond the in-flight slots, only as many more were
        // handled as the socket buffers took answers (1 MiB each); before, all 200 were.
        let handled = started.load(Ordering::SeqCst);
        assert!(handled <= MAX_INFLIGHT + 16, "{handled} handled");
        cancel.cancel();
    }

    /// Reads one answer frame from a raw connection.
    async fn answer(conn: &mut TcpStream) -> Frame<Response> {
        use tokio::io::AsyncReadExt;
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).await.expect("length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut body).await.expect("frame");
        postcard::from_bytes(&body).expect("an answer")
    }

    /// A request kind that carries no bulk data is refused over `SMALL_REQUEST` before it is
    /// decoded (a decoded request takes many times its size), with an error answer on a
    /// connection that goes on serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_small_request_is_refused_without_decoding() {
        use tokio::io::AsyncWriteExt;
        let handler: Handler = Arc::new(|_from, _req| Box::pin(async { Response::Ok }));
        let (addr, cancel) = serve_b(handler).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let big = Request::Admin("x".repeat(SMALL_REQUEST + 1));
        conn.write_all(&raw(1, "a", &big)).await.expect("send");
        let a = answer(&mut conn).await;
        assert_eq!(a.id, 1);
        assert!(
            matches!(&a.body, Response::Error { message, retry: false } if message.contains("may carry at most")),
            "{:?}",
            a.body
        );
        conn.write_all(&raw(2, "a", &Request::Ping { nonce: 5 }))
            .await
            .expect("send");
        let a = answer(&mut conn).await;
        assert!(matches!(a.body, Response::Pong { nonce: 5 }), "{:?}", a.body);
        // Within the limit, the same kind is served.
        conn.write_all(&raw(3, "a", &Request::Admin("x".repeat(1000))))
            .await
            .expect("send");
        assert!(matches!(answer(&mut conn).await.body, Response::Ok));
        cancel.cancel();
    }

    /// At most `MAX_INBOUND_CONNS` inbound connections are served at once: the next one is
    /// closed at once, and a slot freed is usable again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inbound_connections_are_capped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let handler: Handler = Arc::new(|_from, _req| Box::pin(async { Response::Ok }));
        let (addr, cancel) = serve_b(handler).await;
        let mut held = Vec::new();
        for _ in 0..MAX_INBOUND_CONNS {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            // Served: it answers a ping.
            c.write_all(&raw(1, "a", &Request::Ping { nonce: 1 }))
                .await
                .expect("send");
            assert!(matches!(answer(&mut c).await.body, Response::Pong { nonce: 1 }));
            held.push(c);
        }
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("the extra connection is closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        drop(held.pop());
        // The freed slot is released once the server sees the close.
        let mut served = false;
        for _ in 0..50 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let _ = c.write_all(&raw(2, "a", &Request::Ping { nonce: 2 })).await;
            let mut len = [0u8; 4];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut len)).await
            {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a freed slot serves a new connection");
        cancel.cancel();
    }

    /// 64 connections that never sent a byte used to hold every inbound slot for good, locking
    /// the real peers out. A connection must now send a member's frame within
    /// `PROVE_DEADLINE`, or it is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_is_closed() {
        use tokio::io::AsyncReadExt;
        let handler: Handler = Arc::new(|_from, _req| Box::pin(async { Response::Ok }));
        let (addr, cancel) = serve_b(handler).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(PROVE_DEADLINE + Duration::from_secs(3), silent.read(&mut buf))
            .await
            .expect("closed within the deadline");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        cancel.cancel();
    }

    /// The variant indices `may_be_large` relies on are those of `Request` on the wire, and
    /// only those kinds may exceed `SMALL_REQUEST`.
    #[test]
    fn only_bulk_request_kinds_may_be_large() {
        let kind = |r: &Request| {
            request_kind(
                &postcard::to_allocvec(&Frame {
                    id: 7,
                    from: "a".to_string(),
                    body: r,
                })
                .expect("encode"),
            )
            .expect("kind")
        };
        let large: Vec<bool> = requests().iter().map(|r| may_be_large(kind(r))).collect();
        // Ping, Write, Vote, AppendEntries, PreVote, Lease (the order of `requests()`).
        assert_eq!(large, vec![false, false, false, true, false, false]);
        for r in [
            Request::StoreWrite {
                ops: Vec::new(),
                kind: crate::kv::GroupKind::Pipeline,
            },
            Request::StoreRead { ops: Vec::new() },
        ] {
            assert!(may_be_large(kind(&r)));
        }
        assert!(!may_be_large(kind(&Request::Status)));
        assert!(!may_be_large(kind(&Request::Admin(String::new()))));
        assert!(!may_be_large(kind(&Request::Hello { min: 1, max: 1 })));
    }

    fn requests() -> Vec<Request> {
        let vote = openraft::Vote::new(3, 7);
        vec![
            Request::Ping { nonce: 9 },
            Request::Write(Command::batch(vec![
                Change::Notified { seq: 1 },
                Change::Maintenance {
                    node: "a".into(),
                    on: true,
                    at: 5,
                },
            ])),
            Request::Vote(openraft::raft::VoteRequest {
                vote,
                last_log_id: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, 7), 4)),
            }),
            Request::AppendEntries(openraft::raft::AppendEntriesRequest {
                vote,
                prev_log_id: None,
                entries: vec![openraft::Entry::<TypeConfig> {
                    log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 7), 1),
                    payload: openraft::EntryPayload::Normal(Command::Store {
                        groups: Vec::new(),
                        now_ms: 1,
                    }),
                }],
                leader_commit: None,
            }),
            Request::PreVote { last_log: None },
            Request::Lease {
                node: "a".into(),
                epoch: 2,
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Peer frames, whole or mutated, and arbitrary bytes: decoding never panics, and a
        /// frame that decodes re-encodes to something that decodes again.
        #[test]
        fn peer_frames_decode_safely(
            which in 0usize..6,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            junk in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let req = &requests()[which];
            let mut bytes = postcard::to_allocvec(&Frame { id: 1, from: "a".to_string(), body: req })
                .expect("encode");
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] ^= b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(f) = postcard::from_bytes::<Frame<Request>>(&bytes) {
                let again = postcard::to_allocvec(&f).expect("re-encode");
                prop_assert!(postcard::from_bytes::<Frame<Request>>(&again).is_ok());
            }
            let _ = postcard::from_bytes::<Frame<Request>>(&junk);
            let _ = postcard::from_bytes::<Frame<Response>>(&junk);
        }

        /// The stream decoder on arbitrary bytes in arbitrary chunks: never panics, holds memory
        /// in proportion to what arrived (plus one read chunk, at most doubled by the buffer's
        /// growth), never to what a header declares, and yields only frames within the limit.
        #[test]
        fn the_stream_decoder_is_bounded(
            input in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
        ) {
            let mut buf = BytesMut::new();
            let mut dec = FrameDecoder::default();
            let mut fed = 0;
            for piece in input.chunks(chunk) {
                buf.extend_from_slice(piece);
                fed += piece.len();
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(f)) => prop_assert!(f.len() <= MAX_FRAME),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(buf.capacity() <= 2 * (fed + READ_CHUNK), "capacity {} after {} bytes", buf.capacity(), fed);
            }
        }
    }

    /// A CA with certificates for `ids` in `dir`, and the loaded material of one of them.
    fn certs(dir: &std::path::Path, ids: &[&str]) {
        crate::tls::init_ca(dir, "test CA", Duration::from_secs(86_400)).expect("CA");
        for id in ids {
            crate::tls::issue_files(dir, dir, id, &[], Duration::from_secs(86_400)).expect("issue");
        }
    }

    fn tls_as(dir: &std::path::Path, id: &str) -> Arc<crate::tls::Tls> {
        Arc::new(
            crate::tls::Tls::load(
                crate::tls::TlsFiles {
                    ca: Some(dir.join("ca.pem")),
                    cert: dir.join(format!("{id}.pem")),
                    key: dir.join(format!("{id}.key")),
                    keys: ["ca", "cert", "key"],
                },
                None,
            )
            .expect("load"),
        )
    }

    /// Serves member "b" of {a, b, c} with TLS; the handler answers with the member it was
    /// told the request came from.
    async fn serve_tls_b(dir: &std::path::Path) -> (SocketAddr, Transport, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let t = Transport::new(
            "b".into(),
            vec![("a".into(), Vec::new()), ("c".into(), Vec::new())],
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(tls_as(dir, "b")),
        );
        let handler: Handler = Arc::new(|from, _req| Box::pin(async move { Response::Json(from) }));
        tokio::spawn(serve(listener, 0, t.clone(), handler, cancel.clone()));
        (addr, t, cancel)
    }

    /// A client transport named `me` with `cert`'s material, whose peer "b" is at `addr`.
    fn client(dir: &std::path::Path, me: &str, cert: &str, addr: SocketAddr) -> Transport {
        Transport::new(
            me.into(),
            vec![("b".into(), vec![addr])],
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(tls_as(dir, cert)),
        )
    }

    /// Members reach each other over mutual TLS and act as the member their certificate
    /// names; a member's certificate cannot act as another member, and a valid certificate
    /// for an id that is not a member gets no connection. Each refusal is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_acts_only_as_the_member_its_certificate_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        certs(dir.path(), &["a", "b", "c", "mallory"]);
        let (addr, server, cancel) = serve_tls_b(dir.path()).await;
        let t = Duration::from_secs(5);

        let a = client(dir.path(), "a", "a", addr);
        let r = a.call("b", &Request::Status, t).await.expect("a's call");
        assert!(matches!(r, Response::Json(ref from) if from == "a"), "{r:?}");
        assert_eq!(
            a.peer_cert_not_after("b"),
            Some(tls_as(dir.path(), "b").not_after())
        );

        // c's certificate, frames claiming to be a.
        let forged = client(dir.path(), "a", "c", addr);
        let r = forged.call("b", &Request::Status, t).await.expect("an answer");
        assert!(
            matches!(&r, Response::Error { message, .. } if message.contains("cannot act as \"a\"")),
            "{r:?}"
        );

        // A valid certificate of the same CA for a non-member.
        let mallory = client(dir.path(), "a", "mallory", addr);
        assert!(mallory.call("b", &Request::Status, t).await.is_err());

        // Plain text to the TLS port: no answer, the connection is closed.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        plain
            .write_all(&raw(1, "a", &Request::Status))
            .await
            .expect("write");
        // At most a TLS alert record (content type 21), then the close.
        let mut got = Vec::new();
        let _ = tokio::time::timeout(t, plain.read_to_end(&mut got))
            .await
            .expect("closed in time");
        assert!(
            got.is_empty() || got[0] == 21,
            "plain text got an answer: {got:?}"
        );

        let counts: BTreeMap<&str, u64> = server
            .refusals()
            .into_iter()
            .map(|(r, n)| (r.label(), n))
            .collect();
        assert_eq!(counts["wrong-id"], 1, "{counts:?}");
        assert!(counts["not-member"] >= 1, "{counts:?}");
        assert!(counts["handshake"] >= 1, "{counts:?}");
        cancel.cancel();
    }

    /// Member "b" speaking `server` served on port 0, and member "a" speaking `client` that
    /// reaches it; with TLS when `dir` holds their certificates.
    async fn speaking(
        dir: Option<&std::path::Path>,
        server: (u32, u32),
        client: (u32, u32),
    ) -> (Transport, Transport, CancellationToken) {
        let range = |(min, max)| Range::new(min, max).expect("range");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let b = Transport::new(
            "b".into(),
            vec![("a".into(), Vec::new())],
            Duration::from_millis(100),
            Duration::from_millis(500),
            dir.map(|d| tls_as(d, "b")),
        )
        .speaking(range(server));
        let handler: Handler = Arc::new(|_from, _req| Box::pin(async move { Response::Ok }));
        tokio::spawn(serve(listener, 0, b.clone(), handler, cancel.clone()));
        let a = Transport::new(
            "a".into(),
            vec![("b".into(), vec![addr])],
            Duration::from_millis(100),
            Duration::from_millis(500),
            dir.map(|d| tls_as(d, "a")),
        )
        .speaking(range(client));
        (a, b, cancel)
    }

    fn protocol_refusals(t: &Transport) -> u64 {
        t.refusals()
            .into_iter()
            .find(|(r, _)| *r == Refusal::Protocol)
            .map_or(0, |(_, n)| n)
    }

    /// Two nodes whose protocol ranges overlap agree on the highest common version (with TLS
    /// through ALPN, without through the hello), whichever side is newer; disjoint ranges are
    /// refused, and the error names both ranges and the side to upgrade.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_agree_on_the_highest_common_protocol_or_refuse_naming_both_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        certs(dir.path(), &["a", "b"]);
        let t = Duration::from_secs(5);
        for tls in [Some(dir.path()), None] {
            for (server, client, want) in [((1, 3), (2, 5), 3), ((2, 5), (1, 3), 3), ((1, 1), (1, 1), 1)] {
                let (a, _b, cancel) = speaking(tls, server, client).await;
                let r = a.call("b", &Request::Status, t).await;
                assert!(matches!(r, Ok(Response::Ok)), "tls {}: {r:?}", tls.is_some());
                assert_eq!(
                    a.paths("b")[0].protocol,
                    Some(want),
                    "tls {} {server:?} {client:?}",
                    tls.is_some()
                );
                cancel.cancel();
            }
            for (server, client, want) in [
                (
                    (2, 3),
                    (1, 1),
                    "peer b speaks protocol 2..3, this node 1..1: upgrade this node",
                ),
                (
                    (1, 1),
                    (2, 3),
                    "peer b speaks protocol 1..1, this node 2..3: upgrade b",
                ),
            ] {
                let (a, b, cancel) = speaking(tls, server, client).await;
                let e = a.call("b", &Request::Status, t).await.expect_err("refused");
                assert!(e.to_string().contains(want), "tls {}: {e}", tls.is_some());
                let path = &a.paths("b")[0];
                assert_eq!(path.protocol, None);
                assert!(
                    path.last_error.as_deref().is_some_and(|e| e.contains(want)),
                    "{path:?}"
                );
                assert!(protocol_refusals(&b) >= 1, "tls {}", tls.is_some());
                cancel.cancel();
            }
        }
    }

    /// A server from before negotiation answers the hello with an error (an unknown
    /// request): it speaks version 1, which a node speaking 1 uses and a node that no longer
    /// does refuses. A client from before negotiation sends no hello: version 1 (the raw
    /// frames of the tests above are such a client).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_from_before_negotiation_speaks_version_1() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The old server: every frame it cannot decode gets an error with its id.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, write) = tokio::io::split(stream);
                    let mut source = FramedRead::new(read, FrameDecoder::default());
                    let mut sink = FramedWrite::new(write, codec());
                    while let Some(Ok(bytes)) = source.next().await {
                        let Ok((id, _)) = postcard::take_from_bytes::<u64>(&bytes) else {
                            break;
                        };
                        let resp = match postcard::from_bytes::<Frame<Request>>(&bytes) {
                            Ok(Frame {
                                body: Request::Ping { nonce },
                                ..
                            }) => Response::Pong { nonce },
                            Ok(Frame {
                                body: Request::Hello { .. },
                                ..
                            }) => Response::Error {
                                message: "malformed request: unknown variant".into(),
                                retry: false,
                            },
                            _ => Response::Ok,
                        };
                        if sink.send(encode_response("b", id, &resp)).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let t = Duration::from_secs(5);
        let client = |min, max| {
            Transport::new(
                "a".into(),
                vec![("b".into(), vec![addr])],
                Duration::from_millis(100),
                Duration::from_millis(500),
                None,
            )
            .speaking(Range::new(min, max).expect("range"))
        };
        let a = client(1, 2);
        assert!(matches!(a.call("b", &Request::Status, t).await, Ok(Response::Ok)));
        assert_eq!(a.paths("b")[0].protocol, Some(1));
        let newer = client(2, 3);
        let e = newer.call("b", &Request::Status, t).await.expect_err("refused");
        assert!(
            e.to_string()
                .contains("peer b speaks protocol 1..1, this node 2..3: upgrade b"),
            "{e}"
        );
    }

    /// A client checks that the server names the member it meant to reach: c's certificate
    /// on b's address is refused, and so is a server from another CA.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_must_name_the_member_we_meant() {
        let dir = tempfile::tempdir().expect("tempdir");
        certs(dir.path(), &["a", "b", "c"]);
        let other = tempfile::tempdir().expect("tempdir");
        certs(other.path(), &["a", "b"]);
        let t = Duration::from_secs(5);
        for (server_dir, server_cert) in [(dir.path(), "c"), (other.path(), "b")] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let cancel = CancellationToken::new();
            let impostor = Transport::new(
                server_cert.into(),
                vec![("a".into(), Vec::new())],
                Duration::from_millis(100),
                Duration::from_millis(500),
                Some(tls_as(server_dir, server_cert)),
            );
            let handler: Handler = Arc::new(|_from, _req| Box::pin(async move { Response::Ok }));
            tokio::spawn(serve(listener, 0, impostor, handler, cancel.clone()));
            let a = client(dir.path(), "a", "a", addr);
            let e = a
                .call("b", &Request::Status, t)
                .await
                .expect_err("impostor refused");
            assert!(e.to_string().contains("tls handshake"), "{e}");
            cancel.cancel();
        }
    }

    /// After a certificate reload, new requests go over a new connection, so the peer sees
    /// the new certificate; the old connection is closed once idle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reloaded_certificate_is_shown_on_a_new_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        certs(dir.path(), &["a", "b"]);
        let (addr, server, cancel) = serve_tls_b(dir.path()).await;
        let a_tls = tls_as(dir.path(), "a");
        let a = Transport::new(
            "a".into(),
            vec![("b".into(), vec![addr])],
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(a_tls.clone()),
        );
        let t = Duration::from_secs(5);
        a.call("b", &Request::Status, t).await.expect("call");
        let before = server.peer_cert_not_after("a").expect("seen");

        let new = dir.path().join("new");
        std::fs::create_dir(&new).expect("dir");
        crate::tls::issue_files(dir.path(), &new, "a", &[], Duration::from_secs(3 * 86_400)).expect("issue");
        std::fs::rename(new.join("a.pem"), dir.path().join("a.pem")).expect("mv");
        std::fs::rename(new.join("a.key"), dir.path().join("a.key")).expect("mv");
        assert!(a_tls.reload_if_changed().expect("reload"));

        a.call("b", &Request::Status, t).await.expect("call after reload");
        let after = server.peer_cert_not_after("a").expect("seen");
        assert!(after > before + 86_400, "b saw {after}, before {before}");
        cancel.cancel();
    }

    /// A connection this node opened is not used past the expiry of the certificate its peer
    /// showed: the next request reconnects, and the expired certificate fails the handshake
    /// (the connection used to be served for as long as it stayed up).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outbound_connection_ends_with_the_peers_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        certs(dir.path(), &["a", "b", "c"]);
        // b's certificate: valid for 3 more seconds.
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("read");
        let (cert, key) = crate::tls::issue_between(
            &read("ca.pem"),
            &read("ca.key"),
            "b",
            &[],
            Some(time::OffsetDateTime::now_utc() - time::Duration::hours(1)),
            Duration::from_secs(3600 + 3),
        )
        .expect("issue");
        std::fs::write(dir.path().join("b.pem"), cert).expect("write");
        std::fs::write(dir.path().join("b.key"), key).expect("write");
        let (addr, _server, cancel) = serve_tls_b(dir.path()).await;
        let a = client(dir.path(), "a", "a", addr);
        let t = Duration::from_secs(5);
        a.call("b", &Request::Status, t).await.expect("before expiry");
        let expires = a.peer_cert_not_after("b").expect("seen");
        // Bounded: the certificate expires within 4 s.
        while crate::tls::unix_now() <= expires {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let e = a
            .call("b", &Request::Status, t)
            .await
            .expect_err("an expired peer");
        assert!(e.to_string().contains("tls handshake"), "{e}");
        cancel.cancel();
    }

    /// CA rotation as the README describes it: while `ca` holds both the old and the new CA,
    /// a node with a certificate from the new CA and one with a certificate from the old CA
    /// talk to each other both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_of_two_cas_in_one_bundle_talk() {
        let old = tempfile::tempdir().expect("tempdir");
        let new = tempfile::tempdir().expect("tempdir");
        certs(old.path(), &["a", "b"]);
        certs(new.path(), &["a", "b"]);
        let bundle = format!(
            "{}{}",
            std::fs::read_to_string(old.path().join("ca.pem")).expect("old CA"),
            std::fs::read_to_string(new.path().join("ca.pem")).expect("new CA")
        );
        let with_bundle = |dir: &std::path::Path, id: &str| {
            let ca = dir.join("bundle.pem");
            std::fs::write(&ca, &bundle).expect("bundle");
            Arc::new(
                crate::tls::Tls::load(
                    crate::tls::TlsFiles {
                        ca: Some(ca),
                        cert: dir.join(format!("{id}.pem")),
                        key: dir.join(format!("{id}.key")),
                        keys: ["ca", "cert", "key"],
                    },
                    Some(id),
                )
                .expect("load with the bundle"),
            )
        };
        // b still has the old CA's certificate, a already the new one's.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let b = Transport::new(
            "b".into(),
            vec![("a".into(), Vec::new())],
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(with_bundle(old.path(), "b")),
        );
        let handler: Handler = Arc::new(|from, _req| Box::pin(async move { Response::Json(from) }));
        tokio::spawn(serve(listener, 0, b, handler, cancel.clone()));
        let a = Transport::new(
            "a".into(),
            vec![("b".into(), vec![addr])],
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(with_bundle(new.path(), "a")),
        );
        let r = a
            .call("b", &Request::Status, Duration::from_secs(5))
            .await
            .expect("across CAs");
        assert!(matches!(r, Response::Json(ref from) if from == "a"), "{r:?}");
        cancel.cancel();
    }
}
