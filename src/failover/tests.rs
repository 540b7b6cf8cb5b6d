//! Scenario table for `decide`, kept the way Pacemaker keeps its scheduler scenarios: every
//! rule is a named row = a mutation of a default view + the time + the exact expected actions.
//!
//! The default view ([`base`]) is a healthy 3-node cluster at `NOW`: data node `a` (priority
//! 100) is active at epoch 5 and Raft leader, data node `b` (priority 50) is a standby in sync,
//! `w` is a witness (given priority 100, the config default, to show that priority never makes
//! a witness a candidate). Everyone was heard at `NOW`; a's lease was last granted at
//! `NOW - 100`, so any lease given to it has certainly expired at `NOW + 350`
//! (`+ lease 400 + margin 50`).
//!
//! What the view does *not* show, because it is settled before `decide` runs:
//! - heartbeat paths are aggregated: `last_heard` is the latest heartbeat on *any* path, so
//!   "one of two paths lost" is simply a recent `last_heard`;
//! - check flapping is absorbed by the rise/fall thresholds of the `health` module: `decide`
//!   only sees the resulting `healthy` flag and `healthy_since` (the start of the current
//!   healthy streak, which a flap resets).
//!
//! The proptest at the end checks the safety invariants over random views.

use super::*;
use proptest::prelude::*;

const NOW: Millis = 100_000;
/// `base()`'s lease expiry: last grant at `NOW - 100`, lease 400, margin 50.
const EXPIRY: Millis = NOW + 350;

fn node(id: &str, priority: u32) -> NodeView {
    NodeView {
        id: id.to_string(),
        witness: false,
        priority,
        last_heard: Some(NOW),
        healthy: true,
        healthy_since: Some(0),
        in_sync: true,
        matched: 1000,
        maintenance: false,
        excluded_until: None,
        site: None,
    }
}

fn base() -> ClusterView {
    ClusterView {
        nodes: vec![
            node("a", 100),
            node("b", 50),
            NodeView {
                witness: true,
                ..node("w", 100)
            },
        ],
        active: Some("a".into()),
        epoch: 5,
        deposed: None,
        pending: None,
        switchover: None,
        quorum: true,
        leader_since: 0,
        last_grant: Some(NOW - 100),
        leader: "a".into(),
        failure_timeout: 500,
        lease: 400,
        lease_margin: 50,
        promote_timeout: 10_000,
        auto_failback: false,
        hold_down: 30_000,
        bootstrap_until: 0,
        grant_bound: None,
        switchover_timeout: u64::MAX,
    }
}

// ---- view mutations ----

fn n<'a>(v: &'a mut ClusterView, id: &str) -> &'a mut NodeView {
    v.nodes.iter_mut().find(|n| n.id == id).expect("node in view")
}

/// `id` was last heard longer ago than the failure timeout (on every path).
fn lose(v: &mut ClusterView, id: &str) {
    n(v, id).last_heard = Some(NOW - 600);
}

/// `a` was lost; `b` became Raft leader at `NOW - 100` (a's lease is certainly over at
/// `EXPIRY`, even though this coordinator never granted it one).
fn a_lost_b_leads(v: &mut ClusterView) {
    lose(v, "a");
    v.leader = "b".into();
    v.leader_since = NOW - 100;
    v.last_grant = None;
}

/// The coordinator applied `Depose` for the active node: nobody is active, `d` is deposed.
fn deposed(v: &mut ClusterView, d: &str, released: bool, cause: Cause) {
    v.deposed = Some(Deposed {
        node: d.into(),
        epoch: v.epoch,
        released,
        cause,
    });
    v.active = None;
}

/// After a failover to `b` at epoch 6: `b` active and Raft leader, `a` back as a standby.
fn b_active(v: &mut ClusterView) {
    v.active = Some("b".into());
    v.epoch = 6;
    v.leader = "b".into();
    v.leader_since = NOW - 60_000;
    v.last_grant = Some(NOW - 100);
}

fn switchover(v: &mut ClusterView, target: Option<&str>, cause: Cause) {
    v.switchover = Some(Switchover {
        target: target.map(String::from),
        cause,
        since: NOW - 1_000,
    });
}

/// Adds data node `c` in front of the others (so that list order never decides).
fn add_c(v: &mut ClusterView, priority: u32, matched: u64) {
    v.nodes.insert(
        0,
        NodeView {
            matched,
            ..node("c", priority)
        },
    );
}

// ---- expected actions ----

fn depose(node: &str, epoch: u64, cause: Cause) -> Action {
    Action::Depose {
        node: node.into(),
        epoch,
        cause,
    }
}

fn promote(node: &str, epoch: u64, previous: Option<&str>, cause: Cause, fence: bool) -> Action {
    Action::Promote {
        node: node.into(),
        epoch,
        previous: previous.map(String::from),
        cause,
        fence,
    }
}

fn wait(reason: &str) -> Action {
    Action::Wait {
        reason: reason.into(),
    }
}

fn cancel(reason: &str) -> Action {
    Action::CancelSwitchover {
        reason: reason.into(),
    }
}

const NO_CANDIDATE: &str = "no eligible standby: none is healthy, reachable, in sync and out of maintenance";
const QUORUM_LOST: &str = "quorum lost: no promotion possible";

struct Scenario {
    name: &'static str,
    setup: fn(&mut ClusterView),
    now: Millis,
    expect: Vec<Action>,
}

fn row(name: &'static str, setup: fn(&mut ClusterView), now: Millis, expect: Vec<Action>) -> Scenario {
    Scenario {
        name,
        setup,
        now,
        expect,
    }
}

fn scenarios() -> Vec<Scenario> {
    use Cause::*;
    vec![
        row("steady state: nothing to do", |_| {}, NOW, vec![]),
        // --- the active node is lost ---
        row(
            "active lost: depose it",
            a_lost_b_leads,
            NOW,
            vec![depose("a", 5, NodeLost)],
        ),
        row(
            "active lost exactly at the failure timeout",
            |v| n(v, "a").last_heard = Some(NOW - 500),
            NOW,
            vec![depose("a", 5, NodeLost)],
        ),
        row(
            "active lost, deposed: wait for its lease",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
            },
            NOW,
            vec![wait("waiting 350 ms for the lease of a (epoch 5) to expire")],
        ),
        row(
            "active lost, deposed: 1 ms before lease expiry still waits",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY - 1,
            vec![wait("waiting 1 ms for the lease of a (epoch 5) to expire")],
        ),
        row(
            "active lost, deposed, lease expired: promote b, fenced",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY,
            vec![promote("b", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "lease wait counts from the later of last grant and leadership",
            |v| {
                lose(v, "a");
                v.leader = "b".into();
                v.leader_since = NOW - 300;
                v.last_grant = Some(NOW - 200);
                deposed(v, "a", false, NodeLost);
            },
            NOW,
            vec![wait("waiting 250 ms for the lease of a (epoch 5) to expire")],
        ),
        // --- short pauses and lost paths ---
        row(
            "one path lost / short pause: heard just under the failure timeout",
            |v| n(v, "a").last_heard = Some(NOW - 499),
            NOW,
            vec![],
        ),
        row("standby lost: no move", |v| lose(v, "b"), NOW, vec![]),
        row("witness lost: no move", |v| lose(v, "w"), NOW, vec![]),
        // --- service health ---
        row(
            "active service unhealthy: depose it",
            |v| n(v, "a").healthy = false,
            NOW,
            vec![depose("a", 5, ServiceUnhealthy)],
        ),
        row(
            "active unhealthy, deposed and released: promote at once, no fence",
            |v| {
                n(v, "a").healthy = false;
                deposed(v, "a", true, ServiceUnhealthy);
            },
            NOW,
            vec![promote("b", 6, Some("a"), ServiceUnhealthy, false)],
        ),
        row(
            "active unhealthy but the standby is not in sync: keep it",
            |v| {
                n(v, "a").healthy = false;
                n(v, "b").in_sync = false;
            },
            NOW,
            vec![wait("a is unhealthy but no standby is eligible")],
        ),
        row(
            "standby unhealthy: no move",
            |v| n(v, "b").healthy = false,
            NOW,
            vec![],
        ),
        row(
            "standby flapping (healthy streak just started): no move",
            |v| n(v, "b").healthy_since = Some(NOW - 10),
            NOW,
            vec![],
        ),
        // --- candidates ---
        row(
            "candidate not in sync: not promoted",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
                n(v, "b").in_sync = false;
            },
            EXPIRY,
            vec![wait(NO_CANDIDATE)],
        ),
        row(
            "candidate unreachable: not promoted",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
                n(v, "b").last_heard = Some(EXPIRY - 500);
            },
            EXPIRY,
            vec![wait(NO_CANDIDATE)],
        ),
        row(
            "candidate with priority 0: never promoted",
            |v| {
                deposed(v, "a", true, Released);
                n(v, "a").healthy = false;
                n(v, "b").priority = 0;
            },
            NOW,
            vec![wait(NO_CANDIDATE)],
        ),
        row(
            "two candidates: higher priority wins",
            |v| {
                add_c(v, 80, 10);
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY,
            vec![promote("c", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "sites: a standby on the lost active's site wins over a higher priority elsewhere",
            |v| {
                add_c(v, 80, 1000);
                n(v, "a").site = Some("east".into());
                n(v, "b").site = Some("east".into());
                n(v, "c").site = Some("west".into());
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY,
            vec![promote("b", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "sites: with none healthy on the active's site, the other site takes over",
            |v| {
                add_c(v, 80, 1000);
                n(v, "a").site = Some("east".into());
                n(v, "b").site = Some("east".into());
                n(v, "b").healthy = false;
                n(v, "c").site = Some("west".into());
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY,
            vec![promote("c", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "two candidates, equal priority: more caught up wins",
            |v| {
                add_c(v, 50, 1001);
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY,
            vec![promote("c", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "two candidates, equal priority and progress: the name decides",
            |v| {
                add_c(v, 50, 1000);
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY,
            vec![promote("b", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "excluded after a failed promotion: skipped",
            |v| {
                add_c(v, 10, 1000);
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
                n(v, "b").excluded_until = Some(EXPIRY + 1);
            },
            EXPIRY,
            vec![promote("c", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "excluded and no one else: wait",
            |v| {
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
                n(v, "b").excluded_until = Some(EXPIRY + 1);
            },
            EXPIRY,
            vec![wait(NO_CANDIDATE)],
        ),
        row(
            "exclusion ended: candidate again",
            |v| {
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
                n(v, "b").excluded_until = Some(EXPIRY);
            },
            EXPIRY,
            vec![promote("b", 6, Some("a"), NodeLost, true)],
        ),
        row(
            "bootstrap: nobody active, nothing deposed: promote the best at epoch 1",
            |v| {
                v.active = None;
                v.epoch = 0;
            },
            NOW,
            vec![promote("a", 1, None, Bootstrap, false)],
        ),
        row(
            "lost active returns as the only candidate: re-promoted, never fences itself",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
                n(v, "a").last_heard = Some(EXPIRY);
                n(v, "b").healthy = false;
            },
            EXPIRY,
            vec![promote("a", 6, Some("a"), NodeLost, false)],
        ),
        // --- maintenance ---
        row(
            "standby in maintenance: not a candidate",
            |v| {
                lose(v, "a");
                deposed(v, "a", false, NodeLost);
                n(v, "b").maintenance = true;
            },
            EXPIRY,
            vec![wait(NO_CANDIDATE)],
        ),
        row(
            "standby in maintenance while a is fine: no move",
            |v| n(v, "b").maintenance = true,
            NOW,
            vec![],
        ),
        row(
            "active in maintenance with a candidate: depose it",
            |v| n(v, "a").maintenance = true,
            NOW,
            vec![depose("a", 5, Maintenance)],
        ),
        row(
            "active in maintenance, deposed and released: promote b",
            |v| {
                n(v, "a").maintenance = true;
                deposed(v, "a", true, Maintenance);
            },
            NOW,
            vec![promote("b", 6, Some("a"), Maintenance, false)],
        ),
        row(
            "active in maintenance without a candidate: stay",
            |v| {
                n(v, "a").maintenance = true;
                n(v, "b").healthy = false;
            },
            NOW,
            vec![wait("a is in maintenance but no standby is eligible")],
        ),
        // --- the old active returns; failback ---
        row(
            "old active returns, manual failback: stays standby",
            b_active,
            NOW,
            vec![],
        ),
        row(
            "old active returns still catching up: stays standby",
            |v| {
                b_active(v);
                n(v, "a").in_sync = false;
                n(v, "a").healthy_since = Some(NOW - 100);
            },
            NOW,
            vec![],
        ),
        row(
            "manual failback requested: depose b",
            |v| {
                b_active(v);
                switchover(v, None, Failback);
            },
            NOW,
            vec![depose("b", 6, Failback)],
        ),
        row(
            "failback requested while a is already active: cancel",
            |v| switchover(v, None, Failback),
            NOW,
            vec![cancel("a is already the preferred node")],
        ),
        row(
            "auto failback, before the hold-down: nothing",
            |v| {
                b_active(v);
                v.auto_failback = true;
                n(v, "a").healthy_since = Some(NOW - 29_999);
            },
            NOW,
            vec![],
        ),
        row(
            "auto failback, after the hold-down: request it",
            |v| {
                b_active(v);
                v.auto_failback = true;
                n(v, "a").healthy_since = Some(NOW - 30_000);
            },
            NOW,
            vec![Action::RequestSwitchover {
                target: "a".into(),
                cause: Failback,
            }],
        ),
        row(
            "auto failback, a flapped recently (healthy streak too short): nothing",
            |v| {
                b_active(v);
                v.auto_failback = true;
                n(v, "a").healthy_since = Some(NOW - 1_000);
            },
            NOW,
            vec![],
        ),
        row(
            "auto failback, a held down but not in sync: nothing",
            |v| {
                b_active(v);
                v.auto_failback = true;
                n(v, "a").in_sync = false;
            },
            NOW,
            vec![],
        ),
        row(
            "auto failback never moves to a lower priority",
            |v| v.auto_failback = true,
            NOW,
            vec![],
        ),
        row(
            "auto failback requested: depose b",
            |v| {
                b_active(v);
                v.auto_failback = true;
                switchover(v, Some("a"), Failback);
            },
            NOW,
            vec![depose("b", 6, Failback)],
        ),
        row(
            "failback: b deposed and released: promote a at epoch 7",
            |v| {
                b_active(v);
                switchover(v, Some("a"), Failback);
                deposed(v, "b", true, Failback);
            },
            NOW,
            vec![promote("a", 7, Some("b"), Failback, false)],
        ),
        // --- witness ---
        row(
            "witness is the only healthy reachable node: never promoted",
            |v| {
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
                n(v, "b").healthy = false;
                v.leader = "w".into();
            },
            EXPIRY,
            vec![wait(NO_CANDIDATE)],
        ),
        row(
            "witness as switchover target: cancel",
            |v| switchover(v, Some("w"), Switchover),
            NOW,
            vec![cancel("w is a witness and never runs the service")],
        ),
        row(
            "witness as target with nobody active: not promoted",
            |v| {
                switchover(v, Some("w"), Switchover);
                deposed(v, "a", true, Switchover);
            },
            NOW,
            vec![promote("b", 6, Some("a"), Switchover, false)],
        ),
        // --- quorum ---
        row(
            "quorum lost: only wait",
            |v| v.quorum = false,
            NOW,
            vec![wait(QUORUM_LOST)],
        ),
        row(
            "quorum lost and active lost: nobody promoted",
            |v| {
                v.quorum = false;
                a_lost_b_leads(v);
                deposed(v, "a", false, NodeLost);
            },
            EXPIRY + 10_000,
            vec![wait(QUORUM_LOST)],
        ),
        row(
            "quorum lost with a promotion pending: no timeout either",
            |v| {
                v.quorum = false;
                v.active = None;
                v.pending = Some(Pending {
                    node: "b".into(),
                    epoch: 6,
                    since: 0,
                });
            },
            NOW,
            vec![wait(QUORUM_LOST)],
        ),
        // --- pending promotion ---
        row(
            "promotion pending: wait",
            |v| {
                v.active = None;
                v.pending = Some(Pending {
                    node: "b".into(),
                    epoch: 6,
                    since: NOW - 9_999,
                });
            },
            NOW,
            vec![wait("promotion of b at epoch 6 in progress")],
        ),
        row(
            "promotion pending past promote-timeout: timed out",
            |v| {
                v.active = None;
                v.pending = Some(Pending {
                    node: "b".into(),
                    epoch: 6,
                    since: NOW - 10_000,
                });
            },
            NOW,
            vec![Action::PromotionTimedOut {
                node: "b".into(),
                epoch: 6,
            }],
        ),
        // --- switchover ---
        row(
            "switchover to b: depose a",
            |v| switchover(v, Some("b"), Switchover),
            NOW,
            vec![depose("a", 5, Switchover)],
        ),
        row(
            "switchover, a deposed and released: promote the target",
            |v| {
                switchover(v, Some("b"), Switchover);
                deposed(v, "a", true, Switchover);
            },
            NOW,
            vec![promote("b", 6, Some("a"), Switchover, false)],
        ),
        row(
            "switchover to a target that is catching up: wait",
            |v| {
                switchover(v, Some("b"), Switchover);
                n(v, "b").in_sync = false;
            },
            NOW,
            vec![wait("switchover target is catching up")],
        ),
        row(
            "switchover to an unhealthy target: cancel",
            |v| {
                switchover(v, Some("b"), Switchover);
                n(v, "b").healthy = false;
            },
            NOW,
            vec![cancel(
                "b is not an eligible standby (unhealthy, unreachable, in maintenance or priority 0)",
            )],
        ),
        row(
            "switchover to itself: cancel",
            |v| switchover(v, Some("a"), Switchover),
            NOW,
            vec![cancel("a is already active")],
        ),
        row(
            "switchover to an unknown node: cancel",
            |v| switchover(v, Some("x"), Switchover),
            NOW,
            vec![cancel("x is not a member")],
        ),
        row(
            "switchover without target: depose a",
            |v| {
                add_c(v, 10, 1000);
                switchover(v, None, Switchover);
            },
            NOW,
            vec![depose("a", 5, Switchover)],
        ),
        row(
            "switchover without target: the best other node, never the one moved away from",
            |v| {
                add_c(v, 10, 1000);
                switchover(v, None, Switchover);
                deposed(v, "a", true, Switchover);
            },
            NOW,
            vec![promote("b", 6, Some("a"), Switchover, false)],
        ),
        row(
            "switchover without target and no other candidate: cancel",
            |v| {
                switchover(v, None, Switchover);
                n(v, "b").maintenance = true;
            },
            NOW,
            vec![cancel("no eligible standby to switch over to")],
        ),
        row(
            "planned move, nobody else can serve: the old active is taken back",
            |v| {
                switchover(v, None, Switchover);
                deposed(v, "a", true, Switchover);
                n(v, "b").healthy = false;
            },
            NOW,
            vec![promote("a", 6, Some("a"), Switchover, false)],
        ),
        // --- Raft leadership ---
        row(
            "Raft leader is not the active: transfer leadership",
            |v| v.leader = "w".into(),
            NOW,
            vec![Action::TransferLeadership { to: "a".into() }],
        ),
        row(
            "Raft leader is not the active, active lagging: no transfer yet",
            |v| {
                v.leader = "b".into();
                n(v, "a").in_sync = false;
            },
            NOW,
            vec![],
        ),
    ]
}

#[test]
fn scenario_table() {
    let mut failures = Vec::new();
    let all = scenarios();
    for s in &all {
        let mut v = base();
        (s.setup)(&mut v);
        let got = decide(&v, s.now);
        if got != s.expect {
            failures.push(format!(
                "{}\n  expected: {:?}\n       got: {:?}",
                s.name, s.expect, got
            ));
        }
        // Same view and time, same answer.
        assert_eq!(decide(&v, s.now), got, "{}: not deterministic", s.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn scenario_names_are_unique() {
    let mut names: Vec<_> = scenarios().iter().map(|s| s.name).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n);
}

/// The active-lost path end to end, applying each action the way the coordinator does.
#[test]
fn active_lost_timeline() {
    let mut v = base();
    a_lost_b_leads(&mut v);
    let now = NOW;
    assert_eq!(decide(&v, now), vec![depose("a", 5, Cause::NodeLost)]);
    deposed(&mut v, "a", false, Cause::NodeLost);
    for t in [NOW, NOW + 100, EXPIRY - 1] {
        assert!(
            matches!(decide(&v, t).as_slice(), [Action::Wait { .. }]),
            "at {t}"
        );
    }
    let promoted = decide(&v, EXPIRY);
    assert_eq!(promoted, vec![promote("b", 6, Some("a"), Cause::NodeLost, true)]);
    // The promotion is committed and pending until b reports its hook result.
    v.pending = Some(Pending {
        node: "b".into(),
        epoch: 6,
        since: EXPIRY,
    });
    assert_eq!(
        decide(&v, EXPIRY + 1),
        vec![wait("promotion of b at epoch 6 in progress")]
    );
    // b reports success: it is active at epoch 6, the lease wait is over.
    v.pending = None;
    v.deposed = None;
    v.active = Some("b".into());
    v.epoch = 6;
    n(&mut v, "b").last_heard = Some(EXPIRY + 2);
    assert_eq!(decide(&v, EXPIRY + 2), vec![]);
    // a comes back healthy and in sync: with manual failback it stays a standby.
    n(&mut v, "a").last_heard = Some(EXPIRY + 3);
    assert_eq!(decide(&v, EXPIRY + 3), vec![]);
}

// ---- invariants over random views ----

const IDS: [&str; 5] = ["a", "b", "c", "d", "w"];
const T0: Millis = 50_000;

fn arb_cause() -> impl Strategy<Value = Cause> {
    prop_oneof![
        Just(Cause::Bootstrap),
        Just(Cause::NodeLost),
        Just(Cause::ServiceUnhealthy),
        Just(Cause::Switchover),
        Just(Cause::Failback),
        Just(Cause::Maintenance),
        Just(Cause::Released),
    ]
}

/// A node name: usually a member, sometimes not ("x").
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => (0..IDS.len()).prop_map(|i| IDS[i].to_string()),
        1 => Just("x".to_string()),
    ]
}

fn arb_time() -> impl Strategy<Value = Millis> {
    T0 - 40_000..T0 + 1_000
}

fn arb_node(id: &'static str) -> impl Strategy<Value = NodeView> {
    (
        (
            any::<bool>(),
            prop_oneof![Just(0u32), Just(50), Just(100), 0..200u32],
        ),
        proptest::option::weighted(0.95, T0 - 1_000..T0 + 100),
        (any::<bool>(), proptest::option::of(arb_time())),
        (prop::bool::weighted(0.8), 990..1010u64),
        prop::bool::weighted(0.2),
        proptest::option::weighted(0.2, T0 - 1_000..T0 + 1_000),
    )
        .prop_map(
            move |(
                (witness, priority),
                last_heard,
                (healthy, healthy_since),
                (in_sync, matched),
                maintenance,
                excluded_until,
            )| {
                NodeView {
                    id: id.to_string(),
                    witness: id == "w" || (witness && id == "d"),
                    priority,
                    last_heard,
                    healthy,
                    healthy_since,
                    in_sync,
                    matched,
                    maintenance,
                    excluded_until,
                    site: None,
                }
            },
        )
}

prop_compose! {
    fn arb_view()(
        count in 1..=IDS.len(),
        nodes in (arb_node("a"), arb_node("b"), arb_node("c"), arb_node("d"), arb_node("w")),
        active in proptest::option::of(arb_name()),
        epoch in 0..1_000u64,
        deposed in proptest::option::of((arb_name(), any::<bool>(), arb_cause())),
        pending in proptest::option::weighted(0.2, (arb_name(), arb_time())),
        switchover in proptest::option::weighted(0.3, (proptest::option::of(arb_name()), arb_cause())),
        quorum in prop::bool::weighted(0.8),
        leader_since in arb_time(),
        last_grant in proptest::option::of(arb_time()),
        leader in arb_name(),
        timing in (100..1_000u64, 100..1_000u64, 0..100u64, 100..20_000u64),
        auto_failback in any::<bool>(),
        hold_down in 0..40_000u64,
        grant_bound in proptest::option::of(arb_time()),
    ) -> ClusterView {
        let (a, b, c, d, w) = nodes;
        let mut nodes = vec![a, b, c, d, w];
        nodes.truncate(count);
        let (failure_timeout, lease, lease_margin, promote_timeout) = timing;
        ClusterView {
            nodes,
            active,
            epoch,
            deposed: deposed.map(|(node, released, cause)| Deposed { node, epoch, released, cause }),
            pending: pending.map(|(node, since)| Pending { node, epoch: epoch + 1, since }),
            switchover: switchover.map(|(target, cause)| Switchover { target, cause, since: 0 }),
            quorum,
            leader_since,
            last_grant,
            leader,
            failure_timeout,
            lease,
            lease_margin,
            promote_timeout,
            auto_failback,
            hold_down,
            bootstrap_until: 0,
            grant_bound,
            switchover_timeout: u64::MAX,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decide_is_safe(v in arb_view(), now in T0 - 1_000..T0 + 2_000) {
        let actions = decide(&v, now);
        prop_assert_eq!(&decide(&v, now), &actions, "not deterministic");
        let promotions = actions.iter().filter(|a| matches!(a, Action::Promote { .. })).count();
        prop_assert!(promotions <= 1, "{:?}", actions);
        if !v.quorum {
            prop_assert!(
                actions.iter().all(|a| matches!(a, Action::Wait { .. })),
                "without quorum only Wait: {:?}", actions
            );
        }
        for a in &actions {
            match a {
                Action::Promote { node, epoch, previous, fence, .. } => {
                    // Fence exactly when another node may still act as active.
                    let unconfirmed = v.deposed.as_ref().is_some_and(|d| !d.released && &d.node != node);
                    prop_assert_eq!(*fence, unconfirmed, "fence flag");
                    prop_assert_eq!(previous.as_ref(), v.deposed.as_ref().map(|d| &d.node));
                    prop_assert!(v.active.is_none(), "promoted {} while {:?} is active", node, v.active);
                    prop_assert!(v.quorum, "promoted {} without quorum", node);
                    prop_assert!(v.pending.is_none(), "promoted {} while a promotion is pending", node);
                    prop_assert_eq!(*epoch, v.epoch + 1, "epoch must grow by exactly 1");
                    if let Some(d) = &v.deposed {
                        prop_assert!(
                            d.released || now >= v.lease_expiry(),
                            "promoted {} at {} before {}'s lease expired at {}", node, now, d.node, v.lease_expiry()
                        );
                    }
                    let n = v.node(node);
                    prop_assert!(n.is_some(), "promoted non-member {}", node);
                    let n = n.unwrap();
                    prop_assert!(!n.witness, "promoted witness {}", node);
                    prop_assert!(n.healthy, "promoted unhealthy {}", node);
                    prop_assert!(v.reachable(node, now), "promoted unreachable {}", node);
                    prop_assert!(n.in_sync, "promoted out-of-sync {}", node);
                    prop_assert!(!n.maintenance, "promoted {} in maintenance", node);
                    prop_assert!(n.priority > 0, "promoted priority-0 {}", node);
                    prop_assert!(n.excluded_until.is_none_or(|t| t <= now), "promoted excluded {}", node);
                }
                Action::Depose { node, epoch, .. } => {
                    prop_assert_eq!(Some(node), v.active.as_ref(), "deposed a non-active node");
                    prop_assert_eq!(*epoch, v.epoch);
                }
                Action::RequestSwitchover { target, .. } => {
                    let n = v.node(target);
                    prop_assert!(n.is_some_and(|n| !n.witness), "switchover to {}", target);
                    prop_assert!(v.switchover.is_none());
                }
                Action::PromotionTimedOut { node, epoch } => {
                    let p = v.pending.as_ref();
                    prop_assert!(p.is_some_and(|p| &p.node == node && p.epoch == *epoch));
                }
                Action::TransferLeadership { to } => {
                    prop_assert_eq!(Some(to), v.active.as_ref());
                    prop_assert!(to != &v.leader);
                }
                Action::CancelSwitchover { .. } => prop_assert!(v.switchover.is_some()),
                Action::Wait { .. } => {}
            }
        }
    }
}

/// With every surviving voter's report, the lease wait counts from the last confirmation the
/// deposed node could have had, not from this leader's election.
#[test]
fn grant_bound_shortens_the_lease_wait_after_a_new_election() {
    let mut v = base();
    v.active = None;
    v.deposed = Some(Deposed {
        node: "a".into(),
        epoch: 5,
        released: false,
        cause: Cause::NodeLost,
    });
    n(&mut v, "a").last_heard = Some(NOW - 1_000);
    v.leader = "b".into();
    v.last_grant = None;
    v.leader_since = NOW - 100; // elected 100 ms ago: without a bound, wait until NOW + 350
    assert!(matches!(decide(&v, NOW).as_slice(), [Action::Wait { .. }]));
    v.grant_bound = Some(NOW - 600); // the last confirmation anyone took part in
    match decide(&v, NOW).as_slice() {
        [Action::Promote {
            node,
            epoch: 6,
            fence: true,
            ..
        }] => assert_eq!(node, "b"),
        other => panic!("expected a promotion of b, got {other:?}"),
    }
    // A grant given later than the bound still counts.
    v.last_grant = Some(NOW - 300);
    assert!(matches!(decide(&v, NOW).as_slice(), [Action::Wait { .. }]));
}

/// A switchover the target never became eligible for is dropped after the timeout.
#[test]
fn a_stale_switchover_request_is_cancelled() {
    let mut v = base();
    switchover(&mut v, Some("b"), Cause::Switchover);
    n(&mut v, "b").in_sync = false; // catching up: wait
    v.switchover_timeout = 30_000;
    assert!(matches!(decide(&v, NOW).as_slice(), [Action::Wait { .. }]));
    let later = NOW + 40_000;
    for node in v.nodes.iter_mut() {
        node.last_heard = Some(later);
    }
    assert!(matches!(
        decide(&v, later).as_slice(),
        [Action::CancelSwitchover { .. }]
    ));
}
