//! The Redis-protocol server of a data node: one task per connection, connection-level
//! commands handled here (PING, HELLO, AUTH, SELECT, CLIENT, COMMAND, INFO, MULTI/EXEC, WAIT,
//! READONLY), data commands parsed by `cmd` and sent through [`Replicator`].
//!
//! A connection reads every request already in its buffer (a pipeline) and sends runs of
//! consecutive writes as one group and runs of consecutive reads as one read, so pipelined
//! clients get group commit while each connection keeps its order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::cmd::{self, Op, Parsed};
use super::replicate::{GroupKind, Replicator, StoreError};
use super::reply::Reply;
use super::resp::{Frame, Limits, RespCodec, RespError};
use crate::api::metrics::StoreKind;
use crate::config::StoreConfig;
use crate::node::Node;

/// Requests taken from one pipeline at most before replies are written.
const MAX_PIPELINE: usize = 512;

struct Shared {
    node: Arc<Node>,
    cfg: StoreConfig,
    replicator: Replicator,
    clients: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// Serves the store on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    cfg: StoreConfig,
    replicator: Replicator,
    cancel: CancellationToken,
) {
    let shared = Arc::new(Shared {
        node,
        clients: Arc::new(Semaphore::new(cfg.max_clients as usize)),
        cfg,
        replicator,
        next_id: AtomicU64::new(1),
    });
    while let Some((stream, remote)) = crate::cluster::transport::accept(&listener, &cancel).await {
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(permit) = shared.clients.clone().try_acquire_owned() else {
                reject(stream).await;
                return;
            };
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let span = tracing::debug_span!("store.conn", client.id = id, client.addr = %remote);
            let _e = span.enter();
            handle(stream, shared, id, cancel).await;
            drop(permit);
        });
    }
}

async fn reject(mut stream: TcpStream) {
    let mut out = BytesMut::new();
    let mut codec = RespCodec::new(Limits::default());
    let _ = codec.encode(Frame::Error("ERR max number of clients reached".into()), &mut out);
    let _ = stream.write_all(&out).await;
}

/// Per-connection state.
struct Conn {
    id: u64,
    name: Option<Bytes>,
    authed: bool,
    readonly: bool,
    /// Queued commands between MULTI and EXEC; `Some(true)` in `multi_error` = EXECABORT.
    multi: Option<Vec<Op>>,
    multi_error: bool,
}

/// Converts a store reply into a wire frame.
pub fn to_frame(r: Reply) -> Frame {
    match r {
        Reply::Ok => Frame::Simple("OK".into()),
        Reply::Simple(s) => Frame::Simple(s),
        Reply::Error(e) => Frame::Error(e),
        Reply::Int(i) => Frame::Integer(i),
        Reply::Bulk(b) => Frame::Bulk(b),
        Reply::Nil => Frame::Null,
        Reply::NilArray => Frame::NullArray,
        Reply::Array(v) => Frame::Array(v.into_iter().map(to_frame).collect()),
        Reply::Double(d) => Frame::Double(d),
        Reply::Map(v) => Frame::Map(v.into_iter().map(|(k, v)| (to_frame(k), to_frame(v))).collect()),
        Reply::Set(v) => Frame::Set(v.into_iter().map(to_frame).collect()),
    }
}

fn err(s: impl Into<String>) -> Frame {
    Frame::Error(s.into())
}

fn store_error(e: &StoreError) -> Frame {
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
    Reply(Frame),
    Write(Op),
    Read(Op),
    Close(Frame),
}

async fn handle(stream: TcpStream, shared: Arc<Shared>, id: u64, cancel: CancellationToken) {
    let limits = Limits {
        max_bulk_len: shared.cfg.max_request_size as usize,
        ..Limits::default()
    };
    let mut codec = RespCodec::new(limits);
    let (mut rd, mut wr) = stream.into_split();
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut conn = Conn {
        id,
        name: None,
        authed: shared.cfg.requirepass.is_none(),
        readonly: false,
        multi: None,
        multi_error: false,
    };
    loop {
        // Everything already buffered is one pipeline.
        let mut requests = Vec::new();
        let mut protocol_error = None;
        while requests.len() < MAX_PIPELINE {
            match codec.decode(&mut inbuf) {
                Ok(Some(args)) => requests.push(args),
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
                r = rd.read_buf(&mut inbuf) => match r { Ok(n) => n, Err(_) => return },
            };
            if n == 0 {
                return;
            }
            continue;
        }
        let mut items = Vec::with_capacity(requests.len());
        for args in requests {
            let item = classify(&shared, &mut conn, &args, &mut codec).await;
            let close = matches!(item, Item::Close(_));
            items.push(item);
            if close {
                break;
            }
        }
        let mut close = false;
        for (frame, last) in execute(&shared, &mut conn, items).await {
            if let Some(f) = last {
                close = true;
                let _ = codec.encode(f, &mut out);
                break;
            }
            let _ = codec.encode(frame, &mut out);
        }
        if let Some(msg) = protocol_error {
            // Like Redis: reply with the protocol error, then close the connection.
            let _ = codec.encode(err(msg), &mut out);
            close = true;
        }
        if wr.write_all(&out).await.is_err() || close {
            return;
        }
        out.clear();
    }
}

/// Runs the items in order: consecutive writes as one group, consecutive reads as one read.
/// Returns (reply, close-after) pairs.
async fn execute(shared: &Shared, conn: &mut Conn, items: Vec<Item>) -> Vec<(Frame, Option<Frame>)> {
    let mut out = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.next() {
        match item {
            Item::Reply(f) => out.push((f, None)),
            Item::Close(f) => {
                out.push((Frame::Simple(String::new()), Some(f)));
                break;
            }
            Item::Write(op) => {
                let mut ops = vec![op];
                while let Some(Item::Write(_)) = items.peek() {
                    if let Some(Item::Write(op)) = items.next() {
                        ops.push(op);
                    }
                }
                let n = ops.len();
                let started = Instant::now();
                let result = write_with_retry(shared, ops, GroupKind::Pipeline, conn.id).await;
                shared
                    .node
                    .metrics
                    .store_done(StoreKind::Write, n, result.is_ok(), started.elapsed());
                match result {
                    Ok(replies) => out.extend(pad(replies, n).into_iter().map(|r| (to_frame(r), None))),
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
                    .node
                    .metrics
                    .store_done(kind, n, result.is_ok(), started.elapsed());
                match result {
                    Ok(replies) => out.extend(pad(replies, n).into_iter().map(|r| (to_frame(r), None))),
                    Err(e) => out.extend((0..n).map(|_| (store_error(&e), None))),
                }
            }
        }
    }
    out
}

fn pad(mut replies: Vec<Reply>, n: usize) -> Vec<Reply> {
    replies.resize_with(n, || Reply::Error("ERR internal: missing reply".into()));
    replies
}

/// During a failover there is briefly no leader: wait for one (bounded) rather than fail.
async fn write_with_retry(
    shared: &Shared,
    ops: Vec<Op>,
    kind: GroupKind,
    client: u64,
) -> Result<Vec<Reply>, StoreError> {
    let deadline = Instant::now() + shared.cfg.retry_for;
    loop {
        match shared.replicator.write(ops.clone(), kind, client).await {
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

fn arity(name: &str) -> Frame {
    err(format!("ERR wrong number of arguments for '{name}' command"))
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn unknown(args: &[Bytes]) -> Frame {
    let name = String::from_utf8_lossy(&args[0]);
    let rest: String = args[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
        .collect();
    err(format!(
        "ERR unknown command '{name}', with args beginning with: {rest}"
    ))
}

/// Decides what one request is: answered here, a write, or a read.
async fn classify(shared: &Shared, conn: &mut Conn, args: &[Bytes], codec: &mut RespCodec) -> Item {
    let name = lower(&args[0]);
    // Before AUTH only AUTH, HELLO and QUIT are allowed (requirepass semantics).
    if !conn.authed && !matches!(name.as_str(), "auth" | "hello" | "quit") {
        return Item::Reply(err("NOAUTH Authentication required."));
    }
    // Inside MULTI everything but the transaction commands is queued.
    if conn.multi.is_some() && !matches!(name.as_str(), "exec" | "discard" | "multi" | "watch" | "quit") {
        return match cmd::parse(args) {
            Ok(Parsed::Data(op)) => {
                if let Some(q) = conn.multi.as_mut() {
                    q.push(op);
                }
                Item::Reply(Frame::Simple("QUEUED".into()))
            }
            Ok(Parsed::NotData) => {
                conn.multi_error = true;
                Item::Reply(err(format!(
                    "ERR Command not allowed inside a transaction or unknown: '{name}'"
                )))
            }
            Err(e) => {
                conn.multi_error = true;
                Item::Reply(to_frame(e))
            }
        };
    }
    match name.as_str() {
        "ping" => match args.len() {
            1 => Item::Reply(Frame::Simple("PONG".into())),
            2 => Item::Reply(Frame::Bulk(args[1].clone())),
            _ => Item::Reply(arity("ping")),
        },
        "echo" => match args.len() {
            2 => Item::Reply(Frame::Bulk(args[1].clone())),
            _ => Item::Reply(arity("echo")),
        },
        "quit" => Item::Close(Frame::Simple("OK".into())),
        "select" => match args.get(1).map(|a| lower(a)) {
            Some(db) if args.len() == 2 => match db.parse::<i64>() {
                Ok(0) => Item::Reply(Frame::Simple("OK".into())),
                Ok(_) => Item::Reply(err("ERR DB index is out of range")),
                Err(_) => Item::Reply(err("ERR value is not an integer or out of range")),
            },
            _ => Item::Reply(arity("select")),
        },
        "auth" => Item::Reply(auth(shared, conn, &args[1..])),
        "hello" => hello(shared, conn, args, codec),
        "client" => Item::Reply(client(conn, args)),
        "command" => Item::Reply(command(args)),
        "info" => Item::Reply(Frame::Bulk(Bytes::from(info(shared).await))),
        "readonly" => {
            conn.readonly = true;
            Item::Reply(Frame::Simple("OK".into()))
        }
        "readwrite" => {
            conn.readonly = false;
            Item::Reply(Frame::Simple("OK".into()))
        }
        "multi" => {
            if conn.multi.is_some() {
                return Item::Reply(err("ERR MULTI calls can not be nested"));
            }
            conn.multi = Some(Vec::new());
            conn.multi_error = false;
            Item::Reply(Frame::Simple("OK".into()))
        }
        "discard" => match conn.multi.take() {
            Some(_) => Item::Reply(Frame::Simple("OK".into())),
            None => Item::Reply(err("ERR DISCARD without MULTI")),
        },
        "exec" => {
            let Some(queued) = conn.multi.take() else {
                return Item::Reply(err("ERR EXEC without MULTI"));
            };
            if std::mem::take(&mut conn.multi_error) {
                return Item::Reply(err("EXECABORT Transaction discarded because of previous errors."));
            }
            if queued.is_empty() {
                return Item::Reply(Frame::Array(Vec::new()));
            }
            // One log entry, applied atomically: reads inside see the writes before them.
            match write_with_retry(shared, queued, GroupKind::Exec, conn.id).await {
                // An Exec group has exactly one reply: the array of the block's replies.
                Ok(replies) => Item::Reply(
                    replies
                        .into_iter()
                        .next()
                        .map(to_frame)
                        .unwrap_or_else(|| err("ERR internal: missing EXEC reply")),
                ),
                Err(e) => Item::Reply(store_error(&e)),
            }
        }
        "wait" => Item::Reply(wait(shared, args).await),
        // Client tools (redis-benchmark, redis-cli) read settings with CONFIG GET; nothing is
        // configurable through the protocol: the TOML file is the one source.
        "config" => match args.get(1).map(|a| lower(a)).as_deref() {
            Some("get") if args.len() >= 3 => Item::Reply(Frame::Map(Vec::new())),
            Some("get") => Item::Reply(arity("config|get")),
            Some("set") | Some("rewrite") | Some("resetstat") => {
                Item::Reply(err("ERR standin is configured through its TOML file, not CONFIG"))
            }
            _ => Item::Reply(err("ERR unknown subcommand. Try CONFIG HELP.")),
        },
        _ => match cmd::parse(args) {
            Ok(Parsed::Data(op)) if op.is_write() => Item::Write(op),
            Ok(Parsed::Data(op)) => Item::Read(op),
            Ok(Parsed::NotData) => Item::Reply(unknown(args)),
            Err(e) => Item::Reply(to_frame(e)),
        },
    }
}

fn auth(shared: &Shared, conn: &mut Conn, args: &[Bytes]) -> Frame {
    let pass = match args.len() {
        1 => &args[0],
        // AUTH username password: only the default user exists.
        2 if &args[0][..] == b"default" => &args[1],
        2 => return err("WRONGPASS invalid username-password pair or user is disabled."),
        _ => return arity("auth"),
    };
    match &shared.cfg.requirepass {
        None => err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
        Some(p) if constant_time_eq(p.as_bytes(), pass) => {
            conn.authed = true;
            Frame::Simple("OK".into())
        }
        Some(_) => err("WRONGPASS invalid username-password pair or user is disabled."),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hello(shared: &Shared, conn: &mut Conn, args: &[Bytes], codec: &mut RespCodec) -> Item {
    let mut i = 1;
    let mut proto = None;
    if let Some(v) = args.get(1) {
        match lower(v).parse::<u8>() {
            Ok(p @ (2 | 3)) => proto = Some(p),
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
                let reply = auth(shared, conn, &args[i + 1..i + 3]);
                if let Frame::Error(_) = reply {
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
    let s = |v: &str| Frame::Bulk(Bytes::from(v.to_string()));
    Item::Reply(Frame::Map(vec![
        (s("server"), s("standin")),
        (s("version"), s(crate::node::VERSION)),
        (s("proto"), Frame::Integer(i64::from(proto))),
        (s("id"), Frame::Integer(conn.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Frame::Array(Vec::new())),
    ]))
}

fn client(conn: &mut Conn, args: &[Bytes]) -> Frame {
    let Some(sub) = args.get(1).map(|a| lower(a)) else {
        return arity("client");
    };
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            if args[2].iter().any(|b| *b == b' ' || *b == b'\n') {
                return err("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            conn.name = (!args[2].is_empty()).then(|| args[2].clone());
            Frame::Simple("OK".into())
        }
        ("getname", 2) => conn.name.clone().map(Frame::Bulk).unwrap_or(Frame::Null),
        ("id", 2) => Frame::Integer(conn.id as i64),
        // Sent by recent client libraries on connect.
        ("setinfo", 4) => Frame::Simple("OK".into()),
        ("setname" | "getname" | "id" | "setinfo", _) => arity(&format!("client|{sub}")),
        _ => err(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// Enough of COMMAND for redis-cli and client libraries: COUNT, DOCS and INFO answer with
/// what we know (an empty docs map is valid and makes redis-cli fall back to plain input).
fn command(args: &[Bytes]) -> Frame {
    match args.get(1).map(|a| lower(a)).as_deref() {
        None => Frame::Array(Vec::new()),
        // The data commands plus the connection commands handled here.
        Some("count") => Frame::Integer(90),
        Some("docs") => Frame::Map(Vec::new()),
        Some("info") => Frame::Array(args[2..].iter().map(|_| Frame::NullArray).collect()),
        Some(other) => err(format!("ERR unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

async fn wait(shared: &Shared, args: &[Bytes]) -> Frame {
    if args.len() != 3 {
        return arity("wait");
    }
    let (Ok(n), Ok(timeout)) = (lower(&args[1]).parse::<i64>(), lower(&args[2]).parse::<i64>()) else {
        return err("ERR value is not an integer or out of range");
    };
    if timeout < 0 {
        return err("ERR timeout is negative");
    }
    // Every acknowledged write is already on a quorum; WAIT counts the other voters whose log
    // has everything this node has applied.
    let target = shared.node.cluster.info().last_applied;
    let deadline = Instant::now() + Duration::from_millis(if timeout == 0 { 10_000 } else { timeout as u64 });
    loop {
        let count = replicas_with(shared, target).await;
        if count >= n || Instant::now() >= deadline {
            return Frame::Integer(count);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Other voters known to hold the log up to `index` (from the leader's replication state).
async fn replicas_with(shared: &Shared, index: u64) -> i64 {
    let info = shared.node.cluster.info();
    if info.is_leader {
        return info.matched.values().filter(|m| **m >= index).count() as i64;
    }
    let status = crate::api::cluster_status(&shared.node).await;
    if status.stale {
        return 0;
    }
    // From a follower: the leader itself has it, and every in-sync voter.
    let me = shared.node.cluster.me();
    status
        .nodes
        .iter()
        .filter(|n| n.id != me && (n.lag == 0 && n.reachable))
        .count() as i64
}

async fn info(shared: &Shared) -> String {
    let node = &shared.node;
    let info = node.cluster.info();
    let status = crate::api::cluster_status(node).await;
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
        crate::node::VERSION
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
