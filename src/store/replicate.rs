//! How store operations reach the Raft log and how reads stay linearizable.
//!
//! * Writes: every node hands a *group* of ops (a run of pipelined writes, or a MULTI/EXEC
//!   block) to the leader. The leader's batcher collects the groups that arrive while the
//!   previous entry is being written and proposes them as ONE log entry (group commit: one
//!   fsync for many clients), submitting entries in arrival order so a connection's pipeline
//!   keeps its order. Relative expiry times are resolved with the leader's clock at proposal.
//!   A group is acknowledged only after its entry is committed on a quorum and applied.
//! * Reads: the leader runs one quorum round (`ensure_linearizable`) for all the reads that
//!   arrived before it started, then serves them from its state machine. Followers forward
//!   reads to the leader, unless the connection asked for stale local reads (`READONLY`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{ENTRY_TARGET_BYTES, MAX_ENTRY_BYTES};
use crate::clock::unix_ms;
use crate::cluster::rpc::{Request, Response};
use crate::cluster::state::Command;
use crate::cluster::{Cluster, ClusterError};
use crate::kv::cmd::Op;
use crate::kv::reply::Reply;
use crate::kv::{GroupKind, StoreError};
use crate::metrics::NodeMetrics;

/// Most groups in one log entry.
const MAX_GROUPS_PER_ENTRY: usize = 1024;
/// Longest wait for a submitted entry to commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries in flight at once (submitted, not yet committed).
const MAX_IN_FLIGHT: usize = 1;
/// Longest a free slot waits for the groups the last entry's clients are expected to send.
const MAX_LINGER: Duration = Duration::from_millis(2);

/// The refusal of a group too large for one log entry (the store's server splits pipelines
/// below it, so only a transaction or a forwarded group can meet it).
fn too_large(bytes: usize) -> StoreError {
    StoreError::Refused(format!(
        "request of {bytes} bytes exceeds the largest replicated entry ({MAX_ENTRY_BYTES} bytes)"
    ))
}

/// What the store's client is told when the cluster fails a write, decided on the variant (a
/// new one must be placed here): whether the write may have been applied decides between
/// "retry" ([`StoreError::NoLeader`]), "it was not done" (`Refused`) and "it may have been
/// done" (`Unknown`).
fn store_error(e: ClusterError) -> StoreError {
    match e {
        // openraft 0.9 answers a pending write with ForwardToLeader only when it truncated the
        // entry (a conflicting log from a new leader): that entry can never commit, so retrying
        // it elsewhere cannot apply it twice. Unreachable: never sent.
        ClusterError::NotLeader { .. } | ClusterError::LeaderUnreachable { .. } => StoreError::NoLeader,
        ClusterError::Refused { retry: true, .. } => StoreError::NoLeader,
        ClusterError::Refused { reason, retry: false } => StoreError::Refused(reason),
        // Refused before anything was proposed.
        e @ ClusterError::DiskLow { .. } => StoreError::Refused(e.to_string()),
        ClusterError::OutcomeUnknown(e) => StoreError::Unknown(e),
        e @ (ClusterError::Raft(_) | ClusterError::Storage(_) | ClusterError::DataFormat(_)) => {
            StoreError::Unknown(e.to_string())
        }
    }
}

struct WriteReq {
    ops: Vec<Op>,
    /// The ops' encoded size ([`crate::kv::encoded_len`]): an entry carries at most
    /// [`MAX_ENTRY_BYTES`] of them.
    bytes: usize,
    kind: GroupKind,
    /// The client connection on this node that sent the group, if any: the batcher waits for
    /// the clients the last entry answered (see `write_batcher`).
    client: Option<u64>,
    tx: oneshot::Sender<Result<Vec<Reply>, StoreError>>,
    /// Positions (in the client's pipeline) refused with OOM before proposing.
    refused: Vec<usize>,
}

fn oom() -> Reply {
    Reply::Error("OOM command not allowed when used memory > 'maxmemory'.".into())
}

/// Puts the OOM replies back at the positions of the refused ops.
fn merge_refused(mut replies: Vec<Reply>, refused: &[usize]) -> Vec<Reply> {
    for &pos in refused {
        let at = pos.min(replies.len());
        replies.insert(at, oom());
    }
    replies
}

struct ReadReq {
    ops: Vec<Op>,
    tx: oneshot::Sender<Result<Vec<Reply>, StoreError>>,
}

/// What the queues need from the node: its cluster handle and its live metrics.
struct Ctx {
    cluster: Cluster,
    metrics: Arc<NodeMetrics>,
}

/// Leader-side queues. Cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    writes: mpsc::UnboundedSender<WriteReq>,
    reads: mpsc::UnboundedSender<ReadReq>,
    node: Arc<Ctx>,
}

impl Replicator {
    pub fn start(
        cluster: Cluster,
        metrics: Arc<NodeMetrics>,
        maxmemory: u64,
        cancel: CancellationToken,
    ) -> Replicator {
        let node = Arc::new(Ctx { cluster, metrics });
        let (wtx, wrx) = mpsc::unbounded_channel();
        let (rtx, rrx) = mpsc::unbounded_channel();
        tokio::spawn(write_batcher(node.clone(), wrx, maxmemory, cancel.clone()));
        tokio::spawn(read_batcher(node.clone(), rrx, cancel.clone()));
        let r = Replicator {
            writes: wtx,
            reads: rtx,
            node: node.clone(),
        };
        tokio::spawn(active_expiry(r.clone(), cancel));
        r
    }

    /// Writes a group from `client` (a connection of this node's store): here if leading,
    /// else on the leader. `bytes`: the ops' encoded size, which the connection already
    /// counted while it gathered them (not computed twice per request).
    pub async fn write(
        &self,
        ops: Vec<Op>,
        bytes: usize,
        kind: GroupKind,
        client: u64,
    ) -> Result<Vec<Reply>, StoreError> {
        // A group becomes one entry, or travels in one peer frame when forwarded.
        if bytes > MAX_ENTRY_BYTES {
            return Err(too_large(bytes));
        }
        match self.node.cluster.leader() {
            None => Err(StoreError::NoLeader),
            Some(l) if l == self.node.cluster.me() => self.enqueue(ops, bytes, kind, Some(client)).await,
            Some(l) => self.forward(&l, Request::StoreWrite { ops, kind }).await,
        }
    }

    /// Linearizable read of a group (from any node).
    pub async fn read(&self, ops: Vec<Op>) -> Result<Vec<Reply>, StoreError> {
        match self.node.cluster.leader() {
            None => Err(StoreError::NoLeader),
            Some(l) if l == self.node.cluster.me() => self.read_local(ops).await,
            Some(l) => self.forward(&l, Request::StoreRead { ops }).await,
        }
    }

    /// Leader side of a write. `client`: the local connection that sent it (`None` for
    /// forwarded and internal writes).
    pub async fn write_local(
        &self,
        ops: Vec<Op>,
        kind: GroupKind,
        client: Option<u64>,
    ) -> Result<Vec<Reply>, StoreError> {
        let bytes = crate::kv::encoded_len(&ops);
        if bytes > MAX_ENTRY_BYTES {
            return Err(too_large(bytes));
        }
        self.enqueue(ops, bytes, kind, client).await
    }

    /// Hands a group of `bytes` (within an entry) to the batcher and waits for its replies.
    async fn enqueue(
        &self,
        ops: Vec<Op>,
        bytes: usize,
        kind: GroupKind,
        client: Option<u64>,
    ) -> Result<Vec<Reply>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteReq {
                ops,
                bytes,
                kind,
                client,
                tx,
                refused: Vec::new(),
            })
            .map_err(|_| StoreError::NoLeader)?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unknown("node shutting down".into())))
    }

    /// Leader side of a read.
    pub async fn read_local(&self, ops: Vec<Op>) -> Result<Vec<Reply>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .send(ReadReq { ops, tx })
            .map_err(|_| StoreError::NoLeader)?;
        rx.await.unwrap_or_else(|_| Err(StoreError::NoLeader))
    }

    /// A stale read from this node's own state (the client asked for it with READONLY).
    pub fn read_stale(&self, ops: &[Op]) -> Vec<Reply> {
        let now = unix_ms() as i64;
        self.node
            .cluster
            .sm
            .read(|d| ops.iter().map(|op| d.kv.read(op, now)).collect())
    }

    async fn forward(&self, leader: &str, req: Request) -> Result<Vec<Reply>, StoreError> {
        let transport = &self.node.cluster.transport;
        let timeout = Duration::from_secs(10);
        let result = match &req {
            // A write must not run twice: only a request that was never sent is retried.
            Request::StoreWrite { .. } => transport.call_once(leader, &req, timeout).await,
            _ => transport.call(leader, &req, timeout).await,
        };
        match result {
            Ok(Response::Store(r)) => r,
            Ok(other) => Err(StoreError::Unknown(format!("unexpected reply {other:?}"))),
            // Could not connect on any path: nothing was sent.
            Err(crate::cluster::transport::TransportError::Unreachable { .. }) => Err(StoreError::NoLeader),
            Err(e) if matches!(req, Request::StoreWrite { .. }) => Err(StoreError::Unknown(e.to_string())),
            Err(_) => Err(StoreError::NoLeader),
        }
    }
}

async fn write_batcher(
    node: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<WriteReq>,
    maxmemory: u64,
    cancel: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Closed-loop clients answered by the last entry send their next request right after the
    // reply: when the slot frees, proposing at once would cut the next batch into a small one
    // (the first arrivals) and a large one stuck behind it. So the batcher waits, briefly, for
    // every client the last entry answered to come back, at most as long as the last commit
    // took (measured: 14k -> 25k SET/s with 50 clients; half that wait gave 21k). It waits for
    // those clients by name, not for a count: counting (as many groups as the last entry
    // carried) settled on two thirds of 50 clients per entry, because the late third, once it
    // missed an entry, rode the next one as stragglers already queued, and the count never
    // grew back (measured with 50 clients: 33 groups per entry, 25k SET/s; waiting by name:
    // see the README). Groups forwarded by other nodes carry no name on the wire: for those
    // the batcher still waits for a count. A lone client never waits; one that went away
    // costs one wait.
    let last = Arc::new(LastCommit::default());
    let mut returning = Returning::default();
    // A group that did not fit the last entry's byte budget: the first of the next entry.
    let mut carried: Option<WriteReq> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            },
        };
        // Wait for a slot first: while all slots are busy, more groups pile up and the next
        // entry carries them all.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (mut batch, mut bytes) = gather_queued(first, &mut rx, &mut carried);
        returning.expect(last.take_answered());
        for r in &batch {
            returning.arrived(r.client);
        }
        if !returning.done() {
            let linger = Duration::from_micros(last.micros.load(Ordering::Relaxed)).min(MAX_LINGER);
            let deadline = tokio::time::Instant::now() + linger;
            while carried.is_none() && !returning.done() && batch.len() < MAX_GROUPS_PER_ENTRY {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) if fits(bytes, &r) => {
                        returning.arrived(r.client);
                        bytes += r.bytes;
                        batch.push(r);
                    }
                    Ok(Some(r)) => {
                        carried = Some(r);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let now = unix_ms() as i64;
        // maxmemory: refuse writes that add data once the limit is passed (like Redis, the
        // check is made before the command, on the leader).
        let over = maxmemory > 0 && node.cluster.sm.read(|d| d.kv.used_memory() as u64) > maxmemory;
        let mut accepted = Vec::with_capacity(batch.len());
        for mut req in batch {
            if over && req.ops.iter().any(Op::may_grow) {
                match req.kind {
                    // A transaction runs whole or not at all.
                    GroupKind::Exec => {
                        let _ = req.tx.send(Ok(vec![oom()]));
                        continue;
                    }
                    // In a pipeline only the ops that add data are refused; deletes still run.
                    GroupKind::Pipeline => {
                        let ops = std::mem::take(&mut req.ops);
                        for (i, op) in ops.into_iter().enumerate() {
                            if op.may_grow() {
                                req.refused.push(i);
                            } else {
                                req.ops.push(op);
                            }
                        }
                        if req.ops.is_empty() {
                            let _ = req.tx.send(Ok(req.refused.iter().map(|_| oom()).collect()));
                            continue;
                        }
                    }
                }
            }
            for op in &mut req.ops {
                op.resolve_times(now);
            }
            accepted.push(req);
        }
        if accepted.is_empty() {
            continue;
        }
        // The ops move into the entry: a retry is the caller's, with its own copy.
        let groups: Vec<(Vec<Op>, GroupKind)> = accepted
            .iter_mut()
            .map(|r| (std::mem::take(&mut r.ops), r.kind))
            .collect();
        let cmd = Command::Store { groups, now_ms: now };
        // Only a node that leads may propose; anything refused before submission is safe to
        // retry. After submission only a truncated entry (ForwardToLeader) is.
        if !node.cluster.is_leader() {
            for req in accepted {
                let _ = req.tx.send(Err(StoreError::NoLeader));
            }
            continue;
        }
        // Submitted in order; the commit is awaited in its own task.
        node.metrics.store_entry(accepted.len());
        let started = std::time::Instant::now();
        let submitted = node.cluster.submit(cmd).await;
        let last = last.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match submitted {
                // Bounded, so a lost entry (e.g. truncated by a snapshot install after this node
                // lost leadership) never holds the in-flight slot forever.
                Ok(fut) => match tokio::time::timeout(COMMIT_TIMEOUT, fut).await {
                    Ok(Ok(r)) => Ok(r.store),
                    Ok(Err(e)) => Err(store_error(e)),
                    Err(_) => Err(StoreError::Unknown("not committed within 10 s".into())),
                },
                Err(e) => Err(store_error(e)),
            };
            last.record(accepted.iter().map(|r| r.client), started.elapsed());
            match result {
                Ok(replies) => {
                    for (req, r) in accepted
                        .into_iter()
                        .zip(replies.into_iter().chain(std::iter::repeat_with(Vec::new)))
                    {
                        let _ = req.tx.send(Ok(merge_refused(r, &req.refused)));
                    }
                }
                Err(e) => {
                    for req in accepted {
                        let _ = req.tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// The groups already queued after `first`, as many as one entry takes: at most
/// [`MAX_GROUPS_PER_ENTRY`], and within [`MAX_ENTRY_BYTES`] together (each group is within it,
/// checked when it was queued), so an entry always fits one peer frame. A group that does not
/// fit is left in `carried`, to start the next entry. Returns the groups and their bytes.
fn gather_queued(
    first: WriteReq,
    rx: &mut mpsc::UnboundedReceiver<WriteReq>,
    carried: &mut Option<WriteReq>,
) -> (Vec<WriteReq>, usize) {
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < MAX_GROUPS_PER_ENTRY {
        match rx.try_recv() {
            Ok(r) if fits(bytes, &r) => {
                bytes += r.bytes;
                batch.push(r);
            }
            Ok(r) => {
                *carried = Some(r);
                break;
            }
            Err(_) => break,
        }
    }
    (batch, bytes)
}

/// Whether `next` may join an entry already carrying `bytes` of ops: up to
/// [`ENTRY_TARGET_BYTES`] together (a single group up to [`MAX_ENTRY_BYTES`] travels alone).
/// Each group counts 16 bytes beyond its ops for its own framing in the entry (length, kind).
fn fits(bytes: usize, next: &WriteReq) -> bool {
    bytes.saturating_add(next.bytes).saturating_add(16) <= ENTRY_TARGET_BYTES
}

/// Who an entry answered: this node's client connections by id, and how many groups came
/// without one (forwarded from other nodes, or internal).
#[derive(Debug, Default, PartialEq)]
struct Answered {
    named: Vec<u64>,
    unnamed: usize,
}

/// The clients the batcher waits for before it proposes: those the last entry answered
/// (closed-loop clients send their next request as soon as they have the reply).
#[derive(Default)]
struct Returning {
    named: HashSet<u64>,
    unnamed: usize,
}

impl Returning {
    /// Starts waiting for `answered`.
    fn expect(&mut self, answered: Answered) {
        self.named.clear();
        self.named.extend(answered.named);
        self.unnamed = answered.unnamed;
    }

    /// A group arrived from `client`: a named client is crossed off; a group without a name
    /// stands for any of the unnamed ones.
    fn arrived(&mut self, client: Option<u64>) {
        match client {
            Some(c) => {
                self.named.remove(&c);
            }
            None => self.unnamed = self.unnamed.saturating_sub(1),
        }
    }

    /// Everyone expected is in.
    fn done(&self) -> bool {
        self.named.is_empty() && self.unnamed == 0
    }
}

/// Whom the last committed entry answered and how long it took.
#[derive(Default)]
struct LastCommit {
    answered: std::sync::Mutex<Answered>,
    micros: AtomicU64,
}

impl LastCommit {
    fn record(&self, clients: impl Iterator<Item = Option<u64>>, took: Duration) {
        let mut a = Answered::default();
        for c in clients {
            match c {
                Some(c) => a.named.push(c),
                None => a.unnamed += 1,
            }
        }
        *self.answered.lock().unwrap_or_else(|p| p.into_inner()) = a;
        self.micros.store(
            took.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Whom the last entry answered, once (each entry's set is used by one batch).
    fn take_answered(&self) -> Answered {
        std::mem::take(&mut *self.answered.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn read_batcher(node: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<ReadReq>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        // One quorum round for every read that arrived before it started.
        match node.cluster.confirm_leadership().await {
            Ok(()) => {
                let now = unix_ms() as i64;
                node.cluster.sm.read(|d| {
                    for req in batch {
                        let replies = req.ops.iter().map(|op| d.kv.read(op, now)).collect();
                        let _ = req.tx.send(Ok(replies));
                    }
                });
            }
            Err(e) => {
                // A read changes nothing, so whatever failed, the client may retry it.
                if !matches!(e, ClusterError::NotLeader { .. }) {
                    tracing::debug!(error = %e, "read barrier failed");
                }
                let err = StoreError::NoLeader;
                for req in batch {
                    let _ = req.tx.send(Err(err.clone()));
                }
            }
        }
    }
}

/// On the leader: expired keys are removed by a replicated operation, so every replica
/// removes the same keys at the same log position.
async fn active_expiry(r: Replicator, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if !r.node.cluster.is_leader() {
            continue;
        }
        let now = unix_ms() as i64;
        let keys = r.node.cluster.sm.read(|d| d.kv.expired_keys(now, 512));
        if keys.is_empty() {
            continue;
        }
        if let Err(e) = r
            .write_local(vec![Op::DelExpired { keys }], GroupKind::Pipeline, None)
            .await
        {
            tracing::debug!(error = %e, "active expiry write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(named: &[u64], unnamed: usize) -> Answered {
        Answered {
            named: named.to_vec(),
            unnamed,
        }
    }

    /// The batcher waits for the clients the last entry answered, by name: groups already
    /// queued from other clients (stragglers that missed the last entry) do not stand in for
    /// them, which is what made a count settle below the number of clients.
    #[test]
    fn the_batcher_waits_for_each_answered_client() {
        let mut r = Returning::default();
        assert!(r.done(), "nothing answered yet: propose at once");
        r.expect(answered(&[1, 2, 3], 0));
        r.arrived(Some(7));
        r.arrived(Some(8));
        r.arrived(Some(9));
        assert!(!r.done(), "three other clients do not replace clients 1, 2 and 3");
        r.arrived(Some(2));
        r.arrived(Some(1));
        assert!(!r.done());
        r.arrived(Some(3));
        assert!(r.done());
        // Each entry's set is used once: a new entry starts afresh.
        r.expect(answered(&[4], 0));
        assert!(!r.done());
        r.expect(answered(&[], 0));
        assert!(r.done(), "a lone client never waits for itself");
    }

    fn group(bytes: usize) -> WriteReq {
        WriteReq {
            ops: Vec::new(),
            bytes,
            kind: GroupKind::Pipeline,
            client: None,
            tx: oneshot::channel().0,
            refused: Vec::new(),
        }
    }

    /// Groups queued together make an entry of at most `ENTRY_TARGET_BYTES` (a single larger
    /// group travels alone, within a peer frame): the one that would cross it is held over to
    /// start the next entry (they used to go into one entry whatever their size, past what
    /// replicates within openraft's append timeout and past a peer frame).
    #[test]
    fn an_entry_carries_at_most_the_entry_target() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let kib = 1024;
        for size in [512 * kib, 400 * kib, 300 * kib, 30 * 1024 * kib] {
            tx.send(group(size)).expect("queued");
        }
        let mut carried = None;
        let (batch, bytes) = gather_queued(group(100 * kib), &mut rx, &mut carried);
        let sizes: Vec<usize> = batch.iter().map(|r| r.bytes).collect();
        assert_eq!(sizes, vec![100 * kib, 512 * kib, 400 * kib]);
        assert_eq!(bytes, 1012 * kib);
        let next = carried.take().expect("the group that did not fit is kept");
        assert_eq!(next.bytes, 300 * kib);
        let (batch, _) = gather_queued(next, &mut rx, &mut carried);
        assert_eq!(batch.iter().map(|r| r.bytes).collect::<Vec<_>>(), vec![300 * kib]);
        let big = carried.take().expect("the large group waits for its own entry");
        let (batch, bytes) = gather_queued(big, &mut rx, &mut carried);
        assert_eq!(batch.len(), 1);
        assert!(bytes <= MAX_ENTRY_BYTES);
        assert!(carried.is_none());
    }

    /// Forwarded groups have no name: they are waited for by count.
    #[test]
    fn forwarded_groups_are_waited_for_by_count() {
        let mut r = Returning::default();
        r.expect(answered(&[1], 2));
        r.arrived(None);
        r.arrived(Some(1));
        assert!(!r.done(), "one of two forwarded groups is still out");
        r.arrived(None);
        assert!(r.done());
        r.arrived(None);
        assert!(r.done(), "more than expected is fine");
    }

    #[test]
    fn last_commit_hands_out_whom_it_answered_once() {
        let last = LastCommit::default();
        last.record([Some(5), None, Some(6)].into_iter(), Duration::from_micros(700));
        assert_eq!(last.take_answered(), answered(&[5, 6], 1));
        assert_eq!(last.take_answered(), Answered::default());
        assert_eq!(last.micros.load(Ordering::Relaxed), 700);
    }
}
