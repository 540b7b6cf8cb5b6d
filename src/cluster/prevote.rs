//! Pre-vote (Raft thesis 9.6), on top of openraft 0.9, which has none: a data node lets
//! openraft campaign only after a majority of voters said they would vote for it.
//!
//! Without it, a node cut off from the others campaigns again and again on its own, raising
//! its term with every try; when the partition heals, its higher term reaches the leader
//! (in an answer to an append) and deposes a healthy leader, and with it the active node.
//! With it, an isolated node never gets a majority of pre-votes, so it never campaigns and
//! its term stays put: it rejoins as a follower without disturbing anyone.
//!
//! A voter grants a pre-vote when it has not heard a leader for an election timeout (a node
//! that still hears a live leader refuses) and the candidate's log is at least as up to date
//! as its own. Nothing is saved: a pre-vote is a question, not a vote, so it cannot raise a
//! term or change who leads. openraft's own vote stays the safety check; this only decides
//! whether to ask for it. Moving leadership on purpose (`trigger().elect()`, used for
//! switchover) is not affected.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};
use tokio_util::sync::CancellationToken;

use super::rpc::{Request, Response};
use super::{Cluster, NodeId};

/// When this node last received an append from a leader (any term).
#[derive(Default)]
pub struct LeaderContact(Mutex<Option<Instant>>);

impl LeaderContact {
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether a leader was heard within `within`.
    pub fn recent(&self, within: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < within)
    }
}

/// Whether a node whose last log entry is `ours` must refuse its vote to a candidate whose
/// last entry is `candidate`: a node with no entry beyond the initial membership (index 0)
/// either is new or lost its data directory, and the entries it acknowledged before may be
/// exactly what the candidate lacks. Its vote could elect a leader without a committed entry;
/// it votes again once a leader has replicated its log to it. A cluster being created (every
/// log at index 0 or empty) elects its first leader as before.
pub fn lost_its_log(ours: Option<LogId<NodeId>>, candidate: Option<LogId<NodeId>>) -> bool {
    ours.is_none_or(|l| l.index == 0) && candidate.is_some_and(|c| c.index > 0)
}

impl Cluster {
    /// The id of this node's last log entry: the entry itself, or, when the log was purged up
    /// to it (after a snapshot install nothing follows the snapshot), the purge point or the
    /// snapshot's last id. `None` only for an empty log, or when the entry was replaced
    /// between the reads (a pre-vote round then simply fails and runs again).
    pub async fn last_log_id(&self) -> Option<LogId<NodeId>> {
        use openraft::storage::RaftLogReader;
        let (index, purged, snapshot) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.last_log_index?, m.purged, m.snapshot)
        };
        let mut reader = self.log.clone();
        if let Ok(entries) = reader.try_get_log_entries(index..=index).await {
            if let Some(e) = entries.last() {
                return Some(e.log_id);
            }
        }
        [purged, snapshot]
            .into_iter()
            .flatten()
            .find(|l| l.index == index)
    }

    /// Whether this node would vote for a candidate whose last entry is `candidate`.
    pub(super) async fn grant_prevote(&self, candidate: Option<LogId<NodeId>>) -> bool {
        if self.is_leader() || self.contact.recent(self.election_timeout) {
            return false;
        }
        let ours = self.last_log_id().await;
        if lost_its_log(ours, candidate) {
            return false;
        }
        candidate >= ours
    }

    /// Asks every other voter for a pre-vote; true once a majority (this node included) would
    /// vote for it.
    async fn prevote_round(&self, timeout: Duration) -> bool {
        let voters: Vec<String> = self.voters().into_iter().map(|m| m.id).collect();
        // Of every voter, named or not yet (an unnamed one is not asked and counts as a no).
        let majority = self.raft_ids(true).len().max(voters.len()) / 2 + 1;
        let last = self.last_log_id().await;
        let req = Request::PreVote { last_log: last };
        let asks = voters.iter().filter(|n| **n != self.me).map(|peer| {
            let req = &req;
            async move {
                matches!(
                    self.transport.call(peer, req, timeout).await,
                    Ok(Response::PreVote(true))
                )
            }
        });
        let granted = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|g| *g)
            .count();
        granted + 1 >= majority
    }

    /// Keeps openraft's elections switched on only while a pre-vote round would win. Runs on
    /// data nodes (a witness never campaigns) until `cancel` fires.
    pub async fn run_prevote_gate(self, cancel: CancellationToken) {
        let tick = self.prevote_tick;
        let mut enabled = false;
        self.raft.runtime_config().elect(false);
        loop {
            let state = self.raft.metrics().borrow().state;
            let want = match state {
                // A leader does not campaign; a learner cannot.
                ServerState::Leader | ServerState::Learner | ServerState::Shutdown => enabled,
                _ if self.contact.recent(self.election_timeout) => false,
                _ => self.prevote_round(tick).await,
            };
            if want != enabled {
                enabled = want;
                self.raft.runtime_config().elect(enabled);
                tracing::debug!(enabled, "elections");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}

#[cfg(test)]
mod vote_guard_tests {
    use super::*;
    use openraft::CommittedLeaderId;

    /// A node with no log beyond the initial membership refuses a candidate with more (it may
    /// have lost what it acknowledged); a cluster being created still elects (every log at 0).
    #[test]
    fn a_node_without_a_log_votes_only_while_the_cluster_is_created() {
        let at = |i| Some(LogId::new(CommittedLeaderId::new(1, 1), i));
        assert!(lost_its_log(None, at(5)));
        assert!(lost_its_log(at(0), at(1)));
        assert!(!lost_its_log(None, at(0)));
        assert!(!lost_its_log(at(0), at(0)));
        assert!(!lost_its_log(None, None));
        assert!(
            !lost_its_log(at(3), at(9)),
            "a node with a log votes by Raft's own rule"
        );
    }
}
