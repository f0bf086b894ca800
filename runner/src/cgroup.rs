//! Reading why a container died from its cgroups (OOM kills, pids limit hits), and removing
//! cgroups whose container state is gone.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager, CgroupSetup};
use libcgroups::v1::ControllerType;

use crate::error::Error;
use crate::spec::Limits;

/// Counters the kernel keeps per cgroup. `None` where the file or line is missing (an
/// older kernel, or a controller not mounted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Processes killed by the OOM killer inside this cgroup (`oom_kill`, Linux 4.13+).
    pub oom_kills: Option<u64>,
    /// Times the memory limit was hit (v1 `memory.failcnt`); reclaim may have succeeded.
    pub memory_failcnt: Option<u64>,
    /// Times a fork/clone failed because of `pids.max` (`max` in `pids.events`).
    pub pids_max_events: Option<u64>,
}

/// Reads the counters of the cgroup at `cgroup_path` (e.g. `/ci/<id>`, relative to each
/// hierarchy's root). Must run before the cgroup is removed by `delete`.
pub fn read_counters(cgroup_path: &Path) -> Counters {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    match libcgroups::common::get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => {
            let base = libcgroups::v2::util::get_unified_mount_point()
                .unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup"))
                .join(rel);
            Counters {
                oom_kills: read_key(&base.join("memory.events"), "oom_kill"),
                memory_failcnt: None,
                pids_max_events: read_key(&base.join("pids.events"), "max"),
            }
        }
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {
            let dir = |ctrl: &ControllerType| {
                libcgroups::v1::util::get_subsystem_mount_point(ctrl)
                    .ok()
                    .map(|m| m.join(rel))
            };
            let memory = dir(&ControllerType::Memory);
            let pids = dir(&ControllerType::Pids);
            Counters {
                oom_kills: memory
                    .as_ref()
                    .and_then(|d| read_key(&d.join("memory.oom_control"), "oom_kill")),
                memory_failcnt: memory
                    .as_ref()
                    .and_then(|d| read_value(&d.join("memory.failcnt"))),
                pids_max_events: pids.and_then(|d| read_key(&d.join("pids.events"), "max")),
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot tell the cgroup setup; no OOM or pids counters");
            Counters::default()
        }
    }
}

/// Kills whatever is left in the container's cgroups and removes them, in every
/// hierarchy. For leftovers whose libcontainer state is unreadable; the normal path is
/// `Container::delete`, which does the same.
pub fn remove(id: &str, cgroup_path: &Path) -> Result<(), Error> {
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path.to_owned(),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })
    .map_err(|e| Error::CgroupSetup(Box::new(e)))?;
    manager.remove().map_err(|source| Error::RemoveCgroup {
        id: id.to_owned(),
        path: cgroup_path.to_owned(),
        source: Box::new(source),
    })
}

/// Moves process `pid` into the cgroups of container `id` at `cgroup_path`, in every
/// hierarchy, the way libcontainer moved the container's init (the same manager, so the
/// same directories), so that the kernel counts it against the container's limits and
/// the container's kill and removal take it too. For helpers of the container that run
/// outside it (slirp4netns). The cgroups must exist: call it after `build()`.
///
/// Moving a task needs write access to the destination's `cgroup.procs` and, on v1,
/// the writer's euid to be root or the task's uid: the helper is root, or the same user
/// as the process it started.
pub fn join(
    id: &str,
    cgroup_path: &Path,
    pid: nix::unistd::Pid,
    what: &'static str,
) -> Result<(), Error> {
    let err = |source| Error::JoinCgroup {
        what,
        path: cgroup_path.to_owned(),
        source: Box::new(source),
    };
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path.to_owned(),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })
    .map_err(|e| Error::CgroupSetup(Box::new(e)))?;
    manager.add_task(pid).map_err(err)
}

/// [`crate::CgroupMode::Delegated`]: creates the container's cgroups (`cgroup_path`, e.g.
/// `/ci-alice/<id>`, inside a subtree the user owns) and writes `limits` into them, before
/// libcontainer moves the container in. Only cgroup v1: there a directory created by a
/// user belongs to that user, files included (cgroup_kn_set_ugid), so no root is needed.
/// A limit whose controller is not mounted is an error, never silently dropped.
pub fn prepare_delegated(cgroup_path: &Path, limits: &Limits) -> Result<(), Error> {
    if limits == &Limits::default() {
        // Nothing to write; libcontainer's rootless path then does what the host allows.
        return Ok(());
    }
    match libcgroups::common::get_cgroup_setup() {
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {}
        Ok(CgroupSetup::Unified) => {
            return Err(Error::Delegation(
                "delegated cgroups are implemented for cgroup v1 only".into(),
            ))
        }
        Err(e) => return Err(Error::CgroupSetup(Box::new(e))),
    }
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let dir = |ctrl: ControllerType| -> Result<PathBuf, Error> {
        let mount = libcgroups::v1::util::get_subsystem_mount_point(&ctrl).map_err(|e| {
            Error::Delegation(format!("the {ctrl} controller is not available: {e}"))
        })?;
        let dir = mount.join(rel);
        match fs_err::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::Write {
                path: dir,
                source: e,
            }),
            _ => Ok(dir),
        }
    };
    let write = |dir: &Path, file: &str, value: String| {
        let path = dir.join(file);
        fs_err::write(&path, value).map_err(|source| Error::Write { path, source })
    };
    if let Some(bytes) = limits.memory_bytes {
        let memory = dir(ControllerType::Memory)?;
        write(&memory, "memory.limit_in_bytes", bytes.to_string())?;
        // memory+swap: only with swap accounting; it must not be below the limit, which
        // it is not once the limit is written first.
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            write(&memory, "memory.memsw.limit_in_bytes", bytes.to_string())?;
        }
    }
    if let Some(pids) = limits.pids {
        write(&dir(ControllerType::Pids)?, "pids.max", pids.to_string())?;
    }
    if let Some(quota) = limits.cpu_quota_us {
        let cpu = dir(ControllerType::Cpu)?;
        let period = limits.cpu_period_us.unwrap_or(100_000);
        write(&cpu, "cpu.cfs_period_us", period.to_string())?;
        write(&cpu, "cpu.cfs_quota_us", quota.to_string())?;
    }
    Ok(())
}

fn read_value(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    parse_key(&std::fs::read_to_string(path).ok()?, key)
}

/// Finds `key N` in a flat-keyed cgroup file such as `memory.oom_control`.
fn parse_key(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(content: &str, key: &str, expected: Option<u64>) {
        assert_eq!(parse_key(content, key), expected, "{key} in {content:?}");
    }

    #[test]
    fn parses_flat_keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        check(oom_control, "oom_kill", Some(2));
        check(oom_control, "oom_kill_disable", Some(0));
        check(oom_control, "missing", None);
        check("max 17\n", "max", Some(17));
        check("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", "max", Some(3));
        check("", "max", None);
        check("max notanumber\n", "max", None);
    }
}
