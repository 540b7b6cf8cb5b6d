//! `standin bench store` (BENCHMARKS.md §3): `redis-benchmark` with the same settings against
//! standin's store on a 3-node cluster (mutual TLS between the nodes, as deployed), the same
//! cluster without TLS, a lone `redis-server`, and a `redis-server` primary with one replica
//! with `appendfsync always`, once in plain text and once with TLS on its replication link and
//! its clients. Prints requests/s, p50 and p99 for SET and GET with and without pipelining, and
//! standin's ratio to each reference.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::{free_ports, print_json, Scratch, Spawned};
use crate::lab::harness::{HarnessError, LocalCluster, Spec};

fn err(m: impl Into<String>) -> HarnessError {
    HarnessError(m.into())
}

/// One redis-benchmark result line.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: String,
    pub test: String,
    pub pipeline: u32,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub(crate) fn redis_server(
    dir: &Path,
    port: u16,
    extra: &[impl AsRef<std::ffi::OsStr>],
) -> Result<Spawned, HarnessError> {
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .args(extra);
    Spawned::start(
        &mut cmd,
        &dir.join("redis.log"),
        "redis-server (Debian package redis-server)",
    )
}

/// Runs `redis-cli -p PORT ARGS...` every 100 ms until its output satisfies `ok`.
pub(crate) fn wait_redis(
    port: u16,
    args: &[&str],
    ok: impl Fn(&str) -> bool,
    within: Duration,
    what: &str,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let done = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .is_ok_and(|o| ok(&String::from_utf8_lossy(&o.stdout)));
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(err(format!("{what} within {within:?}")))
}

fn wait_ping(port: u16, what: &str) -> Result<(), HarnessError> {
    wait_redis(
        port,
        &["PING"],
        |out| out.trim() == "PONG",
        Duration::from_secs(10),
        &format!("{what} did not answer PING"),
    )
}

/// Waits until the replica has finished its initial sync with the primary (a WAIT before
/// that blocks until the sync ends, which would count against the pair).
fn wait_replica_linked(port: u16) -> Result<(), HarnessError> {
    wait_redis(
        port,
        &["INFO", "replication"],
        |out| out.contains("master_link_status:up"),
        Duration::from_secs(20),
        "the redis replica did not finish its sync with the primary",
    )
}

fn run_benchmark(
    target: &str,
    addr: SocketAddr,
    tls_ca: Option<&Path>,
    requests: u64,
    pipeline: u32,
) -> Result<Vec<Row>, HarnessError> {
    let mut cmd = Command::new("redis-benchmark");
    if let Some(ca) = tls_ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    let out = cmd
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-c",
            "50",
            "-n",
            &requests.to_string(),
            "-P",
            &pipeline.to_string(),
        ])
        .args(["-t", "set,get", "--csv"])
        .output()
        .map_err(|e| {
            err(format!(
                "cannot run redis-benchmark (Debian package redis-tools): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "redis-benchmark failed against {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<String> = line.split(',').map(|s| s.trim_matches('"').to_string()).collect();
        // "test","rps","avg","min","p50","p95","p99","max"
        if f.len() < 8 {
            continue;
        }
        let num = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
        rows.push(Row {
            target: target.to_string(),
            test: f[0].clone(),
            pipeline,
            rps: num(1),
            p50_ms: num(4),
            p99_ms: num(6),
        });
    }
    if rows.is_empty() {
        return Err(err(format!(
            "no results from redis-benchmark against {target}: {text}"
        )));
    }
    Ok(rows)
}

/// Our own load for the durable comparison redis-benchmark cannot make: 50 connections, each
/// sending `SET key value` (plus `WAIT 1 0` for Redis, so the write is on the replica before it
/// counts) and waiting for the replies before the next request. Keys are unique per request.
async fn durable_sets(
    target: &Target,
    requests: u64,
    pipeline: u32,
    with_wait: bool,
) -> Result<Row, HarnessError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let clients = 50u64;
    let pipeline = u64::from(pipeline.max(1));
    let per = requests / clients / pipeline;
    let addr = target.addr;
    let tls = match &target.tls_ca {
        Some(ca) => Some(std::sync::Arc::new(
            crate::tls::https_client_config(ca).map_err(|e| err(e.to_string()))?,
        )),
        None => None,
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut s: Box<dyn Stream> = match tls {
                Some(cfg) => Box::new(
                    tokio_rustls::TlsConnector::from(cfg)
                        .connect(crate::tls::server_name_for(&addr.ip().to_string()), tcp)
                        .await
                        .map_err(|e| format!("tls: {e}"))?,
                ),
                None => Box::new(tcp),
            };
            let mut lat = Vec::with_capacity(per as usize);
            let mut buf = vec![0u8; 256];
            for i in 0..per {
                let mut req = String::new();
                for j in 0..pipeline {
                    let key = format!("d{c}:{i}:{j}");
                    req.push_str(&format!(
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$3\r\nxxx\r\n",
                        key.len()
                    ));
                }
                let mut replies = pipeline;
                if with_wait {
                    req.push_str("*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n");
                    replies += 1;
                }
                let t = Instant::now();
                s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                // Replies are "+OK\r\n" and ":1\r\n": count CRLF-terminated lines.
                let mut lines = 0u64;
                let mut prev = 0u8;
                while lines < replies {
                    let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("connection closed".to_string());
                    }
                    if buf[0] == b'-' {
                        return Err(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    for &b in &buf[..n] {
                        if prev == b'\r' && b == b'\n' {
                            lines += 1;
                        }
                        prev = b;
                    }
                }
                // One latency per SET: each waited as long as its pipeline.
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                lat.extend(std::iter::repeat_n(ms, pipeline as usize));
            }
            Ok::<Vec<f64>, String>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| err(e.to_string()))?
                .map_err(|e| err(format!("{}: {e}", target.name)))?,
        );
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        all.get(((p / 100.0) * (all.len() as f64 - 1.0)) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Row {
        target: target.name.to_string(),
        // The same test name for both rows: equal durability, compared side by side.
        test: "SET+WAIT 1 0".into(),
        pipeline: pipeline as u32,
        rps: all.len() as f64 / secs,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
    })
}

/// A client stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// One system measured: a name, its address, and the CA to speak TLS to it with (if it does).
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tls_ca: Option<std::path::PathBuf>,
}

/// What `standin bench store` runs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Requests per redis-benchmark run (the durable runs send at most 50 000 SETs).
    pub requests: u64,
    /// Runs of each equal-durability row, alternating standin and Redis; the median is shown.
    pub rounds: u32,
    /// Only the equal-durability rows (skips redis-benchmark).
    pub durable_only: bool,
    pub json: bool,
}

/// The standin row every other row is compared with.
const STANDIN: &str = "standin (3 nodes, quorum + fsync, TLS between nodes)";
const REDIS_PAIR: &str = "redis primary+replica (appendfsync always)";
const REDIS_PAIR_TLS: &str = "redis primary+replica (appendfsync always, TLS replication and clients)";

/// Starts a 3-node cluster in `dir` (with or without TLS between the nodes) and returns it
/// with the store address of its Raft leader once leadership has settled on the active node
/// (a follower would forward every request).
async fn start_cluster(
    dir: &Path,
    binary: &Path,
    tls: bool,
) -> Result<(LocalCluster, SocketAddr), HarnessError> {
    let mut spec = Spec::new(dir, binary);
    spec.tls = tls;
    let mut cluster = LocalCluster::create(spec).await?;
    cluster.start_all()?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let status = cluster
        .wait_for(
            Duration::from_secs(30),
            "raft leadership on the active node",
            |s| s.leader.is_some() && s.leader == s.active,
        )
        .await?;
    let leader = status.leader.clone().unwrap_or_else(|| "a".into());
    let leader = if leader == "w" { "a".to_string() } else { leader };
    let addr = cluster
        .node(&leader)
        .and_then(|n| n.store)
        .ok_or_else(|| err("no store address"))?;
    Ok((cluster, addr))
}

/// The Redis pair's durability settings (`appendfsync always`), and for the replica the
/// primary on `replica_of`: the same for the plain and the TLS pair.
fn pair_args(replica_of: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = ["--appendonly", "yes", "--appendfsync", "always"]
        .map(String::from)
        .into();
    if let Some(port) = replica_of {
        args.extend([
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            port.to_string(),
        ]);
    }
    args
}

/// Waits until the TLS replica has finished its initial sync.
fn wait_tls_replica(port: u16, tls: &[String]) -> Result<(), HarnessError> {
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["INFO", "replication"]);
    wait_redis(
        port,
        &args,
        |out| out.contains("master_link_status:up"),
        Duration::from_secs(20),
        "the TLS redis replica did not finish its sync with the primary",
    )
}

/// The row with the median requests/s.
fn median(mut runs: Vec<Row>) -> Option<Row> {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let mid = runs.len() / 2;
    runs.into_iter().nth(mid)
}

/// Runs the store benchmark and prints the table.
pub async fn run(opts: StoreOptions) -> Result<(), HarnessError> {
    let StoreOptions {
        requests,
        rounds,
        durable_only,
        json,
    } = opts;
    let rounds = rounds.max(1);
    // Removed when dropped, after the servers and the cluster (declared later); kept with
    // STANDIN_BENCH_KEEP.
    let scratch = Scratch::new("standin-bench-store")?;
    let dir = scratch.path();
    let binary = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let (cluster, standin_addr) = start_cluster(&dir.join("standin"), &binary, true).await?;
    let (_plain_cluster, plain_addr) = start_cluster(&dir.join("standin-plain"), &binary, false).await?;
    let certs = cluster
        .certs_dir()
        .ok_or_else(|| err("the cluster has no certificates"))?;

    let ports = free_ports(5)?;
    let (lone_port, primary_port, replica_port) = (ports[0], ports[1], ports[2]);
    let (tls_primary_port, tls_replica_port) = (ports[3], ports[4]);
    // The TLS pair uses the cluster's CA and node a's certificate (it names 127.0.0.1):
    // TLS 1.3 on the replication link and to clients, client certificates not required.
    let tls_args = |port: u16| {
        vec![
            "--port".to_string(),
            "0".to_string(),
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            certs.join("a.pem").display().to_string(),
            "--tls-key-file".to_string(),
            certs.join("a.key").display().to_string(),
            "--tls-ca-cert-file".to_string(),
            certs.join("ca.pem").display().to_string(),
            "--tls-replication".to_string(),
            "yes".to_string(),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
            "--tls-protocols".to_string(),
            "TLSv1.3".to_string(),
        ]
    };
    let with = |mut args: Vec<String>, more: Vec<String>| {
        args.extend(more);
        args
    };
    let primary_args = with(tls_args(tls_primary_port), pair_args(None));
    let replica_args = with(tls_args(tls_replica_port), pair_args(Some(tls_primary_port)));

    let _lone = redis_server(&dir.join("lone"), lone_port, &["--appendonly", "no"])?;
    let _primary = redis_server(&dir.join("primary"), primary_port, &pair_args(None))?;
    let _replica = redis_server(&dir.join("replica"), replica_port, &pair_args(Some(primary_port)))?;
    wait_ping(lone_port, "lone redis-server")?;
    wait_ping(primary_port, "redis primary")?;
    wait_ping(replica_port, "redis replica")?;
    wait_replica_linked(replica_port)?;
    // redis-server's own port flag comes first in `redis_server`; `--port 0` later wins.
    let _tls_primary = redis_server(
        &dir.join("tls-primary"),
        tls_primary_port,
        &primary_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let _tls_replica = redis_server(
        &dir.join("tls-replica"),
        tls_replica_port,
        &replica_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let ca = certs.join("ca.pem");
    let tls_cli = ["--tls", "--cacert", &ca.display().to_string()].map(String::from);
    wait_tls_replica(tls_replica_port, &tls_cli)?;

    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let targets = vec![
        Target {
            name: STANDIN,
            addr: standin_addr,
            tls_ca: None,
        },
        Target {
            name: "standin without TLS between nodes",
            addr: plain_addr,
            tls_ca: None,
        },
        Target {
            name: "redis-server (lone, no fsync)",
            addr: local(lone_port),
            tls_ca: None,
        },
        Target {
            name: REDIS_PAIR,
            addr: local(primary_port),
            tls_ca: None,
        },
        Target {
            name: REDIS_PAIR_TLS,
            addr: local(tls_primary_port),
            tls_ca: Some(ca.clone()),
        },
    ];
    let mut rows = Vec::new();
    let pipelines = [1u32, 16];
    // redis-benchmark runs: none with --durable-only.
    let benchmark_pipelines: &[u32] = if durable_only { &[] } else { &pipelines };
    let benchmark_runs = targets.len() * benchmark_pipelines.len();
    // Durable rows: every target but the lone server.
    let durable: Vec<&Target> = targets.iter().filter(|t| !t.name.contains("lone")).collect();
    let durable_runs = pipelines.len() * durable.len() * rounds as usize;
    let bar = indicatif::ProgressBar::new((benchmark_runs + durable_runs) as u64);
    for &pipeline in benchmark_pipelines {
        for t in &targets {
            bar.set_message(format!("{} -P {pipeline}", t.name));
            let (name, addr, ca) = (t.name.to_string(), t.addr, t.tls_ca.clone());
            let r = tokio::task::spawn_blocking(move || {
                run_benchmark(&name, addr, ca.as_deref(), requests, pipeline)
            })
            .await
            .map_err(|e| err(e.to_string()))??;
            rows.extend(r);
            bar.inc(1);
        }
    }
    // Equal durability: acknowledged only once on a second node (and fsynced, for standin and
    // for the Redis pair's appendfsync always).
    // Rounds alternate the two targets so a burst of other load hits both.
    let durable_requests = requests.min(50_000);
    for pipeline in pipelines {
        let mut runs: Vec<Vec<Row>> = vec![Vec::new(); durable.len()];
        for round in 1..=rounds {
            bar.set_message(format!(
                "durable SET -P {pipeline} (own client), round {round}/{rounds}"
            ));
            for (i, t) in durable.iter().enumerate() {
                let redis = !t.name.starts_with("standin");
                runs[i].push(durable_sets(t, durable_requests, pipeline, redis).await?);
                bar.inc(1);
            }
        }
        for r in runs {
            rows.extend(median(r));
        }
    }
    bar.finish_and_clear();
    if json {
        print_json(&rows)?;
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "test",
        "-P",
        "target",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "standin / this",
    ]);
    for r in &rows {
        let standin = rows
            .iter()
            .find(|s| s.test == r.test && s.pipeline == r.pipeline && s.target == STANDIN)
            .map(|s| s.rps)
            .unwrap_or(f64::NAN);
        t.add_row(vec![
            r.test.clone(),
            r.pipeline.to_string(),
            r.target.clone(),
            format!("{:.0}", r.rps),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p99_ms),
            if r.target == STANDIN {
                "-".to_string()
            } else {
                format!("{:.2}x", standin / r.rps)
            },
        ]);
    }
    println!("{t}");
    println!("redis-benchmark -c 50 -n {requests} -t set,get [-P 16], all on this machine, one run");
    println!(
        "SET+WAIT 1 0: own client, 50 connections, each sending P SETs (plus WAIT 1 0 to Redis) and waiting for \
         the replies; standin acknowledges a SET after a quorum commit, so it sends no WAIT; median of {rounds} \
         round(s)"
    );
    Ok(())
}
