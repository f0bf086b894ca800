//! `Store::pull` and `Store::ensure` against the fake registry.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ci_rootfs::{Error, ImageRef, PullOptions, Store};
use serde_json::json;

use crate::fake_registry::{digest, FakeRegistry};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REPO: &str = "library/python";

/// The host's architecture in the image spec's (Go's) naming.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn tar(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        if let Some(target) = content.strip_prefix("->") {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, path, target).unwrap();
        } else if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, path, &[][..]).unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if path.contains("bin/") { 0o755 } else { 0o644 });
            header.set_size(content.len() as u64);
            builder
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn descriptor(media_type: &str, body: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest(body), "size": body.len() })
}

/// Serves a two-layer image (gzip, then plain tar with whiteouts) under a manifest that has no
/// `mediaType`, the way umoci writes it, and returns the manifest's bytes.
fn serve_image(registry: &FakeRegistry) -> Vec<u8> {
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
            "WorkingDir": "/work",
        },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .unwrap();
    let layer1 = gzip(&tar(&[
        ("etc/", ""),
        (
            "etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        ),
        ("usr/bin/python3", "#!/bin/sh\necho fake python\n"),
        ("usr/bin/python", "->python3"),
        ("usr/lib/old.py", "stale"),
        ("opt/app/lower", "hidden by the opaque marker"),
    ]));
    let layer2 = tar(&[
        ("usr/lib/.wh.old.py", ""),
        ("usr/lib/new.py", "fresh"),
        ("opt/app/.wh..wh..opq", ""),
        ("opt/app/upper", "kept"),
    ]);
    registry.blob(REPO, &config);
    registry.blob(REPO, &layer1);
    registry.blob(REPO, &layer2);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer1),
            descriptor("application/vnd.oci.image.layer.v1.tar", &layer2),
        ],
    }))
    .unwrap();
    registry.route(
        &format!("/v2/{REPO}/manifests/{}", digest(&manifest)),
        Some(OCI_MANIFEST),
        manifest.clone(),
    );
    manifest
}

/// A Docker manifest list like Docker Hub's: attestations and other platforms around the host's.
fn serve_index(registry: &FakeRegistry, tag: &str, manifest: &[u8]) {
    let elsewhere = |n: char| format!("sha256:{}", n.to_string().repeat(64));
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut host = descriptor(
        "application/vnd.docker.distribution.manifest.v2+json",
        manifest,
    );
    host["platform"] = json!({ "os": "linux", "architecture": host_arch() });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": elsewhere('a'), "size": 1,
              "platform": { "os": "unknown", "architecture": "unknown" },
              "annotations": { "vnd.docker.reference.type": "attestation-manifest" } },
            { "mediaType": OCI_MANIFEST, "digest": elsewhere('b'), "size": 1,
              "platform": { "os": "linux", "architecture": other_arch } },
            host,
            { "mediaType": OCI_MANIFEST, "digest": elsewhere('c'), "size": 1,
              "platform": { "os": "windows", "architecture": host_arch() } },
        ],
    }))
    .unwrap();
    // Served with a generic type: the body's own `mediaType` must win.
    registry.route(
        &format!("/v2/{REPO}/manifests/{tag}"),
        Some("application/json"),
        index,
    );
}

fn check_rootfs(rootfs: &Path) {
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).ok();
    assert!(read("etc/os-release").unwrap().contains("bookworm"));
    assert_eq!(
        read("usr/bin/python").as_deref(),
        Some("#!/bin/sh\necho fake python\n")
    );
    let mode = std::fs::metadata(rootfs.join("usr/bin/python3"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(read("usr/lib/old.py"), None);
    assert_eq!(read("usr/lib/new.py").as_deref(), Some("fresh"));
    assert_eq!(read("opt/app/lower"), None);
    assert_eq!(read("opt/app/upper").as_deref(), Some("kept"));
}

fn blob_requests(registry: &FakeRegistry) -> usize {
    registry
        .requests()
        .iter()
        .filter(|r| r.contains("/blobs/"))
        .count()
}

#[tokio::test]
async fn pulls_through_an_index_and_then_needs_no_network() {
    let registry = FakeRegistry::start();
    registry.require_token();
    let manifest = serve_image(&registry);
    serve_index(&registry, "3.11-slim", &manifest);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions::default();
    let image: ImageRef = format!("{}/{REPO}:3.11-slim", registry.host())
        .parse()
        .unwrap();

    assert_eq!(store.cached(&image).unwrap(), None);
    let pulled = store.ensure(&image, &opts).await.unwrap();
    assert_eq!(
        pulled.reference,
        format!("{}/library/python:3.11-slim", registry.host())
    );
    assert_eq!(pulled.manifest_digest, digest(&manifest));
    assert_eq!(
        pulled.rootfs,
        dir.path()
            .join("images")
            .join(&digest(&manifest)[7..])
            .join("rootfs")
    );
    assert_eq!(pulled.config.cmd, ["python3"]);
    assert_eq!(
        pulled.config.env,
        ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]
    );
    assert_eq!(pulled.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(pulled.config.user, None);
    check_rootfs(&pulled.rootfs);
    // The token dance happened: a 401, a token, then the retry.
    assert!(
        registry.requests().iter().any(|r| r.starts_with("/token?")),
        "{:?}",
        registry.requests()
    );
    assert_eq!(blob_requests(&registry), 3);
    // Only the host's entry of the index was fetched.
    let manifests: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.contains("/manifests/"))
        .collect();
    assert!(
        manifests
            .iter()
            .all(|r| r.ends_with("3.11-slim") || r.ends_with(&digest(&manifest))),
        "{manifests:?}"
    );

    // A re-pull asks what the tag points at, and downloads nothing it has.
    let again = store.pull(&image, &opts).await.unwrap();
    assert_eq!(again, pulled);
    assert_eq!(blob_requests(&registry), 3);

    // With the registry gone, `ensure` still answers: it touched no network.
    registry.stop();
    let cached = store.ensure(&image, &opts).await.unwrap();
    assert_eq!(cached, pulled);
    let offline = store.pull(&image, &opts).await.unwrap_err();
    assert!(matches!(offline, Error::Http { .. }), "{offline:?}");
    // Nothing is left behind in the temp area.
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn counts_the_bytes_of_a_pull_against_the_manifest_total() {
    let registry = FakeRegistry::start();
    let manifest = serve_image(&registry);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let total: u64 = std::iter::once(&parsed["config"])
        .chain(parsed["layers"].as_array().unwrap())
        .map(|d| d["size"].as_u64().unwrap())
        .sum();
    let progress = ci_rootfs::PullProgress::default();
    assert_eq!(progress.get(), (0, None));
    let opts = PullOptions {
        progress: Some(progress.clone()),
        ..PullOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let image: ImageRef = format!("{}/{REPO}@{}", registry.host(), digest(&manifest))
        .parse()
        .unwrap();
    store.pull(&image, &opts).await.unwrap();
    assert_eq!(progress.get(), (total, Some(total)));

    // Blobs the store holds already count as fetched: a pull into a new image directory
    // reaches its total without a download.
    progress.reset();
    assert_eq!(progress.get(), (0, None));
    std::fs::remove_dir_all(dir.path().join("images")).unwrap();
    std::fs::remove_dir_all(dir.path().join("refs")).ok();
    store.pull(&image, &opts).await.unwrap();
    assert_eq!(progress.get(), (total, Some(total)));
    assert_eq!(blob_requests(&registry), 3);
}

#[tokio::test]
async fn pulls_a_manifest_without_media_type_by_tag_and_by_digest() {
    let registry = FakeRegistry::start();
    let manifest = serve_image(&registry);
    registry.route(
        &format!("/v2/{REPO}/manifests/plain"),
        Some(OCI_MANIFEST),
        manifest.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions::default();

    let by_tag: ImageRef = format!("{}/{REPO}:plain", registry.host()).parse().unwrap();
    let pulled = store.pull(&by_tag, &opts).await.unwrap();
    check_rootfs(&pulled.rootfs);

    // Same manifest by digest: verified, and the unpacked image is reused.
    let by_digest: ImageRef = format!("{}/{REPO}@{}", registry.host(), digest(&manifest))
        .parse()
        .unwrap();
    let again = store.pull(&by_digest, &opts).await.unwrap();
    assert_eq!(again.rootfs, pulled.rootfs);
    assert_eq!(again.reference, by_digest.to_string());
    assert_eq!(blob_requests(&registry), 3);
    assert_eq!(store.cached(&by_digest).unwrap(), Some(again));
}

#[tokio::test]
async fn refuses_content_that_does_not_match_its_digest() {
    let registry = FakeRegistry::start();
    let manifest = serve_image(&registry);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions::default();

    // A manifest asked for by digest must hash to it.
    let wrong = format!("sha256:{}", "0".repeat(64));
    registry.route(
        &format!("/v2/{REPO}/manifests/{wrong}"),
        Some(OCI_MANIFEST),
        manifest.clone(),
    );
    let image: ImageRef = format!("{}/{REPO}@{wrong}", registry.host())
        .parse()
        .unwrap();
    let err = store.pull(&image, &opts).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");

    // A layer with the right size but other bytes.
    let layer = gzip(&tar(&[("f", "good")]));
    let mut tampered = layer.clone();
    *tampered.last_mut().unwrap() ^= 0xff;
    registry.route(
        &format!("/v2/{REPO}/blobs/{}", digest(&layer)),
        None,
        tampered,
    );
    let config = br#"{"config":{}}"#;
    registry.blob(REPO, config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))
    .unwrap();
    registry.route(&format!("/v2/{REPO}/manifests/tampered"), None, manifest);
    let image: ImageRef = format!("{}/{REPO}:tampered", registry.host())
        .parse()
        .unwrap();
    let err = store.pull(&image, &opts).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&digest(&layer)), "{err}");
    assert!(!dir
        .path()
        .join("blobs/sha256")
        .join(&digest(&layer)[7..])
        .exists());
    assert!(!dir.path().join("images").exists());
    assert_eq!(store.cached(&image).unwrap(), None);
}

#[tokio::test]
async fn explains_what_it_cannot_pull() {
    let registry = FakeRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions::default();
    let pull = |tag: &str| {
        let image: ImageRef = format!("{}/{REPO}:{tag}", registry.host()).parse().unwrap();
        let store = store.clone();
        let opts = opts.clone();
        async move { store.pull(&image, &opts).await.unwrap_err() }
    };

    let err = pull("missing").await;
    assert!(
        matches!(&err, Error::Status { status: 404, body, .. } if body.contains("MANIFEST_UNKNOWN")),
        "{err:?}"
    );

    let index = serde_json::to_vec(&json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "digest": format!("sha256:{}", "a".repeat(64)), "size": 1, "platform": { "os": "unknown", "architecture": "unknown" } },
            { "digest": format!("sha256:{}", "b".repeat(64)), "size": 1, "platform": { "os": "linux", "architecture": "mips64le" } },
        ],
    }))
    .unwrap();
    registry.route(&format!("/v2/{REPO}/manifests/foreign"), None, index);
    let err = pull("foreign").await;
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err:?}");
    assert!(
        err.to_string().contains("linux/mips64le") && !err.to_string().contains("unknown"),
        "{err}"
    );

    let zstd = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 2 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": format!("sha256:{}", "d".repeat(64)), "size": 3 }],
    }))
    .unwrap();
    registry.route(
        &format!("/v2/{REPO}/manifests/zstd"),
        Some(OCI_MANIFEST),
        zstd,
    );
    let err = pull("zstd").await;
    assert!(
        err.to_string().contains("zstd layers are not supported"),
        "{err}"
    );
    // Refused before any download.
    assert_eq!(blob_requests(&registry), 0);
}
