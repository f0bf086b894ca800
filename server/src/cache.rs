//! What jobs leave for later jobs: installed dependency layers (per user and key, see
//! `install::deps_key`) and the installers' download caches (uv's and pip's, per user), and
//! what keeps them in bounds:
//!
//! - expiry: an entry unused for `--cache-max-age` is removed ([`collect`]);
//! - a size cap per user over all of that user's entries, least recently used removed first
//!   ([`evict`]), run after each install and hourly;
//! - a registry of the entries running jobs use ([`Registry`]), which neither removes; an
//!   installer cache is used by one install at a time ([`Registry::claim`]);
//! - the disk use of a tree ([`usage`]), which the install's caps are checked with;
//! - [`merge`]: an install sees its user's installer cache through an overlay whose upper
//!   directory is the job's, so what it writes can be measured alone and dropped when it
//!   fails; only a kept install's writes are merged into the cache.
//!
//! An entry's last use is its directory's mtime, set by the server ([`touch`]) when a job
//! starts using it and when an install ends, so a job cannot move it.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// The least an entry is counted for: one block of the usual 4 KiB. An empty file or a
/// symlink allocates no block but takes an inode, and a flood of them fills a filesystem's
/// inode table as surely as data fills its blocks; this way one cap covers both.
pub const MIN_ENTRY_BYTES: u64 = 4096;

/// Where entries go to be removed: renamed there first, so a job never sees one half removed.
const TRASH: &str = ".trash";

/// Disk use of a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (`st_blocks`), at least [`MIN_ENTRY_BYTES`] per entry, hard-linked
    /// files once.
    pub bytes: u64,
    /// Files, directories, links and other entries, the root included.
    pub entries: u64,
}

/// The disk use of the tree at `root` (nothing if it is missing). Stops early, with what it
/// counted so far, once the count passes `limit`: a caller asking "is it over?" does not
/// pay for the rest.
///
/// Symlinks are not followed and hard links count once. A directory the walk may not read
/// is opened up for its owner first (overlayfs leaves its work directory mode 000, a job
/// may leave others so; a server that is not root reads them only as their owner, and
/// root never needs to). Entries removed during the walk are skipped. The walk goes by
/// path: a job that swaps a directory for a symlink while it runs makes it count what the
/// link leads to, which can only stop that job sooner. A tree deeper than paths may be
/// long fails with `ENAMETOOLONG`: the caller treats a tree it cannot measure as over any
/// cap.
pub fn usage(root: &Path, limit: u64) -> io::Result<Usage> {
    let mut usage = Usage::default();
    let meta = match std::fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(usage),
        Err(e) => return Err(e),
    };
    let mut seen = HashSet::new();
    let mut count = |meta: &Metadata, usage: &mut Usage| {
        if !meta.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        usage.entries += 1;
        usage.bytes = usage
            .bytes
            .saturating_add((meta.blocks() * 512).max(MIN_ENTRY_BYTES));
    };
    count(&meta, &mut usage);
    if !meta.is_dir() {
        return Ok(usage);
    }
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            count(&meta, &mut usage);
            if meta.is_dir() {
                dirs.push(entry.path());
            }
            if usage.bytes > limit {
                return Ok(usage);
            }
        }
    }
    Ok(usage)
}

/// Lists a directory, first giving its owner rwx on it when the listing is refused.
fn read_dir(dir: &Path) -> io::Result<std::fs::ReadDir> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(dir)?;
            std::fs::read_dir(dir)
        }
        other => other,
    }
}

fn open_up(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(dir)?.permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700))
}

/// Marks a cache entry as used now.
pub fn touch(path: &Path) {
    let now = SystemTime::now();
    let result = std::fs::File::open(path)
        .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(now)));
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "cannot mark cache entry as used");
    }
}

/// What running jobs use, and the sizes of the dependency layers (which never change once
/// stored, so each is measured once per server run). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<Mutex<Held>>);

#[derive(Debug, Default)]
struct Held {
    /// Entries in use, with how many jobs use each.
    users: HashMap<PathBuf, usize>,
    layer_sizes: HashMap<PathBuf, u64>,
}

/// One job's use of a cache entry, given back when dropped.
#[derive(Debug)]
pub struct Hold {
    registry: Registry,
    path: PathBuf,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.registry.lock();
        if let Some(n) = held.users.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                held.users.remove(&self.path);
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `path` as used by one more job. Take it before looking the entry up: an entry
    /// held is never removed, one removed before is then simply missing.
    pub fn hold(&self, path: &Path) -> Hold {
        *self.lock().users.entry(path.to_path_buf()).or_default() += 1;
        Hold {
            registry: self.clone(),
            path: path.to_path_buf(),
        }
    }

    /// Marks `path` as used by this job alone; `None` when another job uses it.
    pub fn claim(&self, path: &Path) -> Option<Hold> {
        let mut held = self.lock();
        if held.users.contains_key(path) {
            return None;
        }
        held.users.insert(path.to_path_buf(), 1);
        drop(held);
        Some(Hold {
            registry: self.clone(),
            path: path.to_path_buf(),
        })
    }

    pub fn in_use(&self, path: &Path) -> bool {
        self.lock().users.contains_key(path)
    }

    /// Remembers the size of a stored dependency layer.
    pub fn set_layer_size(&self, path: &Path, bytes: u64) {
        self.lock().layer_sizes.insert(path.to_path_buf(), bytes);
    }

    fn layer_size(&self, path: &Path) -> Option<u64> {
        self.lock().layer_sizes.get(path).copied()
    }

    /// Moves `entry` into `trash` unless a job uses it, checked and done under the lock so
    /// no job can take it up in between; `Ok(None)` when it is in use.
    fn take_unless_used(&self, entry: &Path, trash: &Path) -> io::Result<Option<PathBuf>> {
        let mut held = self.lock();
        if held.users.contains_key(entry) {
            return Ok(None);
        }
        fs_err::create_dir_all(trash)?;
        let doomed = trash.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::rename(entry, &doomed)?;
        held.layer_sizes.remove(entry);
        Ok(Some(doomed))
    }

    /// Removes `entry` now unless a job uses it; returns whether it went.
    pub fn remove_unless_used(&self, cache_dir: &Path, entry: &Path) -> io::Result<bool> {
        match self.take_unless_used(entry, &cache_dir.join(TRASH))? {
            Some(doomed) => {
                remove_entry(&doomed);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Removes the tree at `dir`, opening up directories its owner closed (overlayfs leaves its
/// work directory mode 000, a job may leave others so; a server that is not root may not
/// list them until then). A missing tree is no error.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut removed = std::fs::remove_dir_all(dir);
    if removed.is_err() {
        open_dirs(dir);
        removed = std::fs::remove_dir_all(dir);
    }
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// [`remove_tree`] for cache entries, whose failure is only logged.
fn remove_entry(dir: &Path) {
    if let Err(e) = remove_tree(dir) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove cache entry");
    }
}

/// Gives the owner rwx on every directory under `dir` (a job may leave some mode 000).
fn open_dirs(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = open_up(dir);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        open_dirs(&entry.path());
    }
}

/// Merges what an install wrote through an overlay (its upper directory `upper`) into the
/// installer cache `lower` it was the lower layer of, the way overlayfs shows them: a
/// whiteout (a 0/0 character device) removes the entry below, a directory new to the
/// cache moves in whole, one present in both is merged, anything else replaces what is
/// below. Moves (renames) only: the upper directory must be on the cache's filesystem.
/// No job may have `lower` mounted meanwhile ([`Registry::claim`]). Blocking.
///
/// An opaque directory (deleted and made again, marked with an `overlay.opaque` xattr)
/// is merged like any other, so what it hid stays: an installer cache keeps a stale
/// entry, which is less than wrong.
pub fn merge(upper: &Path, lower: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let mut moved = 0;
    for entry in read_dir(upper)? {
        let entry = entry?;
        let (from, to) = (entry.path(), lower.join(entry.file_name()));
        let meta = entry.metadata()?;
        let below = std::fs::symlink_metadata(&to).ok();
        let below_dir = below.as_ref().is_some_and(Metadata::is_dir);
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            if below_dir {
                remove_tree(&to)?;
            } else if below.is_some() {
                std::fs::remove_file(&to)?;
            }
            continue;
        }
        if meta.is_dir() && below_dir {
            moved += merge(&from, &to)?;
            continue;
        }
        // rename(2) replaces a file with a file and an empty directory with a directory;
        // anything else below goes first.
        if below_dir {
            remove_tree(&to)?;
        } else if below.is_some() && meta.is_dir() {
            std::fs::remove_file(&to)?;
        }
        std::fs::rename(&from, &to)?;
        moved += 1;
    }
    Ok(moved)
}

/// Where the dependency layers are: `deps/<user>/<key>`.
const LAYERS: &str = "deps";

/// Where the projects' bytecode trees are: `pyc/<user>/<key>` ([`crate::bytecode`]).
pub const BYTECODE: &str = "pyc";

/// Where the projects' own installs are: `proj/<user>/<key>` ([`crate::install::project_key`]).
const PROJECTS: &str = "proj";

/// The install of a project (the upper layer over its dependency layer) under `key`.
pub fn project_dir(cache_dir: &Path, user: &str, key: &str) -> PathBuf {
    cache_dir.join(PROJECTS).join(user).join(key)
}

/// The dependency layer `key` of `user`.
pub fn layer_dir(cache_dir: &Path, user: &str, key: &str) -> PathBuf {
    cache_dir.join(LAYERS).join(user).join(key)
}

/// The download cache of `installer` for `user`: `uv/<user>` or `pip/<user>`.
pub fn installer_dir(cache_dir: &Path, installer: ci_project::Installer, user: &str) -> PathBuf {
    cache_dir.join(installer.as_str()).join(user)
}

/// Settles what a previous server process left: entries it was removing.
pub fn recover(cache_dir: &Path) {
    remove_entry(&cache_dir.join(TRASH));
}

fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The entries of the cache: `deps/<user>/<key>`, `proj/<user>/<key>`, `pyc/<user>/<key>`,
/// `uv/<user>` and `pip/<user>`, with their user.
fn entries(cache_dir: &Path) -> Vec<(String, PathBuf)> {
    let user = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for kind in [LAYERS, PROJECTS, BYTECODE] {
        for dir in children(&cache_dir.join(kind)) {
            let owner = user(&dir);
            out.extend(children(&dir).into_iter().map(|p| (owner.clone(), p)));
        }
    }
    for kind in [ci_project::Installer::Uv, ci_project::Installer::Pip] {
        out.extend(
            children(&cache_dir.join(kind.as_str()))
                .into_iter()
                .map(|p| (user(&p), p)),
        );
    }
    out
}

/// Removes the entries no job used for `max_age`; returns how many.
pub fn collect(cache_dir: &Path, max_age: Duration, registry: &Registry) -> usize {
    let Some(cutoff) = SystemTime::now().checked_sub(max_age) else {
        return 0;
    };
    let mut removed = 0;
    for (_, entry) in entries(cache_dir) {
        let old = std::fs::symlink_metadata(&entry)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if !old {
            continue;
        }
        match registry.remove_unless_used(cache_dir, &entry) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %entry.display(), error = %e, "cannot remove expired cache entry")
            }
        }
    }
    removed
}

/// What [`evict`] found and did for one user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// The user's entries' disk use once done.
    pub bytes: u64,
    /// The entries removed, least recently used first.
    pub removed: Vec<PathBuf>,
}

/// Brings `user`'s entries to at most `max_size` bytes by removing the least recently used
/// ones that no job uses. What is left may still be over: every remaining entry is in use.
pub fn evict(
    cache_dir: &Path,
    user: &str,
    max_size: u64,
    registry: &Registry,
) -> io::Result<Eviction> {
    let mut sized = Vec::new();
    for (_, path) in entries(cache_dir).into_iter().filter(|(u, _)| u == user) {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        // Layers and bytecode trees do not change once stored: measured once.
        let grandparent = path.parent().and_then(Path::parent);
        let layer = [LAYERS, PROJECTS, BYTECODE]
            .iter()
            .any(|kind| grandparent == Some(cache_dir.join(kind).as_path()));
        let bytes = match registry.layer_size(&path).filter(|_| layer) {
            Some(bytes) => bytes,
            None => {
                let bytes = usage(&path, u64::MAX)?.bytes;
                if layer {
                    registry.set_layer_size(&path, bytes);
                }
                bytes
            }
        };
        sized.push((used, path, bytes));
    }
    sized.sort();
    let mut eviction = Eviction {
        bytes: sized.iter().map(|(_, _, b)| b).sum(),
        removed: Vec::new(),
    };
    for (_, path, bytes) in sized {
        if eviction.bytes <= max_size {
            break;
        }
        if registry.remove_unless_used(cache_dir, &path)? {
            eviction.bytes -= bytes;
            eviction.removed.push(path);
        }
    }
    Ok(eviction)
}

/// The hourly pass: removes the entries no job used for `max_age`, then brings every
/// user's entries under `max_size`. Blocking.
pub fn maintain(cache_dir: &Path, max_age: Duration, max_size: u64, registry: &Registry) {
    let expired = collect(cache_dir, max_age, registry);
    if expired > 0 {
        tracing::info!(removed = expired, "expired unused cache entries");
    }
    for user in users(cache_dir) {
        match evict(cache_dir, &user, max_size, registry) {
            Ok(e) if !e.removed.is_empty() || e.bytes > max_size => {
                tracing::info!(
                    user,
                    removed = e.removed.len(),
                    bytes = e.bytes,
                    "evicted least recently used cache entries"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(user, error = %e, "cannot evict cache entries"),
        }
    }
}

/// Every user that has an entry.
pub fn users(cache_dir: &Path) -> Vec<String> {
    let mut users: Vec<String> = entries(cache_dir).into_iter().map(|(u, _)| u).collect();
    users.sort();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let then = SystemTime::now() - by;
        std::fs::File::open(path)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(then))
            .unwrap();
    }

    fn write(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn removes_only_what_was_not_used_lately() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let day = Duration::from_secs(86_400);
        for p in [
            "deps/alice/old",
            "deps/alice/new",
            "deps/bob/touched",
            "deps/bob/held",
            "pip/alice",
            "pip/bob",
        ] {
            write(&root.join(p).join("pkg/file"), 1);
        }
        age(&root.join("deps/alice/old"), 8 * day);
        age(&root.join("deps/bob/touched"), 8 * day);
        age(&root.join("deps/bob/held"), 8 * day);
        touch(&root.join("deps/bob/touched"));
        age(&root.join("pip/bob"), 30 * day);
        let registry = Registry::default();
        let held = registry.hold(&root.join("deps/bob/held"));
        assert_eq!(collect(root, 7 * day, &registry), 2);
        assert!(!root.join("deps/alice/old").exists());
        assert!(!root.join("pip/bob").exists());
        for kept in [
            "deps/alice/new",
            "deps/bob/touched",
            "deps/bob/held",
            "pip/alice",
        ] {
            assert!(root.join(kept).join("pkg/file").exists(), "{kept}");
        }
        drop(held);
        assert_eq!(collect(root, 7 * day, &registry), 1, "no longer held");
        assert_eq!(collect(&root.join("missing"), day, &registry), 0);
        assert!(
            children(&root.join(TRASH)).is_empty(),
            "removed entries leave nothing in the trash"
        );
    }

    #[test]
    fn usage_counts_blocks_entries_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        write(&root.join("a/data"), 100_000);
        write(&root.join("a/empty"), 0);
        std::fs::hard_link(root.join("a/data"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("a/data", root.join("sym")).unwrap();
        let u = usage(&root, u64::MAX).unwrap();
        // root, a, a/data (once), a/empty, sym
        assert_eq!(u.entries, 5, "{u:?}");
        let data = std::fs::metadata(root.join("a/data")).unwrap().blocks() * 512;
        assert!(data >= 100_000, "{data}");
        let dirs = std::fs::metadata(&root).unwrap().blocks() * 512
            + std::fs::metadata(root.join("a")).unwrap().blocks() * 512;
        assert_eq!(u.bytes, data + dirs + 2 * MIN_ENTRY_BYTES, "{u:?}");
        // A sparse file counts what it allocates, not its length.
        let sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        let with_sparse = usage(&root, u64::MAX).unwrap();
        assert_eq!(with_sparse.bytes, u.bytes + MIN_ENTRY_BYTES);
        assert_eq!(
            usage(&dir.path().join("missing"), 0).unwrap(),
            Usage::default()
        );
    }

    #[test]
    fn usage_stops_past_the_limit_and_reads_closed_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        for i in 0..100 {
            write(&root.join(format!("d/f{i}")), 0);
        }
        std::fs::set_permissions(root.join("d"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let all = usage(&root, u64::MAX).unwrap();
        assert_eq!(all.entries, 102);
        assert!(all.bytes >= 100 * MIN_ENTRY_BYTES);
        let early = usage(&root, 10 * MIN_ENTRY_BYTES).unwrap();
        assert!(
            early.bytes > 10 * MIN_ENTRY_BYTES && early.entries < 20,
            "{early:?}"
        );
    }

    /// Every path under `root`, relative, sorted.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn merge_applies_an_upper_directory_as_overlayfs_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, upper) = (dir.path().join("pip/alice"), dir.path().join("upper"));
        write(&cache.join("http/a/old"), 1);
        write(&cache.join("http/a/gone"), 1);
        write(&cache.join("wheels/x/old.whl"), 1);
        write(&cache.join("replaced"), 1);
        write(&cache.join("tree-gone/f"), 1);
        write(&cache.join("was-a-file"), 1);
        write(&cache.join("was-a-dir/f"), 1);
        // What an install wrote: new files in an old directory, a new tree, a file
        // changed in place, and whiteouts for a removed file and a removed tree.
        write(&upper.join("http/a/new"), 1);
        write(&upper.join("planted/d0/f1"), 1);
        std::fs::write(upper.join("replaced"), "new").unwrap();
        write(&upper.join("was-a-file/now-a-dir"), 1);
        write(&upper.join("was-a-dir"), 1);
        for gone in ["http/a/gone", "tree-gone"] {
            nix::sys::stat::mknod(
                &upper.join(gone),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap();
        }
        assert_eq!(merge(&upper, &cache).unwrap(), 5);
        assert_eq!(
            tree(&cache),
            [
                "http",
                "http/a",
                "http/a/new",
                "http/a/old",
                "planted",
                "planted/d0",
                "planted/d0/f1",
                "replaced",
                "was-a-dir",
                "was-a-file",
                "was-a-file/now-a-dir",
                "wheels",
                "wheels/x",
                "wheels/x/old.whl"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(cache.join("replaced")).unwrap(),
            "new"
        );
    }

    #[test]
    fn an_installer_cache_is_claimed_by_one_job_at_a_time() {
        let registry = Registry::default();
        let cache = Path::new("/data/cache/pip/alice");
        let first = registry.claim(cache).unwrap();
        assert!(registry.claim(cache).is_none());
        assert!(registry.in_use(cache));
        drop(first);
        assert!(!registry.in_use(cache));
        let _again = registry.claim(cache).unwrap();
    }

    fn layer(root: &Path, user: &str, key: &str, bytes: usize, days_ago: u64) -> PathBuf {
        let path = root.join("deps").join(user).join(key);
        write(&path.join("lib/data"), bytes);
        age(&path, Duration::from_secs(days_ago * 86_400));
        path
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first_and_never_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let registry = Registry::default();
        let mib = 1 << 20;
        let oldest = layer(root, "alice", "oldest", mib, 5);
        let held = layer(root, "alice", "held", mib, 4);
        let older = layer(root, "alice", "older", mib, 3);
        let recent = layer(root, "alice", "recent", mib, 1);
        write(&root.join("pip/alice/http/f"), mib);
        age(&root.join("pip/alice"), Duration::from_secs(2 * 86_400));
        let bob = layer(root, "bob", "big", 4 * mib, 9);
        let hold = registry.hold(&held);

        let before = evict(root, "alice", u64::MAX, &registry).unwrap();
        assert!(before.removed.is_empty());
        let each = usage(&recent, u64::MAX).unwrap().bytes;
        // Room for three of the five entries (four layers and the pip cache).
        let eviction = evict(root, "alice", 3 * each + 2 * MIN_ENTRY_BYTES, &registry).unwrap();
        assert_eq!(eviction.removed, [oldest.clone(), older.clone()]);
        assert!(held.exists() && recent.exists() && root.join("pip/alice").exists());
        assert!(!oldest.exists() && !older.exists());
        assert!(bob.exists(), "another user's entries are not counted");
        assert_eq!(eviction.bytes, before.bytes - 2 * each);

        // Over the cap with everything unused gone: the held layer stays.
        let eviction = evict(root, "alice", 0, &registry).unwrap();
        assert_eq!(eviction.removed.len(), 2, "{eviction:?}");
        assert!(held.exists());
        assert!(eviction.bytes > 0);
        drop(hold);
        assert_eq!(evict(root, "alice", 0, &registry).unwrap().bytes, 0);
        assert_eq!(users(root), ["bob"]);
    }
}
