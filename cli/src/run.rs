//! A run: the jobs of one submission on several Pythons (`ci submit test --python 3.11,3.13`,
//! `ci wait <run id>`). They run side by side on the server; here they are followed one after
//! another, each log whole under a header of its own, then summed up in one table.

use std::io::Write;

use anyhow::bail;
use ci_protocol::{JobView, ListQuery, Status};

use crate::client::Client;
use crate::style::Paint;
use crate::summary::clean;
use crate::{exit, follow};

/// The jobs of run `run_id`, oldest first; a run without any is not found.
pub async fn jobs(client: &Client, run_id: &str) -> anyhow::Result<Vec<JobView>> {
    let jobs: Vec<JobView> = client
        .get_json_with("/v1/jobs", &ListQuery::run(run_id))
        .await?;
    // A server that knows no runs ignores `run=` and lists all of the caller's jobs.
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .filter(|j| j.run_id.as_deref() == Some(run_id))
        .collect();
    if jobs.is_empty() {
        bail!("run {run_id} not found");
    }
    Ok(jobs)
}

/// Follows every job of a run to its end, one after another (from the start of each log, or
/// from where it stood when `jobs` was read), then prints the table and the run's result;
/// returns the exit code of the whole: success only if every job passed. Ctrl+C leaves the
/// jobs running and says how to get back to them.
pub async fn follow(
    client: &Client,
    run_id: &str,
    jobs: &[JobView],
    from_start: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    for job in jobs {
        eprintln!("{}", crate::commands::submit::page_line(client, job));
    }
    let followed = async {
        let mut ended = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{}", header(job))?;
            out.flush().ok();
            if job.expired {
                eprintln!("ci: {}", crate::commands::wait::expired_line(job));
                ended.push(job.clone());
                continue;
            }
            let offset = follow::join_at(client, job, from_start).await;
            let end = follow::follow_into(client, &job.id, offset, out).await?;
            let report = crate::report_if_failed(client, &end).await;
            for line in crate::end_lines(&end, report.as_ref(), Paint::stdout()) {
                writeln!(out, "{line}")?;
            }
            out.flush().ok();
            crate::warn_unfinished(&end);
            ended.push(end);
        }
        anyhow::Ok(ended)
    };
    tokio::select! {
        ended = followed => {
            let ended = ended?;
            writeln!(out)?;
            write!(out, "{}", table(&ended, Paint::stdout()))?;
            writeln!(out, "{}", result_line(run_id, &ended))?;
            out.flush().ok();
            Ok(code(&ended))
        }
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\nci: interrupted; run {run_id} keeps running on the server. Reconnect with: ci wait {run_id}");
            Ok(exit::INTERRUPTED)
        }
    }
}

/// `==> Python 3.11 (job 0a1b2c3d4e5f)`, above a job's log.
pub fn header(job: &JobView) -> String {
    format!("==> Python {} (job {})", python(job), clean(&job.id))
}

/// The job's Python as the server names it; `-` from a server that does not say.
fn python(job: &JobView) -> String {
    job.python.as_deref().map_or("-".into(), clean)
}

/// One row per job: PYTHON, JOB, STATUS, TESTS, DURATION.
pub fn table(jobs: &[JobView], paint: Paint) -> String {
    let rows = jobs.iter().map(|j| {
        vec![
            python(j),
            clean(&j.id),
            paint.status(j.status, j.status.as_str()),
            j.tests.map_or("-".into(), |t| counts(&t)),
            j.duration_secs.map_or("-".into(), |d| format!("{d:.1}s")),
        ]
    });
    crate::table::render(&["PYTHON", "JOB", "STATUS", "TESTS", "DURATION"], rows)
}

/// `12 passed, 1 failed`: pytest's words without its time (the table has a column for it).
fn counts(tests: &ci_protocol::TestCounts) -> String {
    let summary = tests.summary();
    match summary.rsplit_once(" in ") {
        Some((counts, _)) => counts.to_string(),
        None => summary,
    }
}

/// `run r0a1…: all 2 passed`, or `run r0a1…: 1 of 2 failed`.
pub fn result_line(run_id: &str, jobs: &[JobView]) -> String {
    let not_passed = jobs.iter().filter(|j| j.status != Status::Passed).count();
    if not_passed == 0 {
        format!("run {run_id}: all {} passed", jobs.len())
    } else {
        format!("run {run_id}: {not_passed} of {} failed", jobs.len())
    }
}

/// Success only if every job passed.
fn code(jobs: &[JobView]) -> u8 {
    if jobs.iter().all(|j| j.status == Status::Passed) {
        exit::SUCCESS
    } else {
        exit::JOB_FAILED
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake::{Fake, Reply};

    pub const RUN: &str = "r0a0000000001";

    /// A job of run [`RUN`] as the server sends it.
    pub fn job_json(id: &str, python: &str, status: &str, log: &str, tests: &str) -> String {
        format!(
            r#"{{"id":"{id}","status":"{status}","phase":null,"created":"t","started":null,"finished":null,"duration_secs":1.5,"exit_code":0,"reason":null,"queue_position":null,"log_bytes":{},"tests":{tests},"python":"{python}","run_id":"{RUN}"}}"#,
            log.len()
        )
    }

    const PASSED: &str = r#"{"passed":12,"failed":0,"errors":0,"skipped":0,"xfailed":0,"xpassed":0,"duration_secs":0.5}"#;
    const FAILED: &str = r#"{"passed":12,"failed":1,"errors":0,"skipped":0,"xfailed":0,"xpassed":0,"duration_secs":0.5}"#;

    /// A server with run [`RUN`]: job `0a0000000001` on 3.11 passed, `0a0000000002` on 3.13
    /// failed (without a report to list its failures: 404). `empty` lists no job for it.
    pub async fn server(empty: bool) -> Fake {
        Fake::start(move |req| answer(&req.target, empty)).await
    }

    /// [`server`]'s answer to a GET of `target`.
    pub fn answer(target: &str, empty: bool) -> Reply {
        let one = job_json("0a0000000001", "3.11", "passed", "log of 3.11\n", PASSED);
        let two = job_json("0a0000000002", "3.13", "failed", "log of 3.13\n", FAILED);
        if target == format!("/v1/jobs?run={RUN}") {
            if empty {
                return Reply::json(200, "[]");
            }
            return Reply::json(200, &format!("[{one},{two}]"));
        }
        match target {
            "/v1/jobs/0a0000000001" => return Reply::json(200, &one),
            "/v1/jobs/0a0000000002" => return Reply::json(200, &two),
            _ => {}
        }
        let Some(rest) = target.strip_prefix("/v1/jobs/0a000000000") else {
            return Reply::error(404, "no such route");
        };
        let log = match rest.split_once("/log?offset=") {
            Some(("1", offset)) => ("log of 3.11\n", offset),
            Some(("2", offset)) => ("log of 3.13\n", offset),
            _ => return Reply::error(404, "no such job"),
        };
        let from = log.1.parse::<usize>().unwrap_or(0).min(log.0.len());
        Reply::bytes(200, "text/plain", log.0.as_bytes()[from..].to_vec())
    }

    /// The log requests of the fake, in order.
    pub fn logs(server: &Fake) -> Vec<String> {
        server
            .requests()
            .into_iter()
            .map(|r| r.target)
            .filter(|t| t.contains("/log?"))
            .collect()
    }

    #[tokio::test]
    async fn a_run_is_followed_job_after_job_then_summed_up() {
        let server = server(false).await;
        let client = server.client();
        let jobs = jobs(&client, RUN).await.unwrap();
        let mut out = Vec::new();
        let code = follow(&client, RUN, &jobs, true, &mut out).await.unwrap();
        assert_eq!(code, exit::JOB_FAILED);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "==> Python 3.11 (job 0a0000000001)\n\
             log of 3.11\n\
             ==> tests: 12 passed in 0.50s · job 0a0000000001\n\
             ==> result: passed (1.5s) · job 0a0000000001\n\
             \n\
             ==> Python 3.13 (job 0a0000000002)\n\
             log of 3.13\n\
             ==> tests: 12 passed, 1 failed in 0.50s · job 0a0000000002\n\
             ==> result: failed (1.5s) · job 0a0000000002\n\
             \n\
             PYTHON  JOB           STATUS  TESTS                DURATION\n\
             3.11    0a0000000001  passed  12 passed            1.5s\n\
             3.13    0a0000000002  failed  12 passed, 1 failed  1.5s\n\
             run r0a0000000001: 1 of 2 failed\n"
        );
        assert_eq!(
            logs(&server),
            [
                "/v1/jobs/0a0000000001/log?offset=0",
                "/v1/jobs/0a0000000002/log?offset=0"
            ]
        );
    }

    #[tokio::test]
    async fn a_run_without_jobs_is_not_found() {
        let server = server(true).await;
        let e = jobs(&server.client(), RUN).await.unwrap_err();
        assert_eq!(e.to_string(), format!("run {RUN} not found"));
    }

    #[test]
    fn the_run_in_one_line() {
        let job = |status: Status| -> JobView {
            let mut j: JobView =
                serde_json::from_str(&job_json("a", "3.11", "passed", "", "null")).unwrap();
            j.status = status;
            j
        };
        let passed = [job(Status::Passed), job(Status::Passed)];
        assert_eq!(result_line("rab", &passed), "run rab: all 2 passed");
        assert_eq!(code(&passed), exit::SUCCESS);
        let mixed = [job(Status::Passed), job(Status::TimedOut)];
        assert_eq!(result_line("rab", &mixed), "run rab: 1 of 2 failed");
        assert_eq!(code(&mixed), exit::JOB_FAILED);
    }
}
