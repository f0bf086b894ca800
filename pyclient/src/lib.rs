//! `ci_client._native`: the `ci` client's Rust code as a Python module (PyO3).
//!
//! Nothing here talks HTTP, packs a project, resumes a log or picks an exit code by itself:
//! it calls `ci_cli`, the crate the `ci` binary is made of, and turns its answers into Python
//! objects and exceptions. `run_cli` is the binary's `main`, whole.
//!
//! Every call that waits does so with the GIL released (other Python threads run) and wakes
//! every 100 ms (`SIGNAL_CHECK`) to let Ctrl+C through as `KeyboardInterrupt`.

mod conn;
mod errors;
mod job;
mod log;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ci_cli::commands::submit::{submit_job, Submission};
use ci_protocol::{JobView, ListQuery, Status, VersionView};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use conn::{runtime, Conn};
use errors::Raise;
use job::Job;

/// How often a wait wakes to see whether Ctrl+C was pressed.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// Runs `fut` to its end with the GIL released; a Ctrl+C meanwhile drops it and raises
/// `KeyboardInterrupt`.
fn wait_for<T: Send>(py: Python<'_>, fut: impl Future<Output = T> + Send) -> PyResult<T> {
    let mut fut = Box::pin(fut);
    loop {
        // The timer is made inside the runtime, whose clock it needs.
        let step = py.detach(|| {
            runtime().block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut fut).await })
        });
        match step {
            Ok(value) => return Ok(value),
            Err(_) => py.check_signals()?,
        }
    }
}

/// Logs `line` on the `ci_client` logger as a warning: what `ci` would have printed on stderr
/// (a retry, a lost connection).
fn warn(line: &str) {
    Python::attach(|py| {
        let logged = py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", ("ci_client",)))
            .and_then(|logger| logger.call_method1("warning", ("%s", line)));
        if let Err(e) = logged {
            e.write_unraisable(py, None);
        }
    })
}

/// A connection to a ci server.
///
/// Settings are found as the ``ci`` command finds them: the arguments, else the environment
/// (``CI_SERVER_URL``, ``CI_API_KEY``), else ``~/.ci/config`` (``server_url=``, ``api_key=``),
/// else ``http://127.0.0.1:8000``. A client can be shared by threads, and used
/// in a child process after ``fork``.
///
/// >>> client = ci_client.Client()                      # doctest: +SKIP
/// >>> job = client.submit("my-project", pytest_args=["-x"])
/// >>> job.wait().ok
/// True
#[pyclass(frozen, module = "ci_client")]
struct Client {
    conn: Arc<Conn>,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (server = None, api_key = None))]
    fn new(server: Option<String>, api_key: Option<String>) -> PyResult<Client> {
        let settings = match ci_cli::config::resolve_from_env(server, api_key, &warn) {
            Ok(Some(settings)) => settings,
            Ok(None) => return Err(errors::auth(
                "no API key: pass api_key=, set CI_API_KEY, or put api_key=<key> in ~/.ci/config",
            )),
            Err(e) => return Err(e.raise()),
        };
        let conn = Conn::new(settings).map_err(Raise::raise)?;
        Ok(Client {
            conn: Arc::new(conn),
        })
    }

    /// The server's URL, as resolved.
    #[getter]
    fn server(&self) -> String {
        self.conn.base().to_string()
    }

    /// Packs the project at ``path`` (what ``.gitignore`` ignores, hidden files and
    /// virtualenvs stay out), uploads it and returns its job, queued.
    ///
    /// ``pytest_args`` go to pytest after ``--``; ``timeout`` (seconds) stops the job after
    /// that long; ``python`` picks one of the server's Pythons (``"3.13"``). A project whose
    /// ``[tool.ci] python`` lists several is refused (``ProjectError``): submit one per call.
    /// While the server is busy (503) the upload is tried again for two minutes.
    ///
    /// >>> job = client.submit(".", pytest_args=["-k", "fast"], timeout=300)  # doctest: +SKIP
    #[pyo3(signature = (path = None, pytest_args = Vec::new(), timeout = None, python = None))]
    fn submit(
        &self,
        py: Python<'_>,
        path: Option<PathBuf>,
        pytest_args: Vec<String>,
        timeout: Option<f64>,
        python: Option<String>,
    ) -> PyResult<Job> {
        let timeout = timeout.map(seconds).transpose()?;
        let dir = path.unwrap_or_else(|| PathBuf::from("."));
        let submission = Submission {
            dir: &dir,
            timeout,
            shards: None,
            python: python.as_deref(),
            pytest_args: &pytest_args,
            failed_from: None,
            one_job: true,
        };
        let http = self.conn.http().map_err(Raise::raise)?;
        let view = wait_for(py, submit_job(&http, &submission, &warn))?.map_err(Raise::raise)?;
        Ok(Job::new(self.conn.clone(), view))
    }

    /// The job ``id``, as the server has it now.
    fn job(&self, py: Python<'_>, id: &str) -> PyResult<Job> {
        let http = self.conn.http().map_err(Raise::raise)?;
        let view = wait_for(py, http.job(id))?.map_err(Raise::raise)?;
        Ok(Job::new(self.conn.clone(), view))
    }

    /// Your jobs, newest first: at most ``limit``, only those with ``status`` (``"failed"``,
    /// ``"running"``, ...) or of ``project`` (the name of the directory submitted).
    ///
    /// >>> [j.id for j in client.jobs(limit=5, status="failed")]  # doctest: +SKIP
    #[pyo3(signature = (limit = None, status = None, project = None))]
    fn jobs(
        &self,
        py: Python<'_>,
        limit: Option<usize>,
        status: Option<&str>,
        project: Option<String>,
    ) -> PyResult<Vec<Job>> {
        let status = status
            .map(|s| {
                s.parse::<Status>().map_err(|_| {
                    let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                    PyValueError::new_err(format!(
                        "unknown status {s:?}: one of {}",
                        known.join(", ")
                    ))
                })
            })
            .transpose()?;
        let query = ListQuery {
            project: project.clone(),
            ..ListQuery::new(limit, status)
        };
        let http = self.conn.http().map_err(Raise::raise)?;
        let views: Vec<JobView> =
            wait_for(py, http.get_json_with("/v1/jobs", &query))?.map_err(Raise::raise)?;
        Ok(views
            .into_iter()
            // A server older than projects ignores `project=`.
            .filter(|v| project.is_none() || v.project == project)
            .map(|v| Job::new(self.conn.clone(), v))
            .collect())
    }

    /// Asks the server to cancel job ``id`` (queued or running); returns the job as it was
    /// when asked. Cancelling a finished job changes nothing.
    fn cancel(&self, py: Python<'_>, id: &str) -> PyResult<Job> {
        let http = self.conn.http().map_err(Raise::raise)?;
        let view = wait_for(py, job::cancel(&http, id))?.map_err(Raise::raise)?;
        Ok(Job::new(self.conn.clone(), view))
    }

    /// The server's version (``GET /v1/version``, which needs no key).
    fn server_version(&self, py: Python<'_>) -> PyResult<String> {
        let http = self.conn.http().map_err(Raise::raise)?;
        let view: VersionView =
            wait_for(py, http.get_json("/v1/version"))?.map_err(Raise::raise)?;
        Ok(view.version)
    }

    fn __repr__(&self) -> String {
        format!("ci_client.Client(server={:?})", self.conn.base())
    }
}

/// Seconds as a Python number, as a duration; a positive, finite number only.
fn seconds(secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("not a positive number of seconds: {secs}")))
}

/// The `ci` command: runs it with `argv` (`sys.argv`) and ends the process with its exit code,
/// as the `ci` binary would. Never returns.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<u8> {
    let code = py.detach(|| ci_cli::main(argv));
    // The exit code is the process's, as the binary's is: Python's own shutdown (and a
    // KeyboardInterrupt pending from the Ctrl+C that `ci` already answered) is skipped.
    std::process::exit(i32::from(code))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Client>()?;
    m.add_class::<Job>()?;
    m.add_class::<log::LogStream>()?;
    m.add_class::<job::Result>()?;
    m.add_class::<job::Counts>()?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    errors::register(m)?;
    Ok(())
}
