//! The argument tree of the `standin` binary (clap derive): every command, its options and
//! their help texts. `run` dispatches a parsed [`Args`]; `main.rs` parses it.
//!
//! Doc comments on these types and fields are clap's help texts (what `standin --help` and
//! `standin COMMAND --help` print), so they say what an operator needs, and the types
//! themselves carry none: on a derived parser a doc comment would become help text too.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "standin",
    version = crate::version::LONG_VERSION,
    about = "High availability for any network service"
)]
pub struct Args {
    /// Log lines on stderr: `text` (colours only when stderr is a terminal) or `json` (one
    /// object per line, for journald/Loki/Elasticsearch)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STANDIN_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Make a cluster CA in DIR (ca.pem, and ca.key with mode 0600). Keep ca.key offline.
    Init {
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "standin cluster CA")]
        name: String,
        /// How long the CA is valid.
        #[arg(long = "valid-for", value_parser = humantime::parse_duration, default_value = "3650days")]
        valid_for: std::time::Duration,
    },
    /// Issue a certificate for member ID, signed by the CA in --ca DIR: ID.pem and ID.key
    /// (mode 0600). It names the member as the URI SAN standin:node:ID.
    Issue {
        id: String,
        /// The CA's directory (from `standin certs init`).
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the files (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra DNS names or IP addresses (for HTTPS to the admin API or TLS to the store),
        /// repeatable: --san 10.0.0.1 --san node-a.example.
        #[arg(long)]
        san: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long = "valid-for", value_parser = humantime::parse_duration, default_value = "365days")]
        valid_for: std::time::Duration,
    },
    /// Show which member a certificate names and when it expires.
    Show {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run one cluster node (daemon; logs to stderr; SIGTERM/SIGINT stop it cleanly).
    Node {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without starting anything.
    CheckConfig { file: PathBuf },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `standin man | man -l -`.
    Man,
    /// Show the cluster: nodes, roles, epoch, health, sync and paths.
    Status {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// Grow, shrink or repair the cluster while it runs: add a node (as a learner that catches
    /// up, then a voter), remove one (the active node is switched away from first), replace
    /// one whose machine or disk is gone, or list the members.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// The effective configuration of a node, where the members' configurations differ, and
    /// the cluster settings (`[failback]`, `[hooks]`, `[alarms]`, `[events]`) that change
    /// through the cluster: validated by the leader, applied live on every node, versioned.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Failover drills: acceptance tests against the live cluster (planned switchover, node
    /// shutdown, service crash, link failure, node isolation, recovery, store consistency),
    /// each with its expected behaviour and maximum interruption, recorded in the cluster.
    Drill {
        #[command(subcommand)]
        cmd: DrillCmd,
    },
    /// Roll out a new version of the managed service, one node at a time: standbys first,
    /// then a switchover to an updated standby, then the old active; each node must run it
    /// healthily for the watch window, or the deploy stops and the updated nodes go back.
    /// Exits 0 once every node runs the new version healthily, 1 if it rolled back.
    #[command(args_conflicts_with_subcommands = true)]
    Deploy {
        #[command(subcommand)]
        cmd: Option<DeployCmd>,
        #[command(flatten)]
        api: Api,
        #[command(flatten)]
        change: DeployChange,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// Planned move of the active role (waits for the target to be in sync).
    Switchover {
        #[command(flatten)]
        api: Api,
        /// Target node (default: the best standby).
        #[arg(long)]
        to: Option<String>,
        /// Only if this node is still the active one (refused otherwise: safe to retry).
        #[arg(long)]
        from: Option<String>,
        /// Only if the epoch is still this one (refused otherwise: safe to retry).
        #[arg(long)]
        epoch: Option<u64>,
        /// How long to wait for the new active node ("0s": do not wait).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Make nodes read their configuration file again, as SIGHUP does (TLS files reloaded too),
    /// and show what changed; exits 64 if a node's file does not validate (nothing changes
    /// there).
    Reload {
        #[command(flatten)]
        api: Api,
        /// Only this node (default: every member).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Hot-restart node daemons in place with the binary now on disk at their program path,
    /// one at a time, witnesses and standbys first and the active node last: the service keeps
    /// running, the role and epoch stay, no failover. Each node must come back healthy (and in
    /// sync) before the next; the command stops at the first that does not and says why. This
    /// is how standin is upgraded: install the new binary on every machine, then run this.
    Restart {
        #[command(flatten)]
        api: Api,
        /// Only this node (default: every member).
        #[arg(long)]
        node: Option<String>,
        /// How long each node gets to hand over and be healthy again.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Can this binary take over a running node (hot restart)? Run by the daemon with the new
    /// binary before it hands over; prints one JSON line and exits 0 if so.
    #[command(hide = true)]
    Preflight {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        data_format: u32,
    },
    /// Move the active role back to the preferred (highest-priority) node.
    Failback {
        #[command(flatten)]
        api: Api,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Put a node into maintenance (never promoted; moved away from if active) or back.
    Maintenance {
        #[command(flatten)]
        api: Api,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Take a data node out of load balancing (front proxies send it no new connections;
    /// existing ones finish), or back in with --off.
    Drain {
        #[command(flatten)]
        api: Api,
        node: String,
        #[arg(long)]
        off: bool,
        #[arg(long)]
        json: bool,
    },
    /// The event history: role changes, failovers with cause and timing, health, hooks.
    Events {
        #[command(flatten)]
        api: Api,
        /// Only events after this sequence number (e.g. 120), or newer than this age (e.g. 10m).
        #[arg(long)]
        since: Option<String>,
        /// At most this many events (default 100, at most 2000).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=2000))]
        limit: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Run a front proxy: one stable address for the active node, or load balancing over
    /// every healthy data node (see README: Floating address).
    Proxy {
        /// A file with a `[proxy]` section (alone, or in a node's config).
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads (default: one per core). 1 runs the proxy on one event loop, like
        /// HAProxy's `nbthread 1`: fewer context switches when cores are shared.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Option<u16>,
    },
    /// Show a front proxy's listeners, backends and counters.
    ProxyStatus {
        /// The proxy's control API (`[proxy] admin`), host:port.
        #[arg(long, env = "STANDIN_PROXY", default_value = "127.0.0.1:7100")]
        proxy: String,
        #[arg(long)]
        json: bool,
    },
    /// Certificates for mutual TLS between nodes: a cluster CA and one certificate per member.
    Certs {
        #[command(subcommand)]
        which: CertsCmd,
    },
    /// Start a local 3-node cluster (a, b, witness w) with a demo HTTP service; `demo
    /// add-node` and `demo remove-node` grow and shrink it while it runs.
    #[command(args_conflicts_with_subcommands = true)]
    Demo {
        /// Where configs, data and logs go (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Option<DemoCmd>,
    },
    /// Backups: take one from a running cluster (`create`), check or show a file (`verify`,
    /// `inspect`), see the scheduled ones (`status`), or copy a Redis key space into Redis
    /// commands (`export-redis`).
    Backup {
        #[command(subcommand)]
        cmd: BackupCmd,
    },
    /// Restore a backup's key space into a running cluster, replicated as one operation: the
    /// file is checked first, a store that holds keys is refused without --force, and a
    /// pre-restore backup is written before the swap. Exit 65 for a damaged file.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        api: Api,
        /// Replace the keys the store holds now.
        #[arg(long)]
        force: bool,
        /// Where the pre-restore backup goes (default: beside FILE, pre-restore-TIME.standin).
        #[arg(long)]
        pre_backup: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (see README: Performance).
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// The proxy benchmark's backend: a fixed answer to every HTTP request.
    #[command(hide = true)]
    BenchBackend {
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The body of every answer.
        #[arg(long, default_value = crate::bench::backend::BODY)]
        answer: String,
    },
    /// The demo's built-in HTTP service (started by `standin demo`).
    #[command(hide = true)]
    DemoService {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        node: String,
        #[arg(long)]
        admin: std::net::SocketAddr,
    },
    /// Holds the virtual IP while the daemon says so (started by `standin node`; orders on
    /// stdin: `hold <ms>`, `release`).
    #[command(hide = true)]
    VipKeeper {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        vip: crate::address::vip::Vip,
        #[arg(long, default_value_t = 3)]
        garp_count: u32,
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        garp_interval: Duration,
        /// One more gratuitous ARP this often while holding; 0: never.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        garp_refresh: Duration,
    },
}

#[derive(Subcommand)]
pub enum DemoCmd {
    /// Add a node to the demo running in DIR: writes DIR/ID.toml (`[node] join = true`) and
    /// its certificate (the demo's CA), starts it (log in DIR/ID.log) and runs `standin member
    /// add` (learner, catching up, voter). demo.json gains it; the demo stops it when it stops.
    AddNode {
        /// The new node's id (not one in demo.json): DIR/ID.toml, DIR/ID.log, DIR/ID-data.
        id: String,
        #[arg(long, value_parser = ["data", "witness"])]
        kind: String,
        /// The running demo's directory (`standin demo --dir DIR`).
        #[arg(long)]
        dir: PathBuf,
        /// How long the new node may take to catch up and vote.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Take out a node `demo add-node` added: `standin member remove` (a switchover first if
    /// it is active), then its processes are stopped and demo.json drops it.
    RemoveNode {
        /// A node `demo add-node` added.
        id: String,
        /// The running demo's directory (`standin demo --dir DIR`).
        #[arg(long)]
        dir: PathBuf,
        /// How long the removal may take (a switchover included).
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Write a consistent point-in-time copy of the cluster (key space, events, deploy history,
    /// settings versions) to FILE: from the leader after a read barrier (or, with --local, from
    /// the node asked at its applied index). Written to a temporary file and renamed.
    Create {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        api: Api,
        /// `standin` (the checksummed backup format) or `resp` (Redis commands for
        /// `redis-cli --pipe`).
        #[arg(long, default_value = "standin", value_parser = ["standin", "resp"])]
        format: String,
        /// Copy the node asked as it is, without asking the leader.
        #[arg(long)]
        local: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum of FILE: exit 0 if it is a valid backup, 65 if not (saying what
    /// is wrong and where).
    Verify {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show what FILE holds: keys, bytes, Raft index and term, time, node, versions, parts.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The scheduled backups of every node (last good one, size, path, failures) and a restore
    /// under way.
    Status {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// Write a backup FILE's key space as Redis commands (`redis-cli --pipe < OUT`).
    ToResp {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Read every key of a Redis (no RDB access needed: SCAN and reads) and write them as Redis
    /// commands that `redis-cli -p STORE_PORT --pipe < OUT` loads into standin's store.
    ExportRedis {
        /// The Redis to read: HOST:PORT.
        #[arg(long)]
        from: String,
        #[arg(long, env = "REDISCLI_AUTH", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Store throughput and latency with redis-benchmark vs Redis (BENCHMARKS.md §3).
    Store {
        /// Requests per redis-benchmark run.
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
        /// Runs of each equal-durability row (standin and the Redis pair alternate); the
        /// median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Only the equal-durability rows (standin vs the Redis pair with WAIT 1 0).
        #[arg(long)]
        durable_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// What one durable write costs on this disk: raw fdatasync and a redb commit.
    Disk {
        /// Where to write (default: the temp dir); use the filesystem of your data-dir.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Writes per series.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        commits: u32,
        #[arg(long)]
        json: bool,
    },
    /// Failover interruption per fault kind (BENCHMARKS.md §1).
    Failover {
        /// Trials per fault.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Faults to run (comma separated): node-killed, service-killed, node-frozen,
        /// node-isolated, switchover.
        #[arg(
            long,
            default_value = "node-killed,service-killed,node-frozen,node-isolated,switchover"
        )]
        faults: String,
        /// Keep one core saturated by a busy process during the run.
        #[arg(long)]
        cpu_hog: bool,
        /// Where the client sends its requests: `nodes` (every node's service), `proxy` (one
        /// failover listener of `standin proxy` in front of the cluster: the floating address)
        /// or `vip` (the virtual IP, in network namespaces, with keepalived beside it; root).
        #[arg(long, default_value = "nodes", value_parser = ["nodes", "proxy", "vip"])]
        via: String,
        /// With `--via vip`: skip the keepalived rows.
        #[arg(long)]
        without_keepalived: bool,
        /// standin's timings: `default` (heartbeat 100 ms, failure timeout 500 ms, lease 400 ms)
        /// or `fast` (20 ms, 100 ms, 80 ms).
        #[arg(long, default_value = "default", value_parser = ["default", "fast"])]
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// How long a node added to a running cluster takes to catch up on N keys and vote
    /// (`standin member add`), beside a fresh Redis replica's full sync of the same keys.
    Join {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Backup and restore of a store of N keys (create, verify, restore into a new cluster),
    /// beside Redis's `redis-cli --rdb` and `DEBUG RELOAD` of the same keys.
    Backup {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Zero-downtime changes (BENCHMARKS.md §5): hot restarts and reloads of the active node
    /// under service and store load, beside a stop-and-start and HAProxy's own reloads.
    Upgrade {
        /// Hot restarts of the active node's daemon.
        #[arg(long, default_value_t = 20)]
        restarts: usize,
        /// Reloads of the active node (and HAProxy reloads of each kind).
        #[arg(long, default_value_t = 100)]
        reloads: usize,
        /// Stop-and-start restarts of the active node's daemon, as `systemctl restart` does
        /// (the baseline; each is a switchover).
        #[arg(long, default_value_t = 3)]
        stop_starts: usize,
        #[arg(long)]
        json: bool,
    },
    /// Rolling deploys under load (issue 17): good and broken versions alternating, through
    /// standin proxy in front of a local cluster, beside HAProxy with a drain-and-restart script.
    Deploy {
        /// Deploys per side, alternating a good version and a broken one (rolled back).
        #[arg(long, default_value_t = 20)]
        deploys: usize,
        #[arg(long)]
        json: bool,
    },
    /// Floating-address proxy overhead with wrk: direct, HAProxy, standin's proxy (BENCHMARKS.md §4).
    Proxy {
        /// How long each wrk run lasts (whole seconds).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Connections wrk keeps open (the same for every row).
        #[arg(long, default_value_t = 50)]
        connections: u32,
        /// Runs per row (round-robin over the rows); the table shows each figure's median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Print a node's effective configuration as TOML (secrets redacted): its file, its live
    /// reloads and the cluster settings.
    Export {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// Per section, where the members' effective configurations differ (each member asked at
    /// its admin address); sections every member should share are marked DRIFT.
    Diff {
        #[command(flatten)]
        api: Api,
        /// Also the sections that name the node itself (node, service, store, addresses, TLS).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set one cluster setting: SECTION.KEY VALUE (VALUE in TOML; a bare word is a string),
    /// e.g. `failback.mode auto`, `events.retention 5000`.
    Set {
        #[command(flatten)]
        api: Api,
        key: String,
        value: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace the cluster settings with a TOML file of those sections.
    Apply {
        #[command(flatten)]
        api: Api,
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every version of the cluster settings: when, by whom, what changed, digests.
    History {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// Go back to the settings of version N (0: none, every node with its file alone).
    Rollback {
        #[command(flatten)]
        api: Api,
        version: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum DrillCmd {
    /// Run the scenarios now (faults are injected by the nodes themselves: `[drill] enabled =
    /// true` on each). Prints each scenario's outcome; the record is stored in the cluster.
    /// Exit 0 if every scenario passed, 1 if one failed.
    Run {
        #[command(flatten)]
        api: Api,
        /// Comma-separated scenarios, in order (default: all, in the order of this list):
        /// planned-switchover, link-failure, service-crash, node-isolation, node-shutdown,
        /// recovery, store-consistency.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// What to probe through the floating address: http://host:port/path or
        /// tcp://host:port (default: the cluster's `[drill] service`).
        #[arg(long)]
        service: Option<String>,
        /// The store's floating address, host:port (default: the cluster's `[drill] store`).
        #[arg(long)]
        store: Option<String>,
        /// The store's password (`[store] requirepass`).
        #[arg(long, env = "STANDIN_STORE_PASSWORD", hide_env_values = true)]
        store_password: Option<String>,
        /// The longest interruption any scenario may cause (default: per scenario, from the
        /// timing profile).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_interruption: Option<Duration>,
        /// How long `recovery` waits for faulted nodes to come back.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
        recovery_timeout: Duration,
        /// Start even though the cluster records another run under way (its client went away).
        #[arg(long)]
        force: bool,
        /// Also write the record as Markdown or HTML to these files.
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long)]
        html: Option<PathBuf>,
        /// Print the record as JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// The recorded runs, oldest first.
    List {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// One run's record: as Markdown (default), JSON, or a self-contained HTML page.
    Show {
        #[command(flatten)]
        api: Api,
        run: String,
        /// Write the HTML page to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Record an operator's acceptance of a run (and the issues left unresolved).
    Confirm {
        #[command(flatten)]
        api: Api,
        run: String,
        /// Who confirms.
        #[arg(long)]
        by: String,
        #[arg(long, default_value = "")]
        note: String,
        /// An issue left unresolved (repeatable).
        #[arg(long)]
        unresolved: Vec<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum DeployCmd {
    /// The deploy under way (node, step, phase) and the version each node runs.
    Status {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// Every version (who, when, spec, outcome) and every deploy.
    History {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
    /// Go back to an earlier version (default: the one before the current), deployed the same
    /// careful way.
    Rollback {
        #[command(flatten)]
        api: Api,
        /// The version to go back to.
        version: Option<u64>,
        #[command(flatten)]
        opts: DeployOpts,
    },
}

/// What a new version changes (from the current one).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeployChange {
    /// The program to run instead.
    #[arg(long)]
    pub command: Option<String>,
    /// The arguments (all of them; repeat the option for each).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// An environment variable, NAME=VALUE (repeat the option).
    #[arg(long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// A whole `[service]` section in TOML: its command, args, env and workdir.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A name for the version ("2.4.1").
    #[arg(long)]
    pub label: Option<String>,
}

/// How a deploy runs.
#[derive(clap::Args, Debug, Clone)]
pub struct DeployOpts {
    /// `failover`: the standby first, then a switchover; `balance`: also drain each node
    /// before its restart and put it back after.
    #[arg(long, default_value = "failover", value_parser = ["failover", "balance"])]
    pub strategy: String,
    /// Longest a step may take (a node to run the version, a switchover).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
    /// How long each node must stay healthy on the new version (default: long enough for
    /// every check to fail `fall` times, at least 2 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub watch: Option<Duration>,
    /// How long a drained node's connections get before its restart (balance; default 2 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_time: Option<Duration>,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to follow the deploy ("0s": start it and return).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    #[arg(long)]
    pub json: bool,
}

impl DeployOpts {
    /// The request these options make (without the change).
    pub fn request(&self) -> crate::api::DeployRequest {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        crate::api::DeployRequest {
            strategy: if self.strategy == "balance" {
                crate::cluster::change::Strategy::Balance
            } else {
                crate::cluster::change::Strategy::Failover
            },
            step_timeout_ms: Some(ms(self.step_timeout)),
            watch_ms: self.watch.map(ms),
            drain_ms: self.drain_time.map(ms),
            dry_run: self.dry_run,
            by: Some(crate::cli::deploy::who()),
            ..Default::default()
        }
    }
}

#[derive(clap::Subcommand)]
pub enum MemberCmd {
    /// Add a node: it joins as a learner, catches up (from a snapshot if the log was
    /// compacted), then votes. Start it first with `[node] join = true`. Exits 0 once it votes.
    Add {
        #[command(flatten)]
        api: Api,
        #[command(flatten)]
        spec: MemberSpec,
        #[command(flatten)]
        wait: MemberWait,
    },
    /// Remove a member. The active node is switched away from first (planned, no write
    /// lost); refused when it would leave no quorum or no data node.
    Remove {
        #[command(flatten)]
        api: Api,
        id: String,
        #[command(flatten)]
        wait: MemberWait,
    },
    /// Replace member OLD (machine or disk gone) with the node described: added, then OLD
    /// removed, in the order that keeps the quorum (the same id: removed, then added again,
    /// for a node whose data directory was lost).
    Replace {
        #[command(flatten)]
        api: Api,
        old: String,
        #[command(flatten)]
        spec: MemberSpec,
        #[command(flatten)]
        wait: MemberWait,
    },
    /// The members: kind, site, voter or learner, replication lag (as the leader sees it).
    List {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
    },
}

/// A member as `standin member add` takes it (the fields of a `[[member]]`).
#[derive(clap::Args, Debug, Clone)]
pub struct MemberSpec {
    /// The new member's id (its certificate must name it).
    pub id: String,
    #[arg(long, value_parser = ["data", "witness"])]
    pub kind: String,
    /// A cluster address (one per network path; repeat the option).
    #[arg(long = "address", required = true)]
    pub addresses: Vec<std::net::SocketAddr>,
    /// Its admin API address.
    #[arg(long)]
    pub admin: std::net::SocketAddr,
    #[arg(long, default_value_t = 100)]
    pub priority: u32,
    #[arg(long)]
    pub service_address: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub store_address: Option<std::net::SocketAddr>,
    /// Where it stands (a building, a region).
    #[arg(long)]
    pub site: Option<String>,
}

impl MemberSpec {
    /// The member this describes.
    pub fn member(&self) -> crate::config::Member {
        crate::config::Member {
            id: self.id.clone(),
            kind: if self.kind == "witness" {
                crate::config::NodeKind::Witness
            } else {
                crate::config::NodeKind::Data
            },
            priority: self.priority,
            addresses: self.addresses.clone(),
            admin: self.admin,
            service_address: self.service_address,
            store_address: self.store_address,
            site: self.site.clone(),
        }
    }
}

/// How long a membership command waits, and how it prints.
#[derive(clap::Args, Debug, Clone)]
pub struct MemberWait {
    /// How long the new node may take to catch up (or the active node to be switched away
    /// from) before the command gives up; a node that has not caught up stays a learner.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct Api {
    /// A node's admin API: host:port, http://host:port or https://host:port.
    #[arg(long, env = "STANDIN_API", default_value = "127.0.0.1:7400")]
    pub api: String,
    /// The admin API token (`[api] token`), sent as a bearer token.
    #[arg(long, env = "STANDIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the admin API's certificate: the CLI then speaks
    /// HTTPS (`[api] tls = true`), checking the certificate against it.
    #[arg(long, env = "STANDIN_CA")]
    pub ca: Option<PathBuf>,
}

impl Cmd {
    /// Whether the command logs (through `tracing`, to stderr): the ones that run for a while,
    /// the daemons, the demo and the benchmarks. The operator commands print their results and
    /// errors themselves.
    pub fn logs(&self) -> bool {
        matches!(
            self,
            Cmd::Node { .. }
                | Cmd::Proxy { .. }
                | Cmd::Demo { cmd: None, .. }
                | Cmd::Bench { .. }
                | Cmd::BenchBackend { .. }
                | Cmd::DemoService { .. }
        )
    }

    /// The admin API an operator command talks to (`--api`, `--token`, `--ca`); `None` for
    /// the other commands.
    pub fn api(&self) -> Option<&Api> {
        match self {
            Cmd::Member {
                cmd:
                    MemberCmd::Add { api, .. }
                    | MemberCmd::Remove { api, .. }
                    | MemberCmd::Replace { api, .. }
                    | MemberCmd::List { api, .. },
            } => Some(api),
            Cmd::Config {
                cmd:
                    ConfigCmd::Export { api, .. }
                    | ConfigCmd::Diff { api, .. }
                    | ConfigCmd::Set { api, .. }
                    | ConfigCmd::Apply { api, .. }
                    | ConfigCmd::History { api, .. }
                    | ConfigCmd::Rollback { api, .. },
            } => Some(api),
            Cmd::Deploy { cmd: None, api, .. }
            | Cmd::Deploy {
                cmd:
                    Some(
                        DeployCmd::Status { api, .. }
                        | DeployCmd::History { api, .. }
                        | DeployCmd::Rollback { api, .. },
                    ),
                ..
            } => Some(api),
            Cmd::Drill {
                cmd:
                    DrillCmd::Run { api, .. }
                    | DrillCmd::List { api, .. }
                    | DrillCmd::Show { api, .. }
                    | DrillCmd::Confirm { api, .. },
            } => Some(api),
            Cmd::Status { api, .. }
            | Cmd::Switchover { api, .. }
            | Cmd::Failback { api, .. }
            | Cmd::Reload { api, .. }
            | Cmd::Restart { api, .. }
            | Cmd::Maintenance { api, .. }
            | Cmd::Drain { api, .. }
            | Cmd::Events { api, .. }
            | Cmd::Restore { api, .. }
            | Cmd::Backup {
                cmd: BackupCmd::Create { api, .. } | BackupCmd::Status { api, .. },
            } => Some(api),
            _ => None,
        }
    }
}
