//! The seccomp filter of every container: allow by default, refuse the syscalls that reach
//! kernel features a CI job never needs and that have a history of container escapes.
//!
//! libcontainer installs the filter at the very end of its init, after all mounts and
//! after dropping capabilities (with `noNewPrivileges`, right before it waits for
//! `start`), so refusing `mount` and friends here does not get in its own way. Only
//! `accept`/`read`/`close` on the notify socket and `execve` run under the filter.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::error::Error;

/// Refused with EPERM, as Docker's default profile does for most of them. Several also
/// need a capability the container does not have; refusing them here keeps the kernel
/// code behind them unreachable even if a capability slips through.
const REFUSED: &[&str] = &[
    // Kernel modules and replacing the kernel.
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    // Mount API and namespace changes: the container's mounts are final.
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    // The kernel keyring is not namespaced.
    "keyctl",
    "add_key",
    "request_key",
    // Large attack surface, no use in a test run.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // File handles bypass the mount namespace (the "shocker" escape).
    "open_by_handle_at",
    "name_to_handle_at",
    // Host-wide state.
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "vhangup",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
];

/// `clone(2)` flag for a new user namespace: the only namespace an unprivileged process
/// may create, and the door to the others.
const CLONE_NEWUSER: u64 = nix::libc::CLONE_NEWUSER as u64;

/// The filter placed in `linux.seccomp`.
pub fn profile() -> Result<LinuxSeccomp, Error> {
    let b = Error::BuildSpec;
    let eperm = nix::libc::EPERM as u32;
    let refused = LinuxSyscallBuilder::default()
        .names(REFUSED.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(eperm)
        .build()
        .map_err(b)?;

    // The OCI spec reads SCMP_CMP_MASKED_EQ as (arg & value) == valueTwo, libcontainer 0.7
    // passes the two the other way round to libseccomp; with value == valueTwo both
    // readings mean "the CLONE_NEWUSER bit is set". x86_64 has the flags in arg 0.
    let clone_newuser = LinuxSyscallBuilder::default()
        .names(vec!["clone".to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(eperm)
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(CLONE_NEWUSER)
            .value_two(CLONE_NEWUSER)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(b)?])
        .build()
        .map_err(b)?;

    // clone3 passes its flags in memory, which seccomp cannot inspect. ENOSYS (not EPERM)
    // makes glibc fall back to clone(2), where the rule above applies; Docker does the same.
    let clone3 = LinuxSyscallBuilder::default()
        .names(vec!["clone3".to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(nix::libc::ENOSYS as u32)
        .build()
        .map_err(b)?;

    let syscalls: Vec<LinuxSyscall> = vec![refused, clone_newuser, clone3];
    // No `architectures`: the filter then only admits the native ABI and libseccomp's
    // default bad-arch action kills a thread that tries the 32-bit entry points, so
    // nothing can sidestep the rules through int 0x80.
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(syscalls)
        .build()
        .map_err(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_eperm_and_clone3_with_enosys() {
        let p = profile().unwrap();
        let syscalls = p.syscalls().as_ref().unwrap();
        let refused = &syscalls[0];
        assert_eq!(refused.errno_ret(), Some(nix::libc::EPERM as u32));
        for name in [
            "kexec_load",
            "bpf",
            "keyctl",
            "unshare",
            "open_by_handle_at",
        ] {
            assert!(refused.names().iter().any(|n| n == name), "{name}");
        }
        // What pip and pytest do need must stay allowed.
        for name in ["clone", "execve", "ptrace", "socket", "connect", "prctl"] {
            assert!(!refused.names().iter().any(|n| n == name), "{name}");
        }
        let clone3 = syscalls.iter().find(|s| *s.names() == ["clone3"]).unwrap();
        assert_eq!(clone3.errno_ret(), Some(nix::libc::ENOSYS as u32));
    }
}
