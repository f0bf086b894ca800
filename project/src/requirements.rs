//! pip requirements files, read the way pip reads them: continuation lines joined, comments
//! dropped, `-r`/`-c` followed. Third-party requirements and options go to the cached deps
//! layer; requirements on paths inside the project go to the per-job layer, rewritten to
//! absolute container paths, because the deps layer is built once for many uploads.
use std::collections::HashSet;

use crate::files::{self, Files, Kind};
use crate::{names, Error, CONTAINER_ROOT};

/// How many requirement files one plan may reach through `-r`/`-c`.
pub(crate) const MAX_FILES: usize = 100;

/// How many entries of a local `--find-links` directory are hashed into the deps key.
const MAX_FIND_LINKS_ENTRIES: usize = 1000;

/// A requirement on the project root itself (`.`, `-e .[test]`, ...): it is the project's
/// install, not one more local requirement.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RootLine {
    pub(crate) editable: bool,
    pub(crate) extras: Vec<String>,
}

/// What the requirement sources read so far add up to.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Lines of the deps layer: requirements and option lines, in the order read.
    pub(crate) requirements: Vec<String>,
    pub(crate) constraints: Vec<String>,
    /// Lines of the per-job layer other than the project itself.
    pub(crate) local: Vec<String>,
    pub(crate) root: Option<RootLine>,
    /// `(what, content)` of every file read for the deps layer, for the deps key.
    pub(crate) inputs: Vec<(String, String)>,
    pub(crate) vcs: Vec<(String, &'static str)>,
}

pub(crate) struct Collector<'a> {
    files: &'a Files,
    pub(crate) out: Collected,
    /// Files already read, as `(path, as constraints)`: a file reached twice (a dev file
    /// that includes requirements.txt, which is read too) is read once.
    seen: HashSet<(String, bool)>,
}

/// Where lines come from: a requirements file, or tox's `deps`, which read like one.
struct Source<'s> {
    name: &'s str,
    /// The directory `-r`/`-c` paths are relative to.
    dir: &'s str,
    constraint: bool,
}

/// What a requirement (without `-e`) asks for.
#[derive(Debug, PartialEq)]
enum Class {
    Vcs(&'static str),
    /// A path or `file:` URL: `./x`, `.[test]`, `dist/x.whl`, `file:libs/x`.
    Path,
    /// `name @ file:...`.
    NamedFile,
    /// Anything for an index or a remote URL.
    Other,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(files: &'a Files) -> Collector<'a> {
        Collector {
            files,
            out: Collected::default(),
            seen: HashSet::new(),
        }
    }

    /// Reads the requirements file `rel` (relative to the root) and what it includes;
    /// `false` when there is no such file.
    pub(crate) fn file(&mut self, rel: &str, constraint: bool) -> Result<bool, Error> {
        if self.seen.contains(&(rel.to_owned(), constraint)) {
            return Ok(true);
        }
        if self.seen.len() >= MAX_FILES {
            return Err(Error::TooManyFiles {
                file: files::shown(rel),
                max: MAX_FILES,
            });
        }
        let Some(text) = self.files.read(rel)? else {
            return Ok(false);
        };
        self.seen.insert((rel.to_owned(), constraint));
        let kind = if constraint { "constraints" } else { "file" };
        self.out
            .inputs
            .push((format!("{kind} {rel}"), text.clone()));
        let source = Source {
            name: rel,
            dir: files::parent(rel),
            constraint,
        };
        self.lines(&source, &text)?;
        Ok(true)
    }

    /// Lines in requirements-file format that are not a file of their own (tox's `deps`),
    /// named `name` in messages, with `-r` paths relative to the root.
    pub(crate) fn text(&mut self, name: &str, text: &str) -> Result<(), Error> {
        let source = Source {
            name,
            dir: "",
            constraint: false,
        };
        self.lines(&source, text)
    }

    /// A PEP 508 requirement from pyproject.toml or setup.cfg. Local ones are left out: the
    /// per-job install of the project resolves them from its own metadata.
    pub(crate) fn pep508(&mut self, requirement: &str) {
        let requirement = requirement.split_whitespace().collect::<Vec<_>>().join(" ");
        match classify(&requirement) {
            Class::Vcs(tool) => {
                self.out.vcs.push((requirement.clone(), tool));
                self.out.requirements.push(requirement);
            }
            Class::Path | Class::NamedFile => {}
            Class::Other => self.out.requirements.push(requirement),
        }
    }

    fn lines(&mut self, source: &Source, text: &str) -> Result<(), Error> {
        for line in logical_lines(text) {
            self.line(source, &line)?;
        }
        Ok(())
    }

    fn line(&mut self, source: &Source, line: &str) -> Result<(), Error> {
        if !line.starts_with('-') {
            return self.requirement(source, line, false);
        }
        let (option, value) = split_option(line);
        let needs_value = matches!(
            option,
            "-r" | "--requirement"
                | "-c"
                | "--constraint"
                | "-e"
                | "--editable"
                | "-f"
                | "--find-links"
        );
        if needs_value && value.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: {option} needs a value",
                source.name
            )));
        }
        match option {
            // pip reads `-r` inside a constraints file as requirements, and `-c` anywhere
            // as constraints.
            "-r" | "--requirement" => self.include(source, option, value, false),
            "-c" | "--constraint" => self.include(source, option, value, true),
            "-e" | "--editable" => self.requirement(source, value, true),
            "-f" | "--find-links" => self.find_links(source, option, value),
            // Index and binary options apply to the whole install, whichever file they are
            // in; they stay with the requirements, where both pip and uv honour them.
            _ => {
                self.out.requirements.push(line.to_owned());
                Ok(())
            }
        }
    }

    fn include(
        &mut self,
        source: &Source,
        option: &str,
        value: &str,
        constraint: bool,
    ) -> Result<(), Error> {
        let reference = format!("{option} {value}");
        if value.contains("://") {
            return Err(Error::Invalid(format!(
                "{}: {reference}: requirement files from URLs are not supported",
                source.name
            )));
        }
        let Some(rel) = files::join(source.dir, value) else {
            return Err(Error::Outside {
                file: source.name.to_owned(),
                path: value.to_owned(),
            });
        };
        if self.file(&rel, constraint)? {
            Ok(())
        } else {
            Err(Error::NotFound {
                file: source.name.to_owned(),
                reference,
            })
        }
    }

    fn requirement(&mut self, source: &Source, spec: &str, editable: bool) -> Result<(), Error> {
        let line = if editable {
            format!("-e {spec}")
        } else {
            spec.to_owned()
        };
        if source.constraint {
            // Constraints are names and versions; pip refuses anything else in them, and
            // will say so better than a guess here.
            self.out.constraints.push(line);
            return Ok(());
        }
        match classify(spec) {
            Class::Vcs(tool) => {
                self.out.vcs.push((line.clone(), tool));
                self.out.requirements.push(line);
            }
            Class::Other => self.out.requirements.push(line),
            Class::Path => self.local_path(source, spec, editable)?,
            Class::NamedFile => self.local_named(source, spec, editable)?,
        }
        Ok(())
    }

    /// `./x[extra]#frag ; marker`, `file:./x`, `dist/x.whl`: the path is rewritten, the rest
    /// of the line kept.
    fn local_path(&mut self, source: &Source, spec: &str, editable: bool) -> Result<(), Error> {
        let (target, rest) = spec.split_at(path_end(spec));
        let (target, fragment) = target.split_at(target.find('#').unwrap_or(target.len()));
        let (path, extras) = match target.rfind('[') {
            Some(open) if target.ends_with(']') => target.split_at(open),
            _ => (target, ""),
        };
        let rel = self.resolve_local(source, target, file_url_path(path))?;
        if rel.is_empty() {
            let extras = extras
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty());
            self.root(editable, extras);
            return Ok(());
        }
        // A `file:` URL stays one: pip reads `#egg=` fragments only in URLs.
        let scheme = if path.to_ascii_lowercase().starts_with("file:") {
            "file://"
        } else {
            ""
        };
        let new = format!("{scheme}{}{extras}{fragment}{rest}", container_path(&rel));
        self.out
            .local
            .push(if editable { format!("-e {new}") } else { new });
        Ok(())
    }

    /// `name[extra] @ file:./x ; marker`.
    fn local_named(&mut self, source: &Source, spec: &str, editable: bool) -> Result<(), Error> {
        let req = names::parse(spec).expect("classified as a named requirement");
        let extras: Vec<&str> = req.extras.clone();
        let after = req.rest.trim_start();
        let at = spec.len() - after.len();
        let head = spec[..at].trim_end();
        let after = after[1..].trim_start();
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (url, rest) = after.split_at(end);
        let (url, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
        let rel = self.resolve_local(source, url, file_url_path(url))?;
        if rel.is_empty() {
            self.root(editable, extras.into_iter());
            return Ok(());
        }
        let new = format!("{head} @ file://{}{fragment}{rest}", container_path(&rel));
        self.out
            .local
            .push(if editable { format!("-e {new}") } else { new });
        Ok(())
    }

    fn root<'e>(&mut self, editable: bool, extras: impl Iterator<Item = &'e str>) {
        let root = self.out.root.get_or_insert_with(RootLine::default);
        root.editable |= editable;
        for extra in extras {
            if !root
                .extras
                .iter()
                .any(|e| names::normalize(e) == names::normalize(extra))
            {
                root.extras.push(extra.to_owned());
            }
        }
    }

    /// The root-relative path of a local requirement, which must exist in the project.
    /// pip resolves such paths against its working directory, the root, wherever the file
    /// that names them is.
    fn resolve_local(&self, source: &Source, shown: &str, path: &str) -> Result<String, Error> {
        // `${PWD}` is expanded by pip from the environment: the working directory, the root.
        let path = ["${PWD}", "${PROJECT_ROOT}"]
            .iter()
            .find_map(|var| path.strip_prefix(var))
            .map_or_else(|| path.to_owned(), |p| format!(".{p}"));
        let Some(rel) = files::join("", &path) else {
            return Err(Error::Outside {
                file: source.name.to_owned(),
                path: shown.to_owned(),
            });
        };
        match self.files.kind(&rel)? {
            Some(_) => Ok(rel),
            None => Err(Error::NotFound {
                file: source.name.to_owned(),
                reference: shown.to_owned(),
            }),
        }
    }

    fn find_links(&mut self, source: &Source, option: &str, value: &str) -> Result<(), Error> {
        let is_file_url = value.to_ascii_lowercase().starts_with("file:");
        if value.contains("://") && !is_file_url {
            self.out.requirements.push(format!("{option} {value}"));
            return Ok(());
        }
        let path = file_url_path(value);
        let outside = || Error::Outside {
            file: source.name.to_owned(),
            path: value.to_owned(),
        };
        // Like pip: relative to the requirements file when it exists there, else to the
        // working directory.
        let mut found = None;
        for dir in [source.dir, ""] {
            let rel = files::join(dir, path).ok_or_else(outside)?;
            if let Some(kind) = self.files.kind(&rel)? {
                found = Some((rel, kind));
                break;
            }
        }
        let Some((rel, kind)) = found else {
            return Err(Error::NotFound {
                file: source.name.to_owned(),
                reference: format!("{option} {value}"),
            });
        };
        self.out
            .requirements
            .push(format!("{option} {}", container_path(&rel)));
        // The index is a directory of the upload: what pip finds there decides the deps.
        let entries = match kind {
            Kind::File => vec![rel],
            Kind::Dir => {
                let entries = self.files.list(&rel)?;
                if entries.len() > MAX_FIND_LINKS_ENTRIES {
                    return Err(Error::Invalid(format!(
                        "{}: {option} {value}: more than {MAX_FIND_LINKS_ENTRIES} entries",
                        source.name
                    )));
                }
                entries
                    .into_iter()
                    .filter(|(_, kind)| *kind == Kind::File)
                    .filter_map(|(name, _)| files::join(&rel, &name))
                    .collect()
            }
        };
        for entry in entries {
            let digest = self.files.digest(&entry)?;
            self.out
                .inputs
                .push((format!("find-links {entry}"), digest));
        }
        Ok(())
    }
}

/// A root-relative path as the containers see it.
pub(crate) fn container_path(rel: &str) -> String {
    if rel.is_empty() {
        CONTAINER_ROOT.to_owned()
    } else {
        format!("{CONTAINER_ROOT}/{rel}")
    }
}

/// Where the path of a local requirement ends: pip separates markers at `;` and options at
/// whitespace, but reads extras (`.[test, docs]`) whole.
fn path_end(spec: &str) -> usize {
    let mut in_extras = false;
    for (i, c) in spec.char_indices() {
        match c {
            '[' => in_extras = true,
            ']' => in_extras = false,
            ';' => return i,
            c if c.is_whitespace() && !in_extras => return i,
            _ => {}
        }
    }
    spec.len()
}

/// The path of a `file:` URL (`file:./x`, `file:///abs`, `file://localhost/abs`); other
/// text is returned as it is.
fn file_url_path(url: &str) -> &str {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("file://localhost/") {
        &url["file://localhost".len()..]
    } else if lower.starts_with("file://") {
        &url["file://".len()..]
    } else if lower.starts_with("file:") {
        &url["file:".len()..]
    } else {
        url
    }
}

fn vcs_tool(lower: &str) -> Option<&'static str> {
    [
        ("git+", "git"),
        ("hg+", "hg"),
        ("svn+", "svn"),
        ("bzr+", "bzr"),
    ]
    .into_iter()
    .find(|(prefix, _)| lower.starts_with(prefix))
    .map(|(_, tool)| tool)
}

/// What pip takes for a distribution file rather than a project name.
fn is_archive(token: &str) -> bool {
    let token = token
        .split('#')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    [
        ".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar", ".zip",
    ]
    .iter()
    .any(|ext| token.ends_with(ext))
}

fn classify(spec: &str) -> Class {
    let lower = spec.to_ascii_lowercase();
    if let Some(tool) = vcs_tool(&lower) {
        return Class::Vcs(tool);
    }
    if lower.starts_with("file:") || spec.starts_with(['.', '/', '~']) || spec.starts_with("${") {
        return Class::Path;
    }
    if let Some(req) = names::parse(spec) {
        if let Some(url) = req.rest.trim_start().strip_prefix('@') {
            let url = url.trim_start().to_ascii_lowercase();
            return match vcs_tool(&url) {
                Some(tool) => Class::Vcs(tool),
                None if url.starts_with("file:") => Class::NamedFile,
                None => Class::Other,
            };
        }
    }
    // pip's own test: a path when it has a separator, or names a distribution file.
    let token = spec
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .unwrap_or_default();
    if token.contains("://") {
        Class::Other
    } else if token.contains('/') || is_archive(token) {
        Class::Path
    } else {
        Class::Other
    }
}

/// `-r file`, `-rfile`, `--requirement file`, `--requirement=file` → `(option, value)`.
fn split_option(line: &str) -> (&str, &str) {
    if line.starts_with("--") {
        let end = line
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(line.len());
        let value = line[end..].trim_start();
        (
            &line[..end],
            value.strip_prefix('=').unwrap_or(value).trim(),
        )
    } else {
        let end = line.char_indices().nth(2).map_or(line.len(), |(i, _)| i);
        (&line[..end], line[end..].trim())
    }
}

/// Lines as pip sees them: a line ending in `\` continues on the next (a comment line does
/// not), comments start at a `#` at the start or after whitespace, blanks are dropped, and
/// runs of whitespace become one space so that the text is canonical.
fn logical_lines(text: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let is_comment = raw.trim_start().starts_with('#');
        match raw.strip_suffix('\\') {
            Some(start) if !is_comment => current.push_str(start),
            _ => {
                if is_comment && !current.is_empty() {
                    // Inside a continuation a comment line ends it, but is still a comment.
                    current.push(' ');
                }
                current.push_str(raw);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        joined.push(current);
    }
    joined
        .into_iter()
        .map(|line| {
            let cut = line
                .char_indices()
                .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)))
                .map_or(line.len(), |(i, _)| i);
            line[..cut].split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .filter(|line| !line.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` in a fresh root, reads `start` and renders what was collected, one
    /// item a line (`req:`, `con:`, `local:`, `root:`, `vcs:`, `input:`), or the error.
    fn collect(files: &[(&str, &str)], start: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let files = Files::new(dir.path()).unwrap();
        let mut collector = Collector::new(&files);
        if let Err(e) = collector.file(start, false) {
            return format!("error: {e}");
        }
        let c = collector.out;
        let mut out = Vec::new();
        out.extend(c.requirements.iter().map(|l| format!("req: {l}")));
        out.extend(c.constraints.iter().map(|l| format!("con: {l}")));
        out.extend(c.local.iter().map(|l| format!("local: {l}")));
        out.extend(
            c.root
                .iter()
                .map(|r| format!("root: editable={} extras={:?}", r.editable, r.extras)),
        );
        out.extend(c.vcs.iter().map(|(l, t)| format!("vcs: {t} {l}")));
        out.join("\n")
    }

    fn check(files: &[(&str, &str)], expected: &str) {
        assert_eq!(collect(files, files[0].0), expected, "{files:?}");
    }

    #[test]
    fn lines() {
        check(
            &[("r.txt", "a==1\n\n# c\nb # why\nc\\\n  >=2\n")],
            "req: a==1\nreq: b\nreq: c >=2",
        );
        check(&[("r.txt", "# c \\\nd\n")], "req: d");
        check(
            &[("r.txt", "x @ https://h/x.whl#sha256=ab\n")],
            "req: x @ https://h/x.whl#sha256=ab",
        );
        check(
            &[(
                "r.txt",
                "a==1 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n",
            )],
            "req: a==1 --hash=sha256:aa --hash=sha256:bb",
        );
        check(
            &[("r.txt", "b; python_version < \"3.10\"\n")],
            "req: b; python_version < \"3.10\"",
        );
        check(
            &[("r.txt", "-i https://idx/simple\n--extra-index-url https://x\n--pre\n--only-binary :all:\n--no-binary=x\n--prefer-binary\n--trusted-host h\n--no-index\n")],
            "req: -i https://idx/simple\nreq: --extra-index-url https://x\nreq: --pre\nreq: --only-binary :all:\nreq: --no-binary=x\nreq: --prefer-binary\nreq: --trusted-host h\nreq: --no-index",
        );
        check(
            &[("r.txt", "-f https://h/wheels\n")],
            "req: -f https://h/wheels",
        );
    }

    #[test]
    fn includes() {
        check(
            &[("r.txt", "-r base.txt\nb\n"), ("base.txt", "a\n")],
            "req: a\nreq: b",
        );
        check(&[("r.txt", "-rbase.txt\n"), ("base.txt", "a\n")], "req: a");
        check(
            &[("r.txt", "--requirement base.txt\n"), ("base.txt", "a\n")],
            "req: a",
        );
        check(
            &[("r.txt", "--requirement=base.txt\n"), ("base.txt", "a\n")],
            "req: a",
        );
        check(
            &[
                ("req/dev.txt", "-r base.txt\n-r ../top.txt\n"),
                ("req/base.txt", "a\n"),
                ("top.txt", "t\n"),
            ],
            "req: a\nreq: t",
        );
        check(
            &[
                ("r.txt", "-c c.txt\na\n"),
                ("c.txt", "a<2\n-r more.txt\n--index-url https://i\n"),
                ("more.txt", "m\n"),
            ],
            "req: m\nreq: --index-url https://i\nreq: a\ncon: a<2",
        );
        check(
            &[("r.txt", "--constraint=c.txt\n"), ("c.txt", "a<2\n")],
            "con: a<2",
        );
        check(&[("r.txt", "-r r.txt\na\n")], "req: a");
        check(
            &[
                ("r.txt", "-r a.txt\n-r b.txt\n"),
                ("a.txt", "-r c.txt\n"),
                ("b.txt", "-r c.txt\n"),
                ("c.txt", "c\n"),
            ],
            "req: c",
        );
    }

    #[test]
    fn include_errors() {
        check(
            &[("requirements-dev.txt", "-r base.txt\n")],
            "error: requirements-dev.txt: -r base.txt: no such file in the project",
        );
        check(
            &[("r.txt", "-c nope.txt\n")],
            "error: r.txt: -c nope.txt: no such file in the project",
        );
        check(
            &[("r.txt", "-r ../x.txt\n")],
            "error: r.txt: ../x.txt is outside the project",
        );
        check(
            &[("r.txt", "-r /etc/passwd\n")],
            "error: r.txt: /etc/passwd is outside the project",
        );
        check(
            &[("r.txt", "-r https://h/r.txt\n")],
            "error: r.txt: -r https://h/r.txt: requirement files from URLs are not supported",
        );
        check(&[("r.txt", "-r\n")], "error: r.txt: -r needs a value");
    }

    #[test]
    fn too_many_files() {
        let mut files: Vec<(String, String)> = (0..MAX_FILES)
            .map(|i| (format!("r{i}.txt"), format!("-r r{}.txt\n", i + 1)))
            .collect();
        files.push((format!("r{MAX_FILES}.txt"), "a\n".to_owned()));
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            collect(&files, "r0.txt"),
            "error: r100.txt: more than 100 requirement files are reached"
        );
        assert_eq!(collect(&files, "r1.txt"), "req: a");
    }

    #[test]
    fn local_paths() {
        let lib = ("plugins/x/setup.py", "");
        check(
            &[("r.txt", "-e ./plugins/x\n"), lib],
            "local: -e /workspace/plugins/x",
        );
        check(
            &[("r.txt", "--editable plugins/x\n"), lib],
            "local: -e /workspace/plugins/x",
        );
        check(
            &[("r.txt", "./plugins/x[a,b] ; python_version>'3'\n"), lib],
            "local: /workspace/plugins/x[a,b] ; python_version>'3'",
        );
        check(
            &[("r.txt", "plugins/x\n"), lib],
            "local: /workspace/plugins/x",
        );
        check(
            &[("r.txt", "file:plugins/x#egg=x\n"), lib],
            "local: file:///workspace/plugins/x#egg=x",
        );
        check(
            &[("r.txt", "x @ file:./plugins/x\n"), lib],
            "local: x @ file:///workspace/plugins/x",
        );
        check(
            &[
                (
                    "r.txt",
                    "x[t] @ file://${PWD}/plugins/x ; os_name=='posix'\n",
                ),
                lib,
            ],
            "local: x[t] @ file:///workspace/plugins/x ; os_name=='posix'",
        );
        check(
            &[
                ("r.txt", "dist/x-1.0-py3-none-any.whl\n"),
                ("dist/x-1.0-py3-none-any.whl", ""),
            ],
            "local: /workspace/dist/x-1.0-py3-none-any.whl",
        );
        check(
            &[("r.txt", "x-1.0.tar.gz\n"), ("x-1.0.tar.gz", "")],
            "local: /workspace/x-1.0.tar.gz",
        );
        // Relative to the root, where pip runs, not to the file naming them.
        check(
            &[("req/r.txt", "-e ./plugins/x\n"), lib],
            "local: -e /workspace/plugins/x",
        );
    }

    #[test]
    fn the_root_is_the_project() {
        check(&[("r.txt", ".\n")], "root: editable=false extras=[]");
        check(&[("r.txt", "./\n")], "root: editable=false extras=[]");
        check(&[("r.txt", "-e .\n")], "root: editable=true extras=[]");
        check(
            &[("r.txt", ".[test]\n")],
            "root: editable=false extras=[\"test\"]",
        );
        check(
            &[("r.txt", "-e .[test, docs]\n.[dev]\n")],
            "root: editable=true extras=[\"test\", \"docs\", \"dev\"]",
        );
        check(&[("r.txt", "-e file:.\n")], "root: editable=true extras=[]");
    }

    #[test]
    fn local_errors() {
        check(
            &[("r.txt", "-e ../sibling\n")],
            "error: r.txt: ../sibling is outside the project",
        );
        check(
            &[("r.txt", "/opt/x\n")],
            "error: r.txt: /opt/x is outside the project",
        );
        check(
            &[("r.txt", "x @ file:///opt/x\n")],
            "error: r.txt: file:///opt/x is outside the project",
        );
        check(
            &[("r.txt", "-e ./missing\n")],
            "error: r.txt: ./missing: no such file in the project",
        );
    }

    #[test]
    fn vcs() {
        check(
            &[("r.txt", "git+https://h/x.git\n")],
            "req: git+https://h/x.git\nvcs: git git+https://h/x.git",
        );
        check(
            &[("r.txt", "-e git+https://h/x.git#egg=x\n")],
            "req: -e git+https://h/x.git#egg=x\nvcs: git -e git+https://h/x.git#egg=x",
        );
        check(
            &[("r.txt", "x @ hg+https://h/x\n")],
            "req: x @ hg+https://h/x\nvcs: hg x @ hg+https://h/x",
        );
        check(
            &[("r.txt", "svn+https://h/x\nbzr+lp:x\n")],
            "req: svn+https://h/x\nreq: bzr+lp:x\nvcs: svn svn+https://h/x\nvcs: bzr bzr+lp:x",
        );
    }

    #[test]
    fn find_links() {
        check(
            &[
                ("r.txt", "-f wheels\na\n"),
                ("wheels/a-1-py3-none-any.whl", "w"),
            ],
            "req: -f /workspace/wheels\nreq: a",
        );
        check(
            &[
                ("req/r.txt", "--find-links ./wheels\n"),
                ("req/wheels/a.whl", "w"),
            ],
            "req: --find-links /workspace/req/wheels",
        );
        check(
            &[
                ("req/r.txt", "--find-links=wheels\n"),
                ("wheels/a.whl", "w"),
            ],
            "req: --find-links /workspace/wheels",
        );
        check(
            &[("r.txt", "-f ../wheels\n")],
            "error: r.txt: ../wheels is outside the project",
        );
        check(
            &[("r.txt", "-f wheels\n")],
            "error: r.txt: -f wheels: no such file in the project",
        );
    }

    #[test]
    fn find_links_files_are_inputs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wheels")).unwrap();
        std::fs::write(dir.path().join("r.txt"), "-f wheels\n").unwrap();
        std::fs::write(dir.path().join("wheels/a.whl"), "w").unwrap();
        let files = Files::new(dir.path()).unwrap();
        let mut collector = Collector::new(&files);
        collector.file("r.txt", false).unwrap();
        let inputs: Vec<&str> = collector
            .out
            .inputs
            .iter()
            .map(|(what, _)| what.as_str())
            .collect();
        assert_eq!(inputs, ["file r.txt", "find-links wheels/a.whl"]);
        assert!(collector.out.inputs[1].1.starts_with("sha256:"));
    }

    #[test]
    fn classifies() {
        fn check(spec: &str, expected: Class) {
            assert_eq!(classify(spec), expected, "{spec}");
        }
        check("requests>=2", Class::Other);
        check("requests [socks] >= 2 ; python_version > '3'", Class::Other);
        check("https://h/x-1.0.tar.gz", Class::Other);
        check("x @ https://h/x.whl", Class::Other);
        check("GIT+https://h/x", Class::Vcs("git"));
        check("x@git+ssh://git@h/x", Class::Vcs("git"));
        check(".", Class::Path);
        check("~/x", Class::Path);
        check("libs/x", Class::Path);
        check("x-1.0-py3-none-any.whl", Class::Path);
        check("x @ file:///x", Class::NamedFile);
        check("FILE:x", Class::Path);
    }
}
