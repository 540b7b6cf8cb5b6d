//! Lists (Redis's `list` family): LPUSH, RPUSH, LPOP, RPOP, LRANGE, LINDEX and LLEN — their
//! parsing and their application to the key space.

use bytes::Bytes;

use crate::kv::args::Args;
use crate::kv::cmd::Op;
use crate::kv::db::{bulks, int, Db, Outcome, Res, LIST_ITEM_OVERHEAD};
use crate::kv::num::parse_i64;
use crate::kv::reply::{self, Reply};

/// Parses `a` if it is a list command.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    let name = a.name;
    let args = a.args;
    Ok(Some(match name {
        "lpush" | "rpush" => {
            a.arity(-3)?;
            Op::Push {
                key: a.key(),
                values: a.from(2),
                left: name == "lpush",
            }
        }
        "lpop" | "rpop" => {
            a.arity(-2)?;
            if args.len() > 3 {
                return Err(Reply::wrong_arity(name));
            }
            let count = match args.get(2) {
                None => None,
                Some(c) => match parse_i64(c) {
                    Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                    _ => return Err(Reply::error(reply::NOT_POSITIVE)),
                },
            };
            Op::Pop {
                key: a.key(),
                count,
                left: name == "lpop",
            }
        }
        "lrange" => {
            a.arity(4)?;
            Op::LRange {
                key: a.key(),
                start: a.int(2)?,
                stop: a.int(3)?,
            }
        }
        "lindex" => {
            a.arity(3)?;
            Op::LIndex {
                key: a.key(),
                index: a.int(2)?,
            }
        }
        "llen" => {
            a.arity(2)?;
            Op::LLen { key: a.key() }
        }
        _ => return Ok(None),
    }))
}

/// Runs `op` if it is a list read (`Ok(None)` if it is not one).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::LRange { key, start, stop } => {
            let Some(list) = db.get_list(key, now)? else {
                return Ok(Some(Reply::Array(Vec::new())));
            };
            Reply::Array(match list_range(list.len(), *start, *stop) {
                Some((from, to)) => bulks(list.range(from..=to)),
                None => Vec::new(),
            })
        }
        Op::LIndex { key, index } => {
            let Some(list) = db.get_list(key, now)? else {
                return Ok(Some(Reply::Nil));
            };
            let len = i64::try_from(list.len()).unwrap_or(i64::MAX);
            let i = if *index < 0 {
                len.saturating_add(*index)
            } else {
                *index
            };
            usize::try_from(i)
                .ok()
                .and_then(|i| list.get(i))
                .map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
        }
        Op::LLen { key } => int(db.get_list(key, now)?.map_or(0, |l| l.len())),
        _ => return Ok(None),
    }))
}

/// Applies `op` if it is a list write (`Ok(None)` if it is not one; expired keys it touches
/// were already purged).
pub fn write(db: &mut Db, op: &Op, _now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Push { key, values, left } => push(db, key, values, *left)?,
        Op::Pop { key, count, left } => pop(db, key, *count, *left)?,
        _ => return Ok(None),
    }))
}

fn push(db: &mut Db, key: &Bytes, values: &[Bytes], left: bool) -> Res {
    let Some(l) = db.list_mut(key, true)? else {
        return Ok(Reply::Int(0));
    };
    let mut added = 0;
    for v in values {
        added += LIST_ITEM_OVERHEAD + v.len();
        if left {
            l.push_front(v.clone());
        } else {
            l.push_back(v.clone());
        }
    }
    let len = l.len();
    db.account(added, 0);
    // Only a hand-built op can push nothing; never keep the empty list it created.
    db.drop_if_empty(key);
    Ok(int(len))
}

/// LPOP/RPOP, as Redis's `popGenericCommand`: without a count one element or nil; with a
/// count an array (null array if the key is missing, empty array for count 0).
fn pop(db: &mut Db, key: &Bytes, count: Option<usize>, left: bool) -> Res {
    let Some(l) = db.list_mut(key, false)? else {
        return Ok(if count.is_some() {
            Reply::NilArray
        } else {
            Reply::Nil
        });
    };
    let n = count.unwrap_or(1).min(l.len());
    let mut out = Vec::with_capacity(n);
    let mut freed = 0;
    for _ in 0..n {
        let v = if left { l.pop_front() } else { l.pop_back() };
        if let Some(v) = v {
            freed += LIST_ITEM_OVERHEAD + v.len();
            out.push(Reply::Bulk(v));
        }
    }
    db.account(0, freed);
    db.drop_if_empty(key);
    Ok(match count {
        Some(_) => Reply::Array(out),
        None => out.pop().unwrap_or(Reply::Nil),
    })
}

/// LRANGE's index normalisation: negative indexes count from the end, out-of-range ones are
/// clamped; `None` for an empty range.
fn list_range(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = i64::try_from(len).ok()?;
    let start = if start < 0 {
        len.saturating_add(start)
    } else {
        start
    }
    .max(0);
    let stop = if stop < 0 { len.saturating_add(stop) } else { stop };
    if start > stop || start >= len {
        return None;
    }
    let stop = stop.min(len - 1);
    Some((usize::try_from(start).ok()?, usize::try_from(stop).ok()?))
}

#[cfg(test)]
mod tests {
    //! The list commands against the replies Redis 7 gives.

    use crate::kv::reply::Reply;
    use crate::kv::tests::*;

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
}
