//! Which of the server's Pythons a job runs on: the versions asked for (`--python`,
//! `[tool.ci] python`), or the default unless the project's `requires-python` excludes it,
//! then the newest that fits. One decision for `ci` (before it uploads) and the server (for
//! clients that ask for nothing).

use std::path::Path;
use std::str::FromStr;

use pep440_rs::{Version, VersionSpecifiers};

use crate::files::Files;
use crate::ini::Ini;
use crate::{pyproject, Error};

/// One of the server's ready Pythons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    /// `3.13`, `pypy3.10`: what `--python` takes.
    pub name: String,
    /// The full version (`3.13.5`).
    pub version: String,
    pub default: bool,
}

/// The ready Pythons among a server's (`GET /v1/pythons`): the only ones a job can be sent to.
pub fn available(views: &[ci_protocol::PythonView]) -> Vec<Available> {
    views
        .iter()
        .filter(|v| v.status == ci_protocol::ImageStatus::Ready)
        .filter_map(|v| {
            Some(Available {
                name: v.name.clone()?,
                version: v.version.clone()?,
                default: v.default,
            })
        })
        .collect()
}

/// The Pythons a submission runs on, and a line to say when it was not the plain default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub names: Vec<String>,
    pub note: Option<String>,
}

/// Why no Python could be chosen; one line each, naming what the server has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error("the server has no Python {asked}: it has {}", listed(.available))]
    Unknown {
        asked: String,
        available: Vec<Available>,
    },
    #[error("the project's requires-python {requires:?} allows none of the server's Pythons ({})", listed(.available))]
    NoneFits {
        requires: String,
        available: Vec<Available>,
    },
    #[error("{file}: requires-python {requires:?} is not a valid version specifier: {message}")]
    BadRequires {
        file: String,
        requires: String,
        message: String,
    },
}

fn listed(available: &[Available]) -> String {
    let names: Vec<String> = available
        .iter()
        .map(|a| {
            if a.default {
                format!("{} (default)", a.name)
            } else {
                a.name.clone()
            }
        })
        .collect();
    if names.is_empty() {
        "none ready".to_string()
    } else {
        names.join(", ")
    }
}

/// The project's `requires-python` and the file it is in: `[project] requires-python` of
/// pyproject.toml, else `python_requires` in setup.cfg's `[options]`.
pub fn requires_python(root: &Path) -> Result<Option<(String, String)>, Error> {
    let files = Files::new(root)?;
    if let Some(pyproject) = pyproject::load(&files, "pyproject.toml")? {
        if let Some(requires) = pyproject.requires_python()? {
            return Ok(Some((requires.to_string(), "pyproject.toml".to_string())));
        }
    }
    if let Some(text) = files.read("setup.cfg")? {
        let ini = Ini::parse(&text);
        if let Some(requires) = ini.get("options", "python_requires") {
            let requires = requires.trim();
            if !requires.is_empty() {
                return Ok(Some((requires.to_string(), "setup.cfg".to_string())));
            }
        }
    }
    Ok(None)
}

/// Decides the Pythons: `asked` (the command line's, else the project's `[tool.ci] python`)
/// must all be among `available`; with nothing asked, the default, unless `requires`
/// (`(specifier, file)`) excludes it: then the newest that fits, said in the note. No names
/// (with nothing asked and the default not among `available`, not ready yet) means: the
/// default, whichever Python it turns out to have.
pub fn choose(
    asked: &[String],
    requires: Option<&(String, String)>,
    available: &[Available],
) -> Result<Choice, ChoiceError> {
    if !asked.is_empty() {
        for name in asked {
            if !available.iter().any(|a| &a.name == name) {
                return Err(ChoiceError::Unknown {
                    asked: name.clone(),
                    available: available.to_vec(),
                });
            }
        }
        return Ok(Choice {
            names: asked.to_vec(),
            note: None,
        });
    }
    // The default not ready yet: the job runs on it whatever it turns out to be (never on
    // another Python without saying so).
    let Some(default) = available.iter().find(|a| a.default) else {
        return Ok(Choice {
            names: Vec::new(),
            note: None,
        });
    };
    let Some((requires, file)) = requires else {
        return Ok(Choice {
            names: vec![default.name.clone()],
            note: None,
        });
    };
    let specifiers =
        VersionSpecifiers::from_str(requires).map_err(|e| ChoiceError::BadRequires {
            file: file.clone(),
            requires: requires.clone(),
            message: e.to_string(),
        })?;
    let fits = |a: &Available| Version::from_str(&a.version).is_ok_and(|v| specifiers.contains(&v));
    if fits(default) {
        return Ok(Choice {
            names: vec![default.name.clone()],
            note: None,
        });
    }
    let newest = available
        .iter()
        .filter(|a| fits(a))
        .max_by_key(|a| Version::from_str(&a.version).ok());
    match newest {
        Some(newest) => Ok(Choice {
            names: vec![newest.name.clone()],
            note: Some(format!(
                "requires-python {requires:?} ({file}) excludes the default Python {} ({}): running on {} ({})",
                default.name, default.version, newest.name, newest.version
            )),
        }),
        None => Err(ChoiceError::NoneFits {
            requires: requires.clone(),
            available: available.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Vec<Available> {
        vec![
            Available {
                name: "3.11".into(),
                version: "3.11.2".into(),
                default: true,
            },
            Available {
                name: "3.13".into(),
                version: "3.13.5".into(),
                default: false,
            },
            Available {
                name: "3.12".into(),
                version: "3.12.9".into(),
                default: false,
            },
        ]
    }

    fn requires(spec: &str) -> Option<(String, String)> {
        Some((spec.to_string(), "pyproject.toml".to_string()))
    }

    #[test]
    fn asked_versions_are_taken_in_order() {
        let asked = vec!["3.13".to_string(), "3.11".to_string()];
        let choice = choose(&asked, requires(">=3.12").as_ref(), &server()).unwrap();
        assert_eq!(choice.names, ["3.13", "3.11"]);
        assert_eq!(choice.note, None);
    }

    #[test]
    fn an_unknown_version_names_what_there_is() {
        let err = choose(&["3.10".to_string()], None, &server()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server has no Python 3.10: it has 3.11 (default), 3.13, 3.12"
        );
    }

    #[test]
    fn the_default_unless_requires_python_excludes_it() {
        let plain = choose(&[], None, &server()).unwrap();
        assert_eq!((plain.names, plain.note), (vec!["3.11".to_string()], None));
        let fits = choose(&[], requires(">=3.9").as_ref(), &server()).unwrap();
        assert_eq!(fits.names, ["3.11"]);
        let newest = choose(&[], requires(">=3.12").as_ref(), &server()).unwrap();
        assert_eq!(newest.names, ["3.13"]);
        assert_eq!(
            newest.note.as_deref(),
            Some("requires-python \">=3.12\" (pyproject.toml) excludes the default Python 3.11 (3.11.2): running on 3.13 (3.13.5)")
        );
        let capped = choose(&[], requires(">=3.12,<3.13").as_ref(), &server()).unwrap();
        assert_eq!(capped.names, ["3.12"]);
        let star = choose(&[], requires("!=3.11.*").as_ref(), &server()).unwrap();
        assert_eq!(star.names, ["3.13"]);
    }

    #[test]
    fn nothing_fits_or_the_default_not_ready() {
        let err = choose(&[], requires(">=3.14").as_ref(), &server()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the project's requires-python \">=3.14\" allows none of the server's Pythons (3.11 (default), 3.13, 3.12)"
        );
        let not_ready = choose(&[], requires(">=3.12").as_ref(), &server()[1..]).unwrap();
        assert_eq!(
            (not_ready.names, not_ready.note),
            (Vec::<String>::new(), None)
        );
        let bad = choose(&[], requires(">=three").as_ref(), &server()).unwrap_err();
        assert!(
            bad.to_string().starts_with(
                "pyproject.toml: requires-python \">=three\" is not a valid version specifier"
            ),
            "{bad}"
        );
    }

    #[test]
    fn requires_python_from_pyproject_or_setup_cfg() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(requires_python(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join("setup.cfg"),
            "[options]\npython_requires = >=3.8\n",
        )
        .unwrap();
        assert_eq!(
            requires_python(dir.path()).unwrap(),
            Some((">=3.8".into(), "setup.cfg".into()))
        );
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname = 'x'\nrequires-python = '>=3.12'\n",
        )
        .unwrap();
        assert_eq!(
            requires_python(dir.path()).unwrap(),
            Some((">=3.12".into(), "pyproject.toml".into()))
        );
    }
}
