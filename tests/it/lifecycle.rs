//! Jobs outlive the connection: --async, wait, list, cancel, timeouts, the queue, Ctrl+C.

use std::time::Duration;

use ci_e2e::{fixture, project, shared_server, Server, ServerOptions};

const PYTEST: (&str, &str) = ("requirements.txt", "pytest==7.4.3\n");

fn slow_project(secs: u32) -> tempfile::TempDir {
    let test = format!("import time\n\ndef test_slow():\n    time.sleep({secs})\n");
    project(&[PYTEST, ("tests/test_slow.py", &test)])
}

#[test]
fn async_then_wait_all_prints_the_whole_log_and_the_result() {
    let server = shared_server();
    for (name, code) in [("dummy_project", 0), ("failing_project", 1)] {
        let submitted = server
            .ci(&fixture(name))
            .args(["submit", "test", "--async"])
            .run();
        submitted.expect_code(0).expect_stderr("ci wait");
        let id = submitted.stdout().trim().to_string();
        assert_eq!(
            id.lines().count(),
            1,
            "--async prints only the id\n{submitted}"
        );
        let waited = server.ci(&fixture(name)).args(["wait", &id, "--all"]).run();
        waited.expect_code(code).expect_stdout("==> result:");
        assert_eq!(
            ci_e2e::log_part(&waited.0.stdout),
            server.stored_log(&id),
            "wait --all printed the stored log"
        );
        // On a finished job, wait without --all prints only the tests' summary and the result,
        // and keeps the exit code.
        let again = server.ci(&fixture(name)).args(["wait", &id]).run();
        again.expect_code(code);
        assert!(again.stdout().starts_with("==> tests: "), "{again}");
        assert!(ci_e2e::log_part(&again.0.stdout).is_empty(), "{again}");
        let summary = waited.stdout();
        let tail = &summary[summary.rfind("==> tests: ").unwrap()..];
        assert_eq!(again.stdout(), tail, "the same end as after the whole log");
    }
}

#[test]
fn list_shows_jobs_newest_first_with_stable_json() {
    let server = Server::start(ServerOptions::default());
    let a = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run()
        .job_id();
    let b = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run()
        .job_id();
    let run = server
        .ci(&fixture("dummy_project"))
        .args(["list", "--json"])
        .run();
    run.expect_code(0);
    let jobs: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["id"], b.as_str());
    assert_eq!(jobs[1]["id"], a.as_str());
    assert_eq!(jobs[0]["status"], "failed");
    assert_eq!(jobs[1]["status"], "passed");
    for field in [
        "id",
        "status",
        "phase",
        "created",
        "started",
        "finished",
        "duration_secs",
        "exit_code",
        "reason",
    ] {
        assert!(
            jobs[0].get(field).is_some(),
            "missing {field} in {}",
            jobs[0]
        );
    }
    let filtered = server
        .ci(&fixture("dummy_project"))
        .args(["list", "--json", "--status", "passed"])
        .run();
    let filtered: serde_json::Value = serde_json::from_str(&filtered.stdout()).unwrap();
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    let limited = server
        .ci(&fixture("dummy_project"))
        .args(["list", "--json", "--limit", "1"])
        .run();
    let limited: serde_json::Value = serde_json::from_str(&limited.stdout()).unwrap();
    assert_eq!(limited[0]["id"], b.as_str());
    let table = server.ci(&fixture("dummy_project")).args(["list"]).run();
    table
        .expect_code(0)
        .expect_stdout("STATUS")
        .expect_stdout(&a)
        .expect_stdout("passed");
}

#[test]
fn cancel_stops_a_running_job_and_its_processes() {
    let server = shared_server();
    let dir = slow_project(300);
    let id = server.submit_async(dir.path());
    server.wait_job(&id, "job to run its tests", |j| j["phase"] == "testing");
    // The server's default limits are on the job's cgroups. libcontainer creates a cgroup
    // before it writes the limits into it, so wait for the value, not just the file.
    let expect = |file: &str, want: &str| {
        let path = format!("/sys/fs/cgroup/{file}").replace("JOB", &format!("ci/ci-{id}-test"));
        let mut last = None;
        let found = std::iter::repeat_with(|| {
            std::thread::sleep(Duration::from_millis(50));
            last = std::fs::read_to_string(&path)
                .ok()
                .map(|v| v.trim().to_string());
            last.as_deref() == Some(want)
        })
        .take(600)
        .any(|ok| ok);
        assert!(found, "{path} is {last:?}, not {want}");
    };
    expect(
        "memory/JOB/memory.limit_in_bytes",
        &(2u64 << 30).to_string(),
    );
    expect("pids/JOB/pids.max", "512");
    expect("cpu/JOB/cpu.cfs_quota_us", "200000");
    expect("cpu/JOB/cpu.cfs_period_us", "100000");
    let watcher = server.ci(dir.path()).args(["wait", &id]).spawn();
    server
        .ci(dir.path())
        .args(["cancel", &id])
        .run()
        .expect_code(0);
    let watched = watcher.finish(Duration::from_secs(60));
    watched.expect_code(1).expect_stdout("result: cancelled");
    assert_eq!(server.job(&id)["status"], "cancelled");
    for ctrl in ["pids", "memory"] {
        let cg = format!("/sys/fs/cgroup/{ctrl}/ci/ci-{id}-test");
        assert!(!std::path::Path::new(&cg).exists(), "{cg} is left");
    }
    // Cancelling again says it already ended.
    server
        .ci(dir.path())
        .args(["cancel", &id])
        .run()
        .expect_code(2)
        .expect_stderr("already ended");
}

#[test]
fn a_job_over_its_timeout_is_killed() {
    let server = shared_server();
    let dir = slow_project(300);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--timeout", "8s"])
        .run();
    run.expect_code(1)
        .expect_stdout("result: timed_out: timed out after 8s");
    assert_eq!(server.job(&run.job_id())["status"], "timed_out");
}

#[test]
fn a_full_queue_runs_jobs_in_order() {
    let server = Server::start(ServerOptions {
        extra_args: vec!["--max-jobs".into(), "1".into()],
        ..Default::default()
    });
    let slow = slow_project(4);
    let first = server.submit_async(slow.path());
    server.wait_job(&first, "first job to start", |j| j["status"] == "running");
    let second = server.submit_async(&fixture("dummy_project"));
    let queued = server.job(&second);
    assert_eq!(queued["status"], "queued", "{queued}");
    assert_eq!(queued["queue_position"], 1, "{queued}");
    let waited = server
        .ci(&fixture("dummy_project"))
        .args(["wait", &second, "--all"])
        .run();
    waited
        .expect_code(0)
        .expect_stdout("waiting for a free slot: position 1 in the queue");
    assert_eq!(server.job(&first)["status"], "passed");
}

#[test]
fn ctrl_c_leaves_the_job_running() {
    let server = shared_server();
    let dir = slow_project(5);
    let mut running = server.ci(dir.path()).args(["submit", "test"]).spawn();
    running.read_until("running tests");
    nix::sys::signal::kill(running.pid(), nix::sys::signal::Signal::SIGINT).unwrap();
    let run = running.finish(Duration::from_secs(30));
    run.expect_code(130).expect_stderr("ci wait");
    let id = run
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix("Job ID: "))
        .unwrap()
        .to_string();
    let waited = server.ci(dir.path()).args(["wait", &id]).run();
    waited.expect_code(0).expect_stdout("1 passed");
}

#[test]
fn output_arrives_while_the_job_runs() {
    let server = shared_server();
    let dir = slow_project(20);
    let id = server.submit_async(dir.path());
    let mut watcher = server.ci(dir.path()).args(["wait", &id, "--all"]).spawn();
    // pytest -v names a test before it runs it: seeing the name means the stream is live.
    watcher.read_until("tests/test_slow.py::test_slow");
    let job = server.job(&id);
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["phase"], "testing", "{job}");
    server
        .ci(dir.path())
        .args(["cancel", &id])
        .run()
        .expect_code(0);
    watcher.finish(Duration::from_secs(60)).expect_code(1);
}
