//! openraft wiring: the type config, durable storage, the Raft network over our transport,
//! and [`Cluster`], the handle the rest of the node uses.
//!
//! openraft's types stay inside this module (and `rpc`): the rest of the crate talks in
//! [`Command`]s, [`ClusterState`] and [`RaftInfo`], so a move to openraft 0.10 stays local.

pub mod backup;
pub mod change;
pub mod drills;
pub mod members;
pub mod prevote;
pub mod protocol;
pub mod resources;
pub mod rpc;
pub mod state;
pub mod storage;
pub mod transport;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, Raft, ServerState};

pub use state::{ClusterState, Command, CommandResult};

use crate::config::{raft_id, Config, NodeKind};
use rpc::{Request, Response};
use storage::{DiskMark, LogStore, StateMachine};
use transport::Transport;

pub use resources::DiskSpace;

pub type NodeId = u64;

/// How far a candidate's term (in a vote request, or in an answer) may run ahead of ours
/// before it is refused as implausible. A term grows by one per election, and a node that
/// cannot reach a quorum does not campaign (see `prevote`), so a real member never asks for
/// votes this far ahead. Appends and snapshots from a leader are held only to [`MAX_TERM`]:
/// a node that is far behind (new, or long away) must still be able to follow.
pub const MAX_TERM_AHEAD: u64 = 10_000;

/// No term above this is accepted from anyone: far beyond any real cluster's life (2^48
/// elections), and far enough below `u64::MAX` that openraft's term arithmetic cannot overflow
/// (a vote for term 2^64-1 used to be saved, then stop openraft for good).
pub const MAX_TERM: u64 = 1 << 48;

/// Most bytes one `AppendEntries` carries when it holds several entries (a single larger entry
/// goes alone): openraft 0.9 gives an append half a heartbeat interval, and the same
/// connection carries the heartbeats of its path, so a lagging follower is caught up in runs
/// that each arrive in time.
pub const APPEND_BUDGET: usize = 2 * 1024 * 1024;

openraft::declare_raft_types!(
    /// The openraft type configuration of standin.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = EmptyNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// Errors of cluster operations, with what the caller needs to act.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// This node cannot commit: it is not the leader. `leader` is the one openraft names, if
    /// it knows one (`None`: an election is running, or the quorum is lost). Nothing was
    /// proposed: safe to retry.
    #[error("{}", match leader {
        Some(l) => format!("not the leader; {l} is"),
        None => "no leader known (election in progress or quorum lost)".to_string(),
    })]
    NotLeader { leader: Option<String> },
    /// The request reached the leader (or may have), and then the connection or the wait
    /// failed: it may or may not have been applied. Not retried by the cluster.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("leader {leader} unreachable: {reason}")]
    LeaderUnreachable { leader: String, reason: String },
    /// The leader (or this node) turned the command down before proposing it. `retry`: whether
    /// the same command may succeed later (this node is shutting down, say) or never will (the
    /// state machine refused it).
    #[error("refused: {reason}")]
    Refused { reason: String, retry: bool },
    /// The data directory is of a format this binary cannot read (a newer one). Will not fix
    /// itself: the node exits 64 (no restart loop).
    #[error("{0}")]
    DataFormat(String),
    /// The data disk is nearly full: nothing was proposed.
    #[error("data disk nearly full: {free} bytes free, writes need at least {min} (node.min-free-disk)")]
    DiskLow { free: u64, min: u64 },
}

impl ClusterError {
    /// Whether trying again later can help.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NotLeader { .. }
                | ClusterError::LeaderUnreachable { .. }
                | ClusterError::Refused { retry: true, .. }
        )
    }
}

/// Raft progress as the rest of the crate sees it.
#[derive(Debug, Clone, Default)]
pub struct RaftInfo {
    pub term: u64,
    pub leader: Option<String>,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub committed: u64,
    /// On the leader: highest index replicated to each peer.
    pub matched: BTreeMap<String, u64>,
    pub millis_since_quorum_ack: Option<u64>,
}

/// openraft's network: one client per target, over the shared transport.
#[derive(Clone)]
pub struct Network {
    transport: Transport,
    names: Names,
    disk: DiskMark,
    /// Our own Raft metrics (set once Raft runs; the clients are made after that).
    metrics: Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, EmptyNode>>>>,
    /// Followers seen going back behind what they had acknowledged (see [`Reverts`]).
    reverts: Reverts,
}

/// Member names by Raft id: the live member table's ids (see [`Cluster::members`]).
#[derive(Clone, Default)]
pub struct Names(Arc<std::sync::RwLock<BTreeMap<NodeId, String>>>);

impl Names {
    fn get(&self, id: NodeId) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    fn set(&self, names: BTreeMap<NodeId, String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    fn add(&self, id: NodeId, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert_with(|| name.to_string());
    }
}

/// Followers whose log went back behind what they had acknowledged to this leader: their data
/// directory was wiped (or lost) while they were away. openraft 0.9 would trip an assertion
/// on the answer (issue #898, a panic of the leader in debug builds, a confused replication
/// in release ones), so the answer never reaches it: the follower is kept out, and the
/// operator replaces it (`standin member replace ID ID`), which starts its replication afresh.
#[derive(Clone, Default)]
pub struct Reverts(Arc<Mutex<BTreeMap<String, LostLog>>>);

/// A follower seen with less log than it had acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LostLog {
    /// The last index it had acknowledged.
    pub acknowledged: u64,
    /// The index its answer says it lacks.
    pub conflict: u64,
}

impl Reverts {
    fn record(&self, name: &str, lost: LostLog) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.insert(name.to_string(), lost.clone()).is_none() {
            tracing::error!(
                peer = name,
                acknowledged = lost.acknowledged,
                conflict = lost.conflict,
                "{name} lost log entries it had acknowledged (its data directory was wiped?); it is kept out of replication: run `standin member replace {name} {name}`"
            );
        }
    }

    /// Followers that lost their log, by name.
    pub fn get(&self) -> BTreeMap<String, LostLog> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn clear(&self, name: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.remove(name).is_some() {
            tracing::info!(peer = name, "replicating to {name} again");
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, _node: &EmptyNode) -> Self::Network {
        NetworkClient {
            transport: self.transport.clone(),
            target,
            names: self.names.clone(),
            reverts: self.reverts.clone(),
            acked: None,
            disk: self.disk.clone(),
            term: self
                .metrics
                .get()
                .cloned()
                // Before Raft runs nobody asks for a client; an empty view refuses nothing.
                .unwrap_or_else(|| tokio::sync::watch::channel(openraft::RaftMetrics::new_initial(0)).1),
        }
    }
}

pub struct NetworkClient {
    transport: Transport,
    target: NodeId,
    /// Names are looked up per call: a stream made before this node applied the entry that
    /// added the target would otherwise never learn its name.
    names: Names,
    disk: DiskMark,
    /// Our own Raft metrics, for the current term.
    term: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, EmptyNode>>,
    reverts: Reverts,
    /// The last log id the target acknowledged on this replication stream.
    acked: Option<openraft::LogId<NodeId>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, EmptyNode, RaftError<NodeId, E>>;

impl NetworkClient {
    /// The target's member name now (empty while it is unknown: the call then fails as an
    /// unknown peer, and openraft retries).
    fn name(&self) -> String {
        self.names.get(self.target).unwrap_or_default()
    }

    async fn send<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RpcErr<E>> {
        // Transport failures are "network" errors, not "unreachable": openraft backs off for
        // 500 ms after an unreachable error, which would slow re-replication after a blip.
        self.transport
            .call(&self.name(), &req, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn unexpected<E: std::error::Error>(&self, resp: Response) -> RpcErr<E> {
        let e = std::io::Error::other(format!("unexpected reply from {}: {resp:?}", self.name()));
        RPCError::Network(NetworkError::new(&e))
    }

    /// How far the target is known to match our log: what it acknowledged on this stream, or
    /// what openraft's replication metrics say (they outlive a stream restarted after a
    /// membership change).
    /// Only metrics of the leadership `vote` this request is sent under count: a node that
    /// lost and regained leadership may still show the previous term's progress, for a follower
    /// whose unreplicated tail another leader truncated since.
    fn matched(&self, vote: &openraft::Vote<NodeId>) -> Option<u64> {
        let metrics = {
            let m = self.term.borrow();
            if m.vote == *vote {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&self.target).cloned().flatten())
                    .map(|l| l.index)
            } else {
                None
            }
        };
        metrics.max(self.acked.map(|l| l.index))
    }

    /// A vote in an answer that is implausibly far ahead of our term is not believed: it
    /// would make this node adopt the term (and openraft overflow near `u64::MAX`).
    fn implausible(&self, vote: &openraft::Vote<NodeId>) -> Option<String> {
        implausible_term(self.term.borrow().current_term, vote)
    }

    #[cold]
    fn refuse_answer<E: std::error::Error>(&self, vote: &openraft::Vote<NodeId>, why: String) -> RpcErr<E> {
        tracing::warn!(peer = %self.name(), term = vote.leader_id().get_term(), "implausible term in an answer; ignored");
        let e = std::io::Error::other(format!("{} answered with {why}", self.name()));
        RPCError::Network(NetworkError::new(&e))
    }
}

/// Why `vote` cannot come from a member of a cluster where we are at term `ours`, if so.
fn implausible_term(ours: u64, vote: &openraft::Vote<NodeId>) -> Option<String> {
    let term = vote.leader_id().get_term();
    (term > ours.saturating_add(MAX_TERM_AHEAD))
        .then(|| format!("term {term}, more than {MAX_TERM_AHEAD} ahead of ours ({ours})"))
        .or_else(|| absurd_term(vote))
}

/// Why `vote` cannot come from anyone, if so: a term above [`MAX_TERM`].
fn absurd_term(vote: &openraft::Vote<NodeId>) -> Option<String> {
    let term = vote.leader_id().get_term();
    (term > MAX_TERM).then(|| format!("term {term}, above the ceiling {MAX_TERM}"))
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // A follower applies what the leader calls committed: never past the leader's own
        // durable log (see `storage::DiskMark`). It learns the rest with the next request.
        rpc.leader_commit = self.disk.cap_commit(rpc.leader_commit);
        let prev = rpc.prev_log_id;
        let vote = rpc.vote;
        let last = rpc.entries.last().map(|e| e.log_id).or(prev);
        // A run longer than the append budget is cut where the budget ends, measuring entries
        // one by one (counted, not encoded): a follower catching up on large store entries used to be sent runs of
        // hundreds of entries encoded whole, then halved, encoded again, ..., which cost more
        // than sending them (measured: 1M keys took 38 s to reach a new node).
        let mut partial = None;
        if rpc.entries.len() > 1 {
            let mut size = 0usize;
            let keep = rpc
                .entries
                .iter()
                .take_while(|e| {
                    let len = postcard::serialize_with_flavor(e, postcard::ser_flavors::Size::default());
                    size = size.saturating_add(len.unwrap_or(usize::MAX));
                    size <= APPEND_BUDGET
                })
                .count()
                .max(1);
            if keep < rpc.entries.len() {
                rpc.entries.truncate(keep);
                partial = rpc.entries.last().map(|e| e.log_id);
            }
        }
        // Entries that together still exceed the append budget go in smaller runs: the first half,
        // then the first quarter, ... A single entry goes alone up to the frame limit (the
        // store caps an entry below it). The follower then reports a partial success and
        // openraft sends the rest next.
        let mut req = Request::AppendEntries(rpc);
        let resp = loop {
            let several = matches!(&req, Request::AppendEntries(r) if r.entries.len() > 1);
            let limit = if several {
                APPEND_BUDGET
            } else {
                transport::MAX_FRAME
            };
            match self
                .transport
                .call_within(&self.name(), &req, option.hard_ttl(), limit)
                .await
            {
                Err(transport::TransportError::TooLarge { .. }) => {
                    let Request::AppendEntries(r) = &mut req else {
                        unreachable!("built above")
                    };
                    if r.entries.len() <= 1 {
                        let e = std::io::Error::other("a single log entry exceeds the frame limit");
                        return Err(RPCError::Network(NetworkError::new(&e)));
                    }
                    let keep = r.entries.len() / 2;
                    r.entries.truncate(keep);
                    partial = r.entries.last().map(|e| e.log_id);
                }
                other => break other.map_err(|e| RPCError::Network(NetworkError::new(&e)))?,
            }
        };
        match resp {
            Response::AppendEntries(Ok(AppendEntriesResponse::Success)) if partial.is_some() => {
                self.acked = self.acked.max(partial);
                self.reverts.clear(&self.name());
                Ok(AppendEntriesResponse::PartialSuccess(partial))
            }
            Response::AppendEntries(Ok(AppendEntriesResponse::Conflict)) => {
                // A conflict at an index the target had already acknowledged: its log went
                // back (see `Reverts`). Kept from openraft, which asserts this never happens.
                let conflict = prev.map_or(0, |p| p.index);
                match self.matched(&vote) {
                    Some(acknowledged) if prev.is_some() && conflict <= acknowledged => {
                        self.reverts.record(
                            &self.name(),
                            LostLog {
                                acknowledged,
                                conflict,
                            },
                        );
                        let e = std::io::Error::other(format!(
                            "{} lost log entries it had acknowledged (up to {acknowledged})",
                            self.name()
                        ));
                        Err(RPCError::Network(NetworkError::new(&e)))
                    }
                    _ => Ok(AppendEntriesResponse::Conflict),
                }
            }
            Response::AppendEntries(Ok(r)) => {
                if matches!(r, AppendEntriesResponse::Success) {
                    self.acked = self.acked.max(last);
                    // Replicating again (re-added, or a leader that never had its
                    // acknowledgements): no longer kept out.
                    self.reverts.clear(&self.name());
                }
                if let AppendEntriesResponse::PartialSuccess(p) = &r {
                    self.acked = self.acked.max(*p);
                }
                if let AppendEntriesResponse::HigherVote(v) = &r {
                    if let Some(why) = self.implausible(v) {
                        return Err(self.refuse_answer(v, why));
                    }
                }
                Ok(r)
            }
            Response::AppendEntries(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(Ok(r)) => match self.implausible(&r.vote) {
                Some(why) => Err(self.refuse_answer(&r.vote, why)),
                None => Ok(r),
            },
            Response::InstallSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.send(Request::Vote(rpc), &option).await? {
            Response::Vote(Ok(r)) => match self.implausible(&r.vote) {
                Some(why) => Err(self.refuse_answer(&r.vote, why)),
                None => Ok(r),
            },
            Response::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }
}

/// One node's membership in the Raft group.
#[derive(Clone)]
pub struct Cluster {
    pub raft: Raft<TypeConfig>,
    pub sm: StateMachine,
    pub transport: Transport,
    /// Free space of the data disk (store writes are refused while it is low), and this
    /// node's (and, on the leader, each member's) disk and memory figures.
    pub space: DiskSpace,
    /// When a leader's append last arrived (a pre-vote is refused while one is recent).
    contact: Arc<prevote::LeaderContact>,
    /// A reader of the log (the last entry's id, for pre-votes).
    log: LogStore,
    /// openraft's minimum election timeout: "a leader is alive" while heard within it.
    election_timeout: Duration,
    /// How often the pre-vote gate looks ([`crate::config::Timing::prevote_tick`]).
    prevote_tick: Duration,
    names: Names,
    /// The live membership (see [`Cluster::members`]).
    live: Arc<members::Live>,
    /// Followers seen with less log than they had acknowledged (on the leader).
    pub reverts: Reverts,
    /// Set while leadership is handed over: new writes wait (see
    /// [`Cluster::transfer_leadership`]).
    hold: Arc<tokio::sync::watch::Sender<u32>>,
    me: String,
}

/// How long a reload waits to record its event (see [`Cluster::record_reload`]).
pub const RECORD_RELOAD_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Opens storage under the data directory and starts Raft. Initializes the group from the
    /// config's member list on first start (every node may do this; openraft accepts the same
    /// initial membership from each).
    pub async fn start(config: &Config, transport: Transport) -> Result<Cluster, ClusterError> {
        use std::os::unix::fs::DirBuilderExt;
        // Private to the node's user (0700): the log and the store hold the cluster's data.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.node.data_dir)
            .map_err(|e| {
                ClusterError::Storage(format!("cannot create {}: {e}", config.node.data_dir.display()))
            })?;
        {
            // An existing directory keeps its mode (it may be a mount point an operator set
            // up), but one that other users can enter exposes the log and the store.
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&config.node.data_dir) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        dir = %config.node.data_dir.display(),
                        mode = format!("{mode:04o}"),
                        "the data directory is open to other users; run chmod 700 on it"
                    );
                }
            }
        }
        let db = storage::open_db(&config.node.data_dir).map_err(|e| {
            ClusterError::Storage(format!(
                "cannot open {}: {e}",
                config.node.data_dir.join("standin.redb").display()
            ))
        })?;
        let format = storage::check_data_format(&db).map_err(ClusterError::DataFormat)?;
        tracing::info!(format, "data directory format");
        let me = config.me();
        let disk = DiskMark::new(raft_id(&me.id));
        let log = LogStore::new(db.clone(), disk.clone());
        let log_reader = log.clone();
        let sm = StateMachine::open(db, disk.clone())
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let live = members::Live::new(
            config.members.clone(),
            transport.clone(),
            sm.clone(),
            me.id.clone(),
        );
        let names = live.names.clone();
        let reverts = Reverts::default();
        // See `Timing::raft_ms` for why.
        let (raft_heartbeat, election_min, election_max) = config.timing.raft_ms();
        let raft_config = openraft::Config {
            cluster_name: "standin".into(),
            heartbeat_interval: raft_heartbeat,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            // A witness votes but never campaigns.
            enable_elect: me.kind == NodeKind::Data,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
            max_in_snapshot_log_to_keep: 500,
            install_snapshot_timeout: 2000,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| ClusterError::Raft(format!("raft config: {e}")))?,
        );
        let metrics = Arc::new(std::sync::OnceLock::new());
        let network = Network {
            transport: transport.clone(),
            names: names.clone(),
            disk,
            metrics: metrics.clone(),
            reverts: reverts.clone(),
        };
        let raft = Raft::new(raft_id(&me.id), raft_config, network, log, sm.clone())
            .await
            .map_err(|e| match e {
                // E.g. a log record that cannot be read back: the node exits 74 naming it.
                openraft::error::Fatal::StorageError(e) => ClusterError::Storage(e.to_string()),
                other => ClusterError::Raft(other.to_string()),
            })?;
        let _ = metrics.set(raft.metrics());
        let cluster = Cluster {
            raft,
            sm,
            transport,
            space: DiskSpace::watch(
                config.node.data_dir.clone(),
                resources::Thresholds {
                    min_free: config.node.min_free_disk,
                    disk_warning: config.node.disk_low_warning(),
                    memory_warning: config.node.memory_warning.unwrap_or(0),
                },
            ),
            contact: Arc::default(),
            log: log_reader,
            election_timeout: Duration::from_millis(election_min),
            prevote_tick: config.timing.prevote_tick(),
            names,
            live,
            reverts,
            hold: Arc::new(tokio::sync::watch::channel(0).0),
            me: me.id.clone(),
        };
        tokio::spawn(members::learn_members(
            Arc::downgrade(&cluster.live),
            cluster.raft.metrics(),
            cluster.contact.clone(),
            cluster.election_timeout,
        ));
        Ok(cluster)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// On a data node's first start (no Raft state in its data directory), creates the
    /// cluster from the config's member list, unless it is told to join one (`[node] join`),
    /// or a leader already reaches it: then it is a member of a running cluster (one that
    /// lost its data directory, or started after another created the cluster) and waits to
    /// be replicated to, or to be added or replaced. Run once peers can reach this node.
    pub async fn bootstrap(&self, config: &Config) -> Result<(), ClusterError> {
        let initialized = || async {
            self.raft
                .is_initialized()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))
        };
        if initialized().await? {
            return Ok(());
        }
        let me = config.me();
        if config.node.join {
            tracing::info!(
                node = %me.id,
                "waiting to be added to the cluster: run `standin member add {} --kind {} --address ... --admin {}` against a member",
                me.id, me.kind, me.admin
            );
            return Ok(());
        }
        // Only data nodes create the cluster: openraft's initialize() campaigns at once, even
        // on a node with elections disabled, and a witness should not lead from the start.
        if me.kind != NodeKind::Data {
            return Ok(());
        }
        // A running cluster's leader sends appends every heartbeat: heard within two election
        // timeouts, this node is a member already (the others created the cluster first, or
        // its data directory was lost) and must not start a log of its own.
        tokio::time::sleep(self.election_timeout * 2).await;
        if self.contact.recent(self.election_timeout * 2) && self.last_log_id().await.is_none() {
            tracing::warn!(
                node = %me.id,
                "this node has no Raft state, but a leader reaches it: the cluster exists. If its data directory was lost, run `standin member replace {0} {0}`; it waits until then",
                me.id
            );
            return Ok(());
        }
        if initialized().await? {
            return Ok(());
        }
        let voters: BTreeSet<NodeId> = config.members.iter().map(|m| raft_id(&m.id)).collect();
        match self.raft.initialize(voters).await {
            Ok(()) => tracing::info!("raft group initialized"),
            // Another node initialized first and already replicated to us: fine.
            Err(e) => tracing::info!(error = %e, "raft group not initialized by this node"),
        }
        Ok(())
    }

    pub fn name_of(&self, id: NodeId) -> Option<String> {
        self.names.get(id)
    }

    pub fn id_of(&self, name: &str) -> NodeId {
        raft_id(name)
    }

    /// The current leader, without copying the rest of the metrics (per-request path).
    pub fn leader(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader;
        leader.and_then(|id| self.name_of(id))
    }

    /// Whether this node leads Raft right now (per-request path).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Raft progress from openraft's metrics.
    pub fn info(&self) -> RaftInfo {
        let m = self.raft.metrics().borrow().clone();
        // A follower that lost its log is as far behind as can be, whatever it acknowledged
        // (see `Reverts`): never in sync, never a candidate.
        let lost = self.reverts.get();
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter_map(|(id, log)| {
                        let name = self.name_of(*id)?;
                        let index = if lost.contains_key(&name) {
                            0
                        } else {
                            log.as_ref().map_or(0, |l| l.index)
                        };
                        Some((name, index))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let committed = self.sm.read(|d| d.last_applied.map_or(0, |l| l.index));
        RaftInfo {
            term: m.current_term,
            leader: m.current_leader.and_then(|id| self.name_of(id)),
            is_leader: m.state == ServerState::Leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            committed,
            matched,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    /// Records a reload in the event history (`config-changed` for a valid file that differs,
    /// `config-rejected` naming the key for a refused one; nothing otherwise). Best effort:
    /// the node may not reach a leader, so it gives up after [`RECORD_RELOAD_TIMEOUT`] and
    /// says so in the log; the reload itself stands either way.
    pub async fn record_reload(&self, report: &crate::config::ReloadReport) {
        use crate::config::ReloadOutcome;
        let error = match report.outcome {
            ReloadOutcome::Rejected => Some(
                // A config error is a line; bounded all the same, it goes into every log.
                report
                    .error
                    .as_deref()
                    .unwrap_or("invalid")
                    .chars()
                    .take(1024)
                    .collect(),
            ),
            _ if report.changed() => None,
            _ => return,
        };
        let cmd = Command::ConfigReloaded {
            node: self.me.clone(),
            digest: report.digest.clone().unwrap_or_default(),
            error,
            at: crate::clock::unix_ms(),
        };
        match tokio::time::timeout(RECORD_RELOAD_TIMEOUT, self.write(cmd)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reload not recorded in the event history"),
            Err(_) => tracing::warn!("reload not recorded in the event history: no leader answered in time"),
        }
    }

    /// Commits `cmd`: directly when this node leads, otherwise forwarded to the leader.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        let Some(leader) = self.leader() else {
            return Err(ClusterError::NotLeader { leader: None });
        };
        if leader == self.me {
            return self.write_local(cmd).await;
        }
        match self
            .transport
            .call_once(&leader, &Request::Write(cmd), Duration::from_secs(5))
            .await
        {
            Ok(Response::Write(Ok(r))) => Ok(r),
            Ok(Response::Write(Err(reason))) => Err(ClusterError::Refused { reason, retry: false }),
            // The peer we took for the leader is not (any more).
            Ok(Response::Error { retry: true, .. }) => Err(ClusterError::NotLeader { leader: None }),
            Ok(Response::Error { message, .. }) => Err(ClusterError::Refused {
                reason: message,
                retry: false,
            }),
            Ok(other) => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
            // Never sent: safe to retry.
            Err(e @ transport::TransportError::Unreachable { .. }) => Err(ClusterError::LeaderUnreachable {
                leader,
                reason: e.to_string(),
            }),
            // Sent; the outcome is unknown: not retried (it could apply twice).
            Err(e) => Err(ClusterError::OutcomeUnknown(e.to_string())),
        }
    }

    /// Waits while leadership is being handed over (at most a few election timeouts).
    async fn unheld(&self) {
        if *self.hold.borrow() > 0 {
            let mut rx = self.hold.subscribe();
            let _ = tokio::time::timeout(self.election_timeout * 4, rx.wait_for(|h| *h == 0)).await;
        }
    }

    /// Hands Raft leadership to `to` (openraft 0.9 has no transfer): new writes wait, `to`
    /// receives everything this leader has, then it is told to campaign; with a log as long as
    /// ours it wins. Without the pause a target under a steady write load is always an entry
    /// behind, and every voter refuses it. Gives up after `within` (writes go on).
    pub async fn transfer_leadership(&self, to: &str, within: Duration) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(ClusterError::NotLeader {
                leader: self.leader(),
            });
        }
        let target = raft_id(to);
        let deadline = tokio::time::Instant::now() + within;
        // Writes wait at most an election timeout for the target to catch up (then the attempt
        // is given up and writes go on): lease renewals are reads and never wait.
        let catch_up_by = deadline.min(tokio::time::Instant::now() + self.election_timeout);
        // A count: hand-overs started at once (coordinator, removal, hot restart) do not
        // release each other's pause.
        self.hold.send_modify(|h| *h += 1);
        struct Release<'a>(&'a tokio::sync::watch::Sender<u32>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|h| *h = h.saturating_sub(1));
            }
        }
        let _release = Release(&self.hold);
        loop {
            let (last, matched) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map(|l| l.index);
                (m.last_log_index, matched)
            };
            if matched.is_some() && matched >= last {
                break;
            }
            if tokio::time::Instant::now() >= catch_up_by {
                return Err(ClusterError::Raft(format!(
                    "{to} did not catch up within {} ms (at {matched:?} of {last:?})",
                    self.election_timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.transport
            .call(to, &Request::Elect, remaining.max(Duration::from_millis(50)))
            .await
            .map_err(|e| ClusterError::LeaderUnreachable {
                leader: to.to_string(),
                reason: e.to_string(),
            })?;
        // The target campaigns at once; an election takes a round trip and an fsync.
        let elected_by = deadline.min(tokio::time::Instant::now() + self.election_timeout * 2);
        while tokio::time::Instant::now() < elected_by {
            if self.leader().is_some_and(|l| l != self.me) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(ClusterError::Raft(format!(
            "{to} did not take over within {} ms",
            within.as_millis()
        )))
    }

    /// Commits `cmd` on this node, which must be the leader.
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        self.unheld().await;
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            // Leadership moved between our check and the write: the caller may retry.
            Err(e) => Err(match e.forward_to_leader() {
                Some(f) => self.not_leader(f),
                None => ClusterError::Raft(e.to_string()),
            }),
        }
    }

    /// `NotLeader`, naming the leader openraft's `ForwardToLeader` names (by member name).
    fn not_leader(&self, f: &openraft::error::ForwardToLeader<NodeId, EmptyNode>) -> ClusterError {
        ClusterError::NotLeader {
            leader: f.leader_id.and_then(|id| self.name_of(id)),
        }
    }

    /// Submits `cmd` to the log now (entries keep the order of their submissions) and returns
    /// a future for its result, so the caller can submit the next entry before this one
    /// commits. This node must be the leader; otherwise the future gives `NoLeader`.
    pub async fn submit(
        &self,
        cmd: Command,
    ) -> Result<impl std::future::Future<Output = Result<CommandResult, ClusterError>>, ClusterError> {
        if matches!(cmd, Command::Store { .. }) {
            self.space.check()?;
        }
        self.unheld().await;
        let rx = self
            .raft
            .client_write_ff(cmd)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let names = self.names.clone();
        Ok(async move {
            match rx.await {
                Ok(Ok(r)) => Ok(r.data),
                Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                    Err(ClusterError::NotLeader {
                        leader: f.leader_id.and_then(|id| names.get(id)),
                    })
                }
                Ok(Err(e)) => Err(ClusterError::Raft(e.to_string())),
                // The entry was submitted; Raft stopped before it said whether it committed.
                Err(_) => Err(ClusterError::OutcomeUnknown(
                    "raft stopped before the entry committed".into(),
                )),
            }
        })
    }

    /// Confirms with a quorum round that this node is still the leader (read barrier).
    pub async fn confirm_leadership(&self) -> Result<(), ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            // Deposed, or a quorum did not answer in time: another node may lead.
            Err(e) => Err(match e.forward_to_leader() {
                Some(f) => self.not_leader(f),
                None => ClusterError::Raft(e.to_string()),
            }),
        }
    }

    /// Whether a Raft RPC carrying `vote` may reach openraft: it must name a member as its
    /// candidate or leader, the same member that sent it, and a sane term: below [`MAX_TERM`],
    /// and for a vote request (`is_vote`) at most [`MAX_TERM_AHEAD`] beyond ours. Checked before openraft sees it, so nothing of a refused message is
    /// saved (a vote for term 2^64-1 would be saved, then overflow openraft for good).
    fn admit(&self, from: &str, vote: &openraft::Vote<NodeId>, is_vote: bool) -> Result<(), String> {
        let claimed = vote.leader_id().voted_for();
        let Some(name) = claimed.and_then(|id| self.name_of(id)) else {
            return Err(format!("{claimed:?} is not a member"));
        };
        if name != from {
            return Err(format!("sent by {from} on behalf of {name}"));
        }
        let check = if is_vote {
            implausible_term(self.raft.metrics().borrow().current_term, vote)
        } else {
            absurd_term(vote)
        };
        match check {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Answers the Raft part of an inbound request from `from`; gives the request back if it
    /// is not a Raft RPC.
    pub async fn handle_raft(&self, from: &str, req: Request) -> Result<Response, Request> {
        let vote = match &req {
            Request::AppendEntries(r) => Some((&r.vote, false)),
            Request::Vote(r) => Some((&r.vote, true)),
            Request::InstallSnapshot(r) => Some((&r.vote, false)),
            _ => None,
        };
        if let Some(Err(why)) = vote.map(|(v, is_vote)| self.admit(from, v, is_vote)) {
            tracing::warn!(peer = %from, reason = %why, "raft message refused");
            return Ok(Response::Error {
                message: format!("refused: {why}"),
                retry: false,
            });
        }
        Ok(match req {
            Request::AppendEntries(r) => {
                let resp = self.raft.append_entries(r).await;
                // A leader of the current term (or a newer one) was heard; a deposed leader
                // answered with our higher vote was not, and must not hold off pre-votes.
                if matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.contact.touch();
                }
                Response::AppendEntries(resp)
            }
            Request::PreVote { last_log } => Response::PreVote(self.grant_prevote(last_log).await),
            Request::Vote(r) => {
                let ours = self.last_log_id().await;
                if prevote::lost_its_log(ours, r.last_log_id) {
                    tracing::warn!(peer = %from, "vote refused: this node has no log (new, or its data directory was lost); it votes again once a leader replicated to it");
                    return Ok(Response::Error {
                        message: "refused: this node has no log yet and does not vote".into(),
                        retry: false,
                    });
                }
                Response::Vote(self.raft.vote(r).await)
            }
            Request::InstallSnapshot(r) => Response::InstallSnapshot(self.raft.install_snapshot(r).await),
            Request::MemberTable => match serde_json::to_string(&*self.members()) {
                Ok(json) => Response::Json(json),
                Err(e) => Response::Error {
                    message: e.to_string(),
                    retry: false,
                },
            },
            Request::Elect => match self.raft.trigger().elect().await {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error {
                    message: e.to_string(),
                    retry: false,
                },
            },
            // A peer forwards reports about itself only (see `Command::check_forwarded`).
            Request::Write(cmd) => match cmd.check_forwarded(from) {
                Err(why) => {
                    tracing::warn!(peer = %from, reason = %why, "forwarded write refused");
                    Response::Write(Err(format!("refused: {why}")))
                }
                Ok(()) => match self.write_local(cmd).await {
                    Ok(r) => Response::Write(Ok(r)),
                    // Not the leader (any more): nothing was appended, the sender may retry.
                    Err(e) if e.retryable() => Response::Error {
                        message: e.to_string(),
                        retry: true,
                    },
                    Err(e) => Response::Write(Err(e.to_string())),
                },
            },
            other => return Err(other),
        })
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers decide on variants, not on text: not the leader (with or without a name) is
    /// retryable, an unknown outcome is not.
    #[test]
    fn cluster_errors_are_typed_for_their_callers() {
        let none = ClusterError::NotLeader { leader: None };
        let named = ClusterError::NotLeader {
            leader: Some("b".into()),
        };
        assert!(none.retryable() && named.retryable());
        assert_eq!(
            none.to_string(),
            "no leader known (election in progress or quorum lost)"
        );
        assert_eq!(named.to_string(), "not the leader; b is");
        let unknown = ClusterError::OutcomeUnknown("connection lost".into());
        assert!(!unknown.retryable());
        assert_eq!(unknown.to_string(), "outcome unknown: connection lost");
        let later = ClusterError::Refused {
            reason: "shutting down".into(),
            retry: true,
        };
        let never = ClusterError::Refused {
            reason: "not active".into(),
            retry: false,
        };
        assert!(later.retryable() && !never.retryable());
        assert_eq!(never.to_string(), "refused: not active");
    }
    use openraft::{CommittedLeaderId, LogId, Vote};

    /// Terms: a vote request (or an answer) at most `MAX_TERM_AHEAD` beyond ours; an append
    /// from a leader far ahead is fine (a node long away must follow), but nothing above
    /// `MAX_TERM`.
    #[test]
    fn terms_are_bounded() {
        let vote = |term| Vote::new(term, 1);
        assert!(implausible_term(5, &vote(5 + MAX_TERM_AHEAD)).is_none());
        assert!(implausible_term(5, &vote(6 + MAX_TERM_AHEAD)).is_some());
        assert!(implausible_term(u64::MAX - 1, &vote(u64::MAX)).is_some());
        assert!(absurd_term(&vote(MAX_TERM)).is_none());
        assert!(absurd_term(&vote(MAX_TERM + 1)).is_some());
        assert!(absurd_term(&vote(1_000_000)).is_none());
    }

    /// The leader never tells a follower that an entry is committed while that entry is only
    /// in the leader's memory: the commit index in an append is capped at the leader's durable
    /// log (see `storage::DiskMark`). A follower stands in for the peer and records what it
    /// was sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_carry_a_commit_index_capped_at_the_leaders_disk() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = tokio_util::sync::CancellationToken::new();
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let handler: transport::Handler = Arc::new(move |_from, req| {
            let seen = seen_tx.clone();
            Box::pin(async move {
                match req {
                    Request::AppendEntries(r) => {
                        let _ = seen.send(r.leader_commit);
                        Response::AppendEntries(Ok(AppendEntriesResponse::Success))
                    }
                    other => Response::Error {
                        message: format!("unexpected {other:?}"),
                        retry: false,
                    },
                }
            })
        });
        let interval = Duration::from_millis(100);
        let follower = Transport::new(
            "b".into(),
            vec![("a".into(), Vec::new())],
            interval,
            interval * 10,
            None,
        );
        tokio::spawn(transport::serve(listener, 0, follower, handler, cancel.clone()));
        let leader = Transport::new(
            "a".into(),
            vec![("b".into(), vec![addr])],
            interval,
            interval * 10,
            None,
        );

        let log_id = |i| LogId::new(CommittedLeaderId::new(3, 1), i);
        let disk = DiskMark::new(1);
        let mut client = NetworkClient {
            transport: leader,
            target: 2,
            names: {
                let names = Names::default();
                names.set([(2, "b".to_string())].into());
                names
            },
            disk: disk.clone(),
            term: tokio::sync::watch::channel(openraft::RaftMetrics::new_initial(1)).1,
            reverts: Reverts::default(),
            acked: None,
        };
        // (on disk up to, commit index the follower is sent) for a leader that has committed 8:
        // with entries 6..=8 only in memory it goes out as 5; with all on disk, as it is.
        for (durable, sent) in [(5, 5), (8, 8)] {
            disk.assume_unflushed(log_id(durable), 8);
            let rpc = AppendEntriesRequest {
                vote: Vote::new_committed(3, 1),
                prev_log_id: Some(log_id(8)),
                entries: Vec::new(),
                leader_commit: Some(log_id(8)),
            };
            client
                .append_entries(rpc, RPCOption::new(Duration::from_secs(5)))
                .await
                .expect("append");
            assert_eq!(seen_rx.recv().await.expect("seen"), Some(log_id(sent)));
        }
        cancel.cancel();
    }
}
