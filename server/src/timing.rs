//! Where a job's time goes: a line per step of its path (upload, queue, each phase, each
//! container) with its duration, logged at debug level under the target
//! `ci_server::timing`, which `ci-server serve --log-timings` turns on (as does
//! `CI_LOG=ci_server::timing=debug`). Off, a step costs one `Instant::now()`.

use std::time::{Duration, Instant};

/// The target of the timing lines, for a log filter.
pub const TARGET: &str = "ci_server::timing";

/// A step being timed: logged when dropped.
#[must_use = "a step is timed until it is dropped"]
pub struct Step<'a> {
    job: &'a str,
    step: &'static str,
    start: Instant,
}

/// Times `step` of `job` from now until the returned guard is dropped.
pub fn step<'a>(job: &'a str, step: &'static str) -> Step<'a> {
    Step {
        job,
        step,
        start: Instant::now(),
    }
}

/// Logs a step measured elsewhere.
pub fn record(job: &str, step: &str, took: Duration) {
    tracing::debug!(target: "ci_server::timing", job, step, ms = ms(took), "timing");
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        record(self.job, self.step, self.start.elapsed());
    }
}

/// Milliseconds with two decimals.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
