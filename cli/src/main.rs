//! `ci`: submit a Python project's tests to the CI server and follow them.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ci_cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(ci_cli::run(cli));
    ExitCode::from(code)
}
