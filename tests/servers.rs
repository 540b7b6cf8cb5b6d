//! The middle tier: the store server and the admin API started in-process on port 0 against a
//! one-node cluster (real Raft and redb on a temporary directory, no other process, no
//! service), in the style of mini-redis's `tests/server.rs`. They start in well under a second,
//! so a server's behaviour can be tested without the multi-process harness, and they exercise
//! the same handles `node::run` wires up (`Cluster`, `Replicator`, `StoreContext`, `Node`).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use standin::cluster::transport::Transport;
use standin::cluster::Cluster;
use standin::config::Config;
use standin::node::Node;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One in-process node: its store and admin addresses. Dropping it stops every task it
/// started (the cancellation token) and removes its data directory.
struct OneNode {
    store: SocketAddr,
    admin: SocketAddr,
    cluster: Cluster,
    cancel: CancellationToken,
    _peer: TcpListener,
    _dir: tempfile::TempDir,
}

impl Drop for OneNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts a one-node cluster on a temporary directory, waits until it leads, and serves the
/// store and the admin API on port 0. `store_extra` is added to the `[store]` section.
async fn one_node(store_extra: &str) -> OneNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_l = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
    let admin_l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    // The member's cluster address is held but never served (no peers): only named.
    let peer_l = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
    let peer = peer_l.local_addr().expect("peer addr");
    let store = store_l.local_addr().expect("store addr");
    let admin = admin_l.local_addr().expect("admin addr");
    let text = format!(
        r#"
[tls]
insecure = true

[node]
id = "a"
data-dir = "{dir}"

[[member]]
id = "a"
kind = "data"
addresses = ["{peer}"]
admin = "{admin}"
store-address = "{store}"

# Named because a data node must have one; nothing here starts it (no supervisor).
[service]
command = "/bin/true"

[store]
listen = "{store}"
{store_extra}
"#,
        dir = dir.path().display(),
    );
    let config = Arc::new(Config::parse(&text).expect("config"));
    let t = &config.timing;
    let transport = Transport::new(
        "a".into(),
        Default::default(),
        t.heartbeat_interval,
        t.failure_timeout,
        None,
    );
    let cluster = Cluster::start(&config, transport).await.expect("cluster starts");
    cluster.bootstrap(&config).await.expect("bootstrap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.info().is_leader {
        assert!(Instant::now() < deadline, "a one-node cluster leads within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel = CancellationToken::new();
    let node = Arc::new(Node::new(config.clone(), cluster.clone(), None, None, None));
    let maxmemory = config.store.as_ref().map_or(0, |s| s.maxmemory);
    let replicator = standin::store::replicate::Replicator::start(
        cluster.clone(),
        node.metrics.clone(),
        maxmemory,
        cancel.clone(),
    );
    let ctx = standin::node::store_context(&node);
    let store_cfg = config.store.clone().expect("[store]");
    tokio::spawn(standin::store::server::serve(
        store_l,
        ctx,
        store_cfg,
        replicator,
        cancel.clone(),
    ));
    let admin_ctx = Arc::new(standin::node::admin_context(&node, None));
    tokio::spawn(standin::api::serve(admin_l, admin_ctx, cancel.clone()));
    OneNode {
        store,
        admin,
        cluster,
        cancel,
        _peer: peer_l,
        _dir: dir,
    }
}

/// Runs `f` with a blocking Redis connection to `addr` off the runtime.
async fn with_redis<T: Send + 'static>(
    addr: SocketAddr,
    f: impl FnOnce(&mut redis::Connection) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://{addr}/")).expect("url");
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect");
        f(&mut con)
    })
    .await
    .expect("redis client task")
}

/// Sends raw bytes and reads what the server answers until it closes or 2 s pass.
async fn raw_exchange(addr: SocketAddr, bytes: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("raw client task")
}

/// What a Redis client relies on: writes commit through Raft and read back, counters count,
/// a pipeline and a transaction answer in order, errors are Redis's own.
#[tokio::test]
async fn store_serves_redis_clients_in_process() {
    let n = one_node("").await;
    let applied_before = n.cluster.info().last_applied;
    with_redis(n.store, |con| {
        let ok: String = redis::cmd("SET").arg("k").arg("v1").query(con).expect("set");
        assert_eq!(ok, "OK");
        let v: String = redis::cmd("GET").arg("k").query(con).expect("get");
        assert_eq!(v, "v1");
        for _ in 0..5 {
            let _: i64 = redis::cmd("INCR").arg("n").query(con).expect("incr");
        }
        let n: i64 = redis::cmd("GET").arg("n").query(con).expect("get n");
        assert_eq!(n, 5);
        let (a, b, len): (String, i64, i64) = redis::pipe()
            .cmd("SET")
            .arg("p")
            .arg("x")
            .cmd("INCRBY")
            .arg("n")
            .arg(10)
            .cmd("RPUSH")
            .arg("l")
            .arg("1")
            .arg("2")
            .query(con)
            .expect("pipeline");
        assert_eq!((a.as_str(), b, len), ("OK", 15, 2));
        let (x, y): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg("t")
            .cmd("INCR")
            .arg("t")
            .query(con)
            .expect("transaction");
        assert_eq!((x, y), (1, 2));
        let wrong = redis::cmd("INCR")
            .arg("l")
            .query::<i64>(con)
            .expect_err("INCR on a list");
        assert!(wrong.to_string().contains("WRONGTYPE"), "{wrong}");
        let unknown = redis::cmd("NOSUCHCOMMAND")
            .query::<String>(con)
            .expect_err("unknown");
        assert!(unknown.to_string().contains("unknown command"), "{unknown}");
        let info: String = redis::cmd("INFO").arg("replication").query(con).expect("info");
        assert!(info.contains("raft_role:leader"), "{info}");
    })
    .await;
    // The writes went through the log: the one node applied them.
    assert!(n.cluster.info().last_applied > applied_before);
}

/// A malformed frame gets Redis's protocol error and the connection is closed; the server
/// goes on serving the next client.
#[tokio::test]
async fn store_answers_a_malformed_frame_with_an_error_and_stays_up() {
    let n = one_node("").await;
    let answer = raw_exchange(n.store, b"*99999999999\r\n").await;
    assert!(answer.starts_with("-ERR Protocol error"), "{answer:?}");
    let answer = raw_exchange(n.store, b"PING\r\n").await;
    assert!(answer.starts_with("+PONG"), "{answer:?}");
}

/// `requirepass`: nothing but AUTH before authenticating; a wrong password is refused with
/// Redis's error, the right one lets commands through.
#[tokio::test]
async fn store_requires_its_password_in_process() {
    let n = one_node("requirepass = \"a-password-of-16-plus\"").await;
    let answer = raw_exchange(n.store, b"GET k\r\n").await;
    assert!(answer.starts_with("-NOAUTH"), "{answer:?}");
    let answer = raw_exchange(n.store, b"AUTH wrong-password\r\nGET k\r\n").await;
    assert!(answer.starts_with("-WRONGPASS"), "{answer:?}");
    let answer = raw_exchange(n.store, b"AUTH a-password-of-16-plus\r\nSET k v\r\nGET k\r\n").await;
    assert_eq!(answer, "+OK\r\n+OK\r\n$1\r\nv\r\n");
}

/// The admin API in-process: the status names this node the leader, of a term of at least 1,
/// and the metrics are exported.
#[tokio::test]
async fn admin_api_serves_status_and_metrics_in_process() {
    let n = one_node("").await;
    with_redis(n.store, |con| {
        let _: String = redis::cmd("SET").arg("k").arg("v").query(con).expect("set");
    })
    .await;
    let access = standin::api::client::Access::new(None, None).expect("access");
    let status = common::status_with(&n.admin.to_string(), &access)
        .await
        .expect("status");
    assert_eq!(status.leader.as_deref(), Some("a"));
    assert!(status.term >= 1, "term {}", status.term);
    let metrics = common::scrape(&n.admin.to_string()).await;
    assert!(
        metrics.iter().any(|(name, _, _)| name.starts_with("standin_")),
        "standin metrics exported"
    );
}
