//! `ci whoami`: who the API key belongs to.

use ci_protocol::UserView;

use crate::client::Client;
use crate::exit;

pub async fn run(client: &Client) -> anyhow::Result<u8> {
    let me: UserView = client.get_json("/v1/whoami").await?;
    println!("{} <{}> ({})", me.name, me.email, me.role);
    Ok(exit::SUCCESS)
}
