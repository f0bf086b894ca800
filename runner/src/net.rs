//! Setting up a container's fresh network namespace between `build()` (the namespaces
//! exist, the container's init waits for `start`) and `start()`: `lo` up, and
//! unreachable routes for what a NATed container must not reach.
//!
//! A new network namespace starts with only a loopback device, and it is down (see
//! network_namespaces(7)): `connect(127.0.0.1)` fails with ENETUNREACH. Tests commonly
//! start servers on localhost, so `lo` is always brought up.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::error::Error;

/// An IPv4 network given as address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// IPv4 link-local (RFC 3927): cloud metadata services live there (169.254.169.254).
pub const LINK_LOCAL: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(169, 254, 0, 0),
    prefix: 16,
};

/// The host's own IPv4 addresses other than loopback, each as a /32: through slirp4netns
/// they would reach services listening on the host (slirp4netns's
/// `--disable-host-loopback` only covers 127.0.0.0/8).
pub fn host_addresses() -> Vec<Ipv4Net> {
    let mut nets: Vec<Ipv4Net> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|a| a.ip()))
                .filter(|ip| !ip.is_loopback())
                .map(|addr| Ipv4Net { addr, prefix: 32 })
                .collect()
        })
        .unwrap_or_default();
    nets.sort_by_key(|n| n.addr);
    nets.dedup();
    nets
}

/// Step of [`configure`] that failed, reported by the child.
const STEPS: &[&str] = &[
    "join the container's network namespace",
    "open a socket",
    "bring up lo",
    "add an unreachable route",
];

/// Brings up `lo` in the network namespace of `pid` and adds an unreachable route for
/// each of `unreachable` (connect() then fails with EHOSTUNREACH).
///
/// The helper is root of the user namespace that owns the container's network namespace
/// (the host's root, or root of its own namespace for a normal user), so it may enter it.
/// It does so in a forked child: inside a namespace of its own the helper could enter the
/// container's but not return to the host's, whose owner it has no capabilities in. The
/// helper is single-threaded, so the child may do anything, but it only makes syscalls.
pub fn configure(pid: Pid, unreachable: &[Ipv4Net]) -> Result<(), Error> {
    let netns = open_ns(&format!("/proc/{pid}/ns/net"))?;
    let lo = ifreq("lo").map_err(|e| Error::Network(STEPS[2], e))?;
    let routes: Vec<libc::rtentry> = unreachable.iter().map(reject_route).collect();
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Network("pipe", e))?;

    // SAFETY: the helper is single-threaded (see helper.rs), so the child is a full copy
    // of a consistent process; it makes only syscalls and leaves through _exit.
    match unsafe { fork() }.map_err(|e| Error::Network("fork", e))? {
        ForkResult::Child => {
            drop(report_r);
            let failed = in_child(&netns, lo, &routes);
            if let Err((step, errno)) = failed {
                let msg = [step as u8, errno as u8, (errno >> 8) as u8, 0];
                let _ = nix::unistd::write(&report_w, &msg);
            }
            // SAFETY: _exit is always safe; it skips the parent's atexit handlers.
            unsafe { libc::_exit(i32::from(failed.is_err())) }
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            let status = loop {
                match waitpid(child, None) {
                    Err(Errno::EINTR) => continue,
                    other => break other.map_err(|e| Error::Network("wait", e))?,
                }
            };
            let mut msg = [0u8; 4];
            let n = nix::unistd::read(report_r.as_raw_fd(), &mut msg).unwrap_or(0);
            match status {
                WaitStatus::Exited(_, 0) => Ok(()),
                _ if n == msg.len() => Err(Error::Network(
                    STEPS
                        .get(usize::from(msg[0]))
                        .copied()
                        .unwrap_or("configure"),
                    Errno::from_raw(i32::from(msg[1]) | (i32::from(msg[2]) << 8)),
                )),
                _ => Err(Error::Network("configure", Errno::EIO)),
            }
        }
    }
}

fn in_child(
    netns: &OwnedFd,
    mut lo: libc::ifreq,
    routes: &[libc::rtentry],
) -> Result<(), (usize, i32)> {
    let step = |i: usize| move |e: Errno| (i, e as i32);
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(step(0))?;
    // SAFETY: plain syscall; the fd is closed by _exit.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = Errno::result(sock).map_err(step(1))?;
    set_up(sock, &mut lo).map_err(step(2))?;
    for route in routes {
        // SAFETY: SIOCADDRT only reads the rtentry we own.
        let rc = unsafe { libc::ioctl(sock, libc::SIOCADDRT, route) };
        Errno::result(rc).map_err(step(3))?;
    }
    Ok(())
}

fn open_ns(path: &str) -> Result<OwnedFd, Error> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::Network(
            "open a namespace of the container",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    Ok(file.into())
}

fn ifreq(name: &str) -> Result<libc::ifreq, Errno> {
    // SAFETY: ifreq is a plain C struct/union for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// SIOCGIFFLAGS, OR in IFF_UP, SIOCSIFFLAGS: what `ip link set lo up` does via netlink,
/// done with the older ioctl interface because it needs no netlink plumbing.
fn set_up(sock: i32, req: &mut libc::ifreq) -> Result<(), Errno> {
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut *req) })?;
    // SAFETY: the kernel filled the flags member of the union for SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    Errno::result(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &*req) })?;
    Ok(())
}

/// The legacy route ioctl's form of `ip route add unreachable NET`: with RTF_REJECT the
/// kernel makes an RTN_UNREACHABLE route, which needs no device (rtentry_to_fib_config).
fn reject_route(net: &Ipv4Net) -> libc::rtentry {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(net.prefix.min(32)))
        .unwrap_or(0);
    // SAFETY: rtentry is a plain C struct for which all-zero bytes are valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(u32::from(net.addr) & mask);
    rt.rt_genmask = sockaddr(mask);
    rt.rt_flags = libc::RTF_UP | libc::RTF_REJECT;
    if net.prefix >= 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    rt
}

fn sockaddr(addr: u32) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: addr.to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr is
    // the generic view the ioctl expects.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_overlong_interface_names() {
        assert_eq!(ifreq(&"x".repeat(40)).err(), Some(Errno::EINVAL));
    }

    #[test]
    fn reject_routes_carry_network_and_mask() {
        let rt = reject_route(&LINK_LOCAL);
        // SAFETY: reject_route wrote sockaddr_in values.
        let (dst, mask) = unsafe {
            let d: libc::sockaddr_in = std::mem::transmute(rt.rt_dst);
            let m: libc::sockaddr_in = std::mem::transmute(rt.rt_genmask);
            (d.sin_addr.s_addr, m.sin_addr.s_addr)
        };
        assert_eq!(u32::from_be(dst), u32::from(Ipv4Addr::new(169, 254, 0, 0)));
        assert_eq!(u32::from_be(mask), 0xffff_0000);
        assert_eq!(rt.rt_flags, libc::RTF_UP | libc::RTF_REJECT);
        let host = reject_route(&Ipv4Net {
            addr: Ipv4Addr::new(192, 0, 2, 2),
            prefix: 32,
        });
        assert_eq!(
            host.rt_flags,
            libc::RTF_UP | libc::RTF_REJECT | libc::RTF_HOST
        );
    }

    #[test]
    fn host_addresses_have_no_loopback() {
        assert!(host_addresses().iter().all(|n| !n.addr.is_loopback()));
    }
}
