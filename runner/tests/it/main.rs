//! Integration tests that launch real containers through the helper binary. They need
//! root, cgroups and an unpacked Python rootfs in `CI_TEST_ROOTFS`.

mod overlay;
mod rootless;
mod support;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use ci_runner::{BindMount, Network};
use nix::sys::signal::Signal;
use support::TestContext;

const PY: &str = "python3";

#[test]
fn print_exits_zero_with_output_on_the_pipe() {
    let ctx = TestContext::new("print");
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", "print(1)"]));
    let outcome = done.outcome();
    assert_eq!(outcome.exit_code, Some(0), "{done:?}");
    assert_eq!(outcome.signal, None);
    assert!(!outcome.oom_killed && !outcome.pids_limit_hit && !outcome.killed_by_request);
    assert_eq!(done.stdout, "1\n");
    assert!(done.status.success(), "{done:?}");
    ctx.assert_clean();
}

#[test]
fn exit_code_propagates() {
    let ctx = TestContext::new("exit3");
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", "import sys; sys.exit(3)"]));
    assert_eq!(done.outcome().exit_code, Some(3), "{done:?}");
    assert_eq!(done.outcome().signal, None);
    // The helper itself succeeded: the container's exit code is data, not a failure.
    assert!(done.status.success(), "{done:?}");
    assert!(
        done.stderr.is_empty(),
        "helper diagnostics: {}",
        done.stderr
    );
}

#[test]
fn stdout_and_stderr_keep_their_order_in_one_stream() {
    let ctx = TestContext::new("order");
    let script = "import sys\nfor i in range(200):\n    print(f'out{i}')\n    print(f'err{i}', file=sys.stderr)\n";
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", script]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let expected: String = (0..200).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(done.stdout, expected);
}

#[test]
fn workspace_and_rootfs_are_read_only() {
    let ctx = TestContext::new("erofs");
    std::fs::write(ctx.workspace().join("keep.txt"), "original").unwrap();
    let script = r#"
import errno
for path in ["/workspace/new.txt", "/workspace/keep.txt", "/usr/new.txt", "/new.txt"]:
    try:
        open(path, "w").write("x")
        print(path, "WRITABLE")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
open("/tmp/scratch", "w").write("tmpfs is writable")
open("/root/.cache", "w").write("so is HOME")
print("tmp ok")
"#;
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", script]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    for path in [
        "/workspace/new.txt",
        "/workspace/keep.txt",
        "/usr/new.txt",
        "/new.txt",
    ] {
        assert!(
            done.stdout.contains(&format!("{path} EROFS\n")),
            "{}",
            done.stdout
        );
    }
    assert!(done.stdout.contains("tmp ok"));
    let entries: Vec<_> = std::fs::read_dir(ctx.workspace())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(ctx.workspace().join("keep.txt")).unwrap(),
        "original"
    );
}

#[test]
fn max_file_size_stops_writes_past_it() {
    let ctx = TestContext::new("fsize");
    // Python ignores SIGXFSZ and sees EFBIG; a shell's child is killed by the signal.
    let script = r#"
import errno, subprocess
fd = open("/tmp/big", "wb", buffering=0)
written = 0
try:
    while True:
        written += fd.write(b"x" * 65536)
except OSError as e:
    print("python", errno.errorcode[e.errno], written)
print("head", subprocess.run(["sh", "-c", "head -c 2000000 /dev/zero > /tmp/other"]).returncode)
"#;
    let mut spec = ctx.spec(Network::None, &[PY, "-c", script]);
    spec.max_file_size = Some(1 << 20);
    let done = ctx.run(&spec);
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    assert!(
        done.stdout.contains(&format!("python EFBIG {}\n", 1 << 20)),
        "{done:?}"
    );
    // sh reports a child killed by signal N as 128 + N; SIGXFSZ is 25.
    assert!(done.stdout.contains("head 153\n"), "{done:?}");
}

#[test]
fn writable_bind_mount_is_writable() {
    let ctx = TestContext::new("rw");
    let deps = tempfile::tempdir().unwrap();
    let mut spec = ctx.spec(
        Network::None,
        &[
            PY,
            "-c",
            "open('/deps/out.txt', 'w').write('from container')",
        ],
    );
    spec.mounts.push(BindMount {
        source: deps.path().to_owned(),
        destination: "/deps".into(),
        readonly: false,
    });
    // Owned by the host's root, the directory is not writable for the container's root.
    let done = ctx.run(&spec);
    assert!(done.stdout.contains("PermissionError"), "{done:?}");
    ci_runner::give_to_container(deps.path(), &support::USERNS).unwrap();
    let done = ctx.run(&spec);
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    assert_eq!(
        std::fs::read_to_string(deps.path().join("out.txt")).unwrap(),
        "from container"
    );
    // Written by the container's root: the mapped host uid.
    let meta = std::fs::metadata(deps.path().join("out.txt")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (
            support::USERNS.host_ids().uid,
            support::USERNS.host_ids().gid
        )
    );
}

/// A listener on the host's loopback that counts the connections it received.
struct Canary {
    listener: std::net::TcpListener,
}

impl Canary {
    fn new() -> Self {
        Self::on(std::net::Ipv4Addr::LOCALHOST)
    }

    fn on(ip: std::net::Ipv4Addr) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        Self { listener }
    }

    /// `ip:port` to connect to.
    fn target(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Connections that completed the handshake sit in the accept queue even if nobody
    /// called accept() while the container ran.
    fn accepted(&self) -> usize {
        let mut n = 0;
        while self.listener.accept().is_ok() {
            n += 1;
        }
        n
    }
}

const NET_PROBE: &str = r#"
import errno, socket, sys
port = int(sys.argv[1])
devs = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
print("devs", ",".join(devs))
routes = open("/proc/net/route").read().splitlines()[1:]
print("routes", len(routes))
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", port))
    print("canary CONNECTED")
except OSError as e:
    print("canary", errno.errorcode.get(e.errno, e))
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
c = socket.create_connection(srv.getsockname(), timeout=5)
print("own loopback OK")
print("localhost", socket.gethostbyname("localhost"))
print("hostname", socket.gethostname())
import os
print("lo up", int(open("/sys/class/net/lo/flags").read(), 16) & 1)
print("sysfs cgroup", os.listdir("/sys/fs/cgroup"))
try:
    open("/sys/kernel/uevent_helper", "w").write("x")
except OSError as e:
    print("sysfs", errno.errorcode[e.errno])
"#;

#[test]
fn network_none_has_only_loopback_and_cannot_reach_the_host() {
    let ctx = TestContext::new("netnone");
    let canary = Canary::new();
    let port = canary.port().to_string();
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", NET_PROBE, &port]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains("devs lo\n"), "{out}");
    assert!(out.contains("routes 0\n"), "{out}");
    // The container's 127.0.0.1 is its own loopback, where nothing listens.
    assert!(out.contains("canary ECONNREFUSED\n"), "{out}");
    assert!(out.contains("own loopback OK\n"), "{out}");
    assert!(out.contains("localhost 127.0.0.1\n"), "{out}");
    assert!(out.contains("hostname ci\n"), "{out}");
    assert!(out.contains("lo up 1\n"), "{out}");
    assert!(out.contains("sysfs EROFS\n"), "{out}");
    assert_eq!(canary.accepted(), 0);
}

#[test]
fn network_host_reaches_the_host_loopback() {
    let ctx = TestContext::new("nethost");
    let canary = Canary::new();
    let port = canary.port().to_string();
    let done = ctx.run(&ctx.spec(Network::Host, &[PY, "-c", NET_PROBE, &port]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains("canary CONNECTED\n"), "{out}");
    // /sys is the host's, read-only throughout.
    assert!(out.contains("sysfs EROFS\n"), "{out}");
    assert_eq!(canary.accepted(), 1);
}

/// The host's first IPv4 address that is not loopback, if it has one.
fn host_address() -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback())
}

/// Lists interfaces and routes, then tries each `ip:port` argument (never anything that
/// leaves this machine: the arguments are the host's own addresses).
const SLIRP_PROBE: &str = r#"
import errno, socket, struct, sys
devs = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
print("devs", ",".join(devs))
print("tap0 mtu", open("/sys/class/net/tap0/mtu").read().strip())
ip = lambda h: socket.inet_ntoa(struct.pack("<I", int(h, 16)))
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    kind = "unreachable" if int(f[3], 16) & 0x0200 else "via " + ip(f[2])
    print("route", ip(f[1]) + "/" + ip(f[7]), kind)
print("resolv", open("/etc/resolv.conf").read().splitlines()[0])
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        print("connect", target, "CONNECTED")
    except OSError as e:
        print("connect", target, errno.errorcode.get(e.errno, str(e)))
"#;

#[test]
fn network_slirp_is_nat_without_the_host() {
    let ctx = TestContext::new("slirp");
    let lo_canary = Canary::new();
    let own_port = lo_canary.port();
    // slirp4netns's gateway 10.0.2.2 would be the host's loopback without
    // --disable-host-loopback.
    let mut targets = vec![
        format!("127.0.0.1:{own_port}"),
        format!("10.0.2.2:{own_port}"),
    ];
    let host_ip = host_address();
    let host_canary = host_ip.map(Canary::on);
    if let Some(canary) = &host_canary {
        targets.push(canary.target());
    }
    let mut args = vec![PY, "-c", SLIRP_PROBE];
    args.extend(targets.iter().map(String::as_str));
    let running = ctx.spawn(&ctx.spec(Network::Slirp, &args));
    let done = running.wait();
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains("devs lo,tap0\n"), "{out}");
    assert!(out.contains("tap0 mtu 65520\n"), "{out}");
    assert!(
        out.contains("route 0.0.0.0/0.0.0.0 via 10.0.2.2\n"),
        "{out}"
    );
    assert!(
        out.contains("route 169.254.0.0/255.255.0.0 unreachable\n"),
        "{out}"
    );
    assert!(out.contains("resolv nameserver 10.0.2.3\n"), "{out}");
    assert!(
        out.contains(&format!("connect 127.0.0.1:{own_port} ECONNREFUSED\n")),
        "{out}"
    );
    assert!(
        !out.contains(&format!("connect 10.0.2.2:{own_port} CONNECTED")),
        "{out}"
    );
    if let (Some(ip), Some(canary)) = (host_ip, &host_canary) {
        assert!(
            out.contains(&format!("route {ip}/255.255.255.255 unreachable\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("connect {} EHOSTUNREACH\n", canary.target())),
            "{out}"
        );
        assert_eq!(canary.accepted(), 0);
    }
    assert_eq!(lo_canary.accepted(), 0);
    ctx.assert_clean();
}

#[test]
fn slirp4netns_lives_as_long_as_its_container() {
    let ctx = TestContext::new("slirplife");
    let running = ctx.spawn(&ctx.spec(
        Network::Slirp,
        &["sh", "-c", "echo started; exec sleep 1000"],
    ));
    running.wait_for_line(|l| l == "started");
    let init = *ctx.wait_for_processes().first().expect("container init");
    let slirps = || support::processes_with_cmdline("slirp4netns", &init.to_string());
    assert_eq!(slirps().len(), 1, "one slirp4netns for container {init}");
    // It counts against the container's limits, and its kill takes it along.
    ctx.assert_in_container_cgroups(slirps()[0], init);
    running.signal(Signal::SIGTERM);
    assert!(running.wait().outcome().killed_by_request);
    assert_eq!(slirps(), Vec::<i32>::new());
    ctx.assert_clean();
}

#[test]
fn memory_hog_is_oom_killed() {
    let ctx = TestContext::new("oom");
    let mut spec = ctx.spec(Network::None, &[PY, "-c", "x = b'x' * (512 << 20)"]);
    spec.limits.memory_bytes = Some(64 << 20);
    let done = ctx.run(&spec);
    let outcome = done.outcome();
    assert_eq!(outcome.signal, Some(9), "{done:?}");
    assert!(outcome.oom_killed, "{done:?}");
    assert!(!outcome.killed_by_request);
}

#[test]
fn limits_are_written_to_the_cgroups() {
    let ctx = TestContext::new("limits");
    let mut spec = ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    );
    spec.limits = ci_runner::Limits {
        memory_bytes: Some(100 << 20),
        pids: Some(20),
        cpu_quota_us: Some(50_000),
        cpu_period_us: Some(100_000),
    };
    let running = ctx.spawn(&spec);
    running.wait_for_line(|l| l == "started");
    let read = |ctrl: &str, file: &str| {
        let path = format!(
            "/sys/fs/cgroup/{ctrl}/{}/{}/{file}",
            support::CGROUP_PARENT.trim_start_matches('/'),
            ctx.id
        );
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    };
    let limits = [
        read("memory", "memory.limit_in_bytes"),
        read("memory", "memory.memsw.limit_in_bytes"),
        read("pids", "pids.max"),
        read("cpu", "cpu.cfs_quota_us"),
        read("cpu", "cpu.cfs_period_us"),
    ];
    running.signal(Signal::SIGTERM);
    assert!(running.wait().outcome().killed_by_request);
    let mib100 = (100u64 << 20).to_string();
    assert_eq!(limits, [&*mib100, &*mib100, "20", "50000", "100000"]);
}

#[test]
fn fork_bomb_hits_the_pids_limit_and_is_killed_on_sigterm() {
    let ctx = TestContext::new("forkbomb");
    let script = r#"
import os, time
said = False
while True:
    try:
        os.fork()
    except OSError:
        if not said:
            print("EAGAIN", flush=True)
            said = True
        time.sleep(0.05)
"#;
    let mut spec = ctx.spec(Network::None, &[PY, "-c", script]);
    spec.limits.pids = Some(32);
    let running = ctx.spawn(&spec);
    running.wait_for_line(|l| l == "EAGAIN");
    running.signal(Signal::SIGTERM);
    let done = running.wait();
    let outcome = done.outcome();
    assert!(outcome.pids_limit_hit, "{done:?}");
    assert!(outcome.killed_by_request, "{done:?}");
    assert_eq!(outcome.signal, Some(9));
}

#[test]
fn sigterm_kills_a_sleeping_container_promptly() {
    let ctx = TestContext::new("sigterm");
    let running = ctx.spawn(&ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    ));
    running.wait_for_line(|l| l == "started");
    let sent = Instant::now();
    running.signal(Signal::SIGTERM);
    let done = running.wait();
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let outcome = done.outcome();
    assert!(outcome.killed_by_request, "{done:?}");
    assert_eq!(outcome.signal, Some(9));
    assert!(done.status.success(), "{done:?}");
}

#[test]
fn sigterm_during_startup_leaves_nothing_behind() {
    for _ in 0..5 {
        let ctx = TestContext::new("early");
        let running = ctx.spawn(&ctx.spec(Network::None, &["sleep", "1000"]));
        running.signal(Signal::SIGTERM);
        let done = running.wait();
        // Either the signal came before the helper blocked it (default action: it dies
        // before creating anything) or the helper killed the container it had built.
        if let Some(outcome) = &done.outcome {
            assert!(outcome.killed_by_request, "{done:?}");
        }
        ctx.assert_clean();
    }
}

#[test]
fn cleanup_removes_a_container_whose_helper_was_killed() {
    let ctx = TestContext::new("orphan");
    let mut running = ctx.spawn(&ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    ));
    running.wait_for_line(|l| l == "started");
    running.signal(Signal::SIGKILL);
    running.wait_helper_only();
    // The container outlives its helper...
    assert!(!ctx.wait_for_processes().is_empty());
    assert!(!ctx.cgroup_dirs().is_empty());
    assert!(ctx.state_root().join(&ctx.id).exists());
    // ...until cleanup.
    ctx.helper_cleanup(Some(&ctx.id));
    ctx.assert_clean();
    // Idempotent.
    ctx.helper_cleanup(Some(&ctx.id));
}

#[test]
fn reconcile_removes_every_leftover() {
    let ctx = TestContext::new("reconcile");
    let mut running = ctx.spawn(&ctx.spec(
        Network::Host,
        &["sh", "-c", "echo started; exec sleep 1000"],
    ));
    running.wait_for_line(|l| l == "started");
    running.signal(Signal::SIGKILL);
    running.wait_helper_only();
    assert_eq!(ctx.helper_cleanup(None), format!("{}\n", ctx.id));
    ctx.assert_clean();
    assert_eq!(ctx.helper_cleanup(None), "");
}

#[test]
fn container_is_isolated() {
    let ctx = TestContext::new("isolated");
    let script = r#"
import os
print("pid", os.getpid())
print("procs", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
status = dict(l.split(":\t") for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("capeff", status["CapEff"].strip())
print("nnp", status["NoNewPrivs"].strip())
print("seccomp", status["Seccomp"].strip())
print("cgroup", open("/proc/self/cgroup").read().splitlines()[0])
print("uid", os.getuid())
"#;
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", script]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains("pid 1\n"), "{out}");
    assert!(out.contains("procs [1]\n"), "{out}");
    assert!(out.contains("nnp 1\n"), "{out}");
    assert!(out.contains("seccomp 2\n"), "{out}");
    // Own cgroup namespace: the host path /ci-it/<id> is not visible.
    assert!(!out.contains(&ctx.id), "{out}");
    let capeff = out.lines().find_map(|l| l.strip_prefix("capeff ")).unwrap();
    let capeff = u64::from_str_radix(capeff, 16).unwrap();
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_NET_RAW: u64 = 1 << 13;
    assert_eq!(capeff & (CAP_SYS_ADMIN | CAP_NET_RAW), 0, "{out}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn seccomp_refuses_dangerous_syscalls() {
    let ctx = TestContext::new("seccomp");
    // x86_64 syscall numbers.
    let script = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print(name, errno.errorcode[ctypes.get_errno()] if r == -1 else r, flush=True)
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
call("unshare", 272, CLONE_NEWUSER)
call("keyctl", 250, 0, 0, 0, 0, 0)
call("bpf", 321, 0, 0, 0)
call("clone_newuser", 56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
call("clone3", 435, 0, 0)
call("userfaultfd", 323, 0)
import os, subprocess
print("fork", subprocess.run(["true"]).returncode)
"#;
    let done = ctx.run(&ctx.spec(Network::None, &[PY, "-c", script]));
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    for expected in [
        "unshare EPERM",
        "keyctl EPERM",
        "bpf EPERM",
        "clone_newuser EPERM",
        "clone3 ENOSYS",
        "userfaultfd EPERM",
        "fork 0",
    ] {
        assert!(
            out.contains(&format!("{expected}\n")),
            "{expected} missing in\n{out}"
        );
    }
}

#[test]
fn concurrent_containers_all_succeed() {
    let contexts: Vec<_> = (0..12).map(|_| TestContext::new("many")).collect();
    let running: Vec<_> = contexts
        .iter()
        .enumerate()
        .map(|(i, ctx)| {
            let network = if i % 2 == 0 {
                Network::None
            } else {
                Network::Host
            };
            ctx.spawn(&ctx.spec(network, &[PY, "-c", &format!("print({i})")]))
        })
        .collect();
    for (i, running) in running.into_iter().enumerate() {
        let done = running.wait();
        assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
        assert_eq!(done.stdout, format!("{i}\n"));
    }
}

#[test]
fn die_with_parent_kills_the_container_when_the_parent_dies() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let ctx = TestContext::new("orphaned");
    let spec = ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    );
    ci_runner::prepare_bundle(&ctx.bundle(), &spec).unwrap();
    // A parent shell that the test SIGKILLs, standing in for a crashed server.
    let mut parent = Command::new("sh")
        .args(["-c", "\"$@\" & wait", "sh", support::HELPER])
        .args(ci_runner::container_args(
            &ctx.bundle(),
            &ctx.state_root(),
            &ctx.id,
            &ctx.result_path(),
            true,
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    parent.kill().unwrap();
    parent.wait().unwrap();
    // The helper's SIGKILL of the container closes the last writer of the pipe.
    assert!(lines.next().is_none());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctx.result_path().exists() {
        assert!(
            Instant::now() < deadline,
            "no result from the orphaned helper"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome: ci_runner::Outcome =
        serde_json::from_slice(&std::fs::read(ctx.result_path()).unwrap()).unwrap();
    assert!(outcome.killed_by_request, "{outcome:?}");
    ctx.assert_clean();
}

#[test]
fn a_second_container_with_the_same_id_is_refused_and_harmless() {
    let ctx = TestContext::new("dup");
    let spec = ctx.spec(
        Network::None,
        &["sh", "-c", "echo started; exec sleep 1000"],
    );
    let first = ctx.spawn(&spec);
    first.wait_for_line(|l| l == "started");
    let second = ctx.spawn(&spec).wait();
    assert_eq!(second.status.code(), Some(ci_runner::exit_codes::FAILED));
    assert!(second.stderr.contains("already exists"), "{second:?}");
    // The first one is still running and still ours to stop.
    assert!(!ctx.wait_for_processes().is_empty());
    first.signal(Signal::SIGTERM);
    assert!(first.wait().outcome().killed_by_request);
}

#[test]
fn missing_executable_is_a_helper_failure() {
    let ctx = TestContext::new("noexec");
    let done = ctx.run(&ctx.spec(Network::None, &["does-not-exist"]));
    assert!(done.outcome.is_none(), "{done:?}");
    assert_eq!(done.status.code(), Some(ci_runner::exit_codes::FAILED));
    assert!(done.stderr.contains("does-not-exist"), "{}", done.stderr);
    // libcontainer's own logs stay on the helper's stderr, out of the job output.
    assert_eq!(done.stdout, "");
    ctx.assert_clean();
}

/// Real pip through slirp4netns and this machine's TLS-intercepting proxy, as the
/// container's unprivileged root, then pytest offline. Needs
/// network access to PyPI, hence ignored by default:
/// `cargo test -p ci-runner --test it -- --ignored pip`.
#[test]
#[ignore = "downloads from PyPI"]
fn pip_install_online_then_pytest_offline() {
    let ca = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let deps = tempfile::tempdir().unwrap();
    let deps_mount = |readonly| BindMount {
        source: deps.path().to_owned(),
        destination: "/deps".into(),
        readonly,
    };

    ci_runner::give_to_container(deps.path(), &support::USERNS).unwrap();
    // `PIP_TEST_NETWORK=host` compares with the host's network.
    let network = match std::env::var("PIP_TEST_NETWORK").as_deref() {
        Ok("host") => Network::Host,
        _ => Network::Slirp,
    };
    let install = TestContext::new("pip");
    let mut spec = install.spec(
        network,
        &[
            PY,
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--target",
            "/deps",
            "pytest==7.4.3",
        ],
    );
    spec.mounts.push(deps_mount(false));
    spec.mounts.push(BindMount {
        source: ca.into(),
        destination: "/etc/ci/ca.pem".into(),
        readonly: true,
    });
    spec.env.extend([
        "PIP_CERT=/etc/ci/ca.pem".to_owned(),
        "SSL_CERT_FILE=/etc/ci/ca.pem".to_owned(),
        "PIP_DISABLE_PIP_VERSION_CHECK=1".to_owned(),
    ]);
    let started = Instant::now();
    let done = install.run(&spec);
    eprintln!("pip install over {network:?}: {:?}", started.elapsed());
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    assert!(deps.path().join("pytest").is_dir());

    let test = TestContext::new("pytest");
    std::fs::write(
        test.workspace().join("test_sample.py"),
        "import socket\n\
         def test_add():\n    assert 1 + 1 == 2\n\
         def test_localhost_server():\n\
         \x20   srv = socket.create_server(('localhost', 0))\n\
         \x20   socket.create_connection(srv.getsockname()).close()\n",
    )
    .unwrap();
    // The workspace is read-only: the cache plugin would only warn about .pytest_cache.
    let mut spec = test.spec(
        Network::None,
        &[PY, "-m", "pytest", "-p", "no:cacheprovider", "-v"],
    );
    spec.mounts.push(deps_mount(true));
    spec.env.push("PYTHONPATH=/deps".to_owned());
    let done = test.run(&spec);
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    assert!(done.stdout.contains("pytest-7.4.3"), "{done:?}");
    assert!(done.stdout.contains("2 passed"), "{done:?}");
}
