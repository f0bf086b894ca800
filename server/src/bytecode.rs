//! Python bytecode, compiled once and reused, never written into `/workspace`.
//!
//! Every container runs with `PYTHONPYCACHEPREFIX` set, so Python (and pytest's assertion
//! rewriting, which honours it) reads and writes `*.pyc` in one mirror tree instead of
//! `__pycache__` directories beside the sources: the image and the upload stay read-only and
//! untouched. In the test container that tree is an overlay at [`PREFIX`] whose read-only
//! lower layers are, first found first:
//!
//! 1. the image's tree ([`image_tree`]): its standard library and site-packages, compiled
//!    once per image by a container of that image ([`COMPILE`]), so the interpreter and its
//!    magic number match. The real `python:*-slim` images ship no `*.pyc` at all: without
//!    this every job would compile what it imports, about three times the run of a small
//!    suite;
//! 2. the dependency layer's tree (`/venv/.ci-pycache`, [`IN_VENV`]), compiled by the
//!    install (uv's `--compile-bytecode`, pip's own) with the prefix pointed there, and the
//!    project's own install over it likewise;
//! 3. the project's tree from an earlier run of the same upload ([`project_entry`]):
//!    pytest's rewritten test modules and the project's bytecode.
//!
//! What the tests write lands in the job's upper directory ([`JobPaths::bytecode`]), which
//! becomes the project's tree when the run had none.
//!
//! Why the project's tree is keyed by the upload's whole content, not by its name: Python and
//! pytest trust a `*.pyc` whose header carries the source's mtime and size, and an upload's
//! mtimes are the client's (a tool that normalises them, or an edit within the same second
//! that keeps the size, would run stale code and could print a wrong `passed`). And the
//! tests can write into the tree: a test run of one upload must not be able to plant
//! bytecode that a run of other sources (another branch, a contributor's change) executes.
//! Keyed by content, a tree is only ever read by a run of the very sources that wrote it.
//!
//! [`JobPaths::bytecode`]: crate::layout::JobPaths::bytecode

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where every container's Python keeps its bytecode (`PYTHONPYCACHEPREFIX`).
pub const PREFIX: &str = "/ci-pycache";

/// The variable that points Python at [`PREFIX`].
pub const ENV: &str = "PYTHONPYCACHEPREFIX";

/// Where an install puts the bytecode of what it installs: inside `/venv`, so that the
/// dependency layer (and the project's own layer) carries it. A directory of the layer.
pub const IN_VENV: &str = ".ci-pycache";

/// The prefix the install containers write with: `/venv/.ci-pycache`.
pub fn install_prefix() -> String {
    format!("{}/{IN_VENV}", crate::install::VENV)
}

/// The image's bytecode tree, beside its unpacked root filesystem (one per image, shared by
/// every server that shares the image cache, and removed with the image).
pub fn image_tree(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name("bytecode")
}

/// The program that compiles an image's bytecode: every directory on the interpreter's
/// `sys.path` (the standard library, its extension modules' packages, site-packages), test
/// suites of the standard library left out. Into [`PREFIX`], which the compile container
/// mounts writable. A file that does not compile (the standard library ships a few on
/// purpose) is skipped: Python compiles nothing of it at import either.
pub const COMPILE: &str = r#"
import compileall, os, re, sys
skip = re.compile(r"/(tests?|idlelib|lib2to3|turtledemo|ensurepip)/")
for path in sys.path:
    if os.path.isabs(path) and os.path.isdir(path) and not path.startswith("/workspace"):
        compileall.compile_dir(path, quiet=2, workers=0, rx=skip)
"#;

/// The key of a project's bytecode tree: everything the bytecode in it was made from. The
/// user (trees are never shared between users), the image, the job's `/venv` (the layer key,
/// and whether the project is installed into it), the upload's content ([`content_hash`]),
/// and the pytest arguments and environment, which can change how pytest rewrites a module.
pub fn project_key(
    owner: &str,
    image_digest: &str,
    venv: &str,
    content: &str,
    pytest_args: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut h = Sha256::new();
    let mut part = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    for s in ["ci-pyc-v1", owner, image_digest, venv, content] {
        part(s);
    }
    part(&pytest_args.len().to_string());
    pytest_args.iter().for_each(|a| part(a));
    for (k, v) in env {
        part(k);
        part(v);
    }
    hex::encode(&h.finalize()[..16])
}

/// Where the user's project trees are: `pyc/<user>/<key>`, entries of the cache like the
/// dependency layers ([`crate::cache`]): evicted least recently used first under the user's
/// `--cache-max-size`, expired after `--cache-max-age`.
pub fn project_entry(cache_dir: &Path, user: &str, key: &str) -> PathBuf {
    cache_dir.join(crate::cache::BYTECODE).join(user).join(key)
}

/// A digest of the tree at `dir`: every entry's path and mode, a file's size, mtime and
/// bytes and a link's target, in name order. Symlinks are not followed. Blocking.
pub fn content_hash(dir: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    hash_dir(dir, Path::new(""), &mut h)?;
    Ok(hex::encode(&h.finalize()[..16]))
}

fn hash_dir(dir: &Path, rel: &Path, h: &mut Sha256) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = rel.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let name = rel.as_os_str().as_encoded_bytes();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(meta.mode().to_le_bytes());
        if meta.is_dir() {
            // A directory's own size and mtime say nothing of the sources in it, and its
            // mtime is the unpacking's, not the client's.
            hash_dir(&path, &rel, h)?;
            h.update(b"\0end");
            continue;
        }
        h.update(meta.size().to_le_bytes());
        h.update(meta.mtime().to_le_bytes());
        if meta.is_symlink() {
            h.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            let mut file = std::fs::File::open(&path)?;
            io::copy(&mut file, h)?;
        }
    }
    Ok(())
}

/// Keeps of an install's bytecode tree in `venv` (a new dependency layer, or the project's
/// layer) only what mirrors `/venv`: what a build compiled under `/workspace` or `/tmp`
/// belongs to no layer (the layer is shared by uploads of other sources). Blocking.
pub fn prune_install_tree(venv: &Path) -> io::Result<()> {
    let tree = venv.join(IN_VENV);
    let Ok(entries) = std::fs::read_dir(&tree) else {
        return Ok(());
    };
    let keep = crate::install::VENV.trim_start_matches('/');
    for entry in entries {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        if entry.file_name() == keep && is_dir {
            continue;
        }
        if is_dir {
            crate::cache::remove_tree(&entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Makes `upper` (what a test run wrote) the project's tree at `entry`, unless a run of the
/// same key kept one first. Returns whether it was kept. Blocking.
pub fn keep(upper: &Path, entry: &Path) -> io::Result<bool> {
    if entry.exists() {
        return Ok(false);
    }
    if let Some(parent) = entry.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(upper, entry) {
        Ok(()) => {
            crate::cache::touch(entry);
            Ok(true)
        }
        Err(_) if entry.exists() => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_content_hash_follows_bytes_names_links_and_mtimes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("tests")).unwrap();
        std::fs::write(root.join("tests/test_a.py"), "assert 1\n").unwrap();
        symlink("tests", root.join("link")).unwrap();
        let first = content_hash(root).unwrap();
        assert_eq!(content_hash(root).unwrap(), first, "stable");

        // Same size, same mtime, other bytes: what Python's own check would miss.
        let file = root.join("tests/test_a.py");
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(&file, "assert 2\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let edited = content_hash(root).unwrap();
        assert_ne!(edited, first);

        std::fs::remove_file(root.join("link")).unwrap();
        symlink("other", root.join("link")).unwrap();
        assert_ne!(content_hash(root).unwrap(), edited);
    }

    #[test]
    fn the_project_key_covers_every_input() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let base = || project_key("alice", "sha256:i", "layer", "c", &["-k".into()], &env);
        let key = base();
        assert_eq!(key, base());
        let others = [
            project_key("bob", "sha256:i", "layer", "c", &["-k".into()], &env),
            project_key("alice", "sha256:j", "layer", "c", &["-k".into()], &env),
            project_key("alice", "sha256:i", "layer2", "c", &["-k".into()], &env),
            project_key("alice", "sha256:i", "layer", "d", &["-k".into()], &env),
            project_key("alice", "sha256:i", "layer", "c", &["-x".into()], &env),
            project_key("alice", "sha256:i", "layer", "c", &[], &env),
            project_key(
                "alice",
                "sha256:i",
                "layer",
                "c",
                &["-k".into()],
                &BTreeMap::new(),
            ),
            // No two inputs run together into the same bytes.
            project_key("alic", "esha256:i", "layer", "c", &["-k".into()], &env),
        ];
        for other in others {
            assert_ne!(other, key);
        }
    }

    #[test]
    fn an_install_tree_keeps_only_what_mirrors_the_venv() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join(IN_VENV);
        for sub in ["venv/lib/site-packages", "workspace", "tmp/build"] {
            std::fs::create_dir_all(tree.join(sub)).unwrap();
            std::fs::write(tree.join(sub).join("m.cpython-311.pyc"), "x").unwrap();
        }
        std::fs::write(tree.join("stray.pyc"), "x").unwrap();
        prune_install_tree(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(&tree)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["venv"]);
        assert!(tree
            .join("venv/lib/site-packages/m.cpython-311.pyc")
            .exists());
        // A layer without bytecode is left alone.
        prune_install_tree(&dir.path().join("none")).unwrap();
    }

    #[test]
    fn the_first_run_of_a_key_keeps_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("pyc/alice/key");
        for (n, kept) in [(1, true), (2, false)] {
            let upper = dir.path().join(format!("upper{n}"));
            std::fs::create_dir(&upper).unwrap();
            std::fs::write(upper.join("n"), n.to_string()).unwrap();
            assert_eq!(keep(&upper, &entry).unwrap(), kept);
        }
        assert_eq!(std::fs::read_to_string(entry.join("n")).unwrap(), "1");
    }
}
