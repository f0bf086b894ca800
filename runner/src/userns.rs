//! Host-side preparation for containers in a user namespace: giving the container's root
//! the directories it writes, and checking that it can reach the ones it reads.
//!
//! The container's root is an unprivileged host uid ([`UserNamespace::host_ids`]): it has
//! capabilities over its own namespaces only, and over files only when their owner is
//! mapped (capable_wrt_inode_uidgid in the kernel). Host files owned by root show up as
//! `nobody` and are reached through their "other" permission bits.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use crate::error::Error;
use crate::spec::{IdRange, UserNamespace};

/// Hands `dir` (a directory the container writes, e.g. its `/deps` or pip's cache) to the
/// container's root: chowns it, and everything under it when the directory was not
/// already theirs (a cache written under another mapping). Symlinks are chowned
/// themselves, never followed.
///
/// A normal user can only "give" its own files to itself: with
/// [`UserNamespace::Caller`] this is then a no-op.
pub fn give_to_container(dir: &Path, userns: &UserNamespace) -> Result<(), Error> {
    let ids = userns.host_ids();
    let meta = fs_err::symlink_metadata(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::InvalidSpec(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if (meta.uid(), meta.gid()) == (ids.uid, ids.gid) {
        return Ok(());
    }
    chown_tree(dir, &ids)
}

fn chown_tree(path: &Path, userns: &IdRange) -> Result<(), Error> {
    let chown = |p: &Path| {
        nix::unistd::fchownat(
            None,
            p,
            Some(Uid::from_raw(userns.uid)),
            Some(Gid::from_raw(userns.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::Chown {
            path: p.to_owned(),
            source: e,
        })
    };
    chown(path)?;
    let meta = fs_err::symlink_metadata(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        let entries = fs_err::read_dir(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            chown_tree(&entry.path(), userns)?;
        }
    }
    Ok(())
}

/// Checks that the container's root can reach `path`: libcontainer resolves mount sources
/// and the rootfs from inside the user namespace, so every directory on the way needs a
/// search (x) permission bit that applies to host uid `userns.uid` / gid `userns.gid`.
/// Names the first directory that blocks, e.g. a `/root` of mode 0700.
pub fn check_reachable(path: &Path, userns: &UserNamespace) -> Result<(), Error> {
    let ids = userns.host_ids();
    let path = std::path::absolute(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_owned).collect();
    dirs.reverse();
    if path.is_dir() {
        dirs.push(path.clone());
    }
    for dir in dirs {
        let meta = fs_err::metadata(&dir).map_err(|source| Error::Read {
            path: dir.clone(),
            source,
        })?;
        if !searchable(meta.uid(), meta.gid(), meta.mode(), &ids) {
            return Err(Error::Unreachable {
                path,
                blocker: dir,
                mode: meta.permissions().mode() & 0o7777,
                uid: ids.uid,
            });
        }
    }
    Ok(())
}

/// The kernel's generic_permission() for MAY_EXEC on a directory, for the container's
/// root while libcontainer sets up mounts: fsuid `uid`, fsgid `gid`, no supplementary
/// groups, and every capability in the namespace, which applies to an inode only when
/// both its owner and its group are mapped (capable_wrt_inode_uidgid).
fn searchable(owner: u32, group: u32, mode: u32, userns: &IdRange) -> bool {
    let mapped = |id: u32, base: u32| id.checked_sub(base).is_some_and(|d| d < userns.count);
    if mapped(owner, userns.uid) && mapped(group, userns.gid) {
        return true;
    }
    let bits = if owner == userns.uid {
        mode >> 6
    } else if group == userns.gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: IdRange = IdRange {
        uid: 100_000,
        gid: 100_000,
        count: 65536,
    };

    fn check(owner: u32, group: u32, mode: u32, expected: bool) {
        assert_eq!(
            searchable(owner, group, mode, &NS),
            expected,
            "owner {owner} group {group} mode {mode:o}"
        );
    }

    #[test]
    fn search_permission() {
        check(0, 0, 0o755, true);
        check(0, 0, 0o711, true);
        check(0, 0, 0o700, false);
        check(0, 0, 0o750, false);
        check(0, 100_000, 0o710, true);
        check(100_000, 100_000, 0o700, true);
        check(100_000, 0, 0o700, true);
        check(165_535, 165_535, 0o000, true);
        check(165_535, 0, 0o700, false);
        check(165_536, 165_536, 0o700, false);
    }

    #[test]
    fn reachable_names_the_blocking_directory() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        check_reachable(&inner, &UserNamespace::Caller).unwrap();
        let mine = UserNamespace::Caller.host_ids();
        let other = UserNamespace::Range(IdRange {
            uid: mine.uid.wrapping_add(1_000_000),
            gid: mine.gid.wrapping_add(1_000_000),
            count: 1,
        });
        match check_reachable(&inner, &other) {
            Err(Error::Unreachable { blocker, mode, .. }) => {
                assert_eq!(blocker, dir.path().join("a"));
                assert_eq!(mode, 0o700);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn give_to_container_as_self_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        give_to_container(dir.path(), &UserNamespace::Caller).unwrap();
    }
}
