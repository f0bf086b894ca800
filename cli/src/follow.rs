//! Follows a job's log to its end, surviving dropped connections without losing or repeating
//! a byte: the server addresses the log by byte offset, and we resume at the last byte printed.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;

use crate::client::{Client, JobView, RequestError};

/// How long to keep trying to reach the server while it is away.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// Prints the log of `id` from `offset` to stdout until the job ends; returns the final job.
pub async fn follow(client: &Client, id: &str, mut offset: u64) -> anyhow::Result<JobView> {
    let mut out = std::io::stdout().lock();
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
                    Ok(job) if job.is_terminal() && offset >= job.log_bytes => return Ok(job),
                    // Not over: the server is going away; come back soon, without backing off.
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) if !e.is_transient() => return Err(anyhow!(e)),
                    Err(_) => {}
                }
            }
            // The log is shorter than what was printed (it was removed or replaced on the
            // server): nothing more can come from this offset. A finished job still has its
            // result; anything else is an error, never a retry.
            Err(RequestError::Http(416, message)) => {
                return match client.job(id).await {
                    Ok(job) if job.is_terminal() => Ok(job),
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
