//! Reads a Python project as it is (`pyproject.toml`, `uv.lock`, requirements files, tox and
//! setup.cfg, the `[tool.ci]` table) and decides how its test environment is installed: an
//! [`InstallPlan`] of two layers, third-party dependencies (cached, keyed by everything that
//! decides them) and the project's own code (installed per job, from this job's source).
//!
//! It only reads files under the project root: it starts no processes, opens no network
//! connection and never follows a path out of the root.

mod config;
mod detect;
mod error;
mod files;
mod ini;
mod metadata;
mod names;
mod pyproject;
pub mod python;
mod requirements;
mod tox;
mod uvlock;
mod verbosity;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use error::Error;
pub use verbosity::{pytest_verbose, sets_verbosity};

/// Who installs: uv (default) or pip (where uv is unavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Installer {
    Uv,
    Pip,
}

impl Installer {
    pub fn as_str(self) -> &'static str {
        match self {
            Installer::Uv => "uv",
            Installer::Pip => "pip",
        }
    }
}

/// Whether and how the project itself is installed (`install-project`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallProject {
    No,
    Yes,
    Editable,
}

/// The `[tool.ci]` table of `pyproject.toml`, or the same keys at the top of `ci.toml`.
/// Everything is optional; `None` / empty means "not configured".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Where it came from, for messages: `"pyproject.toml [tool.ci]"` or `"ci.toml"`;
    /// `None` when the project has neither.
    pub file: Option<&'static str>,
    /// `groups = ["test", ...]`: PEP 735 dependency groups.
    pub groups: Option<Vec<String>>,
    /// `extras = ["test", ...]`: the project's optional dependencies.
    pub extras: Option<Vec<String>>,
    /// `requirements = ["requirements/test.txt", ...]`: files relative to the project root.
    pub requirements: Option<Vec<String>>,
    /// `install-project = true | false | "editable"`.
    pub install_project: Option<InstallProject>,
    /// `pytest-args = ["-x", "-k", "not slow"]`: put before the ones given on the command line.
    pub pytest_args: Vec<String>,
    /// `pytest-verbose = false`: no `-v` from the server (which adds it unless the project's
    /// pytest configuration or arguments set a verbosity); `None`: the default.
    pub pytest_verbose: Option<bool>,
    /// `env = { NAME = "value" }`: variables of the test phase.
    pub env: BTreeMap<String, String>,
    /// `timeout = "10m"` (humantime) or `timeout = 600` (seconds).
    pub timeout: Option<Duration>,
    /// `shards = 2` or `shards = "auto"`: test containers the suite is split across.
    pub shards: Option<ci_protocol::Shards>,
    /// `python = ["3.11", "3.13"]`: the server's Pythons to run on, one job each.
    pub python: Option<Vec<String>>,
}

impl Config {
    /// Whether the config decides what is installed (groups, extras, requirements or
    /// install-project set); otherwise detection runs as if there were no config.
    pub fn decides_install(&self) -> bool {
        self.groups.is_some()
            || self.extras.is_some()
            || self.requirements.is_some()
            || self.install_project.is_some()
    }
}

/// Reads and validates `[tool.ci]` in `pyproject.toml` or `ci.toml`. Unknown keys, wrong
/// types, an invalid TOML file or both files configuring CI are errors naming the key/file.
/// The project's name (`[project] name` of its pyproject.toml, normalized), if it has one.
pub fn project_name(root: &Path) -> Option<String> {
    let files = files::Files::new(root).ok()?;
    let pyproject = pyproject::load(&files, "pyproject.toml").ok()??;
    let name = pyproject.name().ok()??;
    Some(names::normalize(name))
}

pub fn read_config(root: &Path) -> Result<Config, Error> {
    config::read(root)
}

/// Decides how `root`'s test environment is installed. `config` comes from [`read_config`].
pub fn plan(root: &Path, config: &Config, installer: Installer) -> Result<InstallPlan, Error> {
    detect::plan(root, config, installer)
}

/// How one job's environment is installed: a virtual environment at `/venv` in the
/// container, made of two layers.
#[derive(Clone, Debug, PartialEq)]
pub struct InstallPlan {
    /// The command and where it was found, for the first `==> installing: ...` line, e.g.
    /// `uv sync --locked --group test (uv.lock)` or
    /// `pip install -r requirements-dev.txt . (requirements-dev.txt)`.
    pub summary: String,
    /// Lines worth saying before installing (e.g. why a uv.lock is not used).
    pub notes: Vec<String>,
    pub deps: Deps,
    /// What is installed per job on top of `deps`; `None` when nothing is.
    pub project: Option<ProjectLayer>,
    /// Canonical text of every input that decides `deps` (file names and contents that were
    /// read, chosen groups and extras, the installer): the server hashes it with the image
    /// digest and the installer's version into the cache key of the dependency layer.
    pub deps_key: String,
    /// Requirements of the dependency layer that need a version-control tool, as
    /// `(requirement line, tool)`, e.g. `("git+https://host/x.git", "git")`.
    pub vcs: Vec<(String, &'static str)>,
    /// The project's build takes its version from version control (setuptools-scm,
    /// hatch-vcs, ...) and the upload has no `PKG-INFO`: the builder sets
    /// `SETUPTOOLS_SCM_PRETEND_VERSION`.
    pub pretend_version: bool,
}

/// The third-party layer, cached across jobs.
#[derive(Clone, Debug, PartialEq)]
pub enum Deps {
    /// `uv sync --locked --no-install-project --no-install-workspace --no-install-local`
    /// with these groups and extras (normalized names), run in the project directory.
    UvLock {
        groups: Vec<String>,
        extras: Vec<String>,
    },
    /// Requirements in pip's format, every `-r` followed and inlined, local paths removed,
    /// continuation lines joined, comments dropped; option lines (`--index-url`,
    /// `--extra-index-url`, `--find-links` with a URL, `--pre`, ...) kept. `constraints` is
    /// the same for every `-c` file (empty when none). May be empty: nothing to install.
    Requirements {
        requirements: String,
        constraints: String,
    },
}

/// The per-job layer: the project itself and local path requirements, from this job's
/// source (the container sees a writable copy of the project at `/workspace`).
#[derive(Clone, Debug, PartialEq)]
pub enum ProjectLayer {
    /// `uv sync --locked --inexact` with the same groups and extras as [`Deps::UvLock`]:
    /// installs the project (unless `install_project` is false) and the lock's local
    /// packages; `--no-editable` unless `editable`.
    UvSync {
        install_project: bool,
        editable: bool,
    },
    /// `pip install` / `uv pip install` of these requirement lines, with absolute container
    /// paths: `/workspace[test]`, `-e /workspace`, `/workspace/libs/x`, ...
    Install { requirements: Vec<String> },
}

/// Where the project is in the containers: paths in requirement lines are made absolute
/// under it.
pub const CONTAINER_ROOT: &str = "/workspace";
