//! What this machine lets this process do with containers: root or not, user namespaces,
//! cgroups (version, and each controller usable as root or through a delegated subtree),
//! seccomp, slirp4netns. For a server's start-up check and `ci-server doctor`.
//!
//! Probing starts at most two short-lived processes (`true` in a new user namespace, and
//! `slirp4netns --version`) and writes nothing.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcgroups::common::CgroupSetup;
use libcgroups::v1::ControllerType;

use crate::spec::CgroupMode;

/// A finding: `Ok(detail)` when usable, `Err(reason)` when not.
pub type Finding = Result<String, String>;

/// The controllers whose limits the server sets.
pub const LIMIT_CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

/// Everything [`capabilities`] found out.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Effective uid of this process.
    pub euid: u32,
    /// Its user name, if it has one.
    pub user: Option<String>,
    /// Whether a user namespace can be created (and by whom).
    pub user_namespaces: Finding,
    pub cgroups: Cgroups,
    /// The kernel's seccomp filter mode.
    pub seccomp: Finding,
    /// slirp4netns for the install phase's network.
    pub slirp4netns: Result<Slirp4netns, String>,
}

impl Capabilities {
    pub fn is_root(&self) -> bool {
        self.euid == 0
    }
}

/// How containers get their cgroups here.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// "v1", "v1 (hybrid)", "v2", or why it is unknown.
    pub version: Finding,
    /// `Runtime` as root; `Delegated` for a normal user.
    pub mode: CgroupMode,
    /// Parent cgroup of every container: `/ci` for root, [`delegated_parent`] otherwise.
    pub parent: String,
    /// Per controller (or v1 hierarchy): usable or why not. For a normal user on v1 this
    /// lists every hierarchy libcontainer joins, since it needs all of them.
    pub controllers: Vec<(String, Finding)>,
}

impl Cgroups {
    /// Whether `controller` can carry limits.
    pub fn usable(&self, controller: &str) -> bool {
        self.controllers
            .iter()
            .any(|(name, f)| name.split(',').any(|n| n == controller) && f.is_ok())
    }

    /// Whether containers can be created at all: libcontainer joins every v1 hierarchy
    /// it knows, so a normal user needs each of them delegated.
    pub fn containers_possible(&self) -> Result<(), String> {
        if self.mode == CgroupMode::Runtime || self.version.as_deref() == Ok("v2") {
            return Ok(());
        }
        let missing: Vec<&str> = self
            .controllers
            .iter()
            .filter(|(_, f)| f.is_err())
            .map(|(n, _)| n.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "cgroup hierarchies not delegated to this user: {}",
                missing.join(", ")
            ))
        }
    }
}

/// slirp4netns as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slirp4netns {
    pub path: PathBuf,
    /// First line of `--version`, e.g. "slirp4netns version 1.2.0".
    pub version: String,
}

/// The cgroup a normal user's containers live under, delegated once by root with
/// `scripts/delegate-cgroups USER`: `/ci-<user>` in every v1 hierarchy.
pub fn delegated_parent(user: &str) -> String {
    format!("/ci-{user}")
}

/// Probes this machine for the calling user.
pub fn capabilities() -> Capabilities {
    let euid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_uid(euid)
        .ok()
        .flatten()
        .map(|u| u.name);
    Capabilities {
        euid: euid.as_raw(),
        user: user.clone(),
        user_namespaces: user_namespaces(),
        cgroups: cgroups(euid.is_root(), user.as_deref()),
        seccomp: seccomp(),
        slirp4netns: slirp4netns(),
    }
}

fn user_namespaces() -> Finding {
    let mut cmd = Command::new("true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: unshare(2) is a plain syscall, fine between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(Into::into)
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok("a new user namespace can be created".into()),
        Ok(s) => Err(format!("`true` in a new user namespace exited with {s}")),
        Err(e) => {
            let knob = [
                "/proc/sys/user/max_user_namespaces",
                "/proc/sys/kernel/unprivileged_userns_clone",
            ]
            .iter()
            .filter_map(|p| Some(format!("{p}={}", std::fs::read_to_string(p).ok()?.trim())))
            .collect::<Vec<_>>()
            .join(", ");
            Err(format!("unshare(CLONE_NEWUSER) failed: {e} ({knob})"))
        }
    }
}

fn seccomp() -> Finding {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    if status
        .lines()
        .any(|l| l.starts_with("Seccomp_filters:") || l.starts_with("Seccomp:"))
    {
        Ok("kernel seccomp filters".into())
    } else {
        Err("the kernel has no seccomp (CONFIG_SECCOMP_FILTER)".into())
    }
}

fn slirp4netns() -> Result<Slirp4netns, String> {
    let path = crate::slirp::find().ok_or_else(|| {
        format!(
            "{} not found in PATH (Debian package slirp4netns)",
            crate::slirp::BINARY
        )
    })?;
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().unwrap_or_default().trim().to_owned();
    if !out.status.success() {
        return Err(format!("{} --version failed", path.display()));
    }
    // The helper runs it with --enable-seccomp, which needs a build with libseccomp.
    if !text.lines().any(|l| l.starts_with("libseccomp:")) {
        return Err(format!(
            "{version}: built without libseccomp (--enable-seccomp fails)"
        ));
    }
    Ok(Slirp4netns { path, version })
}

fn cgroups(root: bool, user: Option<&str>) -> Cgroups {
    let setup = libcgroups::common::get_cgroup_setup();
    let (mode, parent) = match (root, user) {
        (true, _) => (CgroupMode::Runtime, "/ci".to_owned()),
        (false, Some(user)) => (CgroupMode::Delegated, delegated_parent(user)),
        (false, None) => (CgroupMode::Delegated, delegated_parent("unknown")),
    };
    let (version, controllers) = match setup {
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {
            let version = if matches!(setup, Ok(CgroupSetup::Hybrid)) {
                "v1 (hybrid)"
            } else {
                "v1"
            };
            (Ok(version.to_owned()), v1_controllers(root, &parent))
        }
        Ok(CgroupSetup::Unified) => (Ok("v2".to_owned()), v2_controllers(root)),
        Err(e) => (
            Err(format!("cannot tell the cgroup setup: {e}")),
            Vec::new(),
        ),
    };
    Cgroups {
        version,
        mode,
        parent,
        controllers,
    }
}

/// libcgroups' list of v1 controllers (its `CONTROLLERS`, not exported): the container's
/// init is added to each one that is mounted.
const LIBCONTAINER_V1: &[ControllerType] = &[
    ControllerType::Cpu,
    ControllerType::CpuAcct,
    ControllerType::CpuSet,
    ControllerType::Devices,
    ControllerType::HugeTlb,
    ControllerType::Memory,
    ControllerType::Pids,
    ControllerType::PerfEvent,
    ControllerType::Blkio,
    ControllerType::NetworkPriority,
    ControllerType::NetworkClassifier,
    ControllerType::Freezer,
];

/// Every mounted v1 hierarchy that libcontainer joins, once per mount point (cpu and
/// cpuacct are often mounted together).
fn v1_controllers(root: bool, parent: &str) -> Vec<(String, Finding)> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for ctrl in LIBCONTAINER_V1 {
        let Ok(mount) = libcgroups::v1::util::get_subsystem_mount_point(ctrl) else {
            if LIMIT_CONTROLLERS.contains(&ctrl.to_string().as_str()) {
                out.push((ctrl.to_string(), Err("not mounted".into())));
            }
            continue;
        };
        let mount = std::fs::canonicalize(&mount).unwrap_or(mount);
        if seen.contains(&mount) {
            continue;
        }
        seen.push(mount.clone());
        let name = mount
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ctrl.to_string());
        let finding = if root {
            Ok(format!("as root: {}", mount.display()))
        } else {
            delegated_v1(&mount.join(parent.trim_start_matches('/')), ctrl)
        };
        out.push((name, finding));
    }
    out
}

/// A delegated subtree: a directory this user owns, whose `cgroup.procs` it may write
/// (so it can move its containers in), with cpus and mems set for cpuset.
fn delegated_v1(dir: &Path, ctrl: &ControllerType) -> Finding {
    let how = "root delegates it once with `scripts/delegate-cgroups USER`";
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("{} is missing ({e}); {how}", dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "{} belongs to uid {}; {how}",
            dir.display(),
            meta.uid()
        ));
    }
    let procs = dir.join("cgroup.procs");
    nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{} is not writable ({e}); {how}", procs.display()))?;
    if *ctrl == ControllerType::CpuSet {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let value = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if value.trim().is_empty() {
                return Err(format!("{} has no {file}; {how}", dir.display()));
            }
        }
    }
    Ok(format!("delegated: {}", dir.display()))
}

fn v2_controllers(root: bool) -> Vec<(String, Finding)> {
    let available =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    ["memory", "pids", "cpu"]
        .iter()
        .map(|c| {
            let finding = if !available.contains(c) {
                Err("not enabled in /sys/fs/cgroup/cgroup.controllers".into())
            } else if root {
                Ok("as root".into())
            } else {
                Err(
                    "cgroup v2 without root is not supported (limits need systemd delegation)"
                        .into(),
                )
            };
            ((*c).to_owned(), finding)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_without_panicking() {
        let caps = capabilities();
        assert_eq!(caps.is_root(), nix::unistd::geteuid().is_root());
        if caps.is_root() {
            assert_eq!(caps.cgroups.parent, "/ci");
        }
    }

    #[test]
    fn usable_matches_comounted_hierarchies() {
        let cgroups = Cgroups {
            version: Ok("v1".into()),
            mode: CgroupMode::Delegated,
            parent: "/ci-a".into(),
            controllers: vec![
                ("cpu,cpuacct".into(), Ok("delegated".into())),
                ("memory".into(), Err("missing".into())),
            ],
        };
        assert!(cgroups.usable("cpuacct"));
        assert!(!cgroups.usable("memory"));
        assert!(!cgroups.usable("pids"));
        assert!(cgroups
            .containers_possible()
            .unwrap_err()
            .contains("memory"));
    }
}
