//! `ci` as gh, cargo and podman taught users to expect it: `--version [--verbose]`, shell
//! completions and a man page, colour, `logs` and `open`, the job's page and id where they are
//! looked for, `list --project` fitted to the terminal, and an empty project refused before
//! anything is sent.

use ci_e2e::{fixture, project, shared_server, Run, Server, ServerOptions};

/// The last line of stdout.
fn last_line(run: &Run) -> String {
    run.stdout().lines().last().unwrap_or_default().to_string()
}

#[test]
fn version_is_one_line_and_verbose_asks_the_server() {
    let server = shared_server();
    let dir = project(&[]);
    let short = server.ci(dir.path()).args(["--version"]).run();
    short.expect_code(0);
    assert_eq!(
        short.stdout(),
        format!("ci {}\n", env!("CARGO_PKG_VERSION")),
        "{short}"
    );
    let also = server.ci(dir.path()).args(["-V"]).run();
    assert_eq!(also.stdout(), short.stdout());
    // Without a key: /v1/version needs none.
    let verbose = server
        .ci(dir.path())
        .env_remove("CI_API_KEY")
        .args(["--version", "--verbose"])
        .run();
    verbose.expect_code(0);
    let text = verbose.stdout();
    assert!(
        text.starts_with(&short.stdout().trim_end().to_string()),
        "{verbose}"
    );
    assert!(
        text.contains(&format!("server: {}", server.url())),
        "{verbose}"
    );
    assert!(
        text.contains(&format!(
            "server version: {} (API v1)",
            env!("CARGO_PKG_VERSION")
        )),
        "{verbose}"
    );
    // Nobody there: said in one line, a client error, no panic.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = server
        .ci(dir.path())
        .env("CI_SERVER_URL", format!("http://127.0.0.1:{port}"))
        .args(["--version", "-v"])
        .run();
    dead.expect_code(2);
    assert_eq!(
        dead.stdout()
            .lines()
            .filter(|l| l.starts_with("server version: unknown (cannot reach"))
            .count(),
        1,
        "{dead}"
    );
    assert!(!dead.stderr().contains("panicked"), "{dead}");
}

#[test]
fn completions_and_man_page_come_from_the_parser() {
    let server = shared_server();
    let dir = project(&[]);
    let subcommands = [
        "submit",
        "rerun",
        "wait",
        "logs",
        "open",
        "list",
        "cancel",
        "artifacts",
    ];
    let bash = server.ci(dir.path()).args(["completions", "bash"]).run();
    bash.expect_code(0);
    let script = dir.path().join("ci.bash");
    std::fs::write(&script, bash.stdout()).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["bash", "zsh", "fish"] {
        let run = server.ci(dir.path()).args(["completions", shell]).run();
        run.expect_code(0);
        for sub in subcommands {
            assert!(run.stdout().contains(sub), "{shell} lacks {sub}\n{run}");
        }
    }
    let man = server.ci(dir.path()).args(["man"]).run();
    man.expect_code(0);
    assert!(man.stdout().starts_with(".TH ci 1"), "{man}");
    for sub in subcommands {
        assert!(
            man.stdout().contains(&format!("ci\\-{sub}")),
            "man lacks {sub}"
        );
    }
    // The completions' help says where the man page is.
    let help = server.ci(dir.path()).args(["--help"]).run();
    assert!(help.stdout().contains("`ci man`"), "{help}");
}

#[test]
fn submit_ends_with_the_id_and_wait_on_a_finished_job_sums_it_up() {
    let server = shared_server();
    let dummy = fixture("dummy_project");
    let submitted = server.ci(&dummy).args(["submit", "test"]).run();
    submitted.expect_code(0);
    let id = submitted.job_id();
    let page = format!("Job page: {}/jobs/{id}", server.url());
    assert!(submitted.stderr().contains(&page), "{submitted}");
    assert!(
        last_line(&submitted).starts_with("==> result: passed (")
            && last_line(&submitted).ends_with(&format!(" · job {id}")),
        "{submitted}"
    );
    // The job is over: `wait` says how it ended, as the end of the submit did.
    let waited = server.ci(&dummy).args(["wait", &id]).run();
    waited.expect_code(0);
    assert!(waited.stderr().contains(&page), "{waited}");
    let tail = submitted.stdout();
    let tail = &tail[tail.rfind("==> tests: ").unwrap()..];
    assert_eq!(waited.stdout(), tail, "{waited}");
    // `logs`: the stored log, then the same end; the exit code of the job.
    let failing = server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run();
    failing.expect_code(1);
    let failed_id = failing.job_id();
    for (id, code) in [(&id, 0), (&failed_id, 1)] {
        let logs = server.ci(&dummy).args(["logs", id]).run();
        logs.expect_code(code);
        assert_eq!(
            ci_e2e::log_part(&logs.0.stdout),
            server.stored_log(id),
            "{logs}"
        );
        assert!(
            last_line(&logs).ends_with(&format!(" · job {id}")),
            "{logs}"
        );
    }
}

#[test]
fn list_by_project_and_its_json() {
    let server = shared_server();
    let mine = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("tests/test_a.py", "def test_a():\n    pass\n"),
    ]);
    let name = mine
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let id = server.submit_async(mine.path());
    let other = server.submit_async(&fixture("dummy_project"));
    let listed = server
        .ci(mine.path())
        .args(["list", "--json", "--project", &name])
        .run();
    listed.expect_code(0);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout()).unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    assert_eq!(jobs[0]["project"], name.as_str());
    // The API's documented fields, every one of them.
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
        "queue_position",
        "timeout_secs",
        "log_bytes",
        "expired",
        "tests",
        "python",
        "run_id",
        "project",
    ] {
        assert!(jobs[0].get(field).is_some(), "no {field} in {}", jobs[0]);
    }
    assert!(jobs[0]["timeout_secs"].as_u64().unwrap() > 0, "{}", jobs[0]);
    // The table: a PROJECT column, full rows in a pipe.
    let table = server
        .ci(mine.path())
        .args(["list", "--project", &name])
        .env("COLUMNS", "40")
        .run();
    table.expect_code(0);
    let text = table.stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID            PROJECT"), "{table}");
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[1].contains(&name) && lines[1].len() > 40, "{table}");
    let all = server.ci(mine.path()).args(["list"]).run();
    assert!(all.stdout().contains(&other), "{all}");
    for id in [&id, &other] {
        server.wait_job(id, "the job to end", |j| j["finished"].is_string());
    }
}

#[test]
fn open_hands_the_page_to_the_browser() {
    let server = shared_server();
    let dummy = fixture("dummy_project");
    let id = server.submit_async(&dummy);
    let dir = project(&[]);
    let seen = dir.path().join("seen");
    let browser = dir.path().join("browser");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", seen.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opened = server
        .ci(dir.path())
        .env("BROWSER", &browser)
        .args(["open", &id])
        .run();
    opened.expect_code(0);
    let url = format!("{}/jobs/{id}", server.url());
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), url, "{opened}");
    // No browser at all (PATH without xdg-open): the URL, and why.
    let bare = server
        .ci(dir.path())
        .env("PATH", dir.path())
        .env("BROWSER", dir.path().join("no-such-browser"))
        .args(["open", &id])
        .run();
    bare.expect_code(0);
    assert_eq!(bare.stdout(), format!("{url}\n"), "{bare}");
    assert!(bare.stderr().contains("cannot open a browser"), "{bare}");
    // An unknown job: said, not opened.
    let unknown = server
        .ci(dir.path())
        .env("BROWSER", &browser)
        .args(["open", "0123456789ab"])
        .run();
    unknown.expect_code(2);
    server.wait_job(&id, "the job to end", |j| j["finished"].is_string());
}

#[test]
fn an_empty_project_is_refused_before_anything_is_sent() {
    let server = shared_server();
    let (_, key) = server.new_user("empty", false);
    // Nothing, or only what the ignore rules leave out.
    for files in [
        &[][..],
        &[(".env", "SECRET=1"), ("__pycache__/x.pyc", "")][..],
    ] {
        let empty = project(files);
        let run = server
            .ci(empty.path())
            .env("CI_API_KEY", &key)
            .args(["submit", "test"])
            .run();
        run.expect_code(2);
        let dir = empty.path().canonicalize().unwrap();
        assert_eq!(
            run.stderr(),
            format!(
                "ci: error: nothing to submit: {} holds no files\n",
                dir.display()
            ),
            "{run}"
        );
    }
    let listed = server.ci_as(&key, &["list", "--json"]);
    listed.expect_code(0);
    assert_eq!(listed.stdout().trim(), "[]", "no job was created");
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let server = shared_server();
    let dummy = fixture("dummy_project");
    let submitted = server.ci(&dummy).args(["submit", "test"]).run();
    submitted.expect_code(0);
    let id = submitted.job_id();
    let esc = "\x1b[";
    // In a pipe: plain, whatever NO_COLOR says.
    assert!(!submitted.stdout().contains(esc), "{submitted}");
    let always = server
        .ci(&dummy)
        .env("NO_COLOR", "1")
        .args(["--color", "always", "wait", &id])
        .run();
    always.expect_code(0);
    assert!(
        last_line(&always).starts_with(&format!("==> result: {esc}")),
        "{always}"
    );
    assert!(
        always.stdout().contains(&format!("==> tests: {esc}")),
        "{always}"
    );
    let list = server.ci(&dummy).args(["list", "--color=always"]).run();
    assert!(
        list.stdout().contains(&format!("{esc}1m{esc}32mpassed")),
        "{list}"
    );
    for args in [&["--color", "never", "list"][..], &["list"][..]] {
        let plain = server.ci(&dummy).args(args).run();
        plain.expect_code(0);
        assert!(!plain.stdout().contains(esc), "{plain}");
    }
    // Colour never reaches JSON.
    let json = server
        .ci(&dummy)
        .args(["--color", "always", "list", "--json"])
        .run();
    assert!(!json.stdout().contains(esc), "{json}");
}

/// `ci` run under `script(1)`: stdout and stderr on one terminal, as a person has them.
fn on_a_terminal(ci: ci_e2e::Ci, args: &str) -> std::process::Output {
    let (command, _home) = ci.command();
    let mut line = ci_e2e::bin("ci").display().to_string();
    line.push(' ');
    line.push_str(args);
    let mut script = std::process::Command::new("script");
    script.args(["-qefc", &line, "/dev/null"]).env_clear();
    for (k, v) in command.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    if let Some(dir) = command.get_current_dir() {
        script.current_dir(dir);
    }
    script.stdin(std::process::Stdio::null()).output().unwrap()
}

#[test]
fn progress_is_drawn_on_a_terminal_and_never_left_behind() {
    let server = Server::start(ServerOptions {
        extra_args: vec!["--max-jobs".into(), "1".into()],
        ..Default::default()
    });
    let slow = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        (
            "tests/test_slow.py",
            "import time\n\ndef test_slow():\n    time.sleep(4)\n",
        ),
    ]);
    let first = server.submit_async(slow.path());
    server.wait_job(&first, "the first job to start", |j| {
        j["status"] == "running"
    });
    // The second waits in the queue, its log quiet: the line says so, on a terminal.
    let out = on_a_terminal(server.ci(&fixture("dummy_project")), "submit test");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{screen:?}");
    assert!(screen.contains("\r\x1b[Kqueued: next ("), "{screen:?}");
    // Every line drawn is erased before anything else is written: what follows a drawn
    // line up to the next `\r\x1b[K` holds no newline, and the screen does not end on one.
    let segments: Vec<&str> = screen.split("\r\x1b[K").collect();
    for (i, segment) in segments.iter().enumerate().skip(1) {
        if ["queued", "pulling the image", "installing ("]
            .iter()
            .any(|p| segment.starts_with(p))
        {
            assert!(
                !segment.contains('\n') && i + 1 < segments.len(),
                "left behind: {segment:?}\n{screen:?}"
            );
        }
    }
    // In a pipe, nothing of it.
    let piped = server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run();
    piped.expect_code(0);
    assert!(!piped.stderr().contains('\r'), "{piped}");
}
