//! The one error type of this crate, with a variant per step that can fail.

use std::io;
use std::path::PathBuf;

/// Why pulling, caching or unpacking an image failed.
///
/// Messages are lowercase and read after "failed to ...".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parse image reference {input:?}: {reason}")]
    Parse { input: String, reason: String },

    #[error("build the http client")]
    Client(#[source] reqwest::Error),

    #[error("send a request to {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("fetch {url}: the registry answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },

    #[error("get an anonymous token from {realm}: {reason}")]
    Auth { realm: String, reason: String },

    #[error("parse the {what} from {origin}")]
    Json {
        what: &'static str,
        origin: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("use digest {digest:?}: only sha256 digests of 64 lowercase hex digits are supported")]
    InvalidDigest { digest: String },

    #[error("verify {what}: expected digest {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("verify {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("handle {what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },

    #[error("find a manifest for {wanted} in {reference} (it offers: {})", available.join(", "))]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error("unpack {}", path.display())]
    Unpack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("read the image in {origin}: {reason}")]
    Source { origin: String, reason: String },

    #[error(
        "choose an image in {origin}: {reason} ({})",
        describe_available(available)
    )]
    ChooseImage {
        origin: String,
        reason: String,
        available: Vec<String>,
    },

    #[error("remove image {digest:?}: {reason}")]
    Remove { digest: String, reason: String },

    #[error("run the blocking unpack task")]
    Join(#[source] tokio::task::JoinError),
}

fn describe_available(available: &[String]) -> String {
    if available.is_empty() {
        "it has no tags".to_owned()
    } else {
        format!("it has: {}", available.join(", "))
    }
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
