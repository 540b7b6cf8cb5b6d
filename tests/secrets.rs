//! Secrets stay secret: a real cluster with a known API token, a store password from a
//! `requirepass-file` and a store TLS key, exercised through every surface an operator or a
//! client sees (`status` as a table and JSON, `events`, `/metrics`, `check-config`, refused
//! calls with a wrong token and a wrong AUTH, a config that does not parse, a password file
//! others can read); every output and the nodes' logs are then searched for the secret values.
//! Also checks that the data directory a node creates is private (0700).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hyper::Method;
use standin::lab::harness::{LocalCluster, Spec};

mod common;
use common::{binary, write_private};

const TOKEN: &str = "tok-7f3a9c1e5b2d4f60-secret";
const PASSWORD: &str = "pw-91c4e2a7d5b3-secret";

/// stdout and stderr of a finished command, with its exit code, as one text.
fn text_of(o: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn standin(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("STANDIN_TOKEN");
    if let Some(t) = token {
        cmd.env("STANDIN_TOKEN", t);
    }
    cmd.output().expect("run standin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_outputs_logs_or_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A store certificate of its own, so a private key is loaded too.
    let ca = standin::tls::init_ca(
        &dir.path().join("ca"),
        "secrets test CA",
        Duration::from_secs(3600),
    )
    .expect("CA");
    let read = |p: &Path| std::fs::read_to_string(p).expect("read");
    let (cert, key) = standin::tls::issue(
        &read(&ca.cert),
        &read(&ca.key),
        "store",
        &["127.0.0.1".into()],
        Duration::from_secs(3600),
    )
    .expect("issue");
    let (cert_path, key_path) = (dir.path().join("store.pem"), dir.path().join("store.key"));
    std::fs::write(&cert_path, cert).expect("write cert");
    write_private(&key_path, &key);
    // The base64 body of the key: no line of it may show up anywhere.
    let key_lines: Vec<String> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect();
    assert!(!key_lines.is_empty());
    let pass_file = dir.path().join("requirepass");
    write_private(&pass_file, &format!("{PASSWORD}\n"));

    let mut spec = Spec::new(dir.path(), &binary());
    spec.extra_toml = format!("[api]\ntoken = \"{TOKEN}\"\n");
    spec.store_toml = format!(
        "requirepass-file = \"{}\"\ntls = true\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
        pass_file.display(),
        cert_path.display(),
        key_path.display()
    );
    let (mut c, _) = LocalCluster::launch(spec).await.expect("cluster");
    let admin = c.node("a").expect("a").admin.to_string();
    let config_a = c.node("a").expect("a").config.clone();
    let store_a = c.node("a").and_then(|n| n.store).expect("store a");

    let mut outputs: Vec<(String, String)> = Vec::new();
    // Operator commands, with the right token (the CLI must not echo it) and a wrong one.
    for (what, args, token) in [
        ("status", vec!["status", "--api", &admin], Some(TOKEN)),
        (
            "status --json",
            vec!["status", "--json", "--api", &admin],
            Some(TOKEN),
        ),
        (
            "maintenance on",
            vec!["maintenance", "--api", &admin, "on", "b"],
            Some(TOKEN),
        ),
        (
            "maintenance off",
            vec!["maintenance", "--api", &admin, "off", "b"],
            Some(TOKEN),
        ),
        (
            "maintenance, wrong token",
            vec!["maintenance", "--api", &admin, "on", "b"],
            Some("not-the-token-0123456789"),
        ),
        (
            "maintenance, no token",
            vec!["maintenance", "--api", &admin, "on", "b"],
            None,
        ),
        ("events", vec!["events", "--api", &admin], Some(TOKEN)),
        (
            "events --json",
            vec!["events", "--json", "--api", &admin],
            Some(TOKEN),
        ),
    ] {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            standin(&args, token)
        })
        .await
        .expect("join");
        outputs.push((what.to_string(), text_of(&out)));
    }
    assert!(outputs[2].1.starts_with("exit Some(0)"), "{}", outputs[2].1);
    assert!(outputs[4].1.starts_with("exit Some(77)"), "{}", outputs[4].1);
    // The admin API's own answers.
    for path in ["/metrics", "/v1/status", "/v1/events"] {
        let r = standin::api::client::request(&admin, Method::GET, path, None, Duration::from_secs(5))
            .await
            .expect("admin API");
        outputs.push((path.to_string(), r.body));
    }
    // The store: a wrong password (plain AUTH and with a user name), then what a client can ask.
    let ca_path = ca.cert.clone();
    let store_outputs = tokio::task::spawn_blocking(move || {
        let cli = |auth: &str, args: &[&str]| {
            Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(&ca_path)
                .args(["-h", &store_a.ip().to_string(), "-p", &store_a.port().to_string()])
                .args(args)
                .env("REDISCLI_AUTH", auth)
                .output()
                .expect("redis-cli (Debian package redis-tools) must be installed")
        };
        let mut v = Vec::new();
        for (what, auth, args) in [
            ("wrong AUTH", "wrong-password", vec!["PING"]),
            (
                "wrong AUTH with user",
                "wrong-password",
                vec!["--user", "default", "PING"],
            ),
            ("INFO", PASSWORD, vec!["INFO"]),
            ("CONFIG GET", PASSWORD, vec!["CONFIG", "GET", "requirepass"]),
            ("HELLO", PASSWORD, vec!["HELLO", "3"]),
        ] {
            v.push((what.to_string(), text_of(&cli(auth, &args))));
        }
        v
    })
    .await
    .expect("join");
    assert!(store_outputs[0].1.contains("WRONGPASS"), "{}", store_outputs[0].1);
    assert!(
        store_outputs[2].1.contains("redis_version"),
        "{}",
        store_outputs[2].1
    );
    outputs.extend(store_outputs);

    // check-config on the node's file, and on broken variants of it.
    let good = std::fs::read_to_string(&config_a).expect("config");
    outputs.push((
        "check-config".into(),
        text_of(&standin(&["check-config", &config_a.display().to_string()], None)),
    ));
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        good.replace(
            &format!("token = \"{TOKEN}\""),
            &format!("token = \"{TOKEN}\" # no newline before\ntoken = \"{TOKEN}\" junk"),
        ),
    )
    .expect("write");
    let out = standin(&["check-config", &broken.display().to_string()], None);
    assert_eq!(out.status.code(), Some(64), "{}", text_of(&out));
    outputs.push(("check-config, TOML error".into(), text_of(&out)));
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = standin(&["check-config", &config_a.display().to_string()], None);
    assert_eq!(out.status.code(), Some(64), "{}", text_of(&out));
    let refused = text_of(&out);
    assert!(
        refused.contains("`store.requirepass-file`") && refused.contains("chmod 600"),
        "{refused}"
    );
    outputs.push(("check-config, readable password file".into(), refused));
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // The data directory the node created is private.
    let mode = std::fs::metadata(dir.path().join("a-data"))
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "data dir mode {mode:o}");

    // Every node's log, after a clean stop (shutdown messages included).
    for id in ["a", "b", "w"] {
        c.stop(id, Duration::from_secs(10)).expect("stop");
        let log = std::fs::read_to_string(dir.path().join(format!("{id}.log"))).expect("log");
        assert!(log.contains("raft started"), "{id}.log is the node's log");
        outputs.push((format!("{id}.log"), log));
    }
    for (what, text) in &outputs {
        assert!(!text.contains(TOKEN), "{what} shows the API token:\n{text}");
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the store password:\n{text}"
        );
        for line in &key_lines {
            assert!(!text.contains(line.as_str()), "{what} shows the TLS key:\n{text}");
        }
    }
}
