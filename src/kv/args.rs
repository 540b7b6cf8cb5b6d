//! The arguments of one command, for terse parsing code shared by the command families:
//! Redis's arity check (with its error text) and typed access to the arguments.

use bytes::Bytes;

use super::num::parse_i64;
use super::reply::{self, Reply};

/// The arguments of one command (`args[0]` is the name) with its lowercased name.
pub struct Args<'a> {
    /// The command name, lowercased: what the families match on and what errors name.
    pub name: &'a str,
    /// All arguments, the name included.
    pub args: &'a [Bytes],
}

impl Args<'_> {
    /// Redis arity: `n > 0` exactly `n` arguments (name included), `n < 0` at least `-n`.
    pub fn arity(&self, n: i32) -> Result<(), Reply> {
        let len = self.args.len();
        let ok = if n >= 0 {
            len == n as usize
        } else {
            len >= n.unsigned_abs() as usize
        };
        if ok {
            Ok(())
        } else {
            Err(Reply::wrong_arity(self.name))
        }
    }

    /// Argument `i` (the caller checked the arity, so it exists).
    pub fn at(&self, i: usize) -> Bytes {
        self.args.get(i).cloned().unwrap_or_default()
    }

    /// The key: argument 1.
    pub fn key(&self) -> Bytes {
        self.at(1)
    }

    /// Arguments from `i` on (empty if there are none).
    pub fn from(&self, i: usize) -> Vec<Bytes> {
        self.args.get(i..).map(<[Bytes]>::to_vec).unwrap_or_default()
    }

    /// Argument `i` as an integer, or Redis's `not an integer` error.
    pub fn int(&self, i: usize) -> Result<i64, Reply> {
        parse_i64(&self.at(i)).ok_or_else(|| Reply::error(reply::NOT_INTEGER))
    }
}

/// Field-value (or key-value) pairs from a flat list; an odd last item is dropped (callers
/// check the count first).
pub fn pairs(flat: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    flat.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Case-insensitive comparison of an argument with an ASCII keyword.
pub fn eq_ic(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}
