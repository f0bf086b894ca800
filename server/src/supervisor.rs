//! Supervises one container: starts its helper process, copies the container's output into
//! the job's log as it comes, and stops it on cancel, shutdown, timeout, a full log or an
//! install past its cap.
//!
//! Containers are never started in this process: each one is a helper process
//! (`ci-server __container ...`, see `ci_runner::helper_main`) whose stdout carries the
//! container's merged output. libcontainer changes the caller's cwd and forks from whatever
//! thread calls it, which a multi-threaded server cannot allow (shared/notes/libcontainer.md).
//!
//! Where a supervision stands is one `State`, changed only by `next`: a pure function,
//! so the stop and kill schedule is tested without a process.

use std::future::Future;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ci_runner::{ContainerSpec, Outcome};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::config::format_size;
use crate::executor::StopReason;
use crate::install::{Budget, Overrun};
use crate::layout::JobPaths;
use crate::logs::{Appended, LiveLog};

/// Where a job's output goes: the job's log, or whatever the caller keeps instead.
pub trait OutputSink: Send + Sync {
    /// Appends the container's bytes; [`Appended::CapReached`] once the sink is full (the
    /// container is then stopped).
    fn append(&self, bytes: &[u8]) -> std::io::Result<Appended>;
    /// A line of the server's own ([`crate::output::SERVER_MARK`]).
    fn note(&self, line: &str) -> std::io::Result<()>;
}

/// A timing line of the helper ([`ci_runner::TIMING_PREFIX`]): its step and duration.
fn helper_timing(line: &str) -> Option<(&str, Duration)> {
    let (step, ms) = line
        .strip_prefix(ci_runner::TIMING_PREFIX)?
        .rsplit_once(' ')?;
    let ms: f64 = ms.parse().ok()?;
    Some((step, Duration::from_secs_f64(ms.max(0.0) / 1000.0)))
}

/// A sink for a container whose output no one reads (the compile of an image's bytecode):
/// only [`ContainerRun::tail`] keeps its end.
pub struct Discard;

impl OutputSink for Discard {
    fn append(&self, _: &[u8]) -> std::io::Result<Appended> {
        Ok(Appended::All)
    }

    fn note(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink into a file of the job's, up to a cap: the output of a shard while the first
/// shard's is the live log ([`crate::shards`]). Written on the caller's thread, like
/// [`LiveLog`]'s page-cache writes.
pub struct FileSink {
    file: std::sync::Mutex<std::fs::File>,
    written: std::sync::atomic::AtomicU64,
    cap: u64,
}

impl FileSink {
    pub fn create(path: &std::path::Path, cap: u64) -> std::io::Result<FileSink> {
        Ok(FileSink {
            file: std::sync::Mutex::new(std::fs::File::create(path)?),
            written: std::sync::atomic::AtomicU64::new(0),
            cap,
        })
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<Appended> {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let before = self.written.load(Ordering::Relaxed);
        let room = self.cap.saturating_sub(before) as usize;
        let take = bytes.len().min(room);
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&bytes[..take])?;
        self.written.fetch_add(take as u64, Ordering::Relaxed);
        Ok(if take < bytes.len() {
            Appended::CapReached
        } else {
            Appended::All
        })
    }
}

impl OutputSink for FileSink {
    fn append(&self, bytes: &[u8]) -> std::io::Result<Appended> {
        self.write(bytes)
    }

    fn note(&self, line: &str) -> std::io::Result<()> {
        let mut out = crate::output::SERVER_MARK.to_vec();
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        self.write(&out).map(drop)
    }
}

impl OutputSink for LiveLog {
    fn append(&self, bytes: &[u8]) -> std::io::Result<Appended> {
        LiveLog::append(self, bytes)
    }

    fn note(&self, line: &str) -> std::io::Result<()> {
        LiveLog::note(self, line)
    }
}

/// The helper process and what the supervision needs from the server's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Helper<'a> {
    /// The binary with the `__container` and `__cleanup` subcommands (the server's own).
    pub exe: &'a Path,
    /// libcontainer's state directory.
    pub state_root: &'a Path,
    /// `--max-log-size`, named when the output passes it.
    pub log_cap: u64,
}

/// Removes a container a helper left behind (the helper was killed, or failed).
pub async fn remove_container(helper: &Helper<'_>, id: &str) {
    let status = tokio::process::Command::new(helper.exe)
        .args(ci_runner::cleanup_args(helper.state_root, Some(id)))
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

/// Why a container was stopped before it ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    Stop(StopReason),
    TimedOut,
    /// The output filled the sink ([`Helper::log_cap`]).
    LogLimit,
    /// An install wrote more than its cap.
    OverCap(OverCap),
}

/// What [`watch_writes`] found: which part of an install passed which cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverCap {
    pub over: Overrun,
    pub cap: u64,
}

/// How a container run ended.
#[derive(Debug)]
pub enum Ended {
    /// The container ended on its own (its exit status, or a limit's kill): the helper's
    /// report.
    Finished(Outcome),
    /// It was stopped, for this reason; how it died then says nothing about the job.
    Interrupted(Interruption),
    /// There is no report: the container could not be started, or the helper died.
    HelperFailed(HelperFailure),
}

/// What is known of a helper that left no report.
#[derive(Debug)]
pub struct HelperFailure {
    /// The helper's own diagnostics (or the server's, when it was not started).
    pub stderr: String,
    /// How the helper process ended, when it was started at all.
    pub exit: Option<ExitStatus>,
}

impl HelperFailure {
    /// Why the container could not be run, in words.
    pub fn reason(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let said = self.stderr.lines().rev().find(|l| !l.trim().is_empty());
        match (said, self.exit.and_then(|s| s.signal())) {
            (Some(line), _) => format!("the container could not be run: {line}"),
            (None, Some(sig)) => format!("the container's helper process was killed (signal {sig}); the container was removed"),
            (None, None) => "the container could not be run (its helper gave no reason)".to_string(),
        }
    }
}

/// One container run.
#[derive(Debug)]
pub struct ContainerRun {
    pub ended: Ended,
    /// The end of what the container printed ([`OUTPUT_TAIL`] bytes), to explain a failure.
    pub tail: Vec<u8>,
}

/// How long the helper has after SIGTERM to kill its container and exit before it gets
/// SIGKILL (the container is then removed by `__cleanup`).
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// A read shorter than this is followed by [`GATHER_FOR`] without reading.
const SMALL_READ: usize = 16 * 1024;

/// How long the pipe gathers output after a small read: at most this is added to when a
/// line reaches followers (the log latency target is 5 ms at the 99th percentile).
const GATHER_FOR: Duration = Duration::from_millis(2);

/// How long the pipe is read after the helper exited. Writers that outlived the helper
/// (it died before it removed its container) are abandoned then: the container is removed.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// Where the supervision of one container stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The container runs and nothing asked it to stop: output is copied and watched, and
    /// every reason to stop is listened for.
    Running,
    /// The helper was sent SIGTERM at `since` (it kills the container, removes it and
    /// exits); it gets SIGKILL at `since + KILL_AFTER`.
    Stopping { since: Instant, why: Interruption },
    /// The helper did not stop in time and was sent SIGKILL.
    Killed { why: Interruption },
    /// The helper exited (`exit` is `None` when waiting for it failed) with its pipe still
    /// open: what is in it is copied until it closes or until `until`.
    Draining {
        until: Instant,
        exit: Option<ExitStatus>,
        why: Option<Interruption>,
    },
    /// The helper exited and its pipe is closed or abandoned.
    Done {
        exit: Option<ExitStatus>,
        why: Option<Interruption>,
    },
}

impl State {
    /// The timer the state waits on besides its events, and what it means when it fires:
    /// the SIGKILL after [`KILL_AFTER`], the end of the drain.
    fn timer(self) -> Option<(Instant, Event)> {
        match self {
            State::Stopping { since, .. } => Some((since + KILL_AFTER, Event::KillDue)),
            State::Draining { until, .. } => Some((until, Event::DrainOver)),
            _ => None,
        }
    }

    fn why(self) -> Option<Interruption> {
        match self {
            State::Running => None,
            State::Stopping { why, .. } | State::Killed { why } => Some(why),
            State::Draining { why, .. } | State::Done { why, .. } => why,
        }
    }
}

/// What happens to a supervision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// A reason to stop the container.
    Interrupt(Interruption),
    /// [`KILL_AFTER`] passed since SIGTERM.
    KillDue,
    /// The helper exited (`status` is `None` when waiting for it failed); `output_open`
    /// when its pipe still has a writer.
    Exited {
        status: Option<ExitStatus>,
        output_open: bool,
    },
    /// The pipe closed: every writer is gone.
    OutputClosed,
    /// [`DRAIN_FOR`] passed since the helper exited.
    DrainOver,
}

/// What the supervisor does on a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// SIGTERM to the helper, which kills the container (every process in its cgroup).
    Terminate,
    /// SIGKILL to the helper, which did not stop in time.
    Kill,
    /// The helper died without removing its container, which still holds the pipe: remove
    /// it now rather than wait for the pipe to close.
    RemoveContainer,
}

/// The one place the state changes. Whatever is not listed changes nothing: the first
/// reason to stop stands, and nothing stops a container whose helper has exited.
fn next(state: State, event: Event, now: Instant) -> (State, Option<Action>) {
    match (state, event) {
        (State::Running, Event::Interrupt(why)) => {
            (State::Stopping { since: now, why }, Some(Action::Terminate))
        }
        (State::Stopping { why, .. }, Event::KillDue) => {
            (State::Killed { why }, Some(Action::Kill))
        }
        (
            State::Running | State::Stopping { .. } | State::Killed { .. },
            Event::Exited {
                status,
                output_open,
            },
        ) => {
            let why = state.why();
            let next = if output_open {
                State::Draining {
                    until: now + DRAIN_FOR,
                    exit: status,
                    why,
                }
            } else {
                State::Done { exit: status, why }
            };
            let failed = !status.is_some_and(|s| s.success());
            (next, failed.then_some(Action::RemoveContainer))
        }
        (State::Draining { exit, why, .. }, Event::OutputClosed | Event::DrainOver) => {
            (State::Done { exit, why }, None)
        }
        (state, _) => (state, None),
    }
}

/// Starts one container through a helper process, copies its output into `sink` as it
/// comes, and stops it when `stop` resolves, at `deadline`, or when the sink is full.
pub async fn run(
    helper: &Helper<'_>,
    spec: &ContainerSpec,
    paths: &JobPaths,
    sink: &dyn OutputSink,
    stop: impl Future<Output = StopReason>,
    deadline: Instant,
) -> ContainerRun {
    let never = std::future::pending();
    supervise(helper, spec, paths, sink, stop, deadline, never).await
}

/// How often, at the least, [`watch_writes`] measures what an install wrote.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How often [`watch_writes`] glances at the filesystem's used bytes, which grow as soon
/// as anything is written (ext4 counts delayed allocations): once they grew by more than
/// the install has left of its cap since the last measurement, it measures at once. On a
/// disk that writes 2 GB/s an install gets no more than some 40 MB past its cap that way,
/// unless other writers' deletions hide its growth (then the 0.5 s rhythm still holds).
const GLANCE_EVERY: Duration = Duration::from_millis(20);

/// Measures what an install writes while it runs (off the async threads); resolves when a
/// part of it passes its cap. A walk of a large tree takes a while: walks are at least
/// three times their own length apart, so at most a quarter of a core goes to walking.
pub async fn watch_writes(budget: Arc<Budget>) -> OverCap {
    let mut last_walk = Instant::now();
    let mut gap = Duration::ZERO;
    let mut used_then = 0;
    let mut room = 0;
    loop {
        tokio::time::sleep(GLANCE_EVERY).await;
        let used_now = budget.filesystem_used().unwrap_or(u64::MAX);
        let grew = used_now.saturating_sub(used_then) >= room;
        let since = last_walk.elapsed();
        if since < gap || (!grew && since < WATCH_EVERY) {
            continue;
        }
        last_walk = Instant::now();
        let measuring = budget.clone();
        match tokio::task::spawn_blocking(move || measuring.check()).await {
            Ok(Err(over)) => {
                return OverCap {
                    over,
                    cap: budget.cap,
                }
            }
            Ok(Ok(spent)) => room = budget.cap.saturating_sub(spent),
            Err(_) => room = 0,
        }
        used_then = used_now;
        gap = last_walk.elapsed() * 3;
    }
}

/// [`run`] that also stops the container when `over_cap` resolves.
pub async fn supervise(
    helper: &Helper<'_>,
    spec: &ContainerSpec,
    paths: &JobPaths,
    sink: &dyn OutputSink,
    stop: impl Future<Output = StopReason>,
    deadline: Instant,
    over_cap: impl Future<Output = OverCap>,
) -> ContainerRun {
    let failed = |msg: String| ContainerRun {
        ended: Ended::HelperFailed(HelperFailure {
            stderr: msg,
            exit: None,
        }),
        tail: Vec::new(),
    };
    let bundle = paths.bundle(&spec.id);
    let result = paths.outcome(&spec.id);
    let step = crate::timing::step(&spec.id, "container: mount points and bundle");
    // Writes into the image's mount points and the bundle: off the async threads.
    let prepared = {
        let (spec, bundle) = (spec.clone(), bundle.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = ci_runner::ensure_mountpoints(&spec.rootfs, &spec) {
                return Err(format!("cannot prepare the image: {e}"));
            }
            if let Err(e) = fs_err::create_dir_all(&bundle) {
                return Err(format!("cannot create the container's bundle: {e}"));
            }
            if let Err(e) = ci_runner::prepare_bundle(&bundle, &spec) {
                return Err(format!("cannot write the container's bundle: {e}"));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(format!("cannot prepare the container: {e}")))
    };
    if let Err(message) = prepared {
        return failed(message);
    }
    drop(step);
    let step = crate::timing::step(
        &spec.id,
        "container: helper run (create, start, run, remove)",
    );
    // With die-with-parent a server that dies, even by SIGKILL, takes its containers along.
    let args = ci_runner::container_args(&bundle, helper.state_root, &spec.id, &result, true);
    let mut command = tokio::process::Command::new(helper.exe);
    if tracing::enabled!(target: "ci_server::timing", tracing::Level::DEBUG) {
        command.env(ci_runner::TIMINGS_ENV, "1");
    }
    let mut child = match command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the server's terminal reaches the server, which
        // then stops jobs in order, not every helper at once.
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start the container helper: {e}")),
    };
    let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let mut term_on_drop = TermOnDrop(pid);
    // The pipe, while it has a writer: `None` once it closed or was abandoned.
    let mut output = child.stdout.take();
    let mut stderr = child.stderr.take().expect("piped");

    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });

    let mut relay = crate::output::Relay::default();
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    tokio::pin!(stop);
    let timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(timeout);
    tokio::pin!(over_cap);

    // Copy output until the helper has exited and the pipe is closed; the helper removes the
    // container before it exits, which closes every writer of the pipe.
    let mut state = State::Running;
    // After a small read the pipe is left to fill for a moment: a test run writes its
    // output in many small pieces (an unbuffered Python writes each part of a line on its
    // own), and reading, storing and sending each alone costs the server more CPU than the
    // run itself on a suite of many fast tests. Large reads (a flood) are not held up.
    let mut hold: Option<Instant> = None;
    let (exit, why) = loop {
        if let State::Done { exit, why } = state {
            break (exit, why);
        }
        let readable = output.is_some() && hold.is_none();
        let running = state == State::Running;
        let helper_alive = matches!(
            state,
            State::Running | State::Stopping { .. } | State::Killed { .. }
        );
        let timer = state.timer();
        let event = tokio::select! {
            read = async { output.as_mut().expect("open").read(&mut buf).await }, if readable => match read {
                Ok(0) | Err(_) => {
                    output = None;
                    Event::OutputClosed
                }
                Ok(n) => {
                    if n < SMALL_READ {
                        hold = Some(Instant::now() + GATHER_FOR);
                    }
                    keep_tail(&mut tail, &buf[..n]);
                    let appended = sink.append(&relay.push(&buf[..n]));
                    // Only a running container is stopped for it: one that is stopping, or
                    // whose helper exited, is ending anyway (the sink drops what is past it).
                    if !(running && matches!(appended, Ok(Appended::CapReached))) {
                        continue;
                    }
                    let _ = sink.note(&format!(
                        "log truncated at {}: the job printed more than the server keeps (--max-log-size); stopping it",
                        format_size(helper.log_cap)
                    ));
                    Event::Interrupt(Interruption::LogLimit)
                }
            },
            status = child.wait(), if helper_alive => Event::Exited {
                status: status.ok(),
                output_open: output.is_some(),
            },
            reason = &mut stop, if running => Event::Interrupt(Interruption::Stop(reason)),
            () = &mut timeout, if running => Event::Interrupt(Interruption::TimedOut),
            over = &mut over_cap, if running => {
                let _ = sink.note(&format!("{}: stopping it", over.over.what(over.cap)));
                Event::Interrupt(Interruption::OverCap(over))
            },
            () = tokio::time::sleep_until(timer.map_or_else(Instant::now, |(at, _)| at)), if timer.is_some() => {
                timer.expect("armed").1
            },
            () = tokio::time::sleep_until(hold.unwrap_or_else(Instant::now)), if hold.is_some() => {
                hold = None;
                continue;
            },
        };
        if matches!(event, Event::Exited { .. }) {
            // Reaped: the pid may be another process's from now on.
            term_on_drop.0 = None;
        }
        let (now, action) = next(state, event, Instant::now());
        state = now;
        match action {
            Some(Action::Terminate) => {
                if let Some(pid) = pid {
                    // The helper kills the container (every process in its cgroup) on SIGTERM.
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
            Some(Action::Kill) => {
                tracing::warn!(container = %spec.id, "helper did not stop in time: killing it");
                let _ = child.start_kill();
            }
            Some(Action::RemoveContainer) => remove_container(helper, &spec.id).await,
            None => {}
        }
    };
    drop(step);
    let held = relay.finish();
    if !held.is_empty() && why != Some(Interruption::LogLimit) {
        let _ = sink.append(&held);
    }
    let helper_ok = exit.is_some_and(|status| status.success());
    let stderr = tokio::time::timeout(Duration::from_secs(5), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for (step, ms) in stderr.lines().filter_map(helper_timing) {
        crate::timing::record(&spec.id, &format!("helper: {step}"), ms);
    }
    // What explains a failure is the rest.
    let stderr: String = stderr
        .lines()
        .filter(|l| helper_timing(l).is_none())
        .flat_map(|l| [l, "\n"])
        .collect();
    if !helper_ok {
        tracing::warn!(container = %spec.id, status = ?exit, stderr = %stderr.trim(), "container helper failed");
    }
    let ended = match why {
        Some(why) => Ended::Interrupted(why),
        None => match tokio::fs::read(&result)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Outcome>(&b).ok())
        {
            Some(outcome) => Ended::Finished(outcome),
            None => Ended::HelperFailed(HelperFailure { stderr, exit }),
        },
    };
    ContainerRun { ended, tail }
}

/// Sends SIGTERM to a helper that has not exited when its supervision is dropped (the
/// server stopping while an image's probe or compile runs, whose futures are not stopped
/// in order as jobs are): on SIGTERM the helper stops and removes its container itself,
/// even one still being built. SIGKILL would leave libcontainer's half-made container
/// behind (its init waiting forever to be started).
struct TermOnDrop(Option<nix::unistd::Pid>);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// How much of a container's output is kept to explain its failure.
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// Appends `more` to `tail`, keeping its last [`OUTPUT_TAIL`] bytes.
pub fn keep_tail(tail: &mut Vec<u8>, more: &[u8]) {
    tail.extend_from_slice(more);
    if tail.len() > OUTPUT_TAIL {
        tail.drain(..tail.len() - OUTPUT_TAIL);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_helpers_timing_lines_are_read_and_the_rest_left() {
        let stderr = "ci-runner timing: build (namespaces, mounts) 16.29\nwarning: x\nci-runner timing: start nan-ish\n";
        let laps: Vec<_> = stderr.lines().filter_map(super::helper_timing).collect();
        assert_eq!(laps.len(), 1);
        assert_eq!(laps[0].0, "build (namespaces, mounts)");
        assert_eq!(laps[0].1.as_micros(), 16_290);
    }

    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::sync::Mutex;

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, b"abc");
        keep_tail(&mut tail, b"def");
        assert_eq!(tail, b"abcdef");
        keep_tail(&mut tail, &vec![b'x'; OUTPUT_TAIL - 2]);
        assert_eq!(tail.len(), OUTPUT_TAIL);
        assert!(tail.starts_with(b"efxx"), "the oldest bytes go first");
        keep_tail(&mut tail, &vec![b'y'; OUTPUT_TAIL + 5]);
        assert_eq!(tail, vec![b'y'; OUTPUT_TAIL]);
    }

    fn exited(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(code << 8))
    }

    fn killed(signal: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(signal))
    }

    #[test]
    fn a_stop_sends_sigterm_then_sigkill_after_ten_seconds() {
        let t0 = Instant::now();
        let why = Interruption::Stop(StopReason::Cancelled);
        let (stopping, action) = next(State::Running, Event::Interrupt(why), t0);
        assert_eq!(stopping, State::Stopping { since: t0, why });
        assert_eq!(action, Some(Action::Terminate));
        assert_eq!(KILL_AFTER, Duration::from_secs(10));
        assert_eq!(stopping.timer(), Some((t0 + KILL_AFTER, Event::KillDue)));

        // A second reason changes nothing: the first stands, and the kill is not put off.
        let later = t0 + Duration::from_secs(3);
        let again = next(stopping, Event::Interrupt(Interruption::TimedOut), later);
        assert_eq!(again, (stopping, None));

        let (dead, action) = next(stopping, Event::KillDue, t0 + KILL_AFTER);
        assert_eq!(dead, State::Killed { why });
        assert_eq!(action, Some(Action::Kill));
        assert_eq!(dead.timer(), None, "SIGKILL is sent once");

        // A helper killed leaves its container behind.
        let exit = Event::Exited {
            status: killed(9),
            output_open: false,
        };
        let (done, action) = next(dead, exit, t0 + KILL_AFTER);
        assert_eq!(
            done,
            State::Done {
                exit: killed(9),
                why: Some(why)
            }
        );
        assert_eq!(action, Some(Action::RemoveContainer));
    }

    #[test]
    fn a_helper_that_stops_in_time_is_not_killed() {
        let t0 = Instant::now();
        let why = Interruption::TimedOut;
        let (stopping, _) = next(State::Running, Event::Interrupt(why), t0);
        let exit = Event::Exited {
            status: exited(0),
            output_open: false,
        };
        let (done, action) = next(stopping, exit, t0 + Duration::from_secs(1));
        assert_eq!(
            done,
            State::Done {
                exit: exited(0),
                why: Some(why)
            }
        );
        assert_eq!(action, None);
        // A kill timer that fired late changes nothing.
        assert_eq!(next(done, Event::KillDue, t0 + KILL_AFTER), (done, None));
    }

    #[test]
    fn the_pipe_is_drained_for_five_seconds_after_the_helper_exits() {
        let t0 = Instant::now();
        // The pipe closing first ends nothing: the helper is still to be waited for.
        assert_eq!(
            next(State::Running, Event::OutputClosed, t0),
            (State::Running, None)
        );
        let exit = Event::Exited {
            status: exited(0),
            output_open: true,
        };
        let (draining, action) = next(State::Running, exit, t0);
        assert_eq!(action, None);
        assert_eq!(draining.timer(), Some((t0 + DRAIN_FOR, Event::DrainOver)));
        assert_eq!(DRAIN_FOR, Duration::from_secs(5));
        let done = State::Done {
            exit: exited(0),
            why: None,
        };
        assert_eq!(next(draining, Event::OutputClosed, t0), (done, None));
        assert_eq!(
            next(draining, Event::DrainOver, t0 + DRAIN_FOR),
            (done, None)
        );
        // Nothing stops a container whose helper has exited: its end stands.
        let full = Event::Interrupt(Interruption::LogLimit);
        assert_eq!(next(draining, full, t0), (draining, None));

        // A helper that failed may have left its container holding the pipe.
        let failed = Event::Exited {
            status: exited(1),
            output_open: true,
        };
        let (_, action) = next(State::Running, failed, t0);
        assert_eq!(action, Some(Action::RemoveContainer));
        let unknown = Event::Exited {
            status: None,
            output_open: false,
        };
        let (_, action) = next(State::Running, unknown, t0);
        assert_eq!(action, Some(Action::RemoveContainer));
    }

    /// A sink that keeps what it is given, full past `cap` bytes.
    struct Sink {
        cap: usize,
        bytes: Mutex<Vec<u8>>,
        notes: Mutex<Vec<String>>,
        len: tokio::sync::watch::Sender<usize>,
    }

    impl Sink {
        fn new(cap: usize) -> Sink {
            Sink {
                cap,
                bytes: Mutex::default(),
                notes: Mutex::default(),
                len: tokio::sync::watch::channel(0).0,
            }
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
        }

        /// Resolves once the output holds `word`.
        async fn printed(&self, word: &str) {
            let mut len = self.len.subscribe();
            let _ = len.wait_for(|_| self.text().contains(word)).await;
        }
    }

    impl OutputSink for Sink {
        fn append(&self, bytes: &[u8]) -> std::io::Result<Appended> {
            let mut kept = self.bytes.lock().unwrap();
            let room = self.cap.saturating_sub(kept.len());
            kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
            self.len.send_replace(kept.len());
            Ok(if bytes.len() > room {
                Appended::CapReached
            } else {
                Appended::All
            })
        }

        fn note(&self, line: &str) -> std::io::Result<()> {
            self.notes.lock().unwrap().push(line.to_string());
            Ok(())
        }
    }

    /// A stand-in for `ci-server __container ...` and `__cleanup ...`: a shell script that
    /// runs `body` with `$result` set to the outcome's path, and notes each cleanup.
    struct Fake {
        dir: tempfile::TempDir,
        exe: PathBuf,
        spec: ContainerSpec,
        paths: JobPaths,
    }

    const FINISHED: &str = r#"{"exit_code":0,"signal":null,"oom_killed":false,"pids_limit_hit":false,"killed_by_request":false}"#;

    impl Fake {
        fn new(body: &str) -> Fake {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let exe = root.join("helper");
            let script = format!(
                "#!/bin/sh\n\
                 if [ \"$1\" = __cleanup ]; then echo \"$5\" >> '{cleanups}'; exit 0; fi\n\
                 while [ $# -gt 0 ]; do [ \"$1\" = --result ] && result=$2; shift; done\n\
                 {body}\n",
                cleanups = root.join("cleanups").display(),
            );
            std::fs::write(&exe, script).unwrap();
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::create_dir_all(root.join("rootfs")).unwrap();
            let spec = ContainerSpec {
                id: "ci-j1-test".into(),
                rootfs: root.join("rootfs"),
                args: vec!["/bin/true".into()],
                env: vec![],
                cwd: "/workspace".into(),
                mounts: vec![],
                network: ci_runner::Network::None,
                limits: ci_runner::Limits::default(),
                tmpfs: vec![],
                overlays: vec![],
                cgroup_parent: "/ci".into(),
                user_namespace: Some(ci_runner::UserNamespace::ROOTFUL_DEFAULT),
                cgroups: ci_runner::CgroupMode::Runtime,
                max_file_size: None,
            };
            let paths = JobPaths::new(root.join("job"));
            Fake {
                exe,
                spec,
                paths,
                dir,
            }
        }

        fn helper(&self) -> Helper<'_> {
            Helper {
                exe: &self.exe,
                state_root: self.dir.path(),
                log_cap: 1 << 20,
            }
        }

        /// The containers `__cleanup` was asked to remove.
        fn cleanups(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("cleanups")).unwrap_or_default()
        }

        async fn run(
            &self,
            sink: &Sink,
            stop: impl Future<Output = StopReason>,
            deadline: Instant,
            over_cap: impl Future<Output = OverCap>,
        ) -> ContainerRun {
            let helper = self.helper();
            supervise(
                &helper,
                &self.spec,
                &self.paths,
                sink,
                stop,
                deadline,
                over_cap,
            )
            .await
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn never<T>() -> std::future::Pending<T> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_container_that_ends_reports_its_outcome_and_output() {
        let fake = Fake::new(&format!(
            "echo hello; echo '==> fake'; echo '{FINISHED}' > \"$result\""
        ));
        let sink = Sink::new(1 << 20);
        let run = fake.run(&sink, never(), far(), never()).await;
        match run.ended {
            Ended::Finished(outcome) => assert_eq!(outcome.exit_code, Some(0)),
            other => panic!("{other:?}"),
        }
        // The job's imitation of a server line is escaped.
        assert_eq!(sink.text(), "hello\n ==> fake\n");
        assert_eq!(run.tail, b"hello\n==> fake\n");
        assert!(fake
            .paths
            .bundle(&fake.spec.id)
            .join("config.json")
            .is_file());
        assert_eq!(
            fake.cleanups(),
            "",
            "a helper that succeeded removed its container"
        );
    }

    #[tokio::test]
    async fn a_helper_that_fails_says_why_and_its_container_is_removed() {
        let fake =
            Fake::new("echo 'starting' >&2; echo 'cannot create cgroup: denied' >&2; exit 1");
        let sink = Sink::new(1 << 20);
        let run = fake.run(&sink, never(), far(), never()).await;
        let Ended::HelperFailed(failure) = &run.ended else {
            panic!("{:?}", run.ended);
        };
        assert_eq!(failure.exit.and_then(|s| s.code()), Some(1));
        assert_eq!(
            failure.reason(),
            "the container could not be run: cannot create cgroup: denied"
        );
        assert_eq!(fake.cleanups(), "ci-j1-test\n");
    }

    #[tokio::test]
    async fn a_helper_that_cannot_be_started_fails_without_a_process() {
        let mut fake = Fake::new("");
        fake.exe = fake.dir.path().join("missing");
        let run = fake.run(&Sink::new(1), never(), far(), never()).await;
        let Ended::HelperFailed(failure) = &run.ended else {
            panic!("{:?}", run.ended);
        };
        assert_eq!(failure.exit, None);
        assert!(failure
            .reason()
            .contains("cannot start the container helper"));
    }

    /// A helper that stops its container on SIGTERM, as the real one does. Short sleeps:
    /// the shell runs a trap only between commands, and a `wait` for a background sleep
    /// misses a signal that came just before it.
    const STOPS_ON_TERM: &str = "trap 'exit 143' TERM; echo ready; while :; do sleep 0.05; done";

    #[tokio::test]
    async fn a_stop_request_stops_the_container() {
        let fake = Fake::new(STOPS_ON_TERM);
        let sink = Sink::new(1 << 20);
        let stop = async {
            sink.printed("ready").await;
            StopReason::Cancelled
        };
        let started = std::time::Instant::now();
        let run = fake.run(&sink, stop, far(), never()).await;
        assert!(matches!(
            run.ended,
            Ended::Interrupted(Interruption::Stop(StopReason::Cancelled))
        ));
        assert!(
            started.elapsed() < KILL_AFTER,
            "stopped by SIGTERM, not killed"
        );
        assert_eq!(run.tail, b"ready\n");
        // The helper exited 143 (as it does when it is stopped): its container is removed.
        assert_eq!(fake.cleanups(), "ci-j1-test\n");
    }

    #[tokio::test]
    async fn a_full_log_stops_the_container() {
        let body = "trap 'exit 143' TERM; echo 0123456789abcdef; while :; do sleep 0.05; done";
        let fake = Fake::new(body);
        let sink = Sink::new(10);
        let run = fake.run(&sink, never(), far(), never()).await;
        assert!(matches!(
            run.ended,
            Ended::Interrupted(Interruption::LogLimit)
        ));
        assert_eq!(sink.text(), "0123456789");
        let notes = sink.notes.lock().unwrap();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("log truncated at 1 MiB"), "{notes:?}");
        // What the container printed is kept for a diagnosis, past the log's cap.
        assert_eq!(run.tail, b"0123456789abcdef\n");
    }

    #[tokio::test]
    async fn an_install_past_its_cap_is_stopped() {
        let fake = Fake::new(STOPS_ON_TERM);
        let sink = Sink::new(1 << 20);
        let over = OverCap {
            over: Overrun::Output,
            cap: 1 << 30,
        };
        let over_cap = async {
            sink.printed("ready").await;
            over
        };
        let run = fake.run(&sink, never(), far(), over_cap).await;
        assert!(matches!(
            run.ended,
            Ended::Interrupted(Interruption::OverCap(o)) if o == over
        ));
        let notes = sink.notes.lock().unwrap();
        assert_eq!(
            *notes,
            ["the install wrote more than 1 GiB (--max-deps-size): stopping it"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_the_container() {
        // Paused time: the deadline passes as soon as the runtime waits.
        let fake = Fake::new(STOPS_ON_TERM);
        let sink = Sink::new(1 << 20);
        let deadline = Instant::now() + Duration::from_secs(600);
        let run = fake.run(&sink, never(), deadline, never()).await;
        assert!(matches!(
            run.ended,
            Ended::Interrupted(Interruption::TimedOut)
        ));
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn a_helper_that_ignores_sigterm_is_killed_after_ten_seconds() {
        // The helper ignores SIGTERM, and execs into a process that inherits that.
        let fake = Fake::new("trap '' TERM; echo ready; exec sleep 60");
        let sink = Sink::new(1 << 20);
        let mut stopped_at = None;
        let stop = async {
            sink.printed("ready").await;
            // Time stands still from here and jumps to the next timer whenever the runtime
            // waits: the ten seconds pass at once, and the helper is there to be killed.
            tokio::time::pause();
            stopped_at = Some(Instant::now());
            StopReason::Cancelled
        };
        let started = std::time::Instant::now();
        let run = fake.run(&sink, stop, far(), never()).await;
        assert!(matches!(
            run.ended,
            Ended::Interrupted(Interruption::Stop(StopReason::Cancelled))
        ));
        assert!(Instant::now() >= stopped_at.unwrap() + KILL_AFTER);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the helper was killed, not left to end on its own"
        );
        assert_eq!(
            fake.cleanups(),
            "ci-j1-test\n",
            "a killed helper's container is removed"
        );
    }
}
