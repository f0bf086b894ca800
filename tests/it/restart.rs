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

    // What an upload cut short by the crash would leave: a job directory with no job.
    let stray = server.data_dir.join("jobs").join("0123456789ab");
    std::fs::create_dir_all(stray.join("project")).unwrap();
    server.restart();
    assert!(!stray.exists(), "a job directory without a job is left");
    let job = server.job(&id);
    assert_eq!(job["status"], "lost", "{job}");
    assert!(
        job["reason"].as_str().unwrap().contains("server stopped"),
        "{job}"
    );
    let waited = server.ci(slow.path()).args(["wait", &id]).run();
    waited
        .expect_code(1)
        .expect_stderr("lost")
        .expect_stdout("==> result: lost: the server stopped while the job was running");
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
        ..Default::default()
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
    // What an upload cut short by the crash would leave: a job directory with no job.
    let stray = server.data_dir.join("jobs").join("0123456789ab");
    std::fs::create_dir_all(stray.join("project")).unwrap();
    server.restart();
    assert!(!stray.exists(), "a job directory without a job is left");
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

/// A TCP proxy to `target` that forwards while `open`, and afterwards refuses every
/// connection; it counts the connections it saw after closing.
struct GatedProxy {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn gated_proxy(target: String) -> GatedProxy {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicUsize::new(0));
    let (is_open, count) = (open.clone(), refused.clone());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if !is_open.load(Ordering::SeqCst) {
                count.fetch_add(1, Ordering::SeqCst);
                continue; // dropped: the connection is closed at once
            }
            let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            let (mut c1, mut u1) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c1, &mut u1));
            std::thread::spawn(move || {
                let (mut u2, mut c2) = (upstream, client);
                std::io::copy(&mut u2, &mut c2)
            });
        }
    });
    GatedProxy {
        port,
        open,
        refused,
    }
}

#[test]
fn a_restarted_server_runs_jobs_with_the_registry_gone() {
    use std::sync::atomic::Ordering;
    let registry = std::env::var("CI_TEST_REGISTRY").expect("CI_TEST_REGISTRY");
    let proxy = gated_proxy(registry);
    let cache = tempfile::tempdir_in(ci_e2e::scratch()).unwrap();
    let mut server = Server::start(ServerOptions {
        image: Some(format!("127.0.0.1:{}/library/python:3.11-slim", proxy.port)),
        image_cache: Some(cache.path().to_path_buf()),
        ..Default::default()
    });
    // The first job needs the image: pulled through the proxy.
    server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run()
        .expect_code(0);
    proxy.open.store(false, Ordering::SeqCst);
    server.stop_with(Signal::SIGTERM);
    server.restart();
    let run = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run();
    run.expect_code(1).expect_stdout("test_multiply PASSED");
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        0,
        "the restarted server asked the registry"
    );
}
