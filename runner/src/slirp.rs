//! slirp4netns: user-mode NAT between a container's own network namespace and the
//! host's, for [`crate::Network::Slirp`].
//!
//! slirp4netns opens a tap device inside the namespace and turns the container's packets
//! into ordinary socket calls of its own process in the host's namespace, so the
//! container gets outbound TCP/UDP and DNS (10.0.2.3) without any interface, route or
//! firewall rule on the host. The helper starts it between `build()` and `start()`, waits
//! until the interface is configured (`--ready-fd`), and stops it once the container has
//! exited. Its `--exit-fd` is a pipe only the helper holds: if the helper dies, even by
//! SIGKILL, the pipe closes and slirp4netns exits, so it cannot outlive its container.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{pipe2, Pid};

use crate::error::Error;

/// The binary's name, looked up in `PATH` (then `/usr/bin`).
pub const BINARY: &str = "slirp4netns";

/// Where a container's slirp4netns diagnostics go, inside its bundle directory.
pub const LOG_FILE: &str = "slirp4netns.log";

/// How long slirp4netns may take to configure the interface (it takes about 10 ms).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// slirp4netns in `PATH`, else `/usr/bin/slirp4netns`, if it exists.
pub fn find() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(BINARY))
        .find(|p| p.is_file())
}

/// A running slirp4netns; stopped (and reaped) on [`Slirp::stop`] or drop.
pub struct Slirp {
    child: Option<Child>,
    exit_w: Option<OwnedFd>,
}

/// Starts slirp4netns for the network namespace of `pid` and waits until `tap0` is
/// configured (10.0.2.100/24, default route via 10.0.2.2, MTU 65520). It runs with the
/// helper's credentials: root, or root of the helper's own user namespace, which owns the
/// container's network namespace then. Diagnostics go to `log`.
///
/// `--disable-host-loopback` makes slirp4netns refuse connections to the host's
/// 127.0.0.0/8 (through the gateway 10.0.2.2); `--enable-sandbox` puts slirp4netns itself
/// in an empty mount namespace without capabilities, `--enable-seccomp` limits its
/// syscalls, since it parses packets a job controls.
///
/// `place` gets slirp4netns's pid once the interface is up, before the container starts:
/// the helper moves it into the container's cgroups there, so that its memory, CPU and
/// pids count against the job's limits (it works for the job: a job that floods it pays
/// for it) and the container's kill takes it along. Not sooner: the container's devices
/// cgroup does not allow `/dev/net/tun`, which slirp4netns opens while it configures the
/// interface (joining first failed at random with "Permission denied"). Its failure stops
/// slirp4netns.
pub fn start(
    pid: Pid,
    log: &Path,
    place: impl FnOnce(Pid) -> Result<(), Error>,
) -> Result<Slirp, Error> {
    let binary = find().ok_or_else(|| {
        Error::Slirp(format!(
            "{BINARY} not found in PATH (Debian package slirp4netns)"
        ))
    })?;
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Slirp(format!("pipe: {e}")));
    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let log_file = fs_err::File::create(log).map_err(|source| Error::Write {
        path: log.to_owned(),
        source,
    })?;
    let log_err = log_file.try_clone().map_err(|source| Error::Write {
        path: log.to_owned(),
        source,
    })?;

    let mut cmd = Command::new(&binary);
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
    ])
    .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
    .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
    .arg(pid.to_string())
    .arg("tap0")
    .stdin(Stdio::null())
    // Never the helper's stdout: that pipe is the job's log, and the server reads it
    // until every writer is gone.
    .stdout(Stdio::from(log_file.into_parts().0))
    .stderr(Stdio::from(log_err.into_parts().0));
    let (ready_raw, exit_raw) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    // SAFETY: only async-signal-safe calls (fcntl, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [ready_raw, exit_raw] {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            // Belt and braces next to --exit-fd.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| Error::Slirp(format!("spawn {}: {e}", binary.display())))?;
    // Only the child may hold these ends: EOF on ready_r then means it died.
    drop(ready_w);
    drop(exit_r);
    let slirp_pid = Pid::from_raw(child.id() as i32);
    let mut slirp = Slirp {
        child: Some(child),
        exit_w: Some(exit_w),
    };
    match wait_ready(&ready_r) {
        Ok(()) => {
            tracing::debug!(elapsed = ?started.elapsed(), "slirp4netns ready");
            if let Err(e) = place(slirp_pid) {
                slirp.stop();
                return Err(e);
            }
            Ok(slirp)
        }
        Err(why) => {
            slirp.stop();
            let detail = std::fs::read_to_string(log).unwrap_or_default();
            Err(Error::Slirp(format!("{why}: {}", detail.trim())))
        }
    }
}

fn wait_ready(ready: &OwnedFd) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not ready after {READY_TIMEOUT:?}"));
        }
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Err(Errno::EINTR) | Ok(0) => continue,
            Err(e) => return Err(format!("poll: {e}")),
            Ok(_) => {}
        }
        let mut buf = [0u8; 1];
        return match nix::unistd::read(ready.as_raw_fd(), &mut buf) {
            Ok(1) if buf[0] == b'1' => Ok(()),
            Ok(0) => Err("exited before the network was ready".into()),
            Ok(_) => Err(format!("unexpected readiness byte {:?}", buf[0])),
            Err(e) => Err(format!("read its readiness pipe: {e}")),
        };
    }
}

impl Slirp {
    /// Closes the exit pipe: slirp4netns exits on EOF. Does not wait.
    pub fn tell_to_exit(&mut self) {
        self.exit_w = None;
    }

    /// Tells it to exit, waits briefly (its exit takes some 20 ms: the sandbox's mount
    /// namespace goes with it), then kills it; always reaps it.
    pub fn stop(&mut self) {
        self.tell_to_exit();
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        tracing::warn!("slirp4netns did not exit on its exit pipe; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        let started = Instant::now();
        self.stop();
        tracing::debug!(waited = ?started.elapsed(), "slirp4netns reaped");
    }
}
