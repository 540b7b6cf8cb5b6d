//! RESP, the Redis serialization protocol: requests in, replies out.
//!
//! [`RespCodec`] is the `tokio_util` codec a client connection is framed with. Decoding
//! turns the bytes a client sends into requests (`Vec<Bytes>`: the command name and its
//! arguments) with the same rules, limits and error texts as Redis's own reader
//! (`processMultibulkBuffer` / `processInlineBuffer` in `networking.c`, `sdssplitargs` in
//! `sds.c`), so clients, proxies and test suites written against Redis see the same
//! behaviour. Encoding turns a [`Reply`] (the key space's answer, also used for the server's
//! own) into bytes for the protocol version the client chose with `HELLO` (RESP2 unless told
//! otherwise), downgrading RESP3-only types the way Redis does.
//!
//! Two request forms exist, chosen by the first byte:
//! - multibulk, `*<n>\r\n` then n times `$<len>\r\n<bytes>\r\n` — what every client
//!   library sends;
//! - inline, one text line split on spaces with shell-like quoting — what a human typing
//!   into `telnet` sends.
//!
//! A [`RespError::Protocol`] is final: like Redis, the caller replies with the error
//! ([`RespError::reply`]) and then closes the connection. The codec's state is not
//! meaningful after an error and it must not be used to decode further.
//!
//! Deliberately kept Redis quirks: the byte after a header's `\r` and the two bytes after a
//! bulk payload are skipped without checking they are `\n` / `\r\n`; an inline line stops at
//! its first NUL byte (Redis splits it as a C string). One deliberate difference: Redis
//! finds header lines with `strchr`, which gives up at a NUL byte; here a NUL is an
//! ordinary byte.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::kv::num::parse_i64;
use crate::kv::reply::Reply;

/// Size limits that bound how much a client can make the server buffer before a request
/// is complete. Defaults are Redis's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted bulk argument, in bytes (Redis `proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// Most arguments in one multibulk request (Redis: 1024 * 1024).
    pub max_multibulk_len: usize,
    /// How many bytes may be buffered while still waiting for the end of an inline
    /// request or of a `*<n>` / `$<len>` header line (Redis `PROTO_INLINE_MAX_SIZE`, 64 KiB).
    pub max_inline_len: usize,
    /// Largest whole request: the sum over its arguments of their length plus
    /// [`ARG_OVERHEAD`] (an inline request: its line). Redis has no such limit (its query
    /// buffer limit plays the part); the store needs one so a request always fits one log
    /// entry. Default: unlimited.
    pub max_request_len: usize,
}

/// What each argument of a request counts for beyond its bytes against
/// [`Limits::max_request_len`]: covers what an argument can take in the encoded op beyond its
/// bytes (a length prefix, a tag, a number stored in more bytes than its digits).
pub const ARG_OVERHEAD: usize = 16;

/// Most arguments a client may send in one request before it has authenticated (Redis since
/// CVE-2021-32675).
pub const UNAUTHENTICATED_MULTIBULK_LEN: usize = 10;

/// Largest argument a client may send before it has authenticated (Redis since
/// CVE-2021-32675).
pub const UNAUTHENTICATED_BULK_LEN: usize = 16 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_request_len: usize::MAX,
        }
    }
}

/// Errors from decoding a request.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The client broke the protocol. The text is exactly the error Redis replies with,
    /// e.g. `"ERR Protocol error: invalid multibulk length"`; the connection must be
    /// closed after sending it.
    #[error("{0}")]
    Protocol(String),
    /// Reading from the connection failed, or it ended in the middle of a request.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl RespError {
    /// The reply to send before closing the connection, if the client should get one.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            RespError::Protocol(text) => Some(Reply::Error(text.clone())),
            RespError::Io(_) => None,
        }
    }
}

/// Builds a protocol error with Redis's `ERR Protocol error: ` prefix.
fn protocol_error(what: &str) -> RespError {
    RespError::Protocol(format!("ERR Protocol error: {what}"))
}

/// Frames one client connection: decodes requests, encodes replies.
///
/// Stateful: a multibulk request's arguments are taken out of the read buffer as each one
/// completes, so a large request arriving slowly is parsed once, not re-parsed per read.
#[derive(Debug)]
pub struct RespCodec {
    limits: Limits,
    /// Protocol version replies are encoded for: 2 or 3, set by `HELLO`.
    protocol: u8,
    /// The multibulk request being read, once its `*<n>` header has been consumed.
    pending: Option<Multibulk>,
    /// How many bytes at the front of the read buffer are known not to hold the line
    /// terminator being waited for, so a header or inline line that arrives in many small
    /// reads is scanned once rather than from the start on every read. Reset whenever
    /// bytes are consumed. Only valid because the framed reader hands us the same buffer
    /// every time and only we take bytes out of it.
    scanned: usize,
    /// Whether the client has authenticated; until then only small requests are accepted
    /// ([`UNAUTHENTICATED_MULTIBULK_LEN`], [`UNAUTHENTICATED_BULK_LEN`]), as in Redis.
    authenticated: bool,
}

/// A multibulk request whose header has been read but not all of its arguments.
#[derive(Debug)]
struct Multibulk {
    /// Arguments still to read.
    remaining: usize,
    /// Arguments read so far.
    args: Vec<Arg>,
    /// The small arguments' bytes, copied out of the read buffer one after another: the
    /// request's arguments then share one allocation, and copying an argument handle later
    /// only counts a reference.
    small: Vec<u8>,
    /// Length of the argument whose `$<len>` line was read but whose payload is not yet
    /// fully buffered.
    bulk_len: Option<usize>,
    /// The request's size so far against [`Limits::max_request_len`].
    size: usize,
    /// Bytes of the large arguments read so far (held outside the read buffer).
    large_bytes: usize,
}

/// One argument read so far.
#[derive(Debug)]
enum Arg {
    /// A range of [`Multibulk::small`].
    Small(std::ops::Range<usize>),
    /// A large argument, in the read buffer's own memory.
    Large(Bytes),
}

/// Room reserved for a request's small arguments (a `SET` of a short key and value fits).
const SMALL_ARGS_START: usize = 64;

/// What one parsing step achieved.
enum Progress {
    /// The buffer ends before the current request does.
    NeedMore,
    /// Bytes were consumed without completing a request (an empty request, or a
    /// multibulk header); parse on.
    Continue,
    /// A complete request.
    Done(Vec<Bytes>),
}

/// Upper bound on arguments preallocated from a `*<n>` header, so a 5-byte header cannot
/// make the server allocate megabytes before any argument has arrived.
const MAX_PREALLOC_ARGS: usize = 1024;

/// Upper bound on buffer space reserved ahead for a large bulk payload, for the same
/// reason: the claimed length is only a claim until the bytes arrive. Below it, the space
/// reserved ahead is at most what is already buffered (at least [`MIN_RESERVE_AHEAD`]), so
/// the buffer grows with the bytes that arrive, never with the length a header declares.
pub const MAX_RESERVE_AHEAD: usize = 1024 * 1024;

/// Space reserved ahead for a large payload when little is buffered yet.
pub const MIN_RESERVE_AHEAD: usize = 16 * 1024;

/// Largest argument copied out of the read buffer rather than shared with it.
const MAX_COPIED_ARG: usize = 16 * 1024;

impl RespCodec {
    /// A codec that speaks RESP2 until told otherwise.
    pub fn new(limits: Limits) -> Self {
        RespCodec {
            limits,
            protocol: 2,
            pending: None,
            scanned: 0,
            authenticated: true,
        }
    }

    /// Whether the client has authenticated: until it has, requests are limited to
    /// [`UNAUTHENTICATED_MULTIBULK_LEN`] arguments of at most [`UNAUTHENTICATED_BULK_LEN`]
    /// bytes each. A new codec counts as authenticated.
    pub fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    /// Bytes held for the request being read outside the read buffer (its complete
    /// arguments), for the connection's buffer accounting.
    pub fn pending_bytes(&self) -> usize {
        self.pending
            .as_ref()
            .map_or(0, |r| r.small.capacity() + r.large_bytes)
    }

    /// Switches reply encoding to RESP `v` (after a successful `HELLO`). 3 selects RESP3;
    /// any other value selects RESP2, so the caller validates the version first and
    /// replies `NOPROTO` itself.
    pub fn set_protocol(&mut self, v: u8) {
        self.protocol = if v == 3 { 3 } else { 2 };
    }

    /// The protocol version replies are encoded for: 2 or 3.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Reads a `*<n>` header. A count of zero or less is an empty request, skipped as
    /// Redis does.
    fn read_multibulk_header(&mut self, src: &mut BytesMut) -> Result<Progress, RespError> {
        let Some(cr) = find_byte(&mut self.scanned, src, b'\r') else {
            if src.len() > self.limits.max_inline_len {
                return Err(protocol_error("too big mbulk count string"));
            }
            return Ok(Progress::NeedMore);
        };
        // Redis wants the byte after the '\r' too (assumed to be '\n', not checked).
        if cr + 1 >= src.len() {
            return Ok(Progress::NeedMore);
        }
        let count = src.get(1..cr).and_then(parse_i64);
        let count = match count {
            Some(n) if n <= 0 => None,
            Some(n) => match usize::try_from(n) {
                Ok(n) if !self.authenticated && n > UNAUTHENTICATED_MULTIBULK_LEN => {
                    return Err(protocol_error("unauthenticated multibulk length"))
                }
                Ok(n) if n <= self.limits.max_multibulk_len => Some(n),
                _ => return Err(protocol_error("invalid multibulk length")),
            },
            None => return Err(protocol_error("invalid multibulk length")),
        };
        src.advance(cr + 2);
        self.scanned = 0;
        if let Some(count) = count {
            self.pending = Some(Multibulk {
                remaining: count,
                args: Vec::with_capacity(count.min(MAX_PREALLOC_ARGS)),
                small: Vec::with_capacity(SMALL_ARGS_START),
                bulk_len: None,
                size: 0,
                large_bytes: 0,
            });
        }
        Ok(Progress::Continue)
    }

    /// Reads as many `$<len>\r\n<bytes>\r\n` arguments of the pending request as are
    /// buffered.
    fn read_multibulk_args(&mut self, src: &mut BytesMut) -> Result<Progress, RespError> {
        let Some(request) = self.pending.as_mut() else {
            return Ok(Progress::Continue);
        };
        while request.remaining > 0 {
            let len = match request.bulk_len {
                Some(len) => len,
                None => {
                    let Some(cr) = find_byte(&mut self.scanned, src, b'\r') else {
                        if src.len() > self.limits.max_inline_len {
                            return Err(protocol_error("too big bulk count string"));
                        }
                        return Ok(Progress::NeedMore);
                    };
                    if cr + 1 >= src.len() {
                        return Ok(Progress::NeedMore);
                    }
                    match src.first() {
                        Some(b'$') => {}
                        Some(&other) => {
                            return Err(protocol_error(&format!(
                                "expected '$', got '{}'",
                                char::from(other)
                            )))
                        }
                        None => return Ok(Progress::NeedMore),
                    }
                    let len = src
                        .get(1..cr)
                        .and_then(parse_i64)
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n <= self.limits.max_bulk_len)
                        .ok_or_else(|| protocol_error("invalid bulk length"))?;
                    if !self.authenticated && len > UNAUTHENTICATED_BULK_LEN {
                        return Err(protocol_error("unauthenticated bulk length"));
                    }
                    request.size = request.size.saturating_add(len.saturating_add(ARG_OVERHEAD));
                    if request.size > self.limits.max_request_len {
                        return Err(protocol_error("request exceeds max-request-size"));
                    }
                    src.advance(cr + 2);
                    self.scanned = 0;
                    request.bulk_len = Some(len);
                    len
                }
            };
            // The payload and the two bytes after it (CRLF, not checked, as in Redis).
            let needed = len.saturating_add(2);
            if src.len() < needed {
                let ahead = (needed - src.len())
                    .min(src.len().max(MIN_RESERVE_AHEAD))
                    .min(MAX_RESERVE_AHEAD);
                src.reserve(ahead);
                return Ok(Progress::NeedMore);
            }
            // A small payload is copied out, so the read buffer stays unshared and the next
            // read reuses its space (a handle into it would pin the whole buffer for as long
            // as the value lives in the store, and make every read allocate a fresh buffer).
            // A large one is handed out without a copy: its space was reserved for it alone.
            if len <= MAX_COPIED_ARG {
                let at = request.small.len();
                request.small.extend_from_slice(&src[..len]);
                request.args.push(Arg::Small(at..at + len));
                src.advance(len);
            } else {
                request.args.push(Arg::Large(src.split_to(len).freeze()));
                request.large_bytes += len;
            }
            src.advance(2);
            self.scanned = 0;
            request.bulk_len = None;
            request.remaining -= 1;
        }
        let Some(request) = self.pending.take() else {
            return Ok(Progress::Done(Vec::new()));
        };
        let small = Bytes::from(request.small);
        let args = request
            .args
            .into_iter()
            .map(|a| match a {
                Arg::Small(range) => small.slice(range),
                Arg::Large(b) => b,
            })
            .collect();
        Ok(Progress::Done(args))
    }

    /// Reads one inline request: a line up to `\n`, split like `sdssplitargs`. A blank line
    /// is an empty request, skipped.
    fn read_inline(&mut self, src: &mut BytesMut) -> Result<Progress, RespError> {
        let Some(newline) = find_byte(&mut self.scanned, src, b'\n') else {
            if src.len() > self.limits.max_inline_len {
                return Err(protocol_error("too big inline request"));
            }
            return Ok(Progress::NeedMore);
        };
        if newline > self.limits.max_request_len {
            return Err(protocol_error("request exceeds max-request-size"));
        }
        let line = src.get(..newline).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_args(line).ok_or_else(|| protocol_error("unbalanced quotes in request"))?;
        src.advance(newline + 1);
        self.scanned = 0;
        if args.is_empty() {
            Ok(Progress::Continue)
        } else {
            Ok(Progress::Done(args))
        }
    }
}

impl Default for RespCodec {
    fn default() -> Self {
        RespCodec::new(Limits::default())
    }
}

/// A decoded request: the command and its arguments, as Redis sees them.
///
/// Empty requests (`*0`, `*-1`, blank inline lines) produce no item. At end of stream the
/// default `decode_eof` applies: a partly received request is an [`RespError::Io`].
impl Decoder for RespCodec {
    type Item = Vec<Bytes>;
    type Error = RespError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
        // Loops only past empty requests and headers; every `Continue` consumed bytes, so
        // this ends.
        loop {
            let progress = if self.pending.is_some() {
                self.read_multibulk_args(src)?
            } else {
                match src.first() {
                    None => return Ok(None),
                    Some(b'*') => self.read_multibulk_header(src)?,
                    Some(_) => self.read_inline(src)?,
                }
            };
            match progress {
                Progress::NeedMore => return Ok(None),
                Progress::Continue => continue,
                Progress::Done(args) => return Ok(Some(args)),
            }
        }
    }
}

/// Encodes replies for the protocol version set with [`RespCodec::set_protocol`].
impl Encoder<Reply> for RespCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Reply, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        encode(&frame, self.protocol, dst);
        Ok(())
    }
}

/// How many bytes [`encode`] appends for `frame`, computed without encoding it, so a reply
/// can be measured against a client's output limit before any memory is taken for it.
pub fn encoded_len(frame: &Reply, protocol: u8) -> usize {
    let resp3 = protocol == 3;
    let header = |len: usize| 1 + digits(u64::try_from(len).unwrap_or(u64::MAX)) + 2;
    let bulk = |len: usize| header(len).saturating_add(len).saturating_add(2);
    match frame {
        Reply::Ok => 5,
        Reply::Simple(text) | Reply::Error(text) => text.len().saturating_add(3),
        Reply::Int(n) => 1 + usize::from(*n < 0) + digits(n.unsigned_abs()) + 2,
        Reply::Bulk(data) => bulk(data.len()),
        Reply::Nil | Reply::NilArray => {
            if resp3 {
                3
            } else {
                5
            }
        }
        Reply::Array(items) | Reply::Set(items) => items.iter().fold(header(items.len()), |n, f| {
            n.saturating_add(encoded_len(f, protocol))
        }),
        Reply::Map(pairs) => {
            let count = if resp3 {
                pairs.len()
            } else {
                pairs.len().saturating_mul(2)
            };
            pairs.iter().fold(header(count), |n, (k, v)| {
                n.saturating_add(encoded_len(k, protocol))
                    .saturating_add(encoded_len(v, protocol))
            })
        }
        Reply::Double(d) => {
            let len = format_double(*d).len();
            if resp3 {
                len + 3
            } else {
                bulk(len)
            }
        }
    }
}

/// Decimal digits of `n`.
fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Appends `frame` to `out` as RESP `protocol` (3 for RESP3, anything else RESP2).
pub fn encode(frame: &Reply, protocol: u8, out: &mut BytesMut) {
    let resp3 = protocol == 3;
    match frame {
        Reply::Ok => out.put_slice(b"+OK\r\n"),
        Reply::Simple(text) => put_line(out, b'+', text),
        Reply::Error(text) => put_line(out, b'-', text),
        Reply::Int(n) => {
            out.put_u8(b':');
            put_i64(out, *n);
            out.put_slice(b"\r\n");
        }
        Reply::Bulk(data) => put_bulk(out, data),
        Reply::Nil => out.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" }),
        Reply::NilArray => out.put_slice(if resp3 { b"_\r\n" } else { b"*-1\r\n" }),
        Reply::Array(items) => {
            put_header(out, b'*', items.len());
            for item in items {
                encode(item, protocol, out);
            }
        }
        Reply::Map(pairs) => {
            if resp3 {
                put_header(out, b'%', pairs.len());
            } else {
                put_header(out, b'*', pairs.len().saturating_mul(2));
            }
            for (key, value) in pairs {
                encode(key, protocol, out);
                encode(value, protocol, out);
            }
        }
        Reply::Set(items) => {
            put_header(out, if resp3 { b'~' } else { b'*' }, items.len());
            for item in items {
                encode(item, protocol, out);
            }
        }
        Reply::Double(d) => {
            let text = format_double(*d);
            if resp3 {
                out.put_u8(b',');
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            } else {
                put_bulk(out, text.as_bytes());
            }
        }
    }
}

/// `+text` or `-text`. A CR or LF inside would end the line early and desynchronise the
/// client, so they go out as spaces (Redis does the same for error replies).
fn put_line(out: &mut BytesMut, prefix: u8, text: &str) {
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    for &b in text.as_bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', data.len());
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, prefix: u8, len: usize) {
    out.put_u8(prefix);
    put_u64(out, u64::try_from(len).unwrap_or(u64::MAX));
    out.put_slice(b"\r\n");
}

fn put_i64(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    put_u64(out, n.unsigned_abs());
}

/// Decimal digits without going through `fmt` (no allocation, no fallible writer).
fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// Formats a double as Redis does (`d2string`): `nan`, `inf`, `-inf`, `0`, `-0`; integral
/// values within ±2^62 as integers; otherwise the shortest round-trip digits laid out the
/// way Redis's `fpconv_dtoa` lays them out (plain when the exponent is small, else
/// `d.ddde±XX`).
fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".to_owned();
    }
    if d.is_infinite() {
        return if d < 0.0 { "-inf" } else { "inf" }.to_owned();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // Redis's double2ll range: ±LLONG_MAX/2, where the cast to an integer is exact.
    let limit = (i64::MAX / 2) as f64;
    if (-limit..=limit).contains(&d) && d.fract() == 0.0 {
        return (d as i64).to_string();
    }
    // `{:e}` gives the shortest digits that round-trip, e.g. "1.5e-7" or "1e20".
    let sci = format!("{:e}", d.abs());
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        return d.to_string();
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return d.to_string();
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if d < 0.0 {
        out.push('-');
    }
    emit_digits(&digits, exponent, &mut out);
    out
}

/// fpconv's `emit_digits`: the value is `digits * 10^k` with `k = exponent - (n - 1)`.
fn emit_digits(digits: &str, exponent: i32, out: &mut String) {
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let k = exponent - (n - 1);
    let abs_exp = exponent.abs();
    if k >= 0 && abs_exp < n + 7 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', k.unsigned_abs() as usize));
        return;
    }
    if k < 0 && (k > -7 || abs_exp < 4) {
        let offset = n + k;
        if offset <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', offset.unsigned_abs() as usize));
            out.push_str(digits);
        } else {
            let (int_part, frac_part) = digits.split_at(offset.unsigned_abs() as usize);
            out.push_str(int_part);
            out.push('.');
            out.push_str(frac_part);
        }
        return;
    }
    let (first, rest) = digits.split_at(1.min(digits.len()));
    out.push_str(first);
    if !rest.is_empty() {
        out.push('.');
        out.push_str(rest);
    }
    out.push('e');
    out.push(if exponent < 0 { '-' } else { '+' });
    // At least two exponent digits, like printf's %e.
    if abs_exp < 10 {
        out.push('0');
    }
    out.push_str(&abs_exp.to_string());
}

/// Finds `byte` in `buf`, resuming the scan where the previous unsuccessful one stopped.
fn find_byte(scanned: &mut usize, buf: &[u8], byte: u8) -> Option<usize> {
    let from = (*scanned).min(buf.len());
    match buf
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == byte))
    {
        Some(i) => {
            *scanned = from + i;
            Some(from + i)
        }
        None => {
            *scanned = buf.len();
            None
        }
    }
}

/// C `isspace` in the "C" locale, which `sdssplitargs` uses between arguments.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|v| u8::try_from(v).ok())
}

/// Splits an inline request like Redis's `sdssplitargs`. `None` means unbalanced quotes.
///
/// Arguments are separated by whitespace. `"double quotes"` understand `\n \r \t \b \a`,
/// `\xHH`, and a backslash before any other character stands for that character;
/// `'single quotes'` understand only `\'`. A quote may open mid-argument (`a"b c"` is
/// `ab c`), but a closing quote must be followed by whitespace or the end of the line.
/// An empty quoted argument (`""`) is kept, as current Redis keeps it (versions before 6
/// dropped it).
fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    // Redis splits a C string: the line ends at its first NUL.
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => line.get(..nul).unwrap_or_default(),
        None => line,
    };
    // Reading past the end yields NUL, mirroring the C string's terminator, so the port
    // below can keep the original's look-ahead structure.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while at(p) != 0 && is_c_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Some(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single, mut done) = (false, false, false);
        // Every round either advances `p` or, at the terminator, finishes or fails.
        while !done {
            let c = at(p);
            if in_double {
                let hex = (c == b'\\' && at(p + 1) == b'x')
                    .then(|| Some(hex_value(at(p + 2))? * 16 + hex_value(at(p + 3))?))
                    .flatten();
                if let Some(byte) = hex {
                    current.push(byte);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => current.push(c),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        args.push(Bytes::from(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Small arguments are copied out of the read buffer, all of a request's into one
    /// allocation, so no stored value keeps the buffer alive; a large one is handed out from
    /// the buffer without a copy.
    #[test]
    fn small_arguments_leave_the_read_buffer_large_ones_share_it() {
        let large = vec![b'x'; MAX_COPIED_ARG + 1];
        let mut wire = b"*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n".to_vec();
        wire.extend_from_slice(format!("${}\r\n", large.len()).as_bytes());
        wire.extend_from_slice(&large);
        wire.extend_from_slice(b"\r\n");
        let mut src = BytesMut::from(&wire[..]);
        let buffer = src.as_ptr() as usize..src.as_ptr() as usize + src.capacity();
        let args = RespCodec::default()
            .decode(&mut src)
            .expect("valid")
            .expect("whole");
        assert_eq!(args.len(), 4);
        assert_eq!(
            (&args[0][..], &args[1][..], &args[2][..]),
            (&b"SET"[..], &b"key"[..], &b"value"[..])
        );
        assert_eq!(&args[3][..], &large[..]);
        let at = |b: &Bytes| b.as_ptr() as usize;
        for arg in &args[..3] {
            assert!(
                !buffer.contains(&at(arg)),
                "a small argument points into the read buffer"
            );
        }
        // One allocation for the small ones: laid out one after another.
        assert_eq!(at(&args[1]), at(&args[0]) + 3);
        assert_eq!(at(&args[2]), at(&args[1]) + 3);
        assert!(buffer.contains(&at(&args[3])), "the large argument was copied");
    }

    /// Small limits so every limit can be crossed with a few bytes.
    fn small() -> Limits {
        Limits {
            max_bulk_len: 16,
            max_multibulk_len: 4,
            max_inline_len: 32,
            max_request_len: usize::MAX,
        }
    }

    /// What decoding a byte stream produced.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        requests: Vec<Vec<Bytes>>,
        error: Option<String>,
        /// Bytes left in the buffer (an incomplete request).
        leftover: usize,
    }

    /// Feeds `chunks` one after another, decoding everything decodable after each, until
    /// the first error.
    fn feed<'a>(limits: Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut codec = RespCodec::new(limits);
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            // Each request consumes at least one byte; more rounds means no progress.
            let bound = buf.len() + 1;
            let mut rounds = 0;
            loop {
                rounds += 1;
                assert!(
                    rounds <= bound,
                    "decoder returned requests without consuming input"
                );
                match codec.decode(&mut buf) {
                    Ok(Some(request)) => requests.push(request),
                    Ok(None) => break,
                    Err(e) => {
                        return Outcome {
                            requests,
                            error: Some(e.to_string()),
                            leftover: buf.len(),
                        }
                    }
                }
            }
        }
        Outcome {
            requests,
            error: None,
            leftover: buf.len(),
        }
    }

    fn whole(limits: Limits, input: &[u8]) -> Outcome {
        feed(limits, [input])
    }

    fn bytewise(limits: Limits, input: &[u8]) -> Outcome {
        feed(limits, input.chunks(1))
    }

    fn req(args: &[&[u8]]) -> Vec<Bytes> {
        args.iter().map(|a| Bytes::copy_from_slice(a)).collect()
    }

    fn ok(requests: Vec<Vec<Bytes>>) -> Outcome {
        Outcome {
            requests,
            error: None,
            leftover: 0,
        }
    }

    fn error(input: &[u8], limits: Limits) -> String {
        let outcome = whole(limits, input);
        // The same error must come out however the bytes are split.
        assert_eq!(
            bytewise(limits, input).error,
            outcome.error,
            "bytewise differs for {input:?}"
        );
        match outcome.error {
            Some(text) => text,
            None => panic!("no error for {input:?}: {:?}", outcome.requests),
        }
    }

    fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn multibulk_request() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        assert_eq!(whole(small(), input), ok(vec![req(&[b"SET", b"k", b""])]));
    }

    #[test]
    fn multibulk_payload_is_binary_safe() {
        let input = b"*2\r\n$4\r\nECHO\r\n$6\r\na\r\n\0*$\r\n";
        assert_eq!(whole(small(), input), ok(vec![req(&[b"ECHO", b"a\r\n\0*$"])]));
    }

    #[test]
    fn incomplete_request_waits_and_keeps_its_bytes() {
        let input = b"*2\r\n$4\r\nECHO\r\n$5\r\nhel";
        let outcome = whole(small(), input);
        assert_eq!(outcome.requests, Vec::<Vec<Bytes>>::new());
        assert_eq!(outcome.error, None);
        // Arguments already complete were taken out of the buffer.
        assert_eq!(outcome.leftover, b"hel".len());
    }

    #[test]
    fn inline_requests() {
        assert_eq!(whole(small(), b"PING\r\n"), ok(vec![req(&[b"PING"])]));
        assert_eq!(whole(small(), b"SET k v\n"), ok(vec![req(&[b"SET", b"k", b"v"])]));
        assert_eq!(
            whole(small(), b"  GET \t  k  \r\n"),
            ok(vec![req(&[b"GET", b"k"])])
        );
        // Only one '\r' before the '\n' is the line ending; another is a separator.
        assert_eq!(whole(small(), b"GET k\r\r\n"), ok(vec![req(&[b"GET", b"k"])]));
    }

    #[test]
    fn inline_quotes_and_escapes() {
        let cases: &[(&[u8], Vec<Vec<Bytes>>)] = &[
            (b"SET \"a b\" 'c d'\r\n", vec![req(&[b"SET", b"a b", b"c d"])]),
            (
                b"ECHO \"\\n\\r\\t\\b\\a\\\\\\\"\\x41\\x4a\\q\"\r\n",
                vec![req(&[b"ECHO", b"\n\r\t\x08\x07\\\"AJq"])],
            ),
            // \x needs two hex digits; otherwise the backslash just escapes the 'x'.
            (b"ECHO \"\\xZZ\\x4\"\r\n", vec![req(&[b"ECHO", b"xZZx4"])]),
            (b"ECHO 'it\\'s \\n'\r\n", vec![req(&[b"ECHO", b"it's \\n"])]),
            (b"ECHO a\"b c\"\r\n", vec![req(&[b"ECHO", b"ab c"])]),
            (b"SET k \"\"\r\n", vec![req(&[b"SET", b"k", b""])]),
            (b"ECHO \"a\"\t\r\n", vec![req(&[b"ECHO", b"a"])]),
            // Redis splits the line as a C string: it ends at a NUL.
            (b"GET a\0b \"c\r\n", vec![req(&[b"GET", b"a"])]),
        ];
        for (input, expected) in cases {
            assert_eq!(whole(small(), input), ok(expected.clone()), "input {input:?}");
        }
    }

    #[test]
    fn unbalanced_quotes() {
        for input in [
            &b"GET \"abc\r\n"[..],
            b"GET \"a\"b\r\n",
            b"GET 'a\r\n",
            b"GET 'a'b\r\n",
            b"GET \"a\\\"\r\n",
        ] {
            assert_eq!(
                error(input, small()),
                "ERR Protocol error: unbalanced quotes in request",
                "{input:?}"
            );
        }
    }

    #[test]
    fn empty_requests_are_skipped() {
        let input = b"*0\r\n*-1\r\n\r\n\n   \r\n*-5\r\nPING\r\n";
        assert_eq!(whole(small(), input), ok(vec![req(&[b"PING"])]));
        assert_eq!(whole(small(), b"*0\r\n\r\n"), ok(vec![]));
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let mut input = multibulk(&[b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]);
        input.extend_from_slice(b"GET k\r\n*0\r\n");
        input.extend_from_slice(&multibulk(&[b"DEL".to_vec(), b"k".to_vec()]));
        input.extend_from_slice(b"\r\nPING\n*1\r\n$4\r\nPI");
        let expected = vec![
            req(&[b"SET", b"k", b"v"]),
            req(&[b"GET", b"k"]),
            req(&[b"DEL", b"k"]),
            req(&[b"PING"]),
        ];
        let outcome = whole(small(), &input);
        assert_eq!(outcome.requests, expected);
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.leftover, b"PI".len());
        assert_eq!(bytewise(small(), &input), outcome);
    }

    #[test]
    fn multibulk_length_errors() {
        let text = "ERR Protocol error: invalid multibulk length";
        for input in [
            &b"*x\r\n"[..],
            b"*\r\n",
            b"*01\r\n",
            b"*+1\r\n",
            b"*1 \r\n",
            b"*-0\r\n",
            b"*5\r\n",
        ] {
            assert_eq!(error(input, small()), text, "{input:?}");
        }
        // At the limit is fine.
        let args = vec![b"a".to_vec(); 4];
        assert_eq!(whole(small(), &multibulk(&args)).requests.len(), 1);
    }

    #[test]
    fn expected_dollar() {
        assert_eq!(
            error(b"*1\r\n:3\r\n", small()),
            "ERR Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            error(b"*2\r\n$1\r\na\r\nX\r\n", small()),
            "ERR Protocol error: expected '$', got 'X'"
        );
    }

    #[test]
    fn bulk_length_errors() {
        let text = "ERR Protocol error: invalid bulk length";
        for input in [
            &b"*1\r\n$x\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$17\r\n",
            b"*1\r\n$01\r\n",
        ] {
            assert_eq!(error(input, small()), text, "{input:?}");
        }
        // At the limit is fine.
        let at_limit = multibulk(&[vec![b'x'; 16]]);
        assert_eq!(whole(small(), &at_limit), ok(vec![req(&[&[b'x'; 16]])]));
    }

    #[test]
    fn too_big_inline_request() {
        // Up to the limit without a newline: still waiting.
        let waiting = whole(small(), &[b'a'; 32]);
        assert_eq!((waiting.error, waiting.leftover), (None, 32));
        assert_eq!(
            error(&[b'a'; 33], small()),
            "ERR Protocol error: too big inline request"
        );
        // A complete line is accepted whatever its length, as in Redis.
        let mut long = vec![b'a'; 100];
        long.push(b'\n');
        assert_eq!(whole(small(), &long).requests, vec![req(&[&[b'a'; 100]])]);
    }

    #[test]
    fn too_big_count_strings() {
        let mut header = b"*".to_vec();
        header.extend_from_slice(&[b'1'; 31]);
        assert_eq!(whole(small(), &header).error, None);
        header.push(b'1');
        assert_eq!(
            error(&header, small()),
            "ERR Protocol error: too big mbulk count string"
        );

        let mut bulk = b"*1\r\n$".to_vec();
        bulk.extend_from_slice(&[b'1'; 31]);
        assert_eq!(whole(small(), &bulk).error, None);
        bulk.push(b'1');
        assert_eq!(
            error(&bulk, small()),
            "ERR Protocol error: too big bulk count string"
        );
    }

    #[test]
    fn default_limits_are_redis() {
        let limits = Limits::default();
        assert_eq!(limits.max_bulk_len, 512 << 20);
        assert_eq!(limits.max_multibulk_len, 1 << 20);
        assert_eq!(limits.max_inline_len, 64 << 10);
    }

    #[test]
    fn protocol_error_reply_frame() {
        let err = protocol_error("invalid bulk length");
        assert_eq!(
            err.reply(),
            Some(Reply::Error("ERR Protocol error: invalid bulk length".into()))
        );
        let mut out = BytesMut::new();
        if let Some(frame) = err.reply() {
            encode(&frame, 2, &mut out);
        }
        assert_eq!(&out[..], b"-ERR Protocol error: invalid bulk length\r\n");
        assert_eq!(RespError::from(std::io::Error::other("x")).reply(), None);
    }

    fn encoded(frame: &Reply, protocol: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(frame, protocol, &mut out);
        out.to_vec()
    }

    #[test]
    fn encoding_resp2_and_resp3() {
        let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        // (frame, RESP2 bytes, RESP3 bytes)
        let cases: Vec<(Reply, &[u8], &[u8])> = vec![
            (Reply::Ok, b"+OK\r\n", b"+OK\r\n"),
            (Reply::Simple("OK".into()), b"+OK\r\n", b"+OK\r\n"),
            (Reply::Simple("string".into()), b"+string\r\n", b"+string\r\n"),
            (Reply::Error("ERR bad".into()), b"-ERR bad\r\n", b"-ERR bad\r\n"),
            (Reply::Int(-42), b":-42\r\n", b":-42\r\n"),
            (
                Reply::Int(i64::MIN),
                b":-9223372036854775808\r\n",
                b":-9223372036854775808\r\n",
            ),
            (bulk("hi"), b"$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
            (bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n"),
            (Reply::Nil, b"$-1\r\n", b"_\r\n"),
            (Reply::NilArray, b"*-1\r\n", b"_\r\n"),
            (Reply::Array(vec![]), b"*0\r\n", b"*0\r\n"),
            (
                Reply::Array(vec![Reply::Int(1), bulk("a"), Reply::Nil]),
                b"*3\r\n:1\r\n$1\r\na\r\n$-1\r\n",
                b"*3\r\n:1\r\n$1\r\na\r\n_\r\n",
            ),
            (
                Reply::Map(vec![(bulk("a"), Reply::Int(1)), (bulk("b"), Reply::Double(1.5))]),
                b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$3\r\n1.5\r\n",
                b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n,1.5\r\n",
            ),
            (
                Reply::Set(vec![bulk("x")]),
                b"*1\r\n$1\r\nx\r\n",
                b"~1\r\n$1\r\nx\r\n",
            ),
            (Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n"),
            (Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n"),
            (Reply::Double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n"),
            (
                Reply::Array(vec![Reply::Set(vec![Reply::Int(1)]), Reply::Map(vec![])]),
                b"*2\r\n*1\r\n:1\r\n*0\r\n",
                b"*2\r\n~1\r\n:1\r\n%0\r\n",
            ),
        ];
        for (frame, resp2, resp3) in &cases {
            assert_eq!(encoded(frame, 2), resp2.to_vec(), "RESP2 {frame:?}");
            assert_eq!(encoded(frame, 3), resp3.to_vec(), "RESP3 {frame:?}");
            // A reply is measured before it is encoded (the client output limit).
            assert_eq!(encoded_len(frame, 2), resp2.len(), "RESP2 length {frame:?}");
            assert_eq!(encoded_len(frame, 3), resp3.len(), "RESP3 length {frame:?}");
        }
    }

    #[test]
    fn status_lines_cannot_break_framing() {
        assert_eq!(encoded(&Reply::Error("ERR a\r\nb".into()), 2), b"-ERR a  b\r\n");
        assert_eq!(encoded(&Reply::Simple("a\nb".into()), 3), b"+a b\r\n");
    }

    #[test]
    fn doubles_format_like_redis() {
        let cases: &[(f64, &str)] = &[
            (1.5, "1.5"),
            (3.5, "3.5"),
            (3.0, "3"),
            (-2.0, "-2"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::NAN, "nan"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (0.000001, "0.000001"),
            (1e-7, "1e-07"),
            (1.5e-7, "1.5e-07"),
            (1e20, "1e+20"),
            (1e300, "1e+300"),
            (-1.25e-300, "-1.25e-300"),
            (4611686018427387904.0, "4611686018427387904"),
            (5e18, "5e+18"),
            (1.2345678901234567e20, "123456789012345670000"),
        ];
        for &(value, text) in cases {
            assert_eq!(format_double(value), text, "{value:e}");
        }
    }

    #[test]
    fn codec_encodes_for_its_protocol() {
        let mut codec = RespCodec::default();
        assert_eq!(codec.protocol(), 2);
        let mut out = BytesMut::new();
        codec.encode(Reply::Nil, &mut out).expect("encoding into memory");
        codec.set_protocol(3);
        assert_eq!(codec.protocol(), 3);
        codec.encode(Reply::Nil, &mut out).expect("encoding into memory");
        codec.set_protocol(7);
        assert_eq!(codec.protocol(), 2);
        assert_eq!(&out[..], b"$-1\r\n_\r\n");
    }

    #[test]
    fn eof_in_the_middle_of_a_request_is_an_io_error() {
        let mut codec = RespCodec::default();
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPI"[..]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(RespError::Io(_))));
    }

    /// Splits `input` into chunks of the given sizes (cycled), the last one taking the rest.
    fn chunked<'a>(input: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = input;
        let mut i = 0;
        while !rest.is_empty() {
            let size = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(size);
            chunks.push(chunk);
            rest = tail;
            i += 1;
        }
        chunks
    }

    /// A piece of a request stream: headers with plausible and implausible counts, line
    /// ends, quotes, and arbitrary bytes.
    fn fragment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (-2i64..6).prop_map(|n| format!("*{n}\r\n").into_bytes()),
            (-1i64..20).prop_map(|n| format!("${n}\r\n").into_bytes()),
            // Declared lengths far beyond what arrives.
            prop::sample::select(vec![1i64 << 20, 1 << 29, 1 << 40])
                .prop_map(|n| format!("${n}\r\n").into_bytes()),
            prop::sample::select(vec![
                "\r\n", "\n", "\r", "\"", "'", " ", "\\x4", "PING", "*", "$", "\0"
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes, fed in any chunking, end in requests, an error or a wait: never a
        /// panic or a stall.
        #[test]
        fn arbitrary_bytes_never_panic(
            input in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..4096),
                // Protocol-shaped fragments, so the multibulk paths are reached often.
                prop::collection::vec(fragment(), 0..400)
                    .prop_map(|parts| parts.concat().into_iter().take(4096).collect::<Vec<u8>>()),
            ],
            sizes in prop::collection::vec(1usize..64, 1..16),
        ) {
            // With small limits, where a size limit trips depends on how much was buffered
            // at the time (as in Redis), so only termination is checked there.
            feed(small(), chunked(&input, &sizes));
            // Far below the default limits, the chunking must not matter.
            let limits = Limits::default();
            let in_chunks = feed(limits, chunked(&input, &sizes));
            let at_once = whole(limits, &input);
            prop_assert_eq!(in_chunks.requests, at_once.requests);
            prop_assert_eq!(in_chunks.error, at_once.error);
        }

        /// Any argument vector sent as a multibulk request comes back unchanged, however
        /// the bytes are split.
        #[test]
        fn multibulk_round_trips(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..6),
        ) {
            let input = multibulk(&args);
            let expected: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            let limits = Limits::default();
            prop_assert_eq!(whole(limits, &input), ok(vec![expected.clone()]));
            for split in 0..=input.len() {
                let (head, tail) = input.split_at(split);
                prop_assert_eq!(feed(limits, [head, tail]), ok(vec![expected.clone()]), "split at {}", split);
            }
            prop_assert_eq!(bytewise(limits, &input), ok(vec![expected]));
        }
    }

    /// Feeds `chunks` and checks, after every decode, that the memory held for the client
    /// (the read buffer's capacity and the arguments set aside) grew with the bytes received,
    /// never with a length a header declared. Returns whether decoding ended in an error.
    fn feed_bounded(limits: Limits, authenticated: bool, chunks: Vec<&[u8]>) -> Result<bool, TestCaseError> {
        let mut codec = RespCodec::new(limits);
        codec.set_authenticated(authenticated);
        let mut buf = BytesMut::new();
        let mut received = 0usize;
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            received += chunk.len();
            let bound = buf.len() + 1;
            for _ in 0..bound {
                let result = codec.decode(&mut buf);
                // Growth by doubling (the buffer's own, and one reserve ahead of at most what
                // is buffered or MIN_RESERVE_AHEAD) stays within a constant factor.
                prop_assert!(
                    buf.capacity() <= 4 * received + 2 * MIN_RESERVE_AHEAD,
                    "read buffer capacity {} after {} bytes received",
                    buf.capacity(),
                    received
                );
                prop_assert!(
                    codec.pending_bytes() <= 2 * received + SMALL_ARGS_START,
                    "{} bytes set aside after {} bytes received",
                    codec.pending_bytes(),
                    received
                );
                match result {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => return Ok(true),
                }
            }
        }
        Ok(false)
    }

    /// A valid request stream to mutate.
    fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..24),
                    // Large enough to be held outside the read buffer.
                    (MAX_COPIED_ARG + 1..MAX_COPIED_ARG + 64).prop_map(|n| vec![b'v'; n]),
                ],
                1..5,
            ),
            1..4,
        )
        .prop_map(|requests| requests.iter().flat_map(|r| multibulk(r)).collect())
    }

    /// One change to a byte stream.
    #[derive(Debug, Clone)]
    enum Mutation {
        Set(usize, u8),
        Insert(usize, Vec<u8>),
        Remove(usize, usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
            (
                any::<usize>(),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 1..8),
                    // Declared lengths far beyond what is sent.
                    prop::sample::select(vec![
                        "$536870912\r\n",
                        "$1073741824\r\n",
                        "*1048576\r\n",
                        "$99999999999\r\n",
                        "*11\r\n",
                        "$16385\r\n",
                    ])
                    .prop_map(|s| s.as_bytes().to_vec()),
                ]
            )
                .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
            (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove(at, n)),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            let len = input.len().max(1);
            match m {
                Mutation::Set(at, b) => {
                    if let Some(x) = input.get_mut(at % len) {
                        *x = *b;
                    }
                }
                Mutation::Insert(at, bytes) => {
                    let at = at % (input.len() + 1);
                    input.splice(at..at, bytes.iter().copied());
                }
                Mutation::Remove(at, n) => {
                    let at = at % len;
                    let end = (at + n).min(input.len());
                    if at < end {
                        input.drain(at..end);
                    }
                }
                Mutation::Truncate(at) => input.truncate(at % len),
            }
        }
        input
    }

    /// A header declaring a huge argument makes the buffer grow only with what arrives (it
    /// used to reserve 1 MiB ahead at once for any declared length above it).
    #[test]
    fn a_declared_length_does_not_reserve_memory() {
        let mut codec = RespCodec::default();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\nabc"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert!(
            buf.capacity() <= 2 * MIN_RESERVE_AHEAD,
            "capacity {} after a few bytes",
            buf.capacity()
        );
    }

    /// Before AUTH only small requests are accepted, with Redis's error texts.
    #[test]
    fn unauthenticated_clients_send_small_requests_only() {
        let limits = Limits::default();
        let decode = |input: &[u8], authenticated: bool| {
            let mut codec = RespCodec::new(limits);
            codec.set_authenticated(authenticated);
            let mut buf = BytesMut::from(input);
            codec.decode(&mut buf).map_err(|e| e.to_string())
        };
        let eleven = multibulk(&vec![b"a".to_vec(); 11]);
        assert_eq!(
            decode(&eleven, false),
            Err("ERR Protocol error: unauthenticated multibulk length".into())
        );
        assert!(matches!(decode(&eleven, true), Ok(Some(_))));
        let ten = multibulk(&vec![b"a".to_vec(); 10]);
        assert!(matches!(decode(&ten, false), Ok(Some(_))));
        let big = multibulk(&[b"AUTH".to_vec(), vec![b'p'; UNAUTHENTICATED_BULK_LEN + 1]]);
        assert_eq!(
            decode(&big, false),
            Err("ERR Protocol error: unauthenticated bulk length".into())
        );
        // Refused on the header alone, before any of the payload arrived.
        assert_eq!(
            decode(b"*2\r\n$4\r\nAUTH\r\n$536870912\r\n", false),
            Err("ERR Protocol error: unauthenticated bulk length".into())
        );
        let at_limit = multibulk(&[b"AUTH".to_vec(), vec![b'p'; UNAUTHENTICATED_BULK_LEN]]);
        assert!(matches!(decode(&at_limit, false), Ok(Some(_))));
    }

    /// A request is limited as a whole, counting each argument's overhead, not only per
    /// argument.
    #[test]
    fn the_whole_request_is_limited() {
        let limits = Limits {
            max_request_len: 100,
            ..Limits::default()
        };
        // 3 args: 3 + 1 + 40 bytes + 3 * 16 = 92.
        let fits = multibulk(&[b"SET".to_vec(), b"k".to_vec(), vec![b'v'; 40]]);
        assert_eq!(whole(limits, &fits).requests.len(), 1);
        // 4 + 2 + 2 + 30 + 30 + 5 * 16 = 148.
        let too_big = multibulk(&[
            b"MSET".to_vec(),
            b"k1".to_vec(),
            vec![b'v'; 30],
            b"k2".to_vec(),
            vec![b'v'; 30],
        ]);
        assert_eq!(
            error(&too_big, limits),
            "ERR Protocol error: request exceeds max-request-size"
        );
        let mut inline = vec![b'a'; 101];
        inline.push(b'\n');
        assert_eq!(
            error(&inline, limits),
            "ERR Protocol error: request exceeds max-request-size"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        /// Arbitrary bytes and mutated valid requests, in any chunking, never panic, and the
        /// memory held grows only with the bytes received.
        #[test]
        fn decoding_is_bounded_by_what_arrived(
            input in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..4096),
                prop::collection::vec(fragment(), 0..200)
                    .prop_map(|parts| parts.concat().into_iter().take(4096).collect::<Vec<u8>>()),
                (valid_stream(), prop::collection::vec(mutation(), 0..6))
                    .prop_map(|(s, m)| mutate(s, &m)),
            ],
            sizes in prop::collection::vec(1usize..4096, 1..8),
            authenticated in any::<bool>(),
            max_request_len in prop_oneof![Just(usize::MAX), 64usize..65536],
        ) {
            let limits = Limits { max_request_len, ..Limits::default() };
            feed_bounded(limits, authenticated, chunked(&input, &sizes))?;
            feed_bounded(small(), authenticated, chunked(&input, &sizes))?;
        }
    }
}
