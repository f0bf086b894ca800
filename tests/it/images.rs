//! `ci-server image import|list|rm` against a running server: an image from a file becomes a
//! Python jobs run on, is listed, survives a restart, and is removed again; the default is
//! not removable.

use std::process::{Command, Stdio};
use std::time::Duration;

use ci_e2e::{bin, project, scratch, wait_with_timeout, Run, Server, ServerOptions};

/// `ci-server image ARGS` against `server`, with the admin key from its data dir.
fn image(server: &Server, args: &[&str]) -> Run {
    let child = Command::new(bin("ci-server"))
        .arg("image")
        .args(args)
        .arg("--server")
        .arg(server.url())
        .arg("--data-dir")
        .arg(&server.data_dir)
        .env_remove("CI_API_KEY")
        .env_remove("CI_SERVER_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ci-server image");
    Run(wait_with_timeout(child, Duration::from_secs(300)))
}

fn pythons(server: &Server) -> Vec<serde_json::Value> {
    serde_json::from_value(server.get_json("/v1/pythons")).unwrap()
}

fn names(server: &Server) -> Vec<(String, String)> {
    pythons(server)
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("-").to_string(),
                p["status"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

fn listed(server: &Server) -> Vec<serde_json::Value> {
    let run = image(server, &["list", "--json"]);
    run.expect_code(0);
    serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}\n{run}"))
}

#[test]
fn an_imported_image_is_served_listed_kept_across_a_restart_and_removed() {
    let files = tempfile::tempdir_in(scratch()).unwrap();
    // An image cache of its own: `image rm` removes from the cache, which other tests share.
    let mut server = Server::start(ServerOptions {
        image_cache: Some(files.path().join("images")),
        ..ServerOptions::default()
    });
    let (archive, tag) = ci_e2e::stand_in_archive("3.13", files.path());
    let source = format!("oci-archive:{}:{tag}", archive.display());

    // A file that is no image is refused in one line, and nothing is kept.
    let junk = files.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    let refused = image(&server, &["import", junk.to_str().unwrap()]);
    refused.expect_code(1);
    assert_eq!(refused.stderr().trim().lines().count(), 1, "{refused}");
    assert!(refused.stderr().contains("HTTP 400"), "{refused}");

    let imported = image(&server, &["import", &source]);
    imported.expect_code(0).expect_stdout("Python 3.13");
    let pythons_now = names(&server);
    assert!(
        pythons_now.contains(&("3.13".to_string(), "ready".to_string())),
        "{pythons_now:?}"
    );
    assert_eq!(pythons(&server)[0]["default"], true);
    assert_eq!(pythons(&server)[1]["default"], false);

    // Given again: it is served already.
    image(&server, &["import", &source])
        .expect_code(1)
        .expect_stderr("already served");

    // A job on it.
    let dir = project(&[
        ("requirements.txt", "pytest==8.3.4\n"),
        (
            "tests/test_version.py",
            "import os, sys\n\n\
             def test_runs_on_the_python_it_was_given():\n    \
                 assert '%d.%d' % sys.version_info[:2] == os.environ['CI_PYTHON'] == '3.13'\n",
        ),
    ]);
    server
        .ci(dir.path())
        .args(["submit", "test", "--python", "3.13"])
        .run()
        .expect_code(0)
        .expect_stdout("test_runs_on_the_python_it_was_given PASSED");

    // Listed: the default and the import.
    let table = image(&server, &["list"]);
    table
        .expect_code(0)
        .expect_stdout("DIGEST")
        .expect_stdout("(default)")
        .expect_stdout("(imported)")
        .expect_stdout("3.13");
    let all = listed(&server);
    let default = all
        .iter()
        .find(|i| i["default"] == true)
        .unwrap_or_else(|| panic!("no default in {all:?}"))
        .clone();
    let ours = all
        .iter()
        .find(|i| i["imported"] == true)
        .unwrap_or_else(|| panic!("no import in {all:?}"))
        .clone();
    assert_eq!(ours["python"], "3.13", "{ours}");
    assert_eq!(ours["served_as"].as_str(), Some(source.as_str()), "{ours}");

    // The default is configured with --image: not removable here.
    image(&server, &["rm", default["digest"].as_str().unwrap()])
        .expect_code(1)
        .expect_stderr("--image");

    // A restart serves the import again, after the configured image.
    server.stop_with(nix::sys::signal::Signal::SIGTERM);
    server.restart();
    let after = names(&server);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        after[1],
        ("3.13".to_string(), "ready".to_string()),
        "{after:?}"
    );

    // Removed by 12 hex digits of its digest: gone from the Pythons, the cache and the file.
    let digest = ours["digest"].as_str().unwrap();
    let short = &digest["sha256:".len().."sha256:".len() + 12];
    image(&server, &["rm", short])
        .expect_code(0)
        .expect_stdout(digest);
    let left = names(&server);
    assert!(left.iter().all(|(name, _)| name != "3.13"), "{left:?}");
    assert!(listed(&server).iter().all(|i| i["digest"] != digest));
    let remembered = std::fs::read_to_string(server.data_dir.join("images.json")).unwrap();
    let remembered: Vec<String> = serde_json::from_str(&remembered).unwrap();
    assert!(remembered.is_empty(), "{remembered:?}");
    image(&server, &["rm", short])
        .expect_code(1)
        .expect_stderr("not found");
    server
        .ci(dir.path())
        .args(["submit", "test", "--python", "3.13"])
        .run()
        .expect_code(2);
}
