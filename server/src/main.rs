//! `ci-server`: the CI server binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ci-server",
    version,
    about = "CI server: runs pytest for uploaded Python projects in containers, no Docker daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(ci_server::ServeArgs),
    /// Show what this machine offers for isolating jobs (user namespaces, cgroups,
    /// seccomp, slirp4netns, ...) and whether `serve` with the same flags would start.
    Doctor(ci_server::ServeArgs),
    /// Manage the images of a running server (through its admin API): import, list, rm.
    Image(ci_server::image_cli::ImageArgs),
}

fn main() -> ExitCode {
    // The per-container helper: this same binary, started by the server, must reach
    // libcontainer before any thread exists (see ci_runner's process model).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if ci_runner::is_helper_invocation(&args) {
        return ExitCode::from(ci_runner::helper_main(args) as u8);
    }
    // Flags, then the environment, then `--config FILE`, then the defaults.
    let cli: Cli =
        ci_server::config_file::parse(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let (timings, format) = match &cli.command {
        Command::Serve(args) => (args.log_timings, args.log_format),
        Command::Doctor(args) => (false, args.log_format),
        Command::Image(_) => (false, ci_server::config::LogFormat::Text),
    };
    init_tracing(timings, format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ci-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Doctor(args) => {
            // It starts processes and resolves the registry's name.
            if !tokio::task::spawn_blocking(move || ci_server::doctor::run(&args)).await? {
                anyhow::bail!("jobs cannot be isolated as configured (see above)");
            }
            Ok(())
        }
        Command::Image(args) => ci_server::image_cli::run(args).await,
        Command::Serve(args) => {
            let limits = ci_server::listener::ConnLimits::at_start(&args);
            let helper = std::env::current_exe()?;
            // The port first: a server that cannot listen creates nothing (no admin key).
            let listener = ci_server::listener::bind(args.listen)
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
            let state = ci_server::open(&args, helper).await?;
            tracing::info!(address = %listener.local_addr()?, data_dir = %args.data_dir().display(), "listening");
            ci_server::serve(
                listener,
                state,
                limits,
                args.shutdown_grace,
                ci_server::shutdown_signal(),
            )
            .await
        }
    }
}

fn init_tracing(timings: bool, format: ci_server::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_env("CI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if timings {
        let directive = format!("{}=debug", ci_server::timing::TARGET);
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // One JSON object a line: timestamp, level, target, fields (with the message).
        ci_server::config::LogFormat::Json => builder.json().try_init(),
        // Colours only for a person at a terminal: a redirected log (a file, journald)
        // gets plain text.
        ci_server::config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
