//! Manifests, indexes and image configs as the OCI image spec and Docker's schema 2 define them,
//! and the choice of the host's platform in an index.

use serde::{Deserialize, Serialize};

use crate::Error;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Sent as `Accept` on every manifest request. A registry serving an OCI manifest answers 404
/// when its type is missing here (distribution does), so all four go every time.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A pointer to content by digest, as found in manifests and indexes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    /// In an OCI layout's `index.json`, `org.opencontainers.image.ref.name` is the tag.
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Index,
}

/// What a manifest response is. The body's `mediaType` wins; it is optional in OCI (umoci
/// leaves it out), and then the `Content-Type` the registry stored at push time tells.
pub fn kind_of(body: &[u8], content_type: Option<&str>, origin: &str) -> Result<Kind, Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|source| Error::Json {
        what: "manifest",
        origin: origin.to_owned(),
        source,
    })?;
    let header = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim());
    let media_type = probe.media_type.as_deref().or(header).unwrap_or("");
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        OCI_INDEX | DOCKER_LIST => Ok(Kind::Index),
        // A registry that stored no type: the shape tells, as the OCI spec allows guessing.
        "" | "application/json" | "application/octet-stream" | "text/plain" => {
            match (probe.manifests.is_some(), probe.layers.is_some()) {
                (true, false) => Ok(Kind::Index),
                (false, true) => Ok(Kind::Manifest),
                _ => Err(unsupported(origin, media_type)),
            }
        }
        other => Err(unsupported(origin, other)),
    }
}

fn unsupported(origin: &str, media_type: &str) -> Error {
    Error::UnsupportedMediaType {
        what: format!("the manifest from {origin}"),
        media_type: media_type.to_owned(),
    }
}

/// The platform to pick from an index, in Go's naming (which the image spec uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPlatform {
    pub os: &'static str,
    pub architecture: &'static str,
    /// Variants an entry may carry and still run here; `None` is "no variant given".
    pub variants: &'static [Option<&'static str>],
}

impl HostPlatform {
    pub fn current() -> Self {
        let (architecture, variants): (&str, &[Option<&str>]) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", &[None, Some("v1")]),
            // Docker Hub lists arm64 as `arm64/v8`; both spellings mean the same CPU.
            "aarch64" => ("arm64", &[None, Some("v8")]),
            "x86" => ("386", &[None]),
            "arm" => ("arm", &[None, Some("v7"), Some("v6")]),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", &[None]),
            "s390x" => ("s390x", &[None]),
            "riscv64" => ("riscv64", &[None]),
            other => (other, &[None]),
        };
        HostPlatform {
            os: "linux",
            architecture,
            variants,
        }
    }
}

impl std::fmt::Display for HostPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// The first entry of an index that runs on `host`. Entries without a platform, and the
/// `unknown/unknown` attestation manifests BuildKit adds next to each image, never match.
pub fn select_platform<'a>(
    index: &'a Index,
    host: &HostPlatform,
    reference: &str,
) -> Result<&'a Descriptor, Error> {
    let runs_here = |p: &Platform| {
        p.os == host.os
            && p.architecture == host.architecture
            && host.variants.contains(&p.variant.as_deref())
    };
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(runs_here))
        .ok_or_else(|| Error::NoMatchingPlatform {
            reference: reference.to_owned(),
            wanted: host.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect(),
        })
}

/// What a container of this image runs with, from the image config's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

impl ImageConfig {
    pub fn from_config_json(bytes: &[u8], origin: &str) -> Result<Self, Error> {
        // Every field may be missing or `null` in real configs.
        #[derive(Deserialize)]
        struct File {
            config: Option<Raw>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            env: Option<Vec<String>>,
            cmd: Option<Vec<String>>,
            entrypoint: Option<Vec<String>>,
            working_dir: Option<String>,
            user: Option<String>,
        }
        let file: File = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "image config",
            origin: origin.to_owned(),
            source,
        })?;
        let Some(raw) = file.config else {
            return Ok(ImageConfig::default());
        };
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(ImageConfig {
            env: raw.env.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            entrypoint: raw.entrypoint.unwrap_or_default(),
            working_dir: non_empty(raw.working_dir),
            user: non_empty(raw.user),
        })
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

pub fn layer_compression(media_type: &str, digest: &str) -> Result<Compression, Error> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.oci.image.layer.v1.tar.gzip" => Ok(Compression::Gzip),
        other => Err(Error::UnsupportedMediaType {
            what: format!(
                "layer {digest}{}",
                if other.contains("zstd") {
                    " (zstd layers are not supported; push the image with gzip layers)"
                } else {
                    ""
                }
            ),
            media_type: other.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: char, platform: Option<(&str, &str, Option<&str>)>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": format!("sha256:{}", digest.to_string().repeat(64)),
            "size": 100,
        });
        if let Some((os, arch, variant)) = platform {
            v["platform"] = serde_json::json!({ "os": os, "architecture": arch });
            if let Some(variant) = variant {
                v["platform"]["variant"] = variant.into();
            }
        }
        v
    }

    fn hub_like_index() -> Index {
        // Shaped like Docker Hub's python index: platforms, each followed by its attestation.
        let manifests = vec![
            entry('a', Some(("unknown", "unknown", None))),
            entry('1', Some(("linux", "amd64", None))),
            entry('2', Some(("unknown", "unknown", None))),
            entry('3', Some(("linux", "arm", Some("v7")))),
            entry('4', Some(("linux", "arm64", Some("v8")))),
            entry('5', Some(("windows", "amd64", None))),
            entry('6', None),
        ];
        serde_json::from_value(serde_json::json!({ "manifests": manifests })).unwrap()
    }

    #[track_caller]
    fn check_select(
        architecture: &'static str,
        variants: &'static [Option<&'static str>],
        expected: Option<char>,
    ) {
        let index = hub_like_index();
        let host = HostPlatform {
            os: "linux",
            architecture,
            variants,
        };
        let got = select_platform(&index, &host, "r").map(|d| d.digest.chars().last().unwrap());
        match (got, expected) {
            (Ok(got), Some(want)) => assert_eq!(got, want),
            (Err(Error::NoMatchingPlatform { available, .. }), None) => {
                assert_eq!(
                    available,
                    [
                        "linux/amd64",
                        "linux/arm/v7",
                        "linux/arm64/v8",
                        "windows/amd64"
                    ]
                );
            }
            (got, want) => panic!("{architecture}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn selects_the_host_platform() {
        check_select("amd64", &[None, Some("v1")], Some('1'));
        check_select("arm64", &[None, Some("v8")], Some('4'));
        check_select("arm", &[None, Some("v7"), Some("v6")], Some('3'));
        check_select("arm", &[None, Some("v6")], None);
        check_select("riscv64", &[None], None);
        check_select("unknown", &[None], None);
    }

    #[test]
    fn arm64_without_variant_matches() {
        let index: Index = serde_json::from_value(serde_json::json!({
            "manifests": [entry('a', Some(("unknown", "unknown", None))), entry('7', Some(("linux", "arm64", None)))]
        }))
        .unwrap();
        let host = HostPlatform {
            os: "linux",
            architecture: "arm64",
            variants: &[None, Some("v8")],
        };
        assert!(select_platform(&index, &host, "r")
            .unwrap()
            .digest
            .ends_with('7'));
    }

    #[test]
    fn current_host_is_named_like_go() {
        let host = HostPlatform::current();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.architecture, "amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.architecture, "arm64");
        }
    }

    #[track_caller]
    fn check_kind(body: &str, content_type: Option<&str>, expected: Option<Kind>) {
        match (kind_of(body.as_bytes(), content_type, "test"), expected) {
            (Ok(got), Some(want)) => assert_eq!(got, want),
            (Err(Error::UnsupportedMediaType { .. }), None) => {}
            (got, want) => panic!("{body} {content_type:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn media_type_from_body_then_header() {
        let umoci = r#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        check_kind(umoci, Some(OCI_MANIFEST), Some(Kind::Manifest));
        check_kind(
            umoci,
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            Some(Kind::Manifest),
        );
        check_kind(umoci, Some(DOCKER_MANIFEST), Some(Kind::Manifest));
        check_kind(umoci, None, Some(Kind::Manifest));
        check_kind(umoci, Some("application/json"), Some(Kind::Manifest));
        // The header is only a fallback: the body's own type wins.
        check_kind(
            &format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
            Some(OCI_MANIFEST),
            Some(Kind::Index),
        );
        check_kind(
            &format!(r#"{{"mediaType":"{DOCKER_LIST}","manifests":[]}}"#),
            None,
            Some(Kind::Index),
        );
        check_kind(r#"{"manifests":[]}"#, Some(OCI_INDEX), Some(Kind::Index));
        check_kind(r#"{"manifests":[]}"#, None, Some(Kind::Index));
        check_kind(
            r#"{"schemaVersion":1,"fsLayers":[]}"#,
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            None,
        );
        check_kind(r#"{"schemaVersion":1}"#, None, None);
        check_kind(umoci, Some("text/html"), None);
        assert!(matches!(
            kind_of(b"<html>", None, "t"),
            Err(Error::Json { .. })
        ));
    }

    #[test]
    fn image_config_tolerates_nulls_and_missing_fields() {
        let c = ImageConfig::from_config_json(
            br#"{"architecture":"amd64","config":{"Env":["PATH=/usr/bin","LANG=C.UTF-8"],"Cmd":["python3"],
                "Entrypoint":null,"WorkingDir":"","User":"1000:1000","Labels":{"a":"b"}}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(
            c,
            ImageConfig {
                env: vec!["PATH=/usr/bin".into(), "LANG=C.UTF-8".into()],
                cmd: vec!["python3".into()],
                entrypoint: vec![],
                working_dir: None,
                user: Some("1000:1000".into()),
            }
        );
        assert_eq!(
            ImageConfig::from_config_json(br#"{"os":"linux"}"#, "t").unwrap(),
            ImageConfig::default()
        );
    }

    #[test]
    fn layer_media_types() {
        use Compression::*;
        for (media_type, want) in [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Option::None),
            ("application/octet-stream", Option::None),
        ] {
            assert_eq!(
                layer_compression(media_type, "d").ok(),
                want,
                "{media_type}"
            );
        }
        let err = layer_compression("application/vnd.oci.image.layer.v1.tar+zstd", "sha256:x")
            .unwrap_err();
        assert!(
            err.to_string().contains("zstd layers are not supported"),
            "{err}"
        );
    }
}
