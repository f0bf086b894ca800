//! A job's test report through the API: kept when its tests end, its counts on the job, the
//! report, pytest's file and the artifacts' endpoint; `failed_from` reruns the failed tests
//! by node id; a hostile report is not kept; retention answers 410 for all of it.

use axum::http::StatusCode;
use ci_protocol::{FailureKind, Status, TestReport};
use ci_server::lifecycle::Verdict;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_report_is_kept_counted_and_served() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let key = app.user("ann@example.com").await;
    let other = app.user("bob@example.com").await;
    let id = app.submit(&key).await.id;
    app.fake.wait_started(&id).await;

    let early = app.get(&format!("/v1/jobs/{id}/report"), &key).await;
    let early = early.expect(StatusCode::NOT_FOUND);
    assert_eq!(
        early.error(),
        format!("no test report of job {id} yet: its tests have not ended")
    );

    app.fake
        .release_with_report(&id, FAKE_JUNIT, Verdict::Failed);
    let done = app.wait_ended(&key, &id).await;
    assert_eq!(done.status, Status::Failed);
    let counts = done.tests.expect("the job view carries the counts");
    assert_eq!((counts.passed, counts.failed, counts.errors), (1, 2, 0));
    assert!((counts.duration_secs - 0.021).abs() < 1e-9);

    let report: TestReport = app
        .get(&format!("/v1/jobs/{id}/report"), &key)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(report.counts, counts);
    let failed: Vec<(&str, FailureKind, &str)> = report
        .failed
        .iter()
        .map(|t| (t.node_id.as_str(), t.kind, t.message.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            (
                "tests/test_math_ops.py::test_divide",
                FailureKind::Failed,
                "assert 3.5 == 3"
            ),
            (
                "tests/test_math_ops.py::test_divide_by_zero",
                FailureKind::Failed,
                "ZeroDivisionError: division by zero"
            ),
        ]
    );
    assert_eq!(report.failed[0].line, Some(9));

    let junit = app.get(&format!("/v1/jobs/{id}/junit.xml"), &key).await;
    let junit = junit.expect(StatusCode::OK);
    assert_eq!(junit.header("content-type"), Some("application/xml"));
    assert_eq!(junit.text(), FAKE_JUNIT);

    let none = app.get(&format!("/v1/jobs/{id}/artifacts"), &key).await;
    assert_eq!(
        none.expect(StatusCode::NOT_FOUND).error(),
        format!("job {id} kept no artifacts: its tests wrote nothing to /artifacts")
    );
    // Another user's job is not found, whatever it kept.
    for part in ["report", "junit.xml", "artifacts"] {
        let theirs = app.get(&format!("/v1/jobs/{id}/{part}"), &other).await;
        assert_eq!(
            theirs.expect(StatusCode::NOT_FOUND).error(),
            format!("job {id} not found")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_from_reruns_the_failed_tests_by_node_id() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let key = app.user("ann@example.com").await;
    let other = app.user("bob@example.com").await;
    let first = app.submit(&key).await.id;
    app.fake
        .release_with_report(&first, FAKE_JUNIT, Verdict::Failed);
    app.wait_ended(&key, &first).await;

    let uri = format!("/v1/jobs?failed_from={first}&pytest_args=%5B%22-x%22%5D");
    let rerun = app.submit_to(&uri, &key, project_tarball()).await;
    let rerun: ci_protocol::JobView = rerun.expect(StatusCode::CREATED).json();
    app.fake.wait_started(&rerun.id).await;
    assert_eq!(
        app.fake.args_of(&rerun.id).unwrap(),
        [
            "-x",
            "tests/test_math_ops.py::test_divide",
            "tests/test_math_ops.py::test_divide_by_zero"
        ]
    );
    app.fake.release(&rerun.id, b"", Verdict::Passed);
    app.wait_ended(&key, &rerun.id).await;

    // Refused before the upload: nothing to rerun, no report, not the caller's.
    let passing = app.submit(&key).await.id;
    let all_passed = r#"<testsuite name="pytest" errors="0" failures="0" skipped="0" tests="1" time="0.01"><testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py" line="0" time="0.001"/></testsuite>"#;
    app.fake
        .release_with_report(&passing, all_passed, Verdict::Passed);
    app.wait_ended(&key, &passing).await;
    let no_report = app.submit(&key).await.id;
    app.fake
        .release(&no_report, b"", Verdict::error("install failed"));
    app.wait_ended(&key, &no_report).await;
    let refusals = [
        (
            &key,
            passing.as_str(),
            StatusCode::BAD_REQUEST,
            format!("job {passing} has no failed or errored tests to rerun"),
        ),
        (
            &key,
            no_report.as_str(),
            StatusCode::BAD_REQUEST,
            format!(
                "cannot rerun the failed tests: job {no_report} has no test report: its tests \
                 did not run to the end, or wrote none"
            ),
        ),
        (
            &other,
            first.as_str(),
            StatusCode::NOT_FOUND,
            format!("job {first} not found"),
        ),
        (
            &key,
            "nosuchjob",
            StatusCode::NOT_FOUND,
            "job nosuchjob not found".to_string(),
        ),
    ];
    let before = app.records().await.len();
    for (who, earlier, status, message) in refusals {
        let uri = format!("/v1/jobs?failed_from={earlier}");
        let answer = app.submit_to(&uri, who, project_tarball()).await;
        assert_eq!(answer.expect(status).error(), message);
    }
    assert_eq!(app.records().await.len(), before, "no job was made");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_report_is_not_kept_and_the_job_still_ends() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let key = app.user("ann@example.com").await;
    let id = app.submit(&key).await.id;
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><testsuite tests="1">&lol2;</testsuite>"#;
    app.fake.release_with_report(&id, laughs, Verdict::Failed);
    let done = app.wait_ended(&key, &id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.tests, None);
    let log = app.log(&key, &id, None).await.expect(StatusCode::OK).text();
    assert!(log.contains("no test report: "), "{log}");
    let report = app.get(&format!("/v1/jobs/{id}/report"), &key).await;
    assert!(report
        .expect(StatusCode::NOT_FOUND)
        .error()
        .contains("has no test report"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_jobs_report_and_artifacts_are_gone() {
    let app = TestApp::start(FakeExecutor::holding(), &["--job-retention", "1s"]).await;
    let key = app.user("ann@example.com").await;
    let id = app.submit(&key).await.id;
    app.fake
        .release_with_report(&id, FAKE_JUNIT, Verdict::Failed);
    app.wait_ended(&key, &id).await;
    // One round of retention, as the server runs it now and then.
    let state = &app.state;
    let results = state.jobs.results();
    let now = ci_server::model::now_ms();
    let collect = ci_server::retention::collect(
        &*state.store,
        &*state.logs,
        &*results,
        std::time::Duration::ZERO,
        now,
    );
    assert_eq!(collect.await.unwrap(), 1);
    let expired = app.job(&key, &id).await;
    assert!(expired.expired);
    assert_eq!(
        expired.tests.map(|t| t.failed),
        Some(2),
        "the counts stay with the record"
    );
    for (part, what) in [
        ("report", "test report"),
        ("junit.xml", "test report"),
        ("artifacts", "artifacts"),
    ] {
        let answer = app.get(&format!("/v1/jobs/{id}/{part}"), &key).await;
        assert_eq!(
            answer.expect(StatusCode::GONE).error(),
            format!(
                "the {what} of job {id} was removed after the server's retention period (1 second)"
            )
        );
    }
}
