//! Packs a project into a tar.gz the way a user expects: what `.gitignore` ignores, hidden
//! files and directories, `__pycache__` and virtualenvs stay out.

use std::path::Path;

use anyhow::{bail, Context};

/// What went into an archive.
pub struct Packed {
    pub archive: Vec<u8>,
    pub files: usize,
}

/// Whether a directory is a Python virtual environment (PEP 405 puts `pyvenv.cfg` at its root).
fn is_virtualenv(dir: &Path) -> bool {
    dir.join("pyvenv.cfg").is_file()
}

pub fn pack(root: &Path) -> anyhow::Result<Packed> {
    let walker = ignore::WalkBuilder::new(root)
        .hidden(true)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| {
            let name = e.file_name();
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            !(is_dir && (name == "__pycache__" || is_virtualenv(e.path())))
                && !name.to_string_lossy().ends_with(".pyc")
        })
        .build();
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    let mut files = 0;
    for entry in walker {
        let entry = entry.context("cannot read the project directory")?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("walk stays under root");
        if rel.as_os_str().is_empty() {
            continue;
        }
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            tar.append_dir(rel, path)
                .with_context(|| format!("cannot pack {}", path.display()))?;
        } else if kind.is_file() || kind.is_symlink() {
            tar.append_path_with_name(path, rel)
                .with_context(|| format!("cannot pack {}", path.display()))?;
            files += 1;
        }
        // Sockets, fifos and devices are not part of a project.
    }
    let archive = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .context("cannot compress the project")?;
    // The server's default cap: a larger archive would be refused after its upload.
    let max = ci_protocol::DEFAULT_MAX_UPLOAD_BYTES;
    if archive.len() as u64 > max {
        bail!(
            "the project packs to {} MiB, over the server's {} MiB limit; add large files to .gitignore",
            archive.len() >> 20,
            max >> 20
        );
    }
    Ok(Packed { archive, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<String> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        let mut names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn leaves_out_what_users_do_not_want_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, body) in [
            ("requirements.txt", "pytest\n"),
            ("src/app.py", "x = 1\n"),
            ("src/__pycache__/app.cpython-311.pyc", ""),
            ("src/stale.pyc", ""),
            (".git/config", ""),
            (".env", "SECRET=1"),
            ("build/out.txt", ""),
            ("notes.log", ""),
            ("venv/pyvenv.cfg", ""),
            ("venv/lib/x.py", ""),
            ("myenv/pyvenv.cfg", ""),
            (".gitignore", "build/\n*.log\n"),
        ] {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let packed = pack(root).unwrap();
        assert_eq!(
            names(&packed.archive),
            ["requirements.txt", "src", "src/app.py"]
        );
        assert_eq!(packed.files, 2);
    }
}
