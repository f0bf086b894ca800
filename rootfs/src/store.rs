//! The on-disk cache of images, the pull itself, and what pulls and file imports
//! ([`crate::source`]) share: unpacking into `images/`, listing and removing.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>          verified blobs of pulls (configs and compressed layers), so a re-pull skips them
//! images/<manifest hex>/      one per image manifest, complete or absent (made in tmp/, then renamed)
//!     image.json              the image config and digests
//!     rootfs/                 all layers applied
//! refs/<escaped reference>    for a registry reference: the manifest digest it resolved to, for
//!                             offline lookups; for a file source (`oci-archive:/abs/path:tag`):
//!                             JSON with that digest and the file's identity at import
//! tmp/<pid>.<random>          work in progress, and images being removed; removed when that
//!                             process is gone
//! ```

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::manifest::{self, Compression, HostPlatform, ImageConfig, Index, Kind, Manifest};
use crate::reference::{escape_for_file_name, unescape_file_name, validate_digest};
use crate::registry::{sha256_digest, Registry};
use crate::source::FileRef;
use crate::{unpack_layer, Error, ImageRef, Reference};

/// Layers fetched at once; Docker's default is 3.
const PARALLEL_DOWNLOADS: usize = 3;

/// An index naming an index is allowed by the spec; no registry nests deeper than this.
const MAX_INDEX_DEPTH: usize = 3;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host:port` or `host`) spoken to in plain http. Loopback registries always
    /// are, as in Docker.
    pub insecure_registries: Vec<String>,
    /// Counts the bytes of a pull as they arrive, for whoever waits on it; `None`: nobody.
    pub progress: Option<PullProgress>,
}

/// How far a pull is: bytes of blobs fetched (or found in the store) so far, and the total
/// once the manifest is read (the config's and the layers' sizes). Cheap to clone and to
/// read: two shared counters, written by the pull, read by anyone.
#[derive(Debug, Clone, Default)]
pub struct PullProgress {
    done: Arc<AtomicU64>,
    /// 0 until the manifest is read.
    total: Arc<AtomicU64>,
}

impl PullProgress {
    /// Bytes so far, and the total once known.
    pub fn get(&self) -> (u64, Option<u64>) {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        (done, (total > 0).then_some(total))
    }

    /// Back to nothing known, for the next pull.
    pub fn reset(&self) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
    }

    /// The bytes the pull fetches in all, from its manifest.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// `bytes` more fetched (or found in the store).
    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// An image unpacked in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The reference it was asked for, in canonical form.
    pub reference: String,
    /// Digest of the platform-specific image manifest (not of an index).
    pub manifest_digest: String,
    /// The unpacked root filesystem. Shared by every user of the image: mount it read-only.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// An image unpacked in the store, as [`Store::list`] and [`Store::remove`] report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// `sha256:<hex>` of the image manifest (synthesized for a `docker-archive`).
    pub manifest_digest: String,
    /// The references and canonical source texts whose records point at it, sorted.
    pub refs: Vec<String>,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// What `images/<hex>/image.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub(crate) manifest_digest: String,
    pub(crate) config_digest: String,
    pub(crate) layers: Vec<String>,
    pub(crate) config: ImageConfig,
}

/// Where a layer's bytes are: a whole file, or a stretch of one (an entry of a tar archive).
#[derive(Debug, Clone)]
pub(crate) enum LayerData {
    File(PathBuf),
    Slice {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl LayerData {
    pub(crate) fn path(&self) -> &Path {
        match self {
            LayerData::File(path) | LayerData::Slice { path, .. } => path,
        }
    }

    pub(crate) fn open(&self) -> Result<io::Take<std::fs::File>, Error> {
        let path = self.path();
        let mut file = std::fs::File::open(path).map_err(Error::io("open", path))?;
        match *self {
            LayerData::File(_) => Ok(file.take(u64::MAX)),
            LayerData::Slice { offset, len, .. } => {
                file.seek(io::SeekFrom::Start(offset))
                    .map_err(Error::io("seek in", path))?;
                Ok(file.take(len))
            }
        }
    }
}

/// What is known of a layer's bytes (as stored: compressed or not) before they are read.
#[derive(Debug, Clone)]
pub(crate) enum RawDigest {
    /// Verified already (a pull checks blobs as they download): not hashed again.
    Trusted,
    /// Checked while the layer is applied.
    Expect { digest: String, size: u64 },
    /// Unknown (a `docker-archive` names layers by path): hashed while applied, and reported.
    Compute,
}

/// One layer to apply, with what to verify on the way.
#[derive(Debug, Clone)]
pub(crate) struct LayerInput {
    pub(crate) data: LayerData,
    pub(crate) compression: Compression,
    pub(crate) raw: RawDigest,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids[i]`), checked when given.
    pub(crate) diff_id: Option<String>,
    /// The layer in error messages, e.g. `layer sha256:… in /srv/py.tar`.
    pub(crate) what: String,
}

/// A directory of pulled images, keyed by manifest digest.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root`; nothing is touched until the first call.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Cached image for this reference, with no network at all (reads a ref -> digest record
    /// and the unpacked dir). `None` if not cached.
    pub fn cached(&self, image: &ImageRef) -> Result<Option<Image>, Error> {
        let ref_path = self.ref_path(&image.to_string());
        let digest = match fs_err::read_to_string(&ref_path) {
            Ok(digest) => digest,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &ref_path)(e)),
        };
        let digest = digest.trim();
        let hex = validate_digest(digest)?;
        Ok(self
            .read_record(hex)?
            .map(|record| self.image(image.to_string(), record)))
    }

    /// Resolve + download + verify + unpack, or reuse the unpacked dir when the manifest digest
    /// is already there. Always asks the registry what the reference points at now.
    pub async fn pull(&self, image: &ImageRef, opts: &PullOptions) -> Result<Image, Error> {
        let started = Instant::now();
        self.remove_leftovers();
        let registry = Registry::new(image, opts)?;
        let (manifest_digest, manifest) = resolve(&registry, image).await?;
        let hex = validate_digest(&manifest_digest)?.to_owned();

        let record = match self.read_record(&hex)? {
            Some(record) => {
                debug!(%image, digest = %manifest_digest, "image already unpacked");
                record
            }
            None => {
                self.download_and_unpack(&registry, image, &manifest_digest, &manifest)
                    .await?
            }
        };
        self.write_ref(
            &image.to_string(),
            format!("{manifest_digest}\n").as_bytes(),
        )?;
        info!(%image, digest = %manifest_digest, elapsed = ?started.elapsed(), "image ready");
        Ok(self.image(image.to_string(), record))
    }

    /// [`Store::cached`] if present, else [`Store::pull`].
    pub async fn ensure(&self, image: &ImageRef, opts: &PullOptions) -> Result<Image, Error> {
        match self.cached(image)? {
            Some(cached) => Ok(cached),
            None => self.pull(image, opts).await,
        }
    }

    async fn download_and_unpack(
        &self,
        registry: &Registry,
        image: &ImageRef,
        manifest_digest: &str,
        manifest: &Manifest,
    ) -> Result<ImageRecord, Error> {
        // Refuse unsupported layers before downloading anything.
        let compressions = manifest
            .layers
            .iter()
            .map(|l| manifest::layer_compression(&l.media_type, &l.digest))
            .collect::<Result<Vec<_>, _>>()?;

        if let Some(progress) = registry.progress() {
            let layers: u64 = manifest.layers.iter().map(|l| l.size).sum();
            progress.set_total(manifest.config.size.saturating_add(layers));
        }
        let config_path = self.blob(registry, &manifest.config).await?;
        let config_bytes = fs_err::read(&config_path).map_err(Error::io("read", &config_path))?;
        let config = ImageConfig::from_config_json(&config_bytes, &manifest.config.digest)?;

        let started = Instant::now();
        // Owned descriptors and an `async move` block: with a borrowing closure the future is
        // not `Send` for every lifetime, and the server runs pulls on its worker threads.
        let blobs: Vec<PathBuf> = futures_util::stream::iter(manifest.layers.iter().cloned())
            .map(|layer| async move { self.blob(registry, &layer).await })
            .buffered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await?;
        info!(%image, layers = blobs.len(), elapsed = ?started.elapsed(), "layers downloaded");

        let record = ImageRecord {
            manifest_digest: manifest_digest.to_owned(),
            config_digest: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            config,
        };
        let work = self.tmp_dir()?;
        let image_dir = self
            .root
            .join("images")
            .join(validate_digest(manifest_digest)?);
        let record_json = record.to_json();
        let layers = blobs
            .into_iter()
            .zip(compressions)
            .zip(&manifest.layers)
            .map(|((blob, compression), desc)| LayerInput {
                data: LayerData::File(blob),
                compression,
                raw: RawDigest::Trusted,
                diff_id: None,
                what: format!("layer {}", desc.digest),
            })
            .collect();
        let started = Instant::now();
        // Unpacking is blocking file work: keep it off the async workers.
        tokio::task::spawn_blocking(move || unpack_image(work, layers, &record_json, &image_dir))
            .await
            .map_err(Error::Join)??;
        info!(%image, elapsed = ?started.elapsed(), "layers unpacked");
        Ok(record)
    }

    /// The blob's path in the store, downloading it first unless a verified copy is there.
    async fn blob(
        &self,
        registry: &Registry,
        desc: &manifest::Descriptor,
    ) -> Result<PathBuf, Error> {
        let hex = validate_digest(&desc.digest)?;
        let dir = self.root.join("blobs").join("sha256");
        let path = dir.join(hex);
        // Blobs are only ever renamed in after verification, so the size is check enough.
        if fs_err::metadata(&path).is_ok_and(|m| m.len() == desc.size) {
            debug!(digest = %desc.digest, "blob already in the store");
            if let Some(progress) = registry.progress() {
                progress.add(desc.size);
            }
            return Ok(path);
        }
        fs_err::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let tmp_root = self.tmp_root()?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}.", std::process::id()))
            .tempfile_in(&tmp_root)
            .map_err(Error::io("create a temp file in", &tmp_root))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(Error::io("open", tmp.path()))?;
        let started = Instant::now();
        registry
            .blob_to(desc, tokio::fs::File::from_std(file))
            .await?;
        debug!(digest = %desc.digest, size = desc.size, elapsed = ?started.elapsed(), "blob downloaded");
        tmp.persist(&path)
            .map_err(|e| Error::io("move a download to", &path)(e.error))?;
        Ok(path)
    }

    pub(crate) fn read_record(&self, hex: &str) -> Result<Option<ImageRecord>, Error> {
        let dir = self.root.join("images").join(hex);
        let path = dir.join("image.json");
        let bytes = match fs_err::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        if !dir.join("rootfs").is_dir() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Json {
                what: "image record",
                origin: path.display().to_string(),
                source,
            })
    }

    pub(crate) fn image(&self, reference: String, record: ImageRecord) -> Image {
        Image {
            reference,
            rootfs: self.image_dir(&record.manifest_digest).join("rootfs"),
            manifest_digest: record.manifest_digest,
            config: record.config,
        }
    }

    /// `images/<hex>` of a digest already validated.
    pub(crate) fn image_dir(&self, manifest_digest: &str) -> PathBuf {
        let hex = manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(manifest_digest);
        self.root.join("images").join(hex)
    }

    /// The record of a reference or of a file source's canonical text.
    pub(crate) fn ref_path(&self, key: &str) -> PathBuf {
        self.root.join("refs").join(escape_for_file_name(key))
    }

    /// Written to a temp file and renamed over, so a reader sees the old record or the new one.
    pub(crate) fn write_ref(&self, key: &str, contents: &[u8]) -> Result<(), Error> {
        let path = self.ref_path(key);
        let dir = self.root.join("refs");
        fs_err::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(Error::io("create a temp file in", &dir))?;
        tmp.write_all(contents)
            .map_err(Error::io("write", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("write", &path)(e.error))?;
        Ok(())
    }

    /// Every ref record: its file, the reference or source text, the digest it points at.
    /// Records that cannot be read as either kind are left out.
    fn read_refs(&self) -> Result<Vec<(PathBuf, String, String)>, Error> {
        let dir = self.root.join("refs");
        let entries = match fs_err::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &dir)(e)),
        };
        let mut refs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("read", &dir))?;
            let path = entry.path();
            let name = entry.file_name();
            // `.tmp…`: a record being written by `write_ref`.
            let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
                continue;
            };
            let bytes = match fs_err::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &path)(e)),
            };
            let parsed = if bytes.starts_with(b"{") {
                serde_json::from_slice::<FileRef>(&bytes)
                    .ok()
                    .map(|r| (r.source, r.manifest_digest))
            } else {
                let digest = String::from_utf8_lossy(&bytes).trim().to_owned();
                unescape_file_name(name).map(|text| (text, digest))
            };
            match parsed {
                Some((text, digest)) if validate_digest(&digest).is_ok() => {
                    refs.push((path, text, digest));
                }
                _ => debug!(path = %path.display(), "skipping an unreadable ref record"),
            }
        }
        Ok(refs)
    }

    /// Every complete image in the store, sorted by digest, with the refs that point at it.
    /// Sizes on disk are not reported: they would take a walk of every rootfs.
    pub fn list(&self) -> Result<Vec<StoredImage>, Error> {
        let dir = self.root.join("images");
        let entries = match fs_err::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &dir)(e)),
        };
        let mut images = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("read", &dir))?;
            let Some(hex) = entry
                .file_name()
                .to_str()
                .filter(|n| validate_digest(&format!("sha256:{n}")).is_ok())
                .map(str::to_owned)
            else {
                continue;
            };
            if let Some(record) = self.read_record(&hex)? {
                let image = self.image(String::new(), record);
                images.insert(
                    image.manifest_digest.clone(),
                    StoredImage {
                        manifest_digest: image.manifest_digest,
                        refs: Vec::new(),
                        rootfs: image.rootfs,
                        config: image.config,
                    },
                );
            }
        }
        for (_, text, digest) in self.read_refs()? {
            if let Some(image) = images.get_mut(&digest) {
                image.refs.push(text);
            }
        }
        Ok(images
            .into_values()
            .map(|mut image| {
                image.refs.sort();
                image
            })
            .collect())
    }

    /// Removes the image `digest` names (`sha256:<hex>`, or a prefix of at least 12 hex digits
    /// that only one image has) and the refs that point at it. The image directory is first
    /// renamed into `tmp/`, so no reader ever sees a half-removed image as complete; a job
    /// still running on it keeps its mount (the caller decides whether one may be).
    pub fn remove(&self, digest: &str) -> Result<StoredImage, Error> {
        let fail = |reason: String| Error::Remove {
            digest: digest.to_owned(),
            reason,
        };
        let wanted = digest.strip_prefix("sha256:").unwrap_or(digest);
        if !(12..=64).contains(&wanted.len())
            || !wanted
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(fail(
                "give sha256:<64 hex> or at least 12 lowercase hex digits of it".to_owned(),
            ));
        }
        let mut matching: Vec<StoredImage> = self
            .list()?
            .into_iter()
            .filter(|image| image.manifest_digest["sha256:".len()..].starts_with(wanted))
            .collect();
        let image = match matching.len() {
            0 => return Err(fail("no image in the store has this digest".to_owned())),
            1 => matching.remove(0),
            _ => {
                let all: Vec<&str> = matching
                    .iter()
                    .map(|i| i.manifest_digest.as_str())
                    .collect();
                return Err(fail(format!("several images match: {}", all.join(", "))));
            }
        };
        let trash = self.tmp_dir()?;
        let from = self.image_dir(&image.manifest_digest);
        let to = trash.path().join("image");
        std::fs::rename(&from, &to).map_err(Error::io("move to tmp/ the image", &from))?;
        for (path, _, ref_digest) in self.read_refs()? {
            if ref_digest == image.manifest_digest {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &path)(e)),
                }
            }
        }
        let trash = trash.keep();
        remove_tree(&trash).map_err(Error::io("remove", &trash))?;
        info!(digest = %image.manifest_digest, refs = ?image.refs, "image removed");
        Ok(image)
    }

    fn tmp_root(&self) -> Result<PathBuf, Error> {
        let dir = self.root.join("tmp");
        fs_err::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        Ok(dir)
    }

    pub(crate) fn tmp_dir(&self) -> Result<tempfile::TempDir, Error> {
        let root = self.tmp_root()?;
        tempfile::Builder::new()
            .prefix(&format!("{}.", std::process::id()))
            .tempdir_in(&root)
            .map_err(Error::io("create a temp dir in", &root))
    }

    /// Removes temp files and dirs of processes that are gone (a crash or a kill mid-pull).
    /// Names start with the owner's pid, so a pull running in another process is left alone.
    pub(crate) fn remove_leftovers(&self) {
        let dir = self.root.join("tmp");
        let Ok(entries) = fs_err::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split_once('.'))
                .map(|(pid, _)| pid)
            else {
                continue;
            };
            if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
                continue;
            }
            let path = entry.path();
            let result = match entry.file_type() {
                Ok(t) if t.is_dir() => remove_tree(&path),
                _ => std::fs::remove_file(&path),
            };
            match result {
                Ok(()) => debug!(path = %path.display(), "removed a leftover of an earlier pull"),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot remove a leftover of an earlier pull")
                }
            }
        }
    }
}

/// Fetches the manifest the reference names, following an index to the host's platform, and
/// verifies every manifest fetched by digest.
async fn resolve(registry: &Registry, image: &ImageRef) -> Result<(String, Manifest), Error> {
    let mut reference = image.reference.as_str().to_owned();
    let mut expected = match &image.reference {
        Reference::Digest(digest) => Some((digest.clone(), None)),
        Reference::Tag(_) => None,
    };
    for _ in 0..MAX_INDEX_DEPTH {
        let fetched = registry.manifest(&reference).await?;
        let digest = sha256_digest(&fetched.bytes);
        if let Some((expected_digest, expected_size)) = expected {
            if digest != expected_digest {
                return Err(Error::DigestMismatch {
                    what: format!("manifest from {}", fetched.url),
                    expected: expected_digest,
                    actual: digest,
                });
            }
            if let Some(size) = expected_size.filter(|&s| s != fetched.bytes.len() as u64) {
                return Err(Error::SizeMismatch {
                    what: format!("manifest from {}", fetched.url),
                    expected: size,
                    actual: fetched.bytes.len() as u64,
                });
            }
        }
        let json_err = |what| {
            let url = fetched.url.clone();
            move |source| Error::Json {
                what,
                origin: url,
                source,
            }
        };
        match manifest::kind_of(
            &fetched.bytes,
            fetched.content_type.as_deref(),
            &fetched.url,
        )? {
            Kind::Manifest => {
                let manifest: Manifest =
                    serde_json::from_slice(&fetched.bytes).map_err(json_err("manifest"))?;
                return Ok((digest, manifest));
            }
            Kind::Index => {
                let index: Index =
                    serde_json::from_slice(&fetched.bytes).map_err(json_err("index"))?;
                let chosen = manifest::select_platform(
                    &index,
                    &HostPlatform::current(),
                    &image.to_string(),
                )?;
                validate_digest(&chosen.digest)?;
                debug!(%image, index = %digest, manifest = %chosen.digest, "chose the host's platform");
                reference = chosen.digest.clone();
                expected = Some((chosen.digest.clone(), Some(chosen.size)));
            }
        }
    }
    Err(Error::UnsupportedMediaType {
        what: format!("{image}: indexes nested more than {MAX_INDEX_DEPTH} deep"),
        media_type: manifest::OCI_INDEX.to_owned(),
    })
}

impl ImageRecord {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serializable")
    }
}

/// Applies the layers in order in `work/rootfs`, writes `image.json` beside it, and renames
/// `work` to `image_dir`, so an image directory is either complete or absent.
pub(crate) fn unpack_image(
    work: tempfile::TempDir,
    layers: Vec<LayerInput>,
    record_json: &[u8],
    image_dir: &Path,
) -> Result<(), Error> {
    let rootfs = make_rootfs(work.path())?;
    build_rootfs(&rootfs, layers)?;
    publish(work, record_json, image_dir)
}

/// Makes `work/rootfs`, empty, for [`build_rootfs`].
pub(crate) fn make_rootfs(work: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let rootfs = work.join("rootfs");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(Error::io("create", &rootfs))?;
    Ok(rootfs)
}

/// Applies the layers in order on `rootfs`, verifying on the way what each [`LayerInput`] asks
/// for. Returns each layer's `(sha256 digest, size)` as stored; the digest is `None` for
/// [`RawDigest::Trusted`] layers, which are not hashed.
pub(crate) fn build_rootfs(
    rootfs: &Path,
    layers: Vec<LayerInput>,
) -> Result<Vec<(Option<String>, u64)>, Error> {
    let mut read = Vec::with_capacity(layers.len());
    for layer in layers {
        let hash = !matches!(layer.raw, RawDigest::Trusted);
        let mut raw = Hashing::new(layer.data.open()?, hash);
        let applied = {
            let reader = BufReader::with_capacity(1 << 20, &mut raw);
            match layer.compression {
                // Multi-member so that layers compressed in parallel (pigz) read whole.
                Compression::Gzip => {
                    apply_layer(flate2::read::MultiGzDecoder::new(reader), &layer, rootfs)
                }
                Compression::None => apply_layer(reader, &layer, rootfs),
            }
        };
        let drained = if hash {
            // The digest covers every byte, also what follows the tar's end-of-archive blocks.
            io::copy(&mut raw, &mut io::sink())
                .map(drop)
                .map_err(Error::io("read", layer.data.path()))
        } else {
            Ok(())
        };
        let (digest, size) = raw.finish();
        // A wrong digest explains a failed unpack better than the unpack's own error does.
        if let RawDigest::Expect {
            digest: expected,
            size: expected_size,
        } = &layer.raw
        {
            if size != *expected_size {
                return Err(Error::SizeMismatch {
                    what: layer.what,
                    expected: *expected_size,
                    actual: size,
                });
            }
            let actual = digest.clone().unwrap_or_default();
            if actual != *expected {
                return Err(Error::DigestMismatch {
                    what: layer.what,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        applied?;
        drained?;
        read.push((digest, size));
    }
    Ok(read)
}

/// Unpacks one uncompressed layer stream, checking its `diff_id` when there is one.
fn apply_layer<R: Read>(reader: R, layer: &LayerInput, rootfs: &Path) -> Result<(), Error> {
    let mut tar = Hashing::new(reader, layer.diff_id.is_some());
    unpack_layer(&mut tar, rootfs)?;
    if let Some(expected) = &layer.diff_id {
        io::copy(&mut tar, &mut io::sink()).map_err(|source| Error::Unpack {
            path: layer.data.path().to_owned(),
            source,
        })?;
        let actual = tar.finish().0.unwrap_or_default();
        if actual != *expected {
            return Err(Error::DigestMismatch {
                what: format!(
                    "{} (uncompressed, against the config's diff_id)",
                    layer.what
                ),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// Writes `image.json` beside `work/rootfs` and renames `work` to `image_dir`.
pub(crate) fn publish(
    work: tempfile::TempDir,
    record_json: &[u8],
    image_dir: &Path,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;

    let record_path = work.path().join("image.json");
    fs_err::write(&record_path, record_json).map_err(Error::io("write", &record_path))?;
    // tempfile makes the dir 0700; the runtime may look at the rootfs as another user.
    fs_err::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io("set permissions of", work.path()))?;
    let started = Instant::now();
    sync_filesystem(work.path())?;
    debug!(elapsed = ?started.elapsed(), "unpacked files flushed to disk");

    let images = image_dir.parent().expect("images/<hex> has a parent");
    fs_err::create_dir_all(images).map_err(Error::io("create", images))?;
    match std::fs::rename(work.path(), image_dir) {
        Ok(()) => {
            // Renamed away: nothing left for the guard to delete.
            let _ = work.keep();
            Ok(())
        }
        // Another pull of the same image finished first; its copy is as good, drop ours.
        Err(_) if image_dir.join("image.json").is_file() => {
            discard(work);
            Ok(())
        }
        Err(e) => Err(Error::io("move the unpacked image to", image_dir)(e)),
    }
}

/// Removes a work dir that holds an unpacked rootfs, which `TempDir`'s drop cannot when a
/// layer left a directory without write permission.
pub(crate) fn discard(work: tempfile::TempDir) {
    let path = work.keep();
    if let Err(e) = remove_tree(&path) {
        warn!(path = %path.display(), error = %e, "cannot remove a work directory");
    }
}

/// `remove_dir_all`, and when a directory refuses (a layer may make one `0555` as an
/// unprivileged user cannot then empty it), again after giving every directory `0700`.
/// Symlinks are removed, never followed.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    fn open_up(dir: &Path) -> io::Result<()> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                open_up(&entry.path())?;
            }
        }
        Ok(())
    }

    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path)?;
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// A reader that hashes (when asked) and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Option<Sha256>,
    len: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R, hash: bool) -> Self {
        Hashing {
            inner,
            hasher: hash.then(Sha256::new),
            len: 0,
        }
    }

    /// `sha256:<hex>` if hashed, and the bytes read.
    fn finish(self) -> (Option<String>, u64) {
        let digest = self
            .hasher
            .map(|h| format!("sha256:{}", hex::encode(h.finalize())));
        (digest, self.len)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }
}

/// Flushes the unpacked files before the rename publishes them: after a power cut the store
/// must not hold a complete-looking image with empty files. One `syncfs` is far cheaper than
/// an fsync per file.
fn sync_filesystem(path: &Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let dir = fs_err::File::open(path).map_err(Error::io("open", path))?;
    nix::unistd::syncfs(dir.as_raw_fd())
        .map_err(|e| Error::io("flush to disk", path)(io::Error::from(e)))
}
