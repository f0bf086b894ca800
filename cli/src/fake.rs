//! An HTTP server on loopback for the unit tests of what `ci` does with the server's answers:
//! each request is answered by the test's closure and recorded, one connection per request.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;

/// What the fake saw of a request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path and query, as sent (`/v1/jobs?failed_from=j`).
    pub target: String,
}

/// An answer.
pub struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    /// A JSON body with this status.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::bytes(status, "application/json", body.as_bytes().to_vec())
    }

    /// The server's error body, `{"error": message}`, with this status.
    pub fn error(status: u16, message: &str) -> Reply {
        let body = ci_protocol::ErrorBody {
            error: message.into(),
        };
        Reply::json(status, &serde_json::to_string(&body).unwrap())
    }

    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: format!("Content-Type: {content_type}\r\n"),
            body,
        }
    }

    /// Adds a header line (`Name: value`).
    pub fn header(mut self, line: &str) -> Reply {
        self.headers.push_str(line);
        self.headers.push_str("\r\n");
        self
    }
}

pub struct Fake {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// Serves on a free port until the test's runtime ends.
    pub async fn start(answer: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let Some(request) = read_request(&mut socket).await else {
                    continue;
                };
                let reply = answer(&request);
                seen.lock().unwrap().push(request);
                let head = format!(
                    "HTTP/1.1 {} Fake\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.status,
                    reply.headers,
                    reply.body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&reply.body).await;
            }
        });
        Fake { url, requests }
    }

    /// The requests answered so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// A client of this server.
    pub fn client(&self) -> Client {
        Client::new(&crate::config::Settings {
            server: self.url.clone(),
            api_key: "ci_test".into(),
        })
        .unwrap()
    }
}

/// Reads the request line and headers, and the body the headers announce (to drop it: a reply
/// to a request whose body is left unread can reach the client as a reset).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf.len() - head_end;
    while body < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body += n;
    }
    let mut words = head.lines().next()?.split(' ');
    Some(Request {
        method: words.next()?.to_string(),
        target: words.next()?.to_string(),
    })
}
