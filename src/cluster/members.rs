//! The live membership: the member table (replicated; the config's `[[member]]` list until a
//! change writes it) beside openraft's voters and learners, and the leader's steps of a change:
//! add a learner, make a caught-up learner a voter, remove a member. Each step is short and
//! idempotent; `standin member` drives them and waits between them, so a change survives a
//! change of leader (the next step goes to the new one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::{ChangeMembers, EmptyNode};
use serde::{Deserialize, Serialize};

use super::state::{Command, MemberRecord};
use super::storage::StateMachine;
use super::transport::Transport;
use super::{Cluster, ClusterError, LostLog, Names, NodeId};
use crate::config::{raft_id, Member, NodeKind};

/// A learner this close to the leader's log (in entries) may become a voter: the joint
/// configuration then commits as soon as it arrives, even under a steady write load.
pub const VOTER_LAG: u64 = 64;

/// Where a member stands in Raft.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RaftRole {
    Voter,
    Learner,
    /// In the member table, not (or no longer) in Raft's membership.
    None,
}

impl std::fmt::Display for RaftRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RaftRole::Voter => "voter",
            RaftRole::Learner => "learner",
            RaftRole::None => "none",
        })
    }
}

/// One member as `GET /v1/members` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    pub raft: RaftRole,
    /// On the leader's view: the last log index the member acknowledged.
    pub matched: Option<u64>,
    /// On the leader's view: how many entries it is behind.
    pub lag: Option<u64>,
    /// Set when the member answered with less log than it had acknowledged (its data was lost).
    pub lost_log: Option<LostLog>,
}

/// The membership as one node sees it (the leader's view has the replication progress).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MembersView {
    pub view_from: String,
    pub leader: Option<String>,
    /// Whether the member table was written by a change (`false`: the config files' list).
    pub changed: bool,
    pub last_log_index: u64,
    pub members: Vec<MemberView>,
    /// Where this node's config file disagrees with the live membership.
    pub drift: Vec<String>,
    /// Things an operator should know (an even number of voters, ...).
    pub warnings: Vec<String>,
}

/// Why a membership step was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The request cannot succeed as it is (unknown node, would lose the quorum, ...).
    #[error("{0}")]
    Refused(String),
    /// Not yet: try the same step again (a learner still catching up, leadership moving).
    #[error("{0}")]
    NotYet(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The warning for `n` voters when it is an even number: allowed, but it tolerates no more
/// failures than one voter fewer.
pub fn even_voters(n: usize) -> Option<String> {
    (n > 0 && n.is_multiple_of(2)).then(|| {
        format!(
            "{n} voters: an even number tolerates no more failures than {} (add or remove a witness)",
            n - 1
        )
    })
}

/// The differences between a config's `[[member]]` list and the live table, one line each.
pub fn drift(configured: &[Member], live: &[Member]) -> Vec<String> {
    let mut out = Vec::new();
    for m in live {
        match configured.iter().find(|c| c.id == m.id) {
            None => out.push(format!("{} is a member but not in this node's config file", m.id)),
            Some(c) if c != m => out.push(format!(
                "{} differs between this node's config file and the cluster ({})",
                m.id,
                differing_fields(c, m).join(", ")
            )),
            Some(_) => {}
        }
    }
    for c in configured {
        if !live.iter().any(|m| m.id == c.id) {
            out.push(format!("{} is in this node's config file but not a member", c.id));
        }
    }
    out
}

fn differing_fields(a: &Member, b: &Member) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.kind != b.kind {
        out.push("kind");
    }
    if a.priority != b.priority {
        out.push("priority");
    }
    if a.addresses != b.addresses {
        out.push("addresses");
    }
    if a.admin != b.admin {
        out.push("admin");
    }
    if a.service_address != b.service_address {
        out.push("service-address");
    }
    if a.store_address != b.store_address {
        out.push("store-address");
    }
    if a.site != b.site {
        out.push("site");
    }
    out
}

impl Cluster {
    /// The live membership: the member table once a change wrote it, else the members of the
    /// config file the cluster was created with. Every member, voters, learners and members
    /// whose change is under way alike (see [`Cluster::raft_role`]).
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.live.get()
    }

    /// The live member `id`, if it is one.
    pub fn member(&self, id: &str) -> Option<Member> {
        self.members().iter().find(|m| m.id == id).cloned()
    }

    /// The members that vote (by openraft's membership), in table order.
    pub fn voters(&self) -> Vec<Member> {
        let ids: BTreeSet<NodeId> = self.raft_ids(true);
        self.members()
            .iter()
            .filter(|m| ids.contains(&raft_id(&m.id)))
            .cloned()
            .collect()
    }

    /// Every voter by name, or `None` while a voter's name is not known yet (this node has not
    /// applied the entry that added it): a question that needs every voter's answer cannot
    /// be complete then.
    pub fn all_voters(&self) -> Option<Vec<Member>> {
        let voters = self.voters();
        (voters.len() == self.raft_ids(true).len()).then_some(voters)
    }

    /// Raft ids of the voters (`voters`) or of the learners.
    pub(super) fn raft_ids(&self, voters: bool) -> BTreeSet<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        if voters {
            membership.voter_ids().collect()
        } else {
            membership.learner_ids().collect()
        }
    }

    /// Where member `id` stands in Raft.
    pub fn raft_role(&self, id: &str) -> RaftRole {
        let rid = raft_id(id);
        if self.raft_ids(true).contains(&rid) {
            RaftRole::Voter
        } else if self.raft_ids(false).contains(&rid) {
            RaftRole::Learner
        } else {
            RaftRole::None
        }
    }

    /// The membership as this node sees it; with replication progress on the leader.
    pub fn members_view(&self) -> MembersView {
        let members = self.members();
        let metrics = self.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone();
        let lost = self.reverts.get();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let learners: BTreeSet<NodeId> = metrics.membership_config.membership().learner_ids().collect();
        let mut views = Vec::new();
        for m in members.iter() {
            let rid = raft_id(&m.id);
            let raft = if voters.contains(&rid) {
                RaftRole::Voter
            } else if learners.contains(&rid) {
                RaftRole::Learner
            } else {
                RaftRole::None
            };
            let matched = if m.id == self.me {
                metrics.last_log_index
            } else {
                replication
                    .as_ref()
                    .and_then(|r| r.get(&rid).cloned())
                    .map(|l| l.map_or(0, |l| l.index))
            };
            views.push(MemberView {
                member: m.clone(),
                raft,
                matched,
                lag: matched.map(|x| last.saturating_sub(x)),
                lost_log: lost.get(&m.id).cloned(),
            });
        }
        let warnings = even_voters(voters.len()).into_iter().collect();
        MembersView {
            view_from: self.me.clone(),
            leader: metrics.current_leader.and_then(|id| self.name_of(id)),
            changed: self.sm.read(|d| d.ext.members.is_some()),
            last_log_index: last,
            members: views,
            drift: drift(self.live.configured(), &members),
            warnings,
        }
    }

    /// Writes the member table `table` (the leader only), saying `change` in the history.
    async fn write_table(&self, table: Vec<Member>, change: String) -> Result<(), ClusterError> {
        let cmd = Command::Members {
            members: table.iter().map(MemberRecord::from).collect(),
            change,
            at: crate::clock::unix_ms(),
        };
        self.write_local(cmd).await?;
        self.live.refresh();
        Ok(())
    }

    fn raft_err<E: std::error::Error>(&self, e: openraft::error::RaftError<NodeId, E>) -> MemberError {
        MemberError::Cluster(ClusterError::Raft(e.to_string()))
    }

    /// Step 1 of adding `m`: into the member table (so every node knows its addresses and
    /// admits it), then a learner of Raft, which starts replicating to it. Idempotent: a
    /// learner or voter `m` is left as it is (its table entry updated).
    pub async fn add_learner(&self, m: Member) -> Result<String, MemberError> {
        self.must_lead()?;
        let members = self.members();
        if !members.iter().any(|o| o.id == m.id) && members.len() >= MAX_LEARNED {
            return Err(MemberError::Refused(format!(
                "the cluster has {} members, the most it takes",
                members.len()
            )));
        }
        for other in members.iter().filter(|o| o.id != m.id) {
            if raft_id(&other.id) == raft_id(&m.id) {
                return Err(MemberError::Refused(format!(
                    "{:?} and {:?} hash to the same internal id; choose another id",
                    m.id, other.id
                )));
            }
            if let Some(a) = other.addresses.iter().find(|a| m.addresses.contains(a)) {
                return Err(MemberError::Refused(format!(
                    "address {a} is already {}'s",
                    other.id
                )));
            }
            if other.admin == m.admin {
                return Err(MemberError::Refused(format!(
                    "admin address {} is already {}'s",
                    m.admin, other.id
                )));
            }
        }
        if let Some(lost) = self.reverts.get().get(&m.id) {
            return Err(MemberError::Refused(format!(
                "{} lost its log (it had acknowledged up to {}): replace it (`standin member replace {} {}`)",
                m.id, lost.acknowledged, m.id, m.id
            )));
        }
        let role = self.raft_role(&m.id);
        if let Some(old) = members.iter().find(|o| o.id == m.id) {
            if old.kind != m.kind && role == RaftRole::Voter {
                return Err(MemberError::Refused(format!(
                    "{} is a {} voter; to make it a {}, remove it first",
                    m.id, old.kind, m.kind
                )));
            }
        }
        if members.iter().find(|o| o.id == m.id) != Some(&m) {
            let mut table: Vec<Member> = members.iter().filter(|o| o.id != m.id).cloned().collect();
            table.push(m.clone());
            let change = if members.iter().any(|o| o.id == m.id) {
                format!("member {} updated", m.id)
            } else {
                format!("member {} ({}) added", m.id, m.kind)
            };
            self.write_table(table, change).await?;
        }
        match role {
            RaftRole::Voter => Ok(format!("{} is already a voter", m.id)),
            RaftRole::Learner => Ok(format!("{} is already a learner", m.id)),
            RaftRole::None => {
                self.raft
                    .add_learner(raft_id(&m.id), EmptyNode {}, false)
                    .await
                    .map_err(|e| self.raft_err(e))?;
                Ok(format!("{} is a learner; catching up", m.id))
            }
        }
    }

    /// Step 2 of adding: makes learner `id` a voter (joint consensus) once it is within
    /// [`VOTER_LAG`] entries of the leader; `NotYet` with its lag before that.
    pub async fn promote_learner(&self, id: &str) -> Result<String, MemberError> {
        self.must_lead()?;
        match self.raft_role(id) {
            RaftRole::Voter => return Ok(format!("{id} is a voter")),
            RaftRole::None => {
                return Err(MemberError::Refused(format!(
                    "{id} is not a learner; add it first (`standin member add`)"
                )))
            }
            RaftRole::Learner => {}
        }
        if let Some(lost) = self.reverts.get().get(id) {
            return Err(MemberError::Refused(format!(
                "{id} lost its log (it had acknowledged up to {}): replace it (`standin member replace {id} {id}`)",
                lost.acknowledged
            )));
        }
        let view = self.members_view();
        let lag = view
            .members
            .iter()
            .find(|v| v.member.id == id)
            .and_then(|v| v.lag);
        match lag {
            Some(l) if l <= VOTER_LAG => {}
            Some(l) => return Err(MemberError::NotYet(format!("{id} is {l} entries behind"))),
            None => return Err(MemberError::NotYet(format!("{id} has not answered yet"))),
        }
        let ids: BTreeSet<NodeId> = [raft_id(id)].into();
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), true)
            .await
            .map_err(|e| self.raft_err(e))?;
        let _ = self
            .write_local(Command::Members {
                members: self.members().iter().map(MemberRecord::from).collect(),
                change: format!("member {id} is a voter"),
                at: crate::clock::unix_ms(),
            })
            .await;
        Ok(format!("{id} is a voter"))
    }

    /// Removes member `id`: out of Raft (joint consensus), then out of the table. Refused for
    /// the active node (switch over first), for the last data voter, and when a majority of the
    /// remaining voters is not heard now (the change could not commit, or would leave a
    /// cluster without a quorum). The Raft leader moves its leadership away first and answers
    /// `NotYet`: the next try reaches the new leader.
    pub async fn remove_member(&self, id: &str, active: Option<&str>) -> Result<String, MemberError> {
        self.must_lead()?;
        let members = self.members();
        let Some(m) = members.iter().find(|m| m.id == id).cloned() else {
            return Ok(format!("{id} is not a member"));
        };
        if active == Some(id) {
            return Err(MemberError::Refused(format!(
                "{id} is the active node: switch over first (`standin member remove` does)"
            )));
        }
        let role = self.raft_role(id);
        let voters = self.voters();
        if role == RaftRole::Voter {
            let rest: Vec<&Member> = voters.iter().filter(|v| v.id != id).collect();
            if !rest.iter().any(|v| v.kind == NodeKind::Data) {
                return Err(MemberError::Refused(format!(
                    "{id} is the last data node that votes: the cluster would have no node to run the service"
                )));
            }
            // A voter counts if it answers heartbeats and its Raft takes appends: one that lost
            // its log answers pings but acknowledges nothing, and a joint configuration that
            // needs it would never commit.
            let lost = self.reverts.get();
            let heard = rest
                .iter()
                .filter(|v| {
                    v.id == self.me
                        || (!lost.contains_key(&v.id)
                            && self
                                .transport
                                .last_heard(&v.id)
                                .is_some_and(|t| t.elapsed() < self.election_timeout * 4))
                })
                .count();
            if heard * 2 <= rest.len() {
                return Err(MemberError::Refused(format!(
                    "only {heard} of the {} remaining voters are reachable: without {id} the cluster would have no quorum",
                    rest.len()
                )));
            }
        }
        if id == self.me {
            // openraft lets a leader remove itself, but this node then stops leading in the
            // middle of the change: hand leadership to another data voter first.
            // The active node if it is another, else the most caught-up reachable data voter.
            let view = self.members_view();
            let lost = self.reverts.get();
            let to = voters
                .iter()
                .filter(|v| v.id != id && v.kind == NodeKind::Data && !lost.contains_key(&v.id))
                .filter(|v| {
                    self.transport
                        .last_heard(&v.id)
                        .is_some_and(|t| t.elapsed() < self.election_timeout * 4)
                })
                .max_by_key(|v| {
                    let matched = view
                        .members
                        .iter()
                        .find(|m| m.member.id == v.id)
                        .and_then(|m| m.matched)
                        .unwrap_or(0);
                    (active == Some(v.id.as_str()), matched)
                });
            let Some(to) = to else {
                return Err(MemberError::Refused(format!(
                    "no other reachable data voter can lead once {id} is gone"
                )));
            };
            if let Err(e) = self.transfer_leadership(&to.id, self.election_timeout * 4).await {
                tracing::info!(error = %e, "leadership transfer did not complete");
            }
            return Err(MemberError::NotYet(format!(
                "{id} leads Raft; leadership handed to {}: try again",
                to.id
            )));
        }
        let rid: BTreeSet<NodeId> = [raft_id(id)].into();
        match role {
            RaftRole::Voter => {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(rid), false)
                    .await
                    .map_err(|e| self.raft_err(e))?;
            }
            RaftRole::Learner => {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(rid), false)
                    .await
                    .map_err(|e| self.raft_err(e))?;
            }
            RaftRole::None => {}
        }
        let table: Vec<Member> = members.iter().filter(|o| o.id != id).cloned().collect();
        self.write_table(table, format!("member {id} ({}) removed", m.kind))
            .await?;
        self.reverts.clear(id);
        Ok(format!("{id} removed"))
    }

    fn must_lead(&self) -> Result<(), MemberError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(MemberError::Cluster(ClusterError::NotLeader {
                leader: self.leader(),
            }))
        }
    }
}

/// The live member list and what follows it: the names of Raft ids and the transport's
/// peers. Shared by the clones of a [`Cluster`]; followed by a task that holds it weakly.
pub struct Live {
    list: RwLock<Arc<Vec<Member>>>,
    /// The table `list` was made from (`None`: the config's list), to see a change without
    /// converting anything: `refresh` runs after every applied entry.
    table: RwLock<Option<Vec<MemberRecord>>>,
    /// The members of the config file: the membership until a change writes the table.
    configured: Arc<Vec<Member>>,
    pub(super) names: Names,
    transport: Transport,
    sm: StateMachine,
    me: String,
}

impl Live {
    pub(super) fn new(
        configured: Vec<Member>,
        transport: Transport,
        sm: StateMachine,
        me: String,
    ) -> Arc<Live> {
        let names = Names::default();
        names.set(names_of(&configured));
        let live = Arc::new(Live {
            table: RwLock::new(None),
            list: RwLock::new(Arc::new(configured.clone())),
            configured: Arc::new(configured),
            names,
            transport,
            sm,
            me,
        });
        live.refresh();
        let weak = Arc::downgrade(&live);
        let mut applied = live.sm.subscribe();
        tokio::spawn(async move {
            loop {
                // Wakes at least every second to notice that the node is gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await;
                match weak.upgrade() {
                    Some(live) => live.refresh(),
                    None => return,
                }
            }
        });
        live
    }

    fn get(&self) -> Arc<Vec<Member>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The members of this node's config file.
    pub fn configured(&self) -> &[Member] {
        &self.configured
    }

    /// Brings the names, the transport's peers and the list in line with the member table,
    /// when it changed (cheap when it did not: compared in place, nothing copied).
    pub(super) fn refresh(&self) {
        let table = self.sm.read(|d| {
            let seen = self.table.read().unwrap_or_else(|p| p.into_inner());
            (d.ext.members.is_some() && d.ext.members != *seen).then(|| d.ext.members.clone())
        });
        let Some(Some(table)) = table else {
            return;
        };
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Some(table.clone());
        let list: Vec<Member> = table.iter().map(Member::from).collect();
        self.names.set(names_of(&list));
        let peers: Vec<_> = list
            .iter()
            .filter(|m| m.id != self.me)
            .map(|m| (m.id.clone(), m.addresses.clone()))
            .collect();
        self.transport.set_peers(&peers);
        let ids: Vec<&str> = list.iter().map(|m| m.id.as_str()).collect();
        tracing::info!(members = ?ids, "membership changed");
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
    }
}

/// Most members a learned table may name.
const MAX_LEARNED: usize = 64;

/// While no leader reaches this node (for four election timeouts), asks the members it knows
/// for their member lists and admits the members it lacks: a node that missed a membership
/// change (it is joining, or was away while a node was added) would otherwise refuse a leader
/// its table does not name, and never receive the entry that names it. Only members this
/// node knows are asked (their certificates prove who they are), and what they name is only
/// admitted, not made a member: the table itself still comes from the log. Runs until the
/// node is gone.
pub(super) async fn learn_members(
    live: std::sync::Weak<Live>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, EmptyNode>>,
    contact: Arc<super::prevote::LeaderContact>,
    election_timeout: Duration,
) {
    let every = (election_timeout * 4).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        let Some(live) = live.upgrade() else { return };
        let leads = metrics.borrow().state == openraft::ServerState::Leader;
        if leads || contact.recent(every) {
            continue;
        }
        for peer in live.transport.peer_ids() {
            let answer = live
                .transport
                .call(&peer, &super::rpc::Request::MemberTable, election_timeout * 2)
                .await;
            let Ok(super::rpc::Response::Json(json)) = answer else {
                continue;
            };
            let Ok(list) = serde_json::from_str::<Vec<Member>>(&json) else {
                continue;
            };
            if list.len() > MAX_LEARNED || list.iter().any(|m| crate::config::check_member(m).is_err()) {
                tracing::warn!(peer = %peer, "a member's table was refused (too long or invalid)");
                continue;
            }
            let peers: Vec<_> = list
                .iter()
                .filter(|m| m.id != live.me)
                .map(|m| (m.id.clone(), m.addresses.clone()))
                .collect();
            for id in live.transport.add_peers(&peers) {
                live.names.add(raft_id(&id), &id);
                tracing::info!(peer = %id, from = %peer, "admitting {id}, a member this node's table lacks (learned from {peer})");
            }
            break;
        }
    }
}

/// Member names by their Raft ids, for a table.
fn names_of(table: &[Member]) -> BTreeMap<NodeId, String> {
    table.iter().map(|m| (raft_id(&m.id), m.id.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, port: u16) -> Member {
        Member {
            id: id.into(),
            kind: NodeKind::Data,
            priority: 100,
            addresses: vec![format!("127.0.0.1:{port}").parse().expect("addr")],
            admin: format!("127.0.0.1:{}", port + 1).parse().expect("addr"),
            service_address: None,
            store_address: None,
            site: None,
        }
    }

    /// Drift names a member missing on either side and the fields that differ.
    #[test]
    fn drift_names_what_differs() {
        let a = member("a", 7000);
        let b = member("b", 7100);
        let mut b2 = b.clone();
        b2.priority = 50;
        b2.site = Some("east".into());
        let c = member("c", 7200);
        assert!(drift(&[a.clone(), b.clone()], &[a.clone(), b.clone()]).is_empty());
        let d = drift(&[a.clone(), b.clone()], &[a.clone(), b2, c]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].contains("b differs") && d[0].contains("priority, site"),
            "{d:?}"
        );
        assert!(
            d[1].contains("c is a member but not in this node's config file"),
            "{d:?}"
        );
        let d = drift(&[a.clone(), b], &[a]);
        assert_eq!(
            d,
            vec!["b is in this node's config file but not a member".to_string()]
        );
    }
}
