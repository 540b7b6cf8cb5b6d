//! The acceptance record of a drill run: per scenario what was expected and what was seen
//! (failover time, the interruption the client saw, lost writes, digests, alarms, events, log
//! lines), the versions of every node, and the operator's confirmations. Kept as JSON in the
//! cluster; rendered as Markdown and as a self-contained HTML page.

use serde::{Deserialize, Serialize};

use super::probe::ServiceStats;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub scheduled: bool,
    pub passed: bool,
    /// The admin API the run went through, and what it probed.
    pub api: String,
    pub service_probe: String,
    pub store_probe: Option<String>,
    pub nodes: Vec<NodeVersion>,
    pub timing: TimingSummary,
    pub scenarios: Vec<ScenarioRecord>,
    /// Reasons of the scenarios that failed, for the operator to resolve.
    pub unresolved: Vec<String>,
    /// Every write the store probe had acknowledged during the whole run, read back once
    /// more at its end (after every cut healed and the faulted nodes rejoined).
    #[serde(default)]
    pub store_final: Option<StoreStats>,
    /// The operator's confirmations (from the stored record; empty in the run's own copy).
    #[serde(default)]
    pub confirmations: Vec<ConfirmationView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfirmationView {
    pub by: String,
    pub note: String,
    pub unresolved: Vec<String>,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeVersion {
    pub id: String,
    pub kind: String,
    pub version: String,
    pub role: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TimingSummary {
    pub heartbeat_ms: u64,
    pub failure_timeout_ms: u64,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreStats {
    pub writes: u64,
    pub acked: u64,
    pub failed: u64,
    /// Acknowledged writes of the window not read back as written: must be 0.
    pub lost: u64,
    /// The first few lost keys.
    pub lost_keys: Vec<String>,
    /// The first error a write got, if any.
    #[serde(default)]
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeDigest {
    pub node: String,
    pub keys: u64,
    pub digest: String,
    pub applied_index: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScenarioRecord {
    pub name: String,
    pub passed: bool,
    pub expected: String,
    pub observed: String,
    /// Why it failed.
    pub reason: Option<String>,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// The node the fault was injected into.
    pub target: Option<String>,
    pub active_before: Option<String>,
    pub active_after: Option<String>,
    pub epoch_before: u64,
    pub epoch_after: u64,
    /// From the fault (or request) until another node served as active.
    pub failover_ms: Option<u64>,
    /// The longest interruption allowed.
    pub max_interruption_ms: u64,
    pub service: ServiceStats,
    pub store: Option<StoreStats>,
    pub digests: Vec<NodeDigest>,
    /// Moments where more than one data node said it acts as active.
    pub two_actives: Vec<String>,
    pub alarms_raised: Vec<String>,
    pub alarms_cleared: Vec<String>,
    pub events: Vec<String>,
    pub logs: Vec<String>,
}

impl Record {
    /// The `(scenario, passed)` pairs the stored record keeps beside the document.
    pub fn outcomes(&self) -> Vec<(String, bool)> {
        self.scenarios
            .iter()
            .map(|s| (s.name.clone(), s.passed))
            .collect()
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

/// The record as Markdown.
pub fn markdown(r: &Record) -> String {
    let mut o = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    o.push_str(&format!("# Failover drill {} — {verdict}\n\n", r.id));
    o.push_str(&format!(
        "- Run: {} to {} ({}){}\n- Through: admin API {}, service probe {}, store probe {}\n- Timing: heartbeat {} ms, failure timeout {} ms, lease {} ms\n\n",
        when(r.started_unix_ms),
        when(r.finished_unix_ms),
        if r.scheduled { "scheduled" } else { "by an operator" },
        "",
        r.api,
        r.service_probe,
        r.store_probe.as_deref().unwrap_or("-"),
        r.timing.heartbeat_ms,
        r.timing.failure_timeout_ms,
        r.timing.lease_ms
    ));
    o.push_str("## Nodes\n\n| node | kind | version | role at start |\n|---|---|---|---|\n");
    for n in &r.nodes {
        o.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            n.id, n.kind, n.version, n.role
        ));
    }
    o.push_str("\n## Summary\n\n| scenario | result | failover | interruption (max allowed) | failed requests | lost writes |\n|---|---|---|---|---|---|\n");
    for s in &r.scenarios {
        o.push_str(&format!(
            "| {} | {} | {} | {} ms ({} ms) | {} of {} | {} |\n",
            s.name,
            if s.passed { "pass" } else { "FAIL" },
            opt_ms(s.failover_ms),
            s.service.interruption_ms,
            s.max_interruption_ms,
            s.service.failed,
            s.service.requests,
            s.store.as_ref().map_or("-".into(), |st| st.lost.to_string()),
        ));
    }
    for s in &r.scenarios {
        o.push_str(&format!(
            "\n## {} — {}\n\n",
            s.name,
            if s.passed { "pass" } else { "FAIL" }
        ));
        o.push_str(&format!(
            "- Expected: {}\n- Observed: {}\n",
            s.expected, s.observed
        ));
        if let Some(why) = &s.reason {
            o.push_str(&format!("- Reason: {why}\n"));
        }
        o.push_str(&format!(
            "- Window: {} to {}\n- Target: {}; active {} (epoch {}) -> {} (epoch {})\n",
            when(s.started_unix_ms),
            when(s.ended_unix_ms),
            s.target.as_deref().unwrap_or("-"),
            s.active_before.as_deref().unwrap_or("none"),
            s.epoch_before,
            s.active_after.as_deref().unwrap_or("none"),
            s.epoch_after
        ));
        o.push_str(&format!(
            "- Service: {} requests, {} failed, availability {}%, longest interruption {} ms, latency p50 {} ms / max {} ms{}\n",
            s.service.requests,
            s.service.failed,
            s.service.availability_pct,
            s.service.interruption_ms,
            s.service.latency_p50_ms,
            s.service.latency_max_ms,
            s.service.first_error.as_ref().map_or(String::new(), |e| format!("; first error: {e}"))
        ));
        if let Some(st) = &s.store {
            o.push_str(&format!(
                "- Store: {} writes, {} acknowledged, {} failed, {} acknowledged and lost{}\n",
                st.writes,
                st.acked,
                st.failed,
                st.lost,
                if st.lost_keys.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", st.lost_keys.join(", "))
                }
            ));
        }
        for d in &s.digests {
            o.push_str(&format!(
                "- Digest of {}: {} ({} keys, applied index {})\n",
                d.node, d.digest, d.keys, d.applied_index
            ));
        }
        if !s.two_actives.is_empty() {
            o.push_str(&format!("- TWO ACTIVES seen: {}\n", s.two_actives.join("; ")));
        }
        let list = |o: &mut String, title: &str, items: &[String]| {
            if !items.is_empty() {
                o.push_str(&format!("\n{title}:\n\n```\n"));
                for i in items {
                    o.push_str(i);
                    o.push('\n');
                }
                o.push_str("```\n");
            }
        };
        list(&mut o, "Alarms raised", &s.alarms_raised);
        list(&mut o, "Alarms cleared", &s.alarms_cleared);
        list(&mut o, "Events", &s.events);
        list(&mut o, "Log lines", &s.logs);
    }
    if let Some(st) = &r.store_final {
        o.push_str(&format!(
            "\n## Store over the whole run\n\n{} writes, {} acknowledged, {} failed; read back at the end: {} acknowledged and lost\n",
            st.writes, st.acked, st.failed, st.lost
        ));
    }
    o.push_str("\n## Unresolved issues\n\n");
    if r.unresolved.is_empty() {
        o.push_str("None found by the drill.\n");
    }
    for u in &r.unresolved {
        o.push_str(&format!("- {u}\n"));
    }
    o.push_str("\n## Operator confirmation\n\n");
    if r.confirmations.is_empty() {
        o.push_str(&format!(
            "Not confirmed yet: `standin drill confirm {} --by NAME --note TEXT`\n",
            r.id
        ));
    }
    for c in &r.confirmations {
        o.push_str(&format!("- {} by {}: {}\n", when(c.at_unix_ms), c.by, c.note));
        for u in &c.unresolved {
            o.push_str(&format!("  - unresolved: {u}\n"));
        }
    }
    o
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The record as one self-contained HTML page (no script, no external resource).
pub fn html(r: &Record) -> String {
    let mut o = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    o.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Failover drill {} — {verdict}</title>\n",
        esc(&r.id)
    ));
    o.push_str(
        "<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
         .pass{color:#176f2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}\
         pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}h2{margin-top:1.6em}</style></head><body>\n",
    );
    let class = |ok: bool| if ok { "pass" } else { "fail" };
    o.push_str(&format!(
        "<h1>Failover drill {} — <span class=\"{}\">{verdict}</span></h1>\n",
        esc(&r.id),
        class(r.passed)
    ));
    o.push_str(&format!(
        "<p>Run {} to {} ({}). Admin API {}, service probe {}, store probe {}. Timing: heartbeat {} ms, failure timeout {} ms, lease {} ms.</p>\n",
        esc(&when(r.started_unix_ms)),
        esc(&when(r.finished_unix_ms)),
        if r.scheduled { "scheduled" } else { "by an operator" },
        esc(&r.api),
        esc(&r.service_probe),
        esc(r.store_probe.as_deref().unwrap_or("-")),
        r.timing.heartbeat_ms,
        r.timing.failure_timeout_ms,
        r.timing.lease_ms
    ));
    o.push_str(
        "<h2>Nodes</h2><table><tr><th>node</th><th>kind</th><th>version</th><th>role at start</th></tr>\n",
    );
    for n in &r.nodes {
        o.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&n.id),
            esc(&n.kind),
            esc(&n.version),
            esc(&n.role)
        ));
    }
    o.push_str("</table><h2>Summary</h2><table><tr><th>scenario</th><th>result</th><th>failover</th><th>interruption (max allowed)</th><th>failed requests</th><th>lost writes</th></tr>\n");
    for s in &r.scenarios {
        o.push_str(&format!(
            "<tr><td><a href=\"#{}\">{}</a></td><td class=\"{}\">{}</td><td>{}</td><td>{} ms ({} ms)</td><td>{} of {}</td><td>{}</td></tr>\n",
            esc(&s.name),
            esc(&s.name),
            class(s.passed),
            if s.passed { "pass" } else { "FAIL" },
            opt_ms(s.failover_ms),
            s.service.interruption_ms,
            s.max_interruption_ms,
            s.service.failed,
            s.service.requests,
            s.store.as_ref().map_or("-".into(), |st| st.lost.to_string())
        ));
    }
    o.push_str("</table>\n");
    for s in &r.scenarios {
        o.push_str(&format!(
            "<h2 id=\"{}\">{} — <span class=\"{}\">{}</span></h2>\n<table>\n",
            esc(&s.name),
            esc(&s.name),
            class(s.passed),
            if s.passed { "pass" } else { "FAIL" }
        ));
        let row = |o: &mut String, k: &str, v: String| {
            o.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>\n", esc(k), esc(&v)));
        };
        row(&mut o, "expected", s.expected.clone());
        row(&mut o, "observed", s.observed.clone());
        if let Some(why) = &s.reason {
            row(&mut o, "reason", why.clone());
        }
        row(
            &mut o,
            "window",
            format!("{} to {}", when(s.started_unix_ms), when(s.ended_unix_ms)),
        );
        row(
            &mut o,
            "active",
            format!(
                "{} (epoch {}) -> {} (epoch {}); fault on {}",
                s.active_before.as_deref().unwrap_or("none"),
                s.epoch_before,
                s.active_after.as_deref().unwrap_or("none"),
                s.epoch_after,
                s.target.as_deref().unwrap_or("-")
            ),
        );
        row(&mut o, "failover time", opt_ms(s.failover_ms));
        row(
            &mut o,
            "service",
            format!(
                "{} requests, {} failed, availability {}%, longest interruption {} ms (allowed {} ms), latency p50 {} ms / max {} ms",
                s.service.requests,
                s.service.failed,
                s.service.availability_pct,
                s.service.interruption_ms,
                s.max_interruption_ms,
                s.service.latency_p50_ms,
                s.service.latency_max_ms
            ),
        );
        if let Some(st) = &s.store {
            row(
                &mut o,
                "store",
                format!(
                    "{} writes, {} acknowledged, {} failed, {} acknowledged and lost",
                    st.writes, st.acked, st.failed, st.lost
                ),
            );
        }
        for d in &s.digests {
            row(
                &mut o,
                &format!("digest {}", d.node),
                format!(
                    "{} ({} keys, applied index {})",
                    d.digest, d.keys, d.applied_index
                ),
            );
        }
        row(
            &mut o,
            "single active",
            if s.two_actives.is_empty() {
                "never two actives seen".to_string()
            } else {
                format!("TWO ACTIVES: {}", s.two_actives.join("; "))
            },
        );
        o.push_str("</table>\n");
        for (title, items) in [
            ("Alarms raised", &s.alarms_raised),
            ("Alarms cleared", &s.alarms_cleared),
            ("Events", &s.events),
            ("Log lines", &s.logs),
        ] {
            if !items.is_empty() {
                o.push_str(&format!("<h3>{title}</h3><pre>"));
                for i in items {
                    o.push_str(&esc(i));
                    o.push('\n');
                }
                o.push_str("</pre>\n");
            }
        }
    }
    o.push_str("<h2>Unresolved issues</h2><ul>\n");
    if r.unresolved.is_empty() {
        o.push_str("<li>None found by the drill.</li>\n");
    }
    for u in &r.unresolved {
        o.push_str(&format!("<li>{}</li>\n", esc(u)));
    }
    o.push_str("</ul><h2>Operator confirmation</h2><ul>\n");
    if r.confirmations.is_empty() {
        o.push_str(&format!(
            "<li>Not confirmed yet: <code>standin drill confirm {} --by NAME --note TEXT</code></li>\n",
            esc(&r.id)
        ));
    }
    for c in &r.confirmations {
        o.push_str(&format!(
            "<li>{} by {}: {}",
            esc(&when(c.at_unix_ms)),
            esc(&c.by),
            esc(&c.note)
        ));
        for u in &c.unresolved {
            o.push_str(&format!("<br>unresolved: {}", esc(u)));
        }
        o.push_str("</li>\n");
    }
    o.push_str("</ul></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_escape_what_came_from_the_cluster_and_show_every_part() {
        let r = Record {
            id: "d1".into(),
            passed: false,
            nodes: vec![NodeVersion {
                id: "a".into(),
                kind: "data".into(),
                version: "0.1.0".into(),
                role: "active".into(),
            }],
            scenarios: vec![ScenarioRecord {
                name: "planned-switchover".into(),
                expected: "the role moves".into(),
                observed: "refused".into(),
                reason: Some("no eligible standby".into()),
                logs: vec!["a warn <script>alert(1)</script>".into()],
                store: Some(StoreStats {
                    writes: 3,
                    acked: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            unresolved: vec!["planned-switchover: no eligible standby".into()],
            confirmations: vec![ConfirmationView {
                by: "ops <b>".into(),
                note: "seen".into(),
                unresolved: vec![],
                at_unix_ms: 1,
            }],
            ..Default::default()
        };
        let h = html(&r);
        assert!(!h.contains("<script>"), "log text is escaped");
        assert!(h.contains("&lt;script&gt;") && h.contains("ops &lt;b&gt;"));
        assert!(h.contains("FAILED") && h.contains("no eligible standby"));
        let m = markdown(&r);
        for part in [
            "# Failover drill d1",
            "## Nodes",
            "planned-switchover",
            "Reason: no eligible standby",
            "Log lines",
            "Unresolved issues",
            "by ops <b>",
        ] {
            assert!(m.contains(part), "{part} missing:\n{m}");
        }
        assert_eq!(r.outcomes(), vec![("planned-switchover".to_string(), false)]);
    }
}
