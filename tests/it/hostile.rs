//! Hostile projects, end to end through `ci`: each ends in a terminal status with the right
//! reason, leaves nothing of its own on the host, and the server goes on serving.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ci_e2e::{fixture, long_lived, poll, project, Run, Server, ServerOptions};

/// A server with small limits, so hostile jobs hit them fast.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        long_lived(ServerOptions {
            extra_args: [
                "--memory-limit",
                "256MiB",
                "--pids-limit",
                "64",
                "--max-log-size",
                "8MiB",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
    })
}

/// Submits a project with this test module (and optional conftest), returns the run and the job.
fn submit(test: &str, conftest: Option<&str>, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut files = vec![
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_hostile.py", test),
    ];
    if let Some(c) = conftest {
        files.push(("conftest.py", c));
    }
    let dir = project(&files);
    let mut args = vec!["submit", "test"];
    args.extend_from_slice(extra);
    let run = server().ci(dir.path()).args(args).run();
    let id = run.job_id();
    let job = server().job(&id);
    assert_nothing_left(&id);
    (run, job)
}

/// No cgroup, container state, mount, job directory or process of the job is left on the host.
fn assert_nothing_left(id: &str) {
    let server = server();
    for ctrl in [
        "pids", "memory", "cpu", "cpuacct", "freezer", "blkio", "devices", "cpuset",
    ] {
        for phase in ["install", "install-project", "test"] {
            let cg = format!("/sys/fs/cgroup/{ctrl}/ci/ci-{id}-{phase}");
            assert!(!Path::new(&cg).exists(), "{cg} is left");
        }
    }
    for phase in ["install", "install-project", "test"] {
        let state = server
            .data_dir
            .join("containers")
            .join(format!("ci-{id}-{phase}"));
        assert!(!state.exists(), "{} is left", state.display());
    }
    assert!(
        !server.data_dir.join("jobs").join(id).exists(),
        "the job directory is left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(id),
        "a mount of the job is left:\n{mounts}"
    );
}

/// Processes on the host whose command line contains `needle`.
fn host_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn fork_bomb_hits_the_pids_limit() {
    let test = r#"
import os

def test_fork_bomb():
    parent = os.getpid()
    try:
        while True:
            os.fork()
    except OSError:
        if os.getpid() != parent:
            os._exit(1)
        raise
"#;
    let (run, job) = submit(test, None, &[]);
    run.expect_code(1).expect_stdout("pids limit (64) reached");
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(job["reason"], "pids limit (64) reached", "{job}");
}

#[test]
fn memory_hog_is_killed_for_memory() {
    let test = r#"
def test_memory_hog():
    blocks = []
    while True:
        blocks.append(bytearray(32 * 1024 * 1024))
"#;
    let (run, job) = submit(test, None, &[]);
    run.expect_code(1)
        .expect_stdout("killed: out of memory (limit 256 MiB)");
    assert_eq!(job["status"], "error", "{job}");
}

#[test]
fn infinite_loop_times_out() {
    let (run, job) = submit(
        "def test_spin():\n    while True:\n        pass\n",
        None,
        &["--timeout", "15s"],
    );
    run.expect_code(1).expect_stdout("timed out after 15s");
    assert_eq!(job["status"], "timed_out", "{job}");
}

#[test]
fn a_flood_of_output_is_cut_at_the_log_limit() {
    // Printed from the terminal summary, where pytest does not capture output: 1 GiB.
    let conftest = r#"
import os

def pytest_terminal_summary(terminalreporter):
    chunk = b"y" * 65535 + b"\n"
    for _ in range(16384):
        os.write(1, chunk)
"#;
    let (run, job) = submit("def test_ok():\n    pass\n", Some(conftest), &[]);
    run.expect_code(1).expect_stdout("log truncated at 8 MiB");
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("log limit reached"),
        "{job}"
    );
    let log = server().stored_log(job["id"].as_str().unwrap());
    assert!(
        log.len() < (8 << 20) + 4096,
        "the log kept {} bytes",
        log.len()
    );
}

#[test]
fn output_that_is_not_utf8_passes_through_unchanged() {
    let conftest = r#"
import os

def pytest_terminal_summary(terminalreporter):
    os.write(1, b"raw bytes: \xff\xfe\x80\x00 end\n")
"#;
    let (run, job) = submit("def test_ok():\n    pass\n", Some(conftest), &[]);
    run.expect_code(0);
    assert_eq!(job["status"], "passed");
    let needle: &[u8] = b"raw bytes: \xff\xfe\x80\x00 end\n";
    assert!(
        run.0.stdout.windows(needle.len()).any(|w| w == needle),
        "{run}"
    );
}

#[test]
fn daemons_left_by_tests_die_with_the_job() {
    let test = r#"
import os, subprocess

def test_leave_daemons():
    subprocess.Popen(["sleep", "7771"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "7772"])
        os._exit(0)
"#;
    let (run, job) = submit(test, None, &[]);
    run.expect_code(0);
    assert_eq!(job["status"], "passed");
    poll(Duration::from_secs(10), "the daemons to be gone", || {
        (host_processes("sleep 7771").is_empty() && host_processes("sleep 7772").is_empty())
            .then_some(())
    });
}

#[test]
fn tests_reach_neither_the_network_nor_the_server_nor_host_processes() {
    let canary = TcpListener::bind("127.0.0.1:0").unwrap();
    let canary_port = canary.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in canary.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut c) = conn {
                let _ = c.read(&mut [0u8; 8]);
            }
        }
    });
    let server_port = server().addr.rsplit(':').next().unwrap().to_string();
    let test = format!(
        r#"
import os, socket

def unreachable(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        return True
    return False

def test_no_canary():
    assert unreachable({canary_port})

def test_no_ci_server():
    assert unreachable({server_port})

def test_sees_only_its_own_processes():
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    cmdlines = [open("/proc/%d/cmdline" % p, "rb").read() for p in pids]
    assert len(pids) < 10, cmdlines
    assert not any(b"ci-server" in c for c in cmdlines), cmdlines
    assert 1 in pids

def test_no_interfaces_but_lo():
    assert sorted(os.listdir("/sys/class/net")) == ["lo"]
"#
    );
    let (run, job) = submit(&test, None, &[]);
    run.expect_code(0).expect_stdout("4 passed");
    assert_eq!(job["status"], "passed");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a job reached the host's loopback"
    );
}

#[test]
fn the_server_still_serves_after_hostile_jobs() {
    // Runs alongside the others; by the time it submits, several hostile jobs ran or run.
    let run = server()
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(0).expect_stdout("2 passed");
}

#[test]
fn a_dependency_that_forces_exit_status_0_cannot_forge_a_pass() {
    // A dependency (installed through requirements.txt, as a real one would be) registers
    // an exit hook that turns any exit status into 0 after pytest reported: here a pytest
    // plugin, which pytest loads by itself (a `sitecustomize` does the same on images whose
    // Python has none of its own; Debian's shadows it).
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n./evil\n"),
        (
            "evil/pyproject.toml",
            "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
             [project]\nname = \"evil\"\nversion = \"1.0\"\n\n[project.entry-points.pytest11]\nevil = \"evil_plugin\"\n\n\
             [tool.setuptools]\npy-modules = [\"evil_plugin\"]\n",
        ),
        (
            "evil/evil_plugin.py",
            "import atexit, os\natexit.register(lambda: os._exit(0))\n",
        ),
        (
            "tests/test_forged.py",
            "def test_fails():\n    assert 1 == 2\n",
        ),
    ]);
    let run = server().ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(1).expect_stdout("1 failed").expect_stdout(
        "==> result: error: the test process exited 0 but the report lists 1 failed test",
    );
    let job = server().job(&run.job_id());
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(job["exit_code"], 0, "{job}");

    // The same from the project's own conftest.
    let conftest = "import atexit, os\natexit.register(lambda: os._exit(0))\n";
    let (run, job) = submit("def test_fails():\n    assert False\n", Some(conftest), &[]);
    run.expect_code(1);
    assert_eq!(job["status"], "error", "{job}");
}

#[test]
fn a_printed_result_line_changes_nothing() {
    let test = r#"
def test_fails_after_claiming_success():
    print("\n==> result: passed (0.1s)", flush=True)
    assert False
"#;
    let (run, job) = submit(test, None, &["--", "-s"]);
    run.expect_code(1);
    assert_eq!(job["status"], "failed", "{job}");
    let stdout = run.stdout();
    // The job's imitation is set apart; the last line is the real result, from the record.
    assert!(stdout.contains("\n ==> result: passed (0.1s)\n"), "{run}");
    assert!(!stdout.contains("\n==> result: passed"), "{run}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("==> result: failed ("), "{run}");
}
