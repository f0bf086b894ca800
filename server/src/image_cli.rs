//! `ci-server image import|list|rm`: the images of a running server, through its admin API
//! (`/v1/admin/images`). sled lets one process open the database, so there is no offline
//! tool that could race the server: this is an HTTP client with the admin's key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ci_protocol::{ErrorBody, ImageView, ImportImage, PythonView};

/// Options of `ci-server image`.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// The running server.
    #[arg(
        long,
        env = "CI_SERVER_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub server: String,

    /// An admin's API key [default: the admin.key in --data-dir].
    #[arg(long, env = "CI_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,

    /// The server's data directory, whose admin.key is used when no key is given [default:
    /// as for `serve`].
    #[arg(long, env = "CI_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ImageCommand {
    /// Serve an image from now on, and after restarts: a file on the server's host, read by
    /// the server's user (`PATH.tar` is an OCI archive, a directory an OCI layout; or
    /// `oci-archive:PATH[:TAG]`, `oci:DIR[:TAG]`, `docker-archive:PATH[:NAME:TAG]`), or a
    /// registry reference.
    Import {
        /// The file, directory or image.
        source: String,
    },
    /// The images in the server's image cache, those it serves first.
    List {
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image from the cache, and from the server's Pythons if it was imported
    /// (the default and `--image` ones are refused, and while jobs use it).
    Rm {
        /// `sha256:<hex>`, or at least 12 hex digits of it (as `list` shows).
        digest: String,
    },
}

/// Runs one `ci-server image` command; the error is one line.
pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    let key = api_key(&args)?;
    let base = format!("{}/v1/admin/images", args.server.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .context("cannot make an HTTP client")?;
    match &args.command {
        ImageCommand::Import { source } => {
            let source = source_text(source)?;
            let body = ImportImage { source };
            let request = client.post(&base).bearer_auth(&key).json(&body);
            let view: PythonView = send(request, &args.server).await?;
            println!(
                "imported {}: Python {} ({}), {}",
                view.image,
                view.name.as_deref().unwrap_or("?"),
                view.version.as_deref().unwrap_or("?"),
                view.digest.as_deref().unwrap_or("?")
            );
        }
        ImageCommand::List { json } => {
            let request = client.get(&base).bearer_auth(&key);
            let views: Vec<ImageView> = send(request, &args.server).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&views).expect("serializable")
                );
            } else {
                print!("{}", table(&views));
            }
        }
        ImageCommand::Rm { digest } => {
            let digest = digest.trim();
            if digest.is_empty()
                || !digest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b':')
            {
                anyhow::bail!("{digest:?} is not an image digest (see `ci-server image list`)");
            }
            let request = client.delete(format!("{base}/{digest}")).bearer_auth(&key);
            let view: ImageView = send(request, &args.server).await?;
            match &view.served_as {
                Some(served) => println!("removed {} (served as {served})", view.digest),
                None => println!("removed {}", view.digest),
            }
        }
    }
    Ok(())
}

/// `--api-key`, else the admin key the server wrote into its data directory.
fn api_key(args: &ImageArgs) -> anyhow::Result<String> {
    if let Some(key) = args
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        return Ok(key.to_string());
    }
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => serve_data_dir(),
    };
    let file = data_dir.join("admin.key");
    let key = fs_err::read_to_string(&file).map_err(|e| {
        anyhow::anyhow!("no API key: give --api-key (or CI_API_KEY), or the --data-dir of a server whose admin.key you can read ({e})")
    })?;
    Ok(key.trim().to_string())
}

/// The data directory `serve` uses when given none.
fn serve_data_dir() -> PathBuf {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        serve: crate::ServeArgs,
    }
    use clap::Parser;
    match Defaults::try_parse_from(["ci-server"]) {
        Ok(defaults) => defaults.serve.data_dir(),
        // Only the environment's CI_* variables can make this fail; the data dir is the
        // default's then.
        Err(_) => PathBuf::from("/var/lib/ci-server"),
    }
}

/// What the server is sent for `import`: a plain path becomes `oci-archive:` (a file whose
/// name ends in `.tar`) or `oci:` (a directory), and every path is made absolute here: the
/// server's working directory is not the caller's.
pub fn source_text(input: &str) -> anyhow::Result<String> {
    let input = input.trim();
    let prefixed = ["oci-archive:", "oci:", "docker-archive:"]
        .iter()
        .any(|p| input.starts_with(p));
    if prefixed {
        let source: ci_rootfs::ImageSource = input.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(absolute(source)?.to_string());
    }
    let path = Path::new(input);
    if path.is_dir() {
        return Ok(format!("oci:{}", std::path::absolute(path)?.display()));
    }
    if path.is_file() {
        if input.ends_with(".tar") {
            return Ok(format!(
                "oci-archive:{}",
                std::path::absolute(path)?.display()
            ));
        }
        anyhow::bail!(
            "{input}: say what the file is: oci-archive:{input} (an OCI archive) or docker-archive:{input} (docker save)"
        );
    }
    if input.starts_with(['/', '.']) || input.ends_with(".tar") {
        anyhow::bail!("{input}: no such file or directory");
    }
    let source: ci_rootfs::ImageSource = input.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(source.to_string())
}

fn absolute(source: ci_rootfs::ImageSource) -> anyhow::Result<ci_rootfs::ImageSource> {
    use ci_rootfs::ImageSource;
    Ok(match source {
        ImageSource::OciArchive { path, tag } => ImageSource::OciArchive {
            path: std::path::absolute(path)?,
            tag,
        },
        ImageSource::OciLayout { dir, tag } => ImageSource::OciLayout {
            dir: std::path::absolute(dir)?,
            tag,
        },
        ImageSource::DockerArchive { path, tag } => ImageSource::DockerArchive {
            path: std::path::absolute(path)?,
            tag,
        },
        registry => registry,
    })
}

/// Sends `request`; a failure is one line: the server's own message, or why it was not
/// reached.
async fn send<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    server: &str,
) -> anyhow::Result<T> {
    let response = request.send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the server at {server}: {}",
            crate::error::chain(&e)
        )
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("the server at {server} did not answer in full: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        let message = message.lines().next().unwrap_or_default();
        anyhow::bail!("{message} (HTTP {})", status.as_u16());
    }
    serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("the server at {server} answered something unexpected: {e}"))
}

/// `list`'s table: DIGEST (12 hex digits), PYTHON, SERVED AS, REFS.
pub fn table(views: &[ImageView]) -> String {
    let rows: Vec<[String; 4]> = views
        .iter()
        .map(|v| {
            let digest = v.digest.trim_start_matches("sha256:");
            let served = match &v.served_as {
                Some(s) if v.default => format!("{s} (default)"),
                Some(s) if v.imported => format!("{s} (imported)"),
                Some(s) => s.clone(),
                None => "-".to_string(),
            };
            [
                digest[..digest.len().min(12)].to_string(),
                v.python.clone().unwrap_or_else(|| "-".into()),
                served,
                if v.refs.is_empty() {
                    "-".to_string()
                } else {
                    v.refs.join(", ")
                },
            ]
        })
        .collect();
    let head = ["DIGEST", "PYTHON", "SERVED AS", "REFS"].map(String::from);
    let mut widths = head.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_become_sources_and_are_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("py.tar");
        std::fs::write(&tar, b"").unwrap();
        let other = dir.path().join("py.img");
        std::fs::write(&other, b"").unwrap();
        let d = dir.path().display();
        assert_eq!(
            source_text(&format!("{d}/py.tar")).unwrap(),
            format!("oci-archive:{d}/py.tar")
        );
        assert_eq!(source_text(&format!("{d}")).unwrap(), format!("oci:{d}"));
        assert_eq!(
            source_text(&format!("oci-archive:{d}/py.tar:3.13-slim")).unwrap(),
            format!("oci-archive:{d}/py.tar:3.13-slim")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            source_text("oci:layout:3.13").unwrap(),
            format!("oci:{}/layout:3.13", cwd.display())
        );
        assert!(source_text(&format!("{d}/py.img"))
            .unwrap_err()
            .to_string()
            .contains("docker-archive:"));
        assert!(source_text(&format!("{d}/missing.tar")).is_err());
        assert!(source_text("./missing").is_err());
        assert_eq!(
            source_text("python:3.13-slim").unwrap(),
            "registry-1.docker.io/library/python:3.13-slim"
        );
    }

    #[test]
    fn the_table() {
        let views = [
            ImageView {
                digest: format!("sha256:{}", "a".repeat(64)),
                refs: vec!["r/python:3.11".into()],
                python: Some("3.11".into()),
                version: Some("3.11.2".into()),
                served_as: Some("r/python:3.11".into()),
                default: true,
                imported: false,
            },
            ImageView {
                digest: format!("sha256:{}", "b".repeat(64)),
                refs: vec![],
                python: None,
                version: None,
                served_as: None,
                default: false,
                imported: false,
            },
        ];
        assert_eq!(
            table(&views),
            "DIGEST        PYTHON  SERVED AS                REFS\n\
             aaaaaaaaaaaa  3.11    r/python:3.11 (default)  r/python:3.11\n\
             bbbbbbbbbbbb  -       -                        -\n"
        );
    }
}
