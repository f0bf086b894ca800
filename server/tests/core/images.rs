//! The admin image endpoints: admins only, the request checked before the executor is asked,
//! and what an executor without images (the fake) answers.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use ci_protocol::{ImageView, ImportImage};

use crate::support::*;

fn import(source: &str) -> ImportImage {
    ImportImage {
        source: source.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_manage_images() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let key = app.user("ann@example.com").await;
    for answer in [
        app.get("/v1/admin/images", &key).await,
        app.post_json("/v1/admin/images", &key, &import("oci:/srv/layout"))
            .await,
        app.call(
            Method::DELETE,
            "/v1/admin/images/sha256:0123456789ab",
            Some(&key),
            Body::empty(),
        )
        .await,
    ] {
        let answer = answer.expect(StatusCode::FORBIDDEN);
        assert!(answer.error().contains("admin"), "{}", answer.error());
    }
    app.call(Method::GET, "/v1/admin/images", None, Body::empty())
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executor_without_images_has_none_to_list_add_or_remove() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let admin = app.admin_key.clone();
    let images: Vec<ImageView> = app
        .get("/v1/admin/images", &admin)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(images, []);
    let refused = app
        .post_json("/v1/admin/images", &admin, &import("oci:/srv/layout:3.13"))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(refused.error().contains("no images"), "{}", refused.error());
    let missing = app
        .call(
            Method::DELETE,
            "/v1/admin/images/sha256:0123456789ab",
            Some(&admin),
            Body::empty(),
        )
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(
        missing.error().contains("0123456789ab"),
        "{}",
        missing.error()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_is_checked_before_the_executor_is_asked() {
    let app = TestApp::start(FakeExecutor::holding(), &[]).await;
    let admin = app.admin_key.clone();
    let check = |source: &'static str, needle: &'static str| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let answer = app
                .post_json("/v1/admin/images", &admin, &import(source))
                .await
                .expect(StatusCode::BAD_REQUEST);
            let error = answer.error();
            assert!(error.contains(needle), "{source}: {error}");
            assert!(!error.contains('\n'), "{source}: {error}");
        }
    };
    check("oci-archive:py.tar:3.13", "must be absolute").await;
    check("oci:./layout", "must be absolute").await;
    check("docker-archive:rel/a.tar", "must be absolute").await;
    check("oci:", "path is empty").await;
    check("", "").await;
    let unknown_field = app
        .call(
            Method::POST,
            "/v1/admin/images",
            Some(&admin),
            Body::from(r#"{"source":"oci:/x","tag":"y"}"#),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(
        unknown_field.error().contains("unknown field"),
        "{}",
        unknown_field.error()
    );
}
