//! Receives an uploaded project (tar.gz) and unpacks it into a job's directory, refusing
//! anything that could write outside it or hurt the host: absolute paths, `..`, links that
//! leave the project, device files, fifos, paths too long or too deep, and archives over the
//! size and entry caps.
//!
//! The archive arrives as a stream ([`BodyReader`]) and is unpacked while it arrives: nothing
//! holds a whole upload in memory, and a bad entry is refused as soon as it is read.
//!
//! Entries are created one by one by this code (not by `tar`'s own unpack), through
//! [`ci_rootfs::safe_path`], which the image unpacker shares: each entry is made by an `*at`
//! call on its own name in its parent directory, opened without following a symlink, so a
//! symlink unpacked earlier can never become a parent of a later entry, and no path is looked
//! at first and acted on after. The directories this unpack made are remembered as a tree of
//! names (`Dirs`): the parents an entry shares with earlier ones are opened with one
//! `openat2`, which walks them in the kernel refusing any symlink, and only a parent not made
//! yet is looked at by itself. So an entry costs time in proportion to its own path (at most
//! [`MAX_PATH_BYTES`]) and the directories it creates, never a walk of the disk up its whole
//! path: unpacking is linear in the size of the archive.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use ci_rootfs::safe_path::{
    climbed_names, is_errno, symlink_stays_inside, Absolute, Dir, Kind, PathError, PathLimits,
    RelPath, Rules,
};
use nix::errno::Errno;

/// Caps on one upload.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_compressed_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

/// Longest path of an entry, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most names in an entry's path.
pub const MAX_DEPTH: usize = 256;
/// Longest name in a path, in bytes (`NAME_MAX` of every Linux file system).
pub const MAX_NAME_BYTES: usize = 255;
/// Most bytes the decompressed stream may carry around one entry besides its file's content:
/// headers, a GNU long name and long link (each at most `PATH_MAX`), PAX records, padding, and
/// whatever a directory or link entry claims as data. A real archive needs about 11 KiB at
/// the very most; a crafted one could otherwise make `tar` read a long name of gigabytes into
/// memory, or make the server inflate gigabytes of zeros that are never written.
const MAX_ENTRY_OVERHEAD: u64 = 16 * 1024;
/// Most decompressed bytes after the archive's end marker (tar pads to 10 KiB records).
const MAX_TRAILER_BYTES: u64 = 1 << 20;
/// Most bytes of the request body after the end of the gzip stream.
pub const MAX_BODY_TRAILER_BYTES: u64 = 64 * 1024;

/// Entry paths of an upload: relative, within the caps above.
const UPLOAD_PATHS: Rules = Rules {
    absolute: Absolute::Refused,
    limits: Some(PathLimits {
        max_path_bytes: MAX_PATH_BYTES,
        max_depth: MAX_DEPTH,
        max_name_bytes: MAX_NAME_BYTES,
    }),
};

/// Mode of the directories an unpack makes, before the umask (what `mkdir` gives).
const DIR_MODE: u32 = 0o777;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("empty upload: send the project as a tar.gz body")]
    Empty,
    /// A valid archive of directories and links only: nothing pytest could find.
    #[error("the upload holds no files: nothing to test")]
    NoFiles,
    #[error("the upload is not a valid tar.gz archive: {0}")]
    Malformed(std::io::Error),
    #[error(
        "archive entry {0:?} has an absolute path or '..'; paths must stay inside the project"
    )]
    PathEscapes(String),
    #[error(
        "archive entry {path:?} has a path of {len} bytes; at most {MAX_PATH_BYTES} are allowed"
    )]
    PathTooLong { path: String, len: usize },
    #[error("archive entry {path:?} is {depth} names deep; at most {MAX_DEPTH} are allowed")]
    TooDeep { path: String, depth: usize },
    #[error(
        "archive entry {path:?} has a name of {len} bytes; at most {MAX_NAME_BYTES} are allowed"
    )]
    NameTooLong { path: String, len: usize },
    #[error("archive entry {path:?} is a link pointing outside the project ({target:?})")]
    LinkEscapes { path: String, target: String },
    #[error("archive entry {path:?} is a link whose target ({target:?}) climbs out of a symlink with '..', which could lead outside the project")]
    LinkThroughLink { path: String, target: String },
    #[error("archive entry {0:?} has a NUL byte in its path")]
    NulInPath(String),
    #[error("archive entry {0:?} is a device file or fifo; only files, directories and links are allowed")]
    SpecialFile(String),
    #[error("archive entry {0:?} would be written through a symlink")]
    ThroughSymlink(String),
    #[error("the project unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("the project has more than {0} entries (counting the directories it implies)")]
    TooManyEntries(u64),
    #[error("the archive has more than {} of headers or of data that is not a file's content around one entry (after {after:?})", crate::config::format_size(MAX_ENTRY_OVERHEAD))]
    Overhead { after: String },
    #[error("the upload has data after the end of the archive")]
    Trailing,
    /// A file system call on a path of the archive failed; [`UploadError::fault`] tells whose
    /// fault it is.
    #[error("cannot unpack {path:?}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Whose fault a failed upload is, which chooses the answer's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The archive's (400).
    Client,
    /// The disk is full (507).
    NoSpace,
    /// The server's (500).
    Server,
}

impl UploadError {
    pub fn fault(&self) -> Fault {
        match self {
            UploadError::Io { source, .. } => io_fault(source),
            _ => Fault::Client,
        }
    }
}

/// Sorts an error of a file system call made for an archive entry. The names and the shape of
/// the tree come from the archive, so every error that a name or a shape can cause is the
/// archive's: a name too long for the file system, a path through a file, a directory where a
/// file goes, too many hard links.
fn io_fault(e: &std::io::Error) -> Fault {
    use nix::errno::Errno;
    let Some(errno) = e.raw_os_error().map(Errno::from_raw) else {
        return Fault::Server;
    };
    match errno {
        Errno::ENOSPC | Errno::EDQUOT => Fault::NoSpace,
        Errno::ENAMETOOLONG
        | Errno::EEXIST
        | Errno::ENOTDIR
        | Errno::EISDIR
        | Errno::ENOTEMPTY
        | Errno::ELOOP
        | Errno::EMLINK
        | Errno::ENOENT
        | Errno::EINVAL
        | Errno::EILSEQ
        | Errno::EFBIG => Fault::Client,
        _ => Fault::Server,
    }
}

/// A path from the archive as it is shown in a message: whole if short, else its ends.
fn shown(raw: &[u8]) -> String {
    const HEAD: usize = 60;
    const TAIL: usize = 40;
    let text = String::from_utf8_lossy(raw);
    let chars = text.chars().count();
    if chars <= HEAD + TAIL + 3 {
        return text.into_owned();
    }
    let head: String = text.chars().take(HEAD).collect();
    let tail: String = text.chars().skip(chars - TAIL).collect();
    format!("{head}...{tail}")
}

/// Unpacks `archive` (gzip-compressed tar) into `dest`, which must exist and be empty, and
/// returns the size of the files in it. On error `dest` may hold part of the project: the
/// caller removes it.
pub fn unpack(archive: impl Read, dest: &Path, limits: Limits) -> Result<u64, UploadError> {
    let meter = Meter::default();
    meter.grant(MAX_ENTRY_OVERHEAD);
    let mut tar = tar::Archive::new(meter.wrap(flate2::read::GzDecoder::new(archive)));
    let mut unpacker = Unpacker::new(dest, limits)?;
    let mut last = Vec::new();
    let mut files: u64 = 0;
    for entry in tar.entries().map_err(|e| meter.error(e, &last))? {
        let mut entry = entry.map_err(|e| meter.error(e, &last))?;
        last.clear();
        last.extend_from_slice(&entry.path_bytes());
        unpacker.count()?;
        let data = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                files += 1;
                unpacker.add_bytes(entry.size())?;
                entry.size()
            }
            _ => 0,
        };
        meter.grant(MAX_ENTRY_OVERHEAD.saturating_add(data));
        unpacker
            .entry(&mut entry)
            .map_err(|e| meter.upload_error(e, &last))?;
    }
    unpacker.check_links()?;
    // Read to the end, so the gzip checksum is verified and the whole body is consumed.
    let mut rest = tar.into_inner();
    meter.grant(MAX_TRAILER_BYTES);
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| {
        if meter.over.get() {
            UploadError::Trailing
        } else {
            UploadError::Malformed(e)
        }
    })?;
    if files == 0 {
        return Err(UploadError::NoFiles);
    }
    Ok(unpacker.bytes)
}

/// How many more decompressed bytes the archive may yield, shared by the reader and the loop
/// that grants them entry by entry.
#[derive(Clone, Default)]
struct Meter {
    left: Rc<Cell<u64>>,
    over: Rc<Cell<bool>>,
}

impl Meter {
    fn grant(&self, bytes: u64) {
        self.left.set(bytes);
    }

    fn wrap<R: Read>(&self, inner: R) -> Metered<R> {
        Metered {
            inner,
            meter: self.clone(),
        }
    }

    /// What a read error of the archive means: the budget ran out, or the archive is broken.
    fn error(&self, e: std::io::Error, after: &[u8]) -> UploadError {
        if self.over.get() {
            UploadError::Overhead {
                after: shown(after),
            }
        } else {
            UploadError::Malformed(e)
        }
    }

    fn upload_error(&self, e: UploadError, after: &[u8]) -> UploadError {
        match e {
            UploadError::Malformed(e) => self.error(e, after),
            other => other,
        }
    }
}

/// The decompressed archive, failing once it yields more than its [`Meter`] grants.
struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.meter.left.get();
        if left == 0 {
            // One more byte tells the end of the stream from a stream longer than granted.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.meter.over.set(true);
            return Err(std::io::Error::other(
                "more data than the archive's entries account for",
            ));
        }
        let room = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        self.meter.left.set(left - n as u64);
        Ok(n)
    }
}

/// The directories this unpack made (or found) under the destination, as a tree of names;
/// node 0 is the destination itself. A node stands for a real directory, never a symlink:
/// nothing but this unpack writes there while it runs, and whatever replaces a path forgets
/// the node at that path, and with it every node below. It is an index only: where an entry
/// lands is decided by the kernel's walk, which refuses symlinks (see [`Unpacker::parents`]).
struct Dirs {
    children: Vec<HashMap<OsString, usize>>,
    /// Each node's parent and name, for its path.
    up: Vec<(usize, OsString)>,
}

const ROOT: usize = 0;

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            children: vec![HashMap::new()],
            up: vec![(ROOT, OsString::new())],
        }
    }

    fn child(&self, parent: usize, name: &OsStr) -> Option<usize> {
        self.children[parent].get(name).copied()
    }

    fn add(&mut self, parent: usize, name: &OsStr) -> usize {
        let id = self.children.len();
        self.children.push(HashMap::new());
        self.up.push((parent, name.to_os_string()));
        self.children[parent].insert(name.to_os_string(), id);
        id
    }

    fn forget(&mut self, parent: usize, name: &OsStr) {
        self.children[parent].remove(name);
    }

    /// The path of `node` below the destination (where it was, for a node forgotten since).
    fn path(&self, mut node: usize) -> PathBuf {
        let mut names = Vec::new();
        while node != ROOT {
            let (parent, name) = &self.up[node];
            names.push(name.as_os_str());
            node = *parent;
        }
        names.iter().rev().collect()
    }
}

/// One unpack in progress.
struct Unpacker {
    /// The destination, open: every entry is made below it with `*at` calls.
    root: Dir,
    /// Length of the destination's path, in bytes.
    dest_len: usize,
    limits: Limits,
    dirs: Dirs,
    /// Symlinks whose targets climb out of a name with `..` ([`climbed_names`]), as the node
    /// of their directory and their name, for [`Unpacker::check_links`].
    climbing_links: Vec<(usize, OsString)>,
    /// Entries and the directories made for them, against `limits.max_entries`.
    objects: u64,
    /// Sum of the sizes of the files.
    bytes: u64,
}

/// A checked path of an entry, not the destination itself.
struct Rel {
    path: RelPath,
    /// As written in the archive, for messages.
    raw: Vec<u8>,
}

impl Rel {
    fn shown(&self) -> String {
        shown(&self.raw)
    }

    /// The directory the entry is in, relative to the destination.
    fn parent(&self) -> &Path {
        self.path.split_last().expect("a checked path has a name").0
    }

    fn name(&self) -> &OsStr {
        self.path.split_last().expect("a checked path has a name").1
    }
}

impl Unpacker {
    fn new(dest: &Path, limits: Limits) -> Result<Unpacker, UploadError> {
        let root = Dir::open(dest).map_err(|source| UploadError::Io {
            path: dest.display().to_string(),
            source,
        })?;
        Ok(Unpacker {
            root,
            dest_len: dest.as_os_str().len(),
            limits,
            dirs: Dirs::new(),
            climbing_links: Vec::new(),
            objects: 0,
            bytes: 0,
        })
    }

    fn count(&mut self) -> Result<(), UploadError> {
        self.objects += 1;
        if self.objects > self.limits.max_entries {
            return Err(UploadError::TooManyEntries(self.limits.max_entries));
        }
        Ok(())
    }

    fn add_bytes(&mut self, size: u64) -> Result<(), UploadError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_unpacked_bytes {
            return Err(UploadError::TooLarge(self.limits.max_unpacked_bytes));
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UploadError> {
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = checked(&raw)? else {
            return Ok(()); // "./" itself
        };
        // Made relative to open directories, an entry may lie deeper than any path can name
        // (`PATH_MAX` counts the NUL). Refused, as when entries were made by their paths, so
        // that whatever reads the project by path later (`install::copy_tree`, the project's
        // reader) reaches all of it.
        if self.dest_len + 1 + rel.path.as_path().as_os_str().len() >= nix::libc::PATH_MAX as usize
        {
            let too_long = std::io::Error::from_raw_os_error(nix::libc::ENAMETOOLONG);
            return Err(io_error(&rel, too_long));
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => self.directory(&rel),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let mtime = entry.header().mtime().unwrap_or(0);
                self.file(&rel, entry, mode, mtime)
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.symlink(&rel, &link)
            }
            tar::EntryType::Link => {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hard_link(&rel, &link)
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => Ok(()),
            _ => Err(UploadError::SpecialFile(rel.shown())),
        }
    }

    fn directory(&mut self, rel: &Rel) -> Result<(), UploadError> {
        let (parent, node) = self.parents(rel)?;
        if self.dirs.child(node, rel.name()).is_none() {
            self.open_or_make(&parent, rel.name(), rel)?;
            self.dirs.add(node, rel.name());
        }
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Rel,
        data: &mut impl Read,
        mode: u32,
        mtime: u64,
    ) -> Result<(), UploadError> {
        use std::os::unix::fs::PermissionsExt;
        let mut file = self.create(rel, |dir, name| dir.create_file(name, 0o600))?;
        copy(data, &mut file, rel)?;
        // The client's mtime, as on the developer's disk: Python and pytest check their
        // bytecode against it (and the bytecode cache is keyed by it, crate::bytecode).
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        file.set_modified(mtime).map_err(|e| io_error(rel, e))?;
        // Keep the owner's execute bit; make everything readable by the job (which may run as
        // another uid) and never carry setuid/setgid/sticky bits.
        let mode = 0o644 | if mode & 0o100 != 0 { 0o111 } else { 0 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(rel, e))
    }

    fn symlink(&mut self, rel: &Rel, link: &[u8]) -> Result<(), UploadError> {
        if link.len() > MAX_PATH_BYTES {
            return Err(UploadError::PathTooLong {
                path: shown(link),
                len: link.len(),
            });
        }
        // Held to the depth of an entry path as well, `..` counted: checking a target that
        // climbs out of names walks all of them (`check_links`), which this keeps as cheap as
        // making an entry at the deepest path allowed.
        let depth = Path::new(OsStr::from_bytes(link)).components().count();
        if depth > MAX_DEPTH {
            return Err(UploadError::TooDeep {
                path: shown(link),
                depth,
            });
        }
        if !symlink_stays_inside(&rel.path, link) {
            return Err(UploadError::LinkEscapes {
                path: rel.shown(),
                target: shown(link),
            });
        }
        let (parent, node) = self.parents(rel)?;
        let target = OsStr::from_bytes(link);
        self.replace(&parent, node, rel, |dir, name| dir.symlink(name, target))?;
        if climbed_names(link).is_some() {
            self.climbing_links.push((node, rel.name().to_os_string()));
        }
        Ok(())
    }

    fn hard_link(&mut self, rel: &Rel, link: &[u8]) -> Result<(), UploadError> {
        let escapes = || UploadError::LinkEscapes {
            path: rel.shown(),
            target: shown(link),
        };
        let source = match checked(link) {
            Ok(Some(source)) => source,
            Ok(None) | Err(UploadError::PathEscapes(_) | UploadError::NulInPath(_)) => {
                return Err(escapes())
            }
            Err(e) => return Err(e),
        };
        // Only a regular file already unpacked from this archive may be linked to.
        let (from, name) = self.unpacked_file(&source).ok_or_else(escapes)?;
        self.create(rel, |dir, new| dir.hard_link(new, &from, name))
    }

    /// The directory and name of a regular file this unpack made at `rel`, reached without
    /// following a symlink: the destination was empty, so every real directory in it and
    /// every file is this archive's.
    fn unpacked_file<'r>(&self, rel: &'r Rel) -> Option<(Dir, &'r OsStr)> {
        let dir = self.root.open_beneath(rel.parent()).ok()?;
        (dir.kind(rel.name()).ok()?? == Kind::File).then_some((dir, rel.name()))
    }

    /// Makes what is at `rel` with `make` (which must not follow or open what is there, see
    /// [`Dir::replace`]), after making its parents directories of the tree.
    fn create<T>(
        &mut self,
        rel: &Rel,
        make: impl Fn(&Dir, &OsStr) -> std::io::Result<T>,
    ) -> Result<T, UploadError> {
        let (parent, node) = self.parents(rel)?;
        self.replace(&parent, node, rel, make)
    }

    /// Makes `rel`'s name in `parent` (the node `node`) with `make`, replacing what an earlier
    /// entry put there, as tar does: a directory goes with all it holds, and its node too.
    fn replace<T>(
        &mut self,
        parent: &Dir,
        node: usize,
        rel: &Rel,
        make: impl Fn(&Dir, &OsStr) -> std::io::Result<T>,
    ) -> Result<T, UploadError> {
        self.dirs.forget(node, rel.name());
        parent
            .replace(rel.name(), make)
            .map_err(|e| io_error(rel, e))
    }

    /// Opens the directory `rel` is in, making every parent that is missing a directory of
    /// the tree; returns it with its node. The parents already in the tree are opened with
    /// one [`Dir::open_beneath`], which refuses a symlink anywhere on the way (the tree only
    /// saves the syscalls of looking at each), and only those not in it are looked at one
    /// by one.
    fn parents(&mut self, rel: &Rel) -> Result<(Dir, usize), UploadError> {
        let names: Vec<&OsStr> = rel.parent().iter().collect();
        let mut node = ROOT;
        let mut known = 0;
        while let Some(child) = names
            .get(known)
            .and_then(|name| self.dirs.child(node, name))
        {
            node = child;
            known += 1;
        }
        let known_path: PathBuf = names[..known].iter().collect();
        let mut dir = self
            .root
            .open_beneath(&known_path)
            .map_err(|e| io_error(rel, e))?;
        for name in &names[known..] {
            let (next, made) = self.open_or_make(&dir, name, rel)?;
            if made {
                self.count()?;
            }
            node = self.dirs.add(node, name);
            dir = next;
        }
        Ok((dir, node))
    }

    /// Opens the directory `name` in `dir`, making it when missing; says whether it made one.
    /// A file there is replaced, as tar does; a symlink there is refused, since writing below
    /// it would write where it points. The open (`O_NOFOLLOW`) refuses both by itself; the
    /// look at what is there only picks the answer, and `remove` never follows a link.
    fn open_or_make(&self, dir: &Dir, name: &OsStr, rel: &Rel) -> Result<(Dir, bool), UploadError> {
        let io = |e| io_error(rel, e);
        match dir.make_or_open_dir(name, DIR_MODE) {
            Err(e) if is_errno(&e, Errno::ENOTDIR) => {}
            other => return other.map_err(io),
        }
        if dir.kind(name).map_err(io)? == Some(Kind::Symlink) {
            return Err(UploadError::ThroughSymlink(rel.shown()));
        }
        dir.remove(name).map_err(io)?;
        dir.make_dir(name, DIR_MODE).map_err(io)?;
        Ok((dir.open_dir(name).map_err(io)?, true))
    }

    /// Checks, once every entry is in place, the symlinks whose targets climb out of a name
    /// with `..` ([`climbed_names`]): every name so climbed must be a real directory, or the
    /// link could lead outside the project (`a/s -> ..` then `t -> a/s/..`), whatever the
    /// order of the entries. A link no longer there (replaced, or gone with its directory)
    /// has nothing to check, and one whose climbed names are missing or not directories
    /// dangles, for the kernel stops at the same name.
    fn check_links(&self) -> Result<(), UploadError> {
        let gone = |e: &std::io::Error| {
            [Errno::ENOENT, Errno::ENOTDIR, Errno::ELOOP]
                .iter()
                .any(|&errno| is_errno(e, errno))
        };
        for (node, name) in &self.climbing_links {
            let dir_path = self.dirs.path(*node);
            let path = || shown(dir_path.join(name).as_os_str().as_bytes());
            let io = |source| UploadError::Io {
                path: path(),
                source,
            };
            let dir = match self.root.open_beneath(&dir_path) {
                Ok(dir) => dir,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(io(e)),
            };
            let target = match dir.read_link(name) {
                Ok(Some(target)) => target,
                Ok(None) => continue,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(io(e)),
            };
            let Some(climbed) = climbed_names(target.as_bytes()) else {
                continue;
            };
            match self.root.open_beneath(&dir_path.join(climbed)) {
                Ok(_) => {}
                Err(e) if is_errno(&e, Errno::ELOOP) || is_errno(&e, Errno::EXDEV) => {
                    return Err(UploadError::LinkThroughLink {
                        path: path(),
                        target: shown(target.as_bytes()),
                    });
                }
                Err(e) if gone(&e) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }
}

fn io_error(rel: &Rel, source: std::io::Error) -> UploadError {
    UploadError::Io {
        path: rel.shown(),
        source,
    }
}

/// Copies a file's data, telling a broken archive (read) from a failing disk (write).
fn copy(data: &mut impl Read, file: &mut std::fs::File, rel: &Rel) -> Result<(), UploadError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UploadError::Malformed(e)),
        };
        file.write_all(&buf[..n]).map_err(|e| io_error(rel, e))?;
    }
}

/// Checks an archive path against the caps, before anything touches the disk, and cleans it:
/// `None` for the project's root itself (`./`).
fn checked(raw: &[u8]) -> Result<Option<Rel>, UploadError> {
    let path = || shown(raw);
    let clean = RelPath::parse(raw, UPLOAD_PATHS).map_err(|e| match e {
        PathError::TooLong { len } => UploadError::PathTooLong { path: path(), len },
        PathError::Nul => UploadError::NulInPath(path()),
        PathError::Absolute | PathError::DotDot => UploadError::PathEscapes(path()),
        PathError::NameTooLong { len } => UploadError::NameTooLong { path: path(), len },
        PathError::TooDeep { depth } => UploadError::TooDeep {
            path: path(),
            depth,
        },
    })?;
    Ok((!clean.is_root()).then(|| Rel {
        path: clean,
        raw: raw.to_vec(),
    }))
}

/// What the receiving side hands the unpacker: the body's bytes as they come, then `End` once
/// the body is complete. A channel closed without `End` is an upload cut short.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    End,
}

/// A blocking reader of a request body that an async task receives and sends in [`Chunk`]s,
/// for the unpacker on a blocking thread. It holds one chunk at a time.
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
    received: u64,
}

impl BodyReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Chunk>) -> BodyReader {
        BodyReader {
            rx,
            current: Bytes::new(),
            ended: false,
            received: 0,
        }
    }

    /// Bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reads the rest of the body, which may only be a little padding.
    pub fn finish(&mut self) -> Result<(), UploadError> {
        let mut rest = (&mut *self).take(MAX_BODY_TRAILER_BYTES + 1);
        let n = std::io::copy(&mut rest, &mut std::io::sink()).map_err(UploadError::Malformed)?;
        if n > MAX_BODY_TRAILER_BYTES {
            return Err(UploadError::Trailing);
        }
        Ok(())
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(bytes)) => self.current = bytes,
                Some(Chunk::End) => self.ended = true,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload stopped before its end",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        self.received += n as u64;
        Ok(n)
    }
}

/// What governs receiving uploads beyond the caps of one archive: how many at once, how long
/// each may take, how much disk must stay free. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Intake {
    slots: Arc<tokio::sync::Semaphore>,
    pub max_concurrent: usize,
    pub timeout: Duration,
    pub min_free_disk: u64,
}

impl Intake {
    /// At least one upload at a time: a server that takes none would be no server.
    pub fn new(max_concurrent: usize, timeout: Duration, min_free_disk: u64) -> Intake {
        let max_concurrent = max_concurrent.max(1);
        Intake {
            slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            max_concurrent,
            timeout,
            min_free_disk,
        }
    }

    /// A slot for one upload, held until the permit is dropped; `None` when all are taken.
    pub fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Free bytes an unprivileged user may still write on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[expect(
        clippy::useless_conversion,
        reason = "the widths of statvfs fields differ between targets"
    )]
    let (blocks, size) = (
        u64::from(stat.blocks_available()),
        u64::from(stat.fragment_size()),
    );
    Ok(blocks.saturating_mul(size))
}

/// Makes `to` a copy of the unpacked upload `from` for another job of the same run: the
/// same directories (with their modes), the same symbolic links, and hard links to the same
/// files, which nothing writes (projects are mounted read-only). Never follows a link; only
/// what an upload can hold (files, directories, symbolic links) is copied. Blocking.
pub fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut pending = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = pending.pop() {
        let meta = std::fs::symlink_metadata(&src)?;
        std::fs::DirBuilder::new()
            .mode(meta.permissions().mode() & 0o7777)
            .create(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let (src, dst) = (entry.path(), dst.join(entry.file_name()));
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((src, dst));
            } else if kind.is_symlink() {
                symlink(std::fs::read_link(&src)?, &dst)?;
            } else if kind.is_file() {
                std::fs::hard_link(&src, &dst)?;
            }
        }
        // The mode again, past the umask.
        std::fs::set_permissions(
            &dst,
            std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_compressed_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
        max_entries: 1000,
    };

    use ci_e2e::tarball::{gz as archive, Entry as E};

    fn unpack_into(entries: &[E]) -> (tempfile::TempDir, Result<u64, UploadError>) {
        unpack_bytes(&archive(entries), LIMITS)
    }

    fn unpack_bytes(bytes: &[u8], limits: Limits) -> (tempfile::TempDir, Result<u64, UploadError>) {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("project");
        std::fs::create_dir(&dest).unwrap();
        let result = unpack(bytes, &dest, limits);
        (root, result)
    }

    fn project(root: &tempfile::TempDir) -> PathBuf {
        root.path().join("project")
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
        assert_eq!(r.unwrap(), 9, "the size of the files");
        let p = project(&root);
        assert_eq!(
            std::fs::read_to_string(p.join("src/b.py")).unwrap(),
            "print(1)\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("src/c.py")).unwrap(),
            "print(1)\n"
        );
    }

    #[test]
    fn an_archive_without_files_is_refused() {
        let (_root, r) = unpack_into(&[E::Dir("./src/"), E::Symlink("src/b.py", "a.py")]);
        let e = r.unwrap_err();
        assert!(matches!(e, UploadError::NoFiles), "{e:?}");
        assert_eq!(e.to_string(), "the upload holds no files: nothing to test");
        assert_eq!(e.fault(), Fault::Client);
        let (_root, r) = unpack_into(&[]);
        assert!(matches!(r, Err(UploadError::NoFiles)), "{r:?}");
        let (_root, r) = unpack_into(&[E::File("./empty.py", Vec::new())]);
        assert_eq!(r.unwrap(), 0, "an empty file is a file");
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
    fn links_that_climb_out_of_a_symlink_are_refused_whatever_the_order() {
        // Each link passes the lexical check alone: `a/s` names the project, and `t` climbs
        // out of `a/s` to the project's parent.
        let cases: [&[E]; 4] = [
            &[
                E::Dir("a"),
                E::Symlink("a/s", ".."),
                E::Symlink("t", "a/s/.."),
            ],
            &[
                E::Symlink("t", "a/s/.."),
                E::Dir("a"),
                E::Symlink("a/s", ".."),
            ],
            // `a/s` a directory when `t` is made, a symlink once the archive ends.
            &[
                E::Dir("a/s"),
                E::Symlink("t", "a/s/../s/../.."),
                E::Symlink("a/s", ".."),
            ],
            // Refused even where it would stay inside: a symlink is not climbed out of.
            &[
                E::Dir("lib"),
                E::Symlink("src", "lib"),
                E::Symlink("up", "src/../src"),
            ],
        ];
        for entries in cases {
            let e = rejected(entries);
            assert!(matches!(e, UploadError::LinkThroughLink { .. }), "{e:?}");
            assert_eq!(e.fault(), Fault::Client);
        }
        // Climbing out of real directories, or of a name that is not there (the link
        // dangles, as the kernel stops at the same name), is fine.
        let (root, r) = unpack_into(&[
            E::Dir("src/sub"),
            E::Symlink("up", "src/sub/../../src"),
            E::Symlink("dangling", "missing/../x"),
            E::Symlink("gone/l", "a/s/.."),
            E::File("gone", b"replaces the directory and its link".to_vec()),
        ]);
        r.unwrap();
        let p = project(&root);
        let up = std::fs::canonicalize(p.join("up")).unwrap();
        assert_eq!(up, std::fs::canonicalize(p.join("src")).unwrap());
        // A target is held to the depth of a path, `..` counted.
        let deep = format!("{}x", "a/../".repeat(128));
        let e = rejected(&[E::Symlink("l", &deep)]);
        assert!(e.to_string().contains("is 257 names deep"), "{e}");
        let file = E::File("f.py", Vec::new());
        unpack_into(&[E::Symlink("l", &deep[5..]), file]).1.unwrap();
    }

    #[test]
    fn a_nul_in_a_path_is_the_archives_fault() {
        // Only a PAX record carries one: `tar` cuts a header's name at its first NUL.
        let pax = |key: &str, value: &[u8], entry: tar::Header| {
            raw_archive(
                |b| {
                    let mut record = format!(" {key}=").into_bytes();
                    record.extend_from_slice(value);
                    record.push(b'\n');
                    let len = record.len() + 2;
                    let mut data = len.to_string().into_bytes();
                    data.extend_from_slice(&record);
                    assert_eq!(data.len(), len);
                    let h = header(tar::EntryType::XHeader, "pax", data.len() as u64);
                    b.append(&h, &data[..]).unwrap();
                    b.append(&entry, &[][..]).unwrap();
                },
                0,
            )
        };
        let file = header(tar::EntryType::Regular, "f", 0);
        let (_root, r) = unpack_bytes(&pax("path", b"a\0/../../x", file), LIMITS);
        let e = r.unwrap_err();
        assert!(matches!(e, UploadError::NulInPath(_)), "{e:?}");
        assert_eq!(e.fault(), Fault::Client);
        let mut link = header(tar::EntryType::Symlink, "l", 0);
        link.set_link_name("x").unwrap();
        link.set_cksum();
        let (_root, r) = unpack_bytes(&pax("linkpath", b"x\0/../../..", link), LIMITS);
        assert!(matches!(r, Err(UploadError::LinkEscapes { .. })), "{r:?}");
    }

    #[test]
    fn enforces_caps() {
        let big = vec![0u8; 2 << 20];
        assert!(matches!(
            rejected(&[E::File("big", big)]),
            UploadError::TooLarge(_)
        ));
        let names: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
        let entries: Vec<E> = names.iter().map(|n| E::File(n, Vec::new())).collect();
        assert!(matches!(
            rejected(&entries),
            UploadError::TooManyEntries(1000)
        ));
        // The directories an entry implies count too: 999 of them and two files is 1001.
        let deep = format!("{}f", "d/".repeat(200));
        let names: Vec<String> = (0..5).map(|i| format!("{i}/{deep}")).collect();
        let entries: Vec<E> = names.iter().map(|n| E::File(n, Vec::new())).collect();
        assert!(matches!(
            rejected(&entries),
            UploadError::TooManyEntries(1000)
        ));
        let (_root, r) = unpack_bytes(b"not a tarball", LIMITS);
        assert!(matches!(r, Err(UploadError::Malformed(_))));
    }

    /// Unpacks one entry at `path`: `Ok` or the error, and whether anything was written.
    fn check(path: &str, expected: Result<(), &str>) {
        let (root, r) = unpack_into(&[E::File(path, b"x".to_vec())]);
        let written = std::fs::read_dir(project(&root)).unwrap().count() > 0;
        match (r, expected) {
            (Ok(_), Ok(())) => assert!(written, "{path}"),
            (Err(e), Err(needle)) => {
                assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
                assert_eq!(e.fault(), Fault::Client, "{e}");
                assert!(!written, "refused only after writing: {e}");
            }
            (r, expected) => panic!(
                "{}: got {r:?}, expected {expected:?}",
                &path[..40.min(path.len())]
            ),
        }
    }

    #[test]
    fn path_shape_caps() {
        let name = |n: usize| "n".repeat(n);
        check(&format!("{}f", "a/".repeat(255)), Ok(()));
        check(
            &format!("{}f", "a/".repeat(256)),
            Err("is 257 names deep; at most 256"),
        );
        check(
            &format!("{}f", "a/".repeat(4999)),
            Err("has a path of 9999 bytes; at most 4096"),
        );
        check(&name(255), Ok(()));
        check(
            &format!("src/{}", name(300)),
            Err("has a name of 300 bytes; at most 255"),
        );
        check(&format!("{}/f", name(256)), Err("has a name of 256 bytes"));
        check(&format!("{}xx", "./".repeat(2047)), Ok(()));
        check(
            &format!("{}x", "./".repeat(2048)),
            Err("has a path of 4097 bytes"),
        );
        // Within the caps, but too long for the file system once under the job's directory:
        // still the archive's fault, with the reason.
        let long = vec![name(255); 16].join("/");
        assert_eq!(long.len(), 4095);
        let (_root, r) = unpack_into(&[E::File(&long, Vec::new())]);
        let e = r.unwrap_err();
        assert!(e.to_string().contains("File name too long"), "{e}");
        assert_eq!(e.fault(), Fault::Client);
    }

    #[test]
    fn messages_show_the_ends_of_a_long_path() {
        let (_root, r) = unpack_into(&[E::File(&format!("{}f", "a/".repeat(300)), Vec::new())]);
        let message = r.unwrap_err().to_string();
        assert!(message.len() < 250, "{message}");
        assert!(message.contains("\"a/a/a/a/"), "{message}");
        assert!(message.contains("/a/.../a/a/"), "{message}");
        assert!(message.contains("a/a/f\" is 301 names deep"), "{message}");
    }

    #[test]
    fn later_entries_replace_earlier_ones_without_writing_through_links() {
        // A directory replaced by a file, then needed again as a directory.
        let (root, r) = unpack_into(&[
            E::Dir("d"),
            E::File("d/x", b"x".to_vec()),
            E::File("d", b"file".to_vec()),
            E::File("d/y", b"y".to_vec()),
        ]);
        r.unwrap();
        let p = project(&root);
        assert!(p.join("d/y").is_file() && !p.join("d/x").exists());

        // A directory replaced by a symlink: what is below it is not written through it.
        let (root, r) = unpack_into(&[
            E::File("a/b/f", b"f".to_vec()),
            E::Dir("e"),
            E::Symlink("a", "e"),
            E::Dir("e/b"),
            E::File("a/b/g", b"g".to_vec()),
        ]);
        assert!(matches!(r, Err(UploadError::ThroughSymlink(_))), "{r:?}");
        assert!(!project(&root).join("e/b/g").exists());
        // Nor a directory entry on a symlink.
        assert!(matches!(
            rejected(&[E::Dir("d"), E::Symlink("l", "d"), E::Dir("l")]),
            UploadError::ThroughSymlink(_)
        ));

        // A file replaced by a file: a hard link to the first keeps the first's content.
        let (root, r) = unpack_into(&[
            E::File("a", b"1".to_vec()),
            E::Hardlink("b", "a"),
            E::File("a", b"2".to_vec()),
        ]);
        r.unwrap();
        let p = project(&root);
        assert_eq!(std::fs::read(p.join("a")).unwrap(), b"2");
        assert_eq!(std::fs::read(p.join("b")).unwrap(), b"1");

        // A symlink replaced by a file: the link goes, what it pointed to stays empty.
        let (root, r) = unpack_into(&[
            E::Dir("d"),
            E::Symlink("l", "d/t"),
            E::File("l", b"x".to_vec()),
        ]);
        r.unwrap();
        let p = project(&root);
        assert!(std::fs::symlink_metadata(p.join("l")).unwrap().is_file());
        assert!(!p.join("d/t").exists());

        // A file replaced by a directory, a directory entry repeated.
        let (root, r) = unpack_into(&[
            E::File("f", b"x".to_vec()),
            E::Dir("f"),
            E::File("f/x", b"x".to_vec()),
            E::Dir("a/b/c"),
            E::File("a/b/c/1", Vec::new()),
            E::Dir("a"),
            E::File("a/b/c/2", Vec::new()),
        ]);
        r.unwrap();
        let p = project(&root);
        assert!(p.join("f/x").is_file());
        assert!(p.join("a/b/c/1").is_file() && p.join("a/b/c/2").is_file());

        // A hard link may not reach its source through a symlinked directory.
        assert!(matches!(
            rejected(&[
                E::Dir("d"),
                E::File("d/f", b"x".to_vec()),
                E::Symlink("s", "d"),
                E::Hardlink("h", "s/f"),
            ]),
            UploadError::LinkEscapes { .. }
        ));
        // A hard link to what it replaces: an error of the archive, not of the server.
        let e = rejected(&[E::File("a", b"x".to_vec()), E::Hardlink("a", "a")]);
        assert!(matches!(e, UploadError::Io { .. }), "{e:?}");
        assert_eq!(e.fault(), Fault::Client);
    }

    #[test]
    fn os_errors_are_sorted_by_whose_fault_they_are() {
        use std::io::Error;
        let fault = |errno: nix::errno::Errno| io_fault(&Error::from_raw_os_error(errno as i32));
        assert_eq!(fault(nix::errno::Errno::ENOSPC), Fault::NoSpace);
        assert_eq!(fault(nix::errno::Errno::EDQUOT), Fault::NoSpace);
        assert_eq!(fault(nix::errno::Errno::ENAMETOOLONG), Fault::Client);
        assert_eq!(fault(nix::errno::Errno::ENOTDIR), Fault::Client);
        assert_eq!(fault(nix::errno::Errno::EEXIST), Fault::Client);
        assert_eq!(fault(nix::errno::Errno::EACCES), Fault::Server);
        assert_eq!(fault(nix::errno::Errno::EIO), Fault::Server);
        assert_eq!(io_fault(&Error::other("no errno")), Fault::Server);
    }

    /// A tar.gz of raw headers, for what the `Entry` helper cannot express.
    fn raw_archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>), trailer: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let mut tar = b.into_inner().unwrap();
        tar.resize(tar.len() + trailer, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    #[test]
    fn headers_and_padding_are_bounded() {
        // A long name of 1 MiB would be read whole into memory by `tar`.
        let bomb = raw_archive(
            |b| {
                let mut name = vec![b'a'; 1 << 20];
                name.push(0);
                let h = header(
                    tar::EntryType::GNULongName,
                    "././@LongLink",
                    name.len() as u64,
                );
                b.append(&h, &name[..]).unwrap();
                b.append(&header(tar::EntryType::Regular, "f", 0), &[][..])
                    .unwrap();
            },
            0,
        );
        let (_root, r) = unpack_bytes(&bomb, LIMITS);
        assert!(matches!(r, Err(UploadError::Overhead { .. })), "{r:?}");
        // A directory that claims 1 MiB of data, inflated and thrown away otherwise.
        let fat = raw_archive(
            |b| {
                let h = header(tar::EntryType::Directory, "d", 1 << 20);
                b.append(&h, &vec![0u8; 1 << 20][..]).unwrap();
                b.append(&header(tar::EntryType::Regular, "f", 0), &[][..])
                    .unwrap();
            },
            0,
        );
        let (_root, r) = unpack_bytes(&fat, LIMITS);
        let e = r.unwrap_err();
        assert!(
            matches!(e, UploadError::Overhead { ref after } if after == "d"),
            "{e:?}"
        );
        assert!(e.to_string().contains("16 KiB"), "{e}");
        // Zeros after the end: a little is padding, a lot is refused.
        let file = |b: &mut tar::Builder<Vec<u8>>| {
            b.append(&header(tar::EntryType::Regular, "f", 3), &b"abc"[..])
                .unwrap();
        };
        let (_root, r) = unpack_bytes(&raw_archive(file, 64 << 10), LIMITS);
        assert_eq!(r.unwrap(), 3);
        let (_root, r) = unpack_bytes(&raw_archive(file, 2 << 20), LIMITS);
        assert!(matches!(r, Err(UploadError::Trailing)), "{r:?}");
        // A file's own data is not limited by the overhead cap.
        let (_root, r) = unpack_into(&[E::File("big", vec![7u8; 512 << 10])]);
        assert_eq!(r.unwrap(), 512 << 10);
    }

    #[test]
    fn depth_256_is_quick() {
        let names: Vec<String> = (1..=256).map(|d| "a/".repeat(d)).collect();
        let mut entries: Vec<E> = names.iter().map(|n| E::Dir(n)).collect();
        let file = format!("{}f", "a/".repeat(255));
        entries.push(E::File(&file, b"x".to_vec()));
        let bytes = archive(&entries);
        let started = std::time::Instant::now();
        let (root, r) = unpack_bytes(&bytes, LIMITS);
        r.unwrap();
        assert!(project(&root).join(&file).is_file());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// 100,000 files between depth 200 and 250: the old per-entry walk up the path took
    /// minutes here (a syscall per parent, each walking the whole prefix again).
    #[test]
    fn a_hundred_thousand_deep_entries_in_linear_time() {
        const FILES: usize = 100_000;
        let spine = "d/".repeat(250);
        let limits = Limits {
            max_entries: 200_000,
            ..LIMITS
        };
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for i in 0..FILES {
            let depth = 200 + i % 50;
            let name = format!("{}f{i}", &spine[..2 * depth]);
            ci_e2e::tarball::append(&mut b, &E::File(&name, Vec::new()));
        }
        let bytes = b.into_inner().unwrap().finish().unwrap();
        // On tmpfs where there is one: this measures the unpacker, not ext4's inode allocator
        // (which on a busy disk spends most of the time on 100,000 creates).
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let dest = project(&root);
        std::fs::create_dir(&dest).unwrap();
        let started = std::time::Instant::now();
        unpack(&bytes[..], &dest, limits).unwrap();
        let took = started.elapsed();
        let last = format!("{}f{}", &spine[..2 * 249], FILES - 1);
        assert!(project(&root).join(last).is_file());
        assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    }

    #[test]
    fn body_reader_reads_chunks_and_tells_a_cut_from_the_end() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(Chunk::Data(Bytes::from_static(b"hello ")))
            .unwrap();
        tx.blocking_send(Chunk::Data(Bytes::from_static(b"world")))
            .unwrap();
        tx.blocking_send(Chunk::End).unwrap();
        let mut reader = BodyReader::new(rx);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
        assert_eq!(reader.received(), 11);

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(Chunk::Data(Bytes::from_static(b"hel")))
            .unwrap();
        drop(tx);
        let mut reader = BodyReader::new(rx);
        let e = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(Chunk::Data(Bytes::from(vec![0u8; 100 << 10])))
            .unwrap();
        tx.blocking_send(Chunk::End).unwrap();
        assert!(matches!(
            BodyReader::new(rx).finish(),
            Err(UploadError::Trailing)
        ));
    }

    #[test]
    fn a_linked_copy_has_the_same_files_links_and_modes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        std::fs::create_dir_all(from.join("pkg/sub")).unwrap();
        std::fs::write(from.join("pkg/m.py"), "x = 1\n").unwrap();
        std::fs::set_permissions(from.join("pkg/sub"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::symlink("pkg/m.py", from.join("link")).unwrap();
        let to = dir.path().join("jobs/b/project");
        link_tree(&from, &to).unwrap();
        let (a, b) = (
            std::fs::metadata(from.join("pkg/m.py")).unwrap(),
            std::fs::metadata(to.join("pkg/m.py")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "a hard link");
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("pkg/m.py")
        );
        let mode = std::fs::metadata(to.join("pkg/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o750);
    }
}
