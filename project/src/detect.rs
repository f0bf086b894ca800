//! The order in which a project's test environment is looked for: the `[tool.ci]` config,
//! uv.lock, a test dependency group, requirements files, a test extra, tox, and last the
//! project alone. The first that applies decides; see [`crate::plan`].
use std::collections::HashSet;
use std::path::Path;

use crate::config::{CI_TOML, PYPROJECT};
use crate::files::{self, Files, Kind};
use crate::ini::Ini;
use crate::metadata::{self, Extras, Metadata};
use crate::pyproject::{self, Groups, Pyproject};
use crate::requirements::{Collector, RootLine};
use crate::{
    names, tox, uvlock, Config, Deps, Error, InstallPlan, InstallProject, Installer, ProjectLayer,
    CONTAINER_ROOT,
};

/// Names of the group, extra or file part that holds test dependencies, in order of
/// preference.
const TEST_NAMES: [&str; 4] = ["test", "tests", "testing", "dev"];

/// Test requirements files besides requirements.txt, in order of preference; `*` entries
/// are globs in `requirements/` (the first match in name order).
const TEST_FILES: [&str; 7] = [
    "requirements-test.txt",
    "requirements-tests.txt",
    "test-requirements.txt",
    "requirements-dev.txt",
    "requirements/test*.txt",
    "requirements/dev*.txt",
    "tests/requirements.txt",
];

/// The summary's longest list of requirements (tox deps), in characters.
const MAX_LISTED: usize = 100;

const PIP_NOTE: &str = "uv.lock is not used: this server installs with pip (--installer pip)";

/// What is read once and looked at by every step.
struct Project {
    files: Files,
    pyproject: Option<Pyproject>,
    meta: Metadata,
    installer: Installer,
}

pub fn plan(root: &Path, config: &Config, installer: Installer) -> Result<InstallPlan, Error> {
    let files = Files::new(root)?;
    let pyproject = pyproject::load(&files, "pyproject.toml")?;
    let setup_cfg = files.read("setup.cfg")?.map(|text| Ini::parse(&text));
    let setup_py = files.exists("setup.py")?;
    let meta = metadata::read(pyproject.as_ref(), setup_cfg.as_ref(), setup_py)?;
    let project = Project {
        files,
        pyproject,
        meta,
        installer,
    };
    let mut plan = detect(&project, config)?;
    plan.pretend_version = pretend_version(&project)?;
    Ok(plan)
}

fn detect(p: &Project, config: &Config) -> Result<InstallPlan, Error> {
    let mut notes = Vec::new();
    let lock = match (p.files.exists("uv.lock")?, p.installer) {
        (false, _) => None,
        (true, Installer::Pip) => {
            notes.push(PIP_NOTE.to_owned());
            None
        }
        (true, Installer::Uv) if p.pyproject.is_none() => {
            notes.push("uv.lock is not used: there is no pyproject.toml".to_owned());
            None
        }
        (true, Installer::Uv) => p.files.read_capped("uv.lock", uvlock::MAX_LOCK_SIZE)?,
    };

    if config.decides_install() {
        return configured(p, config, lock, notes);
    }

    if let Some(lock) = lock {
        let groups = groups(p)?;
        let group = TEST_NAMES
            .iter()
            .find_map(|name| groups.as_ref()?.find(name));
        let groups = group.map(names::normalize).into_iter().collect();
        return locked(p, &lock, groups, Vec::new(), None, "uv.lock", notes);
    }

    if let Some(groups) = groups(p)? {
        if let Some(group) = TEST_NAMES.iter().find_map(|name| groups.find(name)) {
            let mut b = Builder::new(p, notes);
            b.group(&groups, group)?;
            let source = format!("pyproject.toml [dependency-groups] {group}");
            return b.finish(vec![format!("--group {group}")], &source);
        }
    }

    let found = requirement_files(&p.files)?;
    if !found.is_empty() {
        let mut b = Builder::new(p, notes);
        for file in &found {
            b.collector.file(file, false)?;
        }
        let parts = found.iter().map(|f| format!("-r {f}")).collect();
        return b.finish(parts, &found.join(", "));
    }

    if let Extras::Static { source, .. } = &p.meta.extras {
        let extra = TEST_NAMES.iter().find_map(|name| p.meta.find_extra(name));
        if let (Some(extra), Some(_)) = (extra, p.meta.declared_in) {
            let mut b = Builder::new(p, notes);
            b.extras.push(extra.to_owned());
            return b.finish(Vec::new(), &format!("{source} {extra}"));
        }
    }

    if let Some(tox) = tox::read(&p.files, p.pyproject.as_ref())? {
        let mut b = Builder::new(p, notes);
        b.collector.text(tox.file, &tox.deps.join("\n"))?;
        // tox builds the package unless told not to; without one there is none to build.
        b.install &= tox.install;
        b.editable = tox.editable;
        b.extras = tox.extras;
        let parts = if tox.deps.is_empty() {
            Vec::new()
        } else {
            vec![cut(&tox.deps.join(" "))]
        };
        return b.finish(parts, tox.source);
    }

    let source = match p.meta.declared_in {
        Some(file) => file,
        None if p.pyproject.is_some() => "pyproject.toml has no [project] or [build-system]",
        None => "no pyproject.toml, setup.py, requirements or lock file",
    };
    Builder::new(p, notes).finish(Vec::new(), source)
}

/// `[tool.ci]` decides: its groups, extras, requirements files and install-project, all of
/// them together.
fn configured(
    p: &Project,
    config: &Config,
    lock: Option<String>,
    mut notes: Vec<String>,
) -> Result<InstallPlan, Error> {
    let file = config.file.unwrap_or("[tool.ci]");
    let label = match config.file {
        Some(PYPROJECT) => "[tool.ci] in pyproject.toml",
        Some(CI_TOML) => "[tool.ci] in ci.toml",
        _ => "[tool.ci]",
    };
    let project_groups = groups(p)?;
    let mut groups = Vec::new();
    for group in config.groups.iter().flatten() {
        let found = project_groups.as_ref().and_then(|g| g.find(group));
        let Some(found) = found else {
            return Err(Error::UnknownGroup {
                file: file.to_owned(),
                group: group.clone(),
                known: match &project_groups {
                    Some(g) => g.known(),
                    None => "there is no pyproject.toml".to_owned(),
                },
            });
        };
        groups.push((group.clone(), found));
    }
    let mut extras = Vec::new();
    for extra in config.extras.iter().flatten() {
        p.meta.check_extra(extra, file)?;
        extras.push(p.meta.find_extra(extra).unwrap_or(extra).to_owned());
    }

    if let Some(lock) = lock {
        if config.requirements.is_none() {
            let groups = groups.iter().map(|(_, g)| names::normalize(g)).collect();
            let extras = extras.iter().map(|e| names::normalize(e)).collect();
            let source = format!("{label}, uv.lock");
            return locked(
                p,
                &lock,
                groups,
                extras,
                config.install_project,
                &source,
                notes,
            );
        }
        notes.push(format!(
            "uv.lock is not used: {file} lists requirements files"
        ));
    }

    let mut b = Builder::new(p, notes);
    match config.install_project {
        None => {}
        Some(InstallProject::No) => {
            b.install = false;
            b.refuse_root = true;
        }
        Some(InstallProject::Yes) => b.install = true,
        Some(InstallProject::Editable) => {
            b.install = true;
            b.editable = true;
        }
    }
    let mut parts = Vec::new();
    if let Some(project_groups) = &project_groups {
        for (asked, found) in &groups {
            b.group(project_groups, found)?;
            parts.push(format!("--group {asked}"));
        }
    }
    for requirements in config.requirements.iter().flatten() {
        let rel = files::join("", requirements).ok_or_else(|| Error::Outside {
            file: file.to_owned(),
            path: requirements.clone(),
        })?;
        if !b.collector.file(&rel, false)? {
            return Err(Error::NotFound {
                file: file.to_owned(),
                reference: requirements.clone(),
            });
        }
        parts.push(format!("-r {requirements}"));
    }
    b.extras.extend(extras);
    b.finish(parts, label)
}

/// A `uv sync --locked` plan: the lock decides the deps layer, the project and the lock's
/// local packages are the per-job one.
fn locked(
    p: &Project,
    lock_text: &str,
    groups: Vec<String>,
    extras: Vec<String>,
    install_project: Option<InstallProject>,
    source: &str,
    notes: Vec<String>,
) -> Result<InstallPlan, Error> {
    let lock = uvlock::parse(lock_text)?;
    let pyproject = p
        .pyproject
        .as_ref()
        .expect("a lock is used with a pyproject.toml");
    let install = match install_project {
        Some(InstallProject::No) => false,
        Some(_) => true,
        // uv neither builds nor installs a virtual root.
        None => p.meta.installed_by_default() && !lock.root_virtual,
    };
    let editable = install_project == Some(InstallProject::Editable);
    let mut summary = "uv sync --locked".to_owned();
    for group in &groups {
        summary.push_str(&format!(" --group {group}"));
    }
    for extra in &extras {
        summary.push_str(&format!(" --extra {extra}"));
    }
    summary.push_str(&format!(" ({source})"));

    let mut key = Key::new("uv-lock", p.installer, &groups, &extras);
    for (what, content) in uvlock::key_inputs(&p.files, pyproject, lock_text)? {
        key.field(&what, &content);
    }
    Ok(InstallPlan {
        summary,
        notes,
        deps: Deps::UvLock { groups, extras },
        project: (install || lock.has_local).then_some(ProjectLayer::UvSync {
            install_project: install,
            editable,
        }),
        deps_key: key.0,
        vcs: lock.vcs,
        pretend_version: false,
    })
}

fn groups(p: &Project) -> Result<Option<Groups<'_>>, Error> {
    p.pyproject.as_ref().map(Pyproject::groups).transpose()
}

/// requirements.txt and the first test requirements file, either alone or both: runtime
/// requirements are often in the first and test ones in the second.
fn requirement_files(files: &Files) -> Result<Vec<String>, Error> {
    let mut found = Vec::new();
    if files.exists("requirements.txt")? {
        found.push("requirements.txt".to_owned());
    }
    for candidate in TEST_FILES {
        let hit = match candidate.split_once('/') {
            Some(("requirements", glob)) if glob.contains('*') => {
                let (prefix, suffix) = glob.split_once('*').expect("a glob");
                if files.kind("requirements")? != Some(Kind::Dir) {
                    continue;
                }
                files
                    .list("requirements")?
                    .into_iter()
                    .find(|(name, kind)| {
                        *kind == Kind::File
                            && name.starts_with(prefix)
                            && name.ends_with(suffix)
                            && name.len() >= prefix.len() + suffix.len()
                    })
                    .map(|(name, _)| format!("requirements/{name}"))
            }
            _ => files.exists(candidate)?.then(|| candidate.to_owned()),
        };
        if let Some(hit) = hit {
            found.push(hit);
            break;
        }
    }
    Ok(found)
}

/// A plan that installs requirements in pip's format, built from whichever sources the
/// step found.
struct Builder<'p> {
    p: &'p Project,
    collector: Collector<'p>,
    notes: Vec<String>,
    /// Normalized, for the key.
    groups: Vec<String>,
    /// As declared.
    extras: Vec<String>,
    install: bool,
    editable: bool,
    /// `install-project = false`: a requirements file's line installing the project is
    /// left out too.
    refuse_root: bool,
}

impl<'p> Builder<'p> {
    fn new(p: &'p Project, notes: Vec<String>) -> Builder<'p> {
        Builder {
            p,
            collector: Collector::new(&p.files),
            notes,
            groups: Vec::new(),
            extras: Vec::new(),
            install: p.meta.installed_by_default(),
            editable: false,
            refuse_root: false,
        }
    }

    fn group(&mut self, groups: &Groups, name: &str) -> Result<(), Error> {
        self.groups.push(names::normalize(name));
        for requirement in groups.resolve(name)? {
            match names::parse(&requirement) {
                // `test = ["app[test]"]` asks for the project's own extra, not for a
                // package of that name from the index (PEP 735 allows it; uv reads it so).
                Some(req) if Some(names::normalize(req.name)) == self.p.meta.name => {
                    self.extras.extend(req.extras.iter().map(|e| e.to_string()));
                }
                _ => self.collector.pep508(&requirement),
            }
        }
        Ok(())
    }

    /// The plan: `parts` are the summary's words before the project token, `source` what
    /// goes in its parentheses.
    fn finish(mut self, parts: Vec<String>, source: &str) -> Result<InstallPlan, Error> {
        let mut install = self.install;
        let mut editable = self.editable;
        let mut extras = dedupe_extras(&self.extras);
        let mut show_project = true;
        match self.collector.out.root.take() {
            Some(RootLine { .. }) if self.refuse_root => self.notes.push(
                "the requirements install the project itself, but install-project = false: \
                 it is not installed"
                    .to_owned(),
            ),
            Some(root) => {
                install = true;
                editable |= root.editable;
                extras = dedupe_extras(&[extras, root.extras].concat());
                // The file's own line is the install: the summary's `-r` says it.
                show_project = false;
            }
            None => {}
        }
        for requirement in self.p.meta.requirements(&extras) {
            self.collector.pep508(&requirement);
        }

        let out = self.collector.out;
        let requirements = dedupe(out.requirements);
        let constraints = dedupe(out.constraints);
        let mut project = Vec::new();
        if install {
            project.push(project_line(editable, &extras));
        }
        project.extend(dedupe(out.local));

        let token = if install && show_project {
            project_token(editable, &extras)
        } else {
            String::new()
        };
        let mut words = parts;
        if !token.is_empty() {
            words.push(token);
        }
        if words.is_empty() && !requirements.is_empty() {
            words.push(cut(&requirements.join(" ")));
        }
        let summary = if words.is_empty() && project.is_empty() {
            format!("nothing to install ({source})")
        } else {
            format!(
                "{} {} ({source})",
                command(self.p.installer),
                words.join(" ")
            )
        };

        let requirements = text(&requirements);
        let constraints = text(&constraints);
        let mut groups = self.groups;
        groups.sort();
        groups.dedup();
        let mut key_extras: Vec<String> = extras.iter().map(|e| names::normalize(e)).collect();
        key_extras.sort();
        let mut key = Key::new("requirements", self.p.installer, &groups, &key_extras);
        key.field("requirements", &requirements);
        key.field("constraints", &constraints);
        for (what, content) in &out.inputs {
            key.field(what, content);
        }
        let mut seen = HashSet::new();
        let vcs = out
            .vcs
            .into_iter()
            .filter(|(line, _)| seen.insert(line.clone()))
            .collect();
        Ok(InstallPlan {
            summary,
            notes: self.notes,
            deps: Deps::Requirements {
                requirements,
                constraints,
            },
            project: (!project.is_empty()).then_some(ProjectLayer::Install {
                requirements: project,
            }),
            deps_key: key.0,
            vcs,
            pretend_version: false,
        })
    }
}

/// The canonical text the server hashes into the deps layer's cache key: every field named
/// and length-prefixed, so that no two different inputs give the same text.
struct Key(String);

impl Key {
    fn new(kind: &str, installer: Installer, groups: &[String], extras: &[String]) -> Key {
        let mut key = Key(String::new());
        key.field("ci-project deps key", "1");
        key.field("kind", kind);
        key.field("installer", installer.as_str());
        key.field("groups", &groups.join(","));
        key.field("extras", &extras.join(","));
        key
    }

    fn field(&mut self, name: &str, value: &str) {
        self.0
            .push_str(&format!("{name} ({} bytes)\n{value}\n", value.len()));
    }
}

fn command(installer: Installer) -> &'static str {
    match installer {
        Installer::Uv => "uv pip install",
        Installer::Pip => "pip install",
    }
}

/// `/workspace`, `-e /workspace[a,b]`: the project's own install line.
fn project_line(editable: bool, extras: &[String]) -> String {
    let extras = if extras.is_empty() {
        String::new()
    } else {
        format!("[{}]", extras.join(","))
    };
    let e = if editable { "-e " } else { "" };
    format!("{e}{CONTAINER_ROOT}{extras}")
}

/// `.`, `-e '.[a,b]'`: the project as the summary shows it, quoted as a shell would need.
fn project_token(editable: bool, extras: &[String]) -> String {
    let e = if editable { "-e " } else { "" };
    if extras.is_empty() {
        format!("{e}.")
    } else {
        format!("{e}'.[{}]'", extras.join(","))
    }
}

/// At most [`MAX_LISTED`] characters, the cut marked with `…`.
fn cut(list: &str) -> String {
    if list.chars().count() <= MAX_LISTED {
        list.to_owned()
    } else {
        let mut out: String = list.chars().take(MAX_LISTED - 1).collect();
        out.push('…');
        out
    }
}

fn dedupe(lines: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    lines
        .into_iter()
        .filter(|line| seen.insert(line.clone()))
        .collect()
}

fn dedupe_extras(extras: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    extras
        .iter()
        .filter(|e| seen.insert(names::normalize(e)))
        .cloned()
        .collect()
}

/// Lines as a requirements file: one a line, ending in a newline; empty when none.
fn text(lines: &[String]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// The build takes its version from version control, which an upload does not have; an
/// sdist's PKG-INFO holds the version instead.
fn pretend_version(p: &Project) -> Result<bool, Error> {
    if p.files.exists("PKG-INFO")? {
        return Ok(false);
    }
    let requires = match &p.pyproject {
        Some(pyproject) => pyproject.build_requires()?,
        None => Vec::new(),
    };
    let scm = requires.iter().any(|req| {
        names::parse(req).is_some_and(|req| {
            matches!(
                names::normalize(req.name).as_str(),
                "setuptools-scm" | "hatch-vcs" | "setuptools-git-versioning"
            )
        })
    });
    if scm {
        return Ok(true);
    }
    // Older projects ask for setuptools-scm in setup.py itself.
    Ok(match p.files.read("setup.py")? {
        Some(setup) => setup.contains("use_scm_version"),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small lock as uv writes it: the root `app` (editable), pytest and its deps.
    const LOCK: &str = r#"version = 1
revision = 2
requires-python = ">=3.11"

[[package]]
name = "app"
version = "0.1.0"
source = { editable = "." }
dependencies = [
    { name = "six" },
]

[package.dev-dependencies]
test = [
    { name = "pytest" },
]

[package.metadata]
requires-dist = [{ name = "six" }]

[package.metadata.requires-dev]
test = [{ name = "pytest", specifier = ">=8" }]

[[package]]
name = "iniconfig"
version = "2.1.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.pythonhosted.org/packages/f2/97/iniconfig-2.1.0.tar.gz", hash = "sha256:3abbd2e30b36733fee78f9c7f7308f2d0050e88f0087fd25c2645f63c773e1c7", size = 4793 }
wheels = [
    { url = "https://files.pythonhosted.org/packages/2c/e1/iniconfig-2.1.0-py3-none-any.whl", hash = "sha256:9deba5723312380e77435581c6bf4935c94cbfab9b1ed33ef8d238ea168eb760", size = 6050 },
]

[[package]]
name = "pytest"
version = "8.3.5"
source = { registry = "https://pypi.org/simple" }
dependencies = [
    { name = "iniconfig" },
]
sdist = { url = "https://files.pythonhosted.org/packages/ae/3c/pytest-8.3.5.tar.gz", hash = "sha256:f4efe70cc14e511565ac476b57c279e12a855b11f48f212af1080ef2263d3845", size = 1450891 }
wheels = [
    { url = "https://files.pythonhosted.org/packages/30/3d/pytest-8.3.5-py3-none-any.whl", hash = "sha256:c69214aa47deac29fad6c2a4f590b9c4a9fdb16a403176fe154b79c0b4d4d820", size = 343634 },
]

[[package]]
name = "six"
version = "1.17.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.pythonhosted.org/packages/94/e7/six-1.17.0.tar.gz", hash = "sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81", size = 34031 }
"#;

    /// A lock whose workspace has a second, local package.
    const LOCK_WITH_MEMBER: &str = r#"version = 1
requires-python = ">=3.11"

[manifest]
members = ["app", "lib"]

[[package]]
name = "app"
version = "0.1.0"
source = { virtual = "." }

[[package]]
name = "lib"
version = "0.1.0"
source = { editable = "packages/lib" }
"#;

    const APP: &str = "[build-system]\nrequires = ['hatchling']\nbuild-backend = 'hatchling.build'\n\n[project]\nname = 'app'\nversion = '0.1.0'\ndependencies = ['six']\n";

    fn write(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    fn plan_in(root: &Path, installer: Installer) -> Result<InstallPlan, Error> {
        let config = crate::read_config(root)?;
        crate::plan(root, &config, installer)
    }

    /// The plan, one fact a line: `summary:`, `note:`, `deps:`, `constraints:`,
    /// `project:`, `vcs:`, `pretend-version`; or `error: ...`.
    fn render(files: &[(&str, &str)], installer: Installer) -> String {
        let dir = write(files);
        let plan = match plan_in(dir.path(), installer) {
            Ok(plan) => plan,
            Err(e) => return format!("error: {e}"),
        };
        let mut out = vec![format!("summary: {}", plan.summary)];
        out.extend(plan.notes.iter().map(|n| format!("note: {n}")));
        match &plan.deps {
            Deps::UvLock { groups, extras } => {
                out.push(format!("deps: uv-lock groups={groups:?} extras={extras:?}"));
            }
            Deps::Requirements {
                requirements,
                constraints,
            } => {
                out.push(format!(
                    "deps: {}",
                    requirements.lines().collect::<Vec<_>>().join(" | ")
                ));
                if !constraints.is_empty() {
                    out.push(format!(
                        "constraints: {}",
                        constraints.lines().collect::<Vec<_>>().join(" | ")
                    ));
                }
            }
        }
        out.push(match &plan.project {
            None => "project: none".to_owned(),
            Some(ProjectLayer::UvSync {
                install_project,
                editable,
            }) => format!("project: uv-sync install={install_project} editable={editable}"),
            Some(ProjectLayer::Install { requirements }) => {
                format!("project: {}", requirements.join(" | "))
            }
        });
        out.extend(
            plan.vcs
                .iter()
                .map(|(line, tool)| format!("vcs: {tool} {line}")),
        );
        if plan.pretend_version {
            out.push("pretend-version".to_owned());
        }
        out.join("\n")
    }

    fn check(files: &[(&str, &str)], expected: &str) {
        assert_eq!(render(files, Installer::Uv), expected, "{files:?}");
    }

    fn check_pip(files: &[(&str, &str)], expected: &str) {
        assert_eq!(render(files, Installer::Pip), expected, "{files:?}");
    }

    fn pyproject_with(extra: &str) -> String {
        format!("{APP}\n{extra}")
    }

    #[test]
    fn uv_lock() {
        let groups = pyproject_with("[dependency-groups]\nlint = ['ruff']\ntest = ['pytest>=8']\n");
        check(
            &[("pyproject.toml", &groups), ("uv.lock", LOCK), ("requirements.txt", "x\n")],
            "summary: uv sync --locked --group test (uv.lock)\ndeps: uv-lock groups=[\"test\"] extras=[]\nproject: uv-sync install=true editable=false",
        );
        check(
            &[("pyproject.toml", &pyproject_with("[dependency-groups]\nTesting = ['pytest']\ndev = ['ipython']\n")), ("uv.lock", LOCK)],
            "summary: uv sync --locked --group testing (uv.lock)\ndeps: uv-lock groups=[\"testing\"] extras=[]\nproject: uv-sync install=true editable=false",
        );
        check(
            &[("pyproject.toml", APP), ("uv.lock", LOCK)],
            "summary: uv sync --locked (uv.lock)\ndeps: uv-lock groups=[] extras=[]\nproject: uv-sync install=true editable=false",
        );
        check(
            &[("pyproject.toml", &pyproject_with("[tool.uv]\ndev-dependencies = ['pytest']\n")), ("uv.lock", LOCK)],
            "summary: uv sync --locked --group dev (uv.lock)\ndeps: uv-lock groups=[\"dev\"] extras=[]\nproject: uv-sync install=true editable=false",
        );
        // Nothing to install per job: the project is not a package and nothing is local.
        check(
            &[
                (
                    "pyproject.toml",
                    &pyproject_with("[tool.uv]\npackage = false\n"),
                ),
                ("uv.lock", LOCK),
            ],
            "summary: uv sync --locked (uv.lock)\ndeps: uv-lock groups=[] extras=[]\nproject: none",
        );
        check(
            &[
                (
                    "pyproject.toml",
                    "[project]\nname = 'app'\nversion = '0.1.0'\n",
                ),
                (
                    "uv.lock",
                    &LOCK.replace("editable = \".\"", "virtual = \".\""),
                ),
            ],
            "summary: uv sync --locked (uv.lock)\ndeps: uv-lock groups=[] extras=[]\nproject: none",
        );
        // A virtual root with a local workspace member: the member is installed per job.
        check(
            &[("pyproject.toml", "[project]\nname = 'app'\nversion = '0.1.0'\n[tool.uv.workspace]\nmembers = ['packages/*']\n"), ("packages/lib/pyproject.toml", "[project]\nname = 'lib'\n"), ("uv.lock", LOCK_WITH_MEMBER)],
            "summary: uv sync --locked (uv.lock)\ndeps: uv-lock groups=[] extras=[]\nproject: uv-sync install=false editable=false",
        );
        check(
            &[("uv.lock", LOCK), ("requirements.txt", "x\n")],
            "summary: uv pip install -r requirements.txt (requirements.txt)\nnote: uv.lock is not used: there is no pyproject.toml\ndeps: x\nproject: none",
        );
        check(
            &[("pyproject.toml", APP), ("uv.lock", "version = 1\n[[package]\n")],
            "error: uv.lock is not valid TOML: line 2, column 11: unclosed array table, expected `]`",
        );
    }

    #[test]
    fn uv_lock_with_pip() {
        let groups = pyproject_with("[dependency-groups]\ntest = ['pytest>=8']\n");
        check_pip(
            &[("pyproject.toml", &groups), ("uv.lock", LOCK)],
            "summary: pip install --group test . (pyproject.toml [dependency-groups] test)\nnote: uv.lock is not used: this server installs with pip (--installer pip)\ndeps: pytest>=8 | six\nproject: /workspace",
        );
    }

    #[test]
    fn dependency_groups() {
        // The seed fixture `dependency_groups`.
        let fixture = "[build-system]\nrequires = [\"hatchling\"]\nbuild-backend = \"hatchling.build\"\n\n[project]\nname = \"groupedpkg\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\n\n[dependency-groups]\ntest = [\"pytest\", {include-group = \"extra-tools\"}]\nextra-tools = [\"six\"]\n";
        check(
            &[("pyproject.toml", fixture), ("requirements.txt", "flask\n")],
            "summary: uv pip install --group test . (pyproject.toml [dependency-groups] test)\ndeps: pytest | six\nproject: /workspace",
        );
        check_pip(
            &[("pyproject.toml", fixture)],
            "summary: pip install --group test . (pyproject.toml [dependency-groups] test)\ndeps: pytest | six\nproject: /workspace",
        );
        check(
            &[("pyproject.toml", &pyproject_with("[dependency-groups]\ndev = ['pytest', 'six', 'app[extra]']\nTests = ['x']\n[project.optional-dependencies]\nextra = ['e; python_version > \"3\"']\n"))],
            "summary: uv pip install --group Tests . (pyproject.toml [dependency-groups] Tests)\ndeps: x | six\nproject: /workspace",
        );
        // The group names the project itself: its extra, not a package from the index.
        check(
            &[("pyproject.toml", &pyproject_with("[dependency-groups]\ndev = ['pytest', 'six', 'app[extra]']\n[project.optional-dependencies]\nextra = ['e']\n"))],
            "summary: uv pip install --group dev '.[extra]' (pyproject.toml [dependency-groups] dev)\ndeps: pytest | six | e\nproject: /workspace[extra]",
        );
        // Not a package: only the group.
        check(
            &[("pyproject.toml", "[dependency-groups]\ntest = ['pytest', 'git+https://h/x.git']\n")],
            "summary: uv pip install --group test (pyproject.toml [dependency-groups] test)\ndeps: pytest | git+https://h/x.git\nproject: none\nvcs: git git+https://h/x.git",
        );
        check(
            &[("pyproject.toml", "[dependency-groups]\ntest = [{include-group = 'a'}]\na = [{include-group = 'test'}]\n")],
            "error: pyproject.toml [dependency-groups]: include-group cycle: test -> a -> test",
        );
    }

    #[test]
    fn requirements_files() {
        // The seed fixture `requirements_dev_only`: the file installs the project itself.
        let setuptools = "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"flatreq\"\nversion = \"0.1.0\"\n";
        check(
            &[("pyproject.toml", setuptools), ("requirements-dev.txt", "pytest\n-e .\n")],
            "summary: uv pip install -r requirements-dev.txt (requirements-dev.txt)\ndeps: pytest\nproject: -e /workspace",
        );
        check_pip(
            &[("pyproject.toml", setuptools), ("requirements-dev.txt", "pytest\n")],
            "summary: pip install -r requirements-dev.txt . (requirements-dev.txt)\ndeps: pytest\nproject: /workspace",
        );
        check(
            &[("pyproject.toml", setuptools), ("requirements.txt", "flask\n"), ("requirements-dev.txt", "-r requirements.txt\npytest\n")],
            "summary: uv pip install -r requirements.txt -r requirements-dev.txt . (requirements.txt, requirements-dev.txt)\ndeps: flask | pytest\nproject: /workspace",
        );
        // The seed fixture `dummy_project`: no package at all.
        check(
            &[("requirements.txt", "pytest==7.4.3\n")],
            "summary: uv pip install -r requirements.txt (requirements.txt)\ndeps: pytest==7.4.3\nproject: none",
        );
        check(
            &[("requirements-dev.txt", "b\n"), ("requirements-test.txt", "a\n"), ("tests/requirements.txt", "c\n")],
            "summary: uv pip install -r requirements-test.txt (requirements-test.txt)\ndeps: a\nproject: none",
        );
        check(
            &[("requirements/testing.txt", "b\n"), ("requirements/test-unit.txt", "a\n"), ("requirements/dev.txt", "c\n")],
            "summary: uv pip install -r requirements/test-unit.txt (requirements/test-unit.txt)\ndeps: a\nproject: none",
        );
        check(
            &[("requirements/dev-all.txt", "c\n"), ("requirements/base.txt", "b\n"), ("tests/requirements.txt", "t\n")],
            "summary: uv pip install -r requirements/dev-all.txt (requirements/dev-all.txt)\ndeps: c\nproject: none",
        );
        check(
            &[("tests/requirements.txt", "t\n"), ("setup.py", "")],
            "summary: uv pip install -r tests/requirements.txt . (tests/requirements.txt)\ndeps: t\nproject: /workspace",
        );
        // The project's own static dependencies join the deps layer.
        check(
            &[("pyproject.toml", APP), ("requirements-dev.txt", "-c constraints.txt\n-e .[test]\n-e ./plugins/x\npytest\n"), ("constraints.txt", "six<2\n"), ("plugins/x/setup.py", ""), ("pyproject.toml", &pyproject_with("[project.optional-dependencies]\ntest = ['mock']\n"))],
            "summary: uv pip install -r requirements-dev.txt (requirements-dev.txt)\ndeps: pytest | six | mock\nconstraints: six<2\nproject: -e /workspace[test] | -e /workspace/plugins/x",
        );
        check(
            &[("requirements-dev.txt", "-r base.txt\n")],
            "error: requirements-dev.txt: -r base.txt: no such file in the project",
        );
        check(
            &[("requirements.txt", "-e ../other\n")],
            "error: requirements.txt: ../other is outside the project",
        );
    }

    #[test]
    fn extras() {
        // The seed fixture `src_layout_extras`.
        let fixture = "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"srcextras\"\nversion = \"0.1.0\"\n\n[project.optional-dependencies]\ntest = [\"pytest\"]\n";
        check(
            &[("pyproject.toml", fixture)],
            "summary: uv pip install '.[test]' (pyproject.toml [project.optional-dependencies] test)\ndeps: pytest\nproject: /workspace[test]",
        );
        check_pip(
            &[("pyproject.toml", &pyproject_with("[project.optional-dependencies]\nDev = ['ipython']\nTesting = ['pytest', 'app[cov]']\ncov = ['coverage', 'local @ file:///tmp/x']\n"))],
            "summary: pip install '.[Testing]' (pyproject.toml [project.optional-dependencies] Testing)\ndeps: six | pytest | coverage\nproject: /workspace[Testing]",
        );
        check(
            &[("setup.py", "from setuptools import setup\nsetup()\n"), ("setup.cfg", "[metadata]\nname = app\n\n[options]\ninstall_requires =\n    six\n\n[options.extras_require]\ntests =\n    pytest\n")],
            "summary: uv pip install '.[tests]' (setup.cfg [options.extras_require] tests)\ndeps: six | pytest\nproject: /workspace[tests]",
        );
    }

    #[test]
    fn tox() {
        // The seed fixture `setup_py_tox`.
        let ini = "[tox]\nenvlist = py3\n\n[testenv]\ndeps =\n    pytest\n    six\n    {posargs}\ncommands = pytest\n";
        check(
            &[("tox.ini", ini), ("setup.py", "from setuptools import setup\nsetup(name='toxpkg', install_requires=['six'])\n")],
            "summary: uv pip install pytest six . (tox.ini [testenv] deps)\ndeps: pytest | six\nproject: /workspace",
        );
        check(
            &[("tox.ini", "[testenv]\ndeps = -r{toxinidir}/req/test.in\nextras = check\nusedevelop = true\n"), ("req/test.in", "pytest\n"), ("pyproject.toml", &pyproject_with("[project.optional-dependencies]\nfull = ['x']\ncheck = ['mock']\n"))],
            "summary: uv pip install -r./req/test.in -e '.[check]' (tox.ini [testenv] deps)\ndeps: pytest | six | mock\nproject: -e /workspace[check]",
        );
        let long: Vec<String> = (0..30).map(|i| format!("package-{i}")).collect();
        let summary = format!(
            "uv pip install {}… (tox.ini [testenv] deps)",
            &long.join(" ")[..99]
        );
        assert_eq!(
            render(
                &[(
                    "tox.ini",
                    &format!(
                        "[testenv]\nskip_install = true\ndeps =\n    {}\n",
                        long.join("\n    ")
                    )
                )],
                Installer::Uv
            )
            .lines()
            .next()
            .unwrap(),
            format!("summary: {summary}"),
        );
        check(
            &[("pyproject.toml", &pyproject_with("[tool.tox.env_run_base]\ndeps = ['pytest']\nskip_install = true\n"))],
            "summary: uv pip install pytest (pyproject.toml [tool.tox] deps)\ndeps: pytest | six\nproject: none",
        );
    }

    #[test]
    fn project_only() {
        check(
            &[("pyproject.toml", APP)],
            "summary: uv pip install . (pyproject.toml)\ndeps: six\nproject: /workspace",
        );
        check_pip(
            &[(
                "pyproject.toml",
                "[project]\nname = 'x'\nversion = '1'\ndynamic = ['dependencies']\n",
            )],
            "summary: pip install . (pyproject.toml)\ndeps: \nproject: /workspace",
        );
        check(
            &[("setup.py", "from setuptools import setup\nsetup()\n")],
            "summary: uv pip install . (setup.py)\ndeps: \nproject: /workspace",
        );
        check(
            &[(
                "setup.cfg",
                "[metadata]\nname = app\n[options]\ninstall_requires = six; attrs\n",
            )],
            "summary: uv pip install . (setup.cfg)\ndeps: six | attrs\nproject: /workspace",
        );
        check(
            &[(
                "pyproject.toml",
                &pyproject_with("[tool.uv]\npackage = false\n"),
            )],
            "summary: uv pip install six (pyproject.toml)\ndeps: six\nproject: none",
        );
    }

    #[test]
    fn nothing() {
        check(
            &[("tests/test_x.py", "def test_x(): pass\n")],
            "summary: nothing to install (no pyproject.toml, setup.py, requirements or lock file)\ndeps: \nproject: none",
        );
        check(
            &[("pyproject.toml", "[tool.pytest.ini_options]\naddopts = '-q'\n")],
            "summary: nothing to install (pyproject.toml has no [project] or [build-system])\ndeps: \nproject: none",
        );
    }

    #[test]
    fn configured() {
        // The seed fixture `tool_ci`.
        let fixture = "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"configured\"\nversion = \"0.1.0\"\n\n[dependency-groups]\nci = [\"pytest\", \"iniconfig\"]\n\n[tool.ci]\ngroups = [\"ci\"]\npytest-args = [\"-k\", \"not skipped_by_config\"]\nenv = { CI_FIXTURE_GREETING = \"hello\" }\ntimeout = \"5m\"\n";
        check(
            &[("pyproject.toml", fixture), ("requirements.txt", "x\n")],
            "summary: uv pip install --group ci . ([tool.ci] in pyproject.toml)\ndeps: pytest | iniconfig\nproject: /workspace",
        );
        let app = pyproject_with("[dependency-groups]\ntest = ['pytest']\nlint = ['ruff']\n[project.optional-dependencies]\ndocs = ['sphinx']\n");
        check(
            &[("pyproject.toml", &app), ("ci.toml", "groups = ['test', 'lint']\nextras = ['docs']\nrequirements = ['req/ci.txt']\ninstall-project = 'editable'\n"), ("req/ci.txt", "-r base.txt\nhypothesis\n"), ("req/base.txt", "attrs\n")],
            "summary: uv pip install --group test --group lint -r req/ci.txt -e '.[docs]' ([tool.ci] in ci.toml)\ndeps: pytest | ruff | attrs | hypothesis | six | sphinx\nproject: -e /workspace[docs]",
        );
        check_pip(
            &[("pyproject.toml", &app), ("ci.toml", "install-project = false\nrequirements = ['r.txt']\n"), ("r.txt", "pytest\n-e .\n")],
            "summary: pip install -r r.txt ([tool.ci] in ci.toml)\nnote: the requirements install the project itself, but install-project = false: it is not installed\ndeps: pytest | six\nproject: none",
        );
        // A config that only sets pytest options leaves detection alone.
        check(
            &[("pyproject.toml", &app), ("ci.toml", "pytest-args = ['-x']\n")],
            "summary: uv pip install --group test . (pyproject.toml [dependency-groups] test)\ndeps: pytest | six\nproject: /workspace",
        );
    }

    #[test]
    fn configured_with_lock() {
        let app = pyproject_with("[dependency-groups]\ntest = ['pytest']\nLint = ['ruff']\n[project.optional-dependencies]\ndocs = ['sphinx']\n[tool.ci]\ngroups = ['test', 'lint']\nextras = ['docs']\n");
        check(
            &[("pyproject.toml", &app), ("uv.lock", LOCK)],
            "summary: uv sync --locked --group test --group lint --extra docs ([tool.ci] in pyproject.toml, uv.lock)\ndeps: uv-lock groups=[\"test\", \"lint\"] extras=[\"docs\"]\nproject: uv-sync install=true editable=false",
        );
        check(
            &[("pyproject.toml", APP), ("uv.lock", LOCK), ("ci.toml", "install-project = 'editable'\n")],
            "summary: uv sync --locked ([tool.ci] in ci.toml, uv.lock)\ndeps: uv-lock groups=[] extras=[]\nproject: uv-sync install=true editable=true",
        );
        check(
            &[("pyproject.toml", APP), ("uv.lock", LOCK), ("ci.toml", "install-project = false\n")],
            "summary: uv sync --locked ([tool.ci] in ci.toml, uv.lock)\ndeps: uv-lock groups=[] extras=[]\nproject: none",
        );
        check(
            &[("pyproject.toml", APP), ("uv.lock", LOCK), ("ci.toml", "requirements = ['r.txt']\n"), ("r.txt", "pytest\n")],
            "summary: uv pip install -r r.txt . ([tool.ci] in ci.toml)\nnote: uv.lock is not used: ci.toml lists requirements files\ndeps: pytest | six\nproject: /workspace",
        );
        check_pip(
            &[("pyproject.toml", APP), ("uv.lock", LOCK), ("ci.toml", "install-project = true\n")],
            "summary: pip install . ([tool.ci] in ci.toml)\nnote: uv.lock is not used: this server installs with pip (--installer pip)\ndeps: six\nproject: /workspace",
        );
    }

    #[test]
    fn config_errors() {
        let app = pyproject_with("[dependency-groups]\ntest = ['pytest']\nlint = ['ruff']\n[project.optional-dependencies]\ndocs = ['sphinx']\n");
        check(
            &[("pyproject.toml", &app), ("ci.toml", "groups = ['tset']\n")],
            "error: ci.toml: dependency group \"tset\" is not in pyproject.toml [dependency-groups] (groups there: lint, test)",
        );
        check(
            &[("pyproject.toml", APP), ("ci.toml", "groups = ['test']\n")],
            "error: ci.toml: dependency group \"test\" is not in pyproject.toml [dependency-groups] (there are none)",
        );
        check(
            &[("ci.toml", "groups = ['test']\n")],
            "error: ci.toml: dependency group \"test\" is not in pyproject.toml [dependency-groups] (there is no pyproject.toml)",
        );
        check(
            &[("pyproject.toml", &app), ("ci.toml", "extras = ['tests']\n")],
            "error: ci.toml: extra \"tests\" is not defined: extras in pyproject.toml [project.optional-dependencies]: docs",
        );
        check(
            &[("pyproject.toml", &app), ("uv.lock", LOCK), ("ci.toml", "extras = ['tests']\n")],
            "error: ci.toml: extra \"tests\" is not defined: extras in pyproject.toml [project.optional-dependencies]: docs",
        );
        check(
            &[
                ("pyproject.toml", &app),
                ("ci.toml", "requirements = ['ci.txt']\n"),
            ],
            "error: ci.toml: ci.txt: no such file in the project",
        );
        check(
            &[
                ("pyproject.toml", &app),
                ("ci.toml", "requirements = ['../ci.txt']\n"),
            ],
            "error: ci.toml: ../ci.txt is outside the project",
        );
        check(
            &[
                ("pyproject.toml", &app),
                ("ci.toml", "requirements = ['/etc/passwd']\n"),
            ],
            "error: ci.toml: /etc/passwd is outside the project",
        );
        check(
            &[("pyproject.toml", "[tool.ci]\ngrups = ['test']\n")],
            "error: pyproject.toml [tool.ci]: unknown key \"grups\" (known keys: groups, extras, requirements, install-project, pytest-args, pytest-verbose, env, timeout, shards, python)",
        );
    }

    #[test]
    fn invalid_pyproject_fails_the_plan() {
        let dir = write(&[
            ("pyproject.toml", "[project\nname = 'x'\n"),
            ("requirements.txt", "x\n"),
        ]);
        let err = crate::plan(dir.path(), &Config::default(), Installer::Uv).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pyproject.toml is not valid TOML: line 1, column 9: unclosed table, expected `]`"
        );
    }

    #[test]
    fn escaping_links_are_refused() {
        let outside = write(&[("secret.txt", "x\n")]);
        let dir = write(&[]);
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            dir.path().join("requirements.txt"),
        )
        .unwrap();
        let err = crate::plan(dir.path(), &Config::default(), Installer::Uv).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requirements.txt is a link to outside the project"
        );
    }

    #[test]
    fn pretend_version() {
        fn check(files: &[(&str, &str)], expected: bool) {
            let dir = write(files);
            let plan = plan_in(dir.path(), Installer::Uv).unwrap();
            assert_eq!(plan.pretend_version, expected, "{files:?}");
        }
        let with = |requires: &str| {
            format!("[build-system]\nrequires = {requires}\n[project]\nname = 'x'\ndynamic = ['version']\n")
        };
        check(
            &[(
                "pyproject.toml",
                &with("['setuptools>=64', 'setuptools-scm>=8']"),
            )],
            true,
        );
        check(
            &[(
                "pyproject.toml",
                &with("['setuptools', 'setuptools_scm[toml]>=6.2']"),
            )],
            true,
        );
        check(
            &[("pyproject.toml", &with("['hatchling', 'hatch-vcs']"))],
            true,
        );
        check(
            &[(
                "pyproject.toml",
                &with("['setuptools', 'setuptools-git-versioning<3']"),
            )],
            true,
        );
        check(
            &[
                ("pyproject.toml", &with("['setuptools-scm']")),
                ("PKG-INFO", "Metadata-Version: 2.1\n"),
            ],
            false,
        );
        check(&[("pyproject.toml", &with("['pdm-backend']"))], false);
        check(&[("pyproject.toml", &with("['hatchling']"))], false);
        check(
            &[(
                "setup.py",
                "setup(use_scm_version=True, setup_requires=['setuptools_scm'])\n",
            )],
            true,
        );
        check(&[("requirements.txt", "x\n")], false);
    }

    /// The deps key of the project made of `files`, written in a fresh directory each time.
    fn key(files: &[(&str, &str)], installer: Installer) -> String {
        let dir = write(files);
        plan_in(dir.path(), installer).unwrap().deps_key
    }

    #[test]
    fn lock_key() {
        let base = pyproject_with(
            "[dependency-groups]\ntest = ['pytest>=8']\n[tool.ruff]\nline-length = 100\n",
        );
        let same = |files: &[(&str, &str)], expected: bool| {
            let a = key(
                &[
                    ("pyproject.toml", &base),
                    ("uv.lock", LOCK),
                    ("app/__init__.py", ""),
                ],
                Installer::Uv,
            );
            assert_eq!(a == key(files, Installer::Uv), expected, "{files:?}");
        };
        same(
            &[
                ("pyproject.toml", &base),
                ("uv.lock", LOCK),
                ("app/__init__.py", ""),
            ],
            true,
        );
        same(
            &[
                (
                    "pyproject.toml",
                    &base.replace("line-length = 100", "line-length = 80"),
                ),
                ("uv.lock", LOCK),
            ],
            true,
        );
        same(
            &[
                (
                    "pyproject.toml",
                    &base.replace("version = '0.1.0'", "version = '0.2.0'"),
                ),
                ("uv.lock", LOCK),
            ],
            true,
        );
        same(
            &[
                ("pyproject.toml", &base),
                ("uv.lock", LOCK),
                ("app/__init__.py", "x = 1\n"),
                ("README.md", "hi\n"),
            ],
            true,
        );
        same(
            &[
                ("pyproject.toml", &base),
                ("uv.lock", &LOCK.replace("8.3.5", "8.3.4")),
            ],
            false,
        );
        same(
            &[
                ("pyproject.toml", &base.replace("['six']", "['six>=1']")),
                ("uv.lock", LOCK),
            ],
            false,
        );
        same(
            &[
                ("pyproject.toml", &base.replace("pytest>=8", "pytest>=8.1")),
                ("uv.lock", LOCK),
            ],
            false,
        );
        same(
            &[
                (
                    "pyproject.toml",
                    &format!("{base}[tool.uv]\nindex-url = 'https://idx/simple'\n"),
                ),
                ("uv.lock", LOCK),
            ],
            false,
        );
        same(
            &[
                ("pyproject.toml", &base),
                ("uv.lock", LOCK),
                (".python-version", "3.12\n"),
            ],
            false,
        );
        same(
            &[
                ("pyproject.toml", &base),
                ("uv.lock", LOCK),
                ("ci.toml", "groups = []\n"),
            ],
            false,
        );

        let workspace = pyproject_with("[tool.uv.workspace]\nmembers = ['packages/*']\n");
        let member =
            "[project]\nname = 'lib'\ndependencies = ['attrs']\n[tool.ruff]\nline-length = 1\n";
        let a = key(
            &[
                ("pyproject.toml", &workspace),
                ("uv.lock", LOCK_WITH_MEMBER),
                ("packages/lib/pyproject.toml", member),
            ],
            Installer::Uv,
        );
        let b = key(
            &[
                ("pyproject.toml", &workspace),
                ("uv.lock", LOCK_WITH_MEMBER),
                (
                    "packages/lib/pyproject.toml",
                    &member.replace("line-length = 1", "line-length = 2"),
                ),
            ],
            Installer::Uv,
        );
        let c = key(
            &[
                ("pyproject.toml", &workspace),
                ("uv.lock", LOCK_WITH_MEMBER),
                (
                    "packages/lib/pyproject.toml",
                    &member.replace("attrs", "attrs>=23"),
                ),
            ],
            Installer::Uv,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn requirements_key() {
        let base: &[(&str, &str)] = &[
            ("pyproject.toml", APP),
            ("requirements.txt", "flask\n"),
            (
                "requirements-dev.txt",
                "-r requirements.txt\n-r more.txt\n-e ./plugins/x\n",
            ),
            ("more.txt", "pytest\n"),
            ("plugins/x/setup.py", "setup()\n"),
            ("app/__init__.py", ""),
        ];
        let with = |path: &str, content: &str| -> Vec<(String, String)> {
            let mut files: Vec<(String, String)> = base
                .iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect();
            match files.iter_mut().find(|(p, _)| p == path) {
                Some(file) => file.1 = content.to_owned(),
                None => files.push((path.to_owned(), content.to_owned())),
            }
            files
        };
        let key_of = |files: &[(String, String)], installer| {
            let files: Vec<(&str, &str)> = files
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_str()))
                .collect();
            key(&files, installer)
        };
        let a = key(base, Installer::Uv);
        assert_eq!(a, key(base, Installer::Uv));
        let same = |path: &str, content: &str, expected: bool| {
            assert_eq!(
                a == key_of(&with(path, content), Installer::Uv),
                expected,
                "{path}: {content}"
            );
        };
        same("app/__init__.py", "x = 1\n", true);
        same("plugins/x/setup.py", "setup(name='x')\n", true);
        same(
            "pyproject.toml",
            &format!("{APP}[tool.ruff]\nline-length = 1\n"),
            true,
        );
        same("more.txt", "pytest>=8\n", false);
        same("more.txt", "pytest\n# a comment\n", false);
        same("requirements.txt", "flask<3\n", false);
        same(
            "pyproject.toml",
            &APP.replace("['six']", "['six', 'attrs']"),
            false,
        );
        assert_ne!(a, key(base, Installer::Pip));
    }

    #[test]
    fn key_names_groups_and_extras() {
        let app = pyproject_with(
            "[dependency-groups]\ntest = ['pytest']\n[project.optional-dependencies]\ndocs = []\n",
        );
        let a = key(
            &[("pyproject.toml", &app), ("ci.toml", "groups = ['test']\n")],
            Installer::Uv,
        );
        let b = key(
            &[
                ("pyproject.toml", &app),
                ("ci.toml", "groups = ['test']\nextras = ['docs']\n"),
            ],
            Installer::Uv,
        );
        assert_ne!(a, b);
        assert!(
            b.contains("groups (4 bytes)\ntest\nextras (4 bytes)\ndocs\n"),
            "{b}"
        );
    }

    #[test]
    fn cuts() {
        fn check(list: &str, expected: &str) {
            assert_eq!(cut(list), expected);
        }
        check("a b", "a b");
        check(&"x".repeat(100), &"x".repeat(100));
        check(&"é".repeat(101), &format!("{}…", "é".repeat(99)));
    }
}
