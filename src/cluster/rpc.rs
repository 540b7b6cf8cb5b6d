//! The messages nodes exchange over the cluster transport, encoded with postcard.
//!
//! The encoding is the peer protocol (`version::PROTOCOL`): variants are only appended, never
//! inserted or reordered, and `tests/formats.rs` decodes checked-in frames of every release's
//! protocol with the current types.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::state::{Command, CommandResult};
use super::{NodeId, TypeConfig};

/// A request, sent by `from` over one of its paths.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Heartbeat on one path: liveness and RTT of that path. The answer must echo `nonce`
    /// on the same connection: only that proves the peer is alive on this path.
    Ping {
        nonce: u64,
    },
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// The active node asks the leader to confirm (with a quorum round) its lease for `epoch`.
    Lease {
        node: String,
        epoch: u64,
    },
    /// A command for the Raft log, forwarded to the leader.
    Write(Command),
    /// "Campaign now": moves Raft leadership to the receiver (openraft 0.9 has no transfer).
    Elect,
    /// The leader's live view of the cluster (JSON of `status::Status`).
    Status,
    /// An admin action forwarded to the leader (JSON of `api::AdminAction`).
    Admin(String),
    /// A new leader asks: when did you last take part in a confirmation round of a leader
    /// other than `leader`, or grant `node` a lease yourself? (see `node::lease`)
    LeaseBound {
        leader: String,
        node: String,
    },
    /// A group of store writes for the leader's batcher.
    StoreWrite {
        ops: Vec<crate::kv::cmd::Op>,
        kind: crate::kv::GroupKind,
    },
    /// Store reads the leader serves after a quorum round.
    StoreRead {
        ops: Vec<crate::kv::cmd::Op>,
    },
    /// "Would you vote for me?" before a campaign (see `prevote`); `last_log` is the asker's
    /// last entry. Changes nothing on the receiver.
    PreVote {
        last_log: Option<openraft::LogId<NodeId>>,
    },
    /// The first frame of a connection whose protocol version was not settled in the TLS
    /// handshake (running insecure, or a server that picked no ALPN name): the peer protocol
    /// versions the sender speaks (`cluster::protocol`). A server from before negotiation
    /// answers it with an error (an unknown request): it speaks version 1.
    Hello {
        min: u32,
        max: u32,
    },
    /// The sender's live member list (answered with JSON of `[[member]]`s): how a node that
    /// missed a membership change (it joined, or was away) learns members its table lacks,
    /// so that it admits a leader that was added while it was away. Appended last.
    MemberTable,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Pong {
        nonce: u64,
    },
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Lease(LeaseReply),
    Write(Result<CommandResult, String>),
    Ok,
    /// JSON text (status, admin results).
    Json(String),
    /// Milliseconds since that last confirmation or grant; `None`: never.
    LeaseBound(Option<u64>),
    Store(Result<Vec<crate::kv::reply::Reply>, crate::kv::StoreError>),
    /// The request failed on the receiver; `retry` says whether trying again (elsewhere or
    /// later) can help, e.g. "not the leader".
    Error {
        message: String,
        retry: bool,
    },
    /// The answer to a pre-vote.
    PreVote(bool),
    /// The answer to a hello: the versions the receiver speaks and the one it chose, `None`
    /// when none is common (the receiver then closes the connection).
    Hello {
        min: u32,
        max: u32,
        chosen: Option<u32>,
    },
}

/// The answer to a lease request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseReply {
    /// The leader confirmed its leadership with a quorum *after* the request arrived, and the
    /// state names the requester active at this epoch. The requester may act until its own
    /// send time + lease.
    Granted,
    /// The requester is not (or no longer) active at that epoch.
    Refused(String),
}

/// Envelope on the wire: a request id so replies can come back out of order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame<T> {
    pub id: u64,
    /// The sender's node name as it claims it. Only a member's name is accepted, and it is
    /// never evidence that the member is alive (see `transport`); peer authentication comes
    /// from the connection, not from this field.
    pub from: String,
    pub body: T,
}
