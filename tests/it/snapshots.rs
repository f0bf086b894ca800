//! What `ci` prints, as a person sees it, checked with insta snapshots. Ids, addresses,
//! digests, versions of pytest's own dependencies and times are masked; the rest must stay
//! exactly as it is unless a change means to alter it (then `cargo insta review`).

use ci_e2e::{fixture, Run, Server, ServerOptions};

/// Masks what differs from run to run.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(r"sha256:[0-9a-f]+", "sha256:[DIGEST]");
    s.add_filter(r"\b[0-9a-f]{12}\b", "[JOB]");
    s.add_filter(r"127\.0\.0\.1:\d+", "[ADDR]");
    s.add_filter(r"\d+\.\d+s\b", "[SECS]s");
    s.add_filter(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[TIME]");
    s.add_filter(r"\b\d\d:\d\d:\d\d\b", "[CLOCK]");
    s.add_filter(r"pluggy-[0-9.]+", "pluggy-[VERSION]");
    s.add_filter(r"Connection refused \(os error 111\)", "[REFUSED]");
    s
}

/// stdout then stderr, as a terminal would show them one after the other.
fn screen(run: &Run) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.code(),
        run.stdout(),
        run.stderr()
    )
}

#[test]
fn submit_and_list() {
    let server = Server::start(ServerOptions::default());
    let dummy = fixture("dummy_project");
    // The first run installs pytest (pip's output depends on the index), the second reuses it.
    server
        .ci(&dummy)
        .args(["submit", "test"])
        .run()
        .expect_code(0);
    let passed = server.ci(&dummy).args(["submit", "test"]).run();
    let failed = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test", "--async"])
        .run();
    let id = failed.stdout().trim().to_string();
    server.ci(&dummy).args(["wait", &id]).run().expect_code(1);
    let list = server.ci(&dummy).args(["list"]).run();
    settings().bind(|| {
        insta::assert_snapshot!("submit_dummy_warm", screen(&passed));
        insta::assert_snapshot!("submit_async", screen(&failed));
        insta::assert_snapshot!("list", screen(&list));
    });
}

#[test]
fn errors_a_person_sees() {
    let server = ci_e2e::shared_server();
    let dummy = fixture("dummy_project");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = server
        .ci(&dummy)
        .env("CI_SERVER_URL", format!("http://127.0.0.1:{port}"))
        .args(["list"])
        .run();
    let bad_key = server
        .ci(&dummy)
        .env("CI_API_KEY", format!("ci_{}", "0".repeat(64)))
        .args(["list"])
        .run();
    let no_key = server
        .ci(&dummy)
        .env_remove("CI_API_KEY")
        .args(["list"])
        .run();
    let no_job = server.ci(&dummy).args(["wait", "000000000000"]).run();
    settings().bind(|| {
        insta::assert_snapshot!("dead_server", screen(&dead));
        insta::assert_snapshot!("bad_key", screen(&bad_key));
        insta::assert_snapshot!("no_key", screen(&no_key));
        insta::assert_snapshot!("no_such_job", screen(&no_job));
    });
}
