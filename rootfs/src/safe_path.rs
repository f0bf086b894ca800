//! Safe paths for unpacking archives: the one place that decides where an entry of an image
//! layer ([`crate::unpack_layer`]) or of an uploaded project (`ci-server`'s `upload.rs`) lands,
//! so that nothing either of them writes leaves the directory it unpacks into.
//!
//! - [`RelPath::parse`] turns an entry's path as the archive writes it into names below that
//!   directory: `.`, empty names and a trailing `/` dropped; `..`, NUL and (where the caller
//!   says so) a leading `/` refused; the caller's caps on length, depth and name applied.
//! - [`symlink_stays_inside`] and [`climbed_names`] check a symlink's target lexically, and
//!   say what of it only the tree on disk can vouch for.
//! - [`Dir`] is an open directory. Each of its calls takes one name (never a path with `/`)
//!   and is an `*at(2)` call relative to it that does not follow a symlink at that name, so
//!   the call lands in that directory whatever an earlier entry left there: there is no check
//!   of a path and then a call on the same path for the tree to change in between.
//!   [`Dir::open_beneath`] opens a path of several names refusing any symlink on the way, and
//!   [`Dir::resolve_in_root`] resolves symlinks on the way as if the directory were `/`.
//!
//! All of it is blocking file system work, for the unpackers' blocking threads.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// Linux gives up after 40 symlinks in one lookup (`MAXSYMLINKS`); so does
/// [`Dir::resolve_in_root`], which also stops a link cycle.
pub const MAX_SYMLINKS: usize = 40;

// ---------------------------------------------------------------------------------------------
// Entry paths, read lexically.

/// Caps on an entry's path, for a caller that applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathLimits {
    /// Longest path as the archive writes it, in bytes.
    pub max_path_bytes: usize,
    /// Most names in the cleaned path.
    pub max_depth: usize,
    /// Longest name, in bytes.
    pub max_name_bytes: usize,
}

/// What a leading `/` means in an entry's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absolute {
    /// The destination itself: a layer is the container's `/`, so its `/usr/bin` is `usr/bin`.
    Inside,
    /// Refused ([`PathError::Absolute`]).
    Refused,
}

/// How [`RelPath::parse`] reads entry paths.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub absolute: Absolute,
    pub limits: Option<PathLimits>,
}

/// Why an entry's path does not name a place below the destination. [`RelPath::parse`] checks
/// in the order of the variants: the length first (it needs no look at the path), a path that
/// leaves before one that is only too long in a name or too deep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is {len} bytes long")]
    TooLong { len: usize },
    #[error("has a NUL byte")]
    Nul,
    #[error("is absolute")]
    Absolute,
    #[error("has a `..` component")]
    DotDot,
    #[error("has a name of {len} bytes")]
    NameTooLong { len: usize },
    #[error("is {depth} names deep")]
    TooDeep { depth: usize },
}

/// A path below the destination made of names only: no `/` at either end, no `.`, `..` or
/// empty name, no NUL. Empty for the destination itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelPath(PathBuf);

impl RelPath {
    /// Reads an entry's path (as `tar` gives it: bytes) under `rules`.
    pub fn parse(raw: &[u8], rules: Rules) -> Result<RelPath, PathError> {
        if let Some(limits) = rules.limits {
            if raw.len() > limits.max_path_bytes {
                return Err(PathError::TooLong { len: raw.len() });
            }
        }
        // The kernel reads a path up to its first NUL, so `a\0/../../x` would name `a`, not
        // what the checks below read (a PAX header can carry one).
        if raw.contains(&0) {
            return Err(PathError::Nul);
        }
        let mut path = PathBuf::new();
        let mut depth = 0;
        let mut long_name = None;
        // `components` already drops empty names, `.` after the start and a trailing `/`.
        for component in Path::new(OsStr::from_bytes(raw)).components() {
            match component {
                Component::Normal(name) => {
                    depth += 1;
                    let too_long = rules
                        .limits
                        .is_some_and(|limits| name.len() > limits.max_name_bytes);
                    if too_long && long_name.is_none() {
                        long_name = Some(name.len());
                    }
                    path.push(name);
                }
                Component::CurDir => {}
                Component::RootDir if rules.absolute == Absolute::Inside => {}
                Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
                // Refused even where it would stay inside (`a/../b`): no tool writes one, and
                // read lexically it is wrong once `a` is a symlink.
                Component::ParentDir => return Err(PathError::DotDot),
            }
        }
        if let Some(len) = long_name {
            return Err(PathError::NameTooLong { len });
        }
        if rules.limits.is_some_and(|limits| depth > limits.max_depth) {
            return Err(PathError::TooDeep { depth });
        }
        Ok(RelPath(path))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// Whether this is the destination itself (`./`, `/` or an empty path).
    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The names, from the destination down.
    pub fn iter(&self) -> std::path::Iter<'_> {
        self.0.iter()
    }

    pub fn depth(&self) -> usize {
        self.0.iter().count()
    }

    /// The directory the entry is in (relative, empty for the destination) and its own name;
    /// `None` for the destination itself.
    pub fn split_last(&self) -> Option<(&Path, &OsStr)> {
        Some((self.0.parent()?, self.0.file_name()?))
    }
}

/// Whether a symlink at `at` whose target is `target` stays inside the destination, read
/// lexically: relative, not empty, without NUL, and no `..` climbing above the destination
/// from the directory the link is in.
///
/// The `..` that lead a target climb the real directories the link was made in (nothing is
/// ever written through a symlink, and replacing one of those directories removes the link),
/// so for them the lexical reading is exact; for a `..` after a name it is exact only while
/// that name is a real directory, which [`climbed_names`] is for.
pub fn symlink_stays_inside(at: &RelPath, target: &[u8]) -> bool {
    if target.is_empty() || target.contains(&0) {
        return false;
    }
    let mut depth = at.depth().saturating_sub(1);
    for component in Path::new(OsStr::from_bytes(target)).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The start of a symlink target up to its last `..` that follows a name (`a/s/..` of
/// `a/s/../b`), or `None` when every `..` leads the target.
///
/// That is the part a lexical check cannot vouch for: once `a/s` is itself a symlink,
/// `a/s/..` is one up from where `a/s` leads, not `a`. With `a/s -> ..`, `t -> a/s/..` passes
/// [`symlink_stays_inside`] yet names the destination's parent. Once the tree is complete,
/// the caller opens this part below the link's directory with [`Dir::open_beneath`], which
/// refuses a symlink anywhere on the way: if every name climbed out of is a real directory,
/// the lexical reading is exact, and what follows the last `..` holds only names (links among
/// them being checked in turn).
pub fn climbed_names(target: &[u8]) -> Option<PathBuf> {
    let components: Vec<Component<'_>> =
        Path::new(OsStr::from_bytes(target)).components().collect();
    let mut named = false;
    let mut end = 0;
    for (i, component) in components.iter().enumerate() {
        match component {
            Component::Normal(_) => named = true,
            Component::ParentDir if named => end = i + 1,
            _ => {}
        }
    }
    (end > 0).then(|| components[..end].iter().collect())
}

// ---------------------------------------------------------------------------------------------
// The tree on disk, one name at a time.

/// What is at a name: the name itself, never where a symlink there leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// What [`Dir::resolve_in_root`] does at a directory that is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Makes it, with this mode (before the umask).
    Make(u32),
    /// Stops: the answer is `None`.
    Stop,
}

/// A directory opened `O_PATH`: a handle for `*at` calls below it, which needs only the
/// search permission a walk of paths needed too. Reading its names opens it again.
#[derive(Debug)]
pub struct Dir(OwnedFd);

/// Flags of every directory opened below the destination. With `O_DIRECTORY|O_NOFOLLOW`,
/// Linux refuses a symlink at the name (`ENOTDIR`, or `ELOOP` with other flags) whatever it
/// points at; `O_PATH` asks for no permission on the directory itself.
const DIR_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Set once `openat2(2)` turns out to be missing (Linux before 5.6, or a seccomp filter).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Whether `e` is the OS error `errno`.
pub fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}

fn os_error(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Dir {
    /// Opens `path`, the destination. Symlinks in `path` are followed: the caller names it.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        Ok(Dir(owned(nix::fcntl::open(path, flags, Mode::empty())?)))
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }

    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir(self.0.try_clone()?))
    }

    /// Opens the directory `name`. `ENOTDIR` when anything else is there, a symlink included.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        match nix::fcntl::openat(self.fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Dir(owned(fd))),
            Err(Errno::ELOOP) => Err(os_error(Errno::ENOTDIR)),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the directory `name`; `EEXIST` when anything is there (`mkdirat(2)` does not
    /// follow a symlink at the name, even a dangling one).
    pub fn make_dir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        nix::sys::stat::mkdirat(self.fd(), name, Mode::from_bits_truncate(mode))?;
        Ok(())
    }

    /// Opens the directory `name`, making it when missing; also says whether it made it.
    /// `ENOTDIR` when something else is there, a symlink included.
    pub fn make_or_open_dir(&self, name: &OsStr, mode: u32) -> io::Result<(Dir, bool)> {
        let made = match self.make_dir(name, mode) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        Ok((self.open_dir(name)?, made))
    }

    /// Creates the file `name` for writing. `O_CREAT|O_EXCL` fails with `EEXIST` at any name
    /// that exists, a symlink included, and never opens what is there.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(self.fd(), name, flags, Mode::from_bits_truncate(mode))?;
        Ok(File::from(owned(fd)))
    }

    /// Makes the symlink `name -> target`, the target kept verbatim (`EEXIST` when anything
    /// is at `name`).
    pub fn symlink(&self, name: &OsStr, target: &OsStr) -> io::Result<()> {
        nix::unistd::symlinkat(target, self.fd(), name)?;
        Ok(())
    }

    /// Makes `name` a hard link to `source` in `from`. Without `AT_SYMLINK_FOLLOW`, `linkat(2)`
    /// links a symlink at `source` itself, never what it points at; `EEXIST` when anything is
    /// at `name`.
    pub fn hard_link(&self, name: &OsStr, from: &Dir, source: &OsStr) -> io::Result<()> {
        nix::unistd::linkat(from.fd(), source, self.fd(), name, AtFlags::empty())?;
        Ok(())
    }

    /// What is at `name`, `None` when nothing is (`fstatat(2)` with `AT_SYMLINK_NOFOLLOW`).
    pub fn kind(&self, name: &OsStr) -> io::Result<Option<Kind>> {
        let stat = match nix::sys::stat::fstatat(self.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        Ok(Some(if format == SFlag::S_IFDIR {
            Kind::Dir
        } else if format == SFlag::S_IFREG {
            Kind::File
        } else if format == SFlag::S_IFLNK {
            Kind::Symlink
        } else {
            Kind::Other
        }))
    }

    /// The target of the symlink `name`, `None` when `name` is something else (`EINVAL` from
    /// `readlinkat(2)`).
    pub fn read_link(&self, name: &OsStr) -> io::Result<Option<OsString>> {
        match nix::fcntl::readlinkat(self.fd(), name) {
            Ok(target) => Ok(Some(target)),
            Err(Errno::EINVAL) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes whatever is at `name`, a directory with all it holds; nothing if nothing is
    /// there. Only `unlinkat(2)` on names in directories opened here, so a symlink anywhere
    /// in the subtree is removed, never followed.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        use nix::unistd::{unlinkat, UnlinkatFlags};
        match unlinkat(self.fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            // Linux answers `EISDIR` for a directory (POSIX allows `EPERM`).
            Err(first @ (Errno::EISDIR | Errno::EPERM)) => {
                let dir = match self.open_dir(name) {
                    Ok(dir) => dir,
                    Err(e) if is_errno(&e, Errno::ENOTDIR) => return Err(first.into()),
                    Err(e) => return Err(e),
                };
                for (child, _) in dir.names()? {
                    dir.remove(&child)?;
                }
                unlinkat(self.fd(), name, UnlinkatFlags::RemoveDir)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `name` with `make`, replacing whatever is there as tar does, a directory with all
    /// it holds. `make` must fail with `EEXIST` rather than open or follow what is there (as
    /// [`Dir::create_file`], [`Dir::symlink`], [`Dir::hard_link`] and [`Dir::make_dir`] do);
    /// what is there is then removed and `make` tried once more, so the usual case of a new
    /// name costs one call.
    pub fn replace<T>(
        &self,
        name: &OsStr,
        make: impl Fn(&Dir, &OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        match make(self, name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(name)?;
                make(self, name)
            }
            made => made,
        }
    }

    /// The names in this directory (not `.` and `..`) and what each is. Opens it again for
    /// reading, which needs the read permission `O_PATH` did not.
    pub fn names(&self) -> io::Result<Vec<(OsString, Kind)>> {
        use nix::dir::Type;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut stream = nix::dir::Dir::openat(self.fd(), ".", flags, Mode::empty())?;
        let mut names = Vec::new();
        for entry in stream.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            let kind = match entry.file_type() {
                Some(Type::Directory) => Kind::Dir,
                Some(Type::File) => Kind::File,
                Some(Type::Symlink) => Kind::Symlink,
                Some(_) => Kind::Other,
                // Some file systems do not fill in `d_type`.
                None => match self.kind(&name)? {
                    Some(kind) => kind,
                    None => continue,
                },
            };
            names.push((name, kind));
        }
        Ok(names)
    }

    /// Gives `name` (a symlink itself, not its target) to `uid` and `gid`.
    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        use nix::unistd::{Gid, Uid};
        nix::unistd::fchownat(
            self.fd(),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Sets the access and modification times of `name` (a symlink itself, not its target).
    pub fn set_mtime(&self, name: &OsStr, mtime: i64) -> io::Result<()> {
        let time = TimeSpec::new(mtime, 0);
        nix::sys::stat::utimensat(
            self.fd(),
            name,
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }

    /// Sets the mode of this directory itself. There is no `chmod` that refuses a symlink
    /// (before `fchmodat2`), and `fchmod` refuses an `O_PATH` descriptor; `.` relative to the
    /// descriptor is the directory it holds, never a symlink, and needs no read permission.
    pub fn set_own_mode(&self, mode: u32) -> io::Result<()> {
        nix::sys::stat::fchmodat(
            self.fd(),
            ".",
            Mode::from_bits_truncate(mode),
            FchmodatFlags::FollowSymlink,
        )?;
        Ok(())
    }

    /// Sets the access and modification times of this directory itself.
    pub fn set_own_mtime(&self, mtime: i64) -> io::Result<()> {
        self.set_mtime(OsStr::new("."), mtime)
    }

    /// Opens the directory at `path` below this one, `path` being names and `..`, refusing a
    /// symlink anywhere on the way, the last name included (`ELOOP`), and a `..` above this
    /// directory (`EXDEV`); `ENOENT` or `ENOTDIR` when a name is missing or not a directory.
    ///
    /// One `openat2(2)` with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS` walks the whole path in the
    /// kernel; where there is none, one `openat` a name.
    pub fn open_beneath(&self, path: &Path) -> io::Result<Dir> {
        use nix::fcntl::{openat2, OpenHow, ResolveFlag};
        if path.as_os_str().is_empty() {
            return self.try_clone();
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            for _ in 0..3 {
                match openat2(self.0.as_raw_fd(), path, how) {
                    Ok(fd) => return Ok(Dir(owned(fd))),
                    // A rename or mount raced the lookup, and the kernel asks for another try.
                    Err(Errno::EAGAIN) => continue,
                    // No `openat2` here (a seccomp filter may answer `EPERM`).
                    Err(Errno::ENOSYS | Errno::EPERM) => {
                        NO_OPENAT2.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.walk_beneath(path)
    }

    /// [`Dir::open_beneath`] one name at a time, without `openat2`.
    fn walk_beneath(&self, path: &Path) -> io::Result<Dir> {
        let mut open: Vec<Dir> = Vec::new();
        for component in path.components() {
            match component {
                Component::CurDir => {}
                Component::ParentDir => {
                    if open.pop().is_none() {
                        return Err(os_error(Errno::EXDEV));
                    }
                }
                Component::Normal(name) => {
                    let here = open.last().unwrap_or(self);
                    match here.open_dir(name) {
                        Ok(dir) => open.push(dir),
                        Err(e) if is_errno(&e, Errno::ENOTDIR) => {
                            return Err(match here.kind(name)? {
                                Some(Kind::Symlink) => os_error(Errno::ELOOP),
                                _ => e,
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
                Component::RootDir | Component::Prefix(_) => return Err(os_error(Errno::EXDEV)),
            }
        }
        match open.pop() {
            Some(dir) => Ok(dir),
            None => self.try_clone(),
        }
    }

    /// Opens the directory `names` lead to from this one, resolving every symlink on the way
    /// as if this directory were `/` (what a link in an image means once the container runs,
    /// and what containerd's `fs.RootPath` and `securejoin` do): an absolute target restarts
    /// here, and `..` never climbs above here. Also returns the path it resolved to, relative
    /// to here. A directory that is missing is made or ends the walk (`None`), as `missing`
    /// says; a name that is neither a directory nor a symlink is `ENOTDIR`; more than
    /// [`MAX_SYMLINKS`] links `ELOOP`.
    ///
    /// Every name kept in the resolved path is a real directory (opened with `O_NOFOLLOW`),
    /// so `..` is applied to the names, and the directory it leaves is opened again with
    /// [`Dir::open_beneath`]: only two directories are open at a time, however deep.
    pub fn resolve_in_root<'a>(
        &self,
        names: impl IntoIterator<Item = &'a OsStr>,
        missing: Missing,
    ) -> io::Result<Option<(Dir, PathBuf)>> {
        let mut pending: Vec<OsString> = names.into_iter().map(OsStr::to_os_string).collect();
        pending.reverse();
        let mut resolved = PathBuf::new();
        // `None` is `self`.
        let mut here: Option<Dir> = None;
        let mut links = 0;
        while let Some(name) = pending.pop() {
            match name.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if resolved.pop() {
                        here = match resolved.as_os_str().is_empty() {
                            true => None,
                            false => Some(self.open_beneath(&resolved)?),
                        };
                    }
                    continue;
                }
                _ => {}
            }
            let dir = here.as_ref().unwrap_or(self);
            let next = match dir.open_dir(&name) {
                Ok(next) => next,
                Err(e) if is_errno(&e, Errno::ENOTDIR) => {
                    let Some(target) = dir.read_link(&name)? else {
                        return Err(e);
                    };
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(os_error(Errno::ELOOP));
                    }
                    let target = Path::new(&target);
                    if target.is_absolute() {
                        resolved.clear();
                        here = None;
                    }
                    for component in target.components().rev() {
                        match component {
                            Component::Normal(part) => pending.push(part.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                    continue;
                }
                Err(e) if is_errno(&e, Errno::ENOENT) => match missing {
                    Missing::Make(mode) => dir.make_or_open_dir(&name, mode)?.0,
                    Missing::Stop => return Ok(None),
                },
                Err(e) => return Err(e),
            };
            resolved.push(&name);
            here = Some(next);
        }
        let dir = match here {
            Some(dir) => dir,
            None => self.try_clone()?,
        };
        Ok(Some((dir, resolved)))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    use super::*;

    const LAYER: Rules = Rules {
        absolute: Absolute::Inside,
        limits: None,
    };
    const UPLOAD: Rules = Rules {
        absolute: Absolute::Refused,
        limits: Some(PathLimits {
            max_path_bytes: 4096,
            max_depth: 256,
            max_name_bytes: 255,
        }),
    };

    #[track_caller]
    fn check(raw: &str, rules: Rules, expected: Result<&str, PathError>) {
        let got = RelPath::parse(raw.as_bytes(), rules);
        let got = got.as_ref().map(|p| p.as_path().to_str().unwrap());
        assert_eq!(
            got,
            expected.as_ref().copied(),
            "{:?}",
            &raw[..raw.len().min(60)]
        );
    }

    #[test]
    fn entry_paths() {
        use PathError::*;
        for rules in [LAYER, UPLOAD] {
            check("a/b", rules, Ok("a/b"));
            check("./a/b/", rules, Ok("a/b"));
            check("a//./b/.", rules, Ok("a/b"));
            check("./", rules, Ok(""));
            check("", rules, Ok(""));
            check("..a/b..", rules, Ok("..a/b.."));
            check("a/..", rules, Err(DotDot));
            check("../a", rules, Err(DotDot));
            check("./../a", rules, Err(DotDot));
            check("a/../b", rules, Err(DotDot));
            check("a/\0/../../x", rules, Err(Nul));
            check("a\0", rules, Err(Nul));
        }
        check("/etc/passwd", LAYER, Ok("etc/passwd"));
        check("//twice/./dotted", LAYER, Ok("twice/dotted"));
        check("/", LAYER, Ok(""));
        check("/etc/passwd", UPLOAD, Err(Absolute));
        check("/", UPLOAD, Err(Absolute));
        check("/../x", UPLOAD, Err(Absolute));

        // The caps apply where asked for, and only there.
        let deep = format!("{}f", "a/".repeat(256));
        check(&deep, UPLOAD, Err(TooDeep { depth: 257 }));
        assert!(RelPath::parse(deep.as_bytes(), LAYER).is_ok());
        let ok = format!("{}f", "a/".repeat(255));
        assert_eq!(RelPath::parse(ok.as_bytes(), UPLOAD).unwrap().depth(), 256);
        check(&"n".repeat(255), UPLOAD, Ok(&"n".repeat(255)));
        check(
            &format!("x/{}", "n".repeat(256)),
            UPLOAD,
            Err(NameTooLong { len: 256 }),
        );
        check(&format!("{}xx", "./".repeat(2047)), UPLOAD, Ok("xx"));
        check(
            &format!("{}x", "./".repeat(2048)),
            UPLOAD,
            Err(TooLong { len: 4097 }),
        );
        // The order of the checks: length, then NUL, then escapes, then names and depth.
        check(
            &format!("../{}", "a/".repeat(3000)),
            UPLOAD,
            Err(TooLong { len: 6003 }),
        );
        check(&format!("{}/../x", "n".repeat(300)), UPLOAD, Err(DotDot));
        check(
            &format!("{}{}", "a/".repeat(300), "n".repeat(300)),
            UPLOAD,
            Err(NameTooLong { len: 300 }),
        );
    }

    #[test]
    fn splits_into_parent_and_name() {
        let p = RelPath::parse(b"./a/b/c/", UPLOAD).unwrap();
        assert_eq!(p.split_last(), Some((Path::new("a/b"), OsStr::new("c"))));
        let p = RelPath::parse(b"c", UPLOAD).unwrap();
        assert_eq!(p.split_last(), Some((Path::new(""), OsStr::new("c"))));
        assert_eq!(RelPath::parse(b"./", UPLOAD).unwrap().split_last(), None);
    }

    #[test]
    fn symlink_targets() {
        #[track_caller]
        fn check(at: &str, target: &str, inside: bool, climbed: Option<&str>) {
            let at = RelPath::parse(at.as_bytes(), UPLOAD).unwrap();
            assert_eq!(
                symlink_stays_inside(&at, target.as_bytes()),
                inside,
                "{target}"
            );
            assert_eq!(
                climbed_names(target.as_bytes()).as_deref(),
                climbed.map(Path::new),
                "{target}"
            );
        }
        check("l", "a.py", true, None);
        check("src/l", "../README", true, None);
        check("a/b/l", "../../x", true, None);
        check("a/b/l", "./../.././x/", true, None);
        check("a/b/l", "../../../x", false, None);
        check("l", "..", false, None);
        check("l", ".", true, None);
        check("l", "/etc/passwd", false, None);
        check("l", "", false, None);
        check("l", "a\0/../../..", false, Some("a\0/../../.."));
        // A `..` after a name: inside lexically, but only the tree can tell.
        check("up", "src/../src", true, Some("src/.."));
        check("a/s", "..", true, None);
        check("t", "a/s/..", true, Some("a/s/.."));
        check("t", "a/s/../b/c", true, Some("a/s/.."));
        check("t", "a/../b/../c", true, Some("a/../b/.."));
        check("d/t", "../a/b/..", true, Some("../a/b/.."));
        check("t", "a/../..", false, Some("a/../.."));
        check("t", "a/s/../../..", false, Some("a/s/../../.."));
    }

    /// `outer/root` is the destination; anything that escapes lands in `outer`.
    struct Tree {
        outer: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let outer = tempfile::tempdir().unwrap();
            fs::create_dir(outer.path().join("root")).unwrap();
            fs::write(outer.path().join("secret"), "outside").unwrap();
            Tree { outer }
        }

        fn root_path(&self) -> PathBuf {
            self.outer.path().join("root")
        }

        fn root(&self) -> Dir {
            Dir::open(&self.root_path()).unwrap()
        }

        fn dir(&self, rel: &str) {
            fs::create_dir_all(self.root_path().join(rel)).unwrap();
        }

        fn link(&self, rel: &str, target: &str) {
            symlink(target, self.root_path().join(rel)).unwrap();
        }

        fn outside(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.outer.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> Errno {
        Errno::from_raw(r.unwrap_err().raw_os_error().expect("an OS error"))
    }

    #[test]
    fn open_beneath_refuses_links_and_escapes() {
        let t = Tree::new();
        t.dir("a/b/c");
        fs::write(t.root_path().join("a/file"), "").unwrap();
        t.link("a/up", "..");
        t.link("a/to-b", "b");
        t.link("out", "..");
        let root = t.root();
        for walk in [false, true] {
            let open = |path: &str| {
                let path = Path::new(path);
                match walk {
                    false => root.open_beneath(path),
                    true => root.walk_beneath(path),
                }
            };
            #[track_caller]
            fn fails<T: std::fmt::Debug>(r: io::Result<T>, errno: Errno) {
                assert_eq!(errno_of(r), errno);
            }
            assert!(open("a/b/c").is_ok());
            assert!(open("a/b/../b/./c/..").is_ok());
            assert!(open("").is_ok());
            fails(open("a/to-b"), Errno::ELOOP);
            fails(open("a/to-b/c"), Errno::ELOOP);
            fails(open("a/up/a"), Errno::ELOOP);
            fails(open("out"), Errno::ELOOP);
            fails(open(".."), Errno::EXDEV);
            fails(open("a/../.."), Errno::EXDEV);
            fails(open("a/b/../../../root"), Errno::EXDEV);
            fails(open("a/missing/c"), Errno::ENOENT);
            fails(open("a/file/c"), Errno::ENOTDIR);
            fails(open("a/file"), Errno::ENOTDIR);
        }
    }

    #[test]
    fn resolve_in_root_keeps_links_inside() {
        let t = Tree::new();
        let outer = t.outer.path().to_str().unwrap().to_owned();
        t.dir("real/sub");
        t.link("etc", "/");
        t.link("up", "..");
        t.link("deep", "real/sub/../../../../..");
        t.link("abs", &outer);
        t.link("chain1", "chain2");
        t.link("chain2", "up/up/real");
        t.link("loop1", "loop2");
        t.link("loop2", "loop1");
        fs::write(t.root_path().join("file"), "").unwrap();
        let root = t.root();
        let resolve = |path: &str, missing| {
            let names: Vec<&OsStr> = Path::new(path).iter().collect();
            root.resolve_in_root(names, missing)
                .map(|r| r.map(|(_, rel)| rel.to_str().unwrap().to_owned()))
        };
        let at = |path: &str| resolve(path, Missing::Stop).unwrap();
        assert_eq!(at("real/sub").as_deref(), Some("real/sub"));
        assert_eq!(at("etc").as_deref(), Some(""));
        assert_eq!(at("etc/real").as_deref(), Some("real"));
        assert_eq!(at("up/up/up/real/sub").as_deref(), Some("real/sub"));
        assert_eq!(at("deep").as_deref(), Some(""));
        assert_eq!(at("chain1/sub").as_deref(), Some("real/sub"));
        assert_eq!(at("real/sub/../..").as_deref(), Some(""));
        assert_eq!(
            at("abs"),
            None,
            "an absolute target is read inside the root"
        );
        assert_eq!(errno_of(resolve("loop1", Missing::Stop)), Errno::ELOOP);
        assert_eq!(errno_of(resolve("file/x", Missing::Stop)), Errno::ENOTDIR);

        // Made where the link leads inside the root, not outside.
        let made = resolve("abs/made/deeper", Missing::Make(0o755)).unwrap();
        let expected = Path::new(outer.trim_start_matches('/')).join("made/deeper");
        assert_eq!(made.as_deref(), expected.to_str());
        assert!(t.root_path().join(&expected).is_dir());
        assert_eq!(t.outside(), ["root", "secret"]);
    }

    #[test]
    fn writes_never_follow_a_symlink_at_the_name() {
        let t = Tree::new();
        let secret = t.outer.path().join("secret");
        t.link("f", secret.to_str().unwrap());
        t.link("d", t.outer.path().to_str().unwrap());
        let root = t.root();
        let name = OsStr::new;

        assert_eq!(
            root.create_file(name("f"), 0o644).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(errno_of(root.make_dir(name("f"), 0o755)), Errno::EEXIST);
        assert_eq!(
            errno_of(root.make_or_open_dir(name("d"), 0o755)),
            Errno::ENOTDIR
        );
        assert_eq!(errno_of(root.open_dir(name("d"))), Errno::ENOTDIR);
        assert_eq!(root.kind(name("d")).unwrap(), Some(Kind::Symlink));
        assert_eq!(root.kind(name("none")).unwrap(), None);
        assert_eq!(
            root.read_link(name("f")).unwrap().as_deref(),
            Some(secret.as_os_str())
        );
        // Metadata goes on the link itself.
        root.set_mtime(name("f"), 1_000_000).unwrap();
        assert_ne!(fs::metadata(&secret).unwrap().mtime(), 1_000_000);

        // Replacing the link replaces the link, not what it points at.
        let mut file = root
            .replace(name("f"), |d, n| d.create_file(n, 0o600))
            .unwrap();
        file.write_all(b"new").unwrap();
        assert_eq!(fs::read_to_string(&secret).unwrap(), "outside");
        assert_eq!(fs::read_to_string(t.root_path().join("f")).unwrap(), "new");

        // A hard link to a symlink is a second name for the symlink.
        t.link("s", secret.to_str().unwrap());
        root.hard_link(name("h"), &root, name("s")).unwrap();
        assert_eq!(root.kind(name("h")).unwrap(), Some(Kind::Symlink));
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);

        // Removing a tree removes the links in it, not what they point at.
        t.dir("tree/sub");
        t.link("tree/sub/out", t.outer.path().to_str().unwrap());
        t.link("tree/secret", secret.to_str().unwrap());
        root.remove(name("tree")).unwrap();
        root.remove(name("d")).unwrap();
        root.remove(name("none")).unwrap();
        assert_eq!(root.kind(name("tree")).unwrap(), None);
        assert_eq!(t.outside(), ["root", "secret"]);
        assert_eq!(fs::read_to_string(&secret).unwrap(), "outside");
    }

    #[test]
    fn directory_metadata_through_an_o_path_handle() {
        let t = Tree::new();
        t.dir("d/e");
        let root = t.root();
        let d = root.open_dir(OsStr::new("d")).unwrap();
        d.set_own_mode(0o311).unwrap();
        d.set_own_mtime(1_000_000).unwrap();
        let meta = fs::metadata(t.root_path().join("d")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o311);
        assert_eq!(meta.mtime(), 1_000_000);
        // Search permission is all a walk needs, as it was for a walk of paths.
        assert!(root.open_beneath(Path::new("d/e")).is_ok());
        d.set_own_mode(0o755).unwrap();
        let mut names = d.names().unwrap();
        names.sort();
        assert_eq!(names, [(OsString::from("e"), Kind::Dir)]);
    }
}
