//! Command-level tests against the replies Redis 7 gives, plus determinism properties.

use bytes::Bytes;
use proptest::prelude::*;

use super::cmd::{parse, Expire, ExpireCond, Op, Parsed, SetCond};
use super::db::Db;
use super::reply::Reply;

/// A client session against one `Db` with a settable clock.
struct T {
    db: Db,
    now: i64,
}

impl T {
    fn new() -> T {
        T {
            db: Db::new(),
            now: 1_700_000_000_000,
        }
    }

    /// Runs a command given as whitespace-separated words.
    fn run(&mut self, line: &str) -> Reply {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.args(&args)
    }

    /// Runs a command given as raw arguments, the way the server will: parse, resolve times,
    /// apply. Checks that `read` agrees with `apply` for reads and that the indexes hold.
    fn args(&mut self, args: &[&[u8]]) -> Reply {
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

    fn advance(&mut self, ms: i64) {
        self.now += ms;
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn err(s: &str) -> Reply {
    Reply::Error(s.to_owned())
}

fn int(n: i64) -> Reply {
    Reply::Int(n)
}

fn arr(items: &[&str]) -> Reply {
    Reply::Array(items.iter().map(|s| bulk(s)).collect())
}

fn simple(s: &str) -> Reply {
    Reply::Simple(s.to_owned())
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

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

// ---------------------------------------------------------------- strings

#[test]
fn get_and_set() {
    let mut t = T::new();
    assert_eq!(t.run("GET k"), Reply::Nil);
    assert_eq!(t.run("SET k v"), Reply::Ok);
    assert_eq!(t.run("GET k"), bulk("v"));
    assert_eq!(t.run("SET k v2"), Reply::Ok);
    assert_eq!(t.run("GET k"), bulk("v2"));
    t.run("LPUSH l a");
    assert_eq!(t.run("GET l"), err(WRONGTYPE));
    // SET overwrites any type.
    assert_eq!(t.run("SET l x"), Reply::Ok);
    assert_eq!(t.run("GET l"), bulk("x"));
    // Binary-safe.
    assert_eq!(t.args(&[b"SET", b"\x00\xff", b"a b\r\n"]), Reply::Ok);
    assert_eq!(t.args(&[b"GET", b"\x00\xff"]), bulk("a b\r\n"));
}

#[test]
fn set_nx_xx() {
    let mut t = T::new();
    assert_eq!(t.run("SET k v XX"), Reply::Nil);
    assert_eq!(t.run("GET k"), Reply::Nil);
    assert_eq!(t.run("SET k v NX"), Reply::Ok);
    assert_eq!(t.run("SET k w NX"), Reply::Nil);
    assert_eq!(t.run("GET k"), bulk("v"));
    assert_eq!(t.run("SET k w XX"), Reply::Ok);
    assert_eq!(t.run("GET k"), bulk("w"));
    assert_eq!(t.run("SET k v NX XX"), err(SYNTAX));
    assert_eq!(t.run("SET k v XX NX"), err(SYNTAX));
    assert_eq!(t.run("SET k v NX NX"), Reply::Nil);
}

#[test]
fn set_get_option() {
    let mut t = T::new();
    assert_eq!(t.run("SET k v GET"), Reply::Nil);
    assert_eq!(t.run("SET k w GET"), bulk("v"));
    assert_eq!(t.run("GET k"), bulk("w"));
    // NX + GET (Redis 7): the old value is returned and nothing is written.
    assert_eq!(t.run("SET k x NX GET"), bulk("w"));
    assert_eq!(t.run("GET k"), bulk("w"));
    assert_eq!(t.run("SET n x XX GET"), Reply::Nil);
    assert_eq!(t.run("EXISTS n"), int(0));
    t.run("SADD s a");
    assert_eq!(t.run("SET s v GET"), err(WRONGTYPE));
    assert_eq!(t.run("TYPE s"), simple("set"));
    // Without GET, SET overwrites a value of another type.
    assert_eq!(t.run("SET s v"), Reply::Ok);
}

#[test]
fn set_expiry_options() {
    let mut t = T::new();
    assert_eq!(t.run("SET k v EX 10"), Reply::Ok);
    assert_eq!(t.run("TTL k"), int(10));
    assert_eq!(t.run("PTTL k"), int(10_000));
    assert_eq!(t.run("SET k v PX 1500"), Reply::Ok);
    assert_eq!(t.run("PTTL k"), int(1500));
    assert_eq!(t.run("TTL k"), int(2)); // rounded to the nearest second
    let at = (t.now + 20_000) / 1000;
    assert_eq!(t.run(&format!("SET k v EXAT {at}")), Reply::Ok);
    assert_eq!(t.run("EXPIRETIME k"), int(at));
    assert_eq!(t.run(&format!("SET k v PXAT {}", t.now + 300)), Reply::Ok);
    assert_eq!(t.run("PTTL k"), int(300));
    // KEEPTTL keeps it, a plain SET drops it.
    assert_eq!(t.run("SET k w KEEPTTL"), Reply::Ok);
    assert_eq!(t.run("PTTL k"), int(300));
    assert_eq!(t.run("SET k w"), Reply::Ok);
    assert_eq!(t.run("TTL k"), int(-1));
    // Conflicts and bad values.
    assert_eq!(t.run("SET k v EX 10 PX 100"), err(SYNTAX));
    assert_eq!(t.run("SET k v EX 10 KEEPTTL"), err(SYNTAX));
    assert_eq!(t.run("SET k v KEEPTTL EX 10"), err(SYNTAX));
    assert_eq!(t.run("SET k v EX"), err(SYNTAX));
    assert_eq!(t.run("SET k v FOO"), err(SYNTAX));
    assert_eq!(t.run("SET k v EX 10 EX 20"), Reply::Ok);
    assert_eq!(t.run("TTL k"), int(20));
    assert_eq!(
        t.run("SET k v EX 0"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        t.run("SET k v PX -5"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        t.run("SET k v EXAT 0"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        t.run("SET k v EX 9223372036854776"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        t.run("SET k v PX 9223372036854775807"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(t.run("SET k v EX ten"), err(NOT_INT));
    assert_eq!(t.run("SET k v EX 1.5"), err(NOT_INT));
    assert_eq!(t.run("GET k"), bulk("v"));
    // An absolute time in the past leaves no key.
    assert_eq!(t.run("SET k v PXAT 1"), Reply::Ok);
    assert_eq!(t.run("EXISTS k"), int(0));
}

#[test]
fn keys_expire_lazily() {
    let mut t = T::new();
    t.run("SET k v PX 100");
    t.advance(100);
    assert_eq!(t.run("GET k"), bulk("v")); // alive during its last millisecond
    t.advance(1);
    assert_eq!(t.run("GET k"), Reply::Nil);
    assert_eq!(t.run("TTL k"), int(-2));
    assert_eq!(t.run("EXISTS k"), int(0));
    assert_eq!(t.run("DBSIZE"), int(0));
    assert_eq!(t.run("KEYS *"), arr(&[]));
    assert_eq!(t.db.len(), 1, "reads do not reclaim");
    // A write to the key reclaims it first: INCR starts from 0, not from "v".
    assert_eq!(t.run("INCR k"), int(1));
    assert_eq!(t.run("TTL k"), int(-1));
}

#[test]
fn setnx_setex_psetex() {
    let mut t = T::new();
    assert_eq!(t.run("SETNX k v"), int(1));
    assert_eq!(t.run("SETNX k w"), int(0));
    assert_eq!(t.run("GET k"), bulk("v"));
    assert_eq!(t.run("SETEX k 100 x"), Reply::Ok);
    assert_eq!(t.run("TTL k"), int(100));
    assert_eq!(t.run("GET k"), bulk("x"));
    assert_eq!(t.run("PSETEX k 2500 y"), Reply::Ok);
    assert_eq!(t.run("PTTL k"), int(2500));
    assert_eq!(
        t.run("SETEX k 0 x"),
        err("ERR invalid expire time in 'setex' command")
    );
    assert_eq!(
        t.run("SETEX k -1 x"),
        err("ERR invalid expire time in 'setex' command")
    );
    assert_eq!(
        t.run("PSETEX k 0 x"),
        err("ERR invalid expire time in 'psetex' command")
    );
    assert_eq!(t.run("SETEX k x x"), err(NOT_INT));
    t.run("HSET h f v");
    assert_eq!(t.run("SETNX h v"), int(0));
    assert_eq!(t.run("SETEX h 10 v"), Reply::Ok);
    assert_eq!(t.run("TYPE h"), simple("string"));
}

#[test]
fn getset_getdel() {
    let mut t = T::new();
    assert_eq!(t.run("GETSET k v"), Reply::Nil);
    assert_eq!(t.run("GETSET k w"), bulk("v"));
    t.run("EXPIRE k 100");
    assert_eq!(t.run("GETSET k x"), bulk("w"));
    assert_eq!(t.run("TTL k"), int(-1), "GETSET drops the TTL");
    assert_eq!(t.run("GETDEL k"), bulk("x"));
    assert_eq!(t.run("GETDEL k"), Reply::Nil);
    assert_eq!(t.run("EXISTS k"), int(0));
    t.run("RPUSH l a");
    assert_eq!(t.run("GETSET l v"), err(WRONGTYPE));
    assert_eq!(t.run("GETDEL l"), err(WRONGTYPE));
    assert_eq!(t.run("LLEN l"), int(1));
}

#[test]
fn mget_mset_msetnx() {
    let mut t = T::new();
    assert_eq!(t.run("MSET a 1 b 2"), Reply::Ok);
    t.run("SADD s m");
    assert_eq!(
        t.run("MGET a b c s a"),
        Reply::Array(vec![bulk("1"), bulk("2"), Reply::Nil, Reply::Nil, bulk("1")])
    );
    t.run("EXPIRE a 100");
    assert_eq!(t.run("MSET a 3 a 4"), Reply::Ok);
    assert_eq!(t.run("GET a"), bulk("4"));
    assert_eq!(t.run("TTL a"), int(-1));
    assert_eq!(t.run("MSETNX a 1 z 1"), int(0));
    assert_eq!(t.run("EXISTS z"), int(0));
    assert_eq!(t.run("MSETNX y 1 z 2"), int(1));
    assert_eq!(t.run("MGET y z"), arr(&["1", "2"]));
    assert_eq!(
        t.run("MSETNX y"),
        err("ERR wrong number of arguments for 'msetnx' command")
    );
}

#[test]
fn append_strlen() {
    let mut t = T::new();
    assert_eq!(t.run("STRLEN k"), int(0));
    assert_eq!(t.run("APPEND k Hello"), int(5));
    assert_eq!(t.run("APPEND k _World"), int(11));
    assert_eq!(t.run("GET k"), bulk("Hello_World"));
    assert_eq!(t.run("STRLEN k"), int(11));
    t.run("EXPIRE k 50");
    t.run("APPEND k !");
    assert_eq!(t.run("TTL k"), int(50), "APPEND keeps the TTL");
    t.run("HSET h f v");
    assert_eq!(t.run("APPEND h x"), err(WRONGTYPE));
    assert_eq!(t.run("STRLEN h"), err(WRONGTYPE));
}

#[test]
fn incr_decr() {
    let mut t = T::new();
    assert_eq!(t.run("INCR n"), int(1));
    assert_eq!(t.run("INCRBY n 10"), int(11));
    assert_eq!(t.run("DECR n"), int(10));
    assert_eq!(t.run("DECRBY n 20"), int(-10));
    assert_eq!(t.run("GET n"), bulk("-10"));
    assert_eq!(t.run("INCRBY n -5"), int(-15));
    t.run("SET s 10 ");
    for bad in [
        "10 ",
        " 10",
        "+1",
        "01",
        "-0",
        "1e3",
        "1.0",
        "",
        "abc",
        "99999999999999999999",
    ] {
        t.args(&[b"SET", b"s", bad.as_bytes()]);
        assert_eq!(t.run("INCR s"), err(NOT_INT), "{bad:?}");
    }
    t.run("SET s -9223372036854775808");
    assert_eq!(t.run("INCR s"), int(-9_223_372_036_854_775_807));
    t.run("SET m 9223372036854775807");
    assert_eq!(t.run("INCR m"), err("ERR increment or decrement would overflow"));
    t.run("SET m -9223372036854775808");
    assert_eq!(t.run("DECR m"), err("ERR increment or decrement would overflow"));
    assert_eq!(
        t.run("DECRBY m -9223372036854775808"),
        err("ERR decrement would overflow")
    );
    assert_eq!(t.run("INCRBY m x"), err(NOT_INT));
    assert_eq!(t.run("INCRBY m 9223372036854775808"), err(NOT_INT));
    t.run("SET e 5");
    t.run("EXPIRE e 100");
    t.run("INCR e");
    assert_eq!(t.run("TTL e"), int(100), "INCR keeps the TTL");
    t.run("LPUSH l a");
    assert_eq!(t.run("INCR l"), err(WRONGTYPE));
}

#[test]
fn incrbyfloat() {
    let mut t = T::new();
    t.run("SET mykey 10.50");
    assert_eq!(t.run("INCRBYFLOAT mykey 0.1"), bulk("10.6"));
    assert_eq!(t.run("INCRBYFLOAT mykey -5"), bulk("5.6"));
    t.run("SET mykey 5.0e3");
    assert_eq!(t.run("INCRBYFLOAT mykey 2.0e2"), bulk("5200"));
    assert_eq!(t.run("INCRBYFLOAT new 3"), bulk("3"));
    assert_eq!(t.run("INCRBYFLOAT new 1.5"), bulk("4.5"));
    assert_eq!(t.run("INCRBYFLOAT new -4.5"), bulk("0"));
    assert_eq!(t.run("INCRBYFLOAT big 1e20"), bulk("100000000000000000000"));
    assert_eq!(t.run("INCRBYFLOAT tiny 1e-20"), bulk("0"));
    assert_eq!(t.run("INCRBYFLOAT tiny 1.5e-10"), bulk("0.00000000015"));
    assert_eq!(t.run("INCRBYFLOAT neg -0.5"), bulk("-0.5"));
    assert_eq!(t.run("INCRBYFLOAT neg 0.5"), bulk("0"));
    t.run("SET z -0");
    assert_eq!(t.run("INCRBYFLOAT z -0.0"), bulk("0"), "Redis prints -0 as 0");
    assert_eq!(t.run("INCRBYFLOAT n2 .5"), bulk("0.5"));
    assert_eq!(t.run("INCRBYFLOAT k abc"), err("ERR value is not a valid float"));
    assert_eq!(t.run("INCRBYFLOAT k nan"), err("ERR value is not a valid float"));
    t.run("SET k 1");
    assert_eq!(
        t.run("INCRBYFLOAT k inf"),
        err("ERR increment would produce NaN or Infinity")
    );
    t.run("SET k abc");
    assert_eq!(t.run("INCRBYFLOAT k 1"), err("ERR value is not a valid float"));
    t.run("SET k 1.5");
    t.run("PEXPIRE k 1000");
    assert_eq!(t.run("INCRBYFLOAT k 1"), bulk("2.5"));
    assert_eq!(t.run("PTTL k"), int(1000));
    assert_eq!(t.run("INCR k"), err(NOT_INT));
    t.run("SADD s a");
    assert_eq!(t.run("INCRBYFLOAT s 1"), err(WRONGTYPE));
}

// ---------------------------------------------------------------- keys

#[test]
fn del_unlink_exists() {
    let mut t = T::new();
    t.run("MSET a 1 b 2 c 3");
    assert_eq!(t.run("EXISTS a b x a"), int(3));
    assert_eq!(t.run("DEL a x a"), int(1));
    assert_eq!(t.run("UNLINK b c d"), int(2));
    assert_eq!(t.run("EXISTS a b c"), int(0));
    assert!(t.db.is_empty());
    assert_eq!(t.db.used_memory(), 0);
}

#[test]
fn expire_family() {
    let mut t = T::new();
    assert_eq!(t.run("EXPIRE k 10"), int(0));
    t.run("SET k v");
    assert_eq!(t.run("EXPIRE k 10"), int(1));
    assert_eq!(t.run("TTL k"), int(10));
    assert_eq!(t.run("PEXPIRE k 5500"), int(1));
    assert_eq!(t.run("PTTL k"), int(5500));
    assert_eq!(t.run("TTL k"), int(6));
    let at = t.now / 1000 + 100;
    assert_eq!(t.run(&format!("EXPIREAT k {at}")), int(1));
    assert_eq!(t.run("EXPIRETIME k"), int(at));
    assert_eq!(t.run("PEXPIRETIME k"), int(at * 1000));
    assert_eq!(t.run(&format!("PEXPIREAT k {}", t.now + 42)), int(1));
    assert_eq!(t.run("PTTL k"), int(42));
    // A time in the past deletes the key and still answers 1.
    assert_eq!(t.run("EXPIRE k -1"), int(1));
    assert_eq!(t.run("EXISTS k"), int(0));
    t.run("SET k v");
    assert_eq!(t.run("EXPIRE k 0"), int(1));
    assert_eq!(t.run("EXISTS k"), int(0));
    t.run("SET k v");
    assert_eq!(t.run("EXPIREAT k 1"), int(1));
    assert_eq!(t.run("EXISTS k"), int(0));
    assert_eq!(t.run("EXPIRE k x"), err(NOT_INT));
    assert_eq!(
        t.run("EXPIRE k 9223372036854776"),
        err("ERR invalid expire time in 'expire' command")
    );
    t.run("SET k v");
    assert_eq!(
        t.run("PEXPIRE k 9223372036854775807"),
        err("ERR invalid expire time in 'pexpire' command")
    );
    assert_eq!(
        t.run("EXPIREAT k 9223372036854776"),
        err("ERR invalid expire time in 'expireat' command")
    );
    assert_eq!(t.run("TTL k"), int(-1));
    assert_eq!(t.run("TTL missing"), int(-2));
    assert_eq!(t.run("PTTL missing"), int(-2));
    assert_eq!(t.run("EXPIRETIME k"), int(-1));
}

#[test]
fn expire_conditions() {
    let mut t = T::new();
    t.run("SET k v");
    assert_eq!(t.run("EXPIRE k 100 XX"), int(0));
    assert_eq!(t.run("EXPIRE k 100 GT"), int(0), "no TTL counts as infinite");
    assert_eq!(t.run("EXPIRE k 100 XX LT"), int(0));
    assert_eq!(t.run("EXPIRE k 100 LT"), int(1));
    assert_eq!(t.run("EXPIRE k 200 NX"), int(0));
    assert_eq!(t.run("EXPIRE k 200 GT"), int(1));
    assert_eq!(t.run("EXPIRE k 100 GT"), int(0));
    assert_eq!(t.run("EXPIRE k 300 LT"), int(0));
    assert_eq!(t.run("EXPIRE k 50 XX LT"), int(1));
    assert_eq!(t.run("TTL k"), int(50));
    t.run("PERSIST k");
    assert_eq!(t.run("EXPIRE k 200 NX"), int(1));
    assert_eq!(
        t.run("EXPIRE k 1 NX XX"),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        t.run("EXPIRE k 1 NX GT"),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        t.run("EXPIRE k 1 GT LT"),
        err("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(t.run("EXPIRE k 1 FOO"), err("ERR Unsupported option FOO"));
    // Options are checked before the time.
    assert_eq!(t.run("EXPIRE k x FOO"), err("ERR Unsupported option FOO"));
}

#[test]
fn persist() {
    let mut t = T::new();
    assert_eq!(t.run("PERSIST k"), int(0));
    t.run("SET k v");
    assert_eq!(t.run("PERSIST k"), int(0));
    t.run("EXPIRE k 10");
    assert_eq!(t.db.expires_count(), 1);
    assert_eq!(t.run("PERSIST k"), int(1));
    assert_eq!(t.run("TTL k"), int(-1));
    assert_eq!(t.db.expires_count(), 0);
}

#[test]
fn ttl_rounds_to_nearest_second() {
    let mut t = T::new();
    t.run("SET k v PX 10000");
    t.advance(499);
    assert_eq!(t.run("TTL k"), int(10));
    t.advance(1);
    assert_eq!(t.run("TTL k"), int(10)); // 9500 ms → (9500+500)/1000
    t.advance(1);
    assert_eq!(t.run("TTL k"), int(9));
    t.advance(9499);
    assert_eq!(t.run("PTTL k"), int(0));
    assert_eq!(t.run("TTL k"), int(0));
}

#[test]
fn type_command() {
    let mut t = T::new();
    t.run("SET s v");
    t.run("HSET h f v");
    t.run("LPUSH l a");
    t.run("SADD z m");
    assert_eq!(t.run("TYPE s"), simple("string"));
    assert_eq!(t.run("TYPE h"), simple("hash"));
    assert_eq!(t.run("TYPE l"), simple("list"));
    assert_eq!(t.run("TYPE z"), simple("set"));
    assert_eq!(t.run("TYPE nope"), simple("none"));
}

#[test]
fn keys_glob() {
    let mut t = T::new();
    t.run("MSET hello 1 hallo 1 hxllo 1 hllo 1 heeeello 1 h*llo 1 user:1 1 user:2 1 other 1");
    assert_eq!(t.run("KEYS h?llo"), arr(&["h*llo", "hallo", "hello", "hxllo"]));
    assert_eq!(
        t.run("KEYS h*llo"),
        arr(&["h*llo", "hallo", "heeeello", "hello", "hllo", "hxllo"])
    );
    assert_eq!(t.run("KEYS h[ae]llo"), arr(&["hallo", "hello"]));
    assert_eq!(t.run("KEYS h[^e]llo"), arr(&["h*llo", "hallo", "hxllo"]));
    assert_eq!(t.run("KEYS h[a-b]llo"), arr(&["hallo"]));
    assert_eq!(t.run("KEYS h\\*llo"), arr(&["h*llo"]));
    assert_eq!(t.run("KEYS user:*"), arr(&["user:1", "user:2"]));
    assert_eq!(t.run("KEYS nomatch*"), arr(&[]));
    assert_eq!(t.run("KEYS other"), arr(&["other"]));
    let Reply::Array(all) = t.run("KEYS *") else {
        panic!()
    };
    assert_eq!(all.len(), 9);
}

/// Runs a full SCAN with the given options; returns the keys and the number of calls.
fn scan_all(t: &mut T, opts: &str) -> (Vec<Bytes>, usize) {
    let mut cursor = "0".to_owned();
    let mut keys = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        let Reply::Array(parts) = t.run(&format!("SCAN {cursor} {opts}")) else {
            panic!("scan reply")
        };
        let [Reply::Bulk(next), Reply::Array(batch)] = &parts[..] else {
            panic!("scan shape")
        };
        for k in batch {
            let Reply::Bulk(k) = k else { panic!() };
            keys.push(k.clone());
        }
        cursor = String::from_utf8(next.to_vec()).unwrap();
        if cursor == "0" {
            return (keys, calls);
        }
    }
}

#[test]
fn scan_returns_every_key_once() {
    let mut t = T::new();
    for i in 0..25 {
        t.run(&format!("SET k{i} v"));
    }
    let (mut keys, calls) = scan_all(&mut t, "COUNT 10");
    assert_eq!(calls, 3);
    keys.sort();
    let Reply::Array(all) = t.run("KEYS *") else {
        panic!()
    };
    let all: Vec<Bytes> = all
        .into_iter()
        .map(|r| if let Reply::Bulk(b) = r { b } else { panic!() })
        .collect();
    assert_eq!(keys, all);
    // An empty db: cursor 0, nothing.
    let mut e = T::new();
    assert_eq!(
        e.run("SCAN 0"),
        Reply::Array(vec![bulk("0"), Reply::Array(vec![])])
    );
}

#[test]
fn scan_survives_deletes_and_inserts() {
    let mut t = T::new();
    for i in 0..30 {
        t.run(&format!("SET k{i:02} v"));
    }
    let mut cursor = "0".to_owned();
    let mut seen = Vec::new();
    let mut round = 0;
    loop {
        let Reply::Array(parts) = t.run(&format!("SCAN {cursor} COUNT 4")) else {
            panic!()
        };
        let [Reply::Bulk(next), Reply::Array(batch)] = &parts[..] else {
            panic!()
        };
        seen.extend(batch.iter().cloned());
        // Meanwhile: delete keys already returned and keys not yet returned, add new ones.
        t.run(&format!("DEL k{:02}", round));
        t.run(&format!("DEL k{:02}", 29 - round));
        t.run(&format!("SET new{round} v"));
        round += 1;
        cursor = String::from_utf8(next.to_vec()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    // Keys that were never deleted (k(round)..k(29-round) for the final round) were all seen.
    for i in round..(30 - round) {
        assert!(seen.contains(&bulk(&format!("k{i:02}"))), "k{i:02} missed");
    }
    let mut dedup = seen.clone();
    dedup.sort_by_key(|r| format!("{r:?}"));
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no key is returned twice");
}

#[test]
fn scan_options() {
    let mut t = T::new();
    t.run("MSET a1 1 a2 2 b1 3");
    t.run("HSET ah f v");
    t.run("SET gone v PX 10");
    t.advance(11);
    let (keys, _) = scan_all(&mut t, "MATCH a* COUNT 2");
    assert_eq!(
        keys,
        vec![Bytes::from("a1"), Bytes::from("a2"), Bytes::from("ah")]
    );
    let (keys, _) = scan_all(&mut t, "TYPE HASH");
    assert_eq!(keys, vec![Bytes::from("ah")]);
    let (keys, _) = scan_all(&mut t, "TYPE string MATCH *1");
    assert_eq!(keys, vec![Bytes::from("a1"), Bytes::from("b1")]);
    let (keys, _) = scan_all(&mut t, "COUNT 1000");
    assert_eq!(keys.len(), 4, "the expired key is not returned");
    assert_eq!(t.run("SCAN x"), err("ERR invalid cursor"));
    assert_eq!(t.run("SCAN -1"), err("ERR invalid cursor"));
    assert_eq!(t.run("SCAN 0 COUNT 0"), err(SYNTAX));
    assert_eq!(t.run("SCAN 0 COUNT x"), err(NOT_INT));
    assert_eq!(t.run("SCAN 0 MATCH"), err(SYNTAX));
    assert_eq!(t.run("SCAN 0 FOO bar"), err(SYNTAX));
    // A cursor past the end finishes the scan.
    assert_eq!(
        t.run("SCAN 99999"),
        Reply::Array(vec![bulk("0"), Reply::Array(vec![])])
    );
}

#[test]
fn rename() {
    let mut t = T::new();
    assert_eq!(t.run("RENAME a b"), err("ERR no such key"));
    assert_eq!(t.run("RENAME a a"), err("ERR no such key"));
    assert_eq!(t.run("RENAMENX a b"), err("ERR no such key"));
    t.run("SET a 1 EX 100");
    t.run("SET b 2");
    assert_eq!(t.run("RENAME a a"), Reply::Ok);
    assert_eq!(t.run("RENAMENX a b"), int(0));
    assert_eq!(t.run("RENAMENX a a"), int(0));
    assert_eq!(t.run("RENAME a b"), Reply::Ok);
    assert_eq!(t.run("EXISTS a"), int(0));
    assert_eq!(t.run("GET b"), bulk("1"));
    assert_eq!(t.run("TTL b"), int(100), "the TTL moves with the value");
    t.run("SET c 3 EX 50");
    assert_eq!(t.run("RENAME b c"), Reply::Ok);
    assert_eq!(t.run("TTL c"), int(100));
    assert_eq!(t.run("RENAMENX c d"), int(1));
    assert_eq!(t.run("GET d"), bulk("1"));
    assert_eq!(t.db.expires_count(), 1);
    t.run("HSET h f v");
    assert_eq!(t.run("RENAME h d"), Reply::Ok);
    assert_eq!(t.run("HGET d f"), bulk("v"));
    assert_eq!(t.run("TTL d"), int(-1));
    // An expired source is missing.
    t.run("SET x 1 PX 5");
    t.advance(6);
    assert_eq!(t.run("RENAME x y"), err("ERR no such key"));
}

#[test]
fn dbsize_flushdb() {
    let mut t = T::new();
    assert_eq!(t.run("DBSIZE"), int(0));
    t.run("MSET a 1 b 2");
    t.run("SET c 3 PX 10");
    assert_eq!(t.run("DBSIZE"), int(3));
    t.advance(11);
    assert_eq!(t.run("DBSIZE"), int(2));
    assert_eq!(t.run("FLUSHDB"), Reply::Ok);
    assert_eq!(t.run("DBSIZE"), int(0));
    assert_eq!(t.db.used_memory(), 0);
    assert_eq!(t.db.expires_count(), 0);
    assert_eq!(t.run("FLUSHDB ASYNC"), Reply::Ok);
    assert_eq!(t.run("FLUSHDB sync"), Reply::Ok);
    assert_eq!(t.run("FLUSHDB now"), err(SYNTAX));
    assert_eq!(t.run("FLUSHDB async sync"), err(SYNTAX));
}

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

// ---------------------------------------------------------------- hashes

#[test]
fn hash_commands() {
    let mut t = T::new();
    assert_eq!(t.run("HSET h a 1 b 2"), int(2));
    assert_eq!(t.run("HSET h a 10 c 3"), int(1));
    assert_eq!(t.run("HSET h a 11 a 12"), int(0));
    assert_eq!(t.run("HGET h a"), bulk("12"));
    assert_eq!(t.run("HGET h zz"), Reply::Nil);
    assert_eq!(t.run("HGET nope a"), Reply::Nil);
    assert_eq!(
        t.run("HMGET h a zz c"),
        Reply::Array(vec![bulk("12"), Reply::Nil, bulk("3")])
    );
    assert_eq!(
        t.run("HMGET nope a b"),
        Reply::Array(vec![Reply::Nil, Reply::Nil])
    );
    assert_eq!(
        t.run("HGETALL h"),
        Reply::Map(vec![
            (bulk("a"), bulk("12")),
            (bulk("b"), bulk("2")),
            (bulk("c"), bulk("3"))
        ])
    );
    assert_eq!(t.run("HGETALL nope"), Reply::Map(vec![]));
    assert_eq!(t.run("HKEYS h"), arr(&["a", "b", "c"]));
    assert_eq!(t.run("HVALS h"), arr(&["12", "2", "3"]));
    assert_eq!(t.run("HLEN h"), int(3));
    assert_eq!(t.run("HLEN nope"), int(0));
    assert_eq!(t.run("HSTRLEN h a"), int(2));
    assert_eq!(t.run("HEXISTS h a"), int(1));
    assert_eq!(t.run("HEXISTS h z"), int(0));
    assert_eq!(t.run("HEXISTS nope z"), int(0));
    assert_eq!(t.run("HDEL h a zz"), int(1));
    assert_eq!(t.run("HDEL nope a"), int(0));
    assert_eq!(t.run("HDEL h b c"), int(2));
    assert_eq!(t.run("EXISTS h"), int(0), "an emptied hash is deleted");
    assert_eq!(t.run("HMSET h a 1 b 2"), Reply::Ok);
    assert_eq!(
        t.run("HMSET h a"),
        err("ERR wrong number of arguments for 'hmset' command")
    );
    assert_eq!(t.run("HSETNX h a 5"), int(0));
    assert_eq!(t.run("HSETNX h z 5"), int(1));
    assert_eq!(t.run("HGET h z"), bulk("5"));
    t.run("SET s v");
    for cmd in [
        "HSET s a 1",
        "HGET s a",
        "HMGET s a",
        "HGETALL s",
        "HDEL s a",
        "HEXISTS s a",
        "HLEN s",
        "HINCRBY s a 1",
    ] {
        assert_eq!(t.run(cmd), err(WRONGTYPE), "{cmd}");
    }
}

#[test]
fn hincrby() {
    let mut t = T::new();
    assert_eq!(t.run("HINCRBY h n 5"), int(5));
    assert_eq!(t.run("HINCRBY h n -7"), int(-2));
    assert_eq!(t.run("HGET h n"), bulk("-2"));
    t.run("HSET h s abc");
    assert_eq!(t.run("HINCRBY h s 1"), err("ERR hash value is not an integer"));
    t.run("HSET h s 9223372036854775807");
    assert_eq!(
        t.run("HINCRBY h s 1"),
        err("ERR increment or decrement would overflow")
    );
    assert_eq!(t.run("HINCRBY h s x"), err(NOT_INT));
}

// ---------------------------------------------------------------- lists

#[test]
fn push_pop_range() {
    let mut t = T::new();
    assert_eq!(t.run("RPUSH l a b c"), int(3));
    assert_eq!(t.run("LPUSH l x y"), int(5));
    assert_eq!(t.run("LRANGE l 0 -1"), arr(&["y", "x", "a", "b", "c"]));
    assert_eq!(t.run("LRANGE l 1 2"), arr(&["x", "a"]));
    assert_eq!(t.run("LRANGE l -2 -1"), arr(&["b", "c"]));
    assert_eq!(t.run("LRANGE l -100 100"), arr(&["y", "x", "a", "b", "c"]));
    assert_eq!(t.run("LRANGE l 3 1"), arr(&[]));
    assert_eq!(t.run("LRANGE l 5 10"), arr(&[]));
    assert_eq!(t.run("LRANGE l -1 -2"), arr(&[]));
    assert_eq!(t.run("LRANGE nope 0 -1"), arr(&[]));
    assert_eq!(t.run("LRANGE l a 1"), err(NOT_INT));
    assert_eq!(t.run("LINDEX l 0"), bulk("y"));
    assert_eq!(t.run("LINDEX l -1"), bulk("c"));
    assert_eq!(t.run("LINDEX l 5"), Reply::Nil);
    assert_eq!(t.run("LINDEX l -6"), Reply::Nil);
    assert_eq!(t.run("LLEN l"), int(5));
    assert_eq!(t.run("LLEN nope"), int(0));
    assert_eq!(t.run("LPOP l"), bulk("y"));
    assert_eq!(t.run("RPOP l"), bulk("c"));
    assert_eq!(t.run("LPOP l 0"), Reply::Array(vec![]));
    assert_eq!(t.run("RPOP l 2"), arr(&["b", "a"]));
    assert_eq!(t.run("LPOP l 10"), arr(&["x"]));
    assert_eq!(t.run("EXISTS l"), int(0), "an emptied list is deleted");
    assert_eq!(t.run("LPOP l"), Reply::Nil);
    assert_eq!(t.run("LPOP l 1"), Reply::NilArray);
    assert_eq!(t.run("LPOP l 0"), Reply::NilArray);
    assert_eq!(
        t.run("LPOP l -1"),
        err("ERR value is out of range, must be positive")
    );
    assert_eq!(
        t.run("LPOP l x"),
        err("ERR value is out of range, must be positive")
    );
    t.run("SET s v");
    for cmd in [
        "LPUSH s a",
        "RPUSH s a",
        "LPOP s",
        "RPOP s 0",
        "LRANGE s 0 1",
        "LLEN s",
        "LINDEX s 0",
    ] {
        assert_eq!(t.run(cmd), err(WRONGTYPE), "{cmd}");
    }
}

// ---------------------------------------------------------------- sets

#[test]
fn set_commands() {
    let mut t = T::new();
    assert_eq!(t.run("SADD s b a c a"), int(3));
    assert_eq!(t.run("SADD s a d"), int(1));
    assert_eq!(
        t.run("SMEMBERS s"),
        Reply::Set(vec![bulk("a"), bulk("b"), bulk("c"), bulk("d")])
    );
    assert_eq!(t.run("SMEMBERS nope"), Reply::Set(vec![]));
    assert_eq!(t.run("SISMEMBER s a"), int(1));
    assert_eq!(t.run("SISMEMBER s z"), int(0));
    assert_eq!(t.run("SISMEMBER nope z"), int(0));
    assert_eq!(t.run("SCARD s"), int(4));
    assert_eq!(t.run("SCARD nope"), int(0));
    assert_eq!(t.run("SREM s a z"), int(1));
    assert_eq!(t.run("SREM nope a"), int(0));
    assert_eq!(t.run("SREM s b c d"), int(3));
    assert_eq!(t.run("EXISTS s"), int(0), "an emptied set is deleted");
    t.run("SET k v");
    for cmd in ["SADD k a", "SREM k a", "SMEMBERS k", "SISMEMBER k a", "SCARD k"] {
        assert_eq!(t.run(cmd), err(WRONGTYPE), "{cmd}");
    }
}

// ---------------------------------------------------------------- db-level

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

/// APPEND cannot build a string larger than the largest request (it could build 512 MiB,
/// which no peer frame carries back to a follower's client).
#[test]
fn append_stops_at_the_largest_request() {
    let mut t = T::new();
    let max = super::MAX_REQUEST_SIZE as usize;
    let value = vec![b'v'; max - 1];
    assert_eq!(t.args(&[b"SET", b"k", &value]), Reply::Ok);
    drop(value);
    assert_eq!(t.run("APPEND k x"), int(max as i64));
    assert_eq!(
        t.run("APPEND k x"),
        err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    );
    assert_eq!(t.run("STRLEN k"), int(max as i64));
}
