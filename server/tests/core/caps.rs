//! Per-user caps on waiting jobs: 429 with Retry-After, and nothing of the refused job left.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use ci_server::lifecycle::Verdict;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn over_the_queued_cap_is_429_and_leaves_nothing_behind() {
    let app = TestApp::start(
        FakeExecutor::holding(),
        &["--max-jobs", "1", "--max-queued-per-user", "2"],
    )
    .await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    let a1 = app.submit(&ann).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&ann).await.id;
    let a3 = app.submit(&ann).await.id;
    let records = app.records().await.len();
    let (dirs, logs) = (app.job_dirs(), app.log_files());
    assert_eq!(dirs.len(), 3);

    let refused = app
        .submit_raw(&ann, project_tarball())
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert!(
        refused.error().contains("--max-queued-per-user"),
        "{}",
        refused.error()
    );
    assert_eq!(app.records().await.len(), records, "no record");
    assert_eq!(app.job_dirs(), dirs, "no directory");
    assert_eq!(app.log_files(), logs, "no log");

    // The cap is per user, and frees up as Ann's jobs start (Bob's job goes first: he has
    // had no turn yet).
    let b1 = app.submit(&bob).await.id;
    app.fake.release(&a1, b"", Verdict::Passed);
    app.fake.wait_started(&b1).await;
    app.submit_raw(&ann, project_tarball())
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    app.fake.release(&b1, b"", Verdict::Passed);
    app.fake.wait_started(&a2).await;
    let a4 = app.submit(&ann).await;
    assert_eq!(a4.queue_position, Some(2));
    assert_eq!(app.job(&ann, &a3).await.queue_position, Some(1));
}

/// A job of `upload_bytes` fits the bytes cap, two do not: the second is refused only once
/// its upload is unpacked (its size is known only then).
async fn refused_after_the_upload() -> Refused {
    let app = TestApp::start(
        FakeExecutor::holding(),
        &["--max-jobs", "1", "--max-queued-size-per-user", "50"],
    )
    .await;
    let ann = app.user("ann@example.com").await;
    let a1 = app.submit(&ann).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&ann).await.id;
    let bytes = app
        .state
        .store
        .get(&a2)
        .await
        .unwrap()
        .unwrap()
        .upload_bytes;
    assert!(
        bytes <= 50 && 2 * bytes > 50,
        "the test's premise: one upload of {bytes} bytes fits, two do not"
    );
    let records = app.records().await.len();
    let (dirs, logs) = (app.job_dirs(), app.log_files());

    let refused = app
        .submit_raw(&ann, project_tarball())
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert!(
        refused.error().contains("--max-queued-size-per-user"),
        "{}",
        refused.error()
    );
    Refused {
        app,
        dirs,
        records,
        logs,
    }
}

/// A server that just refused an upload, and what it held before.
struct Refused {
    app: TestApp,
    dirs: BTreeSet<String>,
    records: usize,
    logs: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_queued_bytes_cap_after_the_upload_is_429_and_leaves_nothing_behind() {
    let Refused {
        app,
        dirs,
        records,
        logs,
    } = refused_after_the_upload().await;
    assert_eq!(app.records().await.len(), records, "no record");
    assert_eq!(app.log_files(), logs, "no log");
    let app = &app;
    let dirs = &dirs;
    eventually("the refused job's directory to go", || async move {
        (app.job_dirs() == *dirs).then_some(())
    })
    .await;
}

/// BUG: `Jobs::submit` returns the cap refusal with `?` before it takes care of the job's
/// `JobDir`, whose `Drop` only schedules the removal on the blocking pool: the 429 goes out
/// while the directory is still there, against "whatever fails, the job's directory is gone
/// before the answer" (`api::submit`). Fails every run.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "server bug: the directory of a job refused by Jobs::submit outlives the 429"]
async fn the_refused_jobs_directory_is_gone_before_the_429() {
    let Refused { app, dirs, .. } = refused_after_the_upload().await;
    assert_eq!(
        app.job_dirs(),
        dirs,
        "no directory once the 429 is answered"
    );
}
