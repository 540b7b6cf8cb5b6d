//! The store over TLS and Redis's protected mode, on real nodes: `redis-cli --tls` (Debian's
//! redis-tools is built with TLS) and a rustls client against `[store] tls`, plain text to the
//! TLS port changing nothing, a client that never finishes its handshake holding a
//! `max-clients` slot only until the handshake deadline, AUTH with a user name, and the
//! config refusals (exit 64 naming the key) of protected mode and of `store.tls` without a
//! certificate.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use standin::lab::harness::{LocalCluster, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{binary, free_port, write_private};

const PASSWORD: &str = "pw-for-the-tls-store";

/// A cluster CA and a certificate for the stores (SANs 127.0.0.1 and localhost) in `dir`.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let ca = standin::tls::init_ca(&dir.join("ca"), "store test CA", Duration::from_secs(3600)).expect("CA");
    let read = |p: &Path| std::fs::read_to_string(p).expect("read CA file");
    let (cert, key) = standin::tls::issue(
        &read(&ca.cert),
        &read(&ca.key),
        "store",
        &["127.0.0.1".into(), "localhost".into()],
        Duration::from_secs(3600),
    )
    .expect("issue");
    let certs = Certs {
        ca: ca.cert.clone(),
        cert: dir.join("store.pem"),
        key: dir.join("store.key"),
    };
    std::fs::write(&certs.cert, cert).expect("write cert");
    write_private(&certs.key, &key);
    certs
}

/// `redis-cli --tls` with the CA, the password in the environment (not on the command line).
fn redis_cli_tls(addr: SocketAddr, ca: &Path, args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .env("REDISCLI_AUTH", PASSWORD)
        .output()
        .expect("redis-cli (Debian package redis-tools) must be installed")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

/// Sends `request` over TLS (checking the server's certificate against `ca` for 127.0.0.1)
/// and reads until the server closes or `want` bytes arrived.
async fn tls_exchange(addr: SocketAddr, ca: &Path, request: &[u8], want: usize) -> String {
    let cfg = standin::tls::https_client_config(ca).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = standin::tls::server_name_for(&addr.ip().to_string());
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.write_all(request).await.expect("write");
    tls.flush().await.expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 10 s; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A TLS store on every node answers `redis-cli --tls` and a rustls client; plain text to it
/// is refused before anything runs; `AUTH default <password>` works and another user gets
/// Redis's WRONGPASS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_speaks_tls_to_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path());
    let mut spec = Spec::new(dir.path(), &binary());
    spec.store_toml = format!(
        "tls = true\ntls-cert = \"{}\"\ntls-key = \"{}\"\nrequirepass = \"{PASSWORD}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    let (c, _) = LocalCluster::launch(spec).await.expect("cluster");
    let a = c.node("a").and_then(|n| n.store).expect("store a");
    let b = c.node("b").and_then(|n| n.store).expect("store b");
    let ca = certs.ca.clone();
    tokio::task::spawn_blocking(move || {
        // Written through b, read on a: the TLS store is the replicated store.
        let set = redis_cli_tls(b, &ca, &["SET", "greeting", "hello over tls"]);
        assert_eq!(stdout(&set), "OK", "{}", String::from_utf8_lossy(&set.stderr));
        assert_eq!(
            stdout(&redis_cli_tls(a, &ca, &["GET", "greeting"])),
            "hello over tls"
        );
        // redis-cli without --tls does not get an answer from a TLS port.
        let plain = Command::new("redis-cli")
            .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
            .args(["SET", "greeting", "plain"])
            .env("REDISCLI_AUTH", PASSWORD)
            .output()
            .expect("redis-cli");
        assert_ne!(stdout(&plain), "OK");
        // Plain RESP written straight to the socket: closed, nothing applied.
        let mut raw = std::net::TcpStream::connect(a).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let _ = raw.write_all(format!("AUTH {PASSWORD}\r\nSET plain 1\r\n").as_bytes());
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        assert!(
            !String::from_utf8_lossy(&answer).contains("+OK"),
            "plain text was served: {answer:?}"
        );
        assert_eq!(stdout(&redis_cli_tls(a, &ca, &["EXISTS", "plain"])), "0");
        assert_eq!(
            stdout(&redis_cli_tls(b, &ca, &["GET", "greeting"])),
            "hello over tls"
        );
    })
    .await
    .expect("join");
    // Redis 6's two-argument AUTH: the default user works, any other gets WRONGPASS.
    let req = format!(
        "GET greeting\r\nAUTH alice {PASSWORD}\r\nAUTH default {PASSWORD}\r\nGET greeting\r\nQUIT\r\n"
    );
    let want = "-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n$14\r\nhello over tls\r\n+OK\r\n";
    assert_eq!(tls_exchange(a, &certs.ca, req.as_bytes(), want.len()).await, want);
}

/// A client that opens a TCP connection to the TLS store and never sends its handshake holds
/// one of the `max-clients` slots (here the only one) until the handshake deadline, then is
/// closed and the slot serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_holds_a_client_slot_only_until_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path());
    let mut spec = Spec::new(dir.path(), &binary());
    spec.store_toml = format!(
        "tls = true\ntls-cert = \"{}\"\ntls-key = \"{}\"\nrequirepass = \"{PASSWORD}\"\nmax-clients = 1\n",
        certs.cert.display(),
        certs.key.display()
    );
    let (c, _) = LocalCluster::launch(spec).await.expect("cluster");
    let a = c.node("a").and_then(|n| n.store).expect("store a");
    let ping = format!("AUTH {PASSWORD}\r\nPING\r\n");
    let refused = "-ERR max number of clients reached\r\n";
    // Which of two clients that connect at once gets the slot is up to the scheduler: the
    // silent one connects first and nearly always does; if not, try again.
    let mut silent = None;
    for _ in 0..5 {
        let s = tokio::net::TcpStream::connect(a).await.expect("connect");
        let answer = tls_exchange(a, &certs.ca, ping.as_bytes(), 12).await;
        if answer == refused {
            silent = Some(s);
            break;
        }
        assert_eq!(answer, "+OK\r\n+PONG\r\n");
    }
    let mut silent = silent.expect("a client in its handshake holds the only slot");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // The server closes it at its handshake deadline (10 s); a generous bound only so that a
    // regression fails instead of hanging.
    let n = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
        .await
        .expect("the stalled handshake was closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent before a handshake");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The slot is free again (released just after the socket closes: poll, bounded).
    let mut last = String::new();
    for _ in 0..100 {
        last = tls_exchange(a, &certs.ca, ping.as_bytes(), 12).await;
        if last != refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, "+OK\r\n+PONG\r\n");
}

fn one_node_config(dir: &Path, store: &str) -> PathBuf {
    let text = format!(
        "[tls]\ninsecure = true\n\n[node]\nid = \"a\"\ndata-dir = \"{}\"\n\n[[member]]\nid = \"a\"\nkind = \"data\"\naddresses = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\n\n[service]\ncommand = \"sleep\"\nargs = [\"30\"]\n\n[store]\n{store}\n",
        dir.join("data").display(),
        free_port(),
        free_port()
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Protected mode: a store on a non-loopback address without a password is refused at start
/// (exit 64, naming `store.requirepass` and the opt-out); `protected-mode = false` allows it.
/// `store.tls` with `[tls] insecure` and no files of its own is refused naming `store.tls`.
#[test]
fn protected_mode_and_store_tls_without_a_certificate_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            format!("listen = \"0.0.0.0:{}\"", free_port()),
            "`store.requirepass`",
            "store.protected-mode = false",
        ),
        (
            format!("listen = \"127.0.0.1:{}\"\ntls = true", free_port()),
            "`store.tls`",
            "store.tls-cert",
        ),
    ];
    for (store, key, hint) in &cases {
        let path = one_node_config(dir.path(), store);
        for cmd in [vec!["node", "--config"], vec!["check-config"]] {
            let out = Command::new(binary())
                .args(&cmd)
                .arg(&path)
                .output()
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd:?} {store}: {err}");
            assert!(err.contains(key) && err.contains(hint), "{cmd:?} {store}: {err}");
        }
        assert!(
            !dir.path().join("data").exists(),
            "refused before starting anything"
        );
    }
    let path = one_node_config(
        dir.path(),
        &format!("listen = \"0.0.0.0:{}\"\nprotected-mode = false", free_port()),
    );
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills a node's whole process group (daemon and service) when the test ends, pass or fail.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The certificate the store at `addr` presents to a client that trusts `ca` and offers ALPN
/// `alpn`, or `None` if no TLS session could be made.
async fn presented_cert(addr: SocketAddr, ca: &Path, alpn: &[u8]) -> Option<Vec<u8>> {
    let mut cfg = standin::tls::https_client_config(ca).ok()?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = standin::tls::server_name_for(&addr.ip().to_string());
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let (_, session) = tls.get_ref();
    Some(session.peer_certificates()?.first()?.as_ref().to_vec())
}

fn first_cert_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .as_ref()
        .to_vec()
}

/// `[store] tls = true` without files of its own serves the node certificate from `[tls]`;
/// when the files are replaced (a renewal), new clients get the new certificate without a
/// restart. Also AUTH without a password, as Redis answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_serves_the_node_certificate_and_picks_up_a_renewed_one() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = standin::tls::init_ca(&dir.path().join("ca"), "node CA", Duration::from_secs(3600)).expect("CA");
    let read = |p: &Path| std::fs::read_to_string(p).expect("read");
    let issue = || {
        standin::tls::issue(
            &read(&ca.cert),
            &read(&ca.key),
            "a",
            &["127.0.0.1".into()],
            Duration::from_secs(3600),
        )
        .expect("issue")
    };
    let (cert, key) = issue();
    let (cert_path, key_path) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    std::fs::write(&cert_path, &cert).expect("write");
    write_private(&key_path, &key);
    let store_port = free_port();
    let text = format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[node]\nid = \"a\"\ndata-dir = \"{}\"\n\n[[member]]\nid = \"a\"\nkind = \"data\"\naddresses = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\n\n[service]\ncommand = \"sleep\"\nargs = [\"30\"]\n\n[store]\nlisten = \"127.0.0.1:{store_port}\"\ntls = true\n",
        ca.cert.display(),
        cert_path.display(),
        key_path.display(),
        dir.path().join("data").display(),
        free_port(),
        free_port()
    );
    let config = dir.path().join("a.toml");
    std::fs::write(&config, text).expect("write config");
    let log = std::fs::File::create(dir.path().join("a.log")).expect("log");
    let _node = Group(
        Command::new(binary())
            .args(["node", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start node"),
    );
    let store: SocketAddr = format!("127.0.0.1:{store_port}").parse().expect("addr");
    let log_text = || std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
    // Wait (bounded) for the store to answer over TLS with the node certificate.
    let mut seen = None;
    for _ in 0..300 {
        seen = presented_cert(store, &ca.cert, b"http/1.1").await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, Some(first_cert_der(&cert)), "{}", log_text());
    // A client offering another protocol (ALPN) is served too: the store negotiates none.
    assert_eq!(
        presented_cert(store, &ca.cert, b"redis").await,
        Some(first_cert_der(&cert))
    );
    let ca_path = ca.cert.clone();
    let ping = tokio::task::spawn_blocking(move || stdout(&redis_cli_tls(store, &ca_path, &["PING"])))
        .await
        .expect("join");
    assert_eq!(ping, "PONG");
    // Without a password, as in Redis: the default user named with any password is fine, the
    // one-argument AUTH is an error, another user is WRONGPASS.
    let req = b"AUTH default anything\r\nAUTH anything\r\nAUTH alice anything\r\nPING\r\n";
    let want = "+OK\r\n-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n+PONG\r\n";
    assert_eq!(tls_exchange(store, &ca.cert, req, want.len()).await, want);
    // Renew: new files moved into place, as `standin certs issue` and rotation tools do.
    let (cert2, key2) = issue();
    write_private(&dir.path().join("a.key.new"), &key2);
    std::fs::write(dir.path().join("a.pem.new"), &cert2).expect("write");
    std::fs::rename(dir.path().join("a.key.new"), &key_path).expect("rename");
    std::fs::rename(dir.path().join("a.pem.new"), &cert_path).expect("rename");
    let renewed = first_cert_der(&cert2);
    let mut got = None;
    for _ in 0..300 {
        got = presented_cert(store, &ca.cert, b"redis").await;
        if got.as_ref() == Some(&renewed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, Some(renewed), "{}", log_text());
}
