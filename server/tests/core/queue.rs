//! The order jobs start in: one user's in submission order, users taking turns, the
//! per-user running cap. The fake records the order its runs began.

use ci_protocol::Status;
use ci_server::lifecycle::Verdict;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn one_users_jobs_run_in_submission_order() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let key = app.user("ann@example.com").await;
    let a1 = app.submit(&key).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&key).await;
    let a3 = app.submit(&key).await;
    assert_eq!((a2.queue_position, a3.queue_position), (Some(1), Some(2)));
    assert_eq!(app.job(&key, &a3.id).await.queue_position, Some(2));
    let note = "==> waiting for a free slot: position 1 in the queue\n";
    assert_eq!(app.log_head(&key, &a2.id, note.len()).await, note);

    app.fake.release(&a1, b"", Verdict::Passed);
    app.fake.wait_started(&a2.id).await;
    assert_eq!(app.job(&key, &a3.id).await.queue_position, Some(1));
    app.fake.release(&a2.id, b"", Verdict::Passed);
    app.fake.wait_started(&a3.id).await;
    app.fake.release(&a3.id, b"", Verdict::Passed);
    app.wait_ended(&key, &a3.id).await;
    assert_eq!(app.fake.started(), [a1, a2.id, a3.id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_user_does_not_wait_behind_the_first_users_backlog() {
    let app = TestApp::start(FakeExecutor::holding(), &["--max-jobs", "1"]).await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    let a1 = app.submit(&ann).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&ann).await.id;
    let a3 = app.submit(&ann).await.id;
    let b1 = app.submit(&bob).await;
    // Bob came last but has nothing running: his job is next.
    assert_eq!(b1.queue_position, Some(1));
    assert_eq!(app.job(&ann, &a2).await.queue_position, Some(2));
    assert_eq!(app.job(&ann, &a3).await.queue_position, Some(3));

    let order = [&a1, &b1.id, &a2, &a3];
    for (i, id) in order.iter().enumerate() {
        app.fake.wait_started(id).await;
        assert_eq!(app.fake.started().len(), i + 1, "one job at a time");
        app.fake.release(id, b"", Verdict::Passed);
    }
    let last = app.wait_ended(&ann, &a3).await;
    assert_eq!(last.status, Status::Passed);
    assert_eq!(app.fake.started(), order.map(String::clone));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_user_running_cap_holds_a_user_back_while_slots_are_free() {
    let app = TestApp::start(
        FakeExecutor::holding(),
        &["--max-jobs", "2", "--max-running-per-user", "1"],
    )
    .await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    let a1 = app.submit(&ann).await.id;
    app.fake.wait_started(&a1).await;
    let a2 = app.submit(&ann).await.id;
    // A slot is free, but Ann has her one job running: Bob's job, submitted later, takes it.
    let b1 = app.submit(&bob).await.id;
    app.fake.wait_started(&b1).await;
    let waiting = app.job(&ann, &a2).await;
    assert_eq!(waiting.status, Status::Queued);
    assert_eq!(waiting.queue_position, Some(1));
    assert_eq!(app.fake.started(), [a1.clone(), b1.clone()]);
    let note = "==> waiting: 1 of your jobs are running, the most this server runs per user\n";
    assert_eq!(app.log_head(&ann, &a2, note.len()).await, note);

    app.fake.release(&a1, b"", Verdict::Passed);
    app.fake.wait_started(&a2).await;
    assert_eq!(app.fake.started(), [a1, b1.clone(), a2.clone()]);
    app.fake.release(&b1, b"", Verdict::Passed);
    app.fake.release(&a2, b"", Verdict::Passed);
    assert_eq!(app.wait_ended(&ann, &a2).await.status, Status::Passed);
}
