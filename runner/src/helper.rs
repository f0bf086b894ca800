//! The body of the per-container helper process: build, start, supervise and remove one
//! container with libcontainer, and report how it ended.
//!
//! libcontainer must not run inside the server: it chdirs the whole process into the
//! state dir, clone3()s from the calling thread and sets the caller non-dumpable, which
//! hangs or races in a multi-threaded tokio process. So every container gets a fresh,
//! single-threaded helper process and this module runs in it.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Counters};
use crate::cleanup;
use crate::error::Error;
use crate::net;
use crate::slirp::{self, Slirp};
use crate::spec::{validate_id, HelperPlan};

/// Set (to anything) in the helper's environment, it prints the time each of its steps took
/// to stderr, a line each: [`TIMING_PREFIX`] `STEP MS` (`ci-server serve --log-timings`).
pub const TIMINGS_ENV: &str = "CI_RUNNER_TIMINGS";

/// How a timing line of the helper starts.
pub const TIMING_PREFIX: &str = "ci-runner timing: ";

/// The helper's steps as they pass, printed when [`TIMINGS_ENV`] is set.
struct Laps {
    on: bool,
    last: std::time::Instant,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            on: std::env::var_os(TIMINGS_ENV).is_some(),
            last: std::time::Instant::now(),
        }
    }

    /// The step that ends now.
    fn lap(&mut self, step: &str) {
        let now = std::time::Instant::now();
        if self.on {
            // Never eprintln!: it panics when stderr is gone (the server died), and the
            // helper must go on to remove its container.
            use std::io::Write;
            let ms = (now - self.last).as_secs_f64() * 1000.0;
            let _ = writeln!(std::io::stderr(), "{TIMING_PREFIX}{step} {ms:.2}");
        }
        self.last = now;
    }
}

/// How a container ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Exit status of the container's init process, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that killed the init process, if one did (9 for OOM kills and kills on request).
    pub signal: Option<i32>,
    /// The OOM killer killed at least one process in the container's cgroup.
    pub oom_killed: bool,
    /// At least one fork/clone failed because of the pids limit.
    pub pids_limit_hit: bool,
    /// The helper got SIGTERM/SIGINT/SIGHUP and killed the container.
    pub killed_by_request: bool,
}

/// Signals that make the helper kill its container. Blocked for the helper's whole life
/// and read from a signalfd, so one arriving while the container is being built is not
/// lost and cannot kill the helper halfway (leaving state behind): it is acted on as
/// soon as the wait begins.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// [`crate::UserNamespace::Caller`]: when the bundle asks for it and this process is not
/// in a user namespace yet, creates one mapping this (normal) user's uid and gid to 0 and
/// re-executes the same binary with the same arguments inside it. Returns only when there
/// is nothing to do (or it failed); otherwise the process image is replaced.
///
/// Re-executing matters: the kernel ties a process's memory to the user namespace it was
/// exec'd in, and libcontainer's non-dumpable init inherits that; only a helper exec'd in
/// the namespace has the CAP_SYS_PTRACE there that opening init's /proc/PID/ns files
/// needs. Call it before any thread exists: unshare(CLONE_NEWUSER) refuses otherwise.
pub fn enter_own_userns(bundle_dir: &Path) -> Result<(), Error> {
    let spec = Spec::load(bundle_dir.join("config.json")).map_err(Error::LoadBundle)?;
    if !HelperPlan::of(&spec)?.enter_userns {
        return Ok(());
    }
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").map_err(|source| Error::Read {
        path: "/proc/self/uid_map".into(),
        source,
    })?;
    let initial = uid_map.split_whitespace().eq(["0", "0", "4294967295"]);
    if !initial {
        // Already inside one: ours, after the re-exec below.
        return Ok(());
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if uid.is_root() {
        return Err(Error::InvalidSpec(
            "a user namespace of the caller's own ids is for a helper run by a normal user; \
             root maps a range"
                .into(),
        ));
    }
    let err = |what| move |e| Error::UserNamespace(what, e);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(err("create a user namespace"))?;
    // Without CAP_SETGID in the parent namespace, setgroups(2) must be disabled before a
    // gid_map may be written (CVE-2014-8989, user_namespaces(7)).
    for (file, content) in [
        ("setgroups", "deny".to_owned()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ] {
        std::fs::write(format!("/proc/self/{file}"), content).map_err(|e| {
            Error::UserNamespace(
                "write the id maps of the user namespace",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .map(|a| {
            use std::os::unix::ffi::OsStringExt;
            std::ffi::CString::new(a.into_vec()).unwrap_or_default()
        })
        .collect();
    let exe = c"/proc/self/exe";
    let Err(e) = nix::unistd::execv(exe, &args);
    Err(Error::UserNamespace("re-execute in the user namespace", e))
}

/// Builds and starts the container of `bundle_dir/config.json`, waits for it and
/// removes it. See the crate docs for the process contract.
///
/// Container state (and cgroups) are removed at the end whatever happened. When the
/// container ran to completion its [`Outcome`] is written to `result` as JSON (atomically,
/// via a temporary file), even if removing it afterwards failed; the error is returned.
pub fn run_helper(
    bundle_dir: &Path,
    state_root: &Path,
    id: &str,
    result: &Path,
) -> Result<Outcome, Error> {
    let mut laps = Laps::new();
    validate_id(id)?;
    let signals = block_stop_signals()?;
    // libcontainer chdirs into the state dir during build and start: relative paths
    // given to us would then point elsewhere.
    let bundle_dir = canonical(bundle_dir)?;
    fs_err::create_dir_all(state_root).map_err(|source| Error::Write {
        path: state_root.to_owned(),
        source,
    })?;
    let state_root = canonical(state_root)?;
    // Checked here, before anything that cleans up on failure: that cleanup would remove
    // the other container of the same id (libcontainer's build() would refuse too, but
    // only inside the block whose failure triggers cleanup).
    if state_root.join(id).exists() {
        return Err(Error::AlreadyExists { id: id.to_owned() });
    }
    let result = std::path::absolute(result).map_err(|source| Error::Write {
        path: result.to_owned(),
        source,
    })?;
    let spec = Spec::load(bundle_dir.join("config.json")).map_err(Error::LoadBundle)?;
    let plan = HelperPlan::of(&spec)?;
    let linux = spec.linux().as_ref();
    let cgroup_path = linux.and_then(|l| l.cgroups_path().clone());
    let new_namespace = |typ: LinuxNamespaceType| {
        linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ && n.path().is_none()))
    };
    if new_namespace(LinuxNamespaceType::User) && !nix::unistd::geteuid().is_root() {
        // libcontainer could create it, but its init is then out of the helper's reach
        // (see UserNamespace::Caller).
        return Err(Error::InvalidSpec(
            "a user namespace with a range of ids needs a helper run by root; a normal \
             user's containers share the helper's namespace (UserNamespace::Caller)"
                .into(),
        ));
    }
    let network = NetworkSetup {
        own_netns: new_namespace(LinuxNamespaceType::Network),
        slirp_log: plan.slirp.then(|| bundle_dir.join(slirp::LOG_FILE)),
    };

    laps.lap("load the bundle");
    let run = prepare_cgroups(&plan, cgroup_path.as_deref())
        .and_then(|()| launch_and_wait(&bundle_dir, &state_root, id, &signals, &network, &mut laps))
        .map(|(outcome, mut container, slirp)| {
            // delete() SIGKILLs stragglers and removes the cgroups and the state dir.
            if let Err(err) = container.delete(true) {
                // The cleanup below retries by other means; only its failure counts.
                tracing::warn!(id, error = %crate::error::chain(&err), "delete failed");
            }
            // Reaped only now: its exit (told when init exited) overlaps the delete.
            drop(slirp);
            outcome
        });
    laps.lap("delete the container");
    // Always, also after success: a no-op when delete() above worked.
    let cleanup = cleanup::cleanup_with_cgroup(&state_root, id, cgroup_path.as_deref());
    reap_children();
    laps.lap("check nothing is left");

    if let Ok(outcome) = &run {
        write_result(&result, outcome)?;
    }
    match (run, cleanup) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Err(run), Ok(())) => Err(run),
        (Ok(_), Err(cleanup)) => Err(cleanup),
        (Err(run), Err(cleanup)) => Err(Error::RunAndCleanup {
            run: Box::new(run),
            cleanup: Box::new(cleanup),
        }),
    }
}

/// What the helper does to the container's network namespace before start.
struct NetworkSetup {
    own_netns: bool,
    /// Attach slirp4netns, logging there.
    slirp_log: Option<PathBuf>,
}

/// [`crate::CgroupMode::Delegated`]: the helper creates the cgroups and writes the limits.
fn prepare_cgroups(plan: &HelperPlan, cgroup_path: Option<&Path>) -> Result<(), Error> {
    match (&plan.delegated_limits, cgroup_path) {
        (Some(limits), Some(path)) => cgroup::prepare_delegated(path, limits),
        (Some(_), None) => Err(Error::Delegation("the bundle has no cgroups path".into())),
        (None, _) => Ok(()),
    }
}

/// Everything between "nothing exists yet" and "init has been reaped". The returned
/// container still exists (stopped) so the caller can delete it after reading counters;
/// slirp4netns, if any, is exiting.
fn launch_and_wait(
    bundle_dir: &Path,
    state_root: &Path,
    id: &str,
    signals: &SignalFd,
    network: &NetworkSetup,
    laps: &mut Laps,
) -> Result<(Outcome, Container, Option<Slirp>), Error> {
    // Read in the helper's own (the host's) namespace, before the container exists.
    let unreachable: Vec<net::Ipv4Net> = if network.slirp_log.is_some() {
        std::iter::once(net::LINK_LOCAL)
            .chain(net::host_addresses())
            .collect()
    } else {
        Vec::new()
    };
    let (stdin, stdout, stderr) = container_stdio()?;
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
        .and_then(|b| b.validate_id())
        .map(|b| {
            b.with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .with_executor(PayloadExecutor)
                .as_init(bundle_dir)
                .with_systemd(false)
                .with_detach(false)
        })
        .and_then(|b| b.build())
        .map_err(|source| Error::Build {
            id: id.to_owned(),
            source: Box::new(source),
        })?;
    laps.lap("build (namespaces, mounts, init waiting)");
    // The state says Created: init is our child (CLONE_PARENT from libcontainer's
    // intermediate process) and blocks on the notify socket until start().
    let pid = container.pid().ok_or_else(|| Error::Wait(Errno::ESRCH))?;
    let pidfd = pidfd_open(pid).map_err(Error::Wait)?;

    if network.own_netns {
        net::configure(pid, &unreachable)?;
    }
    // Told to exit once init has; dropping it reaps slirp4netns (killing it if need be),
    // also on every error path. It lives in the container's cgroups (see slirp::start):
    // the container's kill and delete() SIGKILL it with the rest, which its reaping here
    // copes with, and delete() can remove the cgroups once it has exited.
    let mut slirp: Option<Slirp> = match &network.slirp_log {
        Some(log) => {
            let cgroup_path = container
                .spec()
                .map_err(|source| Error::Build {
                    id: id.to_owned(),
                    source: Box::new(source),
                })?
                .cgroup_path;
            let place = |slirp_pid| cgroup::join(id, &cgroup_path, slirp_pid, "slirp4netns");
            Some(slirp::start(pid, log, place)?)
        }
        None => None,
    };
    laps.lap("network");
    container.start().map_err(|source| Error::Start {
        id: id.to_owned(),
        source: Box::new(source),
    })?;
    laps.lap("start");

    let killed_by_request = wait_for_exit(&mut container, &pidfd, signals)?;
    if let Some(slirp) = &mut slirp {
        slirp.tell_to_exit();
    }
    let status = loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(Error::Wait)?,
        }
    };
    // Read before delete(): it removes the cgroup and the counters with it.
    let counters = container
        .spec()
        .ok()
        .map(|config| cgroup::read_counters(&config.cgroup_path))
        .unwrap_or_default();
    let outcome = outcome(status, counters, killed_by_request);
    laps.lap("run (the container's process, to its exit)");
    tracing::debug!(id, ?outcome, ?counters, "container exited");
    Ok((outcome, container, slirp))
}

/// Polls the init's pidfd (readable once it has exited) and the signalfd. On a stop
/// signal, kills everything in the container and keeps waiting for init to go.
/// When a pid namespace's init dies the kernel SIGKILLs the rest of the namespace and
/// init's exit completes only after they are gone (pid_namespaces(7)), so once the pidfd
/// is readable the container holds no more processes.
fn wait_for_exit(
    container: &mut Container,
    pidfd: &OwnedFd,
    signals: &SignalFd,
) -> Result<bool, Error> {
    let mut killed = false;
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::Wait(e)),
            Ok(_) => {}
        }
        let exited = fds[0].any().unwrap_or(false);
        let signalled = fds[1].any().unwrap_or(false);
        if signalled {
            if let Ok(Some(info)) = signals.read_signal() {
                tracing::info!(
                    signal = info.ssi_signo,
                    "stop requested, killing the container"
                );
            }
            if !killed {
                killed = true;
                kill_container(container, pidfd);
            }
        }
        if exited {
            return Ok(killed);
        }
    }
}

/// SIGKILL to every process in the container's cgroup (libcontainer freezes the cgroup
/// first, so a fork bomb cannot outrun it), and to init directly as a fallback, which
/// takes the whole pid namespace down with it.
fn kill_container(container: &mut Container, pidfd: &OwnedFd) {
    if let Err(err) = container.kill(Signal::SIGKILL, true) {
        tracing::warn!(error = %crate::error::chain(&err), "kill via cgroup failed");
    }
    if let Err(err) = pidfd_send_signal(pidfd, Signal::SIGKILL) {
        // ESRCH: init is already gone.
        if err != Errno::ESRCH {
            tracing::warn!(%err, "pidfd_send_signal failed");
        }
    }
}

fn outcome(status: WaitStatus, counters: Counters, killed_by_request: bool) -> Outcome {
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    let oom_killed = match counters.oom_kills {
        Some(n) => n > 0,
        // Kernels before 4.13 lack the oom_kill counter: a SIGKILL we did not send plus a
        // memory limit that was hit is the best evidence left.
        None => {
            !killed_by_request
                && signal == Some(libc::SIGKILL)
                && counters.memory_failcnt.is_some_and(|n| n > 0)
        }
    };
    Outcome {
        exit_code,
        signal,
        oom_killed,
        pids_limit_hit: counters.pids_max_events.is_some_and(|n| n > 0),
        killed_by_request,
    }
}

/// Reaps what libcontainer left: when build() fails it returns without waiting for its
/// intermediate and init processes, which would otherwise linger as zombies until PID 1
/// adopts and reaps them. By now cleanup has SIGKILLed everything in the container's
/// cgroup, so they exit within milliseconds; the deadline only bounds a pathological
/// case. The helper has no other children, so waiting for any child is safe here.
fn reap_children() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(WaitStatus::StillAlive) => {
                tracing::warn!("child processes still running; leaving them to init");
                return;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            // ECHILD: nothing left.
            Err(_) => return,
        }
    }
}

fn block_stop_signals() -> Result<SignalFd, Error> {
    let set = stop_signals();
    set.thread_block().map_err(Error::Signals)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(Error::Signals)
}

/// stdin is /dev/null; stdout and stderr are two duplicates of our fd 1 so both streams
/// share one pipe and keep their relative order. They must be distinct fds: init dup2()s
/// each onto 0/1/2 and then closes the original.
fn container_stdio() -> Result<(OwnedFd, OwnedFd, OwnedFd), Error> {
    let stdin = open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(Error::Stdio)?;
    let dup_stdout = || {
        fcntl(libc::STDOUT_FILENO, FcntlArg::F_DUPFD_CLOEXEC(3))
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(Error::Stdio)
    };
    // SAFETY: open() returned a new fd that nothing else owns.
    let stdin = unsafe { OwnedFd::from_raw_fd(stdin) };
    Ok((stdin, dup_stdout()?, dup_stdout()?))
}

/// libcontainer's default executor, run after the process has restored the signal state
/// a fresh process would have. execve(2) keeps the signal mask and ignored dispositions,
/// so without this the payload would start with SIGTERM/SIGINT/SIGHUP blocked (from the
/// helper) and SIGPIPE ignored (the Rust runtime ignores it in every binary).
#[derive(Clone)]
struct PayloadExecutor;

impl Executor for PayloadExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        SigSet::all()
            .thread_unblock()
            .map_err(|e| ExecutorError::Other(format!("unblock signals: {e}")))?;
        // SAFETY: restoring a default disposition installs no handler code.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) }
            .map_err(|e| ExecutorError::Other(format!("reset SIGPIPE: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// pidfd_open(2): a handle on init that poll() reports readable when it exits. Safe from
/// pid reuse because init is our child and stays a zombie until we waitpid() it.
fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just created this fd for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: Signal) -> Result<(), Errno> {
    // SAFETY: plain syscall; a null siginfo makes it behave like kill(2).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

fn canonical(path: &Path) -> Result<PathBuf, Error> {
    fs_err::canonicalize(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_result(path: &Path, outcome: &Outcome) -> Result<(), Error> {
    let json = serde_json::to_vec(outcome).map_err(|source| Error::Encode {
        what: "outcome",
        source,
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs_err::write(&tmp, json).map_err(|source| Error::Write {
        path: tmp.clone(),
        source,
    })?;
    // rename(2) is atomic: the server never reads a half-written result.
    fs_err::rename(&tmp, path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(oom: Option<u64>, failcnt: Option<u64>, pids: Option<u64>) -> Counters {
        Counters {
            oom_kills: oom,
            memory_failcnt: failcnt,
            pids_max_events: pids,
        }
    }

    fn check(status: WaitStatus, c: Counters, killed: bool, expected: Outcome) {
        assert_eq!(outcome(status, c, killed), expected);
    }

    fn out(
        exit_code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
        pids_limit_hit: bool,
        killed_by_request: bool,
    ) -> Outcome {
        Outcome {
            exit_code,
            signal,
            oom_killed,
            pids_limit_hit,
            killed_by_request,
        }
    }

    #[test]
    fn outcomes() {
        let pid = Pid::from_raw(1);
        let none = counters(Some(0), Some(0), Some(0));
        check(
            WaitStatus::Exited(pid, 0),
            none,
            false,
            out(Some(0), None, false, false, false),
        );
        check(
            WaitStatus::Exited(pid, 3),
            none,
            false,
            out(Some(3), None, false, false, false),
        );
        check(
            WaitStatus::Signaled(pid, Signal::SIGKILL, false),
            counters(Some(1), Some(40), Some(0)),
            false,
            out(None, Some(9), true, false, false),
        );
        check(
            WaitStatus::Signaled(pid, Signal::SIGKILL, false),
            counters(Some(0), Some(0), Some(5)),
            true,
            out(None, Some(9), false, true, true),
        );
        // No oom_kill counter: fall back to failcnt + an unrequested SIGKILL.
        check(
            WaitStatus::Signaled(pid, Signal::SIGKILL, false),
            counters(None, Some(3), None),
            false,
            out(None, Some(9), true, false, false),
        );
        check(
            WaitStatus::Signaled(pid, Signal::SIGKILL, false),
            counters(None, Some(3), None),
            true,
            out(None, Some(9), false, false, true),
        );
        // A process that exits normally after surviving an OOM kill of a child.
        check(
            WaitStatus::Exited(pid, 1),
            counters(Some(1), Some(9), None),
            false,
            out(Some(1), None, true, false, false),
        );
    }

    #[test]
    fn outcome_json_shape() {
        let json = serde_json::to_value(out(Some(3), None, false, true, false)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"exit_code": 3, "signal": null, "oom_killed": false,
                "pids_limit_hit": true, "killed_by_request": false})
        );
    }

    #[test]
    fn result_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        let o = out(Some(0), None, false, false, false);
        write_result(&path, &o).unwrap();
        let back: Outcome = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, o);
        assert!(!dir.path().join("result.json.tmp").exists());
    }
}
