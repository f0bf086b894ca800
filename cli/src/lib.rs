//! The `ci` client: argument parsing, the commands, and the exit code of each outcome.

pub mod client;
pub mod commands;
pub mod config;
pub mod exit;
#[cfg(test)]
mod fake;
pub mod follow;
pub mod pack;
pub mod progress;
pub mod run;
pub mod style;
pub mod summary;
pub mod table;

use ci_protocol::{JobView, Status};
use clap::{Parser, Subcommand};

use client::Client;

#[derive(Parser, Debug)]
#[command(
    name = "ci",
    version,
    // By hand, so that `--version --verbose` can ask the server too.
    disable_version_flag = true,
    arg_required_else_help = true,
    about = "Run a Python project's tests on the CI server"
)]
pub struct Cli {
    /// Print the version (with --verbose: the server's too).
    #[arg(short = 'V', long)]
    pub version: bool,

    /// With --version: also ask the server for its version and API version.
    #[arg(short, long)]
    pub verbose: bool,

    /// Colour statuses and counts: auto (on a terminal, unless NO_COLOR is set), always or
    /// never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    pub color: style::ColorChoice,

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
    pub command: Option<Command>,
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
    /// Print a job's whole log, then its summary and result (`wait --all`).
    Logs(commands::logs::LogsArgs),
    /// Open a job's page (or a run's first job's) in the browser ($BROWSER, else xdg-open).
    Open(commands::open::OpenArgs),
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
    /// Print a shell completion script (bash, zsh, fish); `ci man` prints the man page.
    Completions(commands::completions::CompletionsArgs),
    /// Print the man page (roff) to stdout: `ci man | man -l -`.
    #[command(hide = true)]
    Man,
}

/// The whole of `ci`, from its arguments to its exit code: the `ci` binary's `main`, and the
/// `ci` command of the Python package (`ci_client._native.run_cli`), so that both are the same
/// program. Bad usage prints clap's message and gives its code (2; 0 for `--help`).
pub fn main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    default_signals();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(exit::CLIENT_ERROR);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(cli))
}

/// `ci logs ID | head` ends quietly, as `cat` would, instead of a panic on the closed pipe:
/// the default action of SIGPIPE comes back (Rust starts programs with it ignored, and so does
/// Python, which runs the package's `ci`). Ctrl+C likewise gets its default action (Python
/// catches it) until a follow listens for it. Sockets are unaffected: the standard library
/// sends with `MSG_NOSIGNAL`.
fn default_signals() {
    // SAFETY: only sets two signals' dispositions to their defaults, before anything of ci's
    // listens for either (tokio's Ctrl+C handler is installed later, by the follow).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Runs a command; returns the process exit code. Errors become one line on stderr.
pub async fn run(cli: Cli) -> u8 {
    style::init(cli.color);
    let result = async {
        if cli.version {
            return match cli.verbose {
                true => commands::version::verbose(cli.server).await,
                false => commands::version::short(),
            };
        }
        let command = match cli.command {
            // Nothing from the server or the config is needed for these.
            Some(Command::Completions(args)) => return commands::completions::run(args),
            Some(Command::Man) => return commands::completions::man(),
            None => {
                // `arg_required_else_help` covers `ci` alone; this is `ci --color never`.
                use clap::CommandFactory;
                Cli::command().print_help()?;
                return Ok(exit::CLIENT_ERROR);
            }
            Some(command) => command,
        };
        let settings = config::resolve(cli.server, cli.api_key)?;
        let client = Client::new(&settings)?;
        match command {
            Command::Submit(args) => commands::submit::run(&client, args).await,
            Command::Rerun(args) => commands::rerun::run(&client, args).await,
            Command::Wait(args) => commands::wait::run(&client, args).await,
            Command::Logs(args) => commands::logs::run(&client, args).await,
            Command::Open(args) => commands::open::run(&client, args).await,
            Command::List(args) => commands::list::run(&client, args).await,
            Command::Cancel(args) => commands::cancel::run(&client, args).await,
            Command::Artifacts(args) => commands::artifacts::run(&client, args).await,
            Command::Pythons(args) => commands::pythons::run(&client, args).await,
            Command::Whoami => commands::whoami::run(&client).await,
            Command::Admin(args) => commands::admin::run(&client, args).await,
            Command::Completions(_) | Command::Man => unreachable!("handled above"),
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

/// `==> result: STATUS[: REASON] (SECS) · job ID`, as the job's record has it: the last line of
/// `ci submit` and `ci wait`, so that the id is where a user looks for it. The status in its
/// colour when `paint` is on.
pub fn result_line(job: &JobView, paint: style::Paint) -> String {
    let mut line = format!(
        "==> result: {}",
        paint.status(job.status, job.status.as_str())
    );
    if let Some(reason) = &job.reason {
        line.push_str(&format!(": {}", summary::clean(reason)));
    }
    if let Some(secs) = job.duration_secs {
        line.push_str(&format!(" ({secs:.1}s)"));
    }
    line.push_str(&format!(" · job {}", summary::clean(&job.id)));
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
            for line in end_lines(&job, report.as_ref(), style::Paint::stdout()) {
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
pub fn end_lines(
    job: &JobView,
    report: Option<&ci_protocol::TestReport>,
    paint: style::Paint,
) -> Vec<String> {
    let mut lines = summary::render(job, report, paint);
    // The result comes from the job's record, never from the log, which holds the job's own
    // output and so could imitate it.
    lines.push(result_line(job, paint));
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
pub async fn report_if_failed(client: &Client, job: &JobView) -> Option<ci_protocol::TestReport> {
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

/// What a person sees, coloured and plain: a list, a summary and a result line.
#[cfg(test)]
mod colour_snapshots {
    use ci_protocol::{FailedTest, FailureKind, JobView, Status, TestCounts, TestReport};

    use crate::style::Paint;

    fn job(id: &str, status: Status, tests: Option<TestCounts>) -> JobView {
        serde_json::from_value(serde_json::json!({
            "id": id, "status": status, "phase": null, "created": "2026-11-21T10:50:54Z",
            "started": "2026-11-21T10:50:55Z", "finished": "2026-11-21T10:51:03Z",
            "duration_secs": 8.0, "exit_code": 1, "reason": null, "queue_position": null,
            "timeout_secs": 600, "log_bytes": 10, "tests": tests, "python": "3.11",
            "project": "calculator"
        }))
        .unwrap()
    }

    fn counts(passed: u64, failed: u64) -> TestCounts {
        TestCounts {
            passed,
            failed,
            duration_secs: 0.25,
            ..Default::default()
        }
    }

    /// Escapes shown as `␛`, so that the snapshot can be read.
    fn both(render: impl Fn(Paint) -> String) -> String {
        let plain = render(Paint::PLAIN);
        let colour = render(Paint::COLOUR);
        assert_eq!(crate::style::width(&colour), plain.chars().count());
        format!(
            "--- plain\n{plain}\n--- colour\n{}\n",
            colour.replace('\x1b', "␛")
        )
    }

    #[test]
    fn list_summary_and_result() {
        let failed = job("0a1b2c3d4e5f", Status::Failed, Some(counts(1, 2)));
        let report = TestReport {
            counts: counts(1, 2),
            failed: vec![FailedTest {
                node_id: "tests/test_calc.py::test_div".into(),
                kind: FailureKind::Failed,
                file: None,
                line: None,
                message: "ZeroDivisionError: division by zero".into(),
            }],
            unlisted: 1,
        };
        let jobs = [
            failed.clone(),
            JobView {
                id: "0a1b2c3d4e60".into(),
                exit_code: Some(0),
                ..job("0a1b2c3d4e60", Status::Passed, Some(counts(3, 0)))
            },
            JobView {
                reason: Some("timed out after 10m".into()),
                project: None,
                ..job("0a1b2c3d4e61", Status::TimedOut, None)
            },
            JobView {
                queue_position: Some(2),
                started: None,
                finished: None,
                duration_secs: None,
                exit_code: None,
                ..job("0a1b2c3d4e62", Status::Queued, None)
            },
        ];
        insta::assert_snapshot!(
            "list",
            both(|p| crate::commands::list::table(&jobs, p, None))
        );
        insta::assert_snapshot!(
            "summary",
            both(|p| crate::end_lines(&failed, Some(&report), p).join("\n"))
        );
        let passed = &jobs[1];
        insta::assert_snapshot!("result_passed", both(|p| crate::result_line(passed, p)));
        insta::assert_snapshot!(
            "result_timed_out",
            both(|p| crate::result_line(&jobs[2], p))
        );
    }
}
