//! Keys (Redis's `generic` family, less expiry): DEL/UNLINK, EXISTS, TYPE, KEYS, SCAN, RENAME
//! and RENAMENX — their parsing and their application to the key space. SCAN's cursor is
//! described in [`crate::kv::db`].

use std::ops::Bound;

use bytes::Bytes;

use crate::kv::args::{eq_ic, Args};
use crate::kv::cmd::Op;
use crate::kv::db::{int, is_expired, Db, Outcome, Res};
use crate::kv::glob;
use crate::kv::num::{parse_i64, parse_u64};
use crate::kv::reply::{self, Reply};

/// Parses `a` if it is a key command.
pub fn parse(a: &Args<'_>) -> Result<Option<Op>, Reply> {
    Ok(Some(match a.name {
        "del" | "unlink" => {
            a.arity(-2)?;
            Op::Del { keys: a.from(1) }
        }
        "exists" => {
            a.arity(-2)?;
            Op::Exists { keys: a.from(1) }
        }
        "type" => {
            a.arity(2)?;
            Op::Type { key: a.key() }
        }
        "keys" => {
            a.arity(2)?;
            Op::Keys { pattern: a.key() }
        }
        "scan" => {
            a.arity(-2)?;
            parse_scan(a)?
        }
        "rename" => {
            a.arity(3)?;
            Op::Rename {
                key: a.key(),
                new_key: a.at(2),
            }
        }
        "renamenx" => {
            a.arity(3)?;
            Op::RenameNx {
                key: a.key(),
                new_key: a.at(2),
            }
        }
        _ => return Ok(None),
    }))
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type].
fn parse_scan(a: &Args<'_>) -> Result<Op, Reply> {
    let args = a.args;
    let cursor = parse_u64(&args[1]).ok_or_else(|| Reply::error(reply::INVALID_CURSOR))?;
    let mut pattern = None;
    let mut count = 10usize;
    let mut kind = None;
    let mut i = 2;
    while i < args.len() {
        let (opt, val) = match args.get(i + 1) {
            Some(v) => (&args[i], v),
            None => return Err(Reply::error(reply::SYNTAX)),
        };
        if eq_ic(opt, "count") {
            let n = parse_i64(val).ok_or_else(|| Reply::error(reply::NOT_INTEGER))?;
            if n < 1 {
                return Err(Reply::error(reply::SYNTAX));
            }
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if eq_ic(opt, "match") {
            // "*" matches everything: skip the matcher, as Redis does.
            pattern = (val.as_ref() != b"*").then(|| val.clone());
        } else if eq_ic(opt, "type") {
            kind = Some(val.clone());
        } else {
            return Err(Reply::error(reply::SYNTAX));
        }
        i += 2;
    }
    Ok(Op::Scan {
        cursor,
        pattern,
        count,
        kind,
    })
}

/// Runs `op` if it is a key read (`Ok(None)` if it is not one).
pub fn read(db: &Db, op: &Op, now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Exists { keys } => int(keys.iter().filter(|k| db.live(k, now).is_some()).count()),
        Op::Type { key } => Reply::Simple(
            db.live(key, now)
                .map_or("none", |e| e.value.type_name())
                .to_owned(),
        ),
        Op::Keys { pattern } => keys(db, pattern, now),
        Op::Scan {
            cursor,
            pattern,
            count,
            kind,
        } => scan(db, *cursor, pattern.as_deref(), *count, kind, now),
        _ => return Ok(None),
    }))
}

/// Applies `op` if it is a key write (`Ok(None)` if it is not one; expired keys it touches
/// were already purged).
pub fn write(db: &mut Db, op: &Op, _now: i64) -> Outcome {
    Ok(Some(match op {
        Op::Del { keys } => int(keys.iter().filter(|k| db.remove(k).is_some()).count()),
        Op::Rename { key, new_key } => rename(db, key, new_key, false)?,
        Op::RenameNx { key, new_key } => rename(db, key, new_key, true)?,
        _ => return Ok(None),
    }))
}

/// KEYS: matching live keys, sorted. Only the range sharing the pattern's literal prefix
/// is visited.
fn keys(db: &Db, pattern: &[u8], now: i64) -> Reply {
    let prefix = glob::literal_prefix(pattern);
    let all = pattern == b"*";
    let out = db
        .entries
        .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, e)| !is_expired(e.expire_at, now) && (all || glob::matches(pattern, k)))
        .map(|(k, _)| Reply::Bulk(k.clone()))
        .collect();
    Reply::Array(out)
}

/// SCAN: see [`crate::kv::db`] for the cursor.
fn scan(db: &Db, cursor: u64, pattern: Option<&[u8]>, count: usize, kind: &Option<Bytes>, now: i64) -> Reply {
    let mut out = Vec::new();
    let mut next = 0u64;
    for (visited, (&seq, key)) in db.order.range(cursor..).enumerate() {
        if visited == count {
            next = seq;
            break;
        }
        let Some(entry) = db.entries.get(key) else {
            continue;
        };
        if is_expired(entry.expire_at, now)
            || pattern.is_some_and(|p| !glob::matches(p, key))
            || kind
                .as_ref()
                .is_some_and(|t| !t.eq_ignore_ascii_case(entry.value.type_name().as_bytes()))
        {
            continue;
        }
        out.push(Reply::Bulk(key.clone()));
    }
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(out),
    ])
}

/// RENAME / RENAMENX: the value moves with its expiry; the destination's old value and
/// expiry are dropped.
fn rename(db: &mut Db, key: &Bytes, new_key: &Bytes, nx: bool) -> Res {
    if !db.is_stored(key) {
        return Err(Reply::error(reply::NO_SUCH_KEY));
    }
    let done = if nx { Reply::Int(1) } else { Reply::Ok };
    if key == new_key {
        return Ok(if nx { Reply::Int(0) } else { done });
    }
    if nx && db.is_stored(new_key) {
        return Ok(Reply::Int(0));
    }
    if let Some(entry) = db.remove(key) {
        db.put(new_key, entry.value, entry.expire_at);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    //! The key commands against the replies Redis 7 gives.

    use bytes::Bytes;

    use crate::kv::reply::Reply;
    use crate::kv::tests::*;

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
}
