//! The backup file: versioned, every section checksummed, the whole file hashed.
//!
//! ```text
//! file     = magic "STNDBKUP" (8) | format version (u16 LE) | section* | trailer
//! section  = kind (u8) | length (u32 LE) | payload (length bytes) | CRC-32C of kind, length
//!            and payload (u32 LE)
//! kinds    = 1 header (postcard [`Header`]: first, once)
//!            2 key space chunk (postcard `Vec<KvRecord>`, in key order)
//!            3 events (postcard `Vec<Event>`), 4 change control (postcard `ChangeControl`:
//!            service versions, deploy history, cluster settings versions)
//!            255 end (postcard [`End`]: chunk and key counts, the key space digest; last)
//! trailer  = "STNDEND!" (8) | SHA-256 of every byte before the trailer (32)
//! ```
//!
//! Every byte read is treated as hostile: lengths are checked against bounded maxima before
//! anything is allocated, nothing is recursive, and a truncated, corrupted or bit-flipped file
//! is an error that says what is wrong and where ([`FormatError`]), never a panic. A reader
//! holds one section in memory at a time.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::cluster::backup::{KvDigest, KvRecord, KvRecordRef, Sha256};

pub const MAGIC: &[u8; 8] = b"STNDBKUP";
pub const TRAILER_MAGIC: &[u8; 8] = b"STNDEND!";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

pub const KIND_HEADER: u8 = 1;
pub const KIND_KV: u8 = 2;
pub const KIND_EVENTS: u8 = 3;
pub const KIND_CHANGE: u8 = 4;
pub const KIND_END: u8 = 255;

/// Largest header and end sections.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest section of any other kind (a key space chunk holds at least one key, which may be
/// as large as the store's largest request).
pub const MAX_SECTION: usize = crate::sizes::MAX_FRAME;

/// What a backup says about itself (the first section).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: u16,
    /// The Raft log index and term the copy was taken at.
    pub index: u64,
    pub term: u64,
    pub epoch: u64,
    pub taken_unix_ms: u64,
    /// The node whose state machine was copied.
    pub node: String,
    /// How the copy is consistent (`leader read barrier`, `local applied index`).
    pub read: String,
    /// The build version of every member, as the cluster state recorded it.
    pub versions: std::collections::BTreeMap<String, String>,
    pub keys: u64,
    /// Bytes of keys and values.
    pub data_bytes: u64,
    pub events: u64,
    /// The build that wrote the file.
    pub build: String,
    /// Where the data came from: `standin` (a cluster's state machine) or `redis` (an import).
    pub source: String,
}

/// The last section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct End {
    pub kv_chunks: u32,
    pub keys: u64,
    /// SHA-256 over the key space (see `cluster::backup::KvDigest`), hex.
    pub kv_digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read or write the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a standin backup (the file does not start with {:?})", std::str::from_utf8(MAGIC).unwrap_or(""))]
    Magic,
    #[error("backup format {0} is not known to this build (it reads format {FORMAT_VERSION})")]
    Version(u16),
    #[error("the file is cut short at byte {offset}: {what} is missing")]
    Truncated { what: String, offset: u64 },
    #[error("{what} at byte {offset} claims {len} bytes, more than the {max} allowed")]
    TooLarge {
        what: String,
        offset: u64,
        len: u64,
        max: u64,
    },
    #[error("{what} at byte {offset} is damaged: its checksum does not match")]
    Checksum { what: String, offset: u64 },
    #[error("{what} at byte {offset} cannot be decoded: {reason}")]
    Decode {
        what: String,
        offset: u64,
        reason: String,
    },
    #[error("the file's structure is wrong at byte {offset}: {reason}")]
    Structure { offset: u64, reason: String },
    #[error("the whole-file checksum does not match: the file was changed after it was written")]
    FileHash,
    #[error("the key space does not match its digest: {0}")]
    Digest(String),
    #[error("{0}")]
    Other(String),
}

/// CRC-32C (Castagnoli), table-driven.
const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// A running CRC-32C.
#[derive(Clone, Copy)]
pub struct Crc(u32);

impl Crc {
    pub fn new() -> Crc {
        Crc(!0)
    }
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for b in data {
            c = CRC_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    pub fn finish(self) -> u32 {
        !self.0
    }
}

impl Default for Crc {
    fn default() -> Self {
        Crc::new()
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HEADER => "the header",
        KIND_KV => "a key space chunk",
        KIND_EVENTS => "the events",
        KIND_CHANGE => "the change control part",
        KIND_END => "the end section",
        _ => "a section of unknown kind",
    }
}

/// Writes a backup file section by section, hashing everything.
pub struct Writer<W: Write> {
    out: W,
    sha: Sha256,
    pub bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Starts a file: magic, version, then the header section.
    pub fn new(out: W, header: &Header) -> Result<Writer<W>, FormatError> {
        let sha = Sha256::new().ok_or_else(|| FormatError::Other("SHA-256 is not available".into()))?;
        let mut w = Writer { out, sha, bytes: 0 };
        w.raw(MAGIC)?;
        w.raw(&FORMAT_VERSION.to_le_bytes())?;
        let h = postcard::to_allocvec(header).map_err(|e| FormatError::Other(e.to_string()))?;
        w.section(KIND_HEADER, &h)?;
        Ok(w)
    }

    fn raw(&mut self, b: &[u8]) -> Result<(), FormatError> {
        self.out.write_all(b)?;
        self.sha.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// One section: kind, length, payload, CRC.
    pub fn section(&mut self, kind: u8, payload: &[u8]) -> Result<(), FormatError> {
        let max = if kind == KIND_HEADER || kind == KIND_END {
            MAX_HEADER
        } else {
            MAX_SECTION
        };
        if payload.len() > max {
            return Err(FormatError::Other(format!(
                "{} of {} bytes is larger than the {max} a reader accepts",
                kind_name(kind),
                payload.len()
            )));
        }
        let len = (payload.len() as u32).to_le_bytes();
        let mut crc = Crc::new();
        crc.update(&[kind]);
        crc.update(&len);
        crc.update(payload);
        self.raw(&[kind])?;
        self.raw(&len)?;
        self.raw(payload)?;
        self.raw(&crc.finish().to_le_bytes())
    }

    /// The end section and the trailer; returns the output.
    pub fn finish(mut self, end: &End) -> Result<(W, u64), FormatError> {
        let e = postcard::to_allocvec(end).map_err(|e| FormatError::Other(e.to_string()))?;
        self.section(KIND_END, &e)?;
        let hash = self.sha.finish();
        self.out.write_all(TRAILER_MAGIC)?;
        self.out.write_all(&hash)?;
        self.out.flush()?;
        Ok((self.out, self.bytes + 40))
    }
}

/// What was read and checked in a backup file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub header: Header,
    pub kv_chunks: u32,
    pub keys: u64,
    pub kv_digest: String,
    pub events: u64,
    /// Service versions, finished deploys and settings versions in the change control part.
    pub service_versions: u64,
    pub deploys: u64,
    pub settings_versions: u64,
    /// Bytes of each part in the file.
    pub kv_bytes: u64,
    pub events_bytes: u64,
    pub change_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
}

/// A reader that hashes what it reads and knows its offset.
struct Input<R: Read> {
    inner: R,
    sha: Sha256,
    offset: u64,
}

impl<R: Read> Input<R> {
    /// Reads exactly `buf.len()` bytes (`what` names them if the file ends first).
    fn exact(&mut self, buf: &mut [u8], what: &str, hash: bool) -> Result<(), FormatError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(FormatError::Truncated {
                        what: what.to_string(),
                        offset: self.offset + got as u64,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::Io(e)),
            }
        }
        if hash {
            self.sha.update(buf);
        }
        self.offset += buf.len() as u64;
        Ok(())
    }
}

/// Reads and checks a whole backup file from `input`, handing each key space chunk to
/// `on_chunk` (in order) once its checksum passed. Every check is made: magic, version,
/// section checksums and order, lengths, decoding, the key count and digest against the end
/// section, and the whole-file hash. `on_chunk` may stop the read with an error.
pub fn read<R: Read>(
    input: R,
    mut on_chunk: impl FnMut(Vec<KvRecord>) -> Result<(), FormatError>,
) -> Result<Summary, FormatError> {
    let mut inp = Input {
        inner: input,
        sha: Sha256::new().ok_or_else(|| FormatError::Other("SHA-256 is not available".into()))?,
        offset: 0,
    };
    let mut magic = [0u8; 8];
    inp.exact(&mut magic, "the magic number", true)?;
    if &magic != MAGIC {
        return Err(FormatError::Magic);
    }
    let mut v = [0u8; 2];
    inp.exact(&mut v, "the format version", true)?;
    let version = u16::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let mut header: Option<Header> = None;
    let mut digest = KvDigest::new().ok_or_else(|| FormatError::Other("SHA-256 is not available".into()))?;
    let mut last_key: Option<bytes::Bytes> = None;
    let mut s = Summary {
        header: Header {
            format: version,
            index: 0,
            term: 0,
            epoch: 0,
            taken_unix_ms: 0,
            node: String::new(),
            read: String::new(),
            versions: Default::default(),
            keys: 0,
            data_bytes: 0,
            events: 0,
            build: String::new(),
            source: String::new(),
        },
        kv_chunks: 0,
        keys: 0,
        kv_digest: String::new(),
        events: 0,
        service_versions: 0,
        deploys: 0,
        settings_versions: 0,
        kv_bytes: 0,
        events_bytes: 0,
        change_bytes: 0,
        file_bytes: 0,
        sha256: String::new(),
    };
    let end: End = loop {
        let at = inp.offset;
        let mut head = [0u8; 5];
        inp.exact(&mut head, "a section (or the end section)", true)?;
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let what = kind_name(kind);
        if !matches!(kind, KIND_HEADER | KIND_KV | KIND_EVENTS | KIND_CHANGE | KIND_END) {
            return Err(FormatError::Structure {
                offset: at,
                reason: format!("unknown section kind {kind}"),
            });
        }
        let max = if kind == KIND_HEADER || kind == KIND_END {
            MAX_HEADER
        } else {
            MAX_SECTION
        };
        if len > max {
            return Err(FormatError::TooLarge {
                what: what.to_string(),
                offset: at,
                len: len as u64,
                max: max as u64,
            });
        }
        // Read in steps, so a length that passes the bound but not the file's size fails
        // on the missing bytes before a large buffer is filled for nothing.
        let mut payload = Vec::with_capacity(len.min(1 << 20));
        let mut left = len;
        let mut buf = vec![0u8; len.min(1 << 16)];
        while left > 0 {
            let n = left.min(buf.len());
            inp.exact(&mut buf[..n], what, true)?;
            payload.extend_from_slice(&buf[..n]);
            left -= n;
        }
        let mut c = [0u8; 4];
        inp.exact(&mut c, &format!("the checksum of {what}"), true)?;
        let mut crc = Crc::new();
        crc.update(&head);
        crc.update(&payload);
        if crc.finish() != u32::from_le_bytes(c) {
            return Err(FormatError::Checksum {
                what: what.to_string(),
                offset: at,
            });
        }
        let decode = |reason: postcard::Error| FormatError::Decode {
            what: what.to_string(),
            offset: at,
            reason: reason.to_string(),
        };
        let structure = |reason: &str| FormatError::Structure {
            offset: at,
            reason: reason.to_string(),
        };
        if header.is_none() && kind != KIND_HEADER {
            return Err(structure("the header must come first"));
        }
        match kind {
            KIND_HEADER => {
                if header.is_some() {
                    return Err(structure("a second header"));
                }
                header = Some(postcard::from_bytes(&payload).map_err(decode)?);
            }
            KIND_KV => {
                let records: Vec<KvRecord> = postcard::from_bytes(&payload).map_err(decode)?;
                for r in &records {
                    if last_key.as_ref().is_some_and(|k| *k >= r.key) {
                        return Err(structure("keys out of order or repeated"));
                    }
                    last_key = Some(r.key.clone());
                    digest
                        .add(&KvRecordRef {
                            key: &r.key,
                            value: &r.value,
                            expire_at: r.expire_at,
                        })
                        .map_err(decode)?;
                }
                s.kv_chunks = s
                    .kv_chunks
                    .checked_add(1)
                    .ok_or_else(|| structure("too many chunks"))?;
                s.kv_bytes += len as u64;
                on_chunk(records)?;
            }
            KIND_EVENTS => {
                let events: Vec<crate::cluster::state::Event> =
                    postcard::from_bytes(&payload).map_err(decode)?;
                s.events = events.len() as u64;
                s.events_bytes = len as u64;
            }
            KIND_CHANGE => {
                let change: crate::cluster::change::ChangeControl =
                    postcard::from_bytes(&payload).map_err(decode)?;
                s.service_versions = change.versions.len() as u64;
                s.deploys = change.history.len() as u64;
                s.settings_versions = change.settings.len() as u64;
                s.change_bytes = len as u64;
            }
            _ => break postcard::from_bytes(&payload).map_err(decode)?,
        }
    };
    let hash = std::mem::replace(
        &mut inp.sha,
        Sha256::new().ok_or_else(|| FormatError::Other("SHA-256 is not available".into()))?,
    )
    .finish();
    let mut trailer = [0u8; 40];
    inp.exact(&mut trailer, "the trailer", false)?;
    if &trailer[..8] != TRAILER_MAGIC {
        return Err(FormatError::Structure {
            offset: inp.offset - 40,
            reason: "the trailer's magic is wrong".into(),
        });
    }
    if trailer[8..] != hash {
        return Err(FormatError::FileHash);
    }
    let mut extra = [0u8; 1];
    if inp.inner.read(&mut extra)? != 0 {
        return Err(FormatError::Structure {
            offset: inp.offset,
            reason: "bytes after the trailer".into(),
        });
    }
    let header = header.ok_or_else(|| FormatError::Structure {
        offset: 10,
        reason: "no header".into(),
    })?;
    let keys = digest.keys;
    let kv_digest = digest.finish();
    if end.keys != keys || header.keys != keys {
        return Err(FormatError::Digest(format!(
            "{keys} keys read, the header says {} and the end section {}",
            header.keys, end.keys
        )));
    }
    if end.kv_chunks != s.kv_chunks {
        return Err(FormatError::Digest(format!(
            "{} chunks read, the end section says {}",
            s.kv_chunks, end.kv_chunks
        )));
    }
    if end.kv_digest != kv_digest {
        return Err(FormatError::Digest(format!(
            "computed {kv_digest}, the end section says {}",
            end.kv_digest
        )));
    }
    s.header = header;
    s.keys = keys;
    s.kv_digest = kv_digest;
    s.file_bytes = inp.offset;
    s.sha256 = crate::cluster::backup::hex(&hash);
    Ok(s)
}

/// Reads and checks the file at `path` (see [`read`]).
pub fn verify_file(path: &std::path::Path) -> Result<Summary, FormatError> {
    let f = std::fs::File::open(path)?;
    read(std::io::BufReader::with_capacity(1 << 20, f), |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::db::Value;
    use bytes::Bytes;

    fn header(keys: u64) -> Header {
        Header {
            format: FORMAT_VERSION,
            index: 42,
            term: 3,
            epoch: 2,
            taken_unix_ms: 1,
            node: "a".into(),
            read: "leader read barrier".into(),
            versions: [("a".to_string(), "0.1.0".to_string())].into(),
            keys,
            data_bytes: 0,
            events: 0,
            build: "test".into(),
            source: "standin".into(),
        }
    }

    /// A file of `n` string keys in chunks of 10.
    pub(crate) fn sample(n: usize) -> Vec<u8> {
        let records: Vec<KvRecord> = (0..n)
            .map(|i| KvRecord {
                key: Bytes::from(format!("key:{i:06}")),
                value: if i % 3 == 0 {
                    Value::Hash([(Bytes::from("f"), Bytes::from(format!("{i}")))].into())
                } else {
                    Value::Str(Bytes::from(format!("value {i}")))
                },
                expire_at: (i % 5 == 0).then_some(1_900_000_000_000),
            })
            .collect();
        let mut digest = KvDigest::new().expect("sha");
        for r in &records {
            digest
                .add(&KvRecordRef {
                    key: &r.key,
                    value: &r.value,
                    expire_at: r.expire_at,
                })
                .expect("digest");
        }
        let mut w = Writer::new(Vec::new(), &header(n as u64)).expect("writer");
        let mut chunks = 0;
        for c in records.chunks(10) {
            w.section(KIND_KV, &postcard::to_allocvec(&c.to_vec()).expect("encode"))
                .expect("section");
            chunks += 1;
        }
        w.section(
            KIND_EVENTS,
            &postcard::to_allocvec(&Vec::<crate::cluster::state::Event>::new()).expect("e"),
        )
        .expect("events");
        w.section(
            KIND_CHANGE,
            &postcard::to_allocvec(&crate::cluster::change::ChangeControl::default()).expect("c"),
        )
        .expect("change");
        let (out, _) = w
            .finish(&End {
                kv_chunks: chunks,
                keys: n as u64,
                kv_digest: digest.finish(),
            })
            .expect("finish");
        out
    }

    #[test]
    fn a_file_reads_back_with_every_key() {
        let bytes = sample(25);
        let mut got = 0;
        let s = read(&bytes[..], |c| {
            got += c.len();
            Ok(())
        })
        .expect("valid");
        assert_eq!((s.keys, got, s.kv_chunks), (25, 25, 3));
        assert_eq!(s.header.index, 42);
        assert_eq!(s.file_bytes, bytes.len() as u64);
        assert_eq!(Crc::new().finish(), 0);
        // The CRC-32C check value.
        let mut c = Crc::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }

    /// Every single-bit flip and every truncation of a small file is refused with an error
    /// (never a panic, never accepted).
    #[test]
    fn every_bit_flip_and_every_cut_is_refused() {
        let bytes = sample(12);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                assert!(read(&b[..], |_| Ok(())).is_err(), "flip at {i} accepted");
            }
        }
        for cut in 0..bytes.len() {
            let e = read(&bytes[..cut], |_| Ok(())).expect_err("cut accepted");
            assert!(
                matches!(e, FormatError::Truncated { .. } | FormatError::Magic),
                "cut at {cut}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer[..], |_| Ok(())).is_err());
    }

    #[test]
    fn wrong_magic_version_and_oversized_lengths_name_the_problem() {
        let bytes = sample(3);
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(read(&b[..], |_| Ok(())), Err(FormatError::Magic)));
        let mut b = bytes.clone();
        b[8] = 9;
        assert!(matches!(read(&b[..], |_| Ok(())), Err(FormatError::Version(9))));
        // The header's length set to 4 GiB: refused before anything is allocated for it.
        let mut b = bytes.clone();
        b[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = read(&b[..], |_| Ok(())).expect_err("oversized");
        assert!(matches!(e, FormatError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("header"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Hostile bytes: random edits anywhere, or random bytes after a valid magic, never
        /// panic and are never accepted.
        #[test]
        fn hostile_bytes_never_panic(
            edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..4096,
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        ) {
            let mut b = sample(30);
            let len = b.len();
            let mut changed = false;
            for (at, v) in &edits {
                let i = at % len;
                changed |= b[i] != *v;
                b[i] = *v;
            }
            b.truncate(cut % (len + 1));
            let cut_short = b.len() < len;
            let r = read(&b[..], |_| Ok(()));
            proptest::prop_assert!(r.is_err() || (!changed && !cut_short));
            let mut j = MAGIC.to_vec();
            j.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            j.extend_from_slice(&junk);
            proptest::prop_assert!(read(&j[..], |_| Ok(())).is_err());
        }
    }
}
