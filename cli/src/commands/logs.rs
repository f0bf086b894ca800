//! `ci logs <id>`: a job's whole log, then its summary and result: `ci wait --all <id>`.

use crate::client::Client;
use crate::commands::wait::{self, WaitArgs};

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The job id, or a run id (every job's log, one after another).
    pub id: String,
}

/// Exits as `ci wait` does: with the job's result, after following it if it still runs.
pub async fn run(client: &Client, args: LogsArgs) -> anyhow::Result<u8> {
    wait::run(
        client,
        WaitArgs {
            id: args.id,
            all: true,
        },
    )
    .await
}
