//! The web page in a real headless Chromium (W3C WebDriver to chromedriver, loopback only):
//! sign in, the jobs, a live log, the result, cancel, hostile logs, the script's helpers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ci_e2e::browser::Browser;
use ci_e2e::{project, shared_server, Server};
use serde_json::json;

const PYTEST: (&str, &str) = ("requirements.txt", "pytest==7.4.3\n");
const WAIT: Duration = Duration::from_secs(120);

/// A browser signed in as the holder of `key`, on the jobs page.
fn signed_in(server: &Server, key: &str) -> Option<Browser> {
    let browser = Browser::start()?;
    browser.goto(&format!("{}/", server.url()));
    browser.type_into("#key", key);
    browser.click("#signin button[type=submit]");
    browser.find("#jobs");
    Some(browser)
}

/// The page's log as text (what the reader sees, line numbers aside).
fn page_log(browser: &Browser) -> String {
    browser
        .exec("return window.ciWeb.logText();", json!([]))
        .as_str()
        .unwrap()
        .to_string()
}

fn job_status(browser: &Browser) -> String {
    let v = browser.exec(
        "const e = document.getElementById('job-status'); return e ? e.textContent : '';",
        json!([]),
    );
    v.as_str().unwrap_or_default().to_string()
}

/// The log as the page shows it: escape sequences dropped by the same grammar as app.js.
fn strip_ansi(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let chars: Vec<char> = text.chars().collect();
    let (mut out, mut i) = (String::new(), 0);
    while i < chars.len() {
        if chars[i] != '\x1b' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('[') => {
                i += 2;
                while i < chars.len() && !('\x40'..='\x7e').contains(&chars[i]) {
                    i += 1;
                }
                i += 1;
            }
            Some(']' | 'P' | '_' | '^') => {
                i += 2;
                while i < chars.len() {
                    if chars[i] == '\x07' {
                        i += 1;
                        break;
                    }
                    if chars[i] == '\x1b' && chars.get(i + 1) == Some(&'\\') {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
            }
            _ => i += 2,
        }
    }
    out
}

/// The whole stored log of a finished job of the holder of `key`.
fn stored_log(server: &Server, key: &str, id: &str) -> Vec<u8> {
    let path = format!("/v1/jobs/{id}/log?offset=0");
    let (status, body) = ci_e2e::http("GET", &server.addr, &path, Some(key), b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body
}

/// `target/test-artifacts`, beside the built binaries' profile directory.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-<hash> -> target/test-artifacts
    let dir = exe.ancestors().nth(3).unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn page_signs_in_lists_a_job_follows_its_log_live_and_shows_the_result() {
    let server = shared_server();
    let (_, key) = server.new_user("web-reader", false);
    let slow: String = (0..8)
        .map(|i| format!("def test_step_{i}():\n    time.sleep(1)\n\n"))
        .collect();
    let dir = project(&[
        PYTEST,
        ("tests/test_slow.py", &format!("import time\n\n{slow}")),
    ]);
    let id = server.submit_async_as(&key, dir.path());
    let Some(browser) = signed_in(server, &key) else {
        return;
    };

    // (a) The jobs list shows it, with a link to its page.
    let row = format!("#jobs tr[data-id='{id}'] a");
    browser.find(&row);
    browser.click(&row);
    browser.find("#log");
    let url = browser.cmd("GET", "/url", None);
    assert_eq!(url, json!(format!("{}/jobs/{id}", server.url())));

    // (b) The log grows while the job runs.
    let mut lengths = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = job_status(&browser);
        if !status.starts_with("running") && !status.starts_with("queued") {
            break;
        }
        let len = page_log(&browser).len();
        if status.starts_with("running") && len > 0 && lengths.last() != Some(&len) {
            lengths.push(len);
        }
        assert!(Instant::now() < deadline, "the job did not end: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lengths.len() >= 2, "the log did not grow live: {lengths:?}");
    let result = browser.wait_for(
        "the result",
        WAIT,
        "const r = document.getElementById('result'); return r && !r.hidden ? r.textContent : '';",
    );
    let result = result.as_str().unwrap();
    assert!(result.starts_with("Result: passed"), "{result}");
    assert!(result.contains("8 passed"), "{result}");
    assert_eq!(server.job_as(&key, &id).unwrap()["status"], "passed");
    assert_eq!(
        page_log(&browser),
        strip_ansi(&stored_log(server, &key, &id)),
        "the page shows the stored log"
    );

    // A line link scrolls to its line and highlights it.
    browser.goto(&format!("{}/jobs/{id}#L3", server.url()));
    browser.wait_for(
        "line 3 highlighted",
        WAIT,
        "const l = document.getElementById('L3'); return l && l.classList.contains('hl');",
    );
    browser.wait_for(
        "the result again",
        WAIT,
        "const r = document.getElementById('result'); return r && !r.hidden;",
    );
    browser.exec(
        "document.getElementById('log').scrollTop = 1e9; return null;",
        json!([]),
    );
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts_dir().join("web-job-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    if std::env::var_os("CI_UPDATE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("job-page.png"), &png).unwrap();
    }

    // The jobs list filters by status.
    browser.click("#nav a[href='/']");
    browser.find(&row);
    browser.click("#status-filter option[value=failed]");
    browser.wait_for(
        "the passed job filtered out",
        WAIT,
        &format!("return !document.querySelector(\"#jobs tr[data-id='{id}']\") && location.search === '?status=failed';"),
    );
    browser.click("#status-filter option[value=passed]");
    browser.find(&row);
}

#[test]
fn page_cancels_a_running_job() {
    let server = shared_server();
    let (_, key) = server.new_user("web-canceller", false);
    let dir = project(&[
        PYTEST,
        (
            "tests/test_forever.py",
            "import time\n\ndef test_forever():\n    time.sleep(600)\n",
        ),
    ]);
    let id = server.submit_async_as(&key, dir.path());
    let Some(browser) = signed_in(server, &key) else {
        return;
    };
    browser.goto(&format!("{}/jobs/{id}", server.url()));
    browser.wait_for(
        "the tests to run",
        WAIT,
        "const e = document.getElementById('job-status'); return e && e.textContent === 'running (testing)';",
    );
    browser.click("#cancel");
    browser.wait_for(
        "cancelled in the page",
        Duration::from_secs(60),
        "const r = document.getElementById('result'); return r && !r.hidden && r.textContent.startsWith('Result: cancelled');",
    );
    assert_eq!(job_status(&browser), "cancelled");
    assert_eq!(server.job_as(&key, &id).unwrap()["status"], "cancelled");
}

#[test]
fn page_shows_a_hostile_log_as_text_and_runs_nothing() {
    let server = shared_server();
    let (_, key) = server.new_user("web-hostile", false);
    let test = r#"
def test_hostile():
    print("<img src=x onerror=window.pwned=1>")
    print("\x1b]0;pwned title\x07\x1b[31mred words\x1b[0m plain")
    assert False, "<script>window.pwned=2</script>"
"#;
    let dir = project(&[PYTEST, ("tests/test_hostile.py", test)]);
    let id = server.submit_async_as(&key, dir.path());
    let Some(browser) = signed_in(server, &key) else {
        return;
    };
    browser.goto(&format!("{}/jobs/{id}", server.url()));
    browser.wait_for(
        "the failed tests",
        WAIT,
        "const f = document.getElementById('failed'); return f && !f.hidden;",
    );
    let log = page_log(&browser);
    assert!(log.contains("<img src=x onerror=window.pwned=1>"), "{log}");
    // The title sequence is dropped, the colours become classes: the printed line reads as
    // plain text (the traceback quotes the source, escapes and all, on other lines).
    assert!(
        log.lines().any(|l| l == "red words plain"),
        "escape sequences dropped: {log}"
    );
    assert!(!log.contains('\u{1b}'), "{log}");
    let seen = browser.exec(
        "return {pwned: window.pwned === undefined ? null : window.pwned, \
         title: document.title, imgs: document.querySelectorAll('img, script:not([src])').length, \
         red: Array.from(document.querySelectorAll('#log .f31')).map(e => e.textContent), \
         failed: document.getElementById('failed').textContent};",
        json!([]),
    );
    assert_eq!(seen["pwned"], json!(null), "{seen}");
    assert_eq!(seen["title"], "ci", "{seen}");
    assert_eq!(seen["imgs"], 0, "{seen}");
    assert!(
        seen["red"]
            .as_array()
            .unwrap()
            .contains(&json!("red words")),
        "{seen}"
    );
    assert!(
        seen["failed"]
            .as_str()
            .unwrap()
            .contains("<script>window.pwned=2</script>"),
        "{seen}"
    );
    assert_eq!(server.job_as(&key, &id).unwrap()["status"], "failed");
}

#[test]
fn page_script_helpers_and_admin_pages() {
    let server = shared_server();
    let (email, doomed) = server.new_user("web-doomed", false);
    let keys = server.get_json(&format!("/v1/admin/keys?email={email}"));
    let key_id = keys[0]["id"].as_str().unwrap().to_string();
    let Some(browser) = signed_in(server, &server.admin_key) else {
        return;
    };
    let checks = browser.exec(
        r#"
        const w = window.ciWeb;
        const out = {};
        const a = w.ansi("a\x1b[1;32mgreen\x1b[0m\x1b]0;t\x07b\x1b[2Kc\x1b[3", {});
        out.segs = a.segs.map(s => [s.text, s.classes.join(" ")]);
        out.rest = a.rest;
        const b = w.ansi(a.rest + "1mred\x1b[38;5;200mstill\x1b[39mdone", a.style);
        out.segs2 = b.segs.map(s => [s.text, s.classes.join(" ")]);
        const r = w.logReader();
        const bytes = new TextEncoder().encode("é€x");
        out.decoded = r.push(bytes.slice(0, 1)) + "|" + r.push(bytes.slice(1, 4)) + "|" + r.push(bytes.slice(4));
        out.offset = r.offset;
        out.backoff = [0, 1, 2, 10].map(w.backoff);
        out.durations = [null, 0.4, 42.4, 185, 7322].map(w.fmtDuration);
        const now = Date.parse("2026-01-02T00:00:00Z");
        out.ages = ["2026-01-01T23:59:50Z", "2026-01-01T23:50:00Z", "2026-01-01T21:00:00Z", "2025-12-29T00:00:00Z"]
            .map(t => w.fmtAge(t, now));
        out.counts = w.fmtCounts({passed: 3, failed: 1, errors: 0, skipped: 2, xfailed: 0, xpassed: 0});
        return out;
        "#,
        json!([]),
    );
    assert_eq!(
        checks,
        json!({
            "segs": [["a", ""], ["green", "b f32"], ["bc", ""]],
            "rest": "\u{1b}[3",
            "segs2": [["red", "f31"], ["still", "f31"], ["done", ""]],
            "decoded": "|é|€x",
            "offset": 6,
            "backoff": [250, 500, 1000, 5000],
            "durations": ["", "0.4s", "42s", "3m 05s", "2h 02m"],
            "ages": ["10s ago", "10m ago", "3h ago", "4d ago"],
            "counts": "3 passed, 1 failed, 2 skipped",
        })
    );

    // The follower resumes from the bytes it received, through an early end (in the middle of
    // a character) and a network error: nothing lost, nothing twice.
    let followed = browser.exec(
        r#"
        const enc = new TextEncoder();
        const all = enc.encode("abécd\n");
        const urls = [];
        const realFetch = window.fetch;
        const body = (bytes) => new Response(new ReadableStream({
            start(c) { c.enqueue(bytes); c.close(); } }), {status: 200});
        window.fetch = async (url) => {
            urls.push(url);
            if (urls.length === 1) return body(all.slice(0, 3));
            if (urls.length === 2) throw new TypeError("network down");
            return body(all.slice(Number(url.split("offset=")[1])));
        };
        let text = "";
        let refreshes = 0;
        const lines = { append(t) { text += t; }, note() {} };
        const refresh = async () => ++refreshes < 3
            ? {status: "running", log_bytes: 3}
            : {status: "passed", log_bytes: all.length};
        return window.ciWeb.followLog({closed: false, abort: new AbortController()}, "j1", lines, refresh)
            .then(() => { window.fetch = realFetch; return {text, urls}; });
        "#,
        json!([]),
    );
    assert_eq!(
        followed,
        json!({
            "text": "abécd\n",
            "urls": ["/v1/jobs/j1/log?offset=0", "/v1/jobs/j1/log?offset=3", "/v1/jobs/j1/log?offset=3"],
        })
    );

    // The log view: a line per line with its link, auto-scroll that stops while the reader
    // looks further up and resumes once they are back at the bottom.
    let scrolled = browser.exec(
        r##"
        const box = document.createElement("div");
        box.id = "log";
        document.body.append(box);
        const view = window.ciWeb.logView(box);
        const lines = (from, n) => Array.from({length: n}, (_, i) => "line " + (from + i) + "\n").join("");
        const atBottom = () => box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
        const out = {};
        view.append(lines(1, 200));
        out.followed = atBottom();
        box.scrollTop = 0;
        box.dispatchEvent(new Event("scroll"));
        view.append(lines(201, 50));
        out.stayed = box.scrollTop === 0;
        box.scrollTop = box.scrollHeight;
        box.dispatchEvent(new Event("scroll"));
        view.append("partial");
        out.resumed = atBottom();
        out.count = box.querySelectorAll(".line").length;
        out.link = box.querySelector("#L7 a").getAttribute("href");
        out.text = window.ciWeb.logText().split("\n").slice(-2);
        box.remove();
        return out;
        "##,
        json!([]),
    );
    assert_eq!(
        scrolled,
        json!({"followed": true, "stayed": true, "resumed": true, "count": 251, "link": "#L7",
               "text": ["line 250", "partial"]})
    );

    // The admin's pages list users and keys.
    browser.click("#nav a[href='/admin/users']");
    browser.find("#users tbody tr");
    browser.click("#nav a[href='/admin/keys']");
    browser.find("#keys tbody tr");
    // Revoke, once confirmed: the key gets 401 from then on.
    browser.click(&format!("#keys tr[data-id='{key_id}'] button"));
    browser.cmd("POST", "/alert/accept", Some(json!({})));
    browser.wait_for(
        "the key shown revoked",
        Duration::from_secs(20),
        &format!("const r = document.querySelector(\"#keys tr[data-id='{key_id}']\"); return r && r.cells[5].firstChild.nodeValue === 'revoked';"),
    );
    assert_eq!(server.job_as(&doomed, "0").unwrap_err().0, 401);
    // The key is in sessionStorage only: no cookie, nothing in the URL.
    let state = browser.exec(
        "return [document.cookie, location.href, sessionStorage.getItem('ciKey') !== null];",
        json!([]),
    );
    assert_eq!(
        state,
        json!(["", format!("{}/admin/keys", server.url()), true])
    );
    // Sign out forgets the key.
    browser.click("#signout");
    browser.find("#key");
    let key = browser.exec("return sessionStorage.getItem('ciKey');", json!([]));
    assert_eq!(key, json!(null));
    // A key the server refuses (401) brings the form back with the server's message.
    browser.type_into("#key", "ci_not_a_key");
    browser.click("#signin button[type=submit]");
    let error = browser.wait_for(
        "the server's message",
        Duration::from_secs(20),
        "const e = document.getElementById('signin-error'); return e ? e.textContent : '';",
    );
    assert!(error.as_str().unwrap().contains("key"), "{error}");
    let key = browser.exec("return sessionStorage.getItem('ciKey');", json!([]));
    assert_eq!(key, json!(null));
}

/// The real server's router: the page and its headers, no cookie, the API's JSON 404 kept.
#[test]
fn server_serves_the_page_with_its_security_headers() {
    use std::io::{Read, Write};
    let server = shared_server();
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        (head.to_ascii_lowercase(), body.to_string())
    };
    for path in ["/", "/jobs/abc", "/admin/keys", "/assets/app.js"] {
        let (head, body) = get(path);
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        for header in [
            "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; \
             img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "x-frame-options: deny",
            "cross-origin-opener-policy: same-origin",
        ] {
            assert!(head.contains(header), "{path}: no {header}\n{head}");
        }
        assert!(!head.contains("set-cookie"), "{path}: {head}");
        assert!(!body.contains(&server.admin_key), "{path}");
    }
    let (head, body) = get("/v1/nope");
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(body.contains("\"error\""), "{body}");
}
