//! Every path under the data directory, and the life of a job's directory.
//!
//! ```text
//! <data>/
//!   admin.key      the first admin's key (0600)
//!   images.json    the images imported at run time (`ci-server image import`)
//!   db/            job records, users, keys (sled; 0700)
//!   logs/<id>.log  job logs (0700 / 0600)
//!   jobs/<id>/     what one job holds while it waits and runs ([`JobPaths`])
//!   containers/    the container runtime's state
//!   cache/         dependency layers and installer caches, per user
//!   results/<id>/  a job's test report and artifacts, until it expires (0700)
//! ```
//!
//! A job's directory has one owner at a time: the upload while it is received (a [`JobDir`],
//! removed if the submission fails in any way), then the job manager, which removes it when
//! the job ends or is refused. Nothing else removes one.

use std::path::{Path, PathBuf};

use crate::cache;

/// The data directory (`--data-dir`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct DataLayout {
    root: PathBuf,
}

impl DataLayout {
    /// `root` must be absolute: paths from here end up in container specs.
    pub fn new(root: PathBuf) -> DataLayout {
        DataLayout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }

    /// The images imported while a server ran, served again at the next start
    /// ([`crate::image::Images::with_imports`]).
    pub fn imported_images(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// What jobs keep after their end: the test report and the artifacts ([`crate::results`]).
    pub fn results(&self) -> PathBuf {
        self.root.join("results")
    }

    /// The directory of job `id`.
    pub fn job(&self, id: &str) -> PathBuf {
        self.jobs().join(id)
    }

    /// The paths of what job `id` keeps in its directory.
    pub fn job_paths(&self, id: &str) -> JobPaths {
        JobPaths::new(self.job(id))
    }

    /// Claims the directory of a job being submitted; it is removed when the claim is
    /// dropped unless handed on with [`JobDir::keep`].
    pub fn new_job_dir(&self, id: &str) -> JobDir {
        JobDir {
            layout: self.clone(),
            id: id.to_string(),
            armed: true,
        }
    }

    /// Removes the directory of job `id`, off the async threads: a job may leave hundreds
    /// of thousands of files, which take minutes to remove on a busy disk.
    pub async fn remove_job_dir(&self, id: &str) {
        let layout = self.clone();
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || layout.remove_job_dir_now(&id)).await;
    }

    /// [`Self::remove_job_dir`], blocking.
    pub fn remove_job_dir_now(&self, id: &str) {
        let dir = self.job(id);
        // A cluster's upload kept while it was submitted (a crash left it) is a file.
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            if let Err(e) = std::fs::remove_file(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a left-over upload");
            }
            return;
        }
        if let Err(e) = cache::remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove job directory");
        }
    }

    /// The names of the job directories there are. Blocking.
    pub fn job_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.jobs())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Makes the directories the server writes into. Blocking.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [self.jobs(), self.containers()] {
            fs_err::create_dir_all(dir)?;
        }
        // Reports and artifacts are the jobs' owners' only.
        crate::perms::private_dir(&self.results())
    }
}

/// Everything a job keeps under its directory, which the job manager removes at its end.
#[derive(Clone, Debug)]
pub struct JobPaths {
    root: PathBuf,
    /// The shard (1-based) whose report and bytecode directories these are, when the job's
    /// tests are split ([`crate::shards`]); every other directory is the job's.
    shard: Option<u32>,
}

impl JobPaths {
    pub fn new(root: PathBuf) -> JobPaths {
        JobPaths { root, shard: None }
    }

    /// The paths of the job's shard `index` (1-based): its own report and bytecode
    /// directories, the job's others.
    pub fn shard(&self, index: u32) -> JobPaths {
        JobPaths {
            root: self.root.clone(),
            shard: Some(index),
        }
    }

    /// `name`, or `name-K` for shard K.
    fn own(&self, name: &str) -> PathBuf {
        match self.shard {
            None => self.root.join(name),
            Some(k) => self.root.join(format!("{name}-{k}")),
        }
    }

    /// The plugin and durations the shards read ([`crate::shards`]).
    pub fn shard_inputs(&self) -> PathBuf {
        self.root.join("shard-inputs")
    }

    /// The output of shard `index` while the first shard's is the live log.
    pub fn shard_log(&self, index: u32) -> PathBuf {
        self.root.join(format!("shard-{index}.log"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The project as uploaded; only ever mounted read-only.
    pub fn project(&self) -> PathBuf {
        self.root.join("project")
    }

    /// A writable copy of the project that builds may write into (`build/`, `*.egg-info`,
    /// a generated `_version.py`); seen only by the install containers.
    pub fn build(&self) -> PathBuf {
        self.root.join("build")
    }

    /// The generated scripts and requirement files ([`crate::install::INPUTS`]).
    pub fn inputs(&self) -> PathBuf {
        self.root.join("inputs")
    }

    /// Where a new dependency layer is built before it is moved into the cache.
    pub fn deps_staging(&self) -> PathBuf {
        self.root.join("deps")
    }

    /// The overlay upper directory that receives the project's own install.
    pub fn venv_upper(&self) -> PathBuf {
        self.root.join("venv-upper")
    }

    /// overlayfs's work directory for [`JobPaths::venv_upper`] (same filesystem, empty).
    pub fn venv_work(&self) -> PathBuf {
        self.root.join("venv-work")
    }

    /// Where the test container's pytest writes its report ([`crate::report`]); the only
    /// place the test container may write besides its tmpfs.
    pub fn report(&self) -> PathBuf {
        self.own("report")
    }

    /// What the test container keeps for later (mounted as [`crate::spec::ARTIFACTS`]);
    /// packed into the job's results when its tests end.
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// The installer cache of a job whose user's own is in use by another job.
    pub fn installer_cache(&self) -> PathBuf {
        self.root.join("installer-cache")
    }

    /// The upper directory of the overlay over the user's installer cache: what the
    /// installs write there, merged into the cache only when they succeed.
    pub fn cache_upper(&self) -> PathBuf {
        self.root.join("cache-upper")
    }

    /// overlayfs's work directory for [`JobPaths::cache_upper`].
    pub fn cache_work(&self) -> PathBuf {
        self.root.join("cache-work")
    }

    /// The upper directory of the test container's bytecode cache
    /// ([`crate::bytecode::PREFIX`]): the `*.pyc` its Python and pytest write, kept for the
    /// next run of the same project ([`crate::bytecode`]). In the container that compiles an
    /// image's bytecode, that container's output.
    pub fn bytecode(&self) -> PathBuf {
        self.own("pycache")
    }

    /// overlayfs's work directory for [`JobPaths::bytecode`].
    pub fn bytecode_work(&self) -> PathBuf {
        self.own("pycache-work")
    }

    /// The JUnit report pytest writes in the test container (as [`crate::report::IN_CONTAINER`]).
    pub fn junit(&self) -> PathBuf {
        self.report().join("junit.xml")
    }

    /// The bundle and outcome of the job's container `id`.
    pub fn container(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The OCI bundle (`config.json` and the files it binds) of the job's container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.container(id).join("bundle")
    }

    /// Where the helper writes how the job's container `id` ended (`ci_runner::Outcome`).
    pub fn outcome(&self, id: &str) -> PathBuf {
        self.container(id).join("outcome.json")
    }
}

/// The directory of a job whose submission is under way: removed when dropped unless kept,
/// so that nothing half-written stays whichever way the submission ends (even when the
/// client goes away and the request's future is dropped).
pub struct JobDir {
    layout: DataLayout,
    id: String,
    armed: bool,
}

impl JobDir {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> PathBuf {
        self.layout.job(&self.id)
    }

    /// Removes it now; blocking.
    pub fn remove_now(mut self) {
        self.armed = false;
        self.layout.remove_job_dir_now(&self.id);
    }

    /// Removes it, off the async threads.
    pub async fn remove(mut self) {
        self.armed = false;
        self.layout.remove_job_dir(&self.id).await;
    }

    /// Hands the directory on to the job manager, which removes it when the job ends.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (layout, id) = (self.layout.clone(), std::mem::take(&mut self.id));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || layout.remove_job_dir_now(&id));
            }
            Err(_) => layout.remove_job_dir_now(&id),
        }
    }
}
