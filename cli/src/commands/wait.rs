//! `ci wait <id>`: reconnect to a job and follow it to its end.

use ci_protocol::{JobView, Status};

use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// The job id (printed by `ci submit`).
    pub id: String,
    /// Print the log from the beginning, not only what comes from now on.
    #[arg(long)]
    pub all: bool,
}

pub async fn run(client: &Client, args: WaitArgs) -> anyhow::Result<u8> {
    let job = client.job(&args.id).await?;
    if job.expired {
        // Nothing to follow: say how it ended, and end the same way.
        eprintln!("ci: {}", expired_line(&job));
        return Ok(crate::exit::of(job.status));
    }
    let offset = if args.all { 0 } else { job.log_bytes };
    crate::follow_to_end(client, &job.id, offset).await
}

/// One line about a job whose log the server removed.
fn expired_line(job: &JobView) -> String {
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
        }
    }

    fn check(j: JobView, expected: &str) {
        assert_eq!(
            expired_line(&j),
            format!("job abc {expected}; its log was removed after the server's retention period")
        );
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
