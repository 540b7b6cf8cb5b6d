//! Failover drills on a real cluster on loopback (data nodes `a`, `b`, witness `w`, mutual
//! TLS, the demo service, the store) with a `standin proxy` in front as the floating
//! addresses, through the real CLI (`standin drill run/list/show/confirm`). The test plays the
//! supervisor (systemd's `Restart=on-failure`) for a daemon the node-shutdown scenario kills.
//!
//! Tests run one at a time (they share two cores and measure interruptions).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use standin::api::client::request;
use standin::drill::record::Record;
use standin::lab::harness::{LocalCluster, Spec};

mod common;
use common::{binary, ProxyProc};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LISTENERS: &str = r#"
[[proxy.listener]]
name = "http"
listen = "127.0.0.1:0"
protocol = "http"
queue-timeout = "3s"

[[proxy.listener]]
name = "store"
listen = "127.0.0.1:0"
target = "store"
"#;

struct Fixture {
    cluster: LocalCluster,
    _proxy: ProxyProc,
    http: SocketAddr,
    store: SocketAddr,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A cluster with drills enabled; `broken_b`: b's service fails its health check.
    async fn start(broken_b: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = Spec::new(dir.path(), &binary());
        spec.extra_toml = "[drill]\nenabled = true\nmax-fault = \"30s\"\n".into();
        let mut cluster = LocalCluster::create(spec).await.expect("cluster");
        if broken_b {
            let path = &cluster.node("b").expect("b").config;
            let text = std::fs::read_to_string(path).expect("b.toml");
            let text = text.replacen(
                "stop-grace = \"2s\"\n",
                "stop-grace = \"2s\"\nenv = { DEMO_BROKEN = \"1\" }\n",
                1,
            );
            std::fs::write(path, text).expect("b.toml");
        }
        cluster.start_all().expect("start");
        let deadline = Instant::now() + Duration::from_secs(60);
        let active = loop {
            if let Some(s) = cluster.status().await {
                if let Some(a) = s.active.clone() {
                    if broken_b || standin::lab::harness::is_ready(&s) {
                        break a;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no settled cluster");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let proxy = ProxyProc::start(dir.path(), &cluster, LISTENERS);
        proxy.wait_following(&active, Duration::from_secs(15)).await;
        let http = proxy.addr("http").await;
        let store = proxy.addr("store").await;
        Fixture {
            cluster,
            _proxy: proxy,
            http,
            store,
            dir,
        }
    }

    fn api(&self) -> String {
        self.cluster.nodes[0].admin.to_string()
    }

    fn cli(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(binary());
        c.args(args)
            .env("STANDIN_API", self.api())
            .env_remove("STANDIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// `standin drill run ARGS` against the fixture's floating addresses.
    fn drill_run(&self, args: &[&str]) -> tokio::process::Command {
        let service = format!("http://{}/", self.http);
        let store = self.store.to_string();
        let mut all = vec!["drill", "run", "--service", &service, "--store", &store];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// Runs `standin drill run` with `args`, restarting a daemon that dies meanwhile as a
    /// supervisor would; returns (exit code, stdout, stderr).
    async fn drill(&mut self, args: &[&str], within: Duration) -> (i32, String, String) {
        let child = self.drill_run(args).spawn().expect("standin drill run");
        let out = child.wait_with_output();
        tokio::pin!(out);
        let deadline = Instant::now() + within;
        loop {
            tokio::select! {
                o = &mut out => {
                    let o = o.expect("drill output");
                    return (
                        o.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&o.stdout).into_owned(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    );
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    for (id, how) in self.cluster.restart_failed() {
                        eprintln!("supervisor: {id} ended ({how}); started again");
                    }
                    assert!(Instant::now() < deadline, "drill did not finish within {within:?}");
                }
            }
        }
    }

    async fn fault_view(&self, node: &str) -> serde_json::Value {
        let admin = self.cluster.node(node).expect("node").admin.to_string();
        let r = request(
            &admin,
            Method::GET,
            "/v1/drill/fault",
            None,
            Duration::from_secs(2),
        )
        .await
        .expect("fault view");
        serde_json::from_str(&r.body).expect("json")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scenario_passes_and_the_record_holds_the_evidence() {
    let _serial = SERIAL.lock().await;
    let mut f = Fixture::start(false).await;
    let md = f.dir.path().join("record.md");
    let html = f.dir.path().join("record.html");
    let (code, out, err) = f
        .drill(
            &[
                "--json",
                "--markdown",
                md.to_str().unwrap(),
                "--html",
                html.to_str().unwrap(),
            ],
            Duration::from_secs(400),
        )
        .await;
    let record: Record =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("record JSON ({e}):\n{out}\n{err}"));
    let names: Vec<&str> = record.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, standin::config::drill::SCENARIOS.to_vec());
    for s in &record.scenarios {
        eprintln!(
            "{}: {} failover {:?} interruption {} ms failed {}/{} — {}",
            s.name,
            s.passed,
            s.failover_ms,
            s.service.interruption_ms,
            s.service.failed,
            s.service.requests,
            s.reason.as_deref().unwrap_or(&s.observed)
        );
    }
    assert_eq!(code, 0, "drill failed:\n{err}\n{:?}", record.unresolved);
    assert!(record.passed && record.unresolved.is_empty());
    let whole = record
        .store_final
        .as_ref()
        .expect("the run's writes read back at its end");
    assert!(whole.acked > 100 && whole.lost == 0, "{whole:?}");
    // Every field an acceptance record needs.
    assert_eq!(record.nodes.len(), 3);
    assert!(record.nodes.iter().all(|n| !n.version.is_empty()));
    assert!(record.timing.failure_timeout_ms > 0);
    for s in &record.scenarios {
        assert!(!s.expected.is_empty() && !s.observed.is_empty(), "{s:?}");
        assert!(s.max_interruption_ms > 0);
        assert!(s.service.requests > 0, "{}: the probe ran", s.name);
        assert!(s.service.interruption_ms <= s.max_interruption_ms);
        let store = s.store.as_ref().expect("store stats");
        assert_eq!(store.lost, 0, "{}: no acknowledged write lost", s.name);
        assert!(store.acked > 0, "{}: the store took writes", s.name);
        assert!(s.two_actives.is_empty(), "{}: {:?}", s.name, s.two_actives);
        assert!(s.ended_unix_ms > s.started_unix_ms);
    }
    let by_name = |n: &str| record.scenarios.iter().find(|s| s.name == n).expect(n);
    for n in ["planned-switchover", "node-isolation", "node-shutdown"] {
        let s = by_name(n);
        assert!(s.failover_ms.is_some(), "{n}: failover time");
        assert_ne!(s.active_before, s.active_after, "{n}: the role moved");
        assert!(s.epoch_after > s.epoch_before, "{n}");
        assert!(!s.events.is_empty(), "{n}: events as evidence");
    }
    let link = by_name("link-failure");
    assert_eq!(
        (link.active_before.clone(), link.epoch_before),
        (link.active_after.clone(), link.epoch_after)
    );
    // The cut was real: the cut path went down (and came back) while the other carried on.
    assert!(
        link.events.iter().any(|e| e.contains("path-changed")),
        "no path went down during the link failure: {:?}",
        link.events
    );
    assert!(
        by_name("node-isolation").logs.iter().any(|l| l.contains("drill")),
        "log lines as evidence"
    );
    let consistency = by_name("store-consistency");
    assert_eq!(consistency.digests.len(), 2);
    assert_eq!(consistency.digests[0].digest, consistency.digests[1].digest);
    // The reports.
    let md = std::fs::read_to_string(&md).expect("markdown");
    assert!(md.contains(&format!("# Failover drill {} — PASSED", record.id)));
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.starts_with("<!doctype html>") && page.contains(&record.id) && !page.contains("<script"));
    // Stored in the cluster: listed, shown, confirmed.
    let o = f.cli(&["drill", "list", "--json"]).output().await.expect("list");
    let list: Vec<standin::api::drill::RecordSummary> = serde_json::from_slice(&o.stdout).expect("list json");
    assert!(list.iter().any(|r| r.id == record.id && r.passed && !r.scheduled));
    let o = f
        .cli(&[
            "drill",
            "confirm",
            &record.id,
            "--by",
            "ops",
            "--note",
            "accepted",
            "--unresolved",
            "none",
        ])
        .output()
        .await
        .expect("confirm");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = f
        .cli(&["drill", "show", &record.id, "--json"])
        .output()
        .await
        .expect("show");
    let shown: Record = serde_json::from_slice(&o.stdout).expect("show json");
    assert_eq!(shown.scenarios.len(), record.scenarios.len());
    assert_eq!(shown.confirmations.len(), 1);
    assert_eq!(shown.confirmations[0].by, "ops");
    // Every node is back and whole; no fault is left in force.
    let st = f.cluster.status().await.expect("status");
    assert!(standin::lab::harness::is_ready(&st), "{st:?}");
    for n in ["a", "b", "w"] {
        let v = f.fault_view(n).await;
        assert!(v["cut_remaining_ms"].is_null(), "{n}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_standby_fails_the_switchover_and_the_active_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let mut f = Fixture::start(true).await;
    let before = f.cluster.status().await.expect("status");
    let active = before.active.clone().expect("active");
    assert_eq!(active, "a", "b is broken, a is active");
    let (code, out, err) = f
        .drill(
            &["--scenarios", "planned-switchover,node-shutdown", "--json"],
            Duration::from_secs(200),
        )
        .await;
    assert_eq!(code, 1, "the drill fails:\n{out}\n{err}");
    let record: Record = serde_json::from_str(&out).expect("record");
    assert!(!record.passed);
    let sw = &record.scenarios[0];
    assert!(!sw.passed);
    let reason = sw.reason.clone().unwrap_or_default();
    assert!(reason.contains("switchover refused"), "{reason}");
    assert!(sw.observed.contains("kept serving"), "{}", sw.observed);
    assert_eq!(sw.active_after.as_deref(), Some("a"));
    assert_eq!(sw.store.as_ref().map(|s| s.lost), Some(0));
    // The fault scenario is not started on a degraded cluster: a shutdown now would be an
    // outage, not a drill.
    let down = &record.scenarios[1];
    assert!(!down.passed);
    assert!(
        down.reason.as_deref().unwrap_or_default().contains("not healthy"),
        "{down:?}"
    );
    assert!(record
        .unresolved
        .iter()
        .any(|u| u.starts_with("planned-switchover")));
    let after = f.cluster.status().await.expect("status");
    assert_eq!(after.active.as_deref(), Some("a"));
    assert_eq!(after.epoch, before.epoch);
    // The alarm says the last drill failed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = f.cluster.status().await;
        let events = f.cluster.events("a").await.unwrap_or_default();
        if events.iter().any(|e| {
            e.kind == standin::cluster::state::EventKind::AlarmRaised && e.detail.contains("drill-failed")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no drill-failed alarm: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_drill_client_leaves_no_fault_behind() {
    let _serial = SERIAL.lock().await;
    let f = Fixture::start(false).await;
    let before = f.cluster.status().await.expect("status");
    let active = before.active.clone().expect("active");
    let mut child = f
        .drill_run(&["--scenarios", "node-isolation"])
        .spawn()
        .expect("drill");
    // Kill the client once the cut is in force.
    let deadline = Instant::now() + Duration::from_secs(90);
    let cut = loop {
        let v = f.fault_view(&active).await;
        if v["cut_all"] == true {
            break v;
        }
        assert!(Instant::now() < deadline, "the isolation never began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().await.expect("kill the client");
    let left = cut["cut_remaining_ms"].as_u64().expect("remaining");
    assert!(left > 1000, "{cut}");
    // The node heals on its own timer and the cluster is whole again, the isolated node a
    // standby.
    let deadline = Instant::now() + Duration::from_millis(left) + Duration::from_secs(60);
    loop {
        let v = f.fault_view(&active).await;
        let st = f.cluster.status().await;
        if v["cut_remaining_ms"].is_null() && st.as_ref().is_some_and(standin::lab::harness::is_ready) {
            let st = st.expect("status");
            assert_ne!(
                st.active.as_deref(),
                Some(active.as_str()),
                "the isolated node stood down"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not healed: {v} {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The abandoned run blocks the next one until forced.
    let o = f
        .drill_run(&["--scenarios", "recovery"])
        .output()
        .await
        .expect("drill");
    assert_eq!(
        o.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("under way"));
    let o = f
        .drill_run(&["--force", "--scenarios", "recovery"])
        .output()
        .await
        .expect("drill");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fault_api_is_off_unless_enabled_and_checks_its_input() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, _) = LocalCluster::launch(Spec::new(dir.path(), &binary()))
        .await
        .expect("cluster");
    let admin = cluster.nodes[0].admin.to_string();
    let post = |body: &'static str| {
        let admin = admin.clone();
        async move {
            request(
                &admin,
                Method::POST,
                "/v1/drill/fault",
                Some(body.into()),
                Duration::from_secs(2),
            )
            .await
            .expect("post")
        }
    };
    let r = post(r#"{"fault":"kill-service"}"#).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("[drill] enabled"));
    let r = post(r#"{"fault":"crash"}"#).await;
    assert_eq!(r.status, 403);
    // The node still runs.
    assert!(cluster.status().await.is_some());
    drop(cluster);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = Spec::new(dir.path(), &binary());
    spec.extra_toml = "[drill]\nenabled = true\nmax-fault = \"5s\"\n".into();
    let (cluster, _) = LocalCluster::launch(spec).await.expect("cluster");
    let admin = cluster.nodes[0].admin.to_string();
    for (body, want) in [
        (r#"{"fault":"cut-paths","for_ms":60000}"#, 400),
        (r#"{"fault":"cut-paths","for_ms":10}"#, 400),
        (r#"{"fault":"cut-paths","paths":[7],"for_ms":1000}"#, 400),
        (r#"{"fault":"cut-paths","paths":[],"for_ms":1000}"#, 400),
        (r#"{"fault":"crash","delay_ms":999999}"#, 400),
        (r#"{"fault":"explode"}"#, 400),
        (r#"not json"#, 400),
        (r#"{"fault":"heal"}"#, 200),
    ] {
        let r = request(
            &admin,
            Method::POST,
            "/v1/drill/fault",
            Some(body.into()),
            Duration::from_secs(2),
        )
        .await
        .expect("post");
        assert_eq!(r.status, want, "{body}: {}", r.body);
    }
    // A cut of one path shows, and ends by itself.
    let r = request(
        &admin,
        Method::POST,
        "/v1/drill/fault",
        Some(r#"{"fault":"cut-paths","paths":[1],"for_ms":1000}"#.into()),
        Duration::from_secs(2),
    )
    .await
    .expect("post");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["cut_paths"], serde_json::json!([1]));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = request(
        &admin,
        Method::GET,
        "/v1/drill/fault",
        None,
        Duration::from_secs(2),
    )
    .await
    .expect("get");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["cut_remaining_ms"].is_null(), "{v}");
    // Records are checked before they reach the log.
    for body in [
        r#"{"id":"bad id","at":1,"passed":true,"scenarios":[],"json":"{}"}"#,
        r#"{"id":"x","at":1,"passed":true,"scenarios":[],"json":"not json"}"#,
    ] {
        let r = request(
            &admin,
            Method::POST,
            "/v1/drills",
            Some(body.into()),
            Duration::from_secs(5),
        )
        .await
        .expect("post");
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let r = request(
        &admin,
        Method::GET,
        "/v1/drills/nope",
        None,
        Duration::from_secs(2),
    )
    .await
    .expect("get");
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_runs_scheduled_drills_and_records_them() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The proxy's addresses are chosen first: the nodes' `[drill]` names them.
    let http = common::free_addr();
    let store = common::free_addr();
    let mut spec = Spec::new(dir.path(), &binary());
    spec.extra_toml = format!(
        "[drill]\nenabled = true\nservice = \"http://{http}/\"\nstore = \"{store}\"\nschedule = \"15s\"\n\
         scenarios = [\"planned-switchover\", \"link-failure\"]\n"
    );
    let (cluster, status) = LocalCluster::launch(spec).await.expect("cluster");
    let listeners = format!(
        "[[proxy.listener]]\nname = \"http\"\nlisten = \"{http}\"\nprotocol = \"http\"\n\
         [[proxy.listener]]\nname = \"store\"\nlisten = \"{store}\"\ntarget = \"store\"\n"
    );
    let proxy = ProxyProc::start(dir.path(), &cluster, &listeners);
    proxy
        .wait_following(status.active.as_deref().expect("active"), Duration::from_secs(15))
        .await;
    let admin = cluster.nodes[0].admin.to_string();
    let deadline = Instant::now() + Duration::from_secs(150);
    let run = loop {
        let r = request(&admin, Method::GET, "/v1/drills", None, Duration::from_secs(2)).await;
        let runs: Vec<standin::api::drill::RecordSummary> = r
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or_default();
        if let Some(run) = runs.into_iter().find(|r| r.scheduled) {
            break run;
        }
        assert!(Instant::now() < deadline, "no scheduled drill was recorded");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        run.scenarios,
        vec![
            ("planned-switchover".to_string(), true),
            ("link-failure".to_string(), true)
        ],
        "{run:?}"
    );
    assert!(run.passed);
    // The stored record reads back whole.
    let r = request(
        &admin,
        Method::GET,
        &format!("/v1/drills/{}", run.id),
        None,
        Duration::from_secs(2),
    )
    .await
    .expect("record");
    let stored: standin::cluster::drills::StoredRecord = serde_json::from_str(&r.body).expect("stored");
    let record: Record = serde_json::from_str(&stored.json).expect("record json");
    assert!(record.scheduled && record.passed);
    assert_eq!(record.service_probe, format!("http://{http}/"));
    drop(proxy);
}
