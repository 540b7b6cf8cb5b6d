//! `standin config export|diff|set|apply|history|rollback`: a node's effective configuration,
//! where the members' configurations differ, and the cluster settings that change through the
//! Raft log (validated by the leader, applied live on every node, versioned with who, when and
//! the digests before and after).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use super::client::{format_time, get_json, post};
use super::{exit, CliError};
use crate::api::ConfigView;
use crate::cluster::members::MembersView;

/// The value without its `null`s (TOML has none), walked with an explicit stack.
fn without_nulls(mut v: serde_json::Value) -> serde_json::Value {
    let mut stack = vec![&mut v];
    while let Some(cur) = stack.pop() {
        match cur {
            serde_json::Value::Object(map) => {
                map.retain(|_, x| !x.is_null());
                stack.extend(map.values_mut());
            }
            serde_json::Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
    v
}

/// The configuration as TOML (secrets already redacted by the node).
fn to_toml(v: &serde_json::Value) -> Result<String, CliError> {
    toml::to_string(&without_nulls(v.clone())).map_err(|e| {
        CliError::new(
            exit::UNAVAILABLE,
            format!("cannot print the configuration as TOML: {e}"),
        )
    })
}

/// `standin config export`.
pub async fn export(api: &str, json: bool) -> Result<(), CliError> {
    let (v, raw) = get_json::<ConfigView>(api, "/v1/config").await?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    println!(
        "# effective configuration of {} (digest {}; secrets redacted)",
        v.node, v.digest
    );
    print!("{}", to_toml(&v.config)?);
    Ok(())
}

/// Each member's configuration, asked at its own admin address (members that do not answer
/// are listed as such).
async fn all_configs(api: &str) -> Result<Vec<(String, Option<ConfigView>)>, CliError> {
    let (members, _) = get_json::<MembersView>(api, "/v1/members").await?;
    let asks = members.members.iter().map(|m| {
        let id = m.member.id.clone();
        let admin = m.member.admin.to_string();
        async move {
            let view = get_json::<ConfigView>(&admin, "/v1/config")
                .await
                .ok()
                .map(|x| x.0);
            (id, view)
        }
    });
    Ok(futures::future::join_all(asks).await)
}

/// One section that differs between members: its value per group of members.
#[derive(Debug, serde::Serialize)]
struct SectionDiff {
    section: String,
    /// Whether every member should have it the same (a `config-drift` alarm when not).
    shared: bool,
    /// Members grouped by the section's value (as TOML).
    groups: Vec<(Vec<String>, String)>,
}

/// `standin config diff`: per section, where the members' effective configurations differ.
/// Sections that name the node itself (`node`, addresses, TLS files) differ by nature and are
/// shown only with `all`.
pub async fn diff(api: &str, all: bool, json: bool) -> Result<(), CliError> {
    let configs = all_configs(api).await?;
    let missing: Vec<&str> = configs
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(id, _)| id.as_str())
        .collect();
    let answered: Vec<(&str, &ConfigView)> = configs
        .iter()
        .filter_map(|(id, v)| v.as_ref().map(|v| (id.as_str(), v)))
        .collect();
    let mut sections: Vec<String> = answered
        .iter()
        .filter_map(|(_, v)| v.config.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    sections.sort();
    sections.dedup();
    const PER_NODE: &[&str] = &[
        "node", "service", "store", "tls", "address", "proxy", "check", "api",
    ];
    let mut diffs = Vec::new();
    for section in sections {
        let shared = crate::config::SHARED_SECTIONS.contains(&section.as_str());
        let per_node = PER_NODE.contains(&section.as_str());
        if per_node && !all {
            continue;
        }
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, v) in &answered {
            let value = v.config.get(&section).cloned().unwrap_or(serde_json::Value::Null);
            // A witness runs no hooks: its `[hooks]` is not compared.
            if section == "hooks" && v.config.get("service").is_none_or(|s| s.is_null()) {
                continue;
            }
            let text = if value.is_null() {
                "(not set)".to_string()
            } else {
                let wrapped = serde_json::json!({ section.clone(): value });
                to_toml(&wrapped)?
            };
            groups.entry(text).or_default().push(id.to_string());
        }
        if groups.len() > 1 {
            diffs.push(SectionDiff {
                section,
                shared,
                groups: groups.into_iter().map(|(t, ids)| (ids, t)).collect(),
            });
        }
    }
    if json {
        let out = serde_json::json!({ "differences": diffs, "unreachable": missing });
        println!("{out}");
        return Ok(());
    }
    if diffs.is_empty() {
        println!(
            "no differences between {} members{}",
            answered.len(),
            if all {
                ""
            } else {
                " in the sections they share (--all: every section)"
            }
        );
    }
    for d in &diffs {
        println!(
            "[{}] differs{}:",
            d.section,
            if d.shared {
                " (DRIFT: every member should have it the same)"
            } else {
                ""
            }
        );
        for (ids, text) in &d.groups {
            println!("  {}:", ids.join(", "));
            for line in text.lines() {
                println!("    {line}");
            }
        }
    }
    if !missing.is_empty() {
        println!("not reached: {}", missing.join(", "));
    }
    Ok(())
}

/// The cluster settings in effect and their version number.
async fn current(api: &str) -> Result<(u64, String, Vec<crate::cluster::change::SettingsVersion>), CliError> {
    let (v, _) = get_json::<ConfigView>(api, "/v1/config").await?;
    let (n, text) = v
        .settings
        .last()
        .map_or((0, String::new()), |s| (s.number, s.text.clone()));
    Ok((n, text, v.settings))
}

/// Writes `text` as the new cluster settings (on top of version `base`) and waits until every
/// member has it.
async fn write(api: &str, text: String, change: String, base: u64, json: bool) -> Result<(), CliError> {
    let body = serde_json::json!({
        "text": text,
        "change": change,
        "by": super::deploy::who(),
        "base": base,
    });
    let reply = post(api, "/v1/config/settings", Some(body)).await?;
    let target = base + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: Vec<String>;
    loop {
        let configs = all_configs(api).await?;
        pending = configs
            .iter()
            .filter(|(_, v)| {
                v.as_ref()
                    .is_none_or(|v| v.settings.last().map_or(0, |s| s.number) < target)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "message": reply.message, "version": target, "not_applied": pending })
        );
    } else {
        println!("{}: {change}", reply.message);
        if pending.is_empty() {
            println!("applied on every member");
        } else {
            println!("not yet applied on: {} (unreachable?)", pending.join(", "));
        }
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            exit::TEMPFAIL,
            format!(
                "settings version {target} not applied on {} within 10 s",
                pending.join(", ")
            ),
        ))
    }
}

/// `standin config set SECTION.KEY VALUE`: one key of the cluster settings (VALUE is a TOML
/// value; a bare word is a string).
pub async fn set(api: &str, key: &str, value: &str, json: bool) -> Result<(), CliError> {
    let Some((section, name)) = key.split_once('.') else {
        return Err(CliError::new(
            exit::USAGE,
            format!("{key}: expected SECTION.KEY (e.g. failback.mode)"),
        ));
    };
    if !crate::config::CLUSTER_SECTIONS.contains(&section) {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "{section}: not a cluster setting (those are: {}){}",
                crate::config::CLUSTER_SECTIONS.join(", "),
                if section == "timing" {
                    "; the timings change in every file and a restart of each node"
                } else {
                    ""
                }
            ),
        ));
    }
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (base, text, _) = current(api).await?;
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| {
        CliError::new(
            exit::UNAVAILABLE,
            format!("the cluster settings do not parse: {e}"),
        )
    })?;
    let table = doc
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(table) = table.as_table_mut() else {
        return Err(CliError::new(
            exit::UNAVAILABLE,
            format!("[{section}] is not a table"),
        ));
    };
    table.insert(name.to_string(), parsed.clone());
    let text = toml::to_string(&doc).map_err(|e| CliError::new(exit::USAGE, e.to_string()))?;
    write(api, text, format!("{key} = {parsed}"), base, json).await
}

/// `standin config apply FILE`: the whole cluster settings document.
pub async fn apply(api: &str, file: &std::path::Path, json: bool) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::new(exit::USAGE, format!("{}: {e}", file.display())))?;
    if text.len() > crate::config::MAX_SETTINGS {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "{}: larger than {} bytes",
                file.display(),
                crate::config::MAX_SETTINGS
            ),
        ));
    }
    let (base, _, _) = current(api).await?;
    write(api, text, format!("apply {}", file.display()), base, json).await
}

/// `standin config rollback N`: the settings of version N again (as a new version).
pub async fn rollback(api: &str, to: u64, json: bool) -> Result<(), CliError> {
    let (base, _, versions) = current(api).await?;
    let text = if to == 0 {
        String::new()
    } else {
        versions
            .iter()
            .find(|v| v.number == to)
            .map(|v| v.text.clone())
            .ok_or_else(|| CliError::new(exit::USAGE, format!("there is no settings version {to}")))?
    };
    write(api, text, format!("rollback to version {to}"), base, json).await
}

/// `standin config history`.
pub async fn history(api: &str, json: bool) -> Result<(), CliError> {
    let (_, _, versions) = current(api).await?;
    if json {
        println!("{}", serde_json::to_string(&versions).unwrap_or_default());
        return Ok(());
    }
    if versions.is_empty() {
        println!("no cluster settings: every node runs with its file");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["version", "when", "by", "change", "digest"]);
    for v in &versions {
        t.add_row(vec![
            v.number.to_string(),
            format_time(v.at_unix_ms),
            v.by.clone(),
            v.change.clone(),
            format!("{} -> {}", v.old_digest, v.new_digest),
        ]);
    }
    println!("{t}");
    Ok(())
}
