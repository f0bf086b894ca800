//! Where an image comes from — a registry, or a file on this host for air-gapped machines —
//! and the store's entry points that take either: [`Store::cached_source`],
//! [`Store::ensure_source`] and [`Store::import`].
//!
//! A file source's ref record is keyed by its canonical text (the path made absolute with
//! symlinks resolved) and holds the file's identity at import (device, inode, size, mtime and
//! ctime; for a layout directory, those of its `index.json`), so a later lookup answers from
//! the store without opening the archive, and misses once the file was replaced or rewritten.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::archive::{self, Plan};
use crate::reference::validate_digest;
use crate::registry::sha256_digest;
use crate::store::{build_rootfs, discard, make_rootfs, publish, unpack_image, ImageRecord};
use crate::{Error, Image, ImageRef, PullOptions, Store};

const OCI_ARCHIVE: &str = "oci-archive:";
const OCI_LAYOUT: &str = "oci:";
const DOCKER_ARCHIVE: &str = "docker-archive:";
const DOCKER: &str = "docker://";

/// Where an image comes from: a registry, or a file on this host.
///
/// The text forms are skopeo's transports: the path ends at the first `:` after the prefix,
/// and what follows is the tag (so a path cannot hold a `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// A reference, bare (`python:3.12-slim`) or as `docker://python:3.12-slim`.
    Registry(ImageRef),
    /// `oci-archive:PATH[:TAG]` — a tar of an OCI image layout (what `skopeo copy …
    /// oci-archive:` and `podman save --format oci-archive` write).
    OciArchive { path: PathBuf, tag: Option<String> },
    /// `oci:DIR[:TAG]` — an OCI image layout directory (`index.json`, `oci-layout`,
    /// `blobs/sha256/…`).
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// `docker-archive:PATH[:NAME:TAG]` — what `docker save` writes: `manifest.json`, the
    /// configs and the layer tars, in the legacy layout or docker 25's OCI one. The tag is
    /// matched against `RepoTags` the way Docker normalizes names (`python:3.11` is
    /// `docker.io/library/python:3.11`).
    DockerArchive { path: PathBuf, tag: Option<String> },
}

impl ImageSource {
    /// The file (or layout directory) a file source reads; `None` for a registry.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ImageSource::Registry(_) => None,
            ImageSource::OciArchive { path, .. } | ImageSource::DockerArchive { path, .. } => {
                Some(path)
            }
            ImageSource::OciLayout { dir, .. } => Some(dir),
        }
    }

    /// The same source with its path absolute and symlinks resolved: the form whose text keys
    /// the ref record and becomes [`Image::reference`]. Fails when the file does not exist.
    pub fn canonicalize(&self) -> Result<ImageSource, Error> {
        let canonical = |path: &Path| fs_err::canonicalize(path).map_err(Error::io("find", path));
        Ok(match self {
            ImageSource::Registry(image) => ImageSource::Registry(image.clone()),
            ImageSource::OciArchive { path, tag } => ImageSource::OciArchive {
                path: canonical(path)?,
                tag: tag.clone(),
            },
            ImageSource::OciLayout { dir, tag } => ImageSource::OciLayout {
                dir: canonical(dir)?,
                tag: tag.clone(),
            },
            ImageSource::DockerArchive { path, tag } => ImageSource::DockerArchive {
                path: canonical(path)?,
                tag: tag.clone(),
            },
        })
    }

    /// The file whose identity tells whether the source changed since its import.
    fn identity_path(&self) -> Option<PathBuf> {
        match self {
            ImageSource::Registry(_) => None,
            ImageSource::OciArchive { path, .. } | ImageSource::DockerArchive { path, .. } => {
                Some(path.clone())
            }
            ImageSource::OciLayout { dir, .. } => Some(dir.join("index.json")),
        }
    }
}

impl FromStr for ImageSource {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::Parse {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let file = |rest: &str| -> Result<(PathBuf, Option<String>), Error> {
            let (path, tag) = match rest.split_once(':') {
                Some((path, tag)) => (path, Some(tag)),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(fail("the path is empty"));
            }
            if path.contains('\0') || tag.is_some_and(|t| t.contains('\0')) {
                return Err(fail("it has a NUL byte"));
            }
            if tag == Some("") {
                return Err(fail("the tag after `:` is empty"));
            }
            Ok((PathBuf::from(path), tag.map(str::to_owned)))
        };
        if let Some(rest) = input.strip_prefix(OCI_ARCHIVE) {
            let (path, tag) = file(rest)?;
            Ok(ImageSource::OciArchive { path, tag })
        } else if let Some(rest) = input.strip_prefix(OCI_LAYOUT) {
            let (dir, tag) = file(rest)?;
            Ok(ImageSource::OciLayout { dir, tag })
        } else if let Some(rest) = input.strip_prefix(DOCKER_ARCHIVE) {
            let (path, tag) = file(rest)?;
            if let Some(tag) = &tag {
                match tag.parse::<ImageRef>() {
                    Ok(image) if matches!(image.reference, crate::Reference::Tag(_)) => {}
                    _ => return Err(fail("the name after the path must be like `python:3.11`")),
                }
            }
            Ok(ImageSource::DockerArchive { path, tag })
        } else {
            let reference = input.strip_prefix(DOCKER).unwrap_or(input);
            Ok(ImageSource::Registry(reference.parse()?))
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, path, tag) = match self {
            ImageSource::Registry(image) => return image.fmt(f),
            ImageSource::OciArchive { path, tag } => (OCI_ARCHIVE, path, tag),
            ImageSource::OciLayout { dir, tag } => (OCI_LAYOUT, dir, tag),
            ImageSource::DockerArchive { path, tag } => (DOCKER_ARCHIVE, path, tag),
        };
        write!(f, "{prefix}{}", path.display())?;
        match tag {
            Some(tag) => write!(f, ":{tag}"),
            None => Ok(()),
        }
    }
}

/// What identifies a file's version without reading it. `ctime` is there too: a rewrite in
/// place that keeps the size and restores the mtime (`cp -p`, `touch -r`) still changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<FileIdentity, Error> {
        let m = fs_err::metadata(path).map_err(Error::io("look at", path))?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        })
    }
}

/// A file source's ref record (`refs/<escaped canonical text>`), as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FileRef {
    pub(crate) manifest_digest: String,
    /// The canonical text, so that `list` need not unescape the file name.
    pub(crate) source: String,
    pub(crate) identity: FileIdentity,
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

impl Store {
    /// Cached image for this source, with no network and without reading the archive: for a
    /// registry source exactly [`Store::cached`]; for a file source, the ref record of its
    /// canonical text must also hold the file's current identity (else `None`: the file
    /// changed, or is gone, and must be imported again).
    pub fn cached_source(&self, src: &ImageSource) -> Result<Option<Image>, Error> {
        if let ImageSource::Registry(image) = src {
            return self.cached(image);
        }
        let canonical = match src.canonicalize() {
            Ok(canonical) => canonical,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let key = canonical.to_string();
        let ref_path = self.ref_path(&key);
        let bytes = match fs_err::read(&ref_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &ref_path)(e)),
        };
        let Ok(record) = serde_json::from_slice::<FileRef>(&bytes) else {
            // Written by something else; the import rewrites it.
            debug!(path = %ref_path.display(), "ignoring an unreadable ref record");
            return Ok(None);
        };
        let identity_path = canonical.identity_path().expect("a file source");
        let identity = match FileIdentity::of(&identity_path) {
            Ok(identity) => identity,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if identity != record.identity {
            debug!(source = %key, "the file changed since its import");
            return Ok(None);
        }
        let hex = validate_digest(&record.manifest_digest)?;
        Ok(self.read_record(hex)?.map(|r| self.image(key, r)))
    }

    /// [`Store::cached_source`], else [`Store::pull`] for a registry or [`Store::import`]
    /// for a file (on the blocking pool).
    pub async fn ensure_source(
        &self,
        src: &ImageSource,
        opts: &PullOptions,
    ) -> Result<Image, Error> {
        if let ImageSource::Registry(image) = src {
            return self.ensure(image, opts).await;
        }
        if let Some(image) = self.cached_source(src)? {
            return Ok(image);
        }
        let store = self.clone();
        let src = src.clone();
        tokio::task::spawn_blocking(move || store.import(&src))
            .await
            .map_err(Error::Join)?
    }

    /// Imports a file source into the store whatever the cache holds: reads the layout or
    /// archive, verifies every blob it uses by size and sha256 (a `docker-archive`'s config by
    /// its file name and its layers by the config's `diff_ids`), unpacks the layers unless
    /// the image is already unpacked, and writes the ref record. Blocking.
    pub fn import(&self, src: &ImageSource) -> Result<Image, Error> {
        if let ImageSource::Registry(image) = src {
            return Err(Error::Source {
                origin: image.to_string(),
                reason: "a registry image is pulled, not imported".to_owned(),
            });
        }
        let started = Instant::now();
        self.remove_leftovers();
        let canonical = src.canonicalize()?;
        let key = canonical.to_string();
        // Taken before reading: if the file changes meanwhile, the next lookup misses.
        let identity = FileIdentity::of(&canonical.identity_path().expect("a file source"))?;

        let record = match archive::plan(&canonical)? {
            Plan::Known {
                manifest_digest,
                config_digest,
                config,
                layers,
                layer_digests,
            } => {
                let hex = validate_digest(&manifest_digest)?.to_owned();
                match self.read_record(&hex)? {
                    Some(record) => {
                        debug!(source = %key, digest = %manifest_digest, "image already unpacked");
                        record
                    }
                    None => {
                        let record = ImageRecord {
                            manifest_digest: manifest_digest.clone(),
                            config_digest,
                            layers: layer_digests,
                            config,
                        };
                        let work = self.tmp_dir()?;
                        unpack_image(
                            work,
                            layers,
                            &record.to_json(),
                            &self.image_dir(&manifest_digest),
                        )?;
                        record
                    }
                }
            }
            Plan::Docker {
                config_digest,
                config_size,
                config,
                layers,
            } => {
                // The manifest is made from the layers' digests, known once they are read.
                let compressions: Vec<_> = layers.iter().map(|l| l.compression).collect();
                let work = self.tmp_dir()?;
                let rootfs = make_rootfs(work.path())?;
                let read = build_rootfs(&rootfs, layers)?;
                let described: Vec<_> = compressions
                    .into_iter()
                    .zip(read)
                    .map(|(compression, (digest, size))| {
                        (compression, digest.expect("docker layers are hashed"), size)
                    })
                    .collect();
                let manifest = archive::docker_manifest(&config_digest, config_size, &described);
                let manifest_digest = sha256_digest(&manifest);
                let record = ImageRecord {
                    manifest_digest: manifest_digest.clone(),
                    config_digest,
                    layers: described.into_iter().map(|(_, digest, _)| digest).collect(),
                    config,
                };
                let image_dir = self.image_dir(&manifest_digest);
                if self
                    .read_record(validate_digest(&manifest_digest)?)?
                    .is_some()
                {
                    debug!(source = %key, digest = %manifest_digest, "image already unpacked");
                    discard(work);
                } else {
                    publish(work, &record.to_json(), &image_dir)?;
                }
                record
            }
        };
        let file_ref = FileRef {
            manifest_digest: record.manifest_digest.clone(),
            source: key.clone(),
            identity,
        };
        self.write_ref(
            &key,
            &serde_json::to_vec_pretty(&file_ref).expect("serializable"),
        )?;
        info!(source = %key, digest = %record.manifest_digest, elapsed = ?started.elapsed(), "image imported");
        Ok(self.image(key, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Option<&str>) {
        let parsed = input.parse::<ImageSource>().map(|s| s.to_string());
        match (parsed, expected) {
            (Ok(got), Some(want)) => {
                assert_eq!(got, want, "{input}");
                // The canonical text parses back to itself.
                assert_eq!(
                    got.parse::<ImageSource>().unwrap().to_string(),
                    got,
                    "{input}"
                );
            }
            (Err(e), None) => assert!(e.to_string().contains(input), "{e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_and_displays() {
        check(
            "python:3.12-slim",
            Some("registry-1.docker.io/library/python:3.12-slim"),
        );
        check(
            "docker://python:3.12-slim",
            Some("registry-1.docker.io/library/python:3.12-slim"),
        );
        check(
            "127.0.0.1:5000/library/python:3.11-slim",
            Some("127.0.0.1:5000/library/python:3.11-slim"),
        );
        check("oci:/x/y:3.13-slim", Some("oci:/x/y:3.13-slim"));
        check("oci:/x/y", Some("oci:/x/y"));
        check("oci:relative/dir", Some("oci:relative/dir"));
        check("oci-archive:/a.tar", Some("oci-archive:/a.tar"));
        check("oci-archive:/a.tar:3.13", Some("oci-archive:/a.tar:3.13"));
        check("docker-archive:/a.tar", Some("docker-archive:/a.tar"));
        check(
            "docker-archive:/a.tar:python:3.11",
            Some("docker-archive:/a.tar:python:3.11"),
        );

        check("oci:", None);
        check("oci::tag", None);
        check("oci:/x:", None);
        check("oci-archive:", None);
        check("docker-archive:/a.tar:Python", None);
        check("docker-archive:/a.tar:python@sha256:0123", None);
        check("dir:/x", None);
        check("", None);
    }

    #[test]
    fn fields() {
        assert_eq!(
            "oci:/x/y:3.13-slim".parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                dir: "/x/y".into(),
                tag: Some("3.13-slim".into())
            }
        );
        assert_eq!(
            "docker-archive:/a.tar:python:3.11"
                .parse::<ImageSource>()
                .unwrap(),
            ImageSource::DockerArchive {
                path: "/a.tar".into(),
                tag: Some("python:3.11".into())
            }
        );
        assert_eq!(
            "oci-archive:/a.tar".parse::<ImageSource>().unwrap().path(),
            Some(Path::new("/a.tar"))
        );
        assert!(matches!(
            "python".parse::<ImageSource>().unwrap(),
            ImageSource::Registry(_)
        ));
    }
}
