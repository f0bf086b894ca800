//! `ci rerun <id> --failed`: run, from the project here, only the tests that failed or
//! errored in an earlier job; `ci submit test --failed-from <id>` by another name.

use crate::client::Client;
use crate::commands::submit::{self, RunOptions};

#[derive(clap::Args, Debug)]
pub struct RerunArgs {
    /// The earlier job, one of yours.
    pub id: String,

    /// Rerun the tests that failed or errored in that job. Required: it is the only kind of
    /// rerun there is for now.
    #[arg(long, required = true)]
    pub failed: bool,

    #[command(flatten)]
    pub options: RunOptions,
}

pub async fn run(client: &Client, args: RerunArgs) -> anyhow::Result<u8> {
    submit::submit(client, args.options, Some(&args.id)).await
}
