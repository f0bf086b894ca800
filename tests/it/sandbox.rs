//! What a job can and cannot do: a read-only project, no network while tests run.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ci_e2e::{project, shared_server};

/// A listener on the host's loopback that counts connections: if a job could reach the host
/// network, it would connect here.
fn canary() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut c) = conn {
                let _ = c.read(&mut [0u8; 16]);
            }
        }
    });
    (port, hits)
}

#[test]
fn tests_cannot_write_the_project_nor_reach_the_network() {
    let server = shared_server();
    let (port, hits) = canary();
    let test = format!(
        r#"
import errno, os, socket

def test_workspace_is_read_only():
    for path in ("/workspace/new_file", "/workspace/src/evil.py", "/workspace/requirements.txt"):
        try:
            with open(path, "w") as f:
                f.write("x")
        except OSError as e:
            assert e.errno == errno.EROFS, (path, e)
        else:
            raise AssertionError("wrote " + path)

def test_rootfs_is_read_only():
    try:
        open("/usr/evil", "w")
    except OSError as e:
        assert e.errno == errno.EROFS, e
    else:
        raise AssertionError("wrote /usr/evil")

def test_only_loopback():
    with open("/proc/net/dev") as f:
        ifaces = sorted(l.split(":")[0].strip() for l in f.readlines()[2:])
    assert ifaces == ["lo"], ifaces
    with open("/proc/net/route") as f:
        routes = f.readlines()[1:]
    assert routes == [], routes

def test_host_loopback_is_unreachable():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", {port}))
    except OSError as e:
        print("connect to host canary:", e)
    else:
        raise AssertionError("reached the host's loopback")

def test_tmp_is_writable():
    with open("/tmp/scratch", "w") as f:
        f.write("ok")
"#
    );
    let dir = project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("src/app.py", "X = 1\n"),
        ("tests/test_sandbox.py", &test),
    ]);
    let before = snapshot(dir.path());
    let run = server.ci(dir.path()).args(["submit", "test"]).run();
    run.expect_code(0)
        .expect_stdout("5 passed")
        .expect_stdout("test_only_loopback PASSED");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a job reached the host's loopback"
    );
    assert_eq!(snapshot(dir.path()), before, "the submitted files changed");
}

fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}
