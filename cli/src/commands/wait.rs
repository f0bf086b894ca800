//! `ci wait <id>`: reconnect to a job and follow it to its end.

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
    let offset = if args.all { 0 } else { job.log_bytes };
    crate::follow_to_end(client, &job.id, offset).await
}
