//! The dispatch of the `standin` binary: one runtime per process, shaped by the command, and
//! one arm per command that calls into the library and turns its result into the exit code
//! (sysexits: 64 for bad config or usage, 69 when a listener cannot bind or the API is
//! unreachable; see [`super::exit`]). Errors go to stderr as `standin: …`.

use std::path::Path;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::args::{Args, BenchCmd, CertsCmd, Cmd, DemoCmd};
use super::{client, exit, CliError};
use crate::config::{Config, EXIT_CONFIG};

/// Runs one parsed command line to its end and returns the process's exit code.
pub fn main_with(args: Args) -> ExitCode {
    // A hot restart's document is read (and removed from the environment) before any thread
    // exists; only a node takes it over.
    let handover = match crate::handover::take_from_env() {
        Ok(h) if matches!(args.command, Cmd::Node { .. }) => h,
        Ok(_) => None,
        Err(e) => {
            eprintln!("standin: hot restart: {e}");
            return code(EXIT_CONFIG);
        }
    };
    let proxy_handover = match crate::handover::take_proxy_from_env() {
        Ok(h) if matches!(args.command, Cmd::Proxy { .. }) => h,
        Ok(_) => None,
        Err(e) => {
            eprintln!("standin: hot restart: {e}");
            return code(EXIT_CONFIG);
        }
    };
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
    rt.block_on(dispatch(args.command, handover, proxy_handover))
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

/// A token cancelled by SIGTERM or SIGINT: what a command that runs until stopped waits on.
fn until_signal() -> CancellationToken {
    let token = CancellationToken::new();
    shutdown_on_signals(token.clone());
    token
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

/// Exit 0, or print the error and exit 1: how a daemon, the demo or a benchmark ends.
fn done(r: Result<(), impl std::fmt::Display>) -> ExitCode {
    match r {
        Ok(()) => code(exit::OK),
        Err(e) => {
            eprintln!("standin: {e}");
            code(1)
        }
    }
}

/// [`done`] with the error in its alternate form (`{:#}`), as the demo and the benchmarks print it.
fn done_alternate(r: Result<(), impl std::fmt::Display>) -> ExitCode {
    match r {
        Ok(()) => code(exit::OK),
        Err(e) => {
            eprintln!("standin: {e:#}");
            code(1)
        }
    }
}

async fn dispatch(
    command: Cmd,
    handover: Option<crate::handover::Handover>,
    proxy_handover: Option<crate::handover::ProxyHandover>,
) -> ExitCode {
    // Every operator command carries `--api`/`--token`; the token applies to all its requests.
    let api = command.api();
    client::set_token(api.and_then(|a| a.token.clone()));
    if let Some(a) = api {
        if let Some(w) =
            crate::api::client::plaintext_token_warning(&a.api, a.token.is_some(), a.ca.is_some())
        {
            eprintln!("standin: warning: {w}");
        }
    }
    if let Some(ca) = api.and_then(|a| a.ca.as_deref()) {
        if let Err(e) = client::set_ca(ca) {
            eprintln!("standin: {e}");
            return code(e.code);
        }
    }
    match command {
        Cmd::Node { config } => node(&config, handover).await,
        Cmd::Preflight {
            config,
            node,
            data_format,
        } => match crate::node::restart::preflight(&config, &node, data_format) {
            Ok(p) => {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
                code(exit::OK)
            }
            Err(e) => {
                eprintln!("standin: {e}");
                code(EXIT_CONFIG)
            }
        },
        Cmd::Restart {
            api,
            node,
            wait,
            json,
        } => cli_result(client::restart(&api.api, node.as_deref(), wait, json).await),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = crate::cli::args::Args::command();
            clap_complete::generate(shell, &mut cmd, "standin", &mut std::io::stdout());
            code(exit::OK)
        }
        Cmd::Man => {
            use clap::CommandFactory;
            let cmd = crate::cli::args::Args::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: cannot write the man page: {e}");
                    code(exit::UNAVAILABLE)
                }
            }
        }
        Cmd::Proxy { config, .. } => proxy(&config, proxy_handover).await,
        Cmd::ProxyStatus { proxy, json } => cli_result(client::proxy_status(&proxy, json).await),
        Cmd::Status { api, json } => cli_result(client::status(&api.api, json).await),
        Cmd::Backup { cmd } => {
            use crate::cli::args::BackupCmd;
            use crate::cli::backup;
            cli_result(match cmd {
                BackupCmd::Create {
                    out,
                    api,
                    format,
                    local,
                    json,
                } => backup::create(&api.api, &out, &format, local, json).await,
                BackupCmd::Verify { file, json } => backup::verify(&file, json),
                BackupCmd::Inspect { file, json } => backup::inspect(&file, json),
                BackupCmd::Status { api, json } => backup::status(&api.api, json).await,
                BackupCmd::ToResp { file, out, json } => backup::to_resp(&file, &out, json),
                BackupCmd::ExportRedis {
                    from,
                    password,
                    out,
                    json,
                } => backup::export_redis(&from, password.as_deref(), &out, json).await,
            })
        }
        Cmd::Restore {
            file,
            api,
            force,
            pre_backup,
            json,
        } => {
            cli_result(crate::cli::backup::restore(&api.api, &file, force, pre_backup.as_deref(), json).await)
        }
        Cmd::Member { cmd } => {
            use crate::cli::args::MemberCmd;
            use crate::cli::member;
            cli_result(match cmd {
                MemberCmd::List { api, json } => member::list(&api.api, json).await,
                MemberCmd::Add { api, spec, wait } => {
                    member::add(&api.api, &spec.member(), wait.timeout, wait.json).await
                }
                MemberCmd::Remove { api, id, wait } => {
                    member::remove(&api.api, &id, wait.timeout, wait.json).await
                }
                MemberCmd::Replace { api, old, spec, wait } => {
                    member::replace(&api.api, &old, &spec.member(), wait.timeout, wait.json).await
                }
            })
        }
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
            cli_result(client::switchover(&api.api, to.as_deref(), expect, false, wait, json).await)
        }
        Cmd::Config { cmd } => {
            use crate::cli::args::ConfigCmd;
            use crate::cli::config;
            cli_result(match cmd {
                ConfigCmd::Export { api, json } => config::export(&api.api, json).await,
                ConfigCmd::Diff { api, all, json } => config::diff(&api.api, all, json).await,
                ConfigCmd::Set {
                    api,
                    key,
                    value,
                    json,
                } => config::set(&api.api, &key, &value, json).await,
                ConfigCmd::Apply { api, file, json } => config::apply(&api.api, &file, json).await,
                ConfigCmd::History { api, json } => config::history(&api.api, json).await,
                ConfigCmd::Rollback { api, version, json } => config::rollback(&api.api, version, json).await,
            })
        }
        Cmd::Drill { cmd } => {
            use crate::cli::args::DrillCmd;
            use crate::cli::drill;
            cli_result(match cmd {
                DrillCmd::Run {
                    api,
                    scenarios,
                    service,
                    store,
                    store_password,
                    max_interruption,
                    recovery_timeout,
                    force,
                    markdown,
                    html,
                    json,
                } => {
                    let opts = drill::RunOpts {
                        force,
                        scenarios,
                        service,
                        store,
                        store_password,
                        max_interruption,
                        recovery_timeout,
                        markdown,
                        html,
                        json,
                    };
                    drill::run(&api.api, opts).await
                }
                DrillCmd::List { api, json } => drill::list(&api.api, json).await,
                DrillCmd::Show { api, run, html, json } => {
                    drill::show(&api.api, &run, html.as_deref(), json).await
                }
                DrillCmd::Confirm {
                    api,
                    run,
                    by,
                    note,
                    unresolved,
                } => drill::confirm(&api.api, &run, &by, &note, &unresolved).await,
            })
        }
        Cmd::Deploy {
            cmd,
            api,
            change,
            opts,
        } => {
            use crate::cli::args::DeployCmd;
            use crate::cli::deploy;
            cli_result(match cmd {
                Some(DeployCmd::Status { api, json }) => deploy::status(&api.api, json).await,
                Some(DeployCmd::History { api, json }) => deploy::history(&api.api, json).await,
                Some(DeployCmd::Rollback { api, version, opts }) => {
                    deploy::rollback(&api.api, version, opts.request(), opts.wait, opts.json).await
                }
                None => match deploy::changes(
                    change.command,
                    change.args,
                    change.env,
                    change.workdir,
                    change.file.as_deref(),
                ) {
                    Ok(changes) => {
                        let mut req = opts.request();
                        req.changes = changes;
                        req.label = change.label;
                        deploy::deploy(&api.api, req, opts.wait, opts.json).await
                    }
                    Err(e) => Err(e),
                },
            })
        }
        Cmd::Reload { api, node, json } => cli_result(client::reload(&api.api, node.as_deref(), json).await),
        Cmd::Failback { api, wait, json } => {
            let wait = (!wait.is_zero()).then_some(wait);
            cli_result(client::switchover(&api.api, None, (None, None), true, wait, json).await)
        }
        Cmd::Maintenance {
            api,
            mode,
            node,
            json,
        } => cli_result(client::maintenance(&api.api, &node, mode == "on", json).await),
        Cmd::Drain { api, node, off, json } => cli_result(client::drain(&api.api, &node, !off, json).await),
        Cmd::Events {
            api,
            since,
            limit,
            json,
        } => cli_result(client::events(&api.api, since.as_deref(), limit.map(|n| n as usize), json).await),
        Cmd::Certs { which } => cli_result(match which {
            CertsCmd::Init { dir, name, valid_for } => crate::certs::init(&dir, &name, valid_for),
            CertsCmd::Issue {
                id,
                ca,
                out,
                san,
                valid_for,
            } => crate::certs::issue(&id, &ca, out.as_deref(), &san, valid_for),
            CertsCmd::Show { file, json } => crate::certs::show(&file, json),
        }),
        Cmd::Demo { dir, cmd: None } => done_alternate(crate::demo::run(dir, until_signal()).await),
        Cmd::Demo { cmd: Some(cmd), .. } => cli_result(match cmd {
            DemoCmd::AddNode {
                id,
                kind,
                dir,
                timeout,
            } => {
                let kind = if kind == "witness" {
                    crate::config::NodeKind::Witness
                } else {
                    crate::config::NodeKind::Data
                };
                crate::demo::nodes::add_node(&dir, &id, kind, timeout).await
            }
            DemoCmd::RemoveNode { id, dir, timeout } => {
                crate::demo::nodes::remove_node(&dir, &id, timeout).await
            }
        }),
        Cmd::Bench { which } => done_alternate(bench(which).await),
        Cmd::BenchBackend { listen, answer } => {
            match crate::bench::backend::run(listen, answer, until_signal()).await {
                Ok(()) => code(exit::OK),
                Err(e) => {
                    eprintln!("standin: {listen}: {e}");
                    code(1)
                }
            }
        }
        Cmd::DemoService { listen, node, admin } => {
            done(crate::demo::service::run(listen, node, admin, until_signal()).await)
        }
        Cmd::VipKeeper {
            interface,
            vip,
            garp_count,
            garp_interval,
            garp_refresh,
        } => code(
            crate::address::vip::keeper::run(crate::address::vip::KeeperArgs {
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

/// SIGHUP's default action is to stop the process. Registering a handler replaces it for the
/// rest of the process's life (tokio keeps it installed), so a SIGHUP during a long start (a
/// large log to open) or to the standalone proxy no longer kills it; the node's own loop
/// answers SIGHUP once it runs (`node::run`: TLS files and the config file read again).
fn ignore_hangup_from_now_on() {
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tracing::warn!(error = %e, "cannot install a SIGHUP handler: SIGHUP will stop this process");
    }
}

/// `standin node`: bad config exits 64 and a port that cannot be bound 69, both before the
/// node starts; then it runs until SIGTERM/SIGINT (and its proxy beside it, if configured).
async fn node(path: &Path, handover: Option<crate::handover::Handover>) -> ExitCode {
    ignore_hangup_from_now_on();
    // With a hot restart's document, anything that fails before the take-over goes back to
    // the previous program, which resumes (see `handover::fall_back`).
    let fall_back = |h: &Option<crate::handover::Handover>, why: &str| {
        if let Some(h) = h {
            tracing::error!(error = %why, "hot restart: this program cannot start; going back to the previous one");
            let err = crate::handover::fall_back(h, why);
            tracing::error!(error = %err, "cannot go back to the previous program");
        }
    };
    // Store clients are clamped to the open file limit: raise it as far as allowed.
    match crate::store::server::raise_file_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            fall_back(&handover, &e.to_string());
            eprintln!("standin: {e}");
            return code(EXIT_CONFIG);
        }
    };
    let listeners = match &handover {
        Some(h) => match crate::node::Listeners::from_handover(&config, h) {
            Ok(l) => l,
            Err(e) => {
                fall_back(&handover, &e);
                eprintln!("standin: hot restart: {e}");
                return code(exit::UNAVAILABLE);
            }
        },
        None => match crate::node::Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("standin: {e}");
                return code(exit::UNAVAILABLE);
            }
        },
    };
    let proxy = match &config.proxy {
        Some(p) => match crate::address::proxy::Bound::bind(p).await {
            Ok(b) => Some((p.clone(), b)),
            Err(e) => {
                eprintln!("standin: {e}");
                return code(exit::UNAVAILABLE);
            }
        },
        None => None,
    };
    let token = until_signal();
    if let Some((p, bound)) = proxy {
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::address::proxy::run(p, bound, token).await {
                tracing::error!(error = %e, "proxy failed");
            }
        });
    }
    crate::failstop::arm();
    {
        let token = token.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            crate::systemd::stopping();
        });
    }
    // Scheduled drills (`[drill] schedule`) run beside the daemon, through its admin API.
    tokio::spawn(crate::drill::schedule::run(
        std::sync::Arc::new(config.clone()),
        token.clone(),
    ));
    if config.backup.scheduled(config.me().kind) {
        // Scheduled backups: a client of this node's own admin API, beside it like the proxy.
        tokio::spawn(crate::backup::schedule::run(
            std::sync::Arc::new(config.clone()),
            token.clone(),
        ));
    }
    match crate::node::run(config, path.to_path_buf(), listeners, token, handover).await {
        Ok(()) => code(exit::OK),
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            eprintln!("standin: {e}");
            code(e.exit_code())
        }
    }
}

/// `standin check-config FILE`.
fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
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
    }
}

/// `standin proxy`: bad config exits 64, a listener that cannot be bound 69.
async fn proxy(config: &Path, handover: Option<crate::handover::ProxyHandover>) -> ExitCode {
    ignore_hangup_from_now_on();
    // A process started by a hot restart that cannot serve just exits: the previous one sees
    // the pipe close and keeps serving.
    let config = match crate::config::load_proxy(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("standin: {e}");
            return code(EXIT_CONFIG);
        }
    };
    let bound = match &handover {
        Some(h) => crate::address::proxy::Bound::from_handover(&config, h).await,
        None => crate::address::proxy::Bound::bind(&config).await,
    };
    let bound = match bound {
        Ok(b) => b,
        Err(e) => {
            eprintln!("standin: {e}");
            return code(exit::UNAVAILABLE);
        }
    };
    let ready = handover.as_ref().map(|h| {
        let ready = crate::handover::dup(h.ready);
        for fd in h.fds() {
            // SAFETY: the document was checked; each descriptor is closed once, after what
            // was needed from it was duplicated.
            #[allow(unsafe_code)]
            drop(unsafe { crate::handover::own(fd) });
        }
        tracing::info!(from_pid = h.from_pid, from = %h.from_version, "proxy hot restart: took over the listeners");
        ready
    });
    let restartable =
        std::env::current_exe()
            .ok()
            .map(|program| crate::address::proxy::restart::Restartable {
                program,
                args: std::env::args_os().skip(1).collect(),
                hot_restarts: handover.as_ref().map_or(0, |h| h.hot_restarts),
                ready: ready.and_then(|r| r.ok()),
            });
    done(crate::address::proxy::run_restartable(config, bound, until_signal(), restartable).await)
}

/// `standin bench …`.
async fn bench(which: BenchCmd) -> Result<(), crate::lab::harness::HarnessError> {
    use crate::bench::{self, FailoverOptions, Profile, Via};
    match which {
        BenchCmd::Store {
            requests,
            rounds,
            durable_only,
            json,
        } => {
            let opts = bench::store::StoreOptions {
                requests,
                rounds,
                durable_only,
                json,
            };
            bench::until_interrupted(bench::store::run(opts)).await
        }
        BenchCmd::Disk { dir, commits, json } => bench::disk::run(dir, commits as usize, json).await,
        BenchCmd::Failover {
            trials,
            faults,
            cpu_hog,
            via,
            without_keepalived,
            profile,
            json,
        } => {
            let (via, profile) = (Via::parse(&via)?, Profile::parse(&profile)?);
            let options = FailoverOptions {
                trials,
                faults,
                cpu_hog,
                via,
                keepalived: !without_keepalived,
                profile,
                json,
            };
            if via == Via::Vip {
                // The VIP benchmark runs on a thread of its own that handles signals itself: it
                // must finish deleting its namespaces before the process exits.
                bench::failover(options).await
            } else {
                bench::until_interrupted(bench::failover(options)).await
            }
        }
        BenchCmd::Proxy {
            duration,
            connections,
            rounds,
            json,
        } => bench::until_interrupted(bench::proxy::run(duration, connections, rounds, json)).await,
        BenchCmd::Join {
            keys,
            value_size,
            json,
        } => {
            let opts = bench::join::JoinOptions {
                keys,
                value_size,
                json,
            };
            bench::until_interrupted(bench::join::run(opts)).await
        }
        BenchCmd::Backup {
            keys,
            value_size,
            json,
        } => {
            let opts = bench::backup::BackupOptions {
                keys,
                value_size,
                json,
            };
            bench::until_interrupted(bench::backup::run(opts)).await
        }
        BenchCmd::Deploy { deploys, json } => {
            let opts = bench::deploy::DeployOptions { deploys, json };
            bench::until_interrupted(bench::deploy::run(opts)).await
        }
        BenchCmd::Upgrade {
            restarts,
            reloads,
            stop_starts,
            json,
        } => {
            let opts = bench::upgrade::UpgradeOptions {
                restarts,
                reloads,
                stop_starts,
                json,
            };
            bench::until_interrupted(bench::upgrade::run(opts)).await
        }
    }
}
