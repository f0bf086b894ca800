//! `[tool.ci]` in pyproject.toml, or ci.toml: read and checked, every mistake named by key
//! and file, since a silently ignored typo would test the wrong environment.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use crate::files::Files;
use crate::{names, pyproject, Config, Error, InstallProject};

pub(crate) const PYPROJECT: &str = "pyproject.toml [tool.ci]";
pub(crate) const CI_TOML: &str = "ci.toml";

const KNOWN_KEYS: [&str; 10] = [
    "groups",
    "extras",
    "requirements",
    "install-project",
    "pytest-args",
    "pytest-verbose",
    "env",
    "timeout",
    "shards",
    "python",
];

pub fn read(root: &Path) -> Result<Config, Error> {
    let files = Files::new(root)?;
    let pyproject = pyproject::load(&files, "pyproject.toml")?;
    let from_pyproject = match &pyproject {
        Some(p) => p.tool("ci")?,
        None => None,
    };
    let ci_toml = match files.read(CI_TOML)? {
        Some(text) => Some(pyproject::parse_toml(CI_TOML, &text)?),
        None => None,
    };
    match (from_pyproject, ci_toml) {
        (Some(_), Some(_)) => Err(Error::BothConfigs),
        (Some(table), None) => parse(table, PYPROJECT),
        (None, Some(table)) => parse(&table, CI_TOML),
        (None, None) => Ok(Config::default()),
    }
}

fn parse(table: &Table, file: &'static str) -> Result<Config, Error> {
    let error = |message: String| Error::Config { file, message };
    let mut config = Config {
        file: Some(file),
        ..Config::default()
    };
    for (key, value) in table {
        let must = |what: &str| error(format!("\"{key}\" must be {what}"));
        match key.as_str() {
            "groups" => config.groups = Some(strings(value).ok_or_else(|| must(STRINGS))?),
            "extras" => config.extras = Some(strings(value).ok_or_else(|| must(STRINGS))?),
            "requirements" => {
                config.requirements = Some(strings(value).ok_or_else(|| must(STRINGS))?);
            }
            "pytest-args" => config.pytest_args = strings(value).ok_or_else(|| must(STRINGS))?,
            "pytest-verbose" => match value {
                Value::Boolean(verbose) => config.pytest_verbose = Some(*verbose),
                _ => return Err(must("true or false")),
            },
            "install-project" => {
                config.install_project = Some(match value {
                    Value::Boolean(true) => InstallProject::Yes,
                    Value::Boolean(false) => InstallProject::No,
                    Value::String(s) if s == "editable" => InstallProject::Editable,
                    _ => return Err(must("true, false or \"editable\"")),
                });
            }
            "env" => config.env = env(value).map_err(error)?,
            "shards" => {
                let text = match value {
                    Value::Integer(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err(must("a number of test containers or \"auto\"")),
                };
                config.shards = Some(text.parse().map_err(error)?);
            }
            "python" => {
                let names = match value {
                    Value::String(s) => ci_protocol::parse_python_list(s),
                    other => strings(other).ok_or_else(|| {
                        must("a list of Python versions such as [\"3.11\", \"3.13\"]")
                    })?,
                };
                if names.is_empty() {
                    return Err(must(
                        "a list of Python versions such as [\"3.11\", \"3.13\"]",
                    ));
                }
                config.python = Some(names);
            }
            "timeout" => {
                config.timeout =
                    Some(timeout(value).ok_or_else(|| {
                        must("a duration such as \"10m\" or a number of seconds")
                    })?);
            }
            _ => {
                return Err(error(format!(
                    "unknown key \"{key}\" (known keys: {})",
                    KNOWN_KEYS.join(", ")
                )))
            }
        }
    }
    Ok(config)
}

const STRINGS: &str = "an array of strings";

fn strings(value: &Value) -> Option<Vec<String>> {
    pyproject::strings(value)
}

fn env(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Table(table) = value else {
        return Err("\"env\" must be a table of strings, such as { NAME = \"value\" }".to_owned());
    };
    let mut env = BTreeMap::new();
    for (name, value) in table {
        if !names::is_env_name(name) {
            return Err(format!(
                "env: \"{name}\" is not a valid variable name (letters, digits and _, not starting with a digit)"
            ));
        }
        let Value::String(value) = value else {
            return Err(format!("env: \"{name}\" must be a string"));
        };
        env.insert(name.clone(), value.clone());
    }
    Ok(env)
}

fn timeout(value: &Value) -> Option<Duration> {
    let duration = match value {
        Value::String(s) => humantime::parse_duration(s.trim()).ok()?,
        Value::Integer(secs) => Duration::from_secs(u64::try_from(*secs).ok()?),
        _ => return None,
    };
    // A zero timeout would fail every job before it starts.
    (!duration.is_zero()).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` in a fresh root and reads its config, or the error's message.
    fn read_in(files: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            std::fs::write(dir.path().join(path), content).unwrap();
        }
        read(dir.path()).map_err(|e| e.to_string())
    }

    fn check_error(files: &[(&str, &str)], expected: &str) {
        assert_eq!(read_in(files).unwrap_err(), expected, "{files:?}");
    }

    /// `[tool.ci]` with `body` in pyproject.toml, and the same body in ci.toml, both fail
    /// with `expected` after their file's name.
    fn check_key_error(body: &str, expected: &str) {
        let pyproject = format!("[project]\nname = 'x'\n\n[tool.ci]\n{body}\n");
        check_error(
            &[("pyproject.toml", &pyproject)],
            &format!("pyproject.toml [tool.ci]: {expected}"),
        );
        check_error(&[("ci.toml", body)], &format!("ci.toml: {expected}"));
    }

    #[test]
    fn reads_every_key() {
        let config = read_in(&[(
            "pyproject.toml",
            "[tool.ci]\ngroups = ['test']\nextras = ['a']\nrequirements = ['r.txt']\ninstall-project = 'editable'\npytest-args = ['-x', '-k', 'not slow']\npytest-verbose = false\nenv = { A_1 = 'v' }\ntimeout = '10m'\nshards = 'auto'\npython = ['3.11', '3.13']\n",
        )])
        .unwrap();
        assert_eq!(
            config,
            Config {
                file: Some("pyproject.toml [tool.ci]"),
                groups: Some(vec!["test".into()]),
                extras: Some(vec!["a".into()]),
                requirements: Some(vec!["r.txt".into()]),
                install_project: Some(InstallProject::Editable),
                pytest_args: vec!["-x".into(), "-k".into(), "not slow".into()],
                pytest_verbose: Some(false),
                env: BTreeMap::from([("A_1".into(), "v".into())]),
                timeout: Some(Duration::from_secs(600)),
                shards: Some(ci_protocol::Shards::Auto),
                python: Some(vec!["3.11".into(), "3.13".into()]),
            }
        );
        assert!(config.decides_install());
    }

    #[test]
    fn reads_values() {
        fn check(body: &str, expected: Config) {
            let got = read_in(&[("ci.toml", body)]).unwrap();
            assert_eq!(
                got,
                Config {
                    file: Some("ci.toml"),
                    ..expected
                },
                "{body}"
            );
        }
        check("", Config::default());
        check(
            "timeout = 90",
            Config {
                timeout: Some(Duration::from_secs(90)),
                ..Config::default()
            },
        );
        check(
            "shards = 3",
            Config {
                shards: Some(ci_protocol::Shards::Count(3)),
                ..Config::default()
            },
        );
        check(
            "timeout = '1h 30m'",
            Config {
                timeout: Some(Duration::from_secs(5400)),
                ..Config::default()
            },
        );
        check(
            "install-project = false",
            Config {
                install_project: Some(InstallProject::No),
                ..Config::default()
            },
        );
        check(
            "install-project = true",
            Config {
                install_project: Some(InstallProject::Yes),
                ..Config::default()
            },
        );
        check(
            "pytest-args = ['-x']",
            Config {
                pytest_args: vec!["-x".into()],
                ..Config::default()
            },
        );
        check(
            "groups = []",
            Config {
                groups: Some(vec![]),
                ..Config::default()
            },
        );
    }

    #[test]
    fn no_config() {
        assert_eq!(read_in(&[]).unwrap(), Config::default());
        assert_eq!(
            read_in(&[("pyproject.toml", "[project]\nname = 'x'\n")]).unwrap(),
            Config::default()
        );
        assert!(!Config::default().decides_install());
        let config = read_in(&[("ci.toml", "pytest-args = ['-x']\nenv = { A = 'b' }\n")]).unwrap();
        assert!(!config.decides_install());
    }

    #[test]
    fn key_errors() {
        check_key_error("grups = ['test']", "unknown key \"grups\" (known keys: groups, extras, requirements, install-project, pytest-args, pytest-verbose, env, timeout, shards, python)");
        check_key_error(
            "shards = 0",
            "shards must be a number from 1 to 32 or \"auto\", not \"0\"",
        );
        check_key_error(
            "shards = true",
            "\"shards\" must be a number of test containers or \"auto\"",
        );
        check_key_error("groups = 'test'", "\"groups\" must be an array of strings");
        check_key_error(
            "groups = ['test', 1]",
            "\"groups\" must be an array of strings",
        );
        check_key_error("extras = 'test'", "\"extras\" must be an array of strings");
        check_key_error(
            "requirements = 'r.txt'",
            "\"requirements\" must be an array of strings",
        );
        check_key_error(
            "pytest-args = '-x'",
            "\"pytest-args\" must be an array of strings",
        );
        check_key_error(
            "pytest-verbose = 'no'",
            "\"pytest-verbose\" must be true or false",
        );
        check_key_error(
            "install-project = 'yes'",
            "\"install-project\" must be true, false or \"editable\"",
        );
        check_key_error(
            "install-project = 1",
            "\"install-project\" must be true, false or \"editable\"",
        );
        check_key_error(
            "env = ['A=b']",
            "\"env\" must be a table of strings, such as { NAME = \"value\" }",
        );
        check_key_error("env = { A = 1 }", "env: \"A\" must be a string");
        check_key_error("env = { 1X = 'b' }", "env: \"1X\" is not a valid variable name (letters, digits and _, not starting with a digit)");
        check_key_error("env = { 'A-B' = 'b' }", "env: \"A-B\" is not a valid variable name (letters, digits and _, not starting with a digit)");
        let timeout = "\"timeout\" must be a duration such as \"10m\" or a number of seconds";
        check_key_error("timeout = 'soon'", timeout);
        check_key_error("timeout = 0", timeout);
        check_key_error("timeout = -5", timeout);
        check_key_error("timeout = 1.5", timeout);
        check_key_error("timeout = '0s'", timeout);
    }

    #[test]
    fn file_errors() {
        check_error(
            &[
                ("pyproject.toml", "[tool.ci]\ngroups = ['a']\n"),
                ("ci.toml", "groups = ['b']\n"),
            ],
            "both pyproject.toml [tool.ci] and ci.toml configure ci: keep one of them",
        );
        check_error(
            &[("pyproject.toml", "[tool]\nci = 3\n")],
            "pyproject.toml: [tool.ci] must be a table",
        );
        let err = read_in(&[("pyproject.toml", "[tool.ci\ngroups = 1\n")]).unwrap_err();
        assert!(
            err.starts_with("pyproject.toml is not valid TOML: line 1, column "),
            "{err}"
        );
        let err = read_in(&[("ci.toml", "groups = [\n'a'\n")]).unwrap_err();
        assert!(err.starts_with("ci.toml is not valid TOML: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
