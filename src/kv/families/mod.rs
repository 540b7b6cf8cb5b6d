//! The Redis command families, as Redis groups them (`string`, `hash`, `list`, `set`, the
//! `generic` key commands, expiry, and the key-space part of `server`). Each family file
//! holds its commands' parsing and their application to the key space, so adding a command
//! means touching one family file (and its tests): a `parse` arm, a `read` or `write` arm;
//! plus, in `kv/cmd.rs`, the [`Op`] variant (appended last: the encoding of ops is on disk and
//! on the wire) and its arms in the exhaustive `is_write` and `keys`.
//!
//! Every family has the same three functions, tried in turn by [`parse`] and [`Db::apply`]
//! (defined here, above the families, as `db.rs` is below them): each answers `Ok(None)` for
//! what is not its own.

pub mod expire;
pub mod hash;
pub mod keys;
pub mod list;
pub mod server;
pub mod set;
pub mod string;

use bytes::Bytes;

use super::args::Args;
use super::cmd::{Op, Parsed};
use super::db::{Db, Outcome, Res};
use super::reply::Reply;

/// A family's parser: `Ok(None)` if the command is not one of the family's.
pub type Parse = fn(&Args<'_>) -> Result<Option<Op>, Reply>;
/// A family's reads: `Ok(None)` if the op is not one of the family's reads.
pub type Read = fn(&Db, &Op, i64) -> Outcome;
/// A family's writes: `Ok(None)` if the op is not one of the family's writes.
pub type Write = fn(&mut Db, &Op, i64) -> Outcome;

/// The families' parsers, the most used first (every command goes through them in turn).
pub const PARSERS: [Parse; 7] = [
    string::parse,
    hash::parse,
    keys::parse,
    expire::parse,
    list::parse,
    set::parse,
    server::parse,
];

/// The families' reads.
pub const READS: [Read; 7] = [
    string::read,
    hash::read,
    keys::read,
    expire::read,
    list::read,
    set::read,
    server::read,
];

/// The families' writes.
pub const WRITES: [Write; 7] = [
    string::write,
    hash::write,
    keys::write,
    expire::write,
    list::write,
    set::write,
    server::write,
];

/// Parses one command. `args[0]` is the command name (any case).
///
/// Returns `Ok(Parsed::NotData)` for commands that are not data commands (including unknown
/// ones and an empty vector), and `Err(Reply::Error(..))` for a data command with a wrong
/// number of arguments or a syntax error.
pub fn parse(args: &[Bytes]) -> Result<Parsed, Reply> {
    let Some(name) = args.first() else {
        return Ok(Parsed::NotData);
    };
    // Command names are ASCII; anything longer than the longest name cannot be one of ours.
    if name.len() > 16 {
        return Ok(Parsed::NotData);
    }
    // Lowercased on the stack: this runs for every command.
    let mut lowered = [0u8; 16];
    let lowered = &mut lowered[..name.len()];
    lowered.copy_from_slice(name);
    lowered.make_ascii_lowercase();
    let Ok(name) = std::str::from_utf8(lowered) else {
        return Ok(Parsed::NotData);
    };
    let a = Args { name, args };
    for parse in PARSERS {
        if let Some(op) = parse(&a)? {
            return Ok(Parsed::Data(op));
        }
    }
    Ok(Parsed::NotData)
}

impl Db {
    /// Applies any op (read or write) at time `now_ms` (the log entry's time). Expired keys
    /// count as absent; writes remove expired keys they touch. Deterministic.
    pub fn apply(&mut self, op: &Op, now_ms: i64) -> Reply {
        if !op.is_write() {
            return self.read(op, now_ms);
        }
        if let Op::DelExpired { keys } = op {
            return Reply::Int(i64::try_from(self.purge_expired(keys, now_ms)).unwrap_or(i64::MAX));
        }
        for key in op.keys() {
            self.purge_if_expired(key, now_ms);
        }
        write(self, op, now_ms).unwrap_or_else(|e| e)
    }

    /// Runs a read-only op without mutating (local reads). For a write op returns an error
    /// reply.
    pub fn read(&self, op: &Op, now_ms: i64) -> Reply {
        read(self, op, now_ms).unwrap_or_else(|e| e)
    }
}

fn read(db: &Db, op: &Op, now: i64) -> Res {
    for read in READS {
        if let Some(reply) = read(db, op, now)? {
            return Ok(reply);
        }
    }
    Err(Reply::error("ERR write command on the read-only path"))
}

/// Writes (expired keys the op touches were already purged).
fn write(db: &mut Db, op: &Op, now: i64) -> Res {
    for write in WRITES {
        if let Some(reply) = write(db, op, now)? {
            return Ok(reply);
        }
    }
    // Reads and DelExpired never get here (see `apply`).
    read(db, op, now)
}
