//! `standin bench join`: how long a node added to a running cluster takes to catch up on a
//! store of N keys and vote (`standin member add`: learner, snapshot or log, voter), beside
//! what Redis takes for the same: a new replica's initial full sync (`REPLICAOF`) of a primary
//! holding the same keys, on the same machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::store::{redis_server, wait_redis};
use super::{free_ports, Scratch};
use crate::cluster::members::{MembersView, RaftRole, VOTER_LAG};
use crate::lab::harness::{HarnessError, LocalCluster, Spec};

fn err(m: impl Into<String>) -> HarnessError {
    HarnessError(m.into())
}

/// Options of `standin bench join`.
pub struct JoinOptions {
    pub keys: u64,
    pub value_size: usize,
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    keys: u64,
    value_size: usize,
    /// Loading the keys into the cluster (MSET batches through the leader's store).
    load_s: f64,
    /// `member add`: from the learner request to the new node voting.
    standin_join_s: f64,
    /// The part of it until the learner was within the voter lag.
    standin_catch_up_s: f64,
    /// Redis: from `REPLICAOF` to `master_link_status:up` on an empty replica.
    redis_full_sync_s: Option<f64>,
    redis_skipped: Option<String>,
}

/// Keys per MSET, and MSETs in flight.
const BATCH: u64 = 1000;
const PIPELINE: usize = 16;

/// Loads `keys` keys `k<i>` with values of `size` bytes into the Redis-protocol server at
/// `addr` (standin's store or redis-server): pipelined MSETs, every reply checked.
pub(crate) async fn load(addr: SocketAddr, keys: u64, size: usize) -> Result<(), HarnessError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| err(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let value = "v".repeat(size);
    let batches = keys.div_ceil(BATCH);
    let mut sent = 0u64;
    let mut answered = 0u64;
    let mut line = String::new();
    while answered < batches {
        while sent < batches && sent - answered < PIPELINE as u64 {
            let from = sent * BATCH;
            let to = (from + BATCH).min(keys);
            let mut cmd = format!("*{}\r\n$4\r\nMSET\r\n", 1 + 2 * (to - from));
            for i in from..to {
                let k = format!("k{i}");
                cmd.push_str(&format!("${}\r\n{k}\r\n${}\r\n{value}\r\n", k.len(), value.len()));
            }
            w.write_all(cmd.as_bytes())
                .await
                .map_err(|e| err(format!("write: {e}")))?;
            sent += 1;
        }
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut line))
            .await
            .map_err(|_| err("no answer to an MSET within 30 s"))?
            .map_err(|e| err(format!("read: {e}")))?;
        if n == 0 || !line.starts_with("+OK") {
            return Err(err(format!("MSET refused: {}", line.trim())));
        }
        answered += 1;
    }
    Ok(())
}

async fn members(admin: SocketAddr) -> Option<MembersView> {
    let reply = crate::api::client::request_with_token(
        &admin.to_string(),
        Method::GET,
        "/v1/members",
        None,
        Duration::from_secs(5),
        None,
    )
    .await
    .ok()?;
    serde_json::from_str(&reply.body).ok()
}

/// `member add` of the harness's joiner `id`, the way the CLI does it: learner, wait for the
/// lag, voter. Returns (until caught up, until voting).
async fn add(c: &LocalCluster, id: &str, within: Duration) -> Result<(Duration, Duration), HarnessError> {
    let admin = c.node("a").ok_or_else(|| err("no node a"))?.admin;
    let n = c.node(id).ok_or_else(|| err(format!("no node {id}")))?;
    let member = crate::config::Member {
        id: id.into(),
        kind: crate::config::NodeKind::Data,
        priority: 50,
        addresses: n.paths.clone(),
        admin: n.admin,
        service_address: n.service,
        store_address: n.store,
        site: None,
    };
    let body = serde_json::to_string(&member).map_err(|e| err(e.to_string()))?;
    let start = Instant::now();
    let deadline = start + within;
    loop {
        let r = crate::api::client::request_with_token(
            &admin.to_string(),
            Method::POST,
            "/v1/members",
            Some(body.clone()),
            Duration::from_secs(5),
            None,
        )
        .await
        .map_err(|e| err(e.to_string()))?;
        match r.status {
            200 => break,
            503 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            s => return Err(err(format!("member add refused ({s}): {}", r.body))),
        }
    }
    let bar = super::progress(100, "catching up");
    let mut caught_up = None;
    let mut first_lag = None;
    loop {
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            return Err(err(format!("{id} did not become a voter within {within:?}")));
        }
        let view = members(admin).await;
        let m = view
            .as_ref()
            .and_then(|v| v.members.iter().find(|x| x.member.id == id));
        match m.map(|m| (m.raft, m.lag)) {
            Some((RaftRole::Voter, _)) => break,
            Some((RaftRole::Learner, Some(lag))) => {
                let first = *first_lag.get_or_insert(lag.max(1));
                bar.set_position(100 - (lag.min(first) * 100 / first));
                if lag <= VOTER_LAG {
                    caught_up.get_or_insert_with(|| start.elapsed());
                    let _ = crate::api::client::request_with_token(
                        &admin.to_string(),
                        Method::POST,
                        &format!("/v1/members/{id}/voter"),
                        None,
                        Duration::from_secs(5),
                        None,
                    )
                    .await;
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let total = start.elapsed();
    Ok((caught_up.unwrap_or(total), total))
}

/// Redis's answer to the same question: a fresh replica's full sync of `keys` keys.
async fn redis_sync(dir: &std::path::Path, keys: u64, size: usize) -> Result<f64, HarnessError> {
    let ports = free_ports(2)?;
    let (primary, replica) = (ports[0], ports[1]);
    let _p = redis_server(&dir.join("primary"), primary, &[] as &[&str])?;
    let _r = redis_server(&dir.join("replica"), replica, &[] as &[&str])?;
    for port in [primary, replica] {
        tokio::task::spawn_blocking(move || {
            wait_redis(
                port,
                &["PING"],
                |o| o.trim() == "PONG",
                Duration::from_secs(10),
                "redis-server did not answer PING",
            )
        })
        .await
        .map_err(|e| err(e.to_string()))??;
    }
    load(SocketAddr::from(([127, 0, 0, 1], primary)), keys, size).await?;
    let start = Instant::now();
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &replica.to_string(),
            "REPLICAOF",
            "127.0.0.1",
            &primary.to_string(),
        ])
        .output()
        .map_err(|e| err(format!("redis-cli: {e}")))?;
    if !out.status.success() {
        return Err(err("REPLICAOF failed"));
    }
    tokio::task::spawn_blocking(move || {
        wait_redis(
            replica,
            &["INFO", "replication"],
            |o| o.contains("master_link_status:up") && o.contains("master_sync_in_progress:0"),
            Duration::from_secs(300),
            "the redis replica did not finish its sync",
        )
    })
    .await
    .map_err(|e| err(e.to_string()))??;
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the benchmark and prints the table (or JSON).
pub async fn run(o: JoinOptions) -> Result<(), HarnessError> {
    let scratch = Scratch::new("standin-bench-join")?;
    let binary = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let mut spec = Spec::new(&scratch.path().join("cluster"), &binary);
    spec.joiners = vec![("c".into(), false)];
    eprintln!("bench join: starting a local cluster (a, b, witness) and a node c to add");
    let (mut cluster, _) = LocalCluster::launch(spec).await?;
    let store = cluster
        .node("a")
        .and_then(|n| n.store)
        .ok_or_else(|| err("a has no store"))?;
    eprintln!("bench join: loading {} keys of {} bytes", o.keys, o.value_size);
    let t = Instant::now();
    load(store, o.keys, o.value_size).await?;
    let load_s = t.elapsed().as_secs_f64();
    cluster.start("c")?;
    eprintln!("bench join: standin member add c");
    let (catch_up, join) = add(&cluster, "c", Duration::from_secs(600)).await?;
    drop(cluster);
    eprintln!("bench join: redis-server primary + a fresh replica (REPLICAOF)");
    let (redis_full_sync_s, redis_skipped) =
        match redis_sync(&scratch.path().join("redis"), o.keys, o.value_size).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.0)),
        };
    let report = Report {
        keys: o.keys,
        value_size: o.value_size,
        load_s,
        standin_join_s: join.as_secs_f64(),
        standin_catch_up_s: catch_up.as_secs_f64(),
        redis_full_sync_s,
        redis_skipped,
    };
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| err(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{} keys of {} bytes (loaded in {:.1} s)",
        report.keys, report.value_size, report.load_s
    );
    println!(
        "standin member add (learner -> caught up -> voter): {:.2} s (caught up after {:.2} s)",
        report.standin_join_s, report.standin_catch_up_s
    );
    match (report.redis_full_sync_s, &report.redis_skipped) {
        (Some(r), _) => println!(
            "redis fresh replica full sync (REPLICAOF):          {r:.2} s   ratio standin/redis {:.2}",
            report.standin_join_s / r
        ),
        (None, Some(why)) => println!("redis row skipped: {why}"),
        _ => {}
    }
    Ok(())
}
