//! `Job`, `Result` and `Counts`: a job as last seen, how it ended, and its tests' counts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ci_cli::client::{Client as Http, RequestError};

use crate::conn::Conn;
use ci_protocol::{JobView, TestCounts, TestReport};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;

use crate::errors::Raise;
use crate::log::LogStream;
use crate::{seconds, wait_for, warn};

/// A job on the server, as last seen; ``refresh()`` asks again.
///
/// >>> job = client.job("0a1b2c3d4e5f")          # doctest: +SKIP
/// >>> for chunk in job.follow():               # its log from now on, live
/// ...     print(chunk, end="")
/// >>> result = job.wait()
/// >>> result.status, result.counts.failed
/// ('failed', 2)
#[pyclass(frozen, module = "ci_client")]
pub struct Job {
    conn: Arc<Conn>,
    id: String,
    /// Shared with the `LogStream`s of this job, which leave the job's end here.
    view: Arc<Mutex<JobView>>,
}

impl Job {
    pub fn new(conn: Arc<Conn>, view: JobView) -> Job {
        Job {
            conn,
            id: view.id.clone(),
            view: Arc::new(Mutex::new(view)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&JobView) -> T) -> T {
        f(&self.view.lock().unwrap())
    }

    fn http(&self) -> PyResult<Arc<Http>> {
        self.conn.http().map_err(Raise::raise)
    }

    fn set(&self, view: JobView) {
        *self.view.lock().unwrap() = view;
    }
}

#[pymethods]
impl Job {
    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// ``queued``, ``running``, ``passed``, ``failed``, ``error``, ``timed_out``,
    /// ``cancelled`` or ``lost``.
    #[getter]
    fn status(&self) -> &'static str {
        self.with(|v| v.status.as_str())
    }

    /// While running: ``pulling_image``, ``installing`` or ``testing``.
    #[getter]
    fn phase(&self) -> Option<&'static str> {
        self.with(|v| v.phase.map(|p| p.as_str()))
    }

    /// Why it ended the way it did, in words, for anything but a plain pass or fail.
    #[getter]
    fn reason(&self) -> Option<String> {
        self.with(|v| v.reason.clone())
    }

    /// pytest's exit code, when it ran to the end.
    #[getter]
    fn exit_code(&self) -> Option<i32> {
        self.with(|v| v.exit_code)
    }

    #[getter]
    fn python(&self) -> Option<String> {
        self.with(|v| v.python.clone())
    }

    /// The name of the directory submitted.
    #[getter]
    fn project(&self) -> Option<String> {
        self.with(|v| v.project.clone())
    }

    /// When it was submitted (RFC 3339, UTC).
    #[getter]
    fn created(&self) -> String {
        self.with(|v| v.created.clone())
    }

    #[getter]
    fn started(&self) -> Option<String> {
        self.with(|v| v.started.clone())
    }

    #[getter]
    fn finished(&self) -> Option<String> {
        self.with(|v| v.finished.clone())
    }

    #[getter]
    fn duration_secs(&self) -> Option<f64> {
        self.with(|v| v.duration_secs)
    }

    /// 1-based place in the queue while queued.
    #[getter]
    fn queue_position(&self) -> Option<usize> {
        self.with(|v| v.queue_position)
    }

    /// Bytes in its log so far.
    #[getter]
    fn log_bytes(&self) -> u64 {
        self.with(|v| v.log_bytes)
    }

    /// Its tests' counts, once they ended and pytest's report was read.
    #[getter]
    fn counts(&self) -> Option<Counts> {
        self.with(|v| v.tests.map(Counts))
    }

    /// Its page on the server.
    #[getter]
    fn url(&self) -> PyResult<String> {
        Ok(self.http()?.job_url(&self.id))
    }

    /// Whether it has ended (any status but ``queued`` and ``running``).
    #[getter]
    fn done(&self) -> bool {
        self.with(|v| v.status.is_terminal())
    }

    /// Asks the server how the job is now; returns the job itself.
    fn refresh(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let job = slf.get();
        let http = job.http()?;
        let view = wait_for(slf.py(), http.job(&job.id))?.map_err(Raise::raise)?;
        job.set(view);
        Ok(slf)
    }

    /// Its log as it is written, chunk by chunk (``str``), until the job ends: from now on, or
    /// from its first byte with ``from_start=True``. A dropped connection is resumed at the
    /// byte where it broke, so nothing is lost or repeated (a warning is logged on the
    /// ``ci_client`` logger).
    ///
    /// >>> for chunk in job.follow(from_start=True):  # doctest: +SKIP
    /// ...     sys.stdout.write(chunk)
    #[pyo3(signature = (from_start = false))]
    fn follow(&self, py: Python<'_>, from_start: bool) -> PyResult<LogStream> {
        let http = self.http()?;
        let id = self.id.clone();
        let joined = wait_for(py, async move {
            let view = http.job(&id).await?;
            let offset = ci_cli::follow::join_at(&http, &view, from_start).await;
            Ok::<_, RequestError>((view, offset))
        })?;
        let (view, offset) = joined.map_err(Raise::raise)?;
        self.set(view);
        Ok(LogStream::start(
            self.http()?,
            self.id.clone(),
            offset,
            self.view.clone(),
        ))
    }

    /// Waits until the job ends and returns how it ended. With ``timeout`` (seconds), raises
    /// ``TimeoutError`` if it has not ended by then; the job goes on either way.
    ///
    /// >>> result = job.wait(timeout=600)            # doctest: +SKIP
    /// >>> result.ok, result.failed_tests
    /// (False, ['tests/test_calc.py::test_div'])
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Result> {
        let limit = timeout.map(seconds).transpose()?;
        let http = self.http()?;
        let id = self.id.clone();
        let ended = async move {
            let view = http.job(&id).await?;
            let view = match view.status.is_terminal() {
                true => view,
                // The log from where it stands, into nothing: the follow ends when the job
                // does, at once, and resumes as `ci wait` would.
                false => {
                    let sink = &mut std::io::sink();
                    ci_cli::follow::follow_quietly(&http, &id, view.log_bytes, sink, &warn).await?
                }
            };
            let report = ci_cli::report_if_failed(&http, &view).await;
            anyhow::Ok((view, report))
        };
        let ended = match limit {
            None => wait_for(py, ended)?,
            // The timer is made inside the runtime, whose clock it needs.
            Some(limit) => wait_for(py, async move { tokio::time::timeout(limit, ended).await })?
                .map_err(|_| {
                PyTimeoutError::new_err(format!(
                    "job {} has not ended after {}; it goes on (wait again, or cancel it)",
                    self.id,
                    humantime(limit)
                ))
            })?,
        };
        let (view, report) = ended.map_err(Raise::raise)?;
        self.set(view.clone());
        Ok(Result::new(view, report))
    }

    /// Its whole log, from the first byte to the end; waits for the end of a job still
    /// running. Raises ``NotFound`` (410) when the server removed it after its retention
    /// period (the job's record stays).
    fn log(&self, py: Python<'_>) -> PyResult<String> {
        let http = self.http()?;
        let id = self.id.clone();
        let read = wait_for(py, async move {
            let view = http.job(&id).await?;
            if view.expired {
                return Err(anyhow::Error::new(RequestError::Http(
                    410,
                    ci_cli::commands::wait::expired_line(&view),
                )));
            }
            let mut bytes = Vec::new();
            let view = ci_cli::follow::follow_quietly(&http, &id, 0, &mut bytes, &warn).await?;
            anyhow::Ok((view, bytes))
        })?;
        let (view, bytes) = read.map_err(Raise::raise)?;
        self.set(view);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Asks the server to cancel the job (queued or running); ``wait()`` then returns
    /// ``cancelled``, unless it ended first.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let http = self.http()?;
        let view = wait_for(py, cancel(&http, &self.id))?.map_err(Raise::raise)?;
        self.set(view);
        Ok(())
    }

    fn __repr__(&self) -> String {
        self.with(|v| format!("<ci_client.Job {} {}>", v.id, v.status.as_str()))
    }
}

/// `POST /v1/jobs/{id}/cancel`, as `ci cancel` sends it.
pub async fn cancel(http: &Http, id: &str) -> std::result::Result<JobView, RequestError> {
    http.post_json(&format!("/v1/jobs/{id}/cancel"), &serde_json::json!({}))
        .await
}

/// `1.5s`, `2m`.
fn humantime(d: Duration) -> String {
    match d.subsec_millis() {
        0 if d.as_secs() % 60 == 0 && d.as_secs() > 0 => format!("{}m", d.as_secs() / 60),
        0 => format!("{}s", d.as_secs()),
        _ => format!("{:.1}s", d.as_secs_f64()),
    }
}

/// How a finished job ended.
///
/// ``ok`` is true only for ``passed``; ``counts`` is there once its tests ran to the end and
/// wrote a report; ``failed_tests`` lists the node ids of those that failed or errored.
#[pyclass(frozen, module = "ci_client", get_all)]
pub struct Result {
    job_id: String,
    /// ``passed``, ``failed``, ``error``, ``timed_out``, ``cancelled`` or ``lost``.
    status: &'static str,
    reason: Option<String>,
    /// pytest's exit code, when it ran to the end.
    exit_code: Option<i32>,
    counts: Option<Counts>,
    duration_secs: Option<f64>,
    failed_tests: Vec<String>,
}

impl Result {
    fn new(view: JobView, report: Option<TestReport>) -> Result {
        Result {
            job_id: view.id,
            status: view.status.as_str(),
            reason: view.reason,
            exit_code: view.exit_code,
            counts: view.tests.map(Counts),
            duration_secs: view.duration_secs,
            failed_tests: report
                .map(|r| r.failed.into_iter().map(|t| t.node_id).collect())
                .unwrap_or_default(),
        }
    }
}

#[pymethods]
impl Result {
    /// Whether the job passed (what makes ``ci`` exit 0).
    #[getter]
    fn ok(&self) -> bool {
        self.status == "passed"
    }

    fn __bool__(&self) -> bool {
        self.ok()
    }

    fn __repr__(&self) -> String {
        let mut repr = format!("<ci_client.Result {} {}", self.job_id, self.status);
        if let Some(c) = &self.counts {
            repr.push_str(&format!(": {}", c.__repr__()));
        }
        if let Some(reason) = &self.reason {
            repr.push_str(&format!(" ({reason})"));
        }
        repr.push('>');
        repr
    }
}

/// How many tests passed, failed, ... (pytest's own counts) and pytest's time in seconds.
#[pyclass(frozen, module = "ci_client")]
#[derive(Clone)]
pub struct Counts(TestCounts);

#[pymethods]
impl Counts {
    #[getter]
    fn passed(&self) -> u64 {
        self.0.passed
    }
    #[getter]
    fn failed(&self) -> u64 {
        self.0.failed
    }
    #[getter]
    fn errors(&self) -> u64 {
        self.0.errors
    }
    #[getter]
    fn skipped(&self) -> u64 {
        self.0.skipped
    }
    #[getter]
    fn xfailed(&self) -> u64 {
        self.0.xfailed
    }
    #[getter]
    fn xpassed(&self) -> u64 {
        self.0.xpassed
    }
    #[getter]
    fn duration_secs(&self) -> f64 {
        self.0.duration_secs
    }

    fn __repr__(&self) -> String {
        let c = &self.0;
        format!(
            "{} passed, {} failed, {} errors, {} skipped",
            c.passed, c.failed, c.errors, c.skipped
        )
    }
}
