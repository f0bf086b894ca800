//! The server's own accept loop: HTTP/1.1 connections served by hyper with the limits that
//! `axum::serve` lacks and a server open to a network needs — a cap on open connections, a cap
//! per client address on connections that have not shown an API key, and deadlines for a
//! request's headers and for a kept-alive connection with nothing to do.
//!
//! Only HTTP/1.1 is spoken. Our clients (`ci`, curl, browsers) use it on a cleartext port, where
//! HTTP/2 needs prior knowledge that none of them has; and hyper-util's version detection waits
//! for a connection's first bytes outside every hyper timeout, which is how idle connections
//! piled up before.
//!
//! Deadlines. hyper's own `header_read_timeout` restarts whenever a kept-alive connection waits
//! for its next request, so it would also close every idle connection after the (short) header
//! timeout; we keep our own per connection instead (`Activity`):
//! - from accept, the first request's headers must be complete within `header_timeout`;
//! - between requests a connection may stay idle for `idle_timeout`; from the first byte of the
//!   next request its headers must be complete within `header_timeout`;
//! - while a request is being answered there is none: a log stream may stay open and silent for
//!   as long as its job runs. (A request body's pauses are bounded by `--body-timeout`, a layer
//!   of the router.)
//!
//! A connection is handed to hyper only once its first byte has come, so one that sends nothing
//! holds a socket and a small task, but none of hyper's buffers (16 KiB). At the connection cap
//! the oldest of those is closed to make room for a new connection, whose request, from a real
//! client, is already on its way: idle connections from many addresses cannot keep `/healthz`
//! or `ci` waiting in the backlog.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServeArgs;

/// Descriptors kept for everything but client connections: the database, the logs being
/// written, the pipes of running jobs' helpers, uploads being unpacked.
const RESERVED_FDS: u64 = 1024;

/// The default connection cap whatever the descriptor limit. Measured: a connection that sent
/// nothing costs 1.5 KiB of RSS; one that sent part of its headers 15 KiB (hyper's 8 KiB read
/// and write buffers), and up to 33 KiB with [`MAX_HEADER_SIZE`] of them; so 10,000 of the
/// worst stay within about 330 MiB.
const MAX_DEFAULT_CONNECTIONS: u64 = 10_000;

/// Largest request head (request line and headers). Ours are a few hundred bytes; 16 KiB is
/// what Node.js allows, and it bounds the memory of a client that sends its headers slowly.
const MAX_HEADER_SIZE: usize = 16 * 1024;

/// Longest a refused connection is read from after its 429, so that closing it does not answer
/// the request the client was still sending with a reset that could lose the 429.
const LINGER: Duration = Duration::from_millis(500);

/// How long the accept loop waits for a connection closed to make room to hand its place back.
const EVICTED_WITHIN: Duration = Duration::from_millis(100);

/// Most refused connections lingering at once (a flood of them is closed straight away).
const MAX_LINGERING: usize = 1024;

/// After this many connections closed since memory was last handed back, it is handed back
/// ([`return_freed_memory`]).
const TRIM_AFTER_CLOSED: usize = 512;

/// The hand-back waits until connections have stopped closing for this long, so that a wave
/// of closes is handed back whole rather than cut at its first [`TRIM_AFTER_CLOSED`].
const TRIM_SETTLE: Duration = Duration::from_millis(500);

/// A hand-back waits at most this long for the closes to settle, and follows the one before
/// it by at least [`TRIM_SETTLE`].
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// How many connections are served and for how long they may wait.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Most connections open at once; past it the oldest that has sent nothing is closed to
    /// make room, and when none has, the rest wait in the kernel's backlog.
    pub max_connections: usize,
    /// Most connections of one client address (an IPv6 /64) before one of their requests
    /// shows a valid API key.
    pub max_unauthenticated_per_ip: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest pause between the chunks of a request body (a layer of the router).
    pub body_timeout: Duration,
}

impl ConnLimits {
    /// Raises the open-file limit (see [`raise_fd_limit`]) and returns the limits of `args`
    /// with the connection cap sized to it, saying both in the log.
    pub fn at_start(args: &ServeArgs) -> ConnLimits {
        let fd_limit = match raise_fd_limit() {
            Ok(limit) => {
                tracing::info!(
                    before = limit.before,
                    now = limit.now,
                    "open-file limit raised to the hard limit"
                );
                limit.now
            }
            Err(e) => {
                let now = current_fd_limit().0;
                tracing::warn!(now, "cannot raise the open-file limit: {e}");
                now
            }
        };
        let limits = ConnLimits::new(args, fd_limit);
        let fitting = fd_connections(fd_limit);
        if limits.max_connections > fitting {
            tracing::warn!(
                max_connections = limits.max_connections,
                fitting,
                fd_limit,
                "--max-connections is more than the open-file limit has room for: raise the hard limit (LimitNOFILE= in a systemd unit)"
            );
        }
        tracing::info!(
            max_connections = limits.max_connections,
            max_unauthenticated_per_ip = limits.max_unauthenticated_per_ip,
            header_timeout = ?limits.header_timeout,
            idle_timeout = ?limits.idle_timeout,
            body_timeout = ?limits.body_timeout,
            "connection limits"
        );
        limits
    }

    /// The limits of `args`, the connection cap sized to `fd_limit` unless given.
    pub fn new(args: &ServeArgs, fd_limit: u64) -> ConnLimits {
        ConnLimits {
            max_connections: args
                .max_connections
                .unwrap_or_else(|| default_max_connections(fd_limit))
                .max(1),
            // 0 would refuse every client before it could show a key.
            max_unauthenticated_per_ip: args.max_connections_per_ip.max(1),
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            body_timeout: args.body_timeout,
        }
    }
}

/// The default of `--max-connections` under an open-file limit of `fd_limit`: what the
/// descriptors allow, and never more than 10,000 (`MAX_DEFAULT_CONNECTIONS`).
pub fn default_max_connections(fd_limit: u64) -> usize {
    fd_connections(fd_limit).min(MAX_DEFAULT_CONNECTIONS as usize)
}

/// How many connections `fd_limit` descriptors serve: two per connection (its socket and, for
/// a log follower, the log file) after a reserve for the rest of the server.
pub fn fd_connections(fd_limit: u64) -> usize {
    let reserve = RESERVED_FDS.min(fd_limit / 2);
    usize::try_from(((fd_limit - reserve) / 2).max(1)).unwrap_or(usize::MAX)
}

/// The open-file limit of this process before and after [`raise_fd_limit`].
#[derive(Clone, Copy, Debug)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises this process's soft open-file limit to its hard limit, as servers do: the usual soft
/// limit of 1024 only protects old programs that use select(2). Job containers set their own
/// (1024, in the runner's spec).
pub fn raise_fd_limit() -> nix::Result<FdLimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = fd_target(soft, hard);
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(FdLimit {
        before: soft,
        now: target,
    })
}

/// The soft limit [`raise_fd_limit`] sets: the hard limit, but Linux refuses one above
/// fs.nr_open, which an "unlimited" hard limit is.
pub fn fd_target(soft: u64, hard: u64) -> u64 {
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        nr_open().unwrap_or(soft)
    } else {
        hard
    };
    target.max(soft)
}

/// This process's open-file limit: (soft, hard); (1024, 1024) if it cannot be read.
pub fn current_fd_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024))
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The kernel's queue of connections not yet accepted: what waits there while the server is at
/// its connection cap (std's and mio's 128 overflow in a moment; Linux caps it at
/// net.core.somaxconn, 4096 by default).
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` with a backlog of 4096 (see `BACKLOG`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and mio do: a restarted server can bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What every connection task shares.
struct Shared {
    app: Router,
    limits: ConnLimits,
    http: http1::Builder,
    unauthenticated: Arc<Unauthenticated>,
    /// Places for refused connections to linger ([`refuse`]).
    lingering: Arc<Semaphore>,
    /// Connections that have sent nothing yet, which make room at the cap.
    silent: Arc<Silent>,
    /// Cancelled when the server stops: connections finish their request and close.
    stop: CancellationToken,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// connection finish the request it is answering, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.header_read_timeout(None)
        .max_header_size(MAX_HEADER_SIZE);
    let shared = Arc::new(Shared {
        app,
        limits,
        http,
        unauthenticated: Arc::new(Unauthenticated::new(limits.max_unauthenticated_per_ip)),
        lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
        silent: Arc::new(Silent::default()),
        stop: CancellationToken::new(),
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let census = Arc::new(Census::default());
    let trimmer = tokio::spawn(return_freed_memory(census.clone()));
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    let mut shutdown = pin!(shutdown);
    'accepting: loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(pause) = backoff.failed(&e) {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => break,
                    }
                }
                continue;
            }
        };
        backoff.succeeded();
        // At the cap, the connection that has waited longest without sending a byte makes
        // room (a real client sends its request as soon as it is connected); when none has,
        // this one waits for a place, and the next ones in the kernel's backlog.
        let permit = loop {
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                break permit;
            }
            let patience = if shared.silent.evict_oldest() {
                // It hands its place back as soon as its task runs, unless its first byte
                // came meanwhile: then another makes room.
                EVICTED_WITHIN
            } else {
                Duration::MAX
            };
            tokio::select! {
                permit = permits.clone().acquire_owned() => {
                    break permit.expect("the semaphore is never closed");
                }
                () = tokio::time::sleep(patience) => {}
                () = &mut shutdown => break 'accepting,
            }
        };
        let admission = Admission::new(permit, &census);
        // Counted here, in the order of accepting, not in that of the tasks.
        let slot = shared.unauthenticated.admit(peer.ip());
        connections.spawn(connection(stream, peer, slot, shared.clone(), admission));
    }
    // Closing the listening socket refuses what waits in the backlog.
    drop(listener);
    shared.stop.cancel();
    connections.close();
    connections.wait().await;
    trimmer.abort();
}

/// Pauses after accept(2) fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM): it
/// would fail again at once, and spin. Logs such failures at most every 10 seconds.
#[derive(Default)]
struct AcceptBackoff {
    pause: Duration,
    unlogged: u64,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }

    /// How long to pause after `e`; `None` when only that connection failed (the client went
    /// away before it was accepted).
    fn failed(&mut self, e: &io::Error) -> Option<Duration> {
        use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            return None;
        }
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY)
        {
            tracing::error!(
                failures = self.unlogged,
                "cannot accept connections: {e}; pausing"
            );
            self.unlogged = 0;
            self.logged = Some(now);
        }
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::MOST);
        Some(self.pause)
    }
}

/// One connection, from accept to close: refused when its address had no `slot` left.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<IpSlot>,
    shared: Arc<Shared>,
    admission: Admission,
) {
    let Some(slot) = slot else {
        Box::pin(refuse(stream, peer.ip(), &shared, admission)).await;
        return;
    };
    let activity = Arc::new(Activity::new(&shared.limits));
    let first_request = activity
        .deadline()
        .expect("a new connection has a deadline");
    // hyper allocates its buffers when it first reads: wait until there is something to read.
    // (Peeked, not `readable()`: tokio reports a new socket readable before anything came.)
    let mut first_byte = [0u8; 1];
    let (waiting, evicted) = shared.silent.enter();
    let arrived = tokio::select! {
        peeked = tokio::time::timeout_at(first_request, stream.peek(&mut first_byte)) => peeked,
        _ = evicted => {
            tracing::debug!(%peer, "closed a connection that sent nothing, to make room");
            return;
        }
        () = shared.stop.cancelled() => return,
    };
    drop(waiting);
    match arrived {
        Ok(Ok(1..)) => {}
        Ok(Ok(0)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "closed a connection that sent nothing");
            return;
        }
    }
    // Boxed: the state of an HTTP connection is large, and most connections that wait above
    // are idle ones that never get here.
    Box::pin(serve_http(stream, peer, slot, activity, &shared)).await;
    // Its place under the cap is held until here.
    drop(admission);
}

/// Serves HTTP/1.1 on a connection that has sent something.
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    slot: IpSlot,
    activity: Arc<Activity>,
    shared: &Shared,
) {
    let io = TokioIo::new(TrackedStream {
        stream,
        activity: activity.clone(),
    });
    let service = ConnService {
        app: shared.app.clone(),
        auth: ConnectionAuth(Arc::new(Mutex::new(Some(slot)))),
        activity: activity.clone(),
    };
    let conn = shared.http.serve_connection(io, service);
    match drive(conn, &activity, &shared.stop).await {
        Ended::Closed(Ok(())) => {}
        Ended::Closed(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
        Ended::TimedOut => tracing::debug!(%peer, "closed a connection past its deadline"),
    }
}

enum Ended {
    Closed(hyper::Result<()>),
    /// No request was being answered and the connection's deadline passed.
    TimedOut,
}

/// Polls `conn` until it ends, closing it at its deadline, and asks it to finish its request and
/// close when the server stops.
async fn drive(
    conn: http1::Connection<TokioIo<TrackedStream>, ConnService>,
    activity: &Activity,
    stop: &CancellationToken,
) -> Ended {
    let mut conn = pin!(conn);
    let mut stopping = pin!(stop.cancelled());
    let mut draining = false;
    let start = activity.deadline().unwrap_or_else(Instant::now);
    let mut timer = pin!(tokio::time::sleep_until(start));
    poll_fn(|cx| {
        if !draining && stopping.as_mut().poll(cx).is_ready() {
            conn.as_mut().graceful_shutdown();
            draining = true;
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Closed(result));
        }
        // Everything that moves the deadline happens inside the poll above (reads, the
        // service's call, the end of a response body), so it is current here.
        if let Some(deadline) = activity.deadline() {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::TimedOut);
            }
        }
        Poll::Pending
    })
    .await
}

/// A connection's place under the cap, counted while it lives.
struct Admission {
    _permit: OwnedSemaphorePermit,
    census: Arc<Census>,
}

impl Admission {
    fn new(permit: OwnedSemaphorePermit, census: &Arc<Census>) -> Admission {
        census.opened();
        Admission {
            _permit: permit,
            census: census.clone(),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.census.closed();
    }
}

/// How many connections are open, and how many closed since memory was last handed back.
#[derive(Default)]
struct Census {
    counts: Mutex<Counts>,
    trim: Notify,
}

#[derive(Default)]
struct Counts {
    open: usize,
    closed_since_trim: usize,
}

impl Census {
    fn opened(&self) {
        self.counts.lock().expect("census lock").open += 1;
    }

    fn closed(&self) {
        let mut counts = self.counts.lock().expect("census lock");
        counts.open -= 1;
        counts.closed_since_trim += 1;
        if counts.closed_since_trim == TRIM_AFTER_CLOSED {
            self.trim.notify_one();
        }
    }

    fn closed_since_trim(&self) -> usize {
        self.counts.lock().expect("census lock").closed_since_trim
    }

    /// Starts counting the closes towards the next hand-back.
    fn trimmed(&self) {
        // The close that reaches the mark again notifies again.
        self.counts.lock().expect("census lock").closed_since_trim = 0;
    }
}

/// Hands back to the system the memory that many closed connections left free. glibc keeps
/// freed memory in its per-thread arenas for good: without this the server stayed 11-13 MB
/// larger after the flood test (25,000 connections), 2 MB with it; `malloc_trim` also releases
/// the free pages inside the arenas, not only at their tops.
async fn return_freed_memory(census: Arc<Census>) {
    loop {
        census.trim.notified().await;
        // Waits for the wave of closes to end: what closes after the hand-back counts
        // towards the next one, and a tail shorter than TRIM_AFTER_CLOSED would wait for
        // good.
        let start = tokio::time::Instant::now();
        loop {
            let before = census.closed_since_trim();
            tokio::time::sleep(TRIM_SETTLE).await;
            if census.closed_since_trim() == before || start.elapsed() >= TRIM_EVERY {
                break;
            }
        }
        census.trimmed();
        let _ = tokio::task::spawn_blocking(trim_heap).await;
    }
}

/// Hands freed heap memory back to the system (glibc's `malloc_trim`); blocking. Also after
/// the start-up's image pull and uv download, which peak at several times the idle size.
#[cfg(target_env = "gnu")]
pub fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions; it takes each arena's lock as it goes.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub fn trim_heap() {}

/// Answers a connection over its address's cap with a 429 and closes it, at once.
async fn refuse(mut stream: TcpStream, ip: IpAddr, shared: &Shared, admission: Admission) {
    tracing::debug!(%ip, "refused a connection: too many without an API key");
    let limits = &shared.limits;
    let body = serde_json::to_string(&ci_protocol::ErrorBody {
        error: format!(
            "too many connections from {ip} without an API key (at most {}): close some or send a key",
            limits.max_unauthenticated_per_ip
        ),
    })
    .expect("strings serialize");
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        limits.header_timeout.as_secs().max(1),
    );
    // A new socket's send buffer takes these few hundred bytes whole.
    if stream.try_write(response.as_bytes()).is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Answered: it no longer takes a place under the cap, which is for connections served.
    drop(admission);
    // Closing a socket with unread bytes sends a reset, after which the client's kernel may
    // drop the answer before the client read it: take what it sends until it closes, for a
    // while, as long as not too many refused connections are doing so already.
    let Ok(_lingering) = shared.lingering.clone().try_acquire_owned() else {
        return;
    };
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

/// Connections that have not sent a byte yet, oldest first.
#[derive(Default)]
struct Silent {
    queue: Mutex<(u64, BTreeMap<u64, oneshot::Sender<()>>)>,
}

impl Silent {
    /// Registers a connection that waits for its first byte; the receiver resolves when it
    /// is to close to make room, and the guard takes it off the list.
    fn enter(self: &Arc<Self>) -> (SilentGuard, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let mut queue = self.queue.lock().expect("silent connections lock");
        let (next, waiting) = &mut *queue;
        let id = *next;
        *next += 1;
        waiting.insert(id, evict);
        let guard = SilentGuard {
            table: self.clone(),
            id,
        };
        (guard, evicted)
    }

    /// Tells the oldest silent connection to close; false when there is none.
    fn evict_oldest(&self) -> bool {
        let mut queue = self.queue.lock().expect("silent connections lock");
        // Dropping its sender wakes it.
        queue.1.pop_first().is_some()
    }
}

struct SilentGuard {
    table: Arc<Silent>,
    id: u64,
}

impl Drop for SilentGuard {
    fn drop(&mut self) {
        let mut queue = self.table.queue.lock().expect("silent connections lock");
        queue.1.remove(&self.id);
    }
}

/// Connections per client address that have not yet shown a valid API key.
struct Unauthenticated {
    counts: Mutex<HashMap<IpAddr, usize>>,
    cap: usize,
}

impl Unauthenticated {
    fn new(cap: usize) -> Unauthenticated {
        Unauthenticated {
            counts: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// A place for a new connection from `ip`, or `None` when its address is at the cap.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = client_key(ip);
        let mut counts = self.counts.lock().expect("connection counts lock");
        let count = counts.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }
}

/// A connection counted against its address; it stops counting when dropped.
struct IpSlot {
    table: Arc<Unauthenticated>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().expect("connection counts lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted under: an IPv4 address as it is, an IPv6 address by its /64
/// (a host is usually given a whole /64, so single IPv6 addresses would count nothing).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

/// In every request's extensions: the `Caller` extractor reports a valid API key through it,
/// and from then on the connection no longer counts against its address's cap.
#[derive(Clone)]
pub struct ConnectionAuth(Arc<Mutex<Option<IpSlot>>>);

impl ConnectionAuth {
    pub fn authenticated(&self) {
        let slot = self.0.lock().expect("connection auth lock").take();
        drop(slot);
    }
}

/// Where a connection is between requests, which decides its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request's headers are due by then.
    Headers(Instant),
    /// Kept alive with nothing to do until then; the next request's first byte starts `Headers`.
    Idle(Instant),
    /// Answering this many requests: no deadline.
    Busy(usize),
}

/// A connection's phase, moved by its reads, its requests and the ends of its responses.
struct Activity {
    phase: Mutex<Phase>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Activity {
    fn new(limits: &ConnLimits) -> Activity {
        Activity {
            phase: Mutex::new(Phase::Headers(Instant::now() + limits.header_timeout)),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().expect("connection phase lock")
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Headers(at) | Phase::Idle(at) => Some(at),
            Phase::Busy(_) => None,
        }
    }

    fn bytes_arrived(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Headers(Instant::now() + self.header_timeout);
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Headers(_) | Phase::Idle(_) => Phase::Busy(1),
        };
        InFlight(self.clone())
    }
}

/// A request being answered: from the service's call until its response body is done (or
/// dropped unfinished).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now() + self.0.idle_timeout),
        };
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive.
struct TrackedStream {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service.
struct ConnService {
    app: Router,
    auth: ConnectionAuth,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        request.extensions_mut().insert(self.auth.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request).await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::extract::Extension;
    use axum::routing::get;
    use futures_util::StreamExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpSocket, TcpStream};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits() -> ConnLimits {
        ConnLimits {
            max_connections: 100,
            max_unauthenticated_per_ip: 100,
            header_timeout: ms(400),
            idle_timeout: ms(1500),
            body_timeout: ms(5000),
        }
    }

    /// `/ok`; `/auth`, which reports a valid key as the `Caller` extractor does; `/stream`, a
    /// chunk, silence past the idle timeout, a last chunk.
    fn app() -> Router {
        async fn stream() -> Body {
            let chunks = futures_util::stream::iter([0, 2000]).then(|pause| async move {
                tokio::time::sleep(ms(pause)).await;
                Ok::<_, Infallible>(Bytes::from("tick\n"))
            });
            Body::from_stream(chunks)
        }
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/auth",
                get(|Extension(auth): Extension<ConnectionAuth>| async move {
                    auth.authenticated();
                    "welcome"
                }),
            )
            .route("/stream", get(stream))
    }

    struct TestServer {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<()>,
    }

    async fn start(limits: ConnLimits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(serve(listener, app(), limits, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            done,
        }
    }

    type Conn = BufReader<TcpStream>;

    /// A connection from `source`, an address of the loopback network (all of 127/8).
    async fn connect_from(source: &str, server: SocketAddr) -> Conn {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        BufReader::new(socket.connect(server).await.unwrap())
    }

    async fn send(conn: &mut Conn, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes()).await.unwrap();
    }

    /// Reads one response (length-delimited or chunked): its status, headers and body.
    async fn response(conn: &mut Conn) -> Option<(u16, String, String)> {
        let mut line = String::new();
        conn.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.ok()?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let mut body = Vec::new();
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            body.resize(len.trim().parse().ok()?, 0);
            conn.read_exact(&mut body).await.ok()?;
        } else {
            loop {
                let mut size = String::new();
                conn.read_line(&mut size).await.ok()?;
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk).await.ok()?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Some((status, head, String::from_utf8(body).ok()?))
    }

    async fn request(conn: &mut Conn, path: &str) -> Option<(u16, String)> {
        send(conn, path).await;
        response(conn).await.map(|(status, _, body)| (status, body))
    }

    /// Waits up to `limit` for the server to close `conn`; how long that took.
    async fn closed_within(conn: &mut Conn, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout_at(start + limit, conn.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
        let server = start(limits()).await;
        let mut conn = connect_from("127.0.0.1", server.addr).await;
        let took = closed_within(&mut conn, ms(5000)).await.expect("closed");
        assert!(took >= ms(350), "closed after {took:?}, before the timeout");
    }

    #[tokio::test]
    async fn headers_sent_slowly_are_cut_at_the_header_timeout() {
        let server = start(limits()).await;
        let mut conn = connect_from("127.0.0.1", server.addr).await;
        let start = Instant::now();
        conn.get_mut()
            .write_all(b"GET /ok HTTP/1.1\r\n")
            .await
            .unwrap();
        // A header line every 100 ms: bytes keep coming, the headers never end.
        let mut buf = [0u8; 64];
        let took = loop {
            if conn.get_mut().write_all(b"x-slow: 1\r\n").await.is_err() {
                break start.elapsed();
            }
            match tokio::time::timeout(ms(100), conn.read(&mut buf)).await {
                Err(_) => assert!(start.elapsed() < ms(5000), "never closed"),
                Ok(Ok(0) | Err(_)) => break start.elapsed(),
                Ok(Ok(_)) => panic!("answered a request whose headers never ended"),
            }
        };
        assert!(took >= ms(350), "closed after {took:?}, before the timeout");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_waits_for_the_idle_timeout_not_the_header_timeout() {
        let server = start(limits()).await;
        let mut conn = connect_from("127.0.0.1", server.addr).await;
        assert_eq!(request(&mut conn, "/ok").await, Some((200, "ok".into())));
        // Twice the header timeout between requests, well within the idle timeout.
        tokio::time::sleep(ms(800)).await;
        assert_eq!(request(&mut conn, "/ok").await, Some((200, "ok".into())));
        let took = closed_within(&mut conn, ms(6000)).await.expect("closed");
        assert!(
            took >= ms(1400),
            "closed after {took:?}, before the idle timeout"
        );
    }

    #[tokio::test]
    async fn a_silent_response_stream_is_not_cut_by_the_idle_timeout() {
        let server = start(limits()).await;
        let mut conn = connect_from("127.0.0.1", server.addr).await;
        assert_eq!(
            request(&mut conn, "/stream").await,
            Some((200, "tick\ntick\n".into()))
        );
    }

    #[tokio::test]
    async fn past_its_cap_an_address_gets_429_at_once_and_another_is_served() {
        let server = start(ConnLimits {
            max_unauthenticated_per_ip: 2,
            header_timeout: ms(30_000),
            ..limits()
        })
        .await;
        let mut first = connect_from("127.0.0.2", server.addr).await;
        let _second = connect_from("127.0.0.2", server.addr).await;
        // The third is answered without sending anything, and closed.
        let mut third = connect_from("127.0.0.2", server.addr).await;
        let (status, head, body) = tokio::time::timeout(ms(2000), response(&mut third))
            .await
            .expect("answered at once")
            .expect("a response");
        assert_eq!(status, 429);
        assert!(head.contains("retry-after: 30"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("127.0.0.2"),
            "{body}"
        );
        assert!(closed_within(&mut third, ms(2000)).await.is_some());

        let mut other = connect_from("127.0.0.3", server.addr).await;
        assert_eq!(request(&mut other, "/ok").await, Some((200, "ok".into())));

        // A connection that showed a key no longer counts: there is room for one more.
        assert_eq!(
            request(&mut first, "/auth").await,
            Some((200, "welcome".into()))
        );
        let mut fourth = connect_from("127.0.0.2", server.addr).await;
        assert_eq!(request(&mut fourth, "/ok").await, Some((200, "ok".into())));
    }

    #[tokio::test]
    async fn at_the_connection_cap_a_new_connection_waits_until_one_closes() {
        let server = start(ConnLimits {
            max_connections: 2,
            header_timeout: ms(30_000),
            ..limits()
        })
        .await;
        // Both have begun a request, so neither makes room.
        let mut first = connect_from("127.0.0.1", server.addr).await;
        first
            .get_mut()
            .write_all(b"GET /ok HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut second = connect_from("127.0.0.1", server.addr).await;
        second
            .get_mut()
            .write_all(b"GET /ok HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(ms(100)).await;
        // The kernel completes the handshake (the backlog); the server does not serve it.
        let mut waiting = connect_from("127.0.0.1", server.addr).await;
        send(&mut waiting, "/ok").await;
        assert!(
            tokio::time::timeout(ms(500), response(&mut waiting))
                .await
                .is_err(),
            "answered past the cap"
        );
        drop(first);
        let answered = tokio::time::timeout(ms(5000), response(&mut waiting)).await;
        assert_eq!(
            answered
                .expect("answered once a connection closed")
                .unwrap()
                .0,
            200
        );
    }

    #[tokio::test]
    async fn at_the_connection_cap_the_oldest_silent_connection_makes_room() {
        let server = start(ConnLimits {
            max_connections: 2,
            header_timeout: ms(30_000),
            ..limits()
        })
        .await;
        let mut oldest = connect_from("127.0.0.1", server.addr).await;
        let mut younger = connect_from("127.0.0.1", server.addr).await;
        tokio::time::sleep(ms(100)).await;
        let mut new = connect_from("127.0.0.1", server.addr).await;
        let answered = tokio::time::timeout(ms(2000), request(&mut new, "/ok")).await;
        assert_eq!(answered.expect("served at once"), Some((200, "ok".into())));
        assert!(closed_within(&mut oldest, ms(1000)).await.is_some());
        assert!(closed_within(&mut younger, ms(300)).await.is_none());
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_closes_idle_connections_and_finishes_responses() {
        let mut server = start(ConnLimits {
            header_timeout: ms(30_000),
            idle_timeout: ms(30_000),
            ..limits()
        })
        .await;
        let mut idle = connect_from("127.0.0.1", server.addr).await;
        let mut kept = connect_from("127.0.0.1", server.addr).await;
        assert_eq!(request(&mut kept, "/ok").await, Some((200, "ok".into())));
        let mut streaming = connect_from("127.0.0.1", server.addr).await;
        send(&mut streaming, "/stream").await;
        let mut status = String::new();
        streaming.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");

        server.stop.take().unwrap().send(()).unwrap();
        assert!(closed_within(&mut idle, ms(2000)).await.is_some());
        assert!(closed_within(&mut kept, ms(2000)).await.is_some());
        let refused = async {
            while TcpStream::connect(server.addr).await.is_ok() {
                tokio::time::sleep(ms(20)).await;
            }
        };
        tokio::time::timeout(ms(2000), refused)
            .await
            .expect("the listener closed");
        // The stream goes on to its end, then the server is done.
        let mut rest = String::new();
        streaming.read_to_string(&mut rest).await.unwrap();
        assert!(rest.ends_with("tick\n\r\n0\r\n\r\n"), "{rest:?}");
        tokio::time::timeout(ms(2000), server.done)
            .await
            .expect("serve returned")
            .unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_costs_a_small_task() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let shared = Arc::new(Shared {
            app: app(),
            limits: limits(),
            http: http1::Builder::new(),
            unauthenticated: Arc::new(Unauthenticated::new(1)),
            lingering: Arc::new(Semaphore::new(1)),
            silent: Arc::new(Silent::default()),
            stop: CancellationToken::new(),
        });
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let admission = Admission::new(permit, &Arc::new(Census::default()));
        let slot = shared.unauthenticated.admit(peer.ip());
        let task = connection(stream, peer, slot, shared, admission);
        // hyper's connection state and the refusal are boxed, entered only when needed.
        assert!(
            std::mem::size_of_val(&task) < 1024,
            "{} bytes",
            std::mem::size_of_val(&task)
        );
    }

    #[test]
    fn clients_are_counted_by_ipv4_address_or_ipv6_64() {
        let check = |ip: &str, key: &str| {
            assert_eq!(
                client_key(ip.parse().unwrap()),
                key.parse::<IpAddr>().unwrap(),
                "{ip}"
            );
        };
        check("192.0.2.7", "192.0.2.7");
        check("::ffff:192.0.2.7", "192.0.2.7");
        check("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::");
        check("2001:db8:1:2:ffff::1", "2001:db8:1:2::");
        check("::1", "::");
    }

    #[test]
    fn the_default_cap_fits_the_descriptors_and_memory() {
        let check = |fds: u64, cap: usize| assert_eq!(default_max_connections(fds), cap, "{fds}");
        check(20_000, 9_488);
        check(1_048_576, 10_000);
        check(4_096, 1_536);
        check(1_024, 256);
        check(1, 1);
    }

    #[test]
    fn accept_failures_back_off_and_lost_clients_do_not() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&aborted), None);
        assert_eq!(backoff.failed(&emfile), Some(ms(10)));
        assert_eq!(backoff.failed(&emfile), Some(ms(20)));
        for _ in 0..10 {
            backoff.failed(&emfile);
        }
        assert_eq!(backoff.failed(&emfile), Some(ms(1000)));
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile), Some(ms(10)));
    }
}
