//! Expiry of what jobs leave for later jobs: installed dependency layers (per user and
//! key, see `install::deps_key`) and the installers' download caches (uv's and pip's, per
//! user). Each is touched when a job uses it
//! and removed once nothing used it for `--cache-max-age`, so a long-running server's disk
//! use follows what its users still run.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Marks a cache entry as used now.
pub fn touch(path: &Path) {
    let now = SystemTime::now();
    let result = std::fs::File::open(path)
        .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(now)));
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "cannot mark cache entry as used");
    }
}

/// The entries that expire: `deps/<user>/<key>`, `uv/<user>` and `pip/<user>`.
fn entries(cache_dir: &Path) -> Vec<PathBuf> {
    let children = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut out: Vec<PathBuf> = children(cache_dir.join("deps"))
        .into_iter()
        .flat_map(children)
        .collect();
    out.extend(children(cache_dir.join("uv")));
    out.extend(children(cache_dir.join("pip")));
    out
}

/// Removes the entries not used for `max_age`; returns how many. An entry is first renamed
/// away, so a job never sees one half removed.
pub fn collect(cache_dir: &Path, max_age: Duration) -> usize {
    let Some(cutoff) = SystemTime::now().checked_sub(max_age) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries(cache_dir) {
        let old = std::fs::metadata(&entry)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if !old {
            continue;
        }
        let doomed = entry.with_extension("expired");
        if std::fs::rename(&entry, &doomed).is_ok() {
            match std::fs::remove_dir_all(&doomed) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %doomed.display(), error = %e, "cannot remove expired cache entry")
                }
            }
        }
    }
    removed
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

    #[test]
    fn removes_only_what_was_not_used_lately() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let day = Duration::from_secs(86_400);
        for p in [
            "deps/alice/old",
            "deps/alice/new",
            "deps/bob/touched",
            "pip/alice",
            "pip/bob",
        ] {
            std::fs::create_dir_all(root.join(p).join("pkg")).unwrap();
            std::fs::write(root.join(p).join("pkg/file"), "x").unwrap();
        }
        age(&root.join("deps/alice/old"), 8 * day);
        age(&root.join("deps/bob/touched"), 8 * day);
        touch(&root.join("deps/bob/touched"));
        age(&root.join("pip/bob"), 30 * day);
        assert_eq!(collect(root, 7 * day), 2);
        assert!(!root.join("deps/alice/old").exists());
        assert!(!root.join("pip/bob").exists());
        for kept in ["deps/alice/new", "deps/bob/touched", "pip/alice"] {
            assert!(root.join(kept).join("pkg/file").exists(), "{kept}");
        }
        assert_eq!(collect(&root.join("missing"), day), 0);
    }
}
