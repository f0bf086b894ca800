//! Follows a job's log to its end, surviving dropped connections without losing or repeating
//! a byte: the server addresses the log by byte offset, and we resume at the last byte printed.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;

use ci_protocol::JobView;

use crate::client::{Client, RequestError};

/// How long to keep trying to reach the server while it is away.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// Prints the log of `id` from `offset` to stdout until the job ends; returns the final job.
pub async fn follow(client: &Client, id: &str, offset: u64) -> anyhow::Result<JobView> {
    follow_into(client, id, offset, &mut std::io::stdout().lock()).await
}

/// [`follow`], writing the log to `out`.
pub async fn follow_into(
    client: &Client,
    id: &str,
    mut offset: u64,
    out: &mut impl Write,
) -> anyhow::Result<JobView> {
    let mut backoff = Duration::from_millis(100);
    let mut away_since: Option<std::time::Instant> = None;
    loop {
        let attempt: Result<(), RequestError> = async {
            let resp = client.log(id, offset).await?;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| RequestError::Other(format!("connection lost: {e}")))?;
                out.write_all(&chunk)
                    .map_err(|e| RequestError::Other(format!("cannot write output: {e}")))?;
                out.flush().ok();
                offset += chunk.len() as u64;
                away_since = None;
                backoff = Duration::from_millis(100);
            }
            Ok(())
        }
        .await;
        match attempt {
            Ok(()) => {
                // The stream ended: either the job ended, or the server is going away.
                match client.job(id).await {
                    Ok(job) if job.status.is_terminal() && offset >= job.log_bytes => {
                        return Ok(job)
                    }
                    // Not over: the server is going away; come back soon, without backing off.
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) if !e.is_transient() => return Err(anyhow!(e)),
                    Err(_) => {}
                }
            }
            // The job ended long enough ago that the server removed its log.
            Err(RequestError::Http(410, message)) => {
                eprintln!("ci: {message}");
                return client.job(id).await.map_err(|e| anyhow!(e));
            }
            // The log is shorter than what was printed (it was removed or replaced on the
            // server): nothing more can come from this offset. A finished job still has its
            // result; anything else is an error, never a retry.
            Err(RequestError::Http(416, message)) => {
                return match client.job(id).await {
                    Ok(job) if job.status.is_terminal() => Ok(job),
                    Ok(_) => Err(anyhow!(message)),
                    Err(e) => Err(anyhow!(e)),
                };
            }
            Err(e) if !e.is_transient() => return Err(anyhow!(e)),
            Err(e) => {
                let since = *away_since.get_or_insert_with(|| {
                    eprintln!("ci: {e}; reconnecting...");
                    std::time::Instant::now()
                });
                if since.elapsed() > GIVE_UP_AFTER {
                    return Err(anyhow!(
                        "{e}; gave up after {}s (the job may still run: ci wait {id})",
                        GIVE_UP_AFTER.as_secs()
                    ));
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fake, Reply};

    /// A fake server: every log request gets 416, every job request `job`.
    async fn fake(job: &'static str) -> Fake {
        Fake::start(move |req| {
            if req.target.contains("/log?") {
                Reply::error(
                    416,
                    "offset 5 is past the end of the log of job j (3 bytes)",
                )
                .header("Content-Range: bytes */3")
            } else {
                Reply::json(200, job)
            }
        })
        .await
    }

    fn logs(fake: &Fake) -> usize {
        let requests = fake.requests();
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.target.contains("/log?"))
            .count()
    }

    const FINISHED: &str = r#"{"id":"j","status":"passed","phase":null,"created":"t","started":null,"finished":null,"duration_secs":null,"exit_code":0,"reason":null,"queue_position":null,"log_bytes":3}"#;
    const RUNNING: &str = r#"{"id":"j","status":"running","phase":null,"created":"t","started":null,"finished":null,"duration_secs":null,"exit_code":null,"reason":null,"queue_position":null,"log_bytes":3}"#;

    #[tokio::test]
    async fn an_offset_past_the_end_ends_the_follow_once() {
        // A finished job: its result, after one try.
        let server = fake(FINISHED).await;
        let job = follow(&server.client(), "j", 5).await.unwrap();
        assert_eq!(job.status, ci_protocol::Status::Passed);
        assert_eq!(logs(&server), 1);
        // A job still running: the server's message, never a loop.
        let server = fake(RUNNING).await;
        let e = follow(&server.client(), "j", 5).await.unwrap_err();
        assert!(e.to_string().contains("past the end of the log"), "{e}");
        assert_eq!(logs(&server), 1);
    }
}
