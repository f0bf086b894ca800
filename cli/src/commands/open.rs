//! `ci open <id>`: a job's page on the server in the browser: `$BROWSER` if set, else
//! `xdg-open`; where neither can, the URL is printed for the user to open.

use std::process::{Command, Stdio};

use crate::client::Client;
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct OpenArgs {
    /// The job id, or a run id (its first job's page).
    pub id: String,
}

pub async fn run(client: &Client, args: OpenArgs) -> anyhow::Result<u8> {
    let id = if ci_protocol::is_run_id(&args.id) {
        crate::run::jobs(client, &args.id).await?[0].id.clone()
    } else {
        // Asked first, so that a wrong id is said here rather than on a page.
        client.job(&args.id).await?.id
    };
    let url = client.job_url(&id);
    let browser = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty());
    match tokio::task::spawn_blocking({
        let url = url.clone();
        move || open(browser.as_deref(), &url)
    })
    .await?
    {
        Ok(program) => eprintln!("Opened {url} with {program}"),
        Err(why) => {
            eprintln!("ci: cannot open a browser ({why}); open this URL yourself:");
            println!("{url}");
        }
    }
    Ok(exit::SUCCESS)
}

/// Runs `browser` (a command and its arguments, split on blanks, as `$BROWSER` holds it) or
/// `xdg-open` on `url`; returns the program that took it, or why none did.
pub fn open(browser: Option<&str>, url: &str) -> Result<String, String> {
    let candidates: Vec<&str> = browser.into_iter().chain(["xdg-open"]).collect();
    try_each(&candidates, url)
}

/// The first of `candidates` that takes `url`.
fn try_each(candidates: &[&str], url: &str) -> Result<String, String> {
    let mut tried = Vec::new();
    for line in candidates {
        let mut words = line.split_whitespace();
        let Some(program) = words.next() else {
            continue;
        };
        // xdg-open lists every browser it could not find on stderr; its failure is said in
        // one line below instead. A `$BROWSER` of the user's keeps its own words.
        let stderr = if program == "xdg-open" {
            Stdio::null()
        } else {
            Stdio::inherit()
        };
        let status = Command::new(program)
            .args(words)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status();
        match status {
            Ok(s) if s.success() => return Ok(program.to_string()),
            Ok(s) => tried.push(format!("{program} failed: {s}")),
            Err(e) => tried.push(format!("{program}: {e}")),
        }
    }
    Err(tried.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_gets_the_url_else_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let script = dir.path().join("browser");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$@\" > {}\n", seen.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let browser = format!("{} --new-tab", script.display());
        assert!(try_each(&[&browser], "http://h/jobs/j").is_ok());
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            "--new-tab http://h/jobs/j\n"
        );
        // A browser that does not exist, and one that fails: both named.
        let missing = dir.path().join("no-such-browser");
        let why = try_each(&[missing.to_str().unwrap(), "false"], "http://h/jobs/j").unwrap_err();
        assert!(
            why.contains("no-such-browser") && why.contains("false failed"),
            "{why}"
        );
    }
}
