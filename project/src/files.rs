//! Reading the project's files without leaving it: paths are relative to the root, `..`
//! never climbs above it, a link must resolve inside it, and every file has a size cap.
//!
//! Paths handled here are "relative" strings with `/` separators (`""` is the root), the
//! form that appears in messages and in the deps key.
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// Larger than any sane requirements file or pyproject.toml; a cap so that a hostile upload
/// cannot make the server read gigabytes into memory.
pub(crate) const MAX_FILE_SIZE: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

pub(crate) struct Files {
    root: PathBuf,
    canonical: PathBuf,
}

impl Files {
    pub(crate) fn new(root: &Path) -> Result<Files, Error> {
        let canonical = root.canonicalize().map_err(|source| Error::Read {
            file: root.display().to_string(),
            source,
        })?;
        Ok(Files {
            root: root.to_path_buf(),
            canonical,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// What `rel` is, `None` when it does not exist (a dangling link does not exist either).
    /// A link resolving outside the root is an error even when only asked whether it exists:
    /// it would be the project's way of making the server read a host file.
    pub(crate) fn kind(&self, rel: &str) -> Result<Option<Kind>, Error> {
        let path = self.path(rel);
        let read_error = |source| Error::Read {
            file: shown(rel),
            source,
        };
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
            Ok(_) => {}
        }
        let real = match path.canonicalize() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
            Ok(real) => real,
        };
        if !real.starts_with(&self.canonical) {
            return Err(Error::LinkOutside { file: shown(rel) });
        }
        let meta = fs::metadata(&real).map_err(read_error)?;
        if meta.is_dir() {
            Ok(Some(Kind::Dir))
        } else if meta.is_file() {
            Ok(Some(Kind::File))
        } else {
            // A fifo would block the reader forever; nothing else is worth reading either.
            Err(Error::Invalid(format!(
                "{} is not a regular file",
                shown(rel)
            )))
        }
    }

    pub(crate) fn exists(&self, rel: &str) -> Result<bool, Error> {
        Ok(self.kind(rel)? == Some(Kind::File))
    }

    /// The text of `rel`, `None` when there is no such file.
    pub(crate) fn read(&self, rel: &str) -> Result<Option<String>, Error> {
        self.read_capped(rel, MAX_FILE_SIZE)
    }

    /// [`Files::read`] with another cap, for files that are large by nature (uv.lock).
    pub(crate) fn read_capped(&self, rel: &str, max: u64) -> Result<Option<String>, Error> {
        match self.kind(rel)? {
            None => return Ok(None),
            Some(Kind::Dir) => {
                return Err(Error::Invalid(format!("{} is a directory", shown(rel))));
            }
            Some(Kind::File) => {}
        }
        let read_error = |source| Error::Read {
            file: shown(rel),
            source,
        };
        let file = fs::File::open(self.path(rel)).map_err(read_error)?;
        let mut bytes = Vec::new();
        // Read one byte past the cap rather than trusting the size from metadata, which
        // may change between the two calls.
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > max {
            return Err(Error::TooLarge {
                file: shown(rel),
                max_mib: max / (1024 * 1024),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| Error::NotText { file: shown(rel) })?;
        // Editors on Windows start files with a byte-order mark; pip reads past it.
        Ok(Some(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        }))
    }

    /// `sha256:<hex>` of a file of any size: wheels in a `--find-links` directory are part
    /// of the deps key, but too large and not text to be put in it whole.
    pub(crate) fn digest(&self, rel: &str) -> Result<String, Error> {
        let read_error = |source| Error::Read {
            file: shown(rel),
            source,
        };
        let mut file = fs::File::open(self.path(rel)).map_err(read_error)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The entries of directory `rel`, sorted by name, each checked like [`Files::kind`];
    /// names that are not UTF-8 are skipped (they cannot be named in a requirement).
    pub(crate) fn list(&self, rel: &str) -> Result<Vec<(String, Kind)>, Error> {
        let read_error = |source| Error::Read {
            file: shown(rel),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(self.path(rel)).map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let child = join(rel, &name).expect("a directory entry is under its directory");
            if let Some(kind) = self.kind(&child)? {
                out.push((name, kind));
            }
        }
        Ok(out)
    }
}

/// How a relative path is named in messages: the root is `.`.
pub(crate) fn shown(rel: &str) -> String {
    if rel.is_empty() {
        ".".to_owned()
    } else {
        rel.to_owned()
    }
}

/// `path` taken relative to the directory `dir` (both relative to the root), normalized;
/// `None` for an absolute path or one whose `..` climbs above the root.
pub(crate) fn join(dir: &str, path: &str) -> Option<String> {
    if path.starts_with('/') || path.starts_with('~') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// The directory of a relative file path (`""` for a file at the root).
pub(crate) fn parent(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins() {
        fn check(dir: &str, path: &str, expected: Option<&str>) {
            assert_eq!(join(dir, path).as_deref(), expected, "{dir} + {path}");
        }
        check("", "a.txt", Some("a.txt"));
        check("", "./a/./b", Some("a/b"));
        check("", ".", Some(""));
        check("req", "../a.txt", Some("a.txt"));
        check("req", "../../a.txt", None);
        check("", "../x", None);
        check("", "/etc/passwd", None);
        check("", "~/x", None);
        check("a/b", "c/../d", Some("a/b/d"));
    }

    #[test]
    fn refuses_links_out() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("r.txt"))
            .unwrap();
        fs::write(root.path().join("in.txt"), "y").unwrap();
        std::os::unix::fs::symlink("in.txt", root.path().join("alias.txt")).unwrap();
        let files = Files::new(root.path()).unwrap();
        assert_eq!(
            files.read("r.txt").unwrap_err().to_string(),
            "r.txt is a link to outside the project"
        );
        assert_eq!(files.read("alias.txt").unwrap().as_deref(), Some("y"));
        assert_eq!(files.read("missing.txt").unwrap(), None);
    }

    #[test]
    fn reads_past_a_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("requirements.txt"),
            "\u{feff}pytest\r\nsix\r\n",
        )
        .unwrap();
        let files = Files::new(dir.path()).unwrap();
        let text = files.read("requirements.txt").unwrap().unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), ["pytest", "six"]);
    }

    #[test]
    fn caps_size() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("big.txt"),
            vec![b'a'; MAX_FILE_SIZE as usize + 1],
        )
        .unwrap();
        let files = Files::new(root.path()).unwrap();
        assert_eq!(
            files.read("big.txt").unwrap_err().to_string(),
            "big.txt is larger than 1 MiB"
        );
    }
}
