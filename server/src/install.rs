//! The install phase's pieces that need no container: where a job's files live, the scripts
//! the install containers run, the cache key of the dependency layer, the copy of the
//! project a build may write to, and what a failed install means in words.
//!
//! A job's environment is a virtual environment at [`VENV`] made of two layers (see
//! ARCHITECTURE.md): the third-party dependencies, built once per [`deps_key`] and shared
//! read-only by later jobs of the same user, and the project's own code, installed by every
//! job into an overlay upper directory of its own, from a writable copy of its source.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ci_project::{Deps, InstallPlan, Installer, ProjectLayer};

/// The job's virtual environment, in every container of the job.
pub const VENV: &str = "/venv";
/// The generated scripts and requirement files, read-only.
pub const INPUTS: &str = "/opt/ci";
/// The directory holding the `uv` binary, read-only.
pub const UV_DIR: &str = "/opt/ci-uv";
pub const UV_CACHE: &str = "/var/cache/ci-uv";
pub const PIP_CACHE: &str = "/var/cache/ci-pip";
/// The version a build gets when it takes its version from version control and the upload
/// has none (no `.git`, no `PKG-INFO`).
pub const PRETEND_VERSION: &str = "0.0.0";

/// The installer a job uses, with the version that goes into the cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tool {
    pub kind: Installer,
    /// uv's version; pip's comes from the image, whose digest is in the key already.
    pub version: String,
}

/// The cache key of the dependency layer: every input that decides what it holds. The
/// recipe version changes when the way layers are built changes.
pub fn deps_key(image_digest: &str, tool: &Tool, plan: &InstallPlan) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        "ci-deps-v3",
        image_digest,
        tool.kind.as_str(),
        &tool.version,
        &plan.deps_key,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The key of a project's own install over the dependency layer `deps_key`: the upload's
/// content ([`crate::bytecode::content_hash`]) and the command that installs it. Nothing
/// else goes in: the layer's key covers the image, the installer and the dependencies.
pub fn project_key(deps_key: &str, content: &str, command: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in ["ci-project-v1", deps_key, content, command] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Single-quotes `s` for `/bin/sh` unless it is plainly safe.
pub fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=/.,:@%+".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn flags(flag: &str, values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!(" {flag} {}", sh_quote(v)))
        .collect()
}

/// `uv sync` options selecting the plan's groups and extras.
fn sync_selection(plan: &InstallPlan) -> String {
    match &plan.deps {
        Deps::UvLock { groups, extras } => {
            format!("{}{}", flags("--group", groups), flags("--extra", extras))
        }
        Deps::Requirements { .. } => String::new(),
    }
}

/// The per-job install, as the log shows it.
pub fn project_command(plan: &InstallPlan, tool: &Tool) -> Option<String> {
    let line = match plan.project.as_ref()? {
        ProjectLayer::UvSync {
            install_project,
            editable,
        } => format!(
            "uv sync --locked --inexact{}{}{}",
            if *editable { "" } else { " --no-editable" },
            if *install_project {
                ""
            } else {
                " --no-install-project"
            },
            sync_selection(plan)
        ),
        ProjectLayer::Install { requirements } => {
            let args: Vec<String> = requirements
                .iter()
                .flat_map(|r| r.split_whitespace().map(sh_quote).collect::<Vec<_>>())
                .collect();
            let installer = match tool.kind {
                Installer::Uv => "uv pip install",
                Installer::Pip => "pip install",
            };
            format!("{installer} {}", args.join(" "))
        }
    };
    Some(line)
}

/// The files the install containers read at [`INPUTS`]: `deps.sh` builds the dependency
/// layer into an empty [`VENV`], `project.sh` installs the project on top of it, plus the
/// requirement files they name.
pub fn write_inputs(dir: &Path, plan: &InstallPlan, tool: &Tool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::create_dir_all(dir)?;
    // The containers' root is an unprivileged uid: everything here must be world-readable.
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut files: Vec<(&str, String)> = vec![("deps.sh", deps_script(plan, tool))];
    if let Deps::Requirements {
        requirements,
        constraints,
    } = &plan.deps
    {
        files.push(("requirements.txt", requirements.clone()));
        files.push(("constraints.txt", constraints.clone()));
    }
    if let Some(layer) = &plan.project {
        files.push(("project.sh", project_script(plan, layer, tool)));
        if let ProjectLayer::Install { requirements } = layer {
            files.push(("project.txt", requirements.join("\n") + "\n"));
        }
    }
    for (name, text) in files {
        let path = dir.join(name);
        fs_err::write(&path, text)?;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

const PY: &str = "/venv/bin/python";

fn script_head(tool: &Tool) -> String {
    let mut s = String::from("set -eu\n");
    if tool.kind == Installer::Uv {
        s.push_str(&format!("uv={UV_DIR}/uv\n"));
    }
    s
}

/// Adds pytest where nothing the project declares provides it, so that a project without
/// test dependencies still runs instead of failing with `No module named pytest`.
fn ensure_pytest(tool: &Tool) -> String {
    let install = match tool.kind {
        Installer::Uv => format!("\"$uv\" pip install --python {PY} pytest"),
        Installer::Pip => format!("{PY} -m pip install pytest"),
    };
    format!(
        "if ! {PY} -c 'import pytest' 2>/dev/null; then\n  echo 'pytest is not among the dependencies: adding it'\n  {install}\nfi\n"
    )
}

fn deps_script(plan: &InstallPlan, tool: &Tool) -> String {
    let mut s = script_head(tool);
    // The image's interpreter: uv must never download one (UV_PYTHON_DOWNLOADS=never).
    s.push_str("python=$(command -v python3)\n");
    match tool.kind {
        Installer::Uv => s.push_str("\"$uv\" venv --quiet --python \"$python\" /venv\n"),
        Installer::Pip => s.push_str("\"$python\" -m venv /venv\n"),
    }
    match &plan.deps {
        Deps::UvLock { .. } => {
            let _ = writeln!(
                s,
                "cd /workspace\n\"$uv\" sync --locked --no-install-project --no-install-workspace --no-install-local{}",
                sync_selection(plan)
            );
        }
        Deps::Requirements {
            requirements,
            constraints,
        } => {
            let constraints = if constraints.trim().is_empty() {
                String::new()
            } else {
                format!(" -c {INPUTS}/constraints.txt")
            };
            if !requirements.trim().is_empty() {
                let install = match tool.kind {
                    Installer::Uv => format!("\"$uv\" pip install --python {PY}"),
                    Installer::Pip => format!("{PY} -m pip install"),
                };
                let _ = writeln!(s, "{install} -r {INPUTS}/requirements.txt{constraints}");
            }
        }
    }
    s.push_str(&ensure_pytest(tool));
    s
}

fn project_script(plan: &InstallPlan, layer: &ProjectLayer, tool: &Tool) -> String {
    let mut s = script_head(tool);
    s.push_str("cd /workspace\n");
    match layer {
        ProjectLayer::UvSync {
            install_project,
            editable,
        } => {
            let _ = writeln!(
                s,
                "\"$uv\" sync --locked --inexact{}{}{}",
                if *editable { "" } else { " --no-editable" },
                if *install_project {
                    ""
                } else {
                    " --no-install-project"
                },
                sync_selection(plan)
            );
        }
        ProjectLayer::Install { .. } => {
            let install = match tool.kind {
                Installer::Uv => format!("\"$uv\" pip install --python {PY}"),
                Installer::Pip => format!("{PY} -m pip install"),
            };
            let _ = writeln!(s, "{install} -r {INPUTS}/project.txt");
        }
    }
    s
}

/// Environment of both install containers.
pub fn install_env(tool: &Tool, plan: &InstallPlan, ca: Option<&str>) -> Vec<(String, String)> {
    // What the install compiles goes into the layer's bytecode tree (crate::bytecode).
    let mut env: Vec<(&str, String)> = vec![
        ("VIRTUAL_ENV", VENV.into()),
        (crate::bytecode::ENV, crate::bytecode::install_prefix()),
    ];
    match tool.kind {
        Installer::Uv => env.extend([
            ("UV_CACHE_DIR", UV_CACHE.into()),
            ("UV_PYTHON_DOWNLOADS", "never".into()),
            ("UV_PYTHON_PREFERENCE", "only-system".into()),
            ("UV_PROJECT_ENVIRONMENT", VENV.into()),
            // The cache and /venv are different mounts: hard links cannot cross them.
            ("UV_LINK_MODE", "copy".into()),
            // Tests run with /venv read-only: what they import is compiled once, here.
            ("UV_COMPILE_BYTECODE", "1".into()),
            ("UV_NO_PROGRESS", "1".into()),
        ]),
        Installer::Pip => env.extend([
            ("PIP_CACHE_DIR", PIP_CACHE.into()),
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1".into()),
            ("PIP_NO_INPUT", "1".into()),
            ("PIP_PROGRESS_BAR", "off".into()),
            ("PIP_ROOT_USER_ACTION", "ignore".into()),
        ]),
    }
    if let Some(ca) = ca {
        env.extend([
            ("SSL_CERT_FILE", ca.into()),
            ("PIP_CERT", ca.into()),
            ("REQUESTS_CA_BUNDLE", ca.into()),
        ]);
    }
    if plan.pretend_version {
        env.push(("SETUPTOOLS_SCM_PRETEND_VERSION", PRETEND_VERSION.into()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Finds, for each version-control requirement, whether the image has its tool; returns the
/// first that cannot be installed, in words.
pub fn missing_vcs_tool(rootfs: &Path, plan: &InstallPlan) -> Option<String> {
    plan.vcs.iter().find_map(|(line, tool)| {
        let found = ["usr/bin", "usr/local/bin", "bin"]
            .iter()
            .any(|dir| std::fs::symlink_metadata(rootfs.join(dir).join(tool)).is_ok());
        (!found)
            .then(|| format!("requirement {line:?} needs {tool}, which the image does not have"))
    })
}

/// What a failed install means, from the end of its output: the one line a developer needs
/// (a stale lock file, a missing compiler or git, a version that does not exist), or `None`
/// when nothing known matches.
pub fn diagnose(output: &str) -> Option<String> {
    if output.contains("needs to be updated, but `--locked` was provided") {
        return Some(
            "uv.lock does not match pyproject.toml (uv sync --locked): run `uv lock` and submit again"
                .into(),
        );
    }
    if let Some(what) = missing_compiler(output) {
        return Some(format!(
            "building {} needs {what}, which the image does not have",
            failed_build(output).unwrap_or_else(|| "a requirement".into())
        ));
    }
    if output.contains("Git executable not found") || output.contains("git: not found") {
        return Some("a requirement needs git, which the image does not have".into());
    }
    for marker in [
        "ERROR: Could not find a version that satisfies the requirement",
        "ERROR: No matching distribution found for",
    ] {
        if let Some(line) = output.lines().find(|l| l.contains(marker)) {
            return Some(line.trim_start_matches("ERROR: ").trim().to_string());
        }
    }
    if let Some(i) = output.find("No solution found when resolving") {
        // uv: "× No solution found ...:\n  ╰─▶ Because <the reason>"
        let reason = output[i..]
            .lines()
            .nth(1)
            .map(|l| {
                l.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                    .trim()
            })
            .filter(|l| !l.is_empty());
        return Some(match reason {
            Some(r) => format!("no solution for the requirements: {r}"),
            None => "no solution for the requirements".into(),
        });
    }
    failed_build(output).map(|what| format!("building {what} failed"))
}

/// Which compiler a build wanted and did not find: a missing `gcc`, `cc`, `x86_64-linux-gnu-gcc`,
/// `g++`, `clang` as distutils, setuptools or a shell report it, or a missing Rust toolchain.
fn missing_compiler(output: &str) -> Option<&'static str> {
    if output.contains("can't find Rust compiler") {
        return Some("a Rust compiler");
    }
    let is_compiler = |name: &str| {
        let name = name.rsplit('/').next().unwrap_or(name);
        ["gcc", "cc", "g++", "c++", "clang", "clang++"]
            .iter()
            .any(|c| name == *c || name.ends_with(&format!("-{c}")))
    };
    let named = |line: &str, before: &str, after: &str| {
        line.split(before)
            .nth(1)
            .and_then(|rest| rest.split(after).next())
            .is_some_and(is_compiler)
    };
    output
        .lines()
        .any(|line| {
            named(line, "No such file or directory: '", "'")
                || named(line, "unable to execute '", "'")
                || (named(line, "command '", "'") && line.contains("failed"))
                || line
                    .split(": not found")
                    .next()
                    .filter(|_| line.contains(": not found"))
                    .and_then(|head| head.split_whitespace().last())
                    .is_some_and(is_compiler)
        })
        .then_some("a C compiler")
}

/// The requirement whose build failed, as uv (``Failed to build `x==1` ``) or pip
/// (`Failed to build x`, `Failed building wheel for x`) names it.
fn failed_build(output: &str) -> Option<String> {
    for line in output.lines().rev() {
        if let Some(rest) = line.split("Failed to build `").nth(1) {
            if let Some(name) = rest.split('`').next() {
                // The project itself is installed from its copy at /workspace.
                return Some(match name.split_once(" @ file:///workspace") {
                    Some((project, "")) => format!("{project} (the project)"),
                    _ => name.to_string(),
                });
            }
        }
        for marker in ["Failed building wheel for ", "Failed to build "] {
            if let Some(rest) = line.split(marker).nth(1) {
                let name = rest.trim().trim_end_matches('.');
                if !name.is_empty() && !name.contains(' ') {
                    return Some(name.to_string());
                }
            }
        }
    }
    None
}

/// What one install container may write to disk, and where it would show: the layer it
/// builds, what it adds to the writable copy of the project, and what it writes into the
/// installer's cache. The layer (with the copy's growth) and the cache each get `cap`.
#[derive(Clone, Debug)]
pub struct Budget {
    pub cap: u64,
    /// The staging directory of a new dependency layer, or the overlay's upper and work
    /// directories of the project layer.
    pub layer: Vec<PathBuf>,
    /// The writable copy of the project, with its disk use before any install.
    pub build: Option<(PathBuf, u64)>,
    /// Where what the install writes into the installer cache lands: the upper directory
    /// of the overlay over the user's cache, or a cache of the job's own.
    pub cache: Option<PathBuf>,
    /// What passing the cap with `layer` is called: [`Overrun::Output`] for an install,
    /// [`Overrun::Artifacts`] or [`Overrun::Report`] for what the tests write.
    pub layer_over: Overrun,
}

/// Which part of an install passed its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overrun {
    /// The layer (and the copy of the project).
    Output,
    InstallerCache,
    /// One file reached the cap (`RLIMIT_FSIZE`: `EFBIG`, or death by `SIGXFSZ`).
    File,
    /// What it wrote could not be measured (a tree nested deeper than a path may be
    /// long): taken as over, or such a tree would hide any amount.
    Unmeasurable,
    /// The tests wrote more than `--max-artifacts-size` into `/artifacts`.
    Artifacts,
    /// The tests wrote more than a report may hold into the report directory.
    Report,
    /// The tests wrote more than `--max-deps-size` of bytecode ([`crate::bytecode::PREFIX`]).
    Bytecode,
}

impl Overrun {
    /// Why the job ended, in words.
    pub fn reason(self, cap: u64) -> String {
        match self {
            Overrun::Artifacts => format!("{}; what fit is kept", self.what(cap)),
            Overrun::Report | Overrun::Bytecode => self.what(cap),
            _ => format!("{}; nothing of it is kept", self.what(cap)),
        }
    }

    /// What the install did, in words.
    pub fn what(self, cap: u64) -> String {
        let cap = crate::config::format_size(cap);
        match self {
            Overrun::Output => format!("the install wrote more than {cap} (--max-deps-size)"),
            Overrun::InstallerCache => {
                format!("the install wrote more than {cap} into the installer's cache (--max-deps-size)")
            }
            Overrun::File => {
                format!("the install wrote a file larger than {cap} (--max-deps-size)")
            }
            Overrun::Unmeasurable => {
                "what the install wrote could not be measured (nested too deep)".to_string()
            }
            Overrun::Artifacts => format!(
                "the tests wrote more than {cap} into {} (--max-artifacts-size)",
                crate::spec::ARTIFACTS
            ),
            Overrun::Report => format!(
                "the tests wrote more than {cap} into the test report's directory {}",
                crate::report::DIR_IN_CONTAINER
            ),
            Overrun::Bytecode => format!(
                "the tests wrote more than {cap} into the bytecode cache {} (--max-deps-size)",
                crate::bytecode::PREFIX
            ),
        }
    }
}

impl Budget {
    /// A cap on what is written into `dirs` alone (the test container's writable mounts).
    pub fn of(dirs: Vec<PathBuf>, cap: u64, over: Overrun) -> Budget {
        Budget {
            cap,
            layer: dirs,
            build: None,
            cache: None,
            layer_over: over,
        }
    }

    /// Measures what the install wrote so far: the larger of its two parts, or `Err`
    /// naming the part past the cap. Stops walking as soon as a part is past it. Blocking.
    pub fn check(&self) -> Result<u64, Overrun> {
        use crate::cache::usage;
        let measured = |e: std::io::Error| {
            tracing::warn!(error = %e, "cannot measure what an install wrote");
            Overrun::Unmeasurable
        };
        let mut output = 0u64;
        for dir in &self.layer {
            let left = self.cap.saturating_sub(output);
            output += usage(dir, left).map_err(measured)?.bytes;
            if output > self.cap {
                return Err(self.layer_over);
            }
        }
        if let Some((build, before)) = &self.build {
            let left = self.cap.saturating_sub(output);
            let now = usage(build, before.saturating_add(left)).map_err(measured)?;
            output = output.saturating_add(now.bytes.saturating_sub(*before));
            if output > self.cap {
                return Err(Overrun::Output);
            }
        }
        let mut cache = 0;
        if let Some(dir) = &self.cache {
            cache = usage(dir, self.cap).map_err(measured)?.bytes;
            if cache > self.cap {
                return Err(Overrun::InstallerCache);
            }
        }
        Ok(output.max(cache))
    }

    /// Bytes in use on the filesystem the install writes to (`statvfs`, which counts
    /// data not yet written back): a cheap sign that it may have written a lot.
    pub fn filesystem_used(&self) -> Option<u64> {
        let dir = self.layer.first()?;
        let fs = nix::sys::statvfs::statvfs(dir.as_path()).ok()?;
        let blocks = fs.blocks().saturating_sub(fs.blocks_free());
        Some(blocks.saturating_mul(fs.fragment_size()))
    }
}

/// Whether a failed install's end shows one file reaching `RLIMIT_FSIZE`: Python ignores
/// `SIGXFSZ` and reports `EFBIG`, other programs are killed by it.
pub fn hit_file_size_limit(signal: Option<i32>, output: &str) -> bool {
    signal == Some(nix::sys::signal::Signal::SIGXFSZ as i32)
        || output.contains("[Errno 27] File too large")
}

/// Copies the uploaded project into a fresh directory: files, directories and symlinks as
/// they are (the upload has no other kinds, and its links stay inside it).
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::create_dir(dst)?;
    let mode = fs_err::metadata(src)?.permissions().mode();
    for entry in fs_err::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs_err::read_link(&from)?, &to)?;
        } else if kind.is_file() {
            fs_err::copy(&from, &to)?;
        }
    }
    fs_err::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(deps: Deps, project: Option<ProjectLayer>) -> InstallPlan {
        InstallPlan {
            summary: String::new(),
            notes: vec![],
            deps,
            project,
            deps_key: "key".into(),
            vcs: vec![],
            pretend_version: false,
        }
    }

    fn uv() -> Tool {
        Tool {
            kind: Installer::Uv,
            version: "0.13.9".into(),
        }
    }

    #[test]
    fn key_covers_image_installer_and_inputs() {
        let p = plan(
            Deps::Requirements {
                requirements: "pytest\n".into(),
                constraints: String::new(),
            },
            None,
        );
        let a = deps_key("sha256:aa", &uv(), &p);
        assert_eq!(a, deps_key("sha256:aa", &uv(), &p));
        assert_ne!(a, deps_key("sha256:bb", &uv(), &p));
        let newer = Tool {
            version: "0.14.0".into(),
            ..uv()
        };
        assert_ne!(a, deps_key("sha256:aa", &newer, &p));
        let pip = Tool {
            kind: Installer::Pip,
            version: String::new(),
        };
        assert_ne!(a, deps_key("sha256:aa", &pip, &p));
        let mut other = p.clone();
        other.deps_key = "other".into();
        assert_ne!(a, deps_key("sha256:aa", &uv(), &other));
    }

    #[test]
    fn scripts_for_a_lock_and_for_requirements() {
        let locked = plan(
            Deps::UvLock {
                groups: vec!["test".into()],
                extras: vec![],
            },
            Some(ProjectLayer::UvSync {
                install_project: true,
                editable: false,
            }),
        );
        let deps = deps_script(&locked, &uv());
        assert!(
            deps.contains("\"$uv\" venv --quiet --python \"$python\" /venv"),
            "{deps}"
        );
        assert!(deps.contains("sync --locked --no-install-project --no-install-workspace --no-install-local --group test"), "{deps}");
        assert!(deps.contains("import pytest"), "{deps}");
        assert_eq!(
            project_command(&locked, &uv()).unwrap(),
            "uv sync --locked --inexact --no-editable --group test"
        );

        let reqs = plan(
            Deps::Requirements {
                requirements: "pytest\n".into(),
                constraints: "six<2\n".into(),
            },
            Some(ProjectLayer::Install {
                requirements: vec!["-e /workspace[test]".into()],
            }),
        );
        let pip = Tool {
            kind: Installer::Pip,
            version: String::new(),
        };
        let deps = deps_script(&reqs, &pip);
        assert!(deps.contains("\"$python\" -m venv /venv"), "{deps}");
        assert!(
            deps.contains("/venv/bin/python -m pip install -r /opt/ci/requirements.txt -c /opt/ci/constraints.txt"),
            "{deps}"
        );
        assert_eq!(
            project_command(&reqs, &pip).unwrap(),
            "pip install -e '/workspace[test]'"
        );
        let nothing = plan(
            Deps::Requirements {
                requirements: String::new(),
                constraints: String::new(),
            },
            None,
        );
        assert!(!deps_script(&nothing, &uv()).contains("-r /opt/ci"));
        assert!(project_command(&nothing, &uv()).is_none());
    }

    #[test]
    fn group_names_are_quoted() {
        let p = plan(
            Deps::UvLock {
                groups: vec!["a b'c".into()],
                extras: vec![],
            },
            None,
        );
        assert!(deps_script(&p, &uv()).contains(r"--group 'a b'\''c'"));
    }

    fn check(output: &str, expected: Option<&str>) {
        assert_eq!(diagnose(output).as_deref(), expected, "{output}");
    }

    #[test]
    fn failures_in_words() {
        check(
            "error: The lockfile at `uv.lock` needs to be updated, but `--locked` was provided. To update the lockfile, run `uv lock`.",
            Some("uv.lock does not match pyproject.toml (uv sync --locked): run `uv lock` and submit again"),
        );
        check(
            "  error: command 'gcc' failed: No such file or directory\n  × Failed to build `cext==0.1`\n",
            Some("building cext==0.1 needs a C compiler, which the image does not have"),
        );
        check(
            "      error: command 'x86_64-linux-gnu-gcc' failed: No such file or directory\n  ERROR: Failed building wheel for cext\nFailed to build cext\n",
            Some("building cext needs a C compiler, which the image does not have"),
        );
        check(
            "ERROR: Could not find a version that satisfies the requirement nopkg==9 (from versions: none)\nERROR: No matching distribution found for nopkg==9",
            Some("Could not find a version that satisfies the requirement nopkg==9 (from versions: none)"),
        );
        check(
            "  × No solution found when resolving dependencies:\n  ╰─▶ Because there is no version of nopkg==9 and you require nopkg==9, we can conclude that your requirements are unsatisfiable.\n",
            Some("no solution for the requirements: Because there is no version of nopkg==9 and you require nopkg==9, we can conclude that your requirements are unsatisfiable."),
        );
        check(
            "error: Failed to build `cext @ file:///workspace`\n         error: [Errno 2] No such file or directory: 'x86_64-linux-gnu-gcc'\n",
            Some("building cext (the project) needs a C compiler, which the image does not have"),
        );
        check(
            "/bin/sh: 1: cc: not found\n  × Failed to build `cext==0.1`",
            Some("building cext==0.1 needs a C compiler, which the image does not have"),
        );
        check(
            "error: can't find Rust compiler\nERROR: Failed building wheel for rpkg",
            Some("building rpkg needs a Rust compiler, which the image does not have"),
        );
        // Words that merely contain a compiler's name are not a missing compiler.
        check("No such file or directory: 'data.cc.json'\n", None);
        check("Installed 3 packages", None);
    }

    #[test]
    fn budget_names_the_part_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["layer", "build", "cache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("build/setup.py"), vec![1u8; 100_000]).unwrap();
        let before = crate::cache::usage(&root.join("build"), u64::MAX)
            .unwrap()
            .bytes;
        let budget = Budget {
            cap: 64 << 10,
            layer: vec![root.join("layer"), root.join("missing-work-dir")],
            build: Some((root.join("build"), before)),
            cache: Some(root.join("cache")),
            layer_over: Overrun::Output,
        };
        // The copy of the project as uploaded counts for nothing.
        let empty = budget.check().unwrap();
        assert!(empty <= 4 * crate::cache::MIN_ENTRY_BYTES, "{empty}");
        assert!(budget.filesystem_used().unwrap() > 0);
        std::fs::write(root.join("cache/wheel"), vec![1u8; 80 << 10]).unwrap();
        assert_eq!(budget.check(), Err(Overrun::InstallerCache));
        std::fs::write(root.join("build/generated"), vec![1u8; 40 << 10]).unwrap();
        std::fs::write(root.join("layer/lib"), vec![1u8; 40 << 10]).unwrap();
        assert_eq!(
            budget.check(),
            Err(Overrun::Output),
            "layer and build add up"
        );
        assert_eq!(
            Overrun::Output.reason(2 << 30),
            "the install wrote more than 2 GiB (--max-deps-size); nothing of it is kept"
        );
    }

    #[test]
    fn a_file_past_the_size_limit_is_recognised() {
        assert!(hit_file_size_limit(Some(25), ""));
        assert!(hit_file_size_limit(
            None,
            "OSError: [Errno 27] File too large"
        ));
        assert!(!hit_file_size_limit(Some(9), "Killed"));
    }

    #[test]
    fn copies_files_dirs_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("pkg/sub")).unwrap();
        std::fs::write(src.join("pkg/sub/a.py"), "A = 1\n").unwrap();
        std::os::unix::fs::symlink("sub/a.py", src.join("pkg/link.py")).unwrap();
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("pkg/sub/a.py")).unwrap(),
            "A = 1\n"
        );
        assert_eq!(
            std::fs::read_link(dst.join("pkg/link.py")).unwrap(),
            Path::new("sub/a.py")
        );
    }
}
