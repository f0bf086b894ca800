//! `ci cancel <id>`: stop a queued or running job.

use ci_protocol::JobView;

use crate::client::Client;
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The job id.
    pub id: String,
}

pub async fn run(client: &Client, args: CancelArgs) -> anyhow::Result<u8> {
    let job: JobView = client
        .post_json(
            &format!("/v1/jobs/{}/cancel", args.id),
            &serde_json::json!({}),
        )
        .await?;
    eprintln!("Cancel requested for job {} (was {})", job.id, job.status);
    Ok(exit::SUCCESS)
}
