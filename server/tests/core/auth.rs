//! Who may call what: keys, admin endpoints, and what disabling a user does to its jobs.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use ci_protocol::{Status, UserView};
use ci_server::executor::StopReason;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_key_are_refused() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;

    let none = app
        .call(Method::GET, "/v1/jobs", None, Body::empty())
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert!(none.error().contains("missing API key"), "{}", none.error());
    let unknown = format!("ci_{}", "0".repeat(64));
    for bad in [unknown.as_str(), "ci_short", "not-a-key"] {
        let refused = app
            .get("/v1/jobs", bad)
            .await
            .expect(StatusCode::UNAUTHORIZED);
        assert!(
            refused.error().starts_with("authentication failed"),
            "{}",
            refused.error()
        );
    }
    // Nor does submitting take anything from an unknown caller.
    app.submit_raw(&unknown, project_tarball())
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert!(app.records().await.is_empty());
    assert!(app.job_dirs().is_empty());

    // A user's key is no admin's.
    for (method, uri) in [
        (Method::GET, "/v1/admin/users"),
        (Method::GET, "/v1/admin/keys"),
        (Method::POST, "/v1/admin/users/ann@example.com/disable"),
    ] {
        let refused = app
            .call(method.clone(), uri, Some(&key), Body::empty())
            .await
            .expect(StatusCode::FORBIDDEN);
        assert!(refused.error().contains("admin"), "{method} {uri}");
    }
    // The key works where it should, and health needs none.
    let me: UserView = app
        .get("/v1/whoami", &key)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(me.email, "ann@example.com");
    app.call(Method::GET, "/healthz", None, Body::empty())
        .await
        .expect(StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_a_user_stops_its_jobs_and_its_keys() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    let running = app.submit(&ann).await.id;
    app.fake.wait_started(&running).await;
    let queued = app.submit(&ann).await.id;
    let bobs = app.submit(&bob).await.id;

    let admin = app.admin_key.clone();
    let user: UserView = app
        .call(
            Method::POST,
            "/v1/admin/users/ann@example.com/disable",
            Some(&admin),
            Body::empty(),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert!(!user.active);

    app.get("/v1/jobs", &ann)
        .await
        .expect(StatusCode::FORBIDDEN);
    let reason = "the user was disabled by an admin";
    for id in [&running, &queued] {
        let job = eventually(&format!("job {id} to end"), || async {
            let job = app.state.store.get(id).await.unwrap().unwrap();
            job.status.is_terminal().then_some(job)
        })
        .await;
        assert_eq!(job.status, Status::Cancelled, "{id}");
        assert_eq!(job.reason.as_deref(), Some(reason), "{id}");
    }
    assert_eq!(app.fake.stop_seen(&running), Some(StopReason::UserDisabled));
    // Bob's job is untouched and gets the slot.
    app.fake.wait_started(&bobs).await;
    assert_eq!(app.job(&bob, &bobs).await.status, Status::Running);
    assert!(!app.job_dirs().contains(&running) && !app.job_dirs().contains(&queued));
}
