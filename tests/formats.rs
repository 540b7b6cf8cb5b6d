//! What the previous format versions left behind is read by this build (issue 15): a data
//! directory from before the format was recorded, and peer frames and log entries of protocol
//! version 1, checked in under `tests/fixtures/`.
//!
//! - `fixtures/data-format-1/standin.redb`: node `a`'s database after a short run of a
//!   three-node cluster (one store write), with the recorded format removed (the layout of
//!   every directory from before the record).
//! - `fixtures/frames/*.bin`: postcard encodings of representative peer frames and log
//!   entries. A change of their encoding fails `frames_of_protocol_1_decode_unchanged` until
//!   `version::PROTOCOL` (and, for log entries, `version::DATA_FORMAT`) is raised and the old
//!   encoding kept for peers and directories of the older version.
//!
//! Regenerate (only when a format number is raised, keeping the old fixtures under a new
//! name): `cargo test --test formats -- --ignored write_` (writes the files in place).
//!
//! A directory of a newer format is refused naming both formats: see
//! `a_newer_data_format_is_refused_with_exit_64` in `tests/hostile.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use standin::cluster::rpc::{Frame, Request, Response};
use standin::cluster::state::{Change, Command};
use standin::cluster::TypeConfig;
use standin::kv::cmd::{Expire, Op, SetCond};
use standin::kv::GroupKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// The tables as format 1 names them (`cluster::storage`).
const LOGS: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("raft_log");
const META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("raft_meta");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The key the data-directory fixture's run wrote through the store.
const KEY: &[u8] = b"written-by-format-1";
const VALUE: &[u8] = b"still here";

fn set(key: &[u8], value: &[u8]) -> Op {
    Op::Set {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        expire: Expire::None,
        cond: SetCond::Always,
        get: false,
        keep_ttl: false,
    }
}

fn frame<T>(id: u64, body: T) -> Frame<T> {
    Frame {
        id,
        from: "a".into(),
        body,
    }
}

fn node_started() -> Command {
    Command::NodeStarted {
        node: "a".into(),
        version: "0.1.0".into(),
        checks: vec!["process".into(), "tcp".into()],
        config: "3f2a".into(),
        at: 1_764_000_000_000,
    }
}

fn health() -> Command {
    Command::Health {
        node: "b".into(),
        check: "tcp".into(),
        healthy: false,
        detail: "connection refused".into(),
        at: 1_764_000_000_100,
    }
}

fn batch() -> Command {
    Command::batch(vec![
        Change::Alarm {
            key: "version-mismatch".into(),
            raise: true,
            detail: "nodes run different versions: 0.1.0, 0.2.0".into(),
            at: 1_764_000_000_200,
        },
        Change::Path {
            node: "a".into(),
            peer: "b".into(),
            address: "127.0.0.1:7001".into(),
            up: false,
            at: 1_764_000_000_300,
        },
        Change::Notified { seq: 7 },
    ])
}

fn store() -> Command {
    Command::Store {
        groups: vec![
            (vec![set(b"k", b"v")], GroupKind::Pipeline),
            (vec![set(b"k2", b"v2"), set(b"k3", b"")], GroupKind::Exec),
        ],
        now_ms: 1_764_000_000_400,
    }
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 7), index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// Every fixture: its file name, the expected value's `Debug` text, and its encoding now.
fn cases() -> Vec<(&'static str, String, Vec<u8>)> {
    fn case<T: serde::Serialize + std::fmt::Debug>(
        name: &'static str,
        v: T,
    ) -> (&'static str, String, Vec<u8>) {
        (name, format!("{v:?}"), postcard::to_allocvec(&v).expect("encode"))
    }
    let vote = openraft::Vote::new(3, 7);
    vec![
        case("log-node-started", entry(1, node_started())),
        case("log-health", entry(2, health())),
        case("log-batch", entry(3, batch())),
        case("log-store", entry(4, store())),
        case("request-ping", frame(1, Request::Ping { nonce: 0xdead_beef })),
        case("request-hello", frame(2, Request::Hello { min: 1, max: 1 })),
        case("request-write", frame(3, Request::Write(node_started()))),
        case(
            "request-append",
            frame(
                4,
                Request::AppendEntries(openraft::raft::AppendEntriesRequest {
                    vote,
                    prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 7), 1)),
                    entries: vec![entry(2, health()), entry(3, batch()), entry(4, store())],
                    leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 7), 1)),
                }),
            ),
        ),
        case(
            "request-store-write",
            frame(
                5,
                Request::StoreWrite {
                    ops: vec![set(KEY, VALUE)],
                    kind: GroupKind::Pipeline,
                },
            ),
        ),
        case("response-pong", frame(1, Response::Pong { nonce: 0xdead_beef })),
        case(
            "response-hello",
            frame(
                2,
                Response::Hello {
                    min: 1,
                    max: 1,
                    chosen: Some(1),
                },
            ),
        ),
        case(
            "response-error",
            frame(
                3,
                Response::Error {
                    message: "not the leader; b is".into(),
                    retry: true,
                },
            ),
        ),
    ]
}

/// Each checked-in frame and log entry decodes with the current types to the expected value,
/// and encodes to the same bytes.
#[test]
fn frames_of_protocol_1_decode_unchanged() {
    fn check<T: serde::de::DeserializeOwned + std::fmt::Debug>(name: &str, want: &str, bytes: &[u8]) {
        let got: T = postcard::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{got:?}"), want, "{name} decodes to another value");
    }
    for (name, want, now) in cases() {
        let path = fixtures().join("frames").join(format!("{name}.bin"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match name.split('-').next() {
            Some("log") => check::<Entry<TypeConfig>>(name, &want, &bytes),
            Some("request") => check::<Frame<Request>>(name, &want, &bytes),
            _ => check::<Frame<Response>>(name, &want, &bytes),
        }
        assert_eq!(
            now, bytes,
            "{name}: the encoding changed; raise version::PROTOCOL (and DATA_FORMAT for log entries)"
        );
    }
}

/// Writes `fixtures/frames/*.bin` from the values above.
#[test]
#[ignore = "writes the checked-in fixtures"]
fn write_frames() {
    let dir = fixtures().join("frames");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, _, bytes) in cases() {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("write");
    }
}

/// The data-directory fixture opens: its format is not recorded, the check records format 1,
/// every log entry decodes, among them the node's start and the store write of the run, and
/// the state machine and log open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_format_1_opens_and_gets_its_format_recorded() {
    use openraft::storage::RaftLogStorage;
    use standin::cluster::storage;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        fixtures().join("data-format-1/standin.redb"),
        dir.path().join("standin.redb"),
    )
    .expect("copy the fixture");
    let db = storage::open_db(dir.path()).expect("open");
    assert_eq!(
        storage::data_format(&db).expect("read"),
        None,
        "from before the record"
    );
    assert_eq!(storage::check_data_format(&db), Ok(standin::version::DATA_FORMAT));
    assert_eq!(storage::data_format(&db).expect("read"), Some(1), "recorded");

    let entries: Vec<Entry<TypeConfig>> = {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = db.begin_read().expect("read");
        let logs = txn.open_table(LOGS).expect("the log table");
        logs.iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                postcard::from_bytes(v.value()).unwrap_or_else(|e| panic!("entry {}: {e}", k.value()))
            })
            .collect()
    };
    let commands: Vec<&Command> = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::NodeStarted { node, .. } if node == "a")),
        "{commands:?}"
    );
    let written = format!("{:?}", [set(KEY, VALUE)]);
    assert!(
        commands.iter().any(|c| matches!(c, Command::Store { groups, .. }
            if groups.iter().any(|(ops, _)| format!("{ops:?}") == written))),
        "the store write is in the log: {commands:?}"
    );

    let disk = storage::DiskMark::new(standin::config::raft_id("a"));
    let mut log = storage::LogStore::new(db.clone(), disk.clone());
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(
        state.last_log_id.map(|l| l.index),
        entries.last().map(|e| e.log_id.index)
    );
    assert!(log.read_vote().await.expect("vote").is_some());
    storage::StateMachine::open(db, disk)
        .await
        .expect("the state machine opens");
}

/// Writes `fixtures/data-format-1/standin.redb`: a three-node cluster of this build runs
/// until ready, one key is written through the store, the nodes stop, and node `a`'s
/// database is copied with its recorded format removed, then compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the checked-in fixtures"]
async fn write_data_directory() {
    use standin::lab::harness::{LocalCluster, Spec};
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, status) = LocalCluster::launch(Spec::new(dir.path(), &common::binary()))
        .await
        .expect("cluster ready");
    let active = status.active.expect("an active node");
    let addr = cluster.node(&active).and_then(|n| n.store).expect("store");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = b"*3\r\n$3\r\nSET\r\n".to_vec();
    for a in [KEY, VALUE] {
        req.extend(format!("${}\r\n", a.len()).as_bytes());
        req.extend(a);
        req.extend(b"\r\n");
    }
    conn.write_all(&req).await.expect("send");
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf).await.expect("answer");
    assert_eq!(&buf[..n], b"+OK\r\n");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in ["w", "b", "a"] {
        cluster.stop(id, Duration::from_secs(10)).expect("stop");
    }
    let out = fixtures().join("data-format-1");
    std::fs::create_dir_all(&out).expect("mkdir");
    let file = out.join("standin.redb");
    std::fs::copy(dir.path().join("a-data/standin.redb"), &file).expect("copy");
    let mut db = redb::Database::create(&file).expect("open the copy");
    let txn = db.begin_write().expect("write");
    txn.open_table(META)
        .expect("meta")
        .remove("format")
        .expect("remove the format");
    txn.commit().expect("commit");
    db.compact().expect("compact");
}
