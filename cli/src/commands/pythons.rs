//! `ci pythons`: the server's Pythons (one per image), what `--python` takes, the default first.

use anyhow::anyhow;
use ci_protocol::{ImageStatus, PythonView};

use crate::client::{Client, RequestError};
use crate::exit;
use crate::summary::clean;

#[derive(clap::Args, Debug)]
pub struct PythonsArgs {
    /// Print the server's JSON (an array of images with stable field names) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(client: &Client, args: PythonsArgs) -> anyhow::Result<u8> {
    let answer: serde_json::Value = client.get_json("/v1/pythons").await.map_err(older_server)?;
    if args.json {
        // As the server sent it: fields this `ci` does not know of included.
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let views: Vec<PythonView> = serde_json::from_value(answer)
            .map_err(|e| anyhow!("the server sent a bad answer: {e}"))?;
        print!("{}", table(&views));
    }
    Ok(exit::SUCCESS)
}

/// A 404 for the list itself means a server from before several images.
pub fn older_server(e: RequestError) -> anyhow::Error {
    match e {
        RequestError::Http(404, _) => {
            anyhow!("the server lists no Pythons (it is older than `ci pythons`): it runs every job on its one image")
        }
        e => anyhow!(e),
    }
}

/// NAME (the default marked), VERSION, IMAGE, STATUS (with the error of an unavailable one).
fn table(views: &[PythonView]) -> String {
    let rows = views.iter().map(|p| {
        let name = p.name.as_deref().map_or("-".into(), clean);
        let name = if p.default {
            format!("{name} (default)")
        } else {
            name
        };
        let status = match (p.status, &p.error) {
            (ImageStatus::Unavailable, Some(error)) => format!("unavailable: {}", clean(error)),
            (status, _) => status.to_string(),
        };
        vec![
            name,
            p.version.as_deref().map_or("-".into(), clean),
            clean(&p.image),
            status,
        ]
    });
    crate::table::render(&["NAME", "VERSION", "IMAGE", "STATUS"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: Option<&str>, default: bool, status: ImageStatus) -> PythonView {
        PythonView {
            name: name.map(str::to_string),
            version: name.map(|n| format!("{n}.2")),
            implementation: name.map(|_| "cpython".into()),
            image: format!("python:{}-slim", name.unwrap_or("3.14")),
            digest: None,
            default,
            status,
            error: (status == ImageStatus::Unavailable).then(|| "pull failed: 404".into()),
        }
    }

    #[tokio::test]
    async fn asks_the_server() {
        use crate::fake::{Fake, Reply};
        use clap::Parser;
        let json = serde_json::to_string(&[view(Some("3.11"), true, ImageStatus::Ready)]).unwrap();
        let fake = Fake::start(move |req| match req.target.as_str() {
            "/v1/pythons" => Reply::json(200, &json),
            _ => Reply::error(404, "no such route"),
        })
        .await;
        let old = Fake::start(|_| Reply::error(404, "no such route")).await;
        for (server, code) in [(&fake, exit::SUCCESS), (&old, exit::CLIENT_ERROR)] {
            for json in [false, true] {
                let mut argv = vec!["ci", "--server", &server.url, "--api-key", "k", "pythons"];
                if json {
                    argv.push("--json");
                }
                let cli = crate::Cli::try_parse_from(argv).unwrap();
                assert_eq!(crate::run(cli).await, code);
            }
        }
        let e = older_server(RequestError::Http(404, "no such route".into()));
        assert!(
            e.to_string().starts_with("the server lists no Pythons"),
            "{e}"
        );
    }

    #[test]
    fn the_default_first_and_marked() {
        let views = [
            view(Some("3.11"), true, ImageStatus::Ready),
            view(Some("3.13"), false, ImageStatus::Ready),
            view(None, false, ImageStatus::Preparing),
            view(None, false, ImageStatus::Unavailable),
        ];
        assert_eq!(
            table(&views),
            "NAME            VERSION  IMAGE             STATUS\n\
             3.11 (default)  3.11.2   python:3.11-slim  ready\n\
             3.13            3.13.2   python:3.13-slim  ready\n\
             -               -        python:3.14-slim  preparing\n\
             -               -        python:3.14-slim  unavailable: pull failed: 404\n"
        );
    }
}
