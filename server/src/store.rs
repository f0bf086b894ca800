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
    #[error("job store: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
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
