//! `ci admin ...`: users and API keys, through the server's `/v1/admin` API (the server owns
//! the database, so this works while it runs jobs). Needs an admin key. A key is printed only
//! by `ci admin key create`, once.

use ci_protocol::{CreatedKey, KeyQuery, KeyView, NewKey, NewUser, Role, UserView};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::Client;
use crate::exit;

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Add, list, disable and enable users.
    #[command(subcommand)]
    User(UserCommand),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user (a normal user unless --admin). Then give them a key with `ci admin key create`.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Email address; identifies the user in every other admin command.
        #[arg(long)]
        email: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
    },
    /// List every user.
    List {
        /// Print JSON (an array of users) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their keys are refused (403) until the user is enabled again.
    Disable {
        /// The user's email.
        email: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// The user's email.
        email: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key for a user and print it. It is shown only this once.
    Create {
        /// The user's email.
        #[arg(long)]
        email: String,
        /// What the key is for (for example the machine it lives on).
        #[arg(long)]
        name: String,
        /// Print JSON (the key's record, with the key) instead of the bare key.
        #[arg(long)]
        json: bool,
    },
    /// List API keys (ids, names, owners and times; never the keys themselves).
    List {
        /// Only the keys of this user.
        #[arg(long)]
        email: Option<String>,
        /// Print JSON (an array of keys) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key: it is refused (401) from the next request on.
    Revoke {
        /// The key's id (the ID column of `ci admin key list`).
        key_id: String,
    },
}

pub async fn run(client: &Client, args: AdminArgs) -> anyhow::Result<u8> {
    match args.command {
        AdminCommand::User(command) => user(client, command).await,
        AdminCommand::Key(command) => key(client, command).await,
    }
}

async fn user(client: &Client, command: UserCommand) -> anyhow::Result<u8> {
    match command {
        UserCommand::Create { name, email, admin } => {
            let body = NewUser {
                name,
                email,
                role: Some(if admin { Role::Admin } else { Role::User }),
            };
            let user: UserView = client.post_json("/v1/admin/users", &body).await?;
            println!("Created {} {} <{}>", user.role, user.name, user.email);
            eprintln!(
                "Give them a key with: ci admin key create --email {} --name <what-it-is-for>",
                user.email
            );
        }
        UserCommand::List { json } => {
            let users: Vec<UserView> = client.get_json("/v1/admin/users").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                print!("{}", users_table(&users));
            }
        }
        UserCommand::Disable { email } => {
            let user: UserView = client
                .post_json(
                    &format!("/v1/admin/users/{}/disable", segment(&email)),
                    &json!({}),
                )
                .await?;
            println!("Disabled user {} <{}>", user.name, user.email);
        }
        UserCommand::Enable { email } => {
            let user: UserView = client
                .post_json(
                    &format!("/v1/admin/users/{}/enable", segment(&email)),
                    &json!({}),
                )
                .await?;
            println!("Enabled user {} <{}>", user.name, user.email);
        }
    }
    Ok(exit::SUCCESS)
}

async fn key(client: &Client, command: KeyCommand) -> anyhow::Result<u8> {
    match command {
        KeyCommand::Create { email, name, json } => {
            let body = NewKey { email, name };
            let created: CreatedKey = client.post_json("/v1/admin/keys", &body).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                // The bare key on stdout, so `KEY=$(ci admin key create ...)` works.
                eprintln!(
                    "Created key {} ({}) for {}. It is shown only now; keep it secret:",
                    created.view.id, created.view.name, created.view.user_email
                );
                println!("{}", created.key);
            }
        }
        KeyCommand::List { email, json } => {
            let keys: Vec<KeyView> = client
                .get_json_with("/v1/admin/keys", &KeyQuery { email })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", keys_table(&keys));
            }
        }
        KeyCommand::Revoke { key_id } => {
            let key: KeyView = client
                .delete_json(&format!("/v1/admin/keys/{}", segment(&key_id)))
                .await?;
            println!(
                "Revoked key {} ({}) of {}",
                key.id, key.name, key.user_email
            );
        }
    }
    Ok(exit::SUCCESS)
}

fn users_table(users: &[UserView]) -> String {
    let rows = users.iter().map(|u| {
        vec![
            u.name.clone(),
            u.email.clone(),
            u.role.to_string(),
            if u.active { "active" } else { "disabled" }.to_string(),
            crate::table::short_time(Some(&u.created)),
        ]
    });
    crate::table::render(&["NAME", "EMAIL", "ROLE", "STATUS", "CREATED"], rows)
}

fn keys_table(keys: &[KeyView]) -> String {
    let rows = keys.iter().map(|k| {
        vec![
            k.id.clone(),
            k.name.clone(),
            k.user_email.clone(),
            crate::table::short_time(Some(&k.created)),
            crate::table::short_time(k.last_used.as_deref()),
            if k.revoked { "revoked" } else { "active" }.to_string(),
        ]
    });
    crate::table::render(
        &["ID", "NAME", "USER", "CREATED", "LAST USED", "STATUS"],
        rows,
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a path segment (emails
/// may hold `+`, `/`, `?` or `#`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        assert_eq!(segment("bob@example.com"), "bob@example.com");
        assert_eq!(segment("a+b/c?d#e f"), "a%2Bb%2Fc%3Fd%23e%20f");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn tables() {
        let users = [UserView {
            id: "1".into(),
            name: "Bob".into(),
            email: "bob@example.com".into(),
            role: Role::User,
            active: false,
            created: "2026-01-02T03:04:05.678Z".into(),
        }];
        assert_eq!(
            users_table(&users),
            "NAME  EMAIL            ROLE  STATUS    CREATED\n\
             Bob   bob@example.com  user  disabled  2026-01-02 03:04:05\n"
        );
    }
}
