//! Bad input and bad circumstances: one clear line, the right exit code, nothing lost.

use ci_e2e::{fixture, project, shared_server, Server};

use crate::uploads::exchange;

#[test]
fn project_without_any_declaration_gets_pytest() {
    // Nothing declares a test environment, so nothing provides pytest: the server adds it.
    let server = shared_server();
    let dir = project(&[("tests/test_x.py", "def test_x():\n    pass\n")]);
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(0)
        .expect_stdout("==> installing: nothing to install")
        .expect_stdout("test_x PASSED");
}

#[test]
fn dead_server_gives_one_line() {
    let server = shared_server();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = server
        .ci(&fixture("dummy_project"))
        .env("CI_SERVER_URL", format!("http://127.0.0.1:{port}"))
        .args(["submit", "test"])
        .run();
    run.expect_code(2)
        .expect_stderr("cannot reach the CI server");
    assert_eq!(run.stderr().trim().lines().count(), 1, "{run}");
    assert!(!run.stderr().contains("panicked"), "{run}");
}

#[test]
fn bad_key_is_refused() {
    let server = shared_server();
    let fake = format!("ci_{}", "0".repeat(64));
    let run = server
        .ci(&fixture("dummy_project"))
        .env("CI_API_KEY", fake)
        .args(["submit", "test"])
        .run();
    run.expect_code(2)
        .expect_stderr("authentication failed: unknown or revoked API key");
}

#[test]
fn missing_key_says_how_to_set_one() {
    let server = shared_server();
    let run = server
        .ci(&fixture("dummy_project"))
        .env_remove("CI_API_KEY")
        .args(["list"])
        .run();
    run.expect_code(2)
        .expect_stderr("--api-key")
        .expect_stderr("CI_API_KEY")
        .expect_stderr("~/.ci/config");
}

#[test]
fn malformed_upload_is_refused_with_a_message() {
    let server = shared_server();
    let (status, body) = ci_e2e::http(
        "POST",
        &server.addr,
        "/v1/jobs",
        Some(&server.admin_key),
        b"not a tarball",
    )
    .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("not a valid tar.gz"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn admin_key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(Default::default());
    let mode = std::fs::metadata(server.data_dir.join("admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !server.log().contains(&server.admin_key),
        "the server logged the admin key"
    );
}

#[test]
fn unknown_endpoints_and_methods_answer_json() {
    let server = shared_server();
    let (status, body) = ci_e2e::http(
        "GET",
        &server.addr,
        "/v1/nope",
        Some(&server.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains(r#""error":"endpoint GET /v1/nope not found""#));
    let (status, body) = ci_e2e::http(
        "DELETE",
        &server.addr,
        "/v1/jobs",
        Some(&server.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 405);
    assert!(
        String::from_utf8_lossy(&body).contains(r#""error":"DELETE is not allowed on /v1/jobs""#)
    );
}

#[test]
fn malformed_pytest_arguments_are_refused() {
    let server = shared_server();
    let (status, body) = ci_e2e::http(
        "POST",
        &server.addr,
        "/v1/jobs?pytest_args=not-json",
        Some(&server.admin_key),
        b"x",
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("pytest_args must be a JSON array of strings"));
}

#[test]
fn query_string_and_path_errors_answer_json() {
    let server = shared_server();
    let key = format!("Authorization: Bearer {}", server.admin_key);
    for (method, path) in [
        ("GET", "/v1/jobs?limit=many"),
        ("GET", "/v1/jobs/abc/log?offset=-1"),
        ("POST", "/v1/jobs?timeout_secs=soon"),
        ("GET", "/v1/jobs/%FF"),
        ("POST", "/v1/jobs/%FF%FE/cancel"),
    ] {
        let head = format!("{method} {path} HTTP/1.1\r\n{key}\r\nContent-Length: 0");
        let reply = exchange(&server.addr, &head, Vec::new());
        assert_eq!(reply.status, 400, "{method} {path}: {}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        assert!(!reply.error().is_empty(), "{method} {path}");
    }
}

#[test]
fn a_log_offset_past_the_end_answers_416_with_the_length() {
    let server = shared_server();
    let dir = project(&[("tests/test_x.py", "def test_x():\n    pass\n")]);
    let id = server.submit_async(dir.path());
    let job = server.wait_job(&id, "the job to end", |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    });
    let length = job["log_bytes"].as_u64().unwrap();
    assert!(length > 0);
    let key = format!("Authorization: Bearer {}", server.admin_key);
    let get = |offset: u64| {
        let head =
            format!("GET /v1/jobs/{id}/log?offset={offset} HTTP/1.1\r\n{key}\r\nConnection: close");
        exchange(&server.addr, &head, Vec::new())
    };
    let past = get(length + 1);
    assert_eq!(past.status, 416, "{}", past.body);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{length}").as_str())
    );
    assert!(
        past.error().contains(&format!(
            "past the end of the log of job {id} ({length} bytes)"
        )),
        "{}",
        past.body
    );
    // At the end of a finished log: nothing more, and no error.
    let (status, body) = ci_e2e::http(
        "GET",
        &server.addr,
        &format!("/v1/jobs/{id}/log?offset={length}"),
        Some(&server.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.is_empty(), "{}", String::from_utf8_lossy(&body));
    // `ci wait` of a finished job asks from the end and ends with the job's result.
    let run = server.ci(dir.path()).args(["wait", &id]).run();
    run.expect_code(0);
}
