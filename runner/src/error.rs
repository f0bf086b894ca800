//! The one error type of this crate: a variant per step that can fail, read after "failed to".

use std::path::PathBuf;

use libcontainer::error::LibcontainerError;

/// Everything that can go wrong while preparing, running or removing a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("validate container spec: {0}")]
    InvalidSpec(String),

    #[error("build the OCI runtime spec")]
    BuildSpec(#[source] oci_spec::OciSpecError),

    #[error("write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("encode {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("create mount point {} in the rootfs", path.display())]
    MountPoint {
        path: PathBuf,
        #[source]
        source: pathrs::error::Error,
    },

    #[error("chown {} to the container's root", path.display())]
    Chown {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error(
        "reach {} as the container's root (host uid {uid}): {} has mode {mode:04o}; \
         keep what containers use under directories that others may search (o+x)",
        path.display(),
        blocker.display()
    )]
    Unreachable {
        path: PathBuf,
        blocker: PathBuf,
        mode: u32,
        uid: u32,
    },

    #[error("load the bundle's config.json")]
    LoadBundle(#[source] oci_spec::OciSpecError),

    #[error("set up the container's stdio")]
    Stdio(#[source] nix::Error),

    #[error("set up signal handling")]
    Signals(#[source] nix::Error),

    #[error("create container {id}: it already exists")]
    AlreadyExists { id: String },

    #[error("build container {id}")]
    Build {
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },

    #[error("{0}")]
    UserNamespace(&'static str, #[source] nix::Error),

    #[error("set up the container's network: {0}")]
    Network(&'static str, #[source] nix::Error),

    #[error("start slirp4netns: {0}")]
    Slirp(String),

    #[error("start container {id}")]
    Start {
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },

    #[error("wait for the container's init process")]
    Wait(#[source] nix::Error),

    #[error("remove cgroup {} of container {id}", path.display())]
    RemoveCgroup {
        id: String,
        path: PathBuf,
        #[source]
        source: Box<libcgroups::common::AnyManagerError>,
    },

    #[error("move {what} into the container's cgroup {}", path.display())]
    JoinCgroup {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<libcgroups::common::AnyManagerError>,
    },

    #[error("prepare delegated cgroups: {0}")]
    Delegation(String),

    #[error("find the cgroup hierarchy")]
    CgroupSetup(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("remove state directory {}", path.display())]
    RemoveState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("list state root {}", path.display())]
    ListStateRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("clean up {} leftover container(s): {}", failed.len(), failed.join("; "))]
    Reconcile {
        /// Ids that were removed before and after the failures.
        removed: Vec<String>,
        /// One "id: error chain" line per container that could not be removed.
        failed: Vec<String>,
    },

    /// The launch failed and removing what it left failed too: keep both, the second
    /// one tells the operator what is still lying around.
    #[error("run container ({run}), then clean up after it ({cleanup})", run = chain(run), cleanup = chain(cleanup))]
    RunAndCleanup {
        run: Box<Error>,
        cleanup: Box<Error>,
    },
}

/// Formats an error with all its sources, "a: b: c", because libcontainer's top-level
/// messages are terse and the cause is usually two or three levels down.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_includes_sources() {
        let err = Error::Read {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
        };
        let text = chain(&err);
        assert!(text.starts_with("read /x: "), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }
}
