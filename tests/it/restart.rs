//! Restart safety: a server killed mid-job, even with SIGKILL, comes back with every finished
//! job and log intact, the running job `lost` and nothing of its container left.

use std::path::Path;
use std::time::Duration;

use ci_e2e::{fixture, poll, project, Server, ServerOptions};
use nix::sys::signal::Signal;

fn slow_project() -> tempfile::TempDir {
    project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_slow.py",
            "import time\n\ndef test_slow():\n    time.sleep(300)\n",
        ),
    ])
}

fn container_gone(id: &str) -> bool {
    ["pids", "memory", "cpu"]
        .iter()
        .all(|ctrl| !Path::new(&format!("/sys/fs/cgroup/{ctrl}/ci/ci-{id}-test")).exists())
}

#[test]
fn sigkill_mid_job_then_restart_marks_it_lost_and_keeps_the_rest() {
    let mut server = Server::start(ServerOptions::default());
    let done = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run();
    done.expect_code(0);
    let done_id = done.job_id();
    let done_log = server.stored_log(&done_id);

    let slow = slow_project();
    let id = server.submit_async(slow.path());
    server.wait_job(&id, "slow job to run its tests", |j| {
        j["phase"] == "testing"
    });
    server.stop_with(Signal::SIGKILL);
    // The helpers die with the server and take their containers along.
    poll(Duration::from_secs(30), "the container to be gone", || {
        container_gone(&id).then_some(())
    });

    server.restart();
    let job = server.job(&id);
    assert_eq!(job["status"], "lost", "{job}");
    assert!(
        job["reason"].as_str().unwrap().contains("server stopped"),
        "{job}"
    );
    let waited = server.ci(slow.path()).args(["wait", &id]).run();
    waited.expect_code(1).expect_stderr("lost");
    assert!(String::from_utf8_lossy(&server.stored_log(&id)).contains("result: lost"));
    assert_eq!(server.job(&done_id)["status"], "passed");
    assert_eq!(server.stored_log(&done_id), done_log);
    assert!(
        !server.data_dir.join("jobs").join(&id).exists(),
        "the lost job's directory is left"
    );
    // And it still runs jobs.
    server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run()
        .expect_code(0);
}

#[test]
fn sigterm_waits_for_the_grace_period_then_stops_jobs_and_keeps_the_queue() {
    let mut server = Server::start(ServerOptions {
        extra_args: ["--shutdown-grace", "2s", "--max-jobs", "1"]
            .map(String::from)
            .to_vec(),
    });
    let slow = slow_project();
    let id = server.submit_async(slow.path());
    server.wait_job(&id, "slow job to run its tests", |j| {
        j["phase"] == "testing"
    });
    // A second job waits in the queue, and someone follows it.
    let queued = server.submit_async(&fixture("dummy_project"));
    assert_eq!(server.job(&queued)["status"], "queued");
    let mut follower = server
        .ci(slow.path())
        .args(["wait", &queued, "--all"])
        .spawn();
    follower.read_until("waiting for a free slot");

    let status = server.stop_with(Signal::SIGTERM);
    assert!(status.success(), "server exit: {status}");
    assert!(container_gone(&id));
    server.restart();
    let job = server.job(&id);
    assert_eq!(job["status"], "lost", "{job}");
    assert!(
        job["reason"].as_str().unwrap().contains("shut down"),
        "{job}"
    );
    // The queued job runs after the restart, and its follower rode through it to the end.
    let followed = follower.finish(Duration::from_secs(300));
    followed.expect_code(0).expect_stdout("2 passed");
    assert_eq!(server.job(&queued)["status"], "passed");
}

/// Pids of processes whose command line contains every one of `needles`.
fn processes_with(needles: &[&str]) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if needles.iter().all(|n| cmdline.contains(n)) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_container_helper_ends_the_job_and_leaves_nothing() {
    let server = ci_e2e::shared_server();
    let slow = slow_project();
    let id = server.submit_async(slow.path());
    server.wait_job(&id, "slow job to run its tests", |j| {
        j["phase"] == "testing"
    });
    let container = format!("ci-{id}-test");
    let helpers = poll(
        Duration::from_secs(30),
        "the container's helper process",
        || Some(processes_with(&["__container", &container])).filter(|p| !p.is_empty()),
    );
    for pid in helpers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
    let job = server.wait_job(&id, "the job to end", |j| j["status"] != "running");
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("helper process was killed (signal 9)"),
        "{job}"
    );
    // A cgroup can only be removed once no process is left in it (rmdir gives EBUSY), so
    // gone cgroups mean every process of the job is gone.
    assert!(container_gone(&id), "the container's cgroups are left");
    assert!(
        !server.data_dir.join("containers").join(&container).exists(),
        "container state is left"
    );
    assert!(
        !server.data_dir.join("jobs").join(&id).exists(),
        "the job directory is left"
    );
}
