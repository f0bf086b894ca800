//! `ci submit test`: pack the project, upload it, follow the run. With `--failed-from`, run
//! only the tests that failed or errored in an earlier job (`ci rerun` is the same thing).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ci_protocol::{JobView, SubmitQuery};

use crate::client::{Client, RequestError};
use crate::{exit, pack};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// What to run: `test` installs the project's test environment as it declares it and runs pytest.
    #[arg(value_enum)]
    pub what: What,

    /// Run only the tests that failed or errored in this earlier job of yours, from the project
    /// as it is now; nothing is submitted if none did.
    #[arg(long, value_name = "ID")]
    pub failed_from: Option<String>,

    #[command(flatten)]
    pub options: RunOptions,
}

/// The options of a run, shared by `ci submit test` and `ci rerun`.
#[derive(clap::Args, Debug)]
pub struct RunOptions {
    /// Print the job id and return at once; follow it later with `ci wait <id>`.
    #[arg(long = "async")]
    pub detach: bool,

    /// Stop the job after this long (e.g. 90s, 5m); the server's own limit still applies.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// The project directory.
    #[arg(long, short = 'C', default_value = ".")]
    pub dir: PathBuf,

    /// Split the suite across N test containers (or `auto`: as many as the server has free
    /// job slots), by test file, balanced by the durations of earlier runs; the log shows
    /// one shard after another and the report is merged. Overrides `[tool.ci] shards`.
    #[arg(long, value_name = "N|auto")]
    pub shards: Option<ci_protocol::Shards>,

    /// Extra arguments for pytest, after `--` (e.g. `-- -k add -x`).
    #[arg(last = true, value_name = "PYTEST_ARGS")]
    pub pytest_args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Debug)]
pub enum What {
    Test,
}

/// How long a submission waits for a busy server (503: too many uploads at once, or a
/// restart) before it gives up.
const BUSY_PATIENCE: Duration = Duration::from_secs(120);

/// Submits, trying again while the server answers 503 (busy for a moment); any other answer,
/// a 429 over one of the user's own caps included, is final.
async fn submit_when_free(
    client: &Client,
    archive: &[u8],
    query: &SubmitQuery,
) -> Result<JobView, RequestError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        match client.submit(archive.to_vec(), query).await {
            Err(RequestError::Http(503, message)) if started.elapsed() < BUSY_PATIENCE => {
                eprintln!("ci: {message}; trying again in {}s", pause.as_secs());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

pub async fn run(client: &Client, args: SubmitArgs) -> anyhow::Result<u8> {
    submit(client, args.options, args.failed_from.as_deref()).await
}

/// Packs the project, submits it (only the failed tests of `failed_from`, if given) and
/// follows the job, or prints its id with `--async`.
pub async fn submit(
    client: &Client,
    options: RunOptions,
    failed_from: Option<&str>,
) -> anyhow::Result<u8> {
    if let Some(from) = failed_from {
        // Asked before the project is packed and uploaded: a job without a report (404) or
        // without failures is answered here at once, the latter as nothing to do.
        let report = client.report(from).await?;
        if report.counts.not_passed() == 0 && report.failed.is_empty() && report.unlisted == 0 {
            eprintln!("ci: job {from} had no failed or errored tests: nothing to rerun");
            return Ok(exit::SUCCESS);
        }
    }
    let dir = options
        .dir
        .canonicalize()
        .with_context(|| format!("cannot open project directory {}", options.dir.display()))?;
    let packed = pack::pack(&dir)?;
    let query = SubmitQuery {
        failed_from: failed_from.map(str::to_string),
        shards: options.shards,
        ..SubmitQuery::new(
            options.timeout.map(|t| t.as_secs().max(1)),
            &options.pytest_args,
        )
    };
    let job = submit_when_free(client, &packed.archive, &query).await?;
    if options.detach {
        println!("{}", job.id);
        eprintln!(
            "Submitted job {}; follow it with: ci wait {}",
            job.id, job.id
        );
        return Ok(exit::SUCCESS);
    }
    eprintln!("Job ID: {}", job.id);
    if let Some(pos) = job.queue_position.filter(|p| *p > 1) {
        eprintln!("Queued at position {pos}");
    }
    crate::follow_to_end(client, &job.id, 0).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::fake::{Fake, Reply};

    const NO_REPORT: &str =
        "job j has no test report: its tests did not run to the end, or wrote none";
    const FAILED: &str = r#"{"counts":{"passed":1,"failed":2,"errors":0,"skipped":0,"xfailed":0,"xpassed":0,"duration_secs":0.02},"failed":[{"node_id":"t.py::a","kind":"failed","file":null,"line":null,"message":"boom"},{"node_id":"t.py::b","kind":"failed","file":null,"line":null,"message":""}],"unlisted":0}"#;
    const PASSED: &str = r#"{"counts":{"passed":3,"failed":0,"errors":0,"skipped":0,"xfailed":0,"xpassed":0,"duration_secs":0.02},"failed":[],"unlisted":0}"#;
    const QUEUED: &str = r#"{"id":"k","status":"queued","phase":null,"created":"t","started":null,"finished":null,"duration_secs":null,"exit_code":null,"reason":null,"queue_position":1}"#;
    const ENDED: &str = r#"{"id":"k","status":"failed","phase":null,"created":"t","started":null,"finished":null,"duration_secs":0.6,"exit_code":1,"reason":null,"queue_position":null,"log_bytes":0,"tests":{"passed":1,"failed":2,"errors":0,"skipped":0,"xfailed":0,"xpassed":0,"duration_secs":0.02}}"#;

    /// A server where job `j` has the report `report` (or none: 404), and a submission
    /// becomes job `k`, which ends failed at once with the same report.
    async fn server(report: Option<&'static str>) -> Fake {
        Fake::start(
            move |req| match (req.method.as_str(), req.target.as_str()) {
                ("GET", "/v1/jobs/j/report" | "/v1/jobs/k/report") => match report {
                    Some(r) => Reply::json(200, r),
                    None => Reply::error(404, NO_REPORT),
                },
                ("POST", t) if t == "/v1/jobs" || t.starts_with("/v1/jobs?") => {
                    Reply::json(201, QUEUED)
                }
                ("GET", t) if t.starts_with("/v1/jobs/k/log?") => {
                    Reply::bytes(200, "text/plain", Vec::new())
                }
                ("GET", "/v1/jobs/k") => Reply::json(200, ENDED),
                _ => Reply::error(404, "no such route"),
            },
        )
        .await
    }

    async fn ci(server: &Fake, args: &[&str]) -> u8 {
        let project = tempfile::tempdir().unwrap();
        std::fs::write(project.path().join("test_a.py"), "def test_a(): pass\n").unwrap();
        let dir = project.path().to_str().unwrap();
        let mut argv = vec!["ci", "--server", &server.url, "--api-key", "ci_test"];
        argv.extend(args.iter().map(|a| if *a == "DIR" { dir } else { a }));
        crate::run(crate::Cli::try_parse_from(argv).unwrap()).await
    }

    fn posts(server: &Fake) -> Vec<String> {
        let requests = server.requests();
        requests
            .into_iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.target)
            .collect()
    }

    #[tokio::test]
    async fn failed_from_a_job_without_a_report_is_an_error_before_any_upload() {
        let server = server(None).await;
        let code = ci(
            &server,
            &["submit", "test", "--failed-from", "j", "-C", "DIR"],
        )
        .await;
        assert_eq!(code, crate::exit::CLIENT_ERROR);
        assert!(posts(&server).is_empty());
    }

    #[tokio::test]
    async fn failed_from_a_job_without_failures_submits_nothing() {
        let server = server(Some(PASSED)).await;
        let code = ci(
            &server,
            &["submit", "test", "--failed-from", "j", "-C", "DIR"],
        )
        .await;
        assert_eq!(code, crate::exit::SUCCESS);
        assert!(posts(&server).is_empty());
        let code = ci(&server, &["rerun", "j", "--failed", "-C", "DIR"]).await;
        assert_eq!(code, crate::exit::SUCCESS);
        assert!(posts(&server).is_empty());
    }

    #[tokio::test]
    async fn failed_from_submits_with_the_job_and_follows() {
        for args in [
            &[
                "submit",
                "test",
                "--failed-from",
                "j",
                "-C",
                "DIR",
                "--",
                "-x",
            ][..],
            &["rerun", "j", "--failed", "-C", "DIR", "--", "-x"],
        ] {
            let server = server(Some(FAILED)).await;
            assert_eq!(ci(&server, args).await, crate::exit::JOB_FAILED, "{args:?}");
            let posts = posts(&server);
            assert_eq!(posts.len(), 1, "{posts:?}");
            assert!(posts[0].contains("failed_from=j"), "{posts:?}");
            assert!(posts[0].contains("pytest_args="), "{posts:?}");
            // The end of the run fetched the new job's report for its summary.
            let requests = server.requests();
            assert!(
                requests.iter().any(|r| r.target == "/v1/jobs/k/report"),
                "{requests:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_plain_submit_sends_no_failed_from() {
        let server = server(Some(FAILED)).await;
        assert_eq!(ci(&server, &["submit", "test", "-C", "DIR"]).await, 1);
        let posts = posts(&server);
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert!(!posts[0].contains("failed_from"), "{posts:?}");
    }

    #[test]
    fn rerun_needs_failed() {
        let e = crate::Cli::try_parse_from(["ci", "rerun", "j"]).unwrap_err();
        assert!(e.to_string().contains("--failed"), "{e}");
        let cli = crate::Cli::try_parse_from([
            "ci",
            "rerun",
            "j",
            "--failed",
            "--async",
            "--timeout",
            "5m",
            "--",
            "-k",
            "x",
        ])
        .unwrap();
        let crate::Command::Rerun(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.id, "j");
        assert!(args.options.detach);
        assert_eq!(
            args.options.timeout,
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(args.options.pytest_args, ["-k", "x"]);
    }
}
