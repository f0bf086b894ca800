//! Cancel in every state a job can be in, and a late verdict after a cancel.

use axum::http::StatusCode;
use ci_protocol::{JobView, Phase, Status};
use ci_server::executor::StopReason;
use ci_server::lifecycle::{Transition, Verdict};
use ci_server::store::StoreError;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_job_is_cancelled_at_once_and_never_runs() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let a1 = app.submit(&key).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&key).await.id;
    assert!(app.job_dirs().contains(&a2));
    let follower = app.follow(&key, &a2, 0);

    let cancelled: JobView = app.cancel(&key, &a2).await.expect(StatusCode::OK).json();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(
        cancelled.reason.as_deref(),
        Some("stopped before it started")
    );
    assert!(cancelled.finished.is_some() && cancelled.started.is_none());
    assert_eq!(cancelled.queue_position, None);
    app.fake.forbid(&a2);
    assert!(
        !app.job_dirs().contains(&a2),
        "the directory is gone when the cancel is answered"
    );
    // A client following its log is told the log ended.
    let followed = within("the follower of a cancelled job", follower)
        .await
        .unwrap();
    assert_eq!(
        followed.text(),
        "==> waiting for a free slot: position 1 in the queue\n"
    );

    // The slot goes to the next job, never to the cancelled one.
    let a3 = app.submit(&key).await.id;
    app.fake.release(&a1, b"", Verdict::Passed);
    app.fake.wait_started(&a3).await;
    app.fake.release(&a3, b"", Verdict::Passed);
    app.wait_ended(&key, &a3).await;
    assert_eq!(app.fake.started(), [a1, a3]);
    assert_eq!(app.fake.runs(&a2), 0);
    assert_eq!(app.job(&key, &a2).await.status, Status::Cancelled);
    assert!(app.fake.violations().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_is_stopped_and_recorded_cancelled() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let id = app.submit(&key).await.id;
    app.fake.wait_started(&id).await;
    app.wait_job(&key, &id, "testing", |j| j.phase == Some(Phase::Testing))
        .await;
    let follower = app.follow(&key, &id, 0);

    let answer: JobView = app.cancel(&key, &id).await.expect(StatusCode::OK).json();
    // The answer is the job as it was when the stop was asked for.
    assert_eq!(answer.status, Status::Running);
    let done = app.wait_ended(&key, &id).await;
    assert_eq!(done.status, Status::Cancelled);
    assert_eq!(done.reason.as_deref(), Some("stopped on request"));
    assert_eq!(done.exit_code, None);
    assert_eq!(app.fake.stop_seen(&id), Some(StopReason::Cancelled));
    assert!(!app.job_dirs().contains(&id));
    let followed = within("the follower of a stopped job", follower)
        .await
        .unwrap();
    assert_eq!(followed.text(), FAKE_LOG_START);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_an_ended_job_is_a_conflict_and_changes_nothing() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let id = app.submit(&key).await.id;
    app.fake.release(&id, b"", Verdict::Failed);
    let before = app.wait_ended(&key, &id).await;
    let refused = app.cancel(&key, &id).await.expect(StatusCode::CONFLICT);
    assert_eq!(refused.error(), format!("job {id} already ended (failed)"));
    let after = app.job(&key, &id).await;
    assert_eq!(
        (after.status, after.finished),
        (Status::Failed, before.finished)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn someone_elses_job_is_not_found_exactly_like_a_missing_one() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    let id = app.submit(&ann).await.id;
    app.fake.wait_started(&id).await;
    let missing = "0123456789ab";
    for (uri, method) in [
        ("/v1/jobs/{}/cancel", "POST"),
        ("/v1/jobs/{}", "GET"),
        ("/v1/jobs/{}/log", "GET"),
    ] {
        let answer = |job: &str| {
            let uri = uri.replace("{}", job);
            let method = method.parse().unwrap();
            let bob = bob.clone();
            let app = &app;
            async move {
                app.call(method, &uri, Some(&bob), axum::body::Body::empty())
                    .await
                    .expect(StatusCode::NOT_FOUND)
            }
        };
        let theirs = answer(&id).await;
        let nobodys = answer(missing).await;
        assert_eq!(
            theirs.error(),
            format!("job {id} not found"),
            "{method} {uri}"
        );
        assert_eq!(
            theirs.error().replace(&id, missing),
            nobodys.error(),
            "{method} {uri}"
        );
        assert_eq!(theirs.headers, nobodys.headers, "{method} {uri}");
    }
    // Bob's cancel touched nothing.
    assert_eq!(app.fake.stop_seen(&id), None);
    assert_eq!(app.job(&ann, &id).await.status, Status::Running);
}

/// Nothing the executor or the dispatcher reports after a cancel overwrites it: the store's
/// state machine refuses it. (The router cannot reach this: it is driven through the store.)
#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_after_a_cancel_changes_nothing() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let a1 = app.submit(&key).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&key).await.id;
    let cancelled: JobView = app.cancel(&key, &a2).await.expect(StatusCode::OK).json();
    assert_eq!(cancelled.status, Status::Cancelled);

    let late = [
        Transition::Claim { at_ms: 1 },
        Transition::Phase(Phase::Testing),
        Transition::Finish {
            verdict: Verdict::Passed,
            at_ms: 2,
        },
        Transition::Finish {
            verdict: Verdict::error("late"),
            at_ms: 3,
        },
        Transition::Lose {
            reason: "late".into(),
            at_ms: 4,
        },
    ];
    for transition in &late {
        match app.state.store.apply(&a2, transition).await {
            Err(StoreError::Illegal(illegal)) => assert_eq!(illegal.status, "cancelled"),
            other => panic!("{transition:?} after a cancel: {other:?}"),
        }
    }
    let after = app.job(&key, &a2).await;
    assert_eq!(after, cancelled);
    // And a second cancel is told it ended.
    app.cancel(&key, &a2).await.expect(StatusCode::CONFLICT);
}
