//! Records the git commit the binary is built from, as `STANDIN_COMMIT` (a 12-digit short
//! hash, `-dirty` when the tree has uncommitted changes, `unknown` outside a git checkout, or
//! what the environment's `STANDIN_COMMIT` says, for builds from a source tarball). Shown by
//! `standin --version` and the `standin_build_info` metric.

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
        .or_else(|| {
            let hash = git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty())?;
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            Some(if dirty { format!("{hash}-dirty") } else { hash })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=STANDIN_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=STANDIN_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    for path in [".git/HEAD", ".git/index", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
