//! The tools install containers get from the host: a pinned uv, taken from its wheel on a
//! package index (or given by the admin) once, verified, kept on disk and mounted read-only.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The uv every install runs, unless the admin gives one of their own.
pub const UV_VERSION: &str = "0.13.9";

pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// The wheels of [`UV_VERSION`] by `std::env::consts::ARCH`: (arch, filename, sha256, size),
/// as PyPI lists them.
const PINS: &[(&str, &str, &str, u64)] = &[
    (
        "x86_64",
        "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
        17_606_939,
    ),
    (
        "aarch64",
        "uv-0.13.9-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
        18_026_789,
    ),
];

/// PEP 691: the JSON form of the simple repository API.
const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";
/// uv's project page on PyPI, every release of it, is about 2.6 MB (late 2026).
const MAX_INDEX_PAGE: u64 = 64 << 20;
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// A temporary directory this old is no install under way (one takes well under a second
/// once the wheel is downloaded) but what a crashed process left.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
const TEMP_PREFIX: &str = ".uv-tmp-";

/// A uv ready to be mounted: `dir` holds the `uv` binary and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UvTool {
    pub dir: PathBuf,
    pub version: String,
}

impl UvTool {
    pub fn binary(&self) -> PathBuf {
        self.dir.join("uv")
    }
}

/// Where uv comes from.
#[derive(Debug, Clone)]
pub enum UvSource {
    /// The pinned wheel from a simple repository (PEP 503 URL, JSON API of PEP 691), such as
    /// [`DEFAULT_INDEX`] or a mirror of it.
    Index { url: String, pin: WheelPin },
    /// A uv binary the admin provides. Its version is what `<path> --version` says; it is
    /// copied into the tools directory so that it can be mounted as a directory of its own.
    Local(PathBuf),
}

impl UvSource {
    /// The pinned uv of this machine's architecture from `url`.
    pub fn index(url: impl Into<String>) -> Result<UvSource, ToolError> {
        Ok(UvSource::Index {
            url: url.into(),
            pin: WheelPin::for_this_host()?,
        })
    }
}

impl fmt::Display for UvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UvSource::Index { url, .. } => write!(f, "uv {UV_VERSION} from {url}"),
            UvSource::Local(path) => write!(f, "uv at {}", path.display()),
        }
    }
}

/// One wheel file of uv, known by name, size and sha256 before it is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelPin {
    pub filename: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

impl WheelPin {
    pub fn for_this_host() -> Result<WheelPin, ToolError> {
        WheelPin::for_arch(std::env::consts::ARCH)
    }

    pub fn for_arch(arch: &str) -> Result<WheelPin, ToolError> {
        PINS.iter()
            .find(|(a, ..)| *a == arch)
            .map(|(_, filename, sha256, size)| WheelPin {
                filename: filename.to_string(),
                sha256: sha256.to_string(),
                size: *size,
            })
            .ok_or_else(|| ToolError::NotPinned {
                arch: arch.to_string(),
            })
    }
}

/// The directory of the tools dir a uv of `version` whose content has `sha256` is kept in:
/// the digest in the name gives a new binary of the same version its own directory.
fn dir_name(version: &str, sha256: &str) -> String {
    format!("uv-{version}-{}", short(sha256))
}

/// Where the pinned uv is kept in the tools dir, for `doctor`.
pub fn cached_dir_name(pin: &WheelPin) -> String {
    dir_name(UV_VERSION, &pin.sha256)
}

/// Why uv could not be had. Messages read after "failed to ...".
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("find a uv for this machine: uv {UV_VERSION} is pinned for x86_64 and aarch64, not for the {arch} architecture")]
    NotPinned { arch: String },

    #[error("read the CA bundle {}", path.display())]
    CaBundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("use the CA bundle {}", path.display())]
    CaBundleParse {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },

    #[error("build the http client")]
    Client(#[source] reqwest::Error),

    #[error("parse the url {url:?}: {reason}")]
    Url { url: String, reason: String },

    #[error("fetch {url}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("fetch {url}: the server answered {status}")]
    Status { url: String, status: u16 },

    #[error("download {url}: the body is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },

    #[error("read the package index page {url}: not the JSON of PEP 691 (content type {content_type:?})")]
    IndexPage {
        url: String,
        content_type: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("find {filename} in the package index page {url}, which lists {listed} other files")]
    NotListed {
        filename: String,
        url: String,
        listed: usize,
    },

    #[error(
        "trust the package index: it lists {filename} with {what} {listed}, the pin says {pinned}"
    )]
    IndexMismatch {
        filename: String,
        what: &'static str,
        listed: String,
        pinned: String,
    },

    #[error("verify the uv wheel {filename}: it has {actual} bytes, expected {expected}")]
    SizeMismatch {
        filename: String,
        actual: u64,
        expected: u64,
    },

    #[error("verify the uv wheel {filename}: it has sha256 {actual}, expected {expected}")]
    HashMismatch {
        filename: String,
        actual: String,
        expected: String,
    },

    #[error("extract {member} from the uv wheel {filename}")]
    Extract {
        filename: String,
        member: String,
        #[source]
        source: zip::result::ZipError,
    },

    #[error("run {} --version", path.display())]
    RunVersion {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("learn the version of {}: {reason}", path.display())]
    Version { path: PathBuf, reason: String },

    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("run the blocking install task")]
    Join(#[source] tokio::task::JoinError),
}

impl ToolError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ToolError {
        let path = path.to_path_buf();
        move |source| ToolError::Io {
            action,
            path,
            source,
        }
    }
}

/// Gets uv once and hands out the same [`UvTool`] from then on.
pub struct UvProvider {
    tools_dir: PathBuf,
    source: UvSource,
    ca_bundle: Option<PathBuf>,
    current: tokio::sync::Mutex<Option<Arc<UvTool>>>,
}

impl UvProvider {
    /// `ca_bundle`, if given, is trusted besides the system's roots when fetching.
    pub fn new(tools_dir: PathBuf, source: UvSource, ca_bundle: Option<PathBuf>) -> UvProvider {
        UvProvider {
            tools_dir,
            source,
            ca_bundle,
            current: tokio::sync::Mutex::new(None),
        }
    }

    pub fn source(&self) -> &UvSource {
        &self.source
    }

    /// uv, from memory, the tools directory (no network) or its source, in that order. A
    /// failed fetch is not remembered: the next call tries again. Concurrent calls wait for
    /// one fetch.
    pub async fn get(&self) -> Result<Arc<UvTool>, ToolError> {
        let mut current = self.current.lock().await;
        if let Some(tool) = &*current {
            return Ok(tool.clone());
        }
        let tool = Arc::new(match &self.source {
            UvSource::Index { url, pin } => self.fetch_wheel(url, pin).await?,
            UvSource::Local(path) => self.copy_local(path).await?,
        });
        tracing::info!(source = %self.source, version = %tool.version, dir = %tool.dir.display(), "uv ready");
        *current = Some(tool.clone());
        Ok(tool)
    }

    async fn fetch_wheel(&self, index: &str, pin: &WheelPin) -> Result<UvTool, ToolError> {
        let tool = UvTool {
            dir: self.tool_dir(UV_VERSION, &pin.sha256),
            version: UV_VERSION.to_string(),
        };
        if is_installed(&tool.dir).await {
            return Ok(tool);
        }
        let wheel = self.download(index, pin).await?;
        let (tools_dir, dir, pin) = (self.tools_dir.clone(), tool.dir.clone(), pin.clone());
        tokio::task::spawn_blocking(move || {
            verify(&wheel, &pin)?;
            let member = format!("uv-{UV_VERSION}.data/scripts/uv");
            let binary = extract(&wheel, &member, &pin.filename)?;
            install(&tools_dir, &dir, &binary)
        })
        .await
        .map_err(ToolError::Join)??;
        Ok(tool)
    }

    async fn copy_local(&self, path: &Path) -> Result<UvTool, ToolError> {
        let version = local_version(path).await?;
        let (tools_dir, path, name_version) =
            (self.tools_dir.clone(), path.to_path_buf(), version.clone());
        let dir = tokio::task::spawn_blocking(move || {
            let binary = std::fs::read(&path).map_err(ToolError::io("read", &path))?;
            let sha256 = hex::encode(Sha256::digest(&binary));
            let dir = tools_dir.join(dir_name(&name_version, &sha256));
            if !dir.join("uv").is_file() {
                install(&tools_dir, &dir, &binary)?;
            }
            Ok::<_, ToolError>(dir)
        })
        .await
        .map_err(ToolError::Join)??;
        Ok(UvTool { dir, version })
    }

    fn tool_dir(&self, version: &str, sha256: &str) -> PathBuf {
        self.tools_dir.join(dir_name(version, sha256))
    }

    /// The pinned wheel, checked against the index's listing, at most `pin.size` bytes.
    async fn download(&self, index: &str, pin: &WheelPin) -> Result<Vec<u8>, ToolError> {
        let page_url = format!("{}/uv/", index.trim_end_matches('/'));
        let client = self.client(&page_url).await?;

        let response = send(
            client.get(&page_url).header("accept", SIMPLE_JSON),
            &page_url,
        )
        .await?;
        // Mirrors answer with URLs relative to the page, after any redirect.
        let base = response.url().clone();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let body = read_capped(response, MAX_INDEX_PAGE, &page_url).await?;
        let page: ProjectPage =
            serde_json::from_slice(&body).map_err(|source| ToolError::IndexPage {
                url: page_url.clone(),
                content_type,
                source,
            })?;
        let file = page
            .files
            .iter()
            .find(|f| f.filename == pin.filename)
            .ok_or_else(|| ToolError::NotListed {
                filename: pin.filename.clone(),
                url: page_url.clone(),
                listed: page.files.len(),
            })?;
        // The pin decides; an index that disagrees is broken or lying, and saying so early
        // beats a download that cannot pass.
        if let Some(listed) = file.hashes.get("sha256") {
            if !listed.eq_ignore_ascii_case(&pin.sha256) {
                return Err(ToolError::IndexMismatch {
                    filename: pin.filename.clone(),
                    what: "sha256",
                    listed: listed.clone(),
                    pinned: pin.sha256.clone(),
                });
            }
        }
        if let Some(listed) = file.size {
            if listed != pin.size {
                return Err(ToolError::IndexMismatch {
                    filename: pin.filename.clone(),
                    what: "size",
                    listed: listed.to_string(),
                    pinned: pin.size.to_string(),
                });
            }
        }
        let wheel_url = base.join(&file.url).map_err(|e| ToolError::Url {
            url: format!("{} relative to {base}", file.url),
            reason: e.to_string(),
        })?;
        let wheel_url = wheel_url.as_str().to_string();

        let response = send(client.get(&wheel_url), &wheel_url).await?;
        if response.content_length().is_some_and(|len| len > pin.size) {
            return Err(ToolError::TooLarge {
                url: wheel_url,
                limit: pin.size,
            });
        }
        read_capped(response, pin.size, &wheel_url).await
    }

    async fn client(&self, url: &str) -> Result<reqwest::Client, ToolError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| ToolError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ci-server/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            // The whole of one request: the wheel is about 18 MB.
            .timeout(Duration::from_secs(600));
        if parsed.host_str().is_some_and(is_loopback) {
            // A proxy from the environment cannot reach this machine's loopback.
            builder = builder.no_proxy();
        }
        if let Some(path) = &self.ca_bundle {
            let pem = tokio::fs::read(path)
                .await
                .map_err(|source| ToolError::CaBundle {
                    path: path.clone(),
                    source,
                })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ToolError::CaBundleParse {
                    path: path.clone(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().map_err(ToolError::Client)
    }
}

/// The parts of a PEP 691 project page this module reads.
#[derive(serde::Deserialize)]
struct ProjectPage {
    files: Vec<IndexFile>,
}

#[derive(serde::Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    /// PEP 700 (API version 1.1); older mirrors leave it out.
    #[serde(default)]
    size: Option<u64>,
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn is_installed(dir: &Path) -> bool {
    tokio::fs::symlink_metadata(dir.join("uv"))
        .await
        .is_ok_and(|m| m.is_file())
}

async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, ToolError> {
    let response = request.send().await.map_err(|source| ToolError::Fetch {
        url: url.to_string(),
        source,
    })?;
    if !response.status().is_success() {
        return Err(ToolError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    Ok(response)
}

/// The body, refused as soon as it grows past `limit` bytes.
async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
    url: &str,
) -> Result<Vec<u8>, ToolError> {
    let expected = response.content_length().unwrap_or(0).min(limit);
    let mut body = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|source| ToolError::Fetch {
        url: url.to_string(),
        source,
    })? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(ToolError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn verify(wheel: &[u8], pin: &WheelPin) -> Result<(), ToolError> {
    if wheel.len() as u64 != pin.size {
        return Err(ToolError::SizeMismatch {
            filename: pin.filename.clone(),
            actual: wheel.len() as u64,
            expected: pin.size,
        });
    }
    let actual = hex::encode(Sha256::digest(wheel));
    if !actual.eq_ignore_ascii_case(&pin.sha256) {
        return Err(ToolError::HashMismatch {
            filename: pin.filename.clone(),
            actual,
            expected: pin.sha256.clone(),
        });
    }
    Ok(())
}

/// One member of a verified wheel (the zip crate checks its CRC-32 as it reads).
fn extract(wheel: &[u8], member: &str, filename: &str) -> Result<Vec<u8>, ToolError> {
    let error = |source| ToolError::Extract {
        filename: filename.to_string(),
        member: member.to_string(),
        source,
    };
    let mut archive = zip::ZipArchive::new(io::Cursor::new(wheel)).map_err(error)?;
    let mut entry = archive.by_name(member).map_err(error)?;
    let mut binary = Vec::new();
    entry
        .read_to_end(&mut binary)
        .map_err(|e| error(zip::result::ZipError::Io(e)))?;
    Ok(binary)
}

/// Puts `binary` at `<dir>/uv`, whole or not at all: written and synced in a temporary
/// directory beside `dir`, then renamed. If another process got there first, theirs stays.
///
/// Modes are 0755 whatever the umask: containers run as an unprivileged uid that reads and
/// executes uv through the "other" bits.
fn install(tools_dir: &Path, dir: &Path, binary: &[u8]) -> Result<(), ToolError> {
    std::fs::create_dir_all(tools_dir).map_err(ToolError::io("create", tools_dir))?;
    remove_stale_temps(tools_dir);
    let temp = TempDir::create(tools_dir)?;
    let file_path = temp.path.join("uv");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&file_path)
        .map_err(ToolError::io("create", &file_path))?;
    file.write_all(binary)
        .map_err(ToolError::io("write", &file_path))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(ToolError::io("set the mode of", &file_path))?;
    file.sync_all().map_err(ToolError::io("sync", &file_path))?;
    drop(file);
    std::fs::set_permissions(&temp.path, std::fs::Permissions::from_mode(0o755))
        .map_err(ToolError::io("set the mode of", &temp.path))?;
    sync_dir(&temp.path)?;
    match std::fs::rename(&temp.path, dir) {
        Ok(()) => {
            temp.keep();
            sync_dir(tools_dir)
        }
        // rename(2) refuses to replace a directory that is not empty: the winner's is whole.
        Err(_) if dir.join("uv").is_file() => Ok(()),
        Err(e) => Err(ToolError::io("move into place", dir)(e)),
    }
}

fn sync_dir(path: &Path) -> Result<(), ToolError> {
    std::fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(ToolError::io("sync", path))
}

/// Removes temporary directories a crashed install left; best effort.
fn remove_stale_temps(tools_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(tools_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A temporary directory in the tools directory, removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    kept: bool,
}

impl TempDir {
    fn create(parent: &Path) -> Result<TempDir, ToolError> {
        let path = parent.join(format!(
            "{TEMP_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(ToolError::io("create", &path))?;
        Ok(TempDir { path, kept: false })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What `<path> --version` says, e.g. `uv 0.13.9 (0f8a8c3 2026-11-17)` → `0.13.9`.
async fn local_version(path: &Path) -> Result<String, ToolError> {
    let failed = |reason: String| ToolError::Version {
        path: path.to_path_buf(),
        reason,
    };
    let run = || {
        tokio::process::Command::new(path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output()
    };
    let mut tries = 0;
    let output = loop {
        let output = tokio::time::timeout(VERSION_TIMEOUT, run())
            .await
            .map_err(|_| {
                failed(format!(
                    "it did not finish within {} s",
                    VERSION_TIMEOUT.as_secs()
                ))
            })?;
        match output {
            // A binary just written may still be open for writing in a child that another
            // thread forked before its exec (the fd is close-on-exec, not close-on-fork):
            // execve then fails with ETXTBSY for a moment.
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => {
                return Err(ToolError::RunVersion {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Ok(output) => break output,
        }
    };
    if !output.status.success() {
        return Err(failed(format!(
            "it exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_version(&stdout).map(str::to_string).ok_or_else(|| {
        failed(format!(
            "it printed {:?}, not \"uv <version> ...\"",
            stdout.trim()
        ))
    })
}

/// The version in uv's `--version` line, if it looks like one: it names a directory.
fn parse_version(output: &str) -> Option<&str> {
    let mut words = output.lines().next()?.split_whitespace();
    if words.next()? != "uv" {
        return None;
    }
    let version = words.next()?;
    let valid = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    valid.then_some(version)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::extract::{Path as UrlPath, State};
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};

    use super::*;

    const SCRIPT: &[u8] = b"#!/bin/sh\necho 'uv 0.13.9 (test)'\n";

    /// A wheel laid out like uv's, holding `script` as the uv binary.
    fn wheel(script: &[u8]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("uv/__init__.py", options).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file("uv-0.13.9.data/scripts/uv", options.unix_permissions(0o755))
            .unwrap();
        zip.write_all(script).unwrap();
        zip.start_file("uv-0.13.9.dist-info/RECORD", options)
            .unwrap();
        zip.write_all(b"").unwrap();
        zip.finish().unwrap().into_inner()
    }

    fn pin_of(wheel: &[u8]) -> WheelPin {
        WheelPin {
            filename: "uv-0.13.9-py3-none-linux_test.whl".to_string(),
            sha256: hex::encode(Sha256::digest(wheel)),
            size: wheel.len() as u64,
        }
    }

    /// What the fake index serves; tests change it between calls.
    #[derive(Clone)]
    struct Served {
        /// The wheel's name in the index page.
        listed: String,
        listed_sha256: Option<String>,
        /// What the wheel's URL answers.
        body: Vec<u8>,
        /// Without a Content-Length, so only the reading loop can stop it.
        chunked: bool,
    }

    struct FakeIndex {
        served: Mutex<Served>,
        requests: AtomicUsize,
    }

    impl FakeIndex {
        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        fn set(&self, change: impl FnOnce(&mut Served)) {
            change(&mut self.served.lock().unwrap());
        }
    }

    /// A PEP 691 index on loopback with a relative URL to the wheel; returns its simple URL.
    async fn start_index(served: Served) -> (Arc<FakeIndex>, String) {
        async fn page(State(index): State<Arc<FakeIndex>>) -> Response {
            index.requests.fetch_add(1, Ordering::SeqCst);
            let served = index.served.lock().unwrap().clone();
            let mut hashes = serde_json::Map::new();
            if let Some(sha256) = served.listed_sha256 {
                hashes.insert("sha256".into(), sha256.into());
            }
            let body = serde_json::json!({
                "meta": {"api-version": "1.0"},
                "name": "uv",
                "files": [
                    {"filename": "uv-0.1.0.tar.gz", "url": "../../packages/00/uv-0.1.0.tar.gz", "hashes": {}},
                    {"filename": served.listed, "url": format!("../../packages/ab/{}", served.listed), "hashes": hashes},
                ],
            });
            ([(header::CONTENT_TYPE, SIMPLE_JSON)], body.to_string()).into_response()
        }

        async fn file(
            State(index): State<Arc<FakeIndex>>,
            UrlPath(name): UrlPath<String>,
        ) -> Response {
            index.requests.fetch_add(1, Ordering::SeqCst);
            let served = index.served.lock().unwrap().clone();
            if name != served.listed {
                return StatusCode::NOT_FOUND.into_response();
            }
            if served.chunked {
                let chunks: Vec<Result<bytes::Bytes, io::Error>> = served
                    .body
                    .chunks(1024)
                    .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                    .collect();
                axum::body::Body::from_stream(futures_util::stream::iter(chunks)).into_response()
            } else {
                served.body.into_response()
            }
        }

        let index = Arc::new(FakeIndex {
            served: Mutex::new(served),
            requests: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/simple/uv/", axum::routing::get(page))
            .route("/packages/ab/{name}", axum::routing::get(file))
            .with_state(index.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/simple", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (index, url)
    }

    /// A fake index serving a good wheel, and its pin.
    async fn good_index() -> (Arc<FakeIndex>, String, WheelPin) {
        let wheel = wheel(SCRIPT);
        let pin = pin_of(&wheel);
        let (index, url) = start_index(Served {
            listed: pin.filename.clone(),
            listed_sha256: Some(pin.sha256.clone()),
            body: wheel,
            chunked: false,
        })
        .await;
        (index, url, pin)
    }

    fn provider(tools: &Path, url: &str, pin: &WheelPin) -> UvProvider {
        let source = UvSource::Index {
            url: url.to_string(),
            pin: pin.clone(),
        };
        UvProvider::new(tools.to_path_buf(), source, None)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let Ok(read) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = read
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn downloads_verifies_and_extracts() {
        let (index, url, pin) = good_index().await;
        let tools = tempfile::tempdir().unwrap();
        let uv = provider(tools.path(), &url, &pin);

        let tool = uv.get().await.unwrap();
        assert_eq!(tool.version, "0.13.9");
        assert_eq!(
            tool.dir,
            tools
                .path()
                .join(format!("uv-0.13.9-{}", &pin.sha256[..12]))
        );
        assert_eq!(entries(&tool.dir), ["uv"]);
        assert_eq!(std::fs::read(tool.binary()).unwrap(), SCRIPT);
        assert_eq!(mode(&tool.binary()), 0o755);
        assert_eq!(mode(&tool.dir), 0o755);
        // Nothing but the tool: no temporary directory left behind.
        assert_eq!(
            entries(tools.path()),
            [format!("uv-0.13.9-{}", &pin.sha256[..12])]
        );
        assert_eq!(index.requests(), 2, "the index page and the wheel");

        // From memory.
        assert!(Arc::ptr_eq(&tool, &uv.get().await.unwrap()));
        assert_eq!(index.requests(), 2);
    }

    #[tokio::test]
    async fn a_new_provider_uses_the_disk_without_the_network() {
        let (index, url, pin) = good_index().await;
        let tools = tempfile::tempdir().unwrap();
        let first = provider(tools.path(), &url, &pin).get().await.unwrap();
        assert_eq!(index.requests(), 2);

        let second = provider(tools.path(), &url, &pin).get().await.unwrap();
        assert_eq!(*second, *first);
        assert_eq!(index.requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_gets_fetch_once() {
        let (index, url, pin) = good_index().await;
        let tools = tempfile::tempdir().unwrap();
        let uv = provider(tools.path(), &url, &pin);
        let (a, b) = tokio::join!(uv.get(), uv.get());
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(index.requests(), 2);
    }

    #[tokio::test]
    async fn a_wrong_sha256_is_refused_and_leaves_nothing() {
        let (index, url, mut pin) = good_index().await;
        let actual = pin.sha256.clone();
        pin.sha256 = "0".repeat(64);
        // The index agrees with the pin, so the download itself is what fails.
        index.set(|s| s.listed_sha256 = Some(pin.sha256.clone()));
        let tools = tempfile::tempdir().unwrap();

        let err = provider(tools.path(), &url, &pin).get().await.unwrap_err();
        assert!(matches!(err, ToolError::HashMismatch { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "verify the uv wheel {}: it has sha256 {actual}, expected {}",
                pin.filename, pin.sha256
            )
        );
        assert_eq!(entries(tools.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_index_that_disagrees_with_the_pin_is_refused_before_the_download() {
        let (index, url, pin) = good_index().await;
        index.set(|s| s.listed_sha256 = Some("f".repeat(64)));
        let tools = tempfile::tempdir().unwrap();

        let err = provider(tools.path(), &url, &pin).get().await.unwrap_err();
        assert!(
            matches!(err, ToolError::IndexMismatch { what: "sha256", .. }),
            "{err:?}"
        );
        assert_eq!(index.requests(), 1);
        assert_eq!(entries(tools.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_wheel_missing_from_the_index_is_named() {
        let (index, url, pin) = good_index().await;
        index.set(|s| s.listed = "uv-0.13.8-py3-none-linux_test.whl".to_string());
        let tools = tempfile::tempdir().unwrap();

        let err = provider(tools.path(), &url, &pin).get().await.unwrap_err();
        assert!(matches!(err, ToolError::NotListed { .. }), "{err:?}");
        assert!(err.to_string().contains(&pin.filename), "{err}");
        assert_eq!(index.requests(), 1);
    }

    #[tokio::test]
    async fn a_body_bigger_than_the_pin_is_refused() {
        for chunked in [false, true] {
            let (index, url, pin) = good_index().await;
            index.set(|s| {
                s.body.extend_from_slice(&[0; 4096]);
                s.chunked = chunked;
            });
            let tools = tempfile::tempdir().unwrap();

            let err = provider(tools.path(), &url, &pin).get().await.unwrap_err();
            assert!(
                matches!(err, ToolError::TooLarge { limit, .. } if limit == pin.size),
                "chunked {chunked}: {err:?}"
            );
            assert_eq!(entries(tools.path()), Vec::<String>::new());
        }
    }

    #[tokio::test]
    async fn a_failed_fetch_is_tried_again() {
        let (index, url, pin) = good_index().await;
        let listed = pin.filename.clone();
        index.set(|s| s.listed = "something-else.whl".to_string());
        let tools = tempfile::tempdir().unwrap();
        let uv = provider(tools.path(), &url, &pin);

        uv.get().await.unwrap_err();
        index.set(|s| s.listed = listed);
        let tool = uv.get().await.unwrap();
        assert_eq!(std::fs::read(tool.binary()).unwrap(), SCRIPT);
    }

    #[tokio::test]
    async fn an_index_that_is_down_is_named() {
        let tools = tempfile::tempdir().unwrap();
        let pin = pin_of(b"");
        // A port nothing listens on: bind one, then let it go.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/simple/", listener.local_addr().unwrap());
        drop(listener);

        let err = provider(tools.path(), &url, &pin).get().await.unwrap_err();
        assert!(matches!(err, ToolError::Fetch { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("fetch {url}uv/"));
    }

    #[tokio::test]
    async fn a_local_uv_is_copied_into_the_tools_dir() {
        let scratch = tempfile::tempdir().unwrap();
        let given = scratch.path().join("uv");
        std::fs::write(&given, "#!/bin/sh\necho 'uv 0.13.9 (x)'\n").unwrap();
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o700)).unwrap();
        let tools = scratch.path().join("tools");

        let uv = UvProvider::new(tools.clone(), UvSource::Local(given.clone()), None);
        let tool = uv.get().await.unwrap();
        assert_eq!(tool.version, "0.13.9");
        assert_eq!(tool.dir.parent(), Some(tools.as_path()));
        assert!(tool
            .dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("uv-0.13.9-"));
        assert_eq!(entries(&tool.dir), ["uv"]);
        assert_eq!(
            std::fs::read(tool.binary()).unwrap(),
            std::fs::read(&given).unwrap()
        );
        assert_eq!(mode(&tool.binary()), 0o755);
        assert_eq!(mode(&tool.dir), 0o755);

        let again = UvProvider::new(tools.clone(), UvSource::Local(given), None);
        assert_eq!(*again.get().await.unwrap(), *tool);
        assert_eq!(entries(&tools).len(), 1);
    }

    #[tokio::test]
    async fn a_local_binary_that_is_not_uv_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let tools = scratch.path().join("tools");
        for (name, script, expected) in [
            (
                "ruff",
                "#!/bin/sh\necho 'ruff 0.13.9'\n",
                "it printed \"ruff 0.13.9\"",
            ),
            ("fails", "#!/bin/sh\necho broken >&2\nexit 3\n", "broken"),
        ] {
            let given = scratch.path().join(name);
            std::fs::write(&given, script).unwrap();
            std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o755)).unwrap();
            let uv = UvProvider::new(tools.clone(), UvSource::Local(given), None);
            let err = uv.get().await.unwrap_err();
            assert!(matches!(err, ToolError::Version { .. }), "{err:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        let missing = UvProvider::new(
            tools.clone(),
            UvSource::Local(scratch.path().join("nope")),
            None,
        );
        assert!(matches!(
            missing.get().await.unwrap_err(),
            ToolError::RunVersion { .. }
        ));
        assert!(!tools.exists());
    }

    #[test]
    fn versions() {
        fn check(output: &str, expected: Option<&str>) {
            assert_eq!(parse_version(output), expected, "{output:?}");
        }
        check("uv 0.13.9 (0f8a8c3 2026-11-17)\n", Some("0.13.9"));
        check("uv 0.13.9\n", Some("0.13.9"));
        check("uv 0.14.0-rc.1+local\n", Some("0.14.0-rc.1+local"));
        check("uv 0.13.9\nuvx 0.13.9\n", Some("0.13.9"));
        check("ruff 0.13.9\n", None);
        check("uv\n", None);
        check("uv ../../etc\n", None);
        check("uv 0.13/9\n", None);
        check("", None);
    }

    #[test]
    fn pins() {
        for arch in ["x86_64", "aarch64"] {
            let pin = WheelPin::for_arch(arch).unwrap();
            assert!(
                pin.filename
                    .starts_with(&format!("uv-{UV_VERSION}-py3-none-")),
                "{pin:?}"
            );
            assert!(pin.filename.contains(arch), "{pin:?}");
            assert!(pin.filename.ends_with(".whl"), "{pin:?}");
            assert_eq!(pin.sha256.len(), 64);
            assert!(pin
                .sha256
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f')));
            assert!(pin.size > 1 << 20);
        }
        let err = WheelPin::for_arch("riscv64").unwrap_err();
        assert!(matches!(err, ToolError::NotPinned { .. }));
        assert!(
            err.to_string().contains("not for the riscv64 architecture"),
            "{err}"
        );
    }

    #[test]
    fn loopback_hosts() {
        for (host, expected) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("[::1]", true),
            ("localhost", true),
            ("pypi.org", false),
            ("10.0.2.2", false),
        ] {
            assert_eq!(is_loopback(host), expected, "{host}");
        }
    }

    /// The real pin from the real index. By hand, it needs the network:
    /// `UV_TOOLS_DIR=/tmp/uvtools cargo test -p ci-server --lib tools -- --ignored`
    #[tokio::test]
    #[ignore = "fetches about 18 MB from the real package index"]
    async fn real_index() {
        let scratch = tempfile::tempdir().unwrap();
        let tools = std::env::var_os("UV_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| scratch.path().to_path_buf());
        let ca_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let uv = UvProvider::new(
            tools,
            UvSource::index(DEFAULT_INDEX).unwrap(),
            ca_bundle.exists().then(|| ca_bundle.to_path_buf()),
        );
        let tool = uv.get().await.unwrap();
        let output = std::process::Command::new(tool.binary())
            .arg("--version")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!("{}: {}", tool.binary().display(), stdout.trim());
        assert!(output.status.success());
        assert_eq!(parse_version(&stdout), Some(UV_VERSION));
    }
}
