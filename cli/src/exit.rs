//! Exit codes of `ci`, in one place.

use ci_protocol::Status;

/// The job passed, or the command did what was asked.
pub const SUCCESS: u8 = 0;
/// The tests failed, or the job errored, timed out, was cancelled or lost.
pub const JOB_FAILED: u8 = 1;
/// `ci` itself could not do what was asked: bad usage, no server, authentication, a bad answer.
pub const CLIENT_ERROR: u8 = 2;
/// The exit code of a finished job's status.
pub fn of(status: Status) -> u8 {
    if status == Status::Passed {
        SUCCESS
    } else {
        JOB_FAILED
    }
}

/// Interrupted by Ctrl+C (128 + SIGINT); the job goes on on the server.
pub const INTERRUPTED: u8 = 130;
