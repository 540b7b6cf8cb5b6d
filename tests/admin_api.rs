//! The admin HTTP API of a real cluster on loopback (`standin node` processes `a`, `b`, `w`):
//! switchover requests (a malformed body is refused, `from`/`epoch` make a duplicate
//! harmless), JSON errors, event paging, and the listener's budgets against slow and idle
//! clients (issue 12, findings 6, 14 and 15).
//!
//! Tests run one at a time (they share two cores).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::Method;
use standin::api::client::{request, Reply};
use standin::cluster::state::{Event, EventKind};
use standin::lab::harness::{LocalCluster, Spec};
use standin::status::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod common;
use common::{assert_slow_head_cut_off, binary};

/// A ready three-node cluster with `extra` appended to every config; removed on drop.
async fn cluster(extra: &str) -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.store = false;
    spec.extra_toml = extra.to_string();
    let (cluster, _) = LocalCluster::launch(spec).await.expect("cluster ready");
    (cluster, dir)
}

fn admin(c: &LocalCluster, id: &str) -> String {
    c.node(id).expect("node").admin.to_string()
}

async fn call(api: &str, method: Method, path: &str, body: Option<&str>) -> Reply {
    request(
        api,
        method,
        path,
        body.map(str::to_string),
        Duration::from_secs(10),
    )
    .await
    .expect("the admin API answers")
}

/// The body of an error answer: `{"error": "...", "retry": bool, ...}`.
fn json_error(r: &Reply) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("HTTP {}: not JSON ({e}): {:?}", r.status, r.body));
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(v["retry"].is_boolean(), "{v}");
    v
}

async fn events(api: &str, query: &str) -> Vec<Event> {
    let r = call(api, Method::GET, &format!("/v1/events{query}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("events JSON")
}

/// Finding 14: a malformed switchover body was taken as "switch to the best standby", and two
/// bursts of identical requests made two switchovers. Now a malformed body is a 400; with
/// `from` and `epoch`, two concurrent identical requests make exactly one switchover, and the
/// same request repeated afterwards is a 409 naming the current active node and epoch.
/// Also finding 15: every error is JSON, and `/v1/events` pages with `since=SEQ&limit=N`.
#[tokio::test]
async fn switchover_is_conditional_errors_are_json_and_events_page() {
    let _serial = SERIAL.lock().await;
    let (c, _dir) = cluster("").await;
    let before: Status = c.status().await.expect("status");
    let old = before.active.clone().expect("an active node");
    let (api_a, api_b) = (admin(&c, "a"), admin(&c, "b"));
    let last_seq = events(&api_a, "").await.last().map_or(0, |e| e.seq);

    // Malformed bodies are refused, whichever node gets them; nothing is requested.
    for body in ["{not json", "[]", "{\"to\": 5}", "{\"form\": \"a\"}", "to=b"] {
        let r = call(&api_b, Method::POST, "/v1/switchover", Some(body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(json_error(&r)["retry"], false);
    }
    // Errors of axum's own making are JSON too.
    let r = call(&api_a, Method::GET, "/v1/nowhere", None).await;
    assert_eq!(r.status, 404);
    json_error(&r);
    let r = call(&api_a, Method::DELETE, "/v1/status", None).await;
    assert_eq!(r.status, 405);
    json_error(&r);
    let r = call(&api_a, Method::POST, "/v1/maintenance", Some("{\"node\": 1}")).await;
    assert_eq!(r.status / 100, 4, "{}", r.body);
    json_error(&r);
    let r = call(&api_a, Method::GET, "/v1/events?limit=0", None).await;
    assert_eq!(r.status, 400);
    json_error(&r);
    let requested = |evs: &[Event]| {
        evs.iter()
            .filter(|e| e.kind == EventKind::SwitchoverRequested)
            .count()
    };
    assert_eq!(requested(&events(&api_a, &format!("?since={last_seq}")).await), 0);

    // Two identical conditional requests at once, through two nodes (one forwards).
    let body = format!("{{\"from\": \"{old}\", \"epoch\": {}}}", before.epoch);
    let (r1, r2) = tokio::join!(
        call(&api_a, Method::POST, "/v1/switchover", Some(&body)),
        call(&api_b, Method::POST, "/v1/switchover", Some(&body)),
    );
    let mut statuses = [r1.status, r2.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", r1.body, r2.body);
    let refused = if r1.status == 409 { &r1 } else { &r2 };
    json_error(refused);
    let after = c
        .wait_for(Duration::from_secs(30), "the switchover", |s| {
            s.epoch > before.epoch
                && s.active.as_ref().is_some_and(|a| a != &old)
                && s.switchover.is_none()
                && s.nodes
                    .iter()
                    .any(|n| Some(&n.id) == s.active.as_ref() && n.role == "active")
        })
        .await
        .expect("switched over");
    // The same request again (a retry after a lost answer) changes nothing.
    let r = call(&api_b, Method::POST, "/v1/switchover", Some(&body)).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let v = json_error(&r);
    assert_eq!(v["active"].as_str(), after.active.as_deref(), "{v}");
    assert_eq!(v["epoch"].as_u64(), Some(after.epoch), "{v}");
    let r = call(
        &api_a,
        Method::POST,
        "/v1/switchover",
        Some(&format!("{{\"epoch\": {}}}", before.epoch)),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let since = events(&api_a, &format!("?since={last_seq}&limit=2000")).await;
    assert_eq!(requested(&since), 1, "{since:#?}");
    let now: Status = c.status().await.expect("status");
    assert_eq!(
        (now.epoch, now.active.clone()),
        (after.epoch, after.active.clone())
    );

    // The CLI's --from/--epoch: refused (exit 1) with stale values, carried out with current ones.
    let cli = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(["switchover", "--api", &api_b])
            .args(args)
            .output()
            .expect("run the CLI")
    };
    let stale_epoch = before.epoch.to_string();
    let out = cli(&["--from", &old, "--epoch", &stale_epoch, "--wait", "0s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("precondition failed"), "{err}");
    let current = after.active.clone().expect("active");
    let epoch = after.epoch.to_string();
    let out = cli(&["--from", &current, "--epoch", &epoch, "--wait", "30s", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(done["epoch"].as_u64(), Some(after.epoch + 1), "{done}");
    assert_eq!(done["active"].as_str(), Some(old.as_str()), "{done}");

    // Paging: pages of two after a sequence number, oldest first, with no gap or repeat.
    let all = events(&api_a, "?since=-1&limit=2000").await;
    assert!(all.len() >= 4, "{all:#?}");
    assert_eq!(
        all[0].seq, 0,
        "the history starts at 0 and nothing was trimmed yet"
    );
    let mut paged = Vec::new();
    let mut cursor = -1i64;
    for _ in 0..all.len() {
        let page = events(&api_a, &format!("?since={cursor}&limit=2")).await;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        cursor = i64::try_from(last.seq).expect("seq");
        paged.extend(page.iter().map(|e| e.seq));
    }
    // Events may be added while paging (a path or health change): compare up to the history
    // read first.
    let last_seen = all.last().map_or(0, |e| e.seq);
    paged.retain(|s| *s <= last_seen);
    assert_eq!(paged, all.iter().map(|e| e.seq).collect::<Vec<_>>());
    // Without `since`: the newest `limit`.
    let newest: Vec<u64> = events(&api_a, "?limit=3").await.iter().map(|e| e.seq).collect();
    assert_eq!(newest.len(), 3, "{newest:?}");
    assert!(
        newest.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive, oldest first: {newest:?}"
    );
    assert!(
        newest[2] >= last_seen,
        "the newest: {newest:?} (history read first ended at {last_seen})"
    );
}

/// Finding 6: a client that sends a partial request head held an admin API connection
/// forever; now it is disconnected after `[api] header-read-timeout`. And 300 idle
/// connections (more than `max-connections`) do not stop the API from answering.
#[tokio::test]
async fn admin_api_sheds_slow_and_idle_clients() {
    let _serial = SERIAL.lock().await;
    let (c, _dir) = cluster("\n[api]\nheader-read-timeout = \"300ms\"\nmax-connections = 64\n").await;
    let addr: SocketAddr = c.node("a").expect("a").admin;
    assert_slow_head_cut_off(addr, b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a").await;
    let mut buf = [0u8; 512];

    // Watch streams may take half of the connections; the next one is told to retry.
    let mut watchers = Vec::new();
    for i in 0..32 {
        let mut w = TcpStream::connect(addr).await.expect("connect");
        w.write_all(b"GET /v1/watch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let n = tokio::time::timeout(Duration::from_secs(10), w.read(&mut buf))
            .await
            .expect("a watch stream starts")
            .expect("read");
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "watcher {i}"
        );
        watchers.push(w);
    }
    let r = call(&addr.to_string(), Method::GET, "/v1/watch", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(json_error(&r)["retry"], true);
    let r = call(&addr.to_string(), Method::GET, "/v1/status", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    drop(watchers);

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let r = call(&addr.to_string(), Method::GET, "/v1/lease", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    drop(idle);
}

/// Sends a raw HTTP/1.1 request (`Connection: close`) and returns the whole answer, lower-cased.
async fn raw_http(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// Issue 13: the admin API allowed any origin (`Access-Control-Allow-Origin: *`) and read a
/// switchover body whatever its content type, so a `text/plain` POST from any web page the
/// operator opened moved the role (an empty body did too). Now a foreign origin's preflight
/// gets no allow headers, its POST is a 403, a non-JSON body a 415, an empty switchover body a
/// 400, and nothing moves; a member's own origin still gets CORS (the dashboard's fallback).
#[tokio::test]
async fn a_foreign_web_page_cannot_move_the_role() {
    let _serial = SERIAL.lock().await;
    let (c, _dir) = cluster("").await;
    let before: Status = c.status().await.expect("status");
    let addr = c.node("a").expect("a").admin;
    let other = c.node("b").expect("b").admin;
    let api = addr.to_string();
    let last_seq = events(&api, "").await.last().map_or(0, |e| e.seq);

    let preflight = |origin: String| {
        format!(
            "OPTIONS /v1/switchover HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type"
        )
    };
    let evil = raw_http(addr, &preflight("http://evil.example".into()), "").await;
    assert!(!evil.contains("access-control-allow"), "{evil}");
    let member = raw_http(addr, &preflight(format!("http://{other}")), "").await;
    assert!(
        member.contains(&format!("access-control-allow-origin: http://{other}")),
        "{member}"
    );
    assert!(!member.contains("access-control-allow-origin: *"), "{member}");

    // The CSRF "simple request": text/plain, a JSON-looking body, a foreign origin.
    let post = |ct: &str, origin: Option<&str>| {
        let origin = origin.map(|o| format!("\r\nOrigin: {o}")).unwrap_or_default();
        format!("POST /v1/switchover HTTP/1.1\r\nContent-Type: {ct}{origin}")
    };
    let r = raw_http(addr, &post("text/plain", Some("http://evil.example")), "{}").await;
    assert!(r.starts_with("http/1.1 403"), "{r}");
    assert!(!r.contains("access-control-allow"), "{r}");
    let r = raw_http(addr, &post("application/json", Some("http://evil.example")), "{}").await;
    assert!(r.starts_with("http/1.1 403"), "{r}");
    let r = raw_http(addr, &post("text/plain", None), "{}").await;
    assert!(r.starts_with("http/1.1 415"), "{r}");
    let r = raw_http(addr, &post("application/x-www-form-urlencoded", None), "to=b").await;
    assert!(r.starts_with("http/1.1 415"), "{r}");
    // An empty body is not "the best standby" (only an explicit `{}` is).
    let r = raw_http(addr, &post("application/json", None), "").await;
    assert!(r.starts_with("http/1.1 400") && r.contains("{}"), "{r}");
    let r = raw_http(addr, "POST /v1/switchover HTTP/1.1", "").await;
    assert!(r.starts_with("http/1.1 400"), "{r}");

    let evs = events(&api, &format!("?since={last_seq}&limit=2000")).await;
    assert!(
        !evs.iter().any(|e| e.kind == EventKind::SwitchoverRequested),
        "{evs:#?}"
    );
    let now: Status = c.status().await.expect("status");
    assert_eq!((now.epoch, now.active), (before.epoch, before.active));
}

/// Writes a node config with a non-loopback admin address and no token.
fn open_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let [p1, p2, p3, admin] = [(); 4].map(|_| common::free_port());
    let text = format!(
        "[tls]\ninsecure = true\n[node]\nid = \"a\"\ndata-dir = \"{}\"\n\
         [[member]]\nid = \"a\"\nkind = \"data\"\naddresses = [\"127.0.0.1:{p1}\"]\nadmin = \"0.0.0.0:{admin}\"\n\
         [[member]]\nid = \"b\"\nkind = \"data\"\naddresses = [\"127.0.0.1:{p2}\"]\nadmin = \"127.0.0.1:{}\"\n\
         [[member]]\nid = \"w\"\nkind = \"witness\"\naddresses = [\"127.0.0.1:{p3}\"]\nadmin = \"127.0.0.1:{}\"\n\
         [service]\ncommand = \"sleep\"\nargs = [\"1000\"]\n{extra}",
        dir.join("data").display(),
        admin + 1,
        admin + 2,
    );
    let path = dir.join("a.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Issue 13: an admin API on a non-loopback address with no token was open to anyone who can
/// reach it. Now `check-config` and `standin node` refuse it with exit 64 naming `api.token`
/// and saying how to set one, before binding anything; `insecure-open = true` allows it.
#[tokio::test]
async fn an_open_admin_api_on_a_non_loopback_address_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = open_config(dir.path(), "");
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("`api.token`") && err.contains("api.token-file"),
        "{err}"
    );

    // The daemon itself: exits 64 at once (bounded wait; killed if it kept running).
    let mut child = std::process::Command::new(binary())
        .args(["node", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start node");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.and_then(|s| s.code()), Some(64), "{err}");
    assert!(err.contains("`api.token`"), "{err}");

    let allowed = open_config(dir.path(), "[api]\ninsecure-open = true\n");
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .arg(&allowed)
        .output()
        .expect("run check-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A CA in `dir/name` and a certificate for 127.0.0.1 signed by it, in `dir/name-cert`.
fn ca_and_cert(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, standin::tls::IssuedFiles) {
    let ca_dir = dir.join(name);
    let ca = standin::tls::init_ca(&ca_dir, name, Duration::from_secs(3600)).expect("CA");
    let out = dir.join(format!("{name}-cert"));
    std::fs::create_dir_all(&out).expect("mkdir");
    let cert = standin::tls::issue_files(
        &ca_dir,
        &out,
        "a",
        &["127.0.0.1".to_string()],
        Duration::from_secs(3600),
    )
    .expect("certificate");
    (ca.cert, cert)
}

/// Issue 13: the admin API over HTTPS (`[api] tls = true` with its own certificate): the CLI
/// (`standin status --ca`) and a plain HTTPS client work, a client trusting another CA and a
/// plain-HTTP client do not get the status (the latter is told to use https), a client that
/// never finishes its handshake is cut off after the header-read timeout, and new certificate
/// files are picked up without a restart.
#[tokio::test]
async fn the_admin_api_speaks_https_with_the_cli() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("api-certs");
    let (ca1, cert1) = ca_and_cert(&certs, "ca1");
    let (ca2, cert2) = ca_and_cert(&certs, "ca2");
    let (served_cert, served_key) = (certs.join("api.pem"), certs.join("api.key"));
    std::fs::copy(&cert1.cert, &served_cert).expect("copy");
    std::fs::copy(&cert1.key, &served_key).expect("copy");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.store = false;
    // The demo service asks its daemon's API over plain HTTP; this one needs no lease.
    spec.service = standin::lab::harness::ServiceKind::BenchBackend;
    spec.extra_toml = format!(
        "\n[api]\ntls = true\ntls-cert = \"{}\"\ntls-key = \"{}\"\nheader-read-timeout = \"500ms\"\n",
        served_cert.display(),
        served_key.display()
    );
    let mut c = LocalCluster::create(spec).await.expect("create");
    c.start_all().expect("start");
    let api = admin(&c, "a");
    let addr = c.node("a").expect("a").admin;
    let access = |ca: &std::path::Path| standin::api::client::Access::new(None, Some(ca)).expect("CA");
    let https_status =
        |ca: std::path::PathBuf, api: String| async move { common::status_with(&api, &access(&ca)).await };
    standin::lab::harness::wait_status(
        || https_status(ca1.clone(), api.clone()),
        Duration::from_secs(30),
        "the cluster ready over HTTPS",
        standin::lab::harness::is_ready,
    )
    .await
    .expect("ready");

    // The CLI, with --ca and with STANDIN_CA, bare host:port and https://.
    let out = std::process::Command::new(binary())
        .args(["status", "--json", "--api", &api, "--ca"])
        .arg(&ca1)
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Status = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(s.active.is_some());
    let out = std::process::Command::new(binary())
        .args(["status", "--api", &format!("https://{api}")])
        .env("STANDIN_CA", &ca1)
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without a CA: plain HTTP to the HTTPS port is refused with a hint; https:// without a
    // CA is a usage error; another CA fails the handshake.
    let out = std::process::Command::new(binary())
        .args(["status", "--api", &api])
        .env_remove("STANDIN_CA")
        .output()
        .expect("run the CLI");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HTTPS"), "{err}");
    let r = call(&api, Method::GET, "/v1/status", None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("https://"), "{}", r.body);
    let out = std::process::Command::new(binary())
        .args(["status", "--api", &format!("https://{api}")])
        .env_remove("STANDIN_CA")
        .output()
        .expect("run the CLI");
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = standin::api::client::request_with(
        &api,
        Method::GET,
        "/v1/status",
        None,
        Duration::from_secs(5),
        &access(&ca2),
    )
    .await;
    assert!(
        matches!(&wrong, Err(standin::api::client::ClientError::Unreachable { reason, .. }) if reason.contains("TLS")),
        "{wrong:?}"
    );
    // A handshake that never completes holds no slot past the header-read timeout.
    assert_slow_head_cut_off(addr, &[0x16, 0x03, 0x01, 0x02]).await;

    // Rotation: the files are replaced (atomically) by a certificate from ca2; within a few
    // seconds new connections get it, without a restart.
    let tmp = certs.join("new.key");
    std::fs::copy(&cert2.key, &tmp).expect("copy");
    std::fs::rename(&tmp, &served_key).expect("rename");
    let tmp = certs.join("new.pem");
    std::fs::copy(&cert2.cert, &tmp).expect("copy");
    std::fs::rename(&tmp, &served_cert).expect("rename");
    standin::lab::harness::wait_status(
        || https_status(ca2.clone(), api.clone()),
        Duration::from_secs(15),
        "the new certificate in use",
        |_| true,
    )
    .await
    .expect("reloaded");
    assert!(https_status(ca1.clone(), api.clone()).await.is_none());
    drop(c);
}

/// `/v1/role/active` and `/v1/role/standby` answer 200 only on the node in that role (503
/// elsewhere, the witness included), follow a failover, and need no token (a load balancer's
/// health check sends none) while mutations still do.
#[tokio::test]
async fn role_checks_answer_200_only_on_the_node_in_that_role() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster("[api]\ntoken = \"role-check-token-0123456789\"\n").await;
    let s: Status = c.status().await.expect("status");
    let active = s.active.clone().expect("an active node");
    let standby = if active == "a" { "b" } else { "a" };
    let roles = |api: String| async move {
        let a = call(&api, Method::GET, "/v1/role/active", None).await;
        let s = call(&api, Method::GET, "/v1/role/standby", None).await;
        let body: serde_json::Value = serde_json::from_str(&a.body).expect("JSON");
        (a.status, s.status, body)
    };
    let (a, s_, body) = roles(admin(&c, &active)).await;
    assert_eq!((a, s_), (200, 503), "active node: {body}");
    assert_eq!(body["role"], "active");
    assert_eq!(body["node"], active.as_str());
    let (a, s_, body) = roles(admin(&c, standby)).await;
    assert_eq!((a, s_), (503, 200), "standby node: {body}");
    let (a, s_, body) = roles(admin(&c, "w")).await;
    assert_eq!((a, s_), (503, 503), "witness: {body}");
    // The token is still needed for a mutation.
    let r = call(&admin(&c, standby), Method::POST, "/v1/failback", Some("{}")).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // After the active node is killed, the standby answers 200 on /v1/role/active.
    c.kill(&active).await.expect("kill");
    let api = admin(&c, standby);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (a, s_, body) = roles(api.clone()).await;
        if (a, s_) == (200, 503) {
            assert_eq!(body["role"], "active");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{standby} did not become active on /v1/role/active: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGHUP (what `systemctl reload` sends) never stops a node, even one without TLS: it reads
/// the configuration again; an unchanged file is reported so, a file that does not validate is
/// rejected naming the key and changes nothing (a `config-rejected` event names the key), a
/// valid changed one applies its live sections and records `config-changed` with the file's
/// digest. The role, the epoch and the active node stay; no failover.
#[tokio::test]
async fn sighup_rereads_the_config_and_never_stops_the_node() {
    let _serial = SERIAL.lock().await;
    let (c, dir) = cluster("").await;
    let before: Status = c.status().await.expect("status");
    let active = before.active.clone().expect("an active node");
    let config = c.node(&active).expect("node").config.clone();
    let original = std::fs::read_to_string(&config).expect("config");
    let log = dir.path().join(format!("{active}.log"));
    let wait_log = |needle: &'static str| {
        let log = log.clone();
        async move {
            for _ in 0..100 {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().rev().find(|l| l.contains(needle)) {
                    return line.to_string();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no log line with {needle:?} in {}", log.display());
        }
    };

    c.signal_daemon(&active, nix::sys::signal::Signal::SIGHUP)
        .expect("hup");
    wait_log("configuration reread: unchanged").await;

    std::fs::write(&config, format!("{original}\n[events]\nretention = 0\n")).expect("write");
    c.signal_daemon(&active, nix::sys::signal::Signal::SIGHUP)
        .expect("hup");
    let line = wait_log("configuration reload rejected").await;
    assert!(line.contains("events.retention"), "{line}");

    // The refused file is in the history, naming the key.
    let api = c.node(&active).expect("node").admin.to_string();
    let rejected = wait_event(&api, EventKind::ConfigRejected, &active).await;
    assert!(rejected.detail.contains("events.retention"), "{rejected:?}");

    // `[events]` and `[hooks]` apply live; `[timing]` needs a restart (leases).
    let changed = format!("{original}\n[events]\nretention = 1999\n[hooks]\non-demote = \"true\"\n");
    std::fs::write(&config, &changed).expect("write");
    c.signal_daemon(&active, nix::sys::signal::Signal::SIGHUP)
        .expect("hup");
    let line = wait_log("applied live").await;
    assert!(line.contains("events") && line.contains("hooks"), "{line}");
    let digest = standin::config::Config::load(&config).expect("valid").digest();
    let event = wait_event(&api, EventKind::ConfigChanged, &active).await;
    assert!(event.detail.contains(&digest), "{event:?} lacks {digest}");
    // The applied configuration is the running one now: the same file again is unchanged.
    c.signal_daemon(&active, nix::sys::signal::Signal::SIGHUP)
        .expect("hup");
    wait_log_after(&log, "configuration reread: unchanged", "applied live").await;
    std::fs::write(&config, &original).expect("restore");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Status = c.status().await.expect("status");
    assert_eq!(
        after.active.as_deref(),
        Some(active.as_str()),
        "the active node stays"
    );
    assert_eq!(after.epoch, before.epoch, "no failover");
    assert!(
        after.nodes.iter().all(|n| n.reachable),
        "every node still up: {:?}",
        after.nodes
    );
    drop(c);

    // Without TLS (`[tls] insecure = true`) SIGHUP used to kill the node (exit 129).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.store = false;
    spec.tls = false;
    let (mut c, s) = LocalCluster::launch(spec).await.expect("cluster ready");
    let active = s.active.clone().expect("an active node");
    c.signal_daemon(&active, nix::sys::signal::Signal::SIGHUP)
        .expect("hup");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        c.wait_exit(&active, Duration::from_millis(100)).await.is_none(),
        "SIGHUP stopped the node"
    );
    let after: Status = c.status().await.expect("status");
    assert_eq!(after.active.as_deref(), Some(active.as_str()));
    assert_eq!(after.epoch, s.epoch, "no failover");
}

/// `standin reload` asks every node (or `--node`) to read its configuration file again over
/// `POST /v1/reload` (the token is needed): unchanged files say so; a file that does not
/// validate makes the command exit 64 naming the key, and changes nothing on that node; a new
/// token and hook apply live (`applied` in `--json`), the old token gets 401 at once.
#[tokio::test]
async fn standin_reload_reports_each_node_and_exits_64_on_a_bad_file() {
    let _serial = SERIAL.lock().await;
    let token = "reload-test-token-0123456789";
    let (c, _dir) = cluster(&format!("[api]\ntoken = \"{token}\"\n")).await;
    let before: Status = c.status().await.expect("status");
    let reload = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(["reload", "--api", &admin(&c, "w")])
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without the token: the API refuses the reload itself (401), and the CLI exits 77.
    let r = call(&admin(&c, "a"), Method::POST, "/v1/reload", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(reload(&[]).0, Some(77));
    let (code, stdout, stderr) = reload(&["--token", token, "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(reports.len(), 3, "{stdout}");
    assert!(reports.iter().all(|r| r["outcome"] == "unchanged"), "{stdout}");

    let config = c.node("b").expect("b").config.clone();
    let original = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{original}\n[events]\nretention = 0\n")).expect("write");
    let (code, stdout, stderr) = reload(&["--token", token, "--node", "b"]);
    std::fs::write(&config, &original).expect("restore");
    assert_eq!(code, Some(64), "{stdout}{stderr}");
    assert!(
        stdout.contains("rejected") && stdout.contains("events.retention"),
        "{stdout}"
    );
    assert!(!stdout.contains(" a "), "only b was asked: {stdout}");

    // A new token and a new hook on b apply live: the old token is refused at once.
    let new_token = "reload-test-token-rotated-98765";
    let rotated = format!(
        "{}\n[hooks]\non-demote = \"true\"\n",
        original.replace(token, new_token)
    );
    std::fs::write(&config, &rotated).expect("write");
    let (code, stdout, stderr) = reload(&["--token", token, "--node", "b", "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(reports[0]["outcome"], "applied", "{stdout}");
    let applied: Vec<&str> = reports[0]["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(applied, ["api", "hooks"], "{stdout}");
    let reload_as = |t: &'static str| {
        let api = admin(&c, "b");
        async move {
            standin::api::client::request_with_token(
                &api,
                Method::POST,
                "/v1/reload",
                None,
                Duration::from_secs(10),
                Some(t),
            )
            .await
            .expect("answers")
        }
    };
    let old = reload_as(token).await;
    assert_eq!(old.status, 401, "the old token still works: {}", old.body);
    let new = reload_as(new_token).await;
    assert_eq!(new.status, 200, "{}", new.body);
    let report: serde_json::Value = serde_json::from_str(&new.body).expect("JSON");
    assert_eq!(
        report["outcome"], "unchanged",
        "the applied config is the running one: {report}"
    );
    std::fs::write(&config, &original).expect("restore");

    let after: Status = c.status().await.expect("status");
    assert_eq!(after.epoch, before.epoch, "no failover");
    assert_eq!(after.active, before.active);
}

/// The newest event of `kind` about `node`, waited for (reloads record them best effort).
async fn wait_event(api: &str, kind: EventKind, node: &str) -> Event {
    for _ in 0..100 {
        if let Some(e) = events(api, "")
            .await
            .into_iter()
            .rev()
            .find(|e| e.kind == kind && e.node.as_deref() == Some(node))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {kind} event about {node}");
}

/// Waits until the last line of `log` holding `needle` comes after the last one holding
/// `after`.
async fn wait_log_after(log: &std::path::Path, needle: &str, after: &str) {
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = |n: &str| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains(n))
                .map(|(i, _)| i)
                .last()
        };
        if let (Some(a), Some(b)) = (last(needle), last(after)) {
            if a > b {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {needle:?} after {after:?} in {}", log.display());
}
