//! The server as a service: its config file and the precedence of flags over it, its log
//! formats, start-up refusals that create nothing, `scripts/install` and the systemd unit;
//! and what a new user tripped over: project names, empty uploads, pytest's verbosity.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ci_e2e::tarball::{gz, Entry};
use ci_e2e::{
    bin, fixture, free_port, http, output_text, poll, project, scratch, shared_server, test_image,
    wait_with_timeout, Server, ServerOptions,
};

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch())
        .unwrap()
}

/// `ci-server ARGS` to completion (two minutes at most), without the test's CI_ variables.
fn ci_server(args: &[&str]) -> Output {
    let child = Command::new(bin("ci-server"))
        .args(args)
        .env_remove("CI_LISTEN")
        .env_remove("CI_DATA_DIR")
        .env_remove("CI_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ci-server");
    wait_with_timeout(child, Duration::from_secs(120))
}

/// The dummy project as a tar.gz body, its files read from the fixture.
fn dummy_archive() -> Vec<u8> {
    let root = fixture("dummy_project");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "__pycache__" || name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let entries: Vec<Entry> = files
        .iter()
        .map(|(rel, body)| Entry::File(rel.as_str(), body.clone()))
        .collect();
    gz(&entries)
}

fn post_job(server: &Server, query: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let path = format!("/v1/jobs{query}");
    let (status, body) = http("POST", &server.addr, &path, Some(&server.admin_key), body).unwrap();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    (status, json)
}

fn ids(jobs: &serde_json::Value) -> Vec<String> {
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// A config file whose `listen` the server's `--listen` flag overrides, while its other keys
/// apply: the job timeout shows on every job, and the log is JSON, a line an object.
#[test]
fn a_config_file_applies_where_no_flag_is_given() {
    let dir = temp_dir("config-");
    let unused = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("listen = \"{unused}\"\njob-timeout = \"7m\"\nlog-format = \"json\"\n"),
    )
    .unwrap();
    let server = Server::start(ServerOptions {
        extra_args: vec!["--config".into(), config.display().to_string()],
        ..ServerOptions::default()
    });
    // The flag won: the server answers where the test told it to, not on the file's address.
    assert!(
        std::net::TcpStream::connect(&unused).is_err(),
        "something listens on the config file's address"
    );

    let version = server.get_json("/v1/version");
    assert!(version["version"].is_string(), "{version}");

    // The file's job-timeout, and the project name kept and filtered on.
    let (status, job) = post_job(&server, "?project=demo-lib", &dummy_archive());
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["timeout_secs"], 420, "{job}");
    assert_eq!(job["project"], "demo-lib", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(server.job(&id)["project"], "demo-lib");
    let (status, other) = post_job(&server, "", &dummy_archive());
    assert_eq!(status, 201, "{other}");
    assert_eq!(other["project"], serde_json::Value::Null);
    let other_id = other["id"].as_str().unwrap().to_string();
    let listed = ids(&server.get_json("/v1/jobs?project=demo-lib"));
    assert_eq!(listed, [id.as_str()]);
    assert!(ids(&server.get_json("/v1/jobs?project=demo")).is_empty());
    let all = ids(&server.get_json("/v1/jobs"));
    assert!(all.contains(&id) && all.contains(&other_id), "{all:?}");
    let (status, bad) = post_job(&server, "?project=", &dummy_archive());
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad.to_string().contains("the project name is empty"),
        "{bad}"
    );

    // An upload of directories only: refused, one line, no job.
    let before = ids(&server.get_json("/v1/jobs")).len();
    let (status, empty) = post_job(
        &server,
        "",
        &gz(&[Entry::Dir("src/"), Entry::Dir("tests/")]),
    );
    assert_eq!(status, 400, "{empty}");
    assert!(
        empty
            .to_string()
            .contains("the upload holds no files: nothing to test"),
        "{empty}"
    );
    assert_eq!(ids(&server.get_json("/v1/jobs")).len(), before);

    let mut ended = Vec::new();
    for id in [&id, &other_id] {
        ended.push(server.wait_job(id, "the job to end", |j| {
            j["status"] != "queued" && j["status"] != "running"
        }));
    }
    // The filter combines with the others.
    let status = ended[0]["status"].as_str().unwrap();
    let path = format!("/v1/jobs?project=demo-lib&status={status}&limit=10");
    assert_eq!(ids(&server.get_json(&path)), [id.as_str()]);
    let other_status = if status == "cancelled" {
        "succeeded"
    } else {
        "cancelled"
    };
    let path = format!("/v1/jobs?project=demo-lib&status={other_status}");
    assert!(ids(&server.get_json(&path)).is_empty());
    // Every line of the log is a JSON object with the fields of tracing's JSON format.
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        for field in ["timestamp", "level", "target", "fields"] {
            assert!(value.get(field).is_some(), "no {field}: {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"listening\"")),
        "{log}"
    );
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_the_file() {
    let dir = temp_dir("config-");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "max-job = 4\n").unwrap();
    let data = dir.path().join("data");
    let out = ci_server(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "ci-server: {}: unknown key \"max-job\" (did you mean \"max-jobs\"?)",
            config.display()
        ),
        "{}",
        output_text(&out)
    );
    assert!(!data.exists(), "nothing is created");
    // A wrong type names its key.
    std::fs::write(&config, "max-jobs = \"four\"\n").unwrap();
    let out = ci_server(&["doctor", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key \"max-jobs\""), "{}", output_text(&out));
    assert_eq!(stderr.trim().lines().count(), 1, "{}", output_text(&out));
}

/// A second server on a taken port fails before it creates anything; one on a data dir in
/// use says whose it is, once; doctor says the port is taken; a redirected text log has no
/// colours.
#[test]
fn a_second_server_is_refused_before_it_creates_anything() {
    let server = Server::start(ServerOptions::default());
    let log = server.log();
    assert!(log.contains("listening"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "a redirected log has no ANSI codes:\n{log}"
    );

    let dir = temp_dir("second-");
    let data = dir.path().join("data");
    let image = test_image();
    let out = ci_server(&[
        "serve",
        "--listen",
        &server.addr,
        "--data-dir",
        data.to_str().unwrap(),
        "--image",
        &image,
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {}", server.addr)),
        "{}",
        output_text(&out)
    );
    assert!(!data.join("admin.key").exists(), "{}", output_text(&out));
    assert!(!data.join("db").exists(), "{}", output_text(&out));

    let other = format!("127.0.0.1:{}", free_port());
    let out = ci_server(&[
        "serve",
        "--listen",
        &other,
        "--data-dir",
        server.data_dir.to_str().unwrap(),
        "--image",
        &image,
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "another ci-server is using {} (pid {})",
        server.data_dir.display(),
        server.pid()
    );
    assert_eq!(
        stderr.matches(&expected).count(),
        1,
        "{}",
        output_text(&out)
    );
    assert!(!stderr.contains("WouldBlock"), "{}", output_text(&out));
    // The first server is unharmed.
    assert!(matches!(
        http("GET", &server.addr, "/healthz", None, b""),
        Ok((200, _))
    ));

    let out = ci_server(&[
        "doctor",
        "--listen",
        &server.addr,
        "--data-dir",
        data.to_str().unwrap(),
        "--image",
        &image,
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the port is taken"),
        "{}",
        output_text(&out)
    );
    assert!(
        stdout.contains("would refuse to start"),
        "{}",
        output_text(&out)
    );
    assert!(!stdout.contains("would start."), "{}", output_text(&out));
}

/// `-v` is only the default: a project whose pytest configuration says `-q` gets no
/// per-test lines, one without still does.
#[test]
fn pytest_verbosity_is_the_projects_choice() {
    let server = shared_server();
    let tests = "def test_one():\n    assert 1 + 1 == 2\n\ndef test_two():\n    assert True\n";
    let quiet = project(&[
        (
            "pyproject.toml",
            "[project]\nname = \"quiet\"\nversion = \"0\"\n\n[tool.ci]\ninstall-project = false\n\n[tool.pytest.ini_options]\naddopts = \"-q\"\n",
        ),
        ("tests/test_q.py", tests),
    ]);
    let run = server.ci(quiet.path()).args(["submit", "test"]).run();
    run.expect_code(0);
    let out = run.stdout();
    assert!(!out.contains("PASSED"), "{run}");
    assert!(out.contains("running tests: python -m pytest"), "{run}");
    assert!(!out.contains("python -m pytest -v"), "{run}");
    assert!(out.contains("2 passed"), "{run}");

    let loud = project(&[
        (
            "pyproject.toml",
            "[project]\nname = \"loud\"\nversion = \"0\"\n\n[tool.ci]\ninstall-project = false\n",
        ),
        ("tests/test_v.py", tests),
    ]);
    let run = server.ci(loud.path()).args(["submit", "test"]).run();
    run.expect_code(0);
    assert!(run.stdout().contains("test_one PASSED"), "{run}");
}

/// `scripts/install --prefix DIR` installs the binaries, the unit and the config, and starts
/// nothing; an existing config is kept. The unit passes `systemd-analyze verify`.
#[test]
fn install_puts_the_files_in_place_and_the_unit_verifies() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let prefix = temp_dir("install-");
    let from: PathBuf = bin("ci-server").parent().unwrap().to_path_buf();
    let install = |what: &str| {
        let child = Command::new(repo.join("scripts/install"))
            .arg("--prefix")
            .arg(prefix.path())
            .arg("--from")
            .arg(&from)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_timeout(child, Duration::from_secs(60));
        assert!(out.status.success(), "{what}: {}", output_text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = install("first install");
    let p = prefix.path();
    for file in [
        "usr/local/bin/ci-server",
        "usr/local/bin/ci",
        "etc/systemd/system/ci-server.service",
        "etc/ci-server/config.toml",
    ] {
        assert!(p.join(file).is_file(), "{file} missing: {said}");
    }
    assert!(said.contains("not started"), "{said}");
    assert_eq!(
        std::fs::read_to_string(p.join("etc/ci-server/config.toml")).unwrap(),
        std::fs::read_to_string(repo.join("packaging/config.toml")).unwrap()
    );
    // The installed config is a valid one: doctor reads it.
    let out = ci_server(&[
        "doctor",
        "--config",
        p.join("etc/ci-server/config.toml").to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        p.join("data").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("listen"), "{}", output_text(&out));

    std::fs::write(p.join("etc/ci-server/config.toml"), "max-jobs = 2\n").unwrap();
    let said = install("second install");
    assert!(said.contains("kept the existing"), "{said}");
    assert_eq!(
        std::fs::read_to_string(p.join("etc/ci-server/config.toml")).unwrap(),
        "max-jobs = 2\n"
    );

    // systemd-analyze checks the unit's directives; its ExecStart must exist, so the copy
    // verified points at the built binary.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let unit = std::fs::read_to_string(repo.join("packaging/ci-server.service")).unwrap();
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/ci-server serve --config /etc/ci-server/config.toml"
        ));
        let unit = unit.replace(
            "/usr/local/bin/ci-server",
            bin("ci-server").to_str().unwrap(),
        );
        let dir = temp_dir("unit-");
        let path = dir.path().join("ci-server.service");
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(out.stderr.is_empty(), "{}", output_text(&out));
    }
}

/// While a job waits for its image to be pulled, its view says how far the pull is; before
/// and after, nothing.
#[test]
fn a_job_waiting_for_its_image_shows_the_pull() {
    let cache = temp_dir("cache-");
    let server = Server::start(ServerOptions {
        image_cache: Some(cache.path().to_path_buf()),
        ..ServerOptions::default()
    });
    let (status, job) = post_job(&server, "", &dummy_archive());
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let ended = poll(Duration::from_secs(300), "the job to end", || {
        let job = server.job(&id);
        if job["phase"] == "pulling_image" && !job["pull"].is_null() {
            seen.push(job["pull"].clone());
        } else if job["phase"] != "pulling_image" {
            assert!(job["pull"].is_null(), "{job}");
        }
        (job["status"] != "queued" && job["status"] != "running").then_some(job)
    });
    assert!(!seen.is_empty(), "no pull progress seen: {ended}");
    let last = seen.last().unwrap();
    let total = last["total_bytes"]
        .as_u64()
        .expect("a total once the manifest is read");
    // The layers are unpacked and the image asked its Python after the last byte: the job
    // still waits then, with the whole pull counted.
    assert_eq!(last["done_bytes"].as_u64(), Some(total), "{last}");
    assert!(
        seen.windows(2)
            .all(|w| w[0]["done_bytes"].as_u64() <= w[1]["done_bytes"].as_u64()),
        "{seen:?}"
    );
}
