//! The seam between the job manager and what runs a job: the manager claims a job and hands
//! it to an [`Executor`], which reports what happens through [`JobEvents`] and returns a
//! [`Verdict`]. The executor never writes a job's status; the manager does, through the
//! store's state machine.
//!
//! The server's executor runs containers ([`crate::execute::ContainerExecutor`]); tests use
//! fakes, so that the queue, cancel, shutdown and the HTTP routes run without root.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ci_protocol::TestReport;
use tokio::sync::watch;

use crate::image::ImageAdminError;
use crate::layout::JobPaths;
use crate::lifecycle::{Transition, Verdict};
use crate::logs::LiveLog;
use crate::model::{Job, Phase};
use crate::results::ResultStore;
use crate::store::JobStore;

/// Runs claimed jobs.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs `job`, whose files are in `paths`, until it ends: never fails, every failure is a
    /// verdict. Ends early with a `Cancelled` or `Lost` verdict once `stop` asks, and with
    /// `TimedOut` past the job's timeout.
    async fn run(&self, job: &Job, paths: &JobPaths, events: &JobEvents, stop: &Control)
        -> Verdict;

    /// Removes what a previous server process left running, before its jobs are settled.
    async fn reconcile(&self) {}

    /// The Pythons jobs can run on (`GET /v1/pythons`), the default first, once none is still
    /// being prepared or `wait` has passed. An executor without images of its own (the
    /// tests' fakes) has one: [`fake_python`].
    async fn pythons(&self, wait: std::time::Duration) -> Vec<ci_protocol::PythonView> {
        let _ = wait;
        vec![fake_python("3.12.0", true)]
    }

    /// How far the pull of the image a job of `python` waits for is, while one is pulled
    /// (`JobView::pull`). An executor without images pulls none.
    fn pull_progress(&self, python: Option<&str>) -> Option<ci_protocol::PullProgress> {
        let _ = python;
        None
    }

    /// The images in the executor's image cache, those it serves first
    /// (`GET /v1/admin/images`). An executor without images (the tests' fakes) has none.
    async fn images(&self) -> Result<Vec<ci_protocol::ImageView>, ImageAdminError> {
        Ok(Vec::new())
    }

    /// Serves `source` from now on, after the others (`POST /v1/admin/images`): the
    /// Python it has. An executor without images refuses.
    async fn import_image(
        &self,
        source: ci_rootfs::ImageSource,
    ) -> Result<ci_protocol::PythonView, ImageAdminError> {
        let _ = source;
        Err(ImageAdminError::Invalid(
            "this server's executor runs no images: there is nothing to import into".into(),
        ))
    }

    /// Removes the image `digest` names from the cache, and from what is served if it was
    /// imported; `busy` counts the jobs queued or running on a Python
    /// (`DELETE /v1/admin/images/{digest}`). An executor without images has none to remove.
    async fn remove_image(
        &self,
        digest: &str,
        busy: &(dyn for<'s> Fn(&'s str) -> usize + Sync),
    ) -> Result<ci_protocol::ImageView, ImageAdminError> {
        let _ = busy;
        Err(ImageAdminError::NotFound(format!("image {digest}")))
    }

    /// Upkeep while the server runs (caches, warming up); runs until the server aborts it.
    async fn maintain(&self) {
        std::future::pending::<()>().await;
    }
}

/// A ready CPython of this version, named by image `fake:<version>`.
pub fn fake_python(version: &str, default: bool) -> ci_protocol::PythonView {
    ci_protocol::PythonView {
        name: Some(ci_protocol::python_name("cpython", version)),
        version: Some(version.to_string()),
        implementation: Some("cpython".to_string()),
        image: format!("fake:{version}"),
        digest: None,
        default,
        status: ci_protocol::ImageStatus::Ready,
        error: None,
    }
}

/// Why a running job is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    /// An admin disabled the job's owner.
    UserDisabled,
    Shutdown,
    /// In a cluster: this worker's lease of the job was taken away (it was silent too long)
    /// and the job queued again or ended; what it does from here is not recorded.
    LeaseLost,
}

impl StopReason {
    /// The reason recorded for a job this stopped (shutdown makes jobs `lost`, not cancelled).
    pub fn cancel_reason(self, started: bool) -> &'static str {
        match (self, started) {
            (StopReason::UserDisabled, _) => "the user was disabled by an admin",
            (_, false) => "stopped before it started",
            (_, true) => "stopped on request",
        }
    }

    /// The verdict of a running job this stopped.
    pub fn verdict(self) -> Verdict {
        match self {
            StopReason::Cancelled | StopReason::UserDisabled => Verdict::Cancelled {
                reason: self.cancel_reason(true).into(),
            },
            StopReason::Shutdown => Verdict::Lost {
                reason: "the server shut down while the job was running".into(),
            },
            StopReason::LeaseLost => Verdict::Lost {
                reason: "its worker's lease of the job was taken away".into(),
            },
        }
    }
}

/// A handle on one running job: the manager asks it to stop, the executor waits for that.
pub struct Control {
    stop: watch::Sender<Option<StopReason>>,
    /// Whether the dispatcher has recorded the claim (or failed to).
    claimed: watch::Sender<bool>,
    /// The server's job slots, of which the job holds one: more are taken for its shards.
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control {
            stop: watch::channel(None).0,
            claimed: watch::channel(false).0,
            slots: None,
        })
    }

    /// A control whose job may take more of `slots` ([`Control::more_slots`]).
    pub fn with_slots(slots: Arc<tokio::sync::Semaphore>) -> Arc<Control> {
        Arc::new(Control {
            stop: watch::channel(None).0,
            claimed: watch::channel(false).0,
            slots: Some(slots),
        })
    }

    /// Up to `want` more job slots, as many as are free now (never waits): the job's shards
    /// beyond its first run in them, so that a sharded job never runs more containers than
    /// the server has slots. Released when the permit drops.
    pub fn more_slots(&self, want: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slots = self.slots.as_ref()?;
        (1..=want)
            .rev()
            .find_map(|n| slots.clone().try_acquire_many_owned(n).ok())
    }

    /// The dispatcher is done recording the job's claim.
    pub(crate) fn claimed(&self) {
        self.claimed.send_replace(true);
    }

    /// Resolves once the claim is recorded (or failed).
    pub(crate) async fn wait_claimed(&self) {
        let mut rx = self.claimed.subscribe();
        let _ = rx.wait_for(|claimed| *claimed).await;
    }

    /// Asks the job to stop; the first reason given stands.
    pub fn request(&self, reason: StopReason) {
        self.stop.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// The stop asked for so far, if any.
    pub fn requested(&self) -> Option<StopReason> {
        *self.stop.borrow()
    }

    /// Resolves once a stop was requested.
    pub async fn stopped(&self) -> StopReason {
        let mut rx = self.stop.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What an executor reports while a job runs: its phases (recorded, and noted in the log),
/// its output (into the log), and what it keeps when its tests end (its report, recorded
/// and kept in the results; its artifacts, kept).
pub struct JobEvents {
    id: String,
    log: Arc<LiveLog>,
    store: Arc<dyn JobStore>,
    results: Arc<dyn ResultStore>,
}

impl JobEvents {
    pub(crate) fn new(
        id: &str,
        log: Arc<LiveLog>,
        store: Arc<dyn JobStore>,
        results: impl Into<Arc<dyn ResultStore>>,
    ) -> JobEvents {
        JobEvents {
            id: id.to_string(),
            log,
            store,
            results: results.into(),
        }
    }

    /// The job's tests ended and pytest's report at `junit` reads as `report`: kept with the
    /// job (the report and a copy of the file), and its counts recorded on the job.
    pub async fn report(&self, report: TestReport, junit: PathBuf) {
        let counts = report.counts;
        if let Err(e) = self.results.keep_report(&self.id, &report, &junit).await {
            self.note(&format!("the test report could not be kept: {e}"));
            return;
        }
        if let Err(e) = self.store.apply(&self.id, &Transition::Tests(counts)).await {
            tracing::error!(job = %self.id, error = %crate::error::chain(&e), "cannot record the job's tests");
        }
    }

    /// The job's image turned out to have Python `name`: recorded on a job that had none.
    pub async fn python(&self, name: &str) {
        let transition = Transition::Python(name.to_string());
        if let Err(e) = self.store.apply(&self.id, &transition).await {
            tracing::error!(job = %self.id, error = %crate::error::chain(&e), "cannot record the job's Python");
        }
    }

    /// The job's tests ended having written `dir` (`/artifacts`): what fits in `cap` bytes is
    /// kept with the job, and the log says what and how to fetch it.
    pub async fn artifacts(&self, dir: PathBuf, cap: u64) {
        match self.results.keep_artifacts(&self.id, &dir, cap).await {
            Ok(None) => {}
            Ok(Some(packed)) => {
                let mut line = format!(
                    "kept {} artifact file{} ({}): ci artifacts {}",
                    packed.files,
                    if packed.files == 1 { "" } else { "s" },
                    crate::config::approx_size(packed.bytes),
                    self.id
                );
                if packed.left_out > 0 {
                    line.push_str(&format!(
                        "; {} entr{} left out (links, special files, or past --max-artifacts-size)",
                        packed.left_out,
                        if packed.left_out == 1 { "y" } else { "ies" }
                    ));
                }
                self.note(&line);
            }
            Err(e) => self.note(&format!("the artifacts could not be kept: {e}")),
        }
    }

    /// The job moved on to `phase`; `line` says so in its log.
    pub async fn phase(&self, phase: Phase, line: &str) {
        if let Err(e) = self.store.apply(&self.id, &Transition::Phase(phase)).await {
            tracing::error!(job = %self.id, error = %crate::error::chain(&e), "cannot record the job's phase");
        }
        self.note(line);
    }

    /// A line of the server's own in the job's log.
    pub fn note(&self, line: &str) {
        if let Err(e) = self.log.note(line) {
            tracing::warn!(job = %self.id, error = %e, "cannot write to the job's log");
        }
    }

    /// Where the job's own output goes.
    pub fn log(&self) -> &LiveLog {
        &self.log
    }
}
