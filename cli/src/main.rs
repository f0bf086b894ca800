//! `ci`: submit a Python project's tests to the CI server and follow them.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = ci_cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(ci_cli::run(cli));
    ExitCode::from(code)
}

/// `ci logs ID | head` ends quietly, as `cat` would, instead of a panic on the closed pipe:
/// the default action of SIGPIPE comes back (Rust starts programs with it ignored). Sockets
/// are unaffected: the standard library sends with `MSG_NOSIGNAL`.
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; it only sets a
    // signal's disposition to its default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
