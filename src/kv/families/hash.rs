//! Hashes (Redis's `hash` family): HSET, HMSET, HSETNX, HGET, HMGET, HGETALL, HKEYS, HVALS,
//! HDEL, HEXISTS, HINCRBY, HLEN and HSTRLEN — their parsing and their application to the key
//! space.

use bytes::Bytes;

use crate::kv::args::{pairs, Args};
use crate::kv::cmd::Op;
use crate::kv::db::{bulks, int, Db, Outcome, Res, HASH_FIELD_OVERHEAD};
use crate::kv::num::parse_i64;
use crate::kv::reply::{self, Reply};

/// Parses `a` if it is a hash command.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    let name = a.name;
    let args = a.args;
    Ok(Some(match name {
        "hset" | "hmset" => {
            a.arity(-4)?;
            if args.len() % 2 == 1 {
                return Err(Reply::wrong_arity(name));
            }
            let pairs = pairs(&args[2..]);
            if name == "hset" {
                Op::HSet { key: a.key(), pairs }
            } else {
                Op::HMSet { key: a.key(), pairs }
            }
        }
        "hsetnx" => {
            a.arity(4)?;
            Op::HSetNx {
                key: a.key(),
                field: a.at(2),
                value: a.at(3),
            }
        }
        "hget" => {
            a.arity(3)?;
            Op::HGet {
                key: a.key(),
                field: a.at(2),
            }
        }
        "hmget" => {
            a.arity(-3)?;
            Op::HMGet {
                key: a.key(),
                fields: a.from(2),
            }
        }
        "hgetall" => {
            a.arity(2)?;
            Op::HGetAll { key: a.key() }
        }
        "hkeys" => {
            a.arity(2)?;
            Op::HKeys { key: a.key() }
        }
        "hvals" => {
            a.arity(2)?;
            Op::HVals { key: a.key() }
        }
        "hdel" => {
            a.arity(-3)?;
            Op::HDel {
                key: a.key(),
                fields: a.from(2),
            }
        }
        "hexists" => {
            a.arity(3)?;
            Op::HExists {
                key: a.key(),
                field: a.at(2),
            }
        }
        "hincrby" => {
            a.arity(4)?;
            Op::HIncrBy {
                key: a.key(),
                field: a.at(2),
                delta: a.int(3)?,
            }
        }
        "hlen" => {
            a.arity(2)?;
            Op::HLen { key: a.key() }
        }
        "hstrlen" => {
            a.arity(3)?;
            Op::HStrLen {
                key: a.key(),
                field: a.at(2),
            }
        }
        _ => return Ok(None),
    }))
}

/// Runs `op` if it is a hash read (`Ok(None)` if it is not one).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::HGet { key, field } => db
            .get_hash(key, now)?
            .and_then(|h| h.get(field))
            .map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
        Op::HMGet { key, fields } => {
            let h = db.get_hash(key, now)?;
            Reply::Array(
                fields
                    .iter()
                    .map(|f| {
                        h.and_then(|h| h.get(f))
                            .map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
                    })
                    .collect(),
            )
        }
        Op::HGetAll { key } => Reply::Map(
            db.get_hash(key, now)?
                .into_iter()
                .flatten()
                .map(|(f, v)| (Reply::Bulk(f.clone()), Reply::Bulk(v.clone())))
                .collect(),
        ),
        Op::HKeys { key } => Reply::Array(bulks(db.get_hash(key, now)?.into_iter().flat_map(|h| h.keys()))),
        Op::HVals { key } => Reply::Array(bulks(db.get_hash(key, now)?.into_iter().flat_map(|h| h.values()))),
        Op::HExists { key, field } => Reply::Int(i64::from(
            db.get_hash(key, now)?.is_some_and(|h| h.contains_key(field)),
        )),
        Op::HLen { key } => int(db.get_hash(key, now)?.map_or(0, |h| h.len())),
        Op::HStrLen { key, field } => int(db
            .get_hash(key, now)?
            .and_then(|h| h.get(field))
            .map_or(0, |v| v.len())),
        _ => return Ok(None),
    }))
}

/// Applies `op` if it is a hash write (`Ok(None)` if it is not one; expired keys it touches
/// were already purged).
pub fn write(db: &mut Db, op: &Op, _now: i64) -> Outcome {
    Ok(Some(match op {
        Op::HSet { key, pairs } => int(hset(db, key, pairs)?),
        Op::HMSet { key, pairs } => {
            hset(db, key, pairs)?;
            Reply::Ok
        }
        Op::HSetNx { key, field, value } => hsetnx(db, key, field, value)?,
        Op::HDel { key, fields } => hdel(db, key, fields)?,
        Op::HIncrBy { key, field, delta } => hincrby(db, key, field, *delta)?,
        _ => return Ok(None),
    }))
}

fn hsetnx(db: &mut Db, key: &Bytes, field: &Bytes, value: &Bytes) -> Res {
    let Some(h) = db.hash_mut(key, true)? else {
        return Ok(Reply::Int(0));
    };
    if h.contains_key(field) {
        return Ok(Reply::Int(0));
    }
    h.insert(field.clone(), value.clone());
    db.account(HASH_FIELD_OVERHEAD + field.len() + value.len(), 0);
    Ok(Reply::Int(1))
}

fn hdel(db: &mut Db, key: &Bytes, fields: &[Bytes]) -> Res {
    let Some(h) = db.hash_mut(key, false)? else {
        return Ok(Reply::Int(0));
    };
    let (mut n, mut freed) = (0, 0);
    for f in fields {
        if let Some(v) = h.remove(f) {
            n += 1;
            freed += HASH_FIELD_OVERHEAD + f.len() + v.len();
        }
    }
    db.account(0, freed);
    db.drop_if_empty(key);
    Ok(int(n))
}

fn hincrby(db: &mut Db, key: &Bytes, field: &Bytes, delta: i64) -> Res {
    let Some(h) = db.hash_mut(key, true)? else {
        return Ok(Reply::Nil);
    };
    let old = match h.get(field) {
        None => None,
        Some(v) => Some(parse_i64(v).ok_or_else(|| Reply::error(reply::HASH_NOT_INTEGER))?),
    };
    let new = old
        .unwrap_or(0)
        .checked_add(delta)
        .ok_or_else(|| Reply::error(reply::OVERFLOW))?;
    let text = Bytes::from(new.to_string());
    let added = text.len()
        + if old.is_none() {
            HASH_FIELD_OVERHEAD + field.len()
        } else {
            0
        };
    let removed = h.insert(field.clone(), text).map_or(0, |v| v.len());
    db.account(added, removed);
    Ok(Reply::Int(new))
}

fn hset(db: &mut Db, key: &Bytes, pairs: &[(Bytes, Bytes)]) -> Result<usize, Reply> {
    let Some(h) = db.hash_mut(key, true)? else {
        return Ok(0);
    };
    let (mut new, mut added, mut removed) = (0, 0, 0);
    for (f, v) in pairs {
        added += v.len();
        match h.insert(f.clone(), v.clone()) {
            Some(old) => removed += old.len(),
            None => {
                new += 1;
                added += HASH_FIELD_OVERHEAD + f.len();
            }
        }
    }
    db.account(added, removed);
    db.drop_if_empty(key);
    Ok(new)
}

#[cfg(test)]
mod tests {
    //! The hash commands against the replies Redis 7 gives.

    use crate::kv::reply::Reply;
    use crate::kv::tests::*;

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
}
