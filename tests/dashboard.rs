//! The web dashboard in a real browser: Debian's headless Chromium loads the page a node
//! serves, the active node is killed, and the page shows the failover without a reload. The
//! live state is read from the page's title over Chromium's DevTools HTTP endpoint
//! (`/json/list`); the rendered page is checked with `--dump-dom` and kept as a screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use standin::lab::harness::{LocalCluster, Spec};

mod common;
use common::binary;

fn chromium() -> PathBuf {
    for c in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!("headless Chromium is needed for this test: apt-get install chromium (.ci/run does)");
}

/// The flags that keep headless Chromium off the network and quick to start.
fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// A browser left running while the test works; killed (with its helpers) on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium())
            .args(chromium_args(profile.path()))
            // Port 0: Chromium picks a free port and writes it to DevToolsActivePort.
            .arg("--remote-debugging-port=0")
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Some(p) = text.lines().next().filter(|l| !l.is_empty()) {
                    break p.to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start its DevTools endpoint"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Browser {
            child,
            _profile: profile,
            devtools: format!("127.0.0.1:{port}"),
        }
    }

    /// The titles of the open pages.
    async fn titles(&self) -> Vec<String> {
        let Ok(r) = standin::api::client::request(
            &self.devtools,
            hyper::Method::GET,
            "/json/list",
            None,
            Duration::from_secs(2),
        )
        .await
        else {
            return Vec::new();
        };
        let pages: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap_or_default();
        pages
            .iter()
            .filter(|p| p["type"] == "page")
            .filter_map(|p| p["title"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits (bounded) for a page title that satisfies `pred`.
    async fn wait_title(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen = self.titles().await;
            if let Some(t) = seen.iter().find(|t| pred(t)) {
                return t.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the dashboard never showed {what}; titles: {seen:?}");
    }
}

/// A one-shot headless run (`--dump-dom` or `--screenshot`), bounded in time.
fn run_once(extra: &[String], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args(chromium_args(profile.path()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish {extra:?} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("chromium output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_failover_live_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = LocalCluster::create(Spec::new(dir.path(), &binary()))
        .await
        .expect("create cluster");
    cluster.start_all().expect("start");
    let s = cluster.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let active = s.active.clone().expect("an active node");
    // The page is served by the witness, which survives the failover (the page would also
    // switch its stream to another node if its own went away).
    let url = format!("http://{}/", cluster.node("w").expect("w").admin);
    let browser = Browser::open(&url);
    let before = browser
        .wait_title("the active node", Duration::from_secs(30), |t| {
            t.contains(&format!("active {active}")) && t.contains("loaded at epoch")
        })
        .await;
    println!("before: {before}");

    let killed = Instant::now();
    cluster.kill(&active).await.expect("kill the active node");
    let after = browser
        .wait_title("the failover", Duration::from_secs(20), |t| {
            t.contains(&format!("epoch {}", s.epoch + 1))
                && !t.contains(&format!("active {active}"))
                && !t.contains("active none")
        })
        .await;
    println!(
        "after: {after} (on the page {} ms after kill -9)",
        killed.elapsed().as_millis()
    );
    // Same page, no reload: it still remembers the epoch it was loaded at.
    assert!(
        after.contains(&format!("loaded at epoch {}", s.epoch)),
        "the page was reloaded: {after}"
    );

    // The rendered page (a fresh load): the promotion with its cause in the event timeline, the
    // killed node unreachable.
    let dom = run_once(
        &["--dump-dom".to_string(), "--virtual-time-budget=3000".to_string()],
        &url,
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(r#"data-kind="promoted""#),
        "no promotion in the timeline"
    );
    assert!(dom.contains("node-lost"), "the failover's cause is not shown");
    assert!(
        dom.contains(r#"data-role="unreachable""#),
        "the killed node is not shown unreachable"
    );

    // The screenshot, kept as a test artifact.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-after-failover.png");
    let _ = std::fs::remove_file(&shot);
    run_once(
        &[
            format!("--screenshot={}", shot.display()),
            "--virtual-time-budget=3000".to_string(),
        ],
        &url,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", shot.display());
    println!("screenshot: {} ({size} bytes)", shot.display());
    drop(browser);
}
