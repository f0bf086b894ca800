//! A registry small enough to read: a thread on 127.0.0.1:0 answering GETs from a table of
//! canned responses, one request per connection, optionally behind Docker Hub-style token auth.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

pub const TOKEN: &str = "fake-token";

#[derive(Clone)]
struct Canned {
    content_type: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Canned>,
    /// Request paths (with query) in arrival order.
    log: Vec<String>,
    require_token: bool,
}

pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, &state, addr));
                }
            })
        };
        FakeRegistry {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Answer 401 with a `Bearer` challenge unless the request carries [`TOKEN`].
    pub fn require_token(&self) {
        self.state.lock().unwrap().require_token = true;
    }

    pub fn route(&self, path: &str, content_type: Option<&str>, body: impl Into<Vec<u8>>) {
        self.state.lock().unwrap().routes.insert(
            path.to_owned(),
            Canned {
                content_type: content_type.map(str::to_owned),
                body: body.into(),
            },
        );
    }

    /// Serves `body` as a blob of `repo` and returns its digest.
    pub fn blob(&self, repo: &str, body: &[u8]) -> String {
        let digest = digest(body);
        self.route(
            &format!("/v2/{repo}/blobs/{digest}"),
            Some("application/octet-stream"),
            body,
        );
        digest
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Closes the listening socket: from here on every connection is refused.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wakes the accept loop so it sees the flag and drops the listener.
            let _ = TcpStream::connect(self.addr);
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn serve(stream: TcpStream, state: &Mutex<State>, addr: SocketAddr) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let path = target.split('?').next().unwrap_or("").to_owned();

    let mut state = state.lock().unwrap();
    state.log.push(target.clone());
    let authorized = authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let (status, headers, body) = if path == "/token" {
        let body = format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).into_bytes();
        (
            "200 OK",
            vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body,
        )
    } else if state.require_token && !authorized {
        let challenge = format!(
            r#"Bearer realm="http://{addr}/token",service="fake-registry",scope="repository:library/python:pull""#
        );
        let body = br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec();
        (
            "401 Unauthorized",
            vec![("WWW-Authenticate".to_owned(), challenge)],
            body,
        )
    } else if let Some(canned) = state.routes.get(&path) {
        let headers = canned
            .content_type
            .iter()
            .map(|ct| ("Content-Type".to_owned(), ct.clone()))
            .collect();
        ("200 OK", headers, canned.body.clone())
    } else {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec();
        ("404 Not Found", vec![], body)
    };
    drop(state);

    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body);
}
