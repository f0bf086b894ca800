//! Bringing up `lo` in a container's fresh network namespace.
//!
//! A new network namespace starts with only a loopback device, and it is down (see
//! network_namespaces(7)): `connect(127.0.0.1)` fails with ENETUNREACH. Tests commonly
//! start servers on localhost, so the helper sets IFF_UP on it between `build()` (the
//! namespace exists, the container's init waits for `start`) and `start()`.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use crate::error::Error;

/// Sets `lo` up in the network namespace of `pid`.
///
/// Enters that namespace only long enough to create a socket: a socket stays bound to
/// the namespace it was created in, and interface ioctls act on the socket's namespace,
/// so the ioctl runs after this thread is back in its own namespace. setns(2) with
/// CLONE_NEWNET only affects the calling thread; the helper is single-threaded anyway.
pub fn bring_up_loopback(pid: Pid) -> Result<(), Error> {
    let err = Error::Loopback;
    let own = open_ns("/proc/thread-self/ns/net")?;
    let target = open_ns(&format!("/proc/{pid}/ns/net"))?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(err)?;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    );
    // Return to our own namespace before anything else, whatever socket() did.
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(err)?;
    set_up(&sock.map_err(err)?, "lo").map_err(err)
}

fn open_ns(path: &str) -> Result<OwnedFd, Error> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Loopback(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    Ok(file.into())
}

/// SIOCGIFFLAGS, OR in IFF_UP, SIOCSIFFLAGS: what `ip link set lo up` does via netlink,
/// done with the older ioctl interface because it needs no netlink plumbing.
fn set_up(sock: &OwnedFd, name: &str) -> Result<(), Errno> {
    // SAFETY: ifreq is a plain C struct/union for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel filled the flags member of the union for SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_overlong_interface_names() {
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(set_up(&sock, &"x".repeat(40)), Err(Errno::EINVAL));
    }
}
