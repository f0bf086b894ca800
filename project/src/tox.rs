//! tox's base test environment (`[testenv]` of tox.ini, or pyproject.toml `[tool.tox]`):
//! its `deps`, its extras and whether it installs the package.
use toml::Value;

use crate::files::Files;
use crate::ini::{self, Ini};
use crate::pyproject::Pyproject;
use crate::Error;

#[derive(Debug, PartialEq)]
pub(crate) struct Tox {
    /// For the summary: `tox.ini [testenv] deps` or `pyproject.toml [tool.tox] deps`.
    pub(crate) source: &'static str,
    /// The file the deps are in, for messages.
    pub(crate) file: &'static str,
    /// `deps` lines in requirements-file format, `{toxinidir}` replaced by `.`.
    pub(crate) deps: Vec<String>,
    pub(crate) extras: Vec<String>,
    pub(crate) install: bool,
    pub(crate) editable: bool,
}

/// tox.ini's `[testenv]`, else pyproject.toml's `[tool.tox]`, the order tox looks in.
pub(crate) fn read(files: &Files, pyproject: Option<&Pyproject>) -> Result<Option<Tox>, Error> {
    if let Some(text) = files.read("tox.ini")? {
        if let Some(tox) = from_ini(&Ini::parse(&text), "tox.ini [testenv] deps", "tox.ini") {
            return Ok(Some(tox));
        }
    }
    let Some(pyproject) = pyproject else {
        return Ok(None);
    };
    let Some(table) = pyproject.tool("tox")? else {
        return Ok(None);
    };
    const SOURCE: &str = "pyproject.toml [tool.tox] deps";
    const FILE: &str = "pyproject.toml";
    if let Some(legacy) = table.get("legacy_tox_ini") {
        let Value::String(text) = legacy else {
            return Err(Error::Invalid(
                "pyproject.toml: [tool.tox] legacy_tox_ini must be a string".to_owned(),
            ));
        };
        return Ok(from_ini(&Ini::parse(text), SOURCE, FILE));
    }
    let Some(base) = table.get("env_run_base") else {
        return Ok(None);
    };
    let Value::Table(base) = base else {
        return Err(Error::Invalid(
            "pyproject.toml: [tool.tox.env_run_base] must be a table".to_owned(),
        ));
    };
    let list = |key: &str| -> Result<Vec<String>, Error> {
        match base.get(key) {
            None => Ok(Vec::new()),
            // tox's TOML format also allows `{ replace = ... }` tables in lists: they are
            // references to other settings, as `{...}` substitutions are in ini.
            Some(Value::Array(items)) => Ok(items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()),
            Some(_) => Err(Error::Invalid(format!(
                "pyproject.toml: [tool.tox.env_run_base] {key} must be an array of strings"
            ))),
        }
    };
    let flag = |key: &str| base.get(key).and_then(Value::as_bool) == Some(true);
    let package = base
        .get("package")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let deps = list("deps")?;
    let extras = list("extras")?;
    Ok(Some(Tox {
        source: SOURCE,
        file: FILE,
        deps: dep_lines(deps.iter().map(String::as_str)),
        extras: extras.into_iter().filter(|e| !e.contains('{')).collect(),
        install: !flag("skip_install") && package != "skip",
        editable: flag("use_develop") || package.starts_with("editable"),
    }))
}

fn from_ini(ini: &Ini, source: &'static str, file: &'static str) -> Option<Tox> {
    if !ini.has_section("testenv") {
        return None;
    }
    let get = |key: &str| ini.get("testenv", key).unwrap_or_default();
    let flag = |key: &str| ini::boolean(get(key)) == Some(true);
    let package = get("package").trim();
    let extras = get("extras")
        .split([',', '\n'])
        .map(|e| strip_comment(e).trim())
        .filter(|e| !e.is_empty() && !e.contains('{') && !is_conditional(e))
        .map(str::to_owned)
        .collect();
    Some(Tox {
        source,
        file,
        deps: dep_lines(get("deps").lines()),
        extras,
        install: !flag("skip_install") && package != "skip",
        editable: flag("usedevelop") || package.starts_with("editable"),
    })
}

/// The lines of `deps` that hold in every environment: `{toxinidir}` and `{tox_root}` are
/// the root (`.`, as paths are relative to it), other substitutions (`{posargs}`,
/// `{env:X}`, `{[base]deps}`) cannot be known here, and factor-conditional lines
/// (`py38: mock`) belong to some environments only.
fn dep_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    lines
        .map(|line| {
            strip_comment(line)
                .trim()
                .replace("{toxinidir}", ".")
                .replace("{tox_root}", ".")
        })
        .filter(|line| !line.is_empty() && !line.contains('{') && !is_conditional(line))
        .collect()
}

/// tox drops `#` comments at the start of a line or after whitespace.
fn strip_comment(line: &str) -> &str {
    let cut = line
        .char_indices()
        .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)))
        .map_or(line.len(), |(i, _)| i);
    &line[..cut]
}

/// `py38: x`, `!pypy,py3: x`: a tox factor condition before a value.
fn is_conditional(line: &str) -> bool {
    let Some(colon) = line.find(':') else {
        return false;
    };
    let factors = &line[..colon];
    !factors.is_empty()
        && !factors.starts_with('-')
        && !factors.eq_ignore_ascii_case("file")
        && !line[colon + 1..].starts_with('/')
        && factors
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ',' | '!' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyproject;

    fn tox(files: &[(&str, &str)]) -> Result<Option<Tox>, Error> {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            std::fs::write(dir.path().join(path), content).unwrap();
        }
        let files_ = Files::new(dir.path()).unwrap();
        let pyproject = pyproject::load(&files_, "pyproject.toml")?;
        read(&files_, pyproject.as_ref())
    }

    /// `(source, deps, extras, install, editable)`.
    type Expected<'a> = Option<(&'a str, &'a [&'a str], &'a [&'a str], bool, bool)>;

    fn check(files: &[(&str, &str)], expected: Expected) {
        let got = tox(files).unwrap();
        let got = got.as_ref().map(|t| {
            let deps: Vec<&str> = t.deps.iter().map(String::as_str).collect();
            let extras: Vec<&str> = t.extras.iter().map(String::as_str).collect();
            (t.source, deps, extras, t.install, t.editable)
        });
        let expected = expected.map(|(s, d, e, i, ed)| (s, d.to_vec(), e.to_vec(), i, ed));
        assert_eq!(got, expected, "{files:?}");
    }

    #[test]
    fn reads_testenv() {
        const INI: &str = "tox.ini [testenv] deps";
        check(&[("tox.ini", "[tox]\nenvlist = py3\n[testenv]\ndeps =\n    pytest\n    six\n    {posargs}\ncommands = pytest\n")], Some((INI, &["pytest", "six"], &[], true, false)));
        check(&[("tox.ini", "[testenv]\ndeps = -r{toxinidir}/requirements-test.txt\n    py38: mock\n    # no\n    {[base]deps}\n    x # why\nextras = test, docs\n")], Some((INI, &["-r./requirements-test.txt", "x"], &["test", "docs"], true, false)));
        check(
            &[("tox.ini", "[testenv]\nskip_install = true\n")],
            Some((INI, &[], &[], false, false)),
        );
        check(
            &[("tox.ini", "[testenv]\npackage = skip\n")],
            Some((INI, &[], &[], false, false)),
        );
        check(
            &[(
                "tox.ini",
                "[testenv]\nusedevelop = True\ndeps = -e{tox_root}/plugins/x\n",
            )],
            Some((INI, &["-e./plugins/x"], &[], true, true)),
        );
        check(&[("tox.ini", "[tox]\n[testenv:lint]\ndeps = ruff\n")], None);
        check(&[], None);
    }

    #[test]
    fn reads_pyproject() {
        const PY: &str = "pyproject.toml [tool.tox] deps";
        check(
            &[(
                "pyproject.toml",
                "[tool.tox]\nlegacy_tox_ini = \"\"\"\n[testenv]\ndeps = pytest\n\"\"\"\n",
            )],
            Some((PY, &["pytest"], &[], true, false)),
        );
        check(&[("pyproject.toml", "[tool.tox.env_run_base]\ndeps = ['pytest>=8', '-r{tox_root}/req.txt', { replace = 'ref', of = ['x'] }]\nextras = ['test']\npackage = 'editable'\n")], Some((PY, &["pytest>=8", "-r./req.txt"], &["test"], true, true)));
        check(
            &[(
                "pyproject.toml",
                "[tool.tox.env_run_base]\nskip_install = true\n",
            )],
            Some((PY, &[], &[], false, false)),
        );
        check(
            &[("pyproject.toml", "[tool.tox]\nenv_list = ['3.13']\n")],
            None,
        );
        // tox.ini wins over pyproject.toml, as tox itself reads it first.
        check(
            &[
                ("tox.ini", "[testenv]\ndeps = a\n"),
                ("pyproject.toml", "[tool.tox.env_run_base]\ndeps = ['b']\n"),
            ],
            Some(("tox.ini [testenv] deps", &["a"], &[], true, false)),
        );
    }

    #[test]
    fn conditional_lines() {
        fn check(line: &str, expected: bool) {
            assert_eq!(is_conditional(line), expected, "{line}");
        }
        check("py38: mock", true);
        check("!pypy,py3:x", true);
        check("pytest", false);
        check("file:./x", false);
        check("https://h/x.whl", false);
        check("--only-binary :all:", false);
        check("x @ git+https://h/x", false);
    }
}
