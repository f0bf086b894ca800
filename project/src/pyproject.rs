//! What pyproject.toml says about installing the project: PEP 621 `[project]`, PEP 735
//! `[dependency-groups]`, `[build-system]` and the tool tables read here (`uv`, `tox`, `ci`).
use toml::{Table, Value};

use crate::files::Files;
use crate::{names, Error};

/// `(extra, requirements)` of `[project.optional-dependencies]` or setup.cfg's extras.
pub(crate) type Extras = Vec<(String, Vec<String>)>;

pub(crate) struct Pyproject {
    /// Its path relative to the root, for messages: `pyproject.toml` or a workspace member's.
    pub(crate) file: String,
    pub(crate) table: Table,
}

/// Parses TOML, the error naming `file` and saying where in it, on one line.
pub(crate) fn parse_toml(file: &str, text: &str) -> Result<Table, Error> {
    text.parse::<Table>().map_err(|e| {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let message = match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: {message}")
            }
            None => message,
        };
        Error::Toml {
            file: file.to_owned(),
            message,
        }
    })
}

/// `rel` (a pyproject.toml) parsed, `None` when there is none.
pub(crate) fn load(files: &Files, rel: &str) -> Result<Option<Pyproject>, Error> {
    let Some(text) = files.read(rel)? else {
        return Ok(None);
    };
    Ok(Some(Pyproject {
        file: rel.to_owned(),
        table: parse_toml(rel, &text)?,
    }))
}

impl Pyproject {
    fn invalid(&self, what: &str, must: &str) -> Error {
        Error::Invalid(format!("{}: {what} must be {must}", self.file))
    }

    fn table_at(&self, path: &[&str]) -> Result<Option<&Table>, Error> {
        let mut table = &self.table;
        for (i, key) in path.iter().enumerate() {
            match table.get(*key) {
                None => return Ok(None),
                Some(Value::Table(t)) => table = t,
                Some(_) => {
                    return Err(self.invalid(&format!("[{}]", path[..=i].join(".")), "a table"))
                }
            }
        }
        Ok(Some(table))
    }

    pub(crate) fn project(&self) -> Result<Option<&Table>, Error> {
        self.table_at(&["project"])
    }

    pub(crate) fn has_build_system(&self) -> bool {
        self.table.contains_key("build-system")
    }

    /// `[tool.<name>]`, checked to be a table.
    pub(crate) fn tool(&self, name: &str) -> Result<Option<&Table>, Error> {
        self.table_at(&["tool", name])
    }

    pub(crate) fn name(&self) -> Result<Option<&str>, Error> {
        match self.project()?.and_then(|p| p.get("name")) {
            None => Ok(None),
            Some(Value::String(name)) => Ok(Some(name)),
            Some(_) => Err(self.invalid("[project] name", "a string")),
        }
    }

    /// `[project] requires-python`, when it is there.
    pub(crate) fn requires_python(&self) -> Result<Option<&str>, Error> {
        match self.project()?.and_then(|p| p.get("requires-python")) {
            None => Ok(None),
            Some(Value::String(spec)) => Ok(Some(spec)),
            Some(_) => Err(self.invalid("[project] requires-python", "a string")),
        }
    }

    fn strings(&self, value: &Value, what: &str) -> Result<Vec<String>, Error> {
        strings(value).ok_or_else(|| self.invalid(what, "an array of strings"))
    }

    fn is_dynamic(&self, field: &str) -> Result<bool, Error> {
        match self.project()?.and_then(|p| p.get("dynamic")) {
            None => Ok(false),
            Some(v) => Ok(self
                .strings(v, "[project] dynamic")?
                .iter()
                .any(|d| d == field)),
        }
    }

    /// `[project] dependencies`; `None` when they are `dynamic` (only a build knows them).
    pub(crate) fn dependencies(&self) -> Result<Option<Vec<String>>, Error> {
        if self.is_dynamic("dependencies")? {
            return Ok(None);
        }
        match self.project()?.and_then(|p| p.get("dependencies")) {
            None => Ok(Some(Vec::new())),
            Some(v) => self.strings(v, "[project] dependencies").map(Some),
        }
    }

    /// `[project.optional-dependencies]` as `(extra, requirements)`; `None` when dynamic.
    pub(crate) fn optional_dependencies(&self) -> Result<Option<Extras>, Error> {
        if self.is_dynamic("optional-dependencies")? {
            return Ok(None);
        }
        let Some(table) = self.table_at(&["project", "optional-dependencies"])? else {
            return Ok(Some(Vec::new()));
        };
        let mut extras = Vec::new();
        for (name, reqs) in table {
            let what = format!("[project.optional-dependencies] {name}");
            extras.push((name.clone(), self.strings(reqs, &what)?));
        }
        Ok(Some(extras))
    }

    /// PEP 735 groups; uv's legacy `[tool.uv] dev-dependencies` count as group `dev`, as uv
    /// itself reads them.
    pub(crate) fn groups(&self) -> Result<Groups<'_>, Error> {
        let mut groups: Vec<(&str, Vec<&Value>)> = Vec::new();
        if let Some(table) = self.table_at(&["dependency-groups"])? {
            for (name, entries) in table {
                let Value::Array(entries) = entries else {
                    return Err(self.invalid(&format!("[dependency-groups] {name}"), "an array"));
                };
                groups.push((name, entries.iter().collect()));
            }
        }
        if let Some(dev) = self.tool("uv")?.and_then(|uv| uv.get("dev-dependencies")) {
            let Value::Array(dev) = dev else {
                return Err(self.invalid("[tool.uv] dev-dependencies", "an array of strings"));
            };
            match groups
                .iter_mut()
                .find(|(n, _)| names::normalize(n) == "dev")
            {
                Some((_, entries)) => entries.extend(dev),
                None => groups.push(("dev", dev.iter().collect())),
            }
        }
        Ok(Groups {
            file: &self.file,
            groups,
        })
    }

    /// `[tool.uv] package`: `Some(false)` says the project is not a package to install.
    pub(crate) fn uv_package(&self) -> Result<Option<bool>, Error> {
        match self.tool("uv")?.and_then(|uv| uv.get("package")) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid("[tool.uv] package", "true or false")),
        }
    }

    /// `[tool.uv.workspace]` `members` and `exclude` globs.
    pub(crate) fn workspace(&self) -> Result<(Vec<String>, Vec<String>), Error> {
        let Some(ws) = self.table_at(&["tool", "uv", "workspace"])? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let get = |key: &str| match ws.get(key) {
            None => Ok(Vec::new()),
            Some(v) => self.strings(v, &format!("[tool.uv.workspace] {key}")),
        };
        Ok((get("members")?, get("exclude")?))
    }

    /// `[build-system] requires`.
    pub(crate) fn build_requires(&self) -> Result<Vec<String>, Error> {
        match self
            .table_at(&["build-system"])?
            .and_then(|b| b.get("requires"))
        {
            None => Ok(Vec::new()),
            Some(v) => self.strings(v, "[build-system] requires"),
        }
    }

    /// The parts that decide what `uv sync` installs besides the project, in a canonical
    /// text (keys sorted, one form per value) so that formatting, comments and unrelated
    /// tables such as `[tool.ruff]` do not change it.
    pub(crate) fn dependency_parts(&self) -> String {
        let mut out = String::new();
        let project = self.table.get("project").and_then(Value::as_table);
        for key in [
            "name",
            "dependencies",
            "optional-dependencies",
            "requires-python",
            "dynamic",
        ] {
            if let Some(v) = project.and_then(|p| p.get(key)) {
                out.push_str(&format!("project.{key} = "));
                canonical(v, &mut out);
                out.push('\n');
            }
        }
        if let Some(v) = self.table.get("dependency-groups") {
            out.push_str("dependency-groups = ");
            canonical(v, &mut out);
            out.push('\n');
        }
        let uv = self
            .table
            .get("tool")
            .and_then(Value::as_table)
            .and_then(|t| t.get("uv"));
        if let Some(v) = uv {
            out.push_str("tool.uv = ");
            canonical(v, &mut out);
            out.push('\n');
        }
        out
    }
}

/// An array of strings, or `None` if `value` is anything else.
pub(crate) fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// One text per value, independent of how the file wrote it: tables with sorted keys.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(&format!("{s:?}")),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&format!("{f:?}")),
        Value::Boolean(b) => out.push_str(&b.to_string()),
        Value::Datetime(d) => out.push_str(&format!("{:?}", d.to_string())),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Table(table) => {
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&format!("{key:?} = "));
                canonical(&table[key], out);
            }
            out.push('}');
        }
    }
}

/// PEP 735 dependency groups of one pyproject.toml.
pub(crate) struct Groups<'a> {
    file: &'a str,
    /// `(name as written, entries)`.
    groups: Vec<(&'a str, Vec<&'a Value>)>,
}

impl<'a> Groups<'a> {
    /// The group named `name` (compared normalized), as the file writes it.
    pub(crate) fn find(&self, name: &str) -> Option<&'a str> {
        let name = names::normalize(name);
        self.groups
            .iter()
            .find(|(n, _)| names::normalize(n) == name)
            .map(|(n, _)| *n)
    }

    /// For messages: `groups there: a, b` or `there are none`.
    pub(crate) fn known(&self) -> String {
        if self.groups.is_empty() {
            "there are none".to_owned()
        } else {
            let mut names: Vec<&str> = self.groups.iter().map(|(n, _)| *n).collect();
            names.sort_unstable();
            format!("groups there: {}", names.join(", "))
        }
    }

    /// The requirements of group `name`, `{include-group = "..."}` entries resolved.
    pub(crate) fn resolve(&self, name: &str) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        self.resolve_into(name, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    fn resolve_into(
        &self,
        name: &str,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<String>,
    ) -> Result<(), Error> {
        let normalized = names::normalize(name);
        let Some((written, entries)) = self
            .groups
            .iter()
            .find(|(n, _)| names::normalize(n) == normalized)
        else {
            let includer = stack.last().copied().unwrap_or_default();
            return Err(Error::UnknownGroup {
                file: format!("{} [dependency-groups] {includer}", self.file),
                group: name.to_owned(),
                known: self.known(),
            });
        };
        if let Some(at) = stack.iter().position(|n| names::normalize(n) == normalized) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(written);
            return Err(Error::GroupCycle {
                cycle: cycle.join(" -> "),
            });
        }
        stack.push(written);
        for entry in entries {
            match entry {
                Value::String(req) => out.push(req.clone()),
                Value::Table(t) if t.len() == 1 && t.contains_key("include-group") => {
                    let Some(Value::String(included)) = t.get("include-group") else {
                        return Err(Error::Invalid(format!(
                            "{} [dependency-groups] {written}: include-group must be a string",
                            self.file
                        )));
                    };
                    self.resolve_into(included, stack, out)?;
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "{} [dependency-groups] {written}: entries must be requirement strings \
                         or {{include-group = \"...\"}}",
                        self.file
                    )))
                }
            }
        }
        stack.pop();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pyproject(text: &str) -> Pyproject {
        Pyproject {
            file: "pyproject.toml".to_owned(),
            table: parse_toml("pyproject.toml", text).unwrap(),
        }
    }

    #[test]
    fn resolves_groups() {
        fn check(text: &str, group: &str, expected: Result<&[&str], &str>) {
            let got = pyproject(text).groups().and_then(|g| g.resolve(group));
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{text}"),
                (Err(got), Err(expected)) => assert_eq!(got.to_string(), expected, "{text}"),
                (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
            }
        }
        let base = "[dependency-groups]\n";
        check(&format!("{base}test = ['pytest']"), "test", Ok(&["pytest"]));
        check(&format!("{base}Test_X = ['a']"), "test-x", Ok(&["a"]));
        check(
            &format!("{base}test = ['a', {{include-group = 'lint'}}, 'b']\nlint = ['ruff', {{include-group = 'typing'}}]\ntyping = ['mypy']"),
            "test",
            Ok(&["a", "ruff", "mypy", "b"]),
        );
        check(
            &format!("{base}a = [{{include-group = 'b'}}]\nb = [{{include-group = 'a'}}]"),
            "a",
            Err("pyproject.toml [dependency-groups]: include-group cycle: a -> b -> a"),
        );
        check(
            &format!("{base}a = [{{include-group = 'a'}}]"),
            "a",
            Err("pyproject.toml [dependency-groups]: include-group cycle: a -> a"),
        );
        check(
            &format!("{base}a = [{{include-group = 'nope'}}]"),
            "a",
            Err("pyproject.toml [dependency-groups] a: dependency group \"nope\" is not in pyproject.toml [dependency-groups] (groups there: a)"),
        );
        check(
            &format!("{base}a = [{{name = 'x'}}]"),
            "a",
            Err("pyproject.toml [dependency-groups] a: entries must be requirement strings or {include-group = \"...\"}"),
        );
        check(
            &format!("{base}dev = ['a']\n[tool.uv]\ndev-dependencies = ['b']"),
            "dev",
            Ok(&["a", "b"]),
        );
        check("[tool.uv]\ndev-dependencies = ['b']", "dev", Ok(&["b"]));
    }

    #[test]
    fn dependency_parts_ignore_unrelated_tables() {
        let a = pyproject(
            "[project]\nname = 'x'\ndependencies = ['a', 'b']\nversion = '1'\n[tool.ruff]\nline-length = 80\n[tool.uv]\nsources = { a = { path = 'libs/a' }, b = { git = 'https://h/b' } }",
        );
        let b = pyproject(
            "[tool.uv.sources]\nb = { git = 'https://h/b' }\na = { path = 'libs/a' }\n[project]\n# comment\nversion = '2'\ndependencies = [\n  'a',\n  'b',\n]\nname = 'x'\n",
        );
        assert_eq!(a.dependency_parts(), b.dependency_parts());
        let c = pyproject("[project]\nname = 'x'\ndependencies = ['a', 'c']");
        assert_ne!(a.dependency_parts(), c.dependency_parts());
    }

    #[test]
    fn toml_errors_are_one_line() {
        let err = parse_toml("pyproject.toml", "[project]\nname = \n").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("pyproject.toml is not valid TOML: line 2, column "),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}
