//! What the demo keeps in its directory: `DIR/demo.json` (its schema, read and rewritten under
//! a lock so that the running demo and `standin demo add-node|remove-node` never lose each
//! other's changes), the admin token's file, and the [`Spec`] every node's config is written
//! from, so that a node added later gets the same timings, TLS and token settings as the
//! demo's own.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab::harness::{HarnessError, Spec};

/// One node in `demo.json`.
#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
pub struct DemoNode {
    pub id: String,
    pub kind: String,
    pub pid: Option<u32>,
    pub service_pid: Option<u32>,
    pub admin: String,
    pub service: Option<String>,
    pub store: Option<String>,
    /// Cluster addresses (one per path), TLS with client certificates.
    pub addresses: Vec<String>,
    /// The node's certificate and key: what a script needs to talk to the cluster ports as
    /// this member.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Added by `standin demo add-node` (not started by the demo itself): the demo stops it
    /// by its pid when it stops, and `demo remove-node` takes it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
    /// An added node's config file (the daemon's `--config`): what identifies its process
    /// before it is signalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// `demo.json`.
#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
pub struct DemoFile {
    pub dir: String,
    /// The service's floating address (the front proxy), host:port.
    pub floating: String,
    /// The store's floating address, host:port.
    pub store_floating: String,
    /// The front proxy's control API, host:port.
    pub proxy_admin: String,
    /// The cluster CA certificate (PEM) every node certificate is signed by.
    pub ca: Option<String>,
    /// The admin API token (mutations need it: `STANDIN_TOKEN`), and the file it is in.
    pub token: String,
    pub token_file: String,
    pub nodes: Vec<DemoNode>,
}

/// The admin API token's file in the demo's directory.
pub fn token_file(dir: &Path) -> PathBuf {
    dir.join("api.token")
}

/// The cluster the demo runs in `dir`: the harness's defaults (data nodes `a`, `b`, witness
/// `w`, the demo service, the store, mutual TLS with certificates in `DIR/certs`), the admin
/// token from `DIR/api.token`, and hooks that echo what happens into the nodes' logs.
pub fn spec(dir: &Path, binary: &Path) -> Spec {
    let mut spec = Spec::new(dir, binary);
    spec.extra_toml = format!("[api]\ntoken-file = \"{}\"\n", token_file(dir).display());
    spec.hooks_toml = concat!(
        "on-promote = \"echo promoted $STANDIN_NODE to epoch $STANDIN_EPOCH, previous: $STANDIN_PREVIOUS\"\n",
        "on-demote = \"echo $STANDIN_NODE demoted\"\n",
        "on-fence = \"echo fencing $STANDIN_PREVIOUS\"\n"
    )
    .to_string();
    spec
}

fn json_path(dir: &Path) -> PathBuf {
    dir.join("demo.json")
}

/// Reads `DIR/demo.json`.
pub fn read(dir: &Path) -> Result<DemoFile, HarnessError> {
    let path = json_path(dir);
    let text =
        std::fs::read_to_string(&path).map_err(|e| HarnessError(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| HarnessError(format!("{}: {e}", path.display())))
}

/// Writes `DIR/demo.json` whole (a temporary file renamed over it: readers never see half).
fn write(dir: &Path, file: &DemoFile) -> Result<(), HarnessError> {
    let text = serde_json::to_string_pretty(file).map_err(|e| HarnessError(e.to_string()))?;
    let tmp = dir.join("demo.json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, json_path(dir)))
        .map_err(|e| HarnessError(format!("cannot write demo.json: {e}")))
}

/// Runs `f` holding the lock on `DIR/demo.json.lock` (an exclusive `flock`, released when the
/// file closes, also if this process dies).
fn locked<T>(dir: &Path, f: impl FnOnce() -> Result<T, HarnessError>) -> Result<T, HarnessError> {
    let path = dir.join("demo.json.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| HarnessError(format!("{}: {e}", path.display())))?;
    lock.lock()
        .map_err(|e| HarnessError(format!("cannot lock {}: {e}", path.display())))?;
    let result = f();
    drop(lock);
    result
}

/// Reads `demo.json`, lets `change` edit it, and writes it back, all under the lock.
pub fn update<T>(dir: &Path, change: impl FnOnce(&mut DemoFile) -> T) -> Result<T, HarnessError> {
    locked(dir, || {
        let mut file = read(dir)?;
        let out = change(&mut file);
        write(dir, &file)?;
        Ok(out)
    })
}

/// The running demo's write: its own view of its nodes, followed by the nodes `demo add-node`
/// added (from the file on disk, with the service pids in `service_pids` where one was
/// learned), unless `fresh` (a new demo's first write drops what a previous run left).
/// Written only if it differs from `last`, which then holds it.
pub fn publish(
    dir: &Path,
    mut own: DemoFile,
    fresh: bool,
    service_pids: &std::collections::BTreeMap<String, u32>,
    last: &mut Option<DemoFile>,
) -> Result<(), HarnessError> {
    locked(dir, || {
        if !fresh {
            if let Ok(current) = read(dir) {
                for mut n in current.nodes.into_iter().filter(|n| n.added) {
                    if let Some(pid) = service_pids.get(&n.id) {
                        n.service_pid = Some(*pid);
                    }
                    own.nodes.push(n);
                }
            }
        }
        if last.as_ref() != Some(&own) {
            write(dir, &own)?;
            *last = Some(own);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, added: bool) -> DemoNode {
        DemoNode {
            id: id.into(),
            kind: "data".into(),
            pid: Some(1),
            service_pid: None,
            admin: "127.0.0.1:1".into(),
            service: None,
            store: None,
            addresses: vec![],
            cert: None,
            key: None,
            added,
            config: added.then(|| format!("/x/{id}.toml")),
        }
    }

    fn file(nodes: Vec<DemoNode>) -> DemoFile {
        DemoFile {
            dir: "/x".into(),
            floating: "127.0.0.1:2".into(),
            store_floating: "127.0.0.1:3".into(),
            proxy_admin: "127.0.0.1:4".into(),
            ca: None,
            token: "t".into(),
            token_file: "/x/api.token".into(),
            nodes,
        }
    }

    /// The demo's own nodes are written as before (no `added`, no `config` key), and its
    /// rewrites keep the nodes `add-node` put in, unless it is a new demo's first write.
    #[test]
    fn publish_keeps_added_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last = None;
        let pids = std::collections::BTreeMap::new();
        publish(dir.path(), file(vec![node("a", false)]), true, &pids, &mut last).expect("publish");
        let text = std::fs::read_to_string(dir.path().join("demo.json")).expect("read");
        assert!(!text.contains("added") && !text.contains("config"), "{text}");
        update(dir.path(), |f| f.nodes.push(node("c", true))).expect("update");
        let pids = [("c".to_string(), 42u32)].into_iter().collect();
        publish(dir.path(), file(vec![node("a", false)]), false, &pids, &mut last).expect("publish");
        let back = read(dir.path()).expect("read");
        assert_eq!(back.nodes.len(), 2);
        assert!(back.nodes[1].added);
        assert_eq!(back.nodes[1].service_pid, Some(42));
        // A new demo in the same directory starts from its own nodes only.
        publish(dir.path(), file(vec![node("a", false)]), true, &pids, &mut last).expect("publish");
        assert_eq!(read(dir.path()).expect("read").nodes.len(), 1);
    }
}
