//! Lossless resume: whatever happens to the connection, what `ci` prints is the stored log,
//! byte for byte, and every watcher gets the same bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ci_e2e::{project, shared_server};

/// A job whose output is thousands of lines, written over about a second.
fn chatty_project() -> tempfile::TempDir {
    let conftest = r#"
import time

def pytest_terminal_summary(terminalreporter):
    for i in range(4000):
        terminalreporter.write_line("line %05d %s" % (i, "x" * 40))
        if i % 200 == 0:
            time.sleep(0.05)
"#;
    project(&[
        ("requirements.txt", "pytest==7.4.3\n"),
        ("conftest.py", conftest),
        ("tests/test_ok.py", "def test_ok():\n    assert True\n"),
    ])
}

/// A TCP proxy in front of the server that cuts each of its first `max_cuts` connections once
/// `cut_after` bytes went from the server to the client.
fn cutting_proxy(target: String, cut_after: usize, max_cuts: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = cuts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(&target) else {
                continue;
            };
            let counter = counter.clone();
            let (mut c_read, mut u_write) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut u_write);
                let _ = u_write.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut upstream, mut client) = (upstream, client);
                let mut sent = 0;
                let mut buf = [0u8; 4096];
                loop {
                    let n = match upstream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if sent >= cut_after && counter.load(Ordering::SeqCst) < max_cuts {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = upstream.shutdown(Shutdown::Both);
                        break;
                    }
                }
                let _ = client.shutdown(Shutdown::Write);
            });
        }
    });
    (port, cuts)
}

#[test]
fn output_survives_cut_connections_byte_for_byte() {
    let server = shared_server();
    let dir = chatty_project();
    let (port, cuts) = cutting_proxy(server.addr.clone(), 30_000, 5);
    let run = server
        .ci(dir.path())
        .env("CI_SERVER_URL", format!("http://127.0.0.1:{port}"))
        .args(["submit", "test"])
        .run();
    run.expect_code(0).expect_stdout("line 03999");
    assert!(
        cuts.load(Ordering::SeqCst) >= 3,
        "the proxy cut only {} times",
        cuts.load(Ordering::SeqCst)
    );
    let stored = server.stored_log(&run.job_id());
    assert!(stored.len() > 150_000, "log is only {} bytes", stored.len());
    assert!(
        ci_e2e::log_part(&run.0.stdout) == stored,
        "printed output differs from the stored log\n{}",
        run.stderr()
    );
}

#[test]
fn watchers_get_identical_output() {
    let server = shared_server();
    let dir = chatty_project();
    let id = server.submit_async(dir.path());
    let a = server.ci(dir.path()).args(["wait", &id, "--all"]).spawn();
    let b = server.ci(dir.path()).args(["wait", &id, "--all"]).spawn();
    let (a, b) = (
        a.finish(Duration::from_secs(300)),
        b.finish(Duration::from_secs(300)),
    );
    a.expect_code(0);
    b.expect_code(0);
    assert!(
        a.0.stdout == b.0.stdout,
        "two watchers saw different output"
    );
    assert!(ci_e2e::log_part(&a.0.stdout) == server.stored_log(&id));
}
