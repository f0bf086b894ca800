//! The `ci` client: argument parsing, the commands, and the exit code of each outcome.

pub mod client;
pub mod commands;
pub mod config;
pub mod exit;
#[cfg(test)]
mod fake;
pub mod follow;
pub mod pack;
pub mod run;
pub mod summary;
pub mod table;

use ci_protocol::{JobView, Status};
use clap::{Parser, Subcommand};

use client::Client;

#[derive(Parser, Debug)]
#[command(
    name = "ci",
    version,
    about = "Run a Python project's tests on the CI server"
)]
pub struct Cli {
    /// Server URL [env: CI_SERVER_URL; else server_url= in ~/.ci/config; default http://127.0.0.1:8000].
    #[arg(long, global = true, env = "CI_SERVER_URL", hide_env = true)]
    pub server: Option<String>,

    /// API key [env: CI_API_KEY; else api_key= in ~/.ci/config].
    #[arg(
        long,
        global = true,
        env = "CI_API_KEY",
        hide_env = true,
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack this project, run it on the server and stream the output, then the test counts and
    /// the tests that failed.
    Submit(commands::submit::SubmitArgs),
    /// Run again, from the project here, the tests that failed or errored in an earlier job
    /// (--failed, for now the only kind of rerun).
    Rerun(commands::rerun::RerunArgs),
    /// Follow a job, or every job of a run, until it ends (new output only, or everything with
    /// --all).
    Wait(commands::wait::WaitArgs),
    /// List your jobs, newest first.
    List(commands::list::ListArgs),
    /// Cancel a queued or running job.
    Cancel(commands::cancel::CancelArgs),
    /// Download the files a job's tests wrote to /artifacts, into a new directory.
    Artifacts(commands::artifacts::ArtifactsArgs),
    /// List the server's Pythons (what `--python` takes), the default first.
    Pythons(commands::pythons::PythonsArgs),
    /// Show who your API key belongs to.
    Whoami,
    /// Manage users and API keys (needs an admin key).
    Admin(commands::admin::AdminArgs),
}

/// Runs a command; returns the process exit code. Errors become one line on stderr.
pub async fn run(cli: Cli) -> u8 {
    let result = async {
        let settings = config::resolve(cli.server, cli.api_key)?;
        let client = Client::new(&settings)?;
        match cli.command {
            Command::Submit(args) => commands::submit::run(&client, args).await,
            Command::Rerun(args) => commands::rerun::run(&client, args).await,
            Command::Wait(args) => commands::wait::run(&client, args).await,
            Command::List(args) => commands::list::run(&client, args).await,
            Command::Cancel(args) => commands::cancel::run(&client, args).await,
            Command::Artifacts(args) => commands::artifacts::run(&client, args).await,
            Command::Pythons(args) => commands::pythons::run(&client, args).await,
            Command::Whoami => commands::whoami::run(&client).await,
            Command::Admin(args) => commands::admin::run(&client, args).await,
        }
    };
    match result.await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ci: error: {e:#}");
            exit::CLIENT_ERROR
        }
    }
}

/// `==> result: STATUS[: REASON] (SECS)`, as the job's record has it.
pub fn result_line(job: &JobView) -> String {
    let mut line = format!("==> result: {}", job.status);
    if let Some(reason) = &job.reason {
        line.push_str(&format!(": {reason}"));
    }
    if let Some(secs) = job.duration_secs {
        line.push_str(&format!(" ({secs:.1}s)"));
    }
    line
}

/// Follows a job's log to its end and returns the exit code its result means. Ctrl+C leaves
/// the job running and says how to get back to it.
pub async fn follow_to_end(client: &Client, id: &str, offset: u64) -> anyhow::Result<u8> {
    let finished = async {
        let job = follow::follow(client, id, offset).await?;
        let report = report_if_failed(client, &job).await;
        anyhow::Ok((job, report))
    };
    tokio::select! {
        finished = finished => {
            let (job, report) = finished?;
            for line in end_lines(&job, report.as_ref()) {
                println!("{line}");
            }
            warn_unfinished(&job);
            Ok(exit::of(job.status))
        }
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\nci: interrupted; job {id} keeps running on the server. Reconnect with: ci wait {id}");
            Ok(exit::INTERRUPTED)
        }
    }
}

/// The lines that end a followed job: the tests' summary, then `==> result:`.
pub fn end_lines(job: &JobView, report: Option<&ci_protocol::TestReport>) -> Vec<String> {
    let mut lines = summary::render(job, report);
    // The result comes from the job's record, never from the log, which holds the job's own
    // output and so could imitate it.
    lines.push(result_line(job));
    lines
}

/// Says on stderr why a job ended without a verdict of its tests (error, timeout, cancel).
pub fn warn_unfinished(job: &JobView) {
    if !matches!(job.status, Status::Passed | Status::Failed) {
        if let Some(reason) = &job.reason {
            eprintln!(
                "ci: job {} {}: {reason}",
                job.id,
                job.status.as_str().replace('_', " ")
            );
        }
    }
}

/// The report of a job whose counts say some tests failed or errored, to list them; `None` for
/// any other job, and when the report cannot be had (the summary then shows the counts only:
/// the run's result stands without it).
pub(crate) async fn report_if_failed(
    client: &Client,
    job: &JobView,
) -> Option<ci_protocol::TestReport> {
    if job.tests?.not_passed() == 0 {
        return None;
    }
    tokio::time::timeout(REPORT_PATIENCE, client.report(&job.id))
        .await
        .ok()?
        .ok()
}

/// How long the end of a run waits for the failed tests' list before it goes without.
const REPORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);
