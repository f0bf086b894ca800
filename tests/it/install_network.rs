//! The install phase's network: pip reaches the index, but code that a requirements file
//! runs during the install (here a local package's build backend) reaches none of this
//! machine's services, neither on loopback nor on its own addresses.

use std::net::{Ipv4Addr, TcpListener};

use ci_e2e::{project, shared_server};

/// A listener that counts connections without accepting them: those that completed the
/// handshake sit in its queue.
struct Canary(TcpListener);

impl Canary {
    fn on(ip: Ipv4Addr) -> Canary {
        let l = TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        Canary(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn hits(&self) -> usize {
        std::iter::from_fn(|| self.0.accept().ok()).count()
    }
}

/// A PEP 517 build backend in the project itself (nothing to download): while the installer
/// builds the package (a local path requirement: the per-job install) it records what the
/// install container's network looks like into /venv, which the test phase then reads.
const BACKEND: &str = r#"
import errno, os, socket, struct, zipfile

TARGETS = __TARGETS__

def _probe():
    out = []
    devs = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
    out.append("devs " + ",".join(devs))
    ip = lambda h: socket.inet_ntoa(struct.pack("<I", int(h, 16)))
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        kind = "unreachable" if int(f[3], 16) & 0x0200 else "via " + ip(f[2])
        out.append("route " + ip(f[1]) + "/" + ip(f[7]) + " " + kind)
    for host, port in TARGETS:
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((host, port))
            out.append("connect %s:%d CONNECTED" % (host, port))
        except OSError as e:
            out.append("connect %s:%d %s" % (host, port, errno.errorcode.get(e.errno, str(e))))
    with open("/venv/network-probe.txt", "w") as f:
        f.write("\n".join(out) + "\n")

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _probe()
    name = "probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        z.writestr("probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: probe\nVersion: 0.1\n")
        z.writestr("probe-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("probe-0.1.dist-info/RECORD", "")
    return name
"#;

const PYPROJECT: &str =
    "[build-system]\nrequires = []\nbuild-backend = \"probe_backend\"\nbackend-path = [\".\"]\n";

#[test]
fn install_phase_reaches_the_index_but_not_this_machine() {
    let server = shared_server();
    let loopback = Canary::on(Ipv4Addr::LOCALHOST);
    let own_address = nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback());
    let host = own_address.map(Canary::on);
    // Through slirp4netns, 10.0.2.2 would be the host's loopback if it were not refused.
    let mut targets = vec![
        format!("('10.0.2.2', {})", loopback.port()),
        format!("('127.0.0.1', {})", loopback.port()),
    ];
    let mut expected = vec![
        "devs lo,tap0".to_owned(),
        "route 169.254.0.0/255.255.0.0 unreachable".to_owned(),
        format!("connect 127.0.0.1:{} ECONNREFUSED", loopback.port()),
    ];
    if let (Some(ip), Some(canary)) = (own_address, &host) {
        targets.push(format!("('{ip}', {})", canary.port()));
        expected.push(format!("connect {ip}:{} EHOSTUNREACH", canary.port()));
    }
    let backend = BACKEND.replace("__TARGETS__", &format!("[{}]", targets.join(", ")));
    let test = format!(
        r#"
def test_install_network():
    seen = open("/venv/network-probe.txt").read()
    print(seen)
    for line in {expected:?}:
        assert line + "\n" in seen, (line, seen)
    assert "CONNECTED" not in seen, seen
    print("install network checked")
"#
    );
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n./probe\n"),
        ("probe/pyproject.toml", PYPROJECT),
        ("probe/probe_backend.py", &backend),
        ("tests/test_probe.py", &test),
    ]);
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(0)
        .expect_stdout("==> installing the project: uv pip install /workspace/probe")
        .expect_stdout("1 passed");
    assert_eq!(
        loopback.hits(),
        0,
        "the install reached the host's loopback"
    );
    if let Some(canary) = &host {
        assert_eq!(
            canary.hits(),
            0,
            "the install reached the host's own address"
        );
    }
}

/// A build backend that holds the per-job install until the test lets it go: it waits for
/// `/workspace/probe/go`, which the test creates through the job's writable copy of the
/// project (`<data>/jobs/<id>/build`), at most two minutes.
const WAITING_BACKEND: &str = r#"
import os, time, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    deadline = time.time() + 120
    while not os.path.exists("/workspace/probe/go") and time.time() < deadline:
        time.sleep(0.1)
    name = "probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        z.writestr("probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: probe\nVersion: 0.1\n")
        z.writestr("probe-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("probe-0.1.dist-info/RECORD", "")
    return name
"#;

/// `/proc/PID/status`'s parent pid.
fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The cgroups of `pid` by controller (`memory` -> `/ci/ci-…-install-project`).
fn cgroups(pid: i32) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            Some(
                ctrls
                    .split(',')
                    .map(move |c| (c.to_owned(), path.to_owned())),
            )
        })
        .flatten()
        .collect()
}

#[test]
fn slirp4netns_runs_in_the_install_containers_cgroups() {
    let server = shared_server();
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n./probe\n"),
        ("probe/pyproject.toml", PYPROJECT),
        ("probe/probe_backend.py", WAITING_BACKEND),
        ("tests/test_ok.py", "def test_ok():\n    pass\n"),
    ]);
    let id = server.submit_async(dir.path());
    let container = format!("ci-{id}-install-project");
    // The helper of the per-job install container, and its two children: the container's
    // init and slirp4netns.
    let (slirp, init) = ci_e2e::poll(
        std::time::Duration::from_secs(300),
        "slirp4netns of the install",
        || {
            let all = pids();
            let helper = *all.iter().find(|p| cmdline(**p).contains(&container))?;
            let children: Vec<i32> = all
                .iter()
                .copied()
                .filter(|p| parent_of(*p) == Some(helper))
                .collect();
            let is_slirp = |p: &i32| cmdline(*p)[0].ends_with("slirp4netns");
            let slirp = *children.iter().find(|p| is_slirp(p))?;
            let init = *children.iter().find(|p| !is_slirp(p))?;
            // slirp4netns joins the container's cgroups once the interface is up, before the
            // container starts (see `ci_runner::slirp::start`): look once init has left the
            // helper's image for the install's command, not while slirp4netns sets up.
            if cmdline(init).contains(&container) {
                return None;
            }
            Some((slirp, init))
        },
    );
    let (of_slirp, of_init) = (cgroups(slirp), cgroups(init));
    let job_cgroup = of_init.get("memory").cloned().unwrap_or_default();
    assert!(
        job_cgroup.ends_with(&format!("/{container}")),
        "{of_init:?}"
    );
    for ctrl in ["memory", "pids", "cpu"] {
        assert_eq!(
            of_slirp.get(ctrl),
            Some(&job_cgroup),
            "slirp4netns is outside the job's {ctrl} cgroup: {of_slirp:?}"
        );
    }
    assert_eq!(
        of_slirp, of_init,
        "slirp4netns's cgroups differ from the job's"
    );

    std::fs::write(
        server.data_dir.join(format!("jobs/{id}/build/probe/go")),
        "",
    )
    .unwrap();
    let job = server.wait_job(&id, "the job to end", |j| {
        j["status"] != "running" && j["status"] != "queued"
    });
    assert_eq!(job["status"], "passed", "{job}");
    // The container's removal took its cgroups, slirp4netns's with them.
    let left =
        std::path::Path::new("/sys/fs/cgroup/memory").join(job_cgroup.trim_start_matches('/'));
    assert!(!left.exists(), "{} is left", left.display());
}
