//! Fair queueing: one user's backlog neither grows without bound nor delays another user's
//! job. A user past `--max-queued-per-user` is refused with 429 and `Retry-After` before the
//! upload is read, and the next free slot goes to the user who has waited, not to the backlog.

use std::io::{Read, Write};
use std::time::Duration;

use ci_e2e::{poll, project, Server, ServerOptions};

/// The job as the holder of `key` sees it.
fn job_as(server: &Server, key: &str, id: &str) -> serde_json::Value {
    server
        .job_as(key, id)
        .unwrap_or_else(|(status, body)| panic!("{status}: {body}"))
}

/// Status line and headers of a raw submission, for what `ci` does not show (Retry-After).
fn raw_submit(server: &Server, key: &str) -> String {
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = b"not even read";
    write!(
        s,
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.to_ascii_lowercase()
}

#[test]
fn a_full_queue_answers_429_and_another_users_job_goes_next() {
    let server = Server::start(ServerOptions {
        extra_args: ["--max-jobs", "1", "--max-queued-per-user", "2"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let busy = server.admin_key.clone();
    let (_, other) = server.new_user("other", false);
    let slow = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_slow.py",
            "import time\n\n\ndef test_slow():\n    time.sleep(300)\n",
        ),
    ]);
    let quick = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_quick.py", "def test_quick():\n    pass\n"),
    ]);

    // The busy user fills the only slot and their queue.
    let running = server.submit_async_as(&busy, slow.path());
    poll(Duration::from_secs(120), "the first job to run", || {
        (server.job(&running)["status"] == "running").then_some(())
    });
    // Six at once: the cap holds however the uploads interleave.
    let tries: Vec<_> = (0..6)
        .map(|_| {
            server
                .ci(quick.path())
                .env("CI_API_KEY", &busy)
                .args(["submit", "test", "--async"])
                .spawn()
        })
        .collect();
    let backlog: Vec<String> = tries
        .into_iter()
        .map(|t| t.finish(Duration::from_secs(60)))
        .filter(|run| run.code() == 0)
        .map(|run| run.stdout().trim().to_string())
        .collect();
    assert_eq!(backlog.len(), 2, "accepted past the cap: {backlog:?}");

    // One more is refused at once, before the upload is read, and says how to go on.
    let refused = server
        .ci(quick.path())
        .env("CI_API_KEY", &busy)
        .args(["submit", "test", "--async"])
        .run();
    assert_ne!(refused.code(), 0, "{refused}");
    refused.expect_stderr("--max-queued-per-user");
    let raw = raw_submit(&server, &busy);
    assert!(raw.starts_with("http/1.1 429"), "{raw}");
    assert!(raw.contains("retry-after: 30"), "{raw}");
    assert!(raw.contains("{\"error\":"), "{raw}");

    // Another user's job, submitted last, is next in line and starts before the backlog.
    let theirs = server.submit_async_as(&other, quick.path());
    let view = {
        let scratch = tempfile::tempdir().unwrap();
        let run = server
            .ci(scratch.path())
            .env("CI_API_KEY", &other)
            .args(["list", "--json"])
            .run();
        run.expect_code(0);
        let jobs: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
        jobs[0].clone()
    };
    assert_eq!(view["id"], theirs.as_str());
    assert_eq!(view["queue_position"], 1, "{view}");
    // The slot frees up.
    server
        .ci(slow.path())
        .env("CI_API_KEY", &busy)
        .args(["cancel", &running])
        .run()
        .expect_code(0);
    poll(
        Duration::from_secs(120),
        "the other user's job to start",
        || (job_as(&server, &other, &theirs)["status"] != "queued").then_some(()),
    );
    for id in &backlog {
        assert_eq!(
            server.job(id)["status"],
            "queued",
            "the backlog went before the other user's job"
        );
    }
    let owners = backlog
        .iter()
        .map(|id| (id, &busy))
        .chain([(&theirs, &other)]);
    for (id, key) in owners {
        let job = poll(Duration::from_secs(300), "the jobs to end", || {
            let job = job_as(&server, key, id);
            (job["status"] != "queued" && job["status"] != "running").then_some(job)
        });
        assert_eq!(job["status"], "passed", "{job}");
    }
}
