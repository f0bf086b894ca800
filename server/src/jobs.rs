//! The job manager: accepts jobs, keeps the queue, runs at most `max_jobs` at once, and takes
//! cancel, timeout and shutdown requests. It owns every job's status transitions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::task::TaskTracker;

use crate::db::Db;
use crate::error::ApiError;
use crate::execute::{self, RunContext};
use crate::logs::LogStore;
use crate::model::{now_ms, Job, Status};

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
    queue: VecDeque<String>,
    running: HashMap<String, Arc<Control>>,
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
    max_jobs: usize,
    max_timeout: Duration,
}

impl Jobs {
    pub fn new(
        db: Db,
        logs: LogStore,
        run: Arc<RunContext>,
        max_jobs: usize,
        max_timeout: Duration,
    ) -> Jobs {
        Jobs {
            db,
            logs,
            run,
            inner: Arc::new(Mutex::new(Inner {
                accepting: true,
                ..Inner::default()
            })),
            wake: Arc::new(Notify::new()),
            slots: Arc::new(Semaphore::new(max_jobs)),
            tasks: TaskTracker::new(),
            max_jobs,
            max_timeout,
        }
    }

    /// Settles what a previous server process left: running jobs become `lost` (their
    /// containers were already removed by the caller), queued jobs go back in the queue.
    pub async fn recover(&self) -> Result<(), ApiError> {
        for mut job in self.db.jobs()? {
            match job.status {
                Status::Running => {
                    let reason = "the server stopped while the job was running".to_string();
                    self.logs
                        .note_offline(&job.id, &format!("result: lost: {reason}"))?;
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
                    self.inner
                        .lock()
                        .expect("jobs lock")
                        .queue
                        .push_back(job.id.clone());
                }
                _ => {}
            }
        }
        self.db.flush().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The timeout a job gets: the client's wish, never more than the server's limit.
    pub fn timeout_for(&self, requested: Option<u64>) -> u64 {
        let max = self.max_timeout.as_secs().max(1);
        requested.map_or(max, |r| r.clamp(1, max))
    }

    /// Records a new job whose project is already unpacked, and queues it.
    pub async fn submit(&self, job: Job) -> Result<usize, ApiError> {
        if !self.inner.lock().expect("jobs lock").accepting {
            return Err(ApiError::Unavailable(
                "the server is shutting down and takes no new jobs".into(),
            ));
        }
        self.db.put_job(&job)?;
        self.db.flush().await?;
        // The log is live from now on, so a client that follows a queued job waits for its
        // output instead of polling. A waiting client is told where it stands.
        let log = self.logs.open_live(&job.id, self.run.log_cap)?;
        let (ahead, running) = {
            let inner = self.inner.lock().expect("jobs lock");
            (inner.queue.len(), inner.running.len())
        };
        if ahead + running >= self.max_jobs {
            log.note(&format!(
                "waiting for a free slot: position {} in the queue",
                ahead + 1
            ))?;
        }
        let position = {
            let mut inner = self.inner.lock().expect("jobs lock");
            inner.queue.push_back(job.id.clone());
            inner.queue.len()
        };
        self.wake.notify_one();
        Ok(position)
    }

    /// 1-based place of a queued job.
    pub fn queue_position(&self, id: &str) -> Option<usize> {
        self.inner
            .lock()
            .expect("jobs lock")
            .queue
            .iter()
            .position(|q| q == id)
            .map(|p| p + 1)
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
            if let Some(pos) = inner.queue.iter().position(|q| *q == job.id) {
                inner.queue.remove(pos);
                None
            } else {
                inner.running.get(&job.id).cloned()
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
                self.logs
                    .note_offline(&job.id, &format!("result: cancelled: {why}"))?;
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

    /// Takes jobs from the queue as slots free up, until shutdown.
    pub async fn dispatch(self) {
        loop {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let id = loop {
                let notified = self.wake.notified();
                {
                    let mut inner = self.inner.lock().expect("jobs lock");
                    if !inner.accepting {
                        return;
                    }
                    if let Some(id) = inner.queue.pop_front() {
                        break id;
                    }
                }
                notified.await;
            };
            let job = match self.db.job(&id) {
                Ok(Some(job)) if job.status == Status::Queued => job,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "cannot read queued job");
                    continue;
                }
            };
            let control = Control::new();
            self.inner
                .lock()
                .expect("jobs lock")
                .running
                .insert(id.clone(), control.clone());
            let this = self.clone();
            self.tasks.spawn(async move {
                execute::run_job(&this.run, &this.db, &this.logs, job, &control).await;
                this.inner.lock().expect("jobs lock").running.remove(&id);
                drop(permit);
            });
        }
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
                .cloned()
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
        let queued: Vec<String> = self
            .inner
            .lock()
            .expect("jobs lock")
            .queue
            .iter()
            .cloned()
            .collect();
        for id in queued {
            self.logs.close(&id);
        }
    }
}
