//! Shared test context: a temp dir per test, the helper binary, a guard that removes the
//! container even when the test panics, and checks that nothing is left behind.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ci_runner::{BindMount, ContainerSpec, Limits, Network, Outcome, Tmpfs, UserNamespace};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The helper binary, built by cargo for this test run.
pub const HELPER: &str = env!("CARGO_BIN_EXE_ci-container-helper");

/// Cgroup parent of every test container, apart from a real server's `/ci`.
pub const CGROUP_PARENT: &str = "/ci-it";

/// The unpacked Python image (a directory), shared read-only by all tests.
pub fn rootfs() -> PathBuf {
    let path = std::env::var_os("CI_TEST_ROOTFS")
        .map(PathBuf::from)
        .expect(
            "CI_TEST_ROOTFS is not set: point it at an unpacked Python rootfs directory, e.g. \
         `mmdebstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
         bookworm /tmp/runner-rootfs <mirror>`",
        );
    assert!(
        path.join("usr/bin/python3").exists(),
        "CI_TEST_ROOTFS={} has no usr/bin/python3",
        path.display()
    );
    let path = reachable_rootfs(path);
    static MOUNTPOINTS: Once = Once::new();
    MOUNTPOINTS.call_once(|| {
        // Once, before containers share it; covers every destination the tests use.
        let mut spec = base_spec("it-setup", &path, Path::new("/"), Network::Host);
        spec.mounts.push(BindMount {
            source: "/etc/ssl/certs/ca-certificates.crt".into(),
            destination: "/etc/ci/ca.pem".into(),
            readonly: true,
        });
        spec.mounts.push(BindMount {
            source: std::env::temp_dir(),
            destination: "/deps".into(),
            readonly: false,
        });
        ci_runner::ensure_mountpoints(&path, &spec).expect("mount points");
    });
    path
}

/// The containers' root (an unprivileged host uid, or a normal user) resolves the rootfs
/// path itself, so it must be able to search every directory on the way. scripts/test
/// unpacks the image under `~/.cache`, and root's home is 0700: then the tests use a
/// mirror of hard links (no data copied) under the temp dir, made once.
fn reachable_rootfs(path: PathBuf) -> PathBuf {
    if ci_runner::check_reachable(&path, &USERNS).is_ok() {
        return path;
    }
    static MIRROR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MIRROR
        .get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            path.hash(&mut h);
            let mirror = std::env::temp_dir().join(format!("ci-runner-it-rootfs-{:x}", h.finish()));
            if !mirror.join("usr/bin/python3").exists() {
                let tmp = mirror.with_extension(format!("tmp{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&tmp);
                let copied = ["-al", "-a"].iter().any(|how| {
                    Command::new("cp")
                        .arg(how)
                        .arg(&path)
                        .arg(&tmp)
                        .status()
                        .is_ok_and(|s| s.success())
                        || {
                            let _ = std::fs::remove_dir_all(&tmp);
                            false
                        }
                });
                assert!(
                    copied,
                    "cannot mirror {} to {}",
                    path.display(),
                    tmp.display()
                );
                if std::fs::rename(&tmp, &mirror).is_err() {
                    // Another test process made it first.
                    let _ = std::fs::remove_dir_all(&tmp);
                }
            }
            ci_runner::check_reachable(&mirror, &USERNS).expect("mirror is reachable");
            mirror
        })
        .clone()
}

fn base_spec(id: &str, rootfs: &Path, workspace: &Path, network: Network) -> ContainerSpec {
    ContainerSpec {
        id: id.to_owned(),
        rootfs: rootfs.to_owned(),
        args: vec!["true".into()],
        env: vec![
            "HOME=/root".into(),
            "PYTHONUNBUFFERED=1".into(),
            "PYTHONDONTWRITEBYTECODE=1".into(),
            // Lets the tests find the container's processes from the host.
            format!("CI_IT_MARKER={id}"),
        ],
        cwd: "/workspace".into(),
        mounts: vec![BindMount {
            source: workspace.to_owned(),
            destination: "/workspace".into(),
            readonly: true,
        }],
        network,
        limits: Limits {
            memory_bytes: Some(512 << 20),
            pids: Some(256),
            ..Limits::default()
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
        cgroup_parent: CGROUP_PARENT.into(),
        user_namespace: Some(USERNS),
        cgroups: ci_runner::CgroupMode::Runtime,
        max_file_size: None,
    }
}

/// Every test container runs in a user namespace, as a server run by root does.
pub const USERNS: UserNamespace = UserNamespace::ROOTFUL_DEFAULT;

/// Pids of processes whose argv[0] ends in `program` and that have `arg` as an argument.
pub fn processes_with_cmdline(program: &str, arg: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args[0].ends_with(program.as_bytes()) && args[1..].contains(&arg.as_bytes())
        })
        .collect()
}

/// The cgroups of process `pid`, one `ID:CONTROLLERS:PATH` line per hierarchy, as the
/// test (in the host's cgroup namespace) sees them.
pub fn cgroups_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// One container's worth of temp dirs. Dropping it removes the container if a test
/// failed halfway and checks nothing was left.
pub struct TestContext {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    /// Parent of the container's cgroups.
    pub cgroup_parent: String,
    /// Run the helper as this (uid, gid) instead of root: a rootless server.
    pub user: Option<(u32, u32)>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestContext {
    pub fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("it-{name}-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("ci-runner-it")
            .tempdir()
            .unwrap();
        // The container's root (an unprivileged host uid) must reach the workspace and
        // the bundle's files, whatever the umask.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["bundle", "state", "workspace"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Self {
            id,
            dir,
            rootfs: rootfs(),
            cgroup_parent: CGROUP_PARENT.into(),
            user: None,
        }
    }

    /// A context whose helper runs as `user` (with its primary group), as a server run
    /// by that user would: its own id as the container's root, limits through the cgroup
    /// subtree root delegated to it. The temp dirs become the user's.
    pub fn rootless(name: &str, user: &nix::unistd::User) -> Self {
        let mut ctx = Self::new(name);
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        for sub in ["", "bundle", "state", "workspace"] {
            std::os::unix::fs::chown(ctx.dir.path().join(sub), Some(uid), Some(gid)).unwrap();
        }
        ctx.user = Some((uid, gid));
        ctx.cgroup_parent = ci_runner::probe::delegated_parent(&user.name);
        ctx
    }

    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn result_path(&self) -> PathBuf {
        self.dir.path().join("result.json")
    }

    /// A spec running `args` with the workspace bound read-only.
    pub fn spec(&self, network: Network, args: &[&str]) -> ContainerSpec {
        let mut spec = base_spec(&self.id, &self.rootfs, &self.workspace(), network);
        spec.args = args.iter().map(|s| (*s).to_owned()).collect();
        spec.cgroup_parent = self.cgroup_parent.clone();
        if let Some((uid, gid)) = self.user {
            let _ = (uid, gid);
            spec.user_namespace = Some(UserNamespace::Caller);
            spec.cgroups = ci_runner::CgroupMode::Delegated;
        }
        spec
    }

    /// Starts the helper the way the server does; stdout is read by a thread, line by line.
    pub fn spawn(&self, spec: &ContainerSpec) -> Running {
        ci_runner::prepare_bundle(&self.bundle(), spec).unwrap();
        let mut cmd = Command::new(HELPER);
        cmd.args(ci_runner::container_args(
            &self.bundle(),
            &self.state_root(),
            &self.id,
            &self.result_path(),
            false,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.user {
            // What `setpriv --reuid --regid --clear-groups` does: std drops the
            // supplementary groups too when root sets the uid.
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        let stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
        Running {
            child,
            lines,
            reader: Some(reader),
            err_reader: Some(err_reader),
            result: self.result_path(),
        }
    }

    /// Runs to completion.
    pub fn run(&self, spec: &ContainerSpec) -> Finished {
        self.spawn(spec).wait()
    }

    /// Runs the helper's `__cleanup` (one id, or all with `None`) as the context's user;
    /// returns its stdout.
    pub fn helper_cleanup(&self, id: Option<&str>) -> String {
        let mut cmd = Command::new(HELPER);
        cmd.args(ci_runner::cleanup_args(&self.state_root(), id));
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Checks that slirp4netns `slirp` is in every cgroup of the container's init
    /// `init`, which are the container's own (`<cgroup_parent>/<id>`).
    pub fn assert_in_container_cgroups(&self, slirp: i32, init: i32) {
        let own = format!("{}/{}", self.cgroup_parent, self.id);
        let (slirp, init) = (cgroups_of(slirp), cgroups_of(init));
        assert_eq!(slirp, init, "slirp4netns's cgroups differ from init's");
        for ctrl in ["memory", "pids", "cpu"] {
            let line = init.iter().find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == ctrl))
            });
            assert!(
                line.is_some_and(|l| l.ends_with(&format!(":{own}"))),
                "no {ctrl} cgroup {own} in {init:?}"
            );
        }
    }

    /// The container's cgroup directories that still exist.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = format!("{}/{}", self.cgroup_parent.trim_start_matches('/'), self.id);
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .map(|e| e.unwrap().path().join(&rel))
            .filter(|p| p.exists())
            .collect()
    }

    /// Host pids of processes that carry this test's marker in their environment.
    pub fn processes(&self) -> Vec<i32> {
        let marker = format!("CI_IT_MARKER={}", self.id);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// [`Self::processes`], polled for a moment: a process in the middle of execve(2) has
    /// no readable environment.
    pub fn wait_for_processes(&self) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let procs = self.processes();
            if !procs.is_empty() || Instant::now() > deadline {
                return procs;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Nothing left: no cgroup directory, no state directory, no process.
    pub fn assert_clean(&self) {
        // Processes killed by SIGKILL may take a moment to be fully gone; poll.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let cgroups = self.cgroup_dirs();
            let state = self.state_root().join(&self.id).exists();
            let procs = self.processes();
            if cgroups.is_empty() && !state && procs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: cgroups {cgroups:?}, state dir {state}, processes {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        if self.state_root().join(&self.id).exists() || !self.cgroup_dirs().is_empty() {
            let _ = Command::new(HELPER)
                .args(ci_runner::cleanup_args(&self.state_root(), Some(&self.id)))
                .status();
        }
        if !std::thread::panicking() {
            self.assert_clean();
        }
    }
}

/// A helper process that is running.
pub struct Running {
    pub child: Child,
    pub lines: Receiver<String>,
    reader: Option<JoinHandle<String>>,
    err_reader: Option<JoinHandle<String>>,
    result: PathBuf,
}

/// A helper process that has exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub outcome: Option<Outcome>,
}

impl Finished {
    /// The outcome, with the helper's stderr in the message if there is none.
    pub fn outcome(&self) -> &Outcome {
        self.outcome.as_ref().unwrap_or_else(|| {
            panic!(
                "no outcome; helper {:?}, stderr:\n{}\nstdout:\n{}",
                self.status, self.stderr, self.stdout
            )
        })
    }
}

impl Running {
    /// Waits (with a deadline) for a line of container output satisfying `pred`.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no matching output line: {e}"),
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn wait(mut self) -> Finished {
        let status = self.child.wait().unwrap();
        let stdout = self.reader.take().unwrap().join().unwrap();
        let stderr = self.err_reader.take().unwrap().join().unwrap();
        // `IT_DEBUG=1 cargo test ... -- --nocapture` shows what every container printed.
        if std::env::var_os("IT_DEBUG").is_some() {
            eprintln!("=== stdout:\n{stdout}=== stderr:\n{stderr}");
        }
        let outcome = std::fs::read(&self.result)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap());
        Finished {
            status,
            stdout,
            stderr,
            outcome,
        }
    }

    /// Waits for the helper without reading the pipes to the end (its container may
    /// outlive it and keep them open).
    pub fn wait_helper_only(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}
