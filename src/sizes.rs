//! Size limits that must agree end to end, at the bottom of the layers: the peer frame, the
//! largest store log entry it carries, and the largest store request that fits one. The
//! transport, the store and the config all read them here; nothing here imports the crate.

/// Largest frame accepted (snapshot chunks and log batches stay far below). Every size limit
/// of what travels between nodes (store values and requests, log entries) is derived from
/// this one, so anything the store accepts fits in a frame.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Room in a peer frame for what wraps a store log entry or a forwarded write (the frame and
/// request headers, the entry's log id, an `AppendEntries` request's fields).
const ENTRY_HEADROOM: usize = 1024 * 1024;

/// Most bytes of encoded ops one log entry (and one forwarded `StoreWrite`) may carry, so that
/// an entry always fits the peer transport's frame: a larger frame would be refused by the
/// receiver and the connection carrying heartbeats with it.
pub const MAX_ENTRY_BYTES: usize = MAX_FRAME - ENTRY_HEADROOM;

/// The largest `max-request-size` (and its default): one request, counted as the bytes of its
/// arguments plus `store::resp::ARG_OVERHEAD` per argument, must fit one log entry with room to
/// spare for the encoding of its fields (numbers and tags can take more bytes as ops than as
/// text, at most a few per argument, which the per-argument overhead covers). 62 MiB.
pub const MAX_REQUEST_SIZE: u64 = (MAX_ENTRY_BYTES - 1024 * 1024) as u64;

/// The default `max-request-size`: 4 MiB. openraft 0.9 gives one `AppendEntries` half a
/// heartbeat interval (50 ms by default) to reach a follower and be written there, so an entry
/// must move in that time: measured on loopback (release build), entries up to ~12 MiB did,
/// 16 MiB only after retries, 20 MiB never (the leader lost its lease). etcd's default limit is
/// 1.5 MiB for the same reason. Larger values (up to [`MAX_REQUEST_SIZE`]) may be configured
/// on fast links with a longer `heartbeat-interval`.
pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 4 * 1024 * 1024;
