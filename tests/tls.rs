//! Mutual TLS between real `standin node` processes (issue 13): who may talk to a cluster
//! port, certificate rotation under load, the expiry alarm, and the insecure mode.
//!
//! Every attack sends a mutating frame (a drain of `b`, a store write) and then checks that
//! nothing changed: the status and the store are read back. Tests run one at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use standin::cluster::rpc::{Frame, Request, Response};
use standin::cluster::transport::MAX_PENDING_HANDSHAKES;
use standin::lab::harness::{LocalCluster, Spec};
use standin::tls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{binary, peer_conn, sample, scrape};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DAY: Duration = Duration::from_secs(86_400);

fn frame(id: u64, from: &str, body: Request) -> Vec<u8> {
    let body = postcard::to_allocvec(&Frame {
        id,
        from: from.to_string(),
        body,
    })
    .expect("encode");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// The mutating frames every attacker tries: drain `b` (an admin action forwarded to the
/// leader) and `SET stolen 1` (a store write).
fn mutations(from: &str) -> Vec<u8> {
    let drain = serde_json::json!({"action": "drain", "node": "b", "on": true}).to_string();
    let set: Vec<Bytes> = ["SET", "stolen", "1"]
        .iter()
        .map(|s| Bytes::from(s.as_bytes().to_vec()))
        .collect();
    let op = match standin::kv::parse(&set).expect("SET parses") {
        standin::kv::cmd::Parsed::Data(op) => op,
        _ => panic!("SET is an op"),
    };
    let mut out = frame(1, from, Request::Admin(drain));
    out.extend(frame(
        2,
        from,
        Request::StoreWrite {
            ops: vec![op],
            kind: standin::kv::GroupKind::Pipeline,
        },
    ));
    out
}

/// Sends the mutations and returns what came back before the connection closed (or 3 s
/// passed): decoded answers, if any.
async fn attack(conn: &mut (impl AsyncRead + AsyncWrite + Unpin), from: &str) -> Vec<Response> {
    let _ = conn.write_all(&mutations(from)).await;
    let _ = conn.flush().await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        match common::read_answer(conn, Duration::from_secs(3)).await {
            Some(f) => answers.push(f.body),
            None => break,
        }
    }
    answers
}

/// A TLS client with the cluster CA's roots (so the server is accepted) and `cert`/`key` as
/// its client certificate, or none.
async fn client(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::ServerVerifier::host_or_member(Arc::new(roots))));
    let cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(tls::peer_server_name(), tcp)
        .await
}

/// Writes a certificate for `id` from the CA in `ca_dir` into `out` (as `ID.pem`/`ID.key`),
/// valid from `start` for `valid_for`.
fn issue_into(
    ca_dir: &std::path::Path,
    out: &std::path::Path,
    id: &str,
    start: Option<time::OffsetDateTime>,
    valid_for: Duration,
) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(out).expect("dir");
    let (cert, key) = tls::issue_between(
        &std::fs::read_to_string(ca_dir.join("ca.pem")).expect("ca"),
        &std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca key"),
        id,
        &[],
        start,
        valid_for,
    )
    .expect("issue");
    std::fs::write(out.join(format!("{id}.pem")), cert).expect("write");
    std::fs::write(out.join(format!("{id}.key")), key).expect("write");
    std::fs::set_permissions(
        out.join(format!("{id}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
}

/// Whether an event of `kind` about alarm `key` shows up in `node`'s history within 20 s.
async fn alarm_event(cluster: &LocalCluster, node: &str, kind: &str, key: &str) -> bool {
    for _ in 0..100 {
        let seen = cluster.events(node).await.unwrap_or_default();
        if seen
            .iter()
            .any(|e| e.kind.to_string() == kind && e.detail.contains(key))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The last lines of every node's log, for a failure message.
fn log_tails(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for id in ["a", "b", "w"] {
        let log = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out.push_str(&format!("--- {id}.log (last 40)\n"));
        for l in &lines[lines.len().saturating_sub(40)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Nobody without a member's own certificate can act: no certificate, one from another CA,
/// an expired one, a valid one for a non-member, plain text, and a member's certificate
/// claiming another member. Each sends a drain of `b` and a store write to every node; the
/// drain never happens, the key is never written, and the refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_member_with_its_own_certificate_can_act() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, before) = LocalCluster::launch(Spec::new(dir.path(), &binary()))
        .await
        .expect("cluster");
    assert_eq!(before.transport, "mutual-tls");
    let certs = cluster.certs_dir().expect("certs");
    let ca = certs.join("ca.pem");
    let foreign = dir.path().join("foreign");
    tls::init_ca(&foreign, "another CA", DAY).expect("CA");
    tls::issue_files(&foreign, &foreign, "a", &[], DAY).expect("issue");
    let expired = dir.path().join("expired");
    issue_into(
        &certs,
        &expired,
        "a",
        Some(time::OffsetDateTime::now_utc() - time::Duration::days(3)),
        DAY,
    );
    let mallory = dir.path().join("mallory");
    issue_into(&certs, &mallory, "mallory", None, DAY);

    for target in ["a", "b", "w"] {
        let addr = cluster.node(target).expect("node").paths[0];
        let cases: [(&str, Option<(std::path::PathBuf, std::path::PathBuf)>); 4] = [
            ("no certificate", None),
            ("another CA", Some((foreign.join("a.pem"), foreign.join("a.key")))),
            ("expired", Some((expired.join("a.pem"), expired.join("a.key")))),
            (
                "non-member",
                Some((mallory.join("mallory.pem"), mallory.join("mallory.key"))),
            ),
        ];
        for (what, identity) in cases {
            let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            // TLS 1.3 reports a refused client certificate after the client's side of the
            // handshake: either the handshake or the first read fails.
            if let Ok(mut conn) = client(&ca, identity, addr).await {
                let answers = attack(&mut conn, "a").await;
                assert!(answers.is_empty(), "{target}, {what}: answered {answers:?}");
            }
        }
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        let answers = attack(&mut plain, "a").await;
        assert!(answers.is_empty(), "{target}, plain text: answered {answers:?}");

        // A member's key, claiming to be another member.
        let holder = if target == "b" { "w" } else { "b" };
        let claimed = if target == "a" { "w" } else { "a" };
        let mut conn = peer_conn(&cluster, target, holder).await;
        let answers = attack(&mut conn, claimed).await;
        assert_eq!(answers.len(), 2, "{target}: {answers:?}");
        for a in &answers {
            assert!(
                matches!(a, Response::Error { message, .. } if message.contains("cannot act as")),
                "{target}: {a:?}"
            );
        }
    }

    let after = cluster.wait_ready(Duration::from_secs(10)).await.expect("ready");
    assert!(
        after.nodes.iter().all(|n| !n.drain),
        "a node was drained: {after:?}"
    );
    assert_eq!(
        (after.epoch, after.active.clone()),
        (before.epoch, before.active.clone())
    );
    let store = cluster.node("a").and_then(|n| n.store).expect("store");
    let got = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &store.port().to_string(),
                "GET",
                "stolen",
            ])
            .output()
            .expect("redis-cli")
    })
    .await
    .expect("join");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "",
        "the store was written"
    );

    // Each node counted its refusals.
    for n in &cluster.nodes {
        let m = scrape(&n.admin.to_string()).await;
        let refused = |r: &str| sample(&m, "standin_peer_refused_total", &[("reason", r)]).unwrap_or(0.0);
        assert!(
            refused("handshake") >= 3.0,
            "{}: handshake {}",
            n.id,
            refused("handshake")
        );
        assert!(
            refused("wrong-id") >= 2.0,
            "{}: wrong-id {}",
            n.id,
            refused("wrong-id")
        );
        let ttl = sample(&m, "standin_tls_cert_expiry_seconds", &[("node", &n.id)]).expect("expiry metric");
        assert!(ttl > 29.0 * 86_400.0, "{}: {ttl}", n.id);
        assert_eq!(sample(&m, "standin_tls_insecure", &[]), Some(0.0));
    }
}

/// New certificates put in place on every node while clients write: no failover, no lost
/// write, and every node shows the new certificates (so new connections use them). A
/// certificate 10 days from expiry raises the `cert-expiring` alarm; replacing it clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failover() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, before) = LocalCluster::launch(Spec::new(dir.path(), &binary()))
        .await
        .expect("cluster");
    let certs = cluster.certs_dir().expect("certs");
    let active = before.active.clone().expect("active");
    let store = cluster.node(&active).and_then(|n| n.store).expect("store");

    // A writer: one SET per request, the last acknowledged index recorded.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::task::spawn_blocking(move || {
            let client = redis::Client::open(format!("redis://{store}/")).expect("client");
            let mut conn = client.get_connection().expect("connect");
            // Bounded: at most 200,000 writes.
            for i in 0..200_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut conn);
                if r.is_ok() {
                    acked.store(i + 1, Ordering::SeqCst);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotate every node: a and w for 20 days, b for 10 (inside the 14-day alarm window).
    // Returns the new certificate's expiry.
    let rotate = |id: &str, days: u64| {
        let new = dir.path().join(format!("new-{id}-{days}"));
        issue_into(&certs, &new, id, None, DAY * days as u32);
        let pem = std::fs::read(new.join(format!("{id}.pem"))).expect("read");
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).expect("pem");
        std::fs::rename(new.join(format!("{id}.pem")), certs.join(format!("{id}.pem"))).expect("mv cert");
        std::fs::rename(new.join(format!("{id}.key")), certs.join(format!("{id}.key"))).expect("mv key");
        tls::cert_info(der.as_ref()).expect("info").not_after
    };
    let mut want = std::collections::BTreeMap::new();
    for (id, days) in [("a", 20), ("b", 10), ("w", 20)] {
        want.insert(id.to_string(), rotate(id, days));
    }
    let shows = |s: &standin::status::Status, want: &std::collections::BTreeMap<String, i64>| {
        s.nodes
            .iter()
            .all(|n| n.cert_not_after_unix == want.get(&n.id).copied())
    };
    let rotated = cluster
        .wait_for(
            Duration::from_secs(20),
            "every node showing its new certificate",
            |s| shows(s, &want),
        )
        .await
        .unwrap_or_else(|e| panic!("new certificates in use: {e}\n{}", log_tails(dir.path())));
    let leader = rotated.leader.clone().expect("leader");
    assert!(
        alarm_event(&cluster, &leader, "alarm-raised", "cert-expiring:b").await,
        "no cert-expiring alarm for b's 10-day certificate"
    );

    want.insert("b".into(), rotate("b", 25));
    cluster
        .wait_for(Duration::from_secs(20), "b's 25-day certificate", |s| {
            shows(s, &want)
        })
        .await
        .expect("b rotated again");
    assert!(
        alarm_event(&cluster, &leader, "alarm-cleared", "cert-expiring:b").await,
        "the cert-expiring alarm was not cleared"
    );

    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let after = cluster.status().await.expect("status");
    assert_eq!(
        (after.epoch, after.active.clone()),
        (before.epoch, before.active.clone()),
        "a failover happened during the rotation"
    );
    let n = acked.load(Ordering::SeqCst);
    assert!(n > 100, "only {n} writes acknowledged");
    let values = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://{store}/")).expect("client");
        let mut conn = client.get_connection().expect("connect");
        [0, n / 2, n - 1].map(|i| {
            (
                i,
                redis::cmd("GET")
                    .arg(format!("k{i}"))
                    .query::<Option<u64>>(&mut conn)
                    .expect("GET"),
            )
        })
    })
    .await
    .expect("join");
    for (i, v) in values {
        assert_eq!(v, Some(i), "acknowledged write k{i} lost");
    }
    eprintln!(
        "{n} writes acknowledged during the rotation; epoch {} throughout",
        after.epoch
    );
}

/// `[tls] insecure = true` runs, and says so: in `status` (JSON and table) and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_cluster_says_so() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.tls = false;
    spec.witness = false;
    spec.data_nodes = vec!["a".into()];
    let (cluster, status) = LocalCluster::launch(spec).await.expect("cluster");
    assert_eq!(status.transport, "insecure");
    assert!(standin::cli::client::render_status(&status).contains("INSECURE"));
    let admin = cluster.node("a").expect("a").admin.to_string();
    let m = scrape(&admin).await;
    assert_eq!(sample(&m, "standin_tls_insecure", &[]), Some(1.0));
    let log = std::fs::read_to_string(dir.path().join("a.log")).expect("log");
    assert!(log.contains("insecure = true"), "no warning at start");
}

/// Connections that open TCP and never start a handshake cannot lock a member out: 64 of them
/// used to take every inbound slot for the whole handshake deadline (5 s, renewable at will),
/// so a member reconnecting (after a restart, a rotation or a lost path) was closed at once.
/// Handshakes now have their own budget and the oldest gives way; only authenticated
/// connections take an inbound slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_a_member_out() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, _) = LocalCluster::launch(Spec::new(dir.path(), &binary()))
        .await
        .expect("cluster");
    let addr = cluster.node("a").expect("node").paths[0];
    let admin = cluster.node("a").expect("node").admin.to_string();
    let handshakes_refused = |m: &[common::Sample]| {
        sample(m, "standin_peer_refused_total", &[("reason", "handshake")]).unwrap_or(0.0)
    };
    let before = handshakes_refused(&scrape(&admin).await);
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // The member connects once the flood's handshakes are all under way (the 32 oldest then
    // evicted): one that arrives while the flood's are still being registered is the oldest
    // of a burst and may give way, as documented, and its node would simply reconnect.
    let flood_started = tokio::time::Instant::now();
    loop {
        let refused = handshakes_refused(&scrape(&admin).await) - before;
        if refused >= (64 - MAX_PENDING_HANDSHAKES) as f64 {
            break;
        }
        assert!(
            flood_started.elapsed() < Duration::from_secs(10),
            "the flood's handshakes were not registered: {refused} evicted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let certs = cluster.certs_dir().expect("certs");
    let mut conn = client(
        &certs.join("ca.pem"),
        Some((&certs.join("b.pem"), &certs.join("b.key"))),
        addr,
    )
    .await
    .expect("a member's handshake completes");
    conn.write_all(&frame(1, "b", Request::Ping { nonce: 7 }))
        .await
        .expect("send");
    let read = async {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut buf).await.ok()?;
        postcard::from_bytes::<Frame<Response>>(&buf).ok()
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
        .map(|f| f.body);
    assert!(
        matches!(answer, Some(Response::Pong { nonce: 7 })),
        "the member was not served: {answer:?}"
    );
    drop(idle);
}

/// A connection lives no longer than the certificate it was opened with: a member's
/// connection made with a certificate that then expires is closed (a new one with it would
/// be refused). It used to be served for as long as it stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_certificate_expires() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, _) = LocalCluster::launch(Spec::new(dir.path(), &binary()))
        .await
        .expect("cluster");
    let certs = cluster.certs_dir().expect("certs");
    // `b`'s certificate from the cluster CA, expiring in about 3 s.
    let short = dir.path().join("short");
    issue_into(
        &certs,
        &short,
        "b",
        Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(60)),
        Duration::from_secs(63),
    );
    let addr = cluster.node("a").expect("node").paths[0];
    let mut conn = client(
        &certs.join("ca.pem"),
        Some((&short.join("b.pem"), &short.join("b.key"))),
        addr,
    )
    .await
    .expect("handshake with a certificate still valid");
    let ping = |nonce: u64| frame(nonce, "b", Request::Ping { nonce });
    let mut answered = 0;
    let mut closed = false;
    // Pings every 250 ms for at most 15 s: answered while the certificate is valid, then the
    // connection must close.
    for nonce in 0..60u64 {
        if conn.write_all(&ping(nonce)).await.is_err() {
            closed = true;
            break;
        }
        // A close (or anything but a pong) ends the loop; silence is a failure.
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            common::read_answer(&mut conn, Duration::from_secs(3)),
        )
        .await;
        match answer {
            Ok(Some(f)) if matches!(f.body, Response::Pong { .. }) => answered += 1,
            Ok(_) => {
                closed = true;
                break;
            }
            Err(_) => panic!("no answer and no close within 2 s"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        answered > 0,
        "the connection was served while the certificate was valid"
    );
    assert!(
        closed,
        "the connection was still served after 15 s of pings, its certificate expired about 3 s in ({answered} pongs)"
    );
}
