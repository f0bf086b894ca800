//! Unpacks an uploaded project (tar.gz) into a job's directory, refusing anything that could
//! write outside it or hurt the host: absolute paths, `..`, links that leave the project,
//! device files, fifos, and archives over the size and entry caps.
//!
//! Entries are created one by one by this code (not by `tar`'s own unpack) so that every path is
//! checked against the tree as it is on disk: a symlink unpacked earlier can never become a
//! parent of a later entry.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Caps on one upload.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_compressed_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is not a valid tar.gz archive: {0}")]
    Malformed(std::io::Error),
    #[error(
        "archive entry {0:?} has an absolute path or '..'; paths must stay inside the project"
    )]
    PathEscapes(String),
    #[error("archive entry {path:?} is a link pointing outside the project ({target:?})")]
    LinkEscapes { path: String, target: String },
    #[error("archive entry {0:?} is a device file or fifo; only files, directories and links are allowed")]
    SpecialFile(String),
    #[error("archive entry {0:?} would be written through a symlink")]
    ThroughSymlink(String),
    #[error("the project unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("the project has more than {0} entries")]
    TooManyEntries(u64),
    #[error("failed to write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl UploadError {
    /// Errors that are the uploader's fault (answered 4xx), as opposed to the server's.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, UploadError::Io { .. })
    }
}

/// Unpacks `archive` (gzip-compressed tar) into `dest`, which must exist and be empty.
/// On error `dest` may hold part of the project: the caller removes it.
pub fn unpack(archive: impl Read, dest: &Path, limits: Limits) -> Result<(), UploadError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    for entry in tar.entries().map_err(UploadError::Malformed)? {
        let mut entry = entry.map_err(UploadError::Malformed)?;
        count += 1;
        if count > limits.max_entries {
            return Err(UploadError::TooManyEntries(limits.max_entries));
        }
        let raw = entry.path().map_err(UploadError::Malformed)?.into_owned();
        let display = raw.display().to_string();
        let Some(rel) = clean_relative(&raw) else {
            return Err(UploadError::PathEscapes(display));
        };
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let target = dest.join(&rel);
        ensure_parents(dest, &rel, &display)?;
        let io = |source| UploadError::Io {
            path: target.clone(),
            source,
        };
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if is_symlink(&target) {
                    return Err(UploadError::ThroughSymlink(display));
                }
                fs_err::create_dir_all(&target).map_err(io)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total = total.saturating_add(entry.size());
                if total > limits.max_unpacked_bytes {
                    return Err(UploadError::TooLarge(limits.max_unpacked_bytes));
                }
                remove_existing(&target).map_err(io)?;
                let mut file = fs_err::File::create(&target).map_err(io)?;
                // Read at most what the header promised, whatever the stream claims.
                let copied =
                    std::io::copy(&mut (&mut entry).take(limits.max_unpacked_bytes), &mut file)
                        .map_err(UploadError::Malformed)?;
                drop(file);
                let mode = entry.header().mode().unwrap_or(0o644);
                // Keep the owner's execute bit; make everything readable by the job (which may
                // run as another uid) and never carry setuid/setgid/sticky bits.
                let mode = 0o644 | if mode & 0o100 != 0 { 0o111 } else { 0 };
                set_mode(&target, mode).map_err(io)?;
                debug_assert!(copied <= entry.size());
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UploadError::Malformed)?
                    .unwrap_or_default()
                    .into_owned();
                if !link_stays_inside(&rel, &link) {
                    return Err(UploadError::LinkEscapes {
                        path: display,
                        target: link.display().to_string(),
                    });
                }
                remove_existing(&target).map_err(io)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UploadError::Malformed)?
                    .unwrap_or_default()
                    .into_owned();
                let Some(link_rel) = clean_relative(&link) else {
                    return Err(UploadError::LinkEscapes {
                        path: display,
                        target: link.display().to_string(),
                    });
                };
                ensure_parents(dest, &link_rel, &display)?;
                let source = dest.join(&link_rel);
                // Only a regular file already unpacked from this archive may be linked to.
                match std::fs::symlink_metadata(&source) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(UploadError::LinkEscapes {
                            path: display,
                            target: link.display().to_string(),
                        })
                    }
                }
                remove_existing(&target).map_err(io)?;
                fs_err::hard_link(&source, &target).map_err(io)?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            _ => return Err(UploadError::SpecialFile(display)),
        }
    }
    Ok(())
}

/// The path with `.` removed, or `None` if it is absolute or has `..` anywhere.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at `rel` pointing to `link` resolves (lexically) inside the project.
fn link_stays_inside(rel: &Path, link: &Path) -> bool {
    if link.is_absolute() || link.as_os_str().is_empty() {
        return false;
    }
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Creates the parent directories of `rel` under `dest`, refusing to pass through a symlink.
fn ensure_parents(dest: &Path, rel: &Path, display: &str) -> Result<(), UploadError> {
    let mut dir = dest.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in &parents[..parents.len().saturating_sub(1)] {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UploadError::ThroughSymlink(display.to_string()))
            }
            Ok(_) => {
                fs_err::remove_file(&dir).map_err(|source| UploadError::Io {
                    path: dir.clone(),
                    source,
                })?;
                fs_err::create_dir(&dir).map_err(|source| UploadError::Io {
                    path: dir.clone(),
                    source,
                })?;
            }
            Err(_) => fs_err::create_dir(&dir).map_err(|source| UploadError::Io {
                path: dir.clone(),
                source,
            })?,
        }
    }
    Ok(())
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Removes whatever is at `path` (a later entry replaces an earlier one, as tar does).
fn remove_existing(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_compressed_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
    };

    use ci_e2e::tarball::{gz as archive, Entry as E};

    fn unpack_into(entries: &[E]) -> (tempfile::TempDir, Result<(), UploadError>) {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("project");
        std::fs::create_dir(&dest).unwrap();
        let result = unpack(&archive(entries)[..], &dest, LIMITS);
        (root, result)
    }

    #[test]
    fn unpacks_files_dirs_and_inner_links() {
        let (root, r) = unpack_into(&[
            E::Dir("./src/"),
            E::File("./src/a.py", b"print(1)\n".to_vec()),
            E::Symlink("src/b.py", "a.py"),
            E::Hardlink("src/c.py", "src/a.py"),
            E::Symlink("up", "src/../src"),
        ]);
        r.unwrap();
        let p = root.path().join("project");
        assert_eq!(
            std::fs::read_to_string(p.join("src/b.py")).unwrap(),
            "print(1)\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("src/c.py")).unwrap(),
            "print(1)\n"
        );
    }

    fn rejected(entries: &[E]) -> UploadError {
        let (root, r) = unpack_into(entries);
        let names: Vec<_> = walk(root.path());
        assert!(
            names.iter().all(|n| n.starts_with("project")),
            "wrote outside: {names:?}"
        );
        r.unwrap_err()
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out
    }

    #[test]
    fn refuses_escapes_and_special_files() {
        assert!(matches!(
            rejected(&[E::File("../evil", b"x".to_vec())]),
            UploadError::PathEscapes(_)
        ));
        assert!(matches!(
            rejected(&[E::File("a/../../evil", b"x".to_vec())]),
            UploadError::PathEscapes(_)
        ));
        assert!(matches!(
            rejected(&[E::File("/etc/evil", b"x".to_vec())]),
            UploadError::PathEscapes(_)
        ));
        assert!(matches!(
            rejected(&[E::Symlink("l", "/etc/passwd")]),
            UploadError::LinkEscapes { .. }
        ));
        assert!(matches!(
            rejected(&[E::Symlink("a/l", "../../x")]),
            UploadError::LinkEscapes { .. }
        ));
        assert!(matches!(
            rejected(&[E::Hardlink("h", "/etc/passwd")]),
            UploadError::LinkEscapes { .. }
        ));
        assert!(matches!(
            rejected(&[E::Hardlink("h", "../x")]),
            UploadError::LinkEscapes { .. }
        ));
        assert!(matches!(
            rejected(&[E::Fifo("f")]),
            UploadError::SpecialFile(_)
        ));
        // A symlink that stays inside, then a write through it, is refused too.
        assert!(matches!(
            rejected(&[
                E::Dir("d"),
                E::Symlink("l", "d"),
                E::File("l/x", b"x".to_vec())
            ]),
            UploadError::ThroughSymlink(_)
        ));
    }

    #[test]
    fn enforces_caps() {
        let big = vec![0u8; 2 << 20];
        assert!(matches!(
            rejected(&[E::File("big", big)]),
            UploadError::TooLarge(_)
        ));
        let names: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
        let entries: Vec<E> = names.iter().map(|n| E::File(n, Vec::new())).collect();
        assert!(matches!(
            rejected(&entries),
            UploadError::TooManyEntries(100)
        ));
        let (_root, r) = {
            let root = tempfile::tempdir().unwrap();
            let r = unpack(&b"not a tarball"[..], root.path(), LIMITS);
            (root, r)
        };
        assert!(matches!(r, Err(UploadError::Malformed(_))));
    }
}
