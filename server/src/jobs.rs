//! The job manager: accepts jobs, keeps the queue, runs at most `max_jobs` at once, and takes
//! cancel, timeout and shutdown requests. It owns every job's status transitions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::task::TaskTracker;

use crate::db::Db;
use crate::error::ApiError;
use crate::execute::{self, RunContext};
use crate::logs::{LiveLog, LogStore};
use crate::model::{now_ms, Job, Status};
use crate::queue::{FairQueue, Refusal, UserCaps};

/// How much the job manager runs and keeps waiting.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Jobs running at once, all users together.
    pub max_jobs: usize,
    /// The longest timeout a job may have.
    pub max_timeout: Duration,
    pub per_user: UserCaps,
}

/// What a client over a per-user cap is told to wait before it submits again.
const RETRY_AFTER_SECS: u64 = 30;

/// Why a running job is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    /// An admin disabled the job's owner.
    UserDisabled,
    Shutdown,
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
}

/// A handle on one running job.
pub struct Control {
    stop: watch::Sender<Option<StopReason>>,
}

impl Control {
    fn new() -> Arc<Control> {
        Arc::new(Control {
            stop: watch::channel(None).0,
        })
    }

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

#[derive(Default)]
struct Inner {
    queue: FairQueue,
    /// Running jobs by id: their owner and the handle to stop them.
    running: HashMap<String, (String, Arc<Control>)>,
    accepting: bool,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    db: Db,
    logs: LogStore,
    run: Arc<RunContext>,
    inner: Arc<Mutex<Inner>>,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    limits: Limits,
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable("the server is shutting down and takes no new jobs".into())
}

impl Jobs {
    pub fn new(db: Db, logs: LogStore, run: Arc<RunContext>, limits: Limits) -> Jobs {
        Jobs {
            db,
            logs,
            run,
            inner: Arc::new(Mutex::new(Inner {
                accepting: true,
                ..Inner::default()
            })),
            wake: Arc::new(Notify::new()),
            slots: Arc::new(Semaphore::new(limits.max_jobs)),
            tasks: TaskTracker::new(),
            limits,
        }
    }

    /// Settles what a previous server process left: running jobs become `lost` (their
    /// containers were already removed by the caller), queued jobs go back in the queue.
    pub async fn recover(&self) -> Result<(), ApiError> {
        for mut job in self.db.jobs()? {
            match job.status {
                Status::Running => {
                    let reason = "the server stopped while the job was running".to_string();
                    job.status = Status::Lost;
                    job.phase = None;
                    job.finished_ms = Some(now_ms());
                    job.reason = Some(reason);
                    self.db.put_job(&job)?;
                    self.run.remove_job_dir(&job.id);
                    tracing::warn!(job = %job.id, "job was running when the server stopped: marked lost");
                }
                Status::Queued => {
                    // Followers wait on the live log until the job runs.
                    self.logs.open_live(&job.id, self.run.log_cap)?;
                    self.inner.lock().expect("jobs lock").queue.push(
                        &job.owner,
                        &job.id,
                        job.seq,
                        job.upload_bytes,
                    );
                }
                _ => {}
            }
        }
        self.db.flush().await?;
        // A job directory without a queued job is what an upload cut short by a crash left.
        let queued: std::collections::HashSet<String> = self
            .inner
            .lock()
            .expect("jobs lock")
            .queue
            .ids()
            .into_iter()
            .collect();
        let run = self.run.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let entries = std::fs::read_dir(&run.jobs_dir).into_iter().flatten().flatten();
            for entry in entries {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !queued.contains(&name) {
                    tracing::info!(dir = %entry.path().display(), "removing a job directory no queued job owns");
                    run.remove_job_dir(&name);
                }
            }
        })
        .await;
        self.wake.notify_one();
        Ok(())
    }

    /// The timeout a job gets: the client's wish, never more than the server's limit.
    pub fn timeout_for(&self, requested: Option<u64>) -> u64 {
        let max = self.limits.max_timeout.as_secs().max(1);
        requested.map_or(max, |r| r.clamp(1, max))
    }

    /// Whether `owner` may submit a job now: checked before the upload is read, so a user
    /// over a cap is told at once (429) and sends nothing.
    pub fn admits(&self, owner: &str) -> Result<(), ApiError> {
        self.admits_bytes(owner, 0)
    }

    /// Records a new job whose project is already unpacked, and queues it. Refused (429) when
    /// its owner is over a per-user cap.
    pub async fn submit(&self, job: Job) -> Result<usize, ApiError> {
        self.admits_bytes(&job.owner, job.upload_bytes)?;
        self.db.put_job(&job)?;
        self.db.flush().await?;
        // The log is live from now on, so a client that follows a queued job waits for its
        // output instead of polling. A waiting client is told where it stands.
        let log = self.logs.open_live(&job.id, self.run.log_cap)?;
        match self.enqueue(&job, &log)? {
            Ok(position) => {
                self.wake.notify_one();
                Ok(position)
            }
            Err(refusal) => {
                self.withdraw(&job.id).await;
                Err(self.refusal(refusal))
            }
        }
    }

    /// Puts a recorded job in the queue, or refuses it, under one lock with the check: uploads
    /// of one user that finish at once cannot pass a cap together. A waiting job's log says
    /// where it stands, written under the lock so that it comes before anything the job
    /// itself writes. Returns its place.
    fn enqueue(&self, job: &Job, log: &LiveLog) -> std::io::Result<Result<usize, Refusal>> {
        let mut inner = self.inner.lock().expect("jobs lock");
        let caps = self.limits.per_user;
        if let Err(refusal) = inner.queue.admits(&job.owner, job.upload_bytes, caps) {
            return Ok(Err(refusal));
        }
        inner
            .queue
            .push(&job.owner, &job.id, job.seq, job.upload_bytes);
        let position = inner.queue.position(&job.id).unwrap_or(1);
        let mine_running = inner.queue.running_of(&job.owner);
        if inner.running.len() + position > self.limits.max_jobs {
            log.note(&format!(
                "waiting for a free slot: position {position} in the queue"
            ))?;
        } else if mine_running >= caps.running {
            log.note(&format!(
                "waiting: {mine_running} of your jobs are running, the most this server runs per user"
            ))?;
        }
        Ok(Ok(position))
    }

    /// Forgets a job that was recorded but refused before it was queued: its record and its
    /// log (the caller removes its directory).
    async fn withdraw(&self, id: &str) {
        self.logs.close(id);
        if let Err(e) = self.logs.remove(id) {
            tracing::warn!(job = %id, error = %e, "cannot remove the log of a refused job");
        }
        if let Err(e) = self.db.remove_job(id) {
            tracing::error!(job = %id, error = %e, "cannot remove the record of a refused job");
        }
        let _ = self.db.flush().await;
    }

    /// Whether `owner` may queue one more job whose upload holds `bytes`.
    fn admits_bytes(&self, owner: &str, bytes: u64) -> Result<(), ApiError> {
        let inner = self.inner.lock().expect("jobs lock");
        if !inner.accepting {
            return Err(shutting_down());
        }
        inner
            .queue
            .admits(owner, bytes, self.limits.per_user)
            .map_err(|r| self.refusal(r))
    }

    fn refusal(&self, refusal: Refusal) -> ApiError {
        let message = match refusal {
            Refusal::TooManyQueued { queued } => format!(
                "you have {queued} jobs waiting, the most this server queues per user \
                 (--max-queued-per-user); submit again when some have run"
            ),
            Refusal::TooManyBytes { queued_bytes } => format!(
                "your waiting jobs hold {} of uploads and this one would pass the {} per user \
                 (--max-queued-size-per-user); submit again when some have run",
                crate::config::format_size(queued_bytes),
                crate::config::format_size(self.limits.per_user.queued_bytes)
            ),
        };
        ApiError::TooManyRequests {
            message,
            retry_after_secs: RETRY_AFTER_SECS,
        }
    }

    /// 1-based place of a queued job, in the order jobs will start if none ends meanwhile.
    pub fn queue_position(&self, id: &str) -> Option<usize> {
        self.inner.lock().expect("jobs lock").queue.position(id)
    }

    /// Cancels a queued or running job. Returns the job as it is after the request.
    pub async fn cancel(&self, job: Job) -> Result<Job, ApiError> {
        self.stop(job, StopReason::Cancelled).await
    }

    /// Stops every queued or running job of a user (who was just disabled); returns how many.
    pub async fn stop_all_of(&self, owner: &str) -> Result<usize, ApiError> {
        let jobs: Vec<Job> = self
            .db
            .jobs()?
            .into_iter()
            .filter(|j| j.owner == owner && !j.status.is_terminal())
            .collect();
        let count = jobs.len();
        for job in jobs {
            match self.stop(job, StopReason::UserDisabled).await {
                // It ended on its own in between.
                Ok(_) | Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }

    async fn stop(&self, job: Job, reason: StopReason) -> Result<Job, ApiError> {
        if job.status.is_terminal() {
            return Err(ApiError::Conflict(format!(
                "job {} already ended ({})",
                job.id,
                job.status.as_str()
            )));
        }
        let control = {
            let mut inner = self.inner.lock().expect("jobs lock");
            if inner.queue.remove(&job.id) {
                None
            } else {
                inner.running.get(&job.id).map(|(_, c)| c.clone())
            }
        };
        match control {
            Some(control) => {
                control.request(reason);
                Ok(job)
            }
            None => {
                // It was still queued: nothing runs, end it here.
                let mut job = job;
                let why = reason.cancel_reason(false);
                job.status = Status::Cancelled;
                job.finished_ms = Some(now_ms());
                job.reason = Some(why.into());
                self.db.put_job(&job)?;
                self.db.flush().await?;
                self.run.remove_job_dir(&job.id);
                Ok(job)
            }
        }
    }

    /// Takes jobs from the queue as slots free up, until shutdown: users take turns
    /// ([`FairQueue::pop`]). A job is taken from the queue and marked running under one lock,
    /// so a cancel always finds it in one of the two.
    pub async fn dispatch(self) {
        loop {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let (id, owner, control) = loop {
                let notified = self.wake.notified();
                {
                    let mut inner = self.inner.lock().expect("jobs lock");
                    if !inner.accepting {
                        return;
                    }
                    if let Some((owner, id)) = inner.queue.pop(self.limits.per_user) {
                        let control = Control::new();
                        inner
                            .running
                            .insert(id.clone(), (owner.clone(), control.clone()));
                        break (id, owner, control);
                    }
                }
                notified.await;
            };
            let job = match self.db.job(&id) {
                Ok(Some(job)) if job.status == Status::Queued => Some(job),
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "cannot read queued job");
                    None
                }
            };
            let Some(job) = job else {
                self.ended(&id, &owner);
                continue;
            };
            let this = self.clone();
            self.tasks.spawn(async move {
                execute::run_job(&this.run, &this.db, &this.logs, job, &control).await;
                this.ended(&id, &owner);
                drop(permit);
            });
        }
    }

    /// A job taken by [`Self::dispatch`] is over: its owner may have the next turn.
    fn ended(&self, id: &str, owner: &str) {
        let mut inner = self.inner.lock().expect("jobs lock");
        inner.running.remove(id);
        inner.queue.finished(owner);
        drop(inner);
        // A user held back by the per-user running cap may go now.
        self.wake.notify_one();
    }

    /// Stops taking jobs, lets running ones go on for `grace`, then stops them (they end as
    /// `lost`), and waits until every container is gone.
    pub async fn shutdown(&self, grace: Duration) {
        let running = {
            let mut inner = self.inner.lock().expect("jobs lock");
            inner.accepting = false;
            inner.running.len()
        };
        self.wake.notify_waiters();
        self.tasks.close();
        if running > 0 {
            tracing::info!(running, grace = ?grace, "waiting for running jobs");
        }
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            let controls: Vec<_> = self
                .inner
                .lock()
                .expect("jobs lock")
                .running
                .values()
                .map(|(_, c)| c.clone())
                .collect();
            tracing::warn!(
                jobs = controls.len(),
                "grace period over: stopping running jobs"
            );
            for c in controls {
                c.request(StopReason::Shutdown);
            }
            self.tasks.wait().await;
        }
        // Jobs still queued stay queued for the next start; their followers' streams end here
        // (they reconnect to the next server) so that the HTTP server can finish.
        let queued = self.inner.lock().expect("jobs lock").queue.ids();
        for id in queued {
            self.logs.close(&id);
        }
    }
}
