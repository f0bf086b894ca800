//! How jobs are isolated on this machine, decided once at start-up from the flags and what
//! `ci_runner::probe` finds: the user namespace the containers run in, who writes their
//! limits, and the install phase's network. Where something configured cannot be had the
//! server refuses to start and says why; `ci-server doctor` prints the same findings.

use std::path::{Path, PathBuf};

use ci_runner::probe::{Capabilities, LIMIT_CONTROLLERS};
use ci_runner::{CgroupMode, IdRange, Network, UserNamespace};

use crate::config::{InstallNetwork, ServeArgs};

/// The isolation every job gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub user_namespace: UserNamespace,
    pub cgroups: CgroupMode,
    pub cgroup_parent: String,
    pub install_network: Network,
    /// `--memory-limit`, or `None` where it cannot be enforced and `--allow-unlimited`.
    pub memory_limit: Option<u64>,
    /// `--pids-limit`, likewise.
    pub pids_limit: Option<i64>,
    /// `--cpus` as a CFS quota per 100 ms period, likewise; `None` also for `--cpus 0`.
    pub cpu_quota_us: Option<i64>,
    /// What is weaker than it could be, for the start-up log.
    pub warnings: Vec<Warning>,
}

/// The fallback named wherever slirp4netns cannot serve the install phase.
const NETWORK_FALLBACK: &str =
    "or pass --install-network host (pip then shares the host's network)";

/// Why the server cannot isolate jobs as configured: each one refuses the start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("user namespaces are not available: {0}")]
    NoUserNamespaces(String),
    #[error("seccomp is not available: {0}")]
    NoSeccomp(String),
    #[error(
        "--userns-range needs root: a server run by a normal user maps only its own ids (the jobs run as that user)"
    )]
    RangeNeedsRoot,
    #[error(transparent)]
    Range(#[from] RangeConflict),
    #[error("jobs cannot reach {}: {why}", dir.display())]
    Unreachable { dir: PathBuf, why: String },
    /// No cgroup hierarchy this server can use.
    #[error("{0}")]
    Cgroups(String),
    #[error("{why}: as root, run `scripts/delegate-cgroups {user}` once")]
    NotDelegated { why: String, user: String },
    #[error(
        "{flag} cannot be enforced: the {controller} cgroup controller: {why} (--allow-unlimited runs jobs without it)"
    )]
    Unenforceable {
        flag: &'static str,
        controller: &'static str,
        why: String,
    },
    #[error("{why}: install it, {NETWORK_FALLBACK}")]
    NoSlirp { why: String },
    #[error("slirp4netns cannot run as this user: {why}; {NETWORK_FALLBACK}")]
    TunUnusable { why: String },
}

/// What makes the isolation weaker than it could be, allowed by a flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error(
        "{flag} cannot be enforced: the {controller} cgroup controller: {why}; jobs run without it (--allow-unlimited)"
    )]
    Unlimited {
        flag: &'static str,
        controller: &'static str,
        why: String,
    },
    #[error(
        "--install-network host: pip runs in the host's network namespace and can reach services on this machine, including this server"
    )]
    HostNetwork,
}

/// Why an id range cannot hold the jobs' ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeConflict {
    #[error("--userns-range: COUNT must be at least 1")]
    Empty,
    /// It holds the id of a user or group: that one's files and processes would be the jobs'.
    #[error("--userns-range {start}:{count} holds the id {id} of {what} {name}")]
    HoldsId {
        start: u32,
        count: u32,
        id: u64,
        what: &'static str,
        name: String,
    },
    /// It overlaps subordinate ids someone may map in their own containers.
    #[error("--userns-range {start}:{count} overlaps {name}'s subordinate ids {sub_start}:{sub_count} in {file}")]
    OverlapsSubordinate {
        start: u32,
        count: u32,
        name: String,
        sub_start: u64,
        sub_count: u64,
        file: &'static str,
    },
}

impl Sandbox {
    /// What a server run by root with default flags gets; for tests of code around it.
    pub fn rootful_default() -> Sandbox {
        Sandbox {
            user_namespace: UserNamespace::ROOTFUL_DEFAULT,
            cgroups: CgroupMode::Runtime,
            cgroup_parent: "/ci".into(),
            install_network: Network::Slirp,
            memory_limit: None,
            pids_limit: None,
            cpu_quota_us: None,
            warnings: Vec::new(),
        }
    }
}

/// The CFS period the `--cpus` quota is counted in (the kernel's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Decides the sandbox, or lists every reason the server cannot start. `reachable` are
/// the directories containers read from (data dir, image cache), which the jobs' user
/// must be able to search.
pub fn plan(
    args: &ServeArgs,
    caps: &Capabilities,
    reachable: &[&Path],
) -> Result<Sandbox, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    if let Err(why) = &caps.user_namespaces {
        problems.push(Problem::NoUserNamespaces(why.clone()));
    }
    if let Err(why) = &caps.seccomp {
        problems.push(Problem::NoSeccomp(why.clone()));
    }

    let user_namespace = if caps.is_root() {
        let range = args
            .userns_range
            .unwrap_or(UserNamespace::ROOTFUL_DEFAULT.host_ids());
        problems.extend(
            range_conflicts(&range, &IdFiles::system())
                .into_iter()
                .map(Problem::Range),
        );
        UserNamespace::Range(range)
    } else {
        if args.userns_range.is_some() {
            problems.push(Problem::RangeNeedsRoot);
        }
        UserNamespace::Caller
    };
    for dir in reachable {
        if let Err(e) = check_reachable_or_ancestor(dir, &user_namespace) {
            problems.push(Problem::Unreachable {
                dir: dir.to_path_buf(),
                why: e,
            });
        }
    }

    let cg = &caps.cgroups;
    if let Err(why) = &cg.version {
        problems.push(Problem::Cgroups(why.clone()));
    }
    if let Err(why) = cg.containers_possible() {
        problems.push(Problem::NotDelegated {
            why: why.to_string(),
            user: caps.user.as_deref().unwrap_or("USER").to_string(),
        });
    }
    let mut limit = |controller: &'static str, flag: &'static str| -> bool {
        if cg.usable(controller) {
            return true;
        }
        let why = cg
            .controllers
            .iter()
            .find(|(name, _)| name.split(',').any(|n| n == controller))
            .and_then(|(_, f)| f.as_ref().err().cloned())
            .unwrap_or_else(|| "not available".into());
        if args.allow_unlimited {
            warnings.push(Warning::Unlimited {
                flag,
                controller,
                why,
            });
        } else {
            problems.push(Problem::Unenforceable {
                flag,
                controller,
                why,
            });
        }
        false
    };
    debug_assert_eq!(LIMIT_CONTROLLERS, ["memory", "pids", "cpu"]);
    let memory_limit = limit("memory", "--memory-limit").then_some(args.memory_limit);
    let pids_limit = limit("pids", "--pids-limit").then_some(args.pids_limit);
    let cpu_quota_us = (args.cpus > 0.0 && limit("cpu", "--cpus"))
        .then(|| (args.cpus * CPU_PERIOD_US as f64).round().max(1000.0) as i64);

    let install_network = match args.install_network {
        InstallNetwork::Host => {
            warnings.push(Warning::HostNetwork);
            Network::Host
        }
        InstallNetwork::Slirp => {
            match &caps.slirp4netns {
                Err(why) => problems.push(Problem::NoSlirp { why: why.clone() }),
                Ok(_) if !caps.is_root() => {
                    if let Err(why) = tun_usable() {
                        problems.push(Problem::TunUnusable { why });
                    }
                }
                Ok(_) => {}
            }
            Network::Slirp
        }
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Sandbox {
        user_namespace,
        cgroups: cg.mode,
        cgroup_parent: cg.parent.clone(),
        install_network,
        memory_limit,
        pids_limit,
        cpu_quota_us,
        warnings,
    })
}

/// slirp4netns run by a normal user opens /dev/net/tun itself.
pub fn tun_usable() -> Result<(), String> {
    let path = "/dev/net/tun";
    nix::unistd::access(
        path,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .map_err(|e| format!("{path} is not open to this user ({e}); Debian's udev makes it 0666"))
}

/// `check_reachable` for `dir`, or for its nearest existing ancestor while it does not
/// exist yet (the server creates it later with mode 0755).
pub fn check_reachable_or_ancestor(dir: &Path, userns: &UserNamespace) -> Result<(), String> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    ci_runner::check_reachable(existing, userns).map_err(|e| ci_runner::error_chain(&e))
}

/// The host's id databases, for [`range_conflicts`].
pub struct IdFiles {
    pub passwd: String,
    pub group: String,
    pub subuid: String,
    pub subgid: String,
}

impl IdFiles {
    pub fn system() -> IdFiles {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        IdFiles {
            passwd: read("/etc/passwd"),
            group: read("/etc/group"),
            subuid: read("/etc/subuid"),
            subgid: read("/etc/subgid"),
        }
    }
}

/// Why the jobs' id range must not be used: it holds a user's or group's id (its files and
/// processes would be the jobs'), or overlaps subordinate ids someone may map in their
/// own containers.
pub fn range_conflicts(range: &IdRange, files: &IdFiles) -> Vec<RangeConflict> {
    let mut out = Vec::new();
    let inside =
        |id: u64, base: u32| id >= u64::from(base) && id < u64::from(base) + u64::from(range.count);
    if range.count == 0 {
        out.push(RangeConflict::Empty);
    }
    for (text, base, what) in [
        (&files.passwd, range.uid, "user"),
        (&files.group, range.gid, "group"),
    ] {
        for line in text.lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(id)) = (fields.next(), fields.nth(1)) else {
                continue;
            };
            let Ok(id) = id.parse::<u64>() else { continue };
            if inside(id, base) {
                out.push(RangeConflict::HoldsId {
                    start: base,
                    count: range.count,
                    id,
                    what,
                    name: name.to_string(),
                });
            }
        }
    }
    for (text, base, file) in [
        (&files.subuid, range.uid, "/etc/subuid"),
        (&files.subgid, range.gid, "/etc/subgid"),
    ] {
        for line in text.lines() {
            let mut fields = line.trim().split(':');
            let (Some(name), Some(start), Some(count)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) else {
                continue;
            };
            let (lo, hi) = (u64::from(base), u64::from(base) + u64::from(range.count));
            if start < hi && lo < start + count {
                out.push(RangeConflict::OverlapsSubordinate {
                    start: base,
                    count: range.count,
                    name: name.to_string(),
                    sub_start: start,
                    sub_count: count,
                    file,
                });
            }
        }
    }
    out
}

/// Parses `START:COUNT` for `--userns-range` (the same for uids and gids).
pub fn parse_id_range(s: &str) -> Result<IdRange, String> {
    let (start, count) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected START:COUNT, e.g. 1879048192:65536"))?;
    let start: u32 = start
        .parse()
        .map_err(|_| format!("{start:?} is not a uid"))?;
    let count: u32 = count
        .parse()
        .map_err(|_| format!("{count:?} is not a count"))?;
    if count == 0 || start == 0 || start.checked_add(count).is_none() {
        return Err(format!(
            "{s:?}: the range must be non-empty, above 0 and below 2^32"
        ));
    }
    Ok(IdRange {
        uid: start,
        gid: start,
        count,
    })
}

/// The directories jobs read from: the data dir, the image cache and the tools dir (uv).
pub fn reachable_dirs(args: &ServeArgs) -> Vec<PathBuf> {
    vec![args.data_dir(), args.image_cache(), args.tools_dir()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> IdFiles {
        IdFiles {
            passwd: "root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nodd:x:200000:5::/:/bin/sh\n".into(),
            group: "root:x:0:\nalice:x:1000:\n".into(),
            subuid: "alice:100000:65536\n".into(),
            subgid: "alice:100000:65536\n".into(),
        }
    }

    fn check(range: &str, conflicts: usize) {
        let range = parse_id_range(range).unwrap();
        let found = range_conflicts(&range, &files());
        assert_eq!(found.len(), conflicts, "{range:?}: {found:?}");
    }

    use ci_runner::probe::{Cgroups, Slirp4netns};

    fn args(extra: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = ["ci-server"].iter().chain(extra).copied();
        <Cli as clap::Parser>::parse_from(argv).serve
    }

    fn caps(root: bool) -> Capabilities {
        let ok = |s: &str| Ok(s.to_owned());
        Capabilities {
            euid: if root { 0 } else { 1000 },
            user: Some(if root { "root" } else { "alice" }.into()),
            user_namespaces: ok("yes"),
            cgroups: Cgroups {
                version: ok("v1"),
                mode: if root {
                    CgroupMode::Runtime
                } else {
                    CgroupMode::Delegated
                },
                parent: if root { "/ci" } else { "/ci-alice" }.into(),
                controllers: ["cpu", "memory", "pids", "devices"]
                    .iter()
                    .map(|c| ((*c).to_owned(), ok("delegated")))
                    .collect(),
            },
            seccomp: ok("yes"),
            slirp4netns: Ok(Slirp4netns {
                path: "/usr/bin/slirp4netns".into(),
                version: "slirp4netns version 1.2.0".into(),
            }),
        }
    }

    fn problems(args: &ServeArgs, caps: &Capabilities) -> String {
        let problems = plan(args, caps, &[]).unwrap_err();
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn root_gets_a_range_libcontainer_limits_and_slirp() {
        let s = plan(&args(&[]), &caps(true), &[]).unwrap();
        assert_eq!(s.user_namespace, UserNamespace::ROOTFUL_DEFAULT);
        assert_eq!(s.cgroups, CgroupMode::Runtime);
        assert_eq!(s.cgroup_parent, "/ci");
        assert_eq!(s.install_network, Network::Slirp);
        assert_eq!(s.memory_limit, Some(2 << 30));
        let s = plan(
            &args(&["--userns-range", "3000000000:1000"]),
            &caps(true),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.user_namespace.host_ids(),
            IdRange {
                uid: 3_000_000_000,
                gid: 3_000_000_000,
                count: 1000
            }
        );
    }

    #[test]
    fn unenforceable_limits_refuse_unless_allowed() {
        let mut c = caps(true);
        c.cgroups.controllers[1].1 = Err("not mounted".into());
        assert!(problems(&args(&[]), &c).contains("--memory-limit cannot be enforced"));
        let s = plan(&args(&["--allow-unlimited"]), &c, &[]).unwrap();
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.pids_limit, Some(512));
        assert!(
            matches!(
                s.warnings[..],
                [Warning::Unlimited {
                    flag: "--memory-limit",
                    ..
                }]
            ),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn normal_user_needs_delegated_cgroups_and_no_range() {
        let s = plan(&args(&["--install-network", "host"]), &caps(false), &[]).unwrap();
        assert_eq!(s.user_namespace, UserNamespace::Caller);
        assert_eq!(s.cgroups, CgroupMode::Delegated);
        assert_eq!(s.cgroup_parent, "/ci-alice");
        let mut c = caps(false);
        c.cgroups.controllers[3].1 = Err("missing".into());
        let p = problems(
            &args(&["--install-network", "host", "--allow-unlimited"]),
            &c,
        );
        assert!(p.contains("scripts/delegate-cgroups alice"), "{p}");
        let p = problems(
            &args(&["--install-network", "host", "--userns-range", "100000:10"]),
            &caps(false),
        );
        assert!(p.contains("--userns-range needs root"), "{p}");
    }

    #[test]
    fn missing_slirp4netns_names_the_fallback() {
        let mut c = caps(true);
        c.slirp4netns = Err("slirp4netns not found".into());
        assert!(problems(&args(&[]), &c).contains("--install-network host"));
        let s = plan(&args(&["--install-network", "host"]), &c, &[]).unwrap();
        assert_eq!(s.install_network, Network::Host);
        assert_eq!(s.warnings, [Warning::HostNetwork]);
        assert!(s.warnings[0].to_string().contains("host's network"));
    }

    #[test]
    fn unreachable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        // Owned by whoever runs the test, not by the jobs' range.
        let data = private.join("data");
        let p = plan(&args(&[]), &caps(true), &[&data]).unwrap_err();
        assert!(
            matches!(&p[..], [Problem::Unreachable { dir, .. }] if *dir == data),
            "{p:?}"
        );
        assert!(p[0].to_string().starts_with("jobs cannot reach"), "{p:?}");
    }

    #[test]
    fn ranges() {
        check("1879048192:65536", 0);
        // alice's subuids and subgids.
        check("100000:65536", 2);
        check("165535:10", 2);
        check("165536:10", 0);
        // A user's own uid (and its group's gid).
        check("1000:1", 2);
        check("199999:2", 1);
        assert!(parse_id_range("0:65536").is_err());
        assert!(parse_id_range("100000").is_err());
        assert!(parse_id_range("4294967295:2").is_err());
        assert!(parse_id_range("5:0").is_err());
    }
}
