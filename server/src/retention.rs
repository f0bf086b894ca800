//! Job retention (`--job-retention`): the log, test report and artifacts of a job that
//! finished longer ago than the retention period are removed and its record marked expired
//! (`Job::expired_ms`). The record itself stays (it is small, and keeps the test counts):
//! `ci list` still shows the job, as expired, and its log, report and artifacts answer
//! 410 Gone instead of an empty body.
//!
//! The results and the log are removed before the record is marked, so a crash in between
//! leaves a job whose files are gone and that the next round marks; never a marked job
//! with files left.

use std::time::Duration;

use std::sync::Arc;

use crate::logs::LogStore;
use crate::model::Job;
use crate::results::ResultStore;
use crate::store::{JobStore, StoreError};

/// How often the collector looks: a quarter of the retention (so a log outlives it by at
/// most a quarter), at most hourly, at least every second.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Whether the log of `job` is due for removal at `now_ms`: the job has finished, at
/// least `retention` ago, and was not expired yet.
pub fn is_due(job: &Job, now_ms: i64, retention: Duration) -> bool {
    if !job.status.is_terminal() || job.expired_ms.is_some() {
        return false;
    }
    // Every path that ends a job sets the finish time; the creation time is a safe
    // stand-in for a record that somehow lacks it.
    let finished = job.finished_ms.unwrap_or(job.created_ms);
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(finished) >= retention_ms
}

/// One round: removes the logs of the jobs due at `now_ms` and marks them expired;
/// returns how many. A log that cannot be removed is logged and tried again next round.
pub async fn collect(
    store: &dyn JobStore,
    logs: &dyn LogStore,
    results: &dyn ResultStore,
    retention: Duration,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let due: Vec<String> = store
        .list()
        .await?
        .into_iter()
        .filter(|job| is_due(job, now_ms, retention))
        .map(|job| job.id)
        .collect();
    let mut expired = 0;
    for id in due {
        if let Err(e) = results.remove(&id).await {
            tracing::warn!(job = %id, error = %e, "cannot remove an expired job's report and artifacts");
            continue;
        }
        match logs.remove(&id).await {
            Ok(true) => {}
            // Still live: its job ended a moment ago and is being wound down.
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot remove an expired job's log");
                continue;
            }
        }
        if store.mark_expired(&id, now_ms).await? {
            expired += 1;
        }
    }
    Ok(expired)
}

/// Runs [`collect`] now and then every [`interval`], until the task is aborted.
pub async fn run(
    store: Arc<dyn JobStore>,
    logs: Arc<dyn LogStore>,
    results: impl Into<Arc<dyn ResultStore>>,
    retention: Duration,
) {
    let results: Arc<dyn ResultStore> = results.into();
    let mut every = tokio::time::interval(interval(retention));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = crate::model::now_ms();
        match collect(&*store, &*logs, &*results, retention, now).await {
            Ok(0) => {}
            Ok(expired) => {
                tracing::info!(expired, retention = %describe(retention), "removed the logs of old jobs");
            }
            Err(e) => tracing::error!(error = %crate::error::chain(&e), "cannot expire old jobs"),
        }
    }
}

/// The retention period in words, for messages: "30 days", "12 hours", "3 seconds".
pub fn describe(retention: Duration) -> String {
    let secs = retention.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if retention.subsec_nanos() != 0 || secs == 0 {
        return humantime::format_duration(retention).to_string();
    }
    for (unit, len) in [("day", 86_400), ("hour", 3_600), ("minute", 60)] {
        if secs % len == 0 {
            return plural(secs / len, unit);
        }
    }
    plural(secs, "second")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use crate::results::Results;

    const DAY: Duration = Duration::from_secs(86_400);

    fn job(id: &str, status: Status, finished_ms: Option<i64>) -> Job {
        Job {
            status,
            finished_ms,
            ..Job::queued(id, "u", 0, 0, 60)
        }
    }

    fn check(status: Status, finished_ms: Option<i64>, now_ms: i64, due: bool) {
        let j = job("j", status, finished_ms);
        assert_eq!(
            is_due(&j, now_ms, DAY),
            due,
            "{status:?} {finished_ms:?} {now_ms}"
        );
    }

    #[test]
    fn due_once_finished_for_the_whole_retention() {
        let day = 86_400_000;
        check(Status::Passed, Some(1_000), 1_000 + day, true);
        check(Status::Failed, Some(1_000), 1_000 + day - 1, false);
        check(Status::Cancelled, Some(0), 5 * day, true);
        check(Status::Lost, None, day, true);
        check(Status::Running, Some(0), 5 * day, false);
        check(Status::Queued, None, 5 * day, false);
        let mut expired = job("j", Status::Passed, Some(0));
        expired.expired_ms = Some(day);
        assert!(!is_due(&expired, 5 * day, DAY));
        // A clock that went backwards expires nothing.
        check(Status::Passed, Some(day), 0, false);
    }

    #[tokio::test]
    async fn collects_the_logs_and_results_of_old_jobs_and_keeps_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::MemoryJobs::default();
        let logs = crate::logs::FileLogs::new(dir.path().join("logs")).unwrap();
        let results = Results::new(dir.path().join("results"));
        let junit = dir.path().join("junit.xml");
        std::fs::write(&junit, "<testsuite/>").unwrap();
        for id in ["old", "new"] {
            let report = ci_protocol::TestReport::default();
            results.keep_report(id, &report, &junit).unwrap();
        }
        let now = 10 * 86_400_000;
        for (id, status, finished) in [
            ("old", Status::Passed, Some(0)),
            ("new", Status::Failed, Some(now - 1_000)),
            ("running", Status::Running, None),
            ("ending", Status::Error, Some(0)),
        ] {
            db.submit(&job(id, status, finished)).await.unwrap();
            let log = logs.open_live(id, u64::MAX).await.unwrap();
            log.append(b"output\n").unwrap();
            if id != "running" && id != "ending" {
                logs.close(id).await;
            }
        }
        assert_eq!(collect(&db, &logs, &results, DAY, now).await.unwrap(), 1);
        assert!(!logs.path("old").exists());
        assert_eq!(results.report("old").unwrap(), None);
        assert!(results.report("new").unwrap().is_some());
        assert_eq!(db.get("old").await.unwrap().unwrap().expired_ms, Some(now));
        for kept in ["new", "running", "ending"] {
            assert!(logs.path(kept).exists(), "{kept}");
            let record = db.get(kept).await.unwrap().unwrap();
            assert_eq!(record.expired_ms, None, "{kept}");
        }
        // The job whose log was still live goes once it is closed; the rest stays.
        logs.close("ending").await;
        assert_eq!(collect(&db, &logs, &results, DAY, now).await.unwrap(), 1);
        assert!(!logs.path("ending").exists());
        assert_eq!(collect(&db, &logs, &results, DAY, now).await.unwrap(), 0);
        assert_eq!(db.list().await.unwrap().len(), 4);
    }

    #[test]
    fn intervals_and_words() {
        assert_eq!(interval(30 * DAY), Duration::from_secs(3600));
        assert_eq!(interval(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(interval(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(describe(30 * DAY), "30 days");
        assert_eq!(describe(DAY), "1 day");
        assert_eq!(describe(Duration::from_secs(7200)), "2 hours");
        assert_eq!(describe(Duration::from_secs(90)), "90 seconds");
        assert_eq!(describe(Duration::from_secs(3)), "3 seconds");
        assert_eq!(describe(Duration::from_millis(1500)), "1s 500ms");
    }
}
