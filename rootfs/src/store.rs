//! The on-disk cache of pulled images, and the pull itself.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>          verified blobs (configs and compressed layers), so a re-pull skips them
//! images/<manifest hex>/      one per image manifest, complete or absent (made in tmp/, then renamed)
//!     image.json              the image config and digests
//!     rootfs/                 all layers applied
//! refs/<escaped reference>    the manifest digest the reference resolved to, for offline lookups
//! tmp/<pid>.<random>          work in progress; removed when that process is gone
//! ```

use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::manifest::{self, Compression, HostPlatform, ImageConfig, Index, Kind, Manifest};
use crate::reference::{escape_for_file_name, validate_digest};
use crate::registry::{sha256_digest, Registry};
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

/// What `images/<hex>/image.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    manifest_digest: String,
    config_digest: String,
    layers: Vec<String>,
    config: ImageConfig,
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
        let ref_path = self.ref_path(image);
        let digest = match fs_err::read_to_string(&ref_path) {
            Ok(digest) => digest,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &ref_path)(e)),
        };
        let digest = digest.trim();
        let hex = validate_digest(digest)?;
        Ok(self
            .read_record(hex)?
            .map(|record| self.image(image, record)))
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
        self.write_ref(image, &manifest_digest)?;
        info!(%image, digest = %manifest_digest, elapsed = ?started.elapsed(), "image ready");
        Ok(self.image(image, record))
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
        let record_json = serde_json::to_vec_pretty(&record).expect("serializable");
        let started = Instant::now();
        // Unpacking is blocking file work: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            unpack_image(
                work,
                blobs.into_iter().zip(compressions),
                &record_json,
                &image_dir,
            )
        })
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

    fn read_record(&self, hex: &str) -> Result<Option<ImageRecord>, Error> {
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

    fn image(&self, image: &ImageRef, record: ImageRecord) -> Image {
        let hex = record
            .manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(&record.manifest_digest);
        Image {
            reference: image.to_string(),
            rootfs: self.root.join("images").join(hex).join("rootfs"),
            manifest_digest: record.manifest_digest.clone(),
            config: record.config,
        }
    }

    fn ref_path(&self, image: &ImageRef) -> PathBuf {
        self.root
            .join("refs")
            .join(escape_for_file_name(&image.to_string()))
    }

    /// Written to a temp file and renamed over, so a reader sees the old digest or the new one.
    fn write_ref(&self, image: &ImageRef, digest: &str) -> Result<(), Error> {
        let path = self.ref_path(image);
        let dir = self.root.join("refs");
        fs_err::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(Error::io("create a temp file in", &dir))?;
        writeln!(tmp, "{digest}").map_err(Error::io("write", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("write", &path)(e.error))?;
        Ok(())
    }

    fn tmp_root(&self) -> Result<PathBuf, Error> {
        let dir = self.root.join("tmp");
        fs_err::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        Ok(dir)
    }

    fn tmp_dir(&self) -> Result<tempfile::TempDir, Error> {
        let root = self.tmp_root()?;
        tempfile::Builder::new()
            .prefix(&format!("{}.", std::process::id()))
            .tempdir_in(&root)
            .map_err(Error::io("create a temp dir in", &root))
    }

    /// Removes temp files and dirs of processes that are gone (a crash or a kill mid-pull).
    /// Names start with the owner's pid, so a pull running in another process is left alone.
    fn remove_leftovers(&self) {
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
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
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

/// Applies the layers in order in `work/rootfs`, writes `image.json` beside it, and renames
/// `work` to `image_dir`, so an image directory is either complete or absent.
fn unpack_image(
    work: tempfile::TempDir,
    layers: impl Iterator<Item = (PathBuf, Compression)>,
    record_json: &[u8],
    image_dir: &Path,
) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    let rootfs = work.path().join("rootfs");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(Error::io("create", &rootfs))?;
    for (blob, compression) in layers {
        let file = fs_err::File::open(&blob).map_err(Error::io("open", &blob))?;
        let reader = BufReader::with_capacity(1 << 20, file);
        match compression {
            // Multi-member so that layers compressed in parallel (pigz) read whole.
            Compression::Gzip => unpack_layer(flate2::read::MultiGzDecoder::new(reader), &rootfs)?,
            Compression::None => unpack_layer(reader, &rootfs)?,
        }
    }
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
        Err(_) if image_dir.join("image.json").is_file() => Ok(()),
        Err(e) => Err(Error::io("move the unpacked image to", image_dir)(e)),
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
