//! A job's project name: checked, kept on every job of a run, shown and filtered on; and an
//! upload without files, refused without a job.

use axum::http::StatusCode;
use ci_protocol::JobView;

use crate::support::*;

fn ids(jobs: &[JobView]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_name_is_kept_shown_and_filtered_on() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.1"]),
        &["--max-jobs", "1"],
    )
    .await;
    let key = app.user("ann@example.com").await;

    let named: JobView = app
        .submit_to("/v1/jobs?project=my-lib", &key, project_tarball())
        .await
        .expect(StatusCode::CREATED)
        .json();
    assert_eq!(named.project.as_deref(), Some("my-lib"));
    assert_eq!(
        app.job(&key, &named.id).await.project.as_deref(),
        Some("my-lib")
    );
    assert_eq!(named.pull, None);
    let plain = app.submit(&key).await;
    assert_eq!(plain.project, None);
    // A run's jobs all carry it.
    let run: JobView = app
        .submit_to(
            "/v1/jobs?project=other&python=3.11,3.13",
            &key,
            project_tarball(),
        )
        .await
        .expect(StatusCode::CREATED)
        .json();
    let run_id = run.run_id.clone().expect("a run");
    let of_run: Vec<JobView> = app
        .get(&format!("/v1/jobs?run={run_id}"), &key)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(of_run.len(), 2);
    assert!(of_run.iter().all(|j| j.project.as_deref() == Some("other")));

    let list = |query: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            app.get(&format!("/v1/jobs{query}"), &key)
                .await
                .expect(StatusCode::OK)
                .json::<Vec<JobView>>()
        }
    };
    assert_eq!(ids(&list("?project=my-lib").await), [named.id.as_str()]);
    assert_eq!(list("?project=other").await.len(), 2);
    assert_eq!(list("?project=other&limit=1").await.len(), 1);
    assert!(list("?project=my").await.is_empty(), "exact match only");
    assert!(list("?project=my-lib&status=passed").await.is_empty());
    assert_eq!(list("").await.len(), 4);

    for (query, message) in [
        ("?project=", "the project name is empty"),
        (
            "?project=a%1Bb",
            "the project name holds a control character",
        ),
    ] {
        let answer = app
            .submit_to(&format!("/v1/jobs{query}"), &key, project_tarball())
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(answer.error(), message);
    }
    assert_eq!(list("").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_without_files_is_refused_and_makes_no_job() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let key = app.user("ann@example.com").await;
    let answer = app
        .submit_raw(&key, tarball(&[]))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), "the upload holds no files: nothing to test");
    let jobs: Vec<JobView> = app
        .get("/v1/jobs", &key)
        .await
        .expect(StatusCode::OK)
        .json();
    assert!(jobs.is_empty());
    assert!(app.job_dirs().is_empty(), "{:?}", app.job_dirs());
}
