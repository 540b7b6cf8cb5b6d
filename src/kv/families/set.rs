//! Sets (Redis's `set` family): SADD, SREM, SMEMBERS, SISMEMBER and SCARD — their parsing and
//! their application to the key space.

use bytes::Bytes;

use crate::kv::args::Args;
use crate::kv::cmd::Op;
use crate::kv::db::{bulks, int, Db, Outcome, Res, SET_MEMBER_OVERHEAD};
use crate::kv::reply::Reply;

/// Parses `a` if it is a set command.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    Ok(Some(match a.name {
        "sadd" => {
            a.arity(-3)?;
            Op::SAdd {
                key: a.key(),
                members: a.from(2),
            }
        }
        "srem" => {
            a.arity(-3)?;
            Op::SRem {
                key: a.key(),
                members: a.from(2),
            }
        }
        "smembers" => {
            a.arity(2)?;
            Op::SMembers { key: a.key() }
        }
        "sismember" => {
            a.arity(3)?;
            Op::SIsMember {
                key: a.key(),
                member: a.at(2),
            }
        }
        "scard" => {
            a.arity(2)?;
            Op::SCard { key: a.key() }
        }
        _ => return Ok(None),
    }))
}

/// Runs `op` if it is a set read (`Ok(None)` if it is not one).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::SMembers { key } => Reply::Set(bulks(db.get_set(key, now)?.into_iter().flatten())),
        Op::SIsMember { key, member } => Reply::Int(i64::from(
            db.get_set(key, now)?.is_some_and(|s| s.contains(member)),
        )),
        Op::SCard { key } => int(db.get_set(key, now)?.map_or(0, |s| s.len())),
        _ => return Ok(None),
    }))
}

/// Applies `op` if it is a set write (`Ok(None)` if it is not one; expired keys it touches
/// were already purged).
pub fn write(db: &mut Db, op: &Op, _now: i64) -> Outcome {
    Ok(Some(match op {
        Op::SAdd { key, members } => sadd(db, key, members)?,
        Op::SRem { key, members } => srem(db, key, members)?,
        _ => return Ok(None),
    }))
}

fn sadd(db: &mut Db, key: &Bytes, members: &[Bytes]) -> Res {
    let Some(s) = db.set_mut(key, true)? else {
        return Ok(Reply::Int(0));
    };
    let (mut n, mut added) = (0, 0);
    for m in members {
        if s.insert(m.clone()) {
            n += 1;
            added += SET_MEMBER_OVERHEAD + m.len();
        }
    }
    db.account(added, 0);
    db.drop_if_empty(key);
    Ok(int(n))
}

fn srem(db: &mut Db, key: &Bytes, members: &[Bytes]) -> Res {
    let Some(s) = db.set_mut(key, false)? else {
        return Ok(Reply::Int(0));
    };
    let (mut n, mut freed) = (0, 0);
    for m in members {
        if s.remove(m) {
            n += 1;
            freed += SET_MEMBER_OVERHEAD + m.len();
        }
    }
    db.account(0, freed);
    db.drop_if_empty(key);
    Ok(int(n))
}

#[cfg(test)]
mod tests {
    //! The set commands against the replies Redis 7 gives.

    use crate::kv::reply::Reply;
    use crate::kv::tests::*;

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
}
