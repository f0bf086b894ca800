//! `ci submit test`: pack the project, upload it, follow the run. With `--failed-from`, run
//! only the tests that failed or errored in an earlier job (`ci rerun` is the same thing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ci_project::python::ChoiceError;
use ci_protocol::{ImageStatus, JobView, PythonView, SubmitQuery};

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

    /// Run on these of the server's Pythons, comma-separated (e.g. 3.11,3.13; `ci pythons`
    /// lists them): one job per version, followed one after another, then one table.
    /// Overrides `[tool.ci] python`; without either, the server's default unless the
    /// project's `requires-python` excludes it.
    #[arg(long, value_name = "VERSIONS")]
    pub python: Option<String>,

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
    notice: &(dyn Fn(&str) + Sync),
) -> Result<JobView, RequestError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        match client.submit(archive.to_vec(), query).await {
            Err(RequestError::Http(503, message)) if started.elapsed() < BUSY_PATIENCE => {
                notice(&format!("{message}; trying again in {}s", pause.as_secs()));
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

/// What one submission sends: the project and the options that shape its job (not how the job
/// is followed). The CLI and the Python library both submit through [`submit_job`].
#[derive(Debug)]
pub struct Submission<'a> {
    /// The project directory.
    pub dir: &'a Path,
    pub timeout: Option<Duration>,
    pub shards: Option<ci_protocol::Shards>,
    /// `--python`: versions, comma-separated.
    pub python: Option<&'a str>,
    pub pytest_args: &'a [String],
    /// Run only the tests that failed or errored in this earlier job.
    pub failed_from: Option<&'a str>,
    /// Refuse, before anything is uploaded, a submission that would become several jobs (one
    /// per Python): the library's `submit` returns one job.
    pub one_job: bool,
}

/// Why a submission was not made.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No Python fits (or, with `one_job`, several do): nothing was uploaded.
    #[error("{0}")]
    Python(String),
    /// The project cannot be read, packed or sent as it is.
    #[error("{0:#}")]
    Project(anyhow::Error),
    /// The server refused it or could not be reached.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Decides the Pythons, packs the project and submits it (trying again while the server is
/// busy); returns the job, whose `run_id` is set when it is one of several (one per Python).
/// What a person would be told on the way (a Python note, a retry) goes to `notice`.
pub async fn submit_job(
    client: &Client,
    submission: &Submission<'_>,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<JobView, SubmitError> {
    let given = submission.dir;
    let dir = given
        .canonicalize()
        .with_context(|| format!("cannot open project directory {}", given.display()))
        .map_err(SubmitError::Project)?;
    // A rerun runs on the Python of the job it reruns, unless --python says otherwise.
    let decide = submission.failed_from.is_none() || submission.python.is_some();
    let chosen = if decide {
        pythons(client, &dir, submission.python, notice).await?
    } else {
        Pythons::Server
    };
    let python = match chosen {
        Pythons::Server => None,
        Pythons::Chosen(names) if submission.one_job && names.len() > 1 => {
            return Err(SubmitError::Python(format!(
                "this project runs on several Pythons ({}): submit one at a time with python=",
                names.join(", ")
            )))
        }
        Pythons::Chosen(names) => Some(names.join(",")),
        Pythons::Refused(e) => return Err(SubmitError::Python(e)),
    };
    let packed = pack::pack(&dir).map_err(SubmitError::Project)?;
    if packed.files == 0 {
        return Err(SubmitError::Project(anyhow::anyhow!(
            "nothing to submit: {} holds no files",
            dir.display()
        )));
    }
    let query = SubmitQuery {
        failed_from: submission.failed_from.map(str::to_string),
        shards: submission.shards,
        python,
        project: project_name(&dir),
        ..SubmitQuery::new(
            submission.timeout.map(|t| t.as_secs().max(1)),
            submission.pytest_args,
        )
    };
    Ok(submit_when_free(client, &packed.archive, &query, notice).await?)
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
    let submission = Submission {
        dir: &options.dir,
        timeout: options.timeout,
        shards: options.shards,
        python: options.python.as_deref(),
        pytest_args: &options.pytest_args,
        failed_from,
        one_job: false,
    };
    let notice = |line: &str| eprintln!("ci: {line}");
    let job = match submit_job(client, &submission, &notice).await {
        Ok(job) => job,
        Err(SubmitError::Python(refusal)) => {
            eprintln!("ci: {refusal}");
            return Ok(exit::CLIENT_ERROR);
        }
        Err(SubmitError::Project(e)) => return Err(e),
        Err(SubmitError::Request(e)) => return Err(e.into()),
    };
    if let Some(run_id) = &job.run_id {
        return follow_run(client, run_id, options.detach).await;
    }
    if options.detach {
        println!("{}", job.id);
        eprintln!(
            "Submitted job {}; follow it with: ci wait {}",
            job.id, job.id
        );
        eprintln!("{}", page_line(client, &job));
        return Ok(exit::SUCCESS);
    }
    eprintln!("Job ID: {}", job.id);
    eprintln!("{}", page_line(client, &job));
    if let Some(pos) = job.queue_position.filter(|p| *p > 1) {
        eprintln!("Queued at position {pos}");
    }
    crate::follow_to_end(client, &job.id, 0).await
}

/// One job per Python: prints the run's id and its jobs with `--async`, else follows them
/// all.
async fn follow_run(client: &Client, run_id: &str, detach: bool) -> anyhow::Result<u8> {
    if detach {
        // The run's id first, alone on its line: what a script keeps to wait for it.
        println!("{run_id}");
    } else {
        eprintln!("Run ID: {run_id}");
    }
    let jobs = crate::run::jobs(client, run_id).await?;
    if detach {
        for job in &jobs {
            println!("{} {}", job.id, job.python.as_deref().unwrap_or("-"));
            eprintln!("{}", page_line(client, job));
        }
        eprintln!(
            "Submitted run {run_id} ({} jobs); follow them with: ci wait {run_id}",
            jobs.len()
        );
        return Ok(exit::SUCCESS);
    }
    crate::run::follow(client, run_id, &jobs, true, &mut std::io::stdout().lock()).await
}

/// `Job page: http://server/jobs/ID`, and its Python when the job has one (a run's jobs).
pub(crate) fn page_line(client: &Client, job: &JobView) -> String {
    let url = client.job_url(&crate::summary::clean(&job.id));
    match &job.python {
        Some(python) => format!("Job page: {url} (Python {})", crate::summary::clean(python)),
        None => format!("Job page: {url}"),
    }
}

/// The project's name as the server keeps it: the name of the directory packed, when the
/// server would take it (else none is sent, and the job has none).
fn project_name(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    ci_protocol::project_name_error(name)
        .is_none()
        .then(|| name.to_string())
}

/// What `ci` decided about the Pythons before uploading anything.
#[derive(Debug, PartialEq)]
enum Pythons {
    /// Nothing to decide (nothing asked, no `requires-python`), or a server older than
    /// several images: the server decides, as it always did.
    Server,
    /// These, sent explicitly so that the server runs what was decided here.
    Chosen(Vec<String>),
    /// No Python fits: nothing is uploaded; the line says why.
    Refused(String),
}

/// Decides the Pythons when the command line, the project's `[tool.ci] python` or its
/// `requires-python` says something about them, with the same rules the server has
/// (`ci_project::python::choose`), and prints the note of a choice that is not the default.
async fn pythons(
    client: &Client,
    dir: &Path,
    flag: Option<&str>,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<Pythons, SubmitError> {
    let asked = match flag {
        Some(flag) => {
            let names = ci_protocol::parse_python_list(flag);
            if names.is_empty() {
                return Err(SubmitError::Project(anyhow::anyhow!(
                    "--python needs at least one version (e.g. --python 3.11,3.13)"
                )));
            }
            names
        }
        // A config that cannot be read is left to the server, whose message names the file
        // and the key.
        None => ci_project::read_config(dir)
            .ok()
            .and_then(|c| c.python)
            .unwrap_or_default(),
    };
    // Likewise a pyproject.toml that cannot be read.
    let requires = ci_project::python::requires_python(dir).ok().flatten();
    if asked.is_empty() && requires.is_none() {
        return Ok(Pythons::Server);
    }
    let views: Vec<PythonView> = match client.get_json("/v1/pythons").await {
        Ok(views) => views,
        Err(RequestError::Http(404, _)) => {
            if flag.is_some() {
                notice("the server lists no Pythons (it is older than --python): running on its one image");
            }
            return Ok(Pythons::Server);
        }
        Err(e) => return Err(e.into()),
    };
    let (decided, note) = decide(&asked, requires.as_ref(), &views);
    if let Some(note) = note {
        notice(&note);
    }
    Ok(decided)
}

/// The refusal, and the server's images that are not ready (their Python is not known, so it
/// may be the one asked for).
fn refusal(e: &ChoiceError, views: &[PythonView]) -> String {
    let not_ready: Vec<String> = views
        .iter()
        .filter(|v| v.status != ImageStatus::Ready)
        .map(|v| format!("{} ({})", v.image, v.status))
        .collect();
    if not_ready.is_empty() {
        e.to_string()
    } else {
        format!("{e}; not ready: {} (see ci pythons)", not_ready.join(", "))
    }
}

/// The choice from what the server listed, and the note that says why it is not the default.
fn decide(
    asked: &[String],
    requires: Option<&(String, String)>,
    views: &[PythonView],
) -> (Pythons, Option<String>) {
    match ci_project::python::choose(asked, requires, &ci_project::python::available(views)) {
        // No names: nothing asked and the default not ready yet; the job runs on the default
        // whatever it turns out to be, which is the server's to decide.
        Ok(choice) if choice.names.is_empty() => (Pythons::Server, choice.note),
        Ok(choice) => (Pythons::Chosen(choice.names), choice.note),
        Err(e) => (Pythons::Refused(refusal(&e, views)), None),
    }
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

    #[tokio::test]
    async fn sends_the_directory_as_the_project_and_refuses_an_empty_one() {
        let server = server(Some(FAILED)).await;
        let parent = tempfile::tempdir().unwrap();
        let named = parent.path().join("my-lib");
        std::fs::create_dir(&named).unwrap();
        let run = |dir: &std::path::Path| {
            let argv = [
                "ci",
                "--server",
                &server.url,
                "--api-key",
                "ci_test",
                "submit",
                "test",
                "-C",
            ];
            let mut argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
            argv.push(dir.to_str().unwrap().to_string());
            crate::run(crate::Cli::try_parse_from(argv).unwrap())
        };
        // Nothing to pack, or only what is left out: refused, nothing sent.
        assert_eq!(run(&named).await, crate::exit::CLIENT_ERROR);
        std::fs::write(named.join(".env"), "SECRET=1").unwrap();
        assert_eq!(run(&named).await, crate::exit::CLIENT_ERROR);
        assert!(server.requests().is_empty(), "{:?}", server.requests());
        std::fs::write(named.join("test_a.py"), "def test_a(): pass\n").unwrap();
        assert_eq!(run(&named).await, 1);
        assert_eq!(posts(&server), ["/v1/jobs?project=my-lib"]);
        // A name the server would refuse is not sent.
        assert_eq!(
            super::project_name(std::path::Path::new("/srv/a\u{7}b")),
            None
        );
        assert_eq!(super::project_name(std::path::Path::new("/")), None);
    }

    const PYTHONS: &str = r#"[
        {"name":"3.11","version":"3.11.2","implementation":"cpython","image":"python:3.11-slim","digest":null,"default":true,"status":"ready","error":null},
        {"name":"3.13","version":"3.13.5","implementation":"cpython","image":"python:3.13-slim","digest":null,"default":false,"status":"ready","error":null},
        {"name":"3.12","version":"3.12.9","implementation":"cpython","image":"python:3.12-slim","digest":null,"default":false,"status":"preparing","error":null}
    ]"#;

    /// A server with three images (3.12 not ready), where a submission becomes the run of
    /// `run::tests` (3.11 passed, 3.13 failed); `pythons: false` is a server from before
    /// several images (404).
    async fn server_of_pythons(pythons: bool) -> Fake {
        use crate::run::tests::{answer, job_json};
        Fake::start(
            move |req| match (req.method.as_str(), req.target.as_str()) {
                ("GET", "/v1/pythons") if pythons => Reply::json(200, PYTHONS),
                ("POST", t) if t.starts_with("/v1/jobs") => {
                    Reply::json(201, &job_json("0a0000000001", "3.11", "queued", "", "null"))
                }
                (_, t) => answer(t, false),
            },
        )
        .await
    }

    /// Runs `ci` in a project whose pyproject.toml is `pyproject` (none if empty).
    async fn ci_in(server: &Fake, pyproject: &str, args: &[&str]) -> u8 {
        let project = tempfile::tempdir().unwrap();
        std::fs::write(project.path().join("test_a.py"), "def test_a(): pass\n").unwrap();
        if !pyproject.is_empty() {
            std::fs::write(project.path().join("pyproject.toml"), pyproject).unwrap();
        }
        let dir = project.path().to_str().unwrap();
        let mut argv = vec!["ci", "--server", &server.url, "--api-key", "ci_test"];
        argv.extend(args);
        argv.extend(["-C", dir]);
        crate::run(crate::Cli::try_parse_from(argv).unwrap()).await
    }

    #[tokio::test]
    async fn an_unknown_python_is_refused_before_any_upload() {
        let server = server_of_pythons(true).await;
        // 3.12 is listed, but not ready.
        for asked in ["3.10", "3.11,3.12"] {
            let code = ci_in(&server, "", &["submit", "test", "--python", asked]).await;
            assert_eq!(code, crate::exit::CLIENT_ERROR, "{asked}");
        }
        // Nor from the project's own list.
        let config = "[tool.ci]\npython = [\"3.10\"]\n";
        assert_eq!(ci_in(&server, config, &["submit", "test"]).await, 2);
        assert!(posts(&server).is_empty(), "{:?}", server.requests());
        let views: Vec<ci_protocol::PythonView> = serde_json::from_str(PYTHONS).unwrap();
        let (refused, note) = super::decide(&["3.10".to_string()], None, &views);
        let super::Pythons::Refused(e) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(
            e,
            "the server has no Python 3.10: it has 3.11 (default), 3.13; \
             not ready: python:3.12-slim (preparing) (see ci pythons)"
        );
        assert_eq!(note, None);
    }

    #[tokio::test]
    async fn requires_python_chooses_and_says_why() {
        let views: Vec<ci_protocol::PythonView> = serde_json::from_str(PYTHONS).unwrap();
        let requires = Some((">=3.12".to_string(), "pyproject.toml".to_string()));
        let (chosen, note) = super::decide(&[], requires.as_ref(), &views);
        assert_eq!(chosen, super::Pythons::Chosen(vec!["3.13".into()]));
        assert_eq!(
            note.as_deref(),
            Some("requires-python \">=3.12\" (pyproject.toml) excludes the default Python 3.11 (3.11.2): running on 3.13 (3.13.5)")
        );
        // The choice is sent, so that the server runs what was said.
        let server = server_of_pythons(true).await;
        let pyproject = "[project]\nname = \"a\"\nrequires-python = \">=3.12\"\n";
        ci_in(&server, pyproject, &["submit", "test", "--async"]).await;
        let posts = posts(&server);
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert!(posts[0].contains("python=3.13"), "{posts:?}");
    }

    #[tokio::test]
    async fn a_run_of_two_pythons_is_followed_to_one_exit_code() {
        let server = server_of_pythons(true).await;
        let code = ci_in(&server, "", &["submit", "test", "--python", "3.11,3.13"]).await;
        assert_eq!(code, crate::exit::JOB_FAILED);
        let posts = posts(&server);
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert!(posts[0].contains("python=3.11%2C3.13"), "{posts:?}");
        // Both logs, whole, one after the other.
        assert_eq!(
            crate::run::tests::logs(&server),
            [
                "/v1/jobs/0a0000000001/log?offset=0",
                "/v1/jobs/0a0000000002/log?offset=0"
            ]
        );
        // `--async` follows nothing.
        let server = server_of_pythons(true).await;
        let code = ci_in(
            &server,
            "",
            &["submit", "test", "--python", "3.11,3.13", "--async"],
        )
        .await;
        assert_eq!(code, crate::exit::SUCCESS);
        assert!(crate::run::tests::logs(&server).is_empty());
    }

    #[tokio::test]
    async fn an_older_server_gets_the_submission_as_before() {
        let server = server_of_pythons(false).await;
        let pyproject = "[project]\nname = \"a\"\nrequires-python = \">=3.12\"\n";
        let code = ci_in(&server, pyproject, &["submit", "test", "--python", "3.13"]).await;
        // The fake's submission is still a run; what matters is the query.
        assert_eq!(code, crate::exit::JOB_FAILED);
        let sent = posts(&server);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(!sent[0].contains("python"), "{sent:?}");
        // Nothing said about Pythons: the list is not even asked for.
        let server = server_of_pythons(true).await;
        ci_in(&server, "", &["submit", "test", "--async"]).await;
        let requests = server.requests();
        assert!(
            !requests.iter().any(|r| r.target == "/v1/pythons"),
            "{requests:?}"
        );
        assert!(!posts(&server)[0].contains("python"));
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
        let Some(crate::Command::Rerun(args)) = cli.command else {
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
