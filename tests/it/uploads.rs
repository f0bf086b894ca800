//! Malicious archives sent straight to the API: each is refused with a clear 4xx, nothing is
//! written outside the job directory, and a rejected upload leaves nothing behind.

use std::io::Write;
use std::sync::OnceLock;

use ci_e2e::tarball::{gz as archive, Entry as E};
use ci_e2e::{http, long_lived, Server, ServerOptions};

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

/// Posts an upload and expects a 4xx whose message contains `needle`.
fn refused(body: &[u8], status: u16, needle: &str) {
    // One upload at a time: another test's upload in flight has a job directory too.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = server();
    let (got, reply) = http(
        "POST",
        &server.addr,
        "/v1/jobs",
        Some(&server.admin_key),
        body,
    )
    .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(got, status, "{reply}");
    assert!(reply.contains(needle), "{reply:?} lacks {needle:?}");
    let jobs = server.data_dir.join("jobs");
    let left: Vec<_> = std::fs::read_dir(&jobs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a rejected upload left {left:?}");
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
