//! The `standin` binary: parse the arguments, set up logging, and hand the command to the
//! library (`standin::cli::run`), which runs it and chooses the exit code. The argument tree is
//! `standin::cli::args`.

use std::process::ExitCode;

use clap::Parser;

use standin::cli::args::{Args, LogFormat};

/// Logging to stderr, filtered by `STANDIN_LOG` (default `info`, openraft's own logs off), as
/// text (colour codes only when stderr is a terminal: journald and files get plain lines) or
/// one JSON object per line. Set up here and nowhere else.
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STANDIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        // If stderr goes away (the reader died), tracing would report that with eprintln!,
        // which panics: a daemon must outlive its log reader.
        .log_internal_errors(false);
    // Beside stderr, the last lines stay in memory for drills (`GET /v1/logs`).
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    match format {
        LogFormat::Text => builder.finish().with(standin::logring::layer()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(standin::logring::layer())
            .init(),
    }
}

fn main() -> ExitCode {
    standin::malloc::tune();
    let args = match Args::try_parse() {
        Ok(args) => args,
        // `--help` and `--version` print to stdout and succeed; a usage error prints clap's
        // message and exits 64 (EX_USAGE), as every other usage error of standin does.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(standin::cli::exit::USAGE as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Logging is set up once, for the commands that run for a while (daemons, the demo, the
    // benchmarks); the operator commands print their results and errors themselves.
    if args.command.logs() {
        init_tracing(args.log_format);
    }
    standin::cli::run::main_with(args)
}
