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
use standin::api::Status;
use standin::cluster::state::{Event, EventKind};
use standin::demo::harness::{LocalCluster, Spec};
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
    assert_eq!(paged, all.iter().map(|e| e.seq).collect::<Vec<_>>());
    // Without `since`: the newest `limit`.
    let newest = events(&api_a, "?limit=3").await;
    let tail: Vec<u64> = all.iter().rev().take(3).rev().map(|e| e.seq).collect();
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), tail);
}

/// Finding 6: a client that sends a partial request head held an admin API connection
/// forever; now it is disconnected after `[api] header-read-timeout`. And 300 idle
/// connections (more than `max-connections`) do not stop the API from answering.
#[tokio::test]
async fn admin_api_sheds_slow_and_idle_clients() {
    let _serial = SERIAL.lock().await;
    let (c, _dir) = cluster("\n[api]\nheader-read-timeout = \"300ms\"\nmax-connections = 64\n").await;
    let addr: SocketAddr = c.node("a").expect("a").admin;
    assert_slow_head_cut_off(addr, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: a").await;
    let mut buf = [0u8; 512];

    // Watch streams may take half of the connections; the next one is told to retry.
    let mut watchers = Vec::new();
    for i in 0..32 {
        let mut w = TcpStream::connect(addr).await.expect("connect");
        w.write_all(b"GET /v1/watch HTTP/1.1\r\nHost: x\r\n\r\n")
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
