//! The server's images, one per Python (`--image`, given once or more; the first is the
//! default): each pulled or imported once (or found in the cache), asked once which Python it
//! has, then shared read-only by the jobs that chose it.
//!
//! [`Images`] is the one owner of what the server knows of its images. An image is
//! *pending* until something asks for it (the warm-up at start does), *preparing* while it is
//! pulled or imported and probed, then *ready* (with its [`PythonInfo`]) or *unavailable*
//! (the next ask tries again). The Python an image reports is kept beside it in the image
//! cache (`python.json`), keyed like the image by its manifest digest, so it is asked once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ci_protocol::{ImageStatus, PythonView};
use ci_rootfs::{Image, ImageSource, PullOptions, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The Python an image runs, as it said itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PythonInfo {
    /// `3.13.5`.
    pub version: String,
    /// `sys.implementation.name`: `cpython`, `pypy`.
    pub implementation: String,
}

impl PythonInfo {
    /// What `--python` takes: `3.13`, `pypy3.10`.
    pub fn name(&self) -> String {
        ci_protocol::python_name(&self.implementation, &self.version)
    }

    /// Reads the probe's one line of JSON (`{"version": ..., "implementation": ...}`), the
    /// last line of the container's output.
    pub fn parse(output: &str) -> Result<PythonInfo, String> {
        let line = output.lines().rev().find(|l| !l.trim().is_empty());
        let info: PythonInfo = line
            .and_then(|l| serde_json::from_str(l.trim()).ok())
            .ok_or_else(|| {
                format!(
                    "python3 in the image did not say its version (it printed {:?})",
                    line.unwrap_or_default()
                )
            })?;
        let version_ok = info.version.split('.').count() >= 2
            && info
                .version
                .split('.')
                .take(2)
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let implementation_ok = !info.implementation.is_empty()
            && info.implementation.len() <= 32
            && info
                .implementation
                .bytes()
                .all(|b| b.is_ascii_alphanumeric());
        if !version_ok || !implementation_ok || info.version.len() > 32 {
            return Err(format!(
                "python3 in the image said an odd version: {line:?}"
            ));
        }
        Ok(info)
    }
}

/// The program the probe container runs with the image's `python3`.
pub const PROBE: &str = "import json, sys; print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3], 'implementation': sys.implementation.name}))";

/// An image ready for jobs.
#[derive(Debug)]
pub struct Ready {
    pub image: Arc<Image>,
    pub python: PythonInfo,
}

#[derive(Clone, Debug)]
enum Slot {
    Pending,
    Preparing,
    Ready(Arc<Ready>),
    Unavailable(String),
}

struct Entry {
    source: ImageSource,
    /// One preparation at a time; a second asker waits for the first's result.
    preparing: tokio::sync::Mutex<()>,
    state: watch::Sender<Slot>,
}

/// The server's images, the default first.
pub struct Images {
    store: Store,
    options: PullOptions,
    entries: Vec<Entry>,
}

/// Why a job's image cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image} is not available: {error}")]
    Unavailable { image: String, error: String },
    #[error("the server has no Python {0} (any more): it has {1}")]
    NoSuchPython(String, String),
}

impl Images {
    /// `sources` in the order given; the first is the default. At least one.
    pub fn new(store: Store, options: PullOptions, sources: Vec<ImageSource>) -> Images {
        assert!(!sources.is_empty(), "a server has at least one image");
        let entries = sources
            .into_iter()
            .map(|source| Entry {
                source,
                preparing: tokio::sync::Mutex::new(()),
                state: watch::Sender::new(Slot::Pending),
            })
            .collect();
        Images {
            store,
            options,
            entries,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The default image, as given.
    pub fn default_source(&self) -> &ImageSource {
        &self.entries[0].source
    }

    /// The image `python` names (`None`: the default), prepared if it is not yet; the name
    /// of an image not ready yet is only known once it is, so every image that is not is
    /// prepared first. `probe` asks an image its Python.
    pub async fn for_python<P, F>(
        &self,
        python: Option<&str>,
        probe: P,
    ) -> Result<Arc<Ready>, ImageError>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let Some(name) = python else {
            return self.prepare(0, &probe).await;
        };
        if let Some(ready) = self.ready_named(name) {
            return Ok(ready);
        }
        for i in 0..self.entries.len() {
            if let Ok(ready) = self.prepare(i, &probe).await {
                if ready.python.name() == name {
                    return Ok(ready);
                }
            }
        }
        Err(ImageError::NoSuchPython(name.to_string(), self.names()))
    }

    /// The image a job of `python` runs on, for messages: the ready one of that name, else
    /// the default.
    pub fn source_for(&self, python: Option<&str>) -> &ImageSource {
        let i = python
            .and_then(|name| {
                self.entries.iter().position(
                    |e| matches!(&*e.state.borrow(), Slot::Ready(r) if r.python.name() == name),
                )
            })
            .unwrap_or(0);
        &self.entries[i].source
    }

    fn ready_named(&self, name: &str) -> Option<Arc<Ready>> {
        self.entries.iter().find_map(|e| match &*e.state.borrow() {
            Slot::Ready(r) if r.python.name() == name => Some(r.clone()),
            _ => None,
        })
    }

    /// The names of the ready images, for messages.
    fn names(&self) -> String {
        let names: Vec<String> = self.views().into_iter().filter_map(|v| v.name).collect();
        if names.is_empty() {
            "none ready".to_string()
        } else {
            names.join(", ")
        }
    }

    /// Prepares every image, at once: the warm-up at start.
    pub async fn prepare_all<P, F>(&self, probe: P) -> Vec<Result<Arc<Ready>, ImageError>>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let all = (0..self.entries.len()).map(|i| self.prepare(i, &probe));
        futures_util::future::join_all(all).await
    }

    /// Entry `i` ready: from memory, or pulled/imported (the cache first) and probed (its
    /// `python.json` first). A failure is kept until the next ask, which tries again.
    async fn prepare<P, F>(&self, i: usize, probe: &P) -> Result<Arc<Ready>, ImageError>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let entry = &self.entries[i];
        let _one = entry.preparing.lock().await;
        if let Slot::Ready(ready) = &*entry.state.borrow() {
            return Ok(ready.clone());
        }
        entry.state.send_replace(Slot::Preparing);
        let result = self.prepare_now(&entry.source, probe).await;
        match result {
            Ok(ready) => {
                tracing::info!(image = %entry.source, digest = %ready.image.manifest_digest, python = %ready.python.version, implementation = %ready.python.implementation, "image ready");
                let name = ready.python.name();
                let earlier = self.entries[..i].iter().find(|e| {
                    matches!(&*e.state.borrow(), Slot::Ready(r) if r.python.name() == name)
                });
                if let Some(earlier) = earlier {
                    tracing::warn!(image = %entry.source, earlier = %earlier.source, python = %name, "two images have the same Python: jobs that ask for it run on the one given first");
                }
                entry.state.send_replace(Slot::Ready(ready.clone()));
                Ok(ready)
            }
            Err(error) => {
                tracing::error!(image = %entry.source, %error, "image is not available; jobs that need it will try again");
                entry.state.send_replace(Slot::Unavailable(error.clone()));
                Err(ImageError::Unavailable {
                    image: entry.source.to_string(),
                    error,
                })
            }
        }
    }

    async fn prepare_now<P, F>(&self, source: &ImageSource, probe: &P) -> Result<Arc<Ready>, String>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let image = Arc::new(
            self.store
                .ensure_source(source, &self.options)
                .await
                .map_err(|e| ci_runner::error_chain(&e))?,
        );
        let file = python_file(&image.rootfs);
        let known = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || read_python(&file))
                .await
                .ok()
                .flatten()
        };
        let python = match known {
            Some(python) => python,
            None => {
                let python = probe(image.clone())
                    .await
                    .map_err(|e| format!("cannot ask the image for its Python: {e}"))?;
                let keep = python.clone();
                let _ = tokio::task::spawn_blocking(move || write_python(&file, &keep)).await;
                python
            }
        };
        Ok(Arc::new(Ready { image, python }))
    }

    /// What the server has, now (the default first).
    pub fn views(&self) -> Vec<PythonView> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (status, ready, error) = match &*e.state.borrow() {
                    Slot::Pending | Slot::Preparing => (ImageStatus::Preparing, None, None),
                    Slot::Ready(r) => (ImageStatus::Ready, Some(r.clone()), None),
                    Slot::Unavailable(error) => {
                        (ImageStatus::Unavailable, None, Some(error.clone()))
                    }
                };
                PythonView {
                    name: ready.as_ref().map(|r| r.python.name()),
                    version: ready.as_ref().map(|r| r.python.version.clone()),
                    implementation: ready.as_ref().map(|r| r.python.implementation.clone()),
                    image: e.source.to_string(),
                    digest: ready.as_ref().map(|r| r.image.manifest_digest.clone()),
                    default: i == 0,
                    status,
                    error,
                }
            })
            .collect()
    }

    /// [`Self::views`] once no image is pending or preparing, or `wait` has passed.
    pub async fn settled_views(&self, wait: Duration) -> Vec<PythonView> {
        let settle = async {
            for entry in &self.entries {
                let mut rx = entry.state.subscribe();
                let _ = rx
                    .wait_for(|s| matches!(s, Slot::Ready(_) | Slot::Unavailable(_)))
                    .await;
            }
        };
        let _ = tokio::time::timeout(wait, settle).await;
        self.views()
    }
}

/// Where an image's Python is kept: beside its root filesystem in the image cache.
pub fn python_file(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name("python.json")
}

fn read_python(file: &Path) -> Option<PythonInfo> {
    let text = std::fs::read_to_string(file).ok()?;
    PythonInfo::parse(&text).ok()
}

/// Written whole or not at all (another server sharing the cache may write the same).
fn write_python(file: &Path, python: &PythonInfo) -> std::io::Result<()> {
    let tmp = file.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(python).expect("serializable"))?;
    std::fs::rename(&tmp, file)
}

/// The names the ready images go by, as `ci_project::python::choose` takes them.
pub fn available(views: &[PythonView]) -> Vec<ci_project::python::Available> {
    views
        .iter()
        .filter(|v| v.status == ImageStatus::Ready)
        .filter_map(|v| {
            Some(ci_project::python::Available {
                name: v.name.clone()?,
                version: v.version.clone()?,
                default: v.default,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_line() {
        let info = PythonInfo::parse(
            "noise\n{\"version\": \"3.13.5\", \"implementation\": \"cpython\"}\n",
        )
        .unwrap();
        assert_eq!(info.name(), "3.13");
        let pypy =
            PythonInfo::parse(r#"{"version": "3.10.14", "implementation": "pypy"}"#).unwrap();
        assert_eq!(pypy.name(), "pypy3.10");
        for bad in [
            "",
            "Python 3.11",
            r#"{"version": "three", "implementation": "cpython"}"#,
            r#"{"version": "3.11.1", "implementation": "c python"}"#,
            r#"{"version": "3", "implementation": "cpython"}"#,
        ] {
            assert!(PythonInfo::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kept_beside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let file = python_file(&rootfs);
        assert_eq!(read_python(&file), None);
        let info = PythonInfo {
            version: "3.11.2".into(),
            implementation: "cpython".into(),
        };
        write_python(&file, &info).unwrap();
        assert_eq!(read_python(&file), Some(info));
    }
}
