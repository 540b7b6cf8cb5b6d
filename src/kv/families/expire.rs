//! Expiry (from Redis's `generic` family): EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, PERSIST, TTL,
//! PTTL, EXPIRETIME and PEXPIRETIME — their parsing and their application to the key space.
//! The expiry index itself, lazy and active expiry are the key space's ([`crate::kv::db`]).

use bytes::Bytes;

use crate::kv::args::{eq_ic, Args};
use crate::kv::cmd::{Expire, ExpireCond, Op};
use crate::kv::db::{Db, Outcome, Res};
use crate::kv::reply::{self, Reply};

/// Parses `a` if it is an expiry command.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    Ok(Some(match a.name {
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            a.arity(-3)?;
            parse_expire(a)?
        }
        "persist" => {
            a.arity(2)?;
            Op::Persist { key: a.key() }
        }
        "ttl" => {
            a.arity(2)?;
            Op::Ttl { key: a.key() }
        }
        "pttl" => {
            a.arity(2)?;
            Op::PTtl { key: a.key() }
        }
        "expiretime" => {
            a.arity(2)?;
            Op::ExpireTime { key: a.key() }
        }
        "pexpiretime" => {
            a.arity(2)?;
            Op::PExpireTime { key: a.key() }
        }
        _ => return Ok(None),
    }))
}

/// EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key time [NX|XX|GT|LT] (Redis's `expireGenericCommand`:
/// options first, then the time; negative times are allowed and delete the key).
fn parse_expire(a: &Args<'_>) -> Result<Op, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a.args[3..] {
        if eq_ic(opt, "nx") {
            nx = true;
        } else if eq_ic(opt, "xx") {
            xx = true;
        } else if eq_ic(opt, "gt") {
            gt = true;
        } else if eq_ic(opt, "lt") {
            lt = true;
        } else {
            // Echoed cut to 128 bytes, as Redis prints arguments (`%.128s`).
            return Err(Reply::Error(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(opt.get(..128).unwrap_or(opt))
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let cond = if nx {
        ExpireCond::Nx
    } else if xx && lt {
        ExpireCond::XxLt
    } else if gt {
        ExpireCond::Gt
    } else if lt {
        ExpireCond::Lt
    } else if xx {
        ExpireCond::Xx
    } else {
        ExpireCond::Always
    };
    let seconds = a.name == "expire" || a.name == "expireat";
    let mut t = a.int(2)?;
    if seconds {
        t = t.checked_mul(1000).ok_or_else(|| Reply::invalid_expire(a.name))?;
    }
    let key = a.key();
    Ok(match a.name {
        "expire" => Op::Expire {
            key,
            at: Expire::RelativeMs(t),
            cond,
        },
        "pexpire" => Op::PExpire {
            key,
            at: Expire::RelativeMs(t),
            cond,
        },
        "expireat" => Op::ExpireAt {
            key,
            at: Expire::AbsoluteMs(t),
            cond,
        },
        _ => Op::PExpireAt {
            key,
            at: Expire::AbsoluteMs(t),
            cond,
        },
    })
}

/// Runs `op` if it is an expiry read (`Ok(None)` if it is not one).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Ttl { key } => ttl(db, key, now, false, false),
        Op::PTtl { key } => ttl(db, key, now, true, false),
        Op::ExpireTime { key } => ttl(db, key, now, false, true),
        Op::PExpireTime { key } => ttl(db, key, now, true, true),
        _ => return Ok(None),
    }))
}

/// Applies `op` if it is an expiry write (`Ok(None)` if it is not one; expired keys it
/// touches were already purged).
pub fn write(db: &mut Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Expire { key, at, cond } => expire(db, key, *at, *cond, "expire", now)?,
        Op::PExpire { key, at, cond } => expire(db, key, *at, *cond, "pexpire", now)?,
        Op::ExpireAt { key, at, cond } => expire(db, key, *at, *cond, "expireat", now)?,
        Op::PExpireAt { key, at, cond } => expire(db, key, *at, *cond, "pexpireat", now)?,
        Op::Persist { key } => {
            if db.expire_at(key).is_some() {
                db.set_expire(key, None);
                Reply::Int(1)
            } else {
                Reply::Int(0)
            }
        }
        _ => return Ok(None),
    }))
}

/// EXPIRE family, as Redis's `expireGenericCommand`.
fn expire(db: &mut Db, key: &Bytes, at: Expire, cond: ExpireCond, cmd: &str, now: i64) -> Res {
    let Some(when) = Db::resolve(at, now, cmd)? else {
        return Err(Reply::error(reply::SYNTAX));
    };
    if !db.is_stored(key) {
        return Ok(Reply::Int(0));
    }
    let current = db.expire_at(key);
    let pass = match cond {
        ExpireCond::Always => true,
        ExpireCond::Nx => current.is_none(),
        ExpireCond::Xx => current.is_some(),
        // No expiry counts as infinite: never less than a new time, always greater.
        ExpireCond::Gt => current.is_some_and(|c| when > c),
        ExpireCond::Lt => current.is_none_or(|c| when < c),
        ExpireCond::XxLt => current.is_some_and(|c| when < c),
    };
    if !pass {
        return Ok(Reply::Int(0));
    }
    if when <= now {
        db.remove(key);
    } else {
        db.set_expire(key, Some(when));
    }
    Ok(Reply::Int(1))
}

/// TTL/PTTL (relative) and EXPIRETIME/PEXPIRETIME (`absolute`): -2 missing, -1 no expiry;
/// seconds are rounded to the nearest, as Redis does.
fn ttl(db: &Db, key: &[u8], now: i64, ms: bool, absolute: bool) -> Reply {
    let Some(entry) = db.live(key, now) else {
        return Reply::Int(-2);
    };
    let Some(at) = entry.expire_at else {
        return Reply::Int(-1);
    };
    let t = if absolute { at } else { at.saturating_sub(now) }.max(0);
    Reply::Int(if ms { t } else { t.saturating_add(500) / 1000 })
}

#[cfg(test)]
mod tests {
    //! The expiry commands against the replies Redis 7 gives.

    use crate::kv::tests::*;

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
}
