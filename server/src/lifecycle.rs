//! A job's life as a state machine: which changes of its record are allowed, in one pure
//! function that every store applies atomically ([`crate::store::JobStore::apply`]).
//!
//! ```text
//!            claim         phase*, tests       finish(verdict)
//!  queued ─────────▶ running ─────────▶ running ─────────────────▶ passed | failed | error
//!    │                  │                                          | timed_out | cancelled | lost
//!    │ cancel           │ lose (the server stopped while it ran)
//!    ▼                  ▼
//!  cancelled           lost        (terminal statuses never change again)
//!
//!  running ──requeue──▶ queued     (a cluster's worker went silent: another attempt)
//! ```
//!
//! Nothing else writes a job's status: the executor reports a [`Verdict`], the job manager
//! turns it into [`Transition::Finish`], and a finish that arrives after a cancel (or a
//! cancel after a finish) is refused here instead of overwriting what a client was told.

use ci_protocol::TestCounts;

use crate::model::{Job, Phase, Status};

/// How a job that ran ended, as the executor decides it. Only terminal outcomes can be
/// expressed, so a verdict can never put a job back in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// pytest ran and some tests failed (its exit code 1).
    Failed,
    /// The job could not give an answer: install failed, a limit was hit, pytest could not
    /// collect, the test process lied about its result, ...
    Error {
        exit_code: Option<i32>,
        reason: String,
    },
    TimedOut {
        reason: String,
    },
    /// Stopped on request (the owner's cancel, or an admin disabled the owner).
    Cancelled {
        reason: String,
    },
    /// The server shut down while it ran.
    Lost {
        reason: String,
    },
}

impl Verdict {
    pub fn error(reason: impl Into<String>) -> Verdict {
        Verdict::Error {
            exit_code: None,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Verdict::Passed => Status::Passed,
            Verdict::Failed => Status::Failed,
            Verdict::Error { .. } => Status::Error,
            Verdict::TimedOut { .. } => Status::TimedOut,
            Verdict::Cancelled { .. } => Status::Cancelled,
            Verdict::Lost { .. } => Status::Lost,
        }
    }

    /// pytest's exit code, when it ran to its end.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Verdict::Passed => Some(0),
            Verdict::Failed => Some(1),
            Verdict::Error { exit_code, .. } => *exit_code,
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Passed | Verdict::Failed => None,
            Verdict::Error { reason, .. }
            | Verdict::TimedOut { reason }
            | Verdict::Cancelled { reason }
            | Verdict::Lost { reason } => Some(reason),
        }
    }
}

/// A change to a job's record. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// The dispatcher took the job from the queue to run it.
    Claim { at_ms: i64 },
    /// The running job moved on to `phase`.
    Phase(Phase),
    /// The running job's tests ended and their report was read.
    Tests(TestCounts),
    /// The running job's image turned out to have this Python (a job submitted before the
    /// server's default image was ready has none on its record until then; a job that has
    /// one keeps it).
    Python(String),
    /// The running job ended.
    Finish { verdict: Verdict, at_ms: i64 },
    /// A queued job was cancelled before it ran.
    CancelQueued { reason: String, at_ms: i64 },
    /// A running job is found after a restart: its server went away while it ran (or, in a
    /// cluster, its worker went silent and its retries are used up).
    Lose { reason: String, at_ms: i64 },
    /// A cluster's running job whose worker went silent goes back in the queue for another
    /// attempt, on any worker.
    Requeue,
}

/// Why a transition was refused; the record is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {id} is {status}: cannot {what}")]
pub struct Illegal {
    pub id: String,
    pub status: &'static str,
    pub what: &'static str,
}

impl Transition {
    fn what(&self) -> &'static str {
        match self {
            Transition::Claim { .. } => "start it",
            Transition::Phase(_) => "change its phase",
            Transition::Tests(_) => "record its tests",
            Transition::Python(_) => "record its Python",
            Transition::Finish { .. } => "finish it",
            Transition::CancelQueued { .. } => "cancel it in the queue",
            Transition::Lose { .. } => "mark it lost",
            Transition::Requeue => "queue it again",
        }
    }
}

/// Applies `transition` to `job`, or refuses it when the job is not in the status it
/// leaves from. The only code that changes a job's status.
pub fn apply(job: &mut Job, transition: &Transition) -> Result<(), Illegal> {
    let illegal = || Illegal {
        id: job.id.clone(),
        status: job.status.as_str(),
        what: transition.what(),
    };
    match (job.status, transition) {
        (Status::Queued, Transition::Claim { at_ms }) => {
            job.attempt += 1;
            job.status = Status::Running;
            job.started_ms = Some(*at_ms);
            job.phase = None;
        }
        (Status::Running, Transition::Phase(phase)) => job.phase = Some(*phase),
        (Status::Running, Transition::Tests(counts)) => job.tests = Some(*counts),
        (Status::Running, Transition::Python(name)) => {
            job.python.get_or_insert_with(|| name.clone());
        }
        (Status::Running, Transition::Finish { verdict, at_ms }) => {
            job.status = verdict.status();
            job.exit_code = verdict.exit_code();
            job.reason = verdict.reason().map(str::to_string);
            end(job, *at_ms);
        }
        (Status::Queued, Transition::CancelQueued { reason, at_ms }) => {
            job.status = Status::Cancelled;
            job.reason = Some(reason.clone());
            end(job, *at_ms);
        }
        (Status::Running, Transition::Requeue) => {
            job.status = Status::Queued;
            job.started_ms = None;
            job.phase = None;
            job.tests = None;
        }
        (Status::Running, Transition::Lose { reason, at_ms }) => {
            job.status = Status::Lost;
            job.reason = Some(reason.clone());
            end(job, *at_ms);
        }
        _ => return Err(illegal()),
    }
    Ok(())
}

fn end(job: &mut Job, at_ms: i64) {
    job.phase = None;
    job.finished_ms = Some(at_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: Status) -> Job {
        Job {
            status,
            ..Job::queued("j", "u", 1, 1, 60)
        }
    }

    fn every_transition() -> Vec<Transition> {
        vec![
            Transition::Claim { at_ms: 5 },
            Transition::Phase(Phase::Testing),
            Transition::Finish {
                verdict: Verdict::Passed,
                at_ms: 9,
            },
            Transition::CancelQueued {
                reason: "stopped".into(),
                at_ms: 9,
            },
            Transition::Lose {
                reason: "gone".into(),
                at_ms: 9,
            },
            Transition::Tests(TestCounts {
                passed: 3,
                ..TestCounts::default()
            }),
            Transition::Python("3.13".into()),
            Transition::Requeue,
        ]
    }

    #[test]
    fn a_python_is_recorded_once() {
        let mut running = job(Status::Running);
        apply(&mut running, &Transition::Python("3.11".into())).unwrap();
        assert_eq!(running.python.as_deref(), Some("3.11"));
        apply(&mut running, &Transition::Python("3.13".into())).unwrap();
        assert_eq!(
            running.python.as_deref(),
            Some("3.11"),
            "a job keeps its Python"
        );
    }

    /// From each status, which transitions are allowed and where they lead; everything
    /// else is refused and leaves the record unchanged.
    #[test]
    fn the_table_of_allowed_transitions() {
        let allowed: &[(Status, usize, Status)] = &[
            (Status::Queued, 0, Status::Running),
            (Status::Queued, 3, Status::Cancelled),
            (Status::Running, 1, Status::Running),
            (Status::Running, 2, Status::Passed),
            (Status::Running, 4, Status::Lost),
            (Status::Running, 5, Status::Running),
            (Status::Running, 6, Status::Running),
            (Status::Running, 7, Status::Queued),
        ];
        for from in Status::ALL {
            for (i, t) in every_transition().iter().enumerate() {
                let mut record = job(from);
                let before = format!("{record:?}");
                let result = apply(&mut record, t);
                match allowed.iter().find(|(f, n, _)| *f == from && *n == i) {
                    Some((_, _, to)) => {
                        assert_eq!(result, Ok(()), "{from:?} {t:?}");
                        assert_eq!(record.status, *to, "{from:?} {t:?}");
                    }
                    None => {
                        assert!(result.is_err(), "{from:?} {t:?} was allowed");
                        assert_eq!(format!("{record:?}"), before, "{from:?} {t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_finish_after_a_cancel_does_not_overwrite_it() {
        let mut record = job(Status::Queued);
        let cancel = Transition::CancelQueued {
            reason: "stopped before it started".into(),
            at_ms: 3,
        };
        apply(&mut record, &cancel).unwrap();
        let late = Transition::Finish {
            verdict: Verdict::error("could not read the project"),
            at_ms: 4,
        };
        let refused = apply(&mut record, &late).unwrap_err();
        assert_eq!(refused.to_string(), "job j is cancelled: cannot finish it");
        assert_eq!(record.status, Status::Cancelled);
        assert_eq!(record.reason.as_deref(), Some("stopped before it started"));
        assert_eq!(record.finished_ms, Some(3));
    }

    #[test]
    fn a_finish_records_the_verdict_and_clears_the_phase() {
        let mut record = job(Status::Queued);
        apply(&mut record, &Transition::Claim { at_ms: 2 }).unwrap();
        apply(&mut record, &Transition::Phase(Phase::Testing)).unwrap();
        assert_eq!(record.phase, Some(Phase::Testing));
        let verdict = Verdict::Error {
            exit_code: Some(5),
            reason: "pytest collected no tests (exit code 5)".into(),
        };
        apply(&mut record, &Transition::Finish { verdict, at_ms: 7 }).unwrap();
        assert_eq!(record.status, Status::Error);
        assert_eq!(record.exit_code, Some(5));
        assert_eq!(record.phase, None);
        assert_eq!((record.started_ms, record.finished_ms), (Some(2), Some(7)));
        assert!(record.reason.unwrap().contains("no tests"));
    }

    #[test]
    fn verdicts_map_to_terminal_statuses_only() {
        let verdicts = [
            Verdict::Passed,
            Verdict::Failed,
            Verdict::error("x"),
            Verdict::TimedOut { reason: "t".into() },
            Verdict::Cancelled { reason: "c".into() },
            Verdict::Lost { reason: "l".into() },
        ];
        for v in verdicts {
            assert!(v.status().is_terminal(), "{v:?}");
        }
        assert_eq!(Verdict::Passed.exit_code(), Some(0));
        assert_eq!(Verdict::Failed.exit_code(), Some(1));
    }
}
