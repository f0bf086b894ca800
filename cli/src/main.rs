//! `ci`: submit a Python project's tests to the CI server and follow them.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(ci_cli::main(std::env::args_os()))
}
