//! Runs one job: the image, the install container, the test container, and the verdict.
//!
//! Containers are never started in this process: each one is a helper process
//! (`ci-server __container ...`, see `ci_runner::helper_main`) whose stdout carries the
//! container's merged output. libcontainer changes the caller's cwd and forks from whatever
//! thread calls it, which a multi-threaded server cannot allow (shared/notes/libcontainer.md).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ci_runner::{BindMount, ContainerSpec, Limits, Network, Outcome, Tmpfs};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::config::format_size;
use crate::db::Db;
use crate::image::ImageProvider;
use crate::jobs::{Control, StopReason};
use crate::logs::{Appended, LiveLog, LogStore};
use crate::model::{now_ms, Job, Phase, Status};

/// What every job run needs from the server's configuration.
pub struct RunContext {
    /// The binary that has the `__container` and `__cleanup` subcommands (this server's own).
    pub helper_exe: PathBuf,
    pub state_root: PathBuf,
    pub jobs_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Cache entries unused for this long are removed ([`crate::cache::collect`]).
    pub cache_max_age: Duration,
    pub image: ImageProvider,
    pub ca_bundle: Option<PathBuf>,
    pub memory_limit: u64,
    pub pids_limit: i64,
    pub tmp_size: u64,
    pub log_cap: u64,
    pub cgroup_parent: String,
    /// User namespace, cgroups and install network of every job (`sandbox::plan`).
    pub sandbox: crate::sandbox::Sandbox,
}

impl RunContext {
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    pub fn remove_job_dir(&self, id: &str) {
        let dir = self.job_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove job directory");
            }
        }
    }

    /// Removes a container a helper left behind (the helper was killed).
    pub async fn cleanup_container(&self, id: &str) {
        let status = tokio::process::Command::new(&self.helper_exe)
            .args(ci_runner::cleanup_args(&self.state_root, Some(id)))
            .stdin(Stdio::null())
            .status()
            .await;
        if !status.as_ref().is_ok_and(|s| s.success()) {
            tracing::error!(
                container = id,
                ?status,
                "cleanup of a leftover container failed"
            );
        }
    }
}

/// How a job ended.
struct Ending {
    status: Status,
    exit_code: Option<i32>,
    reason: Option<String>,
}

impl Ending {
    fn error(reason: impl Into<String>) -> Ending {
        Ending {
            status: Status::Error,
            exit_code: None,
            reason: Some(reason.into()),
        }
    }
}

/// Runs a job to its end and records the result. Never fails: every failure becomes the job's
/// status and a line in its log.
pub async fn run_job(ctx: &RunContext, db: &Db, logs: &LogStore, mut job: Job, control: &Control) {
    let log = match logs.open_live(&job.id, ctx.log_cap) {
        Ok(log) => log,
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "cannot open job log");
            job.status = Status::Error;
            job.reason = Some(format!("cannot open the job's log: {e}"));
            job.finished_ms = Some(now_ms());
            let _ = db.put_job(&job);
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(job.timeout_secs);
    job.status = Status::Running;
    job.started_ms = Some(now_ms());
    tracing::info!(job = %job.id, "job started");

    let ending = execute(ctx, db, &mut job, &log, control, deadline).await;

    job.status = ending.status;
    job.phase = None;
    job.exit_code = ending.exit_code;
    job.reason = ending.reason;
    job.finished_ms = Some(now_ms());
    let secs = (job.finished_ms.unwrap_or(0) - job.started_ms.unwrap_or(0)) as f64 / 1000.0;
    let summary = match &job.reason {
        Some(reason) => format!("result: {}: {reason} ({secs:.1}s)", job.status.as_str()),
        None => format!("result: {} ({secs:.1}s)", job.status.as_str()),
    };
    if let Err(e) = log.note(&summary) {
        tracing::error!(job = %job.id, error = %e, "cannot write job log");
    }
    ctx.remove_job_dir(&job.id);
    if let Err(e) = db.put_job(&job) {
        tracing::error!(job = %job.id, error = %e, "cannot record job result");
    }
    if let Err(e) = db.flush().await {
        tracing::error!(job = %job.id, error = %e, "cannot flush database");
    }
    logs.close(&job.id);
    tracing::info!(job = %job.id, status = job.status.as_str(), secs, "job ended");
}

async fn set_phase(db: &Db, job: &mut Job, log: &LiveLog, phase: Phase, line: &str) {
    job.phase = Some(phase);
    if let Err(e) = db.put_job(job) {
        tracing::error!(job = %job.id, error = %e, "cannot record job phase");
    }
    let _ = db.flush().await;
    let _ = log.note(line);
}

async fn execute(
    ctx: &RunContext,
    db: &Db,
    job: &mut Job,
    log: &LiveLog,
    control: &Control,
    deadline: Instant,
) -> Ending {
    // The project is checked first: a job that cannot run should not wait for an image.
    let job_dir = ctx.job_dir(&job.id);
    let project = job_dir.join("project");
    let requirements = project.join("requirements.txt");
    let requirements_text = match std::fs::read(&requirements) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ending::error("requirements.txt not found in project");
        }
        Err(e) => return Ending::error(format!("cannot read requirements.txt: {e}")),
    };

    set_phase(
        db,
        job,
        log,
        Phase::PullingImage,
        &format!("preparing image {}", ctx.image.reference()),
    )
    .await;
    let image = match ctx.image.get().await {
        Ok(image) => image,
        Err(e) => {
            return Ending::error(format!(
                "image {} is not available: {e}",
                ctx.image.reference()
            ))
        }
    };
    let _ = log.note(&format!(
        "image {} ({})",
        image.reference,
        short_digest(&image.manifest_digest)
    ));

    let job_id = job.id.clone();
    let common = Common {
        ctx,
        image: &image.rootfs,
        image_env: &image.config.env,
        job: &job_id,
        project: &project,
    };

    // Dependencies are installed once per (user, image, requirements.txt) and reused read-only.
    let deps_key = deps_cache_key(&image.manifest_digest, &requirements_text);
    let deps = ctx.cache_dir.join("deps").join(&job.owner).join(&deps_key);
    if deps.is_dir() {
        crate::cache::touch(&deps);
        set_phase(
            db,
            job,
            log,
            Phase::Installing,
            "requirements.txt unchanged since an earlier job: reusing its packages",
        )
        .await;
    } else {
        set_phase(
            db,
            job,
            log,
            Phase::Installing,
            "installing requirements: pip install -r requirements.txt",
        )
        .await;
        let staging = job_dir.join("deps");
        if let Err(e) = fs_err::create_dir_all(&staging) {
            return Ending::error(format!("cannot create the dependency directory: {e}"));
        }
        let spec = common.install_spec(&staging, &job.owner);
        let run = run_container(ctx, &spec, &job_dir.join("install"), log, control, deadline).await;
        if let Some(ending) = run.interrupted(ctx, job) {
            return ending;
        }
        match run.outcome {
            Some(Outcome {
                exit_code: Some(0), ..
            }) => {}
            Some(ref o) => {
                return Ending::error(format!("pip install failed ({})", describe(ctx, o)))
            }
            None => return Ending::error(run.helper_failure()),
        }
        if let Some(parent) = deps.parent() {
            let _ = fs_err::create_dir_all(parent);
        }
        // Another job with the same requirements may have won the race: then use its copy.
        if std::fs::rename(&staging, &deps).is_err() && !deps.is_dir() {
            return Ending::error("cannot store the installed packages");
        }
    }

    let shown: Vec<String> = job.pytest_args.iter().map(|a| shell_quote(a)).collect();
    let line = format!("running tests: python -m pytest -v {}", shown.join(" "));
    set_phase(db, job, log, Phase::Testing, line.trim_end()).await;
    let spec = common.test_spec(&deps, &job.pytest_args);
    let run = run_container(ctx, &spec, &job_dir.join("test"), log, control, deadline).await;
    if let Some(ending) = run.interrupted(ctx, job) {
        return ending;
    }
    let Some(outcome) = run.outcome else {
        return Ending::error(run.helper_failure());
    };
    // A limit that was hit explains a failure better than pytest's exit code does: a test
    // whose child was OOM-killed, or that could not fork, fails for that reason.
    if outcome.exit_code != Some(0) && (outcome.oom_killed || outcome.pids_limit_hit) {
        return Ending {
            status: Status::Error,
            exit_code: outcome.exit_code,
            reason: Some(describe(ctx, &outcome)),
        };
    }
    match outcome.exit_code {
        Some(0) => Ending {
            status: Status::Passed,
            exit_code: Some(0),
            reason: None,
        },
        Some(1) => Ending {
            status: Status::Failed,
            exit_code: Some(1),
            reason: None,
        },
        Some(code) => Ending {
            status: Status::Error,
            exit_code: Some(code),
            reason: Some(match code {
                2 => "pytest could not collect the tests or was interrupted (exit code 2)"
                    .to_string(),
                3 => "pytest hit an internal error (exit code 3)".to_string(),
                4 => "pytest was called wrongly (exit code 4)".to_string(),
                5 => "pytest collected no tests (exit code 5)".to_string(),
                _ => describe(ctx, &outcome),
            }),
        },
        None => Ending {
            status: Status::Error,
            exit_code: None,
            reason: Some(describe(ctx, &outcome)),
        },
    }
}

/// What a container's end means in words.
fn describe(ctx: &RunContext, o: &Outcome) -> String {
    if o.oom_killed {
        format!(
            "killed: out of memory (limit {})",
            format_size(ctx.memory_limit)
        )
    } else if o.pids_limit_hit {
        format!("pids limit ({}) reached", ctx.pids_limit)
    } else if let Some(sig) = o.signal {
        format!("killed by signal {sig}")
    } else {
        format!("exit code {}", o.exit_code.unwrap_or(-1))
    }
}

/// An argument as a shell would need it written, for the log line that shows the command.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=/.,:@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn deps_cache_key(image_digest: &str, requirements: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(image_digest.as_bytes());
    h.update([0]);
    h.update(requirements);
    hex::encode(&h.finalize()[..16])
}

/// The parts of a container spec both phases share.
struct Common<'a> {
    ctx: &'a RunContext,
    image: &'a Path,
    image_env: &'a [String],
    job: &'a str,
    project: &'a Path,
}

const CA_IN_CONTAINER: &str = "/etc/ci/ca-certificates.crt";

impl Common<'_> {
    fn env(&self, extra: &[(&str, &str)]) -> Vec<String> {
        let mut env: Vec<String> = self.image_env.to_vec();
        let mut set = |k: &str, v: &str| {
            env.retain(|e| !e.starts_with(&format!("{k}=")));
            env.push(format!("{k}={v}"));
        };
        if !self.image_env.iter().any(|e| e.starts_with("PATH=")) {
            set(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        set("HOME", "/root");
        set("LANG", "C.UTF-8");
        set("PYTHONUNBUFFERED", "1");
        set("CI", "true");
        for (k, v) in extra {
            set(k, v);
        }
        env
    }

    fn base(
        &self,
        phase: &str,
        args: &[&str],
        env: Vec<String>,
        network: Network,
    ) -> ContainerSpec {
        let ctx = self.ctx;
        ContainerSpec {
            id: format!("ci-{}-{phase}", self.job),
            rootfs: self.image.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
            cwd: "/workspace".into(),
            mounts: vec![BindMount {
                source: self.project.to_path_buf(),
                destination: "/workspace".into(),
                readonly: true,
            }],
            network,
            limits: Limits {
                memory_bytes: ctx.sandbox.memory_limit,
                pids: ctx.sandbox.pids_limit,
                cpu_quota_us: ctx.sandbox.cpu_quota_us,
                cpu_period_us: ctx
                    .sandbox
                    .cpu_quota_us
                    .map(|_| crate::sandbox::CPU_PERIOD_US),
            },
            tmpfs: vec![
                Tmpfs {
                    destination: "/tmp".into(),
                    size_bytes: ctx.tmp_size,
                },
                Tmpfs {
                    destination: "/root".into(),
                    size_bytes: ctx.tmp_size,
                },
            ],
            cgroup_parent: ctx.cgroup_parent.clone(),
            user_namespace: Some(ctx.sandbox.user_namespace),
            cgroups: ctx.sandbox.cgroups,
        }
    }

    fn install_spec(&self, deps: &Path, owner: &str) -> ContainerSpec {
        let mut extra = vec![
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
            ("PIP_NO_INPUT", "1"),
            ("PIP_PROGRESS_BAR", "off"),
        ];
        if self.ctx.ca_bundle.is_some() {
            extra.extend([
                ("PIP_CERT", CA_IN_CONTAINER),
                ("SSL_CERT_FILE", CA_IN_CONTAINER),
                ("REQUESTS_CA_BUNDLE", CA_IN_CONTAINER),
            ]);
        }
        let args = [
            "python3",
            "-m",
            "pip",
            "install",
            "--root-user-action=ignore",
            "--target",
            "/deps",
            "-r",
            "/workspace/requirements.txt",
        ];
        let network = self.ctx.sandbox.install_network;
        let mut spec = self.base("install", &args, self.env(&extra), network);
        // The container's root is an unprivileged host uid: the directories pip writes
        // must be its own. If this fails, pip says "Permission denied" in the job's log.
        let userns = self.ctx.sandbox.user_namespace;
        if let Err(e) = ci_runner::give_to_container(deps, &userns) {
            tracing::error!(dir = %deps.display(), error = %ci_runner::error_chain(&e), "cannot hand the dependency directory to the job");
        }
        spec.mounts.push(BindMount {
            source: deps.to_path_buf(),
            destination: "/deps".into(),
            readonly: false,
        });
        // pip's download cache, per user: warm installs skip the network for what they had.
        let pip_cache = self.ctx.cache_dir.join("pip").join(owner);
        crate::cache::touch(&pip_cache);
        let cache_ready = fs_err::create_dir_all(&pip_cache)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                ci_runner::give_to_container(&pip_cache, &userns)
                    .map_err(|e| ci_runner::error_chain(&e))
            });
        if let Err(e) = &cache_ready {
            tracing::warn!(dir = %pip_cache.display(), error = %e, "pip cache unavailable for this job");
        }
        if cache_ready.is_ok() {
            spec.mounts.push(BindMount {
                source: pip_cache,
                destination: "/var/cache/ci-pip".into(),
                readonly: false,
            });
            spec.env.push("PIP_CACHE_DIR=/var/cache/ci-pip".into());
        }
        if let Some(ca) = &self.ctx.ca_bundle {
            spec.mounts.push(BindMount {
                source: ca.clone(),
                destination: CA_IN_CONTAINER.into(),
                readonly: true,
            });
        }
        spec
    }

    fn test_spec(&self, deps: &Path, pytest_args: &[String]) -> ContainerSpec {
        let extra = [("PYTHONPATH", "/deps"), ("PYTHONDONTWRITEBYTECODE", "1")];
        let mut env = self.env(&extra);
        if let Some(path) = env.iter_mut().find(|e| e.starts_with("PATH=")) {
            *path = format!("PATH=/deps/bin:{}", &path[5..]);
        }
        let mut args = vec!["python3", "-m", "pytest", "-v", "-p", "no:cacheprovider"];
        args.extend(pytest_args.iter().map(String::as_str));
        let mut spec = self.base("test", &args, env, Network::None);
        spec.mounts.push(BindMount {
            source: deps.to_path_buf(),
            destination: "/deps".into(),
            readonly: true,
        });
        spec
    }
}

/// Why a container was stopped before it ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interruption {
    Stop(StopReason),
    TimedOut,
    LogLimit,
}

struct ContainerRun {
    outcome: Option<Outcome>,
    interruption: Option<Interruption>,
    /// The helper's own diagnostics, when it failed.
    helper_stderr: String,
    /// How the helper process ended, when it was started at all.
    helper_exit: Option<std::process::ExitStatus>,
}

impl ContainerRun {
    fn interrupted(&self, ctx: &RunContext, job: &Job) -> Option<Ending> {
        let (status, reason) = match self.interruption? {
            Interruption::Stop(reason @ (StopReason::Cancelled | StopReason::UserDisabled)) => {
                (Status::Cancelled, reason.cancel_reason(true).to_string())
            }
            Interruption::Stop(StopReason::Shutdown) => (
                Status::Lost,
                "the server shut down while the job was running".into(),
            ),
            Interruption::TimedOut => (
                Status::TimedOut,
                format!(
                    "timed out after {}",
                    humantime::format_duration(Duration::from_secs(job.timeout_secs))
                ),
            ),
            Interruption::LogLimit => (
                Status::Error,
                format!(
                    "log limit reached: log truncated at {}",
                    format_size(ctx.log_cap)
                ),
            ),
        };
        Some(Ending {
            status,
            exit_code: None,
            reason: Some(reason),
        })
    }

    fn helper_failure(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let said = self
            .helper_stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty());
        match (said, self.helper_exit.and_then(|s| s.signal())) {
            (Some(line), _) => format!("the container could not be run: {line}"),
            (None, Some(sig)) => format!("the container's helper process was killed (signal {sig}); the container was removed"),
            (None, None) => "the container could not be run (its helper gave no reason)".to_string(),
        }
    }
}

/// Starts one container through a helper process, copies its output into the log as it comes,
/// and stops it on cancel, shutdown, timeout or a full log.
async fn run_container(
    ctx: &RunContext,
    spec: &ContainerSpec,
    dir: &Path,
    log: &LiveLog,
    control: &Control,
    deadline: Instant,
) -> ContainerRun {
    let failed = |msg: String| ContainerRun {
        outcome: None,
        interruption: None,
        helper_stderr: msg,
        helper_exit: None,
    };
    let bundle = dir.join("bundle");
    let result = dir.join("outcome.json");
    if let Err(e) = ci_runner::ensure_mountpoints(&spec.rootfs, spec) {
        return failed(format!("cannot prepare the image: {e}"));
    }
    if let Err(e) = fs_err::create_dir_all(&bundle) {
        return failed(format!("cannot create the container's bundle: {e}"));
    }
    if let Err(e) = ci_runner::prepare_bundle(&bundle, spec) {
        return failed(format!("cannot write the container's bundle: {e}"));
    }
    // With die-with-parent a server that dies, even by SIGKILL, takes its containers along.
    let args = ci_runner::container_args(&bundle, &ctx.state_root, &spec.id, &result, true);
    let mut child = match tokio::process::Command::new(&ctx.helper_exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the server's terminal reaches the server, which
        // then stops jobs in order, not every helper at once.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start the container helper: {e}")),
    };
    let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");

    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });

    let mut interruption = None;
    let mut buf = vec![0u8; 32 * 1024];
    let mut output_open = true;
    let mut exit = None;
    let mut stop_sent_at: Option<Instant> = None;
    let stop_requested = control.stopped();
    tokio::pin!(stop_requested);
    let timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(timeout);

    // Copy output until the helper has exited and the pipe is closed; the helper removes the
    // container before it exits, which closes every writer of the pipe.
    while exit.is_none() || output_open {
        let kill_deadline = stop_sent_at.map(|t| t + Duration::from_secs(10));
        tokio::select! {
            read = stdout.read(&mut buf), if output_open => match read {
                Ok(0) | Err(_) => output_open = false,
                Ok(n) => {
                    if interruption.is_none() && matches!(log.append(&buf[..n]), Ok(Appended::CapReached)) {
                        interruption = Some(Interruption::LogLimit);
                        let _ = log.note(&format!(
                            "log truncated at {}: the job printed more than the server keeps (--max-log-size); stopping it",
                            format_size(ctx.log_cap)
                        ));
                    }
                }
            },
            status = child.wait(), if exit.is_none() => {
                if !status.as_ref().is_ok_and(|s| s.success()) {
                    // The helper died without removing its container, which still holds the
                    // pipe: remove it now rather than wait for the pipe to close.
                    ctx.cleanup_container(&spec.id).await;
                }
                exit = Some(status);
                if output_open {
                    // Give the pipe a moment to drain, then stop waiting for writers that
                    // outlived the helper (they are killed by the cleanup below).
                    let drain = tokio::time::timeout(Duration::from_secs(5), async {
                        loop {
                            match stdout.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => { let _ = log.append(&buf[..n]); }
                            }
                        }
                    });
                    let _ = drain.await;
                    output_open = false;
                }
            },
            reason = &mut stop_requested, if interruption.is_none() => interruption = Some(Interruption::Stop(reason)),
            () = &mut timeout, if interruption.is_none() => interruption = Some(Interruption::TimedOut),
            () = async { tokio::time::sleep_until(kill_deadline.unwrap_or_else(Instant::now)).await }, if kill_deadline.is_some() && exit.is_none() => {
                tracing::warn!(container = %spec.id, "helper did not stop in time: killing it");
                let _ = child.start_kill();
                stop_sent_at = None;
            },
        }
        if interruption.is_some() && stop_sent_at.is_none() && exit.is_none() {
            if let Some(pid) = pid {
                // The helper kills the container (every process in its cgroup) on SIGTERM.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            stop_sent_at = Some(Instant::now());
        }
    }
    let helper_exit = exit.and_then(Result::ok);
    let helper_ok = helper_exit.is_some_and(|status| status.success());
    let helper_stderr = tokio::time::timeout(Duration::from_secs(5), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if !helper_ok {
        tracing::warn!(container = %spec.id, status = ?helper_exit, stderr = %helper_stderr.trim(), "container helper failed");
    }
    let outcome = std::fs::read(&result)
        .ok()
        .and_then(|b| serde_json::from_slice::<Outcome>(&b).ok());
    ContainerRun {
        outcome,
        interruption,
        helper_stderr,
        helper_exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_a_shell_would_split() {
        assert_eq!(shell_quote("-k"), "-k");
        assert_eq!(
            shell_quote("tests/test_a.py::test_x"),
            "tests/test_a.py::test_x"
        );
        assert_eq!(shell_quote("add or sub"), "'add or sub'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn deps_key_changes_with_image_and_requirements() {
        let a = deps_cache_key("sha256:aa", b"pytest==7.4.3\n");
        assert_eq!(a, deps_cache_key("sha256:aa", b"pytest==7.4.3\n"));
        assert_ne!(a, deps_cache_key("sha256:bb", b"pytest==7.4.3\n"));
        assert_ne!(a, deps_cache_key("sha256:aa", b"pytest==8\n"));
    }
}
