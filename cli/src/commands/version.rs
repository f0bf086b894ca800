//! `ci --version [--verbose]`: this `ci`'s version; with `--verbose`, the server's too.

use ci_protocol::{VersionView, API_VERSION};

use crate::client::Client;
use crate::config::{self, Settings};
use crate::exit;

/// `ci X.Y.Z`.
pub fn line() -> String {
    format!("ci {}", env!("CARGO_PKG_VERSION"))
}

pub fn short() -> anyhow::Result<u8> {
    println!("{}", line());
    Ok(exit::SUCCESS)
}

/// This `ci`'s version and API version, then the server's, asked at `GET /v1/version` (no key
/// needed); a server that cannot be asked is one line, and the exit code of a client error.
pub async fn verbose(server: Option<String>) -> anyhow::Result<u8> {
    println!("{} (API v{API_VERSION})", line());
    let server = config::resolve_server(server)?;
    println!("server: {server}");
    let client = Client::new(&Settings {
        server: server.clone(),
        api_key: String::new(),
    })?;
    match client.get_json::<VersionView>("/v1/version").await {
        Ok(view) => {
            println!("{}", server_line(&view));
            Ok(exit::SUCCESS)
        }
        Err(e) => {
            println!("server version: unknown ({e})");
            Ok(exit::CLIENT_ERROR)
        }
    }
}

/// `server version: 0.1.0 (API v1)`, and a word when its API is not this `ci`'s.
pub fn server_line(view: &VersionView) -> String {
    let mut line = format!(
        "server version: {} (API v{})",
        crate::summary::clean(&view.version),
        view.api_version
    );
    if view.api_version < API_VERSION {
        line.push_str("; older than this ci's: some commands may be refused");
    } else if view.api_version > API_VERSION {
        line.push_str("; newer than this ci's");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fake, Reply};

    #[test]
    fn the_server_in_one_line() {
        let view = |v: u32| VersionView {
            version: "0.2.0".into(),
            api_version: v,
        };
        assert_eq!(
            server_line(&view(API_VERSION)),
            format!("server version: 0.2.0 (API v{API_VERSION})")
        );
        assert!(server_line(&view(API_VERSION + 1)).ends_with("newer than this ci's"));
    }

    #[tokio::test]
    async fn asks_the_server_without_a_key() {
        let fake = Fake::start(|req| match req.target.as_str() {
            "/v1/version" => Reply::json(200, r#"{"version":"9.9.9","api_version":1}"#),
            _ => Reply::error(404, "no such route"),
        })
        .await;
        assert_eq!(
            verbose(Some(fake.url.clone())).await.unwrap(),
            exit::SUCCESS
        );
        assert_eq!(fake.requests().len(), 1);
        // Nobody there: one line and a client error, no panic.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        assert_eq!(verbose(Some(dead)).await.unwrap(), exit::CLIENT_ERROR);
    }
}
