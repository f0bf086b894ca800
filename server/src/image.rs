//! The server's images, one per Python (`--image`, given once or more; the first is the
//! default): each pulled or imported once (or found in the cache), asked once which Python it
//! has, then shared read-only by the jobs that chose it.
//!
//! [`Images`] is the one owner of what the server knows of its images. An image is
//! *pending* until something asks for it (the warm-up at start does), *preparing* while it is
//! pulled or imported and probed, then *ready* (with its [`PythonInfo`]) or *unavailable*
//! (the next ask tries again). The Python an image reports is kept beside it in the image
//! cache (`python.json`), keyed like the image by its manifest digest, so it is asked once.
//!
//! Images can also be added and removed while the server runs (`ci-server image import`,
//! `image rm`, through the admin API): an imported image is served after the configured ones
//! and remembered in `<data>/images.json` for the next start; only imported images can be
//! removed, and not while jobs wait or run on their Python.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ci_protocol::{ImageStatus, ImageView, PythonView};
use ci_rootfs::{Image, ImageSource, PullOptions, Store, StoredImage};
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

/// Where one of the server's images came from, which decides whether it can be removed
/// while the server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--image` or `--images`: changed there, and by a restart.
    Configured,
    /// `ci-server image import`: remembered in `<data>/images.json`, removable at run time.
    Imported,
}

struct Entry {
    source: ImageSource,
    /// The source's canonical text (a file's path absolute, links resolved), by which it is
    /// recognized when given again; its plain text when it cannot be had.
    canonical: String,
    origin: Origin,
    /// One preparation at a time; a second asker waits for the first's result.
    preparing: tokio::sync::Mutex<()>,
    state: watch::Sender<Slot>,
    /// How far its pull is while it is being prepared (`JobView::pull`).
    progress: ci_rootfs::PullProgress,
}

impl Entry {
    /// Blocking: a file source's path is resolved.
    fn new(source: ImageSource, origin: Origin) -> Entry {
        let canonical = source
            .canonicalize()
            .map_or_else(|_| source.to_string(), |c| c.to_string());
        Entry::with_state(source, canonical, origin, Slot::Pending)
    }

    fn with_state(source: ImageSource, canonical: String, origin: Origin, slot: Slot) -> Entry {
        Entry {
            source,
            canonical,
            origin,
            preparing: tokio::sync::Mutex::new(()),
            state: watch::Sender::new(slot),
            progress: ci_rootfs::PullProgress::default(),
        }
    }

    fn ready(&self) -> Option<Arc<Ready>> {
        match &*self.state.borrow() {
            Slot::Ready(r) => Some(r.clone()),
            _ => None,
        }
    }
}

/// The server's images, the default first, then the configured ones, then the imported ones
/// in the order they were imported.
pub struct Images {
    store: Store,
    options: PullOptions,
    /// Never held across an await: the entries are cloned out.
    entries: RwLock<Vec<Arc<Entry>>>,
    /// `<data>/images.json`, where imports are remembered; `None`: they are not.
    imports_file: Option<PathBuf>,
    /// One addition or removal at a time.
    changes: tokio::sync::Mutex<()>,
}

/// Why a job's image cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image} is not available: {error}")]
    Unavailable { image: String, error: String },
    #[error("the server has no Python {0} (any more): it has {1}")]
    NoSuchPython(String, String),
}

/// Why an image cannot be added to or removed from a running server.
#[derive(Debug, thiserror::Error)]
pub enum ImageAdminError {
    /// The source cannot be read, or is no image with a Python (400).
    #[error("{0}")]
    Invalid(String),
    /// What was looked for (404).
    #[error("{0} not found")]
    NotFound(String),
    /// Already served, configured, the default, or in use (409).
    #[error("{0}")]
    Conflict(String),
    /// The cache or the data directory failed (500).
    #[error("{0}")]
    Failed(String),
}

impl Images {
    /// `sources` in the order given; the first is the default. At least one. Blocking (file
    /// sources are resolved).
    pub fn new(store: Store, options: PullOptions, sources: Vec<ImageSource>) -> Images {
        assert!(!sources.is_empty(), "a server has at least one image");
        let entries = sources
            .into_iter()
            .map(|source| Arc::new(Entry::new(source, Origin::Configured)))
            .collect();
        Images {
            store,
            options,
            entries: RwLock::new(entries),
            imports_file: None,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The images imported by earlier runs, from `file` (`<data>/images.json`), after the
    /// configured ones; imports are remembered there from now on. An import that is also
    /// configured is served once, as configured. Blocking; a file that cannot be read or
    /// parsed is an error naming it.
    pub fn with_imports(mut self, file: PathBuf) -> Result<Images, String> {
        let imported = read_imports(&file)?;
        {
            let entries = self.entries.get_mut().expect("images lock");
            for source in imported {
                let entry = Entry::new(source, Origin::Imported);
                if entries.iter().any(|e| e.canonical == entry.canonical) {
                    tracing::info!(image = %entry.source, "an imported image is also configured: served as configured");
                    continue;
                }
                entries.push(Arc::new(entry));
            }
        }
        self.imports_file = Some(file);
        Ok(self)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn snapshot(&self) -> Vec<Arc<Entry>> {
        self.entries.read().expect("images lock").clone()
    }

    /// The default image, as given.
    pub fn default_source(&self) -> ImageSource {
        self.snapshot()[0].source.clone()
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
        let entries = self.snapshot();
        let Some(name) = python else {
            return self.prepare(&entries, 0, &probe).await;
        };
        if let Some(ready) = ready_named(&entries, name) {
            return Ok(ready);
        }
        for i in 0..entries.len() {
            if let Ok(ready) = self.prepare(&entries, i, &probe).await {
                if ready.python.name() == name {
                    return Ok(ready);
                }
            }
        }
        Err(ImageError::NoSuchPython(name.to_string(), names(&entries)))
    }

    /// The image a job of `python` runs on, for messages: the ready one of that name, else
    /// the default.
    pub fn source_for(&self, python: Option<&str>) -> ImageSource {
        let entries = self.snapshot();
        let i = python
            .and_then(|name| {
                entries.iter().position(
                    |e| matches!(&*e.state.borrow(), Slot::Ready(r) if r.python.name() == name),
                )
            })
            .unwrap_or(0);
        entries[i].source.clone()
    }

    /// Prepares every image, at once: the warm-up at start.
    pub async fn prepare_all<P, F>(&self, probe: P) -> Vec<Result<Arc<Ready>, ImageError>>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let entries = self.snapshot();
        let all = (0..entries.len()).map(|i| self.prepare(&entries, i, &probe));
        futures_util::future::join_all(all).await
    }

    /// `entries[i]` ready: from memory, or pulled/imported (the cache first) and probed (its
    /// `python.json` first). A failure is kept until the next ask, which tries again.
    async fn prepare<P, F>(
        &self,
        entries: &[Arc<Entry>],
        i: usize,
        probe: &P,
    ) -> Result<Arc<Ready>, ImageError>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let entry = &entries[i];
        let _one = entry.preparing.lock().await;
        if let Some(ready) = entry.ready() {
            return Ok(ready);
        }
        entry.progress.reset();
        entry.state.send_replace(Slot::Preparing);
        let result = self.prepare_now(entry, probe).await;
        match result {
            Ok(ready) => {
                tracing::info!(image = %entry.source, digest = %ready.image.manifest_digest, python = %ready.python.version, implementation = %ready.python.implementation, "image ready");
                let name = ready.python.name();
                let earlier = entries[..i].iter().find(
                    |e| matches!(&*e.state.borrow(), Slot::Ready(r) if r.python.name() == name),
                );
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

    async fn prepare_now<P, F>(&self, entry: &Entry, probe: &P) -> Result<Arc<Ready>, String>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let options = PullOptions {
            progress: Some(entry.progress.clone()),
            ..self.options.clone()
        };
        let image = self.ensure(&entry.source, &options).await?;
        let python = python_of(&image, probe).await?;
        Ok(Arc::new(Ready { image, python }))
    }

    /// The image of `source`: from the cache, else pulled or imported.
    async fn ensure(
        &self,
        source: &ImageSource,
        options: &PullOptions,
    ) -> Result<Arc<Image>, String> {
        let image = self
            .store
            .ensure_source(source, options)
            .await
            .map_err(|e| ci_runner::error_chain(&e))?;
        Ok(Arc::new(image))
    }

    /// What the server has, now (the default first).
    pub fn views(&self) -> Vec<PythonView> {
        self.snapshot()
            .iter()
            .enumerate()
            .map(|(i, e)| python_view(i, e))
            .collect()
    }

    /// How far the pull of the image a job of `python` waits for is (`None`: the default's):
    /// bytes so far and the total once known; `None` when no such image is being pulled
    /// from a registry.
    pub fn pull_progress(&self, python: Option<&str>) -> Option<(u64, Option<u64>)> {
        let entries = self.snapshot();
        let pulling = |e: &&Arc<Entry>| {
            matches!(*e.state.borrow(), Slot::Preparing)
                && matches!(e.source, ImageSource::Registry(_))
        };
        let entry = match python {
            None => entries.first().filter(pulling),
            // A named Python's image is known only once ready: a job that waits for one
            // waits for the images being prepared, the first of them first.
            Some(name) if ready_named(&entries, name).is_some() => None,
            Some(_) => entries.iter().find(pulling),
        }?;
        Some(entry.progress.get())
    }

    /// [`Self::views`] once no image is pending or preparing, or `wait` has passed.
    pub async fn settled_views(&self, wait: Duration) -> Vec<PythonView> {
        let entries = self.snapshot();
        let settle = async {
            for entry in &entries {
                let mut rx = entry.state.subscribe();
                let _ = rx
                    .wait_for(|s| matches!(s, Slot::Ready(_) | Slot::Unavailable(_)))
                    .await;
            }
        };
        let _ = tokio::time::timeout(wait, settle).await;
        self.views()
    }

    /// Every image in the cache, those the server serves first (in its order), each with
    /// its Python if it was asked and what the server serves it as.
    pub async fn list(&self) -> Result<Vec<ImageView>, ImageAdminError> {
        let stored = self.stored().await?;
        let entries = self.snapshot();
        let mut views: Vec<(usize, ImageView)> = stored
            .iter()
            .map(|(image, python)| {
                let served = serving(image, &entries)
                    .next()
                    .map_or(usize::MAX, |(i, _)| i);
                (served, image_view(image, python.as_ref(), &entries))
            })
            .collect();
        views.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.digest.cmp(&y.digest)));
        Ok(views.into_iter().map(|(_, view)| view).collect())
    }

    /// Serves `source` from now on, after the others: imported or pulled, asked its Python,
    /// and remembered for the next start. Refused when it is served already, unless it is a
    /// file that changed since it was imported (then it is prepared again from the file), and
    /// when it has a Python another image serves. Nothing is kept of a refused image.
    pub async fn add<P, F>(
        &self,
        source: ImageSource,
        probe: P,
    ) -> Result<PythonView, ImageAdminError>
    where
        P: Fn(Arc<Image>) -> F,
        F: Future<Output = Result<PythonInfo, String>>,
    {
        let _one = self.changes.lock().await;
        let (canonical, cached, before) = {
            let store = self.store.clone();
            let source = source.clone();
            blocking(move || {
                let canonical = source
                    .canonicalize()
                    .map_err(|e| ImageAdminError::Invalid(ci_runner::error_chain(&e)))?;
                let cached = store.cached_source(&canonical).map_err(failed)?.is_some();
                let before: Vec<String> = store
                    .list()
                    .map_err(failed)?
                    .into_iter()
                    .map(|i| i.manifest_digest)
                    .collect();
                Ok((canonical, cached, before))
            })
            .await?
        };
        let text = canonical.to_string();
        let entries = self.snapshot();
        if let Some(i) = entries.iter().position(|e| e.canonical == text) {
            let entry = &entries[i];
            if canonical.path().is_none() || cached {
                let how = match entry.origin {
                    Origin::Configured => "configured with --image",
                    Origin::Imported => "imported",
                };
                return Err(ImageAdminError::Conflict(format!(
                    "image {text} is already served ({how})"
                )));
            }
            // The file was replaced since its import: the jobs from now on run on the new one.
            tracing::info!(image = %text, "the image's file changed: preparing it again");
            entry.state.send_replace(Slot::Pending);
            self.prepare(&entries, i, &probe)
                .await
                .map_err(|e| ImageAdminError::Invalid(e.to_string()))?;
            return Ok(python_view(i, entry));
        }

        let image = self
            .ensure(&canonical, &self.options)
            .await
            .map_err(ImageAdminError::Invalid)?;
        let fresh = !before.contains(&image.manifest_digest);
        let refused = match python_of(&image, &probe).await {
            Err(e) => Err(ImageAdminError::Invalid(e)),
            Ok(python) => match ready_named(&entries, &python.name()) {
                Some(other) => Err(ImageAdminError::Conflict(format!(
                    "the server already has Python {} (image {}): remove that one first",
                    python.name(),
                    other.image.reference
                ))),
                None => Ok(python),
            },
        };
        let python = match refused {
            Ok(python) => python,
            Err(e) => {
                if fresh {
                    self.discard(&image.manifest_digest).await;
                }
                return Err(e);
            }
        };
        let mut imports: Vec<String> = entries
            .iter()
            .filter(|e| e.origin == Origin::Imported)
            .map(|e| e.canonical.clone())
            .collect();
        imports.push(text.clone());
        if let Err(e) = self.remember(imports).await {
            if fresh {
                self.discard(&image.manifest_digest).await;
            }
            return Err(e);
        }
        tracing::info!(image = %text, digest = %image.manifest_digest, python = %python.version, "image imported: served from now on");
        let ready = Arc::new(Ready { image, python });
        let entry = Arc::new(Entry::with_state(
            canonical,
            text,
            Origin::Imported,
            Slot::Ready(ready),
        ));
        let mut all = self.entries.write().expect("images lock");
        all.push(entry.clone());
        Ok(python_view(all.len() - 1, &entry))
    }

    /// Removes the image `digest` names (`sha256:<hex>`, or 12 or more of its hex digits)
    /// from the cache, and from what the server serves if it is an imported one with no job
    /// queued or running on its Python (`busy` counts them). The default and the configured
    /// images are refused.
    pub async fn remove(
        &self,
        digest: &str,
        busy: &(dyn Fn(&str) -> usize + Sync),
    ) -> Result<ImageView, ImageAdminError> {
        let _one = self.changes.lock().await;
        let not_found = || ImageAdminError::NotFound(format!("image {digest}"));
        let wanted = digest.strip_prefix("sha256:").unwrap_or(digest);
        if !(12..=64).contains(&wanted.len())
            || !wanted
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(not_found());
        }
        let mut matching: Vec<(StoredImage, Option<PythonInfo>)> = self
            .stored()
            .await?
            .into_iter()
            .filter(|(image, _)| image.manifest_digest["sha256:".len()..].starts_with(wanted))
            .collect();
        let (image, python) = match matching.len() {
            0 => return Err(not_found()),
            1 => matching.remove(0),
            _ => {
                let all: Vec<&str> = matching
                    .iter()
                    .map(|(i, _)| i.manifest_digest.as_str())
                    .collect();
                return Err(ImageAdminError::Invalid(format!(
                    "several images match {digest}: {}",
                    all.join(", ")
                )));
            }
        };
        let entries = self.snapshot();
        let view = image_view(&image, python.as_ref(), &entries);
        let served: Vec<(usize, &Arc<Entry>)> = serving(&image, &entries).collect();
        for &(i, entry) in &served {
            if i == 0 {
                return Err(ImageAdminError::Conflict(format!(
                    "image {} is the server's default, configured with --image: remove it there and restart",
                    entry.source
                )));
            }
            if entry.origin == Origin::Configured {
                return Err(ImageAdminError::Conflict(format!(
                    "image {} is configured with --image: remove it there and restart",
                    entry.source
                )));
            }
            let name = entry
                .ready()
                .map(|r| r.python.name())
                .or_else(|| python.as_ref().map(PythonInfo::name));
            if let Some(name) = name {
                let jobs = busy(&name);
                if jobs > 0 {
                    return Err(ImageAdminError::Conflict(format!(
                        "{jobs} job{} queued or running on Python {name}: wait for {} or cancel {} first",
                        if jobs == 1 { " is" } else { "s are" },
                        if jobs == 1 { "it" } else { "them" },
                        if jobs == 1 { "it" } else { "them" },
                    )));
                }
            }
        }
        if !served.is_empty() {
            let gone = |e: &Arc<Entry>| served.iter().any(|(_, s)| Arc::ptr_eq(s, e));
            let imports: Vec<String> = entries
                .iter()
                .filter(|e| e.origin == Origin::Imported && !gone(e))
                .map(|e| e.canonical.clone())
                .collect();
            self.remember(imports).await?;
            self.entries
                .write()
                .expect("images lock")
                .retain(|e| !gone(e));
            for (_, entry) in &served {
                tracing::info!(image = %entry.source, "image no longer served");
            }
        }
        let (store, digest) = (self.store.clone(), image.manifest_digest.clone());
        blocking(move || store.remove(&digest).map_err(failed)).await?;
        Ok(view)
    }

    /// Every image in the cache, with the Python it said (`python.json`). Blocking inside.
    async fn stored(&self) -> Result<Vec<(StoredImage, Option<PythonInfo>)>, ImageAdminError> {
        let store = self.store.clone();
        blocking(move || {
            Ok(store
                .list()
                .map_err(failed)?
                .into_iter()
                .map(|image| {
                    let python = read_python(&python_file(&image.rootfs));
                    (image, python)
                })
                .collect())
        })
        .await
    }

    /// Writes the imported sources to `images.json` (when there is one).
    async fn remember(&self, imports: Vec<String>) -> Result<(), ImageAdminError> {
        let Some(file) = self.imports_file.clone() else {
            return Ok(());
        };
        blocking(move || {
            write_imports(&file, &imports).map_err(|e| {
                ImageAdminError::Failed(format!("cannot write {}: {e}", file.display()))
            })
        })
        .await
    }

    /// Removes from the cache an image a refused import brought in.
    async fn discard(&self, digest: &str) {
        let (store, digest) = (self.store.clone(), digest.to_string());
        let removed = tokio::task::spawn_blocking(move || store.remove(&digest)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(error = %ci_runner::error_chain(&e), "cannot remove a refused image from the cache");
        }
    }
}

fn failed(e: ci_rootfs::Error) -> ImageAdminError {
    ImageAdminError::Failed(ci_runner::error_chain(&e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageAdminError> + Send + 'static,
) -> Result<T, ImageAdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageAdminError::Failed(format!("a blocking task failed: {e}")))?
}

/// The Python of `image`: its `python.json`, else asked with `probe` and kept there.
async fn python_of<P, F>(image: &Arc<Image>, probe: &P) -> Result<PythonInfo, String>
where
    P: Fn(Arc<Image>) -> F,
    F: Future<Output = Result<PythonInfo, String>>,
{
    let file = python_file(&image.rootfs);
    let known = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || read_python(&file))
            .await
            .ok()
            .flatten()
    };
    if let Some(python) = known {
        return Ok(python);
    }
    let python = probe(image.clone())
        .await
        .map_err(|e| format!("cannot ask the image for its Python: {e}"))?;
    let keep = python.clone();
    let _ = tokio::task::spawn_blocking(move || write_python(&file, &keep)).await;
    Ok(python)
}

fn ready_named(entries: &[Arc<Entry>], name: &str) -> Option<Arc<Ready>> {
    entries.iter().find_map(|e| match &*e.state.borrow() {
        Slot::Ready(r) if r.python.name() == name => Some(r.clone()),
        _ => None,
    })
}

/// The names of the ready images, for messages.
fn names(entries: &[Arc<Entry>]) -> String {
    let names: Vec<String> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| python_view(i, e).name)
        .collect();
    if names.is_empty() {
        "none ready".to_string()
    } else {
        names.join(", ")
    }
}

fn python_view(i: usize, e: &Entry) -> PythonView {
    let (status, ready, error) = match &*e.state.borrow() {
        Slot::Pending | Slot::Preparing => (ImageStatus::Preparing, None, None),
        Slot::Ready(r) => (ImageStatus::Ready, Some(r.clone()), None),
        Slot::Unavailable(error) => (ImageStatus::Unavailable, None, Some(error.clone())),
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
}

/// The entries (with their place) that serve `image`: ready on it, or a source whose
/// record in the cache points at it (an entry not ready yet, or unavailable).
fn serving<'a>(
    image: &'a StoredImage,
    entries: &'a [Arc<Entry>],
) -> impl Iterator<Item = (usize, &'a Arc<Entry>)> + 'a {
    entries
        .iter()
        .enumerate()
        .filter(move |(_, e)| match e.ready() {
            Some(r) => r.image.manifest_digest == image.manifest_digest,
            None => image.refs.contains(&e.canonical),
        })
}

fn image_view(
    image: &StoredImage,
    python: Option<&PythonInfo>,
    entries: &[Arc<Entry>],
) -> ImageView {
    let served = serving(image, entries).next();
    ImageView {
        digest: image.manifest_digest.clone(),
        refs: image.refs.clone(),
        python: python.map(PythonInfo::name),
        version: python.map(|p| p.version.clone()),
        served_as: served.map(|(_, e)| e.source.to_string()),
        default: served.is_some_and(|(i, _)| i == 0),
        imported: served.is_some_and(|(_, e)| e.origin == Origin::Imported),
    }
}

/// The sources imported at run time, from `file` (`<data>/images.json`: a JSON list of
/// source texts); none when there is no file. Blocking.
pub fn read_imports(file: &Path) -> Result<Vec<ImageSource>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let texts: Vec<String> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a JSON list of image sources ({e}): fix or remove it",
            file.display()
        )
    })?;
    texts
        .iter()
        .map(|text| {
            text.parse().map_err(|e: ci_rootfs::Error| {
                format!("{}: invalid image {text:?}: {e}", file.display())
            })
        })
        .collect()
}

/// Writes `imports` to `file` whole or not at all (a temporary file renamed over it).
/// Blocking.
pub fn write_imports(file: &Path, imports: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension(format!("json.tmp.{}", std::process::id()));
    let written = (|| {
        let mut out = fs_err::File::create(&tmp)?;
        out.write_all(&serde_json::to_vec_pretty(imports).expect("serializable"))?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs_err::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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

    #[test]
    fn imports_are_kept_in_images_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images.json");
        // No file: nothing was imported.
        assert_eq!(read_imports(&file).unwrap(), []);
        let texts = vec![
            "oci-archive:/srv/py313.tar:3.13-slim".to_string(),
            "oci:/srv/pypy".to_string(),
        ];
        write_imports(&file, &texts).unwrap();
        let back: Vec<String> = read_imports(&file)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(back, texts);
        // A JSON list of texts, and nothing left beside it.
        let json: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(json, texts);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["images.json"]);
        write_imports(&file, &[]).unwrap();
        assert_eq!(read_imports(&file).unwrap(), []);
    }

    #[test]
    fn a_broken_images_json_is_one_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images.json");
        for broken in ["{\"a\": 1}", "[\"oci:\"]", "not json\n[", "[1, 2]"] {
            std::fs::write(&file, broken).unwrap();
            let e = read_imports(&file).unwrap_err();
            assert!(e.contains(&file.display().to_string()), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let store = Store::new(dir.path().join("cache"));
        let sources = vec!["python:3.12-slim".parse().unwrap()];
        let e = Images::new(store, PullOptions::default(), sources)
            .with_imports(file.clone())
            .err()
            .expect("refused");
        assert!(e.contains("images.json"), "{e}");
    }

    #[test]
    fn the_pull_progress_is_that_of_the_image_a_job_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("cache"));
        let sources = vec![
            "python:3.12-slim".parse().unwrap(),
            "python:3.13-slim".parse().unwrap(),
        ];
        let images = Images::new(store, PullOptions::default(), sources);
        let entries = images.snapshot();
        assert_eq!(images.pull_progress(None), None, "nothing is being pulled");
        entries[0].state.send_replace(Slot::Preparing);
        assert_eq!(images.pull_progress(None), Some((0, None)));
        entries[0].progress.set_total(1000);
        entries[0].progress.add(250);
        assert_eq!(images.pull_progress(None), Some((250, Some(1000))));
        // A named Python waits for the images being prepared, the first first.
        assert_eq!(images.pull_progress(Some("3.13")), Some((250, Some(1000))));
        entries[0]
            .state
            .send_replace(Slot::Unavailable("gone".into()));
        assert_eq!(images.pull_progress(None), None);
        assert_eq!(images.pull_progress(Some("3.13")), None);
        entries[1].state.send_replace(Slot::Preparing);
        entries[1].progress.add(7);
        assert_eq!(images.pull_progress(Some("3.13")), Some((7, None)));
        assert_eq!(
            images.pull_progress(None),
            None,
            "the default is not pulled"
        );
    }

    #[test]
    fn imports_come_after_the_configured_images_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images.json");
        let texts = [
            "registry-1.docker.io/library/python:3.11-slim",
            "registry-1.docker.io/library/python:3.13-slim",
        ]
        .map(String::from);
        write_imports(&file, &texts).unwrap();
        let store = Store::new(dir.path().join("cache"));
        let sources = vec![
            "python:3.12-slim".parse().unwrap(),
            "python:3.11-slim".parse().unwrap(),
        ];
        let images = Images::new(store, PullOptions::default(), sources)
            .with_imports(file)
            .unwrap();
        let entries = images.snapshot();
        let seen: Vec<(String, Origin)> = entries
            .iter()
            .map(|e| (e.source.to_string(), e.origin))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "registry-1.docker.io/library/python:3.12-slim".to_string(),
                    Origin::Configured
                ),
                (texts[0].clone(), Origin::Configured),
                (texts[1].clone(), Origin::Imported),
            ]
        );
        let views = images.views();
        assert!(views[0].default && !views[2].default);
        assert_eq!(images.default_source().to_string(), seen[0].0);
    }
}
