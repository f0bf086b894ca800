//! Reads images from files: an OCI image layout (a directory, or a tar of one) and what
//! `docker save` writes. It chooses the image (tag, then the host's platform), reads and
//! verifies the manifest and config, and says where each layer's bytes are; the store then
//! unpacks them, verifying them on the way ([`crate::store::build_rootfs`]).
//!
//! Archives are hostile input. Nothing is extracted from them by name: one pass over the tar
//! notes where the data of each regular file at a cleaned relative path lies, and what is
//! needed is then read from the archive at that offset. Links, devices, `..` and absolute
//! paths are never looked at, JSON files are capped at [`MAX_JSON`], and every blob is
//! checked against its digest (or, in a `docker-archive`, the config's `diff_ids`).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::manifest::{
    self, Compression, Descriptor, HostPlatform, ImageConfig, Index, Kind, Manifest,
};
use crate::reference::validate_digest;
use crate::registry::sha256_digest;
use crate::safe_path::{Absolute, RelPath, Rules};
use crate::source::ImageSource;
use crate::store::{LayerData, LayerInput, RawDigest};
use crate::{Error, ImageRef};

/// Largest JSON file read (index, manifest, config, `manifest.json`); real ones are a few KiB.
pub(crate) const MAX_JSON: u64 = 4 << 20;

/// Most regular files an archive may have; a layout has a handful per layer.
const MAX_ENTRIES: usize = 100_000;

/// An index naming an index is allowed by the spec; no tool nests deeper than this.
const MAX_INDEX_DEPTH: usize = 3;

/// The annotation skopeo, umoci, podman and buildkit write for a manifest's tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

const ARCHIVE_PATHS: Rules = Rules {
    absolute: Absolute::Refused,
    limits: None,
};

/// What to unpack, and what is known before unpacking.
pub(crate) enum Plan {
    /// An OCI image: the manifest digest is known, so an image already unpacked is reused.
    Known {
        manifest_digest: String,
        config_digest: String,
        config: ImageConfig,
        layers: Vec<LayerInput>,
        layer_digests: Vec<String>,
    },
    /// A `docker-archive`: there is no manifest; [`docker_manifest`] makes one from the
    /// layers' digests once they are read.
    Docker {
        config_digest: String,
        config_size: u64,
        config: ImageConfig,
        layers: Vec<LayerInput>,
    },
}

/// Reads the file source (canonical, not a registry) up to the point of unpacking.
pub(crate) fn plan(src: &ImageSource) -> Result<Plan, Error> {
    match src {
        ImageSource::Registry(image) => Err(Error::Source {
            origin: image.to_string(),
            reason: "a registry image is pulled, not imported".to_owned(),
        }),
        ImageSource::OciLayout { dir, tag } => {
            plan_oci(&Files::Dir(dir.clone()), &src.to_string(), tag.as_deref())
        }
        ImageSource::OciArchive { path, tag } => {
            let files = Files::open_tar(path, |name| {
                matches!(name, "index.json" | "oci-layout") || blob_hex(name).is_some()
            })?;
            plan_oci(&files, &src.to_string(), tag.as_deref())
        }
        ImageSource::DockerArchive { path, tag } => {
            let files = Files::open_tar(path, |_| true)?;
            plan_docker(&files, &src.to_string(), tag.as_deref())
        }
    }
}

/// The files of a layout or archive, by their path relative to its root.
enum Files {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        /// Cleaned path -> (offset of the data in the archive, size).
        entries: HashMap<String, (u64, u64)>,
        /// Cleaned path of a symlink -> the entry it names, resolved lexically inside the
        /// archive. `docker save` (and skopeo's docker-archive) write a layer that two images
        /// share once, and a link to it at the second place.
        links: HashMap<String, String>,
    },
}

/// A file found in [`Files`].
struct Found {
    data: LayerData,
    len: u64,
    /// The file in messages: its path, or `name in archive`.
    shown: String,
}

impl Files {
    /// Notes where the regular files of the tar at `path` whose cleaned names `keep` accepts
    /// lie, reading only headers.
    fn open_tar(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Files, Error> {
        let file = std::fs::File::open(path).map_err(Error::io("open", path))?;
        let mut magic = [0; 4];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(Error::io("read", path))?;
        let fail = |reason: String| Error::Source {
            origin: path.display().to_string(),
            reason,
        };
        if let Some(kind) = compressed(&magic[..n]) {
            return Err(fail(format!(
                "the archive is {kind}-compressed; decompress it first (the tar is read in place)"
            )));
        }
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        let mut links = HashMap::new();
        let read_error = |e| fail(format!("not a readable tar archive: {e}"));
        for entry in archive.entries_with_seek().map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            // Regular files, and symlinks, which only ever name another entry: nothing on
            // disk is looked at by an entry's name.
            let kind = entry.header().entry_type();
            if !matches!(
                kind,
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink
            ) {
                continue;
            }
            let raw = entry.path_bytes();
            let name = match RelPath::parse(&raw, ARCHIVE_PATHS) {
                Ok(rel) => match rel.as_path().to_str() {
                    Some(name) if !name.is_empty() => name.to_owned(),
                    _ => continue,
                },
                Err(reason) => {
                    debug!(entry = %String::from_utf8_lossy(&raw), %reason, "skipping an archive entry");
                    continue;
                }
            };
            if !keep(&name) {
                continue;
            }
            if entries.len() + links.len() >= MAX_ENTRIES {
                return Err(fail(format!("it has more than {MAX_ENTRIES} files")));
            }
            if kind == tar::EntryType::Symlink {
                let target = entry.link_name_bytes().unwrap_or_default();
                match resolve_link(&name, &target) {
                    Some(target) => {
                        links.insert(name, target);
                    }
                    None => debug!(entry = %name, "skipping a symlink that leaves the archive"),
                }
                continue;
            }
            let at = (entry.raw_file_position(), entry.size());
            if entries.insert(name.clone(), at).is_some() {
                return Err(fail(format!("{name} is in the archive twice")));
            }
        }
        Ok(Files::Tar {
            path: path.to_owned(),
            entries,
            links,
        })
    }

    fn find(&self, name: &str) -> Result<Option<Found>, Error> {
        match self {
            Files::Dir(dir) => {
                let path = dir.join(name);
                let metadata = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io("look at", &path)(e)),
                };
                if !metadata.is_file() {
                    return Err(Error::Source {
                        origin: path.display().to_string(),
                        reason: "not a regular file".to_owned(),
                    });
                }
                Ok(Some(Found {
                    shown: path.display().to_string(),
                    data: LayerData::File(path),
                    len: metadata.len(),
                }))
            }
            Files::Tar {
                path,
                entries,
                links,
            } => Ok(entries
                // One link is followed, to a regular file; a link to a link is not.
                .get(name)
                .or_else(|| links.get(name).and_then(|target| entries.get(target)))
                .map(|&(offset, len)| Found {
                    data: LayerData::Slice {
                        path: path.clone(),
                        offset,
                        len,
                    },
                    len,
                    shown: format!("{name} in {}", path.display()),
                })),
        }
    }

    /// Where the file is, or an error saying it is missing.
    fn need(&self, name: &str, origin: &str) -> Result<Found, Error> {
        self.find(name)?.ok_or_else(|| Error::Source {
            origin: origin.to_owned(),
            reason: format!("it has no file {name}"),
        })
    }
}

impl Found {
    /// The whole file, at most [`MAX_JSON`] bytes.
    fn read_small(&self) -> Result<Vec<u8>, Error> {
        if self.len > MAX_JSON {
            return Err(Error::Source {
                origin: self.shown.clone(),
                reason: format!(
                    "it is {} bytes, more than the {MAX_JSON} a JSON file may have",
                    self.len
                ),
            });
        }
        let mut bytes = Vec::with_capacity(self.len as usize);
        self.data
            .open()?
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io("read", self.data.path()))?;
        Ok(bytes)
    }
}

fn json<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &'static str,
    origin: &str,
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what,
        origin: origin.to_owned(),
        source,
    })
}

/// The entry a symlink at `name` (cleaned) pointing at `target` names, read lexically from
/// the link's directory; `None` if it is absolute or climbs above the archive's root.
fn resolve_link(name: &str, target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `blobs/sha256/<hex>` -> hex.
fn blob_hex(name: &str) -> Option<&str> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    validate_digest(&format!("sha256:{hex}")).ok()?;
    Some(hex)
}

/// What the magic bytes say the file is compressed with, if anything.
fn compressed(magic: &[u8]) -> Option<&'static str> {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if magic.starts_with(b"BZh") {
        Some("bzip2")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X']) {
        Some("xz")
    } else {
        None
    }
}

/// Reads a blob of an OCI layout named by `desc` and checks its size and digest.
fn read_blob(files: &Files, desc: &Descriptor, origin: &str) -> Result<Vec<u8>, Error> {
    let hex = validate_digest(&desc.digest)?;
    let found = files.need(&format!("blobs/sha256/{hex}"), origin)?;
    let what = || format!("blob {} ({})", desc.digest, found.shown);
    if found.len != desc.size {
        return Err(Error::SizeMismatch {
            what: what(),
            expected: desc.size,
            actual: found.len,
        });
    }
    let bytes = found.read_small()?;
    let actual = sha256_digest(&bytes);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            what: what(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn plan_oci(files: &Files, origin: &str, tag: Option<&str>) -> Result<Plan, Error> {
    if let Some(found) = files.find("oci-layout")? {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layout {
            image_layout_version: String,
        }
        let layout: Layout = json(&found.read_small()?, "oci-layout file", &found.shown)?;
        if layout.image_layout_version != "1.0.0" {
            return Err(Error::Source {
                origin: origin.to_owned(),
                reason: format!(
                    "image layout version {:?} is not 1.0.0",
                    layout.image_layout_version
                ),
            });
        }
    }
    let found = files.find("index.json")?.ok_or_else(|| Error::Source {
        origin: origin.to_owned(),
        reason: "it has no index.json: not an OCI image layout".to_owned(),
    })?;
    let index: Index = json(&found.read_small()?, "index", &found.shown)?;
    let mut desc = choose_in_index(&index, tag, origin)?;

    let mut chosen = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let bytes = read_blob(files, &desc, origin)?;
        let media_type = Some(desc.media_type.as_str()).filter(|t| !t.is_empty());
        match manifest::kind_of(&bytes, media_type, origin)? {
            Kind::Manifest => {
                chosen = Some(json::<Manifest>(&bytes, "manifest", origin)?);
                break;
            }
            Kind::Index => {
                let index: Index = json(&bytes, "index", origin)?;
                desc = manifest::select_platform(&index, &HostPlatform::current(), origin)?.clone();
                debug!(source = origin, manifest = %desc.digest, "chose the host's platform");
            }
        }
    }
    let Some(manifest) = chosen else {
        return Err(Error::UnsupportedMediaType {
            what: format!("{origin}: indexes nested more than {MAX_INDEX_DEPTH} deep"),
            media_type: manifest::OCI_INDEX.to_owned(),
        });
    };

    let config_bytes = read_blob(files, &manifest.config, origin)?;
    let config = ImageConfig::from_config_json(&config_bytes, &manifest.config.digest)?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let compression = manifest::layer_compression(&layer.media_type, &layer.digest)?;
        let hex = validate_digest(&layer.digest)?;
        let found = files.need(&format!("blobs/sha256/{hex}"), origin)?;
        let what = format!("layer {} ({})", layer.digest, found.shown);
        if found.len != layer.size {
            return Err(Error::SizeMismatch {
                what,
                expected: layer.size,
                actual: found.len,
            });
        }
        layers.push(LayerInput {
            data: found.data,
            compression,
            raw: RawDigest::Expect {
                digest: layer.digest.clone(),
                size: layer.size,
            },
            diff_id: None,
            what,
        });
    }
    Ok(Plan::Known {
        manifest_digest: desc.digest,
        config_digest: manifest.config.digest,
        config,
        layers,
        layer_digests: manifest.layers.into_iter().map(|l| l.digest).collect(),
    })
}

/// The entry of a layout's `index.json` that `tag` names, or the only one.
fn choose_in_index(index: &Index, tag: Option<&str>, origin: &str) -> Result<Descriptor, Error> {
    fn name_of(d: &Descriptor) -> Option<&str> {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .map(String::as_str)
    }
    let mut tags: Vec<String> = Vec::new();
    for name in index.manifests.iter().filter_map(name_of) {
        if !tags.iter().any(|t| t == name) {
            tags.push(name.to_owned());
        }
    }
    let choose = |reason: String, tags: Vec<String>| Error::ChooseImage {
        origin: origin.to_owned(),
        reason,
        available: tags,
    };
    match tag {
        Some(tag) => {
            let matching: Vec<Descriptor> = index
                .manifests
                .iter()
                .filter(|d| name_of(d) == Some(tag))
                .cloned()
                .collect();
            match matching.len() {
                0 => Err(choose(format!("no image is tagged {tag:?}"), tags)),
                1 => Ok(matching.into_iter().next().expect("one")),
                // One tag on several platforms' manifests, as `podman manifest` can leave it.
                _ => Ok(manifest::select_platform(
                    &Index {
                        manifests: matching.clone(),
                    },
                    &HostPlatform::current(),
                    origin,
                )?
                .clone()),
            }
        }
        None => match index.manifests.as_slice() {
            [] => Err(choose("it holds no image".to_owned(), tags)),
            [only] => Ok(only.clone()),
            // No tags at all: a multi-platform image's own index.
            _ if tags.is_empty() => {
                Ok(manifest::select_platform(index, &HostPlatform::current(), origin)?.clone())
            }
            _ => Err(choose(
                "it holds several images; name one with `:TAG`".to_owned(),
                tags,
            )),
        },
    }
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A name as Docker normalizes it, or as written when it does not parse.
fn normalize(name: &str) -> String {
    name.parse::<ImageRef>()
        .map_or_else(|_| name.to_owned(), |r| r.to_string())
}

/// Cleans a path `manifest.json` names, which may not leave the archive.
fn clean(name: &str, origin: &str) -> Result<String, Error> {
    RelPath::parse(name.as_bytes(), ARCHIVE_PATHS)
        .ok()
        .and_then(|rel| rel.as_path().to_str().map(str::to_owned))
        .filter(|clean| !clean.is_empty())
        .ok_or_else(|| Error::Source {
            origin: origin.to_owned(),
            reason: format!("manifest.json names {name:?}, which is not a relative path inside"),
        })
}

fn plan_docker(files: &Files, origin: &str, tag: Option<&str>) -> Result<Plan, Error> {
    let found = files.find("manifest.json")?.ok_or_else(|| Error::Source {
        origin: origin.to_owned(),
        reason: "it has no manifest.json: not written by `docker save`".to_owned(),
    })?;
    let images: Vec<DockerImage> = json(&found.read_small()?, "manifest.json", &found.shown)?;
    let all_tags: Vec<String> = images
        .iter()
        .flat_map(|i| i.repo_tags.iter().flatten().cloned())
        .collect();
    let choose = |reason: String| Error::ChooseImage {
        origin: origin.to_owned(),
        reason,
        available: all_tags.clone(),
    };
    let image = match tag {
        Some(tag) => {
            let wanted = normalize(tag);
            images
                .iter()
                .find(|i| i.repo_tags.iter().flatten().any(|t| normalize(t) == wanted))
                .ok_or_else(|| choose(format!("no image is tagged {tag:?}")))?
        }
        None => match images.as_slice() {
            [] => return Err(choose("it holds no image".to_owned())),
            [only] => only,
            _ => {
                return Err(choose(
                    "it holds several images; name one with `:NAME:TAG`".to_owned(),
                ))
            }
        },
    };

    let config_name = clean(&image.config, origin)?;
    let found = files.need(&config_name, origin)?;
    let config_bytes = found.read_small()?;
    let config_digest = sha256_digest(&config_bytes);
    // `<hex>.json` (legacy) and `blobs/sha256/<hex>` (docker 25) name the config by digest.
    let named = config_name
        .strip_suffix(".json")
        .filter(|hex| validate_digest(&format!("sha256:{hex}")).is_ok())
        .or_else(|| blob_hex(&config_name));
    if let Some(hex) = named {
        let expected = format!("sha256:{hex}");
        if expected != config_digest {
            return Err(Error::DigestMismatch {
                what: format!("config {}", found.shown),
                expected,
                actual: config_digest,
            });
        }
    }
    let config = ImageConfig::from_config_json(&config_bytes, &found.shown)?;
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct ConfigFile {
        rootfs: RootFs,
    }
    let diff_ids = json::<ConfigFile>(&config_bytes, "image config", &found.shown)?
        .rootfs
        .diff_ids;
    if diff_ids.len() != image.layers.len() {
        return Err(Error::Source {
            origin: found.shown,
            reason: format!(
                "the config lists {} layers and manifest.json {}",
                diff_ids.len(),
                image.layers.len()
            ),
        });
    }

    let mut layers = Vec::with_capacity(diff_ids.len());
    for (name, diff_id) in image.layers.iter().zip(diff_ids) {
        validate_digest(&diff_id)?;
        let layer = files.need(&clean(name, origin)?, origin)?;
        let mut magic = [0; 4];
        let n = layer
            .data
            .open()?
            .read(&mut magic)
            .map_err(Error::io("read", layer.data.path()))?;
        let compression = match compressed(&magic[..n]) {
            None => Compression::None,
            Some("gzip") => Compression::Gzip,
            Some(other) => {
                return Err(Error::UnsupportedMediaType {
                    what: format!("layer {}", layer.shown),
                    media_type: format!("{other}-compressed tar"),
                })
            }
        };
        layers.push(LayerInput {
            what: format!("layer {}", layer.shown),
            data: layer.data,
            compression,
            raw: RawDigest::Compute,
            diff_id: Some(diff_id),
        });
    }
    Ok(Plan::Docker {
        config_digest,
        config_size: config_bytes.len() as u64,
        config,
        layers,
    })
}

/// The OCI image manifest a `docker-archive` image would have: its bytes are always the same
/// for the same config and layers, so its digest keys the unpacked image.
pub(crate) fn docker_manifest(
    config_digest: &str,
    config_size: u64,
    layers: &[(Compression, String, u64)],
) -> Vec<u8> {
    // Structs, not a JSON map: the field order is part of the digest.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out<'a> {
        schema_version: u32,
        media_type: &'a str,
        config: Desc<'a>,
        layers: Vec<Desc<'a>>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Desc<'a> {
        media_type: &'a str,
        digest: &'a str,
        size: u64,
    }
    let out = Out {
        schema_version: 2,
        media_type: manifest::OCI_MANIFEST,
        config: Desc {
            media_type: manifest::OCI_CONFIG,
            digest: config_digest,
            size: config_size,
        },
        layers: layers
            .iter()
            .map(|(compression, digest, size)| Desc {
                media_type: match compression {
                    Compression::None => manifest::OCI_LAYER_TAR,
                    Compression::Gzip => manifest::OCI_LAYER_GZIP,
                },
                digest,
                size: *size,
            })
            .collect(),
    };
    serde_json::to_vec(&out).expect("serializable")
}

#[cfg(test)]
mod tests;
