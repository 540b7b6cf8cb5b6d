//! The `standin` binary: parse arguments, set up logging, load config, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use standin::cli::{self, exit, CliError};
use standin::config::{Config, EXIT_CONFIG};

#[derive(Parser)]
#[command(
    name = "standin",
    version,
    about = "High availability for any network service"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum CertsCmd {
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
enum Cmd {
    /// Run one cluster node (daemon; logs to stderr; SIGTERM/SIGINT stop it cleanly).
    Node {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without starting anything.
    CheckConfig { file: PathBuf },
    /// Show the cluster: nodes, roles, epoch, health, sync and paths.
    Status {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        json: bool,
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
    /// Start a local 3-node cluster (a, b, witness w) with a demo HTTP service.
    Demo {
        /// Where configs, data and logs go (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
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
        #[arg(long, default_value = standin::bench::backend::BODY)]
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
        vip: standin::address::vip::Vip,
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
enum BenchCmd {
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

#[derive(clap::Args)]
struct Api {
    /// A node's admin API: host:port, http://host:port or https://host:port.
    #[arg(long, env = "STANDIN_API", default_value = "127.0.0.1:7400")]
    api: String,
    /// The admin API token (`[api] token`), sent as a bearer token.
    #[arg(long, env = "STANDIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) that signed the admin API's certificate: the CLI then speaks
    /// HTTPS (`[api] tls = true`), checking the certificate against it.
    #[arg(long, env = "STANDIN_CA")]
    ca: Option<PathBuf>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STANDIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // If stderr goes away (the reader died), tracing would report that with eprintln!,
        // which panics: a daemon must outlive its log reader.
        .log_internal_errors(false)
        .init();
}

/// Cancels the token on SIGTERM or SIGINT.
fn shutdown_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

fn cli_result(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => code(exit::OK),
        Err(e) => {
            eprintln!("standin: {e}");
            code(e.code)
        }
    }
}

fn main() -> ExitCode {
    standin::malloc::tune();
    let args = Args::parse();
    // The VIP keeper is small and single-threaded, and the proxy benchmark's backend gets one
    // thread like wrk and HAProxy beside it; everything else gets the worker pool.
    let mut builder = match args.command {
        Cmd::VipKeeper { .. } | Cmd::BenchBackend { .. } => tokio::runtime::Builder::new_current_thread(),
        Cmd::Proxy { threads: Some(1), .. } => tokio::runtime::Builder::new_current_thread(),
        Cmd::Proxy { threads: Some(n), .. } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("standin: cannot start the runtime: {e}");
            return code(70);
        }
    };
    rt.block_on(async_main(args))
}

async fn async_main(args: Args) -> ExitCode {
    // Logging is set up once, for the commands that run for a while (daemons, the demo, the
    // benchmarks); the operator commands print their results and errors themselves.
    if matches!(
        args.command,
        Cmd::Node { .. }
            | Cmd::Proxy { .. }
            | Cmd::Demo { .. }
            | Cmd::Bench { .. }
            | Cmd::BenchBackend { .. }
            | Cmd::DemoService { .. }
    ) {
        init_tracing();
    }
    // Every operator command carries `--api`/`--token`; the token applies to all its requests.
    let api = match &args.command {
        Cmd::Status { api, .. }
        | Cmd::Switchover { api, .. }
        | Cmd::Failback { api, .. }
        | Cmd::Maintenance { api, .. }
        | Cmd::Drain { api, .. }
        | Cmd::Events { api, .. } => Some(api),
        _ => None,
    };
    cli::set_token(api.and_then(|a| a.token.clone()));
    if let Some(a) = api {
        if let Some(w) =
            standin::api::client::plaintext_token_warning(&a.api, a.token.is_some(), a.ca.is_some())
        {
            eprintln!("standin: warning: {w}");
        }
    }
    if let Some(ca) = api.and_then(|a| a.ca.as_deref()) {
        if let Err(e) = cli::set_ca(ca) {
            eprintln!("standin: {e}");
            return code(e.code);
        }
    }
    match args.command {
        Cmd::Node { config } => {
            // Store clients are clamped to the open file limit: raise it as far as allowed.
            match standin::store::server::raise_file_limit() {
                Ok((soft, hard)) => tracing::info!(soft, hard, "open file limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
            }
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("standin: {e}");
                    return code(EXIT_CONFIG);
                }
            };
            let listeners = match standin::node::Listeners::bind(&config).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("standin: {e}");
                    return code(exit::UNAVAILABLE);
                }
            };
            let proxy = match &config.proxy {
                Some(p) => match standin::address::proxy::Bound::bind(p).await {
                    Ok(b) => Some((p.clone(), b)),
                    Err(e) => {
                        eprintln!("standin: {e}");
                        return code(exit::UNAVAILABLE);
                    }
                },
                None => None,
            };
            let token = CancellationToken::new();
            shutdown_on_signals(token.clone());
            if let Some((p, bound)) = proxy {
                let token = token.clone();
                tokio::spawn(async move {
                    if let Err(e) = standin::address::proxy::run(p, bound, token).await {
                        tracing::error!(error = %e, "proxy failed");
                    }
                });
            }
            standin::failstop::arm();
            match standin::node::run(config, listeners, token).await {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    tracing::error!(error = %e, "node failed");
                    eprintln!("standin: {e}");
                    code(e.exit_code())
                }
            }
        }
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok (node {}, {} members)",
                    file.display(),
                    c.node.id,
                    c.members.len()
                );
                code(exit::OK)
            }
            Err(e) => {
                eprintln!("standin: {e}");
                code(EXIT_CONFIG)
            }
        },
        Cmd::Proxy { config, .. } => {
            let config = match standin::config::load_proxy(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("standin: {e}");
                    return code(EXIT_CONFIG);
                }
            };
            let bound = match standin::address::proxy::Bound::bind(&config).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("standin: {e}");
                    return code(exit::UNAVAILABLE);
                }
            };
            let token = CancellationToken::new();
            shutdown_on_signals(token.clone());
            match standin::address::proxy::run(config, bound, token).await {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: {e}");
                    code(1)
                }
            }
        }
        Cmd::ProxyStatus { proxy, json } => cli_result(cli::proxy_status(&proxy, json).await),
        Cmd::Status { api, json } => cli_result(cli::status(&api.api, json).await),
        Cmd::Switchover {
            api,
            to,
            from,
            epoch,
            wait,
            json,
        } => {
            let wait = (!wait.is_zero()).then_some(wait);
            let expect = (from.as_deref(), epoch);
            cli_result(cli::switchover(&api.api, to.as_deref(), expect, false, wait, json).await)
        }
        Cmd::Failback { api, wait, json } => {
            let wait = (!wait.is_zero()).then_some(wait);
            cli_result(cli::switchover(&api.api, None, (None, None), true, wait, json).await)
        }
        Cmd::Maintenance {
            api,
            mode,
            node,
            json,
        } => cli_result(cli::maintenance(&api.api, &node, mode == "on", json).await),
        Cmd::Drain { api, node, off, json } => cli_result(cli::drain(&api.api, &node, !off, json).await),
        Cmd::Events {
            api,
            since,
            limit,
            json,
        } => cli_result(cli::events(&api.api, since.as_deref(), limit.map(|n| n as usize), json).await),
        Cmd::Certs { which } => cli_result(match which {
            CertsCmd::Init { dir, name, valid_for } => standin::certs::init(&dir, &name, valid_for),
            CertsCmd::Issue {
                id,
                ca,
                out,
                san,
                valid_for,
            } => standin::certs::issue(&id, &ca, out.as_deref(), &san, valid_for),
            CertsCmd::Show { file, json } => standin::certs::show(&file, json),
        }),
        Cmd::Demo { dir } => {
            let token = CancellationToken::new();
            shutdown_on_signals(token.clone());
            match standin::demo::run(dir, token).await {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: {e:#}");
                    code(1)
                }
            }
        }
        Cmd::Bench { which } => {
            let result = match which {
                BenchCmd::Store {
                    requests,
                    rounds,
                    durable_only,
                    json,
                } => {
                    let opts = standin::bench::store::StoreOptions {
                        requests,
                        rounds,
                        durable_only,
                        json,
                    };
                    standin::bench::until_interrupted(standin::bench::store::run(opts)).await
                }
                BenchCmd::Disk { dir, commits, json } => {
                    match tokio::task::spawn_blocking(move || {
                        standin::bench::disk::run(dir, commits as usize, json)
                    })
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => Err(standin::demo::harness::HarnessError(format!("bench disk: {e}"))),
                    }
                }
                BenchCmd::Failover {
                    trials,
                    faults,
                    cpu_hog,
                    via,
                    without_keepalived,
                    profile,
                    json,
                } => match (
                    standin::bench::Via::parse(&via),
                    standin::bench::Profile::parse(&profile),
                ) {
                    (Ok(via), Ok(profile)) => {
                        let options = standin::bench::FailoverOptions {
                            trials,
                            faults,
                            cpu_hog,
                            via,
                            keepalived: !without_keepalived,
                            profile,
                            json,
                        };
                        if via == standin::bench::Via::Vip {
                            // The VIP benchmark runs on a thread of its own that handles
                            // signals itself: it must finish deleting its namespaces before
                            // the process exits.
                            standin::bench::failover(options).await
                        } else {
                            standin::bench::until_interrupted(standin::bench::failover(options)).await
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                },
                BenchCmd::Proxy {
                    duration,
                    connections,
                    rounds,
                    json,
                } => {
                    standin::bench::until_interrupted(standin::bench::proxy::run(
                        duration,
                        connections,
                        rounds,
                        json,
                    ))
                    .await
                }
            };
            match result {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: {e:#}");
                    code(1)
                }
            }
        }
        Cmd::BenchBackend { listen, answer } => {
            let token = CancellationToken::new();
            shutdown_on_signals(token.clone());
            match standin::bench::backend::run(listen, answer, token).await {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: {listen}: {e}");
                    code(1)
                }
            }
        }
        Cmd::DemoService { listen, node, admin } => {
            let token = CancellationToken::new();
            shutdown_on_signals(token.clone());
            match standin::demo::service::run(listen, node, admin, token).await {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: {e}");
                    code(1)
                }
            }
        }
        Cmd::VipKeeper {
            interface,
            vip,
            garp_count,
            garp_interval,
            garp_refresh,
        } => code(
            standin::address::vip::keeper::run(standin::address::vip::KeeperArgs {
                interface,
                vip,
                garp_count,
                garp_interval,
                garp_refresh,
            })
            .await,
        ),
    }
}
