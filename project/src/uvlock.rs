//! Projects locked by uv: what `uv.lock` says must be installed per job (local packages),
//! and every input that decides what `uv sync` installs from it.
use std::collections::BTreeSet;

use toml::Value;

use crate::files::{self, Files, Kind};
use crate::pyproject::{self, Pyproject};
use crate::Error;

/// A lock of a large project lists every wheel of every package: far more than the cap
/// on other files.
pub(crate) const MAX_LOCK_SIZE: u64 = 32 * 1024 * 1024;

/// Directories looked at while expanding workspace member globs: a `**` in a large tree
/// must not make planning slow.
const MAX_WALK: usize = 10_000;

#[derive(Debug, Default, PartialEq)]
pub(crate) struct Lock {
    /// Packages other than the root built from the project's own files (workspace
    /// members, path dependencies): `--no-install-local` leaves them to the per-job layer.
    pub(crate) has_local: bool,
    /// The root is `virtual`: uv does not build or install it.
    pub(crate) root_virtual: bool,
    /// Packages uv clones with git, as `(name @ git+url, "git")`.
    pub(crate) vcs: Vec<(String, &'static str)>,
}

pub(crate) fn parse(text: &str) -> Result<Lock, Error> {
    let table = pyproject::parse_toml("uv.lock", text)?;
    let invalid = || Error::Invalid("uv.lock: package must be an array of tables".to_owned());
    let packages = match table.get("package") {
        None => return Ok(Lock::default()),
        Some(Value::Array(packages)) => packages,
        Some(_) => return Err(invalid()),
    };
    let mut lock = Lock::default();
    for package in packages {
        let package = package.as_table().ok_or_else(invalid)?;
        let Some(source) = package.get("source").and_then(Value::as_table) else {
            continue;
        };
        if let Some(url) = source.get("git").and_then(Value::as_str) {
            let name = package.get("name").and_then(Value::as_str).unwrap_or("?");
            lock.vcs.push((format!("{name} @ git+{url}"), "git"));
        }
        let local = ["editable", "directory", "path", "virtual"]
            .into_iter()
            .find_map(|kind| source.get(kind).and_then(Value::as_str).map(|p| (kind, p)));
        match local {
            Some((kind, ".")) => lock.root_virtual = kind == "virtual",
            Some(_) => lock.has_local = true,
            None => {}
        }
    }
    Ok(lock)
}

/// `(what, content)` of everything that decides the locked environment: the lock, the
/// dependency parts of the root's and every workspace member's pyproject.toml, and the
/// files uv reads for its own settings and the Python version.
pub(crate) fn key_inputs(
    files: &Files,
    pyproject: &Pyproject,
    lock: &str,
) -> Result<Vec<(String, String)>, Error> {
    let mut inputs = vec![
        ("uv.lock".to_owned(), lock.to_owned()),
        (
            "pyproject.toml (dependencies)".to_owned(),
            pyproject.dependency_parts(),
        ),
    ];
    let (members, exclude) = pyproject.workspace()?;
    for member in expand_members(files, &members, &exclude)? {
        let rel = format!("{member}/pyproject.toml");
        if let Some(member) = pyproject::load(files, &rel)? {
            inputs.push((format!("{rel} (dependencies)"), member.dependency_parts()));
        }
    }
    for file in ["uv.toml", ".python-version"] {
        if let Some(text) = files.read(file)? {
            inputs.push((file.to_owned(), text));
        }
    }
    Ok(inputs)
}

/// The member directories the globs name (relative to the root, sorted), without the
/// excluded ones and the root itself.
fn expand_members(
    files: &Files,
    members: &[String],
    exclude: &[String],
) -> Result<BTreeSet<String>, Error> {
    let mut found = BTreeSet::new();
    let mut budget = MAX_WALK;
    for pattern in members {
        let normalized = files::join("", pattern).ok_or_else(|| Error::Outside {
            file: "pyproject.toml [tool.uv.workspace] members".to_owned(),
            path: pattern.clone(),
        })?;
        let segments: Vec<&str> = normalized.split('/').filter(|s| !s.is_empty()).collect();
        walk(files, "", &segments, &mut found, &mut budget)?;
    }
    let exclude: Vec<Vec<&str>> = exclude
        .iter()
        .map(|p| {
            p.split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .collect()
        })
        .collect();
    found.retain(|dir| {
        let path: Vec<&str> = dir.split('/').collect();
        !dir.is_empty() && !exclude.iter().any(|pattern| path_matches(pattern, &path))
    });
    Ok(found)
}

fn walk(
    files: &Files,
    dir: &str,
    segments: &[&str],
    found: &mut BTreeSet<String>,
    budget: &mut usize,
) -> Result<(), Error> {
    *budget = budget.checked_sub(1).ok_or_else(|| {
        Error::Invalid(format!(
            "pyproject.toml [tool.uv.workspace] members: more than {MAX_WALK} directories to look at"
        ))
    })?;
    let Some((first, rest)) = segments.split_first() else {
        found.insert(dir.to_owned());
        return Ok(());
    };
    let subdirs = || -> Result<Vec<String>, Error> {
        Ok(files
            .list(dir)?
            .into_iter()
            .filter(|(_, kind)| *kind == Kind::Dir)
            .map(|(name, _)| name)
            .collect())
    };
    if *first == "**" {
        walk(files, dir, rest, found, budget)?;
        for name in subdirs()? {
            let child = files::join(dir, &name).expect("an entry is under its directory");
            walk(files, &child, segments, found, budget)?;
        }
    } else if first.contains(['*', '?', '[']) {
        for name in subdirs()? {
            if glob_match(first.as_bytes(), name.as_bytes()) {
                let child = files::join(dir, &name).expect("an entry is under its directory");
                walk(files, &child, rest, found, budget)?;
            }
        }
    } else {
        let child = files::join(dir, first).expect("a normalized segment stays inside");
        if files.kind(&child)? == Some(Kind::Dir) {
            walk(files, &child, rest, found, budget)?;
        }
    }
    Ok(())
}

/// A path (as segments) against a pattern whose segments may be `**`.
fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|i| path_matches(rest, &path[i..])),
        Some((first, rest)) => path.split_first().is_some_and(|(name, path_rest)| {
            glob_match(first.as_bytes(), name.as_bytes()) && path_matches(rest, path_rest)
        }),
    }
}

/// One path segment against a glob: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob_match(rest, &name[1..]),
        Some((b'[', rest)) if rest.iter().skip(1).any(|&c| c == b']') => {
            let close = 1 + rest[1..].iter().position(|&c| c == b']').expect("checked");
            let (class, after) = (&rest[..close], &rest[close + 1..]);
            let (negate, class) = match class.split_first() {
                Some((b'!', class)) => (true, class),
                _ => (false, class),
            };
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_match(after, name_rest)
        }
        Some((&c, rest)) => name.first() == Some(&c) && glob_match(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_locks() {
        fn check(packages: &str, expected: Lock) {
            let text = format!("version = 1\nrequires-python = \">=3.11\"\n{packages}");
            assert_eq!(parse(&text).unwrap(), expected, "{packages}");
        }
        let root =
            "[[package]]\nname = \"app\"\nversion = \"0.1.0\"\nsource = { editable = \".\" }\n";
        let registry = "[[package]]\nname = \"six\"\nversion = \"1.17.0\"\nsource = { registry = \"https://pypi.org/simple\" }\n";
        check(&format!("{root}{registry}"), Lock::default());
        check(
            "[[package]]\nname = \"app\"\nversion = \"0.1.0\"\nsource = { virtual = \".\" }\n",
            Lock {
                root_virtual: true,
                ..Lock::default()
            },
        );
        check(
            &format!("{root}[[package]]\nname = \"lib\"\nversion = \"0.1.0\"\nsource = {{ editable = \"packages/lib\" }}\n"),
            Lock { has_local: true, ..Lock::default() },
        );
        check(
            &format!("{root}[[package]]\nname = \"w\"\nversion = \"1.0\"\nsource = {{ path = \"dist/w-1.0-py3-none-any.whl\" }}\n"),
            Lock { has_local: true, ..Lock::default() },
        );
        check(
            &format!("{root}[[package]]\nname = \"g\"\nversion = \"1.0\"\nsource = {{ git = \"https://h/g?rev=x#abc\" }}\n"),
            Lock {
                vcs: vec![("g @ git+https://h/g?rev=x#abc".to_owned(), "git")],
                ..Lock::default()
            },
        );
        check("", Lock::default());
    }

    #[test]
    fn globs() {
        fn check(pattern: &str, name: &str, expected: bool) {
            assert_eq!(
                glob_match(pattern.as_bytes(), name.as_bytes()),
                expected,
                "{pattern} {name}"
            );
        }
        check("*", "lib", true);
        check("lib-*", "lib-a", true);
        check("lib-*", "app", false);
        check("l?b", "lib", true);
        check("[a-c]x", "bx", true);
        check("[!a-c]x", "bx", false);
        check("[xy]", "y", true);
    }

    #[test]
    fn expands_members() {
        let dir = tempfile::tempdir().unwrap();
        for member in [
            "packages/a",
            "packages/b",
            "packages/skip",
            "libs/deep/c",
            "notes",
        ] {
            std::fs::create_dir_all(dir.path().join(member)).unwrap();
        }
        let files = Files::new(dir.path()).unwrap();
        let check = |members: &[&str], exclude: &[&str], expected: &[&str]| {
            let members: Vec<String> = members.iter().map(|s| s.to_string()).collect();
            let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
            let got = expand_members(&files, &members, &exclude).unwrap();
            assert_eq!(
                got.iter().map(String::as_str).collect::<Vec<_>>(),
                expected,
                "{members:?}"
            );
        };
        check(
            &["packages/*"],
            &[],
            &["packages/a", "packages/b", "packages/skip"],
        );
        check(
            &["packages/*"],
            &["packages/skip"],
            &["packages/a", "packages/b"],
        );
        check(&["libs/**"], &[], &["libs", "libs/deep", "libs/deep/c"]);
        check(&["./notes", "missing/*"], &[], &["notes"]);
        check(&["."], &[], &[]);
        let outside = expand_members(&files, &["../x".to_owned()], &[]).unwrap_err();
        assert_eq!(
            outside.to_string(),
            "pyproject.toml [tool.uv.workspace] members: ../x is outside the project"
        );
    }
}
