//! The key-space commands of Redis's `server` family: DBSIZE and FLUSHDB — their parsing and
//! their application. (The rest of the family, INFO and the like, is the store server's.)

use crate::kv::args::{eq_ic, Args};
use crate::kv::cmd::Op;
use crate::kv::db::{int, Db, Outcome};
use crate::kv::reply::{self, Reply};

/// Parses `a` if it is DBSIZE or FLUSHDB.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    let args = a.args;
    Ok(Some(match a.name {
        "dbsize" => {
            a.arity(1)?;
            Op::DbSize
        }
        "flushdb" => {
            a.arity(-1)?;
            // FLUSHDB [ASYNC|SYNC]: both mean "now" here (the apply is one log entry anyway).
            match args.len() {
                1 => {}
                2 if eq_ic(&args[1], "async") || eq_ic(&args[1], "sync") => {}
                _ => return Err(Reply::error(reply::SYNTAX)),
            }
            Op::FlushDb
        }
        _ => return Ok(None),
    }))
}

/// Runs DBSIZE (`Ok(None)` for any other op).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(match op {
        Op::DbSize => Some(int(db.live_len(now))),
        _ => None,
    })
}

/// Applies FLUSHDB (`Ok(None)` for any other op).
pub fn write(db: &mut Db, op: &Op, _now: i64) -> Outcome {
    Ok(match op {
        Op::FlushDb => {
            db.flush();
            Some(Reply::Ok)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    //! DBSIZE and FLUSHDB against the replies Redis 7 gives.

    use crate::kv::reply::Reply;
    use crate::kv::tests::*;

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
}
