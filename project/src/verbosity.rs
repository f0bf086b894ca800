//! Whether the server adds `-v` to a job's pytest: by default yes, one line per test in the
//! log, unless the project chose its own verbosity (pytest's `addopts`, the submission's
//! arguments, `PYTEST_ADDOPTS` in `[tool.ci] env`) or turned it off
//! (`[tool.ci] pytest-verbose = false`).

use std::path::Path;

use toml::Value;

use crate::files::Files;
use crate::ini::Ini;
use crate::{pyproject, Config};

/// Whether `-v` goes before the project's arguments: not when `[tool.ci] pytest-verbose` is
/// false, nor when `pytest_args` (the job's extra arguments), `[tool.ci] env`'s
/// `PYTEST_ADDOPTS` or the `addopts` of the pytest configuration pytest would read in
/// `root` already set a verbosity. A configuration that cannot be read counts as none: the
/// default stays.
pub fn pytest_verbose(root: &Path, config: &Config, pytest_args: &[String]) -> bool {
    if config.pytest_verbose == Some(false) {
        return false;
    }
    let env_addopts = config.env.get("PYTEST_ADDOPTS").map(|v| split(v));
    let addopts = addopts(root).unwrap_or_default();
    ![
        pytest_args.to_vec(),
        env_addopts.unwrap_or_default(),
        addopts,
    ]
    .iter()
    .any(|args| sets_verbosity(args))
}

/// Whether pytest arguments set a verbosity: `-v`, `-q` (also repeated or in a group of
/// short flags, `-vv`, `-xq`), `--verbose`, `--quiet`, `--verbosity=N`/`--verbosity N`.
pub fn sets_verbosity(args: &[String]) -> bool {
    // pytest's short options that take a value: the rest of a group is that value.
    const TAKES_VALUE: &str = "ckmoprW";
    args.iter().any(|arg| {
        if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            return matches!(name, "verbose" | "quiet" | "verbosity");
        }
        let Some(group) = arg.strip_prefix('-') else {
            return false;
        };
        for c in group.chars() {
            match c {
                'v' | 'q' => return true,
                c if TAKES_VALUE.contains(c) => return false,
                _ => {}
            }
        }
        false
    })
}

/// The `addopts` of the file pytest takes its configuration from, split into arguments: the
/// first of `pytest.ini` (any), `.pytest.ini`, `pyproject.toml` with `[tool.pytest]` or
/// `[tool.pytest.ini_options]`, `tox.ini` with `[pytest]`, `setup.cfg` with `[tool:pytest]`.
fn addopts(root: &Path) -> Option<Vec<String>> {
    let files = Files::new(root).ok()?;
    for name in ["pytest.ini", ".pytest.ini"] {
        if let Some(text) = files.read(name).ok()? {
            return Some(ini_addopts(&text, "pytest"));
        }
    }
    if let Some(pyproject) = pyproject::load(&files, "pyproject.toml").ok()? {
        if let Some(pytest) = pyproject.tool("pytest").ok()? {
            // pytest 9's native table, else the ini-style one.
            let table = match pytest.get("ini_options") {
                Some(Value::Table(ini)) if !pytest.contains_key("addopts") => ini,
                _ => pytest,
            };
            return Some(match table.get("addopts") {
                Some(Value::String(s)) => split(s),
                Some(other) => pyproject::strings(other).unwrap_or_default(),
                None => Vec::new(),
            });
        }
    }
    for (name, section) in [("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")] {
        if let Some(text) = files.read(name).ok()? {
            let ini = Ini::parse(&text);
            if ini.has_section(section) {
                return Some(ini_addopts(&text, section));
            }
        }
    }
    None
}

fn ini_addopts(text: &str, section: &str) -> Vec<String> {
    Ini::parse(text)
        .get(section, "addopts")
        .map(split)
        .unwrap_or_default()
}

/// Arguments as pytest splits `addopts` (`shlex.split`), for what matters here: words apart,
/// quotes only grouping.
fn split(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        split(text)
    }

    #[test]
    fn verbosity_in_arguments() {
        let check = |text: &str, expected: bool| {
            assert_eq!(sets_verbosity(&args(text)), expected, "{text}");
        };
        check("-q", true);
        check("-qq", true);
        check("-v", true);
        check("-vv", true);
        check("-xq", true);
        check("--quiet", true);
        check("--verbose", true);
        check("--verbosity=2", true);
        check("--verbosity 0", true);
        check("-x -k 'not slow'", false);
        check("-rA", false);
        check("-p no:cacheprovider", false);
        check("-k verbose", false);
        check("--tb=short --strict-markers", false);
        check("", false);
    }

    #[test]
    fn splits_like_shlex() {
        assert_eq!(
            split(" -x  -k 'not slow' \"a b\"c ''"),
            ["-x", "-k", "not slow", "a bc", ""]
        );
    }

    fn verbose(files: &[(&str, &str)], extra: &[&str]) -> bool {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let config = crate::read_config(dir.path()).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        pytest_verbose(dir.path(), &config, &extra)
    }

    #[test]
    fn the_projects_choice_wins_over_the_default() {
        assert!(verbose(&[], &[]));
        assert!(!verbose(&[], &["-q"]));
        assert!(verbose(&[], &["-x"]));
        let pyproject = |body: &str| format!("[project]\nname = \"p\"\n{body}");
        assert!(!verbose(
            &[(
                "pyproject.toml",
                &pyproject("[tool.pytest.ini_options]\naddopts = \"-q --tb=short\"\n")
            )],
            &[]
        ));
        assert!(!verbose(
            &[(
                "pyproject.toml",
                &pyproject("[tool.pytest]\naddopts = [\"-ra\", \"--quiet\"]\n")
            )],
            &[]
        ));
        assert!(verbose(
            &[(
                "pyproject.toml",
                &pyproject("[tool.pytest.ini_options]\naddopts = \"-ra\"\n")
            )],
            &[]
        ));
        assert!(!verbose(
            &[("pytest.ini", "[pytest]\naddopts = -qq\n")],
            &[]
        ));
        assert!(!verbose(
            &[("tox.ini", "[tox]\n[pytest]\naddopts =\n    -x\n    -q\n")],
            &[]
        ));
        assert!(!verbose(
            &[("setup.cfg", "[tool:pytest]\naddopts = --verbosity=0\n")],
            &[]
        ));
        // Only the file pytest reads counts: an empty pytest.ini comes before the rest.
        assert!(verbose(
            &[
                ("pytest.ini", "[pytest]\n"),
                ("setup.cfg", "[tool:pytest]\naddopts = -q\n")
            ],
            &[]
        ));
        // [tool.ci]: the switch, and PYTEST_ADDOPTS in its env.
        assert!(!verbose(
            &[(
                "pyproject.toml",
                &pyproject("[tool.ci]\npytest-verbose = false\n")
            )],
            &[]
        ));
        assert!(verbose(
            &[(
                "pyproject.toml",
                &pyproject("[tool.ci]\npytest-verbose = true\n")
            )],
            &[]
        ));
        assert!(!verbose(
            &[("ci.toml", "env = { PYTEST_ADDOPTS = \"-q\" }\n")],
            &[]
        ));
    }
}
