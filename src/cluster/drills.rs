//! Acceptance records of failover drills, kept in the replicated state so that every node
//! holds them and they outlive any one machine: the record of each run (a JSON document the
//! drill client wrote, checked and bounded here), the operator's confirmations, and the
//! alarms they imply (`drill-failed`, `drill-overdue`).
//!
//! This file knows the record only as bounded text plus the few fields the state needs (id,
//! time, pass/fail, scenarios); the record's shape belongs to `crate::drill`.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Records kept (the oldest goes first).
pub const MAX_RECORDS: usize = 100;
/// The largest record document: its request, the document as a JSON string inside JSON,
/// must fit the admin API's 64 KiB body limit.
pub const MAX_RECORD_BYTES: usize = 56 * 1024;
/// Confirmations kept per record.
pub const MAX_CONFIRMATIONS: usize = 5;
/// The longest confirmation note.
pub const MAX_NOTE_BYTES: usize = 4096;
/// The longest name of who confirms, or unresolved issue.
pub const MAX_NAME_BYTES: usize = 1024;
/// Unresolved issues per confirmation.
pub const MAX_UNRESOLVED: usize = 10;
/// The longest run id.
pub const MAX_ID_BYTES: usize = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Drills {
    pub records: VecDeque<StoredRecord>,
    /// The run under way (its id and start), until its record arrives: one drill at a time.
    pub running: Option<(String, u64)>,
}

/// A run that began this long ago and left no record is over (its client went away).
pub const RUN_EXPIRES_MS: u64 = 1_800_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRecord {
    pub id: String,
    /// When the run was recorded (Unix ms, by the leader's clock; the run's own times are in
    /// its document).
    pub at: u64,
    pub passed: bool,
    /// Run by the cluster's schedule (not by an operator).
    pub scheduled: bool,
    /// Each scenario and whether it passed.
    pub scenarios: Vec<(String, bool)>,
    /// The whole record (JSON, see `crate::drill::record`).
    pub json: String,
    pub confirmations: Vec<Confirmation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confirmation {
    pub by: String,
    pub note: String,
    pub unresolved: Vec<String>,
    pub at: u64,
}

/// The commands of drill records (inside `Command::Drill`). Variant order is the encoding:
/// append only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum DrillCmd {
    Record {
        id: String,
        at: u64,
        passed: bool,
        scheduled: bool,
        scenarios: Vec<(String, bool)>,
        json: String,
    },
    Confirm {
        id: String,
        by: String,
        note: String,
        unresolved: Vec<String>,
        at: u64,
    },
    /// A run starts: refused while another one is under way, unless `force` (its client
    /// went away).
    Begin {
        id: String,
        at: u64,
        scheduled: bool,
        force: bool,
    },
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a command before it is proposed (the state machine checks again when applying:
/// what a log holds is as hostile as what a client sends).
pub fn check(cmd: &DrillCmd) -> Result<(), String> {
    match cmd {
        DrillCmd::Record {
            id, json, scenarios, ..
        } => {
            if !valid_id(id) {
                return Err(format!(
                    "run id must be 1-{MAX_ID_BYTES} letters, digits, '-' or '_'"
                ));
            }
            if json.len() > MAX_RECORD_BYTES {
                return Err(format!(
                    "record is {} bytes; at most {MAX_RECORD_BYTES}",
                    json.len()
                ));
            }
            if scenarios.len() > 64 || scenarios.iter().any(|(s, _)| s.len() > 64) {
                return Err("too many scenarios or a scenario name too long".into());
            }
            if scenarios.is_empty() {
                return Err("a record names at least one scenario".into());
            }
            let passed_all = scenarios.iter().all(|(_, ok)| *ok);
            if cmd_passed(cmd) != passed_all {
                return Err("`passed` must say whether every scenario passed".into());
            }
            Ok(())
        }
        DrillCmd::Begin { id, .. } => {
            if !valid_id(id) {
                return Err(format!(
                    "run id must be 1-{MAX_ID_BYTES} letters, digits, '-' or '_'"
                ));
            }
            Ok(())
        }
        DrillCmd::Confirm {
            id,
            by,
            note,
            unresolved,
            ..
        } => {
            if !valid_id(id) {
                return Err("no such run id".into());
            }
            if by.trim().is_empty() {
                return Err("`by` must name who confirms".into());
            }
            if by.len() > MAX_NAME_BYTES || note.len() > MAX_NOTE_BYTES {
                return Err(format!(
                    "`by` must be at most {MAX_NAME_BYTES} bytes and `note` at most {MAX_NOTE_BYTES}"
                ));
            }
            if unresolved.len() > MAX_UNRESOLVED || unresolved.iter().any(|u| u.len() > MAX_NAME_BYTES) {
                return Err(format!(
                    "at most {MAX_UNRESOLVED} unresolved issues of at most {MAX_NAME_BYTES} bytes"
                ));
            }
            Ok(())
        }
    }
}

fn cmd_passed(cmd: &DrillCmd) -> bool {
    matches!(cmd, DrillCmd::Record { passed: true, .. })
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub ok: bool,
    pub message: String,
    /// The history line to record, if any.
    pub event: Option<String>,
}

impl Drills {
    pub fn apply(&mut self, cmd: &DrillCmd) -> Applied {
        if let Err(e) = check(cmd) {
            return Applied {
                ok: false,
                message: e,
                event: None,
            };
        }
        match cmd {
            DrillCmd::Record {
                id,
                at,
                passed,
                scheduled,
                scenarios,
                json,
            } => {
                if self.get(id).is_some() {
                    return Applied {
                        ok: false,
                        message: format!("drill run {id} is already recorded"),
                        event: None,
                    };
                }
                if self.running.as_ref().is_some_and(|(r, _)| r == id) {
                    self.running = None;
                }
                while self.records.len() >= MAX_RECORDS {
                    self.records.pop_front();
                }
                self.records.push_back(StoredRecord {
                    id: id.clone(),
                    at: *at,
                    passed: *passed,
                    scheduled: *scheduled,
                    scenarios: scenarios.clone(),
                    json: json.clone(),
                    confirmations: Vec::new(),
                });
                let failed: Vec<&str> = scenarios
                    .iter()
                    .filter(|(_, ok)| !ok)
                    .map(|(s, _)| s.as_str())
                    .collect();
                Applied {
                    ok: true,
                    message: String::new(),
                    event: Some(if *passed {
                        format!("drill {id} passed ({} scenarios)", scenarios.len())
                    } else {
                        format!("drill {id} FAILED: {}", failed.join(", "))
                    }),
                }
            }
            DrillCmd::Begin {
                id,
                at,
                scheduled,
                force,
            } => {
                if let Some((other, since)) = self.under_way(*at).filter(|_| !force) {
                    return Applied {
                        ok: false,
                        message: format!(
                            "drill {other} is under way (began at unix ms {since}); one drill at a time \
                             (`standin drill run --force` if its client went away)"
                        ),
                        event: None,
                    };
                }
                self.running = Some((id.clone(), *at));
                Applied {
                    ok: true,
                    message: String::new(),
                    event: Some(format!(
                        "drill {id} began{}",
                        if *scheduled { " (scheduled)" } else { "" }
                    )),
                }
            }
            DrillCmd::Confirm {
                id,
                by,
                note,
                unresolved,
                at,
            } => {
                let Some(r) = self.records.iter_mut().find(|r| &r.id == id) else {
                    return Applied {
                        ok: false,
                        message: format!("no drill run {id} is recorded"),
                        event: None,
                    };
                };
                if r.confirmations.len() >= MAX_CONFIRMATIONS {
                    return Applied {
                        ok: false,
                        message: format!("drill run {id} has {MAX_CONFIRMATIONS} confirmations already"),
                        event: None,
                    };
                }
                r.confirmations.push(Confirmation {
                    by: by.clone(),
                    note: note.clone(),
                    unresolved: unresolved.clone(),
                    at: *at,
                });
                Applied {
                    ok: true,
                    message: String::new(),
                    event: Some(format!("drill {id} confirmed by {by}")),
                }
            }
        }
    }

    /// The run under way at `now`, if one began less than [`RUN_EXPIRES_MS`] ago.
    pub fn under_way(&self, now_ms: u64) -> Option<&(String, u64)> {
        self.running
            .as_ref()
            .filter(|(_, at)| now_ms.saturating_sub(*at) < RUN_EXPIRES_MS)
    }

    pub fn get(&self, id: &str) -> Option<&StoredRecord> {
        self.records.iter().find(|r| r.id == id)
    }

    /// When the last run that passed was recorded (Unix ms, the leader's clock).
    pub fn last_passed(&self) -> Option<u64> {
        self.records.iter().rev().find(|r| r.passed).map(|r| r.at)
    }

    /// `drill-failed` while the latest run failed; `drill-overdue` when `overdue_after_ms` is
    /// set and no run passed within it (counted from `since_ms` when none ever passed).
    pub fn alarms(
        &self,
        now_ms: u64,
        overdue_after_ms: Option<u64>,
        since_ms: u64,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        // The latest run is the last recorded (log order, not a client's clock).
        if let Some(r) = self.records.back().filter(|r| !r.passed) {
            let failed: Vec<&str> = r
                .scenarios
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(s, _)| s.as_str())
                .collect();
            out.insert(
                "drill-failed".to_string(),
                format!("drill {} failed: {}", r.id, failed.join(", ")),
            );
        }
        if let Some(after) = overdue_after_ms {
            let last = self.last_passed();
            let from = last.unwrap_or(since_ms);
            if now_ms.saturating_sub(from) > after {
                out.insert(
                    "drill-overdue".to_string(),
                    match last {
                        Some(t) => format!(
                            "no drill passed for {} s (last passed at unix ms {t})",
                            now_ms.saturating_sub(t) / 1000
                        ),
                        None => "no drill has passed yet".to_string(),
                    },
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, at: u64, passed: bool) -> DrillCmd {
        DrillCmd::Record {
            id: id.into(),
            at,
            passed,
            scheduled: false,
            scenarios: vec![("planned-switchover".into(), passed)],
            json: "{}".into(),
        }
    }

    #[test]
    fn records_are_bounded_unique_and_confirmed() {
        let mut d = Drills::default();
        assert!(d.apply(&record("r1", 1, true)).ok);
        assert!(!d.apply(&record("r1", 2, true)).ok, "same id twice");
        assert!(!d.apply(&record("bad id!", 2, true)).ok);
        assert!(
            !d.apply(&DrillCmd::Record {
                id: "big".into(),
                at: 3,
                passed: true,
                scheduled: false,
                scenarios: vec![],
                json: "x".repeat(MAX_RECORD_BYTES + 1),
            })
            .ok
        );
        for i in 0..MAX_RECORDS + 5 {
            assert!(d.apply(&record(&format!("n{i}"), 10 + i as u64, true)).ok);
        }
        assert_eq!(d.records.len(), MAX_RECORDS);
        assert!(d.get("r1").is_none(), "the oldest went first");
        let confirm = |id: &str, by: &str| DrillCmd::Confirm {
            id: id.into(),
            by: by.into(),
            note: "ok".into(),
            unresolved: vec!["follow up".into()],
            at: 99,
        };
        assert!(d.apply(&confirm("n7", "alice")).ok);
        assert!(!d.apply(&confirm("n7", " ")).ok, "who confirms is required");
        assert!(!d.apply(&confirm("nope", "alice")).ok);
        assert_eq!(
            d.get("n7").unwrap().confirmations[0].unresolved,
            vec!["follow up"]
        );
    }

    #[test]
    fn alarms_follow_the_latest_run_and_the_age_of_the_last_pass() {
        let mut d = Drills::default();
        let day = 86_400_000;
        assert!(d.alarms(day, None, 0).is_empty());
        assert_eq!(
            d.alarms(3 * day, Some(day), 0).keys().collect::<Vec<_>>(),
            vec!["drill-overdue"],
            "never passed, the schedule is older than max-age"
        );
        assert!(d.alarms(day / 2, Some(day), 0).is_empty());
        d.apply(&record("a", 2 * day, true));
        assert!(d.alarms(2 * day + 5, Some(day), 0).is_empty());
        d.apply(&record("b", 2 * day + 10, false));
        let a = d.alarms(2 * day + 20, Some(day), 0);
        assert!(a["drill-failed"].contains("planned-switchover"), "{a:?}");
        assert!(!a.contains_key("drill-overdue"));
        let later = d.alarms(4 * day, Some(day), 0);
        assert!(later.contains_key("drill-overdue") && later.contains_key("drill-failed"));
        d.apply(&record("c", 4 * day, true));
        assert!(d.alarms(4 * day + 1, Some(day), 0).is_empty());
    }
}
