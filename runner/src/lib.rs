//! Runs CI job steps in OCI containers with youki's libcontainer; the only crate that
//! touches namespaces and cgroups.
//!
//! # Process model
//!
//! The server never calls libcontainer itself (it chdirs the process, clone3()s and makes
//! the caller non-dumpable, which breaks a multi-threaded server). Per container it:
//!
//! 0. checks at start-up what this machine allows ([`probe::capabilities`]) and that the
//!    job's user can reach what containers read ([`check_reachable`]);
//! 1. calls [`ensure_mountpoints`] once per unpacked rootfs, before sharing it;
//! 2. hands directories a container writes to its root ([`give_to_container`]) and writes
//!    a bundle with [`prepare_bundle`];
//! 3. spawns its own binary with [`container_args`] (`__container --bundle B --state-root S
//!    --id ID --result R`), stdin `/dev/null`, stdout a pipe that receives the container's
//!    stdout *and* stderr in order, stderr for the helper's diagnostics. The binary's
//!    `main` hands such argv to [`helper_main`] before starting any thread (a helper run
//!    by a normal user re-executes itself in a user namespace first, see
//!    [`UserNamespace::Caller`]). Around libcontainer the helper writes delegated cgroup
//!    limits, configures the network namespace and runs slirp4netns;
//! 4. to stop it early, sends SIGTERM to the helper, which SIGKILLs the container;
//! 5. reads the [`Outcome`] JSON from R once the helper has exited.
//!
//! At startup it runs `__cleanup --state-root S` ([`cleanup_args`]), which removes
//! whatever a crash left behind ([`reconcile`]).

mod cgroup;
mod cleanup;
mod cli;
mod error;
mod helper;
mod net;
pub mod probe;
mod seccomp;
mod slirp;
mod spec;
mod userns;

pub use cleanup::{cleanup, reconcile};
pub use cli::{
    cleanup_args, container_args, exit_codes, helper_main, is_helper_invocation,
    CLEANUP_SUBCOMMAND, CONTAINER_SUBCOMMAND,
};
pub use error::{chain as error_chain, Error};
pub use helper::{run_helper, Outcome, TIMINGS_ENV, TIMING_PREFIX};
pub use spec::{
    build_spec, ensure_mountpoints, prepare_bundle, validate, validate_id, BindMount, CgroupMode,
    ContainerSpec, IdRange, Limits, Network, OverlayMount, OverlayUpper, Tmpfs, UserNamespace,
    DEFAULT_PATH, HOSTNAME,
};
pub use userns::{check_reachable, give_to_container};
