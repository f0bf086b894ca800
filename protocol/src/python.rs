//! The interpreters a server runs jobs on (`GET /v1/pythons`, `ci pythons`): one per image,
//! named by the Python the image itself reports.

use serde::{Deserialize, Serialize};

/// Where one of the server's images stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// Pulled or imported, and its Python known: jobs can run on it.
    Ready,
    /// Being pulled, imported or asked for its Python.
    Preparing,
    /// The last attempt failed (`error` says why); the server tries again later.
    Unavailable,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Ready => "ready",
            ImageStatus::Preparing => "preparing",
            ImageStatus::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One image of the server, as `GET /v1/pythons` lists it (the default first).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PythonView {
    /// What `--python` takes: `3.13` for CPython 3.13, `pypy3.10` for PyPy; `null` until the
    /// image has been asked.
    pub name: Option<String>,
    /// The interpreter's full version (`3.13.5`), as `sys.version_info` gives it.
    pub version: Option<String>,
    /// `sys.implementation.name`: `cpython`, `pypy`, ...
    pub implementation: Option<String>,
    /// The image as the server was given it: a registry reference or a file
    /// (`oci-archive:/srv/python.tar`).
    pub image: String,
    /// The manifest digest of the image in the server's cache, once it is there.
    pub digest: Option<String>,
    /// Jobs that choose no version run here (unless their `requires-python` excludes it).
    pub default: bool,
    pub status: ImageStatus,
    /// Why the image is unavailable.
    #[serde(default)]
    pub error: Option<String>,
}

/// The name `--python` takes for an interpreter: `3.13` for CPython, `pypy3.10` for PyPy,
/// `<implementation><major>.<minor>` for the others.
pub fn python_name(implementation: &str, version: &str) -> String {
    let minor: Vec<&str> = version.split('.').take(2).collect();
    let minor = minor.join(".");
    match implementation {
        "cpython" | "" => minor,
        other => format!("{other}{minor}"),
    }
}

/// Splits `--python 3.11,3.13` (and `3.11 3.13`) into names, in order, without repeats.
pub fn parse_python_list(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_interpreters() {
        assert_eq!(python_name("cpython", "3.13.5"), "3.13");
        assert_eq!(python_name("cpython", "3.11.2"), "3.11");
        assert_eq!(python_name("pypy", "3.10.14"), "pypy3.10");
    }

    #[test]
    fn lists_of_versions() {
        assert_eq!(parse_python_list("3.11,3.13"), ["3.11", "3.13"]);
        assert_eq!(parse_python_list(" 3.11, 3.11 ,3.13 "), ["3.11", "3.13"]);
        assert!(parse_python_list(" , ").is_empty());
    }

    #[test]
    fn field_names_are_stable() {
        let view = PythonView {
            name: Some("3.13".into()),
            version: Some("3.13.5".into()),
            implementation: Some("cpython".into()),
            image: "python:3.13-slim".into(),
            digest: Some("sha256:ab".into()),
            default: true,
            status: ImageStatus::Ready,
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"name":"3.13","version":"3.13.5","implementation":"cpython","image":"python:3.13-slim","digest":"sha256:ab","default":true,"status":"ready","error":null}"#
        );
    }
}
