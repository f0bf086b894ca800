//! `ci artifacts <id>`: download the files a job's tests wrote to `/artifacts` and unpack them
//! into a new or empty directory. The archive is the job's doing, so it is read as hostile:
//! regular files and directories only, every name relative and free of `..`, nothing that
//! existed before touched.

use std::io::{Read, Seek};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

use crate::client::Client;
use crate::exit;
use crate::summary::clean;
use crate::table::human_size;

#[derive(clap::Args, Debug)]
pub struct ArtifactsArgs {
    /// The job id.
    pub id: String,

    /// Where to unpack them: a directory that does not exist yet, or an empty one
    /// [default: ./ci-artifacts-ID].
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
}

pub async fn run(client: &Client, args: ArtifactsArgs) -> anyhow::Result<u8> {
    let dir = match args.output {
        Some(dir) => dir,
        None => default_dir(&args.id)?,
    };
    let target = Target::claim(&dir)?;
    // The download goes whole to an unnamed file in the target directory (on the disk that
    // will hold the files anyway) before anything is unpacked: the archive never sits in
    // memory, and a download that breaks off leaves no half-unpacked tree behind. (The chunks
    // are written from the async thread: `ci` runs this one task, nothing waits on it.)
    let mut archive = tempfile::tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    client.artifacts(&args.id, &mut archive).await?;
    let into = dir.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        archive
            .rewind()
            .context("cannot read the downloaded archive")?;
        unpack(archive, &into)
    })
    .await
    .context("the unpacking task failed")??;
    target.keep();
    eprintln!("ci: {} in {}", unpacked.describe(), dir.display());
    Ok(exit::SUCCESS)
}

/// `./ci-artifacts-ID`, for an id that can be part of a file name.
fn default_dir(id: &str) -> anyhow::Result<PathBuf> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if id.is_empty() || !id.chars().all(plain) {
        bail!("invalid job id {:?}", clean(id));
    }
    Ok(PathBuf::from(format!("ci-artifacts-{id}")))
}

/// The directory being unpacked into, which was absent or empty: until [`Target::keep`], it
/// is put back as it was when dropped (removed, or emptied), so that a failure leaves nothing.
struct Target {
    dir: PathBuf,
    existed: bool,
    kept: bool,
}

impl Target {
    /// Checks that `dir` is absent or an empty directory, and creates it if absent.
    fn claim(dir: &Path) -> anyhow::Result<Target> {
        let existed = match fs_err::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
            Ok(meta) if !meta.is_dir() => {
                bail!("{} exists and is not a directory", dir.display())
            }
            Ok(_) => {
                if fs_err::read_dir(dir)?.next().is_some() {
                    bail!(
                        "{} is not empty: choose a new or empty directory with -o DIR",
                        dir.display()
                    );
                }
                true
            }
        };
        if !existed {
            fs_err::create_dir_all(dir)?;
        }
        Ok(Target {
            dir: dir.to_path_buf(),
            existed,
            kept: false,
        })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Best effort: the error that brought us here is the one to report.
        if !self.existed {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else if let Ok(entries) = std::fs::read_dir(&self.dir) {
            // It was empty: everything in it is ours.
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = match entry.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
            }
        }
    }
}

/// What an archive held.
#[derive(Debug, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
}

impl Unpacked {
    /// `3 files (12.5 KiB)`.
    fn describe(&self) -> String {
        let s = if self.files == 1 { "" } else { "s" };
        format!("{} file{s} ({})", self.files, human_size(self.bytes))
    }
}

/// Unpacks a tar.gz into `dir`, an empty directory: only regular files and directories, each
/// under `dir` by a relative name without `..`. Links, devices and fifos are refused, not
/// skipped: the archive is then not what the server makes. Blocking.
pub fn unpack(archive: impl Read, dir: &Path) -> anyhow::Result<Unpacked> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut unpacked = Unpacked { files: 0, bytes: 0 };
    let unreadable = || "cannot read the artifacts' archive";
    for entry in tar.entries().with_context(unreadable)? {
        let mut entry = entry.with_context(unreadable)?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // pax metadata for the whole archive, not a file.
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let shown = clean(&String::from_utf8_lossy(&raw));
        let rel = relative(&raw).with_context(|| format!("refused entry {shown:?}"))?;
        let path = dir.join(&rel);
        match kind {
            tar::EntryType::Directory => fs_err::create_dir_all(&path)?,
            tar::EntryType::Regular => {
                if let Some(parent) = path.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                // `dir` was empty and only directories and regular files are made in it, so
                // no symlink can be on the way; `create_new` (O_EXCL) would not follow one
                // at the last name anyway, and refuses a name given twice.
                let mode = if entry.header().mode().unwrap_or(0o644) & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let mut file = {
                    use fs_err::os::unix::fs::OpenOptionsExt;
                    fs_err::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&path)?
                };
                let size = entry.size();
                let written = std::io::copy(&mut entry, &mut file)
                    .with_context(|| format!("cannot unpack {shown:?}"))?;
                if written != size {
                    bail!("the archive ends inside {shown:?} ({written} of {size} bytes)");
                }
                unpacked.files += 1;
                unpacked.bytes += size;
            }
            other => bail!(
                "refused entry {shown:?}: it is a {}, and only regular files and directories are unpacked",
                kind_name(other)
            ),
        }
    }
    Ok(unpacked)
}

/// An entry's name as a path under the target: relative, no `..`, not empty.
fn relative(raw: &[u8]) -> anyhow::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut rel = PathBuf::new();
    for part in Path::new(std::ffi::OsStr::from_bytes(raw)).components() {
        match part {
            Component::Normal(name) => rel.push(name),
            Component::CurDir => {}
            Component::ParentDir => bail!("its name holds `..`"),
            Component::RootDir | Component::Prefix(_) => bail!("its name is absolute"),
        }
    }
    if rel.as_os_str().is_empty() {
        bail!("it has no name");
    }
    Ok(rel)
}

fn kind_name(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Symlink => "symbolic link".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "fifo".into(),
        other => format!("{other:?} entry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// A tar.gz with names and link targets written raw into the headers (`set_path` refuses
    /// the hostile ones).
    fn archive(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for e in entries {
            let (name, kind, data, link, mode): (&str, _, &[u8], _, u32) = match e {
                E::File(n, d, m) => (n, tar::EntryType::Regular, d, None, *m),
                E::Dir(n) => (n, tar::EntryType::Directory, b"", None, 0o755),
                E::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", Some(t), 0o777),
                E::Hardlink(n, t) => (n, tar::EntryType::Link, b"", Some(t), 0o644),
                E::Fifo(n) => (n, tar::EntryType::Fifo, b"", None, 0o644),
            };
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(t) = link {
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpacks_files_and_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let target = Target::claim(&dir).unwrap();
        let gz = archive(&[
            E::Dir("reports/"),
            E::File("reports/cov.xml", b"<coverage/>", 0o644),
            E::File("./deep/er/run.sh", b"#!/bin/sh\n", 0o700),
            E::File("empty", b"", 0o600),
            E::Dir("nothing-in-it"),
        ]);
        let unpacked = unpack(&gz[..], &dir).unwrap();
        target.keep();
        assert_eq!(
            unpacked,
            Unpacked {
                files: 3,
                bytes: 21
            }
        );
        assert_eq!(unpacked.describe(), "3 files (21 B)");
        let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
        assert_eq!(read("reports/cov.xml"), b"<coverage/>");
        assert_eq!(read("deep/er/run.sh"), b"#!/bin/sh\n");
        assert_eq!(read("empty"), b"");
        assert!(dir.join("nothing-in-it").is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode();
        assert_ne!(mode("deep/er/run.sh") & 0o100, 0);
        assert_eq!(mode("empty") & 0o111, 0);
    }

    #[test]
    fn refuses_what_could_escape_or_is_not_a_file() {
        for (entries, why) in [
            (vec![E::File("../x", b"x", 0o644)], "`..`"),
            (vec![E::File("a/../../x", b"x", 0o644)], "`..`"),
            (vec![E::File("/abs", b"x", 0o644)], "absolute"),
            (vec![E::Dir("/etc/")], "absolute"),
            (vec![E::Symlink("l", "/etc")], "symbolic link"),
            (
                vec![E::File("a", b"x", 0o644), E::Hardlink("h", "a")],
                "hard link",
            ),
            (vec![E::Fifo("f")], "fifo"),
            (
                vec![E::File("a", b"1", 0o644), E::File("a", b"2", 0o644)],
                "exists",
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("out");
            let target = Target::claim(&dir).unwrap();
            let e = unpack(&archive(&entries)[..], &dir).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{why}: {e:#}");
            drop(target);
            // Nothing is left, and nothing was written beside the target.
            assert!(!dir.exists(), "{why}");
            let beside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
            assert!(beside.is_empty(), "{why}: {beside:?}");
        }
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let gz = archive(&[E::File("big", &[7u8; 10_000], 0o644)]);
        let tmp = tempfile::tempdir().unwrap();
        assert!(unpack(&gz[..gz.len() / 2], tmp.path()).is_err());
    }

    #[test]
    fn the_target_is_new_or_empty() {
        let tmp = tempfile::tempdir().unwrap();
        // Empty: used, and emptied again on failure, never removed.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let target = Target::claim(&empty).unwrap();
        std::fs::write(empty.join("partial"), "x").unwrap();
        drop(target);
        assert!(empty.is_dir());
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
        // Not empty, or not a directory: refused, untouched.
        std::fs::write(empty.join("mine"), "keep").unwrap();
        let e = Target::claim(&empty).err().unwrap();
        assert!(e.to_string().contains("is not empty"), "{e}");
        assert_eq!(std::fs::read(empty.join("mine")).unwrap(), b"keep");
        let e = Target::claim(&empty.join("mine")).err().unwrap();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
        assert_eq!(Unpacked { files: 1, bytes: 5 }.describe(), "1 file (5 B)");
        assert_eq!(
            default_dir("382eef73d021").unwrap(),
            PathBuf::from("ci-artifacts-382eef73d021")
        );
        assert!(default_dir("../x").is_err());
        assert!(default_dir("").is_err());
    }

    async fn ci_artifacts(server: &crate::fake::Fake, dir: &Path) -> u8 {
        use clap::Parser;
        let argv = [
            "ci",
            "--server",
            &server.url,
            "--api-key",
            "ci_test",
            "artifacts",
            "j",
            "-o",
            dir.to_str().unwrap(),
        ];
        crate::run(crate::Cli::try_parse_from(argv).unwrap()).await
    }

    #[tokio::test]
    async fn downloads_and_unpacks() {
        use crate::fake::{Fake, Reply};
        let gz = archive(&[E::File("out/log.txt", b"hello", 0o644)]);
        let server = Fake::start(move |req| match req.target.as_str() {
            "/v1/jobs/j/artifacts" => Reply::bytes(200, "application/gzip", gz.clone()),
            _ => Reply::error(404, "job j kept no artifacts"),
        })
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("got");
        assert_eq!(ci_artifacts(&server, &dir).await, exit::SUCCESS);
        assert_eq!(std::fs::read(dir.join("out/log.txt")).unwrap(), b"hello");
        // The download left nothing else behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["out"]);
        // Again into the same, now full, directory: refused before any request.
        let before = server.requests().len();
        assert_eq!(ci_artifacts(&server, &dir).await, exit::CLIENT_ERROR);
        assert_eq!(server.requests().len(), before);
    }

    #[tokio::test]
    async fn a_job_without_artifacts_is_an_error_and_leaves_nothing() {
        use crate::fake::{Fake, Reply};
        let server = Fake::start(|_| Reply::error(404, "job j kept no artifacts")).await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("got");
        assert_eq!(ci_artifacts(&server, &dir).await, exit::CLIENT_ERROR);
        assert!(!dir.exists());
    }
}
