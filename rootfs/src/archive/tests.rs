//! Imports of tiny images built here, as an OCI layout, an oci-archive and a docker-archive.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::manifest::{OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::registry::sha256_digest;
use crate::{Error, ImageSource, PullOptions, Store};

fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, path, &[][..]).unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
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

/// An image of two layers (the first gzip, the second plain) whose files say `name`.
struct TestImage {
    config: Vec<u8>,
    /// (stored bytes, uncompressed tar, gzip?)
    layers: Vec<(Vec<u8>, Vec<u8>, bool)>,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new(name: &str) -> TestImage {
        let tar1 = layer_tar(&[
            ("etc/", ""),
            ("etc/image-name", name),
            ("hello.txt", "hello from layer 1\n"),
        ]);
        let tar2 = layer_tar(&[("app/", ""), ("app/main.py", "print('hi')\n")]);
        let layers = vec![(gzip(&tar1), tar1, true), (tar2.clone(), tar2, false)];
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": [format!("IMAGE={name}")], "Cmd": ["python3"] },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(_, tar, _)| sha256_digest(tar)).collect::<Vec<_>>(),
            },
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": layers.iter().map(|(stored, _, gz)| json!({
                "mediaType": if *gz { OCI_LAYER_GZIP } else { OCI_LAYER_TAR },
                "digest": sha256_digest(stored),
                "size": stored.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        TestImage {
            config,
            layers,
            manifest,
        }
    }

    fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }
}

fn hex(bytes: &[u8]) -> String {
    sha256_digest(bytes)["sha256:".len()..].to_owned()
}

/// Writes an OCI layout of `images` (tag, image) in `dir`, the way skopeo does.
fn write_layout(dir: &Path, images: &[(&str, &TestImage)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut manifests = Vec::new();
    for (tag, image) in images {
        for blob in [&image.config, &image.manifest]
            .into_iter()
            .chain(image.layers.iter().map(|(stored, _, _)| stored))
        {
            std::fs::write(blobs.join(hex(blob)), blob).unwrap();
        }
        manifests.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest_digest(),
            "size": image.manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": manifests })).unwrap(),
    )
    .unwrap();
}

/// A tar of the directory, entries named `./…` as `tar -C dir .` writes them.
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

/// What `docker save` (before 25) writes for `images` (repo tags, image).
fn docker_archive(images: &[(&[&str], &TestImage)]) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    for (tags, image) in images {
        let config_name = format!("{}.json", hex(&image.config));
        let mut layers = Vec::new();
        for (stored, _, _) in &image.layers {
            let name = format!("{}/layer.tar", hex(stored));
            // Shared layers are written once, as Docker does.
            if !files.iter().any(|(n, _)| *n == name) {
                files.push((name.clone(), stored.clone()));
            }
            layers.push(name);
        }
        files.push((config_name.clone(), image.config.clone()));
        manifest.push(json!({ "Config": config_name, "RepoTags": tags, "Layers": layers }));
    }
    files.push((
        "manifest.json".to_owned(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    raw_tar(
        &files
            .iter()
            .map(|(n, b)| (n.as_str(), Entry::File(b)))
            .collect::<Vec<_>>(),
    )
}

enum Entry<'a> {
    File(&'a [u8]),
    Symlink(&'a str),
}

/// A tar written header by header, so that hostile names (`..`, absolute) stay as given.
fn raw_tar(entries: &[(&str, Entry<'_>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, entry) in entries {
        let mut header = tar::Header::new_old();
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        let data: &[u8] = match entry {
            Entry::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                data
            }
            Entry::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_link_name(target).unwrap();
                header.set_size(0);
                &[]
            }
        };
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("store"));
        Fixture { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn source(&self, text: &str) -> ImageSource {
        text.replace("$", self.dir.path().to_str().unwrap())
            .parse()
            .unwrap()
    }

    fn import(&self, text: &str) -> Result<crate::Image, Error> {
        self.store.import(&self.source(text))
    }

    fn cached(&self, text: &str) -> Option<crate::Image> {
        self.store.cached_source(&self.source(text)).unwrap()
    }

    fn images(&self) -> Vec<String> {
        match std::fs::read_dir(self.store.root().join("images")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Replaces the file by a new one (a new inode) with these bytes.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn read(rootfs: &Path, name: &str) -> String {
    std::fs::read_to_string(rootfs.join(name)).unwrap()
}

#[track_caller]
fn assert_err_contains(result: Result<crate::Image, Error>, parts: &[&str]) {
    let err = result.expect_err("expected an error");
    let text = format!("{err}");
    for part in parts {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
}

#[test]
fn oci_layout_imports_then_is_cached_until_index_json_changes() {
    let f = Fixture::new();
    let (a, b) = (TestImage::new("a"), TestImage::new("b"));
    write_layout(&f.path("layout"), &[("3.13", &a), ("3.12", &b)]);

    let image = f.import("oci:$/layout:3.13").unwrap();
    let canonical = std::fs::canonicalize(f.path("layout")).unwrap();
    assert_eq!(image.reference, format!("oci:{}:3.13", canonical.display()));
    assert_eq!(image.manifest_digest, a.manifest_digest());
    assert_eq!(read(&image.rootfs, "etc/image-name"), "a");
    assert_eq!(read(&image.rootfs, "hello.txt"), "hello from layer 1\n");
    assert_eq!(read(&image.rootfs, "app/main.py"), "print('hi')\n");
    assert_eq!(image.config.env, ["IMAGE=a"]);
    assert_eq!(f.cached("oci:$/layout:3.13"), Some(image.clone()));
    assert_eq!(f.cached("oci:$/layout:3.12"), None);
    // Work dirs are gone.
    assert_eq!(
        std::fs::read_dir(f.store.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    let other = f.import("oci:$/layout:3.12").unwrap();
    assert_eq!(read(&other.rootfs, "etc/image-name"), "b");

    let index = f.path("layout/index.json");
    replace(&index, &std::fs::read(&index).unwrap());
    assert_eq!(f.cached("oci:$/layout:3.13"), None);
    assert_eq!(f.import("oci:$/layout:3.13").unwrap(), image);
    assert_eq!(f.cached("oci:$/layout:3.13"), Some(image));
}

#[test]
fn oci_archive_imports_then_is_cached_until_rewritten() {
    let f = Fixture::new();
    let (a, b) = (TestImage::new("a"), TestImage::new("b"));
    write_layout(&f.path("layout"), &[("3.13", &a), ("3.12", &b)]);
    let archive = tar_dir(&f.path("layout"));
    std::fs::write(f.path("py.tar"), &archive).unwrap();

    let image = f.import("oci-archive:$/py.tar:3.12").unwrap();
    assert_eq!(image.manifest_digest, b.manifest_digest());
    assert_eq!(read(&image.rootfs, "etc/image-name"), "b");
    assert_eq!(f.cached("oci-archive:$/py.tar:3.12"), Some(image.clone()));

    // Rewritten in place, one more zero block at the end: still a valid tar, same inode.
    let mut longer = archive.clone();
    longer.resize(longer.len() + 512, 0);
    std::fs::write(f.path("py.tar"), &longer).unwrap();
    assert_eq!(f.cached("oci-archive:$/py.tar:3.12"), None);
    assert_eq!(f.import("oci-archive:$/py.tar:3.12").unwrap(), image);

    // Gone: a miss, and the import says which file.
    std::fs::remove_file(f.path("py.tar")).unwrap();
    assert_eq!(f.cached("oci-archive:$/py.tar:3.12"), None);
    assert_err_contains(f.import("oci-archive:$/py.tar:3.12"), &["py.tar"]);
}

#[test]
fn docker_archive_imports_by_repo_tag() {
    let f = Fixture::new();
    let (a, b) = (TestImage::new("a"), TestImage::new("b"));
    std::fs::write(f.path("one.tar"), docker_archive(&[(&["python:3.11"], &a)])).unwrap();

    let image = f.import("docker-archive:$/one.tar").unwrap();
    assert_eq!(read(&image.rootfs, "etc/image-name"), "a");
    assert_eq!(read(&image.rootfs, "app/main.py"), "print('hi')\n");
    assert_eq!(image.config.cmd, ["python3"]);
    assert!(image.reference.starts_with("docker-archive:/"));
    assert_eq!(f.cached("docker-archive:$/one.tar"), Some(image.clone()));
    // The synthesized manifest is the same every time, so the same image is found.
    let tagged = f
        .import("docker-archive:$/one.tar:docker.io/library/python:3.11")
        .unwrap();
    assert_eq!(tagged.manifest_digest, image.manifest_digest);
    assert_eq!(f.images().len(), 1);
    // It describes the layers as stored: gzip, then plain.
    let manifest = super::docker_manifest(
        &sha256_digest(&a.config),
        a.config.len() as u64,
        &a.layers
            .iter()
            .map(|(stored, _, gz)| {
                let compression = if *gz {
                    crate::manifest::Compression::Gzip
                } else {
                    crate::manifest::Compression::None
                };
                (compression, sha256_digest(stored), stored.len() as u64)
            })
            .collect::<Vec<_>>(),
    );
    assert_eq!(sha256_digest(&manifest), image.manifest_digest);

    std::fs::write(
        f.path("two.tar"),
        docker_archive(&[(&["python:3.11"], &a), (&["python:3.12", "py:b"], &b)]),
    )
    .unwrap();
    let b_image = f.import("docker-archive:$/two.tar:python:3.12").unwrap();
    assert_eq!(read(&b_image.rootfs, "etc/image-name"), "b");
    assert_err_contains(
        f.import("docker-archive:$/two.tar"),
        &["several images", "python:3.11, python:3.12, py:b"],
    );
    assert_err_contains(
        f.import("docker-archive:$/two.tar:python:3.10"),
        &[
            "no image is tagged \"python:3.10\"",
            "python:3.11, python:3.12, py:b",
        ],
    );
}

#[test]
fn tags_are_chosen_or_listed() {
    let f = Fixture::new();
    let (a, b) = (TestImage::new("a"), TestImage::new("b"));
    write_layout(&f.path("two"), &[("3.13", &a), ("3.12", &b)]);
    assert_err_contains(
        f.import("oci:$/two"),
        &["several images", "it has: 3.13, 3.12"],
    );
    assert_err_contains(
        f.import("oci:$/two:3.11"),
        &["no image is tagged \"3.11\"", "it has: 3.13, 3.12"],
    );
    write_layout(&f.path("one"), &[("only", &a)]);
    assert_eq!(
        f.import("oci:$/one").unwrap().manifest_digest,
        a.manifest_digest()
    );
}

#[test]
fn tampered_blobs_are_refused_naming_the_digest() {
    let f = Fixture::new();
    let a = TestImage::new("a");
    let layer_digest = sha256_digest(&a.layers[1].0);
    let config_digest = sha256_digest(&a.config);

    // A plain layer with the same size and other bytes.
    write_layout(&f.path("layer"), &[("t", &a)]);
    let tampered = layer_tar(&[("app/", ""), ("app/main.py", "print('no')\n")]);
    assert_eq!(tampered.len(), a.layers[1].0.len());
    replace(
        &f.path("layer")
            .join("blobs/sha256")
            .join(hex(&a.layers[1].0)),
        &tampered,
    );
    assert_err_contains(
        f.import("oci:$/layer:t"),
        &[&layer_digest, "expected digest", "/layer/blobs/sha256/"],
    );
    // Inside an archive too.
    std::fs::write(f.path("layer.tar"), tar_dir(&f.path("layer"))).unwrap();
    assert_err_contains(
        f.import("oci-archive:$/layer.tar"),
        &[&layer_digest, "layer.tar"],
    );

    // The gzip layer: the digest is reported rather than the gzip error.
    write_layout(&f.path("gz"), &[("t", &a)]);
    let gz = f.path("gz").join("blobs/sha256").join(hex(&a.layers[0].0));
    let mut bytes = std::fs::read(&gz).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    replace(&gz, &bytes);
    assert_err_contains(
        f.import("oci:$/gz:t"),
        &[&sha256_digest(&a.layers[0].0), "expected digest"],
    );

    write_layout(&f.path("config"), &[("t", &a)]);
    let config = f.path("config").join("blobs/sha256").join(hex(&a.config));
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[0] = b' ';
    replace(&config, &bytes);
    assert_err_contains(f.import("oci:$/config:t"), &[&config_digest, "config"]);

    // A docker-archive's layer is checked against the config's diff_ids.
    let mut bad = TestImage::new("a");
    bad.layers[1].0 = tampered.clone();
    std::fs::write(
        f.path("docker.tar"),
        docker_archive(&[(&["python:3.11"], &bad)]),
    )
    .unwrap();
    assert_err_contains(
        f.import("docker-archive:$/docker.tar"),
        &[&sha256_digest(&a.layers[1].1), "diff_id", "layer.tar"],
    );
    // And its config against its file name.
    let mut files = vec![(
        "manifest.json".to_owned(),
        serde_json::to_vec(&json!([{
            "Config": format!("{}.json", hex(b"other")),
            "RepoTags": ["x:1"],
            "Layers": [],
        }]))
        .unwrap(),
    )];
    files.push((format!("{}.json", hex(b"other")), a.config.clone()));
    std::fs::write(
        f.path("config.tar"),
        raw_tar(
            &files
                .iter()
                .map(|(n, b)| (n.as_str(), Entry::File(b)))
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    assert_err_contains(
        f.import("docker-archive:$/config.tar"),
        &[&config_digest, &sha256_digest(b"other")],
    );

    assert!(f.images().is_empty(), "{:?}", f.images());
}

#[test]
fn hostile_archive_entries_are_ignored() {
    let f = Fixture::new();
    let a = TestImage::new("a");
    write_layout(&f.path("layout"), &[("t", &a)]);
    let index = std::fs::read(f.path("layout/index.json")).unwrap();
    let mut entries: Vec<(String, Vec<u8>)> = vec![];
    for entry in std::fs::read_dir(f.path("layout/blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        entries.push((
            format!("blobs/sha256/{}", entry.file_name().to_str().unwrap()),
            std::fs::read(entry.path()).unwrap(),
        ));
    }
    let escape = f.path("escaped");
    let escape_rel = format!("../../../../../../../../..{}", escape.display());
    let mut hostile: Vec<(&str, Entry<'_>)> = vec![
        ("../evil", Entry::File(b"x")),
        (&escape_rel, Entry::File(b"x")),
        ("/abs-evil", Entry::File(b"x")),
        // The only index.json is a link: not followed, so the archive has none.
        ("index.json", Entry::Symlink("/etc/passwd")),
    ];
    hostile.extend(entries.iter().map(|(n, b)| (n.as_str(), Entry::File(b))));
    std::fs::write(f.path("hostile.tar"), raw_tar(&hostile)).unwrap();
    assert_err_contains(f.import("oci-archive:$/hostile.tar"), &["no index.json"]);

    // `../index.json` and `/index.json` are not the index either.
    let mut outside: Vec<(&str, Entry<'_>)> = vec![
        ("../index.json", Entry::File(&index)),
        ("/index.json", Entry::File(&index)),
    ];
    outside.extend(entries.iter().map(|(n, b)| (n.as_str(), Entry::File(b))));
    std::fs::write(f.path("outside.tar"), raw_tar(&outside)).unwrap();
    assert_err_contains(f.import("oci-archive:$/outside.tar"), &["no index.json"]);

    // A layer that climbs out is unpacked inside, by `unpack_layer`.
    let mut evil = TestImage::new("a");
    let mut climbing = layer_tar(&[("app/", ""), ("app/main.py", "print('hi')\n")]);
    // One more entry, in place of the end-of-archive blocks, whose name climbs.
    let mut header = tar::Header::new_old();
    let name = b"../../../escape.py";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(1);
    header.set_mode(0o644);
    header.set_cksum();
    climbing.truncate(climbing.len() - 1024);
    climbing.extend_from_slice(header.as_bytes());
    climbing.extend_from_slice(&[b'x'; 512]);
    climbing.resize(climbing.len() + 1024, 0);
    evil.layers[1] = (climbing.clone(), climbing, false);
    let evil = rebuild(evil);
    write_layout(&f.path("climbing"), &[("t", &evil)]);
    std::fs::write(f.path("climbing.tar"), tar_dir(&f.path("climbing"))).unwrap();
    let image = f.import("oci-archive:$/climbing.tar").unwrap();
    assert_eq!(read(&image.rootfs, "app/main.py"), "print('hi')\n");

    for name in ["evil", "abs-evil", "escaped", "escape.py"] {
        assert!(!f.path(name).exists(), "{name}");
        assert!(
            !f.dir.path().parent().unwrap().join(name).exists(),
            "{name}"
        );
    }
    assert!(!Path::new("/abs-evil").exists());
}

/// The same image with its config and manifest remade for changed layers.
fn rebuild(mut image: TestImage) -> TestImage {
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["rootfs"]["diff_ids"] = json!(image
        .layers
        .iter()
        .map(|(_, tar, _)| sha256_digest(tar))
        .collect::<Vec<_>>());
    image.config = serde_json::to_vec(&config).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["config"]["digest"] = json!(sha256_digest(&image.config));
    manifest["config"]["size"] = json!(image.config.len());
    for (i, (stored, _, _)) in image.layers.iter().enumerate() {
        manifest["layers"][i]["digest"] = json!(sha256_digest(stored));
        manifest["layers"][i]["size"] = json!(stored.len());
    }
    image.manifest = serde_json::to_vec(&manifest).unwrap();
    image
}

#[test]
fn compressed_archives_are_refused_with_advice() {
    let f = Fixture::new();
    write_layout(&f.path("layout"), &[("t", &TestImage::new("a"))]);
    std::fs::write(f.path("x.tar.gz"), gzip(&tar_dir(&f.path("layout")))).unwrap();
    assert_err_contains(
        f.import("oci-archive:$/x.tar.gz"),
        &["gzip-compressed", "decompress it first"],
    );
}

#[test]
fn list_and_remove() {
    let f = Fixture::new();
    let (a, b) = (TestImage::new("a"), TestImage::new("b"));
    write_layout(&f.path("layout"), &[("a", &a), ("b", &b)]);
    std::fs::write(f.path("a.tar"), tar_dir(&f.path("layout"))).unwrap();
    let image_a = f.import("oci:$/layout:a").unwrap();
    f.import("oci-archive:$/a.tar:a").unwrap();
    let image_b = f.import("oci:$/layout:b").unwrap();
    // A registry ref pointing at `b`, as a pull writes it.
    f.store
        .write_ref(
            "127.0.0.1:5000/library/python:3.11-slim",
            format!("{}\n", image_b.manifest_digest).as_bytes(),
        )
        .unwrap();

    let listed = f.store.list().unwrap();
    let mut want = vec![
        (
            image_a.manifest_digest.clone(),
            vec![
                image_a.reference.clone(),
                f.source("oci-archive:$/a.tar:a")
                    .canonicalize()
                    .unwrap()
                    .to_string(),
            ],
        ),
        (
            image_b.manifest_digest.clone(),
            vec![
                "127.0.0.1:5000/library/python:3.11-slim".to_owned(),
                image_b.reference.clone(),
            ],
        ),
    ];
    want.sort();
    for (_, refs) in &mut want {
        refs.sort();
    }
    let got: Vec<_> = listed
        .iter()
        .map(|i| (i.manifest_digest.clone(), i.refs.clone()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        listed[0]
            .rootfs
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .len(),
        64
    );

    let hex_a = &image_a.manifest_digest["sha256:".len()..];
    let err = f.store.remove(&hex_a[..11]).unwrap_err();
    assert!(err.to_string().contains("at least 12"), "{err}");
    let err = f.store.remove(&"0".repeat(12)).unwrap_err();
    assert!(err.to_string().contains("no image"), "{err}");

    let removed = f.store.remove(&hex_a[..12]).unwrap();
    assert_eq!(removed.manifest_digest, image_a.manifest_digest);
    assert_eq!(removed.refs.len(), 2);
    assert!(!image_a.rootfs.exists());
    assert_eq!(f.cached("oci:$/layout:a"), None);
    assert_eq!(f.cached("oci-archive:$/a.tar:a"), None);
    assert!(f.cached("oci:$/layout:b").is_some());
    assert_eq!(f.store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(f.store.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    let removed = f.store.remove(&image_b.manifest_digest).unwrap();
    assert_eq!(removed.refs.len(), 2);
    assert!(f.store.list().unwrap().is_empty());
    assert!(f
        .store
        .cached(&"127.0.0.1:5000/library/python:3.11-slim".parse().unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn an_ambiguous_prefix_is_refused() {
    let f = Fixture::new();
    let images = f.store.root().join("images");
    for suffix in ['1', '2'] {
        let hex = format!("{}{}", "a".repeat(63), suffix);
        let dir = images.join(&hex);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let record = json!({
            "manifest_digest": format!("sha256:{hex}"),
            "config_digest": format!("sha256:{}", "b".repeat(64)),
            "layers": [],
            "config": crate::ImageConfig::default(),
        });
        std::fs::write(dir.join("image.json"), record.to_string()).unwrap();
    }
    assert_eq!(f.store.list().unwrap().len(), 2);
    let err = f.store.remove(&"a".repeat(12)).unwrap_err();
    assert!(err.to_string().contains("several images match"), "{err}");
    // The full digest is never ambiguous.
    f.store
        .remove(&format!("sha256:{}1", "a".repeat(63)))
        .unwrap();
    assert_eq!(f.store.list().unwrap().len(), 1);
}

#[test]
fn registry_sources_are_not_imported() {
    let f = Fixture::new();
    assert_err_contains(f.import("python:3.12-slim"), &["pulled, not imported"]);
}

#[tokio::test]
async fn ensure_source_imports_once() {
    let f = Fixture::new();
    write_layout(&f.path("layout"), &[("t", &TestImage::new("a"))]);
    let src = f.source("oci:$/layout");
    let image = f
        .store
        .ensure_source(&src, &PullOptions::default())
        .await
        .unwrap();
    // Cached: the layout's blobs are not needed any more.
    std::fs::remove_dir_all(f.path("layout/blobs")).unwrap();
    assert_eq!(
        f.store
            .ensure_source(&src, &PullOptions::default())
            .await
            .unwrap(),
        image
    );
}

/// Imports real files made by skopeo or docker, e.g.
/// `CI_TEST_IMAGE_SOURCES="oci:/path/oci:3.11-slim oci-archive:/tmp/x.tar docker-archive:/tmp/y.tar:python:3.11"`.
#[test]
#[ignore = "needs CI_TEST_IMAGE_SOURCES: space-separated file sources of a Debian image with python3"]
fn imports_real_files() {
    let sources = std::env::var("CI_TEST_IMAGE_SOURCES").unwrap();
    let f = Fixture::new();
    for text in sources.split_whitespace() {
        let src: ImageSource = text.parse().unwrap();
        let started = std::time::Instant::now();
        let image = f.store.import(&src).unwrap();
        eprintln!(
            "{text}: {} in {:?}",
            image.manifest_digest,
            started.elapsed()
        );
        assert!(image.rootfs.join("etc/debian_version").is_file(), "{text}");
        assert!(image.rootfs.join("usr/bin").is_dir(), "{text}");
        assert_eq!(f.store.cached_source(&src).unwrap(), Some(image));
    }
    for image in f.store.list().unwrap() {
        eprintln!("{} {:?}", image.manifest_digest, image.refs);
    }
}

#[test]
fn links_resolve_inside_the_archive_only() {
    use super::resolve_link;
    assert_eq!(
        resolve_link("id/layer.tar", b"../abc.tar").as_deref(),
        Some("abc.tar")
    );
    assert_eq!(
        resolve_link("a/b/layer.tar", b"./../c/./x.tar").as_deref(),
        Some("a/c/x.tar")
    );
    assert_eq!(resolve_link("id/layer.tar", b"../../etc/passwd"), None);
    assert_eq!(resolve_link("id/layer.tar", b"/etc/passwd"), None);
    assert_eq!(resolve_link("layer.tar", b".."), None);
}

#[test]
fn docker_archive_layer_links_are_followed_inside_only() {
    // As skopeo and `docker save` write a layer stored once: `<id>/layer.tar -> ../<hex>.tar`.
    let f = Fixture::new();
    let a = TestImage::new("a");
    let config_name = format!("{}.json", hex(&a.config));
    let stored: Vec<String> = a
        .layers
        .iter()
        .map(|(s, _, _)| format!("{}.tar", hex(s)))
        .collect();
    let links: Vec<String> = stored.iter().map(|s| format!("../{s}")).collect();
    let write = |path: &str, layer_names: &[&str], extra: Vec<(&str, Entry<'_>)>| {
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name, "RepoTags": ["python:3.11"], "Layers": layer_names,
        }]))
        .unwrap();
        let mut entries = vec![
            (stored[0].as_str(), Entry::File(&a.layers[0].0)),
            (stored[1].as_str(), Entry::File(&a.layers[1].0)),
            ("id0/layer.tar", Entry::Symlink(&links[0])),
            ("id1/layer.tar", Entry::Symlink(&links[1])),
            (config_name.as_str(), Entry::File(&a.config)),
            ("manifest.json", Entry::File(&manifest)),
        ];
        entries.extend(extra);
        std::fs::write(f.path(path), raw_tar(&entries)).unwrap();
    };
    write("linked.tar", &["id0/layer.tar", "id1/layer.tar"], vec![]);
    let image = f.import("docker-archive:$/linked.tar").unwrap();
    assert_eq!(read(&image.rootfs, "etc/image-name"), "a");

    // A link out of the archive is not followed: the layer is missing.
    std::fs::write(f.path("outside-layer.tar"), &a.layers[1].0).unwrap();
    let out = format!(
        "../../../../../../../../..{}",
        f.path("outside-layer.tar").display()
    );
    write(
        "escaping.tar",
        &["id0/layer.tar", "id2/layer.tar"],
        vec![("id2/layer.tar", Entry::Symlink(&out))],
    );
    assert_err_contains(
        f.import("docker-archive:$/escaping.tar"),
        &["it has no file id2/layer.tar"],
    );
}
