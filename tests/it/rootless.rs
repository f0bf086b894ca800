//! A server run by a normal user, end to end: `ci-server serve` started as a system user that
//! the set-up creates (no root at run time), jobs submitted with the real `ci`. The jobs run
//! as that user on the host, in the cgroup subtree root delegated once with
//! `scripts/delegate-cgroups`, with the limits enforced and nothing left after them. A user
//! without the delegation is refused, with the reason.
//!
//! Creating the users, delegating the cgroups and opening /dev/net/tun need root, like the
//! rest of these tests; the server itself never has it.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ci_e2e::{
    bin, fixture, output_text, poll, project, scratch, test_image, wait_with_timeout, RunAs,
    Server, ServerOptions,
};

/// Shared with the runner's rootless tests, which delegate to it too (idempotent).
const USER: &str = "ci-rootless-test";
/// A user root never delegated cgroups to.
const UNDELEGATED: &str = "ci-rootless-nodeleg";

const LIMITS: [&str; 4] = ["--memory-limit", "256MiB", "--pids-limit", "64"];

/// The v1 hierarchies a job's containers join (those mounted here).
const CONTROLLERS: [&str; 8] = [
    "pids", "memory", "cpu", "cpuacct", "freezer", "blkio", "devices", "cpuset",
];

/// A system user (no home, no login, no subordinate ids), created if missing.
fn system_user(name: &str) -> RunAs {
    let user = ci_e2e::system_user(name);
    RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }
}

/// [`USER`], with its cgroups delegated.
fn delegated_user() -> RunAs {
    static SETUP: OnceLock<RunAs> = OnceLock::new();
    *SETUP.get_or_init(|| {
        let user = system_user(USER);
        ci_e2e::delegate_cgroups(USER);
        user
    })
}

/// The delegated subtree of `user` in one hierarchy.
fn subtree(ctrl: &str, user: &str) -> String {
    format!("/sys/fs/cgroup/{ctrl}/ci-{user}")
}

/// `ci-server ARGS` run as `user` to completion (a minute at most).
fn ci_server_as(user: RunAs, args: &[&str]) -> Output {
    let child = Command::new(bin("ci-server"))
        .args(args)
        .uid(user.uid)
        .gid(user.gid)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ci-server");
    wait_with_timeout(child, Duration::from_secs(60))
}

#[test]
fn a_server_run_by_a_normal_user_runs_jobs_as_that_user() {
    let user = delegated_user();
    let _tun = ci_e2e::TunOpen::new();
    let server = Server::start_as(
        ServerOptions {
            extra_args: LIMITS.map(String::from).to_vec(),
            ..Default::default()
        },
        user,
    );
    let server_uid = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    assert_eq!(field(&server_uid, "Uid:"), user.uid, "{server_uid}");

    // `doctor` with the same flags, as the same user, agrees that it starts.
    let data = server.data_dir.to_str().unwrap();
    let image = test_image();
    let mut args = vec!["doctor", "--data-dir", data, "--image", &image];
    args.extend(LIMITS);
    let doctor = ci_server_as(user, &args);
    let report = output_text(&doctor);
    assert!(doctor.status.success(), "{report}");
    assert!(
        report.contains("`ci-server serve` with these flags would start."),
        "{report}"
    );
    assert!(
        report.contains(&format!("delegated: {}", subtree("memory", USER))),
        "{report}"
    );

    let run = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(0).expect_stdout("2 passed");
    assert_nothing_left(&server, &run.job_id());

    let run = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(1);
    assert_eq!(server.job(&run.job_id())["status"], "failed");
    assert_nothing_left(&server, &run.job_id());

    // A project installed per job: the overlay over the dependency layer, built and
    // removed (overlayfs leaves its work directory mode 000) by a server that is not root.
    let run = server
        .ci(&fixture("src_layout_extras"))
        .args(["submit", "test"])
        .run();
    run.expect_code(0)
        .expect_stdout("==> installing the project: ")
        .expect_stdout("3 passed");
    assert_nothing_left(&server, &run.job_id());

    jobs_run_as_the_user_in_the_delegated_cgroups(&server, user);

    let hog = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_hog.py",
            "def test_memory_hog():\n    blocks = []\n    while True:\n        blocks.append(bytearray(32 * 1024 * 1024))\n",
        ),
    ]);
    let run = server.ci(hog.path()).args(["submit", "test"]).run();
    run.expect_code(1)
        .expect_stdout("killed: out of memory (limit 256 MiB)");
    assert_eq!(server.job(&run.job_id())["status"], "error");
    assert_nothing_left(&server, &run.job_id());

    // Nothing the server or its jobs wrote belongs to anyone but the user.
    let mut stack = vec![server.data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (user.uid, user.gid),
                "{} is not the user's",
                entry.path().display()
            );
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
}

/// A job whose test holds a marked process until the test has looked at it from the host:
/// its ids, its cgroups and their limits. Inside, root is the user and nobody else is mapped.
fn jobs_run_as_the_user_in_the_delegated_cgroups(server: &Server, user: RunAs) {
    let marker = format!("ci-rootless-marker-{}", std::process::id());
    let test = format!(
        r#"
import signal, subprocess, sys

def test_only_the_user_is_mapped():
    assert open("/proc/self/uid_map").read().split() == ["0", "{uid}", "1"]
    assert open("/proc/self/gid_map").read().split() == ["0", "{gid}", "1"]

def test_seen_from_the_host():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
    assert p.wait(timeout=290) == -signal.SIGTERM
"#,
        uid = user.uid,
        gid = user.gid,
    );
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_ids.py", &test),
    ]);
    let running = server.ci(dir.path()).args(["submit", "test"]).spawn();
    let pid = poll(Duration::from_secs(300), "the marked process", || {
        marked_processes(&marker).into_iter().next()
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let job_cgroup = |ctrl: &str| {
        cgroups
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (ctrls, path) = rest.split_once(':')?;
                ctrls.split(',').any(|c| c == ctrl).then(|| path.to_owned())
            })
            .unwrap_or_else(|| panic!("no {ctrl} cgroup:\n{cgroups}"))
    };
    let memory = job_cgroup("memory");
    let read = |ctrl: &str, file: &str| {
        let path = format!("/sys/fs/cgroup/{ctrl}{}/{file}", job_cgroup(ctrl));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    };
    let limits = [
        read("memory", "memory.limit_in_bytes"),
        read("pids", "pids.max"),
        read("cpu", "cpu.cfs_quota_us"),
    ];
    let owner = std::fs::metadata(format!("/sys/fs/cgroup/memory{memory}"))
        .unwrap()
        .uid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let run = running.finish(Duration::from_secs(300));
    run.expect_code(0).expect_stdout("2 passed");
    let id = run.job_id();

    assert_eq!(field(&status, "Uid:"), user.uid, "{status}");
    assert_eq!(field(&status, "Gid:"), user.gid, "{status}");
    for ctrl in CONTROLLERS {
        assert_eq!(
            job_cgroup(ctrl),
            format!("/ci-{USER}/ci-{id}-test"),
            "{ctrl}:\n{cgroups}"
        );
    }
    assert_eq!(
        limits,
        [(256u64 << 20).to_string(), "64".into(), "200000".into()]
    );
    assert_eq!(owner, user.uid, "the job's cgroup is the user's");
    assert_nothing_left(server, &id);
}

/// The first number on the line of /proc/PID/status that starts with `key`.
fn field(status: &str, key: &str) -> u32 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
}

/// Pids of host processes whose command line contains `needle`.
fn marked_processes(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// No cgroup, container state, job directory or process of the job is left.
fn assert_nothing_left(server: &Server, id: &str) {
    for ctrl in CONTROLLERS {
        for phase in ["install", "install-project", "test"] {
            let cg = format!("{}/ci-{id}-{phase}", subtree(ctrl, USER));
            assert!(!Path::new(&cg).exists(), "{cg} is left");
        }
    }
    for sub in ["containers", "jobs"] {
        let left: Vec<_> = std::fs::read_dir(server.data_dir.join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in {sub}/: {left:?}");
    }
    let procs = marked_processes(id);
    assert!(
        procs.is_empty(),
        "processes of job {id} are left: {procs:?}"
    );
}

#[test]
fn a_user_without_delegated_cgroups_is_refused_with_the_reason() {
    let user = system_user(UNDELEGATED);
    assert!(
        !Path::new(&subtree("memory", UNDELEGATED)).exists(),
        "{UNDELEGATED} must not have delegated cgroups for this test"
    );
    let dir = tempfile::Builder::new()
        .prefix("undelegated-")
        .tempdir_in(scratch())
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(user.uid), Some(user.gid)).unwrap();
    let data = data.to_str().unwrap();
    let image = test_image();
    let why = [
        "cgroup hierarchies not delegated to this user: ".into(),
        format!("as root, run `scripts/delegate-cgroups {UNDELEGATED}` once"),
        format!(
            "--memory-limit cannot be enforced: the memory cgroup controller: {} is missing",
            subtree("memory", UNDELEGATED)
        ),
        "--pids-limit cannot be enforced: the pids cgroup controller".into(),
        "(--allow-unlimited runs jobs without it)".into(),
    ];

    let mut args = vec!["doctor", "--data-dir", data, "--image", &image];
    args.extend(LIMITS);
    let doctor = ci_server_as(user, &args);
    let report = output_text(&doctor);
    assert_eq!(doctor.status.code(), Some(1), "{report}");
    assert!(report.contains("would refuse to start"), "{report}");
    for why in &why {
        assert!(report.contains(why.as_str()), "lacks {why:?}:\n{report}");
    }

    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--image",
        &image,
    ];
    args.extend(LIMITS);
    let serve = ci_server_as(user, &args);
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{}", output_text(&serve));
    assert!(
        stderr.contains("cannot isolate jobs on this machine"),
        "{stderr}"
    );
    for why in &why {
        assert!(stderr.contains(why.as_str()), "lacks {why:?}:\n{stderr}");
    }
    assert!(
        !Path::new(&subtree("memory", UNDELEGATED)).exists(),
        "the refused server created cgroups"
    );
}
