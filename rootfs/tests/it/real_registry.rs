//! Pulls a real image from the registry `scripts/registry` starts (`CI_TEST_REGISTRY`).

use std::time::Instant;

use ci_rootfs::{ImageRef, PullOptions, Store};

#[tokio::test]
#[ignore = "needs CI_TEST_REGISTRY=127.0.0.1:PORT serving library/python:3.11-slim"]
async fn pulls_python_from_the_test_registry() {
    let registry = std::env::var("CI_TEST_REGISTRY").expect("CI_TEST_REGISTRY is not set");
    // The store logs each phase's time at info.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "ci_rootfs=info".into()))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions::default();
    let image =
        |tag: &str| -> ImageRef { format!("{registry}/library/python:{tag}").parse().unwrap() };

    // umoci's OCI manifest (no mediaType), cold.
    let started = Instant::now();
    let pulled = store.pull(&image("3.11-slim"), &opts).await.unwrap();
    let cold = started.elapsed();
    assert!(pulled.rootfs.join("usr/bin/python3").exists());
    assert!(!pulled.config.cmd.is_empty(), "{:?}", pulled.config);

    // The same image through an index with an attestation entry: same manifest, no unpack.
    let started = Instant::now();
    let via_index = store.pull(&image("3.11-slim-index"), &opts).await.unwrap();
    let warm = started.elapsed();
    assert_eq!(via_index.manifest_digest, pulled.manifest_digest);

    // As a Docker schema 2 manifest: another digest, so unpacked again from the stored blobs.
    let started = Instant::now();
    let v2s2 = store.pull(&image("3.11-slim-v2s2"), &opts).await.unwrap();
    let v2s2_time = started.elapsed();
    assert!(v2s2.rootfs.join("usr/bin/python3").exists());

    let started = Instant::now();
    let cached = store.ensure(&image("3.11-slim"), &opts).await.unwrap();
    let offline = started.elapsed();
    assert_eq!(cached, pulled);
    eprintln!(
        "{} -> {}: cold pull {cold:?}; via index {warm:?}; v2s2 (blobs reused, unpacked again) {v2s2_time:?}; \
         ensure from cache {offline:?}; config {:?}",
        pulled.reference, pulled.manifest_digest, pulled.config
    );
}
