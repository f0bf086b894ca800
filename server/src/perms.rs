//! Modes of what only the server's user may read: the database (emails, key hashes), the
//! job logs and the admin key. Jobs never need them (they see only the image, the project
//! and its layers), so they are 0700 directories and 0600 files; a data dir made by an
//! older version, whose were 0755 and 0644, is tightened at start.

use std::fs::Permissions;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Makes `dir` (and its parents, as usual) if missing, with mode 0700; an existing one
/// open to others loses the group and other bits on itself and everything inside.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs_err::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fs_err_io(dir, "create", e)),
    }
    let mode = mode_of(dir)?;
    if mode & 0o077 == 0 {
        // Private already: what is inside was made private with it, or since.
        return Ok(());
    }
    // The contents first, the directory last: a start interrupted halfway tries again.
    for entry in fs_err::read_dir(dir)? {
        tighten(&entry?.path())?;
    }
    set_mode(dir, mode & 0o700)
}

/// Takes the group and other bits off `path` (never following a symlink), and off
/// everything under it if it is a directory. A missing path is fine.
pub fn tighten(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fs_err_io(path, "inspect", e)),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        for entry in fs_err::read_dir(path)? {
            tighten(&entry?.path())?;
        }
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        set_mode(path, mode & 0o700)?;
    }
    Ok(())
}

fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(fs_err::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    fs_err::set_permissions(path, Permissions::from_mode(mode))
}

/// An `io::Error` that names the path, as `fs_err`'s do.
fn fs_err_io(path: &Path, what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("failed to {what} {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        mode_of(p).unwrap()
    }

    #[test]
    fn new_dirs_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/db");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // Idempotent.
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn an_older_open_dir_is_tightened_with_its_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("a.log"), "x").unwrap();
        std::fs::write(dir.join("blobs/1"), "x").unwrap();
        std::fs::write(tmp.path().join("outside"), "x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), dir.join("link")).unwrap();
        for (p, m) in [
            (dir.clone(), 0o755),
            (dir.join("blobs"), 0o755),
            (dir.join("a.log"), 0o644),
            (dir.join("blobs/1"), 0o664),
            (tmp.path().join("outside"), 0o644),
        ] {
            set_mode(&p, m).unwrap();
        }
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("blobs")), 0o700);
        assert_eq!(mode(&dir.join("a.log")), 0o600);
        assert_eq!(mode(&dir.join("blobs/1")), 0o600);
        // A link is not followed out of the directory.
        assert_eq!(mode(&tmp.path().join("outside")), 0o644);
    }

    #[test]
    fn tighten_keeps_the_owner_bits_and_skips_missing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("admin.key");
        std::fs::write(&key, "k").unwrap();
        set_mode(&key, 0o644).unwrap();
        tighten(&key).unwrap();
        assert_eq!(mode(&key), 0o600);
        tighten(&tmp.path().join("missing")).unwrap();
    }
}
