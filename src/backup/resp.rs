//! Redis command streams, both ways, so users can leave for Redis or come from it.
//!
//! * Out: a key space as RESP commands (`SET`, `HSET`, `RPUSH`, `SADD`, then `PEXPIREAT` for a
//!   key with an expiry; collections are deleted first so a load never merges into an older
//!   value) that `redis-cli --pipe` loads into Redis, or into standin's store.
//! * In: [`export_redis`] reads a Redis without RDB access through `SCAN`, `TYPE`, `PTTL` and
//!   the type's read command, and writes the same stream. Types standin's store does not have
//!   (sorted sets, streams) are skipped and counted.
//!
//! Replies from Redis are parsed without recursion (a stack bounded in depth) and with every
//! length checked before anything is allocated for it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::BackupError;
use crate::cluster::backup::KvRecord;
use crate::kv::db::Value;

/// Elements per command for a large collection (HSET/RPUSH/SADD are split).
const BATCH: usize = 512;

/// Writes RESP commands.
pub struct RespWriter<W: Write> {
    out: W,
    /// Keys already expired at this time are left out (Unix ms).
    now_ms: i64,
    pub commands: u64,
    pub keys: u64,
    bytes: u64,
}

impl<W: Write> RespWriter<W> {
    pub fn new(out: W, now_ms: i64) -> RespWriter<W> {
        RespWriter {
            out,
            now_ms,
            commands: 0,
            keys: 0,
            bytes: 0,
        }
    }

    fn command(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.out.write_all(&buf)?;
        self.bytes += buf.len() as u64;
        self.commands += 1;
        Ok(())
    }

    /// A collection in batches: `name key e1 e2 ...`.
    fn batched<'a>(
        &mut self,
        name: &[u8],
        key: &[u8],
        items: impl Iterator<Item = &'a [u8]>,
        per: usize,
    ) -> std::io::Result<()> {
        let mut args: Vec<&[u8]> = vec![name, key];
        for item in items {
            args.push(item);
            if args.len() >= 2 + BATCH * per {
                self.command(&args)?;
                args.truncate(2);
            }
        }
        if args.len() > 2 {
            self.command(&args)?;
        }
        Ok(())
    }

    pub fn record(&mut self, key: &[u8], value: &Value, expire_at: Option<i64>) -> std::io::Result<()> {
        if expire_at.is_some_and(|t| t < self.now_ms) {
            return Ok(());
        }
        match value {
            Value::Str(s) => self.command(&[b"SET", key, s])?,
            Value::Hash(h) => {
                self.command(&[b"DEL", key])?;
                self.batched(
                    b"HSET",
                    key,
                    h.iter().flat_map(|(f, v)| [f.as_ref(), v.as_ref()]),
                    2,
                )?;
            }
            Value::List(l) => {
                self.command(&[b"DEL", key])?;
                self.batched(b"RPUSH", key, l.iter().map(|b| b.as_ref()), 1)?;
            }
            Value::Set(s) => {
                self.command(&[b"DEL", key])?;
                self.batched(b"SADD", key, s.iter().map(|b| b.as_ref()), 1)?;
            }
        }
        if let Some(t) = expire_at {
            self.command(&[b"PEXPIREAT", key, t.to_string().as_bytes()])?;
        }
        self.keys += 1;
        Ok(())
    }

    pub fn records(&mut self, records: &[KvRecord]) -> std::io::Result<()> {
        for r in records {
            self.record(&r.key, &r.value, r.expire_at)?;
        }
        Ok(())
    }

    /// Flushes; returns the output and the bytes written.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        self.out.flush()?;
        Ok((self.out, self.bytes))
    }
}

/// Writes the key space of a backup file as Redis commands (`backup create --format resp`
/// from a file already taken goes through here too).
pub fn file_to_resp(
    from: &Path,
    to: &Path,
    now_ms: i64,
) -> Result<(super::format::Summary, u64), BackupError> {
    let f = std::fs::File::open(from).map_err(|e| BackupError::format(from, e.into()))?;
    let tmp = to.with_file_name(format!(
        ".{}.tmp-{}",
        to.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let out = std::fs::File::create(&tmp)
        .map_err(|e| BackupError::Failed(format!("cannot create {}: {e}", tmp.display())))?;
    let mut w = RespWriter::new(std::io::BufWriter::new(out), now_ms);
    let summary = super::format::read(std::io::BufReader::with_capacity(1 << 20, f), |records| {
        w.records(&records).map_err(super::format::FormatError::Io)
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(BackupError::format(from, e));
        }
    };
    let (out, bytes) = w.finish().map_err(|e| BackupError::Failed(e.to_string()))?;
    let file = out
        .into_inner()
        .map_err(|e| BackupError::Failed(e.error().to_string()))?;
    super::commit_file(file, &tmp, to)
        .map_err(|e| BackupError::Failed(format!("cannot put {} in place: {e}", to.display())))?;
    Ok((summary, bytes))
}

/// A reply from Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Reply>>),
}

/// Largest bulk string read (Redis's own `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Most elements of one array read.
const MAX_ARRAY: usize = 1 << 24;
/// Deepest nesting read (SCAN's reply is two levels).
const MAX_DEPTH: usize = 4;
/// Longest line (simple string, error, integer, length).
const MAX_LINE: usize = 64 * 1024;

async fn line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<String, String> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the connection closed".into());
    }
    if !buf.ends_with(b"\r\n") {
        return Err("a reply line is too long or not terminated".into());
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|_| "a reply line is not text".into())
}

/// Reads one reply, iteratively (a stack of arrays being filled).
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, String> {
    let mut stack: Vec<(Vec<Reply>, usize)> = Vec::new();
    loop {
        let l = line(r).await?;
        let (tag, rest) = l.split_at(l.len().min(1));
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| format!("bad length or number {rest:?}"))
        };
        let mut item = match tag {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(num()?),
            "$" => {
                let n = num()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let n = n as usize;
                    if n > MAX_BULK {
                        return Err(format!("a bulk string of {n} bytes is too large"));
                    }
                    let mut b = vec![0u8; n + 2];
                    r.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                    b.truncate(n);
                    Reply::Bulk(Some(Bytes::from(b)))
                }
            }
            "*" => {
                let n = num()?;
                if n < 0 {
                    Reply::Array(None)
                } else if n as usize > MAX_ARRAY {
                    return Err(format!("an array of {n} elements is too large"));
                } else if n == 0 {
                    Reply::Array(Some(Vec::new()))
                } else {
                    if stack.len() >= MAX_DEPTH {
                        return Err("replies nested too deep".into());
                    }
                    stack.push((Vec::with_capacity((n as usize).min(4096)), n as usize));
                    continue;
                }
            }
            _ => return Err(format!("unexpected reply {l:?}")),
        };
        // Put the item into the innermost array; finished arrays become items in turn.
        loop {
            match stack.last_mut() {
                None => return Ok(item),
                Some((items, want)) => {
                    items.push(item);
                    if items.len() < *want {
                        break;
                    }
                    let (items, _) = stack.pop().unwrap_or_default();
                    item = Reply::Array(Some(items));
                }
            }
        }
    }
}

/// What [`export_redis`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Imported {
    pub keys: u64,
    pub commands: u64,
    pub bytes: u64,
    /// Keys left out, by Redis type (types standin's store does not have).
    pub skipped: BTreeMap<String, u64>,
    pub seconds: f64,
}

struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

impl Conn {
    /// Sends every command, then reads one reply per command (pipelined).
    async fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> Result<Vec<Reply>, String> {
        let mut buf = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            buf.extend_from_slice(&encode(&args));
        }
        self.w.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(cmds.len());
        for _ in cmds {
            out.push(read_reply(&mut self.r).await?);
        }
        Ok(out)
    }
}

fn bulks(r: Reply) -> Result<Vec<Bytes>, String> {
    match r {
        Reply::Array(Some(items)) => items
            .into_iter()
            .map(|i| match i {
                Reply::Bulk(Some(b)) => Ok(b),
                other => Err(format!("unexpected element {other:?}")),
            })
            .collect(),
        Reply::Error(e) => Err(e),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Reads every key of the Redis at `addr` (SCAN, TYPE, PTTL and the type's read) and writes
/// them as Redis commands to `out` (through a temporary file and a rename).
pub async fn export_redis(addr: &str, password: Option<&str>, out: &Path) -> Result<Imported, BackupError> {
    let started = std::time::Instant::now();
    let fail = |what: &str, e: String| BackupError::Failed(format!("{what} ({addr}): {e}"));
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| fail("cannot connect to Redis", "timed out".into()))?
        .map_err(|e| fail("cannot connect to Redis", e.to_string()))?;
    let (r, w) = stream.into_split();
    let mut c = Conn {
        r: BufReader::with_capacity(1 << 16, r),
        w,
    };
    if let Some(p) = password {
        match c.pipeline(&[vec![b"AUTH".to_vec(), p.as_bytes().to_vec()]]).await {
            Ok(r) if matches!(r.first(), Some(Reply::Simple(_))) => {}
            Ok(r) => return Err(BackupError::Auth(format!("Redis refused the password: {r:?}"))),
            Err(e) => return Err(fail("AUTH failed", e)),
        }
    }
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let file = std::fs::File::create(&tmp)
        .map_err(|e| BackupError::Failed(format!("cannot create {}: {e}", tmp.display())))?;
    let now = crate::clock::unix_ms() as i64;
    let mut w = RespWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), now);
    let mut imported = Imported::default();
    let result = async {
        let mut cursor = b"0".to_vec();
        loop {
            let reply = c
                .pipeline(&[vec![
                    b"SCAN".to_vec(),
                    cursor.clone(),
                    b"COUNT".to_vec(),
                    b"1000".to_vec(),
                ]])
                .await
                .map_err(|e| fail("SCAN failed", e))?;
            let (next, keys) = match reply.into_iter().next() {
                Some(Reply::Array(Some(mut parts))) if parts.len() == 2 => {
                    let keys = bulks(parts.pop().unwrap_or(Reply::Array(None)))
                        .map_err(|e| fail("SCAN failed", e))?;
                    let next = match parts.pop() {
                        Some(Reply::Bulk(Some(c))) => c.to_vec(),
                        other => return Err(fail("SCAN failed", format!("bad cursor {other:?}"))),
                    };
                    (next, keys)
                }
                other => return Err(fail("SCAN failed", format!("unexpected reply {other:?}"))),
            };
            if !keys.is_empty() {
                let meta: Vec<Vec<Vec<u8>>> = keys
                    .iter()
                    .flat_map(|k| {
                        [
                            vec![b"TYPE".to_vec(), k.to_vec()],
                            vec![b"PTTL".to_vec(), k.to_vec()],
                        ]
                    })
                    .collect();
                let meta = c.pipeline(&meta).await.map_err(|e| fail("TYPE/PTTL failed", e))?;
                let mut reads = Vec::new();
                let mut wanted = Vec::new();
                for (i, k) in keys.iter().enumerate() {
                    let ty = match &meta[2 * i] {
                        Reply::Simple(t) => t.clone(),
                        other => return Err(fail("TYPE failed", format!("{other:?}"))),
                    };
                    let pttl = match &meta[2 * i + 1] {
                        Reply::Int(n) => *n,
                        other => return Err(fail("PTTL failed", format!("{other:?}"))),
                    };
                    let read: Option<Vec<Vec<u8>>> = match ty.as_str() {
                        "string" => Some(vec![b"GET".to_vec(), k.to_vec()]),
                        "hash" => Some(vec![b"HGETALL".to_vec(), k.to_vec()]),
                        "list" => Some(vec![
                            b"LRANGE".to_vec(),
                            k.to_vec(),
                            b"0".to_vec(),
                            b"-1".to_vec(),
                        ]),
                        "set" => Some(vec![b"SMEMBERS".to_vec(), k.to_vec()]),
                        // Gone between SCAN and TYPE.
                        "none" => None,
                        other => {
                            *imported.skipped.entry(other.to_string()).or_default() += 1;
                            None
                        }
                    };
                    if let Some(rd) = read {
                        reads.push(rd);
                        // PTTL: -1 no expiry, -2 gone; otherwise ms left.
                        let expire = (pttl >= 0).then(|| now + pttl);
                        wanted.push((k.clone(), ty, expire));
                    }
                }
                let values = c
                    .pipeline(&reads)
                    .await
                    .map_err(|e| fail("reading values failed", e))?;
                for ((key, ty, expire), v) in wanted.into_iter().zip(values) {
                    let value = match (ty.as_str(), v) {
                        (_, Reply::Bulk(None)) | (_, Reply::Array(None)) => continue,
                        ("string", Reply::Bulk(Some(b))) => Value::Str(b),
                        ("hash", r) => {
                            let items = bulks(r).map_err(|e| fail("HGETALL failed", e))?;
                            let mut h = std::collections::BTreeMap::new();
                            for pair in items.chunks(2) {
                                if let [f, v] = pair {
                                    h.insert(f.clone(), v.clone());
                                }
                            }
                            Value::Hash(h)
                        }
                        ("list", r) => Value::List(
                            bulks(r)
                                .map_err(|e| fail("LRANGE failed", e))?
                                .into_iter()
                                .collect(),
                        ),
                        ("set", r) => Value::Set(
                            bulks(r)
                                .map_err(|e| fail("SMEMBERS failed", e))?
                                .into_iter()
                                .collect(),
                        ),
                        (_, Reply::Error(e)) => return Err(fail("reading a value failed", e)),
                        (t, other) => return Err(fail("reading a value failed", format!("{t}: {other:?}"))),
                    };
                    let empty = match &value {
                        Value::Hash(h) => h.is_empty(),
                        Value::List(l) => l.is_empty(),
                        Value::Set(s) => s.is_empty(),
                        Value::Str(_) => false,
                    };
                    if !empty {
                        w.record(&key, &value, expire).map_err(|e| {
                            BackupError::Failed(format!("cannot write {}: {e}", tmp.display()))
                        })?;
                    }
                }
            }
            if next == b"0" {
                return Ok::<_, BackupError>(());
            }
            cursor = next;
        }
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    imported.keys = w.keys;
    imported.commands = w.commands;
    let (o, bytes) = w.finish().map_err(|e| BackupError::Failed(e.to_string()))?;
    imported.bytes = bytes;
    let file = o
        .into_inner()
        .map_err(|e| BackupError::Failed(e.error().to_string()))?;
    super::commit_file(file, &tmp, out)
        .map_err(|e| BackupError::Failed(format!("cannot put {} in place: {e}", out.display())))?;
    imported.seconds = started.elapsed().as_secs_f64();
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_commands_and_expired_keys_are_left_out() {
        let mut w = RespWriter::new(Vec::new(), 1000);
        w.record(b"s", &Value::Str(Bytes::from("v")), Some(5000))
            .expect("write");
        w.record(b"gone", &Value::Str(Bytes::from("v")), Some(10))
            .expect("write");
        w.record(
            b"l",
            &Value::List(["a", "b"].iter().map(|s| Bytes::from(*s)).collect()),
            None,
        )
        .expect("write");
        let (out, _) = w.finish().expect("finish");
        let text = String::from_utf8(out).expect("text");
        assert_eq!(
            text,
            "*3\r\n$3\r\nSET\r\n$1\r\ns\r\n$1\r\nv\r\n*3\r\n$9\r\nPEXPIREAT\r\n$1\r\ns\r\n$4\r\n5000\r\n\
             *2\r\n$3\r\nDEL\r\n$1\r\nl\r\n*4\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
    }

    #[tokio::test]
    async fn replies_parse_without_recursion_and_within_bounds() {
        let mut ok: &[u8] = b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$-1\r\n";
        let r = read_reply(&mut ok).await.expect("reply");
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(Bytes::from("0"))),
                Reply::Array(Some(vec![Reply::Bulk(Some(Bytes::from("a"))), Reply::Bulk(None)]))
            ]))
        );
        let deep = "*1\r\n".repeat(100_000);
        assert!(read_reply(&mut deep.as_bytes()).await.is_err());
        let mut huge: &[u8] = b"$99999999999\r\n";
        assert!(read_reply(&mut huge).await.is_err());
        let mut many: &[u8] = b"*99999999999\r\n";
        assert!(read_reply(&mut many).await.is_err());
        let mut cut: &[u8] = b"$5\r\nab";
        assert!(read_reply(&mut cut).await.is_err());
    }
}
