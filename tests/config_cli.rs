//! The binary refuses bad configuration with exit code 64 and a message naming the key, before
//! binding any port.

use std::net::TcpListener;
use std::process::Command;

mod common;
use common::{binary, free_port};

fn config(admin_port: u16, extra: &str) -> String {
    format!(
        r#"
[tls]
insecure = true

[node]
id = "a"
data-dir = "/nonexistent/should-not-be-created"

[[member]]
id = "a"
kind = "data"
addresses = ["127.0.0.1:1"]
admin = "127.0.0.1:{admin_port}"

[service]
command = "sleep"
args = ["30"]
{extra}
"#
    )
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, config(free_port(), "")).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_key_exits_64_naming_it_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config(port, "restart-delay = \"1s\"")).unwrap();
    for cmd in [vec!["check-config"], vec!["node", "--config"]] {
        let out = Command::new(binary()).args(&cmd).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd:?}: {err}");
        assert!(
            err.contains("restart-delay"),
            "{cmd:?}: message must name the key: {err}"
        );
    }
    // Nothing was bound and no data directory was made.
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    assert!(!std::path::Path::new("/nonexistent/should-not-be-created").exists());
}

#[test]
fn bad_values_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[timing]\nlease = \"fast\"", "lease"),
        ("[timing]\nlease = \"150ms\"", "timing.lease"),
        // Issue 12: absurd values, a lease longer than the failure timeout, and two of the
        // node's own listeners on one port passed `check-config`.
        (
            "[timing]\nfailure-timeout = \"500000000y\"",
            "timing.failure-timeout",
        ),
        ("[timing]\nlease = \"18446744073709551615s\"", "timing.lease"),
        ("[timing]\nlease = \"600ms\"", "timing.lease"),
        ("[hooks]\ntimeout = \"2h\"", "hooks.timeout"),
        ("[store]\nlisten = \"127.0.0.1:1\"", "store.listen"),
        (
            "[[check]]\nname = \"h\"\nkind = \"http\"\nurl = \"ftp://x\"",
            "check[0].url",
        ),
        (
            "[address]\nvip = \"10.0.0.100\"\ninterface = \"eth0\"",
            "address.vip",
        ),
        (
            "[address]\nvip = \"10.0.0.100/24\"\ninterface = \"eth0\"\ngarp-interval = \"0s\"",
            "address.garp-interval",
        ),
        (
            "[address]\nvip = \"10.0.0.100/24\"\ninterface = \"eth0\"\nmac = \"x\"",
            "mac",
        ),
    ];
    for (extra, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config(free_port(), extra)).unwrap();
        for cmd in [vec!["node", "--config"], vec!["check-config"]] {
            let out = Command::new(binary()).args(&cmd).arg(&path).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd:?} {extra}: {err}");
            assert!(
                err.contains(key),
                "{cmd:?} {extra}: message must name {key}: {err}"
            );
        }
    }
    // The port clash names both keys.
    let path = dir.path().join("clash.toml");
    std::fs::write(&path, config(free_port(), "[store]\nlisten = \"0.0.0.0:1\"")).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("`store.listen`") && err.contains("`member[0].addresses[0]`"),
        "{err}"
    );
}

#[test]
fn cli_reports_an_unreachable_api_with_exit_69() {
    let port = free_port();
    let out = Command::new(binary())
        .args(["status", "--json", "--api", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

/// `standin bench disk` measures its three series in a directory of the caller's choosing and
/// removes what it wrote; a count of 0 is refused as a usage error.
#[test]
fn bench_disk_measures_three_series_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(binary())
        .args(["bench", "disk", "--commits", "20", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = rows.as_array().expect("rows");
    let what: Vec<&str> = rows.iter().filter_map(|r| r["what"].as_str()).collect();
    assert_eq!(
        what,
        [
            "pwrite 4 KiB + fdatasync",
            "redb commit, 2 KB entry, Durability::Immediate",
            "redb commit, 2 KB entry, Durability::None"
        ]
    );
    for r in rows {
        assert_eq!(r["commits"], 20, "{r}");
        assert!(r["p50_ms"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "the benchmark left files behind: {left:?}");

    let out = Command::new(binary())
        .args(["bench", "disk", "--commits", "0"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Usage errors from argument parsing exit 64 (EX_USAGE) like every other usage error, with
/// clap's message on stderr; `--help` and `--version` print to stdout and exit 0.
#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [
        &["no-such-command"][..],
        &["status", "--no-such-flag"],
        &["events", "--limit", "many"],
        &[],
    ] {
        let out = Command::new(binary()).args(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error:") || stderr.contains("Usage:"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    for args in [&["--help"][..], &["--version"], &["status", "--help"]] {
        let out = Command::new(binary()).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    // The version names the commit, the data format and the peer protocol range.
    let out = Command::new(binary()).arg("--version").output().expect("run");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("standin {} (commit ", env!("CARGO_PKG_VERSION")))
            && version
                .trim_end()
                .ends_with("; data format 1; peer protocol 1..1)"),
        "{version}"
    );
}

/// `standin certs` makes a CA and a node certificate that `check-config` accepts in `[tls]`
/// (keys 0600, nothing overwritten, `show --json` names the member), and a config without
/// `[tls]` exits 64 saying how to make them, before binding anything.
#[test]
fn certs_make_what_tls_needs_and_no_tls_section_exits_64() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let run = |args: &[&str]| Command::new(binary()).args(args).output().unwrap();
    let ca_arg = ca.display().to_string();
    let out = run(&["certs", "init", &ca_arg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["certs", "issue", "a", "--ca", &ca_arg, "--san", "127.0.0.1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The printed lines are the [tls] section to use.
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        printed.contains("[tls]") && printed.contains("a.key"),
        "{printed}"
    );
    for key in ["ca.key", "a.key"] {
        let mode = std::fs::metadata(ca.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // Never overwritten.
    let before = std::fs::read(ca.join("a.key")).unwrap();
    assert_ne!(
        run(&["certs", "issue", "a", "--ca", &ca_arg]).status.code(),
        Some(0)
    );
    assert_ne!(run(&["certs", "init", &ca_arg]).status.code(), Some(0));
    assert_eq!(std::fs::read(ca.join("a.key")).unwrap(), before);
    let out = run(&["certs", "show", "--json", &ca.join("a.pem").display().to_string()]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["member"], "a");
    assert!(shown["expires_in_seconds"].as_i64().unwrap() > 364 * 86_400);

    // The issued files in [tls] are accepted.
    let tls = format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.join("ca.pem").display(),
        ca.join("a.pem").display(),
        ca.join("a.key").display()
    );
    let with_tls = config(free_port(), "").replace("[tls]\ninsecure = true\n", &tls);
    let path = dir.path().join("tls.toml");
    std::fs::write(&path, with_tls).unwrap();
    let out = run(&["check-config", &path.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No [tls] at all: refused with how to make certificates, and nothing bound.
    let port = free_port();
    let none = config(port, "").replace("[tls]\ninsecure = true\n", "");
    let path = dir.path().join("none.toml");
    std::fs::write(&path, none).unwrap();
    for cmd in [vec!["check-config"], vec!["node", "--config"]] {
        let out = Command::new(binary()).args(&cmd).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd:?}: {err}");
        assert!(
            err.contains("`tls`") && err.contains("standin certs init"),
            "{cmd:?}: {err}"
        );
    }
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
}

/// Logs on stderr carry no colour codes when stderr is not a terminal (journald, a file), and
/// `--log-format json` writes one JSON object per line.
#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let missing = "/nonexistent/standin.toml";
    let text = Command::new(binary())
        .args(["node", "--config", missing])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("open file limit"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes off a terminal: {stderr:?}"
    );

    let json = Command::new(binary())
        .args(["--log-format", "json", "node", "--config", missing])
        .output()
        .expect("run");
    assert_eq!(json.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&json.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("open file limit"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "open file limit", "{v}");
    assert!(v["soft"].is_u64() && v["timestamp"].is_string(), "{v}");
}

/// The example configs in `packaging/examples/` pass `check-config` (the data node and the
/// witness, with certificates made by `standin certs` and a token file where the examples say
/// `/etc/standin/`), and the proxy example loads as a proxy config.
#[test]
fn packaging_examples_pass_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    let certs = etc.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let run = |args: &[&str]| {
        let out = Command::new(binary()).args(args).output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let certs_s = certs.to_str().expect("utf-8");
    run(&["certs", "init", certs_s]);
    for (id, ip) in [("a", "10.0.0.1"), ("w", "10.0.0.3")] {
        run(&[
            "certs", "issue", id, "--ca", certs_s, "--out", certs_s, "--san", ip,
        ]);
    }
    common::write_private(&etc.join("api-token"), "an-example-token-0123456789");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples");
    for (file, node) in [("data-node.toml", "a"), ("witness.toml", "w")] {
        let text = std::fs::read_to_string(examples.join(file)).expect("example");
        let text = text
            .replace("/etc/standin", etc.to_str().expect("utf-8"))
            .replace(
                "/var/lib/standin",
                dir.path().join("data").to_str().expect("utf-8"),
            );
        let path = dir.path().join(file);
        std::fs::write(&path, text).expect("write");
        let out = run(&["check-config", path.to_str().expect("utf-8")]);
        assert!(out.contains(&format!("ok (node {node}, 3 members)")), "{out}");
    }
    let text = std::fs::read_to_string(examples.join("proxy.toml")).expect("example");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text.replace("/etc/standin", etc.to_str().expect("utf-8"))).expect("write");
    let proxy = standin::config::load_proxy(&path).expect("the proxy example is valid");
    assert_eq!(proxy.listeners.len(), 1);
}

/// `standin completions SHELL` and `standin man` print what the .deb installs (generated from
/// the same argument tree, so they cannot drift from it).
#[test]
fn completions_and_man_page_come_from_the_argument_tree() {
    for (shell, marker) in [
        ("bash", "_standin()"),
        ("zsh", "#compdef standin"),
        ("fish", "complete -c standin"),
    ] {
        let out = Command::new(binary())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {}", &text[..text.len().min(200)]);
        assert!(text.contains("switchover") && text.contains("reload"), "{shell}");
    }
    let out = Command::new(binary()).args(["man"]).output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(".TH standin 1"), "{}", &text[..text.len().min(200)]);
    assert!(
        text.contains("check\\-config") || text.contains("check-config"),
        "subcommands listed"
    );
    let out = Command::new(binary())
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
}

/// A `standin node` process, killed (SIGKILL) when the test ends, pass or fail.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Under systemd (`NOTIFY_SOCKET` and `WATCHDOG_USEC` set, as `Type=notify` with `WatchdogSec`
/// does) a node sends `READY=1` (here a witness whose data nodes are down: after the bootstrap
/// wait, so the unit does not time out), `WATCHDOG=1` at half the interval, and `STOPPING=1` on
/// SIGTERM, then exits 0. Without `NOTIFY_SOCKET` nothing is sent (the other tests).
#[test]
fn a_node_notifies_systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (pa, pb, pw, admin) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("w.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[tls]
insecure = true

[node]
id = "w"
data-dir = "{data}"

[[member]]
id = "a"
kind = "data"
addresses = ["127.0.0.1:{pa}"]
admin = "127.0.0.1:1"

[[member]]
id = "b"
kind = "data"
addresses = ["127.0.0.1:{pb}"]
admin = "127.0.0.1:2"

[[member]]
id = "w"
kind = "witness"
addresses = ["127.0.0.1:{pw}"]
admin = "127.0.0.1:{admin}"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(dir.path().join("w.log")).expect("log");
    // systemd names the watched process in WATCHDOG_PID: the shell's pid, which `exec` keeps.
    let mut daemon = Daemon(
        Command::new("sh")
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" node --config \"$1\"")
            .arg(binary())
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stderr(log)
            .spawn()
            .expect("start the node"),
    );
    // Reads notifications until one contains `want` or `within` passes.
    let mut seen: Vec<String> = Vec::new();
    let mut wait_for = |want: &str, within: Duration| {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = msg.lines().any(|l| l == want);
                seen.push(msg);
                if found {
                    return;
                }
            }
        }
        let log = std::fs::read_to_string(dir.path().join("w.log")).unwrap_or_default();
        panic!("no {want} within {within:?}; got {seen:?}\n{log}");
    };
    wait_for("READY=1", Duration::from_secs(15));
    wait_for("WATCHDOG=1", Duration::from_secs(2));
    wait_for("WATCHDOG=1", Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    wait_for("STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the node did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}
