//! What a command answers, independent of the wire protocol.
//!
//! [`Reply`] is produced by [`Db::apply`](super::db::Db::apply) on every replica, so it is part of
//! the replicated state machine's output: it must be serializable (the leader may ship the reply
//! of an applied entry back to the proposer) and comparable (determinism tests). The RESP codec
//! maps it to RESP2 or RESP3 frames; e.g. [`Reply::Map`] becomes a flat array in RESP2.
//!
//! The error texts of Redis 7 are kept here as constants so that every command uses the exact
//! same wording (clients and test suites match on them).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `WRONGTYPE` error: the key holds a value of another type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// An argument or a stored value is not a valid 64-bit signed integer.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// Generic syntax error (unknown option, bad option combination).
pub const SYNTAX: &str = "ERR syntax error";
/// INCR/DECR family: the result would not fit in an `i64`.
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
/// DECRBY with `i64::MIN` (its negation does not fit).
pub const DECR_OVERFLOW: &str = "ERR decrement would overflow";
/// An argument or a stored value is not a valid float.
pub const NOT_FLOAT: &str = "ERR value is not a valid float";
/// INCRBYFLOAT result is not finite.
pub const NAN_OR_INF: &str = "ERR increment would produce NaN or Infinity";
/// RENAME of a missing key.
pub const NO_SUCH_KEY: &str = "ERR no such key";
/// HINCRBY on a field whose value is not an integer.
pub const HASH_NOT_INTEGER: &str = "ERR hash value is not an integer";
/// A count argument (LPOP/RPOP) is negative or not a number.
pub const NOT_POSITIVE: &str = "ERR value is out of range, must be positive";
/// SCAN cursor is not an unsigned integer.
pub const INVALID_CURSOR: &str = "ERR invalid cursor";
/// APPEND would create a string larger than 512 MB (Redis's `proto-max-bulk-len`).
pub const STRING_TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// The answer to one command, before wire encoding.
///
/// Between nodes a reply travels flat (see [`WireReply`]): a tree decoded from a peer's bytes
/// is rebuilt without recursion and refused past [`MAX_REPLY_DEPTH`] levels, so no frame can
/// overflow the receiver's stack.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "WireReply")]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line other than OK (e.g. TYPE's `string`).
    Simple(String),
    /// An error line; the text includes its code prefix (`ERR ...`, `WRONGTYPE ...`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// The null bulk string (`$-1` in RESP2, `_` in RESP3): a missing value.
    Nil,
    /// The null array (`*-1` in RESP2, `_` in RESP3): e.g. LPOP with a count on a missing key.
    NilArray,
    /// An array of replies.
    Array(Vec<Reply>),
    /// A double (RESP3); RESP2 encodes it as a bulk string.
    Double(f64),
    /// A map (RESP3); RESP2 encodes it as a flat array of alternating keys and values.
    Map(Vec<(Reply, Reply)>),
    /// A set (RESP3); RESP2 encodes it as an array.
    Set(Vec<Reply>),
}

impl Reply {
    /// An error reply with the given full text (including its `ERR`/`WRONGTYPE` prefix).
    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// `ERR wrong number of arguments for '<cmd>' command`, with the name lowercased as Redis
    /// prints the command's canonical name rather than what the client typed.
    pub fn wrong_arity(cmd: &str) -> Reply {
        Reply::Error(format!(
            "ERR wrong number of arguments for '{}' command",
            cmd.to_ascii_lowercase()
        ))
    }

    /// `ERR invalid expire time in '<cmd>' command`.
    pub fn invalid_expire(cmd: &str) -> Reply {
        Reply::Error(format!("ERR invalid expire time in '{cmd}' command"))
    }

    /// A bulk string reply.
    pub fn bulk(data: impl Into<Bytes>) -> Reply {
        Reply::Bulk(data.into())
    }

    /// The WRONGTYPE error.
    pub fn wrong_type() -> Reply {
        Reply::Error(WRONGTYPE.to_owned())
    }

    /// True for [`Reply::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// How deep replies nest at most on the wire. The store's own replies nest three levels at
/// most (EXEC of a SCAN: array, array, bulk); anything deeper came from a broken or hostile
/// peer.
pub const MAX_REPLY_DEPTH: usize = 16;

/// A reply in pre-order: containers announce how many replies follow (a map, twice its
/// pairs), so the shape is a flat list whatever the depth. Owned (`Token<String, Bytes>`)
/// when decoded; borrowed from the reply (`Token<&str, RawBytes>`) when encoded, so encoding
/// copies nothing. Both encode the same bytes.
#[derive(Debug, Serialize, Deserialize)]
enum Token<S, B> {
    Ok,
    Simple(S),
    Error(S),
    Int(i64),
    Bulk(B),
    Nil,
    NilArray,
    Array(u32),
    Double(f64),
    Map(u32),
    Set(u32),
}

/// A borrowed bulk string, encoded as bytes (as `Bytes` is), not as a sequence of numbers.
#[derive(Debug)]
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// The wire form of a [`Reply`]: its tokens in pre-order.
#[derive(Debug, Deserialize)]
pub struct WireReply(Vec<Token<String, Bytes>>);

/// Why a reply from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireReplyError {
    #[error("reply nests deeper than {MAX_REPLY_DEPTH} levels")]
    TooDeep,
    #[error("reply ends inside a container")]
    Truncated,
    #[error("bytes after the end of the reply")]
    Trailing,
    #[error("a container holds more than {} replies", u32::MAX)]
    TooLong,
}

impl Reply {
    /// Direct children, for walking a tree without recursion.
    fn children(&self) -> Box<dyn Iterator<Item = &Reply> + '_> {
        match self {
            Reply::Array(v) | Reply::Set(v) => Box::new(v.iter()),
            Reply::Map(pairs) => Box::new(pairs.iter().flat_map(|(k, v)| [k, v])),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn token(&self) -> Result<Token<&str, RawBytes<'_>>, WireReplyError> {
        let len = |n: usize| u32::try_from(n).map_err(|_| WireReplyError::TooLong);
        Ok(match self {
            Reply::Ok => Token::Ok,
            Reply::Simple(s) => Token::Simple(s.as_str()),
            Reply::Error(s) => Token::Error(s.as_str()),
            Reply::Int(i) => Token::Int(*i),
            Reply::Bulk(b) => Token::Bulk(RawBytes(b)),
            Reply::Nil => Token::Nil,
            Reply::NilArray => Token::NilArray,
            Reply::Array(v) => Token::Array(len(v.len())?),
            Reply::Double(d) => Token::Double(*d),
            Reply::Map(pairs) => Token::Map(len(pairs.len())?),
            Reply::Set(v) => Token::Set(len(v.len())?),
        })
    }

    /// Every node of the tree in pre-order, with an explicit stack.
    fn preorder(&self) -> Vec<&Reply> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(r) = stack.pop() {
            out.push(r);
            let children: Vec<&Reply> = r.children().collect();
            stack.extend(children.into_iter().rev());
        }
        out
    }
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        // Leaves (nearly every reply) need no walk.
        if self.children().next().is_none() {
            let mut seq = serializer.serialize_seq(Some(1))?;
            seq.serialize_element(&self.token().map_err(S::Error::custom)?)?;
            return seq.end();
        }
        let nodes = self.preorder();
        let mut seq = serializer.serialize_seq(Some(nodes.len()))?;
        for r in nodes {
            seq.serialize_element(&r.token().map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// A container being rebuilt: its kind, how many replies it still waits for, and those it has.
struct Open {
    kind: Token<String, Bytes>,
    missing: usize,
    items: Vec<Reply>,
}

impl Open {
    fn close(self) -> Reply {
        match self.kind {
            Token::Map(_) => {
                let mut items = self.items.into_iter();
                let mut pairs = Vec::with_capacity(items.len() / 2);
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    pairs.push((k, v));
                }
                Reply::Map(pairs)
            }
            Token::Set(_) => Reply::Set(self.items),
            _ => Reply::Array(self.items),
        }
    }
}

impl TryFrom<WireReply> for Reply {
    type Error = WireReplyError;

    fn try_from(wire: WireReply) -> Result<Reply, WireReplyError> {
        let mut tokens = wire.0.into_iter();
        let mut open: Vec<Open> = Vec::new();
        loop {
            let token = tokens.next().ok_or(WireReplyError::Truncated)?;
            // Containers cannot hold more replies than tokens remain: no allocation beyond
            // what the frame really carries.
            let remaining = tokens.len();
            let mut done = match token {
                Token::Ok => Some(Reply::Ok),
                Token::Simple(s) => Some(Reply::Simple(s)),
                Token::Error(s) => Some(Reply::Error(s)),
                Token::Int(i) => Some(Reply::Int(i)),
                Token::Bulk(b) => Some(Reply::Bulk(b)),
                Token::Nil => Some(Reply::Nil),
                Token::NilArray => Some(Reply::NilArray),
                Token::Double(d) => Some(Reply::Double(d)),
                Token::Array(n) | Token::Set(n) | Token::Map(n) => {
                    let missing = if matches!(token, Token::Map(_)) {
                        n as usize * 2
                    } else {
                        n as usize
                    };
                    if missing == 0 {
                        Some(
                            Open {
                                kind: token,
                                missing,
                                items: Vec::new(),
                            }
                            .close(),
                        )
                    } else if missing > remaining {
                        return Err(WireReplyError::Truncated);
                    } else if open.len() >= MAX_REPLY_DEPTH {
                        return Err(WireReplyError::TooDeep);
                    } else {
                        open.push(Open {
                            kind: token,
                            missing,
                            items: Vec::with_capacity(missing),
                        });
                        None
                    }
                }
            };
            // Hand finished replies up to their containers, closing those that are full.
            while let Some(reply) = done.take() {
                let Some(top) = open.last_mut() else {
                    if tokens.next().is_some() {
                        return Err(WireReplyError::Trailing);
                    }
                    return Ok(reply);
                };
                top.items.push(reply);
                top.missing -= 1;
                if top.missing == 0 {
                    done = open.pop().map(Open::close);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(r: &Reply) -> Result<Reply, postcard::Error> {
        postcard::from_bytes(&postcard::to_allocvec(r)?)
    }

    #[test]
    fn replies_keep_their_shape_on_the_wire() {
        let r = Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"0")),
            Reply::Array(vec![Reply::Bulk(Bytes::from_static(b"k")), Reply::Nil]),
            Reply::Map(vec![(Reply::Simple("f".into()), Reply::Int(-3))]),
            Reply::Set(Vec::new()),
            Reply::Map(Vec::new()),
            Reply::Double(1.5),
            Reply::NilArray,
            Reply::error("ERR x"),
            Reply::Ok,
        ]);
        assert_eq!(roundtrip(&r).expect("roundtrip"), r);
    }

    /// A peer's answer of arrays nested 100,000 deep (a few hundred KB) used to overflow the
    /// receiver's stack while decoding. Now it is refused past `MAX_REPLY_DEPTH`.
    #[test]
    fn deep_nesting_from_a_peer_is_refused() {
        let mut tokens: Vec<Token<String, Bytes>> = (0..100_000).map(|_| Token::Array(1)).collect();
        tokens.push(Token::Ok);
        let bytes = postcard::to_allocvec(&tokens).expect("encode");
        assert!(postcard::from_bytes::<Reply>(&bytes).is_err());
        // Right at the limit it decodes.
        let mut r = Reply::Ok;
        for _ in 0..MAX_REPLY_DEPTH {
            r = Reply::Array(vec![r]);
        }
        assert_eq!(roundtrip(&r).expect("at the limit"), r);
        let r = Reply::Array(vec![r]);
        assert!(roundtrip(&r).is_err());
    }

    #[test]
    fn a_container_cannot_claim_more_than_the_frame_holds() {
        let bytes = postcard::to_allocvec(&vec![Token::<String, Bytes>::Array(u32::MAX)]).expect("encode");
        assert!(postcard::from_bytes::<Reply>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&vec![Token::<String, Bytes>::Ok, Token::Ok]).expect("encode");
        assert!(postcard::from_bytes::<Reply>(&bytes).is_err());
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            Just(Reply::Ok),
            Just(Reply::Nil),
            any::<i64>().prop_map(Reply::Int),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| Reply::Bulk(b.into())),
            "[a-z]{0,4}".prop_map(Reply::Simple),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Array),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Set),
                proptest::collection::vec((inner.clone(), inner), 0..3).prop_map(Reply::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_reply_roundtrips(r in reply()) {
            prop_assert_eq!(roundtrip(&r).expect("roundtrip"), r);
        }

        /// Arbitrary and mutated bytes never panic the decoder.
        #[test]
        fn hostile_bytes_never_panic(r in reply(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = postcard::to_allocvec(&r).expect("encode");
            for (at, b) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] ^= b;
                }
            }
            let _ = postcard::from_bytes::<Reply>(&bytes);
            let _ = postcard::from_bytes::<Reply>(&junk);
        }
    }
}
