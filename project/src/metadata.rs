//! What the project declares about itself, from pyproject.toml `[project]` or setup.cfg:
//! whether it can be installed, its name, its static dependencies and its extras.
use std::collections::HashSet;

use crate::ini::{self, Ini};
use crate::pyproject::{self, Pyproject};
use crate::{names, Error};

#[derive(Debug)]
pub(crate) struct Metadata {
    /// The file that makes the project installable (`pyproject.toml`, `setup.py`,
    /// `setup.cfg`), `None` when it is not.
    pub(crate) declared_in: Option<&'static str>,
    /// Normalized.
    pub(crate) name: Option<String>,
    /// Static dependencies; empty when there are none or only a build knows them.
    pub(crate) dependencies: Vec<String>,
    pub(crate) extras: Extras,
    /// `[tool.uv] package = false`: a project that is not to be installed as a package.
    pub(crate) package_false: bool,
}

#[derive(Debug)]
pub(crate) enum Extras {
    /// Declared in `source` (for messages) as `(extra, requirements)`.
    Static {
        source: &'static str,
        extras: pyproject::Extras,
    },
    /// Only a build knows them (dynamic, setup.py): any name may exist.
    Dynamic,
    /// The project has none: it is not installable.
    None,
}

pub(crate) const OPTIONAL_DEPENDENCIES: &str = "pyproject.toml [project.optional-dependencies]";
pub(crate) const EXTRAS_REQUIRE: &str = "setup.cfg [options.extras_require]";

pub(crate) fn read(
    pyproject: Option<&Pyproject>,
    setup_cfg: Option<&Ini>,
    setup_py: bool,
) -> Result<Metadata, Error> {
    let project = match pyproject {
        Some(p) => p.project()?.is_some(),
        None => false,
    };
    let cfg_name = setup_cfg
        .and_then(|cfg| cfg.get("metadata", "name"))
        .filter(|name| !name.is_empty());
    let declared_in = if project || pyproject.is_some_and(Pyproject::has_build_system) {
        Some("pyproject.toml")
    } else if setup_py {
        Some("setup.py")
    } else if cfg_name.is_some() {
        Some("setup.cfg")
    } else {
        None
    };
    let package_false = match pyproject {
        Some(p) => p.uv_package()? == Some(false),
        None => false,
    };
    let cfg_extras = setup_cfg
        .filter(|cfg| cfg.has_section("options.extras_require"))
        .map(|cfg| Extras::Static {
            source: EXTRAS_REQUIRE,
            extras: cfg
                .entries("options.extras_require")
                .map(|(name, value)| (name.clone(), ini::list(value, ';')))
                .collect(),
        });

    let (name, dependencies, extras) = match pyproject.filter(|_| project) {
        Some(p) => {
            let extras = match p.optional_dependencies()? {
                Some(extras) => Extras::Static {
                    source: OPTIONAL_DEPENDENCIES,
                    extras,
                },
                // setuptools may take dynamic extras from setup.cfg.
                None => cfg_extras.unwrap_or(Extras::Dynamic),
            };
            let name = p.name()?.map(names::normalize);
            (name, p.dependencies()?.unwrap_or_default(), extras)
        }
        None => {
            let dependencies = setup_cfg
                .and_then(|cfg| cfg.get("options", "install_requires"))
                // `file:` is resolved by setuptools at build time.
                .filter(|value| !value.trim_start().starts_with("file:"))
                .map(|value| ini::list(value, ';'))
                .unwrap_or_default();
            let extras = match (cfg_extras, declared_in) {
                (Some(extras), _) => extras,
                (None, Some("setup.py")) => Extras::Dynamic,
                (None, Some(_)) => Extras::Static {
                    source: EXTRAS_REQUIRE,
                    extras: Vec::new(),
                },
                (None, None) => Extras::None,
            };
            (cfg_name.map(names::normalize), dependencies, extras)
        }
    };
    Ok(Metadata {
        declared_in,
        name,
        dependencies,
        extras,
        package_false,
    })
}

impl Metadata {
    /// Whether the project is installed when nothing says otherwise.
    pub(crate) fn installed_by_default(&self) -> bool {
        self.declared_in.is_some() && !self.package_false
    }

    /// The extra of this project named `name` (compared normalized), as declared; `None`
    /// when there is no such extra or extras are not known.
    pub(crate) fn find_extra(&self, name: &str) -> Option<&str> {
        let Extras::Static { extras, .. } = &self.extras else {
            return None;
        };
        let name = names::normalize(name);
        extras
            .iter()
            .find(|(e, _)| names::normalize(e) == name)
            .map(|(e, _)| e.as_str())
    }

    /// Checks that `extra` is declared, unless extras cannot be known without a build.
    pub(crate) fn check_extra(&self, extra: &str, file: &str) -> Result<(), Error> {
        let known = match &self.extras {
            Extras::Dynamic => return Ok(()),
            Extras::Static { .. } if self.find_extra(extra).is_some() => return Ok(()),
            Extras::Static { source, extras } if extras.is_empty() => {
                format!("{source} declares none")
            }
            Extras::Static { source, extras } => {
                let mut names: Vec<&str> = extras.iter().map(|(e, _)| e.as_str()).collect();
                names.sort_unstable();
                format!("extras in {source}: {}", names.join(", "))
            }
            Extras::None => {
                "the project has no pyproject.toml [project], setup.py or setup.cfg".to_owned()
            }
        };
        Err(Error::UnknownExtra {
            file: file.to_owned(),
            extra: extra.to_owned(),
            known,
        })
    }

    /// The static dependencies and those of `extras`, for the deps layer: requirements on
    /// the project itself (`name[extra]`, as in `all = ["name[test,docs]"]`) are expanded.
    pub(crate) fn requirements(&self, extras: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut done = HashSet::new();
        let mut todo: Vec<String> = Vec::new();
        self.expand(&self.dependencies, &mut out, &mut todo);
        todo.extend(extras.iter().map(|e| names::normalize(e)));
        while let Some(extra) = todo.pop() {
            if !done.insert(extra.clone()) {
                continue;
            }
            if let Extras::Static { extras, .. } = &self.extras {
                if let Some((_, reqs)) = extras.iter().find(|(e, _)| names::normalize(e) == extra) {
                    self.expand(reqs, &mut out, &mut todo);
                }
            }
        }
        out
    }

    fn expand(&self, reqs: &[String], out: &mut Vec<String>, todo: &mut Vec<String>) {
        for req in reqs {
            match names::parse(req) {
                Some(parsed) if Some(names::normalize(parsed.name)) == self.name => {
                    // Pushed in reverse so that popping takes them in the written order.
                    todo.extend(parsed.extras.iter().rev().map(|e| names::normalize(e)));
                }
                _ => out.push(req.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyproject::parse_toml;

    fn metadata(pyproject: Option<&str>, setup_cfg: Option<&str>, setup_py: bool) -> Metadata {
        let pyproject = pyproject.map(|text| Pyproject {
            file: "pyproject.toml".to_owned(),
            table: parse_toml("pyproject.toml", text).unwrap(),
        });
        let setup_cfg = setup_cfg.map(Ini::parse);
        read(pyproject.as_ref(), setup_cfg.as_ref(), setup_py).unwrap()
    }

    #[test]
    fn declared_in() {
        fn check(
            pyproject: Option<&str>,
            setup_cfg: Option<&str>,
            setup_py: bool,
            expected: Option<&str>,
        ) {
            assert_eq!(
                metadata(pyproject, setup_cfg, setup_py).declared_in,
                expected
            );
        }
        check(
            Some("[project]\nname = 'x'"),
            None,
            false,
            Some("pyproject.toml"),
        );
        check(
            Some("[build-system]\nrequires = []"),
            None,
            false,
            Some("pyproject.toml"),
        );
        check(Some("[tool.ruff]"), None, true, Some("setup.py"));
        check(
            Some("[tool.ruff]"),
            Some("[metadata]\nname = x"),
            false,
            Some("setup.cfg"),
        );
        check(
            Some("[tool.ruff]"),
            Some("[flake8]\nmax-line-length = 1"),
            false,
            None,
        );
        check(None, None, false, None);
    }

    #[test]
    fn requirements() {
        fn check(
            pyproject: Option<&str>,
            setup_cfg: Option<&str>,
            extras: &[&str],
            expected: &[&str],
        ) {
            let extras: Vec<String> = extras.iter().map(|e| e.to_string()).collect();
            assert_eq!(
                metadata(pyproject, setup_cfg, false).requirements(&extras),
                expected
            );
        }
        let project = "[project]\nname = 'My_Pkg'\ndependencies = ['a']\n[project.optional-dependencies]\ntest = ['t', 'my-pkg[docs]']\ndocs = ['d', 'my.pkg[test]']\n";
        check(Some(project), None, &[], &["a"]);
        check(Some(project), None, &["test"], &["a", "t", "d"]);
        check(Some(project), None, &["Docs"], &["a", "d", "t"]);
        check(
            Some("[project]\nname = 'x'\ndynamic = ['dependencies']\ndependencies = ['a']"),
            None,
            &[],
            &[],
        );
        check(None, Some("[metadata]\nname = x\n[options]\ninstall_requires =\n    a\n    b>1\n[options.extras_require]\ntest = t; u\n"), &["test"], &["a", "b>1", "t", "u"]);
        check(
            None,
            Some("[metadata]\nname = x\n[options]\ninstall_requires = file: requirements.in\n"),
            &[],
            &[],
        );
    }

    #[test]
    fn checks_extras() {
        fn check(pyproject: Option<&str>, setup_py: bool, extra: &str, expected: Result<(), &str>) {
            let got = metadata(pyproject, None, setup_py).check_extra(extra, "ci.toml");
            assert_eq!(
                got.map_err(|e| e.to_string()),
                expected.map_err(str::to_owned)
            );
        }
        let project =
            "[project]\nname = 'x'\n[project.optional-dependencies]\ntest = ['t']\ndocs = []\n";
        check(Some(project), false, "Test", Ok(()));
        check(Some(project), false, "tset", Err("ci.toml: extra \"tset\" is not defined: extras in pyproject.toml [project.optional-dependencies]: docs, test"));
        check(Some("[project]\nname = 'x'"), false, "test", Err("ci.toml: extra \"test\" is not defined: pyproject.toml [project.optional-dependencies] declares none"));
        check(
            Some("[project]\nname = 'x'\ndynamic = ['optional-dependencies']"),
            false,
            "test",
            Ok(()),
        );
        check(None, true, "test", Ok(()));
        check(None, false, "test", Err("ci.toml: extra \"test\" is not defined: the project has no pyproject.toml [project], setup.py or setup.cfg"));
    }
}
