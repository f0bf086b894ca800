//! `--config FILE`: a TOML file of a subcommand's options, each key named like the long flag
//! it stands for (`listen = "0.0.0.0:8000"`, `max-jobs = 4`, `image = ["a", "b"]`,
//! `allow-unlimited = true`). A flag wins over an environment variable, which wins over the
//! file, which wins over the default.
//!
//! Generic over clap: the command line is parsed once to learn where each option came from
//! ([`clap::ArgMatches::value_source`]); every key of the file whose option was given neither
//! on the command line nor by the environment becomes `--key value` arguments, and the whole
//! is parsed again, so the file's values go through the same value parsers as flags.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use toml::Value;

/// The id of the option naming the file (`--config`).
pub const CONFIG_ARG: &str = "config";

/// Options that no file may set: the file itself, and clap's own.
const NOT_IN_FILE: [&str; 3] = [CONFIG_ARG, "help", "version"];

/// What went wrong: a clap error (usage, `--help`, `--version`: `exit()` prints it the way
/// clap does), or the file's, in one line naming it.
#[derive(Debug)]
pub enum ParseError {
    Clap(clap::Error),
    File(String),
}

impl ParseError {
    /// Prints the error and exits as clap does (`ci-server: FILE: ...` and 2 for the file).
    pub fn exit(self) -> ! {
        match self {
            ParseError::Clap(e) => e.exit(),
            ParseError::File(message) => {
                eprintln!("ci-server: {message}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `argv` as `P`, with the keys of the `--config` file of its subcommand (or of the
/// top-level command) for what the command line and the environment did not set.
pub fn parse<P: clap::Parser>(argv: Vec<OsString>) -> Result<P, ParseError> {
    let command = P::command();
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let (sub_command, sub_matches) = match matches.subcommand() {
        Some((name, sub)) => match command.find_subcommand(name) {
            Some(c) => (c.clone(), sub),
            None => (command.clone(), &matches),
        },
        None => (command.clone(), &matches),
    };
    let has_config = sub_command
        .get_arguments()
        .any(|a| a.get_id() == CONFIG_ARG);
    let file = has_config
        .then(|| sub_matches.get_one::<PathBuf>(CONFIG_ARG).cloned())
        .flatten();
    let Some(file) = file else {
        return P::from_arg_matches(&matches).map_err(ParseError::Clap);
    };
    let text = read_capped(&file)?;
    let extra = args_from_file(&sub_command, sub_matches, &file, &text)?;
    if extra.is_empty() {
        return P::from_arg_matches(&matches).map_err(ParseError::Clap);
    }
    // The options have no positional arguments, so the file's come last, after the
    // subcommand's own.
    let mut full = argv.clone();
    full.extend(extra.iter().flat_map(|(_, args)| args.iter().cloned()));
    let reparsed = command.try_get_matches_from(&full).map_err(|e| {
        ParseError::File(value_error(&file, &extra, &e).unwrap_or_else(|| first_line(&e)))
    })?;
    P::from_arg_matches(&reparsed).map_err(ParseError::Clap)
}

/// The most a config file may hold: far above any real one, and `--config /dev/zero` ends.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The file's text, refused past [`MAX_FILE_BYTES`].
fn read_capped(path: &Path) -> Result<String, ParseError> {
    use std::io::Read;
    let fail = |message: String| ParseError::File(format!("{}: {message}", path.display()));
    let file = fs_err::File::open(path).map_err(|e| ParseError::File(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!(
            "larger than {} KiB: not a config file",
            MAX_FILE_BYTES >> 10
        )));
    }
    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".to_string()))
}

/// The arguments `text` (the file at `path`) stands for, key by key, for the options of
/// `command` that `matches` did not get from the command line or the environment.
fn args_from_file(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<(String, Vec<OsString>)>, ParseError> {
    let fail = |message: String| ParseError::File(format!("{}: {message}", path.display()));
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(one_line(&e.to_string())))?;
    let keys = file_keys(command);
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && keys.contains(&key.as_str()))
        else {
            let hint = closest(key, &keys)
                .map(|k| format!(" (did you mean \"{k}\"?)"))
                .unwrap_or_default();
            return Err(fail(format!("unknown key \"{key}\"{hint}")));
        };
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let flag = format!("--{key}");
        let mut args: Vec<OsString> = Vec::new();
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match value {
                Value::Boolean(b) => {
                    let set = matches!(arg.get_action(), ArgAction::SetTrue) == *b;
                    if set {
                        args.push(flag.into());
                    }
                }
                _ => return Err(fail(format!("key \"{key}\" must be true or false"))),
            },
            ArgAction::Append => {
                let items = match value {
                    Value::Array(items) => items.iter().collect(),
                    single => vec![single],
                };
                for item in items {
                    let text = scalar(item)
                        .ok_or_else(|| fail(format!("key \"{key}\" must be a list of strings")))?;
                    args.push(format!("{flag}={text}").into());
                }
            }
            _ => {
                let text = scalar(value).ok_or_else(|| {
                    fail(format!(
                        "key \"{key}\" must be a single value (a string, number or boolean)"
                    ))
                })?;
                // One argument, so that a value starting with `-` is never read as a flag.
                args.push(format!("{flag}={text}").into());
            }
        }
        out.push((key.clone(), args));
    }
    Ok(out)
}

/// The keys a file may hold: the long names of the options, but `--config`'s and clap's.
pub fn file_keys(command: &Command) -> Vec<&str> {
    command
        .get_arguments()
        .filter(|a| !NOT_IN_FILE.contains(&a.get_id().as_str()) && !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .collect()
}

/// A value as the text of an argument: strings as they are, numbers and booleans written.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(_) | Value::Array(_) | Value::Table(_) => None,
    }
}

/// When clap refused a value that came from the file: which key, in the file's words.
fn value_error(path: &Path, extra: &[(String, Vec<OsString>)], e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let (key, _) = extra
        .iter()
        .find(|(key, _)| arg.split([' ', '=']).next() == Some(format!("--{key}").as_str()))?;
    Some(format!(
        "{}: key \"{key}\": {}",
        path.display(),
        first_line(e)
    ))
}

/// Clap's message, one line, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The known key nearest to `key`, if one is near enough to be a typo of it.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut last = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (last + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            last = here;
        }
    }
    row[b.len()]
}

/// A config file for `command` with every key commented out at its default, its help above
/// it: what `packaging/config.toml` is (a unit test keeps it so).
pub fn sample(command: &Command, header: &str) -> String {
    let mut out = String::from(header);
    let keys = file_keys(command);
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long().filter(|l| keys.contains(l)) else {
            continue;
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        out.push('\n');
        for line in wrap(&one_line(&help), 90) {
            let _ = writeln!(out, "# {line}");
        }
        if let Some(env) = arg.get_env() {
            let _ = writeln!(out, "# (environment: {})", env.to_string_lossy());
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let value = match arg.get_action() {
            ArgAction::SetTrue => "false".to_string(),
            ArgAction::Append => "[]".to_string(),
            _ => match defaults.first() {
                Some(d) if d.parse::<i64>().is_ok() || d.parse::<f64>().is_ok() => d.clone(),
                Some(d) => format!("{d:?}"),
                None => {
                    let name = arg
                        .get_value_names()
                        .and_then(|n| n.first())
                        .map_or_else(|| long.to_uppercase(), ToString::to_string);
                    format!("<{name}>")
                }
            },
        };
        let _ = writeln!(out, "# {long} = {value}");
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().expect("one line");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServeArgs;

    #[derive(clap::Parser, Debug)]
    #[command(name = "ci-server")]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Serve(ServeArgs),
    }

    /// Serializes the tests that set environment variables.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn parse_with(text: &str, flags: &[&str]) -> Result<ServeArgs, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, text).unwrap();
        let mut argv: Vec<OsString> = vec!["ci-server".into(), "serve".into()];
        argv.extend(flags.iter().map(OsString::from));
        argv.extend(["--config".into(), file.clone().into_os_string()]);
        match parse::<Cli>(argv) {
            Ok(cli) => {
                let Sub::Serve(args) = cli.command;
                Ok(args)
            }
            Err(ParseError::File(m)) => Err(m.replace(&file.display().to_string(), "FILE")),
            Err(ParseError::Clap(e)) => Err(format!("clap: {e}")),
        }
    }

    fn parse_ok(text: &str, flags: &[&str]) -> ServeArgs {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        parse_with(text, flags).unwrap()
    }

    fn parse_err(text: &str) -> String {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        parse_with(text, &[]).unwrap_err()
    }

    #[test]
    fn a_flag_wins_over_the_file_which_wins_over_the_default() {
        let args = parse_ok("listen = \"0.0.0.0:9000\"\nmax-jobs = 4\n", &[]);
        assert_eq!(args.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(args.max_jobs, Some(4));
        assert_eq!(args.cpus, 2.0, "the default where the file says nothing");
        let args = parse_ok(
            "listen = \"0.0.0.0:9000\"\nmax-jobs = 4\n",
            &["--max-jobs", "2"],
        );
        assert_eq!(args.max_jobs, Some(2));
        assert_eq!(args.listen.to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("CI_LISTEN", "127.0.0.1:9100");
        let args = parse_with("listen = \"0.0.0.0:9000\"\n", &[]);
        std::env::remove_var("CI_LISTEN");
        assert_eq!(args.unwrap().listen.to_string(), "127.0.0.1:9100");
    }

    #[test]
    fn lists_booleans_durations_sizes_and_enums() {
        let args = parse_ok(
            "image = [\"python:3.13-slim\", \"python:3.11-slim\"]\ninsecure-registry = \"r.example:5000\"\nallow-unlimited = true\nlog-timings = false\njob-timeout = \"5m\"\nmemory-limit = \"1GiB\"\ncpus = 1.5\ninstaller = \"pip\"\nlog-format = \"json\"\n",
            &[],
        );
        assert_eq!(args.image, ["python:3.13-slim", "python:3.11-slim"]);
        assert_eq!(args.insecure_registries, ["r.example:5000"]);
        assert!(args.allow_unlimited);
        assert!(!args.log_timings);
        assert_eq!(args.job_timeout, std::time::Duration::from_secs(300));
        assert_eq!(args.memory_limit, 1 << 30);
        assert_eq!(args.cpus, 1.5);
        assert_eq!(args.installer, crate::config::InstallerArg::Pip);
        assert_eq!(args.log_format, crate::config::LogFormat::Json);
        // Flags given on the command line add to nothing from the file: they replace it.
        let args = parse_ok("image = [\"a:1\", \"b:2\"]\n", &["--image", "c:3"]);
        assert_eq!(args.image, ["c:3"]);
    }

    #[test]
    fn mistakes_are_named_by_key_and_file() {
        assert_eq!(
            parse_err("max-job = 4\n"),
            "FILE: unknown key \"max-job\" (did you mean \"max-jobs\"?)"
        );
        assert_eq!(parse_err("colour = 1\n"), "FILE: unknown key \"colour\"");
        assert_eq!(
            parse_err("config = \"x\"\n"),
            "FILE: unknown key \"config\""
        );
        assert_eq!(
            parse_err("allow-unlimited = \"yes\"\n"),
            "FILE: key \"allow-unlimited\" must be true or false"
        );
        assert_eq!(
            parse_err("listen = [\"a\"]\n"),
            "FILE: key \"listen\" must be a single value (a string, number or boolean)"
        );
        let e = parse_err("max-jobs = \"four\"\n");
        assert!(
            e.starts_with("FILE: key \"max-jobs\": invalid value 'four'"),
            "{e}"
        );
        let e = parse_err("job-timeout = \"soon\"\n");
        assert!(e.starts_with("FILE: key \"job-timeout\": "), "{e}");
        let e = parse_err("listen = \n");
        assert!(e.starts_with("FILE: "), "{e}");
    }

    #[test]
    fn an_endless_or_binary_file_is_refused() {
        let e = match read_capped(Path::new("/dev/zero")) {
            Err(ParseError::File(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e, "/dev/zero: larger than 1024 KiB: not a config file");
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("c.toml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let e = match read_capped(&binary) {
            Err(ParseError::File(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(e.ends_with("c.toml: not UTF-8 text"), "{e}");
    }

    #[test]
    fn keys_are_the_long_flags() {
        assert_eq!(distance("max-job", "max-jobs"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(closest("lisen", &["listen", "cpus"]), Some("listen"));
        assert_eq!(closest("zzz", &["listen", "cpus"]), None);
    }

    fn serve_command() -> Command {
        <Cli as clap::CommandFactory>::command()
            .find_subcommand("serve")
            .unwrap()
            .clone()
    }

    const HEADER: &str = "# ci-server's configuration: `ci-server serve --config FILE` (the systemd unit's).\n# Every key is a flag of `ci-server serve --help`, commented out at its default.\n# A flag on the command line wins over an environment variable, which wins over this file.\n";

    /// `packaging/config.toml` is the sample of today's options: a new flag, a changed
    /// default or help shows up here. `UPDATE_CONFIG_SAMPLE=1` rewrites it.
    #[test]
    fn the_packaged_config_lists_every_option_at_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
        let expected = sample(&serve_command(), HEADER);
        if std::env::var_os("UPDATE_CONFIG_SAMPLE").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "packaging/config.toml is out of date: run UPDATE_CONFIG_SAMPLE=1 cargo test -p ci-server --lib config_file"
        );
        // Each uncommented line that is valid TOML parses back as the default.
        let defaults: String = expected
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.contains('<'))
            .filter(|l| !l.ends_with("= []"))
            .map(|l| format!("{l}\n"))
            .collect();
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let args = parse_with(&defaults, &[]).unwrap();
        assert_eq!(args.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(args.max_upload_size, ci_protocol::DEFAULT_MAX_UPLOAD_BYTES);
    }
}
