//! Backups and restores on real multi-process clusters (issue 18, item 4): a backup survives
//! the loss of the whole cluster (every data directory deleted) and restores into a new one
//! with the same digest and every key; damaged files are refused by `verify` and `restore`
//! with nothing changed; a store that holds keys is refused without `--force`; scheduled
//! backups appear, keep `keep`, raise and clear their alarms and show in the metrics; and the
//! key space goes to a real `redis-server` and comes back from it through `redis-cli --pipe`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use standin::lab::harness::{LocalCluster, Spec};

mod common;
use common::{binary, free_port, sample, scrape};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster_in(dir: &Path, extra_toml: &str) -> LocalCluster {
    let mut spec = Spec::new(dir, &binary());
    spec.extra_toml = extra_toml.to_string();
    let mut c = LocalCluster::create(spec).await.expect("create");
    c.start_all().expect("start");
    c.wait_ready(Duration::from_secs(60)).await.expect("ready");
    c
}

fn admin(c: &LocalCluster, id: &str) -> String {
    c.node(id).expect("node").admin.to_string()
}

fn store(c: &LocalCluster, id: &str) -> SocketAddr {
    c.node(id).and_then(|n| n.store).expect("store")
}

async fn active(c: &LocalCluster) -> String {
    c.status().await.and_then(|s| s.active).expect("an active node")
}

/// The leader's id.
async fn leader(c: &LocalCluster) -> String {
    c.status().await.and_then(|s| s.leader).expect("a leader")
}

/// Runs `standin ARGS`: exit code, stdout, stderr.
fn standin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env_remove("STANDIN_API")
        .env_remove("STANDIN_TOKEN")
        .output()
        .expect("run standin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn con(addr: SocketAddr) -> redis::Connection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match redis::Client::open(format!("redis://{addr}/")).and_then(|c| c.get_connection()) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Writes a mixed key space: strings, hashes, lists, sets, and keys with an expiry.
fn load(addr: SocketAddr, n: usize) {
    let mut c = con(addr);
    let far = 4_000_000_000_000i64;
    for batch in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut p = redis::pipe();
        for &i in batch {
            match i % 5 {
                0 => p
                    .cmd("SET")
                    .arg(format!("str:{i}"))
                    .arg(format!("value-{i}-{}", "x".repeat(i % 50))),
                1 => p
                    .cmd("HSET")
                    .arg(format!("hash:{i}"))
                    .arg("a")
                    .arg(i)
                    .arg("b")
                    .arg(format!("b{i}")),
                2 => p.cmd("RPUSH").arg(format!("list:{i}")).arg("z").arg("a").arg(i),
                3 => p
                    .cmd("SADD")
                    .arg(format!("set:{i}"))
                    .arg("m1")
                    .arg(format!("m{i}")),
                _ => p
                    .cmd("SET")
                    .arg(format!("ttl:{i}"))
                    .arg("soon")
                    .arg("PXAT")
                    .arg(far + i as i64),
            };
        }
        let _: () = p.query(&mut c).expect("load");
    }
    // A binary key and value.
    let _: () = redis::cmd("SET")
        .arg(&b"bin\x00\xff"[..])
        .arg(&b"\x00\x01\x02\xfe"[..])
        .query(&mut c)
        .expect("binary");
}

/// Key → (type, contents, whether it has an expiry).
type Dump = BTreeMap<Vec<u8>, (String, Vec<Vec<u8>>, i64)>;

/// Every key with its type, contents (sorted where the type has no order) and expiry.
fn dump(addr: SocketAddr) -> Dump {
    let mut c = con(addr);
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut c).expect("keys");
    let mut out = BTreeMap::new();
    for k in keys {
        let ty: String = redis::cmd("TYPE").arg(&k).query(&mut c).expect("type");
        let mut v: Vec<Vec<u8>> = match ty.as_str() {
            "string" => vec![redis::cmd("GET").arg(&k).query(&mut c).expect("get")],
            "hash" => redis::cmd("HGETALL").arg(&k).query(&mut c).expect("hgetall"),
            "list" => redis::cmd("LRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query(&mut c)
                .expect("lrange"),
            "set" => redis::cmd("SMEMBERS").arg(&k).query(&mut c).expect("smembers"),
            other => panic!("unexpected type {other}"),
        };
        if ty == "set" {
            v.sort();
        }
        if ty == "hash" {
            let mut pairs: Vec<Vec<Vec<u8>>> = v.chunks(2).map(|p| p.to_vec()).collect();
            pairs.sort();
            v = pairs.concat();
        }
        // The absolute expiry (PEXPIRETIME is Redis 7; PTTL is relative: keep whether it has one).
        let pttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).expect("pttl");
        out.insert(k, (ty, v, pttl.signum()));
    }
    out
}

async fn store_digest(api: &str) -> (u64, String) {
    // Asked of the leader: a 421 names it; while none is known (an election), ask again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut api = api.to_string();
    loop {
        let r = standin::api::client::request(
            &api,
            hyper::Method::GET,
            "/v1/backup/digest",
            None,
            Duration::from_secs(30),
        )
        .await
        .expect("digest");
        if r.status == 200 {
            let v = json(&r.body);
            return (
                v["keys"].as_u64().expect("keys"),
                v["digest"].as_str().expect("digest").to_string(),
            );
        }
        assert!(
            matches!(r.status, 421 | 503) && Instant::now() < deadline,
            "{}: {}",
            r.status,
            r.body
        );
        if let Some(leader) = json(&r.body)["leader_api"].as_str() {
            api = leader.to_string();
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Copies `file` with `edit` applied.
fn damaged(file: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(file).expect("read");
    edit(&mut b);
    let p = file.with_file_name(name);
    std::fs::write(&p, b).expect("write");
    p
}

/// Backup → the whole cluster stopped and its data directories deleted → a new cluster →
/// restore → the same digest and every key read back. Damaged files are refused by `verify`
/// and `restore` (exit 65) with the cluster unchanged; a store with keys is refused without
/// `--force`; a forced restore keeps a pre-restore backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_after_the_old_one_is_wiped() {
    let _g = SERIAL.lock().await;
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("full.standin");
    let (expected, digest_before, keys_before) = {
        let dir = work.path().join("old");
        std::fs::create_dir_all(&dir).expect("dir");
        let c = cluster_in(&dir, "").await;
        let act = active(&c).await;
        load(store(&c, &act), 3000);
        let expected = dump(store(&c, &act));
        let (keys, d) = store_digest(&admin(&c, "a")).await;
        assert_eq!(keys as usize, expected.len());
        // Asked of a node that may not lead: the backup is taken by the leader (421 followed).
        let (code, out, err) = standin(&[
            "backup",
            "create",
            "--out",
            file.to_str().expect("path"),
            "--api",
            &admin(&c, "w"),
            "--json",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let created = json(&out);
        assert_eq!(created["keys"].as_u64(), Some(keys));
        assert_eq!(created["kv_digest"].as_str(), Some(d.as_str()));
        assert_eq!(created["node"].as_str(), Some(leader(&c).await.as_str()));
        assert_eq!(created["read"].as_str(), Some("leader read barrier"));
        assert!(created["index"].as_u64().unwrap_or(0) > 0);
        // The whole cluster goes, data and all.
        drop(c);
        std::fs::remove_dir_all(&dir).expect("wipe");
        (expected, d, keys)
    };
    // verify and inspect.
    let (code, out, err) = standin(&["backup", "verify", file.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = standin(&["backup", "inspect", file.to_str().expect("path"), "--json"]);
    assert_eq!(code, 0);
    let inspected = json(&out);
    assert_eq!(inspected["keys"].as_u64(), Some(keys_before));
    assert_eq!(inspected["kv_digest"].as_str(), Some(digest_before.as_str()));
    assert!(
        inspected["events"].as_u64().unwrap_or(0) > 0,
        "the events are kept: {out}"
    );
    assert_eq!(
        inspected["header"]["versions"].as_object().map(|v| v.len()),
        Some(3),
        "{out}"
    );

    // Damaged copies: each refused by verify with 65, naming what is wrong.
    let len = std::fs::metadata(&file).expect("meta").len() as usize;
    let flipped = damaged(&file, "flipped.standin", |b| b[len / 2] ^= 0x10);
    let truncated = damaged(&file, "truncated.standin", |b| b.truncate(len - 100));
    let magic = damaged(&file, "magic.standin", |b| b[0] = b'X');
    let oversized = damaged(&file, "oversized.standin", |b| {
        b[11..15].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    for (f, says) in [
        (&flipped, "damaged"),
        (&truncated, "cut short"),
        (&magic, "not a standin backup"),
        (&oversized, "more than"),
    ] {
        let (code, out, err) = standin(&["backup", "verify", f.to_str().expect("path")]);
        assert_eq!(code, 65, "{}: {out}{err}", f.display());
        assert!(err.contains(says), "{}: {err}", f.display());
    }

    // A new cluster, empty.
    let dir = work.path().join("new");
    std::fs::create_dir_all(&dir).expect("dir");
    let c = cluster_in(&dir, "").await;
    let (empty_keys, empty_digest) = store_digest(&admin(&c, "a")).await;
    assert_eq!(empty_keys, 0);
    // Damaged files are refused by restore too, before anything is sent.
    for f in [&flipped, &truncated, &magic, &oversized] {
        let (code, _, err) = standin(&[
            "restore",
            f.to_str().expect("path"),
            "--api",
            &admin(&c, "a"),
            "--force",
        ]);
        assert_eq!(code, 65, "{}: {err}", f.display());
    }
    assert_eq!(
        store_digest(&admin(&c, "b")).await,
        (0, empty_digest.clone()),
        "nothing changed"
    );
    // Restore through a node that may not lead (the leader is found).
    let (code, out, err) = standin(&[
        "restore",
        file.to_str().expect("path"),
        "--api",
        &admin(&c, "w"),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let restored = json(&out);
    assert_eq!(restored["keys"].as_u64(), Some(keys_before));
    assert_eq!(restored["digest"].as_str(), Some(digest_before.as_str()));
    // Every node has it, and every key reads back the same.
    for id in ["a", "b"] {
        assert_eq!(store_digest(&admin(&c, id)).await.1, digest_before);
    }
    let act = active(&c).await;
    assert_eq!(dump(store(&c, &act)), expected, "every key read back");
    // The history says so.
    let events = c.events(&act).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == standin::cluster::state::EventKind::Restore
                && e.detail.contains(&digest_before)),
        "a restore event"
    );

    // The store holds keys now: refused without --force, nothing changed.
    let mut rc = con(store(&c, &act));
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("1")
        .query(&mut rc)
        .expect("set");
    let (_, with_extra) = store_digest(&admin(&c, "a")).await;
    let (code, _, err) = standin(&["restore", file.to_str().expect("path"), "--api", &admin(&c, "a")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(store_digest(&admin(&c, "a")).await.1, with_extra);
    // With --force: replaced, and the pre-restore backup holds the store as it was.
    let pre = work.path().join("pre.standin");
    let (code, out, err) = standin(&[
        "restore",
        file.to_str().expect("path"),
        "--api",
        &admin(&c, "a"),
        "--force",
        "--pre-backup",
        pre.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(pre.to_str().expect("path")), "says where: {out}");
    assert_eq!(store_digest(&admin(&c, "a")).await.1, digest_before);
    let (code, out, _) = standin(&["backup", "inspect", pre.to_str().expect("path"), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["kv_digest"].as_str(), Some(with_extra.as_str()));
}

/// `[backup]`: each data node writes its own backups on the schedule, keeps `keep`, reports
/// them (metrics, `backup status`); failing backups raise `backup-failed`, and no good one
/// within `max-age` `backup-stale`; a good one clears both. Bad values exit 64 naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_rotate_alarm_and_show_in_metrics() {
    let _g = SERIAL.lock().await;
    let work = tempfile::tempdir().expect("tempdir");
    // Bad values are refused before anything starts.
    let bad = work.path().join("bad.toml");
    for (toml, key) in [
        ("[backup]\ndir = \"/tmp/x\"\nevery = \"0s\"\n", "backup.every"),
        ("[backup]\ndir = \"relative\"\n", "backup.dir"),
        ("[backup]\ndir = \"/tmp/x\"\nkeep = 0\n", "backup.keep"),
        (
            "[backup]\ndir = \"/tmp/x\"\nevery = \"10s\"\nmax-age = \"1s\"\n",
            "backup.max-age",
        ),
    ] {
        let text = format!(
            "[tls]\ninsecure = true\n[node]\nid = \"a\"\ndata-dir = \"/tmp/d\"\n[[member]]\nid = \"a\"\nkind = \"data\"\naddresses = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\n[service]\ncommand = \"/bin/true\"\n{toml}",
            free_port(),
            free_port()
        );
        std::fs::write(&bad, text).expect("write");
        let (code, out, err) = standin(&["check-config", bad.to_str().expect("path")]);
        assert_eq!(code, 64, "{toml}: {out}{err}");
        assert!(err.contains(key), "{toml}: {err}");
    }

    let backups = work.path().join("backups");
    let dir = work.path().join("cluster");
    std::fs::create_dir_all(&dir).expect("dir");
    let c = cluster_in(
        &dir,
        &format!(
            "[backup]\ndir = \"{}\"\nevery = \"1s\"\nkeep = 2\nmax-age = \"4s\"\n",
            backups.display()
        ),
    )
    .await;
    load(store(&c, &active(&c).await), 50);
    let wait_for = |what: &'static str, mut f: Box<dyn FnMut() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // Each data node writes its own (the witness none), and keeps two.
    let b2 = backups.clone();
    let list = move |node: &str| standin::backup::schedule::list(&b2, node).unwrap_or_default();
    let l2 = list.clone();
    wait_for(
        "backups of a and b",
        Box::new(move || l2("a").len() == 2 && l2("b").len() == 2),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in ["a", "b"] {
        let files = list(node);
        assert_eq!(files.len(), 2, "retention keeps 2 for {node}: {files:?}");
        let (code, out, err) = standin(&["backup", "verify", files[1].to_str().expect("path")]);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert!(list("w").is_empty(), "a witness takes none");
    // Reported: metrics and `backup status`.
    let m = scrape(&admin(&c, "a")).await;
    for node in ["a", "b"] {
        let last = sample(
            &m,
            "standin_backup_last_success_timestamp_seconds",
            &[("node", node)],
        )
        .expect("last success");
        assert!(last > 1.7e9, "{last}");
        assert!(sample(&m, "standin_backup_size_bytes", &[("node", node)]).expect("size") > 1000.0);
        assert!(sample(&m, "standin_backup_age_seconds", &[("node", node)]).expect("age") < 10.0);
        assert_eq!(
            sample(&m, "standin_backup_failures_total", &[("node", node)]),
            Some(0.0)
        );
    }
    let (code, out, err) = standin(&["backup", "status", "--api", &admin(&c, "b"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let st = json(&out);
    assert!(
        st["reports"]["a"]["last_path"]
            .as_str()
            .is_some_and(|p| p.contains("standin-a-")),
        "{out}"
    );
    // And in `status`, per node.
    let (code, out, err) = standin(&["status", "--api", &admin(&c, "w"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    let nodes = status["nodes"].as_array().expect("nodes");
    for n in nodes {
        let id = n["id"].as_str().unwrap_or("");
        let path = n["backup"]["path"].as_str();
        if id == "w" {
            assert!(n["backup"].is_null(), "{out}");
        } else {
            assert!(
                path.is_some_and(|p| p.contains(&format!("standin-{id}-"))),
                "{out}"
            );
        }
    }
    let (_, out, _) = standin(&["status", "--api", &admin(&c, "a")]);
    assert!(out.contains("backup a: last good"), "{out}");

    // The directory becomes a file: every backup fails.
    // (Moved away in one step: a backup being written meanwhile finishes in the old place.)
    std::fs::rename(&backups, work.path().join("moved")).expect("move");
    std::fs::write(&backups, b"not a directory").expect("file");
    // The alarms raised now, replayed from the history (raised and cleared events).
    async fn alarms(c: &LocalCluster) -> Vec<String> {
        use standin::cluster::state::EventKind;
        let mut raised = std::collections::BTreeSet::new();
        for e in c.events("b").await.unwrap_or_default() {
            let key = e.detail.split(": ").next().unwrap_or("").to_string();
            match e.kind {
                EventKind::AlarmRaised => {
                    raised.insert(key);
                }
                EventKind::AlarmCleared => {
                    raised.remove(&key);
                }
                _ => {}
            }
        }
        raised.into_iter().collect()
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let a = alarms(&c).await;
        if a.iter().any(|k| k == "backup-failed:a") && a.iter().any(|k| k == "backup-stale:a") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed and stale alarms not raised: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = scrape(&admin(&c, "b")).await;
    assert!(sample(&m, "standin_backup_failures_total", &[("node", "a")]).expect("failures") >= 1.0);
    // Fixed: a good backup clears both.
    std::fs::remove_file(&backups).expect("rm");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let a = alarms(&c).await;
        if !a.iter().any(|k| k.starts_with("backup-")) {
            break;
        }
        assert!(Instant::now() < deadline, "alarms not cleared: {a:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!list("a").is_empty());
}

/// A real Redis server on a free port (no persistence), stopped on drop.
struct Redis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        drop(con(r.addr()));
        r
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli -p PORT --pipe < file`: every command answered without error.
fn pipe(addr: SocketAddr, file: &Path) {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "--pipe",
        ])
        .stdin(std::fs::File::open(file).expect("open"))
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("errors: 0"), "{text}");
}

/// standin → `--format resp` → a real redis-server through `redis-cli --pipe`: the same keys
/// and values; then Redis → `backup export-redis` → an emptied standin store through
/// `redis-cli --pipe`: the same again. `backup to-resp` makes the same stream from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_spaces_go_to_redis_and_come_back() {
    let _g = SERIAL.lock().await;
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("cluster");
    std::fs::create_dir_all(&dir).expect("dir");
    let c = cluster_in(&dir, "").await;
    let act = active(&c).await;
    load(store(&c, &act), 1000);
    let expected = dump(store(&c, &act));

    let resp = work.path().join("keys.resp");
    let (code, out, err) = standin(&[
        "backup",
        "create",
        "--format",
        "resp",
        "--out",
        resp.to_str().expect("path"),
        "--api",
        &admin(&c, &act),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let redis = Redis::start();
    pipe(redis.addr(), &resp);
    assert_eq!(dump(redis.addr()), expected, "Redis holds the same key space");
    // The same stream from a backup file.
    let file = work.path().join("keys.standin");
    let (code, _, err) = standin(&[
        "backup",
        "create",
        "--out",
        file.to_str().expect("path"),
        "--api",
        &admin(&c, &act),
    ]);
    assert_eq!(code, 0, "{err}");
    let resp2 = work.path().join("keys2.resp");
    let (code, _, err) = standin(&[
        "backup",
        "to-resp",
        file.to_str().expect("path"),
        "--out",
        resp2.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&resp).expect("read"),
        std::fs::read(&resp2).expect("read")
    );

    // Back from Redis: SCAN and reads, then into an emptied standin store.
    let _: () = redis::cmd("ZADD")
        .arg("zs")
        .arg(1)
        .arg("m")
        .query(&mut con(redis.addr()))
        .expect("zadd");
    let from_redis = work.path().join("from-redis.resp");
    let (code, out, err) = standin(&[
        "backup",
        "export-redis",
        "--from",
        &redis.addr().to_string(),
        "--out",
        from_redis.to_str().expect("path"),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let imported = json(&out);
    assert_eq!(imported["keys"].as_u64(), Some(expected.len() as u64));
    assert_eq!(imported["skipped"]["zset"].as_u64(), Some(1), "{out}");
    let mut sc = con(store(&c, &act));
    let _: () = redis::cmd("FLUSHDB").query(&mut sc).expect("flushdb");
    assert!(dump(store(&c, &act)).is_empty());
    pipe(store(&c, &act), &from_redis);
    assert_eq!(dump(store(&c, &act)), expected, "standin holds Redis's key space");
}
