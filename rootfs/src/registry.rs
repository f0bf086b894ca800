//! The HTTP side of a pull: manifests and blobs from an OCI distribution registry, with
//! anonymous bearer-token auth.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::auth::{parse_www_authenticate, BearerChallenge, TokenResponse};
use crate::manifest::{Descriptor, MANIFEST_ACCEPT};
use crate::reference::validate_digest;
use crate::{Error, ImageRef, PullOptions, PullProgress};

/// Registries refuse manifests over 4 MiB (distribution's default limit); a bigger body is
/// not a manifest, and reading it whole could exhaust memory.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// A manifest response as received: its digest is the sha256 of exactly these bytes.
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub url: String,
}

pub struct Registry {
    base: String,
    repository: String,
    http: reqwest::Client,
    token: Mutex<Option<String>>,
    progress: Option<PullProgress>,
}

impl Registry {
    pub fn new(image: &ImageRef, opts: &PullOptions) -> Result<Self, Error> {
        let insecure = image.is_loopback()
            || opts
                .insecure_registries
                .iter()
                .any(|r| r == &image.registry || r == image.host());
        let scheme = if insecure { "http" } else { "https" };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ci-rootfs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Between reads, not in total: a big layer may take minutes but never stalls that long.
            .read_timeout(Duration::from_secs(120));
        if image.is_loopback() {
            // A proxy from the environment cannot reach this machine's loopback.
            builder = builder.no_proxy();
        }
        Ok(Registry {
            base: format!("{scheme}://{}", image.registry),
            repository: image.repository.clone(),
            http: builder.build().map_err(Error::Client)?,
            token: Mutex::new(None),
            progress: opts.progress.clone(),
        })
    }

    /// The counters of the pull this registry serves, if someone watches it.
    pub fn progress(&self) -> Option<&PullProgress> {
        self.progress.as_ref()
    }

    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest, Error> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let response = self.get(&url, Some(MANIFEST_ACCEPT)).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(too_big(&url, response.content_length().unwrap_or(0)));
        }
        let mut bytes = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(too_big(&url, bytes.len() as u64));
            }
        }
        Ok(FetchedManifest {
            bytes,
            content_type,
            url,
        })
    }

    /// Streams the blob into `file`, hashing as it goes, and checks size and digest against
    /// the descriptor. `file` is only worth keeping when this returns `Ok`.
    pub async fn blob_to(&self, desc: &Descriptor, file: tokio::fs::File) -> Result<(), Error> {
        let expected_hex = validate_digest(&desc.digest)?;
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, desc.digest);
        let response = self.get(&url, None).await?;
        let size_mismatch = |actual| Error::SizeMismatch {
            what: format!("blob {}", desc.digest),
            expected: desc.size,
            actual,
        };
        if let Some(length) = response.content_length() {
            if length != desc.size {
                return Err(size_mismatch(length));
            }
        }
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut body = response.bytes_stream();
        let write_err = |source| Error::Io {
            action: "write the download of",
            path: desc.digest.clone().into(),
            source,
        };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
            received += chunk.len() as u64;
            // Stop at once rather than fill the disk with whatever a broken server sends.
            if received > desc.size {
                return Err(size_mismatch(received));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(write_err)?;
            if let Some(progress) = &self.progress {
                progress.add(chunk.len() as u64);
            }
        }
        if received != desc.size {
            return Err(size_mismatch(received));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected_hex {
            return Err(Error::DigestMismatch {
                what: format!("blob from {url}"),
                expected: desc.digest.clone(),
                actual: format!("sha256:{actual}"),
            });
        }
        out.flush().await.map_err(write_err)?;
        // Durable before it is renamed into the store, which trusts what it finds there.
        out.into_inner().sync_all().await.map_err(write_err)?;
        Ok(())
    }

    /// GET with the registry's token dance: on 401 with a `Bearer` challenge, fetch an
    /// anonymous token and retry once. Tokens expire (Docker Hub's after 300 s), so a later 401
    /// fetches a fresh one the same way.
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response, Error> {
        let mut retried = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let token = self.token.lock().expect("token lock").clone();
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|source| Error::Http {
                url: url.to_owned(),
                source,
            })?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !retried {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_www_authenticate);
                if let Some(challenge) = challenge {
                    let token = self.fetch_token(&challenge).await?;
                    *self.token.lock().expect("token lock") = Some(token);
                    retried = true;
                    continue;
                }
            }
            if !response.status().is_success() {
                return Err(status_error(url, response).await);
            }
            return Ok(response);
        }
    }

    async fn fetch_token(&self, challenge: &BearerChallenge) -> Result<String, Error> {
        let scope = challenge
            .scope
            .clone()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut query = vec![("scope", scope)];
        if let Some(service) = &challenge.service {
            query.push(("service", service.clone()));
        }
        debug!(realm = %challenge.realm, "fetching an anonymous registry token");
        let auth_err = |reason: String| Error::Auth {
            realm: challenge.realm.clone(),
            reason,
        };
        let response = self
            .http
            .get(&challenge.realm)
            .query(&query)
            .send()
            .await
            .map_err(|e| auth_err(e.to_string()))?;
        if !response.status().is_success() {
            return Err(status_error(&challenge.realm, response).await);
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| auth_err(format!("unreadable answer: {e}")))?;
        body.into_token()
            .ok_or_else(|| auth_err("the answer has no token".to_owned()))
    }
}

fn too_big(url: &str, actual: u64) -> Error {
    Error::SizeMismatch {
        what: format!("manifest from {url} (registries cap manifests at 4 MiB)"),
        expected: MAX_MANIFEST_BYTES,
        actual,
    }
}

async fn status_error(url: &str, response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    // Registries explain errors in a short JSON body; keep enough of it to read.
    let mut body = response.text().await.unwrap_or_default();
    if body.len() > 512 {
        let mut end = 512;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
        body.push_str("...");
    }
    Error::Status {
        url: url.to_owned(),
        status,
        body: body.trim().to_owned(),
    }
}

/// `sha256:<hex>` of exactly these bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
