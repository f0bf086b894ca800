//! Python package names: PEP 503 normalization and the name and extras at the start of a
//! PEP 508 requirement.

/// PEP 503: lowercase, and every run of `-`, `_` and `.` becomes one `-`, so that `Foo_Bar`,
/// `foo.bar` and `foo-bar` name the same project (and, by PEP 685, the same extra or group).
pub(crate) fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// The start of a PEP 508 requirement: `name [extra, ...]` and what follows (a version
/// specifier, `@ url`, `; markers`, or nothing).
#[derive(Debug, PartialEq)]
pub(crate) struct Requirement<'a> {
    pub(crate) name: &'a str,
    pub(crate) extras: Vec<&'a str>,
    pub(crate) rest: &'a str,
}

/// `None` when `line` does not start with a valid name (or its extras are not closed).
pub(crate) fn parse(line: &str) -> Option<Requirement<'_>> {
    let line = line.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(line.len());
    let name = &line[..end];
    // PEP 508: a name starts and ends with a letter or digit.
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return None;
    }
    let mut rest = line[end..].trim_start();
    let mut extras = Vec::new();
    if let Some(inner) = rest.strip_prefix('[') {
        let close = inner.find(']')?;
        extras = inner[..close]
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        rest = &inner[close + 1..];
    }
    Some(Requirement { name, extras, rest })
}

/// Environment variable names the test phase accepts: what a POSIX shell can name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        fn check(name: &str, expected: &str) {
            assert_eq!(normalize(name), expected, "{name}");
        }
        check("Foo_Bar", "foo-bar");
        check("foo.-_bar", "foo-bar");
        check("Tests", "tests");
        check("zope.interface", "zope-interface");
    }

    #[test]
    fn parses_requirements() {
        fn check(line: &str, expected: Option<(&str, &[&str], &str)>) {
            let got = parse(line).map(|r| (r.name, r.extras, r.rest));
            assert_eq!(got, expected.map(|(n, e, r)| (n, e.to_vec(), r)), "{line}");
        }
        check("requests", Some(("requests", &[], "")));
        check("requests>=2.0", Some(("requests", &[], ">=2.0")));
        check(
            "pkg[a, b] >=1; python_version<'3.10'",
            Some(("pkg", &["a", "b"], " >=1; python_version<'3.10'")),
        );
        check(
            "pkg @ git+https://h/x",
            Some(("pkg", &[], "@ git+https://h/x")),
        );
        check("./local", None);
        check("-e .", None);
        check("pkg[a", None);
        check("_private", None);
    }

    #[test]
    fn env_names() {
        fn check(name: &str, expected: bool) {
            assert_eq!(is_env_name(name), expected, "{name}");
        }
        check("FOO", true);
        check("_x1", true);
        check("1X", false);
        check("A-B", false);
        check("", false);
    }
}
