//! Applies layer tarballs to a directory the way overlayfs stacks them, without ever writing
//! outside that directory.
//!
//! How writes stay inside `dest`, whatever the layers contain (all of it through
//! [`crate::safe_path`], which the upload unpacker of `ci-server` shares):
//!
//! - An entry's own path is cleaned lexically ([`RelPath::parse`]): a leading `/` means
//!   `dest`, and a path with a `..` component (or a NUL) is skipped (no tool that builds layers
//!   writes one).
//! - Its parent directories are then opened one name at a time from `dest`, never following a
//!   symlink ([`Dir::resolve_in_root`]). A symlink met on the way is *resolved inside `dest`*,
//!   as if `dest` were `/` (what the link means once the container runs, and what containerd's
//!   `fs.RootPath` and `securejoin` do): an absolute target restarts at `dest`, and `..` never
//!   climbs above it. So layer 1 `etc -> /` or `evil -> ../../..` then layer 2 `evil/x` writes
//!   `dest/x`.
//! - The entry is made in the parent's open directory with `O_CREAT|O_EXCL`, `mkdirat`,
//!   `symlinkat` or `linkat`, none of which follows a symlink at the name; what is there is
//!   removed when they find it taken (a directory over a directory is merged instead).
//! - Metadata is set through the open file, or with the no-follow `*at` calls, or through a
//!   directory opened again from `dest` without following a symlink.
//!
//! `tar`'s own `unpack` is not used: it follows symlinks that an earlier layer left in the tree.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use tar::EntryType;
use tracing::{debug, warn};

use crate::safe_path::{is_errno, Absolute, Dir, Kind, Missing, RelPath, Rules};
use crate::Error;

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Entry paths of a layer: `/` is the image's root, and no caps beyond the kernel's.
const LAYER_PATHS: Rules = Rules {
    absolute: Absolute::Inside,
    limits: None,
};

/// Mode of the directories made for an entry's missing parents.
const DIR_MODE: u32 = 0o755;

/// Applies one uncompressed layer tarball on top of `dest`, which holds the layers below it.
///
/// Whiteouts (`.wh.<name>`) remove what lower layers put at `<name>`; an opaque marker
/// (`.wh..wh..opq`) empties its directory of lower-layer content but keeps what this layer puts
/// there. Modes, mtimes, symlinks (targets kept verbatim) and hard links are kept; owners only
/// when running as root. Device nodes and fifos are skipped, and nothing is ever written
/// outside `dest` (see the module docs).
pub fn unpack_layer<R: Read>(layer_tar: R, dest: &Path) -> Result<(), Error> {
    let unpack_error = |source| Error::Unpack {
        path: dest.to_owned(),
        source,
    };
    let mut layer = Layer::new(dest).map_err(unpack_error)?;
    let mut archive = tar::Archive::new(layer_tar);
    let entries = archive.entries().map_err(unpack_error)?;
    for entry in entries {
        let mut entry = entry.map_err(unpack_error)?;
        let name = PathBuf::from(OsString::from_vec(entry.path_bytes().into_owned()));
        layer
            .apply(&name, &mut entry)
            .map_err(|source| Error::Unpack { path: name, source })?;
    }
    layer.finish().map_err(unpack_error)
}

/// Owner, mode and mtime of an entry, read from its header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn from_header(header: &tar::Header) -> io::Result<Self> {
        // Some writers leave owner and time fields empty; like GNU tar, read those as 0.
        let id = |v: io::Result<u64>| {
            u32::try_from(v.unwrap_or(0)).map_err(|_| invalid("uid or gid out of range"))
        };
        Ok(Meta {
            mode: header.mode()? & 0o7777,
            uid: id(header.uid())?,
            gid: id(header.gid())?,
            mtime: i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(i64::MAX),
        })
    }
}

struct Layer {
    /// `dest`, open.
    root: Dir,
    /// Paths this layer created (relative to `dest`, symlinks resolved) and their ancestors.
    /// Whiteouts and opaque markers only hide lower layers (image-spec `layer.md`), so they
    /// spare these whatever order the tarball lists them in.
    ours: HashSet<PathBuf>,
    /// Directory modes and mtimes are set once the whole layer is written: adding a child
    /// would change the mtime, and a read-only mode would refuse the children.
    dirs: Vec<(PathBuf, Meta)>,
    /// Only root may give files away, and setuid/setgid bits on files the unprivileged server
    /// user owns would hand its identity to whoever runs them, so both need root.
    as_root: bool,
    buf: Vec<u8>,
}

impl Layer {
    fn new(dest: &Path) -> io::Result<Self> {
        Ok(Layer {
            root: Dir::open(dest)?,
            ours: HashSet::new(),
            dirs: Vec::new(),
            as_root: nix::unistd::geteuid().is_root(),
            buf: vec![0; 256 * 1024],
        })
    }

    fn apply<R: Read>(&mut self, name: &Path, entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
        let rel = match RelPath::parse(name.as_os_str().as_bytes(), LAYER_PATHS) {
            Ok(rel) => rel,
            Err(reason) => {
                warn!(entry = %name.display(), "skipping a layer entry whose path {reason}");
                return Ok(());
            }
        };
        // The layer's own root (`./`): `dest` is already there, and its mode is ours to pick.
        let Some((parents, file_name)) = rel.split_last() else {
            return Ok(());
        };
        if file_name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parents, file_name, name);
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            // A container gets its devices from the runtime; nodes in an image are not needed
            // and could not be made without CAP_MKNOD anyway.
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                debug!(entry = %name.display(), ?kind, "skipping a device node or fifo");
                return Ok(());
            }
            other => {
                debug!(entry = %name.display(), kind = ?other, "skipping an entry of unsupported type");
                return Ok(());
            }
        }
        let meta = Meta::from_header(entry.header())?;

        // Link targets are checked before anything at the entry's path is removed.
        let hard_link_source = match kind {
            EntryType::Link => match self.hardlink_target(entry, name)? {
                Some(source) => Some(source),
                None => return Ok(()),
            },
            _ => None,
        };
        let symlink_target = match kind {
            EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) if !target.is_empty() => Some(OsString::from_vec(target.into_owned())),
                _ => {
                    warn!(entry = %name.display(), "skipping a symlink without a target");
                    return Ok(());
                }
            },
            _ => None,
        };

        let (parent, parent_rel) = self
            .root
            .resolve_in_root(parents, Missing::Make(DIR_MODE))?
            .expect("resolve_in_root makes what is missing");
        let rel = parent_rel.join(file_name);

        if kind == EntryType::Directory {
            if let Err(e) = parent.make_or_open_dir(file_name, DIR_MODE) {
                if !is_errno(&e, Errno::ENOTDIR) {
                    return Err(e);
                }
                // Anything but a directory goes, a symlink without a look at where it leads.
                parent.remove(file_name)?;
                parent.make_dir(file_name, DIR_MODE)?;
            }
            self.chown(&parent, file_name, &meta)?;
            self.dirs.push((rel.clone(), meta));
            self.mark_ours(rel);
            return Ok(());
        }

        // Like Docker: anything else at the path is replaced, a directory with all it holds.
        match kind {
            EntryType::Link => {
                // The inode already carries its owner, mode and mtime.
                let (from, source) = hard_link_source.expect("checked above");
                parent.replace(file_name, |dir, name| dir.hard_link(name, &from, &source))?;
            }
            EntryType::Symlink => {
                // Kept verbatim, absolute or not: it is resolved inside the container.
                let target = symlink_target.expect("checked above");
                parent.replace(file_name, |dir, name| dir.symlink(name, &target))?;
                self.chown(&parent, file_name, &meta)?;
                parent.set_mtime(file_name, meta.mtime)?;
            }
            _ => {
                let file = parent.replace(file_name, |dir, name| dir.create_file(name, 0o600))?;
                self.write_file(file, &rel, entry, &meta)?;
            }
        }
        self.mark_ours(rel);
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        mut file: fs::File,
        rel: &Path,
        entry: &mut R,
        meta: &Meta,
    ) -> io::Result<()> {
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            file.write_all(&self.buf[..n])?;
        }
        // Owner before mode: chown(2) clears the setuid and setgid bits.
        if self.as_root {
            ignore_unmapped(
                std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)),
                rel,
            )?;
        }
        file.set_permissions(fs::Permissions::from_mode(self.mode(meta)))?;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.mtime.max(0) as u64);
        file.set_times(fs::FileTimes::new().set_accessed(mtime).set_modified(mtime))?;
        Ok(())
    }

    fn mode(&self, meta: &Meta) -> u32 {
        if self.as_root {
            meta.mode
        } else {
            meta.mode & 0o1777
        }
    }

    fn chown(&self, dir: &Dir, name: &OsStr, meta: &Meta) -> io::Result<()> {
        if !self.as_root {
            return Ok(());
        }
        ignore_unmapped(dir.chown(name, meta.uid, meta.gid), Path::new(name))
    }

    /// The directory and name inside `dest` a hard link points at, or `None` (logged) when it
    /// must be skipped.
    fn hardlink_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        name: &Path,
    ) -> io::Result<Option<(Dir, OsString)>> {
        let target = PathBuf::from(OsString::from_vec(
            entry
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default(),
        ));
        let Some(clean) = clean(&target) else {
            warn!(entry = %name.display(), target = %target.display(), "skipping a hard link whose target climbs out with `..`");
            return Ok(None);
        };
        let Some((parents, file_name)) = clean.split_last() else {
            warn!(entry = %name.display(), "skipping a hard link to the root directory");
            return Ok(None);
        };
        let missing = || {
            warn!(entry = %name.display(), target = %target.display(), "skipping a hard link to a missing file");
            Ok(None)
        };
        let dir = match self.root.resolve_in_root(parents, Missing::Stop) {
            Ok(Some((dir, _))) => dir,
            Ok(None) | Err(_) => return missing(),
        };
        match dir.kind(file_name)? {
            Some(Kind::Dir) => {
                warn!(entry = %name.display(), target = %target.display(), "skipping a hard link to a directory");
                Ok(None)
            }
            Some(_) => Ok(Some((dir, file_name.to_os_string()))),
            None => missing(),
        }
    }

    fn whiteout(&mut self, parents: &Path, file_name: &OsStr, name: &Path) -> io::Result<()> {
        let bytes = file_name.as_bytes();
        let Some((dir, dir_rel)) = self.root.resolve_in_root(parents, Missing::Stop)? else {
            return Ok(()); // Nothing below to hide.
        };
        if bytes == OPAQUE {
            self.mark_ours(dir_rel.clone());
            return self.clear_lower(&dir, &dir_rel);
        }
        if bytes.starts_with(b".wh..wh.") {
            // aufs bookkeeping such as `.wh..wh.plnk`, which Docker skips too.
            debug!(entry = %name.display(), "skipping aufs metadata");
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            warn!(entry = %name.display(), "skipping a whiteout that names no file");
            return Ok(());
        }
        if self.ours.contains(&dir_rel.join(hidden)) {
            return Ok(());
        }
        dir.remove(hidden)
    }

    /// Removes everything in `dir` (at `rel`) that no entry of this layer made, for an opaque
    /// marker.
    fn clear_lower(&self, dir: &Dir, rel: &Path) -> io::Result<()> {
        for (name, kind) in dir.names()? {
            let child = rel.join(&name);
            if !self.ours.contains(&child) {
                dir.remove(&name)?;
            } else if kind == Kind::Dir {
                self.clear_lower(&dir.open_dir(&name)?, &child)?;
            }
        }
        Ok(())
    }

    fn mark_ours(&mut self, rel: PathBuf) {
        let mut path = rel;
        // Ancestors of a path already present are present too, so stop at the first one.
        while !path.as_os_str().is_empty() && self.ours.insert(path.clone()) {
            path.pop();
        }
    }

    fn finish(self) -> io::Result<()> {
        for (rel, meta) in &self.dirs {
            // A later entry may have replaced the directory, or one of its parents, with a
            // symlink (`a/b/` then `a -> /etc`): nothing is set through it.
            let dir = match self.root.open_beneath(rel) {
                Ok(dir) => dir,
                Err(e)
                    if [Errno::ENOENT, Errno::ENOTDIR, Errno::ELOOP]
                        .iter()
                        .any(|&errno| is_errno(&e, errno)) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            dir.set_own_mode(self.mode(meta))?;
            dir.set_own_mtime(meta.mtime)?;
        }
        Ok(())
    }
}

/// A hard link's target as a path inside `dest` (a leading `/` is `dest`); `None` if it has a
/// `..` or a NUL.
fn clean(path: &Path) -> Option<RelPath> {
    RelPath::parse(path.as_os_str().as_bytes(), LAYER_PATHS).ok()
}

/// Root in a user namespace cannot give files to ids it has no mapping for (`EINVAL`), and
/// may lack CAP_CHOWN (`EPERM`); the files then stay the unpacker's, which is harmless.
fn ignore_unmapped(result: io::Result<()>, path: &Path) -> io::Result<()> {
    match result {
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EINVAL)) => {
            debug!(path = %path.display(), error = %e, "keeping the unpacker as owner");
            Ok(())
        }
        other => other,
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Builds a layer tarball in memory. Names go into the header bytes directly, because
    /// `tar::Header::set_path` refuses the `..` and absolute names these tests need.
    struct LayerTar(tar::Builder<Vec<u8>>);

    impl LayerTar {
        fn new() -> Self {
            LayerTar(tar::Builder::new(Vec::new()))
        }

        fn entry(
            mut self,
            name: &str,
            kind: EntryType,
            mode: u32,
            link: &str,
            data: &[u8],
        ) -> Self {
            let mut header = tar::Header::new_gnu();
            let field = &mut header.as_old_mut().name;
            field.fill(0);
            field[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_mtime(1_700_000_000);
            header.set_uid(1234);
            header.set_gid(4321);
            header.set_size(data.len() as u64);
            if !link.is_empty() {
                header.set_link_name_literal(link).unwrap();
            }
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }

        fn dir(self, name: &str) -> Self {
            self.entry(name, EntryType::Directory, 0o755, "", b"")
        }

        fn file(self, name: &str, data: &str) -> Self {
            self.entry(name, EntryType::Regular, 0o644, "", data.as_bytes())
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            self.entry(name, EntryType::Symlink, 0o777, target, b"")
        }

        fn hardlink(self, name: &str, target: &str) -> Self {
            self.entry(name, EntryType::Link, 0o644, target, b"")
        }

        fn try_apply(self, dest: &Path) -> Result<(), Error> {
            let bytes = self.0.into_inner().unwrap();
            unpack_layer(&bytes[..], dest)
        }

        fn apply(self, dest: &Path) {
            self.try_apply(dest).unwrap();
        }
    }

    /// `outer/root` is the destination; anything that escapes lands in `outer`, which the
    /// tests check stays empty, so a bug cannot write anywhere else on the machine.
    struct Sandbox {
        outer: tempfile::TempDir,
        root: PathBuf,
    }

    impl Sandbox {
        fn new() -> Self {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("root");
            fs::create_dir(&root).unwrap();
            Sandbox { outer, root }
        }

        fn outer(&self) -> &Path {
            self.outer.path()
        }

        fn read(&self, rel: &str) -> Option<String> {
            fs::read_to_string(self.root.join(rel)).ok()
        }

        fn exists(&self, rel: &str) -> bool {
            fs::symlink_metadata(self.root.join(rel)).is_ok()
        }

        /// Everything in `outer` besides `root` (and what the test put there itself).
        fn escaped(&self, allowed: &[&str]) -> Vec<String> {
            fs::read_dir(self.outer())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "root" && !allowed.contains(&n.as_str()))
                .collect()
        }
    }

    #[test]
    fn files_dirs_symlinks_and_metadata() {
        let s = Sandbox::new();
        LayerTar::new()
            .dir("./")
            .dir("./usr/")
            .dir("usr/bin")
            .entry(
                "usr/bin/tool",
                EntryType::Regular,
                0o4755,
                "",
                b"#!/bin/sh\n",
            )
            .file("etc/deep/missing-parents", "x")
            .symlink("usr/bin/python", "/usr/local/bin/python3")
            .symlink("rel", "../../../../etc")
            .entry("ro", EntryType::Directory, 0o555, "", b"")
            .file("ro/inside", "child of a read-only dir")
            .entry("dev-null", EntryType::Char, 0o666, "", b"")
            .entry("fifo", EntryType::Fifo, 0o666, "", b"")
            .apply(&s.root);

        assert_eq!(s.read("usr/bin/tool").as_deref(), Some("#!/bin/sh\n"));
        assert_eq!(s.read("etc/deep/missing-parents").as_deref(), Some("x"));
        let tool = fs::metadata(s.root.join("usr/bin/tool")).unwrap();
        assert_eq!(tool.mtime(), 1_700_000_000);
        let as_root = nix::unistd::geteuid().is_root();
        assert_eq!(tool.mode() & 0o7777, if as_root { 0o4755 } else { 0o755 });
        if as_root {
            assert_eq!((tool.uid(), tool.gid()), (1234, 4321));
        }
        // Symlink targets are kept verbatim, even when they point outside.
        assert_eq!(
            fs::read_link(s.root.join("usr/bin/python")).unwrap(),
            Path::new("/usr/local/bin/python3")
        );
        assert_eq!(
            fs::read_link(s.root.join("rel")).unwrap(),
            Path::new("../../../../etc")
        );
        let link = fs::symlink_metadata(s.root.join("rel")).unwrap();
        assert_eq!(link.mtime(), 1_700_000_000);
        // Directory metadata is set after the children were written.
        let ro = fs::metadata(s.root.join("ro")).unwrap();
        assert_eq!(ro.mode() & 0o7777, 0o555);
        assert_eq!(ro.mtime(), 1_700_000_000);
        assert_eq!(
            s.read("ro/inside").as_deref(),
            Some("child of a read-only dir")
        );
        assert!(!s.exists("dev-null"));
        assert!(!s.exists("fifo"));
    }

    #[test]
    fn whiteouts_remove_lower_entries() {
        let s = Sandbox::new();
        LayerTar::new()
            .file("a/gone", "1")
            .file("a/kept", "2")
            .file("a/dir/deep/file", "3")
            .symlink("a/link", "/a/kept")
            .apply(&s.root);
        LayerTar::new()
            .file("a/.wh.gone", "")
            .file("a/.wh.dir", "")
            .file("a/.wh.link", "")
            .file("a/.wh.never-existed", "")
            .file("missing/.wh.x", "")
            .file("a/.wh..", "")
            .file("a/.wh.", "")
            .apply(&s.root);
        assert!(!s.exists("a/gone"));
        assert!(!s.exists("a/dir"));
        assert!(!s.exists("a/link"));
        // The link's target is not what was removed.
        assert_eq!(s.read("a/kept").as_deref(), Some("2"));
        // Whiteout files themselves never appear, and one for a missing dir makes nothing.
        assert!(!s.exists("a/.wh.gone"));
        assert!(!s.exists("missing"));
    }

    #[test]
    fn whiteout_spares_the_same_layer() {
        let s = Sandbox::new();
        LayerTar::new().file("d/f", "lower").apply(&s.root);
        // Invalid by the spec, but it must not lose this layer's file.
        LayerTar::new()
            .file("d/f", "upper")
            .file("d/.wh.f", "")
            .apply(&s.root);
        assert_eq!(s.read("d/f").as_deref(), Some("upper"));
    }

    #[test]
    fn opaque_dir_hides_lower_layers_only() {
        let s = Sandbox::new();
        LayerTar::new()
            .file("d/lower", "1")
            .file("d/sub/lower", "2")
            .file("d/replaced", "3")
            .file("other/untouched", "4")
            .apply(&s.root);
        LayerTar::new()
            .dir("d")
            .file("d/early", "before the marker")
            .file("d/sub/upper", "5")
            .file("d/.wh..wh..opq", "")
            .file("d/late", "after the marker")
            .file("d/replaced", "6")
            .apply(&s.root);
        assert!(!s.exists("d/lower"));
        assert!(!s.exists("d/sub/lower"));
        assert!(!s.exists("d/.wh..wh..opq"));
        assert_eq!(s.read("d/early").as_deref(), Some("before the marker"));
        assert_eq!(s.read("d/late").as_deref(), Some("after the marker"));
        assert_eq!(s.read("d/sub/upper").as_deref(), Some("5"));
        assert_eq!(s.read("d/replaced").as_deref(), Some("6"));
        assert_eq!(s.read("other/untouched").as_deref(), Some("4"));
    }

    #[test]
    fn hardlinks_share_the_inode_and_stay_inside() {
        let s = Sandbox::new();
        fs::write(s.outer().join("secret"), "outside").unwrap();
        LayerTar::new()
            .file("bin/perl5", "perl")
            .symlink("out", s.outer().to_str().unwrap())
            .symlink("up", "..")
            .symlink("to-secret", &format!("{}/secret", s.outer().display()))
            .apply(&s.root);
        LayerTar::new()
            .hardlink("bin/perl", "./bin/perl5")
            .hardlink("abs", "/bin/perl5")
            .hardlink("escape1", "../secret")
            .hardlink("escape2", "bin/../../secret")
            .hardlink("escape3", "out/secret")
            .hardlink("escape4", "up/secret")
            .hardlink("to-dir", "bin")
            .hardlink("missing", "nope")
            .hardlink("link-to-symlink", "to-secret")
            .apply(&s.root);
        // A link to a symlink is a second name for the symlink, not for what it points at.
        let linked = fs::symlink_metadata(s.root.join("link-to-symlink")).unwrap();
        assert!(linked.file_type().is_symlink());
        let a = fs::metadata(s.root.join("bin/perl")).unwrap();
        let b = fs::metadata(s.root.join("bin/perl5")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(s.read("abs").as_deref(), Some("perl"));
        for skipped in [
            "escape1", "escape2", "escape3", "escape4", "to-dir", "missing",
        ] {
            assert!(!s.exists(skipped), "{skipped}");
        }
        assert_eq!(fs::metadata(s.outer().join("secret")).unwrap().nlink(), 1);
    }

    #[test]
    fn dotdot_and_absolute_names_stay_inside() {
        let s = Sandbox::new();
        LayerTar::new()
            .file("../escape", "x")
            .file("a/../../escape", "x")
            .file("./../escape", "x")
            .file("/abs/file", "inside")
            .file("//twice/./dotted", "inside")
            .apply(&s.root);
        assert_eq!(s.escaped(&[]), Vec::<String>::new());
        assert_eq!(s.read("abs/file").as_deref(), Some("inside"));
        assert_eq!(s.read("twice/dotted").as_deref(), Some("inside"));
        assert!(!s.exists("escape"));
    }

    #[test]
    fn symlinked_parents_resolve_inside_dest() {
        let s = Sandbox::new();
        let outer = s.outer().to_str().unwrap().to_owned();
        // A symlink and then a write through it, in the same layer and in the next one.
        let results = [
            LayerTar::new()
                .symlink("evil", "..")
                .file("evil/same-layer", "x")
                .symlink("abs", &outer)
                .file("abs/same-layer-abs", "x")
                .try_apply(&s.root),
            LayerTar::new()
                .symlink("etc", "/")
                .symlink("deep", "a/b/../../../../..")
                .symlink("loop1", "loop2")
                .symlink("loop2", "loop1")
                .try_apply(&s.root),
            LayerTar::new()
                .file("evil/next-layer", "x")
                .file("etc/passwd", "root")
                .file("deep/deeper", "x")
                .dir("abs/made-dir")
                .hardlink("abs/linked", "etc/passwd")
                .symlink("abs/sym", "/whatever")
                .try_apply(&s.root),
        ];
        // Checked first, so that a regression reports the escape itself.
        assert_eq!(s.escaped(&[]), Vec::<String>::new());
        for result in results {
            result.unwrap();
        }
        // Each write landed where the link points when `root` is `/`.
        assert!(s.exists("same-layer"));
        assert!(s.exists("next-layer"));
        assert_eq!(s.read("passwd").as_deref(), Some("root"));
        assert!(s.exists("deeper"));
        let inside_abs = s.root.join(outer.trim_start_matches('/'));
        assert!(inside_abs.join("same-layer-abs").is_file());
        assert!(inside_abs.join("made-dir").is_dir());
        assert!(inside_abs.join("linked").is_file());
        assert!(fs::symlink_metadata(inside_abs.join("sym"))
            .unwrap()
            .file_type()
            .is_symlink());
        // The links themselves are intact.
        assert_eq!(fs::read_link(s.root.join("etc")).unwrap(), Path::new("/"));

        // A symlink cycle fails the layer (ELOOP) rather than going anywhere.
        let err = LayerTar::new()
            .file("loop1/x", "x")
            .try_apply(&s.root)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Unpack { source, .. } if source.raw_os_error() == Some(nix::libc::ELOOP)),
            "{err:?}"
        );
    }

    #[test]
    fn a_file_over_a_symlink_replaces_the_link() {
        let s = Sandbox::new();
        fs::write(s.outer().join("target"), "original").unwrap();
        fs::create_dir(s.outer().join("target-dir")).unwrap();
        let outer = s.outer().to_str().unwrap().to_owned();
        LayerTar::new()
            .symlink("f", &format!("{outer}/target"))
            .symlink("g", "../target")
            .symlink("d", &format!("{outer}/target-dir"))
            .apply(&s.root);
        LayerTar::new()
            .file("f", "new")
            .file("g", "new")
            .dir("d")
            .apply(&s.root);
        assert_eq!(
            fs::read_to_string(s.outer().join("target")).unwrap(),
            "original"
        );
        assert_eq!(s.read("f").as_deref(), Some("new"));
        assert_eq!(s.read("g").as_deref(), Some("new"));
        assert!(fs::symlink_metadata(s.root.join("d")).unwrap().is_dir());
        assert_eq!(
            fs::read_dir(s.outer().join("target-dir")).unwrap().count(),
            0
        );
        // Modes of a directory over a symlink are set on the directory, not the link's target.
        assert_eq!(s.escaped(&["target", "target-dir"]), Vec::<String>::new());
    }

    #[test]
    fn directory_modes_are_not_set_through_a_later_symlink() {
        let s = Sandbox::new();
        let outside = s.outer().join("b");
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        // The mode of `a/b` is applied at the end of the layer, when `a` is a symlink to `outer`.
        LayerTar::new()
            .entry("a/b", EntryType::Directory, 0o700, "", b"")
            .symlink("a", s.outer().to_str().unwrap())
            .apply(&s.root);
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o755);
        assert_ne!(fs::metadata(&outside).unwrap().mtime(), 1_700_000_000);
    }

    #[test]
    fn files_and_dirs_replace_each_other() {
        let s = Sandbox::new();
        LayerTar::new()
            .file("x", "file")
            .file("y/z", "in dir")
            .file("same/lower", "kept")
            .apply(&s.root);
        LayerTar::new()
            .dir("x")
            .file("x/inner", "now a dir")
            .file("y", "now a file")
            .entry("same", EntryType::Directory, 0o700, "", b"")
            .file("same/upper", "added")
            .apply(&s.root);
        assert_eq!(s.read("x/inner").as_deref(), Some("now a dir"));
        assert_eq!(s.read("y").as_deref(), Some("now a file"));
        // A directory over a directory merges, taking the new mode.
        assert_eq!(s.read("same/lower").as_deref(), Some("kept"));
        assert_eq!(s.read("same/upper").as_deref(), Some("added"));
        assert_eq!(
            fs::metadata(s.root.join("same")).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_file_as_a_parent_is_an_error() {
        let s = Sandbox::new();
        LayerTar::new().file("f", "x").apply(&s.root);
        let err = LayerTar::new()
            .file("f/child", "x")
            .try_apply(&s.root)
            .unwrap_err();
        assert!(err.to_string().starts_with("unpack f/child"), "{err}");
    }

    #[test]
    fn clean_names() {
        #[track_caller]
        fn check(name: &str, expected: Option<&[&str]>) {
            let got = clean(Path::new(name)).map(|p| {
                p.iter()
                    .map(|s| s.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            });
            assert_eq!(
                got,
                expected.map(|e| e.iter().map(|s| s.to_string()).collect()),
                "{name}"
            );
        }
        check("./", Some(&[]));
        check("/", Some(&[]));
        check("a/b/", Some(&["a", "b"]));
        check("/a//./b", Some(&["a", "b"]));
        check("a/..", None);
        check("../a", None);
        check("a/../b", None);
        check("..a/b..", Some(&["..a", "b.."]));
    }
}
