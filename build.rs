//! Records the git commit the binary is built from, as `STANDIN_COMMIT` (the 12-digit short
//! hash of HEAD; `unknown` outside a git checkout; or what the environment's `STANDIN_COMMIT`
//! says, for builds from a source tarball). Uncommitted changes are not marked: telling them
//! would mean running this script at every build. Shown by `standin --version` and the
//! `standin_build_info` metric.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    let commit = std::env::var("STANDIN_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=STANDIN_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=STANDIN_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    for path in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
