//! Removing containers whose helper is gone (crashed, or the server was SIGKILLed), one
//! at a time or all at startup.

use std::path::Path;

use libcontainer::config::YoukiConfig;
use libcontainer::container::Container;

use crate::cgroup;
use crate::error::{chain, Error};
use crate::spec::validate_id;

/// Removes container `id` under `state_root`: SIGKILLs its processes, removes its cgroups
/// and its state directory. A no-op if there is no such container.
///
/// If the helper running it is still alive, that helper sees its container die.
pub fn cleanup(state_root: &Path, id: &str) -> Result<(), Error> {
    cleanup_with_cgroup(state_root, id, None)
}

/// [`cleanup`], also removing the cgroup at `cgroup_hint` (as in the bundle) if the
/// state directory that names it is already gone.
pub(crate) fn cleanup_with_cgroup(
    state_root: &Path,
    id: &str,
    cgroup_hint: Option<&Path>,
) -> Result<(), Error> {
    validate_id(id)?;
    let dir = state_root.join(id);
    if !dir.exists() {
        if let Some(path) = cgroup_hint {
            // Manager::remove skips hierarchies where the directory does not exist.
            cgroup::remove(id, path)?;
        }
        return Ok(());
    }
    // libcontainer saves state.json and its config (with the cgroup path) right after
    // creating the directory and before it creates any process or cgroup, so both are
    // readable unless the helper died in those first microseconds.
    let cgroup_path = YoukiConfig::load(&dir)
        .ok()
        .map(|c| c.cgroup_path)
        .or_else(|| cgroup_hint.map(Path::to_owned));
    let deleted = Container::load(dir.clone()).and_then(|mut c| c.delete(true));
    match deleted {
        Ok(()) if !dir.exists() => return Ok(()),
        Ok(()) => {}
        // E.g. the cgroup was still busy with dying processes after delete's retries.
        Err(err) => tracing::warn!(id, error = %chain(&err), "delete failed, removing by hand"),
    }
    if let Some(path) = &cgroup_path {
        cgroup::remove(id, path)?;
    }
    match fs_err::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::RemoveState {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Startup reconciliation: removes every container under `state_root` (all of them are
/// leftovers when no helper is running). Returns the ids removed; if some could not be
/// removed, the error lists them and still carries the removed ids.
pub fn reconcile(state_root: &Path) -> Result<Vec<String>, Error> {
    let entries = match fs_err::read_dir(state_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ListStateRoot {
                path: state_root.to_owned(),
                source,
            })
        }
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::ListStateRoot {
            path: state_root.to_owned(),
            source,
        })?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match entry.file_name().into_string() {
            Ok(id) if is_dir && validate_id(&id).is_ok() => ids.push(id),
            _ => tracing::warn!(path = %entry.path().display(), "not a container, skipped"),
        }
    }
    ids.sort();
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for id in ids {
        match cleanup(state_root, &id) {
            Ok(()) => removed.push(id),
            Err(err) => failed.push(format!("{id}: {}", chain(&err))),
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(Error::Reconcile { removed, failed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_state_is_a_no_op() {
        let root = tempfile::tempdir().unwrap();
        cleanup(root.path(), "ci-none").unwrap();
        assert!(reconcile(&root.path().join("absent")).unwrap().is_empty());
        assert!(reconcile(root.path()).unwrap().is_empty());
    }

    #[test]
    fn broken_state_dir_is_removed() {
        // A helper killed right after libcontainer created the directory.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("ci-broken")).unwrap();
        std::fs::write(root.path().join("stray-file"), "").unwrap();
        assert_eq!(reconcile(root.path()).unwrap(), ["ci-broken"]);
        assert!(!root.path().join("ci-broken").exists());
        assert!(root.path().join("stray-file").exists());
    }

    #[test]
    fn rejects_ids_that_escape_the_state_root() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            cleanup(root.path(), "../etc"),
            Err(Error::InvalidSpec(_))
        ));
    }
}
