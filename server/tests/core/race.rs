//! The race between a cancel and the dispatcher taking the same job: whoever wins, the job
//! ends in exactly one terminal state, a job cancelled while queued never runs, and nothing
//! of any job stays in the jobs directory.

use std::collections::HashMap;

use axum::http::StatusCode;
use ci_protocol::{JobView, Status};
use ci_server::executor::StopReason;
use ci_server::lifecycle::Verdict;

use crate::support::*;

const WORKERS: usize = 4;
const ROUNDS: usize = 40;

/// What the cancel of one job was answered.
#[derive(Debug)]
enum Answered {
    /// 200, cancelled in the queue.
    Cancelled,
    /// 200, the job had left the queue: asked to stop. `answered` is the status the answer
    /// gave: `running`, or `queued` when the dispatcher had taken the job but not yet recorded
    /// it running (see `claim.rs`).
    Stopping { answered: Status },
    /// 409: it had already ended.
    Ended,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_then_cancel_races_the_dispatcher_and_every_job_ends_once() {
    let app = TestApp::start(FakeExecutor::auto(Verdict::Passed), &["--max-jobs", "2"]).await;
    let key = app.user("ann@example.com").await;
    let rounds = (0..WORKERS).map(|_| async {
        let mut seen = Vec::new();
        for _ in 0..ROUNDS {
            let id = app.submit(&key).await.id;
            let answer = app.cancel(&key, &id).await;
            let answered = match answer.status {
                StatusCode::OK => match answer.json::<JobView>().status {
                    Status::Cancelled => {
                        app.fake.forbid(&id);
                        Answered::Cancelled
                    }
                    answered @ (Status::Running | Status::Queued) => {
                        Answered::Stopping { answered }
                    }
                    other => panic!("cancel of {id} answered 200 with {other}"),
                },
                StatusCode::CONFLICT => Answered::Ended,
                other => panic!("cancel of {id}: {other} {}", answer.text()),
            };
            seen.push((id, answered));
        }
        seen
    });
    let seen: Vec<(String, Answered)> = futures_util::future::join_all(rounds)
        .await
        .into_iter()
        .flatten()
        .collect();

    let mut tally: HashMap<String, usize> = HashMap::new();
    for (id, answered) in &seen {
        let job = app.wait_ended(&key, id).await;
        let runs = app.fake.runs(id);
        assert!(runs <= 1, "job {id} ran {runs} times");
        match answered {
            Answered::Cancelled => {
                assert_eq!(job.status, Status::Cancelled, "{id}");
                assert_eq!(job.reason.as_deref(), Some("stopped before it started"));
                assert_eq!(runs, 0, "job {id} ran after it was cancelled in the queue");
            }
            Answered::Stopping { .. } => {
                assert_eq!(runs, 1, "{id}");
                match job.status {
                    Status::Cancelled => {
                        assert_eq!(job.reason.as_deref(), Some("stopped on request"));
                        assert_eq!(app.fake.stop_seen(id), Some(StopReason::Cancelled));
                    }
                    // It ended before the stop reached it.
                    Status::Passed => assert_eq!(app.fake.stop_seen(id), None),
                    other => panic!("job {id} asked to stop ended {other}"),
                }
            }
            Answered::Ended => {
                assert_eq!(runs, 1, "{id}");
                assert_eq!(job.status, Status::Passed, "{id}");
            }
        }
        // What the record says is what the run returned, if it ran.
        if let Some(verdict) = app.fake.verdict_of(id) {
            assert_eq!(job.status, verdict.status(), "{id}");
        }
        let kind = match answered {
            Answered::Cancelled => "cancelled in the queue".to_string(),
            Answered::Stopping { answered } => format!("stopping (answered {answered})"),
            Answered::Ended => "already ended".to_string(),
        };
        *tally
            .entry(format!("{kind} -> {}", job.status))
            .or_default() += 1;
    }
    eprintln!("cancel outcomes: {tally:?}");

    // Still so once everything is quiet: nothing overwrote an end.
    for (id, answered) in &seen {
        if matches!(answered, Answered::Cancelled) {
            let job = app.state.store.get(id).await.unwrap().unwrap();
            assert_eq!(job.status, Status::Cancelled, "{id}");
        }
    }
    assert!(
        app.fake.violations().is_empty(),
        "{:?}",
        app.fake.violations()
    );
    assert_eq!(app.records().await.len(), WORKERS * ROUNDS);
    assert!(
        app.job_dirs().is_empty(),
        "left behind: {:?}",
        app.job_dirs()
    );
    assert!(
        tally
            .keys()
            .any(|k| k.starts_with("cancelled in the queue")),
        "no cancel ever found a job still queued: the race was not exercised ({tally:?})"
    );
}
