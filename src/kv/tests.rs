//! The key space's tests: the client-session harness the families' test tables use, the
//! parsing of every command, db-level checks and the determinism properties. Each family's
//! command tests (against the replies Redis 7 gives) are in its file, `families/*.rs`.

use bytes::Bytes;
use proptest::prelude::*;

use super::cmd::{Expire, ExpireCond, Op, Parsed, SetCond};
use super::db::Db;
use super::parse;
use super::reply::Reply;

/// A client session against one `Db` with a settable clock.
pub(super) struct T {
    pub(super) db: Db,
    pub(super) now: i64,
}

impl T {
    pub(super) fn new() -> T {
        T {
            db: Db::new(),
            now: 1_700_000_000_000,
        }
    }

    /// Runs a command given as whitespace-separated words.
    pub(super) fn run(&mut self, line: &str) -> Reply {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.args(&args)
    }

    /// Runs a command given as raw arguments, the way the server will: parse, resolve times,
    /// apply. Checks that `read` agrees with `apply` for reads and that the indexes hold.
    pub(super) fn args(&mut self, args: &[&[u8]]) -> Reply {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        let mut op = match parse(&args) {
            Ok(Parsed::Data(op)) => op,
            Ok(Parsed::NotData) => panic!("not a data command: {args:?}"),
            Err(e) => return e,
        };
        op.resolve_times(self.now);
        let before = self.db.clone();
        let read = (!op.is_write()).then(|| self.db.read(&op, self.now));
        let reply = self.db.apply(&op, self.now);
        if let Some(read) = read {
            assert_eq!(read, reply, "read and apply differ for {op:?}");
            assert_eq!(before, self.db, "a read changed the db: {op:?}");
        }
        self.db.check_invariants();
        reply
    }

    pub(super) fn advance(&mut self, ms: i64) {
        self.now += ms;
    }
}

pub(super) fn bulk(s: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

pub(super) fn err(s: &str) -> Reply {
    Reply::Error(s.to_owned())
}

pub(super) fn int(n: i64) -> Reply {
    Reply::Int(n)
}

pub(super) fn arr(items: &[&str]) -> Reply {
    Reply::Array(items.iter().map(|s| bulk(s)).collect())
}

pub(super) fn simple(s: &str) -> Reply {
    Reply::Simple(s.to_owned())
}

pub(super) const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(super) const NOT_INT: &str = "ERR value is not an integer or out of range";
pub(super) const SYNTAX: &str = "ERR syntax error";

// ---------------------------------------------------------------- parsing

#[test]
fn arity_errors_name_the_command_in_lowercase() {
    let mut t = T::new();
    assert_eq!(
        t.run("GET"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        t.run("gEt a b"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        t.run("SET k"),
        err("ERR wrong number of arguments for 'set' command")
    );
    assert_eq!(
        t.run("MSET a"),
        err("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(
        t.run("MSET a 1 b"),
        err("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(
        t.run("HSET h f"),
        err("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        t.run("HSET h f v g"),
        err("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        t.run("LPOP l 1 2"),
        err("ERR wrong number of arguments for 'lpop' command")
    );
    assert_eq!(
        t.run("DBSIZE x"),
        err("ERR wrong number of arguments for 'dbsize' command")
    );
    assert_eq!(
        t.run("DEL"),
        err("ERR wrong number of arguments for 'del' command")
    );
    assert_eq!(
        t.run("EXPIRE k"),
        err("ERR wrong number of arguments for 'expire' command")
    );
    assert_eq!(
        t.run("SETEX k 10"),
        err("ERR wrong number of arguments for 'setex' command")
    );
}

#[test]
fn non_data_commands_are_left_to_the_server() {
    for cmd in [
        "PING",
        "HELLO 3",
        "MULTI",
        "INFO",
        "NOSUCHCOMMAND x",
        "averyveryverylongcommandname",
    ] {
        let args: Vec<Bytes> = cmd
            .split_whitespace()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        assert_eq!(parse(&args), Ok(Parsed::NotData), "{cmd}");
    }
    assert_eq!(parse(&[]), Ok(Parsed::NotData));
}

#[test]
fn parse_builds_the_expected_ops() {
    let p = |s: &str| {
        let args: Vec<Bytes> = s
            .split_whitespace()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        match parse(&args) {
            Ok(Parsed::Data(op)) => op,
            other => panic!("{s}: {other:?}"),
        }
    };
    let k = Bytes::from_static(b"k");
    let v = Bytes::from_static(b"v");
    assert_eq!(
        p("set k v ex 10 nx get"),
        Op::Set {
            key: k.clone(),
            value: v.clone(),
            expire: Expire::RelativeMs(10_000),
            cond: SetCond::Nx,
            get: true,
            keep_ttl: false
        }
    );
    assert_eq!(
        p("SET k v PXAT 5"),
        Op::Set {
            key: k.clone(),
            value: v.clone(),
            expire: Expire::AbsoluteMs(5),
            cond: SetCond::Always,
            get: false,
            keep_ttl: false
        }
    );
    assert_eq!(
        p("decrby k 5"),
        Op::IncrBy {
            key: k.clone(),
            delta: -5
        }
    );
    assert_eq!(
        p("decr k"),
        Op::IncrBy {
            key: k.clone(),
            delta: -1
        }
    );
    assert_eq!(
        p("expire k 5 xx lt"),
        Op::Expire {
            key: k.clone(),
            at: Expire::RelativeMs(5000),
            cond: ExpireCond::XxLt
        }
    );
    assert_eq!(
        p("expire k 5 gt xx"),
        Op::Expire {
            key: k.clone(),
            at: Expire::RelativeMs(5000),
            cond: ExpireCond::Gt
        }
    );
    assert_eq!(
        p("unlink a b"),
        Op::Del {
            keys: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        }
    );
    assert_eq!(
        p("scan 0 count 5 match a* type string"),
        Op::Scan {
            cursor: 0,
            pattern: Some(Bytes::from_static(b"a*")),
            count: 5,
            kind: Some(Bytes::from_static(b"string"))
        }
    );
    assert_eq!(
        p("scan 7 match *"),
        Op::Scan {
            cursor: 7,
            pattern: None,
            count: 10,
            kind: None
        }
    );
}

#[test]
fn resolve_times_makes_relative_expiry_absolute() {
    let k = Bytes::from_static(b"k");
    let mut op = Op::Expire {
        key: k.clone(),
        at: Expire::RelativeMs(-5000),
        cond: ExpireCond::Always,
    };
    op.resolve_times(1000);
    assert_eq!(
        op,
        Op::Expire {
            key: k.clone(),
            at: Expire::AbsoluteMs(-4000),
            cond: ExpireCond::Always
        }
    );
    let mut op = Op::SetEx {
        key: k.clone(),
        value: k.clone(),
        expire: Expire::RelativeMs(10),
    };
    op.resolve_times(5);
    assert_eq!(
        op,
        Op::SetEx {
            key: k.clone(),
            value: k.clone(),
            expire: Expire::AbsoluteMs(15)
        }
    );
    // Absolute times and other ops are untouched; overflow stays relative.
    let mut op = Op::PExpireAt {
        key: k.clone(),
        at: Expire::AbsoluteMs(3),
        cond: ExpireCond::Always,
    };
    op.resolve_times(5);
    assert_eq!(
        op,
        Op::PExpireAt {
            key: k.clone(),
            at: Expire::AbsoluteMs(3),
            cond: ExpireCond::Always
        }
    );
    let mut op = Op::PExpire {
        key: k.clone(),
        at: Expire::RelativeMs(i64::MAX),
        cond: ExpireCond::Always,
    };
    op.resolve_times(5);
    assert_eq!(
        op,
        Op::PExpire {
            key: k,
            at: Expire::RelativeMs(i64::MAX),
            cond: ExpireCond::Always
        }
    );
}

#[test]
fn is_write_and_keys() {
    let args = |s: &str| -> Op {
        let a: Vec<Bytes> = s
            .split_whitespace()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        match parse(&a) {
            Ok(Parsed::Data(op)) => op,
            other => panic!("{other:?}"),
        }
    };
    for r in [
        "get k",
        "mget a b",
        "ttl k",
        "keys *",
        "scan 0",
        "dbsize",
        "hgetall h",
        "lrange l 0 1",
        "smembers s",
    ] {
        assert!(!args(r).is_write(), "{r}");
    }
    for w in [
        "set k v",
        "del k",
        "expire k 1",
        "flushdb",
        "hset h f v",
        "lpop l",
        "sadd s m",
        "incr k",
    ] {
        assert!(args(w).is_write(), "{w}");
    }
    assert_eq!(args("mset a 1 b 2").keys(), vec![&b"a"[..], &b"b"[..]]);
    assert_eq!(args("rename a b").keys(), vec![&b"a"[..], &b"b"[..]]);
    assert!(args("keys *").keys().is_empty());
}

// ---------------------------------------------------------------- db-level

#[test]
fn active_expiry() {
    let mut t = T::new();
    t.run("SET a 1 PX 30");
    t.run("SET b 1 PX 10");
    t.run("SET c 1 PX 20");
    t.run("SET d 1");
    t.advance(25);
    assert_eq!(
        t.db.expired_keys(t.now, 10),
        vec![Bytes::from("b"), Bytes::from("c")]
    );
    assert_eq!(t.db.expired_keys(t.now, 1), vec![Bytes::from("b")]);
    let keys = t.db.expired_keys(t.now, 10);
    // Between the leader's look and the apply, `c` was rewritten without TTL: not deleted.
    t.run("SET c 2");
    let op = Op::DelExpired { keys };
    assert_eq!(t.db.apply(&op, t.now), int(1));
    t.db.check_invariants();
    assert_eq!(t.run("GET c"), bulk("2"));
    assert_eq!(t.db.len(), 3);
    assert_eq!(t.db.expires_count(), 1);
    assert!(op.is_write());
}

#[test]
fn read_of_a_write_is_an_error() {
    let db = Db::new();
    let op = Op::Del {
        keys: vec![Bytes::from("a")],
    };
    assert!(db.read(&op, 0).is_error());
}

#[test]
fn used_memory_tracks_contents() {
    let mut t = T::new();
    assert_eq!(t.db.used_memory(), 0);
    t.run("SET k v");
    let one = t.db.used_memory();
    assert!(one > 0);
    t.run(&format!("SET k {}", "x".repeat(1000)));
    assert!(t.db.used_memory() >= one + 999);
    t.run("DEL k");
    assert_eq!(t.db.used_memory(), 0);
}

#[test]
fn snapshot_round_trip_keeps_everything() {
    let mut t = T::new();
    t.run("MSET a 1 b 2");
    t.run("SET e x EX 100");
    t.run("HSET h f v g w");
    t.run("RPUSH l 1 2 3");
    t.run("SADD s x y");
    t.run("DEL a");
    let bytes = postcard::to_allocvec(&t.db).unwrap();
    let back: Db = postcard::from_bytes(&bytes).unwrap();
    back.check_invariants();
    assert_eq!(back, t.db);
    // Scan positions survive too: a new key goes after all the old ones on both.
    let mut u = T { db: back, now: t.now };
    assert_eq!(u.run("SET z 1"), t.run("SET z 1"));
    assert_eq!(u.db, t.db);
}

// ---------------------------------------------------------------- properties

/// Commands over a small keyspace so that ops collide, types clash and keys expire.
fn arb_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let key = prop::sample::select(vec!["a", "b", "c", "d"]);
    let val = prop::sample::select(vec!["1", "-2", "x", "2.5", "", "9223372036854775807"]);
    let num = -3i64..5;
    let cmd = prop::sample::select(vec![
        "GET",
        "SET",
        "SETNX",
        "SETEX",
        "GETSET",
        "GETDEL",
        "MGET",
        "MSET",
        "APPEND",
        "STRLEN",
        "INCR",
        "DECRBY",
        "INCRBYFLOAT",
        "DEL",
        "EXISTS",
        "EXPIRE",
        "PEXPIRE",
        "PERSIST",
        "TTL",
        "PTTL",
        "TYPE",
        "KEYS",
        "SCAN",
        "RENAME",
        "DBSIZE",
        "FLUSHDB",
        "HSET",
        "HGET",
        "HGETALL",
        "HDEL",
        "HINCRBY",
        "LPUSH",
        "RPUSH",
        "LPOP",
        "RPOP",
        "LRANGE",
        "LLEN",
        "SADD",
        "SREM",
        "SMEMBERS",
        "SCARD",
        "SETPX",
        "SETKEEP",
    ]);
    (cmd, key.clone(), key, val, num, 0u8..3).prop_map(|(cmd, k, k2, v, n, flag)| {
        let words: Vec<String> = match cmd {
            "GET" | "GETDEL" | "STRLEN" | "INCR" | "PERSIST" | "TTL" | "PTTL" | "TYPE" | "HGETALL"
            | "LLEN" | "SMEMBERS" | "SCARD" => vec![cmd.into(), k.into()],
            "SET" | "SETNX" | "GETSET" | "APPEND" | "SADD" | "SREM" | "LPUSH" | "RPUSH" => {
                vec![cmd.into(), k.into(), v.into()]
            }
            "SETPX" => vec!["SET".into(), k.into(), v.into(), "PX".into(), (n + 4).to_string()],
            "SETKEEP" => vec![
                "SET".into(),
                k.into(),
                v.into(),
                "KEEPTTL".into(),
                ["NX", "XX", "GET"][flag as usize].into(),
            ],
            "SETEX" => vec![cmd.into(), k.into(), (n + 4).to_string(), v.into()],
            "MGET" | "DEL" | "EXISTS" | "RENAME" => vec![cmd.into(), k.into(), k2.into()],
            "MSET" => vec![cmd.into(), k.into(), v.into(), k2.into(), v.into()],
            "DECRBY" | "EXPIRE" | "PEXPIRE" => vec![cmd.into(), k.into(), n.to_string()],
            "INCRBYFLOAT" => vec![cmd.into(), k.into(), v.into()],
            "KEYS" => vec![cmd.into(), ["*", "a*", "[ab]"][flag as usize].into()],
            "SCAN" => vec![cmd.into(), n.max(0).to_string(), "COUNT".into(), "2".into()],
            "DBSIZE" | "FLUSHDB" => vec![cmd.into()],
            "HSET" => vec![cmd.into(), k.into(), k2.into(), v.into()],
            "HGET" | "HDEL" => vec![cmd.into(), k.into(), k2.into()],
            "HINCRBY" => vec![cmd.into(), k.into(), k2.into(), n.to_string()],
            "LPOP" | "RPOP" if flag == 0 => vec![cmd.into(), k.into()],
            "LPOP" | "RPOP" => vec![cmd.into(), k.into(), n.to_string()],
            "LRANGE" => vec![cmd.into(), k.into(), n.to_string(), (-n).to_string()],
            _ => unreachable!("{cmd}"),
        };
        words.into_iter().map(String::into_bytes).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two replicas applying the same log end identical, with identical replies; reads agree
    /// with apply and never mutate; the state survives a snapshot round trip.
    #[test]
    fn replicas_converge(cmds in prop::collection::vec((arb_command(), 0i64..4), 1..80)) {
        let mut a = Db::new();
        let mut b = Db::new();
        let mut now = 1_000_000i64;
        for (args, dt) in cmds {
            now += dt;
            let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
            let mut op = match parse(&args) {
                Ok(Parsed::Data(op)) => op,
                Ok(Parsed::NotData) => panic!("{args:?}"),
                Err(_) => continue,
            };
            op.resolve_times(now);
            // Sometimes the leader's active expiry runs first.
            if dt == 3 {
                let del = Op::DelExpired { keys: a.expired_keys(now, 2) };
                prop_assert_eq!(a.apply(&del, now), b.apply(&del, now));
            }
            if !op.is_write() {
                let snapshot = a.clone();
                let r = a.read(&op, now);
                prop_assert_eq!(&snapshot, &a);
                prop_assert_eq!(&r, &a.apply(&op, now));
            }
            let ra = a.apply(&op, now);
            let rb = b.apply(&op, now);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(&a, &b);
            a.check_invariants();
        }
        let bytes = postcard::to_allocvec(&a).unwrap();
        let back: Db = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &a);
        back.check_invariants();
    }

    /// Parsing arbitrary argument vectors never panics, and applying what parses never panics.
    #[test]
    fn parse_and_apply_never_panic(
        name in prop::sample::select(vec!["set", "expire", "scan", "lpop", "lrange", "incrbyfloat", "hset", "mset", "pexpireat", "keys"]),
        rest in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..6),
        now in any::<i64>(),
    ) {
        let mut args = vec![Bytes::from(name)];
        args.extend(rest.into_iter().map(Bytes::from));
        if let Ok(Parsed::Data(mut op)) = parse(&args) {
            op.resolve_times(now);
            let mut db = Db::new();
            db.apply(&Op::MSet { pairs: vec![(Bytes::from("a"), Bytes::from("1"))] }, now);
            let _ = db.apply(&op, now);
            let _ = db.read(&op, now);
            db.check_invariants();
        }
    }
}

// ---------------------------------------------------------------- encoding

/// The postcard encoding of ops is in the Raft log on disk and in forwarded writes on the
/// wire: a variant moved, added in the middle or changed breaks both. New variants go last.
#[test]
fn op_encoding_is_pinned() {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let cases: Vec<(Op, &str)> = vec![
        (Op::Get { key: b("k") }, "00016b"),
        (
            Op::Set {
                key: b("k"),
                value: b("v"),
                expire: Expire::AbsoluteMs(1_700_000_000_000),
                cond: SetCond::Nx,
                get: true,
                keep_ttl: false,
            },
            "01016b01760280a0abfef962010100",
        ),
        (
            Op::IncrBy {
                key: b("n"),
                delta: -3,
            },
            "0c016e05",
        ),
        (
            Op::PExpireAt {
                key: b("k"),
                at: Expire::RelativeMs(5),
                cond: ExpireCond::XxLt,
            },
            "13016b010a05",
        ),
        (Op::FlushDb, "1f"),
        (
            Op::HSet {
                key: b("h"),
                pairs: vec![(b("f"), b("v"))],
            },
            "2001680101660176",
        ),
        (
            Op::Pop {
                key: b("l"),
                count: Some(2),
                left: false,
            },
            "2e016c010200",
        ),
        (
            Op::DelExpired {
                keys: vec![b("a"), b("b")],
            },
            "370201610162",
        ),
    ];
    let mut changed = Vec::new();
    for (op, want) in &cases {
        let bytes = postcard::to_allocvec(op).expect("encode");
        let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
        if hex != *want {
            changed.push(format!("{op:?}: {hex} (was {want})"));
        }
        let back: Op = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(&back, op);
    }
    assert!(
        changed.is_empty(),
        "op encodings changed:\n{}",
        changed.join("\n")
    );
    // The kinds of a group travel with it.
    assert_eq!(
        postcard::to_allocvec(&super::GroupKind::Pipeline).expect("encode"),
        [0]
    );
    assert_eq!(
        postcard::to_allocvec(&super::GroupKind::Exec).expect("encode"),
        [1]
    );
}
