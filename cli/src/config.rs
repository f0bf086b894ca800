//! Where the server is and which key to use: flags, then environment, then `~/.ci/config`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

/// Settings read from `~/.ci/config` (`key=value` lines, `#` comments).
#[derive(Default, Debug, PartialEq)]
pub struct FileConfig {
    pub server_url: Option<String>,
    pub api_key: Option<String>,
}

impl FileConfig {
    pub fn parse(text: &str) -> FileConfig {
        let mut config = FileConfig::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "server_url" => config.server_url = Some(v),
                "api_key" => config.api_key = Some(v),
                _ => {}
            }
        }
        config
    }

    /// Reads the file if it exists, telling `warn` when others can read the key in it.
    pub fn load(path: &Path, warn: &dyn Fn(&str)) -> anyhow::Result<FileConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let config = FileConfig::parse(&text);
        if config.api_key.is_some() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    warn(&format!(
                        "{} holds an API key and is readable by others; run: chmod 600 {}",
                        path.display(),
                        path.display()
                    ));
                }
            }
        }
        Ok(config)
    }
}

pub fn config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ci/config"))
}

/// The settings in force for one command.
pub struct Settings {
    pub server: String,
    pub api_key: String,
}

/// Resolves the server URL and key: `--server`/`--api-key` (which clap already merged with
/// `CI_SERVER_URL`/`CI_API_KEY`), then the config file.
pub fn resolve(server: Option<String>, api_key: Option<String>) -> anyhow::Result<Settings> {
    resolve_with(server, api_key, &warn_on_stderr)
}

/// `ci`'s warnings about its settings, on stderr.
fn warn_on_stderr(line: &str) {
    eprintln!("ci: warning: {line}");
}

/// [`resolve`], telling `warn` what `ci` would warn about (a key readable by others).
fn resolve_with(
    server: Option<String>,
    api_key: Option<String>,
    warn: &dyn Fn(&str),
) -> anyhow::Result<Settings> {
    let (server, api_key) = (given(server), given(api_key));
    // Read even when flags cover everything, so a key readable by others is always reported;
    // an unreadable file only matters when something must come from it.
    let file = match config_path().map(|p| FileConfig::load(&p, warn)) {
        Some(Ok(file)) => file,
        Some(Err(e)) if server.is_none() || api_key.is_none() => return Err(e),
        _ => FileConfig::default(),
    };
    let server = checked_server(server.or(given(file.server_url)))?;
    let Some(api_key) = api_key.or(given(file.api_key)) else {
        return Err(NoKey.into());
    };
    Ok(Settings { server, api_key })
}

/// The server URL of the environment (`CI_SERVER_URL`), as clap merges it into `--server`.
pub const SERVER_ENV: &str = "CI_SERVER_URL";
/// The API key of the environment (`CI_API_KEY`), as clap merges it into `--api-key`.
pub const API_KEY_ENV: &str = "CI_API_KEY";

/// [`resolve`] for callers without clap (the Python library): an argument, else the
/// environment, else the config file, else the default server; the same order as the flags.
/// `Ok(None)` when no key is found anywhere, for the caller to say how to give one. What
/// `ci` would warn about on stderr goes to `warn`.
pub fn resolve_from_env(
    server: Option<String>,
    api_key: Option<String>,
    warn: &dyn Fn(&str),
) -> anyhow::Result<Option<Settings>> {
    let env = |name: &str| std::env::var(name).ok();
    let server = given(server).or_else(|| given(env(SERVER_ENV)));
    let api_key = given(api_key).or_else(|| given(env(API_KEY_ENV)));
    match resolve_with(server, api_key, warn) {
        Ok(settings) => Ok(Some(settings)),
        Err(e) if e.downcast_ref::<NoKey>().is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

/// No API key was given anywhere.
#[derive(Debug, thiserror::Error)]
#[error("no API key: pass --api-key, set CI_API_KEY, or put api_key=<key> in ~/.ci/config")]
pub struct NoKey;

/// The server URL alone (`ci --version --verbose` needs no key): `--server`/`CI_SERVER_URL`,
/// then the config file, then the default.
pub fn resolve_server(server: Option<String>) -> anyhow::Result<String> {
    let server = given(server);
    let file = match (&server, config_path()) {
        (None, Some(path)) => FileConfig::load(&path, &warn_on_stderr)?.server_url,
        _ => None,
    };
    checked_server(server.or(given(file)))
}

/// A setting as given, trimmed; none when blank.
fn given(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The URL, or the default, without a trailing `/`; only http and https.
fn checked_server(server: Option<String>) -> anyhow::Result<String> {
    let server = server.unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let server = server.trim().trim_end_matches('/').to_string();
    if !server.starts_with("http://") && !server.starts_with("https://") {
        bail!("invalid server URL {server:?}: it must start with http:// or https://");
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_lines() {
        let c = FileConfig::parse(
            "# comment\nserver_url = http://ci:8000\n\napi_key=\"ci_abc\"\nother=1\nnonsense\n",
        );
        assert_eq!(
            c,
            FileConfig {
                server_url: Some("http://ci:8000".into()),
                api_key: Some("ci_abc".into())
            }
        );
        assert_eq!(FileConfig::parse(""), FileConfig::default());
    }
}
