//! The one line on stderr that says what a job waits for while its log is quiet: its place in
//! the queue, the pull of its image, the install. Drawn only when stderr is a terminal, redrawn
//! in place (`\r`, clear to the end of the line), erased before any byte of the log is written
//! and when the follow ends, so that it is never left behind in what the user sees or copies.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ci_protocol::{JobView, Phase, Status};

use crate::client::Client;
use crate::table::human_size;

/// How often the job is asked how it is doing.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long the log must have been quiet before the line is drawn over it again: a line
/// redrawn between every two chunks of pip's output would only flicker.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// The line for `job`, in its current state for `elapsed`; `None` once there is nothing to
/// wait for (the tests run, or the job ended).
pub fn render(job: &JobView, elapsed: Duration) -> Option<String> {
    let took = clock(elapsed);
    match (job.status, job.phase) {
        (Status::Queued, _) => Some(match job.queue_position {
            Some(p) if p > 2 => format!("queued: {} jobs ahead ({took})", p - 1),
            Some(2) => format!("queued: 1 job ahead ({took})"),
            _ => format!("queued: next ({took})"),
        }),
        (Status::Running, Some(Phase::PullingImage)) => {
            let image = match &job.python {
                Some(p) => format!("pulling the image of Python {}", crate::summary::clean(p)),
                None => "pulling the image".to_string(),
            };
            Some(match job.pull {
                Some(pull) => match pull.total_bytes {
                    Some(total) => format!(
                        "{image}: {} of {} ({took})",
                        human_size(pull.done_bytes),
                        human_size(total)
                    ),
                    None => format!("{image}: {} ({took})", human_size(pull.done_bytes)),
                },
                None => format!("{image} ({took})"),
            })
        }
        (Status::Running, Some(Phase::Installing)) => Some(format!("installing ({took})")),
        _ => None,
    }
}

/// Whether the job has nothing more to wait for before its tests' output.
fn settled(job: &JobView) -> bool {
    job.status.is_terminal() || job.phase == Some(Phase::Testing)
}

/// `12s`, `1m05s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The line's owner: draws and erases it, and hears of every write of the log.
pub struct Progress {
    state: Mutex<State>,
}

struct State {
    out: Option<Box<dyn Write + Send>>,
    /// The width the line must stay under (it would wrap, and `\r` would then redraw only its
    /// last row).
    width: usize,
    shown: bool,
    /// The log's last byte was a newline (or there was none): the line does not cover a part
    /// of the log's current line.
    at_line_start: bool,
    last_output: Option<Instant>,
}

impl Progress {
    /// On stderr when it is a terminal; else a line that is never drawn.
    pub fn stderr() -> Progress {
        let stderr = std::io::stderr();
        if !stderr.is_terminal() {
            return Progress::to(None, 0);
        }
        let width = terminal_size::terminal_size_of(&stderr).map_or(80, |(w, _)| usize::from(w.0));
        Progress::to(Some(Box::new(stderr)), width)
    }

    /// Into `out` (none: never drawn), kept under `width` columns.
    pub fn to(out: Option<Box<dyn Write + Send>>, width: usize) -> Progress {
        Progress {
            state: Mutex::new(State {
                out,
                width,
                shown: false,
                at_line_start: true,
                last_output: None,
            }),
        }
    }

    /// Whether anything is ever drawn.
    pub fn is_on(&self) -> bool {
        self.state.lock().unwrap().out.is_some()
    }

    /// Draws `line` in place of the last, if the log is quiet and at the start of a line.
    pub fn show(&self, line: &str) {
        let mut state = self.state.lock().unwrap();
        let quiet = state.last_output.is_none_or(|at| at.elapsed() >= QUIET_FOR);
        if !(quiet && state.at_line_start) {
            return;
        }
        let line: String = line.chars().take(state.width.saturating_sub(1)).collect();
        if let Some(out) = state.out.as_mut() {
            let _ = write!(out, "\r\x1b[K{line}");
            let _ = out.flush();
            state.shown = true;
        }
    }

    /// Erases the line, if it is shown.
    pub fn clear(&self) {
        self.state.lock().unwrap().clear();
    }

    /// To be called before `bytes` of the log are written: erases the line, and remembers
    /// where the log stands.
    pub fn before_output(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.clear();
        if let Some(&last) = bytes.last() {
            state.at_line_start = last == b'\n';
            state.last_output = Some(Instant::now());
        }
    }
}

impl State {
    fn clear(&mut self) {
        if !self.shown {
            return;
        }
        if let Some(out) = self.out.as_mut() {
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        }
        self.shown = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Asks the server about job `id` every second and keeps the line up to date until the job's
/// tests run or it ends; then erases it and waits for ever (the follow it runs beside ends it).
pub async fn poll(client: &Client, id: &str, progress: &Progress) {
    if progress.is_on() {
        let mut seen: Option<(Status, Option<Phase>, Instant)> = None;
        loop {
            if let Ok(job) = client.job(id).await {
                if settled(&job) {
                    progress.clear();
                    break;
                }
                let since = match seen {
                    Some((status, phase, since)) if (status, phase) == (job.status, job.phase) => {
                        since
                    }
                    _ => Instant::now(),
                };
                seen = Some((job.status, job.phase, since));
                match render(&job, since.elapsed()) {
                    Some(line) => progress.show(&line),
                    None => progress.clear(),
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_protocol::PullProgress;

    fn job(status: Status, phase: Option<Phase>) -> JobView {
        serde_json::from_value(serde_json::json!({
            "id": "abc", "status": status, "phase": phase, "created": "t",
            "started": null, "finished": null, "duration_secs": null, "exit_code": null,
            "reason": null, "queue_position": null, "log_bytes": 0
        }))
        .unwrap()
    }

    fn check(job: JobView, secs: u64, expected: Option<&str>) {
        assert_eq!(render(&job, Duration::from_secs(secs)).as_deref(), expected);
    }

    #[test]
    fn the_line_of_each_wait() {
        let queued = |p| JobView {
            queue_position: p,
            ..job(Status::Queued, None)
        };
        check(queued(Some(3)), 4, Some("queued: 2 jobs ahead (4s)"));
        check(queued(Some(2)), 4, Some("queued: 1 job ahead (4s)"));
        check(queued(Some(1)), 65, Some("queued: next (1m05s)"));
        check(queued(None), 0, Some("queued: next (0s)"));
        let pulling = |pull| JobView {
            pull,
            python: Some("3.11".into()),
            ..job(Status::Running, Some(Phase::PullingImage))
        };
        let pull = |done, total| {
            Some(PullProgress {
                done_bytes: done,
                total_bytes: total,
            })
        };
        check(
            pulling(pull(12_897_485, Some(47_185_920))),
            3,
            Some("pulling the image of Python 3.11: 12.3 MiB of 45.0 MiB (3s)"),
        );
        check(
            pulling(pull(2048, None)),
            3,
            Some("pulling the image of Python 3.11: 2.0 KiB (3s)"),
        );
        check(
            pulling(None),
            1,
            Some("pulling the image of Python 3.11 (1s)"),
        );
        check(
            job(Status::Running, Some(Phase::Installing)),
            12,
            Some("installing (12s)"),
        );
        check(job(Status::Running, Some(Phase::Testing)), 12, None);
        check(job(Status::Passed, None), 12, None);
        assert_eq!(human_size(812), "812 B");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    /// A sink the test can read while the progress holds it.
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drawn_in_place_erased_before_output_never_over_a_half_line() {
        let sink = Sink::default();
        let drawn = || String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let progress = Progress::to(Some(Box::new(sink.clone())), 12);
        progress.show("queued: next (0s)");
        assert_eq!(drawn(), "\r\x1b[Kqueued: nex");
        progress.before_output(b"Collecting");
        assert_eq!(drawn(), "\r\x1b[Kqueued: nex\r\x1b[K");
        // The log stands mid-line: nothing is drawn over it.
        progress.show("installing (1s)");
        progress.clear();
        assert_eq!(drawn(), "\r\x1b[Kqueued: nex\r\x1b[K");
        // At the start of a line, but only just written: not yet.
        progress.before_output(b" pytest\n");
        progress.show("installing (1s)");
        assert_eq!(drawn(), "\r\x1b[Kqueued: nex\r\x1b[K");
        // Erased when the follow ends.
        let progress = Progress::to(Some(Box::new(sink.clone())), 80);
        progress.show("installing (2s)");
        drop(progress);
        assert!(
            drawn().ends_with("\r\x1b[Kinstalling (2s)\r\x1b[K"),
            "{:?}",
            drawn()
        );
    }
}
