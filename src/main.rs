//! The `standin` binary: parse the arguments, set up logging, and hand the command to the
//! library (`standin::cli::run`), which runs it and chooses the exit code. The argument tree is
//! `standin::cli::args`.

use std::process::ExitCode;

use clap::Parser;

use standin::cli::args::Args;

/// Logging to stderr, filtered by `STANDIN_LOG` (default `info`, openraft's own logs off). Set
/// up here and nowhere else.
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
        init_tracing();
    }
    standin::cli::run::main_with(args)
}
