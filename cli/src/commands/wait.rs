//! `ci wait <id>`: reconnect to a job, or to every job of a run, and follow it to its end.

use ci_protocol::{JobView, Status};

use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// The job id, or the run id of a submission on several Pythons (both printed by
    /// `ci submit`).
    pub id: String,
    /// Print the log (each job's, for a run) from the beginning, not only what comes from now
    /// on.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(client: &Client, args: WaitArgs) -> anyhow::Result<u8> {
    if ci_protocol::is_run_id(&args.id) {
        let jobs = crate::run::jobs(client, &args.id).await?;
        let mut out = std::io::stdout().lock();
        return crate::run::follow(client, &args.id, &jobs, args.all, &mut out).await;
    }
    let job = client.job(&args.id).await?;
    if job.expired {
        // Nothing to follow: say how it ended, and end the same way.
        eprintln!("ci: {}", expired_line(&job));
        return Ok(crate::exit::of(job.status));
    }
    eprintln!("{}", crate::commands::submit::page_line(client, &job));
    let offset = crate::follow::join_at(client, &job, args.all).await;
    crate::follow_to_end(client, &job.id, offset).await
}

/// One line about a job whose log the server removed.
pub fn expired_line(job: &JobView) -> String {
    let status = job.status.as_str().replace('_', " ");
    let how = match (&job.reason, job.exit_code) {
        (Some(reason), _) => format!("{status}: {reason}"),
        (None, Some(code)) if job.status != Status::Passed => format!("{status} (exit {code})"),
        _ => status,
    };
    format!(
        "job {} {how}; its log was removed after the server's retention period",
        job.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: Status, exit_code: Option<i32>, reason: Option<&str>) -> JobView {
        JobView {
            id: "abc".into(),
            status,
            phase: None,
            created: String::new(),
            started: None,
            finished: None,
            duration_secs: None,
            exit_code,
            reason: reason.map(str::to_string),
            queue_position: None,
            timeout_secs: 60,
            log_bytes: 0,
            expired: true,
            tests: None,
            python: None,
            run_id: None,
            project: None,
            pull: None,
        }
    }

    fn check(j: JobView, expected: &str) {
        assert_eq!(
            expired_line(&j),
            format!("job abc {expected}; its log was removed after the server's retention period")
        );
    }

    async fn wait(server: &crate::fake::Fake, args: &[&str]) -> u8 {
        use clap::Parser;
        let mut argv = vec![
            "ci",
            "--server",
            &server.url,
            "--api-key",
            "ci_test",
            "wait",
        ];
        argv.extend(args);
        crate::run(crate::Cli::try_parse_from(argv).unwrap()).await
    }

    #[tokio::test]
    async fn waits_for_every_job_of_a_run() {
        use crate::run::tests::{logs, server, RUN};
        let fake = server(false).await;
        assert_eq!(wait(&fake, &[RUN]).await, crate::exit::JOB_FAILED);
        // New output only: from where each log stood when the run was read.
        assert_eq!(
            logs(&fake),
            [
                "/v1/jobs/0a0000000001/log?offset=12",
                "/v1/jobs/0a0000000002/log?offset=12"
            ]
        );
        let fake = server(false).await;
        assert_eq!(wait(&fake, &[RUN, "--all"]).await, crate::exit::JOB_FAILED);
        assert_eq!(
            logs(&fake),
            [
                "/v1/jobs/0a0000000001/log?offset=0",
                "/v1/jobs/0a0000000002/log?offset=0"
            ]
        );
        // A run without jobs is not found, as an unknown job is.
        let fake = server(true).await;
        assert_eq!(wait(&fake, &[RUN]).await, crate::exit::CLIENT_ERROR);
        assert!(logs(&fake).is_empty());
    }

    #[tokio::test]
    async fn joins_a_running_job_at_the_start_of_its_line() {
        use crate::fake::{Fake, Reply};
        use std::sync::atomic::{AtomicUsize, Ordering};
        const LOG: &str = "first\nhalf a li";
        let asked = AtomicUsize::new(0);
        let fake = Fake::start(move |req| {
            if let Some((_, offset)) = req.target.split_once("/log?offset=") {
                let from: usize = offset.parse().unwrap();
                return Reply::bytes(200, "text/plain", LOG.as_bytes()[from..].to_vec());
            }
            // Running when first asked, then over.
            let status = match asked.fetch_add(1, Ordering::SeqCst) {
                0 => "running",
                _ => "passed",
            };
            Reply::json(
                200,
                &format!(
                    r#"{{"id":"j","status":"{status}","phase":"testing","created":"t","started":null,"finished":null,"duration_secs":null,"exit_code":0,"reason":null,"queue_position":null,"log_bytes":{}}}"#,
                    LOG.len()
                ),
            )
        })
        .await;
        assert_eq!(wait(&fake, &["j"]).await, crate::exit::SUCCESS);
        let logs: Vec<String> = fake
            .requests()
            .into_iter()
            .map(|r| r.target)
            .filter(|t| t.contains("/log?"))
            .collect();
        // The tail to find the line's start, then the follow from it.
        assert_eq!(logs, ["/v1/jobs/j/log?offset=0", "/v1/jobs/j/log?offset=6"]);
    }

    #[test]
    fn says_how_an_expired_job_ended() {
        check(job(Status::Passed, Some(0), None), "passed");
        check(job(Status::Failed, Some(1), None), "failed (exit 1)");
        check(
            job(Status::TimedOut, None, Some("timed out after 1m")),
            "timed out: timed out after 1m",
        );
    }
}
