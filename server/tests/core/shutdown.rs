//! Shutdown and the next start on the same data directory: running jobs get the grace
//! period, queued ones wait for the next server, and what a crash left is settled.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ci_protocol::{Status, UserView};
use ci_server::executor::StopReason;
use ci_server::lifecycle::{Transition, Verdict};
use ci_server::model::Job;
use ci_server::store::JobStore;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_keeps_what_ends_within_grace_loses_the_rest_and_the_queue_survives() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "2"]).await;
    let key = app.user("ann@example.com").await;
    let quick = app.submit(&key).await.id;
    let slow = app.submit(&key).await.id;
    app.fake.wait_started(&quick).await;
    app.fake.wait_started(&slow).await;
    let waiting = app.submit(&key).await.id;
    let follower = app.follow(&key, &waiting, 0);

    let grace = Duration::from_millis(1500);
    let began = Instant::now();
    let shutdown = {
        let jobs = app.state.jobs.clone();
        tokio::spawn(async move { jobs.shutdown(grace).await })
    };
    // No new jobs from the moment it begins.
    let refused = eventually("the server to refuse new jobs", || async {
        let answer = app.submit_raw(&key, project_tarball()).await;
        (answer.status != StatusCode::CREATED).then_some(answer)
    })
    .await
    .expect(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused.error().contains("shutting down"),
        "{}",
        refused.error()
    );
    // One job ends within the grace period, the other does not.
    app.fake.release(&quick, b"done\n", Verdict::Passed);
    within("the shutdown", shutdown).await.unwrap();
    assert!(began.elapsed() >= grace, "the grace period was waited out");

    let quick_job = app.job(&key, &quick).await;
    assert_eq!(quick_job.status, Status::Passed, "kept its verdict");
    assert_eq!(app.fake.stop_seen(&quick), None);
    let slow_job = app.job(&key, &slow).await;
    assert_eq!(slow_job.status, Status::Lost);
    assert_eq!(
        slow_job.reason.as_deref(),
        Some("the server shut down while the job was running")
    );
    assert_eq!(app.fake.stop_seen(&slow), Some(StopReason::Shutdown));
    let queued = app.job(&key, &waiting).await;
    assert_eq!(queued.status, Status::Queued);
    assert_eq!(
        app.job_dirs(),
        [waiting.clone()].into(),
        "only the queued job's"
    );
    // Its follower's stream ends, so that the HTTP server can finish.
    let followed = within("the follower of a queued job", follower)
        .await
        .unwrap();
    assert_eq!(
        followed.text(),
        "==> waiting for a free slot: position 1 in the queue\n"
    );
    // Both ran, and nothing else did (two jobs in two slots reach the executor in either
    // order: only their claims are ordered).
    let mut started = app.fake.started();
    started.sort();
    let mut expected = [quick.clone(), slow.clone()];
    expected.sort();
    assert_eq!(started, expected);

    // The next server on the same data directory runs the job that waited.
    let dir = app.close().await;
    let app = TestApp::open(dir, FakeExecutor::holding(), &["--max-jobs", "2"]).await;
    app.fake.wait_started(&waiting).await;
    assert_eq!(app.fake.had_project(&waiting), Some(true));
    app.fake.release(&waiting, b"", Verdict::Passed);
    assert_eq!(app.wait_ended(&key, &waiting).await.status, Status::Passed);
    assert_eq!(app.fake.started(), [waiting.as_str()]);
    assert!(app.job_dirs().is_empty());
    // What ended before stays as it was.
    assert_eq!(app.job(&key, &quick).await, quick_job);
    assert_eq!(app.job(&key, &slow).await, slow_job);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_requeues_waiting_jobs_in_order_loses_running_ones_and_removes_orphans() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let me: UserView = app
        .get("/v1/whoami", &key)
        .await
        .expect(StatusCode::OK)
        .json();
    let held = app.submit(&key).await.id;
    app.fake.wait_started(&held).await;
    let w1 = app.submit(&key).await.id;
    let w2 = app.submit(&key).await.id;
    // A zero grace: the held job is lost at once, the two waiting ones stay queued.
    let dir = app.stop(Duration::ZERO).await;

    // What a crash leaves: a record still `running` with its directory, and a directory no
    // job owns (an upload cut short).
    let crashed = "c0ffee000001".to_string();
    let layout = ci_server::layout::DataLayout::new(dir.path().to_path_buf());
    {
        let db = ci_server::db::Db::open(&layout.db()).unwrap();
        let seq = db.next_seq().await.unwrap();
        let job = Job {
            upload_bytes: 1,
            ..Job::queued(&crashed, &me.id, seq, 1, 60)
        };
        db.submit(&job).await.unwrap();
        db.apply(&crashed, &Transition::Claim { at_ms: 2 })
            .await
            .unwrap();
    }
    std::fs::create_dir_all(layout.job(&crashed).join("project")).unwrap();
    std::fs::create_dir_all(layout.job("orphan000001").join("project/tests")).unwrap();

    let app = TestApp::open(dir, FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let lost = app.job(&key, &crashed).await;
    assert_eq!(lost.status, Status::Lost);
    assert_eq!(
        lost.reason.as_deref(),
        Some("the server stopped while the job was running")
    );
    assert!(lost.finished.is_some());
    let dirs = app.job_dirs();
    assert!(
        !dirs.contains(&crashed),
        "the lost job's directory is removed"
    );
    assert!(
        !dirs.contains("orphan000001"),
        "the orphan directory is removed"
    );

    // The waiting jobs run in their order, with their projects.
    app.fake.wait_started(&w1).await;
    assert_eq!(app.job(&key, &w2).await.queue_position, Some(1));
    app.fake.release(&w1, b"", Verdict::Passed);
    app.fake.wait_started(&w2).await;
    app.fake.release(&w2, b"", Verdict::Passed);
    app.wait_ended(&key, &w2).await;
    assert_eq!(app.fake.started(), [w1.clone(), w2.clone()]);
    assert_eq!(app.fake.had_project(&w2), Some(true));
    assert_eq!(app.job(&key, &held).await.status, Status::Lost);
    assert!(app.job_dirs().is_empty());
}
