//! Malicious archives sent straight to the API: each is refused with a clear 4xx, nothing is
//! written outside the job directory, and a rejected upload leaves nothing behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ci_e2e::tarball::{gz as archive, gz_with, Entry as E};
use ci_e2e::{http, long_lived, poll, Server, ServerOptions};
use flate2::Compression;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        long_lived(ServerOptions {
            extra_args: [
                "--max-upload-size",
                "4MiB",
                "--max-unpacked-size",
                "64MiB",
                "--max-upload-entries",
                "1000",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
    })
}

/// One test at a time on the shared [`server`] where a test looks at its job directories:
/// another test's upload in flight, or its job still running, has a job directory too.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Posts an upload and expects a 4xx whose message contains `needle`; returns how long the
/// server took to answer, counted from when this test's turn came (not while it waited for
/// another test's upload).
fn refused(body: &[u8], status: u16, needle: &str) -> Duration {
    let _turn = one_at_a_time();
    let server = server();
    let started = Instant::now();
    let (got, reply) = http(
        "POST",
        &server.addr,
        "/v1/jobs",
        Some(&server.admin_key),
        body,
    )
    .unwrap();
    let answered = started.elapsed();
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(got, status, "{reply}");
    assert!(reply.contains(needle), "{reply:?} lacks {needle:?}");
    let jobs = server.data_dir.join("jobs");
    let left: Vec<_> = std::fs::read_dir(&jobs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a rejected upload left {left:?}");
    answered
}

fn outside(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ci-evil-{tag}-{}", std::process::id()))
}

#[test]
fn traversal_is_refused() {
    let target = outside("traversal");
    let name = format!("../../../../../../..{}", target.display());
    refused(
        &archive(&[
            E::File("ok.txt", b"x".to_vec()),
            E::File(&name, b"x".to_vec()),
        ]),
        400,
        "paths must stay inside",
    );
    let abs = target.display().to_string();
    refused(
        &archive(&[E::File(&abs, b"x".to_vec())]),
        400,
        "paths must stay inside",
    );
    assert!(!target.exists());
}

#[test]
fn symlink_escape_is_refused() {
    let target = outside("symlink");
    std::fs::create_dir_all(&target).unwrap();
    let t = target.display().to_string();
    refused(
        &archive(&[E::Symlink("link", &t), E::File("link/evil", b"x".to_vec())]),
        400,
        "outside the project",
    );
    refused(
        &archive(&[E::Symlink("up", "../../../../..")]),
        400,
        "outside the project",
    );
    assert!(!target.join("evil").exists());
    std::fs::remove_dir_all(&target).unwrap();
}

#[test]
fn hardlink_escape_is_refused() {
    refused(
        &archive(&[E::Hardlink("passwd", "/etc/passwd")]),
        400,
        "outside the project",
    );
    refused(
        &archive(&[E::Hardlink("passwd", "../../../../etc/passwd")]),
        400,
        "outside the project",
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    refused(&archive(&[E::Fifo("pipe")]), 400, "device file or fifo");
}

#[test]
fn bombs_are_refused() {
    // 100 MiB of zeros compress to about 100 KiB: over the 64 MiB unpacked cap.
    refused(
        &archive(&[E::File("zeros", vec![0u8; 100 << 20])]),
        400,
        "unpacks to more than",
    );
    let names: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
    let many: Vec<E> = names.iter().map(|n| E::File(n, Vec::new())).collect();
    refused(&archive(&many), 400, "more than 1000 entries");
    // Over the compressed cap: refused before it is unpacked.
    let mut noise = Vec::with_capacity(5 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while noise.len() < (5 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.write_all(&x.to_le_bytes()).unwrap();
    }
    refused(&noise, 413, "over the server's 4 MiB limit");
    refused(b"definitely not gzip", 400, "not a valid tar.gz");
}

/// What a raw exchange got back.
pub(crate) struct Reply {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// From the first byte sent to the last byte of the answer read.
    pub took: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The message of a one-line JSON error, or a panic if the body is anything else.
    pub fn error(&self) -> String {
        let value: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body));
        value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" string: {:?}", self.body))
            .to_string()
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body` from another
/// thread, ignoring write errors (the server may answer before it reads the body), and reads
/// the answer as it comes: the head, then as many body bytes as its Content-Length says.
pub(crate) fn exchange(addr: &str, head: &str, body: Vec<u8>) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\n\r\n");
    let started = Instant::now();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(request.as_bytes());
        let _ = writer.write_all(&body);
        writer
    });
    let reply = read_reply(&mut stream, started);
    drop(sending);
    reply
}

fn read_reply(stream: &mut TcpStream, started: Instant) -> Reply {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            other => panic!(
                "the answer ended in its head ({other:?}): {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("answers to uploads have a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        took: started.elapsed(),
    }
}

/// A POST of `body` to /v1/jobs with the admin key, `extra` headers first.
fn post(server: &Server, extra: &str, body: Vec<u8>) -> Reply {
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nAuthorization: Bearer {}\r\n{extra}Content-Length: {}",
        server.admin_key,
        body.len()
    );
    exchange(&server.addr, &head, body)
}

/// Bytes that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn jobs_left(server: &Server) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(server.data_dir.join("jobs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn crafted_archives_are_answered_400_at_once() {
    // The archive: a directory entry per level, 5,000 levels (it took 107 s, then a
    // 500 `File name too long`), and one at 1,000 (10 to 17 s).
    for depth in [1000, 5000] {
        let names: Vec<String> = (1..=depth).map(|d| "a/".repeat(d)).collect();
        let entries: Vec<E> = names.iter().map(|n| E::Dir(n)).collect();
        let body = archive(&entries);
        // Seconds, not minutes: well under what the old unpacker took, with room for a
        // machine busy with the rest of the suite.
        let took = refused(&body, 400, "is 257 names deep; at most 256 are allowed");
        assert!(took < Duration::from_secs(5), "depth {depth} took {took:?}");
    }
    // A 300-character file name (it answered 500 `internal server error`).
    let long = format!("src/{}.py", "x".repeat(297));
    let took = refused(
        &archive(&[E::File(&long, b"x".to_vec())]),
        400,
        "has a name of 300 bytes; at most 255 are allowed",
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // A path over 4,096 bytes.
    let path = format!("{}f", "abcdefg/".repeat(600));
    refused(
        &archive(&[E::File(&path, b"x".to_vec())]),
        400,
        "has a path of 4801 bytes; at most 4096 are allowed",
    );
}

/// `body` in chunks of 64 KiB, as `Transfer-Encoding: chunked` sends it.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(64 << 10) {
        write!(out, "{:x}\r\n", chunk.len()).unwrap();
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn the_compressed_cap_holds_without_a_content_length() {
    let _turn = one_at_a_time();
    let server = server();
    // A valid archive of incompressible data over the 4 MiB cap, sent without a length: the
    // server learns the size only while it reads, and stops at the cap.
    let body = gz_with(&[E::File("blob", noise(5 << 20))], Compression::none());
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked",
        server.admin_key
    );
    let reply = exchange(&server.addr, &head, chunked(&body));
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.error().contains("over the server's 4 MiB limit"));
    assert!(jobs_left(server).is_empty(), "{:?}", jobs_left(server));
    // The same under the cap goes through.
    let body = gz_with(
        &[
            E::File("blob", noise(3 << 20)),
            E::File("tests/test_x.py", b"def test_x():\n    pass\n".to_vec()),
        ],
        Compression::none(),
    );
    let reply = exchange(&server.addr, &head, chunked(&body));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cancel(server, &id);
    // Its directory goes once it has stopped; the next test that looks sees none.
    poll(
        Duration::from_secs(60),
        "the cancelled job's directory to go",
        || jobs_left(server).is_empty().then_some(()),
    );
}

fn cancel(server: &Server, id: &str) {
    let (status, body) = http(
        "POST",
        &server.addr,
        &format!("/v1/jobs/{id}/cancel"),
        Some(&server.admin_key),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// The server's peak resident memory (VmHWM), in kB.
fn peak_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn eight_concurrent_99_mib_uploads_stay_under_100_mb() {
    // The default caps (100 MiB compressed, 8 uploads at once); one job at a time, and the
    // jobs are cancelled at the end, so that running them costs little.
    let server = Server::start(ServerOptions {
        extra_args: ["--max-jobs", "1", "--shutdown-grace", "1s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let before = peak_rss_kb(server.pid());
    // 99 MiB of incompressible data, stored as is: the body is just over 99 MiB.
    let body = std::sync::Arc::new(gz_with(
        &[E::File("blob.bin", noise(99 << 20))],
        Compression::none(),
    ));
    assert!(body.len() > 99 << 20 && body.len() < 100 << 20);
    let uploads: Vec<_> = (0..8)
        .map(|_| {
            let (body, server) = (
                body.clone(),
                (server.addr.clone(), server.admin_key.clone()),
            );
            std::thread::spawn(move || {
                let head = format!(
                    "POST /v1/jobs HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}",
                    server.1,
                    body.len()
                );
                exchange(&server.0, &head, body.to_vec())
            })
        })
        .collect();
    let replies: Vec<Reply> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
    let peak = peak_rss_kb(server.pid());
    for reply in &replies {
        assert_eq!(reply.status, 201, "{}", reply.body);
        let id = serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        cancel(&server, &id);
    }
    eprintln!("peak RSS: {before} kB at start, {peak} kB after 8 x 99 MiB");
    assert!(peak < 100_000, "peak RSS {peak} kB (at start {before} kB)");
}

/// Starts an upload that promises 1 MB and sends only a gzip header, and returns once it
/// holds an upload slot (its job directory appears).
fn hold_upload_slot(server: &Server) -> TcpStream {
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        slow,
        "POST /v1/jobs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n",
        server.addr, server.admin_key
    )
    .unwrap();
    slow.write_all(&[0x1f, 0x8b, 8, 0]).unwrap();
    ci_e2e::poll(Duration::from_secs(10), "the slow upload to start", || {
        (!jobs_left(server).is_empty()).then_some(())
    });
    slow
}

#[test]
fn concurrent_uploads_past_the_cap_get_503_and_a_slow_one_408() {
    let server = Server::start(ServerOptions {
        extra_args: ["--max-concurrent-uploads", "1", "--upload-timeout", "5s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let started = Instant::now();
    let mut slow = hold_upload_slot(&server);
    // While it holds the slot, another upload is answered 503 with Retry-After.
    let busy = post(&server, "", b"not a tarball".to_vec());
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(
        busy.error().contains("receiving 1 uploads already"),
        "{}",
        busy.body
    );
    let retry: u64 = busy
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry > 0);
    // At once, before the body is read: this one sends no body at all.
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: 50000000",
        server.admin_key
    );
    let at_once = exchange(&server.addr, &head, Vec::new());
    assert_eq!(at_once.status, 503, "{}", at_once.body);
    assert!(at_once.took < Duration::from_secs(2), "{:?}", at_once.took);
    // The slow upload runs into the 5 s deadline: 408, one line of JSON, nothing left.
    let timed_out = read_reply(&mut slow, started);
    assert_eq!(timed_out.status, 408, "{}", timed_out.body);
    assert!(timed_out
        .error()
        .contains("longer than the server's 5s limit"));
    assert!(
        timed_out.took >= Duration::from_secs(4),
        "{:?}",
        timed_out.took
    );
    assert!(jobs_left(&server).is_empty(), "{:?}", jobs_left(&server));
    // And the slot is free again.
    let next = ci_e2e::poll(Duration::from_secs(10), "the slot to be free", || {
        Some(post(&server, "", b"not a tarball".to_vec())).filter(|r| r.status != 503)
    });
    assert_eq!(next.status, 400, "{}", next.body);
    assert!(next.error().contains("not a valid tar.gz"));
}

#[test]
fn too_little_free_disk_answers_507_and_writes_nothing() {
    let server = Server::start(ServerOptions {
        extra_args: ["--min-free-disk", "1000TiB"].map(String::from).to_vec(),
        ..Default::default()
    });
    let body = archive(&[E::File(
        "tests/test_x.py",
        b"def test_x():\n    pass\n".to_vec(),
    )]);
    let reply = post(&server, "", body);
    assert_eq!(reply.status, 507, "{}", reply.body);
    let message = reply.error();
    assert!(
        message.contains("too full for new jobs")
            && message.contains("keeps at least 1000 TiB free"),
        "{message}"
    );
    assert!(jobs_left(&server).is_empty(), "{:?}", jobs_left(&server));
}

/// A small tmpfs mounted on a directory, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount_on(dir: &std::path::Path, size: &str) -> SmallDisk {
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_disk_filling_up_during_the_unpack_answers_507_and_keeps_nothing() {
    let server = Server::start(ServerOptions {
        extra_args: ["--min-free-disk", "1MiB"].map(String::from).to_vec(),
        ..Default::default()
    });
    // The jobs' directory on a disk of its own, of 16 MiB.
    let _disk = SmallDisk::mount_on(&server.data_dir.join("jobs"), "16m");
    // 64 MiB of zeros: about 64 KiB to send, more than the disk holds once unpacked.
    let body = archive(&[E::File("zeros", vec![0u8; 64 << 20])]);
    let reply = post(&server, "", body);
    assert_eq!(reply.status, 507, "{}", reply.body);
    let message = reply.error();
    assert!(
        message.contains("disk filled up") && message.contains("No space left on device"),
        "{message}"
    );
    assert!(jobs_left(&server).is_empty(), "{:?}", jobs_left(&server));
}

#[test]
fn ci_submit_waits_for_a_free_upload_slot() {
    let server = Server::start(ServerOptions {
        extra_args: ["--max-concurrent-uploads", "1", "--upload-timeout", "3s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    // A stalled upload holds the only slot until its deadline.
    let slow = hold_upload_slot(&server);
    let dir = ci_e2e::project(&[("tests/test_x.py", "def test_x():\n    pass\n")]);
    let run = server
        .ci(dir.path())
        .args(["submit", "test", "--async"])
        .run();
    run.expect_code(0)
        .expect_stderr("receiving 1 uploads already; try again shortly; trying again in");
    drop(slow);
}
