//! The `orchestra` binary: parses arguments, runs a command, maps the outcome to an exit code.

use clap::Parser;
use orchestra::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread drives L1, L2 and L3: the work between two subprocesses is short, and
    // hand-offs between runtime threads cost more than they bring (bench/noop.sh). Blocking
    // work (copying and hashing artifacts) goes to tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime\ncaused by: {e}");
            return ExitCode::from(orchestra::exit::INTERNAL);
        }
    };
    let code = runtime.block_on(orchestra::commands::dispatch(cli));
    // Do not wait for stray blocking tasks (a child being reaped, a file being copied).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}
