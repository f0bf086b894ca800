//! Where job records live, as a trait: the job manager, the API and retention see only
//! [`JobStore`]. Today's implementation is sled ([`crate::db::Db`]); [`MemoryJobs`] serves
//! fast tests; a database shared by several servers is another.
//!
//! Every change of a job's status goes through [`JobStore::apply`], which runs the state
//! machine of [`crate::lifecycle`] atomically against the stored record: two writers (a
//! cancel and the job's own end, or two servers) cannot both win.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::lifecycle::{self, Illegal, Transition};
use crate::model::Job;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Illegal(#[from] Illegal),
    /// The worker's claim of the job was taken away (its lease expired and another worker
    /// claimed it, or it was requeued): nothing it writes is stored any more.
    #[error("job {id}: attempt {attempt} no longer holds it")]
    Fenced { id: String, attempt: i32 },
    /// The shared database cannot be reached now: worth retrying (the API answers 503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("job store: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

/// A job a worker node claimed from a [`SharedQueue`]: the record after the claim and the
/// attempt it holds it by (the fencing token every later write of that worker carries).
#[derive(Clone, Debug)]
pub struct Claimed {
    pub job: Job,
    pub attempt: i32,
}

/// What a heartbeat learned about the jobs a node holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Held jobs someone asked to stop (cancel from any api node, owner disabled), with the
    /// reason as stored (`StopReason::as_str`).
    pub stop: Vec<(String, String)>,
    /// Held jobs this node no longer holds by that attempt: their leases were taken away.
    /// The node kills their containers; their writes are refused anyway.
    pub lost: Vec<String>,
}

/// A job whose worker's lease expired, as the reaper settled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub id: String,
    /// The node that held it.
    pub node: String,
    /// The attempt that was lost.
    pub attempt: i32,
    /// Queued again for another attempt (`true`), or ended `lost` (retries used up).
    pub requeued: bool,
}

/// Why a shared submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitRefused {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The owner is over a per-user cap, counted in the database under the owner's lock.
    #[error("over a per-user cap")]
    OverCap(crate::queue::Refusal),
}

/// The queue of a cluster, in a database several nodes share: api nodes submit and cancel,
/// worker nodes claim jobs under a lease, renew it by heartbeat, and every node's reaper
/// requeues the jobs of a worker that went silent. Every write of a worker after its claim
/// is fenced by its attempt ([`StoreError::Fenced`]). The embedded single-node store has no
/// such queue: its job manager keeps the queue in memory.
#[async_trait]
pub trait SharedQueue: Send + Sync + 'static {
    /// Records a queued job and its upload (the client's gzipped tar, read from `upload` to
    /// its end, in chunks) in one transaction, after checking the owner's per-user queue
    /// caps under a lock of that owner; then wakes the workers.
    async fn submit_with_upload(
        &self,
        job: &Job,
        upload: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        caps: crate::queue::UserCaps,
    ) -> Result<(), SubmitRefused>;

    /// Writes the stored upload of a job (for the worker that claimed it) to `to`, a chunk
    /// at a time; `false` when it is gone.
    async fn upload_to(
        &self,
        id: &str,
        to: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<bool, StoreError>;

    /// Claims the next job for `node`: among owners with fewer than `caps.running` jobs
    /// running on this node (the flag is each server's), the one with the fewest jobs running
    /// in the whole cluster, then the oldest job (`FOR UPDATE SKIP LOCKED`, so claiming
    /// workers never wait on each other). The job becomes running with `attempt + 1`, this
    /// node, and a lease of `lease` from the database's now.
    async fn claim(
        &self,
        node: &str,
        lease: std::time::Duration,
        caps: crate::queue::UserCaps,
    ) -> Result<Option<Claimed>, StoreError>;

    /// Renews, in one statement, the leases of the jobs `node` holds (`held`: id and
    /// attempt), records that the node is alive, and says which of them were asked to stop
    /// and which it no longer holds.
    async fn heartbeat(
        &self,
        node: &str,
        lease: std::time::Duration,
        held: &[(String, i32)],
    ) -> Result<Heartbeat, StoreError>;

    /// [`JobStore::apply`] by the worker that claimed the job with `attempt`: refused with
    /// [`StoreError::Fenced`] when the job is no longer held by that attempt on that node.
    async fn apply_as(
        &self,
        id: &str,
        node: &str,
        attempt: i32,
        transition: &crate::lifecycle::Transition,
    ) -> Result<Job, StoreError>;

    /// Stops a job from any node: a queued one is cancelled at once (the record after it is
    /// returned); a running one gets `reason` stored for its worker's next heartbeat (the
    /// record as it is is returned). [`StoreError::Illegal`] for an ended job.
    async fn request_stop(
        &self,
        id: &str,
        reason: &str,
        cancel_reason: &str,
        at_ms: i64,
    ) -> Result<Job, StoreError>;

    /// Settles running jobs whose lease expired by the database's clock: each is queued
    /// again (node cleared, so the old worker is fenced at once) while it has had at most
    /// `retry_lost` retries, else it ends `lost`; either way a line
    /// `==> worker NODE lost; attempt N` (or that it is lost for good) is appended to its log
    /// in the same transaction.
    async fn reap(&self, retry_lost: u32, at_ms: i64) -> Result<Vec<Reaped>, StoreError>;

    /// 1-based place of a queued job in submission order; `None` when it is not queued.
    async fn queue_position(&self, id: &str) -> Result<Option<usize>, StoreError>;

    /// Records this node at start (its roles and version), and forgets nodes silent for a
    /// day.
    async fn register_node(&self, node: &str, roles: &str, version: &str)
        -> Result<(), StoreError>;

    /// The nodes and how many seconds ago each was last seen, by the database's clock.
    async fn nodes(&self) -> Result<Vec<NodeSeen>, StoreError>;

    /// Records the Pythons a worker's images have (what its `GET /v1/pythons` would say).
    async fn publish_pythons(
        &self,
        node: &str,
        pythons: &[ci_protocol::PythonView],
    ) -> Result<(), StoreError>;

    /// The Pythons of the worker seen most recently within `fresh` that published any:
    /// what an api node without images of its own offers. Empty when no worker is alive.
    async fn worker_pythons(
        &self,
        fresh: std::time::Duration,
    ) -> Result<Vec<ci_protocol::PythonView>, StoreError>;

    /// Resolves when a job may be waiting for a worker: a `NOTIFY` after a submission or a
    /// requeue, or `poll` elapsed (a notification may be lost: it is only a wake-up).
    async fn wait_for_work(&self, poll: std::time::Duration);
}

/// A node of the cluster as the database last saw it.
#[derive(Clone, Debug)]
pub struct NodeSeen {
    pub name: String,
    pub roles: String,
    pub version: String,
    pub seen_secs_ago: f64,
}

/// The job records. Every write is durable when it returns: a client is told of a job
/// (201) or of its end only after the record would survive a crash of the server.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// A new submission number, greater than every one handed out before.
    async fn next_seq(&self) -> Result<u64, StoreError>;

    /// Records a new job (queued).
    async fn submit(&self, job: &Job) -> Result<(), StoreError>;

    /// Applies `transition` to the stored record, atomically; returns the record after it.
    /// Refused ([`StoreError::Illegal`], nothing changed) when the job is not in the status
    /// the transition leaves from.
    async fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError>;

    /// Forgets a job that was recorded but refused before it was queued.
    async fn withdraw(&self, id: &str) -> Result<(), StoreError>;

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Every job, oldest first.
    async fn list(&self) -> Result<Vec<Job>, StoreError>;

    /// Records that a finished job's log was removed at `at_ms` (retention); `false` when
    /// the job is missing, not finished, or already expired.
    async fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, StoreError>;
}

/// Job records in memory, for tests: the same behaviour as the durable stores, nothing kept.
#[derive(Default)]
pub struct MemoryJobs {
    inner: Mutex<(u64, HashMap<String, Job>)>,
}

#[async_trait]
impl JobStore for MemoryJobs {
    async fn next_seq(&self) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().expect("jobs lock");
        inner.0 += 1;
        Ok(inner.0)
    }

    async fn submit(&self, job: &Job) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().expect("jobs lock");
        inner.1.insert(job.id.clone(), job.clone());
        Ok(())
    }

    async fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError> {
        let mut inner = self.inner.lock().expect("jobs lock");
        let job = inner
            .1
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.into()))?;
        let mut next = job.clone();
        lifecycle::apply(&mut next, transition)?;
        *job = next.clone();
        Ok(next)
    }

    async fn withdraw(&self, id: &str) -> Result<(), StoreError> {
        self.inner.lock().expect("jobs lock").1.remove(id);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        Ok(self.inner.lock().expect("jobs lock").1.get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs: Vec<Job> = self
            .inner
            .lock()
            .expect("jobs lock")
            .1
            .values()
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    async fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().expect("jobs lock");
        match inner.1.get_mut(id) {
            Some(job) if job.status.is_terminal() && job.expired_ms.is_none() => {
                job.expired_ms = Some(at_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// One suite of behaviour every [`JobStore`] must show; each implementation runs it.
#[cfg(test)]
pub mod conformance {
    use super::*;
    use crate::lifecycle::Verdict;
    use crate::model::{Phase, Status};

    pub fn job(id: &str, seq: u64) -> Job {
        Job {
            pytest_args: vec!["-k".into(), "x".into()],
            upload_bytes: 10,
            ..Job::queued(id, "u", seq, 1, 60)
        }
    }

    /// Runs every check against a fresh, empty store from `new`.
    pub async fn run<S: JobStore>(new: impl Fn() -> S) {
        sequence_numbers_increase(&new()).await;
        a_submitted_job_reads_back_whole(&new()).await;
        a_job_lives_through_its_transitions(&new()).await;
        illegal_transitions_change_nothing(&new()).await;
        concurrent_claims_have_one_winner(&new()).await;
        a_late_finish_does_not_overwrite_a_cancel(&new()).await;
        withdraw_forgets_the_job(&new()).await;
        list_is_oldest_first(&new()).await;
        only_finished_jobs_expire_and_only_once(&new()).await;
    }

    async fn sequence_numbers_increase(store: &impl JobStore) {
        let a = store.next_seq().await.unwrap();
        let b = store.next_seq().await.unwrap();
        assert!(b > a, "{a} then {b}");
    }

    async fn a_submitted_job_reads_back_whole(store: &impl JobStore) {
        store.submit(&job("a", 1)).await.unwrap();
        let back = store.get("a").await.unwrap().unwrap();
        assert_eq!(format!("{back:?}"), format!("{:?}", job("a", 1)));
        assert!(store.get("missing").await.unwrap().is_none());
    }

    async fn a_job_lives_through_its_transitions(store: &impl JobStore) {
        store.submit(&job("a", 1)).await.unwrap();
        let running = store
            .apply("a", &Transition::Claim { at_ms: 2 })
            .await
            .unwrap();
        assert_eq!(running.status, Status::Running);
        store
            .apply("a", &Transition::Phase(Phase::Installing))
            .await
            .unwrap();
        assert_eq!(
            store.get("a").await.unwrap().unwrap().phase,
            Some(Phase::Installing)
        );
        let done = store
            .apply(
                "a",
                &Transition::Finish {
                    verdict: Verdict::Failed,
                    at_ms: 3,
                },
            )
            .await
            .unwrap();
        assert_eq!((done.status, done.exit_code), (Status::Failed, Some(1)));
        let stored = store.get("a").await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Failed);
        assert_eq!((stored.started_ms, stored.finished_ms), (Some(2), Some(3)));
    }

    async fn illegal_transitions_change_nothing(store: &impl JobStore) {
        store.submit(&job("a", 1)).await.unwrap();
        let finish = Transition::Finish {
            verdict: Verdict::Passed,
            at_ms: 2,
        };
        assert!(matches!(
            store.apply("a", &finish).await,
            Err(StoreError::Illegal(_))
        ));
        assert_eq!(
            store.get("a").await.unwrap().unwrap().status,
            Status::Queued
        );
        assert!(matches!(
            store.apply("nope", &finish).await,
            Err(StoreError::NotFound(_))
        ));
    }

    async fn concurrent_claims_have_one_winner(store: &impl JobStore) {
        store.submit(&job("a", 1)).await.unwrap();
        let claim = Transition::Claim { at_ms: 2 };
        let (x, y) = futures_util::join!(store.apply("a", &claim), store.apply("a", &claim));
        assert_eq!(
            usize::from(x.is_ok()) + usize::from(y.is_ok()),
            1,
            "{x:?} {y:?}"
        );
    }

    async fn a_late_finish_does_not_overwrite_a_cancel(store: &impl JobStore) {
        store.submit(&job("a", 1)).await.unwrap();
        let cancel = Transition::CancelQueued {
            reason: "stopped before it started".into(),
            at_ms: 2,
        };
        store.apply("a", &cancel).await.unwrap();
        let finish = Transition::Finish {
            verdict: Verdict::error("late"),
            at_ms: 3,
        };
        assert!(store.apply("a", &finish).await.is_err());
        let stored = store.get("a").await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Cancelled);
        assert_eq!(stored.reason.as_deref(), Some("stopped before it started"));
    }

    async fn withdraw_forgets_the_job(store: &impl JobStore) {
        store.submit(&job("a", 1)).await.unwrap();
        store.withdraw("a").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
        store.withdraw("a").await.unwrap();
    }

    async fn list_is_oldest_first(store: &impl JobStore) {
        for (id, seq) in [("c", 30), ("a", 10), ("b", 20)] {
            store.submit(&job(id, seq)).await.unwrap();
        }
        let ids: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    async fn only_finished_jobs_expire_and_only_once(store: &impl JobStore) {
        store.submit(&job("done", 1)).await.unwrap();
        store.submit(&job("busy", 2)).await.unwrap();
        let cancel = Transition::CancelQueued {
            reason: "r".into(),
            at_ms: 2,
        };
        store.apply("done", &cancel).await.unwrap();
        assert!(store.mark_expired("done", 10).await.unwrap());
        assert!(!store.mark_expired("done", 20).await.unwrap());
        assert_eq!(
            store.get("done").await.unwrap().unwrap().expired_ms,
            Some(10)
        );
        assert!(!store.mark_expired("busy", 10).await.unwrap());
        assert!(!store.mark_expired("missing", 10).await.unwrap());
    }

    #[tokio::test]
    async fn memory_store_conforms() {
        run(MemoryJobs::default).await;
    }
}
