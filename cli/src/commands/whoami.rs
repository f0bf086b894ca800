//! `ci whoami`: who the API key belongs to.

use serde::Deserialize;

use crate::client::Client;
use crate::exit;

#[derive(Deserialize)]
struct Me {
    name: String,
    email: String,
    role: String,
}

pub async fn run(client: &Client) -> anyhow::Result<u8> {
    let me: Me = client.get_json("/v1/whoami").await?;
    println!("{} <{}> ({})", me.name, me.email, me.role);
    Ok(exit::SUCCESS)
}
