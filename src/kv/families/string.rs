//! Strings (Redis's `string` family): GET, SET and its variants, GETSET, GETDEL, MGET, MSET,
//! MSETNX, APPEND, STRLEN, INCR/DECR/INCRBY/DECRBY and INCRBYFLOAT — their parsing and their
//! application to the key space.

use bytes::Bytes;

use crate::kv::args::{eq_ic, pairs, Args};
use crate::kv::cmd::{Expire, Op, SetCond};
use crate::kv::db::{int, Db, Outcome, Res, Value};
use crate::kv::num::{format_f64, parse_f64, parse_i64};
use crate::kv::reply::{self, Reply};

/// Largest string APPEND may build: Redis uses `proto-max-bulk-len`, the largest request
/// here, so a value can always be read back through a follower (its reply travels in one
/// peer frame). A constant, not the configured `max-request-size`: applying must give the
/// same result on every node.
const MAX_STRING_LEN: usize = crate::sizes::MAX_REQUEST_SIZE as usize;

/// Parses `a` if it is a string command.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    let name = a.name;
    let args = a.args;
    Ok(Some(match name {
        "get" => {
            a.arity(2)?;
            Op::Get { key: a.key() }
        }
        "set" => {
            a.arity(-3)?;
            parse_set(a)?
        }
        "setnx" => {
            a.arity(3)?;
            Op::SetNx {
                key: a.key(),
                value: a.at(2),
            }
        }
        "setex" | "psetex" => {
            a.arity(4)?;
            let seconds = name == "setex";
            let ms = relative_expire(&a.at(2), seconds, name)?;
            let (key, value) = (a.key(), a.at(3));
            let expire = Expire::RelativeMs(ms);
            if seconds {
                Op::SetEx { key, value, expire }
            } else {
                Op::PSetEx { key, value, expire }
            }
        }
        "getset" => {
            a.arity(3)?;
            Op::GetSet {
                key: a.key(),
                value: a.at(2),
            }
        }
        "getdel" => {
            a.arity(2)?;
            Op::GetDel { key: a.key() }
        }
        "mget" => {
            a.arity(-2)?;
            Op::MGet { keys: a.from(1) }
        }
        "mset" | "msetnx" => {
            a.arity(-3)?;
            // Key-value pairs: an even number of arguments after the name.
            if args.len().is_multiple_of(2) {
                return Err(Reply::wrong_arity(name));
            }
            let pairs = pairs(&args[1..]);
            if name == "mset" {
                Op::MSet { pairs }
            } else {
                Op::MSetNx { pairs }
            }
        }
        "append" => {
            a.arity(3)?;
            Op::Append {
                key: a.key(),
                value: a.at(2),
            }
        }
        "strlen" => {
            a.arity(2)?;
            Op::StrLen { key: a.key() }
        }
        "incr" | "decr" => {
            a.arity(2)?;
            Op::IncrBy {
                key: a.key(),
                delta: if name == "incr" { 1 } else { -1 },
            }
        }
        "incrby" => {
            a.arity(3)?;
            Op::IncrBy {
                key: a.key(),
                delta: a.int(2)?,
            }
        }
        "decrby" => {
            a.arity(3)?;
            let by = a.int(2)?;
            let delta = by
                .checked_neg()
                .ok_or_else(|| Reply::error(reply::DECR_OVERFLOW))?;
            Op::IncrBy { key: a.key(), delta }
        }
        "incrbyfloat" => {
            a.arity(3)?;
            let delta = parse_f64(&args[2]).ok_or_else(|| Reply::error(reply::NOT_FLOAT))?;
            Op::IncrByFloat { key: a.key(), delta }
        }
        _ => return Ok(None),
    }))
}

/// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL], following Redis's
/// `parseExtendedStringArgumentsOrReply`: options in any order, a repeated option is allowed
/// (the last time wins), conflicting ones are a syntax error.
fn parse_set(a: &Args<'_>) -> Result<Op, Reply> {
    #[derive(PartialEq, Clone, Copy)]
    enum Unit {
        Ex,
        Px,
        ExAt,
        PxAt,
    }
    let args = a.args;
    let mut cond = SetCond::Always;
    let mut get = false;
    let mut keep_ttl = false;
    let mut expire: Option<(Unit, &Bytes)> = None;
    let mut j = 3;
    while j < args.len() {
        let opt = &args[j];
        let next = args.get(j + 1);
        let unit = expire.map(|(u, _)| u);
        if eq_ic(opt, "nx") && cond != SetCond::Xx {
            cond = SetCond::Nx;
        } else if eq_ic(opt, "xx") && cond != SetCond::Nx {
            cond = SetCond::Xx;
        } else if eq_ic(opt, "get") {
            get = true;
        } else if eq_ic(opt, "keepttl") && unit.is_none() {
            keep_ttl = true;
        } else if let (Some(u), Some(next)) = (expire_unit(opt), next) {
            // Only the same unit may be repeated, and never together with KEEPTTL.
            let u = match u {
                0 => Unit::Ex,
                1 => Unit::Px,
                2 => Unit::ExAt,
                _ => Unit::PxAt,
            };
            if keep_ttl || unit.is_some_and(|prev| prev != u) {
                return Err(Reply::error(reply::SYNTAX));
            }
            expire = Some((u, next));
            j += 1;
        } else {
            return Err(Reply::error(reply::SYNTAX));
        }
        j += 1;
    }
    let expire = match expire {
        None => Expire::None,
        Some((Unit::Ex, t)) => Expire::RelativeMs(relative_expire(t, true, "set")?),
        Some((Unit::Px, t)) => Expire::RelativeMs(relative_expire(t, false, "set")?),
        Some((Unit::ExAt, t)) => Expire::AbsoluteMs(relative_expire(t, true, "set")?),
        Some((Unit::PxAt, t)) => Expire::AbsoluteMs(relative_expire(t, false, "set")?),
    };
    Ok(Op::Set {
        key: a.key(),
        value: a.at(2),
        expire,
        cond,
        get,
        keep_ttl,
    })
}

/// EX=0, PX=1, EXAT=2, PXAT=3.
fn expire_unit(opt: &[u8]) -> Option<u8> {
    ["ex", "px", "exat", "pxat"]
        .iter()
        .position(|w| eq_ic(opt, w))
        .map(|p| p as u8)
}

/// A SET-style expire argument (SET EX/PX/EXAT/PXAT, SETEX, PSETEX) in milliseconds: must be a
/// positive integer whose conversion to ms does not overflow (Redis's
/// `getExpireMillisecondsOrReply`). Despite the name, also used for the absolute EXAT/PXAT.
fn relative_expire(arg: &[u8], seconds: bool, cmd: &str) -> Result<i64, Reply> {
    let n = parse_i64(arg).ok_or_else(|| Reply::error(reply::NOT_INTEGER))?;
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(Reply::invalid_expire(cmd));
    }
    Ok(if seconds { n * 1000 } else { n })
}

/// Runs `op` if it is a string read (`Ok(None)` if it is not one).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Get { key } => db
            .get_str(key, now)?
            .map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
        Op::MGet { keys } => Reply::Array(
            keys.iter()
                .map(|k| match db.get_str(k, now) {
                    Ok(Some(v)) => Reply::Bulk(v.clone()),
                    _ => Reply::Nil,
                })
                .collect(),
        ),
        Op::StrLen { key } => int(db.get_str(key, now)?.map_or(0, |v| v.len())),
        _ => return Ok(None),
    }))
}

/// Applies `op` if it is a string write (`Ok(None)` if it is not one; expired keys it
/// touches were already purged).
pub fn write(db: &mut Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Set {
            key,
            value,
            expire,
            cond,
            get,
            keep_ttl,
        } => set(db, key, value, *expire, *cond, *get, *keep_ttl, "set", now)?,
        Op::SetNx { key, value } => {
            let r = set(
                db,
                key,
                value,
                Expire::None,
                SetCond::Nx,
                false,
                false,
                "setnx",
                now,
            )?;
            Reply::Int(i64::from(r == Reply::Ok))
        }
        Op::SetEx { key, value, expire } => set(
            db,
            key,
            value,
            *expire,
            SetCond::Always,
            false,
            false,
            "setex",
            now,
        )?,
        Op::PSetEx { key, value, expire } => set(
            db,
            key,
            value,
            *expire,
            SetCond::Always,
            false,
            false,
            "psetex",
            now,
        )?,
        Op::GetSet { key, value } => {
            let old = db.get_str(key, now)?.cloned();
            db.put(key, Value::Str(value.clone()), None);
            old.map_or(Reply::Nil, Reply::Bulk)
        }
        Op::GetDel { key } => {
            let old = db.get_str(key, now)?.cloned();
            if old.is_some() {
                db.remove(key);
            }
            old.map_or(Reply::Nil, Reply::Bulk)
        }
        Op::MSet { pairs } => {
            for (k, v) in pairs {
                db.put(k, Value::Str(v.clone()), None);
            }
            Reply::Ok
        }
        Op::MSetNx { pairs } => {
            if pairs.iter().any(|(k, _)| db.is_stored(k)) {
                return Ok(Some(Reply::Int(0)));
            }
            for (k, v) in pairs {
                db.put(k, Value::Str(v.clone()), None);
            }
            Reply::Int(1)
        }
        Op::Append { key, value } => append(db, key, value, now)?,
        Op::IncrBy { key, delta } => incr_by(db, key, *delta, now)?,
        Op::IncrByFloat { key, delta } => incr_by_float(db, key, *delta, now)?,
        _ => return Ok(None),
    }))
}

fn append(db: &mut Db, key: &Bytes, value: &Bytes, now: i64) -> Res {
    let old = db.get_str(key, now)?;
    let len = old.map_or(0, |o| o.len()) + value.len();
    if len > MAX_STRING_LEN {
        return Err(Reply::error(reply::STRING_TOO_LONG));
    }
    let mut new = Vec::with_capacity(len);
    new.extend_from_slice(old.map_or(&[][..], |o| o.as_ref()));
    new.extend_from_slice(value);
    db.put_keep_ttl(key, Value::Str(Bytes::from(new)));
    Ok(int(len))
}

fn incr_by(db: &mut Db, key: &Bytes, delta: i64, now: i64) -> Res {
    let old = match db.get_str(key, now)? {
        None => 0,
        Some(s) => parse_i64(s).ok_or_else(|| Reply::error(reply::NOT_INTEGER))?,
    };
    let new = old
        .checked_add(delta)
        .ok_or_else(|| Reply::error(reply::OVERFLOW))?;
    db.put_keep_ttl(key, Value::Str(Bytes::from(new.to_string())));
    Ok(Reply::Int(new))
}

fn incr_by_float(db: &mut Db, key: &Bytes, delta: f64, now: i64) -> Res {
    let old = match db.get_str(key, now)? {
        None => 0.0,
        Some(s) => parse_f64(s).ok_or_else(|| Reply::error(reply::NOT_FLOAT))?,
    };
    let new = old + delta;
    if !new.is_finite() {
        return Err(Reply::error(reply::NAN_OR_INF));
    }
    let text = Bytes::from(format_f64(new));
    db.put_keep_ttl(key, Value::Str(text.clone()));
    Ok(Reply::Bulk(text))
}

/// SET and its variants, as Redis's `setGenericCommand`.
#[allow(clippy::too_many_arguments)]
fn set(
    db: &mut Db,
    key: &Bytes,
    value: &Bytes,
    expire: Expire,
    cond: SetCond,
    get: bool,
    keep_ttl: bool,
    cmd: &str,
    now: i64,
) -> Res {
    let at = Db::resolve(expire, now, cmd)?;
    // With GET the old value is the reply, even when NX/XX then blocks the write.
    let old = if get {
        Some(db.get_str(key, now)?.cloned())
    } else {
        None
    };
    let found = db.is_stored(key);
    let blocked = match cond {
        SetCond::Always => false,
        SetCond::Nx => found,
        SetCond::Xx => !found,
    };
    let reply = match old {
        Some(v) => v.map_or(Reply::Nil, Reply::Bulk),
        None if blocked => Reply::Nil,
        None => Reply::Ok,
    };
    if blocked {
        return Ok(reply);
    }
    match at {
        // An expiry already in the past (EXAT/PXAT) leaves no key behind.
        Some(t) if t <= now => {
            db.remove(key);
        }
        _ if keep_ttl => db.put_keep_ttl(key, Value::Str(value.clone())),
        _ => db.put(key, Value::Str(value.clone()), at),
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    //! The string commands against the replies Redis 7 gives.

    use crate::kv::reply::Reply;
    use crate::kv::tests::*;

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

    /// APPEND cannot build a string larger than the largest request (it could build 512 MiB,
    /// which no peer frame carries back to a follower's client).
    #[test]
    fn append_stops_at_the_largest_request() {
        let mut t = T::new();
        let max = crate::sizes::MAX_REQUEST_SIZE as usize;
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
}
