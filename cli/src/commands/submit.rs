//! `ci submit test`: pack the project, upload it, follow the run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::client::{Client, RequestError};
use crate::{exit, pack};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// What to run: `test` installs the project's test environment as it declares it and runs pytest.
    #[arg(value_enum)]
    pub what: What,

    /// Print the job id and return at once; follow it later with `ci wait <id>`.
    #[arg(long = "async")]
    pub detach: bool,

    /// Stop the job after this long (e.g. 90s, 5m); the server's own limit still applies.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// The project directory.
    #[arg(long, short = 'C', default_value = ".")]
    pub dir: PathBuf,

    /// Extra arguments for pytest, after `--` (e.g. `ci submit test -- -k add -x`).
    #[arg(last = true, value_name = "PYTEST_ARGS")]
    pub pytest_args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Debug)]
pub enum What {
    Test,
}

/// How long a submission waits for a busy server (503: too many uploads at once, or a
/// restart) before it gives up.
const BUSY_PATIENCE: Duration = Duration::from_secs(120);

/// Submits, trying again while the server answers 503 (busy for a moment); any other answer,
/// a 429 over one of the user's own caps included, is final.
async fn submit_when_free(
    client: &Client,
    archive: &[u8],
    query: &ci_protocol::SubmitQuery,
) -> Result<ci_protocol::JobView, RequestError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        match client.submit(archive.to_vec(), query).await {
            Err(RequestError::Http(503, message)) if started.elapsed() < BUSY_PATIENCE => {
                eprintln!("ci: {message}; trying again in {}s", pause.as_secs());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

pub async fn run(client: &Client, args: SubmitArgs) -> anyhow::Result<u8> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot open project directory {}", args.dir.display()))?;
    let packed = pack::pack(&dir)?;
    let query =
        ci_protocol::SubmitQuery::new(args.timeout.map(|t| t.as_secs().max(1)), &args.pytest_args);
    let job = submit_when_free(client, &packed.archive, &query).await?;
    if args.detach {
        println!("{}", job.id);
        eprintln!(
            "Submitted job {}; follow it with: ci wait {}",
            job.id, job.id
        );
        return Ok(exit::SUCCESS);
    }
    eprintln!("Job ID: {}", job.id);
    if let Some(pos) = job.queue_position.filter(|p| *p > 1) {
        eprintln!("Queued at position {pos}");
    }
    crate::follow_to_end(client, &job.id, 0).await
}
