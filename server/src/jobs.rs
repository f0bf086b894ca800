//! The job manager: the one owner of every job's life. It accepts jobs, keeps the queue,
//! runs at most `max_jobs` at once through an [`Executor`], takes cancel, timeout and
//! shutdown requests, and records every status change through the store's state machine
//! ([`crate::lifecycle`]). It also owns each job's directory once the job is submitted, and
//! removes it when the job ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, FencedStore};
use crate::error::chain;
pub use crate::executor::{Control, StopReason};
use crate::executor::{Executor, JobEvents};
use crate::layout::{DataLayout, JobDir};
use crate::lifecycle::{Transition, Verdict};
use crate::logs::{LiveLog, LogStore};
use crate::model::{now_ms, Job, Status};
use crate::queue::{FairQueue, Refusal, UserCaps};
use crate::results::{ResultStore, Results};
use crate::store::{Claimed, JobStore, SharedQueue, StoreError, SubmitRefused};

/// How much the job manager runs and keeps waiting.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Jobs running at once, all users together.
    pub max_jobs: usize,
    /// The longest timeout a job may have.
    pub max_timeout: Duration,
    pub per_user: UserCaps,
    /// Bytes of output a job's log keeps (`--max-log-size`).
    pub log_cap: u64,
    /// What an upload may hold: a cluster's worker unpacks it again.
    pub upload: crate::upload::Limits,
}

/// A worker's longest wait between two looks at the database's queue when no notification
/// comes (notifications are only wake-ups: one may be lost).
const SHARED_POLL: Duration = Duration::from_secs(1);

/// How long a cluster's worker keeps trying to reach an unavailable database for what a job
/// cannot go without (its upload, the record of its end) before it gives up on it.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(600);

/// How long a cancel waits for the dispatcher to record the claim of the job it stops.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// What a client over a per-user cap is told to wait before it submits again.
const RETRY_AFTER_SECS: u64 = 30;

/// Why the job manager refused a request.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("the server is shutting down and takes no new jobs")]
    ShuttingDown,
    /// The caller is over one of its per-user caps.
    #[error("{message}")]
    OverCap {
        message: String,
        retry_after_secs: u64,
    },
    #[error("job {id} already ended ({})", status.as_str())]
    Ended { id: String, status: Status },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to open the job's log")]
    Log(#[source] std::io::Error),
}

#[derive(Default)]
struct Inner {
    queue: FairQueue,
    /// Running jobs by id: their owner and the handle to stop them.
    running: HashMap<String, (String, Arc<Control>)>,
    /// In a cluster, the jobs this worker holds and by which attempt (their leases).
    held: HashMap<String, i32>,
    accepting: bool,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn JobStore>,
    logs: Arc<dyn LogStore>,
    executor: Arc<dyn Executor>,
    layout: DataLayout,
    inner: Arc<Mutex<Inner>>,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    limits: Limits,
    results: Arc<dyn ResultStore>,
    /// `Some` when the queue is a database several nodes share.
    cluster: Option<Arc<Cluster>>,
}

impl Jobs {
    pub fn new(
        store: Arc<dyn JobStore>,
        logs: Arc<dyn LogStore>,
        executor: Arc<dyn Executor>,
        layout: DataLayout,
        limits: Limits,
    ) -> Jobs {
        let layout_results = layout.results();
        Jobs {
            store,
            logs,
            executor,
            layout,
            inner: Arc::new(Mutex::new(Inner {
                accepting: true,
                ..Inner::default()
            })),
            wake: Arc::new(Notify::new()),
            slots: Arc::new(Semaphore::new(limits.max_jobs)),
            tasks: TaskTracker::new(),
            results: Arc::new(Results::new(layout_results)),
            limits,
            cluster: None,
        }
    }

    /// Keeps what ended jobs keep (reports, artifacts) in `results` instead of the data
    /// directory.
    pub fn with_results(mut self, results: Arc<dyn ResultStore>) -> Jobs {
        self.results = results;
        self
    }

    /// Makes this job manager a node of `cluster`: its queue is the database's.
    pub fn with_cluster(mut self, cluster: Cluster) -> Jobs {
        self.cluster = Some(Arc::new(cluster));
        self
    }

    /// The cluster this node is part of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The jobs this worker holds, with their attempts (for the heartbeat).
    pub fn held(&self) -> Vec<(String, i32)> {
        let inner = self.inner.lock().expect("jobs lock");
        inner.held.iter().map(|(id, a)| (id.clone(), *a)).collect()
    }

    /// Asks a job running here to stop, if it runs here.
    pub fn request_stop(&self, id: &str, reason: StopReason) {
        let inner = self.inner.lock().expect("jobs lock");
        if let Some((_, control)) = inner.running.get(id) {
            control.request(reason);
        }
    }

    /// Settles what a previous server process left: its containers are removed, running
    /// jobs become `lost`, queued jobs go back in the queue, and job directories that no
    /// queued job owns (an upload cut short by a crash) are removed.
    pub async fn recover(&self) -> Result<(), JobsError> {
        if let Some(cluster) = &self.cluster {
            // The records are the cluster's: a job this node ran before it stopped is
            // queued again by a reaper once its lease expires. What is local goes.
            if cluster.worker {
                self.executor.reconcile().await;
            }
            let layout = self.layout.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for name in layout.job_dirs() {
                    layout.remove_job_dir_now(&name);
                }
            })
            .await;
            return Ok(());
        }
        self.executor.reconcile().await;
        for job in self.store.list().await? {
            match job.status {
                Status::Running => {
                    let lose = Transition::Lose {
                        reason: "the server stopped while the job was running".into(),
                        at_ms: now_ms(),
                    };
                    self.store.apply(&job.id, &lose).await?;
                    self.layout.remove_job_dir(&job.id).await;
                    tracing::warn!(job = %job.id, "job was running when the server stopped: marked lost");
                }
                Status::Queued => {
                    // Followers wait on the live log until the job runs.
                    self.open_log(&job.id).await?;
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
        let queued: std::collections::HashSet<String> = self
            .inner
            .lock()
            .expect("jobs lock")
            .queue
            .ids()
            .into_iter()
            .collect();
        let layout = self.layout.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in layout.job_dirs() {
                if !queued.contains(&name) {
                    tracing::info!(job = %name, "removing a job directory no queued job owns");
                    layout.remove_job_dir_now(&name);
                }
            }
        })
        .await;
        self.wake.notify_one();
        Ok(())
    }

    async fn open_log(&self, id: &str) -> Result<Arc<LiveLog>, JobsError> {
        self.logs
            .open_live(id, self.limits.log_cap)
            .await
            .map_err(JobsError::Log)
    }

    /// The timeout a job gets: the client's wish, never more than the server's limit.
    pub fn timeout_for(&self, requested: Option<u64>) -> u64 {
        let max = self.limits.max_timeout.as_secs().max(1);
        requested.map_or(max, |r| r.clamp(1, max))
    }

    /// Whether `owner` may submit a job now: checked before the upload is read, so a user
    /// over a cap is told at once (429) and sends nothing.
    pub fn admits(&self, owner: &str) -> Result<(), JobsError> {
        self.admits_bytes(owner, 0)
    }

    /// Whether `owner` may queue `count` more jobs at once (a run of several Pythons).
    pub fn admits_many(&self, owner: &str, count: usize) -> Result<(), JobsError> {
        let inner = self.inner.lock().expect("jobs lock");
        if !inner.accepting {
            return Err(JobsError::ShuttingDown);
        }
        if self.cluster.is_some() {
            // Counted by the database as each job is recorded.
            return Ok(());
        }
        let queued = inner.queue.queued_by(owner);
        if queued + count > self.limits.per_user.queued {
            return Err(JobsError::OverCap {
                message: format!(
                    "{count} jobs (one per Python) and the {queued} you have waiting would pass \
                     the {} this server queues per user (--max-queued-per-user)",
                    self.limits.per_user.queued
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        Ok(())
    }

    /// The executor, for what it says of itself (its Pythons).
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// Records a new job whose project is unpacked in `dir`, and queues it; from here the
    /// job manager owns the directory. Refused when the server shuts down or the owner is
    /// over a per-user cap: then nothing of the job stays. Returns its place in the queue.
    ///
    /// In a cluster, `upload` is the client's archive as it came: stored with the job for the
    /// worker that runs it (`None` only on a single server).
    pub async fn submit(
        &self,
        job: Job,
        dir: JobDir,
        upload: Option<&std::path::Path>,
    ) -> Result<usize, JobsError> {
        debug_assert_eq!(job.id, dir.id());
        if let Some(cluster) = &self.cluster {
            // The upload was unpacked here to check it; a worker unpacks it again from the
            // database.
            dir.remove().await;
            if !self.inner.lock().expect("jobs lock").accepting {
                return Err(JobsError::ShuttingDown);
            }
            let Some(upload) = upload else {
                return Err(JobsError::Log(std::io::Error::other(
                    "a cluster's submission came without its upload",
                )));
            };
            let mut file = tokio::fs::File::open(upload)
                .await
                .map_err(JobsError::Log)?;
            return match cluster
                .queue
                .submit_with_upload(&job, &mut file, self.limits.per_user)
                .await
            {
                Ok(()) => Ok(cluster.queue.queue_position(&job.id).await?.unwrap_or(1)),
                Err(SubmitRefused::OverCap(r)) => Err(self.refusal(r)),
                Err(SubmitRefused::Store(e)) => Err(e.into()),
            };
        }
        // Whatever refuses the job, its directory is gone before the answer.
        if let Err(e) = self.admits_bytes(&job.owner, job.upload_bytes) {
            dir.remove().await;
            return Err(e);
        }
        if let Err(e) = self.store.submit(&job).await {
            dir.remove().await;
            return Err(e.into());
        }
        // The log is live from now on, so a client that follows a queued job waits for its
        // output instead of polling. A waiting client is told where it stands.
        let queued = match self.open_log(&job.id).await {
            Ok(log) => self.enqueue(&job, &log),
            Err(e) => Err(e),
        };
        match queued {
            Ok(position) => {
                dir.keep();
                self.wake.notify_one();
                Ok(position)
            }
            Err(e) => {
                self.withdraw(&job.id).await;
                dir.remove().await;
                Err(e)
            }
        }
    }

    /// Puts a recorded job in the queue, or refuses it, under one lock with the check: uploads
    /// of one user that finish at once cannot pass a cap together. A waiting job's log says
    /// where it stands, written under the lock so that it comes before anything the job
    /// itself writes. Returns its place.
    fn enqueue(&self, job: &Job, log: &LiveLog) -> Result<usize, JobsError> {
        let mut inner = self.inner.lock().expect("jobs lock");
        if !inner.accepting {
            return Err(JobsError::ShuttingDown);
        }
        let caps = self.limits.per_user;
        inner
            .queue
            .admits(&job.owner, job.upload_bytes, caps)
            .map_err(|r| self.refusal(r))?;
        inner
            .queue
            .push(&job.owner, &job.id, job.seq, job.upload_bytes);
        let position = inner.queue.position(&job.id).unwrap_or(1);
        let mine_running = inner.queue.running_of(&job.owner);
        let note = if inner.running.len() + position > self.limits.max_jobs {
            Some(format!(
                "waiting for a free slot: position {position} in the queue"
            ))
        } else if mine_running >= caps.running {
            Some(format!(
                "waiting: {mine_running} of your jobs are running, the most this server runs per user"
            ))
        } else {
            None
        };
        if let Some(note) = note {
            if let Err(e) = log.note(&note) {
                tracing::warn!(job = %job.id, error = %e, "cannot write to the job's log");
            }
        }
        Ok(position)
    }

    /// Forgets a job that was recorded but refused before it was queued: its record and its
    /// log.
    async fn withdraw(&self, id: &str) {
        self.logs.close(id).await;
        if let Err(e) = self.logs.remove(id).await {
            tracing::warn!(job = %id, error = %e, "cannot remove the log of a refused job");
        }
        if let Err(e) = self.store.withdraw(id).await {
            tracing::error!(job = %id, error = %chain(&e), "cannot remove the record of a refused job");
        }
    }

    /// Whether `owner` may queue one more job whose upload holds `bytes`.
    fn admits_bytes(&self, owner: &str, bytes: u64) -> Result<(), JobsError> {
        let inner = self.inner.lock().expect("jobs lock");
        if !inner.accepting {
            return Err(JobsError::ShuttingDown);
        }
        if self.cluster.is_some() {
            // Counted by the database as the job is recorded.
            return Ok(());
        }
        inner
            .queue
            .admits(owner, bytes, self.limits.per_user)
            .map_err(|r| self.refusal(r))
    }

    fn refusal(&self, refusal: Refusal) -> JobsError {
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
        JobsError::OverCap {
            message,
            retry_after_secs: RETRY_AFTER_SECS,
        }
    }

    /// The stop asked of a job the dispatcher has taken, if any.
    pub fn stop_requested(&self, id: &str) -> Option<StopReason> {
        let inner = self.inner.lock().expect("jobs lock");
        inner.running.get(id).and_then(|(_, c)| c.requested())
    }

    /// 1-based place of a queued job, in the order jobs will start if none ends meanwhile
    /// (in a cluster, in submission order: the database's queue).
    pub async fn queue_position(&self, id: &str) -> Option<usize> {
        match &self.cluster {
            Some(cluster) => cluster.queue.queue_position(id).await.ok().flatten(),
            None => self.inner.lock().expect("jobs lock").queue.position(id),
        }
    }

    /// Cancels a queued or running job. Returns the job as it is after the request.
    pub async fn cancel(&self, job: Job) -> Result<Job, JobsError> {
        self.stop(job, StopReason::Cancelled).await
    }

    /// Stops every queued or running job of a user (who was just disabled); returns how many.
    pub async fn stop_all_of(&self, owner: &str) -> Result<usize, JobsError> {
        let jobs: Vec<Job> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|j| j.owner == owner && !j.status.is_terminal())
            .collect();
        let count = jobs.len();
        for job in jobs {
            match self.stop(job, StopReason::UserDisabled).await {
                // It ended on its own in between.
                Ok(_) | Err(JobsError::Ended { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }

    async fn stop(&self, job: Job, reason: StopReason) -> Result<Job, JobsError> {
        let ended = |job: &Job| JobsError::Ended {
            id: job.id.clone(),
            status: job.status,
        };
        if job.status.is_terminal() {
            return Err(ended(&job));
        }
        if let Some(cluster) = &self.cluster {
            let asked = cluster
                .queue
                .request_stop(
                    &job.id,
                    crate::cluster::stop_name(reason),
                    reason.cancel_reason(false),
                    now_ms(),
                )
                .await;
            return match asked {
                Ok(now) => Ok(now),
                Err(StoreError::Illegal(_)) => {
                    let now = self.store.get(&job.id).await?.unwrap_or(job);
                    Err(ended(&now))
                }
                Err(e) => Err(e.into()),
            };
        }
        // A job is either in the queue or running (the dispatcher moves it under this
        // lock), or it has ended.
        enum Found {
            Queued,
            Running(Arc<Control>),
            Gone,
        }
        let found = {
            let mut inner = self.inner.lock().expect("jobs lock");
            if inner.queue.remove(&job.id) {
                Found::Queued
            } else {
                match inner.running.get(&job.id) {
                    Some((_, control)) => Found::Running(control.clone()),
                    None => Found::Gone,
                }
            }
        };
        match found {
            Found::Queued => {}
            Found::Running(control) => {
                control.request(reason);
                // The dispatcher may be recording the claim right now (a matter of
                // milliseconds): the answer is the record after it, running and being
                // stopped or already ended, not the queued one read before.
                let _ = tokio::time::timeout(CLAIM_WAIT, control.wait_claimed()).await;
                let now = self.store.get(&job.id).await?.unwrap_or(job);
                return Ok(now);
            }
            Found::Gone => {
                // Another cancel took it from the queue a moment ago and is recording it:
                // this one is answered with where that one ends.
                let mut now = job;
                for _ in 0..250 {
                    now = self.store.get(&now.id).await?.unwrap_or(now);
                    if now.status.is_terminal() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Err(ended(&now));
            }
        }
        // It was still queued: nothing runs, end it here.
        let cancel = Transition::CancelQueued {
            reason: reason.cancel_reason(false).into(),
            at_ms: now_ms(),
        };
        let job = self.store.apply(&job.id, &cancel).await?;
        self.layout.remove_job_dir(&job.id).await;
        self.logs.close(&job.id).await;
        Ok(job)
    }

    /// Takes jobs from the queue as slots free up, until shutdown: users take turns
    /// ([`FairQueue::pop`]). A job is taken from the queue and marked running under one lock,
    /// so a cancel always finds it in one of the two.
    pub async fn dispatch(self) {
        if let Some(cluster) = self.cluster.clone() {
            if cluster.worker {
                self.dispatch_shared(cluster).await;
            }
            return;
        }
        loop {
            // A slot is taken only once a job can run: an idle dispatcher holds none, so
            // that a running job may take the free ones for its shards.
            loop {
                let notified = self.wake.notified();
                {
                    let inner = self.inner.lock().expect("jobs lock");
                    if !inner.accepting {
                        return;
                    }
                    if inner.queue.ready(self.limits.per_user) {
                        break;
                    }
                }
                notified.await;
            }
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let (id, owner, control, token) = {
                let mut inner = self.inner.lock().expect("jobs lock");
                if !inner.accepting {
                    return;
                }
                // Cancelled, or its user at the cap, while the slot was awaited.
                let Some((owner, id)) = inner.queue.pop(self.limits.per_user) else {
                    continue;
                };
                let control = Control::with_slots(self.slots.clone());
                inner
                    .running
                    .insert(id.clone(), (owner.clone(), control.clone()));
                // Counted by the tracker from here, under the lock that shutdown takes
                // too: a shutdown that begins while the claim is recorded waits for this
                // job like for any running one.
                (id, owner, control, self.tasks.token())
            };
            // Claims are recorded one at a time, in the queue's order, so jobs start in it.
            let claim = Transition::Claim { at_ms: now_ms() };
            let claimed = self.store.apply(&id, &claim).await;
            control.claimed();
            let job = match claimed {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(job = %id, error = %chain(&e), "cannot start a queued job");
                    self.ended(&id, &owner);
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.run(job, &control).await;
                this.ended(&id, &owner);
                drop(permit);
                drop(token);
            });
        }
    }

    /// A worker's dispatcher: claims jobs from the database as slots free up, until shutdown.
    async fn dispatch_shared(self, cluster: Arc<Cluster>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let notified = self.wake.notified();
            if !self.inner.lock().expect("jobs lock").accepting {
                return;
            }
            let claimed = cluster
                .queue
                .claim(&cluster.node, cluster.lease, self.limits.per_user)
                .await;
            let claimed = match claimed {
                Ok(Some(claimed)) => {
                    backoff = Duration::from_millis(100);
                    claimed
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = cluster.queue.wait_for_work(SHARED_POLL) => {}
                        _ = notified => {}
                    }
                    continue;
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %chain(&e), "cannot claim a job");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let (id, owner) = (claimed.job.id.clone(), claimed.job.owner.clone());
            let (control, token) = {
                let mut inner = self.inner.lock().expect("jobs lock");
                let control = Control::with_slots(self.slots.clone());
                inner
                    .running
                    .insert(id.clone(), (owner.clone(), control.clone()));
                inner.held.insert(id.clone(), claimed.attempt);
                (control, self.tasks.token())
            };
            control.claimed();
            let this = self.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                this.run_shared(claimed, &cluster, &control).await;
                {
                    let mut inner = this.inner.lock().expect("jobs lock");
                    inner.running.remove(&id);
                    inner.held.remove(&id);
                }
                drop(permit);
                drop(token);
            });
        }
    }

    /// Runs a job this worker claimed: its upload is fetched and unpacked into a job
    /// directory here, and every write is fenced by the claim's attempt.
    async fn run_shared(&self, claimed: Claimed, cluster: &Cluster, control: &Arc<Control>) {
        let Claimed { job, attempt } = claimed;
        tracing::info!(job = %job.id, attempt, "job claimed");
        let fenced: Arc<dyn JobStore> = Arc::new(FencedStore {
            store: self.store.clone(),
            queue: cluster.queue.clone(),
            node: cluster.node.clone(),
            attempt,
            control: control.clone(),
        });
        let log = match self.open_log(&job.id).await {
            Ok(log) => log,
            Err(e) => {
                let verdict = Verdict::error(format!("cannot open the job's log: {}", chain(&e)));
                self.finish_with(&fenced, &job, verdict).await;
                return;
            }
        };
        if attempt > 1 {
            let _ = log.note(&format!("attempt {attempt}, on worker {}", cluster.node));
        }
        let verdict = match self.fetch_upload(&job, &cluster.queue).await {
            Ok(()) => {
                let events = JobEvents::new(&job.id, log, fenced.clone(), self.results.clone());
                let paths = self.layout.job_paths(&job.id);
                self.executor.run(&job, &paths, &events, control).await
            }
            Err(reason) => Verdict::error(reason),
        };
        if control.requested() == Some(StopReason::Shutdown) {
            // This worker stops; the job is not lost: another worker runs it again.
            self.requeue(&fenced, &job, &cluster.node).await;
            return;
        }
        self.finish_with(&fenced, &job, verdict).await;
    }

    /// Hands a job this worker stopped for its shutdown back to the cluster's queue: its log
    /// says so and is stored whole first; the next attempt, on any worker, goes on with it.
    async fn requeue(&self, store: &Arc<dyn JobStore>, job: &Job, node: &str) {
        if let Ok(log) = self.open_log(&job.id).await {
            let _ = log.note(&format!(
                "worker {node} shut down: the job goes back to the queue"
            ));
        }
        self.layout.remove_job_dir(&job.id).await;
        self.logs.close(&job.id).await;
        match store.apply(&job.id, &Transition::Requeue).await {
            Ok(_) => tracing::info!(job = %job.id, "job queued again for another worker"),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %chain(&e), "cannot queue the job again")
            }
        }
    }

    /// Unpacks the stored upload of `job` into its directory here, with the same checks as
    /// the api node made when it arrived.
    async fn fetch_upload(&self, job: &Job, queue: &Arc<dyn SharedQueue>) -> Result<(), String> {
        let dir = self.layout.new_job_dir(&job.id);
        let archive = dir.path().join("upload.tar.gz");
        let fetch = async {
            tokio::fs::create_dir_all(dir.path()).await?;
            let mut file = tokio::fs::File::create(&archive).await?;
            let mut fetched = queue.upload_to(&job.id, &mut file).await;
            let give_up = tokio::time::Instant::now() + OUTAGE_PATIENCE;
            while matches!(fetched, Err(StoreError::Unavailable(_)))
                && tokio::time::Instant::now() < give_up
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
                file = tokio::fs::File::create(&archive).await?;
                fetched = queue.upload_to(&job.id, &mut file).await;
            }
            file.sync_data().await?;
            Ok::<_, std::io::Error>(fetched)
        };
        match fetch.await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err("the job's upload is missing from the database".into()),
            Ok(Err(e)) => return Err(format!("cannot fetch the job's upload: {}", chain(&e))),
            Err(e) => return Err(format!("cannot fetch the job's upload: {e}")),
        }
        let limits = self.limits.upload;
        let unpacked = tokio::task::spawn_blocking(move || {
            let project = dir.path().join("project");
            let result = fs_err::create_dir_all(&project)
                .and_then(|()| fs_err::File::open(&archive))
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    crate::upload::unpack(std::io::BufReader::new(file), &project, limits)
                        .map_err(|e| e.to_string())
                });
            let _ = fs_err::remove_file(&archive);
            match result {
                Ok(_) => {
                    dir.keep();
                    Ok(())
                }
                Err(e) => {
                    dir.remove_now();
                    Err(e)
                }
            }
        })
        .await;
        match unpacked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot unpack the job's upload: {e}")),
            Err(e) => Err(format!("cannot unpack the job's upload: {e}")),
        }
    }

    /// Runs a claimed job to its end and records how it ended.
    async fn run(&self, job: Job, control: &Control) {
        tracing::info!(job = %job.id, "job started");
        let waited = job.started_ms.unwrap_or(0).saturating_sub(job.created_ms);
        crate::timing::record(
            &job.id,
            "queued",
            std::time::Duration::from_millis(waited.max(0) as u64),
        );
        let _whole = crate::timing::step(&job.id, "job (claimed to recorded end)");
        let verdict = match self.open_log(&job.id).await {
            Ok(log) => {
                let events = JobEvents::new(&job.id, log, self.store.clone(), self.results());
                let paths = self.layout.job_paths(&job.id);
                self.executor.run(&job, &paths, &events, control).await
            }
            Err(e) => Verdict::error(format!("cannot open the job's log: {}", chain(&e))),
        };
        self.finish(&job, verdict).await;
    }

    /// Records a running job's end. Its directory goes first, so that a client told the job
    /// ended finds nothing of it left; the log ends last, after the record, so a follower
    /// that reaches the log's end reads the final status. The result is not written into the
    /// log, where a job's output could imitate it.
    async fn finish(&self, job: &Job, verdict: Verdict) {
        let store = self.store.clone();
        self.finish_with(&store, job, verdict).await;
    }

    /// [`Self::finish`] through `store` (a worker's fenced view of it, in a cluster).
    async fn finish_with(&self, store: &Arc<dyn JobStore>, job: &Job, verdict: Verdict) {
        let _finish = crate::timing::step(&job.id, "finish: directory removed, end recorded");
        self.layout.remove_job_dir(&job.id).await;
        let finish = Transition::Finish {
            verdict,
            at_ms: now_ms(),
        };
        // In a cluster, an end reached while the database is out is recorded once it is back
        // (the job's lease is renewed meanwhile: it is still held here).
        let mut recorded = store.apply(&job.id, &finish).await;
        let give_up = tokio::time::Instant::now() + OUTAGE_PATIENCE;
        let mut wait = Duration::from_millis(250);
        while matches!(recorded, Err(StoreError::Unavailable(_)))
            && tokio::time::Instant::now() < give_up
        {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            recorded = store.apply(&job.id, &finish).await;
        }
        match recorded {
            Ok(ended) => {
                let secs = (ended.finished_ms.unwrap_or(0) - ended.started_ms.unwrap_or(0)) as f64
                    / 1000.0;
                tracing::info!(job = %job.id, status = ended.status.as_str(), secs, "job ended");
            }
            Err(e @ StoreError::Fenced { .. }) => {
                tracing::warn!(job = %job.id, error = %chain(&e), "the job's end was not recorded: another attempt holds it")
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %chain(&e), "cannot record the job's end")
            }
        }
        self.logs.close(&job.id).await;
    }

    /// A job taken by [`Self::dispatch`] is over: its owner may have the next turn.
    fn ended(&self, id: &str, owner: &str) {
        let mut inner = self.inner.lock().expect("jobs lock");
        inner.running.remove(id);
        inner.queue.finished(owner);
        let idle = inner.running.is_empty() && inner.queue.is_empty();
        drop(inner);
        // A user held back by the per-user running cap may go now.
        self.wake.notify_one();
        // The server goes idle: what the jobs' logs, reports and uploads took is given back.
        if idle {
            tokio::task::spawn_blocking(crate::listener::trim_heap);
        }
    }

    /// The executor's upkeep, until the server aborts it.
    pub async fn maintain(&self) {
        self.executor.maintain().await;
    }

    /// The directory of a job, for the free-disk check and new ids.
    pub fn layout(&self) -> &DataLayout {
        &self.layout
    }

    /// What ended jobs keep: their reports and artifacts.
    pub fn results(&self) -> Arc<dyn ResultStore> {
        self.results.clone()
    }

    /// Whether a job directory named `id` exists (new ids must not collide); one that cannot
    /// be looked at counts as missing, as `Path::exists` has it.
    pub async fn dir_exists(&self, id: &str) -> bool {
        tokio::fs::try_exists(self.layout.job(id))
            .await
            .unwrap_or(false)
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
            self.logs.close(&id).await;
        }
    }
}
