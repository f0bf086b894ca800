//! A server run by a normal user: no root at run time. The user namespace maps only that
//! user (container root = the user), and limits go through the cgroup v1 subtree that root
//! delegated once with `scripts/delegate-cgroups`. Setting up the user and the delegation
//! needs root, like the rest of these tests.

use std::sync::OnceLock;

use ci_runner::Network;
use nix::sys::signal::Signal;

use crate::support::TestContext;
use crate::PY;

/// A system user (no home, no login, no subordinate ids) that the tests run helpers as.
const USER: &str = "ci-rootless-test";

/// The test user, created if missing, with its cgroups delegated (both idempotent).
pub(crate) fn user() -> &'static nix::unistd::User {
    static USER_SETUP: OnceLock<nix::unistd::User> = OnceLock::new();
    USER_SETUP.get_or_init(|| {
        let user = ci_e2e::system_user(USER);
        ci_e2e::delegate_cgroups(USER);
        user
    })
}

#[test]
fn rootless_memory_hog_is_oom_killed() {
    let ctx = TestContext::rootless("rl-oom", user());
    let mut spec = ctx.spec(Network::None, &[PY, "-c", "x = b'x' * (512 << 20)"]);
    spec.limits.memory_bytes = Some(64 << 20);
    let done = ctx.run(&spec);
    let outcome = done.outcome();
    assert_eq!(outcome.signal, Some(9), "{done:?}");
    assert!(outcome.oom_killed, "{done:?}");
    ctx.assert_clean();
}

#[test]
fn rootless_limits_are_in_the_delegated_cgroups() {
    let user = user();
    let ctx = TestContext::rootless("rl-limits", user);
    let mut spec = ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    );
    spec.limits.memory_bytes = Some(100 << 20);
    spec.limits.pids = Some(20);
    let running = ctx.spawn(&spec);
    running.wait_for_line(|l| l == "started");
    let dir = |ctrl: &str| {
        format!(
            "/sys/fs/cgroup/{ctrl}/{}/{}",
            ctx.cgroup_parent.trim_start_matches('/'),
            ctx.id
        )
    };
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("{}/{file}", dir(ctrl)))
            .unwrap()
            .trim()
            .to_owned()
    };
    let limits = [
        read("memory", "memory.limit_in_bytes"),
        read("pids", "pids.max"),
    ];
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir("memory")).unwrap().uid();
    let procs = ctx.wait_for_processes();
    let host_uids: Vec<u32> = procs
        .iter()
        .map(|pid| std::fs::metadata(format!("/proc/{pid}")).unwrap().uid())
        .collect();
    running.signal(Signal::SIGTERM);
    assert!(running.wait().outcome().killed_by_request);
    assert_eq!(limits, [(100u64 << 20).to_string(), "20".to_owned()]);
    assert_eq!(owner, user.uid.as_raw(), "the job's cgroup is the user's");
    assert!(!host_uids.is_empty());
    assert!(
        host_uids.iter().all(|u| *u == user.uid.as_raw()),
        "container processes run as the user on the host: {host_uids:?}"
    );
    ctx.assert_clean();
}

#[test]
fn rootless_container_is_root_inside_and_the_user_outside() {
    let user = user();
    let ctx = TestContext::rootless("rl-ids", user);
    let script = r#"
import os
print("uid", os.getuid(), "gid", os.getgid())
print("uid_map", " ".join(open("/proc/self/uid_map").read().split()))
print("usr owner", os.stat("/usr").st_uid)
print("python readable", len(open("/usr/bin/python3", "rb").read(4)))
print("lo up", int(open("/sys/class/net/lo/flags").read(), 16) & 1)
open("/tmp/x", "w").write("tmpfs is writable")
print("ok")
"#;
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", script]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains("uid 0 gid 0\n"), "{out}");
    assert!(
        out.contains(&format!("uid_map 0 {} 1\n", user.uid)),
        "{out}"
    );
    // The image belongs to the host's root, which is not mapped: nobody.
    assert!(out.contains("usr owner 65534\n"), "{out}");
    assert!(out.contains("python readable 4\n"), "{out}");
    assert!(out.contains("lo up 1\n"), "{out}");
    assert!(out.contains("ok\n"), "{out}");
    ctx.assert_clean();
}

#[test]
fn rootless_slirp_network_has_no_host() {
    // slirp4netns opens /dev/net/tun as the user. Debian's udev rule makes it 0666; this
    // machine has no udev and the kernel's 0600, so the set-up opens it as Debian would (and
    // puts the mode back after). Without it the server refuses `--install-network slirp` for
    // a normal user, and probe::capabilities says why.
    let _tun = ci_e2e::TunOpen::new();
    let ctx = TestContext::rootless("rl-slirp", user());
    let canary = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    canary.set_nonblocking(true).unwrap();
    let port = canary.local_addr().unwrap().port();
    let script = format!(
        r#"
import socket
devs = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
print("devs", ",".join(devs))
routes = open("/proc/net/route").read()
print("link-local unreachable", "0000FEA9" in routes)
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("10.0.2.2", {port}))
    print("host loopback CONNECTED")
except OSError as e:
    print("host loopback", e.errno)
"#
    );
    let done = ctx.run(&ctx.spec(Network::Slirp, &[PY, "-c", &script]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains("devs lo,tap0\n"), "{out}");
    assert!(out.contains("link-local unreachable True\n"), "{out}");
    assert!(!out.contains("CONNECTED"), "{out}");
    assert!(canary.accept().is_err(), "the host's loopback was reached");
    ctx.assert_clean();
}

#[test]
fn rootless_slirp4netns_is_in_the_delegated_cgroups() {
    let _tun = ci_e2e::TunOpen::new();
    let ctx = TestContext::rootless("rl-slirpcg", user());
    let running = ctx.spawn(&ctx.spec(
        Network::Slirp,
        &["sh", "-c", "echo started; exec sleep 1000"],
    ));
    running.wait_for_line(|l| l == "started");
    let init = *ctx.wait_for_processes().first().expect("container init");
    let slirps = crate::support::processes_with_cmdline("slirp4netns", &init.to_string());
    assert_eq!(slirps.len(), 1, "one slirp4netns for container {init}");
    ctx.assert_in_container_cgroups(slirps[0], init);
    running.signal(Signal::SIGTERM);
    assert!(running.wait().outcome().killed_by_request);
    ctx.assert_clean();
}

#[test]
fn rootless_cleanup_removes_a_container_whose_helper_was_killed() {
    let ctx = TestContext::rootless("rl-orphan", user());
    let mut running = ctx.spawn(&ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    ));
    running.wait_for_line(|l| l == "started");
    running.signal(Signal::SIGKILL);
    running.wait_helper_only();
    assert!(!ctx.wait_for_processes().is_empty());
    assert!(!ctx.cgroup_dirs().is_empty());
    // As the user, like a server run by that user at start-up.
    assert_eq!(ctx.helper_cleanup(None), format!("{}\n", ctx.id));
    ctx.assert_clean();
}
