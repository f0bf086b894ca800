//! Follows a job's log to its end, surviving dropped connections without losing or repeating
//! a byte: the server addresses the log by byte offset, and we resume at the last byte printed.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;

use ci_protocol::JobView;

use crate::client::{Client, RequestError};
use crate::progress::Progress;

/// How long to keep trying to reach the server while it is away.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// Prints the log of `id` from `offset` to stdout until the job ends; returns the final job.
pub async fn follow(client: &Client, id: &str, offset: u64) -> anyhow::Result<JobView> {
    follow_into(client, id, offset, &mut std::io::stdout().lock()).await
}

/// [`follow`], writing the log to `out`, with the progress line on stderr while the job waits
/// (when stderr is a terminal).
pub async fn follow_into(
    client: &Client,
    id: &str,
    offset: u64,
    out: &mut impl Write,
) -> anyhow::Result<JobView> {
    let progress = Progress::stderr();
    let notice = |line: &str| eprintln!("ci: {line}");
    tokio::select! {
        biased;
        job = follow_with(client, id, offset, out, &progress, &notice) => job,
        () = crate::progress::poll(client, id, &progress) => unreachable!("the poll never ends"),
    }
}

/// [`follow_into`] for a program rather than a person (the Python library): no progress line,
/// and what the follow has to say (a lost connection, a removed log) goes to `notice`.
pub async fn follow_quietly(
    client: &Client,
    id: &str,
    offset: u64,
    out: &mut impl Write,
    notice: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<JobView> {
    follow_with(client, id, offset, out, &Progress::to(None, 0), notice).await
}

/// Where `ci wait` starts to print a job's log: at 0 with `--all`; a finished job at its end
/// (only its summary and result follow); a running one at the start of the line its log
/// stands in ([`line_start`]), not half-way through it.
pub async fn join_at(client: &Client, job: &JobView, from_start: bool) -> u64 {
    match (from_start, job.status.is_terminal()) {
        (true, _) => 0,
        (false, true) => job.log_bytes,
        (false, false) => line_start(client, &job.id, job.log_bytes).await,
    }
}

/// How far back `ci wait` looks for the start of the line a running job's log stands in.
pub const LINE_START_WINDOW: u64 = 64 * 1024;

/// Where the line that the log of `id` stands in at `log_bytes` begins: after the last newline
/// of the [`LINE_START_WINDOW`] bytes before it; `log_bytes` itself when there is none (and the
/// window does not reach back to the start of the log) or the tail cannot be had.
pub async fn line_start(client: &Client, id: &str, log_bytes: u64) -> u64 {
    let from = log_bytes.saturating_sub(LINE_START_WINDOW);
    if from == log_bytes {
        return log_bytes;
    }
    let want = (log_bytes - from) as usize;
    let tail = async {
        let resp = client.log(id, from).await.ok()?;
        let mut body = resp.bytes_stream();
        let mut tail = Vec::with_capacity(want);
        while tail.len() < want {
            let chunk = body.next().await?.ok()?;
            tail.extend_from_slice(&chunk[..chunk.len().min(want - tail.len())]);
        }
        Some(tail)
    };
    // A live log's body never ends while the job runs: what is wanted is already there.
    let tail = tokio::time::timeout(Duration::from_secs(10), tail).await;
    match tail {
        Ok(Some(tail)) => start_in(&tail, from, log_bytes),
        _ => log_bytes,
    }
}

/// [`line_start`] in `tail`, the bytes of the log from `from` to `end`.
fn start_in(tail: &[u8], from: u64, end: u64) -> u64 {
    match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None if from == 0 => 0,
        None => end,
    }
}

/// [`follow_into`], telling `progress` of every write and `notice` of a lost connection.
async fn follow_with(
    client: &Client,
    id: &str,
    mut offset: u64,
    out: &mut impl Write,
    progress: &Progress,
    notice: &(dyn Fn(&str) + Sync),
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
                progress.before_output(&chunk);
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
                progress.clear();
                notice(&message);
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
                    progress.clear();
                    notice(&format!("{e}; reconnecting..."));
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

    #[test]
    fn a_follow_joins_at_the_start_of_the_line() {
        assert_eq!(start_in(b"a\nbc", 10, 14), 12);
        assert_eq!(start_in(b"abc\n", 10, 14), 14);
        assert_eq!(start_in(b"abcd", 10, 14), 14);
        assert_eq!(start_in(b"abcd", 0, 4), 0);
    }

    #[tokio::test]
    async fn the_line_start_is_read_from_a_bounded_tail() {
        let log: Vec<u8> = [vec![b'x'; 70_000], b"\nhalf a line".to_vec()].concat();
        let len = log.len() as u64;
        let server = Fake::start(move |req| {
            let offset: usize = req.target.rsplit('=').next().unwrap().parse().unwrap();
            Reply::bytes(200, "text/plain", log[offset..].to_vec())
        })
        .await;
        assert_eq!(line_start(&server.client(), "j", len).await, 70_001);
        let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(
            targets,
            [format!("/v1/jobs/j/log?offset={}", len - LINE_START_WINDOW)]
        );
        assert_eq!(line_start(&server.client(), "j", 0).await, 0);
    }

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
