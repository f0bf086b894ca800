//! A job's way through the API: submitted, running with the phase the executor reported, then
//! the verdict's status; its log, whole and from any offset.

use axum::http::StatusCode;
use ci_protocol::{Phase, Status};
use ci_server::lifecycle::Verdict;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_queued_runs_in_its_phase_and_ends_with_the_verdict() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;

    let view = app.submit(&key).await;
    assert_eq!(view.status, Status::Queued);
    assert_eq!(view.queue_position, Some(1));
    assert_eq!(view.phase, None);
    assert!(view.started.is_none() && view.finished.is_none());
    assert!(view.timeout_secs > 0);
    let id = view.id;

    app.fake.wait_started(&id).await;
    assert_eq!(
        app.fake.had_project(&id),
        Some(true),
        "the project was unpacked"
    );
    let running = app
        .wait_job(&key, &id, "testing", |j| j.phase == Some(Phase::Testing))
        .await;
    assert_eq!(running.status, Status::Running);
    assert_eq!(running.queue_position, None);
    assert!(running.started.is_some() && running.finished.is_none());
    assert!(
        app.job_dirs().contains(&id),
        "a running job keeps its directory"
    );

    app.fake.release(&id, b"1 passed\n", Verdict::Passed);
    let done = app.wait_ended(&key, &id).await;
    assert_eq!(done.status, Status::Passed);
    assert_eq!(
        (done.exit_code, done.reason, done.phase),
        (Some(0), None, None)
    );
    assert!(done.finished.is_some());
    assert!(
        !app.job_dirs().contains(&id),
        "an ended job's directory is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_verdict_becomes_its_status() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "4"]).await;
    let key = app.user("ann@example.com").await;
    let verdicts = [
        Verdict::Failed,
        Verdict::Error {
            exit_code: Some(5),
            reason: "pytest collected no tests (exit code 5)".into(),
        },
        Verdict::error("the install failed"),
        Verdict::TimedOut {
            reason: "timed out after 1s".into(),
        },
    ];
    let mut ids = Vec::new();
    for _ in &verdicts {
        ids.push(app.submit(&key).await.id);
    }
    for (id, verdict) in ids.iter().zip(&verdicts) {
        app.fake.wait_started(id).await;
        app.fake.release(id, b"", verdict.clone());
    }
    let ended: Vec<_> = {
        let mut ended = Vec::new();
        for id in &ids {
            let j = app.wait_ended(&key, id).await;
            ended.push((j.status, j.exit_code, j.reason));
        }
        ended
    };
    assert_eq!(
        ended,
        [
            (Status::Failed, Some(1), None),
            (
                Status::Error,
                Some(5),
                Some("pytest collected no tests (exit code 5)".into())
            ),
            (Status::Error, None, Some("the install failed".into())),
            (Status::TimedOut, None, Some("timed out after 1s".into())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_is_the_jobs_output_and_the_servers_notes_from_any_offset() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let id = app.submit(&key).await.id;
    app.fake.wait_started(&id).await;
    app.wait_job(&key, &id, "testing", |j| j.phase == Some(Phase::Testing))
        .await;
    // Followers from the start and from the middle of what is there, while it runs.
    let from_start = app.follow(&key, &id, 0);
    let from_ten = app.follow(&key, &id, 10);

    app.fake
        .release(&id, b"test_ok.py .\n1 passed in 0.01s", Verdict::Passed);
    let done = app.wait_ended(&key, &id).await;

    let expected = format!("{FAKE_LOG_START}test_ok.py .\n1 passed in 0.01s");
    let whole = app.log(&key, &id, None).await.expect(StatusCode::OK);
    assert_eq!(whole.text(), expected);
    assert_eq!(whole.header("x-log-offset"), Some("0"));
    assert_eq!(
        whole.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(done.log_bytes, expected.len() as u64);

    let followed = within("the follower from 0", from_start).await.unwrap();
    assert_eq!(followed.status, StatusCode::OK);
    assert_eq!(
        followed.text(),
        expected,
        "a live follower sees every byte once"
    );
    let followed = within("the follower from 10", from_ten).await.unwrap();
    assert_eq!(followed.text(), expected[10..]);

    for offset in 0..=expected.len() {
        let part = app
            .log(&key, &id, Some(offset as u64))
            .await
            .expect(StatusCode::OK);
        assert_eq!(part.text(), expected[offset..], "offset {offset}");
        assert_eq!(
            part.header("x-log-offset"),
            Some(offset.to_string().as_str())
        );
    }

    let past = expected.len() as u64 + 1;
    let refused = app
        .log(&key, &id, Some(past))
        .await
        .expect(StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        refused.header("content-range"),
        Some(format!("bytes */{}", expected.len()).as_str())
    );
    assert!(
        refused.error().contains("past the end"),
        "{}",
        refused.error()
    );
}
