//! Users and API keys: per-user isolation, revocation and disabling take effect at once, the
//! admin commands (through the running server) refuse normal users, and keys never reach the
//! server's log.

use std::time::{Duration, Instant};

use ci_e2e::{http, poll, project, shared_server, Run, Server};

fn key_id(key: &str) -> &str {
    &key[3..11]
}

/// A real pytest project whose one test sleeps `secs` and passes.
fn sleeping_project(secs: u32) -> tempfile::TempDir {
    let test = format!("import time\n\n\ndef test_sleeps():\n    time.sleep({secs})\n");
    project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_sleep.py", &test),
    ])
}

fn assert_not_logged(server: &Server, keys: &[&str]) {
    let log = server.log();
    for key in keys {
        // The secret part, so a key cut after its prefix would be caught too.
        assert!(
            !log.contains(&key[3..]),
            "the server logged an API key ({}...)",
            &key[..11]
        );
    }
}

/// Status and JSON error body of a raw request.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let (status, body) = http(method, &server.addr, path, key, body.as_bytes()).unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status >= 400 {
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: error body is not JSON ({e}): {text:?}"));
        let message = json["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{method} {path}: no message in {text}");
        return (status, message.to_string());
    }
    (status, text)
}

#[test]
fn users_see_only_their_own_jobs() {
    let server = shared_server();
    let (_, alice) = server.new_user("alice", false);
    let (_, bob) = server.new_user("bob", false);
    let dir = sleeping_project(0);
    let run = server
        .ci(dir.path())
        .env("CI_API_KEY", &alice)
        .args(["submit", "test"])
        .run();
    run.expect_code(0).expect_stdout("test_sleeps PASSED");
    let id = run.job_id();

    let alice_list = server.ci_as(&alice, &["list", "--json"]);
    alice_list.expect_code(0).expect_stdout(&id);
    let bob_list = server.ci_as(&bob, &["list", "--json"]);
    bob_list.expect_code(0);
    let jobs: serde_json::Value = serde_json::from_str(&bob_list.stdout()).unwrap();
    assert_eq!(jobs, serde_json::json!([]), "{bob_list}");
    assert!(!server.ci_as(&bob, &["list"]).stdout().contains(&id));

    // Another user's job is answered exactly like one that does not exist.
    let missing = "000000000000";
    for (theirs, none) in [
        (
            server.ci_as(&bob, &["wait", &id]),
            server.ci_as(&bob, &["wait", missing]),
        ),
        (
            server.ci_as(&bob, &["cancel", &id]),
            server.ci_as(&bob, &["cancel", missing]),
        ),
    ] {
        theirs
            .expect_code(2)
            .expect_stderr(&format!("job {id} not found"));
        none.expect_code(2);
        assert_eq!(
            theirs.stderr().replace(&id, "ID"),
            none.stderr().replace(missing, "ID"),
            "another user's job must look like a missing one"
        );
    }
    for path in [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/log")] {
        assert_eq!(
            request(server, "GET", &path, Some(&bob), ""),
            (404, format!("job {id} not found"))
        );
    }
    assert_eq!(
        request(
            server,
            "POST",
            &format!("/v1/jobs/{id}/cancel"),
            Some(&bob),
            ""
        ),
        (404, format!("job {id} not found"))
    );
    // Alice still has it, untouched by Bob's cancel.
    assert_eq!(server.job_as(&alice, &id).unwrap()["status"], "passed");
    assert_not_logged(server, &[&alice, &bob]);
}

#[test]
fn revoked_key_stops_working_at_once() {
    let server = shared_server();
    let (email, first) = server.new_user("carol", false);
    let second = server.new_key(&email, "desktop");
    server
        .ci_as(&first, &["whoami"])
        .expect_code(0)
        .expect_stdout(&email);

    server
        .ci_as(
            &server.admin_key,
            &["admin", "key", "revoke", key_id(&first)],
        )
        .expect_code(0)
        .expect_stdout(&format!("Revoked key {}", key_id(&first)));
    // The very next request is refused, by the CLI and over HTTP.
    server
        .ci_as(&first, &["whoami"])
        .expect_code(2)
        .expect_stderr("authentication failed: unknown or revoked API key");
    assert_eq!(
        request(server, "GET", "/v1/jobs", Some(&first), ""),
        (
            401,
            "authentication failed: unknown or revoked API key".into()
        )
    );
    // Other keys of the same user go on working.
    server
        .ci_as(&second, &["whoami"])
        .expect_code(0)
        .expect_stdout(&email);

    let run = server.ci_as(
        &server.admin_key,
        &["admin", "key", "list", "--email", &email, "--json"],
    );
    run.expect_code(0);
    let keys: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{run}");
    for k in keys {
        let revoked = k["id"] == key_id(&first);
        assert_eq!(k["revoked"], revoked, "{run}");
        assert_eq!(k["user_email"], email.as_str(), "{run}");
        assert!(k.get("key").is_none() && k.get("hash").is_none(), "{run}");
    }
    // The table shows it too, and never a key.
    let table = server.ci_as(
        &server.admin_key,
        &["admin", "key", "list", "--email", &email],
    );
    table
        .expect_code(0)
        .expect_stdout("LAST USED")
        .expect_stdout("revoked")
        .expect_stdout("desktop");
    assert!(!table.stdout().contains(&second[3..]), "{table}");
    // Revoking again is harmless; an unknown id is a 404.
    server
        .ci_as(
            &server.admin_key,
            &["admin", "key", "revoke", key_id(&first)],
        )
        .expect_code(0);
    server
        .ci_as(&server.admin_key, &["admin", "key", "revoke", "00000000"])
        .expect_code(2)
        .expect_stderr("API key 00000000 not found");
    assert_not_logged(server, &[&first, &second]);
}

#[test]
fn disabled_user_is_refused_until_enabled() {
    let server = shared_server();
    let (email, key) = server.new_user("dave", false);
    server.ci_as(&key, &["whoami"]).expect_code(0);

    server
        .ci_as(&server.admin_key, &["admin", "user", "disable", &email])
        .expect_code(0)
        .expect_stdout("Disabled");
    server
        .ci_as(&key, &["list"])
        .expect_code(2)
        .expect_stderr(&format!("access denied: user {email} is disabled"));
    let (status, message) = request(server, "GET", "/v1/whoami", Some(&key), "");
    assert_eq!(status, 403, "{message}");
    let users = server.ci_as(&server.admin_key, &["admin", "user", "list"]);
    let line = users
        .stdout()
        .lines()
        .find(|l| l.contains(&email))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{email} not listed\n{users}"));
    assert!(line.contains("disabled"), "{users}");

    server
        .ci_as(&server.admin_key, &["admin", "user", "enable", &email])
        .expect_code(0)
        .expect_stdout("Enabled");
    server
        .ci_as(&key, &["whoami"])
        .expect_code(0)
        .expect_stdout(&format!("dave <{email}> (user)"));
    assert_not_logged(server, &[&key]);
}

#[test]
fn admin_commands_refuse_normal_users() {
    let server = shared_server();
    let (email, key) = server.new_user("erin", false);
    let denied = "access denied: this needs an admin API key";
    for args in [
        vec!["admin", "user", "list"],
        vec![
            "admin",
            "user",
            "create",
            "--name",
            "x",
            "--email",
            "x@example.com",
        ],
        vec!["admin", "user", "disable", &email],
        vec!["admin", "user", "enable", &email],
        vec![
            "admin", "key", "create", "--email", &email, "--name", "more",
        ],
        vec!["admin", "key", "list"],
        vec!["admin", "key", "revoke", key_id(&key)],
    ] {
        server
            .ci_as(&key, &args)
            .expect_code(2)
            .expect_stderr(denied);
    }
    for (method, path, body) in [
        ("GET", "/v1/admin/users".to_string(), ""),
        (
            "POST",
            "/v1/admin/users".into(),
            r#"{"name":"x","email":"x@example.com"}"#,
        ),
        ("POST", format!("/v1/admin/users/{email}/disable"), ""),
        ("POST", format!("/v1/admin/users/{email}/enable"), ""),
        ("GET", "/v1/admin/keys".into(), ""),
        (
            "POST",
            "/v1/admin/keys".into(),
            r#"{"email":"x@example.com","name":"x"}"#,
        ),
        ("DELETE", format!("/v1/admin/keys/{}", key_id(&key)), ""),
    ] {
        assert_eq!(
            request(server, method, &path, Some(&key), body),
            (403, denied.to_string()),
            "{method} {path}"
        );
    }
    // Nothing happened: the key works and the user is still active.
    server.ci_as(&key, &["whoami"]).expect_code(0);
    // Without a key at all, 401 everywhere but /healthz.
    for path in ["/v1/admin/users", "/v1/whoami", "/v1/jobs"] {
        let (status, message) = request(server, "GET", path, None, "");
        assert_eq!(status, 401, "{path}: {message}");
        assert!(
            message.starts_with("authentication failed: missing API key"),
            "{message}"
        );
    }
    assert_eq!(request(server, "GET", "/healthz", None, "").0, 200);
    // A promoted colleague can administer.
    let (admin_email, admin_key) = server.new_user("frank", true);
    server
        .ci_as(&admin_key, &["whoami"])
        .expect_stdout(&format!("frank <{admin_email}> (admin)"));
    server
        .ci_as(&admin_key, &["admin", "key", "list", "--email", &email])
        .expect_code(0)
        .expect_stdout(key_id(&key));
    assert_not_logged(server, &[&key, &admin_key]);
}

#[test]
fn admin_input_is_checked() {
    let server = shared_server();
    let (email, key) = server.new_user("gina", false);
    let upper = email.to_uppercase();
    server
        .ci_as(
            &server.admin_key,
            &["admin", "user", "create", "--name", "G", "--email", &upper],
        )
        .expect_code(2)
        .expect_stderr(&format!("a user with email {email} already exists"));
    server
        .ci_as(
            &server.admin_key,
            &[
                "admin",
                "user",
                "create",
                "--name",
                "G",
                "--email",
                "not-an-email",
            ],
        )
        .expect_code(2)
        .expect_stderr("invalid email \"not-an-email\"");
    server
        .ci_as(
            &server.admin_key,
            &[
                "admin",
                "user",
                "create",
                "--name",
                " ",
                "--email",
                "g@example.com",
            ],
        )
        .expect_code(2)
        .expect_stderr("name must not be empty");
    server
        .ci_as(
            &server.admin_key,
            &[
                "admin",
                "key",
                "create",
                "--email",
                "nobody@example.com",
                "--name",
                "x",
            ],
        )
        .expect_code(2)
        .expect_stderr("user nobody@example.com not found");
    server
        .ci_as(
            &server.admin_key,
            &["admin", "user", "disable", "nobody@example.com"],
        )
        .expect_code(2)
        .expect_stderr("user nobody@example.com not found");
    server
        .ci_as(
            &server.admin_key,
            &["admin", "key", "list", "--email", "nobody@example.com"],
        )
        .expect_code(2)
        .expect_stderr("user nobody@example.com not found");

    let admin_key = server.admin_key.as_str();
    let cases = [
        ("POST", "/v1/admin/users", "{not json", 400),
        ("POST", "/v1/admin/users", r#"{"name":"x"}"#, 400),
        (
            "POST",
            "/v1/admin/users",
            r#"{"name":"x","email":"x@example.com","role":"root"}"#,
            400,
        ),
        (
            "POST",
            "/v1/admin/keys",
            r#"{"email":"nobody@example.com","name":"x"}"#,
            404,
        ),
        ("DELETE", "/v1/admin/keys/zz", "", 404),
        ("GET", "/v1/no-such-thing", "", 404),
    ];
    for (method, path, body, expected) in cases {
        // Every error, however it arises, is JSON with a message (`request` checks).
        let (status, message) = request(server, method, path, Some(admin_key), body);
        assert_eq!(status, expected, "{method} {path} {body}: {message}");
    }
    // Emails are compared without case everywhere.
    server
        .ci_as(&server.admin_key, &["admin", "user", "disable", &upper])
        .expect_code(0);
    server.ci_as(&key, &["whoami"]).expect_code(2);
    server
        .ci_as(&server.admin_key, &["admin", "user", "enable", &upper])
        .expect_code(0);
    server.ci_as(&key, &["whoami"]).expect_code(0);
}

#[test]
fn admin_flow_runs_while_jobs_run() {
    let server = shared_server();
    let (_, runner) = server.new_user("hank", false);
    let dir = sleeping_project(15);
    let id = server.submit_async_as(&runner, dir.path());
    poll(Duration::from_secs(120), "the job to run its tests", || {
        let job = server.job_as(&runner, &id).unwrap();
        assert!(
            matches!(job["status"].as_str(), Some("queued" | "running")),
            "job ended early: {job}"
        );
        (job["phase"] == "testing").then_some(())
    });

    // The whole admin flow, through the server that is running the job.
    let started = Instant::now();
    let (email, key) = server.new_user("ivy", false);
    server
        .ci_as(&key, &["whoami"])
        .expect_code(0)
        .expect_stdout(&email);
    server
        .ci_as(&server.admin_key, &["admin", "user", "list", "--json"])
        .expect_code(0)
        .expect_stdout(&email);
    server
        .ci_as(&server.admin_key, &["admin", "user", "disable", &email])
        .expect_code(0);
    server.ci_as(&key, &["whoami"]).expect_code(2);
    server
        .ci_as(&server.admin_key, &["admin", "user", "enable", &email])
        .expect_code(0);
    server
        .ci_as(&server.admin_key, &["admin", "key", "list"])
        .expect_code(0)
        .expect_stdout(key_id(&key));
    server
        .ci_as(&server.admin_key, &["admin", "key", "revoke", key_id(&key)])
        .expect_code(0);
    server.ci_as(&key, &["whoami"]).expect_code(2);
    let took = started.elapsed();

    // The job was running all along, and goes on to pass.
    let job_now = server.job_as(&runner, &id).unwrap();
    assert_eq!(
        job_now["status"], "running",
        "admin flow took {took:?}: {job_now}"
    );
    let run = server
        .ci(dir.path())
        .env("CI_API_KEY", &runner)
        .args(["wait", &id])
        .run();
    run.expect_code(0).expect_stdout("1 passed");
    assert_not_logged(server, &[&runner, &key]);
}

#[test]
fn key_from_config_file_and_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let server = shared_server();
    let (email, key) = server.new_user("jill", false);
    let dir = tempfile::tempdir().unwrap();
    let run_with = |mode: u32, env_key: Option<&str>| {
        let (mut cmd, home) = server
            .ci(dir.path())
            .env_remove("CI_API_KEY")
            .args(["whoami"])
            .command();
        if let Some(k) = env_key {
            cmd.env("CI_API_KEY", k);
        }
        let config = home.path().join(".ci/config");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, format!("# mine\napi_key = {key}\n")).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Run(ci_e2e::wait_with_timeout(child, Duration::from_secs(60)))
    };
    let private = run_with(0o600, None);
    private.expect_code(0).expect_stdout(&email);
    assert!(!private.stderr().contains("warning"), "{private}");
    run_with(0o644, None)
        .expect_code(0)
        .expect_stdout(&email)
        .expect_stderr("readable by others")
        .expect_stderr("chmod 600");
    // The environment comes before the file, and --api-key before both.
    run_with(0o600, Some(&server.admin_key))
        .expect_code(0)
        .expect_stdout("(admin)");
    let flag = server.ci_as(&server.admin_key, &["--api-key", &key, "whoami"]);
    flag.expect_code(0).expect_stdout(&email);
    assert_not_logged(server, &[&key]);
}

#[test]
fn no_key_reaches_the_server_log() {
    let server = shared_server();
    let (email, key) = server.new_user("kim", false);
    let revoked = server.new_key(&email, "old");
    server
        .ci_as(
            &server.admin_key,
            &["admin", "key", "revoke", key_id(&revoked)],
        )
        .expect_code(0);
    let unknown = format!("ci_{}", "ab".repeat(32));
    for presented in [key.as_str(), revoked.as_str(), unknown.as_str(), &key[..20]] {
        for path in ["/v1/whoami", "/v1/jobs", "/v1/admin/users"] {
            let _ = request(server, "GET", path, Some(presented), "");
        }
    }
    server.ci_as(&revoked, &["whoami"]).expect_code(2);
    server
        .ci_as(&server.admin_key, &["admin", "user", "disable", &email])
        .expect_code(0);
    server.ci_as(&key, &["whoami"]).expect_code(2);
    // The admin's actions are in the log, by key id only.
    poll(Duration::from_secs(10), "the revocation in the log", || {
        server.log().contains(key_id(&revoked)).then_some(())
    });
    assert_not_logged(server, &[&key, &revoked, &unknown, &server.admin_key]);
}

#[test]
fn disabling_a_user_stops_their_jobs() {
    let server = shared_server();
    let (email, key) = server.new_user("ivan", false);
    let dir = sleeping_project(300);
    let id = server.submit_async_as(&key, dir.path());
    poll(Duration::from_secs(120), "the job to run its tests", || {
        (server.job_as(&key, &id).unwrap()["phase"] == "testing").then_some(())
    });
    server
        .ci_as(&server.admin_key, &["admin", "user", "disable", &email])
        .expect_code(0);
    // The user cannot look now; the host can: the job's container goes away.
    let cgroup = format!("/sys/fs/cgroup/pids/ci/ci-{id}-test");
    poll(
        Duration::from_secs(60),
        "the job's container to be removed",
        || (!std::path::Path::new(&cgroup).exists()).then_some(()),
    );
    server
        .ci_as(&server.admin_key, &["admin", "user", "enable", &email])
        .expect_code(0);
    let ended = poll(
        Duration::from_secs(60),
        "the job to be recorded as stopped",
        || Some(server.job_as(&key, &id).unwrap()).filter(|j| j["status"] != "running"),
    );
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(
        ended["reason"], "the user was disabled by an admin",
        "{ended}"
    );
}
