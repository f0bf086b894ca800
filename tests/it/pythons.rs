//! Several Pythons on one server: `--image` once per interpreter, `ci submit test --python
//! 3.11,3.13` as one job per version followed together, `requires-python` choosing by itself,
//! an unknown version refused before the upload, and images from files with no registry.

use std::path::Path;

use ci_e2e::{fixture, project, test_image_313, Server, ServerOptions};

/// The bookworm stand-in (3.11, the default) and the trixie one (3.13).
fn two_pythons() -> Server {
    Server::start(ServerOptions {
        extra_args: vec![
            "--image".into(),
            test_image_313(),
            "--max-jobs".into(),
            "2".into(),
        ],
        ..ServerOptions::default()
    })
}

/// A project whose tests check they run on the Python the job was given (`CI_PYTHON`), and
/// with `fail_on_313`, one that fails on 3.13 only.
fn version_project(fail_on_313: bool, pyproject: Option<&str>) -> tempfile::TempDir {
    let test = format!(
        "import os, sys\n\n\
         def test_runs_on_the_python_it_was_given():\n    \
             assert '%d.%d' % sys.version_info[:2] == os.environ['CI_PYTHON']\n\n\
         def test_not_on_313():\n    \
             assert not ({fail_on_313} and sys.version_info[:2] == (3, 13))\n",
        fail_on_313 = if fail_on_313 { "True" } else { "False" }
    );
    let mut files = vec![
        ("requirements.txt", "pytest==8.3.4\n".to_string()),
        ("tests/test_version.py", test),
    ];
    if let Some(pyproject) = pyproject {
        files.push(("pyproject.toml", pyproject.to_string()));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, b)| (*p, b.as_str())).collect();
    project(&files)
}

fn jobs_of(server: &Server, query: &str) -> Vec<serde_json::Value> {
    serde_json::from_value(server.get_json(&format!("/v1/jobs{query}"))).unwrap()
}

#[test]
fn one_submit_runs_on_each_python_and_the_table_says_where_it_failed() {
    let server = two_pythons();
    let pythons = server.ci(Path::new(".")).args(["pythons"]).run();
    pythons
        .expect_code(0)
        .expect_stdout("3.11")
        .expect_stdout("3.13");

    let dir = version_project(false, None);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--python", "3.11,3.13"])
        .run();
    run.expect_code(0)
        .expect_stdout("Python 3.11")
        .expect_stdout("Python 3.13")
        .expect_stdout("test_runs_on_the_python_it_was_given PASSED");
    let jobs = jobs_of(&server, "");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let run_id = jobs[0]["run_id"].as_str().expect("a run id").to_string();
    let mut versions: Vec<&str> = jobs.iter().map(|j| j["python"].as_str().unwrap()).collect();
    versions.sort();
    assert_eq!(versions, ["3.11", "3.13"]);
    for job in &jobs {
        assert_eq!(job["status"], "passed", "{job}");
        assert_eq!(job["run_id"].as_str(), Some(run_id.as_str()));
        assert_eq!(job["tests"]["passed"], 2, "{job}");
    }
    // Each job's log names its image and Python.
    let log_311 =
        String::from_utf8_lossy(&server.stored_log(jobs[1]["id"].as_str().unwrap())).into_owned();
    assert!(log_311.contains(": Python 3.11."), "{log_311}");

    // Failing on 3.13 only: the run fails, the table says where.
    let dir = version_project(true, None);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--python", "3.11,3.13"])
        .run();
    run.expect_code(1);
    let out = run.stdout();
    let row_313 = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("3.13"))
        .unwrap_or_else(|| panic!("no row for 3.13 in\n{run}"));
    assert!(row_313.contains("failed"), "{row_313}\n{run}");
    let row_311 = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("3.11"))
        .unwrap_or_else(|| panic!("no row for 3.11 in\n{run}"));
    assert!(row_311.contains("passed"), "{row_311}\n{run}");

    // The run can be waited for as one, and the list shows the versions.
    let jobs = jobs_of(&server, "?limit=2");
    let run_id = jobs[0]["run_id"].as_str().unwrap().to_string();
    server
        .ci(Path::new("."))
        .args(["wait", &run_id])
        .run()
        .expect_code(1);
    server
        .ci(Path::new("."))
        .args(["list"])
        .run()
        .expect_code(0)
        .expect_stdout("3.13");
}

#[test]
fn requires_python_picks_the_python_that_fits_and_an_unknown_one_is_refused_before_upload() {
    let server = two_pythons();
    let dir = version_project(
        false,
        Some("[project]\nname = 'needs-312'\nversion = '1.0'\nrequires-python = '>=3.12'\n\n[tool.ci]\ninstall-project = false\n"),
    );
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(0).expect_stderr("running on 3.13");
    let job = server.job(&run.job_id());
    assert_eq!(job["python"], "3.13", "{job}");

    let before = jobs_of(&server, "").len();
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--python", "3.10"])
        .run();
    run.expect_code(2)
        .expect_stderr("the server has no Python 3.10: it has 3.11 (default), 3.13");
    assert_eq!(jobs_of(&server, "").len(), before, "nothing was submitted");
}

#[test]
fn a_server_given_an_image_file_and_no_registry_runs_the_seed_projects() {
    let files = tempfile::tempdir().unwrap();
    let (archive, tag) = ci_e2e::stand_in_archive("3.11", files.path());
    // Its own image cache, so nothing pulled by other tests is found; and no registry is
    // named anywhere.
    let server = Server::start(ServerOptions {
        image: Some(format!("oci-archive:{}:{tag}", archive.display())),
        image_cache: Some(files.path().join("images")),
        ..ServerOptions::default()
    });
    server
        .ci(&fixture("dummy_project"))
        .args(["submit", "test"])
        .run()
        .expect_code(0);
    server
        .ci(&fixture("failing_project"))
        .args(["submit", "test"])
        .run()
        .expect_code(1);
    let log = server.log();
    assert!(!log.contains("/v2/"), "no registry was asked:\n{log}");
    let pythons = server.get_json("/v1/pythons");
    assert_eq!(pythons[0]["name"], "3.11", "{pythons}");
    assert_eq!(pythons[0]["status"], "ready", "{pythons}");
    assert!(
        pythons[0]["image"]
            .as_str()
            .unwrap()
            .starts_with("oci-archive:"),
        "{pythons}"
    );
}

/// The server stopped while it prepares a newly pulled image (asks it its Python, then
/// compiles its bytecode, which the stand-in without *.pyc makes long): the containers it
/// was running are stopped and removed by their helpers, and nothing of them is left.
#[test]
fn a_server_stopped_while_it_prepares_an_image_leaves_no_container_behind() {
    let images = tempfile::tempdir().unwrap();
    let registry = std::env::var("CI_TEST_REGISTRY").expect("CI_TEST_REGISTRY");
    let mut server = Server::start(ServerOptions {
        image: Some(format!("{registry}/library/python:3.11-slim-nopyc")),
        image_cache: Some(images.path().to_path_buf()),
        ..ServerOptions::default()
    });
    // The probe's answer is logged as the compile starts.
    ci_e2e::poll(
        std::time::Duration::from_secs(120),
        "the image's Python to be known",
        || server.log().contains("implementation").then_some(()),
    );
    let pid = server.pid();
    server.stop_with(nix::sys::signal::Signal::SIGTERM);
    // Every process of this server's probe and compile containers (their cgroups are named
    // by the server's pid), the helpers included.
    let helpers = || -> Vec<String> {
        let (probe, compile) = (format!("-{pid}-probe"), format!("-{pid}-bytecode"));
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let dir = e.ok()?.path();
                let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
                let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
                (cgroup.contains(&probe) || cgroup.contains(&compile))
                    .then(|| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            })
            .collect()
    };
    ci_e2e::poll(
        std::time::Duration::from_secs(30),
        "the image's containers to be gone",
        || helpers().is_empty().then_some(()),
    );
    // And they stay gone: nothing is waiting to be started.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(helpers(), Vec::<String>::new());
}
