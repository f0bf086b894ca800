//! A cancel that arrives while the dispatcher is taking the job from the queue: the job has
//! left the queue but its record does not say `running` yet. A store that holds every claim
//! until the test lets it go makes that window as wide as the test needs.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use ci_protocol::{JobView, Status};
use ci_server::db::Db;
use ci_server::executor::StopReason;
use ci_server::lifecycle::Transition;
use ci_server::model::Job;
use ci_server::store::{JobStore, StoreError};
use tokio::sync::watch;

use crate::support::*;

/// The sled store, with claims held at a gate.
struct GatedClaims {
    db: Db,
    /// Ids whose claim waits at the gate.
    waiting: watch::Sender<Vec<String>>,
    open: watch::Sender<bool>,
}

#[async_trait]
impl JobStore for GatedClaims {
    async fn next_seq(&self) -> Result<u64, StoreError> {
        self.db.next_seq().await
    }

    async fn submit(&self, job: &Job) -> Result<(), StoreError> {
        self.db.submit(job).await
    }

    async fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError> {
        if matches!(transition, Transition::Claim { .. }) {
            self.waiting.send_modify(|w| w.push(id.to_string()));
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
        }
        self.db.apply(id, transition).await
    }

    async fn withdraw(&self, id: &str) -> Result<(), StoreError> {
        self.db.withdraw(id).await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.db.get(id).await
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        self.db.list().await
    }

    async fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        self.db.mark_expired(id, at_ms).await
    }
}

/// A server whose store holds claims; a job of Ann's that the dispatcher has taken from the
/// queue, held before its claim is recorded.
async fn job_in_the_claim_window() -> (TestApp, String, String, Arc<GatedClaims>) {
    let mut gated = None;
    let app = TestApp::open_with_store(
        tempfile::tempdir().unwrap(),
        FakeExecutor::holding(),
        &["--max-jobs", "1"],
        |db| {
            let store = Arc::new(GatedClaims {
                db,
                waiting: watch::channel(Vec::new()).0,
                open: watch::channel(false).0,
            });
            gated = Some(store.clone());
            store
        },
    )
    .await;
    let gated = gated.unwrap();
    let key = app.user("ann@example.com").await;
    let id = app.submit(&key).await.id;
    within(
        "the dispatcher to claim the job",
        gated.waiting.subscribe().wait_for(|w| w.contains(&id)),
    )
    .await
    .unwrap();
    (app, key, id, gated)
}

/// [`job_in_the_claim_window`], cancelled there; the cancel's answer.
async fn cancel_in_the_claim_window() -> (TestApp, String, String, JobView, Arc<GatedClaims>) {
    let (app, key, id, gated) = job_in_the_claim_window().await;
    let answer: JobView = app.cancel(&key, &id).await.expect(StatusCode::OK).json();
    (app, key, id, answer, gated)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_while_the_dispatcher_claims_the_job_stops_it() {
    let (app, key, id, _, gated) = cancel_in_the_claim_window().await;
    // The record still says queued, though no queue holds it.
    let now = app.job(&key, &id).await;
    assert_eq!((now.status, now.queue_position), (Status::Queued, None));
    assert_eq!(app.fake.runs(&id), 0);

    gated.open.send_replace(true);
    let done = app.wait_ended(&key, &id).await;
    assert_eq!(done.status, Status::Cancelled);
    assert_eq!(done.reason.as_deref(), Some("stopped on request"));
    assert_eq!(app.fake.stop_seen(&id), Some(StopReason::Cancelled));
    assert_eq!(app.fake.runs(&id), 1);
    assert!(app.job_dirs().is_empty());
}
