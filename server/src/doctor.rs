//! `ci-server doctor`: what this machine offers for isolating jobs, as a table, and whether
//! `ci-server serve` with the same flags would start. Contacts nothing but a registry on
//! loopback.

use std::fmt::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use ci_runner::probe::Capabilities;
use ci_runner::UserNamespace;

use crate::config::{InstallNetwork, InstallerArg, ServeArgs};
use crate::sandbox;

/// One line of the table.
struct Row {
    check: String,
    status: &'static str,
    detail: String,
}

fn row(check: &str, finding: &Result<String, String>) -> Row {
    match finding {
        Ok(detail) => Row {
            check: check.into(),
            status: "ok",
            detail: detail.clone(),
        },
        Err(detail) => Row {
            check: check.into(),
            status: "MISSING",
            detail: detail.clone(),
        },
    }
}

/// Prints the report; returns true when `serve` with `args` would start.
pub fn run(args: &ServeArgs) -> bool {
    let caps = ci_runner::probe::capabilities();
    let (database, db_ok) = match &args.database_url {
        Some(url) => database_rows(url, args.database_ca.as_deref()),
        None => (Vec::new(), true),
    };
    let (text, ok) = report(args, &caps, can_listen(args.listen), database);
    print!("{text}");
    ok && db_ok
}

/// The cluster's database: reachable, its version, and the nodes it has seen. Blocking (a
/// runtime of its own: `doctor` runs on the blocking pool).
fn database_rows(url: &str, ca: Option<&Path>) -> (Vec<Row>, bool) {
    let failed = |detail: String| {
        let row = Row {
            check: "database".into(),
            status: "FAIL",
            detail,
        };
        (vec![row], false)
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return failed(e.to_string()),
    };
    runtime.block_on(async {
        use crate::store::SharedQueue;
        let pg = match crate::pg::Pg::connect_with(url, ca).await {
            Ok(pg) => pg,
            Err(e) => return failed(e.to_string()),
        };
        let version = pg.server_version().await.unwrap_or_else(|e| e.to_string());
        let mut rows = vec![Row {
            check: "database".into(),
            status: "ok",
            detail: format!(
                "{} (PostgreSQL {version})",
                crate::pg::redacted(pg.config())
            ),
        }];
        match pg.nodes().await {
            Ok(nodes) if nodes.is_empty() => rows.push(Row {
                check: "  nodes".into(),
                status: "info",
                detail: "none yet".into(),
            }),
            Ok(nodes) => {
                for n in nodes {
                    rows.push(Row {
                        check: format!("  node {}", n.name),
                        status: "info",
                        detail: format!(
                            "{} (version {}), last seen {:.0}s ago",
                            if n.roles.is_empty() { "?" } else { &n.roles },
                            n.version,
                            n.seen_secs_ago
                        ),
                    });
                }
            }
            Err(e) => rows.push(Row {
                check: "  nodes".into(),
                status: "FAIL",
                detail: e.to_string(),
            }),
        }
        (rows, true)
    })
}

/// Whether `serve` could listen on `addr` now: bound and let go at once.
pub fn can_listen(addr: std::net::SocketAddr) -> Result<(), String> {
    // std sets SO_REUSEADDR as `serve` does, so a port held only by closing connections
    // (TIME_WAIT) counts as free, as it is for `serve`.
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {addr}: the port is taken (another process listens on it)"
        )),
        Err(e) => Err(format!("cannot listen on {addr}: {e}")),
    }
}

/// The report's text and whether `serve` would start; `database` are the rows of
/// [`database_rows`], empty without --database-url.
fn report(
    args: &ServeArgs,
    caps: &Capabilities,
    listen: Result<(), String>,
    database: Vec<Row>,
) -> (String, bool) {
    let mut rows = vec![Row {
        check: "server user".into(),
        status: if caps.is_root() { "root" } else { "user" },
        detail: format!(
            "uid {} ({})",
            caps.euid,
            caps.user.as_deref().unwrap_or("no name")
        ),
    }];
    rows.push(Row {
        check: "listen".into(),
        status: if listen.is_ok() { "ok" } else { "FAIL" },
        detail: match &listen {
            Ok(()) => format!("{} is free", args.listen),
            Err(e) => e.clone(),
        },
    });
    rows.push(connections_row(args));
    rows.push(row("user namespaces", &caps.user_namespaces));
    let userns = if caps.is_root() {
        UserNamespace::Range(
            args.userns_range
                .unwrap_or(UserNamespace::ROOTFUL_DEFAULT.host_ids()),
        )
    } else {
        UserNamespace::Caller
    };
    let ids = userns.host_ids();
    rows.push(Row {
        check: "jobs run as".into(),
        status: "info",
        detail: match userns {
            UserNamespace::Range(r) => format!(
                "container ids 0-{} = host ids {}-{}",
                r.count - 1,
                r.uid,
                u64::from(r.uid) + u64::from(r.count) - 1
            ),
            UserNamespace::Caller => format!("container root = uid {} (this user)", ids.uid),
        },
    });

    let cg = &caps.cgroups;
    rows.push(row(
        "cgroups",
        &cg.version
            .as_ref()
            .map(|v| {
                format!(
                    "{v}; containers under {}, limits written by {}",
                    cg.parent,
                    match cg.mode {
                        ci_runner::CgroupMode::Runtime => "libcontainer",
                        ci_runner::CgroupMode::Delegated => "the helper (delegated subtree)",
                    }
                )
            })
            .map_err(Clone::clone),
    ));
    for (name, finding) in &cg.controllers {
        rows.push(row(&format!("  {name}"), finding));
    }
    rows.push(row("seccomp", &caps.seccomp));
    rows.push(row(
        "slirp4netns",
        &caps
            .slirp4netns
            .as_ref()
            .map(|s| format!("{} ({})", s.path.display(), s.version))
            .map_err(Clone::clone),
    ));
    if !caps.is_root() {
        rows.push(row(
            "  /dev/net/tun",
            &sandbox::tun_usable().map(|()| "usable by this user".into()),
        ));
    }
    rows.push(Row {
        check: "install network".into(),
        status: "info",
        detail: match args.install_network {
            InstallNetwork::Slirp => "slirp (own namespace, NAT, no host services)".into(),
            InstallNetwork::Host => "host (pip shares this machine's network)".into(),
        },
    });
    rows.push(row(
        "CA bundle",
        &args
            .ca_bundle()
            .map(|p| p.display().to_string())
            .ok_or_else(|| "none found: pip uses the image's certificates".to_string()),
    ));
    let data = args.data_dir();
    rows.push(row("data dir", &dir_finding(&data, &userns, true)));
    rows.push(row(
        "image cache",
        &dir_finding(&args.image_cache(), &userns, false),
    ));
    rows.push(installer_row(args));
    rows.push(row(
        "tools dir",
        &dir_finding(&args.tools_dir(), &userns, false),
    ));
    match args.image_sources() {
        Ok(sources) => rows.extend(sources.iter().map(image_row)),
        Err(e) => rows.push(Row {
            check: "images".into(),
            status: "MISSING",
            detail: e.to_string(),
        }),
    }

    rows.extend(database);

    let dirs = sandbox::reachable_dirs(args);
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let verdict = match (sandbox::plan(args, caps, &dirs), listen) {
        (verdict, Ok(())) => {
            verdict.map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
        }
        (Ok(_), Err(e)) => Err(vec![e]),
        (Err(problems), Err(e)) => Err(std::iter::once(e)
            .chain(problems.iter().map(ToString::to_string))
            .collect()),
    };

    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in &rows {
        let _ = writeln!(out, "{:width$}  {:7}  {}", r.check, r.status, r.detail);
    }
    out.push('\n');
    let ok = match &verdict {
        Ok(s) => {
            let _ = writeln!(out, "`ci-server serve` with these flags would start.");
            for w in &s.warnings {
                let _ = writeln!(out, "  warning: {w}");
            }
            true
        }
        Err(problems) => {
            let _ = writeln!(
                out,
                "`ci-server serve` with these flags would refuse to start:"
            );
            for p in problems {
                let _ = writeln!(out, "  - {p}");
            }
            false
        }
    };
    (out, ok)
}

/// The open-file limit `serve` raises itself to and the connection caps that follow from it.
fn connections_row(args: &ServeArgs) -> Row {
    let (soft, hard) = crate::listener::current_fd_limit();
    let target = crate::listener::fd_target(soft, hard);
    let limits = crate::listener::ConnLimits::new(args, target);
    let raised = if target > soft {
        format!("{soft}, raised to {target} by serve")
    } else {
        target.to_string()
    };
    Row {
        check: "connections".into(),
        status: "info",
        detail: format!(
            "open files {raised}: at most {} connections, {} per address without an API key",
            limits.max_connections, limits.max_unauthenticated_per_ip
        ),
    }
}

/// Free space, and whether the jobs' user can reach the directory.
fn dir_finding(dir: &Path, userns: &UserNamespace, free: bool) -> Result<String, String> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    sandbox::check_reachable_or_ancestor(dir, userns)?;
    let mut detail = dir.display().to_string();
    if existing != dir {
        detail.push_str(" (not created yet)");
    }
    if free {
        match nix::sys::statvfs::statvfs(existing) {
            Ok(st) => {
                let bytes = st.blocks_available() * st.fragment_size();
                let _ = write!(
                    detail,
                    ", {:.1} GiB free",
                    bytes as f64 / f64::from(1 << 30)
                );
            }
            Err(e) => {
                let _ = write!(detail, ", free space unknown ({e})");
            }
        }
    }
    let _ = write!(detail, ", reachable by host uid {}", userns.host_ids().uid);
    Ok(detail)
}

/// Who installs dependencies, and whether uv is already on disk (nothing is fetched here).
fn installer_row(args: &ServeArgs) -> Row {
    let detail = match (args.installer, &args.uv) {
        (InstallerArg::Pip, _) => "pip (the image's own)".to_string(),
        (InstallerArg::Uv, Some(path)) => format!("uv at {}", path.display()),
        (InstallerArg::Uv, None) => match crate::tools::WheelPin::for_this_host() {
            Err(e) => format!("pip: no uv for this machine (failed to {e})"),
            Ok(pin) => {
                let dir = args.tools_dir().join(crate::tools::cached_dir_name(&pin));
                if dir.join("uv").is_file() {
                    format!(
                        "uv {} (cached in {})",
                        crate::tools::UV_VERSION,
                        dir.display()
                    )
                } else {
                    format!(
                        "uv {}, fetched from {} on first use (sha256 pinned)",
                        crate::tools::UV_VERSION,
                        args.uv_index_url
                    )
                }
            }
        },
    };
    Row {
        check: "installer".into(),
        status: "ok",
        detail,
    }
}

/// Connects to the image's registry only when it is on loopback; anything else would be
/// traffic leaving the machine.
/// A registry image: its registry, when on loopback; an image file: that it can be read.
fn image_row(source: &ci_rootfs::ImageSource) -> Row {
    let path = match source {
        ci_rootfs::ImageSource::Registry(reference) => return registry_row(&reference.to_string()),
        ci_rootfs::ImageSource::OciArchive { path, .. }
        | ci_rootfs::ImageSource::DockerArchive { path, .. } => path.clone(),
        ci_rootfs::ImageSource::OciLayout { dir, .. } => dir.join("index.json"),
    };
    let (status, detail) = match std::fs::File::open(&path) {
        Ok(_) => ("ok", format!("{source}: readable")),
        Err(e) => (
            "MISSING",
            format!("{source}: cannot read {}: {e}", path.display()),
        ),
    };
    Row {
        check: "image file".into(),
        status,
        detail,
    }
}

fn registry_row(image: &str) -> Row {
    let reference: ci_rootfs::ImageRef = match image.parse() {
        Ok(r) => r,
        Err(e) => {
            return Row {
                check: "registry".into(),
                status: "MISSING",
                detail: format!("invalid --image {image:?}: {e}"),
            }
        }
    };
    if !reference.is_loopback() {
        return Row {
            check: "registry".into(),
            status: "skipped",
            detail: format!("{} is not on loopback: not contacted", reference.registry),
        };
    }
    let target = if reference
        .registry
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        reference.registry.clone()
    } else {
        format!("{}:80", reference.registry)
    };
    let reached = target
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addrs| {
            let addr = addrs.next().ok_or("no address")?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())
        });
    row(
        "registry",
        &reached
            .map(|_| format!("{} accepts connections", reference.registry))
            .map_err(|e| format!("{}: {e}", reference.registry)),
    )
}
