//! Packs what a job's tests wrote to `/artifacts` into one tar.gz, kept with the job's results.
//!
//! The directory was written by the job, so it is read as hostile: only regular files and
//! directories are packed (a symlink, fifo or device is left out and counted), files are
//! opened as [`crate::jobfile`] opens what a job wrote, the walk is bounded in depth and
//! entries, and no more than the cap of file bytes goes in. Entries go in name order, so
//! which files fit under the cap does not depend on the order the disk lists them in.
//! Blocking: runs on the blocking pool.

use std::io::{Read, Write};
use std::path::Path;

use crate::jobfile::JobFile;

/// Entries (files, directories, and those left out) past which the walk stops.
pub const MAX_ENTRIES: u64 = 100_000;

/// Directories deeper than this are left out.
pub const MAX_DEPTH: usize = 64;

/// What went into the archive, and what did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    pub files: u64,
    /// File bytes packed (before compression).
    pub bytes: u64,
    /// Entries left out: past the cap, too deep, too many, or not a file or directory.
    pub left_out: u64,
}

/// Packs the tree under `dir` into a tar.gz written to `out`, at most `cap` bytes of files.
/// A file that does not fit is left out and smaller ones after it still go in.
pub fn pack(dir: &Path, out: impl Write, cap: u64) -> std::io::Result<Packed> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut packed = Packed::default();
    let mut seen = 0u64;
    walk(dir, Path::new(""), 0, cap, &mut tar, &mut packed, &mut seen)?;
    tar.into_inner()?.finish()?.flush()?;
    Ok(packed)
}

fn walk<W: Write>(
    dir: &Path,
    rel: &Path,
    depth: usize,
    cap: u64,
    tar: &mut tar::Builder<W>,
    packed: &mut Packed,
    seen: &mut u64,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            packed.left_out += 1;
            continue;
        }
        let (path, rel) = (dir.join(&name), rel.join(&name));
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_dir() && depth < MAX_DEPTH {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(mtime(&meta));
            header.set_size(0);
            tar.append_data(&mut header, &rel, std::io::empty())?;
            walk(&path, &rel, depth + 1, cap, tar, packed, seen)?;
        } else if kind.is_file() && packed.bytes.saturating_add(meta.len()) <= cap {
            let JobFile::Regular(file) = crate::jobfile::open(&path)? else {
                packed.left_out += 1;
                continue;
            };
            let len = file.metadata()?.len();
            if packed.bytes.saturating_add(len) > cap {
                packed.left_out += 1;
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_mtime(mtime(&meta));
            header.set_size(len);
            tar.append_data(&mut header, &rel, file.take(len))?;
            packed.files += 1;
            packed.bytes += len;
        } else {
            packed.left_out += 1;
        }
    }
    Ok(())
}

fn mtime(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    u64::try_from(meta.mtime()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, u64)> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        tar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                (name, e.size())
            })
            .collect()
    }

    #[test]
    fn packs_files_and_directories_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("htmlcov/sub")).unwrap();
        std::fs::write(root.join("coverage.xml"), "<coverage/>").unwrap();
        std::fs::write(root.join("htmlcov/index.html"), "<html/>").unwrap();
        std::fs::write(root.join("htmlcov/sub/a.html"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("shadow")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut out = Vec::new();
        let packed = pack(root, &mut out, 1 << 20).unwrap();
        assert_eq!(
            packed,
            Packed {
                files: 3,
                bytes: 19,
                left_out: 2
            }
        );
        assert_eq!(
            entries(&out),
            [
                ("coverage.xml".to_string(), 11),
                ("htmlcov".to_string(), 0),
                ("htmlcov/index.html".to_string(), 7),
                ("htmlcov/sub".to_string(), 0),
                ("htmlcov/sub/a.html".to_string(), 1),
            ]
        );
    }

    #[test]
    fn what_fits_under_the_cap_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [("a", 600), ("b", 600), ("c", 300)] {
            std::fs::write(dir.path().join(name), vec![b'x'; len]).unwrap();
        }
        let mut out = Vec::new();
        let packed = pack(dir.path(), &mut out, 1000).unwrap();
        assert_eq!((packed.files, packed.bytes, packed.left_out), (2, 900, 1));
        let names: Vec<_> = entries(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn deep_trees_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 3 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), "x").unwrap();
        let mut out = Vec::new();
        let packed = pack(dir.path(), &mut out, 1 << 20).unwrap();
        assert_eq!(packed.files, 0);
        assert_eq!(packed.left_out, 1);
        assert_eq!(entries(&out).len(), MAX_DEPTH);
    }

    #[test]
    fn an_empty_directory_packs_to_an_empty_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        assert_eq!(pack(dir.path(), &mut out, 10).unwrap(), Packed::default());
        assert!(entries(&out).is_empty());
    }
}
