//! `standin demo add-node|remove-node` against a real `standin demo` process: grow the demo
//! from 3 to 5 voters (a data node and a witness) and back, then add one more node and stop the
//! demo: every process of the added nodes is gone, as are the demo's own.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

mod common;
use common::binary;

/// `DIR/demo.json`, if it is there and whole.
fn demo_json(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("demo.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every pid (daemons and services) demo.json lists.
fn pids_in(v: &serde_json::Value) -> Vec<u32> {
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| [n["pid"].as_u64(), n["service_pid"].as_u64()])
        .flatten()
        .map(|p| p as u32)
        .collect()
}

/// The demo process, in its own process group. Dropped (the test failed, or it is done), it is
/// stopped with SIGTERM (it stops its nodes), and if it does not exit, everything demo.json
/// names is killed.
struct Demo {
    child: Child,
    dir: PathBuf,
}

impl Demo {
    fn start(dir: &Path) -> Demo {
        let child = Command::new(binary())
            .args(["demo", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("demo.out")).expect("demo.out"))
            .stderr(std::fs::File::create(dir.join("demo.err")).expect("demo.err"))
            .process_group(0)
            .spawn()
            .expect("start standin demo");
        Demo {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// SIGTERM, and its exit status within `within`.
    fn stop(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.stop(Duration::from_secs(20)).is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
            for pid in demo_json(&self.dir).map(|v| pids_in(&v)).unwrap_or_default() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Runs `standin ARGS` (with the demo's token in `STANDIN_TOKEN`): exit code, stdout, stderr.
fn standin(token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("STANDIN_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run standin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The voters `standin member list --json` shows.
fn voters(token: &str, api: &str) -> Vec<String> {
    let (code, out, err) = standin(token, &["member", "list", "--json", "--api", api]);
    assert_eq!(code, 0, "member list: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("member list json");
    let mut ids: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["raft"] == "voter")
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Waits until `f` holds, at most `timeout`.
fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// demo.json's entry for `id`.
fn node_of(dir: &Path, id: &str) -> Option<serde_json::Value> {
    demo_json(dir)?["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
}

/// The daemon's and the service's pid of added node `id`, once the demo has learned both
/// (a witness has no service).
fn pids_of(dir: &Path, id: &str, data: bool) -> Vec<u32> {
    let mut pids = Vec::new();
    wait_until(
        Duration::from_secs(10),
        &format!("{id}'s pids in demo.json"),
        || {
            let Some(n) = node_of(dir, id) else { return false };
            pids = [n["pid"].as_u64(), n["service_pid"].as_u64()]
                .into_iter()
                .flatten()
                .map(|p| p as u32)
                .collect();
            pids.len() == if data { 2 } else { 1 }
        },
    );
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_grows_to_five_and_back_and_stops_the_added_nodes() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.to_str().expect("utf-8 dir");
    let mut demo = Demo::start(&dir);

    // demo.json, then a ready cluster (an active node, healthy standbys).
    let mut file = None;
    wait_until(Duration::from_secs(30), "demo.json with 3 nodes", || {
        file = demo_json(&dir).filter(|v| v["nodes"].as_array().is_some_and(|n| n.len() == 3));
        file.is_some()
    });
    let file = file.expect("demo.json");
    let token = file["token"].as_str().expect("token").to_string();
    let admins: Vec<SocketAddr> = file["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            n["admin"]
                .as_str()
                .expect("admin")
                .parse()
                .expect("admin address")
        })
        .collect();
    standin::lab::harness::wait_status(
        || standin::lab::harness::best_status(&admins),
        Duration::from_secs(30),
        "a ready demo",
        standin::lab::harness::is_ready,
    )
    .await
    .expect("ready");
    let api = admins[0].to_string();
    assert_eq!(voters(&token, &api), ["a", "b", "w"]);

    // Grow: a data node and a witness.
    let (code, out, err) = standin(&token, &["demo", "add-node", "c", "--kind", "data", "--dir", d]);
    assert_eq!(code, 0, "add-node c: {out}{err}");
    assert!(out.contains("c is a voter"), "{out}");
    assert!(dir.join("c.toml").exists() && dir.join("certs/c.pem").exists());
    let config = std::fs::read_to_string(dir.join("c.toml")).expect("c.toml");
    assert!(
        config.contains("join = true") && config.contains("[store]"),
        "{config}"
    );
    let (code, out, err) = standin(
        &token,
        &["demo", "add-node", "v", "--kind", "witness", "--dir", d],
    );
    assert_eq!(code, 0, "add-node v: {out}{err}");
    assert!(out.contains("v is a voter"), "{out}");
    assert_eq!(voters(&token, &api), ["a", "b", "c", "v", "w"]);
    let added = [pids_of(&dir, "c", true), pids_of(&dir, "v", false)].concat();
    assert!(added.iter().all(|p| alive(*p)), "{added:?}");

    // Refused: an id the demo has, a node the demo started.
    let (code, _, err) = standin(&token, &["demo", "add-node", "c", "--kind", "data", "--dir", d]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("c is a node of the demo already"), "{err}");
    let (code, _, err) = standin(&token, &["demo", "remove-node", "a", "--dir", d]);
    assert_eq!(code, 64, "{err}");

    // And back to three: removed, stopped, out of demo.json.
    for id in ["v", "c"] {
        let (code, out, err) = standin(&token, &["demo", "remove-node", id, "--dir", d]);
        assert_eq!(code, 0, "remove-node {id}: {out}{err}");
        assert!(node_of(&dir, id).is_none(), "{id} still in demo.json");
    }
    assert_eq!(voters(&token, &api), ["a", "b", "w"]);
    wait_until(
        Duration::from_secs(5),
        "the removed nodes' processes gone",
        || added.iter().all(|p| !alive(*p)),
    );

    // One more node, left running: stopping the demo stops it too.
    let (code, out, err) = standin(&token, &["demo", "add-node", "d", "--kind", "data", "--dir", d]);
    assert_eq!(code, 0, "add-node d: {out}{err}");
    assert_eq!(voters(&token, &api), ["a", "b", "d", "w"]);
    let d_pids = pids_of(&dir, "d", true);
    let all = pids_in(&demo_json(&dir).expect("demo.json"));
    assert!(d_pids.iter().all(|p| all.contains(p)));
    let status = demo.stop(Duration::from_secs(30)).expect("the demo stops");
    assert!(status.success(), "demo exit: {status}");
    wait_until(Duration::from_secs(5), "every process of the demo gone", || {
        all.iter().chain(&added).all(|p| !alive(*p))
    });
    println!("demo membership: {} ms", started.elapsed().as_millis());
}
