//! Several Pythons: the list, the choice at submit (asked, `[tool.ci] python`,
//! `requires-python`), one job per Python from one upload grouped in a run, and refusals
//! before the upload is read.

use axum::http::StatusCode;
use ci_protocol::{JobView, PythonView, Status};

use crate::support::*;

/// Submits `tarball` to `uri` as `key`; asserts 201.
async fn created(app: &TestApp, uri: &str, key: &str, tarball: Vec<u8>) -> JobView {
    app.submit_to(uri, key, tarball)
        .await
        .expect(StatusCode::CREATED)
        .json()
}

fn project_with(pyproject: &str) -> Vec<u8> {
    tarball(&[
        ("pyproject.toml", pyproject.as_bytes()),
        (
            "tests/test_ok.py",
            b"def test_ok():\n    assert True\n".as_slice(),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pythons_are_listed_default_first() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.5"]),
        &[],
    )
    .await;
    let key = app.user("ann@example.com").await;
    let pythons: Vec<PythonView> = app
        .get("/v1/pythons", &key)
        .await
        .expect(StatusCode::OK)
        .json();
    let names: Vec<(Option<String>, bool)> = pythons
        .iter()
        .map(|p| (p.name.clone(), p.default))
        .collect();
    assert_eq!(
        names,
        [(Some("3.11".into()), true), (Some("3.13".into()), false)]
    );
    app.call(
        axum::http::Method::GET,
        "/v1/pythons",
        None,
        axum::body::Body::empty(),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_job_per_python_from_one_upload() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.5"]),
        &["--max-jobs", "2"],
    )
    .await;
    let key = app.user("ann@example.com").await;
    let first: JobView = created(&app, "/v1/jobs?python=3.11,3.13", &key, project_tarball()).await;
    let run = first.run_id.clone().expect("a run id");
    assert_eq!(run, ci_protocol::run_id_for(&first.id));
    assert_eq!(first.python.as_deref(), Some("3.11"));
    let jobs: Vec<JobView> = app
        .get(&format!("/v1/jobs?run={run}"), &key)
        .await
        .expect(StatusCode::OK)
        .json();
    let pythons: Vec<Option<&str>> = jobs.iter().map(|j| j.python.as_deref()).collect();
    assert_eq!(pythons, [Some("3.11"), Some("3.13")]);
    assert_eq!(jobs[0].id, first.id);
    for job in &jobs {
        assert_eq!(job.run_id.as_deref(), Some(run.as_str()));
        app.fake.wait_started(&job.id).await;
        assert_eq!(
            app.fake.had_project(&job.id),
            Some(true),
            "each job has the project"
        );
    }
    // Another user sees no such run.
    let bob = app.user("bob@example.com").await;
    app.get(&format!("/v1/jobs?run={run}"), &bob)
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_python_is_refused_before_the_upload() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.5"]),
        &[],
    )
    .await;
    let key = app.user("ann@example.com").await;
    let answer = app
        .submit_to("/v1/jobs?python=3.11,3.10", &key, project_tarball())
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        "the server has no Python 3.10: it has 3.11 (default), 3.13"
    );
    assert!(app.job_dirs().is_empty(), "nothing was kept");
    assert!(app.fake.started().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn requires_python_picks_the_newest_that_fits() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.5"]),
        &[],
    )
    .await;
    let key = app.user("ann@example.com").await;
    let project =
        project_with("[project]\nname = 'p'\nversion = '1'\nrequires-python = '>=3.12'\n");
    let job: JobView = created(&app, "/v1/jobs", &key, project).await;
    assert_eq!((job.python.as_deref(), job.run_id), (Some("3.13"), None));

    let plain: JobView = created(&app, "/v1/jobs", &key, project_tarball()).await;
    assert_eq!(plain.python.as_deref(), Some("3.11"), "the default");

    let none = project_with("[project]\nname = 'p'\nversion = '1'\nrequires-python = '>=3.14'\n");
    let answer = app
        .submit_to("/v1/jobs", &key, none)
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        "the project's requires-python \">=3.14\" allows none of the server's Pythons (3.11 (default), 3.13)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_ci_python_makes_a_run_and_the_queue_cap_counts_every_job() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.5"]),
        &["--max-queued-per-user", "2", "--max-jobs", "1"],
    )
    .await;
    let key = app.user("ann@example.com").await;
    let project = project_with("[tool.ci]\npython = ['3.13', '3.11']\n");
    let first: JobView = created(&app, "/v1/jobs", &key, project.clone()).await;
    let run = first.run_id.clone().expect("a run");
    let jobs: Vec<JobView> = app
        .get(&format!("/v1/jobs?run={run}"), &key)
        .await
        .expect(StatusCode::OK)
        .json();
    let pythons: Vec<Option<&str>> = jobs.iter().map(|j| j.python.as_deref()).collect();
    assert_eq!(pythons, [Some("3.13"), Some("3.11")]);
    // One of the two runs, one waits: two more would pass the cap of 2 waiting.
    app.fake.wait_started(&first.id).await;
    let answer = app
        .submit_to("/v1/jobs?python=3.11,3.13", &key, project_tarball())
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert!(
        answer.error().contains("one per Python"),
        "{}",
        answer.error()
    );
    let all: Vec<JobView> = app
        .get("/v1/jobs", &key)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(all.len(), 2, "nothing of the refused run was kept");
    assert!(all.iter().all(|j| j.status != Status::Cancelled));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_of_the_failed_tests_runs_on_the_python_of_the_job_it_reruns() {
    let app = TestApp::start(
        FakeExecutor::holding_with_pythons(&["3.11.2", "3.13.5"]),
        &[],
    )
    .await;
    let key = app.user("ann@example.com").await;
    let first: JobView = created(&app, "/v1/jobs?python=3.13", &key, project_tarball()).await;
    assert_eq!(
        (first.python.as_deref(), first.run_id.as_deref()),
        (Some("3.13"), None)
    );
    app.fake
        .release_with_report(&first.id, FAKE_JUNIT, ci_server::lifecycle::Verdict::Failed);
    app.wait_ended(&key, &first.id).await;
    let uri = format!("/v1/jobs?failed_from={}", first.id);
    let rerun: JobView = created(&app, &uri, &key, project_tarball()).await;
    assert_eq!(rerun.python.as_deref(), Some("3.13"));
    let uri = format!("/v1/jobs?failed_from={}&python=3.11", first.id);
    let asked: JobView = created(&app, &uri, &key, project_tarball()).await;
    assert_eq!(
        asked.python.as_deref(),
        Some("3.11"),
        "unless asked otherwise"
    );
}
