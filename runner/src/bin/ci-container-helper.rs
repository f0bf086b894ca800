//! The helper subcommands as a standalone binary, for tests and manual runs; the server
//! binary offers the same through `ci-server __container ...`.

fn main() {
    std::process::exit(ci_runner::helper_main(std::env::args().skip(1).collect()));
}
