//! The container specs of a job's phases, built from plain values: no I/O, nothing async, no
//! server state. The sandbox's invariants are decided here, so they are tested here (see the
//! tests at the end) without a container or root.
//!
//! Where it could be done they hold by construction, not only by test:
//! - a container writes to a host directory only through `Writable` (bind mounts) and
//!   `Upper` (overlay upper layers), whose every variant is a directory of the job's own
//!   ([`JobPaths`]) that exists to be written: never the host's `/`, never the upload
//!   ([`JobPaths::project`]), never a cache entry other jobs read. A read-only mount can name
//!   any path; a writable one cannot be given a path at all. What a job's directories hold
//!   may become a cache entry once its containers are gone (a new layer, the project's
//!   install, its bytecode tree), never while one is mounted. The compile of an image's
//!   bytecode ([`compile_bytecode`]) is the server's own container, not a job's: its
//!   [`JobPaths`] is a directory of its own beside the image.
//! - the test container's `/venv` is a [`Venv`], which has no writable form.
//! - every spec comes out of `base`, which always sets the user namespace, the limits and
//!   the tmpfs mounts; the test spec's network is [`Network::None`] whatever the config says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ci_project::{InstallPlan, Installer};
use ci_runner::{
    BindMount, CgroupMode, ContainerSpec, Limits, Network, OverlayMount, OverlayUpper, Tmpfs,
    UserNamespace,
};

use crate::bytecode;
use crate::install::{self, Tool};
use crate::layout::JobPaths;
use crate::shards;

/// Where every container sees the project: the upload read-only, or the install's copy.
pub const WORKSPACE: &str = "/workspace";

/// Where the install containers see the CA bundle (`--ca-bundle`).
pub const CA_IN_CONTAINER: &str = "/etc/ci/ca-certificates.crt";

/// What every container of one job is made from.
#[derive(Clone, Debug)]
pub struct SpecConfig<'a> {
    pub job_id: &'a str,
    /// The unpacked image: the container's `/`, which no container writes.
    pub image_rootfs: &'a Path,
    /// The image's own environment, `KEY=value`.
    pub image_env: &'a [String],
    /// The job's directory: the upload, and every directory a container may write to.
    pub paths: &'a JobPaths,
    pub user_namespace: UserNamespace,
    pub cgroups: CgroupMode,
    pub cgroup_parent: &'a str,
    /// The limits the sandbox applies (`sandbox::Sandbox`): `None` where one cannot be
    /// enforced and `--allow-unlimited` let the server run without it.
    pub memory_limit: Option<u64>,
    pub pids_limit: Option<i64>,
    pub cpu_quota_us: Option<i64>,
    /// The size of each tmpfs (`/tmp`, `/root`).
    pub tmp_size: u64,
    /// The install phase's network; the test phase has none.
    pub install_network: Network,
    /// The CA bundle the installs trust (`--ca-bundle`), at [`CA_IN_CONTAINER`].
    pub ca_bundle: Option<&'a Path>,
}

/// What the two install containers are made from besides [`SpecConfig`].
#[derive(Clone, Copy, Debug)]
pub struct InstallInput<'a> {
    pub plan: &'a InstallPlan,
    pub tool: &'a Tool,
    /// uv's directory, read-only at [`install::UV_DIR`]; `None` when pip installs.
    pub uv_dir: Option<&'a Path>,
    /// The installer's download cache; `None` when none could be made ready.
    pub cache: Option<CacheMount<'a>>,
    /// The largest file an install may write (`--max-deps-size`): no one file passes the cap,
    /// whatever the watcher of its writes sees between two looks.
    pub max_file_size: u64,
}

/// The installer's download cache as the install containers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMount<'a> {
    /// The user's own, read-only under an overlay whose upper layer is the job's
    /// ([`JobPaths::cache_upper`]): what the installs write is merged in only if they succeed.
    Shared(&'a Path),
    /// The job's own ([`JobPaths::installer_cache`]), writable; it goes with the job.
    Private,
}

/// The job's `/venv` as the test container sees it. Read-only whatever it is made of: no
/// variant has a writable layer, so the tests cannot change what the next job reuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Venv {
    /// The dependency layer alone (nothing per job).
    Layer(PathBuf),
    /// The project's own install (an upper layer: the job's [`JobPaths::venv_upper`], or
    /// the same upload's from the cache) over the dependency layer.
    WithProject { upper: PathBuf, deps: PathBuf },
}

/// A build writes into the source tree: any install that builds the project or reads it as
/// a uv project gets a writable copy, never the upload itself.
pub fn needs_build_copy(plan: &InstallPlan) -> bool {
    plan.project.is_some() || matches!(plan.deps, ci_project::Deps::UvLock { .. })
}

/// The test container: pytest over the upload, read-only, with the job's `/venv` read-only, no
/// network, two writable bind mounts (the report directory and `/artifacts`) and the
/// bytecode cache: an overlay over the read-only `bytecode` trees, first found first, whose
/// upper directory is the job's ([`crate::bytecode`]).
pub fn test(
    cfg: &SpecConfig,
    venv: &Venv,
    bytecode: &[PathBuf],
    pytest_args: &[String],
    config_env: &BTreeMap<String, String>,
    shard: Option<Shard>,
    verbose: bool,
) -> ContainerSpec {
    let mut extra = vec![
        (bytecode::ENV.to_string(), bytecode::PREFIX.to_string()),
        (ARTIFACTS_ENV.to_string(), ARTIFACTS.to_string()),
    ];
    if let Some(s) = shard {
        // The plugin is found on PYTHONPATH, before whatever the project puts there.
        let path = match config_env.get("PYTHONPATH") {
            Some(theirs) => format!("{}:{theirs}", shards::DIR_IN_CONTAINER),
            None => shards::DIR_IN_CONTAINER.to_string(),
        };
        extra.extend([
            (
                shards::SHARD_ENV.to_string(),
                format!("{}/{}", s.index, s.count),
            ),
            (
                shards::DURATIONS_ENV.to_string(),
                format!("{}/durations.json", shards::DIR_IN_CONTAINER),
            ),
            ("PYTHONPATH".to_string(), path.clone()),
            (
                shards::COUNTS_ENV.to_string(),
                format!(
                    "{}/{}",
                    crate::report::DIR_IN_CONTAINER,
                    shards::COUNTS_FILE
                ),
            ),
        ]);
        extra.extend(
            config_env
                .iter()
                .filter(|(k, _)| *k != "PYTHONPATH")
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    } else {
        // The project's own variables ([tool.ci] env) come last: they are the user's to set.
        extra.extend(config_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let python = format!("{}/bin/python", install::VENV);
    let mut args = vec![python.as_str(), "-m", "pytest"];
    // One line per test unless the project chose its verbosity
    // (`ci_project::pytest_verbose`): pytest adds up `-v`s and `-q`s, so ours would shift it.
    if verbose {
        args.push("-v");
    }
    args.extend(["-p", "no:cacheprovider"]);
    // Before the user's arguments, so that a --junitxml of theirs wins. xunit1 is the
    // family whose test cases say their file and line, from which node ids are rebuilt.
    let junit = format!("--junitxml={}", crate::report::IN_CONTAINER);
    args.extend(["-o", "junit_family=xunit1", &junit]);
    if shard.is_some() {
        args.extend(["-p", shards::PLUGIN_MODULE]);
    }
    args.extend(pytest_args.iter().map(String::as_str));
    let workspace = read_only(&cfg.paths.project(), WORKSPACE);
    let env = env(cfg.image_env, &extra);
    let phase = match shard {
        None => "test".to_string(),
        Some(s) => format!("test-{}", s.index),
    };
    // No network, whatever the sandbox gives the installs: the tests are the untrusted part.
    let mut spec = base(cfg, &phase, &args, env, Network::None, workspace);
    if shard.is_some() {
        spec.mounts.push(read_only(
            &cfg.paths.shard_inputs(),
            shards::DIR_IN_CONTAINER,
        ));
    }
    match venv {
        Venv::Layer(dir) => spec.mounts.push(read_only(dir, install::VENV)),
        Venv::WithProject { upper, deps } => spec.overlays.push(OverlayMount {
            destination: install::VENV.into(),
            lower: vec![upper.clone(), deps.clone()],
            upper: None,
        }),
    }
    spec.mounts.push(writable(
        cfg.paths,
        Writable::Report,
        crate::report::DIR_IN_CONTAINER,
    ));
    spec.mounts
        .push(writable(cfg.paths, Writable::Artifacts, ARTIFACTS));
    if bytecode.is_empty() {
        spec.mounts
            .push(writable(cfg.paths, Writable::Bytecode, bytecode::PREFIX));
    } else {
        spec.overlays.push(overlay(
            cfg.paths,
            bytecode::PREFIX,
            bytecode.to_vec(),
            Upper::Bytecode,
        ));
    }
    spec
}

/// The container that compiles an image's bytecode once ([`bytecode::COMPILE`]): the
/// image's own Python, no network, nothing to read but the image, and one writable
/// directory, the job's [`JobPaths::bytecode`] at [`bytecode::PREFIX`], which becomes the
/// image's tree. `cfg.paths` is the compile's own directory, not a job's.
pub fn compile_bytecode(cfg: &SpecConfig) -> ContainerSpec {
    let env = env(
        cfg.image_env,
        &[(bytecode::ENV.to_string(), bytecode::PREFIX.to_string())],
    );
    let args = ["python3", "-c", bytecode::COMPILE];
    let workspace = read_only(&cfg.paths.project(), WORKSPACE);
    let mut spec = base(cfg, "bytecode", &args, env, Network::None, workspace);
    spec.mounts
        .push(writable(cfg.paths, Writable::Bytecode, bytecode::PREFIX));
    spec
}

/// The container that asks an image which Python it has ([`crate::image::PROBE`]): the
/// image's own `python3`, no network, nothing writable, nothing to read but the image (and
/// the empty project directory of `cfg.paths`, which is not a job's).
pub fn probe_python(cfg: &SpecConfig) -> ContainerSpec {
    let env = env(cfg.image_env, &[]);
    let args = ["python3", "-c", crate::image::PROBE];
    let workspace = read_only(&cfg.paths.project(), WORKSPACE);
    base(cfg, "probe", &args, env, Network::None, workspace)
}

/// One of the test containers of a job whose suite is split ([`crate::shards`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: u32,
    pub count: u32,
}

/// Where a test may put files worth keeping (coverage.xml, htmlcov/): kept with the job.
pub const ARTIFACTS: &str = "/artifacts";

/// The variable that tells the tests where [`ARTIFACTS`] is.
pub const ARTIFACTS_ENV: &str = "CI_ARTIFACTS";

/// The container that builds the dependency layer into the job's staging directory
/// ([`JobPaths::deps_staging`]), mounted writable as `/venv`.
pub fn install_deps(cfg: &SpecConfig, input: &InstallInput) -> ContainerSpec {
    install(cfg, input, "install", "deps.sh", InstallVenv::Staging)
}

/// The container that installs the project over the dependency layer `deps` (read-only),
/// into the job's own upper layer ([`JobPaths::venv_upper`]).
pub fn install_project(cfg: &SpecConfig, input: &InstallInput, deps: &Path) -> ContainerSpec {
    let venv = InstallVenv::OverLayer(deps);
    install(cfg, input, "install-project", "project.sh", venv)
}

/// `/venv` in an install container.
enum InstallVenv<'a> {
    /// The staging directory of a new layer, which the container fills.
    Staging,
    /// The job's upper layer over this dependency layer.
    OverLayer(&'a Path),
}

/// What both install containers share: the install network, the file size cap, the inputs,
/// uv, the installer cache and the CA bundle.
fn install(
    cfg: &SpecConfig,
    input: &InstallInput,
    phase: &str,
    script: &str,
    venv: InstallVenv,
) -> ContainerSpec {
    let ca = cfg.ca_bundle.map(|_| CA_IN_CONTAINER);
    let env = env(
        cfg.image_env,
        &install::install_env(input.tool, input.plan, ca),
    );
    // Builds write into the source tree: they get the job's copy, never the upload.
    let workspace = if needs_build_copy(input.plan) {
        writable(cfg.paths, Writable::Build, WORKSPACE)
    } else {
        read_only(&cfg.paths.project(), WORKSPACE)
    };
    let script_path = format!("{}/{script}", install::INPUTS);
    let args = ["/bin/sh", script_path.as_str()];
    let mut spec = base(cfg, phase, &args, env, cfg.install_network, workspace);
    // No one file may pass the cap, whatever the watcher sees between two looks.
    spec.max_file_size = Some(input.max_file_size);
    match venv {
        InstallVenv::Staging => {
            let staging = writable(cfg.paths, Writable::DepsStaging, install::VENV);
            spec.mounts.push(staging);
        }
        InstallVenv::OverLayer(deps) => spec.overlays.push(overlay(
            cfg.paths,
            install::VENV,
            vec![deps.to_path_buf()],
            Upper::Venv,
        )),
    }
    spec.mounts
        .push(read_only(&cfg.paths.inputs(), install::INPUTS));
    if let Some(dir) = input.uv_dir {
        spec.mounts.push(read_only(dir, install::UV_DIR));
    }
    // The installer's download cache, per user: warm installs skip the network.
    let destination = match input.tool.kind {
        Installer::Uv => install::UV_CACHE,
        Installer::Pip => install::PIP_CACHE,
    };
    match input.cache {
        Some(CacheMount::Shared(dir)) => spec.overlays.push(overlay(
            cfg.paths,
            destination,
            vec![dir.to_path_buf()],
            Upper::Cache,
        )),
        Some(CacheMount::Private) => {
            spec.mounts
                .push(writable(cfg.paths, Writable::InstallerCache, destination))
        }
        None => {}
    }
    if let Some(ca) = cfg.ca_bundle {
        spec.mounts.push(read_only(ca, CA_IN_CONTAINER));
    }
    spec
}

/// The environment of a container: the image's, then the job's `/venv` activated and the
/// server's settings, then `extra` (which may override any of them).
fn env(image_env: &[String], extra: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<String> = image_env.to_vec();
    let mut set = |k: &str, v: &str| {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    };
    let path = image_env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    // The job's virtual environment comes first, as if it were activated.
    set("PATH", &format!("{}/bin:{path}", install::VENV));
    set("VIRTUAL_ENV", install::VENV);
    set("HOME", "/root");
    set("LANG", "C.UTF-8");
    set("PYTHONUNBUFFERED", "1");
    set("CI", "true");
    for (k, v) in extra {
        set(k, v);
    }
    env
}

/// The one place a spec is made: whatever the phase, the container gets the user
/// namespace, the sandbox's limits, and `/tmp` and `/root` as size-limited tmpfs.
fn base(
    cfg: &SpecConfig,
    phase: &str,
    args: &[&str],
    env: Vec<String>,
    network: Network,
    workspace: BindMount,
) -> ContainerSpec {
    ContainerSpec {
        id: format!("ci-{}-{phase}", cfg.job_id),
        rootfs: cfg.image_rootfs.to_path_buf(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env,
        cwd: WORKSPACE.into(),
        mounts: vec![workspace],
        overlays: vec![],
        network,
        limits: Limits {
            memory_bytes: cfg.memory_limit,
            pids: cfg.pids_limit,
            cpu_quota_us: cfg.cpu_quota_us,
            cpu_period_us: cfg.cpu_quota_us.map(|_| crate::sandbox::CPU_PERIOD_US),
        },
        tmpfs: vec![
            Tmpfs {
                destination: "/tmp".into(),
                size_bytes: cfg.tmp_size,
            },
            Tmpfs {
                destination: "/root".into(),
                size_bytes: cfg.tmp_size,
            },
        ],
        cgroup_parent: cfg.cgroup_parent.to_string(),
        user_namespace: Some(cfg.user_namespace),
        cgroups: cfg.cgroups,
        max_file_size: None,
    }
}

/// The host directories a container may bind writable. Each is a directory of the job's
/// own that exists to be written, and there is no variant for a path given from outside:
/// that is what keeps the host's `/`, the upload and the shared cache entries read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writable {
    /// The test report ([`JobPaths::report`]).
    Report,
    /// What the tests keep ([`JobPaths::artifacts`]).
    Artifacts,
    /// The install's copy of the project ([`JobPaths::build`]).
    Build,
    /// A new dependency layer before it goes into the cache ([`JobPaths::deps_staging`]).
    DepsStaging,
    /// The job's private installer cache ([`JobPaths::installer_cache`]).
    InstallerCache,
    /// The bytecode the compile of an image writes ([`JobPaths::bytecode`]), or the tests
    /// when there is no tree to lay it over.
    Bytecode,
}

impl Writable {
    fn source(self, paths: &JobPaths) -> PathBuf {
        match self {
            Writable::Report => paths.report(),
            Writable::Artifacts => paths.artifacts(),
            Writable::Build => paths.build(),
            Writable::DepsStaging => paths.deps_staging(),
            Writable::InstallerCache => paths.installer_cache(),
            Writable::Bytecode => paths.bytecode(),
        }
    }
}

/// The upper layers an overlay may have, likewise the job's own: what an install changes in
/// `/venv` or in the installer cache lands there, not in the lower layers it shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upper {
    Venv,
    Cache,
    Bytecode,
}

impl Upper {
    fn dirs(self, paths: &JobPaths) -> OverlayUpper {
        let (upper, work) = match self {
            Upper::Venv => (paths.venv_upper(), paths.venv_work()),
            Upper::Cache => (paths.cache_upper(), paths.cache_work()),
            Upper::Bytecode => (paths.bytecode(), paths.bytecode_work()),
        };
        OverlayUpper { upper, work }
    }
}

fn read_only(source: &Path, destination: &str) -> BindMount {
    BindMount {
        source: source.to_path_buf(),
        destination: destination.into(),
        readonly: true,
    }
}

/// The only writable bind mount there is: see [`Writable`].
fn writable(paths: &JobPaths, dir: Writable, destination: &str) -> BindMount {
    BindMount {
        source: dir.source(paths),
        destination: destination.into(),
        readonly: false,
    }
}

/// An overlay at `destination` over `lower` (read-only) that writes into the job's `upper`.
fn overlay(paths: &JobPaths, destination: &str, lower: Vec<PathBuf>, upper: Upper) -> OverlayMount {
    OverlayMount {
        destination: destination.into(),
        lower,
        upper: Some(upper.dirs(paths)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_project::{Deps, ProjectLayer};

    const JOB: &str = "/data/jobs/j1";
    const IMAGE: &str = "/data/images/abc/rootfs";
    const DEPS: &str = "/data/cache/deps/alice/key";
    const SHARED_CACHE: &str = "/data/cache/uv/alice";

    fn paths() -> JobPaths {
        JobPaths::new(JOB.into())
    }

    fn image_env() -> Vec<String> {
        vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "LANG=C".into(),
            "CI=false".into(),
            "PYTHON_VERSION=3.12.4".into(),
        ]
    }

    fn config<'a>(paths: &'a JobPaths, image_env: &'a [String]) -> SpecConfig<'a> {
        SpecConfig {
            job_id: "j1",
            image_rootfs: Path::new(IMAGE),
            image_env,
            paths,
            user_namespace: UserNamespace::ROOTFUL_DEFAULT,
            cgroups: CgroupMode::Runtime,
            cgroup_parent: "/ci",
            memory_limit: Some(2 << 30),
            pids_limit: Some(512),
            cpu_quota_us: Some(200_000),
            tmp_size: 256 << 20,
            install_network: Network::Slirp,
            ca_bundle: Some(Path::new("/etc/ssl/corp.pem")),
        }
    }

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

    fn requirements() -> Deps {
        Deps::Requirements {
            requirements: "pytest\n".into(),
            constraints: String::new(),
        }
    }

    fn uv() -> Tool {
        Tool {
            kind: Installer::Uv,
            version: "0.13.9".into(),
        }
    }

    const IMAGE_BYTECODE: &str = "/data/images/abc/bytecode";

    fn test_spec(venv: &Venv, args: &[&str], config_env: &[(&str, &str)]) -> ContainerSpec {
        let (paths, image_env) = (paths(), image_env());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let config_env = config_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let trees = [PathBuf::from(IMAGE_BYTECODE)];
        test(
            &config(&paths, &image_env),
            venv,
            &trees,
            &args,
            &config_env,
            None,
            !ci_project::sets_verbosity(&args),
        )
    }

    /// Both install specs of `plan`, with a shared installer cache.
    fn install_specs(plan: &InstallPlan, cache: Option<CacheMount>) -> [ContainerSpec; 2] {
        let (paths, image_env) = (paths(), image_env());
        let cfg = config(&paths, &image_env);
        let tool = uv();
        let input = InstallInput {
            plan,
            tool: &tool,
            uv_dir: Some(Path::new("/data/tools/uv-0.13.9")),
            cache,
            max_file_size: 1 << 30,
        };
        [
            install_deps(&cfg, &input),
            install_project(&cfg, &input, Path::new(DEPS)),
        ]
    }

    /// Every spec this module makes, for the invariants that hold for all of them.
    fn all_specs() -> Vec<ContainerSpec> {
        let (paths, image_env) = (paths(), image_env());
        let shard_paths = paths.shard(2);
        let cfg = config(&paths, &image_env);
        let mut specs = vec![
            test_spec(&Venv::Layer(DEPS.into()), &[], &[]),
            test_spec(
                &Venv::WithProject {
                    upper: paths.venv_upper(),
                    deps: DEPS.into(),
                },
                &["-k", "x"],
                &[],
            ),
            // The same upload's install, kept in the cache.
            test_spec(
                &Venv::WithProject {
                    upper: "/data/cache/proj/alice/key".into(),
                    deps: DEPS.into(),
                },
                &[],
                &[],
            ),
            test(
                &cfg,
                &Venv::Layer(DEPS.into()),
                &[],
                &[],
                &BTreeMap::new(),
                None,
                true,
            ),
            compile_bytecode(&cfg),
            test(
                &config(&shard_paths, &image_env),
                &Venv::Layer(DEPS.into()),
                &[],
                &[],
                &BTreeMap::new(),
                Some(Shard { index: 2, count: 3 }),
                true,
            ),
        ];
        for plan in [
            plan(requirements(), None),
            plan(
                Deps::UvLock {
                    groups: vec![],
                    extras: vec![],
                },
                Some(ProjectLayer::UvSync {
                    install_project: true,
                    editable: false,
                }),
            ),
        ] {
            for cache in [
                None,
                Some(CacheMount::Private),
                Some(CacheMount::Shared(Path::new(SHARED_CACHE))),
            ] {
                specs.extend(install_specs(&plan, cache));
            }
        }
        specs
    }

    fn mount<'s>(spec: &'s ContainerSpec, destination: &str) -> Option<&'s BindMount> {
        spec.mounts.iter().find(|m| m.destination == destination)
    }

    fn env_value<'s>(spec: &'s ContainerSpec, key: &str) -> Option<&'s str> {
        let prefix = format!("{key}=");
        let mut found = spec.env.iter().filter_map(|e| e.strip_prefix(&prefix));
        let value = found.next();
        assert!(found.next().is_none(), "{key} set twice: {:?}", spec.env);
        value
    }

    /// What a container may write on the host: the sources of its writable bind mounts and
    /// its overlays' upper layers (tmpfs is in memory, and its own).
    fn written(spec: &ContainerSpec) -> Vec<PathBuf> {
        let binds = spec
            .mounts
            .iter()
            .filter(|m| !m.readonly)
            .map(|m| m.source.clone());
        let uppers = spec
            .overlays
            .iter()
            .filter_map(|o| o.upper.as_ref())
            .flat_map(|u| [u.upper.clone(), u.work.clone()]);
        binds.chain(uppers).collect()
    }

    #[test]
    fn every_spec_is_valid_for_the_runner() {
        for spec in all_specs() {
            ci_runner::validate(&spec).unwrap_or_else(|e| panic!("{}: {e}", spec.id));
        }
    }

    #[test]
    fn every_container_is_sandboxed_alike() {
        for spec in all_specs() {
            assert_eq!(
                spec.user_namespace,
                Some(UserNamespace::ROOTFUL_DEFAULT),
                "{}",
                spec.id
            );
            assert_eq!(
                spec.limits,
                Limits {
                    memory_bytes: Some(2 << 30),
                    pids: Some(512),
                    cpu_quota_us: Some(200_000),
                    cpu_period_us: Some(crate::sandbox::CPU_PERIOD_US),
                },
                "{}",
                spec.id
            );
            assert_eq!(spec.cgroups, CgroupMode::Runtime);
            assert_eq!(spec.cgroup_parent, "/ci");
            assert_eq!(spec.rootfs, Path::new(IMAGE));
            let tmpfs: Vec<_> = spec
                .tmpfs
                .iter()
                .map(|t| (t.destination.as_str(), t.size_bytes))
                .collect();
            assert_eq!(tmpfs, [("/tmp", 256 << 20), ("/root", 256 << 20)]);
            assert_eq!(spec.cwd, WORKSPACE);
        }
    }

    #[test]
    fn unenforced_limits_stay_unset() {
        let (paths, image_env) = (paths(), image_env());
        let cfg = SpecConfig {
            memory_limit: None,
            pids_limit: None,
            cpu_quota_us: None,
            ..config(&paths, &image_env)
        };
        let spec = test(
            &cfg,
            &Venv::Layer(DEPS.into()),
            &[],
            &[],
            &BTreeMap::new(),
            None,
            true,
        );
        assert_eq!(spec.limits, Limits::default());
    }

    #[test]
    fn every_container_writes_only_into_the_job_directory() {
        for spec in all_specs() {
            for dir in written(&spec) {
                assert!(
                    dir.starts_with(JOB) && dir != Path::new(JOB),
                    "{} writes {}",
                    spec.id,
                    dir.display()
                );
                assert!(!dir.starts_with(paths().project()), "{}", spec.id);
            }
            for mount in &spec.mounts {
                assert!(
                    mount.readonly || mount.source.starts_with(JOB),
                    "{}: {mount:?}",
                    spec.id
                );
            }
            // The shared cache entries are lower layers or read-only binds, never written.
            for overlay in &spec.overlays {
                for lower in &overlay.lower {
                    assert!(
                        lower.starts_with(JOB)
                            || lower.starts_with("/data/cache")
                            || lower == Path::new(IMAGE_BYTECODE),
                        "{lower:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_test_container_is_offline_and_writes_only_its_report_artifacts_and_bytecode() {
        for venv in [
            Venv::Layer(DEPS.into()),
            Venv::WithProject {
                upper: paths().venv_upper(),
                deps: DEPS.into(),
            },
        ] {
            let spec = test_spec(&venv, &[], &[]);
            assert_eq!(spec.id, "ci-j1-test");
            assert_eq!(spec.network, Network::None);
            assert_eq!(spec.max_file_size, None);
            let workspace = mount(&spec, WORKSPACE).unwrap();
            assert_eq!(workspace.source, paths().project());
            assert!(workspace.readonly, "the upload is read-only");
            assert_eq!(
                written(&spec),
                [
                    paths().report(),
                    paths().artifacts(),
                    paths().bytecode(),
                    paths().bytecode_work()
                ]
            );
            let artifacts = mount(&spec, ARTIFACTS).unwrap();
            assert_eq!(artifacts.source, paths().artifacts());
            assert_eq!(env_value(&spec, ARTIFACTS_ENV), Some(ARTIFACTS));
            let report = mount(&spec, crate::report::DIR_IN_CONTAINER).unwrap();
            assert!(!report.readonly);
            // Where pytest is told to write is inside the mounted report directory, and is
            // the file the server reads.
            let report_in_container = Path::new(crate::report::IN_CONTAINER);
            assert!(report_in_container.starts_with(crate::report::DIR_IN_CONTAINER));
            assert_eq!(
                paths().junit(),
                paths()
                    .report()
                    .join(report_in_container.file_name().unwrap())
            );
            // No CA bundle, inputs, uv or installer cache: those are the installs'.
            let mut destinations: Vec<_> = spec
                .mounts
                .iter()
                .map(|m| m.destination.as_str())
                .chain(spec.overlays.iter().map(|o| o.destination.as_str()))
                .collect();
            destinations.sort();
            assert_eq!(
                destinations,
                [
                    ARTIFACTS,
                    bytecode::PREFIX,
                    crate::report::DIR_IN_CONTAINER,
                    install::VENV,
                    WORKSPACE
                ]
            );
        }
    }

    #[test]
    fn bytecode_goes_to_the_prefix_over_the_trees_never_beside_the_sources() {
        let spec = test_spec(&Venv::Layer(DEPS.into()), &[], &[]);
        assert_eq!(env_value(&spec, bytecode::ENV), Some(bytecode::PREFIX));
        assert_eq!(env_value(&spec, "PYTHONDONTWRITEBYTECODE"), None);
        let cache = spec
            .overlays
            .iter()
            .find(|o| o.destination == bytecode::PREFIX)
            .unwrap();
        assert_eq!(cache.lower, [PathBuf::from(IMAGE_BYTECODE)]);
        assert_eq!(
            cache.upper,
            Some(OverlayUpper {
                upper: paths().bytecode(),
                work: paths().bytecode_work(),
            })
        );
        // No tree yet: the job's own directory, alone.
        let (paths, image_env) = (paths(), image_env());
        let spec = test(
            &config(&paths, &image_env),
            &Venv::Layer(DEPS.into()),
            &[],
            &[],
            &BTreeMap::new(),
            None,
            true,
        );
        let cache = mount(&spec, bytecode::PREFIX).unwrap();
        assert_eq!(
            (cache.source.clone(), cache.readonly),
            (paths.bytecode(), false)
        );

        // Installs compile into the layer's own tree.
        for spec in install_specs(&plan(requirements(), None), None) {
            assert_eq!(
                env_value(&spec, bytecode::ENV),
                Some(bytecode::install_prefix().as_str())
            );
        }
    }

    #[test]
    fn a_shard_has_its_own_report_and_bytecode_and_the_plugin_read_only() {
        let (paths, image_env) = (paths(), image_env());
        let shard = paths.shard(2);
        let env = BTreeMap::from([("PYTHONPATH".to_string(), "src".to_string())]);
        let spec = test(
            &config(&shard, &image_env),
            &Venv::Layer(DEPS.into()),
            &[],
            &["-x".to_string()],
            &env,
            Some(Shard { index: 2, count: 3 }),
            true,
        );
        assert_eq!(spec.id, "ci-j1-test-2");
        assert_eq!(env_value(&spec, shards::SHARD_ENV), Some("2/3"));
        assert_eq!(env_value(&spec, "PYTHONPATH"), Some("/opt/ci-shard:src"));
        let plugin = mount(&spec, shards::DIR_IN_CONTAINER).unwrap();
        assert_eq!(
            (plugin.source.clone(), plugin.readonly),
            (paths.shard_inputs(), true)
        );
        assert_eq!(mount(&spec, WORKSPACE).unwrap().source, paths.project());
        assert_eq!(mount(&spec, ARTIFACTS).unwrap().source, paths.artifacts());
        let report = mount(&spec, crate::report::DIR_IN_CONTAINER).unwrap();
        assert_eq!(report.source, Path::new(JOB).join("report-2"));
        assert_ne!(shard.bytecode(), paths.bytecode());
        // The plugin comes before the user's arguments, which stay last.
        let tail: Vec<_> = spec.args.iter().rev().take(3).rev().collect();
        assert_eq!(tail, ["-p", "ci_shard", "-x"]);
    }

    #[test]
    fn the_image_compile_is_offline_and_writes_only_its_output() {
        let (paths, image_env) = (paths(), image_env());
        let spec = compile_bytecode(&config(&paths, &image_env));
        assert_eq!(spec.id, "ci-j1-bytecode");
        assert_eq!(spec.network, Network::None);
        assert_eq!(written(&spec), [paths.bytecode()]);
        assert!(mount(&spec, WORKSPACE).unwrap().readonly);
        assert_eq!(env_value(&spec, bytecode::ENV), Some(bytecode::PREFIX));
        assert_eq!(spec.args[..2], ["python3", "-c"]);
    }

    #[test]
    fn the_test_container_sees_venv_read_only() {
        let spec = test_spec(&Venv::Layer(DEPS.into()), &[], &[]);
        let venv = mount(&spec, install::VENV).unwrap();
        assert_eq!(
            (venv.source.as_path(), venv.readonly),
            (Path::new(DEPS), true)
        );
        assert!(spec.overlays.iter().all(|o| o.destination != install::VENV));

        let spec = test_spec(
            &Venv::WithProject {
                upper: paths().venv_upper(),
                deps: DEPS.into(),
            },
            &[],
            &[],
        );
        assert!(mount(&spec, install::VENV).is_none());
        assert_eq!(
            spec.overlays[..1],
            [OverlayMount {
                destination: install::VENV.into(),
                lower: vec![paths().venv_upper(), DEPS.into()],
                upper: None,
            }]
        );
    }

    #[test]
    fn environment_activates_venv_and_ends_with_the_projects_own() {
        let spec = test_spec(
            &Venv::Layer(DEPS.into()),
            &[],
            &[("CI", "yes"), ("LANG", "de_DE.UTF-8"), ("MY_FLAG", "1")],
        );
        let path = env_value(&spec, "PATH").unwrap();
        assert_eq!(path, "/venv/bin:/usr/local/bin:/usr/bin:/bin");
        assert_eq!(env_value(&spec, "VIRTUAL_ENV"), Some("/venv"));
        assert_eq!(env_value(&spec, "HOME"), Some("/root"));
        // The image's own variables stay unless the server sets them.
        assert_eq!(env_value(&spec, "PYTHON_VERSION"), Some("3.12.4"));
        // [tool.ci] env wins over the server's settings, and comes last.
        assert_eq!(env_value(&spec, "CI"), Some("yes"));
        assert_eq!(env_value(&spec, "LANG"), Some("de_DE.UTF-8"));
        let tail: Vec<_> = spec.env.iter().rev().take(3).rev().collect();
        assert_eq!(tail, ["CI=yes", "LANG=de_DE.UTF-8", "MY_FLAG=1"]);

        let spec = test_spec(&Venv::Layer(DEPS.into()), &[], &[]);
        assert_eq!(env_value(&spec, "CI"), Some("true"));
        for spec in all_specs() {
            let path = env_value(&spec, "PATH").unwrap();
            assert!(path.starts_with("/venv/bin:"), "{}: {path}", spec.id);
        }
    }

    #[test]
    fn no_v_when_the_project_sets_its_verbosity() {
        let spec = test_spec(&Venv::Layer(DEPS.into()), &["-q"], &[]);
        assert_eq!(
            spec.args[..5],
            ["/venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider"]
        );
        assert_eq!(spec.args.last().map(String::as_str), Some("-q"));
    }

    #[test]
    fn the_users_pytest_arguments_come_after_ours() {
        let spec = test_spec(
            &Venv::Layer(DEPS.into()),
            &["--junitxml=/tmp/mine.xml", "-k", "add or sub"],
            &[],
        );
        assert_eq!(
            spec.args,
            [
                "/venv/bin/python",
                "-m",
                "pytest",
                "-v",
                "-p",
                "no:cacheprovider",
                "-o",
                "junit_family=xunit1",
                "--junitxml=/ci-report/junit.xml",
                "--junitxml=/tmp/mine.xml",
                "-k",
                "add or sub",
            ]
        );
    }

    #[test]
    fn installs_use_the_sandbox_network_and_the_file_size_cap() {
        let plan = plan(
            requirements(),
            Some(ProjectLayer::Install {
                requirements: vec!["/workspace".into()],
            }),
        );
        let [deps, project] = install_specs(&plan, None);
        assert_eq!(
            (deps.id.as_str(), project.id.as_str()),
            ("ci-j1-install", "ci-j1-install-project")
        );
        for spec in [&deps, &project] {
            assert_eq!(spec.network, Network::Slirp);
            assert_eq!(spec.max_file_size, Some(1 << 30));
            let inputs = mount(spec, install::INPUTS).unwrap();
            assert!(inputs.readonly);
            assert_eq!(inputs.source, paths().inputs());
            assert!(mount(spec, install::UV_DIR).unwrap().readonly);
            let ca = mount(spec, CA_IN_CONTAINER).unwrap();
            assert_eq!(
                (ca.source.as_path(), ca.readonly),
                (Path::new("/etc/ssl/corp.pem"), true)
            );
            assert_eq!(env_value(spec, "SSL_CERT_FILE"), Some(CA_IN_CONTAINER));
        }

        let (paths, image_env) = (paths(), image_env());
        let cfg = SpecConfig {
            install_network: Network::Host,
            ca_bundle: None,
            ..config(&paths, &image_env)
        };
        let tool = Tool {
            kind: Installer::Pip,
            version: String::new(),
        };
        let input = InstallInput {
            plan: &plan,
            tool: &tool,
            uv_dir: None,
            cache: None,
            max_file_size: 5,
        };
        let spec = install_deps(&cfg, &input);
        assert_eq!(spec.network, Network::Host);
        assert_eq!(spec.max_file_size, Some(5));
        assert!(mount(&spec, CA_IN_CONTAINER).is_none());
        assert!(mount(&spec, install::UV_DIR).is_none());
        assert_eq!(env_value(&spec, "SSL_CERT_FILE"), None);
    }

    #[test]
    fn the_workspace_is_writable_only_when_a_build_needs_a_copy() {
        let cases = [
            (plan(requirements(), None), false),
            (
                plan(
                    Deps::UvLock {
                        groups: vec![],
                        extras: vec![],
                    },
                    None,
                ),
                true,
            ),
            (
                plan(
                    requirements(),
                    Some(ProjectLayer::Install {
                        requirements: vec!["-e /workspace".into()],
                    }),
                ),
                true,
            ),
        ];
        for (plan, copy) in cases {
            assert_eq!(needs_build_copy(&plan), copy, "{plan:?}");
            for spec in install_specs(&plan, None) {
                let workspace = mount(&spec, WORKSPACE).unwrap();
                if copy {
                    assert_eq!(
                        (workspace.source.clone(), workspace.readonly),
                        (paths().build(), false)
                    );
                } else {
                    assert_eq!(
                        (workspace.source.clone(), workspace.readonly),
                        (paths().project(), true)
                    );
                }
            }
        }
    }

    #[test]
    fn installs_write_their_layer_and_the_job_side_of_the_installer_cache() {
        let plan = plan(requirements(), None);
        let [deps, project] = install_specs(&plan, None);
        let venv = mount(&deps, install::VENV).unwrap();
        assert_eq!(
            (venv.source.clone(), venv.readonly),
            (paths().deps_staging(), false)
        );
        assert_eq!(
            project.overlays,
            [OverlayMount {
                destination: install::VENV.into(),
                lower: vec![DEPS.into()],
                upper: Some(OverlayUpper {
                    upper: paths().venv_upper(),
                    work: paths().venv_work(),
                }),
            }]
        );

        let [deps, _] = install_specs(&plan, Some(CacheMount::Private));
        let cache = mount(&deps, install::UV_CACHE).unwrap();
        assert_eq!(
            (cache.source.clone(), cache.readonly),
            (paths().installer_cache(), false)
        );

        let [deps, _] = install_specs(&plan, Some(CacheMount::Shared(Path::new(SHARED_CACHE))));
        assert!(mount(&deps, install::UV_CACHE).is_none());
        let cache = deps
            .overlays
            .iter()
            .find(|o| o.destination == install::UV_CACHE)
            .unwrap();
        assert_eq!(cache.lower, [PathBuf::from(SHARED_CACHE)]);
        assert_eq!(
            cache.upper,
            Some(OverlayUpper {
                upper: paths().cache_upper(),
                work: paths().cache_work(),
            })
        );
    }
}
