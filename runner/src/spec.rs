//! What a job's container looks like ([`ContainerSpec`]) and its translation into an OCI
//! runtime bundle (`config.json`) that libcontainer runs.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::seccomp;

/// The `PATH` given to the container when the spec's env has none: libcontainer refuses
/// to start a process without one (its executor looks `args[0]` up in it).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Hostname inside every container (UTS namespace); `/etc/hosts` resolves it to loopback.
pub const HOSTNAME: &str = "ci";

/// Name of the generated hosts file inside the bundle directory.
pub const HOSTS_FILE: &str = "hosts";

/// Contents of the container's `/etc/hosts`. Slim images ship none and glibc does not
/// special-case `localhost`, so without it `localhost` would not resolve in tests.
const HOSTS_CONTENT: &str = "127.0.0.1\tlocalhost ci\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The host file bound read-only at `/etc/resolv.conf` in [`Network::Host`] containers.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Name of the generated resolv.conf inside the bundle directory ([`Network::Slirp`]).
pub const RESOLV_CONF_FILE: &str = "resolv.conf";

/// slirp4netns's DNS forwarder (10.0.2.3 in its default 10.0.2.0/24 network): it relays
/// queries to the host's resolvers from the host's network namespace.
const SLIRP_RESOLV_CONTENT: &str = "nameserver 10.0.2.3\noptions edns0\n";

/// Annotation in `config.json` carrying what the helper must do around libcontainer
/// ([`HelperPlan`]): OCI annotations are the spec's place for runtime-specific data.
pub(crate) const HELPER_ANNOTATION: &str = "org.ci-runner.helper";

/// Longest accepted container id; it becomes a directory name and a cgroup name.
const MAX_ID_LEN: usize = 100;

/// Everything needed to run one container; serialisable so the server can hand it to the
/// helper process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    /// Unique id, e.g. `ci-<job>-install`: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 100 bytes.
    pub id: String,
    /// Shared, cached, unpacked image. Mounted read-only and never written by a container;
    /// its mount points must exist first (see [`ensure_mountpoints`]).
    pub rootfs: PathBuf,
    /// The command; `args[0]` is looked up in the env's `PATH`.
    pub args: Vec<String>,
    /// `KEY=value` entries. [`DEFAULT_PATH`] is added when there is no `PATH`.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub mounts: Vec<BindMount>,
    pub network: Network,
    pub limits: Limits,
    pub tmpfs: Vec<Tmpfs>,
    /// Overlay filesystems, e.g. a job's virtual environment at `/venv` over a shared,
    /// cached one (see [`OverlayMount`]). Absent from the JSON of older callers: none.
    #[serde(default)]
    pub overlays: Vec<OverlayMount>,
    /// Absolute cgroup path under which the container's cgroup `<cgroup_parent>/<id>` is
    /// created in every hierarchy, e.g. `/ci`.
    pub cgroup_parent: String,
    /// The user namespace: which host ids the container's ids map to. `None` runs the
    /// container as the host's root (no user namespace), which the server never does.
    #[serde(default)]
    pub user_namespace: Option<UserNamespace>,
    /// Who writes the limits into the cgroups.
    #[serde(default)]
    pub cgroups: CgroupMode,
    /// The largest file any process of the container may write (`RLIMIT_FSIZE`, soft and
    /// hard). A write past it fails with `EFBIG`, after `SIGXFSZ` (which kills a process
    /// that does not ignore it; Python ignores it). Kept to the calling process's own hard
    /// limit, which an unprivileged root cannot raise. `None`: the caller's limits.
    #[serde(default)]
    pub max_file_size: Option<u64>,
}

/// The user namespace a container runs in: its root is never the host's root.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserNamespace {
    /// For a helper run by root: container ids `0..count` are host ids `uid..uid + count`
    /// (`gid..` for groups). libcontainer creates the namespace and writes the one line of
    /// `uid_map`/`gid_map` itself: no `newuidmap` for a single line, however long its
    /// range (user_namespaces(7)).
    Range(IdRange),
    /// For a helper run by a normal user, who may map only its own ids: the helper first
    /// enters a user namespace of its own mapping its uid and gid to 0 and re-executes
    /// itself there (what `unshare --map-root-user` does), so libcontainer runs as that
    /// namespace's root and the container shares it. The container's root is the user.
    ///
    /// Why not a namespace of the container's own: libcontainer makes the container's
    /// init non-dumpable, and then only a process with CAP_SYS_PTRACE in the user
    /// namespace of init's memory (the helper's, at exec time) may open its
    /// /proc/PID/ns files, which the helper needs to set up the network namespace.
    Caller,
}

/// Host ids: `count` uids from `uid`, `count` gids from `gid`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl UserNamespace {
    /// The range for containers of a server run by root: 65536 ids from 1879048192
    /// (0x70000000). Outside what `useradd` hands out as subordinate ids (login.defs:
    /// SUB_UID_MIN 100000 to SUB_UID_MAX 600100000), so no user's own rootless containers
    /// share these ids, and in the block systemd leaves unused (its nspawn ranges end at
    /// 1879048191); below 2^31 for tools that keep ids in signed integers.
    pub const ROOTFUL_DEFAULT: UserNamespace = UserNamespace::Range(IdRange {
        uid: 1_879_048_192,
        gid: 1_879_048_192,
        count: 65536,
    });

    /// The host ids behind the container's ids 0.. (for [`UserNamespace::Caller`], the
    /// calling process's effective ids).
    pub fn host_ids(&self) -> IdRange {
        match *self {
            UserNamespace::Range(range) => range,
            UserNamespace::Caller => IdRange {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                count: 1,
            },
        }
    }

    /// Whether container group `gid` exists (is mapped) in this namespace.
    pub fn maps_gid(&self, gid: u32) -> bool {
        match self {
            UserNamespace::Range(range) => gid < range.count,
            UserNamespace::Caller => gid == 0,
        }
    }
}

/// How a container's limits reach its cgroups.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupMode {
    /// libcontainer creates the cgroups and writes the limits (and the device rules).
    /// Needs root.
    #[default]
    Runtime,
    /// For a normal user on cgroup v1: `cgroup_parent` is a subtree that root delegated
    /// once (`scripts/delegate-cgroups`). The helper creates the container's cgroups in
    /// it and writes the limits before libcontainer runs, and libcontainer only moves
    /// the container in (`linux.resources` is left out: its default device rules need
    /// root).
    Delegated,
}

/// What the helper does around libcontainer for this container, read from the bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub(crate) struct HelperPlan {
    /// Enter a user namespace of the helper's own first ([`UserNamespace::Caller`]).
    #[serde(default)]
    pub enter_userns: bool,
    /// Attach slirp4netns to the container's network namespace before start.
    #[serde(default)]
    pub slirp: bool,
    /// Create the cgroups and write these limits before build ([`CgroupMode::Delegated`]).
    #[serde(default)]
    pub delegated_limits: Option<Limits>,
}

impl HelperPlan {
    pub(crate) fn of(spec: &Spec) -> Result<Self, Error> {
        let Some(json) = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(HELPER_ANNOTATION))
        else {
            return Ok(HelperPlan::default());
        };
        serde_json::from_str(json)
            .map_err(|e| Error::InvalidSpec(format!("annotation {HELPER_ANNOTATION}: {e}")))
    }
}

/// A host path made visible in the container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BindMount {
    /// Absolute host path, a directory or a file.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    /// Read-only for the whole subtree (`rro`), not only the top mount.
    pub readonly: bool,
}

/// An overlay filesystem (overlayfs) at `destination`: the union of `lower` (read-only)
/// and, when given, a writable `upper` layer.
///
/// Why: a cached virtual environment is shared by every job that needs it and must never
/// be written, yet a job's install step may add, change and remove files in it. Mounted
/// as the lower layer, the cache stays untouched; what the job changes lands in its own
/// upper directory (copy-up, whiteouts for deletions, opaque markers for directories
/// replaced wholesale). The next container can stack that upper directory on the cache as
/// another lower layer and see the same tree read-only, e.g. install then tests:
/// `lower: [cache], upper: Some(job)` then `lower: [job.upper, cache], upper: None`.
///
/// What the caller must ensure (the runner cannot check it from the spec alone):
/// - every layer is readable by the container's root (like a bind source: the mount is
///   made from inside the user namespace with its credentials, see
///   [`check_reachable`](crate::check_reachable));
/// - `upper` and `work` exist, are on the same filesystem, `work` is empty, and both
///   belong to the container's root ([`give_to_container`](crate::give_to_container)):
///   overlayfs writes them with the credentials of whoever mounted it, here that root;
/// - what a job may change in a lower layer is owned by ids mapped in the container (a
///   cache written by an earlier container of the same id range is): an unmapped owner
///   shows as `nobody`, over whose files the container's root has no capabilities
///   (writing one fails with EACCES, chmod with EPERM);
/// - no layer changes while a container has it mounted (overlayfs leaves that
///   undefined), and an upper directory is used by one container at a time.
///
/// In a user namespace (always, for the server) overlayfs keeps its opaque directories'
/// markers in `user.overlay.*` xattrs (mount option `userxattr`; `trusted.*` needs the
/// host's CAP_SYS_ADMIN); whiteouts are 0/0 character devices either way. A layer
/// written that way must be read the same way: do not share layers between specs with
/// and without a user namespace. `userxattr` also means `redirect_dir=nofollow`:
/// rename(2) of a directory that comes from a lower layer fails with EXDEV, and `mv` or
/// Python's `shutil.move` copy it instead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OverlayMount {
    /// Absolute path inside the container.
    pub destination: String,
    /// Absolute host directories, topmost first. At least one with an upper layer; at
    /// least two without one (the kernel refuses a lone read-only lower layer: bind it
    /// read-only instead, unless it holds whiteouts).
    pub lower: Vec<PathBuf>,
    /// The writable layer; `None` makes the overlay read-only.
    pub upper: Option<OverlayUpper>,
}

/// The writable layer of an [`OverlayMount`]: absolute host directories on one
/// filesystem, both owned by the container's root; `work` is overlayfs's scratch space
/// and must start empty.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OverlayUpper {
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Which network namespace the container gets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace: everything the host reaches, including services on
    /// its loopback. Only a fallback where slirp4netns is missing.
    Host,
    /// A namespace of its own holding only `lo`, brought up so tests can use localhost.
    None,
    /// A namespace of its own with `lo` and `tap0`, NATed to the outside by slirp4netns in
    /// user mode (install phase: pip must reach the index). The host's loopback is
    /// refused by slirp4netns, the host's own addresses and link-local 169.254.0.0/16
    /// get unreachable routes, DNS goes through slirp4netns's forwarder.
    Slirp,
}

impl Network {
    /// The container gets a network namespace of its own.
    pub fn own_namespace(self) -> bool {
        self != Network::Host
    }
}

/// Resource limits, enforced through cgroups (see [`CgroupMode`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory limit; memory+swap gets the same value, so the container cannot swap.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads) in the container.
    pub pids: Option<i64>,
    /// CPU time allowed per period (CFS quota).
    pub cpu_quota_us: Option<i64>,
    /// CFS period; 100 ms when a quota is set without one.
    pub cpu_period_us: Option<u64>,
}

/// A size-limited tmpfs, e.g. `/tmp` and `$HOME`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tmpfs {
    pub destination: String,
    pub size_bytes: u64,
}

/// Checks what libcontainer or the kernel would otherwise reject late and obscurely, and
/// what would let a spec reach outside its container (relative or `..` paths).
pub fn validate(spec: &ContainerSpec) -> Result<(), Error> {
    validate_id(&spec.id)?;
    let invalid = |msg: String| Err(Error::InvalidSpec(msg));
    if !spec.rootfs.is_absolute() {
        return invalid(format!("rootfs {} is not absolute", spec.rootfs.display()));
    }
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return invalid("args is empty".into());
    }
    if let Some(bad) = spec
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return invalid(format!("env entry {bad:?} is not KEY=value"));
    }
    check_container_path("cwd", &spec.cwd)?;
    check_container_path("cgroup_parent", &spec.cgroup_parent)?;

    let mut destinations = HashSet::new();
    for dest in spec
        .mounts
        .iter()
        .map(|m| &m.destination)
        .chain(spec.tmpfs.iter().map(|t| &t.destination))
        .chain(spec.overlays.iter().map(|o| &o.destination))
    {
        check_container_path("mount destination", dest)?;
        let normalized = Path::new(dest).components().collect::<PathBuf>();
        let resolv_conf =
            spec.network != Network::None && normalized == Path::new(HOST_RESOLV_CONF);
        if normalized == Path::new("/")
            || resolv_conf
            || RESERVED.iter().any(|r| normalized.starts_with(r))
        {
            return invalid(format!("mount destination {dest} is reserved"));
        }
        if !destinations.insert(normalized) {
            return invalid(format!("mount destination {dest} is used twice"));
        }
    }
    if let Some(m) = spec.mounts.iter().find(|m| !m.source.is_absolute()) {
        return invalid(format!(
            "bind source {} is not absolute",
            m.source.display()
        ));
    }
    if let Some(t) = spec.tmpfs.iter().find(|t| t.size_bytes == 0) {
        return invalid(format!("tmpfs {} has size 0", t.destination));
    }
    for overlay in &spec.overlays {
        check_overlay(overlay)?;
    }
    let limits = &spec.limits;
    if limits.memory_bytes == Some(0)
        || limits.pids.is_some_and(|p| p <= 0)
        || limits.cpu_quota_us.is_some_and(|q| q <= 0)
        || limits.cpu_period_us == Some(0)
        || limits
            .memory_bytes
            .is_some_and(|m| i64::try_from(m).is_err())
    {
        return invalid(format!("limits {limits:?} out of range"));
    }
    if let Some(UserNamespace::Range(r)) = spec.user_namespace {
        let fits = |base: u32| base.checked_add(r.count).is_some();
        if r.count == 0 || !fits(r.uid) || !fits(r.gid) {
            return invalid(format!("user namespace {r:?} out of range"));
        }
    }
    if spec.max_file_size == Some(0) {
        return invalid("max_file_size is 0".into());
    }
    if spec.cgroups == CgroupMode::Delegated && spec.user_namespace.is_none() {
        return invalid("delegated cgroups need a user namespace".into());
    }
    Ok(())
}

/// Mounts this module sets up itself; a job's mount may not shadow them.
const RESERVED: &[&str] = &["/proc", "/dev", "/sys", "/etc/hosts"];

/// Container ids become a state directory name and a cgroup directory name: keep them to a
/// conservative alphabet (libcontainer's own check also allows `+`, and ids starting with
/// `.`, which would hide them from a directory listing).
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "container id {id:?} must match [A-Za-z0-9][A-Za-z0-9_.-]* and be at most {MAX_ID_LEN} bytes"
        )))
    }
}

fn check_container_path(what: &str, path: &str) -> Result<(), Error> {
    let p = Path::new(path);
    let clean = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "{what} {path:?} must be absolute without . or .. components"
        )))
    }
}

/// Characters that separate or escape overlayfs's options and layers (see [`check_overlay`]).
const OPTION_SEPARATORS: [char; 4] = [',', ':', '\\', '\n'];

/// Layer paths end up in overlayfs's options (`lowerdir=a:b`, `upperdir=..`), where `:`
/// separates lower layers, `\` escapes and `,` separates options in mount(2) data: any of
/// them, or a newline, in a path could smuggle in another layer or option.
fn check_overlay(o: &OverlayMount) -> Result<(), Error> {
    let dest = &o.destination;
    let invalid = |msg: String| Err(Error::InvalidSpec(msg));
    if o.lower.is_empty() {
        return invalid(format!("overlay {dest} has no lower layer"));
    }
    if o.upper.is_none() && o.lower.len() < 2 {
        return invalid(format!(
            "read-only overlay {dest} has one lower layer; overlayfs needs two without an upper layer"
        ));
    }
    let mut paths: Vec<(&str, &Path)> = o.lower.iter().map(|l| ("lower", l.as_path())).collect();
    if let Some(u) = &o.upper {
        paths.push(("upper", &u.upper));
        paths.push(("work", &u.work));
    }
    for (what, path) in paths {
        if !path.is_absolute() {
            return invalid(format!(
                "overlay {dest}: {what} {} is not absolute",
                path.display()
            ));
        }
        if path.to_str().is_none_or(|p| p.contains(OPTION_SEPARATORS)) {
            return invalid(format!(
                "overlay {dest}: {what} {path:?} must be UTF-8 without {OPTION_SEPARATORS:?}"
            ));
        }
    }
    if let Some(u) = &o.upper {
        if u.upper.starts_with(&u.work) || u.work.starts_with(&u.upper) {
            return invalid(format!(
                "overlay {dest}: upper {} and work {} must be separate directories",
                u.upper.display(),
                u.work.display()
            ));
        }
    }
    Ok(())
}

/// Writes the bundle: `config.json`, the `hosts` file it binds at `/etc/hosts` and, for
/// [`Network::Slirp`], the `resolv.conf` it binds at `/etc/resolv.conf`.
/// `bundle_dir` must exist. Touches nothing outside it.
pub fn prepare_bundle(bundle_dir: &Path, spec: &ContainerSpec) -> Result<(), Error> {
    validate(spec)?;
    // libcontainer resolves bind sources against the helper's cwd, and the helper chdirs
    // into the state dir during build: every path in config.json must be absolute.
    let bundle_dir = fs_err::canonicalize(bundle_dir).map_err(|source| Error::Read {
        path: bundle_dir.to_owned(),
        source,
    })?;
    let hosts = bundle_dir.join(HOSTS_FILE);
    fs_err::write(&hosts, HOSTS_CONTENT).map_err(|source| Error::Write {
        path: hosts.clone(),
        source,
    })?;
    if spec.network == Network::Slirp {
        let resolv = bundle_dir.join(RESOLV_CONF_FILE);
        fs_err::write(&resolv, SLIRP_RESOLV_CONTENT).map_err(|source| Error::Write {
            path: resolv.clone(),
            source,
        })?;
    }
    let oci = build_spec(spec, &hosts)?;
    let config = bundle_dir.join("config.json");
    let json = serde_json::to_vec_pretty(&oci).map_err(|source| Error::Encode {
        what: "config.json",
        source,
    })?;
    fs_err::write(&config, json).map_err(|source| Error::Write {
        path: config,
        source,
    })
}

/// Translates a [`ContainerSpec`] into the OCI runtime spec. Pure: `hosts_file` (bound at
/// `/etc/hosts`) is only referenced, not read or written; for [`Network::Slirp`] the
/// `resolv.conf` next to it is bound at `/etc/resolv.conf`.
pub fn build_spec(spec: &ContainerSpec, hosts_file: &Path) -> Result<Spec, Error> {
    validate(spec)?;
    let b = Error::BuildSpec;

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }

    // Roughly Docker's default set minus MKNOD, NET_RAW, AUDIT_WRITE and SETFCAP, which
    // neither pip nor test suites need. Root in the container keeps DAC_OVERRIDE etc. so
    // that tools expecting root behave, but without SYS_ADMIN it cannot mount, and the
    // rootfs and inputs are read-only mounts anyway.
    let caps: HashSet<Capability> = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fowner,
        Capability::Fsetid,
        Capability::Kill,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
    ]
    .into();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(b)?;

    let mut rlimits = vec![
        // Root here lacks CAP_SYS_RESOURCE, so a hard limit above the helper's own fails
        // with EPERM in setrlimit(2); 1024 is the kernel default and enough for pytest.
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1024u64)
            .hard(1024u64)
            .build()
            .map_err(b)?,
        // No core files: they would only fill the tmpfs (everything else is read-only).
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitCore)
            .soft(0u64)
            .hard(0u64)
            .build()
            .map_err(b)?,
    ];
    if let Some(bytes) = spec.max_file_size {
        let bytes = bytes.min(own_hard_file_size_limit());
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitFsize)
                .soft(bytes)
                .hard(bytes)
                .build()
                .map_err(b)?,
        );
    }

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(b)?,
        )
        .args(spec.args.clone())
        .env(env)
        .cwd(&spec.cwd)
        .no_new_privileges(true)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .build()
        .map_err(b)?;

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid)?,
        namespace(LinuxNamespaceType::Mount)?,
        namespace(LinuxNamespaceType::Ipc)?,
        namespace(LinuxNamespaceType::Uts)?,
        // Hides the host's cgroup paths from /proc/self/cgroup.
        namespace(LinuxNamespaceType::Cgroup)?,
    ];
    if spec.network.own_namespace() {
        namespaces.push(namespace(LinuxNamespaceType::Network)?);
    }

    let mut linux = LinuxBuilder::default();
    if let Some(UserNamespace::Range(range)) = spec.user_namespace {
        // libcontainer creates it first, so every other namespace is owned by it: root in
        // the container has capabilities over its own mounts and network, none over the
        // host's, and host files outside the range appear as nobody (65534).
        namespaces.push(namespace(LinuxNamespaceType::User)?);
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(range.count)
                .build()
                .map_err(b)
        };
        linux = linux
            .uid_mappings(vec![map(range.uid)?])
            .gid_mappings(vec![map(range.gid)?]);
    }
    let plan = HelperPlan {
        enter_userns: spec.user_namespace == Some(UserNamespace::Caller),
        slirp: spec.network == Network::Slirp,
        delegated_limits: (spec.cgroups == CgroupMode::Delegated).then(|| spec.limits.clone()),
    };
    if spec.cgroups == CgroupMode::Runtime {
        linux = linux.resources(resources(&spec.limits)?);
    }
    let mut linux = linux
        // Without it libcontainer uses the literal directory name ":youki:<id>" on v1.
        .cgroups_path(PathBuf::from(&spec.cgroup_parent).join(&spec.id))
        .namespaces(namespaces)
        .masked_paths(strings(MASKED_PATHS))
        .readonly_paths(strings(READONLY_PATHS))
        .seccomp(seccomp::profile()?)
        .build()
        .map_err(b)?;
    if spec.cgroups == CgroupMode::Delegated {
        // The builder starts from Linux::default(), whose resources hold an empty device
        // list, which libcontainer would still turn into device rules it may not write.
        linux.set_resources(None);
    }
    let mut annotations = std::collections::HashMap::new();
    if plan != HelperPlan::default() {
        let json = serde_json::to_string(&plan).map_err(|source| Error::Encode {
            what: "the helper plan",
            source,
        })?;
        annotations.insert(HELPER_ANNOTATION.to_owned(), json);
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&spec.rootfs)
                .readonly(true)
                .build()
                .map_err(b)?,
        )
        .hostname(HOSTNAME)
        .process(process)
        .mounts(mounts(spec, hosts_file)?)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(b)
}

/// This process's hard `RLIMIT_FSIZE`, which the container inherits through the helper and
/// whose root (without CAP_SYS_RESOURCE in the initial user namespace) cannot raise.
fn own_hard_file_size_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)
        .map_or(u64::MAX, |(_, hard)| hard)
}

/// runc's default masked paths: kernel interfaces that leak host information or allow
/// side channels. Masking mounts /dev/null over files and an empty read-only tmpfs over
/// directories.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths: writable /proc files that change the host kernel.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn namespace(typ: LinuxNamespaceType) -> Result<LinuxNamespace, Error> {
    LinuxNamespaceBuilder::default()
        .typ(typ)
        .build()
        .map_err(Error::BuildSpec)
}

/// `resources` is always set (rootful): libcontainer then also writes the default device
/// allow-list (null, zero, full, random, urandom, tty, ptmx) into the devices cgroup.
fn resources(limits: &Limits) -> Result<oci_spec::runtime::LinuxResources, Error> {
    let b = Error::BuildSpec;
    let mut r = LinuxResourcesBuilder::default().devices(vec![]);
    if let Some(bytes) = limits.memory_bytes {
        // Checked by validate(): fits in i64.
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // On v1 `swap` is memory+swap (memory.memsw.limit_in_bytes): equal means no swap.
        r = r.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()
                .map_err(b)?,
        );
    }
    if let Some(pids) = limits.pids {
        r = r.pids(LinuxPidsBuilder::default().limit(pids).build().map_err(b)?);
    }
    if let Some(quota) = limits.cpu_quota_us {
        r = r.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(limits.cpu_period_us.unwrap_or(100_000))
                .build()
                .map_err(b)?,
        );
    }
    r.build().map_err(b)
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount, Error> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(strings(options))
        .build()
        .map_err(Error::BuildSpec)
}

fn mounts(spec: &ContainerSpec, hosts_file: &Path) -> Result<Vec<Mount>, Error> {
    // devpts's gid=5 (tty) must exist in the user namespace; a normal user's namespace
    // maps only its own ids, and then the pty group is root's.
    let tty_gid = spec.user_namespace.is_none_or(|u| u.maps_gid(5));
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if tty_gid {
        devpts.push("gid=5");
    }
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount("/dev/pts", "devpts", Path::new("devpts"), &devpts)?,
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    match spec.network {
        // sysfs shows the network devices of the mounting process's netns, so the kernel
        // refuses a fresh sysfs mount to a process that does not own its netns (EPERM).
        // A plain (non-recursive) bind of the host's /sys is the closest equivalent: like
        // a fresh sysfs it carries none of the host's submounts (cgroupfs, debugfs,
        // tracefs, bpffs), which a recursive bind would expose read-only.
        Network::Host if spec.user_namespace.is_none() => mounts.push(mount(
            "/sys",
            "bind",
            Path::new("/sys"),
            &["bind", "ro", "nosuid", "noexec", "nodev"],
        )?),
        // From a user namespace the host's submounts of /sys are locked to it: a
        // non-recursive bind would uncover what they hide and fails with EINVAL. So all
        // of it, read-only throughout; the container's root is an unprivileged host uid,
        // which keeps root-only files (debugfs, tracefs) closed.
        Network::Host => mounts.push(mount(
            "/sys",
            "bind",
            Path::new("/sys"),
            &["rbind", "ro", "rro", "nosuid", "noexec", "nodev"],
        )?),
        Network::None | Network::Slirp => mounts.push(mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?),
    }
    for t in &spec.tmpfs {
        // Sticky and world-writable for temp dirs as on a normal host; other tmpfs (e.g.
        // HOME) belong to the container's root user.
        let mode = if matches!(t.destination.as_str(), "/tmp" | "/var/tmp") {
            "mode=1777"
        } else {
            "mode=755"
        };
        let size = format!("size={}", t.size_bytes);
        mounts.push(mount(
            &t.destination,
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "nodev", mode, &size],
        )?);
    }
    for m in &spec.mounts {
        mounts.push(bind(&m.source, &m.destination, m.readonly)?);
    }
    for o in &spec.overlays {
        mounts.push(overlay(o, spec.user_namespace.is_some())?);
    }
    mounts.push(bind(hosts_file, "/etc/hosts", true)?);
    match spec.network {
        // The rootfs is shared and read-only, so DNS config comes from the host at run
        // time rather than from whatever the image was built with.
        Network::Host => mounts.push(bind(Path::new(HOST_RESOLV_CONF), HOST_RESOLV_CONF, true)?),
        Network::Slirp => {
            let resolv = hosts_file.with_file_name(RESOLV_CONF_FILE);
            mounts.push(bind(&resolv, HOST_RESOLV_CONF, true)?);
        }
        Network::None => {}
    }
    Ok(mounts)
}

/// A recursive bind. `ro` alone would only make the top mount read-only; `rro` applies
/// MOUNT_ATTR_RDONLY to every submount too (mount_setattr(2) with AT_RECURSIVE).
fn bind(source: &Path, destination: &str, readonly: bool) -> Result<Mount, Error> {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    if readonly {
        options.extend(["ro", "rro"]);
    }
    mount(destination, "bind", source, &options)
}

/// The longest value fsconfig(2) accepts, its terminating NUL included (`strndup_user(value,
/// 256)` in fs/fsopen.c).
const FSCONFIG_VALUE_MAX: usize = 256;

/// An overlayfs mount. libcontainer 0.7 mounts it with the new mount API: the options it
/// knows as mount flags (`ro`, `nosuid`, `nodev`) are set on the mount with
/// mount_setattr(2); every other option goes to fsconfig(2), `key=value` as
/// FSCONFIG_SET_STRING and a bare word (`userxattr`) as FSCONFIG_SET_FLAG. Without an upper
/// layer overlayfs makes its superblock read-only itself; `ro` makes the mount read-only
/// too, so /proc/self/mountinfo says so.
fn overlay(o: &OverlayMount, userns: bool) -> Result<Mount, Error> {
    // validate() checked that every path is UTF-8 without separators.
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let lower: Vec<String> = o.lower.iter().map(|l| path(l)).collect();
    let joined = lower.join(":");
    // fsconfig(2) takes a value of at most 255 bytes: past that, one layer per option
    // (`lowerdir+`, Linux 6.8), where each path has that limit alone.
    let mut options = if joined.len() < FSCONFIG_VALUE_MAX {
        vec![format!("lowerdir={joined}")]
    } else {
        lower.iter().map(|l| format!("lowerdir+={l}")).collect()
    };
    if let Some(u) = &o.upper {
        options.push(format!("upperdir={}", path(&u.upper)));
        options.push(format!("workdir={}", path(&u.work)));
    }
    if userns {
        // Unprivileged overlayfs (mounted in a user namespace) cannot write trusted.*
        // xattrs; with `userxattr` it keeps its markers (opaque directories among them)
        // in user.overlay.* (Documentation/filesystems/overlayfs.rst).
        options.push("userxattr".into());
    }
    options.extend(["nosuid".into(), "nodev".into()]);
    if o.upper.is_none() {
        options.push("ro".into());
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    mount(&o.destination, "overlay", Path::new("overlay"), &options)
}

/// Creates, once, the mount points the spec needs in a shared rootfs: directories for
/// directory mounts and `cwd`, empty files for file binds, plus `/etc/hosts` and
/// `/etc/resolv.conf` so that one call covers both network modes. Idempotent.
///
/// Call it before the rootfs is shared: otherwise libcontainer creates missing mount
/// points itself, inside the shared tree, while several containers may be starting.
/// Paths are resolved with libpathrs inside `rootfs`, so symlinks in an image cannot
/// make this create anything outside it.
pub fn ensure_mountpoints(rootfs: &Path, spec: &ContainerSpec) -> Result<(), Error> {
    validate(spec)?;
    let root = pathrs::Root::open(rootfs).map_err(|source| Error::MountPoint {
        path: rootfs.to_owned(),
        source,
    })?;
    let mut dirs: Vec<&str> = vec!["/proc", "/dev", "/sys", &spec.cwd];
    dirs.extend(spec.tmpfs.iter().map(|t| t.destination.as_str()));
    dirs.extend(spec.overlays.iter().map(|o| o.destination.as_str()));
    let mut files: Vec<&str> = vec!["/etc/hosts", HOST_RESOLV_CONF];
    for m in &spec.mounts {
        if m.source.is_dir() {
            dirs.push(&m.destination);
        } else {
            files.push(&m.destination);
        }
    }
    for dir in dirs {
        mkdir_all(&root, Path::new(dir))?;
        open_mountpoint_to_all(&root, Path::new(dir))?;
    }
    for file in files {
        create_file(&root, Path::new(file))?;
    }
    Ok(())
}

fn mkdir_all(root: &pathrs::Root, dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    root.mkdir_all(dir, &std::fs::Permissions::from_mode(0o755))
        .map(drop)
        .map_err(|source| Error::MountPoint {
            path: dir.to_owned(),
            source,
        })
}

/// Lets anyone open the mount point `dir` (o+rx): libcontainer re-opens a mount point
/// with O_DIRECTORY from inside the user namespace, where an image's `/root` (0700, owned
/// by the host's root, so `nobody` there) would fail with EACCES. The directory is
/// covered by the mount in every container, so its own mode is never seen there.
fn open_mountpoint_to_all(root: &pathrs::Root, dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| Error::MountPoint {
        path: dir.to_owned(),
        source,
    };
    let file = root
        .resolve(dir)
        .and_then(|h| {
            h.reopen(pathrs::flags::OpenFlags::O_RDONLY | pathrs::flags::OpenFlags::O_DIRECTORY)
        })
        .map_err(err)?;
    let io_err = |source| Error::Write {
        path: dir.to_owned(),
        source,
    };
    let mode = file.metadata().map_err(io_err)?.permissions().mode();
    if mode & 0o005 != 0o005 {
        file.set_permissions(std::fs::Permissions::from_mode((mode | 0o005) & 0o7777))
            .map_err(io_err)?;
    }
    Ok(())
}

fn create_file(root: &pathrs::Root, file: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    // Anything already there (including a symlink that resolves inside the root) is
    // left alone: libcontainer resolves the same way when it mounts.
    if root.resolve(file).is_ok() {
        return Ok(());
    }
    if let Some(parent) = file.parent() {
        mkdir_all(root, parent)?;
    }
    root.create_file(
        file,
        pathrs::flags::OpenFlags::O_WRONLY | pathrs::flags::OpenFlags::O_NOFOLLOW,
        &std::fs::Permissions::from_mode(0o644),
    )
    .map(drop)
    .map_err(|source| Error::MountPoint {
        path: file.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use oci_spec::runtime::LinuxSeccompAction;

    use super::*;

    pub(crate) fn sample(network: Network) -> ContainerSpec {
        ContainerSpec {
            id: "ci-42-test".into(),
            rootfs: "/var/cache/ci/rootfs/abc".into(),
            args: vec!["python3".into(), "-m".into(), "pytest".into()],
            env: vec!["HOME=/root".into()],
            cwd: "/workspace".into(),
            mounts: vec![
                BindMount {
                    source: "/srv/ci/jobs/42/src".into(),
                    destination: "/workspace".into(),
                    readonly: true,
                },
                BindMount {
                    source: "/srv/ci/jobs/42/deps".into(),
                    destination: "/deps".into(),
                    readonly: false,
                },
            ],
            network,
            limits: Limits {
                memory_bytes: Some(512 << 20),
                pids: Some(256),
                cpu_quota_us: Some(150_000),
                cpu_period_us: None,
            },
            tmpfs: vec![
                Tmpfs {
                    destination: "/tmp".into(),
                    size_bytes: 64 << 20,
                },
                Tmpfs {
                    destination: "/root".into(),
                    size_bytes: 16 << 20,
                },
            ],
            overlays: vec![],
            cgroup_parent: "/ci".into(),
            user_namespace: None,
            cgroups: CgroupMode::Runtime,
            max_file_size: None,
        }
    }

    fn build(spec: &ContainerSpec) -> Spec {
        build_spec(spec, Path::new("/bundle/hosts")).expect("spec builds")
    }

    fn find_mount<'a>(oci: &'a Spec, dest: &str) -> &'a Mount {
        oci.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .unwrap_or_else(|| panic!("no mount at {dest}"))
    }

    fn options(m: &Mount) -> Vec<&str> {
        m.options()
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect()
    }

    fn namespace_types(oci: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = oci.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        namespaces.iter().map(|n| n.typ()).collect()
    }

    #[test]
    fn root_is_readonly() {
        let oci = build(&sample(Network::None));
        let root = oci.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/var/cache/ci/rootfs/abc"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(oci.hostname().as_deref(), Some(HOSTNAME));
    }

    #[test]
    fn readonly_binds_are_recursively_readonly() {
        let oci = build(&sample(Network::None));
        let ws = find_mount(&oci, "/workspace");
        assert_eq!(
            ws.source().as_deref(),
            Some(Path::new("/srv/ci/jobs/42/src"))
        );
        assert_eq!(options(ws), ["rbind", "nosuid", "nodev", "ro", "rro"]);
        let deps = find_mount(&oci, "/deps");
        assert_eq!(options(deps), ["rbind", "nosuid", "nodev"]);
        let hosts = find_mount(&oci, "/etc/hosts");
        assert_eq!(hosts.source().as_deref(), Some(Path::new("/bundle/hosts")));
        assert!(options(hosts).contains(&"rro"));
    }

    #[test]
    fn tmpfs_have_size_and_mode() {
        let oci = build(&sample(Network::None));
        let tmp = find_mount(&oci, "/tmp");
        assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
        assert_eq!(
            options(tmp),
            [
                "nosuid",
                "nodev",
                "mode=1777",
                &format!("size={}", 64 << 20)
            ]
        );
        assert!(options(find_mount(&oci, "/root")).contains(&"mode=755"));
    }

    #[test]
    fn network_none_gets_own_netns_and_sysfs() {
        let oci = build(&sample(Network::None));
        let types = namespace_types(&oci);
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
        ] {
            assert!(types.contains(&t), "missing {t:?}");
        }
        assert!(!types.contains(&LinuxNamespaceType::User));
        let sys = find_mount(&oci, "/sys");
        assert_eq!(sys.typ().as_deref(), Some("sysfs"));
        assert!(options(sys).contains(&"ro"));
        let has_resolv = oci
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/etc/resolv.conf"));
        assert!(!has_resolv);
    }

    #[test]
    fn network_host_shares_netns_and_binds_sys_and_resolv_conf() {
        let oci = build(&sample(Network::Host));
        assert!(!namespace_types(&oci).contains(&LinuxNamespaceType::Network));
        let sys = find_mount(&oci, "/sys");
        assert_eq!(sys.source().as_deref(), Some(Path::new("/sys")));
        assert_eq!(options(sys), ["bind", "ro", "nosuid", "noexec", "nodev"]);
        let resolv = find_mount(&oci, "/etc/resolv.conf");
        assert_eq!(
            resolv.source().as_deref(),
            Some(Path::new("/etc/resolv.conf"))
        );
        assert!(options(resolv).contains(&"ro"));
    }

    #[test]
    fn cgroups_path_and_limits() {
        let oci = build(&sample(Network::None));
        let linux = oci.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/ci/ci-42-test"))
        );
        let res = linux.resources().as_ref().unwrap();
        let mem = res.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(512 << 20));
        assert_eq!(mem.swap(), Some(512 << 20));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 256);
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
    }

    #[test]
    fn no_limits_means_no_controllers_configured() {
        let mut spec = sample(Network::None);
        spec.limits = Limits::default();
        let oci = build(&spec);
        let res = oci.linux().as_ref().unwrap().resources().clone().unwrap();
        assert!(res.memory().is_none() && res.pids().is_none() && res.cpu().is_none());
    }

    #[test]
    fn process_is_locked_down() {
        let oci = build(&sample(Network::None));
        let p = oci.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.cwd(), Path::new("/workspace"));
        let env = p.env().as_ref().unwrap();
        assert_eq!(env[0], DEFAULT_PATH);
        let caps = p.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert!(!bounding.contains(&Capability::NetRaw));
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        let nofile = p
            .rlimits()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
            .unwrap();
        assert_eq!((nofile.soft(), nofile.hard()), (1024, 1024));
        let linux = oci.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_owned()));
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
    }

    #[test]
    fn max_file_size_becomes_rlimit_fsize() {
        let fsize = |spec: &ContainerSpec| {
            build(spec)
                .process()
                .as_ref()
                .unwrap()
                .rlimits()
                .as_ref()
                .unwrap()
                .iter()
                .find(|r| r.typ() == PosixRlimitType::RlimitFsize)
                .map(|r| (r.soft(), r.hard()))
        };
        let mut spec = sample(Network::None);
        assert_eq!(fsize(&spec), None, "no limit unless asked");
        spec.max_file_size = Some(64 << 20);
        assert_eq!(fsize(&spec), Some((64 << 20, 64 << 20)));
        spec.max_file_size = Some(0);
        assert!(validate(&spec).is_err());
    }

    fn plan(oci: &Spec) -> HelperPlan {
        HelperPlan::of(oci).unwrap()
    }

    #[test]
    fn range_user_namespace_maps_the_range() {
        let mut spec = sample(Network::None);
        spec.user_namespace = Some(UserNamespace::ROOTFUL_DEFAULT);
        let oci = build(&spec);
        assert!(namespace_types(&oci).contains(&LinuxNamespaceType::User));
        let linux = oci.linux().as_ref().unwrap();
        for maps in [linux.uid_mappings(), linux.gid_mappings()] {
            let m = &maps.as_ref().unwrap()[..];
            assert_eq!(m.len(), 1, "one line: no newuidmap needed");
            assert_eq!(
                (m[0].container_id(), m[0].host_id(), m[0].size()),
                (0, 1_879_048_192, 65536)
            );
        }
        assert!(options(find_mount(&oci, "/dev/pts")).contains(&"gid=5"));
        assert_eq!(plan(&oci), HelperPlan::default());
    }

    #[test]
    fn caller_user_namespace_is_entered_by_the_helper() {
        let mut spec = sample(Network::None);
        spec.user_namespace = Some(UserNamespace::Caller);
        spec.cgroups = CgroupMode::Delegated;
        let oci = build(&spec);
        // The container shares the helper's namespace: none of its own in config.json.
        assert!(!namespace_types(&oci).contains(&LinuxNamespaceType::User));
        // Only the caller's ids exist there: no tty group for devpts.
        assert!(!options(find_mount(&oci, "/dev/pts"))
            .iter()
            .any(|o| o.starts_with("gid=")));
        let plan = plan(&oci);
        assert!(plan.enter_userns);
        assert_eq!(plan.delegated_limits, Some(spec.limits.clone()));
        // libcontainer must not write limits or device rules itself.
        assert!(oci.linux().as_ref().unwrap().resources().is_none());
    }

    #[test]
    fn delegated_cgroups_need_a_user_namespace() {
        check_invalid(|s| s.cgroups = CgroupMode::Delegated);
        check_invalid(|s| {
            s.user_namespace = Some(UserNamespace::Range(IdRange {
                uid: u32::MAX - 5,
                gid: 1000,
                count: 10,
            }))
        });
    }

    #[test]
    fn network_slirp_gets_netns_sysfs_and_its_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sample(Network::Slirp);
        prepare_bundle(dir.path(), &spec).unwrap();
        let oci = Spec::load(dir.path().join("config.json")).unwrap();
        assert!(namespace_types(&oci).contains(&LinuxNamespaceType::Network));
        assert_eq!(find_mount(&oci, "/sys").typ().as_deref(), Some("sysfs"));
        let resolv = find_mount(&oci, "/etc/resolv.conf");
        let source = resolv.source().clone().unwrap();
        assert_eq!(
            source,
            dir.path().canonicalize().unwrap().join(RESOLV_CONF_FILE)
        );
        assert!(options(resolv).contains(&"rro"));
        assert_eq!(
            std::fs::read_to_string(source).unwrap(),
            "nameserver 10.0.2.3\noptions edns0\n"
        );
        assert!(plan(&oci).slirp);
        check_invalid(|s| {
            s.network = Network::Slirp;
            s.mounts[0].destination = "/etc/resolv.conf".into();
        });
    }

    #[test]
    fn network_host_in_a_user_namespace_binds_all_of_sys() {
        let mut spec = sample(Network::Host);
        spec.user_namespace = Some(UserNamespace::ROOTFUL_DEFAULT);
        let sys = build(&spec);
        let sys = find_mount(&sys, "/sys");
        assert_eq!(
            options(sys),
            ["rbind", "ro", "rro", "nosuid", "noexec", "nodev"]
        );
    }

    #[test]
    fn explicit_path_is_kept() {
        let mut spec = sample(Network::None);
        spec.env = vec!["PATH=/opt/bin".into()];
        let oci = build(&spec);
        let env = oci.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env, ["PATH=/opt/bin"]);
    }

    fn check_invalid(edit: impl FnOnce(&mut ContainerSpec)) {
        let mut spec = sample(Network::None);
        edit(&mut spec);
        assert!(
            matches!(validate(&spec), Err(Error::InvalidSpec(_))),
            "accepted {spec:?}"
        );
    }

    #[test]
    fn validation_rejects_bad_specs() {
        check_invalid(|s| s.id = String::new());
        check_invalid(|s| s.id = "../x".into());
        check_invalid(|s| s.id = ".hidden".into());
        check_invalid(|s| s.id = "a/b".into());
        check_invalid(|s| s.id = "x".repeat(101));
        check_invalid(|s| s.rootfs = "rootfs".into());
        check_invalid(|s| s.args.clear());
        check_invalid(|s| s.env.push("NOEQUALS".into()));
        check_invalid(|s| s.cwd = "workspace".into());
        check_invalid(|s| s.cgroup_parent = "/ci/../..".into());
        check_invalid(|s| s.mounts[0].destination = "/workspace/../etc".into());
        check_invalid(|s| s.mounts[0].destination = "/".into());
        check_invalid(|s| s.mounts[0].destination = "/proc/sys".into());
        check_invalid(|s| s.mounts[0].destination = "/etc/hosts".into());
        check_invalid(|s| {
            s.network = Network::Host;
            s.mounts[0].destination = "/etc/resolv.conf".into();
        });
        check_invalid(|s| s.mounts[1].destination = "/workspace".into());
        check_invalid(|s| s.mounts[0].source = "src".into());
        check_invalid(|s| s.tmpfs[0].size_bytes = 0);
        check_invalid(|s| s.limits.pids = Some(0));
        check_invalid(|s| s.limits.memory_bytes = Some(u64::MAX));
    }

    /// The install container's overlay at `/venv`: the shared cache below, the job's
    /// upper directory on top.
    fn venv_rw() -> OverlayMount {
        OverlayMount {
            destination: "/venv".into(),
            lower: vec!["/srv/ci/cache/venv/abc".into()],
            upper: Some(OverlayUpper {
                upper: "/srv/ci/jobs/42/venv/upper".into(),
                work: "/srv/ci/jobs/42/venv/work".into(),
            }),
        }
    }

    /// The test container's: the install's upper directory stacked on the cache.
    fn venv_ro() -> OverlayMount {
        OverlayMount {
            destination: "/venv".into(),
            lower: vec![
                "/srv/ci/jobs/42/venv/upper".into(),
                "/srv/ci/cache/venv/abc".into(),
            ],
            upper: None,
        }
    }

    fn with_overlay(overlay: OverlayMount, userns: Option<UserNamespace>) -> Spec {
        let mut spec = sample(Network::None);
        spec.user_namespace = userns;
        spec.overlays.push(overlay);
        build(&spec)
    }

    #[test]
    fn writable_overlay_has_upper_and_work_dirs() {
        let oci = with_overlay(venv_rw(), Some(UserNamespace::ROOTFUL_DEFAULT));
        let venv = find_mount(&oci, "/venv");
        assert_eq!(venv.typ().as_deref(), Some("overlay"));
        assert_eq!(venv.source().as_deref(), Some(Path::new("overlay")));
        assert_eq!(
            options(venv),
            [
                "lowerdir=/srv/ci/cache/venv/abc",
                "upperdir=/srv/ci/jobs/42/venv/upper",
                "workdir=/srv/ci/jobs/42/venv/work",
                "userxattr",
                "nosuid",
                "nodev",
            ]
        );
    }

    #[test]
    fn readonly_overlay_stacks_lowers_topmost_first() {
        let oci = with_overlay(venv_ro(), Some(UserNamespace::Caller));
        assert_eq!(
            options(find_mount(&oci, "/venv")),
            [
                "lowerdir=/srv/ci/jobs/42/venv/upper:/srv/ci/cache/venv/abc",
                "userxattr",
                "nosuid",
                "nodev",
                "ro",
            ]
        );
    }

    #[test]
    fn lower_layers_too_long_for_one_value_go_one_per_option() {
        let long = |n: usize| PathBuf::from(format!("/srv/{}/{n}", "d".repeat(100)));
        let overlay = OverlayMount {
            destination: "/venv".into(),
            lower: vec![long(1), long(2), long(3)],
            upper: None,
        };
        let oci = with_overlay(overlay, Some(UserNamespace::Caller));
        let options = options(find_mount(&oci, "/venv"));
        let d = "d".repeat(100);
        assert_eq!(
            options[..3],
            [
                format!("lowerdir+=/srv/{d}/1"),
                format!("lowerdir+=/srv/{d}/2"),
                format!("lowerdir+=/srv/{d}/3"),
            ]
        );
    }

    #[test]
    fn overlay_without_user_namespace_uses_trusted_xattrs() {
        let oci = with_overlay(venv_rw(), None);
        assert!(!options(find_mount(&oci, "/venv")).contains(&"userxattr"));
    }

    /// What libcontainer 0.7 makes of the options: `ro`, `nosuid` and `nodev` become mount
    /// flags (mount_setattr), the rest go to fsconfig as strings or flags.
    #[test]
    fn libcontainer_splits_overlay_options_into_flags_and_data() {
        use nix::mount::MsFlags;
        for (overlay, ro) in [(venv_rw(), false), (venv_ro(), true)] {
            let oci = with_overlay(overlay, Some(UserNamespace::ROOTFUL_DEFAULT));
            let venv = find_mount(&oci, "/venv");
            let parsed = libcontainer::rootfs::utils::parse_mount(venv).unwrap();
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            flags.set(MsFlags::MS_RDONLY, ro);
            assert_eq!(parsed.flags, flags);
            let data: Vec<&str> = options(venv)
                .into_iter()
                .filter(|o| o.contains('=') || *o == "userxattr")
                .collect();
            assert_eq!(parsed.data, data);
            assert!(parsed.rec_attr.is_none());
            assert!(!libcontainer::rootfs::utils::is_bind(venv));
        }
    }

    /// Validation fails with a message containing `expected`.
    fn check_bad_overlay(expected: &str, edit: impl FnOnce(&mut ContainerSpec, &mut OverlayMount)) {
        let mut spec = sample(Network::None);
        let mut overlay = venv_rw();
        edit(&mut spec, &mut overlay);
        spec.overlays.push(overlay);
        match validate(&spec) {
            Err(Error::InvalidSpec(msg)) => assert!(msg.contains(expected), "{msg}"),
            other => panic!("{other:?} for {:?}", spec.overlays),
        }
    }

    fn upper(o: &mut OverlayMount) -> &mut OverlayUpper {
        o.upper.as_mut().unwrap()
    }

    #[test]
    fn validation_rejects_bad_overlays() {
        let mut spec = sample(Network::None);
        spec.overlays = vec![venv_rw()];
        validate(&spec).unwrap();
        spec.overlays = vec![venv_ro()];
        validate(&spec).unwrap();

        // Destinations, as for every mount.
        let unclean = "must be absolute without . or .. components";
        check_bad_overlay(unclean, |_, o| o.destination = "venv".into());
        check_bad_overlay(unclean, |_, o| o.destination = "/venv/../etc".into());
        for reserved in ["/", "/proc/venv", "/dev", "/etc/hosts"] {
            check_bad_overlay("is reserved", |_, o| o.destination = reserved.into());
        }
        check_bad_overlay("is used twice", |_, o| o.destination = "/workspace".into());
        check_bad_overlay("is used twice", |_, o| o.destination = "/tmp/".into());
        check_bad_overlay("is used twice", |s, _| s.overlays.push(venv_ro()));

        // Layers.
        check_bad_overlay("has no lower layer", |_, o| o.lower.clear());
        check_bad_overlay("needs two", |_, o| {
            o.upper = None;
            o.lower.truncate(1);
        });
        let relative = "is not absolute";
        check_bad_overlay(relative, |_, o| o.lower.push("cache/venv".into()));
        check_bad_overlay(relative, |_, o| upper(o).upper = "upper".into());
        check_bad_overlay(relative, |_, o| upper(o).work = "work".into());
        // Separators of overlayfs's options: another layer or option smuggled in.
        let injection = "must be UTF-8 without [',', ':', '\\\\', '\\n']";
        for bad in [",upperdir=/etc", ":/etc", "\\:", "\nx"] {
            check_bad_overlay(injection, |_, o| o.lower[0].as_mut_os_string().push(bad));
            check_bad_overlay(injection, |_, o| {
                upper(o).upper.as_mut_os_string().push(bad)
            });
            check_bad_overlay(injection, |_, o| upper(o).work.as_mut_os_string().push(bad));
        }
        // libcontainer passes options as strings.
        check_bad_overlay(injection, |_, o| {
            use std::os::unix::ffi::OsStrExt;
            o.lower[0].push(std::ffi::OsStr::from_bytes(b"\xff"));
        });
        let separate = "must be separate directories";
        check_bad_overlay(separate, |_, o| upper(o).work = upper(o).upper.clone());
        check_bad_overlay(separate, |_, o| upper(o).work = upper(o).upper.join("w"));
        check_bad_overlay(separate, |_, o| upper(o).upper = upper(o).work.join("u"));
    }

    #[test]
    fn spec_without_overlays_field_still_parses() {
        let spec = sample(Network::None);
        let mut json = serde_json::to_value(&spec).unwrap();
        json.as_object_mut().unwrap().remove("overlays").unwrap();
        assert_eq!(serde_json::from_value::<ContainerSpec>(json).unwrap(), spec);
    }

    #[test]
    fn validation_accepts_sample_ids() {
        for id in ["a", "ci-1-install", "ci_2.test", "A9"] {
            validate_id(id).unwrap();
        }
    }

    #[test]
    fn prepare_bundle_writes_config_and_hosts() {
        let dir = tempfile::tempdir().unwrap();
        prepare_bundle(dir.path(), &sample(Network::Host)).unwrap();
        let oci = Spec::load(dir.path().join("config.json")).unwrap();
        let hosts = find_mount(&oci, "/etc/hosts");
        let source = hosts.source().clone().unwrap();
        assert!(source.is_absolute());
        let content = std::fs::read_to_string(source).unwrap();
        assert!(content.contains("127.0.0.1\tlocalhost"));
    }

    #[test]
    fn spec_roundtrips_through_json() {
        let mut spec = sample(Network::Host);
        spec.overlays = vec![venv_rw()];
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ContainerSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn ensure_mountpoints_creates_dirs_and_files_once() {
        let rootfs = tempfile::tempdir().unwrap();
        let sources = tempfile::tempdir().unwrap();
        let ca = sources.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let mut spec = sample(Network::Host);
        spec.rootfs = rootfs.path().to_owned();
        spec.mounts = vec![
            BindMount {
                source: sources.path().to_owned(),
                destination: "/workspace".into(),
                readonly: true,
            },
            BindMount {
                source: ca,
                destination: "/etc/ci/ca.pem".into(),
                readonly: true,
            },
        ];
        spec.overlays = vec![OverlayMount {
            destination: "/opt/venv".into(),
            lower: vec![sources.path().to_owned()],
            upper: Some(OverlayUpper {
                upper: "/upper".into(),
                work: "/work".into(),
            }),
        }];
        ensure_mountpoints(rootfs.path(), &spec).unwrap();
        ensure_mountpoints(rootfs.path(), &spec).unwrap();
        let r = rootfs.path();
        for dir in ["proc", "dev", "sys", "workspace", "tmp", "root", "opt/venv"] {
            assert!(r.join(dir).is_dir(), "{dir}");
        }
        for file in ["etc/hosts", "etc/resolv.conf", "etc/ci/ca.pem"] {
            assert!(r.join(file).is_file(), "{file}");
        }
    }

    #[test]
    fn ensure_mountpoints_stays_inside_rootfs() {
        let rootfs = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // An image whose /etc is an absolute symlink to a host directory.
        std::os::unix::fs::symlink(outside.path(), rootfs.path().join("etc")).unwrap();
        let mut spec = sample(Network::None);
        spec.rootfs = rootfs.path().to_owned();
        spec.mounts.clear();
        let result = ensure_mountpoints(rootfs.path(), &spec);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // pathrs resolves the symlink inside the root: either it creates the files under
        // <rootfs>/<outside path>, or it refuses; it never writes to the host path.
        if result.is_ok() {
            let inside = rootfs
                .path()
                .join(outside.path().strip_prefix("/").unwrap());
            assert!(inside.join("hosts").is_file());
        }
    }
}
