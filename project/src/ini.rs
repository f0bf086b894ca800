//! A small INI reader for setup.cfg and tox.ini, following Python's `configparser` as
//! setuptools and tox use it: `key = value` or `key: value`, keys lowercased, indented lines
//! continuing the value above, whole lines starting with `#` or `;` as comments.

#[derive(Debug, Default)]
pub(crate) struct Ini {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Ini {
    pub(crate) fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        // Whether the last line was a `key = value` that an indented line may continue.
        let mut in_value = false;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                // configparser keeps blank lines inside values; they are dropped by every
                // reader here, so they need not end the value either.
                continue;
            }
            let indented = line.starts_with([' ', '\t']);
            if indented && in_value {
                if let Some((_, entries)) = ini.sections.last_mut() {
                    if let Some((_, value)) = entries.last_mut() {
                        value.push('\n');
                        value.push_str(trimmed);
                    }
                }
                continue;
            }
            if let Some(header) = trimmed.strip_prefix('[') {
                if let Some(end) = header.find(']') {
                    ini.sections
                        .push((header[..end].trim().to_owned(), Vec::new()));
                    in_value = false;
                    continue;
                }
            }
            in_value = false;
            let Some((_, entries)) = ini.sections.last_mut() else {
                continue;
            };
            // configparser splits at the first of its delimiters, `=` or `:`.
            if let Some(at) = trimmed.find(['=', ':']) {
                let key = trimmed[..at].trim().to_lowercase();
                let value = trimmed[at + 1..].trim().to_owned();
                entries.push((key, value));
                in_value = true;
            }
        }
        ini
    }

    pub(crate) fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|(n, _)| n == name)
    }

    /// The value of `key` in `section`; the last one wins, as a repeated key is in tox.
    pub(crate) fn get<'a>(&'a self, section: &'a str, key: &str) -> Option<&'a str> {
        self.entries(section)
            .filter(|(k, _)| k == key)
            .last()
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn entries<'a>(
        &'a self,
        section: &'a str,
    ) -> impl Iterator<Item = &'a (String, String)> + 'a {
        self.sections
            .iter()
            .filter(move |(n, _)| n == section)
            .flat_map(|(_, entries)| entries)
    }
}

/// A list value as setuptools reads it (`list-semi`): one item a line when the value spans
/// lines, otherwise items separated by `;`; comment lines dropped.
pub(crate) fn list(value: &str, separator: char) -> Vec<String> {
    let items: Vec<&str> = if value.contains('\n') {
        value.lines().collect()
    } else {
        value.split(separator).collect()
    };
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty() && !item.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// A boolean as configparser reads one; `None` for anything else.
pub(crate) fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values() {
        fn check(text: &str, section: &str, key: &str, expected: Option<&str>) {
            assert_eq!(Ini::parse(text).get(section, key), expected, "{text}");
        }
        check("[a]\nk = v\n", "a", "k", Some("v"));
        check("[a]\nK: v\n", "a", "k", Some("v"));
        check(
            "[a]\nk =\n    x\n    # c\n\n    y\n",
            "a",
            "k",
            Some("\nx\ny"),
        );
        check("[a]\nk = 1\n[b]\nk = 2\n", "b", "k", Some("2"));
        check("[a]\nk = 1\nk = 2\n", "a", "k", Some("2"));
        check("k = 1\n[a]\n", "a", "k", None);
        check("[a]\nurl = http://x\n", "a", "url", Some("http://x"));
        check("[a]\nk = v\n  more\nnext = n\n", "a", "k", Some("v\nmore"));
    }

    #[test]
    fn splits_lists() {
        fn check(value: &str, expected: &[&str]) {
            assert_eq!(list(value, ';'), expected, "{value}");
        }
        check("a; b", &["a", "b"]);
        check(
            "\na>1; python_version<'3'\n# no\nb",
            &["a>1; python_version<'3'", "b"],
        );
        check("", &[]);
    }
}
