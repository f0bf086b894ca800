//! A node of a cluster (`--database-url`): what the job manager does differently when the
//! queue is a database that several nodes share ([`SharedQueue`]) instead of its own memory.
//!
//! - An api node records a submission with its upload in the database and keeps nothing of
//!   it; a worker node claims jobs under a lease, fetches the upload, unpacks it with the
//!   same safe unpacker, and runs it like a single server does.
//! - Every write of a worker after its claim carries its attempt ([`FencedStore`]): once its
//!   lease was taken away, nothing it writes is stored and its container is killed.
//! - [`heartbeats`] renews a worker's leases and brings it the stops asked from any node;
//!   [`reaper`] (on every node) requeues the jobs of a worker that went silent.
//!
//! It does not decide a job's status: that stays [`crate::lifecycle`]'s, applied by the
//! store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::lifecycle::Transition;
use crate::model::{now_ms, Job};
use crate::store::{JobStore, SharedQueue, StoreError};

/// How this node takes part in a cluster.
#[derive(Clone)]
pub struct Cluster {
    pub queue: Arc<dyn SharedQueue>,
    /// This node's name (`--node-name`).
    pub node: String,
    /// Whether it claims and runs jobs (`--role worker`).
    pub worker: bool,
    pub heartbeat: Duration,
    pub lease: Duration,
    pub retry_lost: u32,
}

/// The job store as the worker holding a job by `attempt` sees it: its transitions are
/// fenced ([`SharedQueue::apply_as`]); reads go to the store. A write refused because the
/// lease was taken away stops the job at once (`control`), without waiting for the next
/// heartbeat to say so.
pub struct FencedStore {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn SharedQueue>,
    pub node: String,
    pub attempt: i32,
    pub control: Arc<crate::executor::Control>,
}

#[async_trait]
impl JobStore for FencedStore {
    async fn next_seq(&self) -> Result<u64, StoreError> {
        self.store.next_seq().await
    }

    async fn submit(&self, job: &Job) -> Result<(), StoreError> {
        self.store.submit(job).await
    }

    async fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError> {
        let applied = self
            .queue
            .apply_as(id, &self.node, self.attempt, transition)
            .await;
        if let Err(StoreError::Fenced { .. }) = &applied {
            self.control.request(crate::executor::StopReason::LeaseLost);
        }
        applied
    }

    async fn withdraw(&self, id: &str) -> Result<(), StoreError> {
        self.store.withdraw(id).await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.store.get(id).await
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        self.store.list().await
    }

    async fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        self.store.mark_expired(id, at_ms).await
    }
}

/// A stop as the database keeps it, between the node that asked and the worker.
pub fn stop_name(reason: crate::executor::StopReason) -> &'static str {
    use crate::executor::StopReason;
    match reason {
        StopReason::Cancelled => "cancelled",
        StopReason::UserDisabled => "user_disabled",
        StopReason::Shutdown => "shutdown",
        StopReason::LeaseLost => "lease_lost",
    }
}

/// [`stop_name`] read back; an unknown name (a newer node's) is a plain cancel.
pub fn stop_from_name(name: &str) -> crate::executor::StopReason {
    use crate::executor::StopReason;
    match name {
        "user_disabled" => StopReason::UserDisabled,
        "shutdown" => StopReason::Shutdown,
        "lease_lost" => StopReason::LeaseLost,
        _ => StopReason::Cancelled,
    }
}

/// Renews the leases of the jobs this worker holds, every `--heartbeat-interval`, and hands
/// their stops to them: a cancel from any node, or the news that the lease was taken away
/// (then the job's container is killed). Runs until aborted. While the database is out,
/// the jobs go on: their leases are renewed when it is back, before any reaper may take them
/// (it waits a lease period after an outage).
pub async fn heartbeats(jobs: crate::jobs::Jobs, cluster: Arc<Cluster>) {
    let mut failing = false;
    // What this worker last told the api nodes of its Pythons.
    let mut published: Option<String> = None;
    loop {
        if cluster.worker {
            let pythons = jobs.executor().pythons(Duration::ZERO).await;
            let json = serde_json::to_string(&pythons).unwrap_or_default();
            if published.as_ref() != Some(&json) {
                match cluster.queue.publish_pythons(&cluster.node, &pythons).await {
                    Ok(()) => published = Some(json),
                    Err(e) => {
                        tracing::debug!(error = %crate::error::chain(&e), "cannot publish this worker's Pythons")
                    }
                }
            }
        }
        let held = jobs.held();
        match cluster
            .queue
            .heartbeat(&cluster.node, cluster.lease, &held)
            .await
        {
            Ok(beat) => {
                if failing {
                    tracing::info!("database reachable again: leases renewed");
                    failing = false;
                }
                for (id, reason) in beat.stop {
                    jobs.request_stop(&id, stop_from_name(&reason));
                }
                for id in beat.lost {
                    tracing::warn!(job = %id, "this worker's lease of the job was taken away: stopping it");
                    jobs.request_stop(&id, crate::executor::StopReason::LeaseLost);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot renew the leases of running jobs");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(cluster.heartbeat).await;
    }
}

/// The executor of an api-only node: it runs nothing, and offers the Pythons the workers
/// published (the most recently seen one's), so that a submission is checked against what
/// will run it.
pub struct WorkersPythons {
    pub queue: Arc<dyn SharedQueue>,
    /// How recently a worker must have been seen to count (the lease timeout).
    pub fresh: Duration,
}

#[async_trait]
impl crate::executor::Executor for WorkersPythons {
    async fn run(
        &self,
        _job: &Job,
        _paths: &crate::layout::JobPaths,
        _events: &crate::executor::JobEvents,
        _stop: &crate::executor::Control,
    ) -> crate::lifecycle::Verdict {
        crate::lifecycle::Verdict::error("this node runs no jobs (--role api)")
    }

    async fn pythons(&self, wait: Duration) -> Vec<ci_protocol::PythonView> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let pythons = self
                .queue
                .worker_pythons(self.fresh)
                .await
                .unwrap_or_default();
            let settled = pythons
                .iter()
                .all(|p| p.status != ci_protocol::ImageStatus::Preparing);
            if (!pythons.is_empty() && settled) || tokio::time::Instant::now() >= until {
                return pythons;
            }
            tokio::time::sleep(Duration::from_millis(500).min(wait)).await;
        }
    }
}

/// Requeues (or ends `lost`) the jobs whose worker's lease expired, every heartbeat interval,
/// on every node: any node may notice a silent worker. After the database was unreachable
/// it waits a whole lease period before it reaps anything, so that workers that kept running
/// through the outage renew their leases first.
pub async fn reaper(cluster: Arc<Cluster>) {
    // A node that just started has not seen the database fail, but it may have been out a
    // moment ago: workers get one lease period to renew before anything is taken from them.
    let mut resume_at = tokio::time::Instant::now() + cluster.heartbeat;
    let mut failing = false;
    loop {
        tokio::time::sleep(cluster.heartbeat).await;
        if failing {
            // Back? Then the lease period starts now.
            if cluster.queue.nodes().await.is_ok() {
                tracing::info!(wait = ?cluster.lease, "reaper: database reachable again; reaping resumes after a lease period");
                failing = false;
                resume_at = tokio::time::Instant::now() + cluster.lease;
            }
            continue;
        }
        if tokio::time::Instant::now() < resume_at {
            continue;
        }
        match cluster.queue.reap(cluster.retry_lost, now_ms()).await {
            Ok(reaped) => {
                for r in reaped {
                    if r.requeued {
                        tracing::warn!(job = %r.id, worker = %r.node, attempt = r.attempt, "worker lost: job queued again");
                    } else {
                        tracing::warn!(job = %r.id, worker = %r.node, attempt = r.attempt, "worker lost: no attempt left, job lost");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "reaper: cannot reach the database; it waits a lease period once it is back");
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::StopReason;

    #[test]
    fn stop_names_read_back() {
        for reason in [
            StopReason::Cancelled,
            StopReason::UserDisabled,
            StopReason::Shutdown,
            StopReason::LeaseLost,
        ] {
            assert_eq!(stop_from_name(stop_name(reason)), reason);
        }
        assert_eq!(stop_from_name("from-a-newer-node"), StopReason::Cancelled);
    }
}
